"""``occ-perception demo`` (and ``make demo``): the whole offline path on one synthetic scene.

1. :func:`~occ_perception.data.synth_nuscenes.generate_dataset`: one scene of
   ``seconds`` (default 20 s) with its 12 Hz camera sweeps, dataset seed 3000
   (training used seed 1000 and the held-out set 2000, so the demo scene was
   never seen).
2. :func:`~occ_perception.data.convert.convert`: the scene to a rosbag2 MCAP,
   as ``occ-perception convert`` does.
3. :func:`~occ_perception.replay.replay` with the shipped model
   (:func:`find_model`): output bag, metrics, summary, a PNG panel and an
   animated GIF of ground truth and prediction top views.

Everything lands in ``out`` (default ``demo_out/``); a folder written by an
earlier demo is replaced, any other non-empty folder is refused.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

__all__ = ['DEMO_SEED', 'DemoError', 'find_model', 'model_dirs', 'run_demo']

DEMO_SEED = 3000
"""Dataset seed of the demo scene (training: 1000, held-out evaluation: 2000)."""
MODEL_STEM = 'tiny_k2'
"""The shipped model: ``tiny`` with K = 2 history features, ``models/tiny_k2.pt`` and its ONNX export."""
_MARKER = '.occ_perception_demo'


class DemoError(RuntimeError):
    """The demo cannot run: no shipped model, or an output folder that is not the demo's."""


def model_dirs() -> list[Path]:
    """Where the shipped models are looked for, in order.

    The source tree's ``occ_perception/models`` (a checkout or an editable install), the installed
    ``share/occ_perception/models`` under the Python prefix (pip) and, on a ROS machine, the ament
    index's share folder of ``occ_perception`` (colcon).
    """
    dirs = [Path(__file__).resolve().parents[1] / 'models', Path(sys.prefix) / 'share' / 'occ_perception' / 'models']
    try:
        from ament_index_python.packages import get_package_share_directory

        dirs.append(Path(get_package_share_directory('occ_perception')) / 'models')
    except Exception:  # not a ROS machine, or the package is not in the ament index
        pass
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _export(checkpoint: Path, config: Any) -> Path:
    """Export ``checkpoint`` to ONNX beside it, or in the user cache when that folder is read-only."""
    from .model.checkpoint import load_checkpoint
    from .runtime.export import export_onnx

    target = checkpoint.with_suffix('.onnx')
    if not os.access(checkpoint.parent, os.W_OK):
        cache = Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'occ_perception'
        cache.mkdir(parents=True, exist_ok=True)
        target = cache / target.name
    print(f'demo: exporting {checkpoint} to {target} (no ONNX shipped beside it)')
    net = load_checkpoint(checkpoint, config).eval()
    return export_onnx(net, target)


def find_model(config: Any, backend: str = 'onnxruntime', dirs: list[Path] | None = None) -> Path:
    """The shipped model file for ``backend``: ``tiny_k2.onnx`` (exported on the fly from ``tiny_k2.pt`` when
    only that exists), or ``tiny_k2.pt`` for the torch backend.

    Raises:
        DemoError: neither file is in any of the ``dirs`` (default :func:`model_dirs`).
    """
    dirs = model_dirs() if dirs is None else dirs
    for d in dirs:
        onnx, pt = d / f'{MODEL_STEM}.onnx', d / f'{MODEL_STEM}.pt'
        if backend == 'torch' and pt.is_file():
            return pt
        if backend != 'torch' and onnx.is_file():
            return onnx
        if backend != 'torch' and pt.is_file():
            return _export(pt, config)
    raise DemoError(
        f'no shipped model: neither {MODEL_STEM}.onnx nor {MODEL_STEM}.pt in '
        f'{", ".join(str(d) for d in dirs)}; train one (occ-perception train) or pass --model'
    )


def _prepare(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DemoError(f'--out {out}: is a file, expected a folder')
    if out.is_dir() and any(out.iterdir()):
        if not (out / _MARKER).exists():
            raise DemoError(f'--out {out}: not empty and not an earlier demo output; choose another folder')
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).write_text('written by occ-perception demo; the folder is replaced by the next demo run\n')


def run_demo(
    out: str | os.PathLike[str] = 'demo_out',
    seconds: float = 20.0,
    seed: int = DEMO_SEED,
    width: int = 800,
    height: int = 450,
    model: str | os.PathLike[str] | None = None,
    backend: str = 'onnxruntime',
    threads: int = 0,
    progress: bool = True,
) -> Any:
    """Synthesise, convert and replay one scene into ``out``; print the summary with the paths.

    Returns:
        The :class:`~occ_perception.replay.ReplaySummary`.

    Raises:
        DemoError: no model, or ``out`` is a foreign non-empty folder.
        SynthError, ConvertError, ReplayError, PipelineError: from the steps.
    """
    import time

    from .data.convert import ConvertConfig, convert
    from .data.synth_nuscenes import SynthConfig, generate_dataset
    from .model.config import get_config
    from .pipeline import OccPipeline, load_model
    from .replay import ReplayOptions, format_summary, replay

    config = get_config('tiny', history=2)
    model_path = Path(model) if model is not None else find_model(config, backend)
    root = Path(out)
    synth = SynthConfig(
        out=root / 'dataset', scenes=1, seconds=seconds, seed=seed, width=width, height=height, sweeps=True
    )
    synth.validate()
    net = load_model(model_path, config, backend=backend, threads=threads)  # fails before the long synthesis
    _prepare(root)
    t0 = time.perf_counter()
    print(f'demo: synthesising a {seconds:g} s scene with 12 Hz camera sweeps (dataset seed {seed}) in {synth.out}')
    generate_dataset(synth, progress=progress)
    t_synth = time.perf_counter() - t0
    t0 = time.perf_counter()
    bags = convert(
        ConvertConfig(root=synth.out, out=root / 'input', version=synth.version, gts=synth.out / 'gts'), progress=False
    )
    t_convert = time.perf_counter() - t0
    print(f'demo: converted to {bags[0].path} ({sum(bags[0].counts.values())} messages) in {t_convert:.1f} s')
    pipeline = OccPipeline(net, config)
    try:
        print(f'demo: replaying with {model_path} ({backend})')
        summary = replay(ReplayOptions(bag=bags[0].path, out=root, panels=1, gif=True, progress=progress), pipeline)
    finally:
        pipeline.close()
        net.close()
    print(format_summary(summary))
    print(f'demo: synthesis {t_synth:.0f} s, conversion {t_convert:.0f} s, replay {summary.wall_seconds:.0f} s')
    print(
        f'demo: output bag {summary.out_bag}; panel {", ".join(summary.files.get("panels", []))}; '
        f'GIF {summary.files.get("gif")}; metrics {summary.files.get("json")}; summary {summary.files["summary"]}'
    )
    return summary
