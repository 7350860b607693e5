"""``occ-perception bench``: per-stage timings of the frame path, baselines measured in the same run.

Every figure is the median, 10th and 90th percentile of N repeats after warm-up, and every
comparison is measured side by side in one run (the machine may be shared: ratios taken in one
run are what to compare; the load average before and after is recorded). Stages
(``--stages``; all by default):

- ``preprocess``: six 1600x900 JPEGs (quality 90, a rendered synthetic-world frame or a
  textured image) to the 704x256 network input through :class:`~occ_perception.preprocess.Preprocessor`
  (reduced-size decode, two threads; also one thread), against full-size PIL decode plus resize
  (:func:`~occ_perception.preprocess.pil_baseline`), interleaved, with the ratio;
- ``encode``: each output message (semantics, flow, points, markers, costmap, VoxelGrid) of a
  200x200x16 frame with exactly 30,000 occupied voxels (:func:`encode_frame`), each from a fresh
  :class:`~occ_perception.outputs.OccFrame`, and all of them from one frame (the total);
- ``naive``: message building against the naive baselines of :mod:`.baselines` (:func:`naive_bench`):
  SemanticOccupancy and OccupancyFlow filled element by element in Python loops against our bytes copy
  (their CDR bytes checked equal first), and a MarkerArray with one Point made per occupied voxel against
  ours (surface voxels, cached Points); ``naive_repeats`` calls (the baselines take about a second each);
- ``splat``: the splat alone for M1 geometry (nuScenes rig, 6 x 88 x 16 x 44 frustum points,
  64 channels): onnxruntime CPU running the table graph, onnxruntime CPU running a ScatterElements(add)
  baseline graph, and torch eager ``index_select`` x 2, Mul, ``index_add`` with precomputed BEVPoolv2
  ranks sorted by cell (outputs checked allclose first), and their ratios;
- ``network``: ``tiny`` end to end on onnxruntime CPU with six cameras, and ``flashocc-m0``
  (leave it out with ``skip_m0``);
- ``history``: ``tiny`` per frame with K history frames (``history_ks``, default 0, 2, 8) through the
  temporal cache (one pass plus the warp in the graph) against recomputing the K history frames with K
  extra image-encoder passes (:func:`history_bench`).

With ``plots_dir``, the scaling curves (:func:`scaling_curves`: splat and output encoding against grid
size, the network against K = 0..8) are measured too and written as PNG (:func:`write_plots`).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..grid import OCC3D_GRID, GridSpec

__all__ = [
    'STAGES',
    'BenchError',
    'Timing',
    'CURVE_HEIGHTS',
    'CURVE_KS',
    'CURVE_SIZES',
    'curve_grid',
    'curve_occupied',
    'encode_bench',
    'encode_frame',
    'history_bench',
    'interleaved_stats',
    'machine_description',
    'median_time',
    'naive_bench',
    'preprocess_bench',
    'run_bench',
    'scaling_curves',
    'splat_bench',
    'synthetic_jpegs',
    'time_stats',
    'write_plots',
]

STAGES: tuple[str, ...] = ('preprocess', 'encode', 'naive', 'splat', 'network', 'history')
"""Stage names of ``--stages``, in the order they run."""

ENCODE_MESSAGES: tuple[str, ...] = ('semantics', 'flow', 'points', 'markers', 'costmap', 'voxel_grid')


class BenchError(ValueError):
    """A benchmark parameter is invalid (unknown stage, no repeats) or two paths disagree."""


@dataclass(frozen=True)
class Timing:
    """Wall-time statistics of one figure over ``repeats`` calls after warm-up [s].

    ``cpu_median_s`` is the median CPU time of the process (all its threads) per call: on a loaded
    machine it shows the work done, where wall time also counts the waits for a core.
    """

    name: str
    median_s: float
    p10_s: float
    p90_s: float
    repeats: int
    cpu_median_s: float | None = None

    @classmethod
    def of(cls, name: str, seconds: Sequence[float], cpu_seconds: Sequence[float] | None = None) -> Timing:
        """Statistics of measured wall durations ``seconds`` (at least one) and CPU durations ``cpu_seconds``.

        Raises:
            BenchError: no measurement.
        """
        if not len(seconds):
            raise BenchError(f'{name}: no measurement')
        values = np.asarray(seconds, dtype=np.float64)
        p10, p50, p90 = np.percentile(values, [10, 50, 90])
        cpu = float(np.median(np.asarray(cpu_seconds, dtype=np.float64))) if cpu_seconds else None
        return cls(name, float(p50), float(p10), float(p90), int(values.size), cpu)

    def as_ms(self) -> dict[str, float | int | None]:
        """JSON figures in milliseconds."""
        return {
            'median_ms': self.median_s * 1e3,
            'p10_ms': self.p10_s * 1e3,
            'p90_ms': self.p90_s * 1e3,
            'cpu_median_ms': None if self.cpu_median_s is None else self.cpu_median_s * 1e3,
            'repeats': self.repeats,
        }


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time [s] of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _durations(fn: Callable[[], object], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and process CPU time [s] of each of ``repeats`` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def time_stats(name: str, fn: Callable[[], object], repeats: int, warmup: int = 2) -> Timing:
    """:class:`Timing` of ``fn`` over ``repeats`` calls after ``warmup`` calls.

    Raises:
        BenchError: ``repeats`` < 1.
    """
    if repeats < 1:
        raise BenchError(f'{name}: repeats must be at least 1, got {repeats}')
    for _ in range(warmup):
        fn()
    return Timing.of(name, *_durations(fn, repeats))


def interleaved_stats(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2, rounds: int = 3
) -> dict[str, Timing]:
    """:class:`Timing` of each of ``fns``, measured in ``rounds`` alternating blocks so that load from other
    processes hits all of them alike; ``repeats`` calls of each in total (at least one per round)."""
    if repeats < 1:
        raise BenchError(f'repeats must be at least 1, got {repeats}')
    rounds = max(1, min(rounds, repeats))
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        block = repeats // rounds + (1 if r < repeats % rounds else 0)
        for name, fn in fns.items():
            w, c = _durations(fn, block)
            wall[name] += w
            cpu[name] += c
    return {name: Timing.of(name, wall[name], cpu[name]) for name in fns}


# ---------------------------------------------------------------------------
# machine


def _load() -> list[float]:
    return [float(x) for x in os.getloadavg()] if hasattr(os, 'getloadavg') else []


def machine_description() -> dict[str, Any]:
    """CPU count, platform and the versions of the libraries on the measured paths."""
    import cv2
    import PIL

    try:
        import onnxruntime

        ort_version = str(onnxruntime.__version__)
    except ImportError:
        ort_version = None
    return {
        'cpu_count': os.cpu_count(),
        'affinity_cpus': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None,
        'platform': platform.platform(),
        'processor': platform.machine(),
        'python': sys.version.split()[0],
        'numpy': np.__version__,
        'torch': torch.__version__,
        'torch_threads': torch.get_num_threads(),
        'onnxruntime': ort_version,
        'PIL': PIL.__version__,
        'opencv': cv2.__version__,
    }


# ---------------------------------------------------------------------------
# preprocessing


def _textured_image(width: int, height: int, seed: int) -> np.ndarray:
    """An (H, W, 3) uint8 RGB picture with detail at several scales (sky, road, edges), for JPEG timings."""
    import cv2

    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.float32)
    for cell, amp in ((64, 60.0), (16, 20.0), (4, 3.0)):
        small = rng.normal(0.0, amp, (height // cell + 1, width // cell + 1, 3)).astype(np.float32)
        img += cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    img += np.where(rows < 0.45, np.float32(170.0), np.float32(95.0))  # bright sky above a darker road
    for _ in range(12):  # hard-edged boxes: buildings, vehicles
        x0, y0 = int(rng.integers(0, width - 200)), int(rng.integers(height // 4, height - 150))
        img[y0 : y0 + int(rng.integers(60, 150)), x0 : x0 + int(rng.integers(80, 200))] += rng.normal(0, 50, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_jpegs(source: str = 'synth', quality: int = 90, seed: int = 7) -> list[bytes]:
    """Six 1600x900 JPEGs in nuScenes rig order.

    Args:
        source: ``'synth'``: the six cameras of a synthetic-world frame rendered at 1600x900 (a few seconds
            per camera); ``'texture'``: textured pictures with detail at several scales (fast).
        quality: JPEG quality (nuScenes' images are about 90).

    Raises:
        BenchError: unknown source or an image that cannot be encoded.
    """
    import cv2

    from ..rig import Rig

    rig = Rig.nuscenes(1600, 900)
    if source == 'synth':
        from ..data.synth_render import render_camera
        from ..data.synth_world import generate_world

        world = generate_world(seed, duration_s=2.0, start_ns=0, name='bench')
        state = world.state_at(1_000_000_000)
        images = [render_camera(world, state, cam).rgb for cam in rig.cameras]
    elif source == 'texture':
        images = [_textured_image(1600, 900, seed + i) for i in range(len(rig))]
    else:
        raise BenchError(f"bench images: expected 'synth' or 'texture', got {source!r}")
    out = []
    for rgb in images:
        ok, buf = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise BenchError('bench images: cannot encode a JPEG')
        out.append(buf.tobytes())
    return out


def preprocess_bench(
    repeats: int = 15, images: str = 'synth', threads: int = 2, warmup: int = 2
) -> tuple[dict[str, Timing], dict[str, Any]]:
    """Six 1600x900 JPEGs to the 704x256 input: ours (``threads`` threads and one thread) and the PIL baseline.

    Returns:
        ``(timings, info)``: timings keyed ``preprocess_ours``, ``preprocess_ours_1thread``, ``preprocess_pil``;
        info holds the ratio PIL / ours, the mean JPEG size and the agreement of the two paths.

    Raises:
        BenchError: the two paths' images disagree by more than interpolation differences.
    """
    from ..messages import MessageTypes
    from ..preprocess import Preprocessor, pil_baseline
    from ..rig import Rig

    jpegs = synthetic_jpegs(images)
    types = MessageTypes.rosbags('jazzy')
    rig = Rig.nuscenes(1600, 900)
    msgs = [
        types.make(
            'sensor_msgs/msg/CompressedImage',
            header=types.header(0, cam.name),
            format='jpeg',
            data=np.frombuffer(data, np.uint8),
        )
        for data, cam in zip(jpegs, rig.cameras)
    ]
    with Preprocessor(rig, (704, 256), threads=threads) as ours, Preprocessor(rig, (704, 256), threads=1) as single:
        transforms = ours.transforms
        a, b = ours(msgs), pil_baseline(jpegs, transforms)
        diff = float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
        if a.shape != b.shape or diff > 12.0:
            raise BenchError(f'bench preprocess: our images and the PIL baseline differ (mean |diff| {diff:.1f})')
        timings = interleaved_stats(
            {
                'preprocess_ours': lambda: ours(msgs),
                'preprocess_ours_1thread': lambda: single(msgs),
                'preprocess_pil': lambda: pil_baseline(jpegs, transforms),
            },
            repeats,
            warmup,
        )
    info = {
        'images': images,
        'jpeg_kb_mean': float(np.mean([len(j) for j in jpegs]) / 1024),
        'threads': threads,
        'ratio_pil_over_ours': timings['preprocess_pil'].median_s / timings['preprocess_ours'].median_s,
        'mean_abs_diff_ours_vs_pil': diff,
    }
    return timings, info


# ---------------------------------------------------------------------------
# output encoding


def encode_frame(grid: GridSpec = OCC3D_GRID, occupied: int = 30_000, seed: int = 0) -> Any:
    """A street-like :class:`~occ_perception.outputs.OccFrame` with exactly ``occupied`` occupied voxels.

    Buildings (manmade) and trees (vegetation) along two sides, cars (half of them moving, 4-12 m/s along
    x), pedestrians (1.5 m/s), and a ground layer (road, sidewalk, terrain) filled outwards from the ego
    vehicle until the count is reached; confidence everywhere; flow zero on the static world.

    Raises:
        BenchError: the grid is too small for the objects or for ``occupied`` voxels.
    """
    from ..outputs import OccFrame

    rng = np.random.default_rng(seed)
    sx, sy, sz = grid.shape
    if sz < 8 or sx < 40 or sy < 40:
        raise BenchError(f'encode_frame: grid {grid.shape} is too small (at least 40 x 40 x 8)')
    labels = np.full(grid.shape, 17, np.uint8)
    flow = np.zeros(grid.shape + (2,), np.float32)
    ground = int(np.clip(round(-grid.lower[2] / grid.voxel_size - 0.5), 0, sz - 2))  # layer holding z = 0
    top = min(sz, ground + 10)
    for side in (0.2, 0.8):  # building blocks with gaps, and trees in front of them
        y0 = int(side * sy)
        for x0 in range(5, sx - 30, 45):
            labels[x0 : x0 + 30, y0 - 2 : y0 + 2, ground + 1 : top] = 15
        for x0 in range(10, sx - 10, 25):
            yt = y0 + (4 if side < 0.5 else -6)
            labels[x0 : x0 + 3, yt : yt + 3, ground + 3 : ground + 7] = 16
    for k in range(20):  # cars 4.4 x 2.0 x 1.6 m near the road
        x0, y0 = int(rng.integers(5, sx - 16)), int(rng.integers(int(0.3 * sy), int(0.7 * sy) - 6))
        box = (slice(x0, x0 + 11), slice(y0, y0 + 5), slice(ground + 1, ground + 5))
        labels[box] = 4
        if k % 2 == 0:
            flow[box] = (rng.uniform(4.0, 12.0) * (1 if k % 4 else -1), rng.uniform(-0.5, 0.5))
    for _ in range(10):  # pedestrians on the sidewalks
        x0, y0 = int(rng.integers(5, sx - 5)), int(rng.choice([0.25, 0.75]) * sy)
        labels[x0, y0, ground + 1 : ground + 5] = 7
        flow[x0, y0, ground + 1 : ground + 5] = (0.0, 1.5)
    objects = int(np.count_nonzero(labels != 17))
    if objects > occupied:
        raise BenchError(f'encode_frame: the objects alone take {objects} voxels, more than {occupied}')
    # ground outwards from the ego vehicle: road in the middle band, sidewalks, terrain outside
    ix, iy = np.meshgrid(np.arange(sx), np.arange(sy), indexing='ij')
    free_cols = (labels[:, :, ground] == 17).reshape(-1)
    dist = np.hypot(ix - sx / 2 + 0.5, iy - sy / 2 + 0.5).reshape(-1)
    order = np.argsort(np.where(free_cols, dist, np.inf), kind='stable')[: occupied - objects]
    if order.size < occupied - objects or not free_cols[order].all():
        raise BenchError(f'encode_frame: grid {grid.shape} cannot hold {occupied} occupied voxels')
    rel = np.abs(iy.reshape(-1)[order] - sy / 2 + 0.5) / sy
    layer = labels[:, :, ground].reshape(-1)
    layer[order] = np.where(rel < 0.15, 11, np.where(rel < 0.27, 13, 14))
    labels[:, :, ground] = layer.reshape(sx, sy)
    confidence = rng.integers(100, 256, grid.shape, dtype=np.uint8)
    return OccFrame(stamp_ns=1_533_151_603_512_404_000, grid=grid, labels=labels, confidence=confidence, flow=flow)


def encode_bench(
    repeats: int = 30, grid: GridSpec = OCC3D_GRID, occupied: int = 30_000, warmup: int = 3
) -> tuple[dict[str, Timing], dict[str, Any]]:
    """Each output message's encoding from a fresh frame, and all of them from one frame (``encode_total``).

    Messages through the rosbags typestore's classes (:meth:`MessageTypes.rosbags`); markers with a
    :class:`~occ_perception.outputs.VoxelPointCache` warmed by the warm-up calls, as the node keeps one.

    Returns:
        ``(timings, info)``: timings keyed ``encode_<message>`` and ``encode_total`` (all six) and
        ``encode_total_without_markers`` (the five of the 10 ms target; markers are rate-limited);
        info holds the frame's occupied, surface and moving voxel counts.
    """
    from ..messages import MessageTypes
    from ..outputs import (
        OccFrame,
        VoxelPointCache,
        costmap_msg,
        marker_array_msg,
        occupancy_flow_msg,
        pointcloud_msg,
        semantic_occupancy_msg,
        voxel_grid_msg,
    )

    base = encode_frame(grid, occupied)
    types = MessageTypes.rosbags('jazzy')
    cache = VoxelPointCache(types, grid)

    def fresh() -> OccFrame:
        return _fresh(base)

    builders: dict[str, Callable[[OccFrame], object]] = {
        'semantics': lambda f: semantic_occupancy_msg(f, types),
        'flow': lambda f: occupancy_flow_msg(f, types),
        'points': lambda f: pointcloud_msg(f, types),
        'markers': lambda f: marker_array_msg(f, types, cache=cache),
        'costmap': lambda f: costmap_msg(f, types),
        'voxel_grid': lambda f: voxel_grid_msg(f, types),
    }

    def all_of(names: Sequence[str]) -> Callable[[], object]:
        def run() -> object:
            frame = fresh()
            return [builders[n](frame) for n in names]

        return run

    def one(build: Callable[[OccFrame], object]) -> Callable[[], object]:
        return lambda: build(fresh())

    fns: dict[str, Callable[[], object]] = {f'encode_{name}': one(fn) for name, fn in builders.items()}
    fns['encode_total'] = all_of(ENCODE_MESSAGES)
    fns['encode_total_without_markers'] = all_of([n for n in ENCODE_MESSAGES if n != 'markers'])
    timings = interleaved_stats(fns, repeats, warmup)
    speed = np.hypot(base.flow[..., 0], base.flow[..., 1])
    info = {
        'grid': list(grid.shape),
        'occupied_voxels': int(base.occupied_indices.size),
        'surface_voxels': int(base.surface_indices.size),
        'moving_voxels': int(np.count_nonzero((speed > 0.5) & (base.labels != 17))),
        'message_bytes': {name: int(len(_cdr_bytes(builders[name](fresh()), name))) for name in builders},
    }
    return timings, info


def _fresh(base: Any) -> Any:
    """A new :class:`~occ_perception.outputs.OccFrame` with ``base``'s arrays: nothing cached from earlier messages."""
    from ..outputs import OccFrame

    return OccFrame(
        stamp_ns=base.stamp_ns, grid=base.grid, labels=base.labels, confidence=base.confidence, flow=base.flow
    )


def rclpy_marker_bench(
    publisher: Callable[[Any, str], Any] | None,
    repeats: int = 30,
    grid: GridSpec = OCC3D_GRID,
    occupied: int = 30_000,
    warmup: int = 3,
) -> tuple[dict[str, Timing], dict[str, Any]]:
    """The MarkerArray through rclpy, where a ROS 2 Python environment is sourced: our
    :func:`~occ_perception.outputs.marker_array_msg` built with the generated message classes
    (:meth:`MessageTypes.python_modules`, a warmed :class:`~occ_perception.outputs.VoxelPointCache`) and
    published on a real rclpy publisher (its own context, depth 1, no subscriber: the publish cost is rclpy's
    conversion to the C message plus the middleware write), against publishing every occupied voxel as a Point.

    - ``markers_rclpy_build``, ``markers_rclpy_publish`` (a built message), ``markers_rclpy_total`` (both);
    - ``markers_rclpy_every_voxel_publish`` (baseline): publishing
      :func:`~occ_perception.runtime.baselines.naive_marker_array_msg`'s message (built once; its per-voxel
      Python build is the ``naive`` stage's baseline).

    Args:
        publisher: ``publisher(msg_type, topic)``, a context manager with ``publish(msg)``
            (:class:`occ_perception.ros.publisher.BarePublisher`, which the CLI passes where rclpy imports);
            None skips this bench.

    Returns:
        ``(timings, info)``; ``({}, {'skipped': reason})`` without a publisher.
    """
    if publisher is None:
        return {}, {'skipped': 'no rclpy publisher (rclpy not importable: source a ROS 2 setup.bash)'}
    from ..messages import MessageTypes
    from ..outputs import VoxelPointCache, marker_array_msg
    from .baselines import naive_marker_array_msg

    base = encode_frame(grid, occupied)
    types = MessageTypes.python_modules()
    cache = VoxelPointCache(types, grid)
    with publisher(types.resolve('visualization_msgs/msg/MarkerArray'), '~/markers') as pub:
        built = marker_array_msg(_fresh(base), types, cache=cache)
        every_voxel = naive_marker_array_msg(_fresh(base), types)

        def total() -> None:
            pub.publish(marker_array_msg(_fresh(base), types, cache=cache))

        timings = interleaved_stats(
            {
                'markers_rclpy_build': lambda: marker_array_msg(_fresh(base), types, cache=cache),
                'markers_rclpy_publish': lambda: pub.publish(built),
                'markers_rclpy_total': total,
                'markers_rclpy_every_voxel_publish': lambda: pub.publish(every_voxel),
            },
            repeats,
            warmup,
        )

    def points(msg: Any) -> int:
        return sum(len(m.points) for m in msg.markers if m.ns == 'occupancy')

    info = {
        'grid': list(grid.shape),
        'occupied_voxels': int(base.occupied_indices.size),
        'points_ours': points(built),
        'points_every_voxel': points(every_voxel),
        'rmw_implementation': os.environ.get('RMW_IMPLEMENTATION', 'default'),
        'ros_distro': os.environ.get('ROS_DISTRO', 'unknown'),
    }
    return timings, info


_MSGTYPES = {
    'semantics': 'occ_perception_msgs/msg/SemanticOccupancy',
    'flow': 'occ_perception_msgs/msg/OccupancyFlow',
    'points': 'sensor_msgs/msg/PointCloud2',
    'markers': 'visualization_msgs/msg/MarkerArray',
    'costmap': 'nav_msgs/msg/OccupancyGrid',
    'voxel_grid': 'foxglove_msgs/msg/VoxelGrid',
}


def _cdr_bytes(msg: object, name: str) -> bytes:
    """CDR bytes of an encode-stage message (jazzy typestore), for the report's message sizes."""
    from ..messages import rosbags_typestore

    return bytes(rosbags_typestore('jazzy').serialize_cdr(msg, _MSGTYPES[name]))


def splat_bench(
    workdir: Path, repeats: int = 15, threads: int = 0, grid: GridSpec | None = None, warmup: int = 2
) -> tuple[dict[str, Timing], dict[str, Any]]:
    """Splat for M1 geometry (optionally on another ``grid``), three ways on the same inputs, interleaved:
    onnxruntime CPU running our table graph (``splat_ort``), onnxruntime CPU running the ScatterElements(add)
    baseline graph (``splat_scatter_ort``, :func:`~occ_perception.runtime.baselines.scatter_splat_onnx`) and
    torch eager ``index_add`` over precomputed ranks (``splat_torch``).

    Returns:
        ``(timings, info)``: info holds the BEV size, the frustum point count inside the grid and the largest
        difference of each path from the table graph.

    Raises:
        BenchError: the outputs of two paths are not allclose (atol 1e-4).
    """
    import dataclasses
    import warnings

    from ..model.config import get_config
    from ..model.splat import Splat
    from ..model.splat_reference import splat_index_add, splat_ranks
    from ..model.splat_tables import build_splat_tables, frustum_cells, splat_table_names
    from ..rig import Rig
    from .baselines import scatter_splat_onnx
    from .ort_backend import OnnxRuntimeBackend

    cfg = get_config('flashocc-m1')
    if grid is not None:
        cfg = dataclasses.replace(cfg, grid=grid)
    matrices = Rig.nuscenes().matrices(*cfg.image_size)
    tables = build_splat_tables(cfg, matrices)
    names = splat_table_names()
    w, h = cfg.feature_size
    gen = torch.Generator().manual_seed(0)
    depth = torch.rand(6, cfg.num_depth_bins, h, w, generator=gen).softmax(1)
    feat = torch.randn(6, cfg.context_channels, h, w, generator=gen)
    module = Splat(cfg.bev_size)
    tag = 'x'.join(str(n) for n in cfg.bev_size)
    path = workdir / f'splat_m1_{tag}.onnx'
    args = (depth, feat, *(torch.from_numpy(tables[n]) for n in names))
    dynamic = {n: {i: f'{n}_{i}' for i in range(tables[n].ndim)} for n in names if n != 'splat_cell_index'}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=['depth', 'feat', *names],
            output_names=['bev'],
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,
        )
    backend = OnnxRuntimeBackend(path, threads=threads)
    feeds = {'depth': depth.numpy(), 'feat': feat.numpy(), **tables}

    # torch reference with BEVPoolv2-style precomputed ranks: gather, multiply, index_add
    ranks = splat_ranks(frustum_cells(cfg, matrices), tuple(depth.shape))
    scatter = OnnxRuntimeBackend(
        scatter_splat_onnx(workdir / f'splat_scatter_{tag}.onnx', cfg.bev_size, cfg.context_channels), threads=threads
    )
    scatter_feeds = {
        'depth': feeds['depth'],
        'feat': feeds['feat'],
        **{name: r.numpy() for name, r in zip(('ranks_depth', 'ranks_feat', 'ranks_bev'), ranks)},
    }

    def torch_splat() -> torch.Tensor:
        return splat_index_add(depth, feat, ranks, cfg.bev_size)

    ort_out = backend.run(feeds)['bev']
    scatter_out = scatter.run(scatter_feeds)['bev']
    with torch.inference_mode():
        ref = torch_splat().numpy()
        for name, other in (('torch index_add', ref), ('ScatterElements baseline', scatter_out)):
            if other.shape != ort_out.shape or not np.allclose(ort_out, other, atol=1e-4):
                raise BenchError(f'bench splat: the table graph and the {name} differ')
        # interleave the three so that load from other processes hits all alike
        timings = interleaved_stats(
            {
                'splat_ort': lambda: backend.run(feeds),
                'splat_scatter_ort': lambda: scatter.run(scatter_feeds),
                'splat_torch': torch_splat,
            },
            repeats,
            warmup,
        )
    info = {
        'bev_size': list(cfg.bev_size),
        'frustum_points_in_grid': int(ranks[0].numel()),
        'max_abs_diff_torch': float(np.abs(ort_out - ref).max()),
        'max_abs_diff_scatter': float(np.abs(ort_out - scatter_out).max()),
    }
    return timings, info


def model_bench(config_name: str, workdir: Path, repeats: int, threads: int = 0) -> Timing:
    """End-to-end onnxruntime CPU time [s/frame] of a randomly initialised ``config_name`` with six cameras."""
    from ..model.config import get_config
    from ..model.network import OccNet
    from .export import export_onnx, sample_inputs
    from .ort_backend import OnnxRuntimeBackend

    torch.manual_seed(0)
    net = OccNet(get_config(config_name)).eval()
    path = export_onnx(net, workdir / f'{config_name}.onnx')
    backend = OnnxRuntimeBackend(path, threads=threads)
    feeds = sample_inputs(net)
    return time_stats(f'{config_name}_ort', lambda: backend.run(feeds), repeats)


def history_bench(
    workdir: Path,
    ks: Sequence[int] = (0, 2, 8),
    repeats: int = 10,
    threads: int = 0,
    recompute: bool = True,
    warmup: int = 2,
) -> tuple[dict[str, Timing], dict[str, Any]]:
    """``tiny`` per frame on onnxruntime CPU with K history frames, for each K in ``ks``, two ways, interleaved:

    - ``history_cached_k<K>`` (ours): :meth:`~occ_perception.temporal.BevCache.prepare`, one network pass
      with the K cached BEV features warped in the graph, :meth:`~occ_perception.temporal.BevCache.push`;
      frames at 12 Hz with the ego moving at 10 m/s and a cache filled beforehand, so every slot is valid;
    - ``history_recompute_k<K>`` (baseline, K > 0): K extra passes of the image encoder
      (:func:`~occ_perception.runtime.baselines.export_encoder_onnx`, up to the cached feature) to recompute
      the K history features, then the same network pass with them.

    Returns:
        ``(timings, info)``: info holds the ks and, per K, the ratio of each way to ``history_cached_k0``
        (when 0 is among ``ks``).

    Raises:
        BenchError: ``ks`` empty or negative, or the encoder-only graph disagrees with the network's
        ``bev_feature``.
    """
    from ..geometry import Transform
    from ..model.config import get_config
    from ..model.network import OccNet
    from ..temporal import NS, BevCache, TemporalConfig
    from .baselines import export_encoder_onnx
    from .export import export_onnx, sample_inputs
    from .ort_backend import OnnxRuntimeBackend

    if not ks or min(ks) < 0:
        raise BenchError(f'history ks: expected non-negative history lengths, got {list(ks)}')
    fns: dict[str, Callable[[], object]] = {}
    period = NS // 12  # frames at 12 Hz, the ego at 10 m/s along x

    def pose(stamp: int) -> Transform:
        return Transform(translation=np.array([10.0 * stamp / NS, 0.0, 0.0]))

    for k in ks:
        torch.manual_seed(0)
        cfg = get_config('tiny', history=k)
        net = OccNet(cfg).eval()
        backend = OnnxRuntimeBackend(export_onnx(net, workdir / f'tiny_k{k}.onnx'), threads=threads)
        feeds = sample_inputs(net)
        base = {name: feeds[name] for name in feeds if not name.startswith('history_')}
        encoder: Any = None
        if recompute and k > 0:  # each K's own encoder: what its cache holds (its history_proj)
            encoder = OnnxRuntimeBackend(
                export_encoder_onnx(net, feeds, workdir / f'tiny_encoder_k{k}.onnx'), threads=threads
            )
            got, want = encoder.run(base)['bev_feature'], backend.run(feeds)['bev_feature']
            if got.shape != want.shape or not np.allclose(got, want, atol=1e-4):
                raise BenchError('bench history: the encoder-only graph and the network disagree on bev_feature')
        x_size, y_size = cfg.bev_size
        cache = BevCache(
            TemporalConfig(offsets=cfg.history_offsets, history_span=max(1.5, 0.5 * k + 0.5)),
            cfg.grid,
            (cfg.cache_channels, y_size, x_size),
        )
        clock = {'stamp': 0}
        rng = np.random.default_rng(k)
        for i in range(int(cache.config.history_span * 12) + 1):  # history_span of frames before the first timed one
            clock['stamp'] = i * period
            feature = rng.standard_normal(cache.feature_shape).astype(np.float32)
            cache.push(clock['stamp'], pose(clock['stamp']), feature)

        def cached(backend: Any = backend, base: dict = base, cache: BevCache = cache, clock: dict = clock) -> object:
            if not cache.size:  # K = 0: the network alone
                return backend.run(base)
            clock['stamp'] += period
            stamp = clock['stamp']
            history = cache.prepare(stamp, pose(stamp))
            out = backend.run({**base, **history.feeds()})
            cache.push(stamp, pose(stamp), out['bev_feature'])
            return out

        fns[f'history_cached_k{k}'] = cached
        if recompute and k > 0:

            def recomputed(
                backend: Any = backend, encoder: Any = encoder, feeds: dict = feeds, base: dict = base, k: int = k
            ) -> object:
                bev = np.stack([encoder.run(base)['bev_feature'] for _ in range(k)])
                return backend.run({**feeds, 'history_bev': bev})

            fns[f'history_recompute_k{k}'] = recomputed
    timings = interleaved_stats(fns, repeats, warmup)
    info: dict[str, Any] = {'ks': [int(k) for k in ks], 'config': 'tiny', 'cameras': 6}
    if 0 in ks:
        zero = timings['history_cached_k0'].median_s
        info['ratio_to_cached_k0'] = {name: t.median_s / zero for name, t in timings.items()}
    return timings, info


def naive_bench(
    repeats: int = 3, grid: GridSpec = OCC3D_GRID, occupied: int = 30_000, warmup: int = 1
) -> tuple[dict[str, Timing], dict[str, Any]]:
    """Message building, ours against the naive baselines of :mod:`~occ_perception.runtime.baselines`, interleaved,
    on the :func:`encode_frame` frame through the rosbags typestore's classes:

    - ``fill_semantics_ours`` / ``fill_semantics_naive``: SemanticOccupancy (uint8[] labels and confidence),
      bytes copy against assignment voxel by voxel;
    - ``fill_flow_ours`` / ``fill_flow_naive``: OccupancyFlow (uint32[] indices, float32[] velocities);
    - ``markers_ours`` / ``markers_naive``: MarkerArray, ours (surface voxels, :class:`VoxelPointCache` warmed
      by the warm-up) against one Point made per occupied voxel in a Python loop.

    Returns:
        ``(timings, info)``: info holds the ratios naive / ours, the marker point counts and whether the
        CDR bytes of the filled messages are equal.

    Raises:
        BenchError: a naive message's CDR bytes differ from ours, or our marker points are not a subset of the
        naive ones.
    """
    from ..messages import MessageTypes
    from ..outputs import OccFrame, VoxelPointCache, marker_array_msg, occupancy_flow_msg, semantic_occupancy_msg
    from .baselines import naive_marker_array_msg, naive_occupancy_flow_msg, naive_semantic_occupancy_msg

    base = encode_frame(grid, occupied)
    types = MessageTypes.rosbags('jazzy')
    cache = VoxelPointCache(types, grid)

    def fresh() -> OccFrame:
        return _fresh(base)

    for name, ours_fn, naive_fn in (
        ('semantics', semantic_occupancy_msg, naive_semantic_occupancy_msg),
        ('flow', occupancy_flow_msg, naive_occupancy_flow_msg),
    ):
        if _cdr_bytes(ours_fn(fresh(), types), name) != _cdr_bytes(naive_fn(fresh(), types), name):
            raise BenchError(f'bench naive: the element-by-element {name} message differs from ours')

    def marker_points(msg: Any) -> set[tuple[float, float, float]]:
        return {(p.x, p.y, p.z) for m in msg.markers if m.ns == 'occupancy' for p in m.points}

    surface_points = marker_points(marker_array_msg(fresh(), types, tiles=()))  # the voxels our cubes cover
    naive_points = marker_points(naive_marker_array_msg(fresh(), types))
    if not surface_points <= naive_points:
        raise BenchError('bench naive: our marker voxels are not all among the per-voxel baseline points')
    ours_points = [
        p for m in marker_array_msg(fresh(), types, cache=cache).markers if m.ns == 'occupancy' for p in m.points
    ]
    timings = interleaved_stats(
        {
            'fill_semantics_ours': lambda: semantic_occupancy_msg(fresh(), types),
            'fill_semantics_naive': lambda: naive_semantic_occupancy_msg(fresh(), types),
            'fill_flow_ours': lambda: occupancy_flow_msg(fresh(), types),
            'fill_flow_naive': lambda: naive_occupancy_flow_msg(fresh(), types),
            'markers_ours': lambda: marker_array_msg(fresh(), types, cache=cache),
            'markers_naive': lambda: naive_marker_array_msg(fresh(), types),
        },
        repeats,
        warmup,
    )
    info = {
        'grid': list(grid.shape),
        'occupied_voxels': int(base.occupied_indices.size),
        'cdr_equal': {'semantics': True, 'flow': True},
        'marker_points_ours': len(ours_points),
        'marker_voxels_ours': len(surface_points),
        'marker_points_naive': len(naive_points),
        'ratio_naive_over_ours': {
            name: timings[f'{name}_naive'].median_s / timings[f'{name}_ours'].median_s
            for name in ('fill_semantics', 'fill_flow', 'markers')
        },
    }
    return timings, info


CURVE_SIZES: tuple[int, ...] = (100, 200, 400)
"""Grid sizes (cells along x and y) of the scaling curves."""
CURVE_HEIGHTS: tuple[int, ...] = (16, 32)
"""Grid heights (voxel layers) of the output-encoding scaling curve."""
CURVE_KS: tuple[int, ...] = tuple(range(9))
"""History lengths K of the network scaling curve."""


def curve_grid(size: int, height: int) -> GridSpec:
    """The (size, size, height) grid over x, y in [-40, 40) m (cell 80 / size m, cubic voxels), z from -1 m."""
    return GridSpec(lower=(-40.0, -40.0, -1.0), size=(size, size, height), voxel_size=80.0 / size)


def curve_occupied(size: int) -> int:
    """Occupied voxels of the encoding curve: 30,000 at 200 x 200, proportional to the cells, at least 12,000."""
    return max(30_000 * size * size // 40_000, 12_000)


def _curve_point(t: Timing, **params: Any) -> dict[str, Any]:
    return {**params, **t.as_ms()}


def scaling_curves(
    workdir: Path,
    sizes: Sequence[int] = CURVE_SIZES,
    heights: Sequence[int] = CURVE_HEIGHTS,
    ks: Sequence[int] = CURVE_KS,
    repeats: int = 3,
    threads: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    """Cost against grid size (splat, output encoding) and against history length K (network).

    Returns:
        ``{'splat': [...], 'encode': [...], 'history': [...]}``, each point a dict of its parameters
        (``size``, ``height``, ``k``, ``path``) and the :meth:`Timing.as_ms` figures.
    """
    curves: dict[str, list[dict[str, Any]]] = {'splat': [], 'encode': [], 'history': []}
    for size in sizes:
        t, _ = splat_bench(workdir, repeats, threads, grid=curve_grid(size, 16), warmup=1)
        for path, key in (('ours', 'splat_ort'), ('scatter', 'splat_scatter_ort'), ('torch', 'splat_torch')):
            curves['splat'].append(_curve_point(t[key], size=size, path=path))
    for height in heights:
        for size in sizes:
            occupied = curve_occupied(size)
            t, _ = encode_bench(repeats, curve_grid(size, height), occupied, warmup=1)
            for path, key in (('all', 'encode_total'), ('without_markers', 'encode_total_without_markers')):
                curves['encode'].append(_curve_point(t[key], size=size, height=height, occupied=occupied, path=path))
    if ks:
        t, _ = history_bench(workdir, ks, repeats, threads, warmup=1)
        for k in ks:
            curves['history'].append(_curve_point(t[f'history_cached_k{k}'], k=k, path='cached'))
            if k > 0:
                curves['history'].append(_curve_point(t[f'history_recompute_k{k}'], k=k, path='recompute'))
            else:  # K = 0: nothing to recompute, both ways are the network alone
                curves['history'].append(_curve_point(t['history_cached_k0'], k=0, path='recompute'))
    return curves


def write_plots(curves: dict[str, list[dict[str, Any]]], out_dir: str | Path) -> list[Path]:
    """PNG plots of :func:`scaling_curves` (median with a 10th-90th percentile band) into ``out_dir``:
    ``splat_vs_grid.png``, ``encode_vs_grid.png``, ``network_vs_history.png`` (those with points).

    Returns:
        The written paths.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def draw(ax: Any, points: list[dict[str, Any]], x_key: str, label: str, marker: str) -> None:
        points = sorted(points, key=lambda p: p[x_key])
        x = [p[x_key] ** 2 if x_key == 'size' else p[x_key] for p in points]
        ax.plot(x, [p['median_ms'] for p in points], marker=marker, label=label)
        ax.fill_between(x, [p['p10_ms'] for p in points], [p['p90_ms'] for p in points], alpha=0.2)

    def match(**want: Any) -> Callable[[dict[str, Any]], bool]:
        return lambda p: all(p[key] == value for key, value in want.items())

    Line = tuple[Callable[[dict[str, Any]], bool], str, str]  # point filter, legend label, marker
    specs: list[tuple[str, str, str, str, str, list[Line]]] = [
        (
            'splat',
            'splat_vs_grid.png',
            'size',
            'BEV grid cells (X x Y) over 80 m x 80 m',
            'Splat, M1 frustum (6 x 88 x 16 x 44), onnxruntime CPU\n(heights do not enter the splat)',
            [
                (match(path='ours'), 'ours: table graph (ort)', 'o'),
                (match(path='scatter'), 'baseline: ScatterElements add (ort)', 's'),
                (match(path='torch'), 'reference: torch index_add', '^'),
            ],
        ),
        (
            'encode',
            'encode_vs_grid.png',
            'size',
            'grid cells (X x Y) over 80 m x 80 m',
            'Output encoding per frame, rosbags types\n(occupied voxels: 30,000 at 200x200, in proportion to the cells)',
            [
                (
                    match(height=h, path=m),
                    f'{h} heights, {"all six messages" if m == "all" else "without markers"}',
                    'o' if m == 'all' else 's',
                )
                for h in sorted({p['height'] for p in curves.get('encode', [])})
                for m in ('all', 'without_markers')
            ],
        ),
        (
            'history',
            'network_vs_history.png',
            'k',
            'history length K (frames)',
            'tiny per frame, onnxruntime CPU, 6 cameras',
            [
                (match(path='cached'), 'ours: temporal cache (1 pass + warp)', 'o'),
                (match(path='recompute'), 'baseline: recompute K frames', 's'),
            ],
        ),
    ]
    for key, filename, x_key, x_label, title, lines in specs:
        points = curves.get(key, [])
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
        for select, label, marker in lines:
            chosen = [p for p in points if select(p)]
            if chosen:
                draw(ax, chosen, x_key, label, marker)
        if x_key == 'size':
            ax.set_xscale('log')
            ax.set_yscale('log')
            sizes = sorted({p['size'] for p in points})
            ax.set_xticks([n * n for n in sizes], [f'{n}x{n}' for n in sizes])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.yaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2.0, 5.0)))
            ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
        else:
            ax.set_xticks(sorted({p[x_key] for p in points}))
            ax.set_ylim(bottom=0)
        ax.set_xlabel(x_label)
        ax.set_ylabel('wall time per call [ms] (median, 10-90 % band)')
        ax.set_title(title)
        ax.grid(True, which='both', alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / filename
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def _ms(t: Timing) -> str:
    cpu = '' if t.cpu_median_s is None else f'  cpu {t.cpu_median_s * 1e3:7.2f}'
    return f'{t.median_s * 1e3:8.2f} ms  [{t.p10_s * 1e3:7.2f} .. {t.p90_s * 1e3:7.2f}]{cpu}'


def run_bench(
    repeats: int = 15,
    m0_repeats: int = 5,
    threads: int = 0,
    skip_m0: bool = False,
    stages: Sequence[str] = STAGES,
    images: str = 'synth',
    json_path: str | Path | None = None,
    print_fn: Callable[[str], None] = print,
    naive_repeats: int = 3,
    history_ks: Sequence[int] = (0, 2, 8),
    plots_dir: str | Path | None = None,
    curve_repeats: int = 3,
    curve_sizes: Sequence[int] = CURVE_SIZES,
    curve_heights: Sequence[int] = CURVE_HEIGHTS,
    curve_ks: Sequence[int] = CURVE_KS,
    encode_grid: GridSpec = OCC3D_GRID,
    encode_occupied: int = 30_000,
    marker_publisher: Callable[[Any, str], Any] | None = None,
) -> dict[str, Any]:
    """Run the chosen stages, print a table and optionally write it as JSON.

    Args:
        repeats: timed calls per figure after warm-up (``m0_repeats`` for flashocc-m0).
        threads: onnxruntime intra-op threads (0: its default).
        stages: a subset of :data:`STAGES`.
        images: JPEG source of the preprocess stage (:func:`synthetic_jpegs`).
        json_path: where to write the report (figures in ms, derived ratios, machine, load averages).
        naive_repeats: timed calls of the ``naive`` stage (its baselines take about a second each).
        history_ks: history lengths K of the ``history`` stage.
        plots_dir: when given, also measure the scaling curves (:func:`scaling_curves`, ``curve_repeats``
            calls per point over ``curve_sizes``, ``curve_heights``, ``curve_ks``) and write them as PNG there.
        encode_grid, encode_occupied: the frame of the ``encode`` and ``naive`` stages (:func:`encode_frame`).
        marker_publisher: a real publisher for the ``encode`` stage's MarkerArray through rclpy
            (:func:`rclpy_marker_bench`; None: that part is skipped).

    Returns:
        The report: ``{'machine', 'load_before', 'load_after', 'stages', 'repeats', 'figures', 'derived', 'info',
        'curves', 'plots'}``; ``figures`` maps a name to ``{'median_ms', 'p10_ms', 'p90_ms', 'cpu_median_ms',
        'repeats'}``; ``curves`` is :func:`scaling_curves` (empty without ``plots_dir``), ``plots`` the PNG paths.

    Raises:
        BenchError: an unknown stage or fewer than one repeat.
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise BenchError(f'stages: expected a subset of {STAGES}, got {list(stages)}')
    if min(repeats, m0_repeats, naive_repeats, curve_repeats) < 1:
        raise BenchError(
            f'repeats: expected at least 1, got {repeats}, {m0_repeats}, {naive_repeats} and {curve_repeats}'
        )
    load_before = _load()
    machine = machine_description()
    figures: dict[str, Timing] = {}
    derived: dict[str, float] = {}
    info: dict[str, Any] = {}
    rows: list[tuple[str, str, str]] = []
    print_fn(
        f'{machine["cpu_count"]} CPUs, load {" ".join(f"{x:.2f}" for x in load_before)}; torch {torch.__version__} '
        f'({torch.get_num_threads()} threads), onnxruntime threads {threads or "default"}; '
        'wall-time median [10th .. 90th percentile] of repeats after warm-up, and the median process CPU time'
    )
    if 'preprocess' in stages:
        t, info['preprocess'] = preprocess_bench(repeats, images)
        figures.update(t)
        derived['preprocess_ratio_pil_over_ours'] = info['preprocess']['ratio_pil_over_ours']
        rows += [
            (
                'six 1600x900 JPEGs -> 704x256, ours (reduced decode, 2 threads)',
                _ms(t['preprocess_ours']),
                'target <= 20 ms',
            ),
            ('six 1600x900 JPEGs -> 704x256, ours (1 thread)', _ms(t['preprocess_ours_1thread']), ''),
            ('six 1600x900 JPEGs -> 704x256, PIL full decode + resize', _ms(t['preprocess_pil']), 'baseline'),
            ('preprocess ratio PIL / ours', f'{derived["preprocess_ratio_pil_over_ours"]:8.2f} x', 'target >= 4'),
        ]
    if 'encode' in stages:
        t, info['encode'] = encode_bench(repeats, encode_grid, encode_occupied)
        figures.update(t)
        shape = 'x'.join(str(n) for n in info['encode']['grid'])
        for name in ENCODE_MESSAGES:
            rows.append(
                (f'encode {name} ({shape}, {info["encode"]["occupied_voxels"]} occupied)', _ms(t[f'encode_{name}']), '')
            )
        rows.append(('encode total, all six from one frame', _ms(t['encode_total']), ''))
        rows.append(
            (
                'encode total without markers (semantics, flow, points, costmap, VoxelGrid)',
                _ms(t['encode_total_without_markers']),
                'target <= 10 ms',
            )
        )
        t, info['encode_rclpy'] = rclpy_marker_bench(marker_publisher, repeats, encode_grid, encode_occupied)
        figures.update(t)
        if 'skipped' in info['encode_rclpy']:
            rows.append(('MarkerArray through rclpy: skipped, ' + info['encode_rclpy']['skipped'], '', ''))
        else:
            r = info['encode_rclpy']
            where = f'rclpy, {r["ros_distro"]}, {r["rmw_implementation"]}'
            rows += [
                (f'MarkerArray build ({r["points_ours"]} cubes), {where}', _ms(t['markers_rclpy_build']), ''),
                (f'MarkerArray publish, {where}', _ms(t['markers_rclpy_publish']), ''),
                (f'MarkerArray build + publish, {where}', _ms(t['markers_rclpy_total']), 'target <= 30 ms'),
                (
                    f'MarkerArray publish, every occupied voxel ({r["points_every_voxel"]} points), {where}',
                    _ms(t['markers_rclpy_every_voxel_publish']),
                    'baseline',
                ),
            ]
    if 'naive' in stages:
        t, info['naive'] = naive_bench(naive_repeats, encode_grid, encode_occupied)
        figures.update(t)
        ratios = info['naive']['ratio_naive_over_ours']
        derived.update({f'{name}_ratio_naive_over_ours': r for name, r in ratios.items()})
        shape = 'x'.join(str(n) for n in info['naive']['grid'])
        for name, what in (('fill_semantics', 'SemanticOccupancy'), ('fill_flow', 'OccupancyFlow')):
            rows += [
                (f'{what} {shape}, ours (bytes copy)', _ms(t[f'{name}_ours']), ''),
                (f'{what} {shape}, element-by-element fill', _ms(t[f'{name}_naive']), 'baseline, same CDR bytes'),
            ]
        rows += [
            (
                f'MarkerArray, ours ({info["naive"]["marker_voxels_ours"]} surface voxels in '
                f'{info["naive"]["marker_points_ours"]} cubes, cached)',
                _ms(t['markers_ours']),
                'target <= 30 ms',
            ),
            (
                f'MarkerArray, per-voxel Python ({info["naive"]["marker_points_naive"]} points)',
                _ms(t['markers_naive']),
                'baseline',
            ),
            (
                'naive / ours: semantics, flow, markers',
                ' '.join(f'{ratios[n]:.1f}x' for n in ('fill_semantics', 'fill_flow', 'markers')),
                '',
            ),
        ]
    curves: dict[str, list[dict[str, Any]]] = {}
    plots: list[Path] = []
    with tempfile.TemporaryDirectory(prefix='occ-bench-') as tmp:
        work = Path(tmp)
        if 'splat' in stages:
            t, info['splat'] = splat_bench(work, repeats, threads)
            figures.update(t)
            ours = t['splat_ort'].median_s
            derived['splat_ratio_ort_over_torch'] = ours / t['splat_torch'].median_s
            derived['splat_ratio_scatter_over_ours'] = t['splat_scatter_ort'].median_s / ours
            rows += [
                ('splat M1 geometry, onnxruntime CPU (table graph)', _ms(t['splat_ort']), 'ours'),
                ('splat M1 geometry, onnxruntime CPU ScatterElements(add)', _ms(t['splat_scatter_ort']), 'baseline'),
                ('splat M1 geometry, torch eager index_add', _ms(t['splat_torch']), 'reference'),
                ('splat ratio onnxruntime / torch', f'{derived["splat_ratio_ort_over_torch"]:8.2f} x', 'target <= 1.5'),
                ('splat ratio ScatterElements / ours', f'{derived["splat_ratio_scatter_over_ours"]:8.2f} x', ''),
            ]
        if 'network' in stages:
            tiny = model_bench('tiny', work, repeats, threads)
            figures['tiny_ort'] = tiny
            derived['tiny_fps'] = 1.0 / tiny.median_s
            rows.append(
                (
                    'tiny end to end, onnxruntime CPU, 6 cameras',
                    _ms(tiny),
                    f'{derived["tiny_fps"]:.1f} frames/s, target >= 5',
                )
            )
            if not skip_m0:
                m0 = model_bench('flashocc-m0', work, m0_repeats, threads)
                figures['m0_ort'] = m0
                rows.append(('flashocc-m0 end to end, onnxruntime CPU, 6 cameras', _ms(m0), ''))
        if 'history' in stages:
            t, info['history'] = history_bench(work, history_ks, repeats, threads)
            figures.update(t)
            for name, ratio in info['history'].get('ratio_to_cached_k0', {}).items():
                derived[f'{name}_over_cached_k0'] = ratio
            for k in history_ks:
                ratio = info['history'].get('ratio_to_cached_k0', {})
                note = f'{ratio[f"history_cached_k{k}"]:.2f}x of K=0' if ratio else ''
                if k == max(history_ks) and k > 0 and ratio:
                    note += ', target <= 1.3x'
                rows.append(
                    (f'tiny K={k}, temporal cache (prepare, 1 pass + warp, push)', _ms(t[f'history_cached_k{k}']), note)
                )
                if k > 0:
                    note = f'{ratio[f"history_recompute_k{k}"]:.2f}x of K=0' if ratio else ''
                    rows.append(
                        (
                            f'tiny K={k}, recompute {k} history frames',
                            _ms(t[f'history_recompute_k{k}']),
                            f'baseline {note}',
                        )
                    )
        if plots_dir is not None:
            curves = scaling_curves(work, curve_sizes, curve_heights, curve_ks, curve_repeats, threads)
            plots = write_plots(curves, plots_dir)
            rows.append(('scaling curves', f'{len(plots)} PNG', str(plots_dir)))
    load_after = _load()
    rows.append(
        (
            '1-minute load average before / after (other processes slow all figures)',
            ' '.join(f'{x:.2f}' for x in load_before[:1]) + ' / ' + ' '.join(f'{x:.2f}' for x in load_after[:1]),
            f'{machine["cpu_count"]} CPUs',
        )
    )
    width = max(len(r[0]) for r in rows)
    print_fn('-' * (width + 60))
    for name, value, note in rows:
        print_fn(f'{name:<{width}}  {value:>50}  {note}')
    print_fn('-' * (width + 60))
    report: dict[str, Any] = {
        'machine': machine,
        'load_before': load_before,
        'load_after': load_after,
        'stages': list(stages),
        'repeats': repeats,
        'figures': {name: t.as_ms() for name, t in figures.items()},
        'derived': derived,
        'info': info,
        'curves': curves,
        'plots': [str(p) for p in plots],
    }
    if json_path is not None:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + '\n')
        print_fn(f'wrote {path}')
    return report
