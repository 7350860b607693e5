# occ_perception developer commands. No ROS needed: everything runs in a venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test
# Python 3.10 (ROS 2 Humble's) for the compatibility run with numpy 1.x
PYTHON310 ?= $(shell for p in $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python3.10) python3.10; do \
	$$p -c 'import venv' >/dev/null 2>&1 && { command -v $$p; break; }; done)
COMPAT := .venv-py310

.PHONY: test lint test-main test-compat fuzz demo bench bench-curves venv clean

venv: $(STAMP)

$(STAMP): occ_perception/setup.py constraints.txt occ_perception/test/requirements-devkit.txt \
		occ_perception/test/requirements-modelopt.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e './occ_perception[test]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r occ_perception/test/requirements-devkit.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r occ_perception/test/requirements-modelopt.txt
	touch $@

test: lint test-main test-compat

# ruff (lint and format check; ruff.toml) and mypy (occ_perception/setup.cfg) over the whole package
lint: $(STAMP)
	$(VENV)/bin/ruff check occ_perception/occ_perception occ_perception/test occ_perception/launch occ_perception/examples
	$(VENV)/bin/ruff format --check occ_perception/occ_perception occ_perception/test occ_perception/launch occ_perception/examples
	cd occ_perception && ../$(VENV)/bin/mypy

# pytest runs inside occ_perception/: from the repository root that folder (the ament
# package, no __init__.py) would shadow the Python package of the same name.
test-main: $(STAMP)
	cd occ_perception && ../$(PY) -m pytest -q --durations=15 test

$(COMPAT)/.installed: requirements-compat.txt occ_perception/setup.py occ_perception/test/requirements-devkit.txt
	test -x $(COMPAT)/bin/python || $(PYTHON310) -m venv $(COMPAT)
	$(COMPAT)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-compat.txt
	$(COMPAT)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e ./occ_perception
	$(COMPAT)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r occ_perception/test/requirements-devkit.txt
	touch $@

ifeq ($(PYTHON310),)
test-compat:
	@echo "test-compat: no python3.10 on this machine; the Python 3.10 / numpy 1.x run is skipped"
else
test-compat: $(COMPAT)/.installed
	$(COMPAT)/bin/python -c "import sys, numpy; print('compat run: Python', sys.version.split()[0], 'numpy', numpy.__version__)"
	cd occ_perception && ../$(COMPAT)/bin/python -m pytest -q --durations=10 test
endif

# the fuzz tests of test/test_fuzz.py with many more inputs per target than in `make test`
# (hypothesis profile 'fuzz'; OCC_FUZZ_EXAMPLES overrides the count)
fuzz: $(STAMP)
	cd occ_perception && OCC_FUZZ_PROFILE=fuzz ../$(PY) -m pytest -q -s test/test_fuzz.py

# one synthetic 20 s scene (12 Hz sweeps, seed 3000) -> bag -> replay with models/tiny_k2 -> demo_out/
demo: $(STAMP)
	$(VENV)/bin/occ-perception demo --out demo_out

bench: $(STAMP)
	$(VENV)/bin/occ-perception bench --json bench_out/bench.json

# the scaling curves (grid size: splat, output encoding; K = 0..8: network) as PNG, with the history stage
bench-curves: $(STAMP)
	$(VENV)/bin/occ-perception bench --stages history --plots bench_out/plots --json bench_out/bench_curves.json

clean:
	rm -rf $(VENV) $(COMPAT) build occ_perception/build occ_perception/*.egg-info
