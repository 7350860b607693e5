"""Exact voxel traversal of many rays at once (Amanatides-Woo), vectorised over rays.

Used by the synthetic ground truth (visibility masks: every voxel a ray passes up to
and including the first occupied one) and by the RayIoU metric (first occupied voxel
and the distance at which the ray leaves it).

All rays advance together, one voxel per iteration; a ray leaves the working set when
it reaches an occupied voxel, leaves the grid, or enters a voxel beyond its range
limit. The traversal runs in voxel units (the grid's voxels are cubic), so a distance
in voxels times ``GridSpec.voxel_size`` is a distance in metres.

Tie rule: when a ray crosses two or three voxel faces at the same distance (an edge or
a corner), it steps along x first, then y, then z, one voxel per iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grid import GridSpec

__all__ = [
    'RayHits',
    'RaycastError',
    'first_hits',
    'grid_interval',
    'prepare_rays',
    'traverse',
]


class RaycastError(ValueError):
    """Bad ray-casting input (shapes, zero directions, an occupancy grid of the wrong shape)."""


_NEVER = 1e30
"""Parameter of "no crossing along this axis"; finite so that ``_NEVER * 0 == 0``."""


def prepare_rays(
    grid: GridSpec, occupied: np.ndarray, origins: np.ndarray, dirs: np.ndarray, caller: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check rays and an occupancy grid; convert them for :func:`traverse`.

    Args:
        grid: the voxel grid.
        occupied: (X, Y, Z) bool (or anything whose truth value means occupied).
        origins: (R, 3) [m] in the grid's frame.
        dirs: (R, 3) directions, any non-zero length.
        caller: name used in error messages.

    Returns:
        origins in voxel units (R, 3) float64, unit directions (R, 3) float64, flat occupancy (X * Y * Z,) bool.

    Raises:
        RaycastError: wrong shapes, non-finite values or a zero direction.
    """
    o = np.asarray(origins, dtype=np.float64)
    d = np.asarray(dirs, dtype=np.float64)
    if o.shape != d.shape or o.ndim != 2 or o.shape[1] != 3:
        raise RaycastError(f'{caller}: origins and dirs must both be (R, 3), got {o.shape}, {d.shape}')
    if not (np.all(np.isfinite(o)) and np.all(np.isfinite(d))):
        raise RaycastError(f'{caller}: origins and dirs must be finite')
    norm = np.linalg.norm(d, axis=1)
    if np.any(norm == 0):
        raise RaycastError(f'{caller}: a ray direction is zero')
    occ = np.asarray(occupied)
    if occ.shape != grid.shape:
        raise RaycastError(f'{caller}: occupied must have the grid shape {grid.shape}, got {occ.shape}')
    o_vox = (o - np.asarray(grid.lower, dtype=np.float64)) / grid.voxel_size
    return o_vox, d / norm[:, None], occ.reshape(-1).astype(bool, copy=False)


def grid_interval(shape: tuple[int, int, int], origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where rays enter and leave the box ``[0, shape)`` (slab test), in the rays' parameter.

    Args:
        shape: grid size (X, Y, Z) [voxels].
        origins: (R, 3) ray origins in voxel units.
        dirs: (R, 3) ray directions, non-zero (unit directions give distances in voxels).

    Returns:
        ``(t_enter, t_exit)``, each (R,) float64; the ray meets the box where ``t_enter < t_exit``
        (``t_enter`` is negative when the origin is inside).
    """
    upper = np.asarray(shape, dtype=np.float64)
    with np.errstate(divide='ignore', invalid='ignore'):
        t0 = (0.0 - origins) / dirs
        t1 = (upper - origins) / dirs
    inside_slab = (origins >= 0.0) & (origins < upper)
    lo = np.where(dirs != 0, np.minimum(t0, t1), np.where(inside_slab, -np.inf, np.inf))
    hi = np.where(dirs != 0, np.maximum(t0, t1), np.where(inside_slab, np.inf, -np.inf))
    return lo.max(axis=1), hi.min(axis=1)


def traverse(
    occupied_flat: np.ndarray,
    shape: tuple[int, int, int],
    origins: np.ndarray,
    dirs: np.ndarray,
    max_entry: np.ndarray | None = None,
    visited: np.ndarray | None = None,
) -> np.ndarray:
    """March rays from voxel to voxel until the first occupied voxel (the core loop).

    Args:
        occupied_flat: (X * Y * Z,) bool, C order (flat index ``(ix * Y + iy) * Z + iz``).
        shape: (X, Y, Z).
        origins: (R, 3) float64 start points in voxel units; each must lie in the grid
            (points on the upper faces count as inside the last voxel).
        dirs: (R, 3) float64 unit directions.
        max_entry: optional (R,) [voxels]: a ray does not enter a voxel whose entry distance
            from its start point exceeds this.
        visited: optional (X * Y * Z,) bool, set in place for every voxel a ray passes,
            the first occupied one included.

    Returns:
        (R,) int64 flat index of each ray's first occupied voxel, -1 where the ray leaves the
        grid (or reaches its limit) without meeting one.
    """
    sizes = np.asarray(shape, dtype=np.int64)
    n_rays = len(origins)
    hits = np.full(n_rays, -1, dtype=np.int64)
    idx = np.clip(np.floor(origins).astype(np.int64), 0, sizes - 1)
    with np.errstate(divide='ignore', invalid='ignore'):
        inv = np.where(dirs != 0, 1.0 / np.abs(dirs), _NEVER)
        frac = np.maximum(np.where(dirs > 0, idx + 1 - origins, origins - idx), 0.0)
        tmax = np.where(dirs != 0, frac * inv, _NEVER)
    step = np.sign(dirs).astype(np.int32)
    ix, iy, iz = (idx[:, a].astype(np.int32) for a in range(3))
    tx, ty, tz = (tmax[:, a].astype(np.float32) for a in range(3))
    dx, dy, dz = (inv[:, a].astype(np.float32) for a in range(3))
    sx_, sy_, sz_ = (step[:, a].copy() for a in range(3))
    limit = (np.full(n_rays, np.inf) if max_entry is None else np.asarray(max_entry, np.float64)).astype(np.float32)
    ids = np.arange(n_rays, dtype=np.int64)
    ny_, nz_ = int(sizes[1]), int(sizes[2])
    nx, ny, nz = (np.uint32(v) for v in sizes)
    while ix.size:
        flat = (ix * ny_ + iy) * nz_ + iz
        if visited is not None:
            visited[flat] = True
        occ = occupied_flat[flat]
        if occ.any():
            hits[ids[occ]] = flat[occ]
        keep = ~occ
        entry = np.minimum(np.minimum(tx, ty), tz)  # where the ray enters the next voxel [voxels]
        mx = tx == entry
        my = ~mx & (ty == entry)
        mz = ~(mx | my)
        ix += sx_ * mx
        iy += sy_ * my
        iz += sz_ * mz
        tx += dx * mx
        ty += dy * my
        tz += dz * mz
        # Negative indices wrap to large unsigned values, so one comparison per axis checks both bounds.
        keep &= (ix.view(np.uint32) < nx) & (iy.view(np.uint32) < ny) & (iz.view(np.uint32) < nz) & (entry <= limit)
        if not keep.all():
            ix, iy, iz, tx, ty, tz = ix[keep], iy[keep], iz[keep], tx[keep], ty[keep], tz[keep]
            dx, dy, dz, sx_, sy_, sz_ = dx[keep], dy[keep], dz[keep], sx_[keep], sy_[keep], sz_[keep]
            limit, ids = limit[keep], ids[keep]
    return hits


@dataclass(frozen=True)
class RayHits:
    """First occupied voxel of each ray.

    Attributes:
        voxel: (R,) int64 flat index (C order) of the first occupied voxel, -1 where none.
        depth: (R,) float64 [m] from the origin: where the ray leaves that voxel; for a ray
            without a hit, where it leaves the grid (0 for a ray that never meets the grid).
    """

    voxel: np.ndarray
    depth: np.ndarray


def first_hits(grid: GridSpec, occupied: np.ndarray, origins: np.ndarray, dirs: np.ndarray) -> RayHits:
    """First occupied voxel along each ray and the distance at which the ray leaves it.

    Origins may lie outside the grid: the traversal then starts where the ray enters the grid,
    and distances are still measured from the origin.

    Args:
        grid: the voxel grid.
        occupied: (X, Y, Z) bool.
        origins: (R, 3) [m] in the grid's frame.
        dirs: (R, 3) directions (any length > 0) in the grid's frame.

    Returns:
        :class:`RayHits`.

    Raises:
        RaycastError: wrong shapes, non-finite values or a zero direction.
    """
    o, d, occ = prepare_rays(grid, occupied, origins, dirs, 'first_hits')
    shape = grid.shape
    t_enter, t_exit = grid_interval(shape, o, d)
    t_start = np.maximum(t_enter, 0.0)
    meets = t_start < t_exit
    voxel = np.full(len(o), -1, dtype=np.int64)
    depth = np.zeros(len(o), dtype=np.float64)
    if meets.any():
        om, dm, ts = o[meets], d[meets], t_start[meets]
        hit = traverse(occ, shape, om + ts[:, None] * dm, dm)
        # Exact exit distance from the hit voxel's faces (not the float32 running sums of the march).
        found = hit >= 0
        exit_t = t_exit[meets].copy()
        if found.any():
            ix, iy, iz = grid.unflatten(hit[found])
            vidx = np.stack([ix, iy, iz], axis=1).astype(np.float64)
            of, df = om[found], dm[found]
            with np.errstate(divide='ignore', invalid='ignore'):
                face = np.where(df > 0, vidx + 1.0, vidx)
                t_face = np.where(df != 0, (face - of) / df, np.inf)
            exit_t[found] = t_face.min(axis=1)
        voxel[meets] = hit
        depth[meets] = exit_t * grid.voxel_size
    return RayHits(voxel, depth)
