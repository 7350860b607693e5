"""What ``occ_node`` decides, without ROS: rig, ego pose, frame hand-over, drops, backend, outputs, diagnostics.

Nothing here imports rclpy; everything takes and returns message instances through
their field names (rosbags typestore classes in tests and tools, rclpy classes in the
node) or builds them through a :class:`~occ_perception.messages.MessageTypes`.

- :class:`NodeAssembly`: the replay's :class:`~occ_perception.frame_assembly.FrameAssembler` behind a lock:
  approximate-time synchronisation, rig from CameraInfo and ``/tf_static``, ego pose (Odometry carried to the
  frame stamp, or ``/tf``), time going backwards, a failed camera; per-camera status for diagnostics.
- :class:`FrameSlot`: one pending frame, latest wins; the one it replaces is a drop.
- :class:`DropCounter`: every dropped frame counted by reason (:data:`DROP_REASONS`).
- :func:`choose_backend`: ``backend: auto`` resolution.
- :class:`FrameRunner`: one frame through the replay's
  :class:`~occ_perception.frame_assembly.FrameProcessor` (pipeline and every output
  message, markers rate-limited), or to one counted drop.
- :class:`NodeStats` and :func:`diagnostic_array`: the ``/diagnostics`` content.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import frame_assembly
from ..frame_assembly import FRAME_DROP_REASONS, OUTPUT_TOPICS, FrameDrop, FrameProcessor
from ..geometry import GeometryError
from ..messages import MessageTypes
from ..outputs import OccFrame
from ..rig import RigError
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
    'NodeAssembly',
    'NodeStats',
    'RawImage',
    'StatusReport',
    'assembly_config',
    'backend_precision',
    'build_pipeline',
    'make_processor',
    'choose_backend',
    'diagnostic_array',
    'image_topic',
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
# images and frames


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
    """A synchronised frame on its way to the inference worker.

    Attributes:
        job: the assembler's frame (images in rig order, None for a failed camera; pose; rig).
        received: monotonic time [s] the set was completed.
    """

    job: frame_assembly.Frame
    received: float = field(default_factory=time.monotonic)

    @property
    def stamp_ns(self) -> int:
        return self.job.stamp_ns


def assembly_config(params: NodeParams) -> frame_assembly.AssemblyConfig:
    """The node's :class:`~occ_perception.frame_assembly.AssemblyConfig`: cameras, ``sync_queue_size``,
    ``sync_slop`` [s], ``pose_source``, frames, ``tf_timeout`` [s] as ``tf_wait`` and ``camera_timeout`` [s]."""
    return frame_assembly.AssemblyConfig(
        cameras=params.cameras,
        queue_size=params.sync_queue_size,
        slop=params.sync_slop,
        camera_timeout=params.camera_timeout,
        pose_source=params.pose_source,
        ego_frame=params.ego_frame,
        world_frame=params.world_frame,
        tf_wait=params.tf_timeout,
    )


class NodeAssembly:
    """The node's :class:`~occ_perception.frame_assembly.FrameAssembler` behind one lock (subscription callbacks on
    the executor thread, diagnostics on a timer), handing each frame to the worker's :class:`FrameSlot`.

    Messages are only stored and synchronised here; images are decoded by the worker, so callbacks stay cheap.
    Every synchronised set ends as a frame in the slot or one drop in ``drops`` (the assembler's frame drop
    reasons); messages that end in no set are the assembler's sync drops (:func:`frame_accounting`).

    Args:
        params: the node's parameters (see :func:`assembly_config`).
        slot: where frames go (latest wins).
        drops, stats: where frames are counted.
    """

    def __init__(self, params: NodeParams, slot: FrameSlot, drops: DropCounter, stats: NodeStats) -> None:
        self.assembler = frame_assembly.FrameAssembler(assembly_config(params))
        self.slot = slot
        self.drops = drops
        self.stats = stats
        self.lock = threading.Lock()

    def _hand_over(self, events: Sequence[frame_assembly.Frame | FrameDrop]) -> None:
        for event in events:
            if isinstance(event, frame_assembly.Frame):
                self.stats.frame()
                self.slot.put(Frame(event))
            elif event.stage == 'frame':
                self.stats.frame()
                self.drops.drop(event.reason, event.detail)

    def image(self, camera: str, msg: Any) -> None:
        """A camera's image message (CompressedImage or Image), stored undecoded."""
        self.stats.arrived(camera)
        with self.lock:
            self._hand_over(self.assembler.add_image(camera, msg))

    def odom(self, msg: Any) -> None:
        """A nav_msgs/Odometry (pose_source odom: the 7th synchronised input)."""
        self.stats.arrived('odom')
        with self.lock:
            self._hand_over(self.assembler.add_odom(msg))

    def tf(self, msg: Any) -> None:
        """A tf2_msgs/TFMessage from ``/tf`` (pose_source tf: world_frame -> ego_frame poses)."""
        with self.lock:
            self._hand_over(self.assembler.add_tf(msg))

    def camera_info(self, camera: str, msg: Any) -> None:
        """A sensor_msgs/CameraInfo of ``camera`` (the newest one builds the rig)."""
        with self.lock:
            self.assembler.add_camera_info(camera, msg)

    def tf_static(self, msg: Any) -> None:
        """A tf2_msgs/TFMessage from ``/tf_static`` (ego_frame <- camera frames)."""
        with self.lock:
            self.assembler.add_tf_static(msg)

    def rig_missing(self) -> list[str]:
        """What keeps the rig from being built (empty when it is complete): missing or malformed calibration."""
        with self.lock:
            try:
                self.assembler.rig()
            except frame_assembly.AssemblyError as err:
                return [str(err).split(': ', 1)[-1]]
            except (RigError, GeometryError) as err:
                return [f'bad calibration: {err}']
        return []

    def reports(self, processor: FrameProcessor) -> list[StatusReport]:
        """Per camera :func:`~occ_perception.frame_assembly.camera_status` (on the stamps' clock: the newest stamp
        fed) and the synchroniser's counts from :func:`~occ_perception.frame_assembly.frame_accounting`."""
        with self.lock:
            now = self.assembler.newest_ns
            cameras = [] if now is None else frame_assembly.camera_status(self.assembler, now)
            acc = frame_assembly.frame_accounting(self.assembler, processor)
        out = [StatusReport(f'occ_node: camera {cam}', level, text, ()) for cam, level, text in cameras]
        values = [(k, str(acc[k])) for k in ('sync_inputs', 'sets', 'queued', 'time_jumps')]
        values += [(f'sync drops {r}', str(n)) for r, n in acc['sync_drops'].items()]
        values += [(f'frames without {c}', str(n)) for c, n in acc['missing_camera_frames'].items()]
        failed = [cam for cam, level, _ in cameras if level != 'OK']
        level, text = ('WARN', 'frames without ' + ', '.join(failed)) if failed else ('OK', f'{acc["sets"]} sets')
        out.append(StatusReport('occ_node: synchroniser', level, text, tuple(values)))
        return out


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
        backend,
        config,
        temporal,
        preprocess_threads=params.preprocess_threads,
        confidence=params.publish_confidence,
        failed_camera_mode=params.failed_camera_mode,
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
        stats, drops: where the frame is counted.
        convert: applied to each present image before preprocessing (cv_bridge for raw images), or None.
    """

    def __init__(
        self,
        processor: FrameProcessor,
        stats: NodeStats,
        drops: DropCounter,
        convert: Callable[[Any], Any] | None = None,
    ) -> None:
        self.processor = processor
        self.pipeline = processor.pipeline
        self.stats = stats
        self.drops = drops
        self.convert = convert
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
        job = frame.job
        if self.convert is not None:
            try:
                images = tuple(None if m is None else self.convert(m) for m in job.images)
            except Exception as err:  # cv_bridge raises CvBridgeError or TypeError on unknown encodings
                return self._drop('decode_error', f'{type(err).__name__}: {err}')
            job = dataclasses.replace(job, images=images)
        result = self.processor.process(job)  # never raises: errors come back as a FrameDrop
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
