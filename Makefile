# occ_perception developer commands. No ROS needed: everything runs in a venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test

.PHONY: test demo bench venv clean

venv: $(STAMP)

$(STAMP): occ_perception/setup.py constraints.txt occ_perception/test/requirements-devkit.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e './occ_perception[test]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r occ_perception/test/requirements-devkit.txt
	touch $@

# From inside occ_perception/: `python -m pytest` puts the working directory on sys.path, and at the
# repository root the folder occ_perception/ (no __init__.py) would shadow the installed package as
# a namespace package; one level down, occ_perception/occ_perception is the real package.
test: $(STAMP)
	cd occ_perception && $(abspath $(PY)) -m pytest -q test

demo: $(STAMP)
	@echo "make demo arrives with the synthetic world and the shipped tiny model (see README)." >&2
	@exit 2

bench: $(STAMP)
	$(PY) -m occ_perception.cli bench

clean:
	rm -rf $(VENV) build occ_perception/build occ_perception/*.egg-info
