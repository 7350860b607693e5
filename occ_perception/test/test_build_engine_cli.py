"""`occ-perception build-engine` up to the point where TensorRT is needed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip('torch')

from occ_perception.cli import main  # noqa: E402
from occ_perception.model.config import get_config  # noqa: E402
from occ_perception.model.network import OccNet  # noqa: E402
from occ_perception.runtime.engine import onnx_io_specs, shape_ranges  # noqa: E402
from occ_perception.runtime.export import export_onnx, sample_inputs  # noqa: E402


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


def test_build_engine_refuses_an_onnx_of_another_config(tiny_onnx: Path, capsys) -> None:
    assert main(['build-engine', str(tiny_onnx), '--config', 'flashocc-m0']) == 1
    err = capsys.readouterr().err
    assert 'does not match the model configuration' in err and 'images' in err


def test_build_engine_without_tensorrt_says_how_to_get_it(tiny_onnx: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, 'tensorrt', None)
    assert main(['build-engine', str(tiny_onnx), '--config', 'tiny']) == 1
    assert 'pip install tensorrt' in capsys.readouterr().err
    assert not list(tiny_onnx.parent.glob('*.engine'))
