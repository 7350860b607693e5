"""What occ_node decides, tested without ROS on rosbags message instances (real field names, real CDR)."""

from __future__ import annotations

import threading
from dataclasses import replace
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from occ_perception.geometry import Transform
from occ_perception.grid import FREE_LABEL, GridSpec
from occ_perception.messages import MessageTypes, read_pointcloud2, read_semantic_occupancy, rosbags_typestore
from occ_perception.outputs import OccFrame
from occ_perception.rig import Rig
from occ_perception.ros.logic import (
    DROP_REASONS,
    OUTPUT_TOPICS,
    BackendChoice,
    DropCounter,
    Frame,
    FrameRunner,
    FrameSlot,
    LogicError,
    NodeAssembly,
    NodeStats,
    choose_backend,
    diagnostic_array,
    make_processor,
    node_reports,
    raw_converter,
    resolve_model_path,
)
from occ_perception.ros.params import PARAMS, ParamError, param_defaults, param_descriptor, validate_params

from occ_perception import frame_assembly

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
STORE = rosbags_typestore('jazzy')
TYPES = MessageTypes.rosbags('jazzy')
CAMERAS = ('cam_front_left', 'cam_front', 'cam_front_right', 'cam_back_left', 'cam_back', 'cam_back_right')


def cdr(msg, msgtype: str, distro: str = 'jazzy'):
    store = rosbags_typestore(distro)
    return store.deserialize_cdr(bytes(store.serialize_cdr(msg, msgtype)), msgtype)


def camera_info(cam, stamp_ns: int, frame_id: str | None = None):
    p = np.zeros((3, 4))
    p[:, :3] = cam.intrinsics
    roi = TYPES.make('sensor_msgs/msg/RegionOfInterest', x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return TYPES.make(
        'sensor_msgs/msg/CameraInfo',
        header=TYPES.header(stamp_ns, cam.name if frame_id is None else frame_id),
        height=cam.height,
        width=cam.width,
        distortion_model='plumb_bob',
        d=np.zeros(5),
        k=cam.intrinsics.reshape(-1).copy(),
        r=np.eye(3).reshape(-1),
        p=p.reshape(-1),
        binning_x=0,
        binning_y=0,
        roi=roi,
    )


def transform_stamped(parent: str, child: str, t: Transform):
    x, y, z, w = t.xyzw()
    tf = TYPES.make(
        'geometry_msgs/msg/Transform',
        translation=TYPES.make(
            'geometry_msgs/msg/Vector3', x=float(t.translation[0]), y=float(t.translation[1]), z=float(t.translation[2])
        ),
        rotation=TYPES.make('geometry_msgs/msg/Quaternion', x=x, y=y, z=z, w=w),
    )
    return TYPES.make(
        'geometry_msgs/msg/TransformStamped', header=TYPES.header(T0, parent), child_frame_id=child, transform=tf
    )


def tf_message(edges):
    return cdr(
        TYPES.make('tf2_msgs/msg/TFMessage', transforms=[transform_stamped(*e) for e in edges]),
        'tf2_msgs/msg/TFMessage',
    )


def odometry(
    stamp_ns: int, pose: Transform, linear=(0.0, 0.0, 0.0), angular=(0.0, 0.0, 0.0), frame='map', child='base_link'
):
    x, y, z, w = pose.xyzw()
    p = TYPES.make(
        'geometry_msgs/msg/Pose',
        position=TYPES.make(
            'geometry_msgs/msg/Point',
            x=float(pose.translation[0]),
            y=float(pose.translation[1]),
            z=float(pose.translation[2]),
        ),
        orientation=TYPES.make('geometry_msgs/msg/Quaternion', x=x, y=y, z=z, w=w),
    )
    vec = lambda v: TYPES.make('geometry_msgs/msg/Vector3', x=float(v[0]), y=float(v[1]), z=float(v[2]))  # noqa: E731
    twist = TYPES.make('geometry_msgs/msg/Twist', linear=vec(linear), angular=vec(angular))
    msg = TYPES.make(
        'nav_msgs/msg/Odometry',
        header=TYPES.header(stamp_ns, frame),
        child_frame_id=child,
        pose=TYPES.make('geometry_msgs/msg/PoseWithCovariance', pose=p, covariance=np.zeros(36)),
        twist=TYPES.make('geometry_msgs/msg/TwistWithCovariance', twist=twist, covariance=np.zeros(36)),
    )
    return cdr(msg, 'nav_msgs/msg/Odometry')


def jpeg_image(stamp_ns: int, width: int, height: int, seed: int, frame_id: str = 'cam', data: bytes | None = None):
    if data is None:
        rng = np.random.default_rng(seed)
        img = cv2.resize(rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8), (width, height))
        data = cv2.imencode('.jpg', img)[1].tobytes()
    msg = TYPES.make(
        'sensor_msgs/msg/CompressedImage',
        header=TYPES.header(stamp_ns, frame_id),
        format='jpeg',
        data=np.frombuffer(data, np.uint8),
    )
    return cdr(msg, 'sensor_msgs/msg/CompressedImage')


# ---------------------------------------------------------------------------
# parameters


@pytest.mark.parametrize('distro', ['humble', 'jazzy'])
def test_parameter_descriptors_carry_description_choices_and_ranges(distro):
    types = MessageTypes.rosbags(distro)
    by_name = {spec.name: spec for spec in PARAMS}
    for spec in PARAMS:
        d = cdr(param_descriptor(spec, types), 'rcl_interfaces/msg/ParameterDescriptor', distro)
        assert d.name == spec.name and d.description.startswith(spec.description) and d.type == 0
        assert all(choice in d.description for choice in spec.choices)
        bounded = spec.low is not None and spec.high is not None
        ints, floats = list(d.integer_range), list(d.floating_point_range)
        assert len(ints) == int(bounded and spec.kind == 'integer')
        assert len(floats) == int(bounded and spec.kind == 'double')
        for r in ints + floats:
            assert (r.from_value, r.to_value) == (spec.low, spec.high)
    assert any(s.kind == 'integer' and s.low is not None for s in PARAMS)
    d = param_descriptor(by_name['marker_min_speed'], types)
    assert d.floating_point_range[0].step == 0.0 and (d.floating_point_range[0].to_value == 50.0)


def test_defaults_validate_and_every_declared_parameter_is_a_field():
    params = validate_params({})
    assert params.cameras == CAMERAS and params.backend == 'auto' and params.pose_source == 'odom'
    assert set(vars(params)) == {p.name for p in PARAMS}
    for p in PARAMS:
        assert p.description and p.kind in ('bool', 'integer', 'double', 'string', 'string_array')
        if p.kind in ('integer', 'double'):
            assert p.low is not None and p.high is not None and p.low <= p.default <= p.high, p.name


@pytest.mark.parametrize(
    ('values', 'match'),
    [
        ({'sync_slop': 'fast'}, "'sync_slop': expected a finite number, got 'fast'"),
        ({'sync_slop': float('nan')}, "'sync_slop': expected a finite number"),
        ({'sync_queue_size': 2.0}, "'sync_queue_size': expected an integer"),
        ({'sync_queue_size': 0}, r"'sync_queue_size': expected a value in \[1, 20\], got 0"),
        ({'markers_rate': -1.0}, "'markers_rate': expected a value in"),
        ({'publish_confidence': 1}, "'publish_confidence': expected true or false"),
        ({'backend': 'openvino'}, "'backend': expected one of \\['auto', 'tensorrt', 'onnxruntime', 'torch'\\]"),
        ({'image_transport': 'theora'}, "'image_transport': expected one of"),
        ({'cameras': []}, "'cameras': expected a non-empty list"),
        ({'cameras': ['cam_front', 'cam_front']}, "'cameras': names must be unique"),
        ({'ego_frame': ''}, "'ego_frame': expected a frame name"),
        ({'world_frame': 'base_link'}, 'expected two frames'),
        ({'costmap_z_min': 2.0, 'costmap_z_max': 0.5}, 'z_min < z_max'),
        ({'use_gpu': True}, r"unknown parameter\(s\) \['use_gpu'\]"),
    ],
)
def test_invalid_values_are_named(values, match):
    with pytest.raises(ParamError, match=match):
        validate_params(values)


def test_integer_values_are_accepted_for_doubles():
    params = validate_params({'sync_slop': 1, 'max_speed': 30})
    assert params.max_speed == 30.0 and isinstance(params.sync_slop, float)
    assert param_defaults()['cameras'] == list(CAMERAS)


# ---------------------------------------------------------------------------
# hand-over and drops


def pending(stamp_ns: int) -> Frame:
    return Frame(frame_assembly.Frame(stamp_ns, (), Transform(), None, (stamp_ns,), stamp_ns))


def test_latest_frame_wins_and_every_frame_is_published_or_counted():
    drops = DropCounter()
    slot = FrameSlot(drops)
    frames = [pending(T0 + i) for i in range(3)]
    slot.put(frames[0])
    slot.put(frames[1])
    assert drops.counts == {'superseded': 1} and slot.take(0.0) is frames[1]
    assert slot.take(0.01) is None
    slot.put(frames[2])
    slot.close()
    assert drops.counts == {'superseded': 1, 'shutdown': 1} and slot.take(0.01) is None
    slot.put(frames[0])
    assert drops.counts['shutdown'] == 2
    with pytest.raises(LogicError, match='expected one of'):
        drops.drop('bored')


def test_producer_and_worker_threads_account_for_every_frame():
    drops = DropCounter()
    slot = FrameSlot(drops)
    taken: list[Frame] = []

    def worker():
        while True:
            frame = slot.take(0.05)
            if frame is None and slot._closed:
                return
            if frame is not None:
                taken.append(frame)

    thread = threading.Thread(target=worker)
    thread.start()
    for i in range(500):
        slot.put(pending(T0 + i))
    slot.close()
    thread.join(5.0)
    assert len(taken) + drops.total == 500 and set(drops.counts) <= {'superseded', 'shutdown'}
    assert [f.stamp_ns for f in taken] == sorted(f.stamp_ns for f in taken)


# ---------------------------------------------------------------------------
# backend choice and model path


def pair(choice) -> tuple[str, str]:
    return choice.backend, choice.device


def test_backend_auto_prefers_tensorrt_then_onnxruntime_cuda_then_cpu():
    no_trt = lambda: 'TensorRT is not installed'  # noqa: E731
    trt = lambda: None  # noqa: E731
    cuda = lambda: ['CUDAExecutionProvider', 'CPUExecutionProvider']  # noqa: E731
    cpu = lambda: ['CPUExecutionProvider']  # noqa: E731
    assert pair(choose_backend('auto', 'auto', 'm.onnx', trt, cuda)) == ('tensorrt', 'cuda')
    got = choose_backend('auto', 'auto', 'm.onnx', no_trt, cuda)
    assert pair(got) == ('onnxruntime', 'cuda') and 'TensorRT is not installed' in got.reason
    got = choose_backend('auto', 'auto', 'm.onnx', no_trt, cpu)
    assert pair(got) == ('onnxruntime', 'cpu') and 'absent' in got.reason
    assert pair(choose_backend('auto', 'cpu', 'm.onnx', no_trt, cuda)) == ('onnxruntime', 'cpu')
    assert pair(choose_backend('auto', 'auto', 'model.pt', trt, cuda)) == ('torch', 'cpu')
    assert pair(choose_backend('onnxruntime', 'auto', 'm.onnx', trt, cuda)) == ('onnxruntime', 'cuda')
    assert pair(choose_backend('onnxruntime', 'auto', 'm.onnx', trt, cpu)) == ('onnxruntime', 'cpu')
    assert pair(choose_backend('tensorrt', 'auto', 'm.onnx', no_trt, cpu)) == ('tensorrt', 'cuda')
    with pytest.raises(LogicError, match='CUDAExecutionProvider'):
        choose_backend('onnxruntime', 'cuda', 'm.onnx', trt, cpu)


def test_model_path_defaults_to_the_shipped_model(tmp_path):
    from occ_perception.model.config import get_config

    config = get_config('tiny', history=2)
    with pytest.raises(LogicError, match="parameter 'model' is empty and no shipped model: neither tiny_k2.onnx"):
        resolve_model_path('', 'onnxruntime', config, [tmp_path])
    (tmp_path / 'tiny_k2.onnx').write_bytes(b'onnx')
    (tmp_path / 'tiny_k2.pt').write_bytes(b'PK')
    assert resolve_model_path('', 'onnxruntime', config, [tmp_path]) == tmp_path / 'tiny_k2.onnx'
    assert resolve_model_path('', 'torch', config, [tmp_path]) == tmp_path / 'tiny_k2.pt'
    given = tmp_path / 'mine.onnx'
    given.write_bytes(b'onnx')
    assert resolve_model_path(str(given), 'tensorrt', config, [tmp_path]) == given
    with pytest.raises(LogicError, match="parameter 'model': no model file"):
        resolve_model_path(str(tmp_path / 'nope.onnx'), 'onnxruntime', config, [tmp_path])


# ---------------------------------------------------------------------------
# outputs and diagnostics


def _occ(stamp_ns: int, grid: GridSpec, flow: bool = True) -> OccFrame:
    labels = np.full(grid.shape, FREE_LABEL, np.uint8)
    labels[:, :, 2] = 11
    labels[10:14, 4:8, 3:6] = 4
    vel = np.zeros(grid.shape + (2,), np.float32)
    vel[10:14, 4:8, 3:6] = (2.0, 0.5)
    return OccFrame(
        stamp_ns=stamp_ns,
        grid=grid,
        labels=labels,
        confidence=np.full(grid.shape, 255, np.uint8),
        flow=vel if flow else None,
        timings={'preprocess': 0.01, 'network': 0.05, 'total': 0.07},
    )


class StubPipeline:
    """Returns prepared OccFrames: the encoders' side of FrameProcessor without a network."""

    def __init__(self, grid: GridSpec, flow: bool = True) -> None:
        self.config = SimpleNamespace(grid=grid)
        self.flow = flow

    def process(self, images, pose, rig, stamp_ns):
        return _occ(stamp_ns, self.config.grid, self.flow)


@pytest.mark.parametrize('distro', ['humble', 'jazzy'])
def test_processor_from_the_parameters_encodes_every_topic_markers_rate_limited(distro):
    types = MessageTypes.rosbags(distro)
    grid = GridSpec(lower=(-6.0, -4.0, -1.0), size=(30, 20, 16), voxel_size=0.4)
    params = validate_params({'markers_rate': 2.0})
    processor = make_processor(StubPipeline(grid), types, params, voxels=True)
    rig = Rig.nuscenes(64, 36)

    def job(stamp_ns: int):
        from occ_perception import frame_assembly

        return frame_assembly.Frame(stamp_ns, (), Transform(), rig, (stamp_ns,), stamp_ns)

    keys = [sorted(processor.process(job(T0 + i * NS // 4)).messages) for i in range(4)]
    assert keys[0] == sorted(OUTPUT_TOPICS) and 'occupancy/markers' not in keys[1] and 'occupancy/markers' in keys[2]
    out = processor.process(job(T0 + 2 * NS)).messages
    for topic, msg in out.items():
        assert cdr(msg, OUTPUT_TOPICS[topic], distro).__msgtype__ == OUTPUT_TOPICS[topic]
    sem = read_semantic_occupancy(cdr(out['occupancy/semantics'], OUTPUT_TOPICS['occupancy/semantics'], distro))
    assert sem.grid == grid and int((sem.labels == 4).sum()) == 4 * 4 * 3
    assert set(read_pointcloud2(out['occupancy/points'])['label'].tolist()) == {4, 11}
    cost = np.asarray(out['occupancy/costmap'].data).reshape(20, 30)  # rows along y, columns along x
    assert (cost[4:8, 10:14] == 100).all() and (cost[0, :] == 0).all()
    # flow arrows only above marker_min_speed (the car moves at 2.06 m/s)
    arrows = [m for m in out['occupancy/markers'].markers if m.ns.endswith('/flow')]
    assert len(arrows) == 1 and len(arrows[0].points) == 4 * 4 * 6
    slow = make_processor(StubPipeline(grid), types, validate_params({'marker_min_speed': 3.0}), voxels=True)
    slow_arrows = [m for m in slow.process(job(T0)).messages['occupancy/markers'].markers if m.ns.endswith('/flow')]
    assert [len(m.points) for m in slow_arrows] == [0]
    # no flow head, no foxglove_msgs, markers off; a height band above the car clears its columns
    lean = make_processor(
        StubPipeline(grid, flow=False),
        types,
        validate_params({'markers_rate': 0.0, 'costmap_z_min': 2.2, 'costmap_z_max': 4.0}),
        voxels=False,
    )
    out = lean.process(job(T0)).messages
    assert sorted(out) == ['occupancy/costmap', 'occupancy/points', 'occupancy/semantics']
    assert (np.asarray(out['occupancy/costmap'].data).reshape(20, 30)[4:8, 10:14] == 0).all()


@pytest.mark.parametrize('distro', ['humble', 'jazzy'])
def test_diagnostics_report_rates_latency_drops_cache_and_backend(distro):
    types = MessageTypes.rosbags(distro)
    stats = NodeStats(['cam_front', 'cam_back', 'odom'], window=5.0)
    drops = DropCounter()
    for i in range(10):
        stats.arrived('cam_front', now=100.0 + 0.1 * i)
        stats.arrived('odom', now=100.0 + 0.05 * i)
    grid = GridSpec(lower=(-6.0, -4.0, -1.0), size=(30, 20, 16), voxel_size=0.4)
    stats.frame()
    reports = stats.reports(drops, 'onnxruntime', 'fp32', 0, ['cam_back/camera_info'], now=101.0)
    assert [r.level for r in reports] == ['WARN', 'ERROR', 'OK']
    assert 'cam_back/camera_info' in reports[0].message
    for _ in range(3):
        stats.frame()
        stats.published(replace(_occ(T0, grid), reset_reason='gap'), delay=0.2, now=101.0)
    drops.drop('missing_pose', 'no transform')
    drops.drop('superseded')
    reports = stats.reports(drops, 'tensorrt', 'fp16', 2, [], now=101.5)
    values = {r.name: dict(r.values) for r in reports}
    assert [r.level for r in reports] == ['WARN', 'WARN', 'OK']  # cam_back silent; a missing_pose drop
    inputs = values['occ_node: inputs']
    assert inputs['rate cam_front [Hz]'] == '2.00' and inputs['rate odom [Hz]'] == '2.00'
    assert inputs['rig'] == 'complete' and inputs['rate cam_back [Hz]'] == '0.00'
    pipe = values['occ_node: pipeline']
    assert pipe['backend'] == 'tensorrt' and pipe['precision'] == 'fp16' and pipe['frames published'] == '3'
    assert pipe['drops missing_pose'] == '1' and pipe['drops superseded'] == '1' and pipe['last drop'] == 'superseded: '
    assert set(f'drops {r}' for r in DROP_REASONS) <= set(pipe)
    assert pipe['latency network [ms]'] == 'mean 50.0, max 50.0'
    assert pipe['latency end_to_end [ms]'] == 'mean 200.0, max 200.0'
    cache = values['occ_node: temporal cache']
    assert cache['entries'] == '2' and cache['last reset'] == 'gap' and cache['resets gap'] == '3'
    stats.requested_reset()
    msg = cdr(
        diagnostic_array(types, T0, stats.reports(drops, 'torch', 'fp32', None, [], now=101.5)),
        'diagnostic_msgs/msg/DiagnosticArray',
        distro,
    )
    assert [s.name for s in msg.status] == ['occ_node: inputs', 'occ_node: pipeline', 'occ_node: temporal cache']
    assert msg.status[2].message == 'last reset: requested'
    assert {kv.key: kv.value for kv in msg.status[2].values}['entries'] == 'no temporal cache'
    assert msg.status[1].level == types.resolve('diagnostic_msgs/msg/DiagnosticStatus').WARN


def test_node_reports_state_backend_precision_and_cache_entries():
    stats, drops = NodeStats(['cam_front'], window=5.0), DropCounter()
    trt = BackendChoice('tensorrt', 'cuda:0', 'engine found')
    ort = BackendChoice('onnxruntime', 'cpu', 'no TensorRT')
    params = validate_params({'precision': 'fp16'})
    pipe = {
        r.name: dict(r.values)
        for r in node_reports(stats, drops, trt, params, SimpleNamespace(entries=[1, 2]), [], None)
    }
    assert pipe['occ_node: pipeline']['precision'] == 'fp16' and pipe['occ_node: temporal cache']['entries'] == '2'
    reports = node_reports(stats, drops, ort, params, None, ['cam_front/camera_info'], 'no pose')
    values = {r.name: dict(r.values) for r in reports}
    assert (
        values['occ_node: pipeline']['backend'] == 'onnxruntime' and values['occ_node: pipeline']['precision'] == 'fp32'
    )
    assert values['occ_node: temporal cache']['entries'] == 'no temporal cache'
    assert values['occ_node: inputs']['pose'] == 'no pose' and reports[0].level == 'WARN'


def test_raw_converter_keeps_the_header_and_the_converted_pixels():
    image_cls = rosbags_typestore('jazzy').types['sensor_msgs/msg/Image']
    header_cls = rosbags_typestore('jazzy').types['std_msgs/msg/Header']
    time_cls = rosbags_typestore('jazzy').types['builtin_interfaces/msg/Time']
    bgr = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    msg = image_cls(header_cls(time_cls(5, 7), 'cam_front'), 4, 6, 'bgr8', 0, 18, bgr.reshape(-1))

    class Bridge:  # what cv_bridge.CvBridge.imgmsg_to_cv2 does for bgr8 -> rgb8
        def imgmsg_to_cv2(self, m, desired_encoding):
            assert desired_encoding == 'rgb8'
            return np.asarray(m.data).reshape(m.height, m.width, 3)[..., ::-1]

    raw = raw_converter(Bridge())(msg)
    assert raw.header is msg.header and raw.encoding == 'rgb8' and (raw.width, raw.height, raw.step) == (6, 4, 18)
    np.testing.assert_array_equal(raw.data.reshape(4, 6, 3), bgr[..., ::-1])


# ---------------------------------------------------------------------------
# a frame end to end: parameters -> pipeline (torch checkpoint, backend auto) -> outputs or drops


@pytest.fixture(scope='module')
def runner_parts(tmp_path_factory):
    torch = pytest.importorskip('torch')
    from occ_perception.model.checkpoint import save_checkpoint
    from occ_perception.model.config import get_config
    from occ_perception.model.network import OccNet
    from occ_perception.ros.logic import build_pipeline

    torch.manual_seed(0)
    net = OccNet(get_config('tiny', history=2)).eval()
    path = tmp_path_factory.mktemp('model') / 'tiny_k2.pt'
    save_checkpoint(net, path)
    params = validate_params({'model': str(path), 'preprocess_threads': 1, 'threads': 1})  # history 2: the default
    pipeline, choice = build_pipeline(params, None, lambda: 'no TensorRT here', lambda: ['CPUExecutionProvider'])
    yield pipeline, choice
    pipeline.close()


def test_failed_camera_mode_choices_are_the_pipelines():
    from occ_perception.pipeline import FAILED_CAMERA_MODES
    from occ_perception.ros.params import FAILED_CAMERA_MODES as NODE_MODES

    assert NODE_MODES == FAILED_CAMERA_MODES
    assert validate_params({'failed_camera_mode': 'blank_image'}).failed_camera_mode == 'blank_image'
    with pytest.raises(ParamError, match='failed_camera_mode'):
        validate_params({'failed_camera_mode': 'drop'})


def test_node_assembly_to_runner_with_calibration_drops_failed_camera_and_a_loop(runner_parts):
    """Messages one by one as the subscriptions deliver them: sets through the FrameAssembler to the slot, the
    worker's runner to output messages; a corrupt image, odometry of other frames, a camera that stops (frames go
    on without it, its diagnostic WARN), time going backwards, the ~/reset service."""
    pipeline, choice = runner_parts
    assert (choice.backend, choice.device) == ('torch', 'cpu') and '.pt checkpoint' in choice.reason
    truth = Rig.nuscenes(480, 270)
    params = validate_params({'markers_rate': 1.0, 'camera_timeout': 1.0})
    drops, stats = DropCounter(), NodeStats(list(CAMERAS) + ['odom'])
    slot = FrameSlot(drops)
    assembly = NodeAssembly(params, slot, drops, stats)
    processor = make_processor(pipeline, TYPES, params, voxels=True)
    runner = FrameRunner(processor, stats, drops)

    def feed(i: int, skip: tuple[str, ...] = (), odom_frame: str = 'map', corrupt: bool = False):
        """Frame i's messages (0.5 s apart), then what the worker gets: (messages, problem) or None."""
        stamp = T0 + i * NS // 2
        for k, cam in enumerate(CAMERAS):
            if cam in skip:
                continue
            bad = b'\xff\xd8 not a jpeg' if corrupt and k == 2 else None
            assembly.image(cam, jpeg_image(stamp + 3_000_000 * k, 480, 270, seed=k + 10 * i, frame_id=cam, data=bad))
        pose = Transform.from_yaw(0.1, (5.0 * i, 0.0, 0.0))
        assembly.odom(odometry(stamp + 1_000_000, pose, linear=(10.0, 0, 0), frame=odom_frame))
        frame = slot.take(0.0)
        return None if frame is None else (frame, *runner.run(frame))

    # no calibration yet: the set is a counted missing_calibration drop, the rig's gap is named
    assert feed(0) is None and drops.counts == {'missing_calibration': 1}
    assert assembly.rig_missing() == ['no CameraInfo of cam_front_left yet']
    for cam in truth.cameras:
        assembly.camera_info(cam.name, camera_info(cam, T0))
    assembly.tf_static(tf_message([('base_link', c.name, c.cam_to_ego) for c in truth.cameras]))
    assert assembly.rig_missing() == []
    (f1, first, p1), (_, second, p2) = feed(1), feed(2)
    assert p1 is None and p2 is None and f1.job.missing == () and runner.last_reset is None
    assert sorted(first) == sorted(OUTPUT_TOPICS) and 'occupancy/markers' not in second  # 1 Hz, frames 0.5 s apart
    sem = read_semantic_occupancy(first['occupancy/semantics'])
    assert sem.stamp_ns == T0 + NS // 2 + 3_000_000 and sem.grid == pipeline.config.grid  # cam_front's stamp
    # the ~/reset service
    runner.request_reset()
    assert feed(3)[2] is None and stats.last_reset == 'requested' and len(pipeline.cache.entries) == 1
    # a corrupt image and odometry of other frames: counted drops, the next frame goes through
    assert feed(4, corrupt=True)[2].startswith('decode_error: ')
    assert feed(5, odom_frame='odom') is None and drops.counts['bad_pose'] == 1
    # cam_back stops: no set until it has been silent for more than camera_timeout (1 s), then frames without it
    results = [feed(i, skip=('cam_back',)) for i in range(6, 11)]
    made = [r for r in results if r is not None]
    assert [r[0].job.missing for r in made] == [('cam_back',)] * len(made) and len(made) >= 2
    assert all(r[2] is None and r[1] for r in made)
    reports = {r.name: r for r in assembly.reports(processor)}
    assert (
        reports['occ_node: camera cam_back'].level == 'WARN'
        and 'cam_back' in reports['occ_node: camera cam_back'].message
    )
    assert all(reports[f'occ_node: camera {c}'].level == 'OK' for c in CAMERAS if c != 'cam_back')
    sync = reports['occ_node: synchroniser']
    assert sync.level == 'WARN' and dict(sync.values)['frames without cam_back'] == str(len(made))
    # the bag again from its start without cam_back: time went backwards, frames go on once cam_back times out
    again = [feed(i, skip=('cam_back',)) for i in range(1, 6)]
    assert dict(assembly.reports(processor)[-1].values)['time_jumps'] == '1'
    assert [r[0].job.missing for r in again if r is not None][-2:] == [('cam_back',)] * 2
    # every set is a published frame or one counted drop (nothing waits: the slot is emptied after each frame)
    assert stats.frames_in == stats.frames_out + drops.total
    assert set(drops.counts) == {'missing_calibration', 'decode_error', 'bad_pose'}
