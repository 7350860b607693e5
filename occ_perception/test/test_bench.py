"""``occ-perception bench`` on its quick stages: report structure, JSON, stage selection, the encode frame.

No timing is asserted (speed belongs to the benchmark itself); only that the figures exist and are positive.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from occ_perception.grid import FREE_LABEL, GridSpec
from occ_perception.outputs import surface_mask

pytest.importorskip('torch')
from occ_perception.cli import main  # noqa: E402
from occ_perception.runtime.bench import (  # noqa: E402
    STAGES,
    BenchError,
    Timing,
    encode_frame,
    run_bench,
    synthetic_jpegs,
)

ENCODE_FIGURES = [
    'encode_semantics',
    'encode_flow',
    'encode_points',
    'encode_markers',
    'encode_costmap',
    'encode_voxel_grid',
    'encode_total',
    'encode_total_without_markers',
]
# the MarkerArray through rclpy: the CLI passes a real publisher where a sourced ROS 2 provides rclpy (not in CI)
RCLPY = importlib.util.find_spec('rclpy') is not None
RCLPY_FIGURES = [
    'markers_rclpy_build',
    'markers_rclpy_publish',
    'markers_rclpy_total',
    'markers_rclpy_every_voxel_publish',
]
PREPROCESS_FIGURES = ['preprocess_ours', 'preprocess_ours_1thread', 'preprocess_pil']


def _check_figure(name: str, fig: dict, repeats: int) -> None:
    assert set(fig) == {'median_ms', 'p10_ms', 'p90_ms', 'cpu_median_ms', 'repeats'}, name
    assert fig['repeats'] == repeats, name
    assert 0 < fig['p10_ms'] <= fig['median_ms'] <= fig['p90_ms'], (name, fig)
    assert fig['cpu_median_ms'] is None or fig['cpu_median_ms'] >= 0, (name, fig)


def test_quick_stages_write_a_complete_json(tmp_path: Path) -> None:
    lines: list[str] = []
    out = tmp_path / 'sub' / 'bench.json'
    report = run_bench(
        repeats=5, stages=('preprocess', 'encode'), images='texture', json_path=out, print_fn=lines.append
    )
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(report))
    assert data['stages'] == ['preprocess', 'encode']
    assert set(data['figures']) == set(ENCODE_FIGURES + PREPROCESS_FIGURES)  # no splat or network figures
    for name, fig in data['figures'].items():
        _check_figure(name, fig, 5)
    machine = data['machine']
    assert machine['cpu_count'] >= 1
    for lib in ('python', 'numpy', 'torch', 'onnxruntime', 'PIL', 'opencv'):
        assert isinstance(machine[lib], str) and machine[lib][0].isdigit(), lib
    assert len(data['load_before']) == 3 and len(data['load_after']) == 3
    assert data['derived']['preprocess_ratio_pil_over_ours'] > 0
    enc = data['info']['encode']
    assert enc['grid'] == [200, 200, 16] and enc['occupied_voxels'] == 30_000
    assert 0 < enc['surface_voxels'] <= 30_000 and enc['moving_voxels'] > 0
    assert all(size > 0 for size in enc['message_bytes'].values())
    pre = data['info']['preprocess']
    assert pre['images'] == 'texture' and pre['jpeg_kb_mean'] > 50
    table = '\n'.join(lines)
    assert 'target <= 10 ms' in table and 'target >= 4' in table and str(out) in table
    assert 'rclpy' in data['info']['encode_rclpy']['skipped']  # no publisher given
    assert 'MarkerArray through rclpy: skipped' in table


def test_cli_runs_one_stage(tmp_path: Path) -> None:
    out = tmp_path / 'b.json'
    assert main(['bench', '--stages', 'encode', '--repeats', '5', '--json', str(out)]) == 0
    data = json.loads(out.read_text())
    assert data['stages'] == ['encode'] and set(data['figures']) == set(ENCODE_FIGURES + RCLPY_FIGURES * RCLPY)
    rclpy_info = data['info']['encode_rclpy']
    if RCLPY:  # our cubes on a real publisher, against publishing every occupied voxel
        assert rclpy_info['points_ours'] < 0.5 * rclpy_info['points_every_voxel'] == 0.5 * 30_000
    else:
        assert 'rclpy' in rclpy_info['skipped']


def test_unknown_stage_is_refused(capsys) -> None:
    assert main(['bench', '--stages', 'encode,warp']) == 2
    err = capsys.readouterr().err
    assert "'encode,warp'" in err and 'preprocess' in err
    with pytest.raises(BenchError, match='stages'):
        run_bench(stages=('encode', 'warp'))
    assert STAGES == ('preprocess', 'encode', 'naive', 'splat', 'network', 'history')


def test_bad_history_ks_are_refused(capsys) -> None:
    assert main(['bench', '--stages', 'history', '--history-ks', '0,-2']) == 2
    assert '--history-ks' in capsys.readouterr().err
    assert main(['bench', '--stages', 'history', '--history-ks', 'two']) == 2
    assert "'two'" in capsys.readouterr().err


def test_timing_percentiles() -> None:
    t = Timing.of('x', [0.004, 0.001, 0.002, 0.003, 0.005], [0.001] * 5)
    assert (t.median_s, t.repeats, t.cpu_median_s) == (0.003, 5, 0.001)
    assert 0.001 < t.p10_s < 0.002 and 0.004 < t.p90_s < 0.005
    with pytest.raises(BenchError):
        Timing.of('x', [])


@pytest.mark.parametrize(
    'grid, occupied',
    [(GridSpec(), 30_000), (GridSpec(lower=(-20.0, -30.0, -1.0), size=(100, 150, 16), voxel_size=0.4), 12_000)],
)
def test_encode_frame_has_exactly_the_occupied_count(grid: GridSpec, occupied: int) -> None:
    frame = encode_frame(grid, occupied)
    labels = frame.labels
    assert int(np.count_nonzero((labels != FREE_LABEL) & (labels != 255))) == occupied
    assert frame.occupied_indices.size == occupied
    moving = np.hypot(frame.flow[..., 0], frame.flow[..., 1]) > 0.5
    assert moving.any() and not moving[labels == FREE_LABEL].any()  # flow only on occupied voxels
    assert set(np.unique(labels[moving]).tolist()) <= {4, 7}  # cars and pedestrians move, nothing else
    assert 11 in labels and 13 in labels and 15 in labels and 16 in labels
    assert 0 < int(surface_mask(labels).sum()) < occupied


def test_encode_frame_refuses_too_few_voxels() -> None:
    with pytest.raises(BenchError, match='objects alone'):
        encode_frame(GridSpec(), 1_000)


def test_texture_jpegs_are_six_full_size_images() -> None:
    import cv2

    jpegs = synthetic_jpegs('texture')
    assert len(jpegs) == 6
    for data in jpegs:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (900, 1600, 3) and img.std() > 10
    with pytest.raises(BenchError, match='texture'):
        synthetic_jpegs('noise')


# ---------------------------------------------------------------------------
# baselines and scaling curves

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
SMALL_GRID = GridSpec(lower=(-20.0, -30.0, -1.0), size=(60, 80, 8), voxel_size=0.4)


def test_baseline_stages_and_curves_write_json_and_pngs(tmp_path: Path) -> None:
    out, plots = tmp_path / 'bench.json', tmp_path / 'plots'
    lines: list[str] = []
    run_bench(
        repeats=2,
        naive_repeats=1,
        stages=('naive', 'splat', 'history'),
        history_ks=(0, 1),
        plots_dir=plots,
        curve_repeats=1,
        curve_sizes=(100,),
        curve_heights=(8, 16),
        curve_ks=(0, 1),
        encode_grid=SMALL_GRID,
        encode_occupied=6_000,
        json_path=out,
        print_fn=lines.append,
    )
    data = json.loads(out.read_text())
    naive = [f'{n}_{w}' for n in ('fill_semantics', 'fill_flow', 'markers') for w in ('ours', 'naive')]
    splat = ['splat_ort', 'splat_scatter_ort', 'splat_torch']
    history = ['history_cached_k0', 'history_cached_k1', 'history_recompute_k1']
    assert set(data['figures']) == set(naive + splat + history)
    for name in naive:
        _check_figure(name, data['figures'][name], 1)
    for name in splat + history:
        _check_figure(name, data['figures'][name], 2)
    info = data['info']
    assert info['naive']['cdr_equal'] == {'semantics': True, 'flow': True}
    assert info['naive']['grid'] == [60, 80, 8] and info['naive']['occupied_voxels'] == 6_000
    assert 0 < info['naive']['marker_voxels_ours'] < info['naive']['marker_points_naive'] == 6_000
    assert info['naive']['marker_points_ours'] < 0.5 * info['naive']['marker_voxels_ours']  # ground merged in tiles
    assert info['splat']['max_abs_diff_scatter'] < 1e-4 and info['splat']['max_abs_diff_torch'] < 1e-4
    assert info['splat']['bev_size'] == [200, 200] and info['splat']['frustum_points_in_grid'] > 0
    assert set(info['history']['ratio_to_cached_k0']) == set(history)
    for name in ('fill_semantics', 'fill_flow', 'markers'):
        assert data['derived'][f'{name}_ratio_naive_over_ours'] > 0
    assert data['derived']['splat_ratio_scatter_over_ours'] > 0

    curves = data['curves']
    assert sorted((p['size'], p['path']) for p in curves['splat']) == [(100, 'ours'), (100, 'scatter'), (100, 'torch')]
    assert sorted((p['height'], p['path']) for p in curves['encode']) == [
        (8, 'all'),
        (8, 'without_markers'),
        (16, 'all'),
        (16, 'without_markers'),
    ]
    assert sorted((p['k'], p['path']) for p in curves['history']) == [
        (0, 'cached'),
        (0, 'recompute'),
        (1, 'cached'),
        (1, 'recompute'),
    ]
    for point in curves['splat'] + curves['encode'] + curves['history']:
        assert 0 < point['p10_ms'] <= point['median_ms'] <= point['p90_ms'] and point['repeats'] == 1
    names = sorted(Path(p).name for p in data['plots'])
    assert names == ['encode_vs_grid.png', 'network_vs_history.png', 'splat_vs_grid.png']
    for name in names:
        blob = (plots / name).read_bytes()
        assert blob[:8] == PNG_SIGNATURE and len(blob) > 5_000
    table = '\n'.join(lines)
    assert 'ScatterElements' in table and 'element-by-element' in table and 'recompute 1 history frames' in table


def test_naive_messages_equal_ours_byte_for_byte() -> None:
    from occ_perception.messages import MessageTypes, read_occupancy_flow, read_semantic_occupancy, rosbags_typestore
    from occ_perception.outputs import occupancy_flow_msg, semantic_occupancy_msg
    from occ_perception.runtime.baselines import naive_occupancy_flow_msg, naive_semantic_occupancy_msg

    frame = encode_frame(SMALL_GRID, 6_000, seed=3)
    types = MessageTypes.rosbags('jazzy')
    store = rosbags_typestore('jazzy')
    for ours, naive, msgtype in (
        (semantic_occupancy_msg, naive_semantic_occupancy_msg, 'occ_perception_msgs/msg/SemanticOccupancy'),
        (occupancy_flow_msg, naive_occupancy_flow_msg, 'occ_perception_msgs/msg/OccupancyFlow'),
    ):
        a = bytes(store.serialize_cdr(ours(frame, types), msgtype))
        b = bytes(store.serialize_cdr(naive(frame, types), msgtype))
        assert a == b, msgtype
    # and the naive fill is itself right: [x, y, z] order, occupied voxels only
    sem_type = 'occ_perception_msgs/msg/SemanticOccupancy'
    cdr = store.serialize_cdr(naive_semantic_occupancy_msg(frame, types), sem_type)
    sem = read_semantic_occupancy(store.deserialize_cdr(cdr, sem_type))
    assert np.array_equal(sem.labels, frame.labels) and np.array_equal(sem.confidence, frame.confidence)
    flow = read_occupancy_flow(naive_occupancy_flow_msg(frame, types))
    occupied = np.flatnonzero((frame.labels != FREE_LABEL).reshape(-1))
    assert np.array_equal(flow.indices, occupied)
    assert np.array_equal(flow.velocity, frame.flow.reshape(-1, 2)[occupied])


def test_naive_markers_hold_every_occupied_voxel_and_ours_a_subset() -> None:
    from occ_perception.messages import MessageTypes
    from occ_perception.outputs import marker_array_msg
    from occ_perception.runtime.baselines import naive_marker_array_msg

    frame = encode_frame(SMALL_GRID, 6_000, seed=4)
    types = MessageTypes.rosbags('jazzy')

    def points(msg) -> dict[int, set]:
        return {m.id: {(p.x, p.y, p.z) for p in m.points} for m in msg.markers if m.ns == 'occupancy' and m.points}

    naive, ours = points(naive_marker_array_msg(frame, types)), points(marker_array_msg(frame, types))
    flat = frame.labels.reshape(-1)
    for label in np.unique(flat[flat != FREE_LABEL]).tolist():
        centres = SMALL_GRID.flat_centers(np.flatnonzero(flat == label))
        assert naive[label] == {tuple(c) for c in centres.tolist()}, label
        assert ours[label] <= naive[label] and len(ours[label]) > 0
    assert sum(len(v) for v in naive.values()) == 6_000 > sum(len(v) for v in ours.values())


def test_scatter_splat_graph_equals_index_add_on_a_non_square_grid(tmp_path: Path) -> None:
    import dataclasses

    import onnx
    import torch
    from occ_perception.model.config import get_config
    from occ_perception.model.splat_reference import splat_index_add, splat_ranks
    from occ_perception.model.splat_tables import frustum_cells
    from occ_perception.rig import Rig
    from occ_perception.runtime.baselines import scatter_splat_onnx
    from occ_perception.runtime.export import graph_op_types
    from occ_perception.runtime.ort_backend import OnnxRuntimeBackend

    grid = GridSpec(lower=(-30.0, -40.0, -1.0), size=(150, 200, 16), voxel_size=0.4)
    cfg = dataclasses.replace(get_config('tiny'), grid=grid)
    assert cfg.bev_size == (150, 200)
    cells = frustum_cells(cfg, Rig.nuscenes().matrices(*cfg.image_size))
    w, h = cfg.feature_size
    gen = torch.Generator().manual_seed(1)
    depth = torch.rand(6, cfg.num_depth_bins, h, w, generator=gen).softmax(1)
    feat = torch.randn(6, cfg.context_channels, h, w, generator=gen)
    ranks = splat_ranks(cells, tuple(depth.shape))
    path = scatter_splat_onnx(tmp_path / 'scatter.onnx', cfg.bev_size, cfg.context_channels)
    model = onnx.load(str(path))
    scatter = [n for n in model.graph.node if n.op_type == 'ScatterElements']
    assert len(scatter) == 1 and graph_op_types(model)['ScatterElements'] == 1
    assert {a.name: a.s for a in scatter[0].attribute}['reduction'] == b'add'
    feeds = {'depth': depth.numpy(), 'feat': feat.numpy()}
    feeds.update({n: r.numpy() for n, r in zip(('ranks_depth', 'ranks_feat', 'ranks_bev'), ranks)})
    got = OnnxRuntimeBackend(path).run(feeds)['bev']
    want = splat_index_add(depth, feat, ranks, cfg.bev_size).numpy()
    assert got.shape == (cfg.context_channels, 200, 150) and np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, atol=1e-4)
