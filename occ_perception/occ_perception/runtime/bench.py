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
- ``splat``: the splat alone for M1 geometry (nuScenes rig, 6 x 88 x 16 x 44 frustum points,
  64 channels): onnxruntime CPU running the table graph vs torch eager ``index_select`` x 2, Mul,
  ``index_add`` with precomputed BEVPoolv2 ranks sorted by cell, and their ratio;
- ``network``: ``tiny`` end to end on onnxruntime CPU with six cameras, and ``flashocc-m0``
  (leave it out with ``skip_m0``).
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
    'encode_bench',
    'encode_frame',
    'interleaved_stats',
    'machine_description',
    'median_time',
    'preprocess_bench',
    'run_bench',
    'splat_bench',
    'synthetic_jpegs',
    'time_stats',
]

STAGES: tuple[str, ...] = ('preprocess', 'encode', 'splat', 'network')
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

    def fresh() -> OccFrame:  # a new frame: nothing cached from earlier messages
        return OccFrame(
            stamp_ns=base.stamp_ns, grid=grid, labels=base.labels, confidence=base.confidence, flow=base.flow
        )

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


def splat_bench(workdir: Path, repeats: int = 15, threads: int = 0) -> tuple[Timing, Timing]:
    """Splat for M1 geometry: (onnxruntime table graph, torch eager index_add), interleaved.

    Raises:
        RuntimeError: the two splats disagree.
    """
    import warnings

    from ..model.config import get_config
    from ..model.splat import Splat
    from ..model.splat_reference import splat_index_add, splat_ranks
    from ..model.splat_tables import build_splat_tables, frustum_cells, splat_table_names
    from ..rig import Rig
    from .ort_backend import OnnxRuntimeBackend

    cfg = get_config('flashocc-m1')
    tables = build_splat_tables(cfg, Rig.nuscenes().matrices(*cfg.image_size))
    names = splat_table_names()
    w, h = cfg.feature_size
    gen = torch.Generator().manual_seed(0)
    depth = torch.rand(6, cfg.num_depth_bins, h, w, generator=gen).softmax(1)
    feat = torch.randn(6, cfg.context_channels, h, w, generator=gen)
    module = Splat(cfg.bev_size)
    path = workdir / 'splat_m1.onnx'
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
    cells = frustum_cells(cfg, Rig.nuscenes().matrices(*cfg.image_size))
    ranks = splat_ranks(cells, tuple(depth.shape))

    def torch_splat() -> torch.Tensor:
        return splat_index_add(depth, feat, ranks, cfg.bev_size)

    ort_out = backend.run(feeds)['bev']
    with torch.inference_mode():
        ref = torch_splat().numpy()
        if not np.allclose(ort_out, ref, atol=1e-4):
            raise RuntimeError(f'bench: splat outputs differ by {np.abs(ort_out - ref).max()}')
        # interleave the two so that load from other processes hits both alike
        t = interleaved_stats({'splat_ort': lambda: backend.run(feeds), 'splat_torch': torch_splat}, repeats)
    return t['splat_ort'], t['splat_torch']


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
) -> dict[str, Any]:
    """Run the chosen stages, print a table and optionally write it as JSON.

    Args:
        repeats: timed calls per figure after warm-up (``m0_repeats`` for flashocc-m0).
        threads: onnxruntime intra-op threads (0: its default).
        stages: a subset of :data:`STAGES`.
        images: JPEG source of the preprocess stage (:func:`synthetic_jpegs`).
        json_path: where to write the report (figures in ms, derived ratios, machine, load averages).

    Returns:
        The report: ``{'machine', 'load_before', 'load_after', 'stages', 'repeats', 'figures', 'derived', 'info'}``;
        ``figures`` maps a name to ``{'median_ms', 'p10_ms', 'p90_ms', 'repeats'}``.

    Raises:
        BenchError: an unknown stage or fewer than one repeat.
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise BenchError(f'stages: expected a subset of {STAGES}, got {list(stages)}')
    if repeats < 1 or m0_repeats < 1:
        raise BenchError(f'repeats: expected at least 1, got {repeats} and {m0_repeats}')
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
        t, info['encode'] = encode_bench(repeats)
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
    with tempfile.TemporaryDirectory(prefix='occ-bench-') as tmp:
        work = Path(tmp)
        if 'splat' in stages:
            ort_splat, torch_splat = splat_bench(work, repeats, threads)
            figures['splat_ort'], figures['splat_torch'] = ort_splat, torch_splat
            derived['splat_ratio_ort_over_torch'] = ort_splat.median_s / torch_splat.median_s
            rows += [
                ('splat M1 geometry, onnxruntime CPU (table graph)', _ms(ort_splat), ''),
                ('splat M1 geometry, torch eager index_add', _ms(torch_splat), ''),
                ('splat ratio onnxruntime / torch', f'{derived["splat_ratio_ort_over_torch"]:8.2f} x', 'target <= 1.5'),
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
    }
    if json_path is not None:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + '\n')
        print_fn(f'wrote {path}')
    return report
