"""Fuzzing of everything we decode, with hypothesis: no exception other than our own clear error classes.

Targets: JPEG and raw image decode (:mod:`occ_perception.preprocess`), CameraInfo to the rig
(:meth:`Camera.from_camera_info`), transforms and poses (:meth:`Transform.from_msg`, the assembler's
Odometry pose), our messages from CDR bytes (rosbags deserialisation of mutated bytes through
:func:`occ_perception.data.bags.decode_message`, then our readers) and bag reading (truncated or
mutated rosbag2 MCAP files through :func:`occ_perception.data.bags.read_bag`).

Each target starts from real data (a real JPEG, real typestore messages, a real bag written with
rosbags) and mutates it. ``make test`` runs a few dozen inputs per target (hypothesis profile
``ci``, derandomised); ``make fuzz`` runs the ``fuzz`` profile (``OCC_FUZZ_PROFILE=fuzz``, 2,000
inputs per target; ``OCC_FUZZ_EXAMPLES`` overrides the count). Every test prints how many inputs it saw.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from occ_perception.data.bags import BagError, BagWriter, decode_message, read_bag
from occ_perception.frame_assembly import AssemblyConfig, FrameAssembler
from occ_perception.geometry import GeometryError, Transform
from occ_perception.grid import GridSpec
from occ_perception.messages import (
    MessagesError,
    MessageTypes,
    make_occupancy_flow,
    make_semantic_occupancy,
    read_occupancy_flow,
    read_semantic_occupancy,
    rosbags_typestore,
)
from occ_perception.preprocess import PreprocessError, preprocess_image
from occ_perception.rig import Camera, ImageTransform, Rig, RigError

hypothesis = pytest.importorskip('hypothesis')
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_COMMON = {'deadline': None, 'database': None, 'suppress_health_check': list(HealthCheck)}
settings.register_profile('ci', max_examples=int(os.environ.get('OCC_FUZZ_EXAMPLES', 40)), derandomize=True, **_COMMON)
settings.register_profile('fuzz', max_examples=int(os.environ.get('OCC_FUZZ_EXAMPLES', 2000)), **_COMMON)
settings.load_profile(os.environ.get('OCC_FUZZ_PROFILE', 'ci'))

SEEN: Counter[str] = Counter()
OUTCOMES: Counter[str] = Counter()
TYPES = MessageTypes.rosbags('jazzy')
STORE = rosbags_typestore('jazzy')
W, H = 96, 64  # the fuzzed camera's CameraInfo size (non-square)


@pytest.fixture(autouse=True)
def _report(request):
    """Print how many inputs the test saw and how they ended (accepted or which of our errors)."""
    name = request.node.name
    SEEN[name] = 0
    before = Counter(OUTCOMES)
    yield
    ends = {
        k.split('/', 1)[1]: v - before[k] for k, v in OUTCOMES.items() if k.startswith(name + '/') and v > before[k]
    }
    print(f'\nfuzz {name}: {SEEN[name]} inputs ({ends})')


def _note(test: str, outcome: str) -> None:
    SEEN[test] += 1
    OUTCOMES[f'{test}/{outcome}'] += 1


def _camera() -> Camera:
    k = np.array([[80.0, 0.0, 48.0], [0.0, 80.0, 32.0], [0.0, 0.0, 1.0]])
    return Camera('cam_front', k, W, H, Transform())


def _jpeg() -> bytes:
    rng = np.random.default_rng(5)
    image = cv2.GaussianBlur(rng.integers(0, 255, (H, W, 3), dtype=np.uint8), (0, 0), 2)
    ok, buf = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


JPEG = _jpeg()
TRANSFORM = ImageTransform.fit(W, H, 48, 24)


def _compressed(data: bytes, fmt: str = 'jpeg'):
    return TYPES.make(
        'sensor_msgs/msg/CompressedImage',
        header=TYPES.header(1, 'cam_front'),
        format=fmt,
        data=np.frombuffer(data, np.uint8).copy(),
    )


@st.composite
def mutated(draw, data: bytes, max_edits: int = 8) -> bytes:
    """``data`` cut short, with bytes overwritten, inserted or deleted, or (rarely) replaced by random bytes."""
    kind = draw(st.sampled_from(['same', 'cut', 'edit', 'edit', 'insert', 'delete', 'random']))
    out = bytearray(data)
    if kind == 'same':
        return data
    if kind == 'cut':
        return bytes(out[: draw(st.integers(0, len(out)))])
    if kind == 'random':
        return draw(st.binary(max_size=2 * len(data)))
    for _ in range(draw(st.integers(1, max_edits))):
        pos = draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == 'edit' and out:
            out[pos] = draw(st.integers(0, 255))
        elif kind == 'insert':
            out[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif out:
            del out[pos : pos + draw(st.integers(1, 8))]
    return bytes(out)


# ---------------------------------------------------------------------------------------------- images


@given(data=mutated(JPEG), fmt=st.sampled_from(['jpeg', '', 'png', 'rgb8; jpeg compressed bgr8', 'tiff']))
def test_fuzz_jpeg_decode(data: bytes, fmt: str) -> None:
    out = None
    try:
        out = preprocess_image(_compressed(data, fmt), _camera(), TRANSFORM)
    except PreprocessError as err:
        assert 'cam_front' in str(err)
        _note('test_fuzz_jpeg_decode', 'PreprocessError')
        return
    assert out.shape == (24, 48, 3) and out.dtype == np.uint8
    _note('test_fuzz_jpeg_decode', 'decoded')


@given(
    encoding=st.sampled_from(['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'yuv422', '16UC1', '']),
    width=st.sampled_from([W, W, W, W - 1, 0, 1, 2**31]),
    height=st.sampled_from([H, H, H, H + 1, 0, 2**31]),
    pad=st.one_of(st.integers(0, 7), st.integers(-5 * W, 5 * W)),
    extra=st.one_of(st.just(0), st.integers(-5 * W * H, 5 * W)),
    big=st.integers(0, 1),
)
def test_fuzz_raw_decode(encoding: str, width: int, height: int, pad: int, extra: int, big: int) -> None:
    channels = {'rgba8': 4, 'bgra8': 4, 'mono8': 1}.get(encoding, 3)
    step = max(W * channels + pad, 0)  # a row of the nominal width plus padding (or too short)
    size = min(max(step * H + extra, 0), 10 * W * H * 4)
    msg = TYPES.make(
        'sensor_msgs/msg/Image',
        header=TYPES.header(1, 'cam_front'),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=big,
        step=step,
        data=np.full(size, 77, np.uint8),
    )
    try:
        out = preprocess_image(msg, _camera(), TRANSFORM)
    except PreprocessError as err:
        assert 'cam_front' in str(err)
        _note('test_fuzz_raw_decode', 'PreprocessError')
        return
    assert out.shape == (24, 48, 3)
    _note('test_fuzz_raw_decode', 'decoded')


# ---------------------------------------------------------------------------------------------- calibration and poses

FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 1e-300, 1e300, 80.0, -80.0]),
)


def _camera_info(k, p, width: int, height: int):
    return TYPES.make(
        'sensor_msgs/msg/CameraInfo',
        header=TYPES.header(1, 'cam_front'),
        height=height,
        width=width,
        distortion_model='plumb_bob',
        d=np.zeros(5),
        k=np.asarray(k, np.float64),
        r=np.eye(3).reshape(9),
        p=np.asarray(p, np.float64),
        binning_x=0,
        binning_y=0,
        roi=TYPES.make('sensor_msgs/msg/RegionOfInterest', x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )


BASE_K = [80.0, 0.0, 48.0, 0.0, 80.0, 32.0, 0.0, 0.0, 1.0]
BASE_P = [80.0, 0.0, 48.0, 0.0, 0.0, 80.0, 32.0, 0.0, 0.0, 0.0, 1.0, 0.0]


@st.composite
def perturbed(draw, base: list[float]) -> list[float]:
    """``base`` with some entries replaced by arbitrary floats (NaN, inf, 0, negative, huge, tiny)."""
    out = list(base)
    for i in draw(st.lists(st.integers(0, len(base) - 1), max_size=len(base))):
        out[i] = draw(FLOATS)
    return out


@given(
    k=perturbed(BASE_K),
    p=st.one_of(st.just([0.0] * 12), perturbed(BASE_P)),
    width=st.sampled_from([0, 1, W, W, 1600, 2**32 - 1]),
    height=st.sampled_from([0, 1, H, H, 900, 2**32 - 1]),
)
def test_fuzz_camera_info_to_rig(k, p, width: int, height: int) -> None:
    info = _camera_info(k, p, width, height)
    try:
        rig = Rig((Camera.from_camera_info(info, Transform()),))
        rig.digest()
        mats = rig.matrices(352, 128)
    except RigError as err:
        assert 'cam_front' in str(err) or 'ImageTransform' in str(err)
        _note('test_fuzz_camera_info_to_rig', 'RigError')
        return
    assert np.all(np.isfinite(mats.intrinsics)) and mats.intrinsics[0, 0, 0] > 0 and mats.intrinsics[0, 1, 1] > 0
    _note('test_fuzz_camera_info_to_rig', 'rig')


def _vec(v, kind: str = 'geometry_msgs/msg/Vector3'):
    return TYPES.make(kind, x=float(v[0]), y=float(v[1]), z=float(v[2]))


def _quat(q):
    return TYPES.make('geometry_msgs/msg/Quaternion', x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))


UNITISH = st.lists(st.floats(-1.0, 1.0), min_size=4, max_size=4)


@given(
    t=st.lists(FLOATS, min_size=3, max_size=3),
    q=st.one_of(UNITISH, st.lists(FLOATS, min_size=4, max_size=4)),
    normalise=st.booleans(),
)
def test_fuzz_transform_from_msg(t, q, normalise: bool) -> None:
    if normalise:
        norm = math.hypot(*q) if all(math.isfinite(v) for v in q) else 0.0
        q = [v / norm for v in q] if norm > 1e-6 else q
    msg = TYPES.make('geometry_msgs/msg/Transform', translation=_vec(t), rotation=_quat(q))
    try:
        tf = Transform.from_msg(msg)
    except GeometryError as err:
        assert 'quaternion' in str(err) or 'translation' in str(err)
        _note('test_fuzz_transform_from_msg', 'GeometryError')
        return
    assert np.all(np.isfinite(tf.matrix())) and abs(tf.rotation.norm - 1.0) < 1e-9
    assert abs(sum(float(v) * float(v) for v in q) - 1.0) <= 0.01  # only near-unit quaternions are accepted
    _note('test_fuzz_transform_from_msg', 'accepted')


FINITE = st.floats(-1e4, 1e4)


@given(
    position=st.one_of(st.lists(FINITE, min_size=3, max_size=3), st.lists(FLOATS, min_size=3, max_size=3)),
    q=st.one_of(st.just([0.0, 0.0, 0.0, 1.0]), UNITISH, st.lists(FLOATS, min_size=4, max_size=4)),
    linear=st.one_of(st.lists(FINITE, min_size=3, max_size=3), st.lists(FLOATS, min_size=3, max_size=3)),
    angular=st.one_of(st.lists(FINITE, min_size=3, max_size=3), st.lists(FLOATS, min_size=3, max_size=3)),
    dt_ns=st.integers(-(10**9), 10**9),
    frames=st.sampled_from([('map', 'base_link'), ('map', 'base_link'), ('', ''), ('odom', 'base_link')]),
)
def test_fuzz_odometry_pose(position, q, linear, angular, dt_ns: int, frames) -> None:
    pose = TYPES.make(
        'geometry_msgs/msg/Pose', position=_vec(position, 'geometry_msgs/msg/Point'), orientation=_quat(q)
    )
    twist = TYPES.make('geometry_msgs/msg/Twist', linear=_vec(linear), angular=_vec(angular))
    msg = TYPES.make(
        'nav_msgs/msg/Odometry',
        header=TYPES.header(5 * 10**9, frames[0]),
        child_frame_id=frames[1],
        pose=TYPES.make('geometry_msgs/msg/PoseWithCovariance', pose=pose, covariance=np.zeros(36)),
        twist=TYPES.make('geometry_msgs/msg/TwistWithCovariance', twist=twist, covariance=np.zeros(36)),
    )
    assembler = FrameAssembler(AssemblyConfig())
    try:
        result = assembler._odom_pose(msg, 5 * 10**9 + dt_ns)
    except GeometryError as err:
        assert 'Odometry' in str(err) or 'quaternion' in str(err) or 'translation' in str(err)
        _note('test_fuzz_odometry_pose', 'GeometryError')
        return
    assert np.all(np.isfinite(result.matrix()))
    _note('test_fuzz_odometry_pose', 'pose')


# ---------------------------------------------------------------------------------------------- CDR messages

GRID = GridSpec((-2.0, -1.6, -1.0), (5, 4, 3), 0.8)


def _cdr_samples() -> dict[str, bytes]:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 18, GRID.shape).astype(np.uint8)
    semantic = make_semantic_occupancy(TYPES, 5, 'base_link', GRID, labels, labels)
    flow = make_occupancy_flow(
        TYPES, 5, 'base_link', GRID, np.array([1, 7, 40], np.uint32), np.ones((3, 2), np.float32)
    )
    info = _camera_info(np.eye(3).reshape(9) * 80, np.zeros(12), W, H)
    image = _compressed(JPEG[:200])
    msgs = {
        'occ_perception_msgs/msg/SemanticOccupancy': semantic,
        'occ_perception_msgs/msg/OccupancyFlow': flow,
        'sensor_msgs/msg/CameraInfo': info,
        'sensor_msgs/msg/CompressedImage': image,
    }
    return {name: bytes(STORE.serialize_cdr(msg, name)) for name, msg in msgs.items()}


CDR = _cdr_samples()


@st.composite
def cdr_input(draw):
    msgtype = draw(st.sampled_from(sorted(CDR)))
    return msgtype, draw(mutated(CDR[msgtype]))


@given(sample=cdr_input())
def test_fuzz_messages_from_cdr(sample) -> None:
    msgtype, raw = sample
    try:
        msg = decode_message(STORE.deserialize_cdr, raw, msgtype, '/fuzz')
    except BagError as err:
        assert '/fuzz' in str(err) and msgtype in str(err)
        _note('test_fuzz_messages_from_cdr', 'BagError')
        return
    try:
        if msgtype.endswith('SemanticOccupancy'):
            read_semantic_occupancy(msg)
        elif msgtype.endswith('OccupancyFlow'):
            read_occupancy_flow(msg)
        elif msgtype.endswith('CameraInfo'):
            Camera.from_camera_info(msg, Transform(), name='cam_front')
        else:
            preprocess_image(msg, _camera(), TRANSFORM)
    except (MessagesError, RigError, PreprocessError) as err:
        _note('test_fuzz_messages_from_cdr', type(err).__name__)
        return
    _note('test_fuzz_messages_from_cdr', 'read')


# ---------------------------------------------------------------------------------------------- bags


def _write_bag(folder: Path) -> bytes:
    with BagWriter(folder, compress=False) as w:
        w.add_topic('/cam_front/image_rect/compressed', 'sensor_msgs/msg/CompressedImage')
        w.add_topic('/occupancy/semantics', 'occ_perception_msgs/msg/SemanticOccupancy')
        for i in range(3):
            w.write('/cam_front/image_rect/compressed', (i + 1) * 10**8, _compressed(JPEG[:300]))
            w.write_raw('/occupancy/semantics', (i + 1) * 10**8 + 1, CDR['occ_perception_msgs/msg/SemanticOccupancy'])
    return next(folder.glob('*.mcap')).read_bytes()


BAG_DIR = Path(tempfile.mkdtemp(prefix='occ_fuzz_bag_'))
BAG_BYTES = _write_bag(BAG_DIR / 'good')


@given(data=mutated(BAG_BYTES, max_edits=16), metadata=st.booleans())
def test_fuzz_bag_reading(data: bytes, metadata: bool) -> None:
    folder = Path(tempfile.mkdtemp(dir=BAG_DIR))
    try:
        bag = folder / 'bag'
        shutil.copytree(BAG_DIR / 'good', bag)
        target = next(bag.glob('*.mcap'))
        if metadata:  # damage metadata.yaml instead
            meta = bag / 'metadata.yaml'
            meta.write_bytes(meta.read_bytes()[: len(data) % max(meta.stat().st_size, 1)])
        else:
            target.write_bytes(data)
        try:
            count = 0
            for m in read_bag(bag):
                if m.topic == '/occupancy/semantics':
                    try:
                        read_semantic_occupancy(m.msg)
                    except MessagesError:
                        pass
                count += 1
        except BagError as err:
            assert str(bag) in str(err)
            _note('test_fuzz_bag_reading', 'BagError')
            return
        assert count <= 6
        _note('test_fuzz_bag_reading', 'read')
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_fuzz_targets_start_from_valid_data() -> None:
    """The seeds themselves decode: the fuzzers mutate real data, not garbage."""
    assert preprocess_image(_compressed(JPEG), _camera(), TRANSFORM).shape == (24, 48, 3)
    assert sum(1 for _ in read_bag(BAG_DIR / 'good')) == 6
    for msgtype, raw in CDR.items():
        decode_message(STORE.deserialize_cdr, raw, msgtype, '/seed')
