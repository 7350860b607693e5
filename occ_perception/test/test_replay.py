"""Replay and frame assembly: synchroniser accounting, poses, output bag, metrics, errors, panels and GIF."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import biased_net

torch = pytest.importorskip('torch')
pytest.importorskip('onnxruntime')

from occ_perception.cli import main as cli_main  # noqa: E402
from occ_perception.data.bags import BagWriter, read_bag  # noqa: E402
from occ_perception.data.convert import ConvertConfig, convert  # noqa: E402
from occ_perception.data.synth_nuscenes import SynthConfig, generate_dataset  # noqa: E402
from occ_perception.frame_assembly import (  # noqa: E402
    OUTPUT_TOPICS,
    AssemblyConfig,
    Frame,
    FrameAssembler,
    FrameDrop,
    PoseBuffer,
)
from occ_perception.geometry import Transform  # noqa: E402
from occ_perception.messages import (  # noqa: E402
    MessageTypes,
    read_occupancy_flow,
    read_semantic_occupancy,
    stamp_to_ns,
)
from occ_perception.metrics import MIoU, RayMetrics, lidar_origins  # noqa: E402
from occ_perception.model.config import get_config  # noqa: E402
from occ_perception.rig import FLASHOCC_CAMERA_ORDER  # noqa: E402

NS = 1_000_000_000


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    from occ_perception.runtime.export import export_onnx

    root = tmp_path_factory.mktemp('replay')
    synth = SynthConfig(out=root / 'ds', scenes=1, seconds=1.5, seed=21, width=320, height=180, sweeps=True)
    generate_dataset(synth, progress=False)
    bag = convert(ConvertConfig(root=synth.out, out=root / 'bags', gts=synth.out / 'gts'), progress=False)[0].path
    cfg = get_config('tiny', history=2)
    onnx = export_onnx(biased_net(cfg), root / 'tiny_k2.onnx')
    out = root / 'out'
    status = cli_main(
        [
            'replay',
            str(bag),
            '--model',
            str(onnx),
            '--out',
            str(out),
            '--gif',
            '--panel-frames',
            '1',
            '--threads',
            '2',
            '--quiet',
        ]
    )
    assert status == 0
    return root, bag, onnx, out


# ---------------------------------------------------------------------------------------------- assembler


def _types():
    return MessageTypes.rosbags('jazzy')


def _image(types, cam, stamp):
    return types.make(
        'sensor_msgs/msg/CompressedImage', header=types.header(stamp, cam), format='jpeg', data=np.zeros(4, np.uint8)
    )


def _info(types, cam, stamp):
    k = np.array([400.0, 0, 160, 0, 400.0, 90, 0, 0, 1])
    p = np.zeros(12)
    return types.make(
        'sensor_msgs/msg/CameraInfo',
        header=types.header(stamp, cam),
        height=180,
        width=320,
        distortion_model='plumb_bob',
        d=np.zeros(5),
        k=k,
        r=np.eye(3).reshape(9),
        p=p,
        binning_x=0,
        binning_y=0,
        roi=types.make('sensor_msgs/msg/RegionOfInterest', x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )


def _vec(types, v):
    return types.make('geometry_msgs/msg/Vector3', x=float(v[0]), y=float(v[1]), z=float(v[2]))


def _tf_static(types, cams):
    tfs = []
    for i, cam in enumerate(cams):
        tr = types.make(
            'geometry_msgs/msg/Transform',
            translation=_vec(types, (1.0, 0.1 * i, 1.5)),
            rotation=types.make('geometry_msgs/msg/Quaternion', x=-0.5, y=0.5, z=-0.5, w=0.5),
        )
        tfs.append(
            types.make(
                'geometry_msgs/msg/TransformStamped',
                header=types.header(0, 'base_link'),
                child_frame_id=cam,
                transform=tr,
            )
        )
    return types.make('tf2_msgs/msg/TFMessage', transforms=tfs)


def _odom(types, stamp, x, vx, nan=False):
    pos = types.make('geometry_msgs/msg/Point', x=float('nan') if nan else x, y=0.0, z=0.0)
    pose = types.make(
        'geometry_msgs/msg/Pose',
        position=pos,
        orientation=types.make('geometry_msgs/msg/Quaternion', x=0.0, y=0.0, z=0.0, w=1.0),
    )
    twist = types.make('geometry_msgs/msg/Twist', linear=_vec(types, (vx, 0, 0)), angular=_vec(types, (0, 0, 0)))
    return types.make(
        'nav_msgs/msg/Odometry',
        header=types.header(stamp, 'map'),
        child_frame_id='base_link',
        pose=types.make('geometry_msgs/msg/PoseWithCovariance', pose=pose, covariance=np.zeros(36)),
        twist=types.make('geometry_msgs/msg/TwistWithCovariance', twist=twist, covariance=np.zeros(36)),
    )


def test_assembler_accounts_for_every_message_and_every_set():
    """A 12 Hz stream with jitter, a duplicate, a lost camera image, a late CameraInfo and a NaN pose."""
    types = _types()
    cams = FLASHOCC_CAMERA_ORDER
    rng = np.random.default_rng(3)
    events = []  # (stamp for ordering, kind, camera, msg)
    for k in range(30):
        base = 1_000 * NS + k * 83_333_333
        for i, cam in enumerate(cams):
            stamp = base + i * 8_000_000 + int(rng.integers(0, 2_000_000))
            if not (k == 4 and cam == 'cam_back_left'):  # the first frames have no CameraInfo of this camera
                if k >= 4 or cam != 'cam_back_left':
                    events.append((stamp, 0, 'info', cam, _info(types, cam, stamp)))
            if (k, cam) != (10, 'cam_back'):  # lost image: frame 10 cannot be completed
                events.append((stamp, 1, 'image', cam, _image(types, cam, stamp)))
            if (k, cam) == (12, 'cam_front'):  # the same image twice (superseded)
                events.append((stamp, 2, 'image', cam, _image(types, cam, stamp)))
            events.append((stamp, 0, 'odom', None, _odom(types, stamp, 10.0 * stamp / NS, 10.0, nan=(k == 20))))
    events.sort(key=lambda e: (e[0], e[1]))
    asm = FrameAssembler(AssemblyConfig(queue_size=3, slop=0.1, pose_source='odom'))
    asm.add_tf_static(_tf_static(types, cams))
    out: list = []
    fed = []
    for stamp, _, kind, cam, msg in events:
        if kind == 'info':
            asm.add_camera_info(cam, msg)
        elif kind == 'image':
            out += asm.add_image(cam, msg)
            fed.append((cams.index(cam), stamp))
        else:
            out += asm.add_odom(msg)
            fed.append((6, stamp))
    out += asm.flush()
    frames = [e for e in out if isinstance(e, Frame)]
    frame_drops = [e for e in out if isinstance(e, FrameDrop) and e.stage == 'frame']
    sync_drops = [e for e in out if isinstance(e, FrameDrop) and e.stage == 'sync']
    # messages: every one in a set or dropped once; sets: every one a frame or a frame drop
    assert asm.sync.added == len(fed) == 7 * asm.sets + len(sync_drops)
    assert asm.sets == len(frames) + len(frame_drops)
    assert asm.accounted()
    reasons = sorted(d.reason for d in frame_drops)
    assert reasons.count('bad_pose') == 1 and reasons.count('missing_calibration') >= 4
    assert {d.reason for d in sync_drops} >= {'superseded', 'queue_overflow', 'left_at_end'}
    # the set count is what the synchroniser alone gives on the same arrivals
    from occ_perception.sync import synchronise

    sets, _ = synchronise([(s, t, None) for s, t in fed], 7, 3, 0.1)
    assert len(sets) == asm.sets
    # frame stamps are cam_front stamps; poses carried to them by the odometry's twist (x = 10 m/s * t)
    for f in frames:
        assert f.stamp_ns == f.stamps_ns[1]
        np.testing.assert_allclose(f.pose.translation[0], 10.0 * f.stamp_ns / NS, atol=1e-6)


def test_pose_buffer_interpolates_and_refuses_extrapolation():
    buf = PoseBuffer(span=10.0)
    buf.add(1 * NS, Transform.from_yaw(0.0, (0.0, 0.0, 0.0)))
    buf.add(2 * NS, Transform.from_yaw(0.4, (2.0, -1.0, 0.0)))
    mid = buf.lookup(int(1.25 * NS))
    np.testing.assert_allclose(mid.translation, [0.5, -0.25, 0.0], atol=1e-12)
    assert abs(mid.rotation.yaw_pitch_roll[0] - 0.1) < 1e-9
    assert buf.lookup(int(0.5 * NS)) is None and buf.lookup(int(2.5 * NS)) is None
    assert buf.lookup(2 * NS) == Transform.from_yaw(0.4, (2.0, -1.0, 0.0))


def _frames_of(bag: Path, pose_source: str) -> dict[int, Frame]:
    asm = FrameAssembler(AssemblyConfig(pose_source=pose_source, queue_size=3, slop=0.1))
    out: list = []
    for m in read_bag(bag):
        name = m.topic.strip('/').split('/')[0]
        if m.topic.endswith('/image_rect/compressed'):
            out += asm.add_image(name, m.msg)
        elif m.topic.endswith('/camera_info'):
            asm.add_camera_info(name, m.msg)
        elif m.topic == '/tf_static':
            asm.add_tf_static(m.msg)
        elif m.topic == '/tf':
            out += asm.add_tf(m.msg)
        elif m.topic == '/odom':
            out += asm.add_odom(m.msg)
    out += asm.flush()
    return {e.stamp_ns: e for e in out if isinstance(e, Frame)}


def test_odometry_pose_at_the_frame_stamp_agrees_with_tf(setup):
    """The synchronised Odometry is rarely at the cam_front stamp; carried there by its twist it matches /tf."""
    _, bag, _, _ = setup
    by_odom, by_tf = _frames_of(bag, 'odom'), _frames_of(bag, 'tf')
    assert by_odom.keys() == by_tf.keys() and len(by_odom) == 13
    offsets = [abs(f.stamps_ns[6] - f.stamp_ns) for f in by_odom.values()]
    assert max(offsets) > 5_000_000  # the set's odometry is not at the frame stamp: the twist matters
    for stamp, f in by_odom.items():
        g = by_tf[stamp]
        assert np.linalg.norm(f.pose.translation - g.pose.translation) < 0.01
        assert abs((f.pose.rotation.inverse * g.pose.rotation).angle) < 1e-3
        assert f.rig == g.rig and f.rig.names == FLASHOCC_CAMERA_ORDER


# ---------------------------------------------------------------------------------------------- replay


def test_output_bag_decodes_with_both_readers_and_counts_match(setup):
    from mcap_ros2.reader import read_ros2_messages
    from rosbags.highlevel import AnyReader

    _, bag, _, out = setup
    summary = json.loads((out / 'summary.json').read_text())
    frames = summary['frames_out']
    assert frames == 13 and summary['sets'] == 13 and summary['frame_drops'] == {}
    counts: dict[str, int] = {}
    stamps: list[int] = []
    with AnyReader([out / 'bag']) as reader:
        for conn, _, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            counts[conn.topic] = counts.get(conn.topic, 0) + 1
            if conn.topic == '/occupancy/semantics':
                stamps.append(stamp_to_ns(msg.header.stamp))
                assert read_semantic_occupancy(msg).labels.shape == (200, 200, 16)
    inputs: dict[str, int] = {}
    for m in read_bag(bag):
        inputs[m.topic] = inputs.get(m.topic, 0) + 1
    for topic, n in inputs.items():
        assert counts[topic] == n, topic
    for topic in OUTPUT_TOPICS:
        if topic != 'occupancy/markers':
            assert counts['/' + topic] == frames, topic
    # markers at 2 Hz by frame stamp: the first frame, then each frame at least 0.5 s (less 1 ms) later
    expected, last = 0, None
    for s in sorted(stamps):
        if last is None or s - last >= NS // 2 - 1_000_000:
            expected, last = expected + 1, s
    assert counts['/occupancy/markers'] == expected == summary['out_counts']['occupancy/markers'] >= 2
    # the independent mcap reader decodes every output message from the stored definitions
    decoded: dict[str, int] = {}
    for path in (out / 'bag').glob('*.mcap'):
        for m in read_ros2_messages(str(path), topics=['/' + t for t in OUTPUT_TOPICS]):
            decoded[m.channel.topic] = decoded.get(m.channel.topic, 0) + 1
            if m.channel.topic == '/occupancy/voxels':
                assert len(m.ros_msg.data) == 4 * 200 * 200 * 16
    assert decoded == {'/' + t: counts['/' + t] for t in OUTPUT_TOPICS}


def test_metrics_equal_a_direct_computation_on_the_bagged_predictions(setup):
    _, bag, _, out = setup
    preds, flows, gts, masks, gt_flows, poses = {}, {}, {}, {}, {}, []
    lidar = None
    for m in read_bag(out / 'bag'):
        if m.topic == '/occupancy/semantics':
            preds[stamp_to_ns(m.msg.header.stamp)] = read_semantic_occupancy(m.msg).labels
        elif m.topic == '/occupancy/flow':
            flows[stamp_to_ns(m.msg.header.stamp)] = read_occupancy_flow(m.msg).dense()
    for m in read_bag(bag):
        s = m.log_time_ns
        if m.topic == '/occupancy/ground_truth':
            gts[s] = read_semantic_occupancy(m.msg).labels
        elif m.topic == '/occupancy/ground_truth/mask_camera':
            masks[s] = read_semantic_occupancy(m.msg).labels
        elif m.topic == '/occupancy/ground_truth/flow':
            gt_flows[s] = read_occupancy_flow(m.msg).dense()
        elif m.topic == '/tf':
            for tf in m.msg.transforms:
                poses.append((stamp_to_ns(tf.header.stamp), Transform.from_msg(tf.transform).matrix()))
        elif m.topic == '/tf_static':
            lidar = [
                tuple(Transform.from_msg(t.transform).translation)
                for t in m.msg.transforms
                if t.child_frame_id == 'lidar_top'
            ][0]
    pose_at = dict(poses)
    scene = np.stack([pose_at[s] for s in sorted(gts)])
    miou, rays = MIoU(), RayMetrics()
    pred_stamps = np.array(sorted(preds))
    for s in sorted(gts):
        p = int(pred_stamps[np.argmin(np.abs(pred_stamps - s))])
        assert abs(p - s) <= 50_000_000
        miou.add(preds[p], gts[s], masks[s] != 0)
        rays.add(preds[p], gts[s], lidar_origins(scene, pose_at[s], lidar), flows[p], gt_flows[s])
    m, r = miou.result(), rays.result()
    got = json.loads((out / 'metrics.json').read_text())
    assert got['frames'] == 3
    assert got['miou'] == pytest.approx(m.miou) and m.miou > 0
    assert got['ray_iou'] == pytest.approx(r.ray_iou) and r.ray_iou > 0
    assert (got['mave'] is None and np.isnan(r.mave)) or got['mave'] == pytest.approx(r.mave)
    for c, name in enumerate(got['iou']):
        value = got['iou'][name]
        assert (value is None and np.isnan(m.iou[c])) or value == pytest.approx(m.iou[c])


def test_summary_panels_and_gif(setup):
    from PIL import Image

    _, _, _, out = setup
    s = json.loads((out / 'summary.json').read_text())
    assert s['accounting']['sync_exact'] and s['accounting']['frames_exact']
    assert s['sync_inputs'] == 7 * s['sets'] + sum(s['sync_drops'].values())
    assert s['scored'] == s['gt_frames'] == 3 and s['gt_unmatched'] == 0
    for stage in ('pipeline/network', 'pipeline/preprocess', 'encode/semantics', 'encode/voxels', 'write', 'frame'):
        row = s['timings_ms'][stage]
        assert row['count'] == 13 and row['p90'] >= row['median']
    panels = [Path(p) for p in s['files']['panels']]
    assert {p.name for p in panels} == {'panel_00000.png', 'panel_00001.png'}
    panel = Image.open(panels[0])
    assert panel.size[0] > 1000 and panel.size[1] > 900
    gif = Image.open(s['files']['gif'])
    assert gif.n_frames == 3 and gif.size[0] > 1000


def test_a_bag_without_the_expected_topics_is_one_clear_error(setup, tmp_path, capsys):
    _, _, onnx, _ = setup
    bag = tmp_path / 'partial'
    types = _types()
    with BagWriter(bag) as w:
        w.add_topic('/tf_static', 'tf2_msgs/msg/TFMessage', latched=True)
        w.add_topic('/cam_front/image_rect/compressed', 'sensor_msgs/msg/CompressedImage')
        w.write('/tf_static', NS, _tf_static(types, ['cam_front']))
        w.write('/cam_front/image_rect/compressed', NS, _image(types, 'cam_front', NS))
    assert cli_main(['replay', str(bag), '--model', str(onnx), '--out', str(tmp_path / 'o'), '--quiet']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'/odom'" in err and "'/cam_back/camera_info'" in err
    assert '/cam_front/image_rect/compressed (sensor_msgs/msg/CompressedImage)' in err
    assert '/tf_static (tf2_msgs/msg/TFMessage)' in err


def test_bad_frames_are_counted_and_the_replay_goes_on(setup, tmp_path):
    """A corrupt JPEG and a missing first CameraInfo drop one frame each; the tf pose source runs the rest."""
    from occ_perception.pipeline import OccPipeline, load_model
    from occ_perception.replay import ReplayOptions, replay

    _, bag, onnx, _ = setup
    broken = tmp_path / 'broken'
    skipped_info, cam_back = [], []
    with BagWriter(broken) as w:
        seen: set[str] = set()
        for m in read_bag(bag):
            if m.topic not in seen:
                w.add_topic(m.topic, m.msgtype, latched=m.topic == '/tf_static')
                seen.add(m.topic)
            msg = m.msg
            if m.topic == '/cam_back_left/camera_info' and not skipped_info:
                skipped_info.append(m.log_time_ns)
                continue  # frame 0 has no CameraInfo of cam_back_left
            if m.topic == '/cam_back/image_rect/compressed':
                cam_back.append(m.log_time_ns)
                if len(cam_back) == 3:  # frame 2's image
                    msg.data = np.frombuffer(b'not a jpeg at all', np.uint8)
            w.write(m.topic, m.log_time_ns, msg)
    cfg = get_config('tiny', history=2)
    net = load_model(onnx, cfg, threads=2)
    with OccPipeline(net, cfg) as pipeline:
        summary = replay(
            ReplayOptions(
                bag=broken,
                out=tmp_path / 'o',
                assembly=AssemblyConfig(pose_source='tf'),
                markers_rate=0.0,
                panels=0,
                max_frames=5,
                progress=False,
            ),
            pipeline,
        )
    assert summary.frame_drops == {'missing_calibration': 1, 'decode_error': 1}
    assert summary.sets >= 5 and summary.frames_out == summary.sets - 2
    assert summary.out_counts['occupancy/markers'] == 0
    assert summary.out_counts['occupancy/semantics'] == summary.frames_out
    d = summary.to_dict()
    assert d['accounting']['sync_exact'] and d['accounting']['frames_exact'] and summary.streams == 6


def test_find_model_exports_the_checkpoint_or_names_the_folders(tmp_path):
    from occ_perception.demo import DemoError, find_model
    from occ_perception.model.checkpoint import save_checkpoint
    from occ_perception.pipeline import load_model

    cfg = get_config('tiny', history=2)
    with pytest.raises(DemoError, match='tiny_k2.onnx nor tiny_k2.pt in .*empty'):
        find_model(cfg, dirs=[tmp_path / 'empty'])
    models = tmp_path / 'models'
    models.mkdir()
    save_checkpoint(biased_net(cfg), models / 'tiny_k2.pt')
    assert find_model(cfg, 'torch', dirs=[models]) == models / 'tiny_k2.pt'
    onnx = find_model(cfg, dirs=[tmp_path / 'empty', models])
    assert onnx == models / 'tiny_k2.onnx' and onnx.is_file()
    load_model(onnx, cfg).close()  # a graph with the inputs the config expects
    assert find_model(cfg, dirs=[models]) == onnx


def test_loops_restart_like_a_looping_player_and_follow_memory(setup, tmp_path):
    """--loops 3: every pass runs the whole frame path (time going backwards restarts the synchroniser and
    resets the cache, as `ros2 bag play --loop` does to the node); ground truth is scored and the output bag
    written on the first pass only, so the metrics equal the single pass's; memory is sampled every frame."""
    from occ_perception.replay import memory_summary

    _, bag, onnx, single_out = setup
    single = json.loads((single_out / 'summary.json').read_text())
    out = tmp_path / 'looped'
    args = ['replay', str(bag), '--model', str(onnx), '--out', str(out), '--panels', '0', '--threads', '2']
    assert cli_main([*args, '--loops', '3', '--quiet']) == 0
    s = json.loads((out / 'summary.json').read_text())
    assert s['loops'] == 3 and s['time_jumps'] == 2
    assert s['sets'] == 3 * single['sets'] and s['frames_out'] == 3 * single['frames_out']
    assert s['accounting']['sync_exact'] and s['accounting']['frames_exact']
    assert s['scored'] == single['scored'] == 3 and s['metrics']['miou'] == single['metrics']['miou']
    assert s['out_counts'] == single['out_counts']  # outputs of the first pass only
    assert s['metrics']['cache_resets'].get('time_backwards', 0) == 2 + single['metrics']['cache_resets'].get(
        'time_backwards', 0
    )
    assert s['memory']['frames'] == s['frames_out'] and s['memory']['settle_frames'] == 100
    assert s['bag_seconds'] == pytest.approx(3 * single['bag_seconds'])
    assert cli_main([*args, '--loops', '0']) == 2

    mb = 2**20
    m = memory_summary([300 * mb] * 99 + [400 * mb] + [404 * mb] * 50 + [402 * mb], settle=100)
    assert m['rss_mb_first'] == 300 and m['rss_mb_settled'] == 400 and m['rss_mb_last'] == 402
    assert m['growth_after_settled_pct'] == pytest.approx(0.5) and m['max_growth_after_settled_pct'] == pytest.approx(
        1.0
    )
    assert m['rss_mb_every'] == [400.0]
    assert memory_summary([1] * 100) == {'frames': 100, 'settle_frames': 100}
