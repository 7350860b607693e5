"""``occ-perception eval``: a model over a dataset split through the run-time pipeline, with Occ3D metrics.

Every keyframe of every selected scene goes, in time order, through
:class:`~occ_perception.pipeline.OccPipeline` (the same preprocessing, splat
tables and temporal cache as the ROS node; the cache is reset between scenes),
so a temporal model sees its history exactly as at run time. Labelled keyframes
are scored with :class:`~occ_perception.metrics.MIoU` (inside ``mask_camera``
by default) and :class:`~occ_perception.metrics.RayMetrics` (RayIoU with ray
origins at the scene's LIDAR_TOP keyframe positions, and flow mAVE).

Outputs in the ``--out`` folder: ``metrics.json`` and ``metrics.md``
(:class:`~occ_perception.metrics.MetricsReport` plus frames/s, stage timings
and what was evaluated) and ``confusion.png`` (row-normalised confusion matrix,
rows = ground truth, columns = prediction).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .grid import CLASS_NAMES, NUM_CLASSES
from .metrics import MetricsReport, MIoU, MIoUResult, RayMetrics, lidar_origins
from .outputs import OccFrame

__all__ = [
    'MASKS',
    'EvalError',
    'EvalResult',
    'evaluate',
    'plot_confusion',
    'run_eval',
    'split_scenes',
    'write_outputs',
]

MASKS: tuple[str, ...] = ('camera', 'lidar', 'none')
"""Visibility masks for mIoU: the label file's ``mask_camera``, ``mask_lidar``, or every voxel."""


class EvalError(ValueError):
    """An evaluation cannot run: unknown split or scenes, bad option values, unreadable dataset files."""


@dataclass
class EvalResult:
    """What an evaluation produced.

    Attributes:
        report: the metrics with the run description in ``report.extra``.
        miou: the Occ3D result, with the (18, 18) ``confusion[pred, gt]`` voxel counts.
        frames: frames run through the pipeline (labelled or not).
        scored: frames scored (labelled keyframes).
        pipeline_seconds: sum of the frames' ``timings['total']`` [s].
        stage_seconds: per pipeline stage, the sum over frames [s].
        resets: cache reset reasons seen in the frames, with counts.
        paths: written files by kind ('json', 'markdown', 'confusion'), after :func:`write_outputs`.
    """

    report: MetricsReport
    miou: MIoUResult
    frames: int
    scored: int
    pipeline_seconds: float
    stage_seconds: dict[str, float]
    resets: dict[str, int]
    paths: dict[str, Path] = field(default_factory=dict)


def split_scenes(split: str, available: Sequence[str]) -> list[str]:
    """The scenes of a nuScenes split (``nuscenes.utils.splits``: train, val, mini_train, mini_val, ...) present
    in the dataset, or every scene for ``all``.

    Raises:
        EvalError: unknown split, or none of its scenes is in the dataset.
    """
    if split == 'all':
        return sorted(available)
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes(verbose=False)
    if split not in splits:
        raise EvalError(f'--split: expected all or one of {sorted(splits)}, got {split!r}')
    chosen = sorted(set(splits[split]) & set(available))
    if not chosen:
        raise EvalError(
            f'--split {split}: none of its {len(splits[split])} scenes is in this dataset '
            f'(it has {sorted(available)[:5]}{"..." if len(available) > 5 else ""}); use --scenes'
        )
    return chosen


def _dropped(names: Sequence[str], drop_cameras: Sequence[str]) -> frozenset[str]:
    """The rig names of ``drop_cameras`` (case-insensitive, so CAM_FRONT names cam_front).

    Raises:
        EvalError: a name not in the rig, or every camera dropped.
    """
    lower = {n.lower(): n for n in names}
    unknown = [c for c in drop_cameras if c.lower() not in lower]
    if unknown:
        raise EvalError(f'--drop-camera: {unknown} not in the rig {list(names)}')
    out = frozenset(lower[c.lower()] for c in drop_cameras)
    if len(out) == len(names):
        raise EvalError(f'--drop-camera: every camera of {list(names)} dropped; keep at least one')
    return out


def evaluate(
    pipeline: Any,
    dataset: Any,
    mask: str = 'camera',
    max_frames: int | None = None,
    progress: bool = False,
    on_frame: Callable[[Any, OccFrame], None] | None = None,
    drop_cameras: Sequence[str] = (),
) -> EvalResult:
    """Run every keyframe of ``dataset`` through ``pipeline`` and accumulate the metrics.

    Scenes in the dataset's order (by name), keyframes in time order; the pipeline's
    temporal cache is reset before each scene. Images are read as encoded bytes and
    decoded by the pipeline, as messages would be.

    Args:
        pipeline: an :class:`~occ_perception.pipeline.OccPipeline` (its config's grid must be the labels').
        dataset: an :class:`~occ_perception.data.occ3d.Occ3DDataset` (scenes already selected).
        mask: one of :data:`MASKS`, for mIoU (RayIoU casts through the full volume, as defined).
        max_frames: stop after this many frames (None = all).
        progress: show a progress bar (tqdm) over frames.
        on_frame: called with (dataset frame, OccFrame) after each frame.
        drop_cameras: cameras treated as failed on every frame (image None: see
            :meth:`~occ_perception.pipeline.OccPipeline.process`), by rig name or nuScenes channel
            (``CAM_FRONT``), to measure what losing a camera costs.

    Returns:
        The :class:`EvalResult` (no files written; see :func:`write_outputs`).

    Raises:
        EvalError: unknown mask, max_frames < 1, an unreadable image or label file, a drop_cameras name
            that is not in the rig, or every camera dropped.
        occ_perception.preprocess.PreprocessError, BackendError: from the pipeline.
    """
    if mask not in MASKS:
        raise EvalError(f'--mask: expected one of {list(MASKS)}, got {mask!r}')
    if max_frames is not None and max_frames < 1:
        raise EvalError(f'--max-frames: expected at least 1, got {max_frames}')
    from .data.occ3d import DatasetError

    grid = pipeline.config.grid
    miou, rays = MIoU(), RayMetrics(grid)
    scenes = [dataset.keyframes(i) for i in range(len(dataset.frames))]
    total = sum(len(s) for s in scenes)
    if max_frames is not None:
        total = min(total, max_frames)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit='frame', desc='eval', dynamic_ncols=True)
    rigs: dict[tuple[str, ...], Any] = {}
    frames = scored = 0
    stage: Counter[str] = Counter()
    resets: Counter[str] = Counter()
    try:
        for keyframes in scenes:
            if frames >= total:
                break
            if not keyframes:
                continue
            pipeline.reset()
            poses = np.stack([f.pose.matrix() for f in keyframes])
            lidar = dataset.lidar_translation(keyframes[0])
            for frame in keyframes:
                if frames >= total:
                    break
                rig = rigs.get(frame.calibration_key)
                if rig is None:
                    rig = rigs[frame.calibration_key] = dataset.calibration(frame)
                drop = _dropped(rig.names, drop_cameras)
                try:
                    images: list[bytes | None] = [
                        None if name in drop else Path(p).read_bytes() for name, p in zip(rig.names, frame.image_paths)
                    ]
                except OSError as err:
                    raise EvalError(f'frame {frame.token} of {frame.scene}: cannot read an image: {err}') from err
                occ = pipeline.process(images, frame.pose, rig, stamp_ns=frame.stamp_ns)
                frames += 1
                stage.update(occ.timings)
                if occ.reset_reason is not None:
                    resets[occ.reset_reason] += 1
                if on_frame is not None:
                    on_frame(frame, occ)
                if dataset.has_labels(frame):
                    labels = dataset.load_labels(frame)
                    gt = labels['semantics']
                    visible = None if mask == 'none' else labels[f'mask_{mask}']
                    miou.add(occ.labels, gt, visible)
                    origins = lidar_origins(poses, frame.pose.matrix(), lidar)
                    rays.add(occ.labels, gt, origins, occ.flow, labels.get('flow'))
                    scored += 1
                if bar is not None:
                    bar.update(1)
    except DatasetError as err:
        raise EvalError(str(err)) from err
    finally:
        if bar is not None:
            bar.close()
    if not scored:
        raise EvalError('no labelled keyframe was evaluated (check --scenes, --split and --max-frames)')
    m, r = miou.result(), rays.result()
    report = MetricsReport.from_results(m, r, frames=scored)
    seconds = float(stage.get('total', 0.0))
    report.extra.update(
        {
            'frames_run': frames,
            'frames_per_second': frames / seconds if seconds > 0 else None,
            'timings_ms': {k: 1000.0 * v / frames for k, v in sorted(stage.items()) if k != 'tables'},
            'cache_resets': dict(sorted(resets.items())),
            'mask': mask,
            'confusion': {
                'rows': 'prediction',
                'columns': 'ground truth',
                'classes': list(CLASS_NAMES),
                'counts': m.confusion.tolist(),
            },
        }
    )
    return EvalResult(report, m, frames, scored, seconds, dict(stage), dict(resets))


def plot_confusion(confusion: np.ndarray, path: str | os.PathLike[str], title: str = '') -> Path:
    """Write the row-normalised confusion matrix as a PNG (matplotlib Agg).

    Args:
        confusion: (18, 18) voxel counts ``confusion[pred, gt]`` (:class:`MIoUResult`).
        path: the PNG to write.
        title: figure title.

    The picture's rows are the ground-truth classes and its columns the predicted ones,
    each row divided by its total (so a row reads as "where did voxels of this class go");
    rows without ground truth are blank. Cells show percent.

    Raises:
        EvalError: the matrix is not (18, 18).
    """
    import matplotlib

    matplotlib.use('Agg')
    from matplotlib import pyplot as plt

    counts = np.asarray(confusion, dtype=np.float64)
    if counts.shape != (NUM_CLASSES, NUM_CLASSES):
        raise EvalError(f'confusion: expected ({NUM_CLASSES}, {NUM_CLASSES}) counts, got {counts.shape}')
    by_gt = counts.T  # rows: ground truth, columns: prediction
    totals = by_gt.sum(axis=1, keepdims=True)
    with np.errstate(invalid='ignore', divide='ignore'):
        share = np.where(totals > 0, by_gt / totals, np.nan)
    fig, ax = plt.subplots(figsize=(12, 10.5), dpi=110)
    image = ax.imshow(share * 100.0, cmap='Blues', vmin=0.0, vmax=100.0)
    names = list(CLASS_NAMES)
    ticks = np.arange(NUM_CLASSES)
    ax.set_xticks(ticks, names, rotation=55, ha='right', fontsize=9)
    ax.set_yticks(ticks, [f'{n} ({int(t):,})' for n, t in zip(names, totals[:, 0])], fontsize=9)
    ax.set_xlabel('predicted class')
    ax.set_ylabel('ground-truth class (voxels)')
    rows, cols = np.nonzero(np.isfinite(share) & (share >= 0.005))
    for i, j in zip(rows, cols):
        value = share[i, j] * 100.0
        ax.text(
            float(j),
            float(i),
            f'{value:.0f}',
            ha='center',
            va='center',
            fontsize=7,
            color='white' if value > 55 else 'black',
        )
    ax.set_title(title or 'confusion matrix (row-normalised, % of each ground-truth class)', fontsize=11)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label='% of the ground-truth row')
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def write_outputs(result: EvalResult, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``metrics.json``, ``metrics.md`` and ``confusion.png`` into ``out_dir`` (created).

    Returns:
        the paths by kind ('json', 'markdown', 'confusion'); also stored in ``result.paths``.
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    report = result.report
    paths = {'json': folder / 'metrics.json', 'markdown': folder / 'metrics.md', 'confusion': folder / 'confusion.png'}
    paths['json'].write_text(report.to_json() + '\n')
    extra = report.extra
    lines = ['# Occupancy evaluation', '']
    for key in ('model', 'backend', 'config', 'history', 'use_history', 'dataset', 'mask'):
        if key in extra:
            value = extra[key]
            lines.append(f'- {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}')
    fps = extra.get('frames_per_second')
    if fps is not None:
        stages = ', '.join(f'{k} {v:.1f} ms' for k, v in extra.get('timings_ms', {}).items())
        lines.append(f'- speed: {fps:.2f} frames/s through the pipeline ({stages} per frame)')
    lines += ['', report.to_markdown()]
    paths['markdown'].write_text('\n'.join(lines))
    miou = report.miou
    title = 'confusion (row-normalised, % of each ground-truth class)'
    if miou is not None and np.isfinite(miou):
        title += f'; mIoU {100 * miou:.2f} %, {report.frames} frames'
    plot_confusion(result.miou.confusion, paths['confusion'], title)
    result.paths = paths
    return paths


def run_eval(
    model: str | os.PathLike[str],
    config: Any,
    backend: str,
    dataroot: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    version: str = 'v1.0-mini',
    scenes: Sequence[str] | None = None,
    split: str | None = None,
    use_history: bool = True,
    max_frames: int | None = None,
    threads: int = 0,
    mask: str = 'camera',
    progress: bool = True,
    drop_cameras: Sequence[str] = (),
    failed_camera_mode: str = 'mask_tables',
) -> EvalResult:
    """Load a model and a dataset, :func:`evaluate`, and :func:`write_outputs` (the ``eval`` command).

    Args:
        model: checkpoint (.pt, torch), ONNX (onnxruntime, tensorrt) or engine (tensorrt).
        config: the model's :class:`~occ_perception.model.config.ModelConfig`.
        backend: 'onnxruntime', 'torch' or 'tensorrt'.
        dataroot: nuScenes-format folder with Occ3D labels under gts/.
        out_dir: where the files go.
        version: table folder name.
        scenes: scene names; ``split``: a nuScenes split name or 'all' (at most one of the two; neither = all).
        use_history: False feeds a temporal model empty history.
        max_frames: stop after this many frames.
        threads: backend CPU threads (0 = default).
        mask: one of :data:`MASKS`.
        progress: progress bar.
        drop_cameras: cameras treated as failed on every frame (see :func:`evaluate`).
        failed_camera_mode: how the pipeline feeds them (:data:`~occ_perception.pipeline.FAILED_CAMERA_MODES`).

    Raises:
        EvalError: bad options or dataset; PipelineError: the model cannot be loaded or does not fit.
    """
    from .data.occ3d import DatasetError, Occ3DDataset
    from .pipeline import OccPipeline, load_model

    if scenes and split:
        raise EvalError('--scenes and --split: give one of them, not both')
    if threads < 0:
        raise EvalError(f'--threads: expected 0 (default) or more, got {threads}')
    if mask not in MASKS:
        raise EvalError(f'--mask: expected one of {list(MASKS)}, got {mask!r}')
    if not Path(dataroot).is_dir():
        raise EvalError(f'--dataroot: no folder at {os.fspath(dataroot)!r}')
    net = load_model(model, config, backend=backend, threads=threads)
    try:
        wanted: Sequence[str] | None = list(scenes) if scenes else None
        if split:
            probe = Occ3DDataset(dataroot, config, version=version)
            wanted = split_scenes(split, [s['name'] for s in probe.nusc.scene])
            dataset = Occ3DDataset(dataroot, config, version=version, scenes=wanted, nusc=probe.nusc)
        else:
            dataset = Occ3DDataset(dataroot, config, version=version, scenes=wanted)
    except DatasetError as err:
        raise EvalError(str(err)) from err
    try:
        pipeline = OccPipeline(net, config, use_history=use_history, failed_camera_mode=failed_camera_mode)
    except Exception:
        net.close()
        raise
    try:
        result = evaluate(
            pipeline, dataset, mask=mask, max_frames=max_frames, progress=progress, drop_cameras=drop_cameras
        )
    finally:
        pipeline.close()
        net.close()
    result.report.extra.update(
        {
            'model': os.fspath(model),
            'backend': backend,
            'config': config.name,
            'history': config.history,
            'use_history': bool(use_history),
            'drop_cameras': list(drop_cameras),
            'failed_camera_mode': failed_camera_mode,
            'dataset': {
                'dataroot': os.fspath(dataroot),
                'version': version,
                'scenes': sorted({f.scene for frames in dataset.frames for f in frames}),
            },
        }
    )
    write_outputs(result, out_dir)
    return result
