"""``occ-perception replay``: a rosbag2 through the node's frame path, offline, into an output bag with metrics.

The bag's messages are read in log-time order and fed one by one to a
:class:`~occ_perception.frame_assembly.FrameAssembler` (the synchroniser of the
node, same slop and queue size) and the frames it returns to a
:class:`~occ_perception.frame_assembly.FrameProcessor` (pipeline with its
temporal cache, then every output message of DESIGN.md section 4). Written into
``OUT/bag`` (rosbag2, MCAP): every input topic, copied byte for byte with its
stored definition, and the output topics, stamped with the frame stamp and
logged at the log time of the message that completed the frame.

Metrics (with ground-truth topics in the bag): a frame whose stamp lies within
``gt_tolerance`` of a ground-truth stamp (the nearest one) is scored against it
with :class:`~occ_perception.metrics.MIoU` (inside ``mask_camera`` when that
topic is present) and :class:`~occ_perception.metrics.RayMetrics` (RayIoU with
origins at the LIDAR_TOP positions of all ground-truth keyframes of the bag:
their ``/tf`` poses and the static ``base_link <- lidar_top`` translation; mAVE
with the ground-truth flow), like ``occ-perception eval``; files through
:func:`occ_perception.evaluate.write_outputs`.

Also written: ``summary.json`` (counts, every drop by stage and reason, the
per-stage timing table, speed), PNG panels of chosen frames, and optionally an
animated GIF of ground truth and prediction top views over the scored frames.

Bad input never stops a replay: a frame that cannot be processed is a counted
drop with its reason (:data:`~occ_perception.frame_assembly.FRAME_DROP_REASONS`),
a message that cannot be decoded (damaged CDR) or used (a malformed transform,
unreadable ground truth) is counted in ``rejected`` by ``topic:reason``, an
input that was silent for more than :data:`SILENT_AFTER` seconds is named in
``silent_inputs``, and a bag that is truncated or damaged part way is read up to
the damage (with a note). The accounting identities (every synchronised message
in one set or one drop, every set one output or one frame drop) are checked at
the end and written to the summary.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data.bags import BAG_READ_ERRORS, BagError, decode_message
from .frame_assembly import (
    OUTPUT_TOPICS,
    AssemblyConfig,
    Frame,
    FrameAssembler,
    FrameDrop,
    FrameProcessor,
    FrameResult,
    PoseBuffer,
    StaticTransforms,
    camera_info_topic,
    frame_accounting,
    image_topic,
)
from .geometry import GeometryError, Transform
from .messages import MessagesError, MessageTypes, read_occupancy_flow, read_semantic_occupancy, stamp_to_ns

__all__ = [
    'GT_TOPICS',
    'ReplayError',
    'ReplayOptions',
    'ReplaySummary',
    'check_topics',
    'format_summary',
    'replay',
    'timing_table',
]

log = logging.getLogger(__name__)

NS = 1_000_000_000
GT_TOPICS = {
    'semantics': '/occupancy/ground_truth',
    'mask': '/occupancy/ground_truth/mask_camera',
    'flow': '/occupancy/ground_truth/flow',
}
TF_TOPIC, TF_STATIC_TOPIC, ODOM_TOPIC = '/tf', '/tf_static', '/odom'
LIDAR_FRAME = 'lidar_top'
SILENT_AFTER = 1.0
"""An input whose stamps are further apart than this [s] is reported in ``silent_inputs``."""


class ReplayError(ValueError):
    """A replay cannot run: the bag lacks the expected topics, bad options, an existing output folder."""


@dataclass(frozen=True)
class ReplayOptions:
    """What to replay and how.

    Attributes:
        bag: the input bag folder (rosbag2: MCAP or sqlite3).
        out: output folder (created; its ``bag`` subfolder must not exist).
        assembly: cameras, synchroniser (slop, queue size) and pose source.
        markers_rate: MarkerArray rate limit [Hz] (0: none).
        gt_tolerance: largest |frame stamp - ground-truth stamp| [s] for a frame to be scored.
        panels: number of PNG panels, at ground-truth frames spread evenly over the bag (without ground
            truth: the first frame, when ``panels`` > 0).
        panel_frames: output frame indices (0-based) to draw in addition.
        gif: also write ``topviews.gif`` (ground truth and prediction over the scored frames).
        max_frames: stop after this many synchronised frames (None: the whole bag).
        distro: typestore of the output topics ('jazzy' or 'humble').
        progress: show a progress bar.
        loops: read the bag this many times in a row, as ``ros2 bag play --loop`` does: time goes backwards
            at each restart, so the synchroniser, the pose buffer and the temporal cache restart as in the
            node. Ground truth is scored, and inputs and outputs are written to the output bag, on the first
            pass only; the later passes run the whole frame path including the output encoding (a soak run:
            the summary's ``memory`` follows the resident set size frame by frame).
    """

    bag: Path
    out: Path
    assembly: AssemblyConfig = field(default_factory=AssemblyConfig)
    markers_rate: float = 2.0
    gt_tolerance: float = 0.05
    panels: int = 1
    panel_frames: tuple[int, ...] = ()
    gif: bool = False
    max_frames: int | None = None
    distro: str = 'jazzy'
    progress: bool = True
    loops: int = 1


@dataclass
class ReplaySummary:
    """What a replay did; :meth:`to_dict` is ``summary.json``.

    ``frame_drops`` (reason -> frames) and ``frame_accounting`` (:func:`~occ_perception.frame_assembly.frame_accounting`)
    account for every synchronised set; ``rejected`` counts unusable messages outside the synchroniser by
    ``topic:reason``; ``silent_inputs`` names the inputs with a gap over :data:`SILENT_AFTER` and its length [s];
    ``memory`` is :func:`memory_summary` of the resident set size after each output frame.
    """

    bag: str
    out_bag: str
    messages_in: dict[str, int]
    sync_inputs: int
    sets: int
    sync_drops: dict[str, int]
    sync_drops_by_stream: dict[str, int]
    frames_out: int
    frame_drops: dict[str, int]
    scored: int
    gt_frames: int
    gt_unmatched: int
    timings_ms: dict[str, dict[str, float]]
    wall_seconds: float
    bag_seconds: float
    frames_per_second: float
    out_counts: dict[str, int]
    metrics: dict[str, Any] | None
    files: dict[str, Any]
    pose_source: str
    notes: list[str]
    streams: int = 7
    rejected: dict[str, int] = field(default_factory=dict)
    silent_inputs: dict[str, float] = field(default_factory=dict)
    time_jumps: int = 0
    frame_accounting: dict[str, Any] = field(default_factory=dict)
    loops: int = 1
    memory: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data, with the accounting identities and speed ratios."""
        d = dict(self.__dict__)
        d['accounting'] = {
            'sync_messages': f'{self.sync_inputs} in = {self.sets} sets x {self.streams} inputs + '
            f'{sum(self.sync_drops.values())} message drops',
            'sync_exact': self.sync_inputs == self.sets * self.streams + sum(self.sync_drops.values()),
            'frames': f'{self.sets} sets = {self.frames_out} outputs + {sum(self.frame_drops.values())} frame drops',
            'frames_exact': self.sets == self.frames_out + sum(self.frame_drops.values()),
        }
        d['realtime_factor'] = self.bag_seconds / self.wall_seconds if self.wall_seconds > 0 else None
        d['vs_keyframes_2hz'] = self.frames_per_second / 2.0
        d['vs_camera_12hz'] = self.frames_per_second / 12.0
        return d


def timing_table(samples: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per stage: count, median and 90th percentile [ms] over the frames that have the stage.

    Args:
        samples: one dict per frame, stage -> seconds.
    """
    stages: dict[str, list[float]] = {}
    for s in samples:
        for k, v in s.items():
            stages.setdefault(k, []).append(v)
    table = {}
    for k in sorted(stages):
        arr = np.asarray(stages[k]) * 1000.0
        table[k] = {'count': int(arr.size), 'median': float(np.median(arr)), 'p90': float(np.percentile(arr, 90))}
    return table


def resident_bytes() -> int | None:
    """This process's resident set size [bytes] now (Linux ``/proc/self/statm``), or None where unavailable."""
    try:
        with open('/proc/self/statm', 'rb') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    except (OSError, ValueError, IndexError):
        return None


def memory_summary(rss: Sequence[int], settle: int = 100) -> dict[str, Any]:
    """Resident set size over a run: ``rss`` [bytes], one sample after each output frame.

    Returns:
        ``frames`` (samples), ``rss_mb_first`` (after frame 1), ``rss_mb_settled`` (after frame ``settle``),
        ``rss_mb_last``, ``rss_mb_max_after_settled``, ``growth_after_settled_pct`` (last over settled, in
        percent), ``max_growth_after_settled_pct`` and ``rss_mb_every`` (after frames ``settle``, ``2 *
        settle``, ...); only ``frames`` and ``settle_frames`` when there are no more than ``settle`` samples.
    """
    out: dict[str, Any] = {'frames': len(rss), 'settle_frames': settle}
    if len(rss) <= settle:
        return out
    mb = np.asarray(rss, dtype=np.float64) / 2**20
    settled = float(mb[settle - 1])
    out.update(
        rss_mb_first=float(mb[0]),
        rss_mb_settled=settled,
        rss_mb_last=float(mb[-1]),
        rss_mb_max_after_settled=float(mb[settle - 1 :].max()),
        growth_after_settled_pct=100.0 * (float(mb[-1]) - settled) / settled,
        max_growth_after_settled_pct=100.0 * (float(mb[settle - 1 :].max()) - settled) / settled,
        rss_mb_every=[round(float(v), 1) for v in mb[settle - 1 :: settle]],
    )
    return out


def required_topics(assembly: AssemblyConfig) -> list[str]:
    """Absolute topics a bag must have for ``assembly`` (cameras' images and infos, /tf_static, the pose)."""
    topics = []
    for cam in assembly.cameras:
        topics += ['/' + image_topic(cam), '/' + camera_info_topic(cam)]
    topics.append(TF_STATIC_TOPIC)
    topics.append(ODOM_TOPIC if assembly.pose_source == 'odom' else TF_TOPIC)
    return topics


def check_topics(present: dict[str, str], assembly: AssemblyConfig, bag: Path | str) -> None:
    """Raise :class:`ReplayError` listing the missing topics and what the bag has.

    Args:
        present: topic -> message type of the bag.
    """
    missing = [t for t in required_topics(assembly) if t not in present]
    if missing:
        have = ', '.join(f'{t} ({present[t]})' for t in sorted(present)) or 'no topics'
        raise ReplayError(
            f'{bag}: missing the topics {missing} (pose source {assembly.pose_source}); the bag has {have}'
        )


@dataclass
class _Pending:
    """A scored frame's prediction or ground-truth parts, waiting for the other side."""

    occ: Any = None
    frame: Frame | None = None
    index: int = -1
    gt: dict[str, Any] = field(default_factory=dict)


class _Scorer:
    """Pairs frames with ground-truth stamps and accumulates the metrics; draws panels and GIF frames."""

    def __init__(
        self,
        gt_stamps: list[int],
        gt_parts: set[str],
        gt_poses: dict[int, np.ndarray],
        lidar: tuple[float, float, float],
        tolerance_ns: int,
        grid: Any,
        panel_gt: set[int],
        want_gif: bool,
        panel_dir: Path,
    ) -> None:
        from .metrics import MIoU, RayMetrics

        self.gt_stamps = np.asarray(sorted(gt_stamps), dtype=np.int64)
        self.parts = gt_parts
        self.gt_poses = gt_poses
        self.scene_poses = np.stack([gt_poses[s] for s in sorted(gt_poses)]) if gt_poses else np.zeros((0, 4, 4))
        self.lidar = lidar
        self.tolerance_ns = tolerance_ns
        self.grid = grid
        self.miou, self.rays = MIoU(), RayMetrics(grid)
        self.pending: dict[int, _Pending] = {}
        self.done: set[int] = set()
        self.scored = 0
        self.duplicates = 0
        self.rays_skipped = 0
        self.panel_gt = panel_gt
        self.want_gif = want_gif
        self.gif_frames: list[np.ndarray] = []
        self.panel_dir = panel_dir
        self.panels: list[Path] = []
        self.t0_ns = 0  # stamp of the first output frame, for titles

    def match(self, stamp_ns: int) -> int | None:
        """The nearest ground-truth stamp within tolerance, or None."""
        if not len(self.gt_stamps):
            return None
        i = int(np.searchsorted(self.gt_stamps, stamp_ns))
        best = None
        for j in (i - 1, i):
            if 0 <= j < len(self.gt_stamps):
                d = abs(int(self.gt_stamps[j]) - stamp_ns)
                if d <= self.tolerance_ns and (best is None or d < best[0]):
                    best = (d, int(self.gt_stamps[j]))
        return None if best is None else best[1]

    def add_prediction(self, result: FrameResult, index: int) -> bool:
        """Returns True when the frame is (or will be, once its ground truth arrives) scored."""
        gt = self.match(result.frame.stamp_ns)
        if gt is None:
            return False
        entry = self.pending.setdefault(gt, _Pending())
        if gt in self.done or entry.occ is not None:
            self.duplicates += 1
            return False
        entry.occ, entry.frame, entry.index = result.occ, result.frame, index
        self._try(gt)
        return True

    def add_gt(self, part: str, stamp_ns: int, msg: Any) -> None:
        if part == 'flow':
            value: Any = read_occupancy_flow(msg).dense()
        else:
            value = read_semantic_occupancy(msg).labels
        if stamp_ns in self.done:
            return
        self.pending.setdefault(stamp_ns, _Pending()).gt[part] = value
        self._try(stamp_ns)

    def _try(self, gt_stamp: int) -> None:
        from .metrics import lidar_origins

        entry = self.pending[gt_stamp]
        if entry.occ is None or not self.parts <= set(entry.gt):
            return
        del self.pending[gt_stamp]
        self.done.add(gt_stamp)
        occ, gt = entry.occ, entry.gt
        semantics = gt['semantics']
        mask = gt['mask'] != 0 if 'mask' in gt else None
        self.miou.add(occ.labels, semantics, mask)
        pose = self.gt_poses.get(gt_stamp)
        if pose is not None and len(self.scene_poses):
            origins = lidar_origins(self.scene_poses, pose, self.lidar)
            self.rays.add(occ.labels, semantics, origins, occ.flow, gt.get('flow'))
        else:
            self.rays_skipped += 1
        self.scored += 1
        if gt_stamp in self.panel_gt and entry.frame is not None:
            self.panels.append(
                _write_panel(self.panel_dir, entry.index, entry.frame, occ, semantics, self.grid, self.t0_ns)
            )
        if self.want_gif:
            from .outputs import render_panel

            title = f'frame {entry.index}  t = {(occ.stamp_ns - self.t0_ns) / NS:.2f} s'
            self.gif_frames.append(render_panel(None, semantics, occ.labels, occ.flow, self.grid, title, scale=3))

    def unmatched(self) -> int:
        return len(self.gt_stamps) - len(self.done)


def _frame_images(frame: Frame, height: int = 225) -> np.ndarray | None:
    """The frame's images as (N, h, w, 3) uint8 RGB at ``height`` rows (for panels), or None if undecodable."""
    import cv2

    from .preprocess import decode_raw

    out = []
    for msg, cam in zip(frame.images, frame.rig.cameras):
        if hasattr(msg, 'format'):
            img = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
            if img is None:
                return None
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        else:
            img, _ = decode_raw(msg, cam)
        out.append(cv2.resize(img, (round(img.shape[1] * height / img.shape[0]), height), interpolation=cv2.INTER_AREA))
    if len({im.shape for im in out}) != 1:
        return None
    return np.stack(out)


def _write_panel(
    folder: Path, index: int, frame: Frame, occ: Any, gt: np.ndarray | None, grid: Any, t0_ns: int
) -> Path:
    from .outputs import render_panel, save_png

    title = f'frame {index}  t = {(frame.stamp_ns - t0_ns) / NS:.2f} s (stamp {frame.stamp_ns / NS:.3f})' + (
        '' if gt is not None else '  (no ground truth)'
    )
    panel = render_panel(_frame_images(frame), gt, occ.labels, occ.flow, grid, title, camera_names=frame.rig.names)
    return save_png(folder / f'panel_{index:05d}.png', panel)


def _messages(reader: Any, connections: list[Any] | None, notes: list[str]) -> Iterator[tuple[Any, int, Any]]:
    """``reader.messages(connections)``, ending (with a note) where the bag is truncated or damaged."""
    stream = reader.messages(connections=connections) if connections is not None else reader.messages()
    count = 0
    while True:
        try:
            item = next(stream, None)
        except BAG_READ_ERRORS as err:
            note = f'the bag is truncated or damaged after {count} messages ({type(err).__name__}: {err}): read up to there'
            log.warning('%s', note)
            notes.append(note)
            return
        if item is None:
            return
        count += 1
        yield item


def _prescan(
    reader: Any, conns: dict[str, Any], gt_topics: dict[str, str]
) -> tuple[PoseBuffer, StaticTransforms, list[int]]:
    """Poses (/tf map -> base_link, else /odom), static transforms and ground-truth stamps of the whole bag."""
    poses = PoseBuffer(span=1e7)
    static = StaticTransforms()
    wanted = [c for t, c in conns.items() if t in (TF_TOPIC, TF_STATIC_TOPIC, ODOM_TOPIC, gt_topics['semantics'])]
    stamps: list[int] = []
    have_tf = TF_TOPIC in conns
    for conn, timestamp, raw in _messages(reader, wanted, []):
        if conn.topic == gt_topics['semantics']:
            stamps.append(int(timestamp))
            continue
        if conn.topic == ODOM_TOPIC and have_tf:
            continue
        try:
            msg = decode_message(reader.deserialize, raw, conn.msgtype, conn.topic)
        except BagError as err:
            log.warning('%s', err)
            continue
        try:
            if conn.topic == TF_STATIC_TOPIC:
                static.add(msg)
            elif conn.topic == TF_TOPIC:
                for tf in msg.transforms:
                    if (
                        str(tf.header.frame_id).lstrip('/') == 'map'
                        and str(tf.child_frame_id).lstrip('/') == 'base_link'
                    ):
                        poses.add(stamp_to_ns(tf.header.stamp), Transform.from_msg(tf.transform))
            else:
                poses.add(stamp_to_ns(msg.header.stamp), Transform.from_msg(msg.pose.pose))
        except GeometryError as err:
            log.warning('%s: ignoring a malformed transform: %s', conn.topic, err)
    return poses, static, stamps


def replay(options: ReplayOptions, pipeline: Any) -> ReplaySummary:
    """Replay ``options.bag`` through ``pipeline`` (an :class:`~occ_perception.pipeline.OccPipeline`).

    Returns:
        The :class:`ReplaySummary` (also written as ``OUT/summary.json``).

    Raises:
        ReplayError: the bag cannot be opened or lacks the expected topics, bad options, ``OUT/bag`` exists.
        occ_perception.data.bags.BagError: the output bag cannot be written.
    """
    from rosbags.highlevel import AnyReader

    from .data.bags import BagError, BagWriter
    from .messages import rosbags_typestore

    opts = options
    bag, out = Path(opts.bag), Path(opts.out)
    if not bag.exists():
        raise ReplayError(f'{bag}: no such bag')
    if (
        opts.gt_tolerance < 0
        or opts.panels < 0
        or (opts.max_frames is not None and opts.max_frames < 1)
        or opts.loops < 1
    ):
        raise ReplayError(
            f'gt_tolerance >= 0, panels >= 0, max_frames >= 1 and loops >= 1 expected, got {opts.gt_tolerance}, '
            f'{opts.panels}, {opts.max_frames}, {opts.loops}'
        )
    if (out / 'bag').exists():
        raise ReplayError(f'{out / "bag"}: exists already; remove it or choose another --out')
    try:
        reader = AnyReader([bag], default_typestore=rosbags_typestore(opts.distro))
        reader.open()
    except BAG_READ_ERRORS as err:
        raise ReplayError(f'{bag}: cannot open as a rosbag: {type(err).__name__}: {err}') from err
    try:
        return _replay(opts, pipeline, reader, bag, out, BagWriter, BagError)
    finally:
        try:
            reader.close()
        except BAG_READ_ERRORS as err:  # a damaged file may fail again while closing
            log.warning('%s: closing the bag: %s', bag, err)


def _replay(
    opts: ReplayOptions, pipeline: Any, reader: Any, bag: Path, out: Path, writer_cls: Any, bag_error: type[Exception]
) -> ReplaySummary:
    asm_cfg = opts.assembly
    conns: dict[str, Any] = {}
    for c in reader.connections:
        conns.setdefault(c.topic, c)
    check_topics({t: c.msgtype for t, c in conns.items()}, asm_cfg, bag)
    grid = pipeline.config.grid
    notes: list[str] = []

    # ground truth: stamps, parts and keyframe poses from a first pass
    gt_present = {part for part, topic in GT_TOPICS.items() if topic in conns}
    gt_stamps: list[int] = []
    gt_poses: dict[int, np.ndarray] = {}
    lidar: tuple[float, float, float] | None = None
    if 'semantics' in gt_present:
        poses, static, gt_stamps = _prescan(reader, conns, GT_TOPICS)
        for s in gt_stamps:
            p = poses.lookup(s)
            if p is not None:
                gt_poses[s] = p.matrix()
        if len(gt_poses) < len(gt_stamps):
            notes.append(
                f'{len(gt_stamps) - len(gt_poses)} ground-truth stamps have no pose on /tf or /odom: '
                'RayIoU leaves them out'
            )
        t_lidar = static.lookup(asm_cfg.ego_frame, LIDAR_FRAME)
        if t_lidar is not None:
            x, y, z = (float(v) for v in t_lidar.translation)
            lidar = (x, y, z)
        else:
            from .metrics import LIDAR_TRANSLATION

            lidar = LIDAR_TRANSLATION
            notes.append(
                f'no static transform {asm_cfg.ego_frame} <- {LIDAR_FRAME}: RayIoU origins use the '
                f'nuScenes LIDAR_TOP position {LIDAR_TRANSLATION}'
            )
        if 'mask' not in gt_present:
            notes.append('no mask_camera topic: mIoU over every voxel')
    else:
        notes.append('no ground-truth topic: no metrics')

    panel_gt: set[int] = set()
    if opts.panels and gt_stamps:
        chosen = np.round(np.linspace(0, len(gt_stamps) - 1, min(opts.panels, len(gt_stamps)))).astype(int)
        panel_gt = {sorted(gt_stamps)[i] for i in chosen}
    panel_frames = set(opts.panel_frames)
    out.mkdir(parents=True, exist_ok=True)
    scorer = _Scorer(
        gt_stamps,
        gt_present,
        gt_poses,
        lidar or (0.0, 0.0, 0.0),
        int(opts.gt_tolerance * NS),
        grid,
        panel_gt,
        opts.gif,
        out,
    )

    types = MessageTypes.rosbags(opts.distro)
    assembler = FrameAssembler(asm_cfg)
    processor = FrameProcessor(pipeline, types, markers_rate=opts.markers_rate)
    images = {'/' + image_topic(c): c for c in asm_cfg.cameras}
    infos = {'/' + camera_info_topic(c): c for c in asm_cfg.cameras}
    gt_part_of = {GT_TOPICS[p]: p for p in gt_present}
    decode = set(images) | set(infos) | {TF_STATIC_TOPIC, TF_TOPIC, ODOM_TOPIC} | set(gt_part_of)

    try:
        writer = writer_cls(out / 'bag', distro=opts.distro)
    except bag_error as err:
        raise ReplayError(str(err)) from err
    outputs_abs = {'/' + t: t for t in OUTPUT_TOPICS}
    messages_in: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    samples: list[dict[str, float]] = []
    resets: Counter[str] = Counter()
    panels_written: list[Path] = []
    results = 0
    first_stamp = last_stamp = None
    span_ns = 0  # bag time covered by the earlier passes
    rss: list[int] = []
    first_pass = True
    bar = None
    if opts.progress:
        from tqdm import tqdm

        bar = tqdm(total=reader.message_count * opts.loops, unit='msg', desc=bag.name, dynamic_ncols=True)
    t_start = time.perf_counter()
    stop = False
    with writer:
        for topic, conn in conns.items():
            if topic in outputs_abs:
                notes.append(f'input topic {topic} is an output topic: not copied')
                continue
            latched = any(
                getattr(q, 'durability', None) is not None and q.durability.name == 'TRANSIENT_LOCAL'
                for q in getattr(conn.ext, 'offered_qos_profiles', [])
            )
            writer.add_topic(
                topic,
                conn.msgtype,
                latched=latched or topic == TF_STATIC_TOPIC,
                msgdef=conn.msgdef.data or None,
                rihs01=conn.digest or None,
            )
        for topic, msgtype in OUTPUT_TOPICS.items():
            writer.add_topic('/' + topic, msgtype)

        def handle(events: list[Frame | FrameDrop], log_ns: int) -> None:
            nonlocal results, first_stamp, last_stamp, stop
            for ev in events:
                if isinstance(ev, FrameDrop):
                    continue
                result = processor.process(ev)
                if isinstance(result, FrameDrop):
                    continue
                index = results
                results += 1
                t0 = time.perf_counter()
                if first_pass:
                    for t, msg in result.messages.items():
                        writer.write('/' + t, log_ns, msg)
                result.timings['write'] = time.perf_counter() - t0
                result.timings['frame'] = sum(
                    v
                    for k, v in result.timings.items()
                    if k == 'pipeline/total' or k.startswith('encode/') or k == 'write'
                )
                samples.append(result.timings)
                rss_now = resident_bytes()
                if rss_now is not None:
                    rss.append(rss_now)
                if result.occ.reset_reason is not None:
                    resets[result.occ.reset_reason] += 1
                if first_stamp is None:
                    first_stamp = ev.stamp_ns
                    if first_pass:
                        scorer.t0_ns = ev.stamp_ns
                last_stamp = ev.stamp_ns
                if not first_pass:
                    if opts.max_frames is not None and assembler.sets >= opts.max_frames:
                        stop = True
                    continue
                wanted = index in panel_frames or (not gt_stamps and opts.panels > 0 and index == 0)
                gt_match = scorer.match(ev.stamp_ns)
                if wanted and gt_match is not None and gt_match not in scorer.done:
                    scorer.panel_gt.add(gt_match)  # drawn with its ground truth once that is there
                elif wanted:
                    panels_written.append(_write_panel(out, index, ev, result.occ, None, grid, scorer.t0_ns))
                scorer.add_prediction(result, index)
                if opts.max_frames is not None and assembler.sets >= opts.max_frames:
                    stop = True

        for loop in range(opts.loops):
            first_pass = loop == 0
            if not first_pass:
                span_ns += (last_stamp - first_stamp) if first_stamp is not None and last_stamp is not None else 0
                first_stamp = last_stamp = None
            for conn, timestamp, raw in _messages(reader, None, notes if first_pass else []):
                topic = conn.topic
                messages_in[topic] += 1
                if bar is not None:
                    bar.update(1)
                if first_pass and topic not in outputs_abs:
                    writer.write_raw(topic, timestamp, raw)
                if topic not in decode or (not first_pass and topic in gt_part_of):
                    continue
                try:
                    msg = decode_message(reader.deserialize, raw, conn.msgtype, topic)
                except BagError as err:
                    rejected[f'{topic}:undecodable'] += 1
                    log.warning('%s', err)
                    continue
                if topic in images:
                    handle(assembler.add_image(images[topic], msg), timestamp)
                elif topic in infos:
                    assembler.add_camera_info(infos[topic], msg)
                elif topic == TF_STATIC_TOPIC:
                    assembler.add_tf_static(msg)
                elif topic == TF_TOPIC:
                    handle(assembler.add_tf(msg), timestamp)
                elif topic == ODOM_TOPIC:
                    handle(assembler.add_odom(msg), timestamp)
                else:
                    try:
                        scorer.add_gt(gt_part_of[topic], int(timestamp), msg)
                    except MessagesError as err:
                        rejected[f'{topic}:bad_ground_truth'] += 1
                        log.warning('%s: %s', topic, err)
                if stop:
                    notes.append(f'stopped after {assembler.sets} synchronised frames (max_frames)')
                    break
            if stop:
                break
        handle(assembler.flush(), last_stamp or 0)
    wall = time.perf_counter() - t_start
    if bar is not None:
        bar.close()
    panels_written += scorer.panels

    frame_drops = Counter(assembler.frame_drops) + Counter(processor.drops)
    if assembler.sets != results + sum(frame_drops.values()):
        raise AssertionError(f'replay accounting: {assembler.sets} sets != {results} outputs + {dict(frame_drops)}')
    accounting = frame_accounting(assembler, processor, outputs=results)
    rejected.update(assembler.rejected)
    silent = {k: v / NS for k, v in sorted(assembler.longest_gap_ns.items()) if v > SILENT_AFTER * NS}
    for name, seconds in silent.items():
        notes.append(f'input {name} was silent for up to {seconds:.2f} s')
    for name, count in sorted(assembler.missing_camera_frames.items()):
        notes.append(f'{count} frame(s) went without {name} (failed camera: masked, its own columns at confidence 0)')
    if assembler.time_jumps:
        notes.append(f'time went backwards {assembler.time_jumps} time(s): synchroniser and pose buffer restarted')
    sync_inputs = assembler.sync.added
    files: dict[str, Any] = {'bag': str(out / 'bag'), 'panels': [str(p) for p in sorted(panels_written)]}
    metrics = None
    if scorer.scored:
        metrics, metric_files = _write_metrics(scorer, out, samples, resets, results)
        files.update(metric_files)
    elif gt_stamps:
        notes.append('no frame matched a ground-truth stamp within the tolerance: no metrics')
    if opts.gif and scorer.gif_frames:
        files['gif'] = str(_write_gif(out / 'topviews.gif', scorer.gif_frames))
    if first_stamp is not None and last_stamp is not None:
        span_ns += last_stamp - first_stamp
    bag_seconds = span_ns / NS
    if opts.loops > 1:
        notes.append(f'{opts.loops} passes over the bag: ground truth scored and the output bag written on the first')
    summary = ReplaySummary(
        bag=str(bag),
        out_bag=str(out / 'bag'),
        messages_in=dict(sorted(messages_in.items())),
        sync_inputs=sync_inputs,
        sets=assembler.sets,
        sync_drops=dict(assembler.sync_drops),
        sync_drops_by_stream=dict(sorted(assembler.sync_drops_by_stream.items())),
        frames_out=results,
        frame_drops=dict(frame_drops),
        scored=scorer.scored,
        gt_frames=len(gt_stamps),
        gt_unmatched=scorer.unmatched() if gt_stamps else 0,
        timings_ms=timing_table(samples),
        wall_seconds=wall,
        bag_seconds=bag_seconds,
        frames_per_second=results / wall if wall > 0 else 0.0,
        out_counts={t: writer.counts['/' + t] for t in OUTPUT_TOPICS},
        metrics=metrics,
        files=files,
        pose_source=asm_cfg.pose_source,
        notes=notes,
        streams=len(asm_cfg.streams),
        rejected=dict(sorted(rejected.items())),
        silent_inputs=silent,
        time_jumps=assembler.time_jumps,
        frame_accounting=accounting,
        loops=opts.loops,
        memory=memory_summary(rss),
    )
    files['summary'] = str(out / 'summary.json')
    (out / 'summary.json').write_text(json.dumps(summary.to_dict(), indent=2) + '\n')
    return summary


def _write_metrics(
    scorer: _Scorer, out: Path, samples: list[dict[str, float]], resets: Counter[str], frames: int
) -> tuple[dict[str, Any], dict[str, str]]:
    from .evaluate import EvalResult, write_outputs
    from .metrics import MetricsReport

    m, r = scorer.miou.result(), scorer.rays.result()
    report = MetricsReport.from_results(m, r, frames=scorer.scored)
    stage: dict[str, float] = {}
    for s in samples:
        for k, v in s.items():
            if k.startswith('pipeline/'):
                key = k[len('pipeline/') :]
                stage[key] = stage.get(key, 0.0) + v
    seconds = float(stage.get('total', 0.0))
    report.extra.update(
        {
            'frames_run': frames,
            'frames_per_second': frames / seconds if seconds > 0 else None,
            'timings_ms': {k: 1000.0 * v / frames for k, v in sorted(stage.items()) if k != 'tables'},
            'cache_resets': dict(sorted(resets.items())),
            'mask': 'camera' if 'mask' in scorer.parts else 'none',
            'rays_skipped_frames': scorer.rays_skipped,
        }
    )
    result = EvalResult(report, m, frames, scorer.scored, seconds, dict(stage), dict(resets))
    paths = write_outputs(result, out)
    return report.to_dict(), {k: str(v) for k, v in paths.items()}


def _write_gif(path: Path, frames: list[np.ndarray], seconds_per_frame: float = 0.5) -> Path:
    """An animated GIF (PIL, looping) of RGB frames of one size."""
    from PIL import Image

    images = [Image.fromarray(f).quantize(colors=128, method=Image.Quantize.MEDIANCUT) for f in frames]
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=int(seconds_per_frame * 1000), loop=0, optimize=False
    )
    return path


def format_summary(s: ReplaySummary) -> str:
    """The summary as printable lines: counts, drops, timings, speed, metrics and files."""
    lines = [f'replayed {s.bag} -> {s.out_bag} ({s.pose_source} pose)']
    lines.append(
        f'  synchroniser: {s.sync_inputs} messages in -> {s.sets} synchronised sets; '
        f'message drops {s.sync_drops or "none"}'
    )
    for key, n in s.sync_drops_by_stream.items():
        lines.append(f'    {key}: {n}')
    lines.append(
        f'  frames: {s.sets} sets -> {s.frames_out} outputs + {sum(s.frame_drops.values())} dropped '
        f'{s.frame_drops or ""}'.rstrip()
    )
    if s.rejected:
        lines.append('  messages rejected: ' + ', '.join(f'{k} {n}' for k, n in s.rejected.items()))
    lines.append('  output messages: ' + ', '.join(f'{t} {n}' for t, n in s.out_counts.items()))
    lines.append('  stage timings [ms]        count   median      p90')
    for k, v in s.timings_ms.items():
        lines.append(f'    {k:<24}{v["count"]:>6} {v["median"]:>8.1f} {v["p90"]:>8.1f}')
    d = s.to_dict()
    lines.append(
        f'  speed: {s.frames_out} frames in {s.wall_seconds:.1f} s = {s.frames_per_second:.2f} frames/s '
        f'(x{d["vs_keyframes_2hz"]:.2f} the 2 Hz keyframe rate, x{d["vs_camera_12hz"]:.2f} the 12 Hz '
        f'camera rate; {s.bag_seconds:.1f} s of bag, real-time factor '
        f'{d["realtime_factor"] or 0:.2f})'
    )
    if s.metrics is not None:
        m = s.metrics

        def pct(v: Any) -> str:
            return '-' if v is None else f'{100 * v:.2f}'

        mave = '-' if m.get('mave') is None else f'{m["mave"]:.3f} m/s'
        lines.append(
            f'  metrics over {s.scored} of {s.gt_frames} ground-truth frames: mIoU {pct(m.get("miou"))}, '
            f'RayIoU {pct(m.get("ray_iou"))}, mAVE {mave}'
        )
    mem = s.memory
    if 'rss_mb_settled' in mem:
        lines.append(
            f'  memory (resident): {mem["rss_mb_settled"]:.0f} MB after {mem["settle_frames"]} frames, '
            f'{mem["rss_mb_last"]:.0f} MB after {mem["frames"]} ({mem["growth_after_settled_pct"]:+.2f} %; '
            f'highest {mem["rss_mb_max_after_settled"]:.0f} MB)'
        )
    for note in s.notes:
        lines.append(f'  note: {note}')
    for kind, path in s.files.items():
        if isinstance(path, list):
            for p in path:
                lines.append(f'  {kind[:-1] if kind.endswith("s") else kind}: {p}')
        else:
            lines.append(f'  {kind}: {path}')
    return '\n'.join(lines)


def run_replay(
    bag: str | os.PathLike[str],
    model: str | os.PathLike[str],
    config: Any,
    backend: str,
    out: str | os.PathLike[str],
    threads: int = 0,
    failed_camera_mode: str = 'mask_tables',
    **kwargs: Any,
) -> ReplaySummary:
    """Load the model and :func:`replay` (the ``replay`` command). ``kwargs`` go to :class:`ReplayOptions`.

    ``failed_camera_mode`` goes to the :class:`~occ_perception.pipeline.OccPipeline` (how a camera silent for
    longer than ``assembly.camera_timeout`` is fed).

    Raises:
        ReplayError, PipelineError: see :func:`replay` and :func:`~occ_perception.pipeline.load_model`.
    """
    from .pipeline import OccPipeline, load_model

    options = ReplayOptions(bag=Path(bag), out=Path(out), **kwargs)
    if not Path(bag).exists():
        raise ReplayError(f'{bag}: no such bag')
    net = load_model(model, config, backend=backend, threads=threads)
    try:
        pipeline = OccPipeline(net, config, failed_camera_mode=failed_camera_mode)
    except Exception:
        net.close()
        raise
    try:
        return replay(options, pipeline)
    finally:
        pipeline.close()
        net.close()
