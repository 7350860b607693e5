"""Occupancy evaluation metrics: Occ3D mIoU, RayIoU and flow mAVE (OccScore).

Definitions (shared/REFERENCE.md, "Occ3D-nuScenes" and "Occupancy flow and RayIoU"):

- mIoU (Occ3D ``Metric_mIoU``): one 18 x 18 confusion matrix over the whole set, from the
  voxels inside the visibility mask whose ground truth is not 255; IoU_c = TP / (TP + FP + FN);
  mIoU = nanmean over classes 0..16. ``free`` (17) is not averaged but stays in the matrix.
- RayIoU (SparseOcc): 360 azimuths x 39 pitch angles from up to 8 LIDAR_TOP origins of the
  scene's keyframes; a ray's hit is the first voxel whose label is not free (255 counts as
  occupied) and its depth the distance at which it leaves that voxel; a ray without a hit gets
  ``free`` and the distance to the grid's edge. Only rays whose ground-truth hit is not free
  count. A ray is a true positive of class c at threshold t when both hits are c and
  ``|depth_pred - depth_gt| < t``; IoU_c(t) = TP / (GT_c + Pred_c - TP) over the whole set.
- mAVE (OpenOcc v2 challenge): mean over the flow classes of the average L2 error of (vx, vy),
  read at each volume's own hit voxel, over true-positive rays at 2 m.
  OccScore = 0.9 RayIoU + 0.1 max(1 - mAVE, 0).

Inputs are numpy arrays or torch tensors (converted with ``.detach().cpu().numpy()``); torch is
never imported here. Grids are indexed ``[x, y, z]`` (C order) on a :class:`~.grid.GridSpec`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .grid import (
    CLASS_NAMES,
    FREE_LABEL,
    NUM_CLASSES,
    OCC3D_GRID,
    UNOBSERVED_LABEL,
    GridSpec,
)
from .raycast import first_hits

__all__ = [
    'FLOW_CLASSES',
    'LIDAR_TRANSLATION',
    'MAX_ORIGINS',
    'ORIGIN_RANGE',
    'RAY_THRESHOLDS',
    'MIoU',
    'MIoUResult',
    'MetricsError',
    'MetricsReport',
    'RayCast',
    'RayMetrics',
    'RayResult',
    'cast_rays',
    'lidar_origins',
    'ray_directions',
    'ray_pitch_angles',
]


class MetricsError(ValueError):
    """Bad metric input: wrong shapes, label values outside the class table, malformed poses."""


NUM_SEMANTIC = NUM_CLASSES - 1  # 17: classes 0..16, free excluded
RAY_THRESHOLDS: tuple[float, ...] = (1.0, 2.0, 4.0)
"""RayIoU depth thresholds [m]."""
FLOW_THRESHOLD = 2.0
"""Depth threshold [m] of the true-positive rays that mAVE averages over."""
FLOW_CLASSES: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 9, 10)
"""Occ3D labels with flow: bicycle, bus, car, construction_vehicle, motorcycle, pedestrian, trailer, truck."""
LIDAR_TRANSLATION: tuple[float, float, float] = (0.986, 0.0, 1.840)
"""nuScenes LIDAR_TOP mounting position in base_link [m]."""
ORIGIN_RANGE = 39.0
"""Ray origins are kept when |x| and |y| in the current ego frame are below this [m]."""
MAX_ORIGINS = 8


def _to_numpy(value: Any, name: str) -> np.ndarray:
    """A numpy view of an array or a torch tensor (``.detach().cpu().numpy()``)."""
    if hasattr(value, 'detach'):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise MetricsError(f'{name}: expected an array or a tensor, got {type(value).__name__}') from exc


def _labels(value: Any, name: str, shape: tuple[int, ...] | None, allow_unobserved: bool) -> np.ndarray:
    """Integer labels checked against the class table; returned as intp."""
    arr = _to_numpy(value, name)
    if arr.ndim != 3 or (shape is not None and arr.shape != shape):
        expected = shape if shape is not None else '(X, Y, Z)'
        raise MetricsError(f'{name}: expected labels of shape {expected}, got {arr.shape}')
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise MetricsError(f'{name}: expected integer labels, got dtype {arr.dtype}')
    arr = arr.astype(np.intp, copy=False)
    valid = (arr >= 0) & (arr < NUM_CLASSES)
    if allow_unobserved:
        valid |= arr == UNOBSERVED_LABEL
    if not valid.all():
        bad = np.unique(arr[~valid])[:5].tolist()
        allowed = f'0..{NUM_CLASSES - 1}' + (f' or {UNOBSERVED_LABEL}' if allow_unobserved else '')
        raise MetricsError(f'{name}: labels must be {allowed}, found {bad}')
    return arr


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite entries; NaN (without a warning) when there are none."""
    values = np.asarray(values, dtype=np.float64)
    finite = ~np.isnan(values)
    return float(values[finite].mean()) if finite.any() else math.nan


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den is 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


# --------------------------------------------------------------------------------------------------
# mIoU


@dataclass(frozen=True)
class MIoUResult:
    """Occ3D mIoU over a set of frames.

    Attributes:
        iou: (18,) float64 IoU per label 0..17 (index 17 is ``free``, not part of the mean);
            NaN for a class absent from both prediction and ground truth over the whole set.
        miou: nanmean of ``iou[:17]``.
        confusion: (18, 18) int64, ``confusion[pred, gt]`` voxel counts.
    """

    iou: np.ndarray
    miou: float
    confusion: np.ndarray


class MIoU:
    """Accumulates the Occ3D confusion matrix over a dataset (memory: one 18 x 18 matrix).

    Example::

        m = MIoU()
        for pred, gt, mask in frames:
            m.add(pred, gt, mask)
        print(m.result().miou)
    """

    def __init__(self) -> None:
        self.confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
        self.frames = 0

    def add(self, pred: Any, gt: Any, mask: Any = None) -> None:
        """Add one frame.

        Args:
            pred: (X, Y, Z) integer labels 0..17 (array or tensor).
            gt: (X, Y, Z) integer labels 0..17 or 255 (unobserved, excluded).
            mask: optional (X, Y, Z) bool or 0/1 (mask_camera or mask_lidar); voxels where it is
                false never count. None: every voxel counts.

        Raises:
            MetricsError: shapes differ, or a label is outside the class table.
        """
        gt_arr = _labels(gt, 'gt', None, allow_unobserved=True)
        pred_arr = _labels(pred, 'pred', gt_arr.shape, allow_unobserved=False)
        select = gt_arr != UNOBSERVED_LABEL
        if mask is not None:
            mask_arr = _to_numpy(mask, 'mask')
            if mask_arr.shape != gt_arr.shape:
                raise MetricsError(f'mask: expected shape {gt_arr.shape}, got {mask_arr.shape}')
            select &= mask_arr.astype(bool, copy=False)
        codes = pred_arr[select] * NUM_CLASSES + gt_arr[select]
        self.confusion += np.bincount(codes, minlength=NUM_CLASSES * NUM_CLASSES).reshape(NUM_CLASSES, NUM_CLASSES)
        self.frames += 1

    def result(self) -> MIoUResult:
        """Per-class IoU, mIoU and the confusion matrix of everything added so far."""
        tp = np.diag(self.confusion)
        union = self.confusion.sum(axis=0) + self.confusion.sum(axis=1) - tp
        iou = _ratio(tp, union)
        return MIoUResult(iou, _nanmean(iou[:NUM_SEMANTIC]), self.confusion.copy())


# --------------------------------------------------------------------------------------------------
# Rays and origins


def ray_pitch_angles() -> np.ndarray:
    """The 39 RayIoU pitch angles [rad], ascending (negative: below the horizon).

    ``-(pi/2 - atan(k))`` for k = 1..10, then extended by the last step while below 0.21 rad
    (the nuScenes lidar's upper field of view).
    """
    pitches = [-(math.pi / 2.0 - math.atan(k)) for k in range(1, 11)]
    while pitches[-1] < 0.21:
        pitches.append(pitches[-1] + (pitches[-1] - pitches[-2]))
    out = np.asarray(pitches, dtype=np.float64)
    assert out.shape == (39,), out.shape
    return out


def ray_directions() -> np.ndarray:
    """The 14,040 RayIoU unit directions (39 pitches x 360 azimuths), (14040, 3) float64, ego frame.

    Row ``p * 360 + a`` has pitch ``ray_pitch_angles()[p]`` and azimuth ``a`` degrees
    (counter-clockwise from x, the ego's forward axis).
    """
    pitch = ray_pitch_angles()[:, None]
    azimuth = np.deg2rad(np.arange(360, dtype=np.float64))[None, :]
    dirs = np.stack(
        np.broadcast_arrays(np.cos(pitch) * np.cos(azimuth), np.cos(pitch) * np.sin(azimuth), np.sin(pitch)), axis=-1
    ).reshape(-1, 3)
    assert dirs.shape == (14040, 3), dirs.shape
    return dirs


def _poses(value: Any, name: str) -> np.ndarray:
    arr = _to_numpy(value, name).astype(np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (4, 4):
        raise MetricsError(f'{name}: expected 4 x 4 homogeneous transforms (N, 4, 4), got shape {arr.shape}')
    if not np.all(np.isfinite(arr)):
        raise MetricsError(f'{name}: poses must be finite')
    return arr


def lidar_origins(
    scene_ego_poses: Any,
    current_ego_pose: Any,
    lidar_translation: tuple[float, float, float] = LIDAR_TRANSLATION,
    max_range: float = ORIGIN_RANGE,
    max_origins: int = MAX_ORIGINS,
) -> np.ndarray:
    """RayIoU ray origins of one frame: the scene's LIDAR_TOP positions in the current ego frame.

    Args:
        scene_ego_poses: (N, 4, 4) ``T_map_ego`` of every keyframe of the scene, in time order
            (the current frame need not be among them).
        current_ego_pose: (4, 4) ``T_map_ego`` of the evaluated frame.
        lidar_translation: LIDAR_TOP mounting position in base_link [m].
        max_range: keep origins with |x| < max_range and |y| < max_range [m] (current ego frame).
        max_origins: when more remain, keep those at indices ``round(linspace(0, n - 1, max_origins))``.

    Returns:
        (M, 3) float64 origins [m] in the current ego frame, M <= max_origins (possibly 0).

    Raises:
        MetricsError: poses of the wrong shape or not finite.
    """
    poses = _poses(scene_ego_poses, 'scene_ego_poses')
    current = _poses(current_ego_pose, 'current_ego_pose')
    if len(current) != 1:
        raise MetricsError(f'current_ego_pose: expected one 4 x 4 pose, got {len(current)}')
    lidar = np.append(np.asarray(lidar_translation, dtype=np.float64), 1.0)
    if lidar.shape != (4,):
        raise MetricsError(f'lidar_translation: expected (x, y, z) [m], got {lidar_translation!r}')
    in_map = poses @ lidar  # (N, 4)
    origins = (np.linalg.inv(current[0]) @ in_map.T).T[:, :3]
    keep = (np.abs(origins[:, 0]) < max_range) & (np.abs(origins[:, 1]) < max_range)
    origins = origins[keep]
    if len(origins) > max_origins:
        origins = origins[np.round(np.linspace(0, len(origins) - 1, max_origins)).astype(np.int64)]
    return origins


@dataclass(frozen=True)
class RayCast:
    """The hits of every (origin, direction) ray in one label volume; rays ordered origin-major.

    Attributes:
        label: (R,) int64 label of the first non-free voxel; 17 (free) for rays without one.
        depth: (R,) float64 [m] where the ray leaves that voxel (or the grid).
        voxel: (R,) int64 flat index of the hit voxel, -1 where none.
    """

    label: np.ndarray
    depth: np.ndarray
    voxel: np.ndarray


def cast_rays(labels: Any, origins: Any, grid: GridSpec = OCC3D_GRID, directions: np.ndarray | None = None) -> RayCast:
    """Cast the RayIoU rays from every origin through a label volume.

    Args:
        labels: (X, Y, Z) integer labels on ``grid`` (array or tensor); every label but 17 is
            occupied, 255 included.
        origins: (M, 3) [m] in the grid's frame (base_link).
        grid: the label volume's grid.
        directions: (D, 3) ray directions; default :func:`ray_directions`.

    Returns:
        :class:`RayCast` of M * D rays (origin-major).

    Raises:
        MetricsError: labels not of the grid's shape, origins not (M, 3).
    """
    arr = _to_numpy(labels, 'labels')
    if arr.shape != grid.shape:
        raise MetricsError(f'labels: expected shape {grid.shape}, got {arr.shape}')
    org = _to_numpy(origins, 'origins').astype(np.float64)
    if org.ndim != 2 or org.shape[1] != 3:
        raise MetricsError(f'origins: expected (M, 3) metres, got shape {org.shape}')
    dirs = ray_directions() if directions is None else np.asarray(directions, dtype=np.float64)
    return _cast(arr, grid, np.repeat(org, len(dirs), axis=0), np.tile(dirs, (len(org), 1)))


def _cast(arr: np.ndarray, grid: GridSpec, ray_o: np.ndarray, ray_d: np.ndarray) -> RayCast:
    """:func:`cast_rays` for explicit rays (R, 3) origins [m] and directions."""
    hits = first_hits(grid, arr != FREE_LABEL, ray_o, ray_d)
    flat = arr.reshape(-1)
    label = np.full(len(ray_o), FREE_LABEL, dtype=np.int64)
    found = hits.voxel >= 0
    label[found] = flat[hits.voxel[found]]
    return RayCast(label, hits.depth, hits.voxel)


# --------------------------------------------------------------------------------------------------
# RayIoU and mAVE


@dataclass(frozen=True)
class RayResult:
    """RayIoU and mAVE over a set of frames.

    Attributes:
        thresholds: the depth thresholds [m], (T,).
        iou: (T, 17) float64 IoU per threshold and class; NaN where GT_c and Pred_c are both 0.
        ray_iou: nanmean of ``iou``.
        ray_iou_at: (T,) class nanmean at each threshold.
        ave: (17,) float64 average velocity error [m/s] per class; NaN for classes without flow
            and for flow classes without a true-positive ray at 2 m.
        mave: nanmean of ``ave`` over the flow classes; NaN when no flow was given or no class has one.
        occ_score: 0.9 ray_iou + 0.1 max(1 - mave, 0); NaN when mave is NaN.
        rays: number of counted rays (ground-truth hit not free).
    """

    thresholds: np.ndarray
    iou: np.ndarray
    ray_iou: float
    ray_iou_at: np.ndarray
    ave: np.ndarray
    mave: float
    occ_score: float
    rays: int


class RayMetrics:
    """Accumulates RayIoU and mAVE counts over a dataset (memory: a few small tables).

    Example::

        rm = RayMetrics()
        for frame in frames:
            origins = lidar_origins(scene_poses, frame.ego_pose)
            rm.add(pred, gt, origins, pred_flow, gt_flow)
        print(rm.result().ray_iou)
    """

    def __init__(self, grid: GridSpec = OCC3D_GRID) -> None:
        self.grid = grid
        self.thresholds = np.asarray(RAY_THRESHOLDS, dtype=np.float64)
        self.directions = ray_directions()
        self.gt_count = np.zeros(NUM_SEMANTIC, dtype=np.int64)
        self.pred_count = np.zeros(NUM_SEMANTIC, dtype=np.int64)
        self.tp_count = np.zeros((len(self.thresholds), NUM_SEMANTIC), dtype=np.int64)
        self.flow_error = np.zeros(NUM_SEMANTIC, dtype=np.float64)
        self.flow_count = np.zeros(NUM_SEMANTIC, dtype=np.int64)
        self.flow_frames = 0
        self.frames = 0
        self.rays = 0

    def _flow(self, value: Any, name: str) -> np.ndarray:
        arr = _to_numpy(value, name)
        expected = self.grid.shape + (2,)
        if arr.shape != expected:
            raise MetricsError(f'{name}: expected flow of shape {expected} (vx, vy) [m/s], got {arr.shape}')
        return arr.reshape(-1, 2).astype(np.float64, copy=False)

    def add(
        self, pred_labels: Any, gt_labels: Any, origins_ego: Any, pred_flow: Any = None, gt_flow: Any = None
    ) -> None:
        """Add one frame.

        Args:
            pred_labels: (X, Y, Z) integer labels 0..17 on the metric's grid (array or tensor).
            gt_labels: (X, Y, Z) integer labels 0..17 or 255 (255 counts as occupied).
            origins_ego: (M, 3) ray origins [m] in the frame's ego frame (see :func:`lidar_origins`);
                M = 0 adds nothing but the frame count.
            pred_flow, gt_flow: optional (X, Y, Z, 2) (vx, vy) [m/s]; mAVE counts only frames that
                give both.

        Raises:
            MetricsError: wrong shapes or labels outside the class table.
        """
        gt = _labels(gt_labels, 'gt_labels', self.grid.shape, allow_unobserved=True)
        pred = _labels(pred_labels, 'pred_labels', self.grid.shape, allow_unobserved=True)
        origins = _to_numpy(origins_ego, 'origins_ego').astype(np.float64)
        if origins.ndim != 2 or origins.shape[1] != 3:
            raise MetricsError(f'origins_ego: expected (M, 3) metres, got shape {origins.shape}')
        with_flow = pred_flow is not None and gt_flow is not None
        pflow = self._flow(pred_flow, 'pred_flow') if with_flow else None
        gflow = self._flow(gt_flow, 'gt_flow') if with_flow else None
        self.frames += 1
        self.flow_frames += int(with_flow)
        if len(origins) == 0:
            return
        ray_o = np.repeat(origins, len(self.directions), axis=0)
        ray_d = np.tile(self.directions, (len(origins), 1))
        g = _cast(gt, self.grid, ray_o, ray_d)
        counted = g.label != FREE_LABEL
        g_label, g_depth, g_voxel = g.label[counted], g.depth[counted], g.voxel[counted]
        # Rays whose ground-truth hit is free never count: the prediction is cast only along the others.
        p = _cast(pred, self.grid, ray_o[counted], ray_d[counted])
        p_label, p_depth, p_voxel = p.label, p.depth, p.voxel
        self.rays += int(counted.sum())
        self.gt_count += np.bincount(g_label, minlength=256)[:NUM_SEMANTIC]
        self.pred_count += np.bincount(p_label, minlength=256)[:NUM_SEMANTIC]
        same = (p_label == g_label) & (g_label < NUM_SEMANTIC)
        error = np.abs(p_depth - g_depth)
        for j, t in enumerate(self.thresholds):
            self.tp_count[j] += np.bincount(g_label[same & (error < t)], minlength=256)[:NUM_SEMANTIC]
        if pflow is not None and gflow is not None:
            tp = same & (error < FLOW_THRESHOLD)
            err = np.linalg.norm(pflow[p_voxel[tp]] - gflow[g_voxel[tp]], axis=1)
            self.flow_error += np.bincount(g_label[tp], weights=err, minlength=256)[:NUM_SEMANTIC]
            self.flow_count += np.bincount(g_label[tp], minlength=256)[:NUM_SEMANTIC]

    def result(self) -> RayResult:
        """RayIoU per threshold and class, mAVE and OccScore of everything added so far."""
        iou = _ratio(self.tp_count, self.gt_count[None] + self.pred_count[None] - self.tp_count)
        ray_iou_at = np.array([_nanmean(row) for row in iou])
        ray_iou = _nanmean(iou)
        ave = np.full(NUM_SEMANTIC, np.nan)
        flow = list(FLOW_CLASSES)
        if self.flow_frames:
            ave[flow] = _ratio(self.flow_error[flow], self.flow_count[flow])
        mave = _nanmean(ave[flow])
        occ_score = math.nan if math.isnan(mave) else 0.9 * ray_iou + 0.1 * max(1.0 - mave, 0.0)
        return RayResult(self.thresholds.copy(), iou, ray_iou, ray_iou_at, ave, mave, occ_score, self.rays)


# --------------------------------------------------------------------------------------------------
# Report


def _json_value(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _cell(value: float | None, scale: float = 100.0, digits: int = 2) -> str:
    return '-' if value is None or math.isnan(value) else f'{value * scale:.{digits}f}'


@dataclass
class MetricsReport:
    """All metrics of one evaluation, for JSON and a Markdown table.

    Values are fractions (IoU in [0, 1]) and m/s (AVE); the Markdown table shows IoU in percent.
    A metric that was not computed is None; a class without data is NaN.

    Attributes:
        class_names: the 17 semantic class names (labels 0..16).
        iou: (17,) Occ3D IoU per class, or None.
        miou: Occ3D mIoU, or None.
        thresholds: RayIoU thresholds [m].
        ray_iou_class: (T, 17) RayIoU per threshold and class, or None.
        ray_iou: RayIoU, or None.
        ray_iou_at: (T,) RayIoU per threshold, or None.
        ave: (17,) AVE per class [m/s] (NaN outside the flow classes), or None.
        mave: mAVE [m/s], or None.
        occ_score: OccScore, or None.
        frames: frames evaluated.
    """

    class_names: tuple[str, ...] = CLASS_NAMES[:NUM_SEMANTIC]
    iou: np.ndarray | None = None
    miou: float | None = None
    thresholds: tuple[float, ...] = RAY_THRESHOLDS
    ray_iou_class: np.ndarray | None = None
    ray_iou: float | None = None
    ray_iou_at: np.ndarray | None = None
    ave: np.ndarray | None = None
    mave: float | None = None
    occ_score: float | None = None
    frames: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_results(
        cls, miou: MIoUResult | None = None, rays: RayResult | None = None, frames: int = 0
    ) -> MetricsReport:
        """Combine an :class:`MIoUResult` and/or a :class:`RayResult`."""
        report = cls(frames=frames)
        if miou is not None:
            report.iou = miou.iou[:NUM_SEMANTIC].copy()
            report.miou = miou.miou
        if rays is not None:
            report.thresholds = tuple(float(t) for t in rays.thresholds)
            report.ray_iou_class = rays.iou.copy()
            report.ray_iou = rays.ray_iou
            report.ray_iou_at = rays.ray_iou_at.copy()
            report.ave = rays.ave.copy()
            report.mave = rays.mave
            report.occ_score = rays.occ_score
        return report

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dictionary; NaN becomes None (null)."""

        def per_class(values: np.ndarray | None) -> dict[str, float | None] | None:
            if values is None:
                return None
            return {name: _json_value(v) for name, v in zip(self.class_names, values)}

        out: dict[str, Any] = {
            'frames': self.frames,
            'miou': _json_value(self.miou) if self.miou is not None else None,
            'iou': per_class(self.iou),
            'ray_iou': _json_value(self.ray_iou) if self.ray_iou is not None else None,
            'ray_iou_at': None,
            'ray_iou_class': None,
            'mave': _json_value(self.mave) if self.mave is not None else None,
            'ave': None,
            'occ_score': _json_value(self.occ_score) if self.occ_score is not None else None,
        }
        if self.ray_iou_at is not None and self.ray_iou_class is not None:
            out['ray_iou_at'] = {f'{t:g}': _json_value(v) for t, v in zip(self.thresholds, self.ray_iou_at)}
            out['ray_iou_class'] = {f'{t:g}': per_class(row) for t, row in zip(self.thresholds, self.ray_iou_class)}
        if self.ave is not None:
            out['ave'] = {self.class_names[c]: _json_value(self.ave[c]) for c in FLOW_CLASSES}
        out.update(self.extra)
        return out

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of :meth:`to_dict` (strict JSON: no NaN)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_markdown(self) -> str:
        """A per-class Markdown table (IoU in %, AVE in m/s) followed by a summary list."""
        header = ['class']
        if self.iou is not None:
            header.append('IoU %')
        if self.ray_iou_class is not None:
            header += [f'RayIoU@{t:g} %' for t in self.thresholds]
        if self.ave is not None:
            header.append('AVE m/s')
        lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
        for c, name in enumerate(self.class_names):
            row = [name]
            if self.iou is not None:
                row.append(_cell(self.iou[c]))
            if self.ray_iou_class is not None:
                row += [_cell(self.ray_iou_class[j, c]) for j in range(len(self.thresholds))]
            if self.ave is not None:
                row.append(_cell(self.ave[c], 1.0, 3))
            lines.append('| ' + ' | '.join(row) + ' |')
        summary = ['', f'- frames: {self.frames}']
        if self.miou is not None:
            summary.append(f'- mIoU: {_cell(self.miou)} %')
        if self.ray_iou is not None and self.ray_iou_at is not None:
            at = ', '.join(f'@{t:g} m {_cell(v)}' for t, v in zip(self.thresholds, self.ray_iou_at))
            summary.append(f'- RayIoU: {_cell(self.ray_iou)} % ({at})')
        if self.mave is not None:
            summary.append(f'- mAVE: {_cell(self.mave, 1.0, 3)} m/s')
        if self.occ_score is not None:
            summary.append(f'- OccScore: {_cell(self.occ_score)} %')
        return '\n'.join(lines + summary) + '\n'
