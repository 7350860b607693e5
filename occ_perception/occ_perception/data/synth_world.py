"""A seeded, procedurally generated driving world with exact state at any time.

The world is flat: the ground is the plane z = 0 of the ``map`` frame, and the
nuScenes ego frame ``base_link`` (rear axle at road level) rides on it, so the
ego pose is a yaw rotation plus a translation with z = 0.

Layout (all distances in metres across the road from its centreline ``c(s)``,
which is a chain of straight segments and circular arcs parameterised by arc
length ``s``; right-hand traffic; see docs/synthetic_world.md):

====================  ===========================================
lateral band |d|      what lies there
====================  ===========================================
0 .. 3.5              traffic lane (cars, trucks, buses, motorcycles)
3.5 .. 5.0            bike lane (bicycles, motorcycles)
5.0 .. 7.5            parking strip (parked vehicles, barriers, cones)
7.5 .. 11.0           sidewalk (pedestrians, trees, poles, bins)
11.0 ..               terrain, other_flat lots, buildings, walls, hedges
====================  ===========================================

Everything that is not ground is a set of *primitives* (oriented boxes with a
yaw about z, and spheres) attached to an *object*. An object is either static
(a pose fixed in ``map``) or follows a lane of the road: at time ``t`` it is at
arc length ``s0 + rate * t`` with a constant lateral offset, so its pose and its
velocity over ground are exact and analytic. :meth:`World.state_at` gives the
ego pose and every object's pose and velocity at a timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..geometry import Transform
from ..grid import CLASS_NAMES

__all__ = [
    'BOX',
    'SPHERE',
    'GROUND_Z',
    'Road',
    'World',
    'WorldError',
    'WorldParams',
    'WorldState',
    'generate_world',
]


class WorldError(ValueError):
    """Bad parameters for the synthetic world (non-positive duration, bad seed, ...)."""


BOX = 0
"""Primitive kind: an oriented box (centre, half sizes, yaw about z)."""
SPHERE = 1
"""Primitive kind: a sphere (centre, radius in ``half[0]``)."""
GROUND_Z = 0.0
"""Height of the ground plane in ``map`` and ``base_link`` [m]: the centre of Occ3D voxel layer 2 ([-0.2, 0.2))."""

L = {name: i for i, name in enumerate(CLASS_NAMES)}  # class name -> Occ3D label

# Primitive surface styles (how the renderer textures them).
STYLE_PLAIN, STYLE_BUILDING, STYLE_FOLIAGE, STYLE_VEHICLE, STYLE_STRIPES = 0, 1, 2, 3, 4

# Ground classes for the ground raster.
_DRIVE, _OFLAT, _SIDEWALK, _TERRAIN = L['driveable_surface'], L['other_flat'], L['sidewalk'], L['terrain']


@dataclass(frozen=True)
class WorldParams:
    """Parameters of the generator (lengths [m], speeds [m/s], times [s]).

    The defaults describe a suburban two-lane road; docs/synthetic_world.md lists them.
    """

    lane_width: float = 3.5
    bike_lane_width: float = 1.5
    parking_width: float = 2.5
    sidewalk_width: float = 3.5
    ego_speed: tuple[float, float] = (5.0, 9.0)
    straight_length: tuple[float, float] = (40.0, 110.0)
    curve_radius: tuple[float, float] = (30.0, 90.0)
    curve_angle_deg: tuple[float, float] = (25.0, 80.0)
    road_before: float = 110.0
    road_after: float = 170.0
    raster_resolution: float = 0.2
    car_gap: tuple[float, float] = (14.0, 45.0)
    parked_gap: tuple[float, float] = (6.0, 30.0)
    pedestrian_gap: tuple[float, float] = (6.0, 35.0)
    building_setback: tuple[float, float] = (1.5, 8.0)
    building_height: tuple[float, float] = (5.0, 22.0)

    @property
    def lane_center(self) -> float:
        return self.lane_width / 2.0

    @property
    def road_half_width(self) -> float:
        """Half width of the driveable surface [m]."""
        return self.lane_width + self.bike_lane_width + self.parking_width

    @property
    def sidewalk_outer(self) -> float:
        return self.road_half_width + self.sidewalk_width


class Road:
    """A planar curve of straight segments and circular arcs, parameterised by arc length ``s`` [m].

    Beyond its ends the curve continues straight, so any ``s`` evaluates.
    """

    def __init__(self, start_xy: tuple[float, float], start_heading: float, lengths, curvatures) -> None:
        self.lengths = np.asarray(lengths, dtype=np.float64)
        self.curvatures = np.asarray(curvatures, dtype=np.float64)
        n = len(self.lengths)
        self.s0 = np.concatenate([[0.0], np.cumsum(self.lengths)[:-1]])
        self.x0 = np.zeros(n)
        self.y0 = np.zeros(n)
        self.th0 = np.zeros(n)
        x, y, th = float(start_xy[0]), float(start_xy[1]), float(start_heading)
        for i in range(n):
            self.x0[i], self.y0[i], self.th0[i] = x, y, th
            (x, y), th, _ = self._segment(i, self.lengths[i])
            x, y, th = float(x), float(y), float(th)
        self.end = (x, y, th)
        self.length = float(self.lengths.sum())

    def _segment(self, i: int, u):
        k = self.curvatures[i]
        th0 = self.th0[i]
        u = np.asarray(u, dtype=np.float64)
        if k == 0.0:
            x = self.x0[i] + u * np.cos(th0)
            y = self.y0[i] + u * np.sin(th0)
        else:
            x = self.x0[i] + (np.sin(th0 + k * u) - np.sin(th0)) / k
            y = self.y0[i] - (np.cos(th0 + k * u) - np.cos(th0)) / k
        return (x, y), th0 + k * u, np.full(u.shape, k)

    def eval(self, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centreline at arc lengths ``s`` (N,): points (N, 2) [m], headings (N,) [rad], curvatures (N,) [1/m]."""
        s = np.atleast_1d(np.asarray(s, dtype=np.float64))
        seg = np.clip(np.searchsorted(self.s0, s, side='right') - 1, 0, len(self.s0) - 1)
        u = s - self.s0[seg]
        k = self.curvatures[seg]
        th0 = self.th0[seg]
        straight = k == 0.0
        ks = np.where(straight, 1.0, k)
        # Straight continuation before the start and after the end.
        before = s < 0.0
        after = s > self.length
        k = np.where(before | after, 0.0, k)
        straight = straight | before | after
        u = np.where(after, s - self.length, u)
        x0 = np.where(after, self.end[0], self.x0[seg])
        y0 = np.where(after, self.end[1], self.y0[seg])
        th0 = np.where(after, self.end[2], th0)
        xs = x0 + u * np.cos(th0)
        ys = y0 + u * np.sin(th0)
        xc = x0 + (np.sin(th0 + ks * u) - np.sin(th0)) / ks
        yc = y0 - (np.cos(th0 + ks * u) - np.cos(th0)) / ks
        x = np.where(straight, xs, xc)
        y = np.where(straight, ys, yc)
        return np.stack([x, y], axis=-1), th0 + k * u, k

    def frame(self, s, d) -> tuple[np.ndarray, np.ndarray]:
        """Points at arc length ``s`` and lateral offset ``d`` (left positive): (N, 2) [m] and heading (N,) [rad]."""
        p, th, _ = self.eval(s)
        d = np.asarray(d, dtype=np.float64)
        normal = np.stack([-np.sin(th), np.cos(th)], axis=-1)
        return p + d[..., None] * normal, th


@dataclass
class WorldState:
    """Poses and velocities at one timestamp.

    Attributes:
        t_ns: timestamp [ns], absolute (same clock as :attr:`World.start_ns`).
        ego_pose: ``T_map_ego`` (base_link in map).
        ego_velocity: (2,) velocity over ground of base_link in map axes [m/s].
        obj_xy: (N, 2) object reference points in map [m] (box centre in x, y).
        obj_yaw: (N,) object headings in map [rad].
        obj_velocity: (N, 2) velocities over ground in map axes [m/s]; 0 for static objects.
    """

    t_ns: int
    ego_pose: Transform
    ego_velocity: np.ndarray
    obj_xy: np.ndarray
    obj_yaw: np.ndarray
    obj_velocity: np.ndarray


@dataclass
class World:
    """One generated scene: road, ground raster, objects, primitives and motion.

    Objects (index ``i``, N of them):
        obj_label (N,) Occ3D class; obj_category (list of nuScenes category names, ``''`` if not annotated);
        obj_size (N, 3) annotation box length, width, height [m] (box from z = 0 to height);
        obj_attribute (list of nuScenes attribute names or ``''``);
        motion: obj_follow (N,) bool (follows the road), obj_s0, obj_rate (ds/dt, signed), obj_d (lateral offset),
        obj_flip (0 or pi yaw offset to the road heading); static poses obj_static_xy (N, 2), obj_static_yaw (N,).

    Primitives (P of them), in the owner's frame (x forward, z up, origin at the ground under the box centre):
        prim_owner (P,), prim_kind (P,) :data:`BOX` or :data:`SPHERE`, prim_center (P, 3), prim_half (P, 3),
        prim_yaw (P,), prim_label (P,), prim_color (P, 3) linear RGB in [0, 1], prim_style (P,),
        prim_seed (P,) texture seed.

    Ground rasters (H, W) over ``[raster_origin, raster_origin + (W, H) * res)`` in map, row = y, cell centres
    at ``origin + (i + 0.5) * res``: ground (uint8 class beyond the sidewalk: terrain or other_flat),
    dist (float32 distance to the centreline [m]), arc (float32 arc length of the nearest centreline point [m]).
    Road, sidewalk and lane markings come from the bilinearly interpolated distance, so their edges are smooth.
    """

    seed: int
    params: WorldParams
    road: Road
    start_ns: int
    duration_s: float
    ego_s0: float
    ego_rate: float
    ego_d: float
    sun: np.ndarray
    raster_origin: np.ndarray
    raster_res: float
    ground: np.ndarray
    dist: np.ndarray
    arc: np.ndarray
    obj_label: np.ndarray
    obj_category: list
    obj_attribute: list
    obj_size: np.ndarray
    obj_follow: np.ndarray
    obj_s0: np.ndarray
    obj_rate: np.ndarray
    obj_d: np.ndarray
    obj_flip: np.ndarray
    obj_static_xy: np.ndarray
    obj_static_yaw: np.ndarray
    prim_owner: np.ndarray
    prim_kind: np.ndarray
    prim_center: np.ndarray
    prim_half: np.ndarray
    prim_yaw: np.ndarray
    prim_label: np.ndarray
    prim_color: np.ndarray
    prim_style: np.ndarray
    prim_seed: np.ndarray
    name: str = 'synth'

    @property
    def num_objects(self) -> int:
        return int(len(self.obj_label))

    def seconds(self, t_ns: int) -> float:
        """Seconds since :attr:`start_ns`."""
        return (int(t_ns) - int(self.start_ns)) * 1e-9

    def state_at(self, t_ns: int) -> WorldState:
        """Ego pose and every object's pose and velocity at absolute time ``t_ns`` [ns]."""
        t = self.seconds(t_ns)
        s_e = np.array([self.ego_s0 + self.ego_rate * t])
        p, th, k = self.road.eval(s_e)
        normal = np.stack([-np.sin(th), np.cos(th)], axis=-1)
        ego_xy = p[0] + self.ego_d * normal[0]
        ego_yaw = float(th[0])
        tangent = np.array([np.cos(ego_yaw), np.sin(ego_yaw)])
        ego_vel = self.ego_rate * (1.0 - self.ego_d * float(k[0])) * tangent
        ego = Transform.from_yaw(ego_yaw, (float(ego_xy[0]), float(ego_xy[1]), GROUND_Z))

        xy = self.obj_static_xy.copy()
        yaw = self.obj_static_yaw.copy()
        vel = np.zeros_like(xy)
        f = self.obj_follow
        if f.any():
            s = self.obj_s0[f] + self.obj_rate[f] * t
            p, th, k = self.road.eval(s)
            normal = np.stack([-np.sin(th), np.cos(th)], axis=-1)
            d = self.obj_d[f]
            xy[f] = p + d[:, None] * normal
            yaw[f] = th + self.obj_flip[f]
            speed = self.obj_rate[f] * (1.0 - d * k)
            vel[f] = speed[:, None] * np.stack([np.cos(th), np.sin(th)], axis=-1)
        return WorldState(int(t_ns), ego, ego_vel, xy, yaw, vel)

    def primitives_at(self, state: WorldState) -> tuple[np.ndarray, np.ndarray]:
        """Primitive centres (P, 3) and yaws (P,) in ``map`` for ``state``."""
        owner = self.prim_owner
        oyaw = state.obj_yaw[owner]
        c, s = np.cos(oyaw), np.sin(oyaw)
        lc = self.prim_center
        centers = np.stack(
            [
                state.obj_xy[owner, 0] + c * lc[:, 0] - s * lc[:, 1],
                state.obj_xy[owner, 1] + s * lc[:, 0] + c * lc[:, 1],
                lc[:, 2],
            ],
            axis=-1,
        )
        return centers, oyaw + self.prim_yaw

    def ground_lookup(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ground class (uint8) and lane marking (uint8: 0 none, 1 white, 2 yellow) at map points (x, y) [m].

        Outside the rasters: terrain, no marking.
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        h, w = self.ground.shape
        fx = (x - self.raster_origin[0]) / self.raster_res - 0.5
        fy = (y - self.raster_origin[1]) / self.raster_res - 0.5
        inside = (fx >= 0) & (fx < w - 1) & (fy >= 0) & (fy < h - 1)
        ix = np.clip(np.floor(fx).astype(np.int64), 0, w - 2)
        iy = np.clip(np.floor(fy).astype(np.int64), 0, h - 2)
        tx = np.clip(fx - ix, 0.0, 1.0).astype(np.float32)
        ty = np.clip(fy - iy, 0.0, 1.0).astype(np.float32)
        dd = self.dist
        d = (dd[iy, ix] * (1 - tx) + dd[iy, ix + 1] * tx) * (1 - ty) + (
            dd[iy + 1, ix] * (1 - tx) + dd[iy + 1, ix + 1] * tx
        ) * ty
        d = np.where(inside, d, np.float32(1e9))
        cls = np.where(inside, self.ground[iy + (ty > 0.5), ix + (tx > 0.5)], _TERRAIN).astype(np.uint8)
        p = self.params
        # Exact distance near the road, from the centreline segment (line or circle) at the nearest cell's arc length.
        d = d.reshape(-1)
        road = np.flatnonzero(d < p.sidewalk_outer + 0.5)
        arc = self.arc[(iy + (ty > 0.5)).reshape(-1)[road], (ix + (tx > 0.5)).reshape(-1)[road]]
        if road.size:
            cp, th, k = self.road.eval(arc)
            ex, ey = x.reshape(-1)[road] - cp[:, 0], y.reshape(-1)[road] - cp[:, 1]
            along = ex * np.cos(th) + ey * np.sin(th)
            lat = -ex * np.sin(th) + ey * np.cos(th)
            with np.errstate(divide='ignore', invalid='ignore'):
                radius = 1.0 / k
                to_circle = np.abs(np.hypot(along, lat - radius) - np.abs(radius))
            d[road] = np.where(k == 0.0, np.abs(lat), to_circle)
            arc = arc + along  # arc length of the foot point (to first order), for dashes
        d = d.reshape(cls.shape)
        cls[d < p.sidewalk_outer] = _SIDEWALK
        cls[d < p.road_half_width] = _DRIVE
        mark = np.zeros(cls.shape, np.uint8)
        sel = d.reshape(-1)[road] < p.lane_width + 0.3
        near = road[sel]
        if near.size:
            dn = d.reshape(-1)[near]
            dash = (arc[sel] % 9.0) < 4.5
            m = np.zeros(near.shape, np.uint8)
            m[(np.abs(dn - p.lane_width - 0.05) < 0.075) & dash] = 1  # dashed white line at the bike lane
            m[np.abs(dn - 0.12) < 0.06] = 2  # double yellow centre line
            mark.reshape(-1)[near] = m
        return cls, mark

    def classes_present(self) -> set[int]:
        """Occ3D labels that occur in this world (ground raster and primitives)."""
        return set(np.unique(self.ground).tolist()) | {_DRIVE, _SIDEWALK} | set(np.unique(self.prim_label).tolist())


# ----------------------------------------------------------------------------------------------
# Generation


class _Builder:
    """Accumulates objects and primitives during generation."""

    def __init__(self) -> None:
        self.objects: list[dict] = []
        self.prims: list[tuple] = []

    def add_object(
        self,
        label: int,
        size: tuple[float, float, float],
        category: str = '',
        attribute: str = '',
        xy: tuple[float, float] = (0.0, 0.0),
        yaw: float = 0.0,
        follow: bool = False,
        s0: float = 0.0,
        rate: float = 0.0,
        d: float = 0.0,
        flip: float = 0.0,
    ) -> int:
        self.objects.append(
            dict(
                label=label,
                size=size,
                category=category,
                attribute=attribute,
                xy=xy,
                yaw=yaw,
                follow=follow,
                s0=s0,
                rate=rate,
                d=d,
                flip=flip,
            )
        )
        return len(self.objects) - 1

    def box(self, owner, label, center, size, color, style=STYLE_PLAIN, yaw=0.0, seed=0) -> None:
        half = (size[0] / 2.0, size[1] / 2.0, size[2] / 2.0)
        self.prims.append((owner, BOX, center, half, yaw, label, color, style, seed))

    def sphere(self, owner, label, center, radius, color, style=STYLE_FOLIAGE, seed=0) -> None:
        self.prims.append((owner, SPHERE, center, (radius, radius, radius), 0.0, label, color, style, seed))


def _srgb_to_linear(rgb) -> np.ndarray:
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


CAR_PAINTS = [
    (235, 235, 235),
    (25, 25, 28),
    (150, 152, 158),
    (170, 30, 30),
    (30, 60, 140),
    (90, 95, 100),
    (200, 190, 170),
    (40, 90, 60),
    (220, 200, 60),
]
BUILDING_WALLS = [
    (196, 178, 150),
    (160, 80, 60),
    (180, 180, 176),
    (220, 214, 196),
    (120, 116, 110),
    (200, 160, 120),
    (150, 160, 170),
]
CLOTHES = [(40, 40, 60), (150, 30, 30), (30, 80, 150), (200, 200, 190), (60, 90, 50), (120, 100, 70), (20, 20, 20)]


def _vary(rng: np.random.Generator, rgb, amount: float = 0.12) -> np.ndarray:
    """Linear RGB colour near ``rgb`` (sRGB 0-255): brightness and hue jitter."""
    lin = _srgb_to_linear(rgb)
    lin = lin * rng.uniform(1.0 - amount, 1.0 + amount) * rng.uniform(1.0 - amount / 2, 1.0 + amount / 2, 3)
    return np.clip(lin, 0.0, 1.0)


def _road_geometry(rng: np.random.Generator, p: WorldParams, total: float) -> tuple[list, list]:
    lengths, curvatures = [], []
    heading = 0.0
    acc = 0.0
    straight = bool(rng.random() < 0.6)
    while acc < total:
        if straight:
            seg = float(rng.uniform(*p.straight_length))
            lengths.append(seg)
            curvatures.append(0.0)
        else:
            radius = float(rng.uniform(*p.curve_radius))
            angle = np.deg2rad(rng.uniform(*p.curve_angle_deg))
            sign = -1.0 if heading > np.deg2rad(60) else (1.0 if heading < -np.deg2rad(60) else rng.choice([-1.0, 1.0]))
            seg = float(radius * angle)
            lengths.append(seg)
            curvatures.append(float(sign / radius))
            heading += sign * angle
        acc += lengths[-1]
        straight = not straight
    return lengths, curvatures


def generate_world(
    seed: int,
    duration_s: float = 20.0,
    start_ns: int = 1_767_225_600 * 10**9,
    params: WorldParams | None = None,
    name: str = 'synth',
) -> World:
    """Generate one scene.

    Args:
        seed: any non-negative integer; the same seed gives the same world.
        duration_s: how long the ego drives [s] (the road and traffic are sized for it).
        start_ns: absolute time of the world's t = 0 [ns] (default 2026-01-01T00:00:00Z).
        params: generator parameters (:class:`WorldParams`).
        name: scene name, stored for the writer.

    Raises:
        WorldError: a negative seed or a non-positive duration.
    """
    if int(seed) != seed or seed < 0:
        raise WorldError(f'generate_world: seed must be a non-negative integer, got {seed!r}')
    if not (np.isfinite(duration_s) and duration_s > 0):
        raise WorldError(f'generate_world: duration_s must be a positive number of seconds, got {duration_s!r}')
    p = params or WorldParams()
    rng = np.random.default_rng(int(seed))

    ego_rate = float(rng.uniform(*p.ego_speed))
    total = p.road_before + ego_rate * duration_s + p.road_after
    lengths, curvatures = _road_geometry(rng, p, total)
    road0 = Road((0.0, 0.0), float(rng.uniform(-np.pi, np.pi)), lengths, curvatures)

    # Bounds of the road, then shift so that the map frame is positive (nuScenes maps are).
    ss = np.arange(-40.0, road0.length + 40.0, 2.0)
    pts, _, _ = road0.eval(ss)
    margin = 70.0
    lo = pts.min(axis=0) - margin
    hi = pts.max(axis=0) + margin
    offset = np.array([100.0, 100.0]) - lo
    road = Road((float(offset[0]), float(offset[1])), road0.th0[0], lengths, curvatures)
    lo, hi = lo + offset, hi + offset

    res = p.raster_resolution
    origin = np.floor(lo / 10.0) * 10.0
    w = int(np.ceil((hi[0] - origin[0]) / res))
    h = int(np.ceil((hi[1] - origin[1]) / res))

    # Distance to the centreline via a dense polyline drawn into a raster.
    ss = np.arange(-60.0, road.length + 60.0, 0.5)
    pts, heads, _ = road.eval(ss)
    pix = np.round((pts - origin) / res * 16).astype(np.int32)  # 4 fractional bits for cv2
    line = np.full((h, w), 255, np.uint8)
    cv2.polylines(line, [pix.reshape(-1, 1, 2)], False, 0, 1, cv2.LINE_8, 4)
    dist, labels = cv2.distanceTransformWithLabels(line, cv2.DIST_L2, cv2.DIST_MASK_5, labelType=cv2.DIST_LABEL_PIXEL)
    # Arc length of each centreline pixel (nearest dense sample), then of every cell via its nearest centreline pixel.
    zy, zx = np.nonzero(line == 0)
    zlab = labels[zy, zx]
    centres = (np.stack([zx, zy], -1) + 0.5) * res + origin
    arc_of_label = np.zeros(int(labels.max()) + 1, np.float32)
    for i in range(0, len(centres), 2048):
        dd = np.linalg.norm(centres[i : i + 2048, None, :] - pts[None, :, :], axis=-1)
        arc_of_label[zlab[i : i + 2048]] = ss[np.argmin(dd, axis=1)]
    arc = arc_of_label[labels]
    dist = (dist * res).astype(np.float32)  # metres (chamfer approximation)
    # Exact distance near the road: to the centreline point at the cell's arc length.
    ny, nx = np.nonzero(dist < p.sidewalk_outer + 2.0)
    cell = (np.stack([nx, ny], -1) + 0.5) * res + origin
    cp, _, _ = road.eval(arc[ny, nx])
    dist[ny, nx] = np.linalg.norm(cell - cp, axis=1)

    ground = np.full((h, w), _TERRAIN, np.uint8)
    # other_flat lots (parking lots, plazas) beside the sidewalk, drawn before road and sidewalk.
    for s_lot in np.arange(rng.uniform(0, 60), road.length, rng.uniform(50, 90)):
        side = rng.choice([-1.0, 1.0])
        depth = rng.uniform(8, 25)
        length = rng.uniform(12, 35)
        c, th = road.frame(np.array([s_lot]), np.array([side * (p.sidewalk_outer + depth / 2)]))
        rect = (
            (float((c[0, 0] - origin[0]) / res), float((c[0, 1] - origin[1]) / res)),
            (float(length / res), float(depth / res)),
            float(np.rad2deg(th[0])),
        )
        box = cv2.boxPoints(rect).astype(np.int32)
        cv2.fillPoly(ground, [box], int(_OFLAT))

    b = _Builder()
    hw = p.road_half_width
    swo = p.sidewalk_outer
    occupied = np.zeros((h, w), np.uint8)  # footprint raster of placed static objects (collision check)

    def footprint_ok(cx, cy, length, width, yaw, min_dist) -> bool:
        rect = (((cx - origin[0]) / res, (cy - origin[1]) / res), (length / res, width / res), float(np.rad2deg(yaw)))
        poly = cv2.boxPoints(rect).astype(np.int32)
        x0, y0 = np.maximum(poly.min(axis=0), 0)
        x1, y1 = np.minimum(poly.max(axis=0) + 1, (w, h))
        if x1 <= x0 or y1 <= y0:
            return False
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(mask, [poly - np.array([x0, y0], np.int32)], 1)
        sel = mask.astype(bool)
        if not sel.any() or sel.sum() < 0.5 * length * width / res**2:
            return False  # off the raster
        if dist[y0:y1, x0:x1][sel].min() < min_dist or occupied[y0:y1, x0:x1][sel].any():
            return False
        occupied[y0:y1, x0:x1][sel] = 1
        return True

    def static_box_object(label, category, cx, cy, yaw, size, color, style=STYLE_PLAIN, min_dist=0.0, z0=0.0):
        if min_dist > 0.0 and not footprint_ok(cx, cy, size[0], size[1], yaw, min_dist):
            return None
        o = b.add_object(label, size, category, xy=(cx, cy), yaw=yaw)
        b.box(o, label, (0.0, 0.0, z0 + size[2] / 2), size, color, style, seed=int(rng.integers(1 << 30)))
        return o

    s_lo, s_hi = 0.0, road.length

    # Buildings along both sides.
    for side in (-1.0, 1.0):
        s = s_lo + rng.uniform(0, 15)
        while s < s_hi:
            width_along = rng.uniform(8, 26)
            depth = rng.uniform(8, 20)
            if rng.random() < 0.82:
                setback = rng.uniform(*p.building_setback)
                lateral = side * (swo + setback + depth / 2)
                (c,), (th,) = road.frame(np.array([s + width_along / 2]), np.array([lateral]))
                height = float(rng.uniform(*p.building_height))
                col = _vary(rng, BUILDING_WALLS[rng.integers(len(BUILDING_WALLS))], 0.15)
                static_box_object(
                    L['manmade'],
                    '',
                    c[0],
                    c[1],
                    th,
                    (width_along, depth, height),
                    col,
                    STYLE_BUILDING,
                    min_dist=swo + 0.5,
                )
            elif rng.random() < 0.5:
                # A wall or a hedge along the property line.
                (c,), (th,) = road.frame(np.array([s + width_along / 2]), np.array([side * (swo + 0.8)]))
                if rng.random() < 0.5:
                    col = _vary(rng, (170, 165, 155), 0.1)
                    static_box_object(
                        L['manmade'],
                        '',
                        c[0],
                        c[1],
                        th,
                        (width_along, 0.45, rng.uniform(1.2, 2.6)),
                        col,
                        STYLE_PLAIN,
                        min_dist=swo + 0.3,
                    )
                else:
                    col = _vary(rng, (50, 95, 40), 0.15)
                    static_box_object(
                        L['vegetation'],
                        '',
                        c[0],
                        c[1],
                        th,
                        (width_along, 1.0, rng.uniform(1.0, 2.0)),
                        col,
                        STYLE_FOLIAGE,
                        min_dist=swo + 0.3,
                    )
            s += width_along + rng.uniform(1.0, 12.0)

    # Trees and poles on the outer sidewalk edge; bins near the kerb.
    bins: dict[float, list[float]] = {-1.0: [], 1.0: []}
    for side in (-1.0, 1.0):
        s = s_lo + rng.uniform(0, 8)
        while s < s_hi:
            (c,), (th,) = road.frame(np.array([s]), np.array([side * (swo - 0.6)]))
            if rng.random() < 0.7:
                if footprint_ok(c[0], c[1], 0.5, 0.5, th, swo - 1.2):
                    trunk_h = rng.uniform(2.2, 3.5)
                    o = b.add_object(L['vegetation'], (0.4, 0.4, trunk_h), xy=(c[0], c[1]), yaw=th)
                    b.box(
                        o,
                        L['vegetation'],
                        (0, 0, trunk_h / 2),
                        (0.4, 0.4, trunk_h),
                        _vary(rng, (90, 65, 45)),
                        seed=int(rng.integers(1 << 30)),
                    )
                    r = rng.uniform(1.4, 2.6)
                    green = _vary(rng, (60, 110, 45), 0.2)
                    b.sphere(o, L['vegetation'], (0, 0, trunk_h + r * 0.8), r, green, seed=int(rng.integers(1 << 30)))
                    if rng.random() < 0.6:
                        r2 = r * rng.uniform(0.6, 0.85)
                        b.sphere(
                            o,
                            L['vegetation'],
                            (rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), trunk_h + r * 0.8 + r * 0.7),
                            r2,
                            green * 1.1,
                            seed=int(rng.integers(1 << 30)),
                        )
            else:
                static_box_object(
                    L['manmade'],
                    '',
                    c[0],
                    c[1],
                    th,
                    (0.4, 0.4, rng.uniform(4.5, 7.0)),
                    _vary(rng, (120, 122, 125)),
                    min_dist=swo - 1.2,
                )
            if rng.random() < 0.25:
                bins[side].append(s + 2.0)
                (cb,), (thb,) = road.frame(np.array([s + 2.0]), np.array([side * (hw + 0.45)]))
                static_box_object(
                    L['others'],
                    'movable_object.pushable_pullable',
                    cb[0],
                    cb[1],
                    thb,
                    (0.6, 0.6, 1.1),
                    _vary(rng, (40, 70, 50), 0.2),
                    min_dist=hw + 0.1,
                )
            s += rng.uniform(7.0, 18.0)

    # Construction zones in the parking strip: barriers and cones; parked vehicles elsewhere.
    for side in (-1.0, 1.0):
        s = s_lo + rng.uniform(0, 20)
        pc = side * (p.lane_width + p.bike_lane_width + p.parking_width / 2)
        while s < s_hi:
            r = rng.random()
            if r < 0.18:
                zone = rng.uniform(10, 25)
                pick = rng.random()
                u = 0.0
                while u < zone:
                    (c,), (th,) = road.frame(np.array([s + u]), np.array([pc]))
                    if pick < 0.5:
                        col = _vary(rng, (200, 200, 195) if rng.random() < 0.6 else (200, 60, 40), 0.08)
                        static_box_object(
                            L['barrier'], 'movable_object.barrier', c[0], c[1], th, (2.0, 0.6, 1.0), col, STYLE_STRIPES
                        )
                        u += 2.3
                    else:
                        static_box_object(
                            L['traffic_cone'],
                            'movable_object.trafficcone',
                            c[0],
                            c[1],
                            th,
                            (0.4, 0.4, 0.75),
                            _vary(rng, (245, 110, 20), 0.06),
                            STYLE_STRIPES,
                        )
                        u += rng.uniform(1.5, 3.0)
                s += zone + rng.uniform(3, 10)
            elif r < 0.75:
                pick = rng.random()
                if pick < 0.75:
                    s_len = _vehicle(
                        b,
                        rng,
                        'car',
                        follow=True,
                        s0=s,
                        rate=0.0,
                        d=pc,
                        rear=True,
                        flip=float(rng.choice([0.0, np.pi])),
                        attribute='vehicle.parked',
                    )
                elif pick < 0.85:
                    s_len = _vehicle(
                        b,
                        rng,
                        'truck',
                        follow=True,
                        s0=s,
                        rate=0.0,
                        d=pc,
                        rear=True,
                        flip=0.0,
                        attribute='vehicle.parked',
                    )
                elif pick < 0.92:
                    s_len = _vehicle(
                        b,
                        rng,
                        'trailer',
                        follow=True,
                        s0=s,
                        rate=0.0,
                        d=pc,
                        rear=True,
                        flip=0.0,
                        attribute='vehicle.parked',
                    )
                else:
                    s_len = _vehicle(
                        b,
                        rng,
                        'construction_vehicle',
                        follow=True,
                        s0=s,
                        rate=0.0,
                        d=pc,
                        rear=True,
                        flip=0.0,
                        attribute='vehicle.parked',
                    )
                s += s_len + rng.uniform(*p.parked_gap)
            else:
                s += rng.uniform(*p.parked_gap)

    # Traffic: the ego's lane (right, +s) and the oncoming lane (left, -s). Speeds never let a follower
    # catch up with its leader during the scene: along the direction of travel speeds do not decrease.
    ego_s0 = p.road_before
    lane = p.lane_center
    # Ego lane ahead of the ego.
    s = ego_s0 + rng.uniform(12, 30)
    v = ego_rate + rng.uniform(0.2, 1.5)
    while s < s_hi + 40:
        kind = rng.choice(['car', 'car', 'car', 'truck', 'bus', 'motorcycle'])
        s_len = _vehicle(b, rng, kind, follow=True, s0=s, rate=v, d=-lane, flip=0.0, attribute='vehicle.moving')
        s += s_len + rng.uniform(*p.car_gap)
        v += rng.uniform(0.0, 1.5)
    # Ego lane behind the ego.
    s = ego_s0 - rng.uniform(12, 25)
    v = ego_rate - rng.uniform(0.3, 1.5)
    while s > s_lo - 40:
        kind = rng.choice(['car', 'car', 'truck', 'motorcycle'])
        s_len = _vehicle(
            b, rng, kind, follow=True, s0=s - 2.5, rate=max(v, 0.5), d=-lane, flip=0.0, attribute='vehicle.moving'
        )
        s -= s_len + rng.uniform(*p.car_gap)
        v -= rng.uniform(0.0, 1.0)
    # Oncoming lane: travelling towards -s; the leader is the one with the smallest s.
    s = s_lo - 20
    oncoming = []
    while s < s_hi + 60:
        oncoming.append(s)
        s += rng.uniform(*p.car_gap) + 6.0
    speeds = np.sort(rng.uniform(4.0, 11.0, len(oncoming)))[::-1]  # leader (smallest s) fastest
    for s, v in zip(oncoming, speeds):
        kind = rng.choice(['car', 'car', 'car', 'truck', 'bus', 'motorcycle'])
        _vehicle(b, rng, kind, follow=True, s0=s, rate=-float(v), d=lane, flip=np.pi, attribute='vehicle.moving')
    # Bike lanes: same rule per side.
    bike_d = p.lane_width + p.bike_lane_width / 2
    for side in (-1.0, 1.0):
        direction = 1.0 if side < 0 else -1.0
        pos = np.sort(np.cumsum(rng.uniform(25, 80, 12)) + s_lo - 30)
        pos = pos[pos < s_hi + 30]
        speeds = np.sort(rng.uniform(2.5, 6.5, len(pos)))
        if direction < 0:
            speeds = speeds[::-1]
        for s, v in zip(pos, speeds):
            kind = 'bicycle' if rng.random() < 0.7 else 'motorcycle'
            _vehicle(
                b,
                rng,
                kind,
                follow=True,
                s0=s,
                rate=direction * v,
                d=side * bike_d,
                flip=0.0 if direction > 0 else np.pi,
                attribute='cycle.with_rider',
            )
    # Pedestrians: two walking paths per sidewalk, one per direction (speeds never decrease towards the
    # front of a path); some people stand at the kerb, clear of the bins.
    for side in (-1.0, 1.0):
        for path, direction in ((hw + 1.25, 1.0), (hw + 2.15, -1.0)):
            pos = np.cumsum(rng.uniform(*p.pedestrian_gap, 40)) + s_lo - 30
            pos = pos[pos < s_hi + 30]
            speeds = np.sort(rng.uniform(0.8, 1.8, len(pos)))
            if direction < 0:
                speeds = speeds[::-1]
            for s, v in zip(pos, speeds):
                _pedestrian(b, rng, s0=s, rate=direction * v, d=side * path, flip=0.0 if direction > 0 else np.pi)
        s = s_lo + rng.uniform(0, 30)
        while s < s_hi:
            if all(abs(s - sb) > 1.5 for sb in bins[side]):
                _pedestrian(b, rng, s0=s, rate=0.0, d=side * (hw + 0.5), flip=float(rng.choice([0.0, np.pi])))
            s += rng.uniform(20, 60)

    # Pack arrays.
    objs = b.objects
    n = len(objs)
    prims = b.prims
    theta_sun = rng.uniform(0, 2 * np.pi)
    elev = np.deg2rad(rng.uniform(25, 60))
    sun = np.array([np.cos(elev) * np.cos(theta_sun), np.cos(elev) * np.sin(theta_sun), np.sin(elev)])
    return World(
        seed=int(seed),
        params=p,
        road=road,
        start_ns=int(start_ns),
        duration_s=float(duration_s),
        ego_s0=float(ego_s0),
        ego_rate=ego_rate,
        ego_d=-lane,
        sun=sun,
        raster_origin=origin.astype(np.float64),
        raster_res=float(res),
        ground=ground,
        dist=dist,
        arc=arc,
        obj_label=np.array([o['label'] for o in objs], np.uint8),
        obj_category=[o['category'] for o in objs],
        obj_attribute=[o['attribute'] for o in objs],
        obj_size=np.array([o['size'] for o in objs], np.float64).reshape(n, 3),
        obj_follow=np.array([o['follow'] for o in objs], bool),
        obj_s0=np.array([o['s0'] for o in objs], np.float64),
        obj_rate=np.array([o['rate'] for o in objs], np.float64),
        obj_d=np.array([o['d'] for o in objs], np.float64),
        obj_flip=np.array([o['flip'] for o in objs], np.float64),
        obj_static_xy=np.array([o['xy'] for o in objs], np.float64).reshape(n, 2),
        obj_static_yaw=np.array([o['yaw'] for o in objs], np.float64),
        prim_owner=np.array([q[0] for q in prims], np.int64),
        prim_kind=np.array([q[1] for q in prims], np.uint8),
        prim_center=np.array([q[2] for q in prims], np.float64).reshape(-1, 3),
        prim_half=np.array([q[3] for q in prims], np.float64).reshape(-1, 3),
        prim_yaw=np.array([q[4] for q in prims], np.float64),
        prim_label=np.array([q[5] for q in prims], np.uint8),
        prim_color=np.array([q[6] for q in prims], np.float64).reshape(-1, 3),
        prim_style=np.array([q[7] for q in prims], np.uint8),
        prim_seed=np.array([q[8] for q in prims], np.int64),
        name=name,
    )


# Vehicle shapes: (annotation length, width, height ranges), nuScenes category, Occ3D class.
_VEHICLES = {
    'car': ((3.9, 4.9), (1.7, 2.0), (1.45, 1.75), 'vehicle.car', 'car'),
    'truck': ((5.5, 8.5), (2.2, 2.5), (2.6, 3.4), 'vehicle.truck', 'truck'),
    'bus': ((10.0, 12.5), (2.5, 2.6), (3.0, 3.4), 'vehicle.bus.rigid', 'bus'),
    'trailer': ((6.0, 9.0), (2.3, 2.5), (2.8, 3.6), 'vehicle.trailer', 'trailer'),
    'construction_vehicle': ((5.0, 7.0), (2.3, 2.45), (2.8, 3.4), 'vehicle.construction', 'construction_vehicle'),
    'motorcycle': ((1.9, 2.2), (0.7, 0.9), (1.4, 1.6), 'vehicle.motorcycle', 'motorcycle'),
    'bicycle': ((1.6, 1.8), (0.5, 0.7), (1.6, 1.8), 'vehicle.bicycle', 'bicycle'),
}


def _vehicle(
    b: _Builder,
    rng,
    kind: str,
    follow: bool,
    s0: float,
    rate: float,
    d: float,
    flip: float,
    attribute: str,
    rear: bool = False,
) -> float:
    """Add a vehicle (several boxes) following the road at arc length ``s0`` (its centre, or its rear end if
    ``rear``); returns its length [m]."""
    (l0, l1), (w0, w1), (h0, h1), category, cls = _VEHICLES[kind]
    length, width, height = float(rng.uniform(l0, l1)), float(rng.uniform(w0, w1)), float(rng.uniform(h0, h1))
    if rear:
        s0 = s0 + length / 2
    label = L[cls]
    if kind in ('bicycle', 'motorcycle') and rate == 0.0:
        attribute = 'cycle.without_rider'
    o = b.add_object(
        label, (length, width, height), category, attribute, follow=follow, s0=s0, rate=rate, d=d, flip=flip
    )
    seed = lambda: int(rng.integers(1 << 30))  # noqa: E731
    if kind == 'car':
        paint = _vary(rng, CAR_PAINTS[rng.integers(len(CAR_PAINTS))], 0.08)
        body_h = height * 0.55
        b.box(
            o,
            label,
            (0, 0, 0.25 + (body_h - 0.25) / 2),
            (length, width, body_h - 0.25),
            paint,
            STYLE_VEHICLE,
            seed=seed(),
        )
        cab_l = length * rng.uniform(0.45, 0.6)
        b.box(
            o,
            label,
            (-length * 0.06, 0, body_h + (height - body_h) / 2),
            (cab_l, width * 0.9, height - body_h),
            paint * 0.9 + 0.02,
            STYLE_VEHICLE,
            seed=seed(),
        )
        for fx in (0.33, -0.33):  # wheels as dark boxes
            b.box(
                o, label, (fx * length, 0, 0.33), (0.66, width * 1.01, 0.66), np.array([0.02, 0.02, 0.02]), seed=seed()
            )
    elif kind in ('truck', 'construction_vehicle'):
        paint = _vary(rng, CAR_PAINTS[rng.integers(len(CAR_PAINTS))] if kind == 'truck' else (230, 170, 20), 0.08)
        cab_l = 2.0
        cab_h = height * 0.85 - 0.5
        b.box(
            o,
            label,
            (length / 2 - cab_l / 2, 0, 0.5 + cab_h / 2),
            (cab_l, width, cab_h),
            paint,
            STYLE_VEHICLE,
            seed=seed(),
        )
        cargo = _vary(rng, (210, 210, 205), 0.15) if kind == 'truck' else paint * 0.8
        b.box(
            o,
            label,
            (-cab_l / 2 - 0.1, 0, 0.6 + (height - 0.6) / 2),
            (length - cab_l - 0.2, width, height - 0.6),
            cargo,
            STYLE_PLAIN,
            seed=seed(),
        )
        for fx in (0.35, -0.3):
            b.box(o, label, (fx * length, 0, 0.5), (1.0, width * 1.01, 1.0), np.array([0.02, 0.02, 0.02]), seed=seed())
    elif kind == 'trailer':
        paint = _vary(rng, (200, 200, 200), 0.2)
        b.box(
            o, label, (0, 0, 1.0 + (height - 1.0) / 2), (length, width, height - 1.0), paint, STYLE_PLAIN, seed=seed()
        )
        b.box(o, label, (-length * 0.3, 0, 0.5), (1.4, width * 0.95, 1.0), np.array([0.02, 0.02, 0.02]), seed=seed())
    elif kind == 'bus':
        paint = _vary(rng, [(200, 40, 40), (240, 240, 235), (40, 90, 170), (240, 190, 40)][rng.integers(4)], 0.08)
        b.box(
            o,
            label,
            (0, 0, 0.35 + (height - 0.35) / 2),
            (length, width, height - 0.35),
            paint,
            STYLE_VEHICLE,
            seed=seed(),
        )
    else:  # bicycle, motorcycle: a frame and, when ridden, a rider; all of the vehicle's class (as nuScenes boxes)
        frame_col = _vary(rng, CAR_PAINTS[rng.integers(len(CAR_PAINTS))], 0.1)
        b.box(
            o,
            label,
            (0, 0, 0.45),
            (length, width * (0.4 if kind == 'bicycle' else 0.9), 0.8 if kind == 'motorcycle' else 0.7),
            frame_col,
            seed=seed(),
        )
        if attribute == 'cycle.with_rider':
            b.box(
                o,
                label,
                (-0.1 * length, 0, 0.9 + (height - 0.9) / 2),
                (0.5, 0.5, height - 0.9),
                _vary(rng, CLOTHES[rng.integers(len(CLOTHES))], 0.1),
                seed=seed(),
            )
    return length


def _pedestrian(b: _Builder, rng, s0: float, rate: float, d: float, flip: float) -> None:
    height = float(rng.uniform(1.55, 1.9))
    width = float(rng.uniform(0.55, 0.7))
    length = float(rng.uniform(0.5, 0.65))
    attribute = 'pedestrian.standing' if rate == 0.0 else 'pedestrian.moving'
    o = b.add_object(
        L['pedestrian'],
        (length, width, height),
        'human.pedestrian.adult',
        attribute,
        follow=True,
        s0=s0,
        rate=rate,
        d=d,
        flip=flip,
    )
    label = L['pedestrian']
    legs = _vary(rng, CLOTHES[rng.integers(len(CLOTHES))], 0.1)
    top = _vary(rng, CLOTHES[rng.integers(len(CLOTHES))], 0.1)
    skin = _vary(rng, [(225, 185, 150), (160, 110, 80), (90, 60, 45)][rng.integers(3)], 0.05)
    b.box(o, label, (0, 0, 0.42), (length * 0.6, width * 0.7, 0.84), legs, seed=int(rng.integers(1 << 30)))
    b.box(
        o,
        label,
        (0, 0, 0.84 + (height - 1.1) / 2),
        (length * 0.75, width, height - 1.1),
        top,
        seed=int(rng.integers(1 << 30)),
    )
    b.sphere(o, label, (0, 0, height - 0.13), 0.13, skin, STYLE_PLAIN, seed=int(rng.integers(1 << 30)))
