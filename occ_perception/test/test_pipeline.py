"""The ROS-free frame path: real message types, a real exported ONNX graph, a small synthetic dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import Recording, recording_torch

torch = pytest.importorskip('torch')  # the tests export their ONNX models with torch

from occ_perception.data.synth_nuscenes import SynthConfig, generate_dataset
from occ_perception.geometry import Transform, bev_warp_affine
from occ_perception.model.checkpoint import save_checkpoint
from occ_perception.model.config import get_config
from occ_perception.model.network import OccNet
from occ_perception.model.splat_tables import build_splat_tables
from occ_perception.pipeline import OccPipeline, PipelineError, load_model
from occ_perception.preprocess import Preprocessor
from occ_perception.rig import Camera, Rig
from occ_perception.temporal import bev_grid_for
from rosbags.typesys import Stores, get_typestore

STORE = get_typestore(Stores.ROS2_JAZZY)
CompressedImage = STORE.types['sensor_msgs/msg/CompressedImage']
Image = STORE.types['sensor_msgs/msg/Image']
Header = STORE.types['std_msgs/msg/Header']
Time = STORE.types['builtin_interfaces/msg/Time']

NS = 1_000_000_000
T0 = 1_700_000_000 * NS


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """Two synthetic scenes of 3 keyframes, the nuScenes devkit tables read through the dataset code."""
    pytest.importorskip('nuscenes')
    from occ_perception.data.occ3d import Occ3DDataset

    out = tmp_path_factory.mktemp('synth')
    generate_dataset(SynthConfig(out=out, scenes=2, seconds=1.5, seed=3, width=320, height=180), progress=False)
    ds = Occ3DDataset(out, get_config('tiny'))
    scenes = [[f for f in frames if f.keyframe] for frames in ds.frames]
    return ds, scenes


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    """Random-weights tiny networks: K = 0 and K = 2 (offsets 0.5 s, 1.0 s), as ONNX and as our checkpoint."""
    from occ_perception.runtime.export import export_onnx

    folder = tmp_path_factory.mktemp('models')
    out = {}
    for k in (0, 2):
        torch.manual_seed(10 + k)
        net = OccNet(get_config('tiny', history=k)).eval()
        out[k] = (net, export_onnx(net, folder / f'tiny_k{k}.onnx'))
        save_checkpoint(net, folder / f'tiny_k{k}.pt')
    return out


def _jpegs(frame) -> list[bytes]:
    return [Path(p).read_bytes() for p in frame.image_paths]


def _messages(frame, stamp_ns: int) -> list[Any]:
    stamp = Time(sec=stamp_ns // NS, nanosec=stamp_ns % NS)
    return [
        CompressedImage(header=Header(stamp=stamp, frame_id='cam'), format='jpeg', data=np.frombuffer(j, np.uint8))
        for j in _jpegs(frame)
    ]


def test_labels_equal_backend_on_the_same_feeds(world, models):
    """K = 2 over one scene from CompressedImage messages: every output equals the backend run on feeds built here
    (own preprocessing, own tables, history from the backend's own earlier bev_feature and the ego motion)."""
    ds, scenes = world
    cfg = get_config('tiny', history=2)
    backend = load_model(models[2][1], cfg)
    pipe = OccPipeline(backend, cfg)
    frames = scenes[0]
    rig = ds.calibration(frames[0])
    w, h = cfg.image_size
    tables = build_splat_tables(cfg, rig.matrices(w, h))
    bev_grid = bev_grid_for(cfg.grid, (cfg.cache_channels, cfg.bev_size[1], cfg.bev_size[0]))
    previous: list[tuple[int, Transform, np.ndarray]] = []
    flows = []
    with Preprocessor(rig, cfg.image_size, threads=1) as prep:
        for i, frame in enumerate(frames):
            stamp = T0 + i * NS // 2  # 2 Hz
            occ = pipe.process(_messages(frame, stamp), frame.pose, rig)  # stamp from cam_front's header
            assert occ.stamp_ns == stamp and occ.frame_id == 'base_link' and occ.grid == cfg.grid
            feeds = {'images': prep(_messages(frame, stamp)), **tables}
            theta = np.tile(np.eye(3, dtype=np.float32)[:2], (2, 1, 1))
            bev = np.zeros((2, cfg.cache_channels, cfg.bev_size[1], cfg.bev_size[0]), np.float32)
            valid = np.zeros(2, np.float32)
            for slot, offset in enumerate((NS // 2, NS)):  # the entry exactly 0.5 s and 1.0 s ago, if any
                for s, pose, feature in previous:
                    if s == stamp - offset:
                        theta[slot] = bev_warp_affine(pose, frame.pose, bev_grid)[:2]
                        bev[slot], valid[slot] = feature, 1.0
            feeds.update(history_bev=bev, history_theta=theta, history_valid=valid)
            direct = backend.run(feeds)
            assert valid.sum() == min(i, 2)
            np.testing.assert_array_equal(occ.labels, direct['labels'])
            np.testing.assert_array_equal(occ.confidence, direct['confidence'])
            np.testing.assert_array_equal(occ.flow, direct['flow'])
            assert occ.labels.shape == cfg.grid.shape and occ.labels.dtype == np.uint8
            assert occ.flow.shape == cfg.grid.shape + (2,) and occ.flow.dtype == np.float32
            previous.append((stamp, frame.pose, direct['bev_feature']))
            flows.append(occ.flow)
            assert {'preprocess', 'network', 'cache', 'total'} <= set(occ.timings)
            assert ('tables' in occ.timings) == (i == 0)
            assert all(v >= 0 for v in occ.timings.values())
            assert occ.timings['total'] >= occ.timings['network']
    assert not np.array_equal(flows[0], flows[1])  # the outputs depend on the frame, so the comparison can fail
    pipe.close()


def test_history_free_model_skips_the_cache_and_bytes_equal_messages(world, models):
    ds, scenes = world
    cfg = get_config('tiny')
    rec = Recording(load_model(models[0][1], cfg))
    pipe = OccPipeline(rec, cfg)
    assert pipe.cache is None
    frame = scenes[1][0]
    rig = ds.calibration(frame)
    a = pipe.process(_jpegs(frame), frame.pose, rig, stamp_ns=T0)
    names = dict(zip(rig.names, _messages(frame, T0 + 7)))  # keyed by camera name, any order
    b = pipe.process(dict(reversed(list(names.items()))), frame.pose, rig)
    assert b.stamp_ns == T0 + 7 and b.reset_reason is None
    assert sorted(rec.feeds[0]) == sorted(['images', *pipe.tables])  # no history inputs for K = 0
    np.testing.assert_array_equal(rec.feeds[0]['images'], rec.feeds[1]['images'])
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.flow, b.flow)
    assert pipe.table_builds == 1
    with pytest.raises(PipelineError, match='no header.stamp'):
        pipe.process(_jpegs(frame), frame.pose, rig)
    with pytest.raises(PipelineError, match='5 images for a rig of 6 cameras'):
        pipe.process(_jpegs(frame)[:5], frame.pose, rig, stamp_ns=T0)
    # a raw sensor_msgs/Image for one camera goes through the same path
    raw = list(_messages(frame, T0 + 1))
    rgb = cv2.cvtColor(cv2.imread(frame.image_paths[2]), cv2.COLOR_BGR2RGB)
    raw[2] = Image(
        header=raw[2].header,
        height=rgb.shape[0],
        width=rgb.shape[1],
        encoding='rgb8',
        is_bigendian=0,
        step=rgb.shape[1] * 3,
        data=rgb.reshape(-1),
    )
    c = pipe.process(raw, frame.pose, rig)
    assert c.stamp_ns == T0 + 1 and c.labels.shape == cfg.grid.shape


def _moved(rig: Rig, dx: float) -> Rig:
    first = rig.cameras[0]
    moved = Camera(
        first.name,
        first.intrinsics,
        first.width,
        first.height,
        Transform(first.cam_to_ego.rotation, first.cam_to_ego.translation + np.array([dx, 0.0, 0.0])),
    )
    return Rig((moved,) + rig.cameras[1:])


def test_tables_once_per_calibration_and_rebuilt_with_a_reset(world, models):
    ds, scenes = world
    cfg = get_config('tiny', history=2)
    rec = Recording(load_model(models[2][1], cfg))
    pipe = OccPipeline(rec, cfg)
    frames = scenes[0]
    rig = ds.calibration(frames[0])
    stamps = [T0 + i * NS // 2 for i in range(4)]
    outs = [pipe.process(_jpegs(frames[i]), frames[i].pose, rig, stamp_ns=stamps[i]) for i in range(3)]
    assert pipe.table_builds == 1
    assert ['tables' in o.timings for o in outs] == [True, False, False]
    assert [o.reset_reason for o in outs] == [None, None, None]
    assert rec.feeds[2]['history_valid'].tolist() == [1.0, 1.0]
    # an equal rig built again (same numbers) keeps the tables and the history
    same = Rig(tuple(Camera(c.name, c.intrinsics.copy(), c.width, c.height, c.cam_to_ego) for c in rig.cameras))
    pipe.process(_jpegs(frames[2]), frames[2].pose, same, stamp_ns=stamps[3])
    assert pipe.table_builds == 1 and rec.feeds[3]['history_valid'].tolist() == [1.0, 1.0]
    # recalibration: new tables, the history dropped with the reason named
    moved = _moved(rig, 0.3)
    out = pipe.process(_jpegs(frames[0]), frames[0].pose, moved, stamp_ns=stamps[3] + NS // 2)
    assert pipe.table_builds == 2 and 'tables' in out.timings
    assert out.reset_reason == 'calibration'
    assert rec.feeds[4]['history_valid'].tolist() == [0.0, 0.0]
    expected = build_splat_tables(cfg, moved.matrices(*cfg.image_size))
    changed = [name for name in expected if not np.array_equal(rec.feeds[4][name], rec.feeds[0][name])]
    assert changed, 'moving a camera by 0.3 m must change the splat tables'
    for name, table in expected.items():
        np.testing.assert_array_equal(rec.feeds[4][name], table)
    # an explicit reset (new scene) also empties the history
    pipe.reset()
    pipe.process(_jpegs(frames[1]), frames[1].pose, moved, stamp_ns=stamps[3] + NS)
    assert rec.feeds[5]['history_valid'].tolist() == [0.0, 0.0] and pipe.table_builds == 2


def test_history_is_the_same_at_2_hz_and_12_hz(world, models):
    """At 12 Hz the frames in between carry other images; the keyframe at 1.0 s still sees the keyframes
    0.5 s and 1.0 s before it, exactly as at 2 Hz."""
    ds, scenes = world
    cfg = get_config('tiny', history=2)
    onnx = models[2][1]
    keys, other = scenes[0], scenes[1]
    rig = ds.calibration(keys[0])

    slow = Recording(load_model(onnx, cfg))
    pipe = OccPipeline(slow, cfg)
    for i, frame in enumerate(keys):
        last_slow = pipe.process(_jpegs(frame), frame.pose, rig, stamp_ns=T0 + i * NS // 2)

    fast = Recording(slow.inner)
    pipe = OccPipeline(fast, cfg)
    for j in range(13):  # 0 .. 1.0 s at 12 Hz
        if j % 6 == 0:
            frame = keys[j // 6]
            images, pose = _jpegs(frame), frame.pose
        else:  # another scene's images at an interpolated pose
            a, b = keys[j // 6].pose, keys[j // 6 + 1].pose
            u = (j % 6) / 6
            pose = Transform(a.rotation, (1 - u) * a.translation + u * b.translation)
            images = _jpegs(other[j % len(other)])
        last_fast = pipe.process(images, pose, rig, stamp_ns=T0 + j * NS // 12)
        assert last_fast.reset_reason is None

    assert fast.feeds[-1]['history_valid'].tolist() == [1.0, 1.0]
    for name in ('history_bev', 'history_theta', 'history_valid', 'images'):
        np.testing.assert_array_equal(fast.feeds[-1][name], slow.feeds[-1][name])
    # and not merely the previous 12 Hz frame: its feature differs from the one fed
    assert not np.array_equal(fast.results[-2]['bev_feature'], fast.feeds[-1]['history_bev'][0])
    np.testing.assert_array_equal(last_fast.labels, last_slow.labels)
    np.testing.assert_array_equal(last_fast.flow, last_slow.flow)


def test_no_history_feeds_empty_slots(world, models):
    ds, scenes = world
    cfg = get_config('tiny', history=2)
    rec = Recording(load_model(models[2][1], cfg))
    pipe = OccPipeline(rec, cfg, use_history=False)
    rig = ds.calibration(scenes[0][0])
    for i, frame in enumerate(scenes[0][:2]):
        pipe.process(_jpegs(frame), frame.pose, rig, stamp_ns=T0 + i * NS // 2)
    assert rec.feeds[1]['history_valid'].tolist() == [0.0, 0.0]
    assert not rec.feeds[1]['history_bev'].any()


def test_load_model_torch_checkpoint_matches_onnx(world, models, tmp_path):
    ds, scenes = world
    cfg = get_config('tiny')
    pt = Path(models[0][1]).with_suffix('.pt')
    frame = scenes[0][0]
    rig = ds.calibration(frame)
    results = []
    for backend, path in (('torch', pt), ('onnxruntime', models[0][1])):
        model = load_model(path, cfg, backend=backend, threads=1)
        assert model.name == backend
        results.append(OccPipeline(model, cfg).process(_jpegs(frame), frame.pose, rig, stamp_ns=T0))
    assert (results[0].labels == results[1].labels).mean() > 0.999
    np.testing.assert_allclose(results[0].flow, results[1].flow, atol=1e-3)


def test_load_model_errors(models, tmp_path):
    cfg0, cfg2 = get_config('tiny'), get_config('tiny', history=2)
    onnx0 = Path(models[0][1])
    pt0 = onnx0.with_suffix('.pt')
    with pytest.raises(PipelineError, match='no such file'):
        load_model(tmp_path / 'nothing.onnx', cfg0)
    empty = tmp_path / 'empty.onnx'
    empty.write_bytes(b'')
    with pytest.raises(PipelineError, match='empty'):
        load_model(empty, cfg0)
    cut = tmp_path / 'cut.onnx'
    cut.write_bytes(onnx0.read_bytes()[: onnx0.stat().st_size // 2])
    with pytest.raises(PipelineError, match='cut.onnx'):
        load_model(cut, cfg0)
    cut_pt = tmp_path / 'cut.pt'
    cut_pt.write_bytes(pt0.read_bytes()[: pt0.stat().st_size // 2])
    with pytest.raises(PipelineError, match='cut.pt'):
        load_model(cut_pt, cfg0, backend='torch')
    with pytest.raises(PipelineError, match='is a torch checkpoint'):
        load_model(pt0, cfg0, backend='onnxruntime')
    with pytest.raises(PipelineError, match='not a torch checkpoint'):
        load_model(onnx0, cfg0, backend='torch')
    with pytest.raises(PipelineError, match='history_bev'):  # a K = 0 graph for a K = 2 config
        load_model(onnx0, cfg2)
    with pytest.raises(PipelineError, match='history=0'):
        load_model(pt0, cfg2, backend='torch')
    with pytest.raises(PipelineError, match='backend'):
        load_model(onnx0, cfg0, backend='openvino')
    # a backend of another config handed to the pipeline directly
    with pytest.raises(PipelineError, match='history_bev'):
        OccPipeline(load_model(onnx0, cfg0), cfg2)


def test_non_square_off_centre_grid_through_the_torch_backend(world):
    """A 160 x 96 grid not centred on the ego: the cache's (C, Y, X) features and the outputs follow the grid."""
    from dataclasses import replace

    from occ_perception.grid import GridSpec

    ds, scenes = world
    grid = GridSpec(lower=(-20.0, -16.0, -1.0), size=(160, 96, 16), voxel_size=0.4)
    cfg = replace(get_config('tiny', history=2), grid=grid)
    torch.manual_seed(3)
    net = OccNet(cfg).eval()
    rec = recording_torch(net)
    pipe = OccPipeline(rec, cfg)
    assert pipe.feature_shape == (cfg.cache_channels, 96, 160) == (8, 96, 160)
    rig = ds.calibration(scenes[0][0])
    outs = [pipe.process(_jpegs(f), f.pose, rig, stamp_ns=T0 + i * NS // 2) for i, f in enumerate(scenes[0][:2])]
    assert outs[1].labels.shape == (160, 96, 16) and outs[1].flow.shape == (160, 96, 16, 2)
    assert outs[1].grid == grid
    assert rec.feeds[1]['history_valid'].tolist() == [1.0, 0.0]
    np.testing.assert_array_equal(rec.feeds[1]['history_bev'][0], rec.results[0]['bev_feature'])
    bev_grid = bev_grid_for(grid, pipe.feature_shape)
    np.testing.assert_allclose(
        rec.feeds[1]['history_theta'][0], bev_warp_affine(scenes[0][0].pose, scenes[0][1].pose, bev_grid)[:2], rtol=1e-6
    )
