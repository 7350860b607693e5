"""``occ-perception bench --backend tensorrt|onnxruntime-cuda``: the network on a GPU, checked against the CPU.

One run of :func:`run_gpu_bench`:

1. checks that the GPU backend can run here (:func:`check_gpu_backend`: TensorRT,
   cuda-python and a CUDA device, or onnxruntime's CUDA execution provider), so that
   a machine without them fails at once with one message naming what is missing;
2. ``tensorrt``: builds the engine of the ONNX file or finds it in the cache
   (:func:`~occ_perception.runtime.engine.build_engine`), then runs it with CUDA-event
   profiling (:class:`~occ_perception.runtime.trt_backend.TensorRTBackend` with
   ``profile=True``): per frame the engine time, the host-to-device and the
   device-to-host copy times, all GPU time between events on the backend's stream;
   ``onnxruntime-cuda``: the wall time of ``session.run`` with its copies (onnxruntime
   copies numpy inputs to the device and the outputs back inside ``run``; no events);
3. warm-up runs, then ``repeats`` timed runs: median, 10th and 90th percentile of each timing;
4. the same feeds through onnxruntime CPU on the fp32 graph: the fraction of voxels
   whose label agrees and the largest absolute flow difference.

numpy and the backends only at import; torch is imported by :func:`model_feeds` alone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import Backend, BackendError

__all__ = [
    'GPU_BACKENDS',
    'GpuBenchError',
    'GpuBenchResult',
    'Spread',
    'check_gpu_backend',
    'compare_outputs',
    'format_gpu_bench',
    'model_feeds',
    'run_gpu_bench',
    'spread',
]

GPU_BACKENDS = ('tensorrt', 'onnxruntime-cuda')
EXACT_INPUTS = ('images', 'history_bev', 'history_theta', 'history_valid')
"""Inputs whose engine profile is the example's shape (camera count, history K); splat tables get headroom."""


class GpuBenchError(BackendError):
    """The GPU benchmark cannot run: the GPU backend or a library is missing, or the outputs are not comparable."""


@dataclass(frozen=True)
class Spread:
    """Median, 10th and 90th percentile of repeated timings [ms]."""

    median: float
    p10: float
    p90: float


def spread(values: Sequence[float]) -> Spread:
    """Median and 10th/90th percentiles (linear interpolation) of ``values``.

    Raises:
        GpuBenchError: ``values`` is empty.
    """
    if not len(values):
        raise GpuBenchError('spread: no timings')
    p10, median, p90 = np.percentile(np.asarray(values, dtype=np.float64), [10, 50, 90])
    return Spread(float(median), float(p10), float(p90))


@dataclass(frozen=True)
class GpuBenchResult:
    """One GPU benchmark.

    Attributes:
        backend: 'tensorrt' or 'onnxruntime-cuda'.
        precision: 'fp32' or 'fp16' (the graph the GPU ran; the CPU reference is always the fp32 graph).
        device: the CUDA device name ('' where onnxruntime does not say).
        model: the fp32 ONNX file.
        engine: the engine file (tensorrt) or the graph onnxruntime ran (onnxruntime-cuda).
        warmup: untimed runs before the timed ones.
        repeats: timed runs.
        timings: name -> spread [ms]; tensorrt: 'engine_ms', 'h2d_ms', 'd2h_ms' (CUDA events, GPU time);
            onnxruntime-cuda: 'run_ms' (wall time of ``session.run``, host-device copies included).
        timing_source: how the timings were taken, in words.
        label_agreement: fraction [0, 1] of voxels whose label equals onnxruntime CPU's.
        voxels: number of voxels compared.
        flow_max_abs_diff: largest |flow - flow of onnxruntime CPU| over all voxels and both components [m/s].
    """

    backend: str
    precision: str
    device: str
    model: str
    engine: str
    warmup: int
    repeats: int
    timings: dict[str, Spread]
    timing_source: str
    label_agreement: float
    voxels: int
    flow_max_abs_diff: float


def check_gpu_backend(backend: str, device: int = 0) -> str:
    """Check that ``backend`` can run here, before anything slow happens.

    Args:
        backend: one of :data:`GPU_BACKENDS`.
        device: CUDA device ordinal (tensorrt).

    Returns:
        The CUDA device name (tensorrt) or '' (onnxruntime-cuda: onnxruntime does not name it).

    Raises:
        GpuBenchError: unknown backend; for tensorrt, TensorRT or cuda-python is missing (every
            missing one is named) or there is no CUDA device; for onnxruntime-cuda, onnxruntime
            has no CUDAExecutionProvider.
    """
    if backend == 'tensorrt':
        from .engine import EngineError, gpu_info, import_cudart, import_tensorrt

        missing = []
        try:
            import_tensorrt()
        except EngineError:
            missing.append('TensorRT (pip install tensorrt, 10.x or 11.x matching your CUDA)')
        try:
            import_cudart()
        except EngineError:
            missing.append("NVIDIA's cuda-python (pip install cuda-python matching your CUDA major)")
        if missing:
            raise GpuBenchError(
                "--backend tensorrt needs TensorRT, NVIDIA's cuda-python and a CUDA GPU; not installed here: "
                + ', '.join(missing)
            )
        try:
            return gpu_info(device).name
        except EngineError as err:
            raise GpuBenchError(f'--backend tensorrt needs a CUDA GPU: {err}') from err
    if backend == 'onnxruntime-cuda':
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise GpuBenchError(
                '--backend onnxruntime-cuda needs onnxruntime-gpu: pip install onnxruntime-gpu'
            ) from err
        available = ort.get_available_providers()
        if 'CUDAExecutionProvider' not in available:
            raise GpuBenchError(
                f'--backend onnxruntime-cuda needs CUDAExecutionProvider (pip install onnxruntime-gpu); '
                f'this onnxruntime {ort.__version__} has {sorted(available)}'
            )
        return ''
    raise GpuBenchError(f'backend: expected one of {list(GPU_BACKENDS)}, got {backend!r}')


def compare_outputs(reference: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> tuple[float, int, float]:
    """Agreement of a GPU run with the CPU reference.

    Args:
        reference: onnxruntime CPU outputs; ``labels`` uint8 (X, Y, Z), ``flow`` float32 (X, Y, Z, 2) [m/s].
        outputs: the GPU outputs, same names and shapes.

    Returns:
        (fraction of voxels with equal labels, number of voxels, largest absolute flow difference [m/s]).

    Raises:
        GpuBenchError: ``labels`` or ``flow`` is missing from either, or the shapes differ.
    """
    for name in ('labels', 'flow'):
        if name not in reference or name not in outputs:
            raise GpuBenchError(
                f'compare: output {name!r} missing (reference {sorted(reference)}, GPU {sorted(outputs)})'
            )
        if np.shape(reference[name]) != np.shape(outputs[name]):
            raise GpuBenchError(
                f'compare: output {name!r} has shape {list(np.shape(outputs[name]))} on the GPU, '
                f'{list(np.shape(reference[name]))} on the CPU'
            )
    labels, ref_labels = np.asarray(outputs['labels']), np.asarray(reference['labels'])
    agreement = float(np.count_nonzero(labels == ref_labels)) / max(labels.size, 1)
    flow = np.asarray(outputs['flow'], dtype=np.float32)
    ref_flow = np.asarray(reference['flow'], dtype=np.float32)
    flow_diff = float(np.max(np.abs(flow - ref_flow))) if flow.size else 0.0
    return agreement, int(labels.size), flow_diff


def model_feeds(config: Any, rig: Any = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Example feeds for a model configuration, as the CPU benchmark makes them.

    :func:`~occ_perception.runtime.export.sample_inputs` (random uint8 images, the rig's
    splat tables, a valid history of K features) on a network built on torch's meta
    device (no weights are allocated). Imports torch.

    Args:
        config: a :class:`~occ_perception.model.config.ModelConfig`.
        rig: the camera rig; default the nuScenes rig (six cameras).
        seed: seed of the images and the history.
    """
    import torch

    from ..model.network import OccNet
    from .export import sample_inputs

    with torch.device('meta'):
        net = OccNet(config)
    return sample_inputs(net, rig, seed=seed)


def _timed_runs(backend: Backend, feeds: Mapping[str, np.ndarray], warmup: int, repeats: int, events: bool):
    """Run ``warmup`` + ``repeats`` times; returns (name -> list of ms, outputs of the last run)."""
    for _ in range(warmup):
        outputs = backend.run(feeds)
    samples: dict[str, list[float]] = {}
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = backend.run(feeds)
        wall_ms = (time.perf_counter() - start) * 1e3
        timings = dict(getattr(backend, 'last_timings', {})) if events else {'run_ms': wall_ms}
        if not timings:
            raise GpuBenchError(f'{backend.name}: the run reported no CUDA-event timings')
        for name, ms in timings.items():
            samples.setdefault(name, []).append(float(ms))
    return samples, outputs


def run_gpu_bench(
    onnx_path: str | os.PathLike[str],
    feeds: Mapping[str, np.ndarray],
    backend: str = 'tensorrt',
    precision: str = 'fp16',
    warmup: int = 10,
    repeats: int = 50,
    rebuild: bool = False,
    workspace_bytes: int = 4 << 30,
    headroom: float = 2.0,
    threads: int = 0,
) -> GpuBenchResult:
    """Time the network on a GPU backend and compare its outputs with onnxruntime CPU on the same feeds.

    Args:
        onnx_path: the fp32 ONNX graph (``occ-perception export``); its outputs must include
            ``labels`` and ``flow``.
        feeds: one frame's inputs (input name -> numpy array), e.g. :func:`model_feeds`; they are
            also the calibration data when the fp16 graph has to be made.
        backend: 'tensorrt' or 'onnxruntime-cuda'.
        precision: 'fp32' or 'fp16' (fp16: the ModelOpt graph beside the ONNX file, made if missing).
        warmup: untimed runs first (engine tactics, allocations, clocks), at least 1.
        repeats: timed runs, at least 1.
        rebuild: rebuild the engine (and the fp16 graph) even when cached.
        workspace_bytes: TensorRT builder workspace limit [bytes].
        headroom: largest splat-table length in the engine profile, as a multiple of the feeds'.
        threads: onnxruntime CPU threads of the reference run (0 = its default).

    Returns:
        The :class:`GpuBenchResult`; printing is up to the caller (:func:`format_gpu_bench`).

    Raises:
        GpuBenchError: bad arguments, the GPU backend cannot run here, onnxruntime fell back from
            CUDA to the CPU, or the outputs cannot be compared.
        EngineError: the engine build or the fp16 conversion failed.
        BackendError: a backend cannot load the graph or a run fails.
    """
    from .engine import PRECISIONS, build_engine, fp16_graph, onnx_io_specs, shape_ranges
    from .ort_backend import OnnxRuntimeBackend

    if precision not in PRECISIONS:
        raise GpuBenchError(f'precision: expected one of {list(PRECISIONS)}, got {precision!r}')
    if warmup < 1 or repeats < 1:
        raise GpuBenchError(f'warmup and repeats: expected at least 1 each, got {warmup} and {repeats}')
    device = check_gpu_backend(backend)
    if not os.path.isfile(onnx_path):
        raise GpuBenchError(f'no ONNX file at {os.fspath(onnx_path)!r}')
    gpu: Backend
    if backend == 'tensorrt':
        from .trt_backend import TensorRTBackend

        inputs, _ = onnx_io_specs(onnx_path)
        exact = tuple(n for n in EXACT_INPUTS if n in feeds)
        ranges = shape_ranges(inputs, feeds, headroom=headroom, exact=exact)
        engine = build_engine(
            onnx_path,
            ranges,
            precision=precision,
            workspace_bytes=workspace_bytes,
            rebuild=rebuild,
            calibration_feeds=feeds,
        )
        gpu = TensorRTBackend(engine, profile=True)
        source = (
            'CUDA events on the backend stream (GPU time): h2d_ms = host-to-device copies, '
            'engine_ms = execute_async_v3, d2h_ms = device-to-host copies'
        )
    else:
        engine = fp16_graph(onnx_path, feeds, rebuild) if precision == 'fp16' else Path(onnx_path)
        gpu = OnnxRuntimeBackend(engine, device='cuda')
        used = list(gpu.session.get_providers())
        if not used or used[0] != 'CUDAExecutionProvider':
            gpu.close()
            raise GpuBenchError(
                f'onnxruntime could not start CUDAExecutionProvider (the session uses {used}); '
                'check the CUDA and cuDNN libraries onnxruntime-gpu needs'
            )
        source = 'wall time of onnxruntime session.run, host-to-device and device-to-host copies included'
    try:
        samples, outputs = _timed_runs(gpu, feeds, warmup, repeats, events=backend == 'tensorrt')
    finally:
        gpu.close()
    cpu = OnnxRuntimeBackend(onnx_path, device='cpu', threads=threads)
    try:
        reference = cpu.run(feeds)
    finally:
        cpu.close()
    agreement, voxels, flow_diff = compare_outputs(reference, outputs)
    return GpuBenchResult(
        backend=backend,
        precision=precision,
        device=device,
        model=os.fspath(onnx_path),
        engine=os.fspath(engine),
        warmup=warmup,
        repeats=repeats,
        timings={name: spread(values) for name, values in samples.items()},
        timing_source=source,
        label_agreement=agreement,
        voxels=voxels,
        flow_max_abs_diff=flow_diff,
    )


def format_gpu_bench(result: GpuBenchResult) -> list[str]:
    """The result as lines of text: one per timing (median, 10th-90th percentile), then the agreement."""
    where = f' on {result.device}' if result.device else ''
    lines = [
        f'{result.backend} {result.precision}{where}: {result.engine}',
        f'{result.repeats} timed runs after {result.warmup} warm-up runs; {result.timing_source}',
    ]
    for name, s in result.timings.items():
        lines.append(f'  {name:<10} median {s.median:9.3f} ms   p10 {s.p10:9.3f} ms   p90 {s.p90:9.3f} ms')
    lines.append(
        f'agreement with onnxruntime CPU (fp32 graph, same feeds): labels {100 * result.label_agreement:.3f} % '
        f'of {result.voxels} voxels, flow max |difference| {result.flow_max_abs_diff:.3g} m/s'
    )
    return lines
