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
    # a model file that is missing, truncated or of the wrong kind: one error at start, naming it
    (['replay', '{tmp}', '--model', MISSING + '/m.onnx', '--out', '{tmp}/o'], 'm.onnx', True),
    (['replay', '{tmp}', '--model', '{tmp}/a-file', '--out', '{tmp}/o'], 'a-file', True),
    (['replay', '{tmp}', '--model', '{tmp}/cut.onnx', '--out', '{tmp}/o'], 'cut.onnx', True),
    (['replay', '{tmp}', '--model', '{tmp}/cut.pt', '--backend', 'torch', '--out', '{tmp}/o'], 'cut.pt', True),
    (['replay', '{tmp}', '--model', '{tmp}/cut.onnx', '--backend', 'torch', '--out', '{tmp}/o'], 'cut.onnx', True),
    (
        ['eval', '--model', MISSING + '/m.pt', '--backend', 'torch', '--dataroot', '{tmp}', '--out', '{tmp}/o'],
        'm.pt',
        True,
    ),
    (['eval', '--model', '{tmp}/a-file', '--dataroot', '{tmp}', '--out', '{tmp}/o'], 'a-file', True),
    (['eval', '--model', '{tmp}/cut.onnx', '--dataroot', '{tmp}', '--out', '{tmp}/o'], 'cut.onnx', True),
    (
        ['eval', '--model', '{tmp}/cut.pt', '--backend', 'torch', '--dataroot', '{tmp}', '--out', '{tmp}/o'],
        'cut.pt',
        True,
    ),
]


def _truncated_models(folder: Path) -> None:
    """cut.onnx: the first half of a real ONNX graph; cut.pt: a zip archive (torch.save's format) cut short."""
    import io
    import zipfile

    onnx = pytest.importorskip('onnx')
    from onnx import TensorProto, helper

    node = helper.make_node('Identity', ['images'], ['labels'])
    graph = helper.make_graph(
        [node],
        'g',
        [helper.make_tensor_value_info('images', TensorProto.UINT8, [6, 128, 352, 3])],
        [helper.make_tensor_value_info('labels', TensorProto.UINT8, [6, 128, 352, 3])],
    )
    data = helper.make_model(graph).SerializeToString()
    (folder / 'cut.onnx').write_bytes(data[: len(data) // 2])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as archive:
        archive.writestr('archive/data.pkl', b'\x80\x02}q\x00.' * 200)
    (folder / 'cut.pt').write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert onnx is not None


@pytest.mark.parametrize(
    'argv, names, needs_torch', CASES, ids=[' '.join(c[0][:2]) + f' #{i}' for i, c in enumerate(CASES)]
)
def test_bad_argument_gives_one_line_and_status_2(argv, names, needs_torch, tmp_path: Path, capsys) -> None:
    if needs_torch:
        pytest.importorskip('torch')
    (tmp_path / 'a-file').write_text('not a checkpoint, not a folder')
    if needs_torch:
        _truncated_models(tmp_path)
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
