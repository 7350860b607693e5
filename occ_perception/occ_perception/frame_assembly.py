"""Messages in, synchronised frames and their outputs out: the transport-free core of the node and the replay.

Both the ROS node and ``occ-perception replay`` feed messages one by one into a
:class:`FrameAssembler` and hand what it returns to a :class:`FrameProcessor`;
only where the messages come from (subscriptions or a bag) and where the outputs
go (publishers or a bag writer) differ.

Synchronisation (DESIGN.md section 4, shared/REFERENCE.md "message_filters"):
the six camera images and, with ``pose_source='odom'``, the Odometry messages
are the inputs of one :class:`~occ_perception.sync.ApproximateTimeSync` (the
policy of rclpy's ``message_filters.ApproximateTimeSynchronizer(subs,
queue_size, slop)``, 7 inputs as in the node). The pose is part of the set
because that is what the node subscribes to: a replay with the same slop and
queue size then drops exactly the frames the node would drop. The set's
Odometry is the one the policy picked (nearest in stamp to the arriving
message, within slop); its pose is carried to the frame stamp with its own twist
(constant body velocity over the few milliseconds between the two stamps).
With ``pose_source='tf'`` the six cameras are synchronised and the pose is
looked up in a ``map -> base_link`` buffer at the frame stamp, linearly
interpolated (translation) and slerped (rotation) between the two bracketing
transforms as tf2 does; a frame whose stamp is newer than the newest transform
waits for it (as tf2's MessageFilter), up to ``tf_wait`` seconds of later
camera time.

The rig is built from the newest CameraInfo of each camera and the static
transforms ``ego_frame <- camera frame`` from ``/tf_static`` (chains of static
transforms are composed).

Accounting: every message fed to the synchroniser ends in exactly one set or
one sync drop (:data:`~occ_perception.sync.DROP_REASONS`), and every set ends
as exactly one :class:`Frame` (later one :class:`FrameResult`) or one
:class:`FrameDrop` with a reason from :data:`FRAME_DROP_REASONS`
(:func:`frame_accounting` sums both sides). Messages outside the synchroniser
that cannot be used (a malformed ``/tf`` or ``/tf_static`` transform) are
logged, ignored and counted in :attr:`FrameAssembler.rejected`.

Time going backwards (a bag loop, a clock reset): a synchronised message whose
stamp is older than the newest stamp seen on its input flushes the
synchroniser (queued messages become ``time_backwards`` sync drops, frames
waiting for ``/tf`` ``time_backwards`` frame drops) and clears the
``map -> base_link`` buffer (unless ``/tf`` went back first and restarted it
already), so that nothing from before the jump is paired with what comes after;
a ``/tf`` pose older than the newest one clears the buffer as well. A frame whose stamp equals the previous frame's (a duplicated
set of messages) is dropped as ``duplicate_stamp``: its output would carry the
same stamp twice. The temporal cache resets itself on the stamps it sees
(:mod:`occ_perception.temporal`).

Silent inputs: :attr:`FrameAssembler.longest_gap_ns` keeps, per input, the
longest time between two consecutive stamps and :meth:`FrameAssembler.silent`
lists the inputs that have been quiet for longer than a timeout. A failed camera
(DESIGN.md section 5): a camera whose newest image is more than
``AssemblyConfig.camera_timeout`` older than an arriving message is an optional
synchroniser input, so sets form without it (:attr:`Frame.missing`, its image
None); the pipeline then feeds it black with its splat table entries zeroed and
zeroes the confidence of the columns only it sees. Its first image makes it
required again. A camera heard before time went backwards counts as heard at
the stamp time went back to: one that stays silent after a jump (a bag played
again without it) is failed ``camera_timeout`` later. Until ``camera_timeout`` has passed (or with ``camera_timeout``
0) no set can be complete: the other inputs' messages leave their queues as
``queue_overflow`` drops. :func:`camera_status` gives the per-camera level for
diagnostics and :attr:`FrameAssembler.missing_camera_frames` counts the frames
made without each camera.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyquaternion import Quaternion

from .geometry import GeometryError, Transform
from .messages import MessageTypes, stamp_to_ns
from .rig import FLASHOCC_CAMERA_ORDER, Camera, Rig, RigError
from .sync import ApproximateTimeSync, Drop, SyncedSet, SyncError

__all__ = [
    'FRAME_DROP_REASONS',
    'OUTPUT_TOPICS',
    'POSE_SOURCES',
    'AssemblyConfig',
    'AssemblyError',
    'Frame',
    'FrameAssembler',
    'FrameDrop',
    'FrameProcessor',
    'FrameResult',
    'PoseBuffer',
    'StaticTransforms',
    'camera_info_topic',
    'camera_status',
    'frame_accounting',
    'image_topic',
]

log = logging.getLogger(__name__)

NS = 1_000_000_000
POSE_SOURCES: tuple[str, ...] = ('odom', 'tf')

FRAME_DROP_REASONS: tuple[str, ...] = (
    'missing_calibration',  # no CameraInfo for a camera, or no static transform ego <- camera
    'bad_calibration',  # CameraInfo or transform malformed (zero focal length, NaN, ...)
    'missing_pose',  # pose_source tf: no map -> base_link transform around the frame stamp
    'bad_pose',  # NaN, zero or non-unit quaternion pose, or an Odometry of other frames
    'duplicate_stamp',  # the same stamp as the previous frame (a repeated set of messages)
    'time_backwards',  # waiting for /tf when time went backwards (bag loop): its pose can no longer come
    'decode_error',  # an image cannot be decoded or has the wrong size
    'inference_error',  # the backend failed
    'pipeline_error',  # anything else the pipeline refused (including the temporal cache)
    'encode_error',  # an output message could not be built
    'internal_error',  # an unexpected exception (a bug): logged with its traceback, the loop goes on
)
"""Why a synchronised frame produced no output."""

OUTPUT_TOPICS: dict[str, str] = {
    'occupancy/semantics': 'occ_perception_msgs/msg/SemanticOccupancy',
    'occupancy/flow': 'occ_perception_msgs/msg/OccupancyFlow',
    'occupancy/points': 'sensor_msgs/msg/PointCloud2',
    'occupancy/markers': 'visualization_msgs/msg/MarkerArray',
    'occupancy/costmap': 'nav_msgs/msg/OccupancyGrid',
    'occupancy/voxels': 'foxglove_msgs/msg/VoxelGrid',
}
"""Output topics (relative names, DESIGN.md section 4) and their types."""


class AssemblyError(ValueError):
    """Bad assembler or processor options, or a message for a camera the rig does not have."""


def image_topic(camera: str, transport: str = 'compressed') -> str:
    """``cam_front`` -> ``cam_front/image_rect/compressed`` (or ``cam_front/image_rect`` for raw)."""
    return f'{camera}/image_rect/compressed' if transport == 'compressed' else f'{camera}/image_rect'


def camera_info_topic(camera: str) -> str:
    """``cam_front`` -> ``cam_front/camera_info``."""
    return f'{camera}/camera_info'


@dataclass(frozen=True)
class AssemblyConfig:
    """How frames are assembled.

    Attributes:
        cameras: camera names (frame ids) in network order.
        queue_size: message_filters ``queue_size`` (per input), >= 1.
        slop: message_filters ``slop`` [s].
        pose_source: ``'odom'`` (Odometry as the 7th synchroniser input) or ``'tf'`` (map -> base_link lookup).
        ego_frame, world_frame: frame ids of the vehicle and of the world.
        tf_wait: pose_source tf: how long [s] of newer camera stamps a frame waits for its transform.
        tf_buffer: how much [s] of map -> base_link history is kept.
        camera_timeout: a camera whose newest image is more than this [s] older than an arriving message is
            failed: sets are formed without it (its slot in :attr:`Frame.images` is None) until it sends again.
            0 = off: every set waits for all cameras. A camera that never sent an image is not failed.
    """

    cameras: tuple[str, ...] = FLASHOCC_CAMERA_ORDER
    queue_size: int = 3
    slop: float = 0.1
    camera_timeout: float = 1.0
    pose_source: str = 'odom'
    ego_frame: str = 'base_link'
    world_frame: str = 'map'
    tf_wait: float = 0.5
    tf_buffer: float = 10.0

    def __post_init__(self) -> None:
        if self.pose_source not in POSE_SOURCES:
            raise AssemblyError(f'pose_source: expected one of {list(POSE_SOURCES)}, got {self.pose_source!r}')
        if len(self.cameras) < 1 or len(set(self.cameras)) != len(self.cameras):
            raise AssemblyError(f'cameras: expected distinct camera names, got {list(self.cameras)}')
        if not (self.camera_timeout >= 0 and math.isfinite(self.camera_timeout)):
            raise AssemblyError(f'camera_timeout: expected a finite number of seconds >= 0, got {self.camera_timeout}')
        if not (self.tf_wait >= 0 and self.tf_buffer > 0):
            raise AssemblyError(f'tf_wait >= 0 and tf_buffer > 0 [s] expected, got {self.tf_wait}, {self.tf_buffer}')

    @property
    def streams(self) -> tuple[str, ...]:
        """Synchroniser input names: the cameras, then ``odom`` with pose_source odom."""
        return self.cameras + (('odom',) if self.pose_source == 'odom' else ())


@dataclass(frozen=True)
class Frame:
    """One synchronised frame, ready for :meth:`OccPipeline.process`.

    Attributes:
        stamp_ns: the frame stamp (``cam_front``'s image stamp, else the first camera's) [ns].
        images: one image message per camera, in rig order; None for a failed camera (see ``missing``).
        pose: ``T_map_base_link`` at ``stamp_ns``.
        rig: the cameras.
        stamps_ns: the synchronised stamps [ns], one per synchroniser input.
        ready_ns: the stamp of the message whose arrival completed the frame [ns].
        missing: names of the failed cameras (silent longer than ``camera_timeout``) the frame goes without.
    """

    stamp_ns: int
    images: tuple[Any, ...]
    pose: Transform
    rig: Rig
    stamps_ns: tuple[int, ...]
    ready_ns: int
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class FrameDrop:
    """A lost message or frame.

    Attributes:
        stage: ``'sync'`` (one message that ended in no set) or ``'frame'`` (a whole set).
        reason: a :data:`~occ_perception.sync.DROP_REASONS` entry (sync) or :data:`FRAME_DROP_REASONS` (frame).
        stamp_ns: the message's or frame's stamp [ns].
        stream: the synchroniser input (sync drops), or '' (frames).
        detail: a human-readable cause.
    """

    stage: str
    reason: str
    stamp_ns: int
    stream: str = ''
    detail: str = ''


@dataclass
class FrameResult:
    """A processed frame: its OccFrame, the encoded output messages and the timings.

    Attributes:
        frame: the input frame. occ: the pipeline's result.
        messages: output topic (relative, :data:`OUTPUT_TOPICS`) -> message; markers only when due.
        timings: pipeline stages and ``encode/<topic>`` [s].
    """

    frame: Frame
    occ: Any
    messages: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


class PoseBuffer:
    """Stamped poses of one transform (``map -> base_link``), looked up with interpolation like tf2.

    Args:
        span: history kept [s] behind the newest entry.
    """

    def __init__(self, span: float = 10.0) -> None:
        self.span_ns = int(span * NS)
        self._stamps: list[int] = []
        self._poses: list[Transform] = []

    def __len__(self) -> int:
        return len(self._stamps)

    def add(self, stamp_ns: int, pose: Transform) -> None:
        """Insert (or replace) the pose at ``stamp_ns``; entries older than ``span`` behind the newest leave."""
        i = bisect.bisect_left(self._stamps, stamp_ns)
        if i < len(self._stamps) and self._stamps[i] == stamp_ns:
            self._poses[i] = pose
        else:
            self._stamps.insert(i, stamp_ns)
            self._poses.insert(i, pose)
        cut = bisect.bisect_left(self._stamps, self._stamps[-1] - self.span_ns)
        if cut:
            del self._stamps[:cut], self._poses[:cut]

    @property
    def newest_ns(self) -> int | None:
        return self._stamps[-1] if self._stamps else None

    def clear(self) -> None:
        """Forget every pose (time went backwards: the stored poses belong to another timeline)."""
        self._stamps.clear()
        self._poses.clear()

    def lookup(self, stamp_ns: int) -> Transform | None:
        """The pose at ``stamp_ns``: exact, or interpolated between the bracketing entries; None outside them."""
        i = bisect.bisect_left(self._stamps, stamp_ns)
        if i < len(self._stamps) and self._stamps[i] == stamp_ns:
            return self._poses[i]
        if i == 0 or i == len(self._stamps):
            return None
        t0, t1 = self._stamps[i - 1], self._stamps[i]
        a, b = self._poses[i - 1], self._poses[i]
        w = (stamp_ns - t0) / (t1 - t0)
        rotation = Quaternion.slerp(a.rotation, b.rotation, w)
        return Transform(rotation, (1.0 - w) * a.translation + w * b.translation)


class StaticTransforms:
    """``/tf_static`` edges (parent <- child), composed along chains to the ego frame."""

    def __init__(self) -> None:
        self._parent: dict[str, tuple[str, Transform]] = {}
        self.rejected: dict[str, str] = {}  # child frame -> why its newest transform was refused
        self.version = 0

    def add(self, msg: Any) -> None:
        """Add the transforms of a tf2_msgs/TFMessage.

        Every well-formed transform of the message is kept; a malformed one leaves the edge it concerns as it
        was and is noted in :attr:`rejected` (child frame -> reason) until a good transform of that edge arrives.

        Raises:
            GeometryError: after the others were added, naming each transform that is NaN or infinite or has a
                zero or non-unit quaternion.
        """
        errors = []
        for tf in msg.transforms:
            child = str(tf.child_frame_id).lstrip('/')
            parent = str(tf.header.frame_id).lstrip('/')
            try:
                edge = (parent, Transform.from_msg(tf.transform))
            except GeometryError as err:
                self.rejected[child] = f'{parent} <- {child}: {err}'
                errors.append(self.rejected[child])
                continue
            self.rejected.pop(child, None)
            if self._parent.get(child) != edge:
                self._parent[child] = edge
                self.version += 1
        if errors:
            raise GeometryError('; '.join(errors))

    def frames(self) -> list[str]:
        return sorted(self._parent)

    def lookup(self, target: str, source: str) -> Transform | None:
        """``T_target_source`` through the chain of parents of ``source``; None when it does not reach ``target``."""
        result = Transform()
        frame, seen = source, set()
        while frame != target:
            if frame in seen or frame not in self._parent:
                return None
            seen.add(frame)
            parent, t = self._parent[frame]
            result = t @ result
            frame = parent
        return result


def _advance(pose: Transform, linear: np.ndarray, angular: np.ndarray, dt: float) -> Transform:
    """``pose`` moved for ``dt`` [s] at constant body-frame twist (linear [m/s], angular [rad/s]).

    Raises:
        GeometryError: the motion overflows (a huge twist).
    """
    if dt == 0.0:
        return pose
    with np.errstate(over='ignore', invalid='ignore'):
        rotvec = angular * dt
        angle = float(np.linalg.norm(rotvec))
        shift = linear * dt
    if not (np.isfinite(angle) and np.all(np.isfinite(shift))):
        raise GeometryError(f'Odometry twist {linear.tolist()}, {angular.tolist()} over {dt} s is not a finite motion')
    if angle < 1e-12:  # below float resolution of the axis: no rotation (also avoids a 0 / 0 axis)
        delta = Quaternion()
    else:
        delta = Quaternion(scalar=float(np.cos(angle / 2)), vector=np.sin(angle / 2) * rotvec / angle)
    return Transform(pose.rotation * delta, pose.translation + pose.rotation.rotate(shift))


def _vec(v: Any) -> np.ndarray:
    return np.array([float(v.x), float(v.y), float(v.z)], dtype=np.float64)


class FrameAssembler:
    """Feeds messages into the synchroniser and turns each synchronised set into a :class:`Frame` or a drop.

    Every ``add_*`` method returns, in order, the :class:`Frame` and :class:`FrameDrop` events the message
    caused (usually none). Call :meth:`flush` at the end of a bag.

    Args:
        config: cameras, synchroniser parameters, pose source and frames.

    Raises:
        AssemblyError: bad synchroniser parameters.
    """

    def __init__(self, config: AssemblyConfig | None = None) -> None:
        self.config = config or AssemblyConfig()
        cams = self.config.cameras
        try:
            self.sync = ApproximateTimeSync(len(self.config.streams), self.config.queue_size, self.config.slop)
        except SyncError as err:
            raise AssemblyError(str(err)) from err
        self._index = {name: i for i, name in enumerate(cams)}
        self._front = 'cam_front' if 'cam_front' in cams else cams[0]
        self._infos: dict[str, Any] = {}
        self._infos_version = 0
        self.static = StaticTransforms()
        self.poses = PoseBuffer(self.config.tf_buffer)
        self._rig: Rig | None = None
        self._rig_key: tuple[int, int] | None = None
        self._rig_error: FrameDrop | None = None
        self._waiting: list[tuple[Frame | None, SyncedSet, int]] = []  # pose_source tf: frames waiting for a pose
        self._newest: dict[int, int] = {}  # synchroniser input -> newest stamp seen [ns]
        # input -> newest stamp [ns], or the stamp time went back to for an input heard before the jump: a camera
        # that stops across a jump (a bag replayed without it) is failed camera_timeout after the jump
        self._heard: dict[int, int] = {}
        self._last_set_stamp: int | None = None
        self._tf_restarted = False  # /tf went back in time since the last jump of the synchronised inputs
        self.sets = 0
        self.frames = 0
        self.time_jumps = 0  # how often time went backwards on a synchronised input
        self.sync_drops: Counter[str] = Counter()
        self.sync_drops_by_stream: Counter[str] = Counter()
        self.frame_drops: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()  # 'topic:reason' -> messages ignored outside the synchroniser
        self.longest_gap_ns: dict[str, int] = {}  # synchroniser input -> longest time between two of its stamps
        self.missing_camera_frames: Counter[str] = Counter()  # camera -> frames made without it (failed camera)

    # ------------------------------------------------------------------ inputs without synchronisation

    def add_camera_info(self, camera: str, msg: Any) -> None:
        """The CameraInfo of ``camera`` (the newest one is used for the rig)."""
        self._check_camera(camera)
        self._infos[camera] = msg
        self._infos_version += 1

    def add_tf_static(self, msg: Any) -> None:
        """A tf2_msgs/TFMessage from ``/tf_static``. A malformed transform is logged, ignored and counted."""
        try:
            self.static.add(msg)
        except GeometryError as err:
            self.rejected['/tf_static:bad_transform'] += 1
            log.warning('/tf_static: ignoring a malformed transform: %s', err)

    def add_tf(self, msg: Any) -> list[Frame | FrameDrop]:
        """A tf2_msgs/TFMessage from ``/tf``: ``world_frame -> ego_frame`` entries go into the pose buffer."""
        cfg = self.config
        for tf in msg.transforms:
            if (
                str(tf.header.frame_id).lstrip('/') != cfg.world_frame
                or str(tf.child_frame_id).lstrip('/') != cfg.ego_frame
            ):
                continue
            try:
                pose = Transform.from_msg(tf.transform)
            except GeometryError as err:
                self.rejected['/tf:bad_transform'] += 1
                log.warning('/tf: ignoring a malformed %s -> %s transform: %s', cfg.world_frame, cfg.ego_frame, err)
                continue
            stamp = stamp_to_ns(tf.header.stamp)
            newest = self.poses.newest_ns
            if newest is not None and stamp < newest:
                log.warning(
                    '/tf: %s -> %s went back in time (%.3f s after %.3f s): the pose buffer starts anew',
                    cfg.world_frame,
                    cfg.ego_frame,
                    stamp / NS,
                    newest / NS,
                )
                self.poses.clear()
                self._tf_restarted = True
            self.poses.add(stamp, pose)
        return self._release(None)

    # ------------------------------------------------------------------ synchronised inputs

    def _check_camera(self, camera: str) -> int:
        if camera not in self._index:
            raise AssemblyError(f'camera {camera!r} is not in the rig {list(self.config.cameras)}')
        return self._index[camera]

    def add_image(self, camera: str, msg: Any) -> list[Frame | FrameDrop]:
        """A camera image (CompressedImage or Image) of ``camera``, stamped by its header."""
        return self._add(self._check_camera(camera), stamp_to_ns(msg.header.stamp), msg)

    def add_odom(self, msg: Any) -> list[Frame | FrameDrop]:
        """A nav_msgs/Odometry (the 7th synchroniser input with pose_source odom; ignored with tf)."""
        if self.config.pose_source != 'odom':
            return []
        return self._add(len(self.config.cameras), stamp_to_ns(msg.header.stamp), msg)

    def silent(self, now_ns: int, timeout: float) -> dict[str, float]:
        """Synchroniser inputs whose newest message is more than ``timeout`` [s] older than ``now_ns``.

        Inputs that never had a message are not listed.

        Returns:
            input name (camera or ``odom``) -> seconds since its newest stamp.
        """
        names = self.config.streams
        limit = int(timeout * NS)
        return {names[i]: (now_ns - t) / NS for i, t in sorted(self._newest.items()) if now_ns - t > limit}

    @property
    def newest_ns(self) -> int | None:
        """The newest stamp fed to the synchroniser since time last went backwards [ns] (None before any)."""
        return max(self._heard.values()) if self._heard else None

    def failed(self, now_ns: int) -> tuple[str, ...]:
        """Cameras a set formed at ``now_ns`` goes without: silent for more than ``camera_timeout``, in rig order.

        Empty when ``camera_timeout`` is 0 or when every camera is silent (then sets wait for all of them).
        """
        return tuple(self.config.cameras[i] for i in self._failed(now_ns))

    def _failed(self, now_ns: int) -> list[int]:
        timeout = self.config.camera_timeout
        if timeout <= 0:
            return []
        n = len(self.config.cameras)
        limit = int(timeout * NS)
        out = [i for i in range(n) if i in self._heard and now_ns - self._heard[i] > limit]
        return [] if len(out) == n else out

    def _time_backwards(self, stream: int, stamp_ns: int) -> list[Frame | FrameDrop]:
        """Time went backwards on ``stream``: flush the synchroniser, the /tf buffer and the waiting frames."""
        name = self.config.streams[stream]
        log.warning(
            '%s: time went backwards (%.3f s after %.3f s): the synchroniser and the pose buffer start anew',
            name,
            stamp_ns / NS,
            self._newest[stream] / NS,
        )
        self.time_jumps += 1
        self.sync.flush('time_backwards')
        events = self._new_sync_drops()
        for frame, synced, _ in self._waiting:
            stamp = frame.stamp_ns if frame is not None else self._set_stamp(synced)
            events.append(self._frame_drop('time_backwards', stamp, f'{name} went back in time before its pose came'))
        self._waiting.clear()
        self._newest.clear()
        self._heard = dict.fromkeys(self._heard, stamp_ns)
        self._last_set_stamp = None
        if not self._tf_restarted:  # else /tf jumped first and the buffer holds the new timeline already
            self.poses.clear()
        self._tf_restarted = False
        return events

    def _add(self, stream: int, stamp_ns: int, msg: Any) -> list[Frame | FrameDrop]:
        events: list[Frame | FrameDrop] = []
        newest = self._newest.get(stream)
        if newest is not None and stamp_ns < newest:
            events += self._time_backwards(stream, stamp_ns)
            newest = None
        if newest is not None:
            name = self.config.streams[stream]
            self.longest_gap_ns[name] = max(self.longest_gap_ns.get(name, 0), stamp_ns - newest)
        self._newest[stream] = max(stamp_ns, newest or stamp_ns)
        self._heard[stream] = self._newest[stream]
        self.sync.optional = frozenset(self._failed(stamp_ns))
        synced = self.sync.add(stream, stamp_ns, msg)
        events += self._new_sync_drops()
        if self.config.pose_source == 'tf':
            events += self._expire(stamp_ns)
        if synced is not None:
            self.sets += 1
            events += self._release((synced, stamp_ns))
        return events

    def _new_sync_drops(self) -> list[Frame | FrameDrop]:
        drops: list[Drop] = self.sync.take_drops()
        out: list[Frame | FrameDrop] = []
        for d in drops:
            name = self.config.streams[d.stream]
            self.sync_drops[d.reason] += 1
            self.sync_drops_by_stream[f'{name}:{d.reason}'] += 1
            out.append(FrameDrop('sync', d.reason, d.stamp_ns, name))
        return out

    def flush(self) -> list[Frame | FrameDrop]:
        """End of input: queued messages become sync drops (``left_at_end``), waiting frames ``missing_pose``."""
        self.sync.flush()
        events = self._new_sync_drops()
        for frame, synced, _ in self._waiting:
            stamp = frame.stamp_ns if frame is not None else synced.stamps_ns[0]
            events.append(
                self._frame_drop(
                    'missing_pose',
                    stamp,
                    'no map -> base_link transform at or after the frame stamp before the end of the input',
                )
            )
        self._waiting.clear()
        return events

    # ------------------------------------------------------------------ sets to frames

    def _frame_drop(self, reason: str, stamp_ns: int, detail: str) -> FrameDrop:
        self.frame_drops[reason] += 1
        log.warning('frame %d.%09d dropped (%s): %s', stamp_ns // NS, stamp_ns % NS, reason, detail)
        return FrameDrop('frame', reason, stamp_ns, '', detail)

    def rig(self) -> Rig:
        """The rig from the newest CameraInfo of each camera and the static transforms.

        Raises:
            AssemblyError: (message starting with the drop reason and ': ') a camera has no CameraInfo or no
                transform (``missing_calibration``), or its only transform was malformed (``bad_calibration``).
            RigError, GeometryError: malformed calibration.
        """
        key = (self._infos_version, self.static.version)
        if key == self._rig_key and self._rig is not None:
            return self._rig
        cams = []
        for name in self.config.cameras:
            info = self._infos.get(name)
            if info is None:
                raise AssemblyError(f'missing_calibration: no CameraInfo of {name} yet')
            frame = str(info.header.frame_id).lstrip('/') or name
            extrinsics = self.static.lookup(self.config.ego_frame, frame)
            if extrinsics is None and frame in self.static.rejected:
                raise AssemblyError(f'bad_calibration: /tf_static {self.static.rejected[frame]}')
            if extrinsics is None:
                raise AssemblyError(
                    f'missing_calibration: no static transform {self.config.ego_frame} <- {frame} '
                    f'(/tf_static has child frames {self.static.frames()})'
                )
            cams.append(Camera.from_camera_info(info, extrinsics, name=name))
        rig = Rig(tuple(cams))
        if self._rig is None or rig != self._rig:
            self._rig = rig
        self._rig_key = key
        return self._rig

    def _odom_pose(self, msg: Any, stamp_ns: int) -> Transform:
        cfg = self.config
        parent, child = str(msg.header.frame_id).lstrip('/'), str(msg.child_frame_id).lstrip('/')
        if (parent and parent != cfg.world_frame) or (child and child != cfg.ego_frame):
            raise GeometryError(f'Odometry is {parent} -> {child}, expected {cfg.world_frame} -> {cfg.ego_frame}')
        pose = Transform.from_msg(msg.pose.pose)
        linear, angular = _vec(msg.twist.twist.linear), _vec(msg.twist.twist.angular)
        if not (np.all(np.isfinite(linear)) and np.all(np.isfinite(angular))):
            raise GeometryError(f'Odometry twist is not finite: {linear.tolist()}, {angular.tolist()}')
        dt = (stamp_ns - stamp_to_ns(msg.header.stamp)) / NS
        return _advance(pose, linear, angular, dt)

    def _set_stamp(self, synced: SyncedSet) -> int:
        """The frame stamp of a set: the front camera's, else the first camera's present."""
        front = self._index[self._front]
        if front not in synced.missing:
            return synced.stamps_ns[front]
        return next(s for i, s in enumerate(synced.stamps_ns) if i not in synced.missing)

    def _assemble(self, synced: SyncedSet, ready_ns: int) -> Frame | FrameDrop | None:
        """A set to a Frame, a drop, or None (pose_source tf: the pose is not there yet)."""
        stamp = self._set_stamp(synced)
        if stamp == self._last_set_stamp:
            return self._frame_drop(
                'duplicate_stamp', stamp, 'the previous synchronised set had the same stamp (repeated messages)'
            )
        result = self._resolve(synced, ready_ns, stamp)
        if result is not None:
            self._last_set_stamp = stamp
        return result

    def _resolve(self, synced: SyncedSet, ready_ns: int, stamp: int) -> Frame | FrameDrop | None:
        n = len(self.config.cameras)
        images = synced.payloads[:n]
        try:
            rig = self.rig()
        except AssemblyError as err:
            reason, detail = str(err).split(': ', 1)
            return self._frame_drop(reason, stamp, detail)
        except (RigError, GeometryError) as err:
            return self._frame_drop('bad_calibration', stamp, f'CameraInfo: {err}')
        if self.config.pose_source == 'odom':
            try:
                pose = self._odom_pose(synced.payloads[n], stamp)
            except GeometryError as err:
                return self._frame_drop('bad_pose', stamp, str(err))
        else:
            found = self.poses.lookup(stamp)
            if found is None:
                newest = self.poses.newest_ns
                if newest is None or newest < stamp:
                    return None  # wait for /tf
                return self._frame_drop(
                    'missing_pose',
                    stamp,
                    f'{self.config.world_frame} -> '
                    f'{self.config.ego_frame} at the frame stamp is older than the /tf buffer',
                )
            pose = found
        self.frames += 1
        missing = tuple(self.config.cameras[i] for i in synced.missing)
        self.missing_camera_frames.update(missing)
        return Frame(stamp, tuple(images), pose, rig, synced.stamps_ns, ready_ns, missing)

    def _release(self, new: tuple[SyncedSet, int] | None) -> list[Frame | FrameDrop]:
        """Assemble ``new`` and any frames waiting for /tf, keeping their order."""
        if new is not None:
            self._waiting.append((None, new[0], new[1]))
        out: list[Frame | FrameDrop] = []
        while self._waiting:
            _, synced, ready = self._waiting[0]
            result = self._assemble(synced, ready)
            if result is None:
                break
            self._waiting.pop(0)
            out.append(result)
        return out

    def _expire(self, now_ns: int) -> list[Frame | FrameDrop]:
        """pose_source tf: frames that waited longer than ``tf_wait`` of camera time become ``missing_pose``."""
        out: list[Frame | FrameDrop] = []
        limit = int(self.config.tf_wait * NS)
        while self._waiting:
            _, synced, _ = self._waiting[0]
            stamp = self._set_stamp(synced)
            if now_ns - stamp <= limit:
                break
            self._waiting.pop(0)
            out.append(
                self._frame_drop(
                    'missing_pose',
                    stamp,
                    f'no {self.config.world_frame} -> {self.config.ego_frame} transform within {self.config.tf_wait} s',
                )
            )
        return out

    def accounted(self) -> bool:
        """Messages: fed = messages in sets + sync drops + queued; sets: = frames + frame drops + waiting."""
        waiting = len(self._waiting)
        return self.sync.accounted() and self.sets == self.frames + sum(self.frame_drops.values()) + waiting


class FrameProcessor:
    """Runs frames through an :class:`~occ_perception.pipeline.OccPipeline` and encodes every output message.

    Args:
        pipeline: the pipeline (owns backend, splat tables, temporal cache).
        types: message classes (rosbags typestore for bags, rclpy modules for the node).
        markers_rate: MarkerArray rate limit [Hz] by frame stamp (0: no markers; a stamp going backwards
            restarts the limit).
        voxels: also encode the foxglove VoxelGrid.
        surface_points: PointCloud2 of surface voxels only.
        marker_min_speed: flow arrows in the markers for voxels faster than this [m/s].
        costmap: keyword arguments of :func:`~occ_perception.outputs.costmap_values` (``height_band``,
            ``rough_cost``, ...); None keeps its defaults.
    """

    def __init__(
        self,
        pipeline: Any,
        types: MessageTypes,
        markers_rate: float = 2.0,
        voxels: bool = True,
        surface_points: bool = True,
        marker_min_speed: float = 0.5,
        costmap: dict[str, Any] | None = None,
    ) -> None:
        if not (markers_rate >= 0 and math.isfinite(markers_rate)):
            raise AssemblyError(f'markers_rate: expected a rate >= 0 [Hz], got {markers_rate}')
        from .outputs import VoxelPointCache

        self.pipeline = pipeline
        self.types = types
        self.markers_rate = float(markers_rate)
        self.voxels = bool(voxels)
        self.surface_points = bool(surface_points)
        self.marker_min_speed = float(marker_min_speed)
        self.costmap = dict(costmap or {})
        self._points = VoxelPointCache(types, pipeline.config.grid)
        self._last_markers: int | None = None
        self.drops: Counter[str] = Counter()
        self.outputs = 0

    def markers_due(self, stamp_ns: int) -> bool:
        """Whether a MarkerArray goes out at ``stamp_ns`` (and note it when so)."""
        if self.markers_rate <= 0:
            return False
        last = self._last_markers
        if last is None or stamp_ns < last or stamp_ns - last >= int(NS / self.markers_rate) - 1_000_000:
            self._last_markers = stamp_ns
            return True
        return False

    def _drop(self, frame: Frame, reason: str, detail: str) -> FrameDrop:
        self.drops[reason] += 1
        stamp = frame.stamp_ns
        log.warning('frame %d.%09d dropped (%s): %s', stamp // NS, stamp % NS, reason, detail)
        return FrameDrop('frame', reason, stamp, '', detail)

    def process(self, frame: Frame) -> FrameResult | FrameDrop:
        """One frame through the pipeline and the encoders; an error becomes a logged, counted :class:`FrameDrop`.

        Never raises: our error classes map to their :data:`FRAME_DROP_REASONS`, any other exception (a bug)
        becomes ``internal_error`` and is logged with its traceback, so that one frame cannot stop the loop.
        """
        try:
            return self._process(frame)
        except Exception as err:
            log.exception('frame %d: unexpected error', frame.stamp_ns)
            return self._drop(frame, 'internal_error', f'{type(err).__name__}: {err}')

    def _process(self, frame: Frame) -> FrameResult | FrameDrop:
        from .messages import MessagesError
        from .model.splat_tables import SplatError
        from .outputs import (
            costmap_msg,
            marker_array_msg,
            occupancy_flow_msg,
            pointcloud_msg,
            semantic_occupancy_msg,
            voxel_grid_msg,
        )
        from .pipeline import PipelineError
        from .preprocess import PreprocessError
        from .runtime.base import BackendError
        from .temporal import TemporalError

        reason = None
        try:
            occ = self.pipeline.process(frame.images, frame.pose, frame.rig, stamp_ns=frame.stamp_ns)
        except PreprocessError as err:
            reason, detail = 'decode_error', str(err)
        except (RigError, SplatError) as err:
            reason, detail = 'bad_calibration', str(err)
        except GeometryError as err:
            reason, detail = 'bad_pose', str(err)
        except BackendError as err:
            reason, detail = 'inference_error', str(err)
        except (PipelineError, TemporalError) as err:
            reason, detail = 'pipeline_error', str(err)
        if reason is not None:
            return self._drop(frame, reason, detail)
        timings = {f'pipeline/{k}': v for k, v in occ.timings.items()}
        messages: dict[str, Any] = {}
        encoders: list[tuple[str, Any]] = [
            ('occupancy/semantics', lambda: semantic_occupancy_msg(occ, self.types)),
            ('occupancy/flow', lambda: occupancy_flow_msg(occ, self.types)),
            ('occupancy/points', lambda: pointcloud_msg(occ, self.types, surface_only=self.surface_points)),
            ('occupancy/costmap', lambda: costmap_msg(occ, self.types, **self.costmap)),
        ]
        if self.voxels:
            encoders.append(('occupancy/voxels', lambda: voxel_grid_msg(occ, self.types)))
        if self.markers_due(frame.stamp_ns):
            encoders.append(
                (
                    'occupancy/markers',
                    lambda: marker_array_msg(occ, self.types, min_speed=self.marker_min_speed, cache=self._points),
                )
            )
        for topic, encode in encoders:
            t0 = time.perf_counter()
            try:
                msg = encode()
            except MessagesError as err:
                return self._drop(frame, 'encode_error', f'{topic}: {err}')
            timings[f'encode/{topic.split("/", 1)[1]}'] = time.perf_counter() - t0
            if msg is not None:
                messages[topic] = msg
        self.outputs += 1
        return FrameResult(frame, occ, messages, timings)


def stream_names(cameras: Sequence[str], pose_source: str) -> tuple[str, ...]:
    """The synchroniser inputs for ``cameras`` and ``pose_source`` (see :attr:`AssemblyConfig.streams`)."""
    return AssemblyConfig(tuple(cameras), pose_source=pose_source).streams


def frame_accounting(
    assembler: FrameAssembler, processor: FrameProcessor, outputs: int | None = None
) -> dict[str, Any]:
    """Where every synchronised message and set went, for a replay summary or the node's diagnostics.

    Args:
        assembler: the assembler the messages went through.
        processor: the processor its frames went through.
        outputs: frames that produced output, if the caller counted them (default ``processor.outputs``).

    Returns:
        ``sync_inputs`` (messages fed to the synchroniser), ``sets``, ``outputs``, ``frame_drops`` (reason ->
        count, assembler and processor together), ``waiting`` (sets waiting for /tf), ``sync_drops`` (reason ->
        count), ``queued`` (messages still in the synchroniser), ``rejected`` (``topic:reason`` -> messages
        ignored outside the synchroniser), ``time_jumps`` and ``frames_exact`` / ``sync_exact``: whether
        sets = outputs + frame drops + waiting and inputs = messages in sets + sync drops + queued;
        ``missing_camera_frames`` (camera -> frames assembled without it, a failed camera).
    """
    done = processor.outputs if outputs is None else int(outputs)
    drops = Counter(assembler.frame_drops) + Counter(processor.drops)
    waiting = len(assembler._waiting)
    queued = assembler.sync.added - assembler.sync.emitted_messages - assembler.sync.dropped
    return {
        'sync_inputs': assembler.sync.added,
        'sets': assembler.sets,
        'outputs': done,
        'frame_drops': dict(sorted(drops.items())),
        'waiting': waiting,
        'sync_drops': dict(sorted(assembler.sync_drops.items())),
        'queued': queued,
        'rejected': dict(sorted(assembler.rejected.items())),
        'time_jumps': assembler.time_jumps,
        'missing_camera_frames': dict(sorted(assembler.missing_camera_frames.items())),
        'frames_exact': assembler.sets == done + sum(drops.values()) + waiting,
        'sync_exact': assembler.sync.accounted(),
    }


STATUS_LEVELS: tuple[str, ...] = ('OK', 'WARN')
"""Levels of :func:`camera_status` (diagnostic_msgs/DiagnosticStatus OK and WARN)."""


def camera_status(assembler: FrameAssembler, now_ns: int) -> list[tuple[str, str, str]]:
    """One status per camera for the node's diagnostics: WARN while it is failed, OK otherwise.

    Args:
        assembler: the assembler (its ``config.camera_timeout`` decides when a camera is failed).
        now_ns: the current time [ns] on the image stamps' clock (the newest stamp fed, or the node's clock).

    Returns:
        ``(camera, level, message)`` in rig order; level ``'WARN'`` names the camera, how long it has been
        silent [s] and how many frames went without it, ``'OK'`` otherwise (including ``camera_timeout`` 0).
    """
    failed = set(assembler.failed(now_ns))
    out = []
    for i, cam in enumerate(assembler.config.cameras):
        count = assembler.missing_camera_frames.get(cam, 0)
        if cam in failed:
            silent = (now_ns - assembler._heard[i]) / NS
            out.append(
                (
                    cam,
                    'WARN',
                    f'{cam}: no image for {silent:.1f} s (camera_timeout {assembler.config.camera_timeout} s): '
                    f'frames go on without it, its own cells at confidence 0 ({count} frames so far)',
                )
            )
        else:
            out.append((cam, 'OK', f'{cam}: images arriving ({count} frames went without it)'))
    return out
