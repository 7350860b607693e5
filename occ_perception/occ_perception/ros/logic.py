"""What ``occ_node`` decides, without ROS: rig, ego pose, frame hand-over, drops, backend, outputs, diagnostics.

Nothing here imports rclpy; everything takes and returns message instances through
their field names (rosbags typestore classes in tests and tools, rclpy classes in the
node) or builds them through a :class:`~occ_perception.messages.MessageTypes`.

- :class:`RigAssembler`: the rig from the latest CameraInfo per camera and the
  ``/tf_static`` tree (:class:`~occ_perception.frame_assembly.StaticTransforms`, chains
  composed); names what is missing; a change of either gives a new rig (new digest), on
  which the pipeline rebuilds its splat tables and resets the temporal cache.
- :func:`odometry_pose_at`: the synchronised Odometry carried to the frame stamp with its twist.
- :class:`StampWatch` and :func:`purge_newer`: input time going backwards (``ros2 bag play --loop``) empties
  the synchroniser's queues of the stamps that can no longer pair.
- :class:`FrameSlot`: one pending frame, latest wins; the one it replaces is a drop.
- :class:`DropCounter`: every dropped frame counted by reason (:data:`DROP_REASONS`).
- :func:`choose_backend`: ``backend: auto`` resolution.
- :class:`FrameRunner`: one frame through the replay's
  :class:`~occ_perception.frame_assembly.FrameProcessor` (pipeline and every output
  message, markers rate-limited), or to one counted drop.
- :class:`NodeStats` and :func:`diagnostic_array`: the ``/diagnostics`` content.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pyquaternion import Quaternion

from .. import frame_assembly
from ..frame_assembly import FRAME_DROP_REASONS, OUTPUT_TOPICS, FrameDrop, FrameProcessor, StaticTransforms
from ..geometry import GeometryError, Transform
from ..messages import MessageTypes, stamp_to_ns
from ..outputs import OccFrame
from ..rig import Camera, Rig, RigError
from .params import NodeParams

__all__ = [
    'DROP_REASONS',
    'OUTPUT_TOPICS',
    'BackendChoice',
    'DropCounter',
    'Frame',
    'FrameRunner',
    'FrameSlot',
    'LogicError',
    'NodeStats',
    'RawImage',
    'RigAssembler',
    'StampWatch',
    'StatusReport',
    'backend_precision',
    'build_pipeline',
    'make_processor',
    'choose_backend',
    'diagnostic_array',
    'frame_from_set',
    'image_topic',
    'odometry_pose_at',
    'pose_from_odometry',
    'purge_newer',
    'probe_onnxruntime_providers',
    'probe_tensorrt',
    'resolve_model_path',
]

NS = 1_000_000_000

DROP_REASONS: tuple[str, ...] = (
    'superseded',  # a newer frame arrived while this one waited for the worker (latest wins)
    'shutdown',  # still pending when the node stopped
    *FRAME_DROP_REASONS,  # the replay's reasons: calibration, pose, decode, inference, pipeline
)
"""Why a synchronised frame produced no output; every frame ends as one output or one of these."""


class LogicError(ValueError):
    """A message does not fit what the node expects (wrong frame, bad transform, unknown camera)."""


def image_topic(camera: str, transport: str) -> str:
    """The image topic of ``camera``: ``<camera>/image_rect/compressed`` or ``<camera>/image_rect`` (raw)."""
    return f'{camera}/image_rect/compressed' if transport == 'compressed' else f'{camera}/image_rect'


# ---------------------------------------------------------------------------
# rig from CameraInfo and /tf_static


def _info_key(info: Any) -> tuple[Any, ...]:
    return (
        str(info.header.frame_id),
        int(info.width),
        int(info.height),
        tuple(float(v) for v in np.asarray(info.k, dtype=np.float64).reshape(-1)),
        tuple(float(v) for v in np.asarray(info.p, dtype=np.float64).reshape(-1)),
    )


class RigAssembler:
    """The camera rig from the latest CameraInfo of each camera and the static transform tree.

    Args:
        cameras: camera names in the network's order (the rig's order). A camera's frame is its CameraInfo's
            ``header.frame_id``, or its name where that is empty.
        ego_frame: the frame the extrinsics are expressed in (``base_link``).

    Thread-safe: CameraInfo and TF callbacks and the inference worker may call it concurrently.
    """

    def __init__(self, cameras: Sequence[str], ego_frame: str = 'base_link') -> None:
        self.cameras = tuple(cameras)
        self.ego_frame = ego_frame
        self._infos: dict[str, Any] = {}
        self._info_keys: dict[str, tuple[Any, ...]] = {}
        self.static = StaticTransforms()
        self._rig: Rig | None = None
        self._digest: str | None = None  # of the last rig assembled (kept while something goes missing)
        self._error: str | None = None
        self._dirty = True
        self._lock = threading.Lock()
        self.changes = 0  # number of times the assembled rig changed after the first one

    def add_camera_info(self, camera: str, info: Any) -> bool:
        """Store ``camera``'s CameraInfo; True when it differs from the previous one (size, K, P or frame).

        Raises:
            LogicError: ``camera`` is not one of the rig's cameras.
        """
        if camera not in self.cameras:
            raise LogicError(f'CameraInfo for {camera!r}: not one of the cameras {list(self.cameras)}')
        key = _info_key(info)
        with self._lock:
            if self._info_keys.get(camera) == key:
                return False
            self._infos[camera], self._info_keys[camera] = info, key
            self._dirty = True
            return True

    def add_transforms(self, tf_message: Any) -> bool:
        """Store the transforms of a tf2_msgs/TFMessage (from ``/tf_static``); True when an edge changed.

        A message with a transform whose numbers are not finite or whose quaternion is zero is kept up to that
        transform; the camera it concerns stays missing (named by :meth:`missing`).
        """
        with self._lock:
            version = self.static.version
            try:
                self.static.add(tf_message)
            except GeometryError:
                pass
            changed = self.static.version != version
            self._dirty |= changed
        return changed

    def _frame_of(self, camera: str) -> str:
        info = self._infos.get(camera)
        frame = str(info.header.frame_id).lstrip('/') if info is not None else ''
        return frame or camera

    def _chain(self, frame: str) -> Transform | None:
        """``T_ego_frame`` composed along the static tree, or None where the chain does not reach ego_frame."""
        return self.static.lookup(self.ego_frame, frame)

    @property
    def error(self) -> str | None:
        """Why the last assembly failed although nothing was missing (a malformed CameraInfo), or None."""
        return self._error

    def missing(self) -> list[str]:
        """What stops the rig from being assembled, one phrase per camera ([] when complete)."""
        with self._lock:
            out = []
            for cam in self.cameras:
                if cam not in self._infos:
                    out.append(f'{cam}/camera_info')
                elif self._chain(self._frame_of(cam)) is None:
                    out.append(f'/tf_static {self.ego_frame} <- {self._frame_of(cam)}')
            if not out and self._error:
                out.append(self._error)
            return out

    def rig(self) -> Rig | None:
        """The current rig in camera order, or None while something is missing or malformed (see :meth:`missing`).

        The same :class:`Rig` object is returned until a CameraInfo or a transform changes.
        """
        with self._lock:
            if not self._dirty:
                return self._rig
            self._dirty = False
            cams = []
            for name in self.cameras:
                info = self._infos.get(name)
                extrinsics = self._chain(self._frame_of(name)) if info is not None else None
                if info is None or extrinsics is None:
                    self._rig, self._error = None, None
                    return None
                try:
                    cams.append(Camera.from_camera_info(info, extrinsics, name=name))
                except RigError as err:
                    self._rig, self._error = None, str(err)
                    return None
            rig = Rig(tuple(cams))
            digest = rig.digest()
            if digest != self._digest:
                self.changes += self._digest is not None
            if digest != self._digest or self._rig is None:  # equal numbers keep the same Rig object
                self._rig, self._digest = rig, digest
            self._error = None
            return self._rig


# ---------------------------------------------------------------------------
# ego pose


def pose_from_odometry(msg: Any, world_frame: str, ego_frame: str) -> tuple[int, Transform]:
    """``(stamp_ns, T_world_ego)`` of a nav_msgs/Odometry.

    Raises:
        LogicError: the header frame is not ``world_frame`` or the child frame not ``ego_frame`` (empty frames
            are accepted), or the pose is not finite.
    """
    frame, child = str(msg.header.frame_id).lstrip('/'), str(msg.child_frame_id).lstrip('/')
    if (frame and frame != world_frame) or (child and child != ego_frame):
        raise LogicError(f'Odometry: expected {world_frame} -> {ego_frame}, got {frame!r} -> {child!r}')
    try:
        return stamp_to_ns(msg.header.stamp), Transform.from_msg(msg.pose.pose)
    except GeometryError as err:
        raise LogicError(f'Odometry pose: {err}') from err


def _vector(v: Any) -> np.ndarray:
    return np.array([float(v.x), float(v.y), float(v.z)], dtype=np.float64)


def odometry_pose_at(msg: Any, stamp_ns: int, world_frame: str, ego_frame: str) -> Transform:
    """``T_world_ego`` at ``stamp_ns`` from a nav_msgs/Odometry of a nearby stamp (the synchronised one).

    The message's pose is carried over the stamp difference ``dt`` with its twist taken as constant
    (``twist`` is in the child frame, ``ego_frame``): ``R(t + dt) = R(t) * exp(w * dt)``,
    ``p(t + dt) = p(t) + R(t) * (v * dt)``. For the few milliseconds between a camera and an odometry
    stamp this is far below a voxel.

    Raises:
        LogicError: other frames than ``world_frame -> ego_frame`` (empty frame ids are accepted), or a pose
            or twist that is not finite.
    """
    _, pose = pose_from_odometry(msg, world_frame, ego_frame)
    linear, angular = _vector(msg.twist.twist.linear), _vector(msg.twist.twist.angular)
    if not (np.all(np.isfinite(linear)) and np.all(np.isfinite(angular))):
        raise LogicError(f'Odometry twist: expected finite values, got {linear.tolist()}, {angular.tolist()}')
    dt = (int(stamp_ns) - stamp_to_ns(msg.header.stamp)) / NS
    if dt == 0.0:
        return pose
    rotvec = angular * dt
    angle = float(np.linalg.norm(rotvec))
    delta = Quaternion(axis=rotvec / angle, angle=angle) if angle > 0 else Quaternion()
    return Transform(pose.rotation * delta, pose.translation + pose.rotation.rotate(linear * dt))


# ---------------------------------------------------------------------------
# frames, hand-over to the worker, drops


@dataclass(frozen=True)
class RawImage:
    """An 8-bit image already converted (cv_bridge) with the fields of a sensor_msgs/Image, for the preprocessor.

    Attributes:
        header: the original message's header. encoding: ``rgb8``, ``bgr8`` or ``mono8``.
        width, height, step: [px], [px], bytes per row. data: the pixels.
    """

    header: Any
    encoding: str
    width: int
    height: int
    step: int
    data: np.ndarray
    is_bigendian: int = 0

    @classmethod
    def from_array(cls, header: Any, image: np.ndarray, encoding: str = 'rgb8') -> RawImage:
        """From an (H, W, 3) or (H, W) uint8 array.

        Raises:
            LogicError: not uint8, or not 2-D/3-D.
        """
        image = np.ascontiguousarray(image)
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise LogicError(f'converted image: expected an (H, W[, C]) uint8 array, got {image.dtype} {image.shape}')
        h, w = image.shape[:2]
        return cls(header, encoding, w, h, image.strides[0], image.reshape(-1))


def raw_converter(bridge: Any) -> Callable[[Any], RawImage]:
    """sensor_msgs/Image -> :class:`RawImage` in rgb8 through a cv_bridge ``CvBridge`` (any source encoding)."""

    def convert(msg: Any) -> RawImage:
        return RawImage.from_array(msg.header, bridge.imgmsg_to_cv2(msg, desired_encoding='rgb8'), 'rgb8')

    return convert


@dataclass(frozen=True)
class Frame:
    """One synchronised set of camera images.

    Attributes:
        stamp_ns: the frame's stamp, the ``cam_front`` image's (else the first camera's) [ns].
        images: camera name -> image message (CompressedImage, Image or :class:`RawImage`), in rig order.
        spread_ns: largest minus smallest image stamp [ns].
        odom: the synchronised nav_msgs/Odometry (``pose_source: odom``), or None.
        received: monotonic time [s] the set was completed.
    """

    stamp_ns: int
    images: dict[str, Any]
    spread_ns: int
    odom: Any = None
    received: float = field(default_factory=time.monotonic)


def frame_from_set(cameras: Sequence[str], messages: Sequence[Any]) -> Frame:
    """A :class:`Frame` from the synchroniser's output: one image per camera in ``cameras`` order, then the
    Odometry where it is a synchroniser input (``pose_source: odom``).

    Raises:
        LogicError: the count is neither ``len(cameras)`` nor ``len(cameras) + 1``.
    """
    n = len(cameras)
    if len(messages) not in (n, n + 1):
        raise LogicError(f'synchronised set: {len(messages)} messages for cameras {list(cameras)} (and odom)')
    images = messages[:n]
    stamps = [stamp_to_ns(m.header.stamp) for m in messages]
    anchor = list(cameras).index('cam_front') if 'cam_front' in cameras else 0
    odom = messages[n] if len(messages) > n else None
    return Frame(stamps[anchor], dict(zip(cameras, images)), max(stamps) - min(stamps), odom)


class StampWatch:
    """Notices an input whose header stamps go backwards (a bag replayed with ``--loop``, a restarted simulation).

    Each input keeps its newest stamp; :meth:`observe` says when a stamp is older than that by more than
    ``tolerance_ns``. Thread-safe.
    """

    def __init__(self, tolerance_ns: int = 0) -> None:
        self.tolerance_ns = int(tolerance_ns)
        self.latest: dict[str, int] = {}
        self.jumps = 0  # inputs seen going backwards so far
        self._lock = threading.Lock()

    def observe(self, name: str, stamp_ns: int) -> bool:
        """Record ``stamp_ns`` [ns] of input ``name``; True when it went backwards (then it is the new newest)."""
        with self._lock:
            previous = self.latest.get(name)
            self.latest[name] = stamp_ns
            if previous is not None and stamp_ns < previous - self.tolerance_ns:
                self.jumps += 1
                return True
            return False


def purge_newer(queues: Sequence[dict[int, Any]], stamp_ns: int, lock: Any = None) -> int:
    """Remove from synchroniser queues (stamp [ns] -> message, as message_filters keeps them) every entry newer
    than ``stamp_ns``, holding ``lock`` (the synchroniser's, or None) meanwhile; returns how many went.

    After time went backwards these entries are newer than anything that will arrive: the
    ApproximateTimeSynchronizer would pair nothing with them, and with full queues it drops each new message
    as the oldest, so the node would stop producing frames.
    """
    removed = 0
    with lock if lock is not None else contextlib.nullcontext():
        for queue in queues:
            for key in [k for k in queue if k > stamp_ns]:
                del queue[key]
                removed += 1
    return removed


class DropCounter:
    """Dropped frames by reason (thread-safe)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.last: tuple[str, str] | None = None  # (reason, detail) of the newest drop
        self._lock = threading.Lock()

    def drop(self, reason: str, detail: str = '') -> None:
        """Count one dropped frame.

        Raises:
            LogicError: ``reason`` is not one of :data:`DROP_REASONS`.
        """
        if reason not in DROP_REASONS:
            raise LogicError(f'drop reason {reason!r}: expected one of {list(DROP_REASONS)}')
        with self._lock:
            self.counts[reason] += 1
            self.last = (reason, detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class FrameSlot:
    """A one-frame mailbox between the synchroniser callback and the inference worker: latest wins.

    ``put`` never blocks (it runs under the synchroniser's lock); a frame still waiting when a newer one
    arrives is counted as ``superseded`` in ``drops``.
    """

    def __init__(self, drops: DropCounter) -> None:
        self.drops = drops
        self._frame: Frame | None = None
        self._closed = False
        self._cond = threading.Condition()

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self._closed:
                self.drops.drop('shutdown')
                return
            if self._frame is not None:
                self.drops.drop('superseded', f'frame {self._frame.stamp_ns / NS:.3f} s replaced by a newer one')
            self._frame = frame
            self._cond.notify()

    def take(self, timeout: float | None = None) -> Frame | None:
        """The pending frame, waiting up to ``timeout`` seconds; None on timeout or after :meth:`close`."""
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            return None if self._closed and frame is None else frame

    def close(self) -> None:
        """Stop: a pending frame is dropped (``shutdown``) and ``take`` returns None from now on."""
        with self._cond:
            self._closed = True
            if self._frame is not None:
                self.drops.drop('shutdown')
                self._frame = None
            self._cond.notify_all()


# ---------------------------------------------------------------------------
# backend choice


@dataclass(frozen=True)
class BackendChoice:
    """What ``backend``/``device`` resolve to. ``reason`` is the one log line that explains it."""

    backend: str
    device: str
    reason: str


def probe_tensorrt() -> str | None:
    """None when TensorRT imports and a CUDA GPU is present; otherwise why not (one phrase)."""
    from ..runtime.engine import EngineError, gpu_info, import_tensorrt

    try:
        import_tensorrt()
        gpu = gpu_info()
    except EngineError as err:
        return str(err)
    except Exception as err:  # a broken CUDA install raises its own errors
        return f'{type(err).__name__}: {err}'
    return None if gpu else 'no GPU'


def foxglove_available() -> bool:
    """True when the ``foxglove_msgs`` Python package imports (then ``occupancy/voxels`` is published)."""
    try:
        import foxglove_msgs.msg  # noqa: F401
    except ImportError:
        return False
    return True


def probe_onnxruntime_providers() -> list[str]:
    """onnxruntime's available execution providers ([] when onnxruntime is not installed)."""
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def choose_backend(
    requested: str,
    device: str,
    model_path: str,
    tensorrt_problem: Callable[[], str | None],
    ort_providers: Callable[[], Sequence[str]],
) -> BackendChoice:
    """Resolve ``backend`` and ``device`` parameters.

    ``auto``: a ``.pt`` checkpoint runs with torch; otherwise tensorrt where ``tensorrt_problem()`` is None
    (TensorRT imports and a GPU is present), else onnxruntime with the CUDA provider where
    ``ort_providers()`` lists it, else onnxruntime on the CPU. An explicit backend keeps its name; its
    ``device: auto`` becomes cuda where onnxruntime has the CUDA provider (onnxruntime) or cpu (torch).

    Raises:
        LogicError: ``device: cuda`` with onnxruntime lacking the CUDA provider.
    """
    providers = list(ort_providers()) if requested in ('auto', 'onnxruntime') else []
    cuda_ort = 'CUDAExecutionProvider' in providers
    if requested == 'auto':
        if model_path.endswith('.pt'):
            dev = 'cpu' if device == 'auto' else device
            return BackendChoice('torch', dev, f'backend auto: torch on {dev} (the model is a .pt checkpoint)')
        problem = tensorrt_problem()
        if problem is None:
            return BackendChoice('tensorrt', 'cuda', 'backend auto: tensorrt (TensorRT imports and a GPU is present)')
        if cuda_ort and device != 'cpu':
            return BackendChoice(
                'onnxruntime',
                'cuda',
                f'backend auto: onnxruntime with the CUDA provider (tensorrt unavailable: {problem})',
            )
        return BackendChoice(
            'onnxruntime',
            'cpu',
            f'backend auto: onnxruntime on the CPU (tensorrt unavailable: '
            f'{problem}; CUDA provider {"not wanted" if cuda_ort else "absent"})',
        )
    if requested == 'onnxruntime':
        if device == 'cuda' and not cuda_ort:
            raise LogicError(f'device cuda: this onnxruntime has no CUDAExecutionProvider (has {providers})')
        dev = device if device != 'auto' else ('cuda' if cuda_ort else 'cpu')
        return BackendChoice('onnxruntime', dev, f'backend onnxruntime on {dev}')
    if requested == 'torch':
        dev = 'cpu' if device == 'auto' else device
        return BackendChoice('torch', dev, f'backend torch on {dev}')
    return BackendChoice(requested, 'cuda', f'backend {requested}')


def resolve_model_path(model: str, backend: str, config: Any, dirs: Sequence[Path] | None = None) -> Path:
    """The model file: ``model`` itself, or when empty the shipped one that ``occ-perception demo`` uses
    (:func:`occ_perception.demo.find_model`: ``tiny_k2.onnx``, or ``tiny_k2.pt`` for torch, in the source tree,
    the pip prefix's or the ament index's ``share/occ_perception/models``).

    Args:
        backend: the resolved backend name. config: the model configuration (for an on-the-fly ONNX export).
        dirs: where to look for the shipped model (default: demo's :func:`~occ_perception.demo.model_dirs`).

    Raises:
        LogicError: no such file (the message says which parameter to set).
    """
    if not model:
        from ..demo import DemoError, find_model

        try:
            return find_model(config, backend, None if dirs is None else list(dirs))
        except DemoError as err:
            raise LogicError(f"parameter 'model' is empty and {err}") from err
    path = Path(model).expanduser()
    if not path.is_file():
        raise LogicError(
            f"parameter 'model': no model file at {str(path)!r} (set model to an ONNX file, engine or .pt checkpoint)"
        )
    return path


def build_pipeline(
    params: NodeParams,
    model_dirs: Sequence[Path] | None = None,
    tensorrt_problem: Callable[[], str | None] = probe_tensorrt,
    ort_providers: Callable[[], Sequence[str]] = probe_onnxruntime_providers,
) -> tuple[Any, BackendChoice]:
    """The node's :class:`~occ_perception.pipeline.OccPipeline` from its parameters, and the backend choice.

    ``model_dirs``: where an empty ``model`` parameter looks for the shipped model (see :func:`resolve_model_path`).

    The model configuration is ``model_config`` with ``history`` K (-1: the configuration's own); the cache policy
    takes the trained offsets of that configuration and ``history_span``, ``max_gap``, ``max_speed`` and
    ``jump_margin``.

    Raises:
        LogicError: no model file, or a backend/device combination this machine cannot run.
        occ_perception.pipeline.PipelineError: the model cannot be loaded or does not fit the configuration.
        occ_perception.temporal.TemporalError: ``history_span`` too short for the model's offsets.
    """
    from ..model.config import get_config
    from ..pipeline import OccPipeline, load_model
    from ..temporal import TemporalConfig

    config = get_config(params.model_config, history=None if params.history < 0 else params.history)
    choice = choose_backend(params.backend, params.device, params.model, tensorrt_problem, ort_providers)
    path = resolve_model_path(params.model, choice.backend, config, model_dirs)
    temporal = TemporalConfig(
        offsets=config.history_offsets,
        history_span=params.history_span,
        max_gap=params.max_gap,
        max_speed=params.max_speed,
        jump_margin=params.jump_margin,
    )
    backend = load_model(
        path, config, backend=choice.backend, threads=params.threads, device=choice.device, precision=params.precision
    )
    pipeline = OccPipeline(
        backend, config, temporal, preprocess_threads=params.preprocess_threads, confidence=params.publish_confidence
    )
    return pipeline, choice


def make_processor(pipeline: Any, types: MessageTypes, params: NodeParams, voxels: bool) -> FrameProcessor:
    """The :class:`~occ_perception.frame_assembly.FrameProcessor` of the node's output parameters.

    Args:
        voxels: encode foxglove_msgs/VoxelGrid (where foxglove_msgs is installed).
    """
    costmap = {'height_band': (params.costmap_z_min, params.costmap_z_max), 'rough_cost': params.costmap_rough_cost}
    return FrameProcessor(
        pipeline,
        types,
        markers_rate=params.markers_rate,
        voxels=voxels,
        surface_points=params.points_surface_only,
        marker_min_speed=params.marker_min_speed,
        costmap=costmap,
    )


def backend_precision(choice: BackendChoice, params: NodeParams) -> str:
    """The precision reported in diagnostics: the engine's for tensorrt, the graph's (fp32) otherwise."""
    return params.precision if choice.backend == 'tensorrt' else 'fp32'


def node_reports(
    stats: NodeStats,
    drops: DropCounter,
    choice: BackendChoice,
    params: NodeParams,
    cache: Any,
    rig_missing: Sequence[str],
    pose_problem: str | None,
) -> list[StatusReport]:
    """:meth:`NodeStats.reports` for the node's current state (``cache``: the pipeline's TemporalCache or None)."""
    entries = None if cache is None else len(cache.entries)
    return stats.reports(drops, choice.backend, backend_precision(choice, params), entries, rig_missing, pose_problem)


# ---------------------------------------------------------------------------
# outputs


class FrameRunner:
    """One frame from the worker's mailbox to the output messages, or to one counted drop.

    Frames go through the replay's :class:`~occ_perception.frame_assembly.FrameProcessor`, so the node and
    ``occ-perception replay`` run the pipeline and encode the outputs the same way.

    Args:
        processor: the FrameProcessor (pipeline, message classes, markers rate, costmap options).
        rigs: where the current rig comes from.
        pose_at: frame -> ``T_world_ego`` at its stamp (:func:`odometry_pose_at` of its odometry, or a TF lookup).
            A :class:`LogicError` or :class:`~occ_perception.geometry.GeometryError` it raises makes the frame a
            ``bad_pose`` drop, any other exception (tf2's lookup exceptions) a ``missing_pose`` drop.
        stats, drops: where the frame is counted.
        convert: applied to each image before preprocessing (cv_bridge for raw images), or None.
    """

    def __init__(
        self,
        processor: FrameProcessor,
        rigs: RigAssembler,
        pose_at: Callable[[Frame], Transform],
        stats: NodeStats,
        drops: DropCounter,
        convert: Callable[[Any], Any] | None = None,
    ) -> None:
        self.processor = processor
        self.pipeline = processor.pipeline
        self.rigs = rigs
        self.pose_at = pose_at
        self.stats = stats
        self.drops = drops
        self.convert = convert
        self.last_pose_problem: str | None = None
        self.last_reset: str | None = None  # the temporal cache's reset reason at the last published frame
        self._reset = threading.Event()

    def request_reset(self) -> None:
        """Reset the temporal cache before the next frame (the ``~/reset`` service; safe from any thread)."""
        self._reset.set()

    def run(self, frame: Frame) -> tuple[dict[str, Any] | None, str | None]:
        """Process ``frame``.

        Returns:
            ``(messages, None)`` with output topic (relative, :data:`OUTPUT_TOPICS`) -> message, or
            ``(None, 'reason: detail')`` after counting the drop in ``drops`` (one of :data:`DROP_REASONS`).
        """
        if self._reset.is_set():
            self._reset.clear()
            self.pipeline.reset()
            self.stats.requested_reset()
        rig = self.rigs.rig()
        if rig is None:
            if self.rigs.error:
                return self._drop('bad_calibration', self.rigs.error)
            return self._drop('missing_calibration', 'waiting for ' + ', '.join(self.rigs.missing()))
        try:
            pose = self.pose_at(frame)
        except Exception as err:  # LogicError (bad odometry) or tf2's lookup exceptions: this frame has no pose
            self.last_pose_problem = f'{type(err).__name__}: {err}'
            reason = 'bad_pose' if isinstance(err, (LogicError, GeometryError)) else 'missing_pose'
            return self._drop(reason, self.last_pose_problem)
        self.last_pose_problem = None
        images = [frame.images[name] for name in rig.names]
        if self.convert is not None:
            try:
                images = [self.convert(msg) for msg in images]
            except Exception as err:  # cv_bridge raises CvBridgeError or TypeError on unknown encodings
                return self._drop('decode_error', f'{type(err).__name__}: {err}')
        ready = frame.stamp_ns + frame.spread_ns
        job = frame_assembly.Frame(frame.stamp_ns, tuple(images), pose, rig, (frame.stamp_ns,), ready)
        try:
            result = self.processor.process(job)
        except Exception as err:  # anything else one frame can raise; the node keeps running
            return self._drop('pipeline_error', f'{type(err).__name__}: {err}')
        if isinstance(result, FrameDrop):
            return self._drop(result.reason, result.detail)
        self.stats.published(result.occ, time.monotonic() - frame.received, timings=result.timings)
        self.last_reset = result.occ.reset_reason
        return result.messages, None

    def _drop(self, reason: str, detail: str) -> tuple[None, str]:
        self.drops.drop(reason, detail)
        return None, f'{reason}: {detail}'


# ---------------------------------------------------------------------------
# diagnostics


@dataclass(frozen=True)
class StatusReport:
    """One diagnostic_msgs/DiagnosticStatus: level 'OK', 'WARN', 'ERROR' or 'STALE'; values key -> text."""

    name: str
    level: str
    message: str
    values: tuple[tuple[str, str], ...]


class NodeStats:
    """Counters and timings for ``/diagnostics`` (thread-safe).

    Args:
        inputs: input names (camera names, ``odom``) whose message rates are reported.
        window: length of the rate and latency window [s].
    """

    def __init__(self, inputs: Sequence[str], window: float = 5.0) -> None:
        self.window = float(window)
        self._arrivals: dict[str, deque[float]] = {name: deque() for name in inputs}
        self._timings: deque[tuple[float, dict[str, float]]] = deque()
        self._lock = threading.Lock()
        self.frames_in = 0
        self.frames_out = 0
        self.last_reset: str | None = None
        self.resets: Counter[str] = Counter()

    def arrived(self, name: str, now: float | None = None) -> None:
        """A message of input ``name`` arrived (monotonic ``now`` [s])."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._arrivals.setdefault(name, deque()).append(now)

    def frame(self) -> None:
        """A synchronised frame entered."""
        with self._lock:
            self.frames_in += 1

    def published(
        self, frame: OccFrame, delay: float, now: float | None = None, timings: dict[str, float] | None = None
    ) -> None:
        """A frame's outputs went out: its stage timings [s] (``timings``, default the OccFrame's), and ``delay``
        [s] from set completion to the end of encoding."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self.frames_out += 1
            self._timings.append((now, {**(frame.timings if timings is None else timings), 'end_to_end': delay}))
            if frame.reset_reason:
                self.last_reset = frame.reset_reason
                self.resets[frame.reset_reason] += 1

    def requested_reset(self) -> None:
        with self._lock:
            self.last_reset = 'requested'
            self.resets['requested'] += 1

    def _trim(self, now: float) -> None:
        for q in self._arrivals.values():
            while q and q[0] < now - self.window:
                q.popleft()
        while self._timings and self._timings[0][0] < now - self.window:
            self._timings.popleft()

    def rates(self, now: float | None = None) -> dict[str, float]:
        """Input name -> messages per second over the window."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            return {name: len(q) / self.window for name, q in self._arrivals.items()}

    def latencies(self, now: float | None = None) -> dict[str, tuple[float, float]]:
        """Stage -> (mean, max) [s] over the window's published frames."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            stages: dict[str, list[float]] = {}
            for _, timings in self._timings:
                for key, value in timings.items():
                    stages.setdefault(key, []).append(value)
        return {k: (float(np.mean(v)), float(np.max(v))) for k, v in stages.items()}

    def reports(
        self,
        drops: DropCounter,
        backend: str,
        precision: str,
        cache_entries: int | None,
        rig_missing: Sequence[str],
        pose_problem: str | None = None,
        now: float | None = None,
    ) -> list[StatusReport]:
        """The node's diagnostic statuses: inputs, pipeline (latency, drops), temporal cache.

        Levels: inputs WARN while the rig is incomplete or a camera is silent; pipeline WARN when frames were
        dropped for other reasons than ``superseded`` in the window's last report, ERROR when no frame was ever
        published but frames arrived.
        """
        rates = self.rates(now)
        lat = self.latencies(now)
        silent = sorted(name for name, r in rates.items() if r == 0.0)
        in_values = [(f'rate {name} [Hz]', f'{r:.2f}') for name, r in rates.items()]
        in_values.append(('rig', 'complete' if not rig_missing else 'missing: ' + ', '.join(rig_missing)))
        if pose_problem:
            in_values.append(('pose', pose_problem))
        if rig_missing:
            inputs = StatusReport('occ_node: inputs', 'WARN', 'waiting for ' + ', '.join(rig_missing), tuple(in_values))
        elif silent:
            inputs = StatusReport('occ_node: inputs', 'WARN', 'no messages from ' + ', '.join(silent), tuple(in_values))
        else:
            inputs = StatusReport('occ_node: inputs', 'OK', 'all inputs arriving', tuple(in_values))
        p_values = [
            ('backend', backend),
            ('precision', precision),
            ('frames in', str(self.frames_in)),
            ('frames published', str(self.frames_out)),
        ]
        p_values += [
            (f'latency {k} [ms]', f'mean {1e3 * m:.1f}, max {1e3 * x:.1f}') for k, (m, x) in sorted(lat.items())
        ]
        p_values += [(f'drops {r}', str(drops.counts.get(r, 0))) for r in DROP_REASONS]
        if drops.last is not None:
            p_values.append(('last drop', f'{drops.last[0]}: {drops.last[1]}'))
        serious = sum(n for r, n in drops.counts.items() if r not in ('superseded', 'shutdown'))
        if self.frames_in and not self.frames_out:
            pipeline = StatusReport(
                'occ_node: pipeline', 'ERROR', 'frames arrive but none was published', tuple(p_values)
            )
        elif serious:
            pipeline = StatusReport(
                'occ_node: pipeline', 'WARN', f'{serious} frame(s) dropped (see drops)', tuple(p_values)
            )
        else:
            pipeline = StatusReport(
                'occ_node: pipeline', 'OK', f'{self.frames_out} frame(s) published', tuple(p_values)
            )
        c_values = [
            ('entries', 'no temporal cache' if cache_entries is None else str(cache_entries)),
            ('last reset', self.last_reset or 'none'),
        ]
        c_values += [(f'resets {k}', str(n)) for k, n in sorted(self.resets.items())]
        cache = StatusReport(
            'occ_node: temporal cache',
            'OK',
            f'last reset: {self.last_reset}' if self.last_reset else 'no reset',
            tuple(c_values),
        )
        return [inputs, pipeline, cache]


def diagnostic_array(
    types: MessageTypes, stamp_ns: int, reports: Sequence[StatusReport], hardware_id: str = 'occ_perception'
) -> Any:
    """diagnostic_msgs/DiagnosticArray of ``reports`` (levels from the class's OK/WARN/ERROR/STALE constants)."""
    status_cls = types.resolve('diagnostic_msgs/msg/DiagnosticStatus')
    statuses = [
        types.make(
            'diagnostic_msgs/msg/DiagnosticStatus',
            level=getattr(status_cls, r.level),
            name=r.name,
            message=r.message,
            hardware_id=hardware_id,
            values=[types.make('diagnostic_msgs/msg/KeyValue', key=k, value=v) for k, v in r.values],
        )
        for r in reports
    ]
    return types.make('diagnostic_msgs/msg/DiagnosticArray', header=types.header(stamp_ns, ''), status=statuses)
