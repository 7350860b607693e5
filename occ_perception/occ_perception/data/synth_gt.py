"""Occ3D-format ground truth of the synthetic world: semantics, flow, mask_camera and mask_lidar.

Everything is in the ego frame ``base_link`` of the keyframe (the LIDAR_TOP
timestamp), on a :class:`~occ_perception.grid.GridSpec` (default Occ3D:
200 x 200 x 16, 0.4 m voxels, z in [-1, 5.4)), indexed ``[x, y, z]``.

- semantics (uint8): the ground plane z = 0 fills the voxel layer that contains
  it (layer 2, [-0.2, 0.2) m) with the ground class under each column's centre;
  above it, a voxel takes the class of the primitive that contains its centre;
  primitives thinner than two voxels are sampled at 2 x 2 horizontal points
  (+-0.1 m) at the voxel centre's height (any point inside marks the voxel), so
  walls, poles, cones and pedestrians never fall between voxel centres. Moving
  agents are written after static objects. Everything else is 17 (free). The
  ego vehicle is not in the grid.
- flow (float32, [..., 2]): for voxels of an object, its velocity over ground
  (the box's, rigid translation) rotated into the keyframe ego axes (vx, vy)
  [m/s]; 0 for static objects, ground and free space.
- mask_camera / mask_lidar (uint8 0/1): voxels traversed by a camera (lidar)
  ray, from the sensor up to and including the first occupied voxel, by an
  exact voxel traversal (Amanatides-Woo). A ray also ends where the real ray
  meets the scene (the renderer's hit distance, plus half a voxel), so a ray
  that hits a surface does not slip past its voxelised silhouette into voxels
  behind it. Camera rays go through the pixel centres of each camera's image
  resampled to ``camera_rays`` (default 200 x 112 per camera, about 0.36 degree
  spacing, denser than a voxel at the grid's 40 m edge); lidar rays are those
  of :class:`~.synth_render.LidarSpec` (32 beams, 0.4 degree azimuth). Sensors
  are at their rig positions in the keyframe ego frame.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np

from ..geometry import Transform, yaw_of
from ..grid import FREE_LABEL, OCC3D_GRID, GridSpec
from ..raycast import RaycastError, prepare_rays, traverse
from ..rig import Camera, Rig
from .synth_render import LidarSpec, lidar_ranges, pixel_rays, render_camera
from .synth_world import GROUND_Z, SPHERE, World, WorldState

__all__ = [
    'GroundTruth',
    'GroundTruthError',
    'camera_mask_rays',
    'ground_truth',
    'march_visibility',
    'save_labels_npz',
    'voxelize',
]


class GroundTruthError(ValueError):
    """Bad input for ground-truth generation (grid without the ground layer, empty ray set)."""


@dataclass
class GroundTruth:
    """Occ3D ground truth of one keyframe (shapes for the default grid).

    Attributes:
        semantics: (200, 200, 16) uint8, 0..16 classes, 17 free.
        mask_lidar: (200, 200, 16) uint8 0/1.
        mask_camera: (200, 200, 16) uint8 0/1.
        flow: (200, 200, 16, 2) float32 [m/s] in base_link axes.
        owner: (200, 200, 16) int32 object index occupying the voxel, -1 for ground and free (not saved).
    """

    semantics: np.ndarray
    mask_lidar: np.ndarray
    mask_camera: np.ndarray
    flow: np.ndarray
    owner: np.ndarray


def _ground_layer(grid: GridSpec) -> int:
    iz = int(np.floor((GROUND_Z - grid.lower[2]) / grid.voxel_size))
    if not 0 <= iz < grid.shape[2]:
        raise GroundTruthError(
            f'voxelize: the ground z={GROUND_Z} m is outside the grid z range {grid.lower[2]}..{grid.upper[2]} m'
        )
    return iz


def voxelize(world: World, state: WorldState, grid: GridSpec = OCC3D_GRID) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Semantic labels, owners and flow of the grid around the ego at ``state``.

    Returns:
        semantics (X, Y, Z) uint8, owner (X, Y, Z) int32, flow (X, Y, Z, 2) float32.
    """
    shape = grid.shape
    vs = grid.voxel_size
    lower = np.asarray(grid.lower, dtype=np.float64)
    sem = np.full(shape, FREE_LABEL, np.uint8)
    owner = np.full(shape, -1, np.int32)
    flow = np.zeros(shape + (2,), np.float32)
    ego = state.ego_pose
    inv = ego.inverse()

    # Ground layer.
    izg = _ground_layer(grid)
    xs, ys = grid.axis_centers(0), grid.axis_centers(1)
    gx, gy = np.meshgrid(xs, ys, indexing='ij')
    pts = ego.apply(np.stack([gx, gy, np.zeros_like(gx)], -1).reshape(-1, 3))
    cls, _ = world.ground_lookup(pts[:, 0], pts[:, 1])
    sem[:, :, izg] = cls.reshape(shape[0], shape[1])

    # Primitives in the ego frame.
    centers_map, yaws_map = world.primitives_at(state)
    centers = inv.apply(centers_map)
    ego_yaw = yaw_of(ego)
    yaws = yaws_map - ego_yaw
    half = world.prim_half
    reach = np.where(world.prim_kind == SPHERE, half[:, 0], np.hypot(half[:, 0], half[:, 1]))
    # primitives whose horizontal reach overlaps the grid (with a voxel of slack), on each side of each axis:
    # the grid need not be centred on the ego
    upper = np.asarray(grid.upper, dtype=np.float64)
    near = np.all(
        (centers[:, :2] + reach[:, None] > lower[:2] - vs) & (centers[:, :2] - reach[:, None] < upper[:2] + vs), axis=1
    )
    rot = ego.rotation_matrix()
    vel_ego = state.obj_velocity @ rot[:2, :2]  # R^T v for planar rotations: rows (vx, vy) map -> ego
    dynamic = np.any(state.obj_velocity != 0.0, axis=1) | world.obj_follow
    order = np.argsort(dynamic[world.prim_owner], kind='stable')
    sub = np.array([[sx, sy, 0.0] for sx in (-0.25, 0.25) for sy in (-0.25, 0.25)]) * vs
    for i in order:
        if not near[i]:
            continue
        c = centers[i]
        h = half[i]
        small = world.prim_kind[i] != SPHERE and min(h) * 2 < 2 * vs
        ext = np.array([reach[i], reach[i], h[2]])
        lo_i = np.floor((c - ext - lower) / vs).astype(np.int64)
        hi_i = np.floor((c + ext - lower) / vs).astype(np.int64)
        lo_i = np.maximum(lo_i, [0, 0, izg + 1])
        hi_i = np.minimum(hi_i, np.asarray(shape) - 1)
        if np.any(hi_i < lo_i):
            continue
        ax = [lower[a] + (np.arange(lo_i[a], hi_i[a] + 1) + 0.5) * vs for a in range(3)]
        px, py, pz = np.meshgrid(*ax, indexing='ij')
        p = np.stack([px, py, pz], -1)
        if small:
            p = p[..., None, :] + sub  # (nx, ny, nz, 4, 3)
        rel = p - c
        if world.prim_kind[i] == SPHERE:
            inside = np.einsum('...k,...k->...', rel, rel) <= h[0] * h[0]
        else:
            cy, sy = np.cos(yaws[i]), np.sin(yaws[i])
            lx = cy * rel[..., 0] + sy * rel[..., 1]
            ly = -sy * rel[..., 0] + cy * rel[..., 1]
            inside = (np.abs(lx) <= h[0]) & (np.abs(ly) <= h[1]) & (np.abs(rel[..., 2]) <= h[2])
        if small:
            inside = inside.any(axis=-1)
        if not inside.any():
            continue
        sl = tuple(slice(lo_i[a], hi_i[a] + 1) for a in range(3))
        o = int(world.prim_owner[i])
        sem[sl][inside] = world.prim_label[i]
        owner[sl][inside] = o
        flow[sl][inside] = vel_ego[o].astype(np.float32)
    return sem, owner, flow


def march_visibility(
    grid: GridSpec, occupied: np.ndarray, origins: np.ndarray, dirs: np.ndarray, max_range: np.ndarray | None = None
) -> np.ndarray:
    """Voxels traversed by rays up to and including the first occupied voxel (exact grid traversal).

    Args:
        grid: the voxel grid.
        occupied: (X, Y, Z) bool.
        origins: (R, 3) ray origins [m] in the grid's frame; they must lie inside the grid.
        dirs: (R, 3) ray directions (any length > 0).
        max_range: optional (R,) [m]: a ray also ends before a voxel it enters farther than this
            (the distance at which the real ray meets a surface, plus a tolerance).

    Returns:
        (X, Y, Z) bool.

    Raises:
        GroundTruthError: an origin outside the grid or a zero direction.
    """
    try:
        o, d, occ = prepare_rays(grid, occupied, origins, dirs, 'march_visibility')
    except RaycastError as exc:
        raise GroundTruthError(str(exc)) from exc
    idx = np.floor(o)
    if np.any(idx < 0) or np.any(idx >= np.asarray(grid.shape)):
        raise GroundTruthError('march_visibility: every ray origin must lie inside the grid')
    limit = None if max_range is None else np.asarray(max_range, dtype=np.float64) / grid.voxel_size
    visible = np.zeros(grid.num_voxels, bool)
    traverse(occ, grid.shape, o, d, limit, visible)
    return visible.reshape(grid.shape)


def _mask_camera(rig: Rig, rays: tuple[int, int]) -> list[Camera]:
    """Each camera of ``rig`` with its image resampled to ``rays`` (columns, rows): the same field of view."""
    cams = []
    for cam in rig.cameras:
        sx, sy = rays[0] / cam.width, rays[1] / cam.height
        cams.append(Camera(cam.name, np.diag([sx, sy, 1.0]) @ cam.intrinsics, rays[0], rays[1], cam.cam_to_ego))
    return cams


def camera_mask_rays(rig: Rig, rays: tuple[int, int] = (200, 112)) -> tuple[np.ndarray, np.ndarray]:
    """Origins and unit directions (R, 3) in base_link of every camera's mask rays (``rays`` = columns, rows)."""
    origins, dirs = [], []
    for cam in _mask_camera(rig, rays):
        d = pixel_rays(cam).reshape(-1, 3) @ cam.cam_to_ego.rotation_matrix().T
        dirs.append(d)
        origins.append(np.broadcast_to(cam.cam_to_ego.translation, d.shape))
    return np.concatenate(origins), np.concatenate(dirs)


def camera_ray_ranges(world: World, state: WorldState, rig: Rig, rays: tuple[int, int] = (200, 112)) -> np.ndarray:
    """Distance [m] at which each mask ray of :func:`camera_mask_rays` meets the scene (inf: sky), (R,)."""
    ranges = []
    for cam in _mask_camera(rig, rays):
        img = render_camera(world, state, cam, shade=False)
        ranges.append((img.depth / pixel_rays(cam)[..., 2]).reshape(-1))
    return np.concatenate(ranges)


RANGE_TOLERANCE = OCC3D_GRID.voxel_size / 2.0
"""How far past the real surface a mask ray may still enter a voxel [m] (half a voxel)."""


def ground_truth(
    world: World,
    state: WorldState,
    rig: Rig,
    lidar_to_ego: Transform,
    grid: GridSpec = OCC3D_GRID,
    camera_rays: tuple[int, int] = (200, 112),
    lidar: LidarSpec | None = None,
) -> GroundTruth:
    """Semantics, flow and both visibility masks of one keyframe (state at the LIDAR_TOP timestamp)."""
    sem, owner, flow = voxelize(world, state, grid)
    occupied = sem != FREE_LABEL
    o, d = camera_mask_rays(rig, camera_rays)
    reach = camera_ray_ranges(world, state, rig, camera_rays) + RANGE_TOLERANCE
    mask_camera = march_visibility(grid, occupied, o, d, reach)
    spec = lidar or LidarSpec()
    ld = spec.directions().reshape(-1, 3)
    lo = np.broadcast_to(lidar_to_ego.translation, ld.shape)
    t, _ = lidar_ranges(world, state, lidar_to_ego, spec)
    mask_lidar = march_visibility(grid, occupied, lo, ld, t.reshape(-1) + RANGE_TOLERANCE)
    return GroundTruth(sem, mask_lidar.astype(np.uint8), mask_camera.astype(np.uint8), flow, owner)


def save_labels_npz(path, gt: GroundTruth) -> None:
    """Write ``labels.npz`` (semantics, mask_lidar, mask_camera, flow) byte-reproducibly.

    ``numpy.savez_compressed`` stamps the current time into the zip entries; this
    writes the same layout (one ``.npy`` per array, deflated) with a fixed timestamp.
    """
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_DEFLATED) as zf:
        for name in ('semantics', 'mask_lidar', 'mask_camera', 'flow'):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(getattr(gt, name)), allow_pickle=False)
            info = zipfile.ZipInfo(f'{name}.npy', date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
