"""Vectorised ray casting of the synthetic world: camera images (RGB, class id, depth) and a 32-beam lidar.

Rays are cast in the ``map`` frame against the ground plane z = 0 and the
world's primitives (oriented boxes and spheres). A primitive is tested only
against the rays in its *candidate rectangle*: for a camera the pixel bounding
rectangle of its projected corners, for the lidar its elevation-row and
azimuth-column range. A per-ray distance buffer keeps the nearest hit.

Appearance (camera only) is computed once per pixel after visibility:
Lambertian shading from the surface normal and the world's sun direction plus
ambient light, a Blinn-Phong highlight on vehicles, a per-primitive base
colour (varied around a class palette by the generator), value noise on the
primitive's own coordinates (so texture moves with the object), windows on
buildings, stripes on barriers and cones, lane markings, a sky gradient and
distance haze. Output is sRGB uint8.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..geometry import Transform
from ..rig import Camera
from .synth_world import (
    GROUND_Z,
    SPHERE,
    STYLE_BUILDING,
    STYLE_FOLIAGE,
    STYLE_STRIPES,
    STYLE_VEHICLE,
    World,
    WorldState,
)

__all__ = [
    'CameraImage',
    'LidarScan',
    'LidarSpec',
    'RenderError',
    'lidar_ranges',
    'pixel_rays',
    'SKY',
    'GROUND',
    'render_camera',
    'scan_lidar',
]


class RenderError(ValueError):
    """Bad rendering input (a camera of zero size, an empty ray set)."""


SKY = -1
"""Primitive id of rays that hit nothing."""
GROUND = -2
"""Primitive id of rays that hit the ground plane."""

FAR = 600.0
"""Maximum ray length [m]; farther hits count as sky."""
NEAR = 0.05
"""Minimum hit distance [m]."""


@dataclass
class CameraImage:
    """One rendered camera image.

    Attributes:
        rgb: (H, W, 3) uint8 sRGB.
        label: (H, W) uint8 Occ3D class of the surface seen; 255 where the sky is seen.
        depth: (H, W) float32 depth along the optical axis [m]; ``inf`` for sky.
        prim: (H, W) int32 primitive index seen, :data:`GROUND` or :data:`SKY`.
        owner_hits: (N_objects,) int64 number of pixels whose ray meets the object anywhere (occluded or not).
        owner_visible: (N_objects,) int64 number of pixels where the object is the nearest surface.
    """

    rgb: np.ndarray
    label: np.ndarray
    depth: np.ndarray
    prim: np.ndarray
    owner_hits: np.ndarray
    owner_visible: np.ndarray


@dataclass(frozen=True)
class LidarSpec:
    """A spinning lidar modelled on the Velodyne HDL-32E of nuScenes' LIDAR_TOP.

    Attributes:
        elevations_deg: beam elevations (32) from -30.67 to +10.67 degrees, evenly spaced.
        azimuth_step_deg: horizontal resolution [deg] (the HDL-32E spins at 20 Hz with ~0.17 deg;
            0.4 deg here keeps the cost low; the rays are still denser than 0.4 m voxels up to ~57 m).
        max_range: [m].
    """

    elevations_deg: tuple[float, ...] = tuple(np.linspace(-30.67, 10.67, 32).tolist())
    azimuth_step_deg: float = 0.4
    max_range: float = 70.0

    @property
    def azimuths(self) -> np.ndarray:
        """(A,) azimuths [rad] in the lidar's frame, counter-clockwise from +x."""
        n = int(round(360.0 / self.azimuth_step_deg))
        return np.arange(n) * (2 * np.pi / n) - np.pi

    def directions(self) -> np.ndarray:
        """(32, A, 3) unit ray directions in a frame with z up (rows: beams, columns: azimuths)."""
        el = np.deg2rad(np.asarray(self.elevations_deg))[:, None]
        az = self.azimuths[None, :]
        return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el) * np.ones_like(az)], -1)


@dataclass
class LidarScan:
    """A lidar scan.

    Attributes:
        points: (M, 5) float32 x, y, z [m] in the lidar sensor frame, intensity (0-255), ring index (beam row).
        owner: (M,) int64 object index of each point, -1 for ground.
    """

    points: np.ndarray
    owner: np.ndarray


@lru_cache(maxsize=32)
def _pixel_rays(k_bytes: bytes, width: int, height: int) -> np.ndarray:
    k = np.frombuffer(k_bytes, dtype=np.float64).reshape(3, 3)
    u = np.arange(width, dtype=np.float64) + 0.5
    v = np.arange(height, dtype=np.float64) + 0.5
    uu, vv = np.meshgrid(u, v)
    pix = np.stack([uu, vv, np.ones_like(uu)], axis=-1)
    rays = pix @ np.linalg.inv(k).T
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    rays.setflags(write=False)
    return rays


def pixel_rays(cam: Camera) -> np.ndarray:
    """Unit ray directions (H, W, 3) float64 in the camera frame through pixel centres ``(u + 0.5, v + 0.5)``."""
    return _pixel_rays(
        np.ascontiguousarray(cam.intrinsics, dtype=np.float64).tobytes(), int(cam.width), int(cam.height)
    )


def _box_corners(centers: np.ndarray, yaws: np.ndarray, half: np.ndarray) -> np.ndarray:
    """(P, 8, 3) corners of oriented boxes (spheres: of their bounding cubes)."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    local = signs[None, :, :] * half[:, None, :]
    c, s = np.cos(yaws)[:, None], np.sin(yaws)[:, None]
    x = c * local[..., 0] - s * local[..., 1]
    y = s * local[..., 0] + c * local[..., 1]
    return np.stack([x, y, local[..., 2]], axis=-1) + centers[:, None, :]


def _cast(
    world: World,
    centers: np.ndarray,
    yaws: np.ndarray,
    origin: np.ndarray,
    dirs: np.ndarray,
    rects: np.ndarray,
    far: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hits of rays (R, C) from ``origin`` along unit ``dirs`` (R, C, 3) in map.

    Args:
        rects: (P, 4) int [r0, r1, c0, c1) candidate rectangle per primitive (empty to skip it).

    Returns:
        t (R, C) float32 distance [m] (inf for sky), prim (R, C) int32, hits (P,) rays meeting each primitive.
    """
    dirs = dirs.astype(np.float32, copy=False)
    o = origin.astype(np.float64)
    dxa = np.ascontiguousarray(dirs[..., 0])
    dya = np.ascontiguousarray(dirs[..., 1])
    dza = np.ascontiguousarray(dirs[..., 2])
    with np.errstate(divide='ignore', invalid='ignore'):
        iza = np.float32(1.0) / dza
        tg = np.where(dza < -1e-6, np.float32(GROUND_Z - o[2]) * iza, np.inf).astype(np.float32)
    tg[tg > far] = np.inf
    t_buf = tg
    prim = np.where(np.isfinite(tg), GROUND, SKY).astype(np.int32)
    hits = np.zeros(len(centers), np.int64)
    half = world.prim_half
    kind = world.prim_kind
    for i in np.nonzero((rects[:, 1] > rects[:, 0]) & (rects[:, 3] > rects[:, 2]))[0]:
        r0, r1, c0, c1 = (int(v) for v in rects[i])
        ddx = dxa[r0:r1, c0:c1]
        ddy = dya[r0:r1, c0:c1]
        rel = o - centers[i]
        if kind[i] == SPHERE:
            r = half[i, 0]
            ddz = dza[r0:r1, c0:c1]
            b = ddx * np.float32(rel[0]) + ddy * np.float32(rel[1]) + ddz * np.float32(rel[2])
            cc = float(rel @ rel - r * r)
            if cc <= 0.0:
                continue  # origin inside the sphere
            disc = b * b - np.float32(cc)
            hit = disc >= 0.0
            t = -b - np.sqrt(np.maximum(disc, 0.0))
            hit &= t > NEAR
        else:
            c, s = np.cos(yaws[i]), np.sin(yaws[i])
            ox = c * rel[0] + s * rel[1]
            oy = -s * rel[0] + c * rel[1]
            oz = rel[2]
            hx, hy, hz = half[i]
            if abs(ox) < hx and abs(oy) < hy and abs(oz) < hz:
                continue  # origin inside the box
            with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
                ix = np.float32(1.0) / (np.float32(c) * ddx + np.float32(s) * ddy)
                iy = np.float32(1.0) / (np.float32(-s) * ddx + np.float32(c) * ddy)
                iz = iza[r0:r1, c0:c1]
                ax = np.float32(-hx - ox) * ix
                bx = np.float32(hx - ox) * ix
                ay = np.float32(-hy - oy) * iy
                by = np.float32(hy - oy) * iy
                az = np.float32(-hz - oz) * iz
                bz = np.float32(hz - oz) * iz
            tmin = np.minimum(ax, bx)
            tmax = np.maximum(ax, bx, out=ax)
            lo = np.minimum(ay, by)
            np.maximum(tmin, lo, out=tmin)
            np.maximum(ay, by, out=lo)
            np.minimum(tmax, lo, out=tmax)
            np.minimum(az, bz, out=lo)
            np.maximum(tmin, lo, out=tmin)
            np.maximum(az, bz, out=lo)
            np.minimum(tmax, lo, out=tmax)
            hit = (tmax >= tmin) & (tmin > NEAR)
            t = tmin
        hit &= t <= far
        sub_t = t_buf[r0:r1, c0:c1]
        closer = hit & (t < sub_t)
        n_hit = int(np.count_nonzero(hit))
        if not n_hit:
            continue
        hits[i] += n_hit
        sub_t[closer] = t[closer]
        prim[r0:r1, c0:c1][closer] = i
    return t_buf, prim, hits


def _camera_rects(corners_cam: np.ndarray, k: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel rectangles [v0, v1, u0, u1) of primitives from their corners (P, 8, 3) in the camera frame."""
    z = corners_cam[..., 2]
    any_front = (z > NEAR).any(axis=1)
    all_front = (z > NEAR).all(axis=1)
    with np.errstate(divide='ignore', invalid='ignore'):
        u = k[0, 0] * corners_cam[..., 0] / z + k[0, 2]
        v = k[1, 1] * corners_cam[..., 1] / z + k[1, 2]
    u0 = np.where(all_front, np.floor(np.nanmin(np.where(z > NEAR, u, np.inf), axis=1)), 0)
    u1 = np.where(all_front, np.ceil(np.nanmax(np.where(z > NEAR, u, -np.inf), axis=1)) + 1, width)
    v0 = np.where(all_front, np.floor(np.nanmin(np.where(z > NEAR, v, np.inf), axis=1)), 0)
    v1 = np.where(all_front, np.ceil(np.nanmax(np.where(z > NEAR, v, -np.inf), axis=1)) + 1, height)
    rects = np.stack([v0, v1, u0, u1], axis=-1)
    rects[:, 0:2] = np.clip(rects[:, 0:2], 0, height)
    rects[:, 2:4] = np.clip(rects[:, 2:4], 0, width)
    rects[~any_front] = 0
    return rects.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Appearance


def _hash(ix: np.ndarray, iy: np.ndarray, seed: np.ndarray | int) -> np.ndarray:
    """Deterministic hash of integer lattice points to [0, 1) (float32)."""
    h = (ix.astype(np.int64).astype(np.uint32) * np.uint32(374761393)) ^ (
        iy.astype(np.int64).astype(np.uint32) * np.uint32(668265263)
    )
    h ^= np.asarray(seed).astype(np.int64).astype(np.uint32) * np.uint32(2246822519)
    h = (h ^ (h >> np.uint32(13))) * np.uint32(1274126177)
    h ^= h >> np.uint32(16)
    return (h & np.uint32(0xFFFF)).astype(np.float32) * np.float32(1.0 / 65536.0)


def _make_noise_texture(size: int = 256, sigma: float = 2.5) -> np.ndarray:
    """A smooth, tileable value-noise texture (size, size) float32 in [0, 1], from a fixed seed."""
    white = np.random.default_rng(20260101).random((size, size))
    f = np.fft.fftfreq(size)
    gauss = np.exp(-2 * (np.pi * sigma) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    smooth = np.real(np.fft.ifft2(np.fft.fft2(white) * gauss))
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return smooth.astype(np.float32)


_NOISE = _make_noise_texture()
_NOISE_MASK = _NOISE.shape[0] - 1


def _noise(x: np.ndarray, y: np.ndarray, seed: np.ndarray | int = 0) -> np.ndarray:
    """Smooth noise in [0, 1] at texel coordinates (x, y) (features about 6 texels wide); ``seed`` shifts it."""
    seed = np.asarray(seed, dtype=np.int64)
    i = (np.floor(x).astype(np.int64) + seed * 97) & _NOISE_MASK
    j = (np.floor(y).astype(np.int64) + seed * 61) & _NOISE_MASK
    return _NOISE[j, i]


def _srgb_lut() -> np.ndarray:
    x = np.linspace(0.0, 1.0, 4096)
    y = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    return np.clip(np.round(y * 255.0), 0, 255).astype(np.uint8)


_LUT = _srgb_lut()

_GROUND_COLORS = np.zeros((256, 3), np.float32)
_GROUND_COLORS[11] = (0.055, 0.055, 0.06)  # asphalt
_GROUND_COLORS[12] = (0.22, 0.19, 0.15)  # gravel lots
_GROUND_COLORS[13] = (0.36, 0.35, 0.33)  # sidewalk slabs
_GROUND_COLORS[14] = (0.09, 0.16, 0.045)  # grass
_SKY_HORIZON = np.array([0.62, 0.72, 0.85], np.float32)
_SKY_ZENITH = np.array([0.12, 0.25, 0.62], np.float32)
_SUN_COLOR = np.array([1.0, 0.95, 0.85], np.float32)
_AMBIENT = np.array([0.32, 0.36, 0.42], np.float32)


def _sky(dirs: np.ndarray, sun: np.ndarray) -> np.ndarray:
    """Linear sky colour (N, 3) for unit directions (N, 3) in map."""
    e = np.clip(dirs[:, 2], 0.0, 1.0)[:, None]
    w = np.power(np.clip(e * np.float32(2.2), 0.0, 1.0), np.float32(0.6))
    col = _SKY_HORIZON * (1 - w) + _SKY_ZENITH * w
    glow = np.power(np.clip(dirs @ sun, 0.0, 1.0), np.float32(64.0))[:, None]
    return col + glow * np.float32(0.6)


def _haze(col: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blend linear colours (N, 3) towards the horizon colour with distance t (N,) [m]."""
    haze = (np.float32(1.0) - np.exp(-t / np.float32(350.0)))[:, None]
    return col + (_SKY_HORIZON - col) * haze


def _shade(world: World, centers, yaws, origin, dirs, t, prim) -> tuple[np.ndarray, np.ndarray]:
    """Linear RGB (R, C, 3) float32 and class labels (R, C) of the nearest hits."""
    shape = t.shape
    t = t.reshape(-1)
    prim = prim.reshape(-1)
    dirs = dirs.reshape(-1, 3)
    out = np.empty((t.size, 3), np.float32)
    label = np.full(t.size, 255, np.uint8)
    sun = world.sun.astype(np.float32)
    o32 = origin.astype(np.float32)

    sky = np.flatnonzero(prim == SKY)
    if sky.size:
        out[sky] = _sky(dirs[sky], sun)

    g = np.flatnonzero(prim == GROUND)
    if g.size:
        tg = t[g][:, None]
        p = o32[None, :2] + tg * dirs[g, :2]
        cls, mark = world.ground_lookup(p[:, 0], p[:, 1])
        label[g] = cls
        base = _GROUND_COLORS[cls]
        n1 = _noise(p[:, 0] * 3.0, p[:, 1] * 3.0, 11)
        n2 = _noise(p[:, 0] * 40.0, p[:, 1] * 40.0, 12)
        grass = cls == 14
        tex = np.where(grass, 0.5 + 0.8 * n1 + 0.5 * n2, 0.8 + 0.3 * n1 + 0.25 * n2).astype(np.float32)
        side = np.flatnonzero(cls == 13)  # slab joints
        if side.size:
            jx = np.abs(((p[side, 0] + 0.75) % 1.5) - 0.75) < 0.025
            jy = np.abs(((p[side, 1] + 0.75) % 1.5) - 0.75) < 0.025
            tex[side] = np.where(jx | jy, np.float32(0.7), tex[side])
        base = base * tex[:, None]
        base[mark == 1] = (0.7, 0.7, 0.68)
        base[mark == 2] = (0.75, 0.55, 0.08)
        light = _AMBIENT + _SUN_COLOR * np.float32(max(sun[2], 0.0))
        out[g] = _haze(base * light, t[g])

    o = np.flatnonzero(prim >= 0)
    if o.size:
        pid = prim[o]
        d = dirs[o]
        centers32 = centers.astype(np.float32)
        p = (o32 - centers32[pid]) + t[o][:, None] * d  # relative to the primitive centre
        label[o] = world.prim_label[pid]
        yaw = yaws[pid].astype(np.float32)
        c, s = np.cos(yaw), np.sin(yaw)
        lx = c * p[:, 0] + s * p[:, 1]
        ly = -s * p[:, 0] + c * p[:, 1]
        lz = p[:, 2]
        half = world.prim_half.astype(np.float32)[pid]
        is_sphere = world.prim_kind[pid] == SPHERE
        u = np.stack([lx / half[:, 0], ly / half[:, 1], lz / half[:, 2]], -1)
        axis = np.argmax(np.abs(u), axis=1)
        rows = np.arange(len(axis))
        nl = np.zeros_like(u)
        nl[rows, axis] = np.sign(u[rows, axis])
        sph = np.flatnonzero(is_sphere)
        if sph.size:
            nl[sph] = u[sph] / np.linalg.norm(u[sph], axis=1, keepdims=True)
        n = np.stack([c * nl[:, 0] - s * nl[:, 1], s * nl[:, 0] + c * nl[:, 1], nl[:, 2]], -1)
        # Face coordinates for texture: horizontal coordinate along the face and height above the box bottom.
        horiz = np.where(axis == 0, ly, lx)
        vert = np.where(axis == 2, ly, lz + half[:, 2])
        seed = world.prim_seed[pid]
        style = world.prim_style[pid]
        base = world.prim_color.astype(np.float32)[pid]
        n1 = _noise(horiz * 8.0, vert * 8.0, seed)
        n2 = _noise(horiz * 60.0, vert * 60.0, seed + 7)
        tex = 0.85 + 0.2 * n1 + 0.1 * n2  # type: ignore[assignment]  # float64 here, as the rendering always was
        fol = np.flatnonzero(style == STYLE_FOLIAGE)
        if fol.size:
            f1 = _noise(lx[fol] * 14.0 + lz[fol] * 9.0, ly[fol] * 14.0 - lz[fol] * 11.0, seed[fol])
            tex[fol] = 0.4 + 1.0 * f1 + 0.25 * n2[fol]
        bld = np.flatnonzero((style == STYLE_BUILDING) & (axis != 2))
        if bld.size:
            z = vert[bld]
            hcoord = horiz[bld] + half[bld, 0]
            fx = (hcoord / 2.8) % 1.0
            fz = ((z - 0.6) / 3.1) % 1.0
            win = (fx > 0.22) & (fx < 0.78) & (fz > 0.3) & (fz < 0.8) & (z > 1.0) & (z < 2 * half[bld, 2] - 0.5)
            wid = _hash(np.floor(hcoord / 2.8), np.floor((z - 0.6) / 3.1), seed[bld])
            glass = np.stack([0.05 + 0.1 * wid, 0.07 + 0.1 * wid, 0.1 + 0.12 * wid], -1).astype(np.float32)
            b = base[bld]
            b[win] = glass[win]
            base[bld] = b
        veh = style == STYLE_VEHICLE
        if veh.any():
            zabs = lz + centers32[pid, 2]  # height above the ground
            top = half[:, 2] + centers32[pid, 2]
            across = np.abs(np.where(axis == 0, u[:, 1], u[:, 0]))
            glass = veh & (axis != 2) & (zabs > 1.0) & (zabs < top - 0.12) & (across < 0.88)
            base[glass] = (0.03, 0.04, 0.05)  # windows: car cabins, truck cabs, bus window bands
            tex[veh] = 0.95 + 0.05 * n2[veh]
        stp = np.flatnonzero(style == STYLE_STRIPES)
        if stp.size:
            band = ((vert[stp] / 0.25) % 1.0) < 0.45
            b = base[stp]
            b[band] = (0.8, 0.8, 0.78)
            base[stp] = b
        base *= tex[:, None]
        ndl = np.clip(n @ sun, 0.0, 1.0)[:, None]
        sky_light = np.float32(0.75) + np.float32(0.25) * n[:, 2:3]  # surfaces facing down get less sky
        col = base * (_AMBIENT * sky_light + _SUN_COLOR * ndl)
        vi = np.flatnonzero(veh)
        if vi.size:
            h = sun[None, :] - d[vi]
            h /= np.linalg.norm(h, axis=1, keepdims=True)
            x = np.clip(np.sum(n[vi] * h, axis=1), 0.0, 1.0)
            x8 = x * x
            x8 *= x8
            x8 *= x8
            x32 = x8 * x8
            x32 *= x32
            spec = (x32 * x8)[:, None]  # x ** 40
            col[vi] += spec * np.float32(0.5)
        out[o] = _haze(col, t[o])
    return out.reshape(shape + (3,)), label.reshape(shape)


def render_camera(
    world: World,
    state: WorldState,
    cam: Camera,
    shade: bool = True,
) -> CameraImage:
    """Render one camera of the ego vehicle.

    Args:
        world: the scene.
        state: the world state at the camera's timestamp (ego pose and objects).
        cam: a camera of the rig (intrinsics for its image size; ``cam_to_ego``).
        shade: compute the RGB image (False: only label, depth and prim, for tests).

    Returns:
        :class:`CameraImage`.
    """
    if cam.width <= 0 or cam.height <= 0:
        raise RenderError(f'render_camera: camera {cam.name!r} has an empty image')
    pose = state.ego_pose @ cam.cam_to_ego  # T_map_cam
    rot = pose.rotation_matrix()
    origin = pose.translation
    rays_cam = pixel_rays(cam)
    dirs = (rays_cam @ rot.T).astype(np.float32)
    centers, yaws = world.primitives_at(state)
    corners = _box_corners(centers, yaws, world.prim_half)
    corners_cam = (corners - origin) @ rot  # map -> camera: R^T (p - o)
    rects = _camera_rects(corners_cam, cam.intrinsics, cam.width, cam.height)
    # Cull primitives beyond the far distance.
    dist = np.linalg.norm(centers - origin, axis=1) - np.linalg.norm(world.prim_half, axis=1)
    rects[dist > FAR] = 0
    t, prim, hits = _cast(world, centers, yaws, origin, dirs, rects, FAR)
    depth = (t * rays_cam[..., 2].astype(np.float32)).astype(np.float32)
    n_obj = world.num_objects
    owner_hits = np.bincount(world.prim_owner, weights=hits, minlength=n_obj).astype(np.int64)
    vis = prim[prim >= 0]
    owner_visible = np.bincount(world.prim_owner[vis], minlength=n_obj).astype(np.int64)
    if shade:
        lin, label = _shade(world, centers, yaws, origin, dirs, t, prim)
        idx = np.clip(lin * 4095.0 + 0.5, 0, 4095).astype(np.int32)
        rgb = _LUT[idx]
    else:
        label = _labels_only(world, origin, dirs, t, prim)
        rgb = np.zeros(t.shape + (3,), np.uint8)
    return CameraImage(rgb, label, depth, prim, owner_hits, owner_visible)


def _labels_only(world: World, origin, dirs, t, prim) -> np.ndarray:
    label = np.full(t.shape, 255, np.uint8)
    g = prim == GROUND
    p = origin[None, :2] + t[g][:, None].astype(np.float64) * dirs[g][:, :2]
    label[g] = world.ground_lookup(p[:, 0], p[:, 1])[0]
    o = prim >= 0
    label[o] = world.prim_label[prim[o]]
    return label


def lidar_ranges(
    world: World, state: WorldState, lidar_to_ego: Transform, spec: LidarSpec | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distance [m] (inf: no return within range) and primitive id of every lidar ray, both (beams, azimuths).

    The beams are defined about the ego's z axis at the lidar's position (a level lidar), cast at one instant.
    """
    spec = spec or LidarSpec()
    pose = state.ego_pose
    origin = pose.apply(lidar_to_ego.translation)
    rot = pose.rotation_matrix()
    dirs = (spec.directions() @ rot.T).astype(np.float32)
    centers, yaws = world.primitives_at(state)
    rects = _lidar_rects(centers, yaws, world.prim_half, origin, rot, spec)
    t, prim, _ = _cast(world, centers, yaws, origin, dirs, rects, spec.max_range)
    return t, prim


def scan_lidar(world: World, state: WorldState, lidar_to_ego: Transform, spec: LidarSpec | None = None) -> LidarScan:
    """Cast the lidar's rays at one instant (no motion within the sweep).

    Points are returned in the lidar sensor frame (``lidar_to_ego``'s child frame), as nuScenes stores them.
    """
    spec = spec or LidarSpec()
    t, prim = lidar_ranges(world, state, lidar_to_ego, spec)
    pose = state.ego_pose
    origin = pose.apply(lidar_to_ego.translation)
    dirs = spec.directions() @ pose.rotation_matrix().T
    ok = np.isfinite(t)
    rows = np.broadcast_to(np.arange(dirs.shape[0])[:, None], t.shape)[ok]
    pts_map = origin[None, :] + t[ok][:, None].astype(np.float64) * dirs[ok]
    pts_ego = pose.inverse().apply(pts_map)
    pts_lidar = lidar_to_ego.inverse().apply(pts_ego)
    pid = prim[ok]
    owner = np.where(pid >= 0, world.prim_owner[np.maximum(pid, 0)], -1)
    intensity = np.where(pid == GROUND, 12.0, 40.0) + 20.0 * _hash(
        np.round(pts_map[:, 0] * 5), np.round(pts_map[:, 1] * 5), 3
    )
    points = np.concatenate([pts_lidar, intensity[:, None], rows[:, None]], axis=1).astype(np.float32)
    return LidarScan(points, owner.astype(np.int64))


def _lidar_rects(centers, yaws, half, origin, rot, spec: LidarSpec) -> np.ndarray:
    """[row0, row1, col0, col1) candidate rectangles of primitives for the lidar's (beam, azimuth) ray grid.

    Primitives that straddle the azimuth seam (+-pi) or contain the lidar get every column.
    """
    corners = _box_corners(centers, yaws, half)
    rel = (corners - origin) @ rot  # into ego axes
    az = np.arctan2(rel[..., 1], rel[..., 0])
    rng = np.linalg.norm(rel[..., :2], axis=-1)
    c_rel = (centers - origin) @ rot
    az_c = np.arctan2(c_rel[:, 1], c_rel[:, 0])
    daz = (az - az_c[:, None] + np.pi) % (2 * np.pi) - np.pi
    lo = az_c + daz.min(axis=1)
    hi = az_c + daz.max(axis=1)
    n_az = len(spec.azimuths)
    step = 2 * np.pi / n_az
    c0 = np.floor((lo + np.pi) / step).astype(np.int64)
    c1 = np.ceil((hi + np.pi) / step).astype(np.int64) + 1
    seam = (c0 < 0) | (c1 > n_az)
    inside = np.max(np.abs(daz), axis=1) > np.pi / 2  # lidar inside or very near: angles wrap
    c0 = np.where(seam | inside, 0, c0)
    c1 = np.where(seam | inside, n_az, c1)
    els = np.deg2rad(np.asarray(spec.elevations_deg))
    # Elevation bounds from the nearest and farthest horizontal distance to the footprint and its z extent.
    rel_c = origin[None, :2] - centers[:, :2]
    cy, sy = np.cos(yaws), np.sin(yaws)
    ox = cy * rel_c[:, 0] + sy * rel_c[:, 1]
    oy = -sy * rel_c[:, 0] + cy * rel_c[:, 1]
    rmin = np.hypot(np.maximum(np.abs(ox) - half[:, 0], 0.0), np.maximum(np.abs(oy) - half[:, 1], 0.0))
    rmax = rng.max(axis=1)
    ztop = centers[:, 2] + half[:, 2] - origin[2]
    zbot = centers[:, 2] - half[:, 2] - origin[2]
    el_hi = np.maximum(np.arctan2(ztop, np.maximum(rmin, 1e-6)), np.arctan2(ztop, rmax))
    el_lo = np.minimum(np.arctan2(zbot, np.maximum(rmin, 1e-6)), np.arctan2(zbot, rmax))
    inside = inside | (rmin <= 0.0)
    el_lo = np.where(inside, -np.pi / 2, el_lo)
    el_hi = np.where(inside, np.pi / 2, el_hi)
    r0 = np.searchsorted(els, el_lo - 1e-9)
    r1 = np.searchsorted(els, el_hi + 1e-9)
    # Ray/box intersection happens at elevations inside the corner range only for boxes seen from outside.
    r0 = np.maximum(r0 - 1, 0)
    r1 = np.minimum(r1 + 1, len(els))
    rects = np.stack([r0, r1, c0, c1], axis=-1)
    far = np.linalg.norm(c_rel[:, :2], axis=1) - np.linalg.norm(half, axis=1) > spec.max_range
    rects[far] = 0
    return rects
