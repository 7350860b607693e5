"""Bad input, drop accounting and the temporal cache's resets through the ROS-free frame path and the replay.

Real formats throughout: rosbags typestore messages, real JPEG bytes, real rosbag2 (MCAP) bags written
with rosbags, the tiny K=2 network through the torch backend. Every bad input must end as a counted drop
whose detail names the input and what was expected, and the next good frame must come out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import biased_net, recording_torch

torch = pytest.importorskip('torch')

from occ_perception.data.bags import BagWriter  # noqa: E402
from occ_perception.frame_assembly import (  # noqa: E402
    FRAME_DROP_REASONS,
    AssemblyConfig,
    Frame,
    FrameAssembler,
    FrameDrop,
    FrameProcessor,
    FrameResult,
    frame_accounting,
)
from occ_perception.messages import MessageTypes  # noqa: E402
from occ_perception.model.config import get_config  # noqa: E402
from occ_perception.pipeline import OccPipeline  # noqa: E402
from occ_perception.replay import ReplayOptions, replay  # noqa: E402
from occ_perception.rig import FLASHOCC_CAMERA_ORDER  # noqa: E402
from occ_perception.temporal import ResetReason  # noqa: E402

NS = 1_000_000_000
W, H = 320, 180  # CameraInfo size of every camera (non-square)
CAMS = FLASHOCC_CAMERA_ORDER
TYPES = MessageTypes.rosbags('jazzy')
CFG = get_config('tiny', history=2)

Item = tuple[str, str, Any]  # (kind, camera or '', message); kind in tf_static, info, image, odom


# ---------------------------------------------------------------------------------------------- messages


def _jpeg(variant: int, width: int = W, height: int = H) -> bytes:
    """A real JPEG whose content depends on ``variant`` (so that BEV features differ between frames)."""
    rng = np.random.default_rng(variant)
    base = rng.integers(0, 255, (height // 10 + 1, width // 10 + 1, 3), dtype=np.uint8)
    image = cv2.resize(base, (width, height), interpolation=cv2.INTER_LINEAR)
    ok, buf = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return buf.tobytes()


def _image(cam: str, stamp: int, data: bytes, fmt: str = 'jpeg') -> Any:
    return TYPES.make(
        'sensor_msgs/msg/CompressedImage',
        header=TYPES.header(stamp, cam),
        format=fmt,
        data=np.frombuffer(data, np.uint8).copy(),
    )


def _raw_image(cam: str, stamp: int, encoding: str) -> Any:
    return TYPES.make(
        'sensor_msgs/msg/Image',
        header=TYPES.header(stamp, cam),
        height=H,
        width=W,
        encoding=encoding,
        is_bigendian=0,
        step=W * 2,
        data=np.zeros(W * 2 * H, np.uint8),
    )


def _info(cam: str, stamp: int, fx: float = 250.0) -> Any:
    k = np.array([fx, 0.0, W / 2, 0.0, 250.0, H / 2, 0.0, 0.0, 1.0])
    return TYPES.make(
        'sensor_msgs/msg/CameraInfo',
        header=TYPES.header(stamp, cam),
        height=H,
        width=W,
        distortion_model='plumb_bob',
        d=np.zeros(5),
        k=k,
        r=np.eye(3).reshape(9),
        p=np.zeros(12),
        binning_x=0,
        binning_y=0,
        roi=TYPES.make('sensor_msgs/msg/RegionOfInterest', x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )


def _vec(v, kind: str = 'geometry_msgs/msg/Vector3') -> Any:
    return TYPES.make(kind, x=float(v[0]), y=float(v[1]), z=float(v[2]))


def _quat(xyzw) -> Any:
    x, y, z, w = (float(v) for v in xyzw)
    return TYPES.make('geometry_msgs/msg/Quaternion', x=x, y=y, z=z, w=w)


def _tf_static(cams=CAMS, bad: dict[str, tuple] | None = None) -> Any:
    """Camera extrinsics base_link <- cam (optical axes, each camera turned by 60 degrees); ``bad`` overrides
    a camera's (translation, xyzw)."""
    tfs = []
    for i, cam in enumerate(cams):
        yaw = np.deg2rad(60.0 * i)
        # optical (z forward, x right, y down) turned to look along yaw
        base = np.array([-0.5, 0.5, -0.5, 0.5])  # x, y, z, w: optical frame looking along +x
        qz = np.array([0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2)])
        x1, y1, z1, w1 = qz
        x2, y2, z2, w2 = base
        q = (
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        )
        t = (1.0 * np.cos(yaw), 1.0 * np.sin(yaw), 1.5)
        if bad and cam in bad:
            t, q = bad[cam]
        tr = TYPES.make('geometry_msgs/msg/Transform', translation=_vec(t), rotation=_quat(q))
        tfs.append(
            TYPES.make(
                'geometry_msgs/msg/TransformStamped',
                header=TYPES.header(0, 'base_link'),
                child_frame_id=cam,
                transform=tr,
            )
        )
    return TYPES.make('tf2_msgs/msg/TFMessage', transforms=tfs)


def _odom(stamp: int, x: float, xyzw=(0.0, 0.0, 0.0, 1.0), y: float = 0.0) -> Any:
    pose = TYPES.make(
        'geometry_msgs/msg/Pose', position=_vec((x, y, 0.0), 'geometry_msgs/msg/Point'), orientation=_quat(xyzw)
    )
    twist = TYPES.make('geometry_msgs/msg/Twist', linear=_vec((0, 0, 0)), angular=_vec((0, 0, 0)))
    return TYPES.make(
        'nav_msgs/msg/Odometry',
        header=TYPES.header(stamp, 'map'),
        child_frame_id='base_link',
        pose=TYPES.make('geometry_msgs/msg/PoseWithCovariance', pose=pose, covariance=np.zeros(36)),
        twist=TYPES.make('geometry_msgs/msg/TwistWithCovariance', twist=twist, covariance=np.zeros(36)),
    )


JPEGS: dict[int, bytes] = {}


def frame_items(stamp: int, x: float, variant: int, **change: Any) -> list[Item]:
    """One frame's messages (CameraInfo, images, odometry); ``change`` replaces some: ``image={cam: msg}``,
    ``info={cam: msg}``, ``odom=msg``, ``skip={cam, ...}`` (no image of those cameras)."""
    items: list[Item] = []
    for cam in CAMS:
        items.append(('info', cam, change.get('info', {}).get(cam) or _info(cam, stamp)))
    for i, cam in enumerate(CAMS):
        if cam in change.get('skip', ()):
            continue
        msg = change.get('image', {}).get(cam)
        if msg is None:
            key = 10 * variant + i
            if key not in JPEGS:
                JPEGS[key] = _jpeg(key)
            msg = _image(cam, stamp, JPEGS[key])
        items.append(('image', cam, msg))
    items.append(('odom', '', change.get('odom') or _odom(stamp, x)))
    return items


def feed(assembler: FrameAssembler, items: list[Item]) -> list[Frame | FrameDrop]:
    events: list[Frame | FrameDrop] = []
    for kind, cam, msg in items:
        if kind == 'tf_static':
            assembler.add_tf_static(msg)
        elif kind == 'info':
            assembler.add_camera_info(cam, msg)
        elif kind == 'image':
            events += assembler.add_image(cam, msg)
        else:
            events += assembler.add_odom(msg)
    return events


def write_bag(path: Path, items: list[Item]) -> Path:
    """A real rosbag2 (MCAP) with the node's topics; log times increase by 1 ms per message."""
    topics = {
        'tf_static': ('/tf_static', 'tf2_msgs/msg/TFMessage'),
        'odom': ('/odom', 'nav_msgs/msg/Odometry'),
    }
    with BagWriter(path) as w:
        w.add_topic('/tf_static', 'tf2_msgs/msg/TFMessage', latched=True)
        w.add_topic('/odom', 'nav_msgs/msg/Odometry')
        for cam in CAMS:
            w.add_topic(f'/{cam}/image_rect/compressed', 'sensor_msgs/msg/CompressedImage')
            w.add_topic(f'/{cam}/camera_info', 'sensor_msgs/msg/CameraInfo')
        for n, (kind, cam, msg) in enumerate(items):
            if kind == 'image':
                topic = f'/{cam}/image_rect/compressed'
            elif kind == 'info':
                topic = f'/{cam}/camera_info'
            else:
                topic = topics[kind][0]
            w.write(topic, NS + n * 1_000_000, msg)
    return path


# ---------------------------------------------------------------------------------------------- network


@pytest.fixture(scope='module')
def net():
    return biased_net(CFG)


@pytest.fixture
def pipeline(net):
    backend = recording_torch(net)
    with OccPipeline(backend, CFG, preprocess_threads=1) as p:
        yield p


# ---------------------------------------------------------------------------------------------- bad input table

S1, S2 = 10 * NS, 10 * NS + NS // 2  # the bad frame's and the next good frame's stamps


def _swap(cam: str, msg: Any) -> Callable[[int], dict[str, Any]]:
    return lambda stamp: {'image': {cam: msg(stamp)}}


BAD_INPUTS: dict[str, tuple[Callable[[int], dict[str, Any]], list[Item], str, str]] = {
    # name: (change of the bad frame, messages before it, drop reason, detail pattern)
    'corrupt jpeg': (
        _swap('cam_back', lambda s: _image('cam_back', s, b'\xff\xd8 this is not a jpeg body')),
        [],
        'decode_error',
        r"camera 'cam_back'.*corrupt JPEG header",
    ),
    'truncated jpeg': (
        _swap('cam_back', lambda s: _image('cam_back', s, _jpeg(7)[:900])),
        [],
        'decode_error',
        r"camera 'cam_back'.*truncated",
    ),
    'empty image': (_swap('cam_back', lambda s: _image('cam_back', s, b'')), [], 'decode_error', r"'cam_back'.*empty"),
    'unknown format': (
        _swap('cam_back', lambda s: _image('cam_back', s, _jpeg(7), fmt='tiff')),
        [],
        'decode_error',
        r"'cam_back'.*format 'tiff' is not supported \(expected jpeg or png\)",
    ),
    'unknown encoding': (
        _swap('cam_back', lambda s: _raw_image('cam_back', s, 'yuv422')),
        [],
        'decode_error',
        r"'cam_back'.*encoding 'yuv422' is not supported \(expected one of",
    ),
    'image size unlike its CameraInfo': (
        _swap('cam_back', lambda s: _image('cam_back', s, _jpeg(7, 160, 90))),
        [],
        'decode_error',
        r"'cam_back'.*160x90, but its CameraInfo \(the rig\) says 320x180",
    ),
    'zero focal length': (
        lambda s: {'info': {'cam_back': _info('cam_back', s, fx=0.0)}},
        [],
        'bad_calibration',
        r"'cam_back'.*focal length must be positive, got fx=0.0",
    ),
    'negative focal length': (
        lambda s: {'info': {'cam_back': _info('cam_back', s, fx=-250.0)}},
        [],
        'bad_calibration',
        r"'cam_back'.*focal length must be positive, got fx=-250.0",
    ),
    'missing transform': (
        lambda s: {},
        [('tf_static', '', 'missing')],
        'missing_calibration',
        r'no static transform base_link <- cam_back \(/tf_static has child frames',
    ),
    'NaN transform': (
        lambda s: {},
        [('tf_static', '', 'nan')],
        'bad_calibration',
        r'/tf_static base_link <- cam_back: Transform.translation: expected 3 finite metres',
    ),
    'NaN pose': (
        lambda s: {'odom': _odom(s, float('nan'))},
        [],
        'bad_pose',
        r'Transform.translation: expected 3 finite metres, got \[nan',
    ),
    'NaN quaternion in the pose': (
        lambda s: {'odom': _odom(s, 0.0, (0.0, 0.0, float('nan'), 1.0))},
        [],
        'bad_pose',
        r'quaternion.*expected a finite non-zero quaternion',
    ),
    'non-unit quaternion in the pose': (
        lambda s: {'odom': _odom(s, 0.0, (0.0, 0.0, 0.0, 2.0))},
        [],
        'bad_pose',
        r'expected a unit quaternion, its squared norm is 4',
    ),
    'duplicate stamp': (
        lambda s: {},
        [('frame', '', 'same stamp')],
        'duplicate_stamp',
        r'the previous synchronised set had the same stamp',
    ),
}


def _prelude(kind: str) -> list[Item]:
    if kind == 'missing':
        return [('tf_static', '', _tf_static(cams=[c for c in CAMS if c != 'cam_back']))]
    if kind == 'nan':
        return [('tf_static', '', _tf_static(bad={'cam_back': ((float('nan'), 0.0, 1.5), (0.0, 0.0, 0.0, 1.0))}))]
    return frame_items(S1, 0.0, 1)  # 'same stamp': the bad frame's messages came once already


@pytest.mark.parametrize('case', sorted(BAD_INPUTS))
def test_bad_input_is_a_counted_drop_and_the_next_frame_comes_out(case: str, pipeline) -> None:
    change, before, reason, detail = BAD_INPUTS[case]
    assembler = FrameAssembler(AssemblyConfig())
    processor = FrameProcessor(pipeline, TYPES, markers_rate=0.0, voxels=False)
    events: list[Frame | FrameDrop] = []
    lead = [('tf_static', '', _tf_static())] if not any(k == 'tf_static' for k, _, _ in before) else []
    for kind, _, what in before:
        lead += _prelude(what) if kind in ('tf_static', 'frame') else []
    events += feed(assembler, lead + frame_items(S1, 0.0, 1, **change(S1)))
    events += feed(assembler, [('tf_static', '', _tf_static())] + frame_items(S2, 1.0, 2))
    outcomes: list[FrameResult | FrameDrop] = []
    for ev in events:
        outcomes.append(processor.process(ev) if isinstance(ev, Frame) else ev)
    frame_outcomes = [o for o in outcomes if not (isinstance(o, FrameDrop) and o.stage == 'sync')]
    drops = [o for o in frame_outcomes if isinstance(o, FrameDrop)]
    results = [o for o in frame_outcomes if isinstance(o, FrameResult)]
    expected_results = 2 if case == 'duplicate stamp' else 1  # the first copy of a duplicated frame comes out
    assert [d.reason for d in drops] == [reason], [(d.reason, d.detail) for d in drops]
    assert drops[0].stamp_ns == S1
    import re

    assert re.search(detail, drops[0].detail), drops[0].detail
    assert [r.frame.stamp_ns for r in results][-1] == S2 and len(results) == expected_results
    assert 'occupancy/semantics' in results[-1].messages
    acc = frame_accounting(assembler, processor)
    assert acc['frames_exact'] and acc['sync_exact']
    assert acc['sets'] == acc['outputs'] + sum(acc['frame_drops'].values()) == expected_results + 1
    assert acc['frame_drops'] == {reason: 1}
    if case == 'NaN transform':
        assert acc['rejected'] == {'/tf_static:bad_transform': 1}


def test_every_frame_drop_reason_is_documented() -> None:
    covered = {v[2] for v in BAD_INPUTS.values()}
    # the rest need a failing backend, encoder or a bug, or a tf pose source that never delivers
    assert covered | {
        'missing_pose',
        'time_backwards',
        'inference_error',
        'pipeline_error',
        'encode_error',
        'internal_error',
    } == set(FRAME_DROP_REASONS)


def test_an_unexpected_exception_is_an_internal_error_drop_not_a_crash(pipeline, monkeypatch) -> None:
    assembler = FrameAssembler(AssemblyConfig())
    processor = FrameProcessor(pipeline, TYPES, markers_rate=0.0, voxels=False)
    frames = [
        e for e in feed(assembler, [('tf_static', '', _tf_static())] + frame_items(S1, 0.0, 1)) if isinstance(e, Frame)
    ]

    def broken(*args, **kwargs):
        raise ZeroDivisionError('a bug')

    monkeypatch.setattr(pipeline, 'process', broken)
    drop = processor.process(frames[0])
    assert isinstance(drop, FrameDrop) and drop.reason == 'internal_error' and 'ZeroDivisionError: a bug' in drop.detail
    assert processor.drops == Counter({'internal_error': 1})


def test_a_silent_camera_stops_frames_without_an_error_and_they_resume() -> None:
    """cam_back silent for 3 s: no set can be complete, the others' messages are counted queue_overflow drops,
    silent() names it, and frames resume when it returns (camera_timeout 0: no frames without a camera)."""
    assembler = FrameAssembler(AssemblyConfig(camera_timeout=0.0))
    events = feed(assembler, [('tf_static', '', _tf_static())])
    step = NS // 2
    for k in range(12):
        stamp = S1 + k * step
        skip = {'cam_back'} if 2 <= k < 8 else set()
        events += feed(assembler, frame_items(stamp, 0.5 * k, 1, skip=skip))
        if k == 7:
            silent = assembler.silent(stamp, timeout=1.0)
            assert list(silent) == ['cam_back'] and silent['cam_back'] == pytest.approx(3.0)
    frames = [e for e in events if isinstance(e, Frame)]
    assert [f.stamp_ns for f in frames] == [S1 + k * step for k in (0, 1, 8, 9, 10, 11)]
    sync = Counter(e.stream for e in events if isinstance(e, FrameDrop) and e.stage == 'sync')
    assert set(sync) == set(CAMS + ('odom',)) - {'cam_back'}
    assert assembler.longest_gap_ns['cam_back'] == 7 * step
    assert assembler.accounted()


# ---------------------------------------------------------------------------------------------- replay


def _replay(bag: Path, out: Path, pipeline, camera_timeout: float = 1.0) -> Any:
    assembly = AssemblyConfig(camera_timeout=camera_timeout)
    options = ReplayOptions(bag=bag, out=out, markers_rate=0.0, panels=0, progress=False, assembly=assembly)
    return replay(options, pipeline)


def test_replay_of_a_bag_mixing_good_and_bad_frames_accounts_for_every_frame(pipeline, tmp_path) -> None:
    """Every synchronised frame is one output or one counted drop; each reason's count is what the bag holds."""
    step, t0 = NS // 2, 20 * NS
    nan_back = {'cam_back': ((float('nan'), 0.0, 1.5), (0.0, 0.0, 0.0, 1.0))}
    bad_frames: dict[int, dict[str, Any]] = {}

    def stamp(k: int) -> int:
        return t0 + k * step

    for k, make in zip(
        range(3, 8),
        [
            lambda s: _image('cam_back', s, b'\xff\xd8 not a jpeg body'),
            lambda s: _image('cam_back', s, _jpeg(7)[:900]),
            lambda s: _image('cam_back', s, b''),
            lambda s: _image('cam_back', s, _jpeg(7), fmt='tiff'),
            lambda s: _image('cam_back', s, _jpeg(7, 160, 90)),
        ],
    ):
        bad_frames[k] = {'image': {'cam_back': make(stamp(k))}}
    bad_frames[8] = {'info': {'cam_front': _info('cam_front', stamp(8), fx=0.0)}}
    bad_frames[9] = {'info': {'cam_front': _info('cam_front', stamp(9), fx=-250.0)}}
    bad_frames[10] = {'odom': _odom(stamp(10), float('nan'))}
    bad_frames[11] = {'odom': _odom(stamp(11), 5.5, (0.0, 0.0, 0.0, 2.0))}
    bad_frames[12] = {'odom': _odom(stamp(12), 6.0, (0.0, float('nan'), 0.0, 1.0))}
    for k in range(15, 21):
        bad_frames[k] = {'skip': {'cam_front_left'}}  # silent for 3 s

    items: list[Item] = []
    for k in range(23):
        if k == 1:
            items.append(('tf_static', '', _tf_static(bad=nan_back)))  # frame 0 had no /tf_static at all
        if k == 2:
            items.append(('tf_static', '', _tf_static()))
        if k == 13:
            items.append(('tf_static', '', _tf_static(bad=nan_back)))  # rejected; the good edge stays
        items += frame_items(stamp(k), 0.5 * k, k, **bad_frames.get(k, {}))
        if k == 14:
            items += frame_items(stamp(k), 0.5 * k, k)  # the same frame again
    bag = tmp_path / 'mixed'
    with BagWriter(bag) as w:
        w.add_topic('/tf_static', 'tf2_msgs/msg/TFMessage', latched=True)
        w.add_topic('/odom', 'nav_msgs/msg/Odometry')
        for cam in CAMS:
            w.add_topic(f'/{cam}/image_rect/compressed', 'sensor_msgs/msg/CompressedImage')
            w.add_topic(f'/{cam}/camera_info', 'sensor_msgs/msg/CameraInfo')
        for n, (kind, cam, msg) in enumerate(items):
            topic = {
                'image': f'/{cam}/image_rect/compressed',
                'info': f'/{cam}/camera_info',
                'tf_static': '/tf_static',
                'odom': '/odom',
            }[kind]
            w.write(topic, NS + n * 1_000_000, msg)
            if n == 100:
                w.write_raw('/odom', NS + n * 1_000_000, b'\x00\x01\x00\x00\xff\xff')  # damaged CDR
    summary = _replay(bag, tmp_path / 'out', pipeline, camera_timeout=0.0)  # wait for all six cameras

    expected = {
        'missing_calibration': 1,  # frame 0: no /tf_static yet
        'bad_calibration': 3,  # frame 1: NaN transform of cam_back; frames 8, 9: zero and negative focal length
        'decode_error': 5,  # frames 3-7: corrupt, truncated, empty, tiff, 160x90 images
        'bad_pose': 3,  # frames 10-12: NaN position, non-unit quaternion, NaN quaternion
        'duplicate_stamp': 1,  # frame 14 twice
    }
    good = [2, 13, 14, 21, 22]
    assert summary.frame_drops == expected
    assert summary.frames_out == len(good) == summary.out_counts['occupancy/semantics']
    assert summary.sets == summary.frames_out + sum(summary.frame_drops.values()) == 18
    d = summary.to_dict()
    assert d['accounting']['frames_exact'] and d['accounting']['sync_exact']
    acc = d['frame_accounting']
    assert acc['frames_exact'] and acc['sync_exact'] and acc['outputs'] == 5 and acc['frame_drops'] == expected
    # the silent camera: the other inputs' messages of those frames are counted sync drops
    assert summary.silent_inputs == {'cam_front_left': pytest.approx(3.5)}
    assert set(summary.sync_drops) == {'queue_overflow', 'left_at_end'}
    assert {k.split(':')[0] for k in summary.sync_drops_by_stream} == set(CAMS + ('odom',)) - {'cam_front_left'}
    assert summary.rejected == {'/odom:undecodable': 1, '/tf_static:bad_transform': 2}
    assert any('cam_front_left was silent' in n for n in summary.notes)


def test_the_temporal_cache_never_mixes_features_across_a_bag_loop_a_pose_jump_or_a_calibration_change(
    pipeline, tmp_path
) -> None:
    """Two passes over the same 2 s (time goes backwards between them), a 200 m pose jump and a new CameraInfo
    in the second pass: right after each reset every history slot is empty, and every history feature fed
    afterwards is the bev_feature of a frame after that reset."""
    step, t0 = NS // 4, 100 * NS
    items: list[Item] = [('tf_static', '', _tf_static())]
    for k in range(8):
        items += frame_items(t0 + k * step, 1.0 * k, 100 + k)
    for k in range(8):
        s = t0 + k * step
        change: dict[str, Any] = {}
        if k == 7:
            change['info'] = {'cam_front': _info('cam_front', s, fx=260.0)}
        items += frame_items(s, 1.0 * k + (200.0 if k >= 5 else 0.0), 200 + k, **change)
    summary = _replay(write_bag(tmp_path / 'loop', items), tmp_path / 'out', pipeline)
    runs, outs = pipeline.backend.feeds, pipeline.backend.results
    assert summary.frames_out == len(runs) == 16 and summary.frame_drops == {}
    assert summary.time_jumps == 1
    assert pipeline.cache.resets == Counter(
        {ResetReason.TIME_BACKWARDS: 1, ResetReason.EGO_JUMP: 1, ResetReason.CALIBRATION: 1}
    )
    resets = [0, 8, 13, 15]  # first frame, loop, jump, calibration
    for r in resets:
        assert runs[r]['history_valid'].tolist() == [0.0, 0.0], r
        assert not runs[r]['history_bev'].any()
    used = 0
    for i, run in enumerate(runs):
        start = max(r for r in resets if r <= i)
        for slot, valid in enumerate(run['history_valid']):
            if not valid:
                assert not run['history_bev'][slot].any()
                continue
            used += 1
            same = [j for j in range(i) if np.array_equal(outs[j]['bev_feature'], run['history_bev'][slot])]
            assert same and all(start <= j < i for j in same), (i, slot, same, start)
    # 4 Hz, slots at 0.5 s and 1.0 s with 0.25 s tolerance: slot 0 is filled from the first post-reset frame
    # 0.25 s back on, slot 1 from 0.75 s back on; never from before the reset
    for i, run in enumerate(runs):
        since = i - max(r for r in resets if r <= i)
        assert run['history_valid'].tolist() == [float(since >= 1), float(since >= 3)], (i, since)
    assert used == 19


def test_a_checkpoint_with_the_wrong_keys_is_one_clear_error_at_start(net, tmp_path) -> None:
    from occ_perception.model.checkpoint import FORMAT
    from occ_perception.pipeline import PipelineError, load_model

    state = dict(net.state_dict())
    renamed = next(k for k in state if k.startswith('occ_head.'))
    state['occ_head.renamed_weight'] = state.pop(renamed)
    path = tmp_path / 'wrong_keys.pt'
    torch.save(
        {
            'format': FORMAT,
            'config': CFG.name,
            'history': CFG.history,
            'history_offsets': list(CFG.history_offsets),
            'flow_head': CFG.flow_head,
            'norm': CFG.norm,
            'state_dict': state,
        },
        path,
    )
    with pytest.raises(PipelineError, match=r"wrong_keys.pt'.*state dict does not fit") as info:
        load_model(path, CFG, backend='torch')
    assert renamed in str(info.value) and 'occ_head.renamed_weight' in str(info.value)


def _tf(stamp: int, x: float) -> Any:
    tr = TYPES.make('geometry_msgs/msg/Transform', translation=_vec((x, 0.0, 0.0)), rotation=_quat((0, 0, 0, 1)))
    ts = TYPES.make(
        'geometry_msgs/msg/TransformStamped',
        header=TYPES.header(stamp, 'map'),
        child_frame_id='base_link',
        transform=tr,
    )
    return TYPES.make('tf2_msgs/msg/TFMessage', transforms=[ts])


def test_a_bag_loop_with_the_tf_pose_source_restarts_the_pose_buffer_and_frames_go_on() -> None:
    """pose_source tf: after the loop no frame is paired with a pose of the first pass, none waits forever."""
    assembler = FrameAssembler(AssemblyConfig(pose_source='tf'))
    assembler.add_tf_static(_tf_static())
    step, t0 = NS // 4, 50 * NS
    events: list[Frame | FrameDrop] = []
    for lap, offset in ((0, 0.0), (1, 1000.0)):  # the second lap's poses are 1 km away from the first's
        for k in range(6):
            stamp = t0 + k * step
            events += assembler.add_tf(_tf(stamp, offset + k))
            for kind, cam, msg in frame_items(stamp, 0.0, 10 * lap + k):
                if kind == 'info':
                    assembler.add_camera_info(cam, msg)
                elif kind == 'image':
                    events += assembler.add_image(cam, msg)
        events += assembler.add_tf(_tf(t0 + 6 * step, offset + 6))
    frames = [e for e in events if isinstance(e, Frame)]
    assert [f.stamp_ns for f in frames] == [t0 + k * step for k in range(6)] * 2
    xs = [float(f.pose.translation[0]) for f in frames]
    assert xs == [float(k) for k in range(6)] + [1000.0 + k for k in range(6)]
    assert assembler.time_jumps == 1 and not assembler.frame_drops
    assert assembler.accounted()


def test_a_truncated_or_damaged_bag_is_one_replay_error_or_read_up_to_the_damage(pipeline, tmp_path) -> None:
    from occ_perception.replay import ReplayError

    items: list[Item] = [('tf_static', '', _tf_static())]
    for k in range(3):
        items += frame_items(30 * NS + k * NS // 2, 0.5 * k, k)
    good = write_bag(tmp_path / 'good', items)
    data = next(good.glob('*.mcap')).read_bytes()
    import shutil

    cut = tmp_path / 'cut'
    shutil.copytree(good, cut)
    next(cut.glob('*.mcap')).write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ReplayError, match=r'cut: cannot open as a rosbag'):
        _replay(cut, tmp_path / 'o1', pipeline)
    meta = tmp_path / 'meta'
    shutil.copytree(good, meta)
    (meta / 'metadata.yaml').write_text((meta / 'metadata.yaml').read_text()[:200])
    with pytest.raises(ReplayError, match=r'meta: cannot open as a rosbag'):
        _replay(meta, tmp_path / 'o2', pipeline)
