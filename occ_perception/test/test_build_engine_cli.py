"""`occ-perception build-engine`: profile, cache key per camera count, and its one-line errors (exit status 2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip('torch')

import test_trt_fake
from occ_perception.cli import main
from occ_perception.model.config import get_config
from occ_perception.model.network import OccNet
from occ_perception.runtime.engine import onnx_io_specs, shape_ranges, sidecar_path
from occ_perception.runtime.export import export_onnx, sample_inputs
from test_trt_fake import FakeCudart

fakes = test_trt_fake.fakes  # the fake tensorrt / cuda-python fixture


@pytest.fixture(scope='module')
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(OccNet(get_config('tiny')), tmp_path_factory.mktemp('engine') / 'tiny.onnx')


def test_profile_of_the_nuscenes_rig(tiny_onnx: Path) -> None:
    net = OccNet(get_config('tiny'))
    inputs, _ = onnx_io_specs(tiny_onnx)
    feeds = sample_inputs(net)
    ranges = shape_ranges(inputs, feeds, headroom=2.0, exact=('images',))
    assert ranges['images'].min == ranges['images'].max == feeds['images'].shape
    for name in net.table_names():
        r = ranges[name]
        assert r.opt == feeds[name].shape and r.admits(feeds[name].shape)
        fixed = [e is not None for e in next(s for s in inputs if s.name == name).shape]
        for dim, is_fixed in enumerate(fixed):
            if not is_fixed:
                assert r.min[dim] == 1 and r.max[dim] >= 2 * feeds[name].shape[dim] - 1


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in err, err
    assert lines[0].startswith('occ-perception build-engine: error: ')
    return lines[0]


def test_build_engine_refuses_an_onnx_of_another_config(tiny_onnx: Path, capsys) -> None:
    assert main(['build-engine', str(tiny_onnx), '--config', 'flashocc-m0']) == 2
    err = one_error_line(capsys)
    assert 'does not match the model configuration' in err and 'images' in err


def test_build_engine_without_an_onnx_file(tmp_path: Path, capsys) -> None:
    assert main(['build-engine', str(tmp_path / 'missing.onnx'), '--config', 'tiny']) == 2
    assert 'no ONNX file' in one_error_line(capsys)


def test_build_engine_without_tensorrt_says_how_to_get_it(tiny_onnx: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, 'tensorrt', None)
    assert main(['build-engine', str(tiny_onnx), '--config', 'tiny']) == 2
    assert 'pip install tensorrt' in one_error_line(capsys)
    assert not list(tiny_onnx.parent.glob('*.engine'))


def test_build_engine_without_a_gpu(tiny_onnx: Path, capsys, fakes) -> None:
    fakes(cudart=FakeCudart(devices=0))
    assert main(['build-engine', str(tiny_onnx), '--config', 'tiny', '--precision', 'fp32']) == 2
    assert 'cudaErrorNoDevice' in one_error_line(capsys)


def test_build_engine_for_a_camera_count(tmp_path: Path, tiny_onnx: Path, capsys, fakes) -> None:
    trt, _ = fakes('11.4.0.106')
    onnx_path = tmp_path / tiny_onnx.name
    onnx_path.write_bytes(tiny_onnx.read_bytes())
    engines = []
    for cameras in (4, 6):
        assert (
            main(['build-engine', str(onnx_path), '--config', 'tiny', '--precision', 'fp32', '--cameras', str(cameras)])
            == 0
        )
        out = capsys.readouterr().out
        engines.append(Path(out.split('engine: ', 1)[1].strip()))
        key = json.loads(sidecar_path(engines[-1]).read_text())['key']
        images = key['profile']['images']
        assert images['min'][0] == images['opt'][0] == images['max'][0] == cameras
    assert engines[0] != engines[1] and len(trt.builds) == 2
    # the tables of a 4-camera rig are shorter than those of the 6-camera rig
    tables = [json.loads(sidecar_path(e).read_text())['key']['profile']['splat_depth_index']['opt'][0] for e in engines]
    assert tables[0] < tables[1]
    assert main(['build-engine', str(onnx_path), '--config', 'tiny', '--cameras', '9']) == 2
    assert '--cameras' in one_error_line(capsys)
