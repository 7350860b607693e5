"""ONNX export: op set, onnxruntime vs torch parity, one graph for several rigs, temporal history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip('torch')  # absent in the Python 3.10 compatibility run

from occ_perception.cli import main as cli_main
from occ_perception.geometry import Transform, bev_warp_affine
from occ_perception.model.bev import HistoryWarp
from occ_perception.model.checkpoint import load_checkpoint, save_checkpoint
from occ_perception.model.config import get_config
from occ_perception.model.network import OccNet
from occ_perception.model.splat_tables import splat_table_names
from occ_perception.rig import Camera, Rig
from occ_perception.runtime.base import BackendError
from occ_perception.runtime.export import (
    FORBIDDEN_OPS,
    ExportError,
    check_op_set,
    export_onnx,
    graph_op_types,
    sample_inputs,
)
from occ_perception.runtime.ort_backend import OnnxRuntimeBackend
from occ_perception.runtime.torch_backend import TorchBackend

EXPECTED_INPUTS = ('images', *splat_table_names())
HISTORY_INPUTS = ('history_bev', 'history_theta', 'history_valid')
OUTPUTS = ('labels', 'confidence', 'flow', 'bev_feature')


def export_via_cli(tmp: Path, name: str, history: int, seed: int = 0) -> tuple[OccNet, Path]:
    """Save a seeded random network as our checkpoint, export it with the CLI, and reload it for torch."""
    torch.manual_seed(seed)
    net = OccNet(get_config(name, history=history))
    ckpt = tmp / f'{name}_k{history}.pt'
    save_checkpoint(net, ckpt)
    out = tmp / f'{name}_k{history}.onnx'
    argv = ['export', '--config', name, '--checkpoint', str(ckpt), '--out', str(out)]
    if history:
        argv += ['--history', str(history)]
    assert cli_main(argv) == 0
    return load_checkpoint(ckpt).eval(), out


@pytest.fixture(scope='session')
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], tuple[OccNet, Path]]:
    """All three configs exported once per session, with and without history K=2."""
    tmp = tmp_path_factory.mktemp('onnx')
    return {(name, k): export_via_cli(tmp, name, k) for name in ('tiny', 'flashocc-m0', 'flashocc-m1') for k in (0, 2)}


def assert_parity(net: OccNet, path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    ort_out = OnnxRuntimeBackend(path).run(feeds)
    ref = TorchBackend(net, net.input_specs(), net.output_names()).run(feeds)
    assert ort_out['labels'].dtype == np.uint8 and ort_out['labels'].shape == (200, 200, 16)
    assert ort_out['confidence'].dtype == np.uint8
    assert ort_out['flow'].dtype == np.float32 and ort_out['flow'].shape == (200, 200, 16, 2)
    agree = float((ort_out['labels'] == ref['labels']).mean())
    assert agree >= 0.999, agree
    assert np.abs(ort_out['flow'] - ref['flow']).max() < 1e-3
    assert np.abs(ort_out['confidence'].astype(int) - ref['confidence'].astype(int)).max() <= 1
    np.testing.assert_allclose(ort_out['bev_feature'], ref['bev_feature'], atol=1e-4, rtol=1e-4)
    assert len(np.unique(ref['labels'])) > 1  # a degenerate constant output would make the check vacuous
    return ort_out


@pytest.mark.parametrize('name', ['tiny', 'flashocc-m0', 'flashocc-m1'])
@pytest.mark.parametrize('history', [0, 2])
def test_export_graph_interface_and_ops(exports: dict, name: str, history: int) -> None:
    net, path = exports[(name, history)]
    model = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(str(path))
    inputs = tuple(i.name for i in model.graph.input)
    assert inputs == EXPECTED_INPUTS + (HISTORY_INPUTS if history else ())
    assert tuple(o.name for o in model.graph.output) == OUTPUTS
    ops = graph_op_types(model)
    for op in ('Gather', 'ReduceSum', 'ArgMax', 'Conv'):
        assert op in ops
    assert not set(ops) & set(FORBIDDEN_OPS), ops
    assert all('::' not in op for op in ops)
    assert all(o.domain in ('', 'ai.onnx') for o in model.opset_import)
    assert ('GridSample' in ops) == bool(history)
    assert 'AffineGrid' not in ops
    # GroupNorm (tiny) exports at opset 17 as Reshape - InstanceNormalization - Reshape - Mul - Add
    assert ('InstanceNormalization' in ops) == (net.config.norm == 'group')
    # table lengths and the camera count are dynamic
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert isinstance(dims['images'][0], str) and dims['images'][1:] == [
        net.config.image_size[1],
        net.config.image_size[0],
        3,
    ]
    assert all(isinstance(d, str) for d in dims['splat_depth_index'] + dims['splat_reduce_2'])
    assert dims['splat_cell_index'] == [40000]


def test_op_check_rejects_scatter_and_custom_domain() -> None:
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node('ScatterElements', ['x', 'i', 'u'], ['y'], reduction='add'),
            onnx.helper.make_node('BevPoolV2', ['y'], ['z'], domain='mmdeploy'),
        ],
        'g',
        [],
        [],
    )
    with pytest.raises(ExportError, match=r'ScatterElements.*mmdeploy::BevPoolV2|mmdeploy::BevPoolV2.*ScatterElements'):
        check_op_set(onnx.helper.make_model(graph))


@pytest.mark.parametrize('name', ['tiny', 'flashocc-m0'])
def test_onnxruntime_matches_torch(exports: dict, name: str) -> None:
    net, path = exports[(name, 0)]
    assert_parity(net, path, sample_inputs(net, seed=3))


def test_dynamo_exporter_gives_same_graph_interface(tmp_path: Path) -> None:
    torch.manual_seed(4)
    net = OccNet(get_config('tiny', history=2)).eval()
    path = export_onnx(net, tmp_path / 'tiny_dynamo.onnx', dynamo=True)
    model = onnx.load(str(path))
    assert tuple(i.name for i in model.graph.input) == EXPECTED_INPUTS + HISTORY_INPUTS
    ops = graph_op_types(model)
    assert 'Gather' in ops and 'GridSample' in ops and not set(ops) & set(FORBIDDEN_OPS)
    assert 'GatherND' not in ops and 'AffineGrid' not in ops
    assert_parity(net, path, sample_inputs(net, perturbed_rig(), seed=2))


def perturbed_rig() -> Rig:
    """Five of the six nuScenes cameras at 1280 x 720, each turned by 4 degrees and moved by 0.15 m."""
    base = Rig.nuscenes(1280, 720)
    cams = []
    for i, cam in enumerate(c for c in base.cameras if c.name != 'cam_back'):
        nudge = Transform.from_yaw(np.deg2rad(4.0) * (-1) ** i, (0.15, -0.1, 0.05))
        cams.append(
            Camera(
                cam.name,
                cam.intrinsics * np.array([[1.03], [1.03], [1.0]]),
                cam.width,
                cam.height,
                nudge @ cam.cam_to_ego,
            )
        )
    return Rig(tuple(cams))


def test_one_graph_serves_two_rigs(exports: dict) -> None:
    net, path = exports[('tiny', 0)]
    backend = OnnxRuntimeBackend(path)
    feeds_a = sample_inputs(net, Rig.nuscenes(), seed=5)
    feeds_b = sample_inputs(net, perturbed_rig(), seed=5)
    assert feeds_b['images'].shape[0] == 5
    assert feeds_a['splat_depth_index'].shape != feeds_b['splat_depth_index'].shape
    out_a = assert_parity(net, path, feeds_a)
    out_b = assert_parity(net, path, feeds_b)
    assert not np.allclose(out_a['bev_feature'], out_b['bev_feature'])
    # the same backend object, only the tables (and images) change
    again = backend.run(feeds_a)
    np.testing.assert_array_equal(again['labels'], out_a['labels'])


@pytest.mark.parametrize('name', ['tiny', 'flashocc-m0'])
def test_temporal_export_matches_torch(exports: dict, name: str) -> None:
    net, path = exports[(name, 2)]
    feeds = sample_inputs(net, seed=7)
    out = assert_parity(net, path, feeds)
    if name != 'tiny':
        return
    backend = OnnxRuntimeBackend(path)
    # an invalid slot contributes exactly what a zero history map contributes
    masked = dict(feeds, history_valid=np.array([1.0, 0.0], dtype=np.float32))
    zeroed = dict(feeds, history_bev=feeds['history_bev'].copy())
    zeroed['history_bev'][1] = 0.0
    a, b = backend.run(masked), backend.run(zeroed)
    np.testing.assert_array_equal(a['labels'], b['labels'])
    np.testing.assert_allclose(a['flow'], b['flow'], atol=1e-6)
    # and the history does change the result
    assert not np.array_equal(a['confidence'], out['confidence'])
    with pytest.raises(BackendError, match='history_theta'):
        backend.run(dict(feeds, history_theta=np.zeros((3, 2, 3), np.float32)))


def test_history_warp_follows_ego_motion() -> None:
    """Driving 0.4 m forward moves the previous map by one cell toward -x (bev_warp_affine convention)."""
    grid = get_config('tiny').grid
    warp = HistoryWarp((200, 200))
    prev = torch.randn(1, 3, 200, 200)
    identity = torch.tensor(
        bev_warp_affine(Transform.from_yaw(0.3, (5, 2, 0)), Transform.from_yaw(0.3, (5, 2, 0)), grid)[:2],
        dtype=torch.float32,
    )
    same = warp(prev, identity[None], torch.ones(1))
    torch.testing.assert_close(same, prev, atol=1e-4, rtol=1e-4)
    pose_prev = Transform.from_yaw(0.0, (10.0, 3.0, 0.0))
    pose_cur = Transform.from_yaw(0.0, (10.4, 3.0, 0.0))
    theta = torch.tensor(bev_warp_affine(pose_prev, pose_cur, grid)[:2], dtype=torch.float32)
    moved = warp(prev, theta[None], torch.ones(1))
    # current cell x samples previous cell x + 1 (layout (C, Y, X)); the last column leaves the map
    torch.testing.assert_close(moved[..., :-1], prev[..., 1:], atol=1e-4, rtol=1e-4)
    assert moved[..., -1].abs().max() < 1e-6
    assert warp(prev, theta[None], torch.zeros(1)).abs().max() == 0


def test_backend_rejects_wrong_tables(exports: dict) -> None:
    net, path = exports[('tiny', 0)]
    feeds = sample_inputs(net)
    with pytest.raises(BackendError, match='splat_cell_index'):
        OnnxRuntimeBackend(path).run(dict(feeds, splat_cell_index=feeds['splat_cell_index'][:100]))
    with pytest.raises(BackendError, match='images'):
        OnnxRuntimeBackend(path).run(dict(feeds, images=feeds['images'].astype(np.float32)))
