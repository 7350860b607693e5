"""Depth targets for the LSS depth net, cast from the occupancy ground truth.

The view transform lifts every image feature pixel to D depth bins and learns the
depth distribution only through the occupancy loss; on its own it can settle on a
distribution that ignores the scene (all weight on one far bin), after which the
BEV carries no image evidence and only the height prior of the ground classes is
learned. BEVDet/BEVDepth-style training supervises the depth distribution directly
with lidar points projected into the cameras. Here the target comes from the Occ3D
labels instead: each feature pixel's ray (exactly the frustum ray of
:func:`occ_perception.model.splat_tables.frustum_points`) is cast through the
labelled grid, and the camera depth at which it enters its first non-free voxel is
the target. The labels, the rig and any augmentation (flips, image jitter) are the
sample's own, so the target stays consistent with them, and it needs no lidar scan
(Occ3D-nuScenes and the synthetic world alike).

A pixel has no target (``-1``) when its ray leaves the grid without a hit, first
meets an unobserved voxel (label 255) or a voxel outside ``mask_camera``, or when its
depth lies outside the bins. The target bin is the nearest bin value, because the
splat puts a feature exactly at the bin's depth.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..grid import FREE_LABEL, UNOBSERVED_LABEL
from ..model.config import ModelConfig
from ..model.splat_tables import frustum_points
from ..raycast import first_hits
from ..rig import RigMatrices

__all__ = ['NO_TARGET', 'DepthTargetError', 'depth_targets']

NO_TARGET = -1
"""Target value of a feature pixel without a depth target."""


class DepthTargetError(ValueError):
    """Label arrays do not fit the model's grid."""


def depth_targets(
    config: ModelConfig, matrices: RigMatrices, semantics: np.ndarray, mask_camera: np.ndarray
) -> np.ndarray:
    """Depth bin of the first labelled surface seen by every image feature pixel.

    Args:
        config: the network config (image and feature size, depth bins, grid).
        matrices: the N cameras as the splat tables were built from them (after augmentation).
        semantics: (X, Y, Z) uint8 labels in ``base_link`` (already flipped with the sample).
        mask_camera: (X, Y, Z) camera visibility mask (0/1).

    Returns:
        (N, H_feat, W_feat) int64 bin index into ``config.depth_bins``, or :data:`NO_TARGET`.

    Raises:
        DepthTargetError: label arrays of the wrong shape.
        occ_perception.model.splat_tables.SplatError: malformed matrices.
    """
    grid = config.grid
    for name, arr in (('semantics', semantics), ('mask_camera', mask_camera)):
        if np.shape(arr) != grid.shape:
            raise DepthTargetError(f'depth_targets: {name} has shape {np.shape(arr)}, expected {grid.shape}')
    near = frustum_points(_unit_depth(config), matrices)[:, 0]  # (N, H, W, 3): the ray at camera depth 1 m
    origin = np.asarray(matrices.cam_to_ego, dtype=np.float64)[:, :3, 3]  # (N, 3)
    n, h, w, _ = near.shape
    origins = np.broadcast_to(origin[:, None, None, :], near.shape).reshape(-1, 3)
    dirs = (near - origin[:, None, None, :]).reshape(-1, 3)  # camera depth 1 m per unit of this vector
    hits = first_hits(grid, semantics != FREE_LABEL, origins, dirs)
    found = hits.voxel >= 0
    target = np.full(n * h * w, NO_TARGET, dtype=np.int64)
    if found.any():
        voxel = hits.voxel[found]
        label = semantics.reshape(-1)[voxel]
        seen = mask_camera.reshape(-1)[voxel] > 0
        ix, iy, iz = grid.unflatten(voxel)
        lower = np.asarray(grid.lower, dtype=np.float64)
        o = (origins[found] - lower) / grid.voxel_size  # voxel units
        d = dirs[found] / grid.voxel_size
        corner = np.stack([ix, iy, iz], axis=1).astype(np.float64)
        with np.errstate(divide='ignore', invalid='ignore'):
            face = np.where(d > 0, corner, corner + 1.0)  # the face the ray enters through, per axis
            t_face = np.where(d != 0, (face - o) / d, -np.inf)
        depth = np.maximum(t_face.max(axis=1), 0.0)  # entry parameter = camera depth [m] (dirs have depth 1)
        bins = np.rint((depth - config.depth_min) / config.depth_step).astype(np.int64)
        ok = seen & (label != UNOBSERVED_LABEL) & (bins >= 0) & (bins < config.num_depth_bins)
        idx = np.flatnonzero(found)
        target[idx[ok]] = bins[ok]
    return target.reshape(n, h, w)


def _unit_depth(config: ModelConfig) -> ModelConfig:
    """``config`` with a single depth bin at 1 m (the frustum's rays at unit camera depth)."""
    return replace(config, depth_min=1.0, depth_max=1.5, depth_step=1.0)
