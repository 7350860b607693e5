"""Every command turns an ordinary mistake into one line on stderr naming the input, and exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from occ_perception.cli import main

from occ_perception import cli

MISSING = '/nonexistent-occ-input'


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        status = main(argv)
    except SystemExit as stop:  # argparse mistakes
        status = stop.code
    return int(status), capsys.readouterr().err


# (argv, text the message must contain, needs torch)
CASES = [
    (['info', '--bogus'], '--bogus', False),
    (['synth', '--out', '{tmp}/data', '--scenes', '0', '--quiet'], '--scenes', False),
    (['synth', '--out', '{tmp}/data', '--width', 'wide'], '--width', False),
    (['synth', '--out', '{tmp}/a-file', '--quiet'], 'a-file', False),
    (['import-flashocc', MISSING + '/m0.pth', '--config', 'flashocc-m0', '--out', '{tmp}/ours.pt'], 'm0.pth', True),
    (['import-flashocc', '{tmp}/a-file', '--config', 'flashocc-m0', '--out', '{tmp}/ours.pt'], 'a-file', True),
    (['import-flashocc', '{tmp}/a.pth', '--config', 'flashocc-m9', '--out', '{tmp}/ours.pt'], 'flashocc-m9', False),
    (['export', '--config', 'tiny', '--checkpoint', MISSING + '/tiny.pt', '--out', '{tmp}/t.onnx'], 'tiny.pt', True),
    (['export', '--config', 'tiny', '--history', '-1', '--out', '{tmp}/t.onnx'], 'history', True),
    (['export', '--config', 'no-such-config', '--out', '{tmp}/t.onnx'], 'no-such-config', False),
    (['build-engine', '{tmp}/t.onnx', '--config', 'tiny', '--precision', 'int3'], 'int3', False),
    (['bench', '--repeats', '0'], '--repeats', False),
    (['bench', '--threads', '-2'], '--threads', False),
]


@pytest.mark.parametrize(
    'argv, names, needs_torch', CASES, ids=[' '.join(c[0][:2]) + f' #{i}' for i, c in enumerate(CASES)]
)
def test_bad_argument_gives_one_line_and_status_2(argv, names, needs_torch, tmp_path: Path, capsys) -> None:
    if needs_torch:
        pytest.importorskip('torch')
    (tmp_path / 'a-file').write_text('not a checkpoint, not a folder')
    status, err = run([a.replace('{tmp}', str(tmp_path)) for a in argv], capsys)
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert names in lines[0] and 'error' in lines[0]
    assert 'Traceback' not in err
    assert not (tmp_path / 'ours.pt').exists() and not (tmp_path / 't.onnx').exists()


def test_console_command_has_no_traceback(tmp_path: Path) -> None:
    """The installed entry point, as a user runs it."""
    pytest.importorskip('torch')
    proc = subprocess.run(
        [
            sys.executable,
            '-m',
            'occ_perception.cli',
            'import-flashocc',
            str(tmp_path / 'missing.pth'),
            '--config',
            'flashocc-m0',
            '--out',
            str(tmp_path / 'ours.pt'),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert 'Traceback' not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert 'missing.pth' in proc.stderr


def test_unexpected_errors_keep_their_traceback(monkeypatch, capsys) -> None:
    def broken(args):
        raise ZeroDivisionError('a bug')

    monkeypatch.setattr(cli, 'cmd_info', broken)
    with pytest.raises(ZeroDivisionError):
        main(['info'])

    def numpy_value_error(args):  # a ValueError that is not one of the package's errors is a bug too
        import numpy as np

        np.zeros(3).reshape(2, 2)

    monkeypatch.setattr(cli, 'cmd_info', numpy_value_error)
    with pytest.raises(ValueError):
        main(['info'])
