"""Splat tables of the view transform: BEVPoolv2 as host-built tables (numpy only, no torch).

LSS lifts every image feature pixel to D depth bins; each frustum point
``(camera n, bin d, row v, column u)`` carries ``depth[n, d, v, u] * feat[n, v, u, :]``
and lands in one BEV cell. FlashOCC sums these with the ``bev_pool_v2`` CUDA
kernel over runs of points sorted by cell. Here the same sum is a short chain
of Gather / Mul / ReduceSum ops (all native in the TensorRT 10 ONNX parser and
fp16-safe: no scatter with a reduction, no cumulative sum):

1. level 0: the points, sorted by cell, are cut into chunks of ``L0`` points
   that never straddle two cells (a cell's last chunk is padded with an index
   to an appended zero depth). ``depth_index`` and ``feat_index`` (R0, L0)
   gather depths (R0, L0) and features (R0, L0, C); Mul and ReduceSum over
   L0 give one partial sum per chunk, (R0, C).
2. levels 1..: ``reduce_k`` (R_k, L_k) gathers the rows of the previous level
   (plus an appended zero row) chunk by chunk, only for the cells that still
   have more than one row, and sums them. After the last level (whose width is
   the largest remaining row count of any cell) every cell has one row.
3. ``cell_index`` (Y*X,) picks each BEV cell's final row from the
   concatenation of all levels' rows plus a zero row (empty cells -> the zero
   row), giving the dense map (Y*X, C) -> (C, Y, X).

All table lengths are dynamic, so one exported graph serves any rig. The
tables are built on the host by :func:`build_splat_tables` from the rig
matrices (numpy only, no ROS, no torch, vectorised); :class:`~.splat.Splat`
runs them inside the graph. Every table has at least one row, whatever the rig
(a level that no cell needs is one padding row summing zeros, which no cell
points at), so a TensorRT profile minimum of 1 row always holds.
:func:`mask_cameras` switches cameras off in existing tables without changing
their shapes.

Frames and conventions: points are in ``base_link``; the BEV map is (C, Y, X)
with x along the width; cell (ix, iy) has flat index ``iy * X + ix``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..rig import RigMatrices
from .config import ModelConfig

__all__ = [
    'SPLAT_CHUNKS',
    'SplatError',
    'bev_cells',
    'build_splat_tables',
    'camera_coverage',
    'check_splat_tables',
    'exclusive_columns',
    'frustum_cells',
    'frustum_points',
    'mask_cameras',
    'splat_table_names',
]


class SplatError(ValueError):
    """Rig matrices or splat tables are malformed."""


SPLAT_CHUNKS: tuple[int, ...] = (8, 4)
"""Chunk lengths of the fixed-width levels (level 0 gathers points, level 1 chunk sums);
a final level of dynamic width follows. Chosen by measuring the M1-geometry splat on
onnxruntime CPU (2 cores, medians, one run): (8, 4) 36 ms, (16, 4) 37 ms, (8, 4, 4) 50 ms,
(4, 4, 4) 55 ms, (16,) 47 ms, (8,) 59 ms, (32, 4) 55 ms. A MatMul (R, 1, L) @ (R, L, C) in
place of Mul + ReduceSum at level 0 measured within noise (22 vs 24 ms); gathering
channel-first (C, R, L) was 5x slower."""


def splat_table_names(levels: int = len(SPLAT_CHUNKS)) -> tuple[str, ...]:
    """Names of the table inputs, in graph input order, for ``levels`` fixed-width levels.

    ``splat_depth_index``, ``splat_feat_index`` (level 0), ``splat_reduce_1`` ...
    ``splat_reduce_{levels}`` (the last one is the per-cell level) and ``splat_cell_index``.
    """
    return (
        ('splat_depth_index', 'splat_feat_index')
        + tuple(f'splat_reduce_{k}' for k in range(1, levels + 1))
        + ('splat_cell_index',)
    )


def _check_matrices(matrices: RigMatrices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c2e = np.asarray(matrices.cam_to_ego, dtype=np.float64)
    k = np.asarray(matrices.intrinsics, dtype=np.float64)
    t = np.asarray(matrices.image_transform, dtype=np.float64)
    n = c2e.shape[0] if c2e.ndim == 3 else -1
    expected = (('cam_to_ego', c2e, (n, 4, 4)), ('intrinsics', k, (n, 3, 3)), ('image_transform', t, (n, 3, 3)))
    for name, arr, shape in expected:
        if n <= 0 or arr.shape != shape:
            raise SplatError(
                f'rig matrices: {name} must have shape (N, {shape[1]}, {shape[2]}) with the same N >= 1, '
                f'got {arr.shape}'
            )
        if not np.all(np.isfinite(arr)):
            raise SplatError(f'rig matrices: {name} has non-finite values')
    if np.any(np.abs(np.linalg.det(k)) < 1e-12) or np.any(np.abs(np.linalg.det(t)) < 1e-12):
        raise SplatError(
            'rig matrices: an intrinsics or image_transform matrix is singular (zero focal length or scale?)'
        )
    return c2e, k, t


def frustum_points(config: ModelConfig, matrices: RigMatrices) -> np.ndarray:
    """Ego-frame position of every frustum point, FlashOCC's geometry.

    Feature pixel ``(u, v)`` sits at network-image pixel
    ``(linspace(0, W_img - 1, W_feat)[u], linspace(0, H_img - 1, H_feat)[v])``;
    at depth ``d`` it is taken back through ``image_transform``, ``intrinsics``
    and ``cam_to_ego``.

    Args:
        config: the network config (image and feature size, depth bins).
        matrices: N cameras (:meth:`Rig.matrices` for the config's image size).

    Returns:
        (N, D, H_feat, W_feat, 3) float64 [m] in ``base_link``.

    Raises:
        SplatError: malformed matrices.
    """
    c2e, k, t = _check_matrices(matrices)
    (w_img, h_img), (w_f, h_f) = config.image_size, config.feature_size
    depths = config.depth_bins
    us = np.linspace(0.0, w_img - 1.0, w_f)
    vs = np.linspace(0.0, h_img - 1.0, h_f)
    d, v, u = np.meshgrid(depths, vs, us, indexing='ij')  # (D, H, W)
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)  # network pixels, homogeneous
    # network px -> source px -> camera ray (z = 1) -> camera point at depth d -> ego
    back = np.linalg.inv(k) @ np.linalg.inv(t)  # (N, 3, 3)
    rays = np.einsum('nij,dhwj->ndhwi', back, pix)
    rays = rays / rays[..., 2:3]
    cam = rays * d[None, ..., None]
    rot, trans = c2e[:, :3, :3], c2e[:, :3, 3]
    return np.einsum('nij,ndhwj->ndhwi', rot, cam) + trans[:, None, None, None, :]


def bev_cells(config: ModelConfig, points: np.ndarray) -> np.ndarray:
    """BEV cell of ego-frame points: (...,) int64 ``iy * X + ix``, -1 outside the grid.

    Args:
        config: grid, ``bev_z_range`` and ``truncate_bins``.
        points: (..., 3) [m] in ``base_link``.

    With ``config.truncate_bins`` (FlashOCC) the cell coordinate ``(p - lower) / cell`` is
    truncated toward zero and the point kept where the index lies in the grid, so points up
    to one cell below a lower bound land in the first cell; otherwise floor and strict bounds.
    """
    grid = config.grid
    lower = np.array([grid.lower[0], grid.lower[1], config.bev_z_range[0]])
    cell = np.array([grid.voxel_size, grid.voxel_size, config.bev_z_range[1] - config.bev_z_range[0]])
    rel = (np.asarray(points, dtype=np.float64) - lower) / cell
    finite = np.all(np.isfinite(rel), axis=-1)
    rel = np.where(finite[..., None], rel, -2.0)
    idx = np.trunc(rel) if config.truncate_bins else np.floor(rel)
    x_size, y_size = config.bev_size
    inside = (
        finite
        & (idx[..., 0] >= 0)
        & (idx[..., 0] < x_size)
        & (idx[..., 1] >= 0)
        & (idx[..., 1] < y_size)
        & (idx[..., 2] == 0)
    )
    idx = np.where(inside[..., None], idx, 0).astype(np.int64)
    return np.where(inside, idx[..., 1] * x_size + idx[..., 0], -1)


def frustum_cells(config: ModelConfig, matrices: RigMatrices) -> np.ndarray:
    """BEV cell of every frustum point: (N, D, H_feat, W_feat) int64, ``iy * X + ix``, -1 outside the grid."""
    return bev_cells(config, frustum_points(config, matrices))


def camera_coverage(config: ModelConfig, matrices: RigMatrices) -> np.ndarray:
    """Which BEV cells each camera's frustum reaches.

    Args:
        config: the network config (grid, image and feature size, depth bins).
        matrices: N cameras (:meth:`Rig.matrices` for the config's image size).

    Returns:
        (N, Y*X) bool, cell ``iy * X + ix``: True where a frustum point of camera n lands.

    Raises:
        SplatError: malformed matrices.
    """
    cells = frustum_cells(config, matrices)
    n = cells.shape[0]
    x_size, y_size = config.bev_size
    flat = cells.reshape(n, -1)
    cover = np.zeros((n, y_size * x_size + 1), dtype=bool)  # the last column collects points outside the grid
    rows = np.repeat(np.arange(n), flat.shape[1])
    cover[rows, np.where(flat >= 0, flat, y_size * x_size).reshape(-1)] = True
    return cover[:, :-1]


def exclusive_columns(coverage: np.ndarray, config: ModelConfig, active: Sequence[bool]) -> np.ndarray:
    """Voxel columns that only inactive cameras see: no active camera's frustum reaches them, an inactive one's does.

    Args:
        coverage: (N, Y*X) bool from :func:`camera_coverage`.
        config: the network config (its grid gives X, Y).
        active: one bool per camera, in rig order.

    Returns:
        (X, Y) bool in the voxel grid's ``[x, y]`` order: True for the columns a failed camera alone covered.

    Raises:
        SplatError: ``active`` does not have N entries or ``coverage`` is not (N, Y*X).
    """
    flags = np.asarray(active, dtype=bool).reshape(-1)
    x_size, y_size = config.bev_size
    if coverage.ndim != 2 or coverage.shape[1] != x_size * y_size or coverage.shape[0] != flags.shape[0]:
        raise SplatError(
            f'exclusive_columns: coverage of shape {coverage.shape} and {flags.shape[0]} active flags; '
            f'expected ({flags.shape[0]}, {y_size * x_size})'
        )
    seen_active = coverage[flags].any(axis=0)
    seen_inactive = coverage[~flags].any(axis=0)
    return (seen_inactive & ~seen_active).reshape(y_size, x_size).T


def _chunk_rows(group: np.ndarray, length: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Cut sorted group ids into chunks of ``length`` items that never straddle two groups.

    Args:
        group: (M,) non-decreasing group ids (e.g. cells), M >= 1.
        length: chunk length; None = one chunk per group, as wide as the largest group.

    Returns:
        ``(table, chunk_group)``: table (R, L) int64 of item positions with ``M``
        (an appended zero item) as padding, and the group id (R,) of each chunk.
    """
    m = group.shape[0]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    counts = np.diff(np.r_[starts, m])
    rank = np.arange(m) - np.repeat(starts, counts)  # position of each item within its group
    if length is None:
        length = int(counts.max())
    chunks_per_group = -(-counts // length)
    chunk_start = np.r_[0, np.cumsum(chunks_per_group)[:-1]]
    table = np.full((int(chunks_per_group.sum()), length), m, dtype=np.int64)
    row = np.repeat(chunk_start, counts) + rank // length
    table[row, rank % length] = np.arange(m)
    return table, np.repeat(group[starts], chunks_per_group)


def build_splat_tables(
    config: ModelConfig, matrices: RigMatrices, chunks: tuple[int, ...] = SPLAT_CHUNKS
) -> dict[str, np.ndarray]:
    """The splat tables for one rig: the graph inputs named by :func:`splat_table_names`.

    Args:
        config: the network config (image size, depth bins, BEV grid).
        matrices: ``rig.matrices(*config.image_size)``; N must equal the number of images fed.
        chunks: fixed chunk lengths of level 0 (points) and of levels 1 .. len(chunks)-1
            (default :data:`SPLAT_CHUNKS`); a last level of one row per remaining cell follows.

    Returns:
        name -> int64 array:

        - ``splat_depth_index`` (R0, L0): flat index into depth (N*D*H*W) + 1 zero slot at N*D*H*W.
        - ``splat_feat_index`` (R0, L0): flat index into features (N*H*W) (padding: 0, its depth is zero).
        - ``splat_reduce_k`` (R_k, L_k), k = 1 .. len(chunks): rows of level k-1 (index R_{k-1} = zero
          row), covering only the cells that still have more than one row at level k-1; after the
          last level every cell has one row. A level that no cell needs (every cell already has one
          row, e.g. one camera or a sparse rig) is a single padding row ``[[R_{k-1}]]`` (a zero row)
          that ``splat_cell_index`` never references, so every table has at least one row.
        - ``splat_cell_index`` (Y*X,): for each BEV cell ``iy * X + ix`` its final row in the
          concatenation of all levels' rows plus one zero row (empty cells point at the zero row).

    Raises:
        SplatError: malformed matrices, bad chunk lengths, or no frustum point inside the grid (a rig
            that sees nothing of the grid is a calibration error; to switch cameras off use :func:`mask_cameras`).
    """
    if len(chunks) < 1 or any(int(c) < 1 for c in chunks):
        raise SplatError(f'build_splat_tables: chunks must be one or more positive lengths, got {chunks}')
    cells = frustum_cells(config, matrices)  # (N, D, H, W)
    n, d, h, w = cells.shape
    flat = cells.reshape(-1)
    keep = np.flatnonzero(flat >= 0)
    if keep.size == 0:
        raise SplatError('build_splat_tables: no frustum point falls inside the BEV grid; check the rig extrinsics')
    feat_of_point = (keep // (d * h * w)) * (h * w) + keep % (h * w)
    # sort by cell, then by feature pixel (memory locality of the feature gather)
    order = np.lexsort((feat_of_point, flat[keep]))
    depth_idx, feat_idx, cell = keep[order], feat_of_point[order], flat[keep][order]

    table, group = _chunk_rows(cell, int(chunks[0]))
    pad = table == cell.shape[0]
    safe = np.minimum(table, cell.shape[0] - 1)
    tables = {
        'splat_depth_index': np.where(pad, n * d * h * w, depth_idx[safe]),
        'splat_feat_index': np.where(pad, 0, feat_idx[safe]),
    }
    x_size, y_size = config.bev_size
    final_row = np.full(x_size * y_size, -1, dtype=np.int64)  # row in the concatenation of all levels
    offset = 0  # start of the previous level's rows in that concatenation
    rows_prev = table.shape[0]  # rows of the previous level (padding rows included)
    for k in range(1, len(chunks) + 1):
        # group: the cell of each real row of level k-1 (a padding level has none)
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if group.size else group
        counts = np.diff(np.r_[starts, group.shape[0]])
        single = starts[counts == 1]
        final_row[group[single]] = offset + single  # done: this cell has one row at level k-1
        rows_multi = np.flatnonzero(np.repeat(counts > 1, counts))
        length = int(chunks[k]) if k < len(chunks) else None
        if rows_multi.size:
            sub, sub_group = _chunk_rows(group[rows_multi], length)
            table = np.where(sub == rows_multi.size, rows_prev, rows_multi[np.minimum(sub, rows_multi.size - 1)])
        else:
            # no cell needs this level: one padding row that sums the zero row, referenced by no cell
            table, sub_group = np.full((1, 1), rows_prev, dtype=np.int64), np.zeros(0, dtype=np.int64)
        tables[f'splat_reduce_{k}'] = table
        offset += rows_prev
        rows_prev = table.shape[0]
        group = sub_group
    final_row[group] = offset + np.arange(group.shape[0])  # the last level: one row per remaining cell
    offset += rows_prev
    tables['splat_cell_index'] = np.where(final_row < 0, offset, final_row)
    return {name: np.ascontiguousarray(v, dtype=np.int64) for name, v in tables.items()}


def check_splat_tables(
    tables: Mapping[str, np.ndarray], config: ModelConfig, num_cameras: int, levels: int = len(SPLAT_CHUNKS)
) -> None:
    """Check names, ranks and index ranges of splat tables before they reach a runtime.

    Args:
        tables: name -> array, as from :func:`build_splat_tables`.
        config: the network config the tables are meant for.
        num_cameras: N, the number of images fed with them.
        levels: number of ``splat_reduce_k`` tables.

    Raises:
        SplatError: naming the table and what was expected.
    """
    names = splat_table_names(levels)
    missing = [nm for nm in names if nm not in tables]
    if missing:
        raise SplatError(f'splat tables: missing {missing}; expected {list(names)}')
    d, (w, h) = config.num_depth_bins, config.feature_size
    depth = np.asarray(tables['splat_depth_index'])
    feat = np.asarray(tables['splat_feat_index'])
    if depth.ndim != 2 or feat.shape != depth.shape:
        raise SplatError(
            f'splat tables: splat_depth_index and splat_feat_index must be equal (R, L), '
            f'got {depth.shape} and {feat.shape}'
        )
    limits = {'splat_depth_index': num_cameras * d * h * w, 'splat_feat_index': num_cameras * h * w - 1}
    rows = depth.shape[0]
    total = rows
    for k in range(1, levels + 1):
        t = np.asarray(tables[f'splat_reduce_{k}'])
        if t.ndim != 2:
            raise SplatError(f'splat tables: splat_reduce_{k} must be 2-D (R, L), got shape {t.shape}')
        limits[f'splat_reduce_{k}'] = rows
        rows = t.shape[0]
        total += rows
    cell = np.asarray(tables['splat_cell_index'])
    x_size, y_size = config.bev_size
    if cell.shape != (x_size * y_size,):
        raise SplatError(f'splat tables: splat_cell_index must have shape ({x_size * y_size},), got {cell.shape}')
    limits['splat_cell_index'] = total
    for name, hi in limits.items():
        t = np.asarray(tables[name])
        if t.ndim == 2 and (t.shape[0] < 1 or t.shape[1] < 1):
            raise SplatError(f'splat tables: {name} must have at least one row and column, got shape {t.shape}')
        if t.dtype != np.int64:
            raise SplatError(f'splat tables: {name} must be int64, got {t.dtype}')
        if t.size and (t.min() < 0 or t.max() > hi):
            raise SplatError(f'splat tables: {name} has indices outside [0, {hi}]; built for another config or rig?')


def mask_cameras(
    tables: Mapping[str, np.ndarray], config: ModelConfig, num_cameras: int, active: Sequence[bool]
) -> dict[str, np.ndarray]:
    """Tables of the same shapes in which the inactive cameras contribute nothing.

    Every level-0 entry of an inactive camera is pointed at the zero depth slot
    (``splat_depth_index`` = N*D*H*W, ``splat_feat_index`` = 0, as padding is), so the
    splat sums zeros for it: a failed camera is switched off without rebuilding the
    tables or the engine (the shapes, and so the TensorRT profile, do not change).
    Cells that only an inactive camera sees come out as zero features.

    Args:
        tables: splat tables for ``num_cameras`` cameras (:func:`build_splat_tables`).
        config: the network config they were built for.
        num_cameras: N.
        active: one bool per camera, in rig order; False switches the camera off.

    Returns:
        a new name -> int64 array dict (the input is not modified).

    Raises:
        SplatError: ``active`` does not have N entries, or the tables are malformed.
    """
    flags = np.asarray(active, dtype=bool).reshape(-1)
    if flags.shape[0] != num_cameras:
        raise SplatError(f'mask_cameras: active needs one flag per camera ({num_cameras}), got {flags.shape[0]}')
    check_splat_tables(tables, config, num_cameras)
    out = {name: np.array(tables[name], dtype=np.int64, copy=True) for name in splat_table_names()}
    w, h = config.feature_size
    per_camera = config.num_depth_bins * h * w
    zero_slot = num_cameras * per_camera
    depth = out['splat_depth_index']
    camera = np.minimum(depth // per_camera, num_cameras - 1)  # the zero slot maps past the last camera
    off = (depth < zero_slot) & ~flags[camera]
    depth[off] = zero_slot
    out['splat_feat_index'][off] = 0
    return out
