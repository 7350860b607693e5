"""``occ-perception bench``: splat and end-to-end timings on onnxruntime CPU.

All figures are medians of several repeats measured in one run (the machine may be
shared; ratios taken in one run are what to compare). Reports:

1. the splat alone for M1 geometry (nuScenes rig, 6 x 88 x 16 x 44 frustum points,
   64 channels): onnxruntime CPU running the table graph vs torch eager
   ``index_select`` x 2, Mul, ``index_add`` with precomputed BEVPoolv2 ranks sorted
   by cell (the fastest eager formulation measured here), and their ratio;
2. ``tiny`` end to end on onnxruntime CPU with six cameras [frames/s];
3. ``flashocc-m0`` end to end on onnxruntime CPU [s/frame].
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ['BenchResult', 'median_time', 'run_bench', 'splat_bench']


@dataclass(frozen=True)
class BenchResult:
    """One benchmark line: a name, the median [s] and the repeats it came from."""

    name: str
    median_s: float
    repeats: int


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


def splat_bench(workdir: Path, repeats: int = 15, threads: int = 0) -> tuple[BenchResult, BenchResult]:
    """Splat for M1 geometry: (onnxruntime table graph, torch eager index_add)."""
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
        t_ort, t_torch = [], []
        for _ in range(3):
            t_ort.append(median_time(lambda: backend.run(feeds), repeats // 3 + 1))
            t_torch.append(median_time(torch_splat, repeats // 3 + 1))
    n = 3 * (repeats // 3 + 1)
    return (
        BenchResult('splat M1 onnxruntime CPU', statistics.median(t_ort), n),
        BenchResult('splat M1 torch index_add', statistics.median(t_torch), n),
    )


def model_bench(config_name: str, workdir: Path, repeats: int, threads: int = 0) -> BenchResult:
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
    return BenchResult(
        f'{config_name} end to end onnxruntime CPU', median_time(lambda: backend.run(feeds), repeats), repeats
    )


def run_bench(
    repeats: int = 15,
    m0_repeats: int = 5,
    threads: int = 0,
    skip_m0: bool = False,
    print_fn: Callable[[str], None] = print,
) -> dict[str, float]:
    """Run all benchmarks and print a table; returns name -> median seconds (and derived figures)."""
    results: dict[str, float] = {}
    load_before = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    with tempfile.TemporaryDirectory(prefix='occ-bench-') as tmp:
        work = Path(tmp)
        print_fn(
            f'torch {torch.__version__}, threads {torch.get_num_threads()}; onnxruntime threads '
            f'{threads or "default"}; medians of repeats'
        )
        ort_splat, torch_splat = splat_bench(work, repeats, threads)
        results['splat_ort_s'] = ort_splat.median_s
        results['splat_torch_s'] = torch_splat.median_s
        results['splat_ratio'] = ort_splat.median_s / torch_splat.median_s
        tiny = model_bench('tiny', work, repeats, threads)
        results['tiny_s'] = tiny.median_s
        results['tiny_fps'] = 1.0 / tiny.median_s
        if not skip_m0:
            m0 = model_bench('flashocc-m0', work, m0_repeats, threads)
            results['m0_s'] = m0.median_s
    rows = [
        ('splat M1 geometry, onnxruntime CPU (table graph)', f'{results["splat_ort_s"] * 1e3:8.1f} ms', ''),
        ('splat M1 geometry, torch eager index_add', f'{results["splat_torch_s"] * 1e3:8.1f} ms', ''),
        ('splat ratio onnxruntime / torch', f'{results["splat_ratio"]:8.2f} x', 'target <= 1.5'),
        (
            'tiny end to end, onnxruntime CPU, 6 cameras',
            f'{results["tiny_fps"]:8.1f} frames/s',
            f'{results["tiny_s"] * 1e3:.1f} ms/frame, target >= 5 frames/s',
        ),
    ]
    if 'm0_s' in results:
        rows.append(('flashocc-m0 end to end, onnxruntime CPU, 6 cameras', f'{results["m0_s"]:8.2f} s/frame', ''))
    load_after = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    results['load_before'], results['load_after'] = load_before, load_after
    rows.append(
        (
            '1-minute load average before / after (other processes slow all figures)',
            f'{load_before:.2f} / {load_after:.2f}',
            f'{os.cpu_count()} CPUs',
        )
    )
    width = max(len(r[0]) for r in rows)
    print_fn('-' * (width + 40))
    for name, value, note in rows:
        print_fn(f'{name:<{width}}  {value:>16}  {note}')
    print_fn('-' * (width + 40))
    return results
