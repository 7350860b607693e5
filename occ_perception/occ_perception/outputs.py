"""One frame's occupancy result (:class:`OccFrame`) to messages and pictures.

Messages are built through a :class:`~occ_perception.messages.MessageTypes`
resolver, so the same code serves the rosbags typestore's classes (tools,
bags, tests) and the rclpy-generated classes (the node). Dense voxel data
always travels as bytes; only the RViz markers build per-point objects, and
only for surface voxels.

Frames and conventions (DESIGN.md sections 3 and 4): everything is in the
frame's ``frame_id`` (``base_link``: x forward, y left, z up), grids are
indexed ``[x, y, z]`` with the origin at the minimum corner, flow is (vx, vy)
in m/s.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .grid import CLASSES, FREE_LABEL, UNOBSERVED_LABEL, GridSpec, class_colors
from .messages import (
    MessageTypes,
    flow_from_dense,
    gather_pairs,
    make_occupancy_flow,
    make_pointcloud2,
    make_semantic_occupancy,
    occupancy_points,
    occupied_indices,
)
from .rig import FLASHOCC_CAMERA_ORDER

__all__ = [
    'DRIVABLE_LABELS',
    'HEIGHT_BAND',
    'MARKER_TILES',
    'OBSTACLE_LABELS',
    'ROUGH_LABELS',
    'TILE_ID_STRIDE',
    'OccFrame',
    'OutputsError',
    'VoxelPointCache',
    'costmap_msg',
    'costmap_values',
    'marker_array_msg',
    'occupancy_flow_msg',
    'pointcloud_msg',
    'render_panel',
    'save_png',
    'semantic_occupancy_msg',
    'surface_mask',
    'surface_tiles',
    'tile_centers',
    'top_view',
    'voxel_grid_msg',
    'voxel_grid_rgba',
]

# Occ3D labels: 0-10 objects, 11 driveable_surface, 12-14 flat ground, 15 manmade, 16 vegetation.
OBSTACLE_LABELS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 16)
"""Classes that block the vehicle where they occupy its height band (everything but flat ground)."""
DRIVABLE_LABELS: tuple[int, ...] = (11,)
ROUGH_LABELS: tuple[int, ...] = (12, 13, 14)
"""Observed flat ground that is not road (other_flat, sidewalk, terrain)."""
HEIGHT_BAND: tuple[float, float] = (0.2, 2.0)
"""z range [m] in ``base_link`` (ground at z = 0) that the vehicle's body sweeps."""

# role bits of a voxel in the costmap
_OBSERVED, _OBSTACLE, _ROUGH, _DRIVABLE = 1, 2, 4, 8

# foxglove_msgs/PackedElementField.type values (NumericType of @foxglove/schemas)
_FOXGLOVE_UINT8 = 1


class OutputsError(ValueError):
    """An OccFrame's arrays do not fit its grid, or an output parameter is invalid."""


@dataclass(kw_only=True)
class OccFrame:
    """The result of one synchronised frame.

    Attributes:
        stamp_ns: the frame's stamp (the CAM_FRONT image stamp) [ns].
        frame_id: frame of the grid, ``base_link``.
        grid: the voxel grid.
        labels: (X, Y, Z) uint8 class labels (17 free; 255 unobserved in ground truth).
        confidence: (X, Y, Z) uint8, round(255 * max class probability), or None.
        flow: (X, Y, Z, 2) float32 (vx, vy) [m/s] in ``frame_id`` axes, or None.
        timings: stage name -> duration [s].
        reset_reason: why the temporal cache was reset at this frame, or None.
        missing_cameras: failed cameras the frame was made without (their own columns have confidence 0).

    The voxel selections every output needs (:attr:`nonfree_indices`, :attr:`occupied_indices`,
    :attr:`surface_indices`) are computed on first use and cached on the frame, so a frame's arrays must
    not be modified once a message has been built from it.

    Raises:
        OutputsError: an array's shape or dtype does not fit the grid.
    """

    stamp_ns: int
    frame_id: str = 'base_link'
    grid: GridSpec
    labels: np.ndarray
    confidence: np.ndarray | None = None
    flow: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    reset_reason: str | None = None
    missing_cameras: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        checks: list[tuple[str, Any, Any, tuple[int, ...]]] = [('labels', self.labels, np.uint8, ())]
        if self.confidence is not None:
            checks.append(('confidence', self.confidence, np.uint8, ()))
        if self.flow is not None:
            checks.append(('flow', self.flow, np.float32, (2,)))
        for name, values, dtype, trailing in checks:
            if not isinstance(values, np.ndarray) or values.dtype != dtype:
                got = values.dtype if isinstance(values, np.ndarray) else type(values).__name__
                raise OutputsError(f'OccFrame.{name}: expected a {np.dtype(dtype)} numpy array, got {got}')
            if tuple(values.shape) != self.grid.shape + trailing:
                raise OutputsError(
                    f'OccFrame.{name}: expected shape {self.grid.shape + trailing} (the grid), got {values.shape}'
                )

    @functools.cached_property
    def nonfree_indices(self) -> np.ndarray:
        """Flat indices (ascending, intp) of the voxels not labelled free: occupied and unobserved (255)."""
        return np.flatnonzero(self.labels.reshape(-1) != FREE_LABEL)

    @functools.cached_property
    def occupied_indices(self) -> np.ndarray:
        """Flat indices (ascending, intp) of the occupied voxels (label neither free nor 255)."""
        nonfree = self.nonfree_indices
        return nonfree[np.take(self.labels.reshape(-1), nonfree) != UNOBSERVED_LABEL]

    @functools.cached_property
    def surface_indices(self) -> np.ndarray:
        """Flat indices (ascending, intp) of the :func:`surface_mask` voxels."""
        return _surface_indices(self.labels, self.occupied_indices)


# ---------------------------------------------------------------------------
# voxel selections


def _occupied(labels: np.ndarray, free_label: int = FREE_LABEL) -> np.ndarray:
    return (labels != free_label) & (labels != UNOBSERVED_LABEL)


@functools.lru_cache(maxsize=8)
def _border(shape: tuple[int, int, int]) -> np.ndarray:
    """Flat bool mask of the voxels on the grid's six faces (read-only, cached per shape)."""
    border = np.zeros(shape, dtype=bool)
    border[[0, -1], :, :] = True
    border[:, [0, -1], :] = True
    border[:, :, [0, -1]] = True
    flat = border.reshape(-1)
    flat.flags.writeable = False
    return flat


def surface_mask(labels: np.ndarray, free_label: int = FREE_LABEL) -> np.ndarray:
    """Occupied voxels with at least one free or unobserved 6-neighbour; the grid border counts as exposed.

    Args:
        labels: (X, Y, Z) uint8.

    Returns:
        (X, Y, Z) bool: the voxels a viewer can see from outside, not the filled volume.
    """
    if labels.ndim != 3:
        raise OutputsError(f'surface_mask labels: expected (X, Y, Z), got shape {labels.shape}')
    mask = np.zeros(labels.size, dtype=bool)
    mask[_surface_indices(labels, occupied_indices(labels, free_label), free_label)] = True
    return mask.reshape(labels.shape)


def _surface_indices(labels: np.ndarray, occupied: np.ndarray, free_label: int = FREE_LABEL) -> np.ndarray:
    """The subset of ``occupied`` (flat indices, ascending) with a free or unobserved 6-neighbour or on a face.

    Works on the occupied voxels only: six gathers of neighbour labels, no pass over the whole grid.
    """
    shape = tuple(int(n) for n in labels.shape)
    flat = labels.reshape(-1)
    exposed = np.take(_border(shape), occupied)  # type: ignore[arg-type]
    # Neighbours along z, y and x are 1, Z and Y * Z apart in the flat C-order array. Indices of face voxels
    # wrap across rows or leave the array ('clip'), but face voxels are exposed anyway.
    for step in (1, shape[2], shape[1] * shape[2]):
        for neighbour in (occupied - step, occupied + step):
            label = np.take(flat, neighbour, mode='clip')
            exposed |= label == free_label
            exposed |= label == UNOBSERVED_LABEL
    return occupied[exposed]


# ---------------------------------------------------------------------------
# occ_perception_msgs and PointCloud2


def semantic_occupancy_msg(frame: OccFrame, types: MessageTypes) -> Any:
    """``occ_perception_msgs/SemanticOccupancy`` of the frame (labels and confidence as bytes)."""
    return make_semantic_occupancy(types, frame.stamp_ns, frame.frame_id, frame.grid, frame.labels, frame.confidence)


def occupancy_flow_msg(frame: OccFrame, types: MessageTypes) -> Any | None:
    """``occ_perception_msgs/OccupancyFlow`` of the occupied voxels, or None when the frame has no flow."""
    if frame.flow is None:
        return None
    indices, velocity = flow_from_dense(frame.labels, frame.flow, indices=frame.occupied_indices)
    return make_occupancy_flow(types, frame.stamp_ns, frame.frame_id, frame.grid, indices, velocity)


def pointcloud_msg(frame: OccFrame, types: MessageTypes, surface_only: bool = True) -> Any:
    """sensor_msgs/PointCloud2 (x, y, z, rgb, label, vx, vy; voxel centres [m]) of the occupied voxels.

    Args:
        surface_only: keep only :func:`surface_mask` voxels, so RViz draws surfaces, not filled volumes.
    """
    indices = frame.surface_indices if surface_only else frame.occupied_indices
    points = occupancy_points(frame.grid, frame.labels, frame.flow, indices=indices)
    return make_pointcloud2(types, frame.stamp_ns, frame.frame_id, points)


# ---------------------------------------------------------------------------
# MarkerArray


def _pose(types: MessageTypes, xyz: Sequence[float] = (0.0, 0.0, 0.0)) -> Any:
    position = types.make('geometry_msgs/msg/Point', x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))
    orientation = types.make('geometry_msgs/msg/Quaternion', x=0.0, y=0.0, z=0.0, w=1.0)
    return types.make('geometry_msgs/msg/Pose', position=position, orientation=orientation)


def _points(types: MessageTypes, xyz: np.ndarray) -> list:
    """geometry_msgs/Point objects of (N, 3) coordinates; the one unavoidable per-point Python step."""
    point = types.resolve('geometry_msgs/msg/Point')
    cols = xyz.astype(np.float64).T.tolist()
    if types.flavor == 'numpy':  # rosbags dataclasses take positional fields (x, y, z)
        return list(map(point, *cols))
    return [point(x=x, y=y, z=z) for x, y, z in zip(*cols)]


def _marker(
    types: MessageTypes,
    header: Any,
    ns: str,
    marker_id: int,
    kind: int,
    action: int,
    scale: Sequence[float],
    rgba: Sequence[float],
    points: list,
) -> Any:
    return types.make(
        'visualization_msgs/msg/Marker',
        header=header,
        ns=ns,
        id=int(marker_id),
        type=int(kind),
        action=int(action),
        pose=_pose(types),
        scale=types.make('geometry_msgs/msg/Vector3', x=float(scale[0]), y=float(scale[1]), z=float(scale[2])),
        color=types.make(
            'std_msgs/msg/ColorRGBA', r=float(rgba[0]), g=float(rgba[1]), b=float(rgba[2]), a=float(rgba[3])
        ),
        lifetime=types.make('builtin_interfaces/msg/Duration', sec=0, nanosec=0),
        frame_locked=False,
        points=points,
        colors=[],
        texture_resource='',
        texture=types.make(
            'sensor_msgs/msg/CompressedImage', header=header, format='', data=types.pack(np.zeros(0, np.uint8), 'uint8')
        ),
        uv_coordinates=[],
        text='',
        mesh_resource='',
        mesh_file=types.make(
            'visualization_msgs/msg/MeshFile', filename='', data=types.pack(np.zeros(0, np.uint8), 'uint8')
        ),
        mesh_use_embedded_materials=False,
    )


_DYNAMIC = np.zeros(256, dtype=bool)
_DYNAMIC[[c.label for c in CLASSES if c.dynamic]] = True


def _moving_columns(frame: OccFrame, min_speed: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) (ix, iy, iz) of the highest occupied voxel of each (x, y) column when it is of a movable class
    (``ClassInfo.dynamic``: vehicles, bicycles, pedestrians) and faster than ``min_speed`` [m/s], and its (N, 2)
    (vx, vy).

    The highest occupied voxel is what the top view and a planner see; flow on static classes has no ground truth
    (Occ3D flow is zero there), and voxels under the surface are unobserved, so neither is drawn."""
    assert frame.flow is not None
    occupied = frame.occupied_indices  # ascending flat index: z grows within a column
    column = occupied // frame.grid.shape[2]
    top = occupied[np.append(column[1:] != column[:-1], True)] if occupied.size else occupied
    top = top[_DYNAMIC[frame.labels.reshape(-1)[top]]]
    vel = gather_pairs(frame.flow, top)
    top = top[np.hypot(vel[:, 0], vel[:, 1]) > min_speed]
    ix, iy, iz = frame.grid.unflatten(top)
    return np.stack([ix, iy, iz], axis=1), frame.flow.reshape(-1, 2)[top]


def _flow_marker(
    frame: OccFrame, types: MessageTypes, header: Any, ns: str, min_speed: float, arrow_seconds: float
) -> Any:
    """One LINE_LIST of flow arrows (shaft over ``arrow_seconds`` of motion and two head strokes, a quarter of the
    shaft long and 25 degrees off it) for the columns of :func:`_moving_columns`."""
    assert frame.flow is not None
    marker_cls = types.resolve('visualization_msgs/msg/Marker')
    v = frame.grid.voxel_size
    idx, vel = _moving_columns(frame, min_speed)
    start = np.asarray(frame.grid.lower) + (idx + 0.5) * v
    end = start.copy()
    end[:, :2] += vel * arrow_seconds
    back = (start - end)[:, :2] * 0.25
    c, s_ = np.cos(np.radians(25.0)), np.sin(np.radians(25.0))
    heads = []
    for sign in (1.0, -1.0):
        tip = end.copy()
        tip[:, 0] += c * back[:, 0] - sign * s_ * back[:, 1]
        tip[:, 1] += sign * s_ * back[:, 0] + c * back[:, 1]
        heads.append(tip)
    segments = np.stack([start, end, end, heads[0], end, heads[1]], axis=1).reshape(-1, 3)
    return _marker(
        types,
        header,
        ns,
        0,
        marker_cls.LINE_LIST,
        marker_cls.ADD,
        (0.1 * v, 0, 0),
        (1.0, 1.0, 1.0, 1.0),
        _points(types, segments),
    )


def tile_centers(grid: GridSpec, flat: np.ndarray, tile: int = 1) -> np.ndarray:
    """Centres (N, 3) float64 [m] of horizontal ``tile`` x ``tile`` x 1 voxel blocks whose lowest-x, lowest-y
    voxel has flat index ``flat`` (N,) (``tile`` 1: the voxel centres)."""
    centers = grid.flat_centers(flat)
    if tile > 1:
        centers[:, :2] += 0.5 * (tile - 1) * grid.voxel_size
    return centers


class VoxelPointCache:
    """geometry_msgs/Point objects of voxel (and tile) centres, made once and reused by later marker arrays.

    The grid is fixed in ``base_link``, so a voxel's centre never changes; building Python message objects is
    the slow part of a MarkerArray, and a cache turns it into an array lookup after the first frames. The
    cached Points are shared between messages: do not modify the points of a returned message.

    Args:
        types: the message classes (one cache per MessageTypes). grid: the voxel grid.
    """

    def __init__(self, types: MessageTypes, grid: GridSpec) -> None:
        self.types = types
        self.grid = grid
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def points(self, flat: np.ndarray, tile: int = 1) -> list:
        """Points at the centres (:func:`tile_centers`) of the ``tile`` x ``tile`` blocks starting at the voxels
        with flat indices ``flat`` (N,), in that order (``tile`` 1: the voxels themselves)."""
        if tile not in self._tables:
            self._tables[tile] = (
                np.empty(self.grid.num_voxels, dtype=object),
                np.zeros(self.grid.num_voxels, dtype=bool),
            )
        points, filled = self._tables[tile]
        missing = flat[~filled[flat]]
        if missing.size:
            made = np.empty(missing.size, dtype=object)
            made[:] = _points(self.types, tile_centers(self.grid, missing, tile))
            points[missing] = made
            filled[missing] = True
        return points[flat].tolist()


MARKER_TILES: tuple[int, ...] = (8, 4, 2)
"""Tile edges [voxels] that :func:`marker_array_msg` merges uniform surface patches into, largest first."""
TILE_ID_STRIDE = 256
"""Marker id of a class's ``tile`` x ``tile`` CUBE_LIST: ``label + TILE_ID_STRIDE * tile`` (1 x 1: the label)."""


def surface_tiles(
    grid: GridSpec, flat: np.ndarray, labels: np.ndarray, tiles: Sequence[int] = MARKER_TILES
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Cover voxels with horizontal square tiles: greedily, largest ``tiles`` first, a ``t`` x ``t`` x 1 block
    aligned to multiples of ``t`` in x and y becomes one tile when all its ``t * t`` voxels are among ``flat``,
    not yet covered, and of one label; the rest stay single voxels.

    Args:
        flat: (N,) flat indices of the voxels to cover (e.g. the surface voxels), unique.
        labels: (N,) their labels.
        tiles: tile edges [voxels], each > 1.

    Returns:
        ``[(t, first, label), ...]`` for each t of ``tiles`` and then 1: ``first`` (M,) the flat index of each
        tile's lowest-x, lowest-y voxel (ascending), ``label`` (M,) its label. Every voxel of ``flat`` is in
        exactly one tile.
    """
    sx, sy, sz = grid.shape
    x, rest = np.divmod(flat, sy * sz)
    y, z = np.divmod(rest, sz)
    left = np.ones(flat.size, dtype=bool)
    out: list[tuple[int, np.ndarray, np.ndarray]] = []
    for t in tiles:
        tx, ty = sx // t, sy // t
        idx = np.flatnonzero(left & (x < tx * t) & (y < ty * t))  # candidates: not covered, in whole blocks
        key = ((x[idx] // t) * ty + y[idx] // t) * sz + z[idx]
        ref = np.zeros(tx * ty * sz, dtype=labels.dtype)
        ref[key] = labels[idx]  # one member's label per block
        match = labels[idx] == ref[key]
        # t*t distinct members all carrying that label: the block is whole and uniform
        full = np.bincount(key[match], minlength=ref.size) == t * t
        keys = np.flatnonzero(full)
        kx, rest_k = np.divmod(keys, ty * sz)
        ky, kz = np.divmod(rest_k, sz)
        out.append((t, (kx * t * sy + ky * t) * sz + kz, ref[keys]))
        left[idx[full[key]]] = False
    out.append((1, flat[left], labels[left]))
    return out


def marker_array_msg(
    frame: OccFrame,
    types: MessageTypes,
    ns: str = 'occupancy',
    min_speed: float = 0.5,
    arrow_seconds: float = 1.0,
    alpha: float = 1.0,
    cache: VoxelPointCache | None = None,
    tiles: Sequence[int] = MARKER_TILES,
) -> Any:
    """visualization_msgs/MarkerArray for RViz.

    Markers: a DELETEALL first (stale classes vanish), then the surface voxels (:func:`surface_mask`) as
    CUBE_LISTs in the class colour, namespace ``ns``: uniform horizontal patches merged into ``tiles``
    (:func:`surface_tiles`; 8 x 8, 4 x 4 and 2 x 2 voxels by default, so flat ground costs a fraction of the
    points: publishing Point objects is what a MarkerArray costs in rclpy), one CUBE_LIST per class and
    tile size with cube size (t * v, t * v, v) and id ``label + TILE_ID_STRIDE * t``, and the remaining
    single voxels with cube edge v and id = label (``tiles=()``: every surface voxel on its own); then,
    when the frame has flow, one LINE_LIST (namespace ``ns + '/flow'``) with an arrow (shaft and
    two head strokes, three segments) per (x, y) column holding an occupied voxel faster than ``min_speed``
    [m/s], from the centre of the highest such voxel along its velocity for ``arrow_seconds`` [s].

    Args:
        cache: reuse the Point objects of earlier calls (:class:`VoxelPointCache` of the same types and grid).

    Raises:
        OutputsError: ``cache`` belongs to other message classes or another grid.
    """
    if cache is not None and (cache.types is not types or cache.grid != frame.grid):
        raise OutputsError('marker_array_msg: the VoxelPointCache was made for other message types or another grid')
    header = types.header(frame.stamp_ns, frame.frame_id)
    marker_cls = types.resolve('visualization_msgs/msg/Marker')
    markers = [_marker(types, header, ns, 0, marker_cls.CUBE_LIST, marker_cls.DELETEALL, (1, 1, 1), (0, 0, 0, 0), [])]
    surface = frame.surface_indices
    v = frame.grid.voxel_size
    colors = class_colors().astype(np.float64) / 255.0
    for t, flat, labels in surface_tiles(frame.grid, surface, frame.labels.reshape(-1)[surface], tiles):
        order = np.argsort(labels, kind='stable')
        flat, labels = flat[order], labels[order]
        if cache is not None:
            points = cache.points(flat, t)
        else:
            points = _points(types, tile_centers(frame.grid, flat, t))
        present, starts = np.unique(labels, return_index=True)
        ends = np.append(starts[1:], labels.size)
        scale = (t * v, t * v, v)
        for label, a, b in zip(present.tolist(), starts.tolist(), ends.tolist()):
            rgba = (*colors[label], alpha)
            marker_id = label + (TILE_ID_STRIDE * t if t > 1 else 0)
            markers.append(
                _marker(types, header, ns, marker_id, marker_cls.CUBE_LIST, marker_cls.ADD, scale, rgba, points[a:b])
            )
    if frame.flow is not None:
        markers.append(_flow_marker(frame, types, header, f'{ns}/flow', min_speed, arrow_seconds))
    return types.make('visualization_msgs/msg/MarkerArray', markers=markers)


# ---------------------------------------------------------------------------
# nav_msgs/OccupancyGrid


def costmap_values(
    labels: np.ndarray,
    grid: GridSpec,
    confidence: np.ndarray | None = None,
    obstacle_labels: Sequence[int] = OBSTACLE_LABELS,
    height_band: tuple[float, float] = HEIGHT_BAND,
    rough_labels: Sequence[int] = ROUGH_LABELS,
    rough_cost: int = 50,
    occupied: np.ndarray | None = None,
) -> np.ndarray:
    """The grid flattened to a 2-D cost per (x, y) column, (X, Y) int8.

    A voxel is observed when its label is not 255 and (where confidence is given) its confidence is not 0
    (voxels only a failed camera could see). Per column: 100 where an observed voxel overlapping
    ``height_band`` ([z_min, z_max) in metres of ``base_link``) has an obstacle label; otherwise -1 where no
    voxel is observed; otherwise ``rough_cost`` where observed flat ground of ``rough_labels`` (sidewalk,
    terrain, other flat) is present and no drivable surface; otherwise 0 (drivable or free).

    Args:
        occupied: flat indices of the occupied voxels (:func:`~occ_perception.messages.occupied_indices`)
            when the caller has them already; None computes them.

    Raises:
        OutputsError: an empty or inverted height band, or a cost outside 0..100.
    """
    z_min, z_max = height_band
    if not z_max > z_min:
        raise OutputsError(f'costmap height_band: expected (z_min, z_max) with z_max > z_min, got {height_band}')
    if not 0 <= int(rough_cost) <= 100:
        raise OutputsError(f'costmap rough_cost: expected 0..100, got {rough_cost}')
    grid.check_array(labels, 'costmap labels')
    sx, sy, sz = grid.shape
    z_lo = grid.lower[2] + np.arange(sz) * grid.voxel_size
    eps = 1e-6 * grid.voxel_size  # a voxel that only touches the band's edge is outside it
    band = (z_lo < z_max - eps) & (z_lo + grid.voxel_size > z_min + eps)
    # one lookup gives each label's role bits; obstacles count only inside the height band
    roles = np.zeros(256, dtype=np.uint8)
    roles[list(rough_labels)] |= _ROUGH
    roles[list(DRIVABLE_LABELS)] |= _DRIVABLE
    roles[list(obstacle_labels)] |= _OBSTACLE
    roles[UNOBSERVED_LABEL] = 0
    layer_mask = np.where(band, 0xFF, 0xFF & ~_OBSTACLE).astype(np.uint8)
    flat = labels.reshape(-1)
    observed = flat != UNOBSERVED_LABEL
    conf = None
    if confidence is not None:
        grid.check_array(confidence, 'costmap confidence')
        conf = confidence.reshape(-1)
        observed &= conf != 0  # voxels only a failed camera could see count as unobserved
    # Only voxels with a role matter for the role bits: the occupied ones, unless a role names the free label.
    if roles[FREE_LABEL]:
        candidates = np.flatnonzero(np.take(roles, flat))
    else:
        candidates = occupied_indices(labels) if occupied is None else occupied
    if conf is not None:
        candidates = candidates[np.take(conf, candidates) != 0]
    column, iz = np.divmod(candidates, sz)
    bits = np.take(roles, np.take(flat, candidates))
    bits &= np.take(layer_mask, iz)

    def columns_with(bit: int) -> np.ndarray:
        hit = np.zeros(sx * sy, dtype=bool)
        hit[column[(bits & bit) != 0]] = True
        return hit

    cost = np.zeros(sx * sy, dtype=np.int8)
    cost[columns_with(_ROUGH) & ~columns_with(_DRIVABLE)] = rough_cost
    cost[~_any_over_z(observed, sz)] = -1
    cost[columns_with(_OBSTACLE)] = 100
    return cost.reshape(sx, sy)


def _any_over_z(mask: np.ndarray, size_z: int) -> np.ndarray:
    """Per column: does any of its ``size_z`` consecutive entries of the flat bool ``mask`` hold? (X * Y,) bool."""
    if size_z % 8 or not mask.flags.c_contiguous:
        return np.asarray(mask.reshape(-1, size_z).any(axis=1))
    words = mask.view(np.uint64).reshape(-1, size_z // 8)  # eight voxels per word
    acc = words[:, 0].copy()
    for k in range(1, words.shape[1]):
        acc |= words[:, k]
    return np.asarray(acc != 0)


def costmap_msg(frame: OccFrame, types: MessageTypes, **params: Any) -> Any:
    """nav_msgs/OccupancyGrid of :func:`costmap_values` (keyword ``params`` go there).

    Layout (nav_msgs/OccupancyGrid): ``data`` row-major, width = size_x columns along x, height = size_y
    rows along y, so cell (ix, iy) is ``data[iy * size_x + ix]``; ``info.origin`` is the grid's minimum
    corner in x and y, at z = 0 (the ground of ``base_link``), identity orientation.
    """
    cost = costmap_values(frame.labels, frame.grid, frame.confidence, occupied=frame.occupied_indices, **params)
    sx, sy, _ = frame.grid.shape
    header = types.header(frame.stamp_ns, frame.frame_id)
    info = types.make(
        'nav_msgs/msg/MapMetaData',
        map_load_time=header.stamp,
        resolution=float(frame.grid.voxel_size),
        width=sx,
        height=sy,
        origin=_pose(types, (frame.grid.lower[0], frame.grid.lower[1], 0.0)),
    )
    return types.make('nav_msgs/msg/OccupancyGrid', header=header, info=info, data=types.pack(cost.T, 'int8'))


# ---------------------------------------------------------------------------
# foxglove_msgs/VoxelGrid


def voxel_grid_rgba(
    labels: np.ndarray, alpha: int = 255, free_label: int = FREE_LABEL, nonfree: np.ndarray | None = None
) -> np.ndarray:
    """RGBA bytes of every voxel in Z-Y-X order (foxglove VoxelGrid ``data``), (Z, Y, X, 4) uint8.

    Class colours with ``alpha``; free and unobserved voxels are transparent (alpha 0).

    Args:
        labels: (X, Y, Z) uint8.
        nonfree: flat indices of the voxels not labelled ``free_label``, when the caller has them already
            (:attr:`OccFrame.nonfree_indices`); None computes them.
    """
    table = np.zeros((256, 4), dtype=np.uint8)
    table[:, :3] = class_colors()
    table[:, 3] = alpha
    table[free_label, 3] = 0
    table[UNOBSERVED_LABEL, 3] = 0
    packed = table.view(np.uint32).reshape(256)  # one 4-byte RGBA word per label, byte order kept
    sx, sy, sz = labels.shape
    flat = labels.reshape(-1)
    if nonfree is None:
        nonfree = np.flatnonzero(flat != free_label)
    if 4 * nonfree.size > flat.size:  # mostly non-free: one transposed lookup is cheaper than a scatter
        zyx = np.take(packed, labels.transpose(2, 1, 0))
    else:  # mostly free: fill with the free word, then write the other voxels at their Z-Y-X positions
        zyx = np.full(flat.size, packed[free_label], dtype=np.uint32)
        ix, rest = np.divmod(nonfree, sy * sz)
        iy, iz = np.divmod(rest, sz)
        zyx[(iz * sy + iy) * sx + ix] = np.take(packed, np.take(flat, nonfree))
    return zyx.view(np.uint8).reshape(sz, sy, sx, 4)


def voxel_grid_msg(frame: OccFrame, types: MessageTypes, alpha: int = 255) -> Any:
    """foxglove_msgs/msg/VoxelGrid (Foxglove SDK schema) of the frame, RGBA per voxel.

    Columns along x (``column_count`` = size_x), rows along y (``row_count`` = size_y), slices along z;
    ``cell_stride`` 4, ``row_stride`` 4 * size_x, ``slice_stride`` 4 * size_x * size_y; ``pose`` is the
    grid's minimum corner; fields red, green, blue, alpha (UINT8) at offsets 0..3.
    """
    sx, sy, _ = frame.grid.shape
    v = float(frame.grid.voxel_size)
    sec, nanosec = divmod(int(frame.stamp_ns), 1_000_000_000)
    fields = [
        types.make('foxglove_msgs/msg/PackedElementField', name=name, offset=i, type=_FOXGLOVE_UINT8)
        for i, name in enumerate(('red', 'green', 'blue', 'alpha'))
    ]
    return types.make(
        'foxglove_msgs/msg/VoxelGrid',
        timestamp=types.make('builtin_interfaces/msg/Time', sec=sec, nanosec=nanosec),
        frame_id=frame.frame_id,
        pose=_pose(types, frame.grid.lower),
        row_count=sy,
        column_count=sx,
        cell_size=types.make('geometry_msgs/msg/Vector3', x=v, y=v, z=v),
        slice_stride=4 * sx * sy,
        row_stride=4 * sx,
        cell_stride=4,
        fields=fields,
        data=types.pack(voxel_grid_rgba(frame.labels, alpha, nonfree=frame.nonfree_indices).reshape(-1), 'uint8'),
    )


# ---------------------------------------------------------------------------
# PNG panels

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BACKGROUND = (32, 32, 32)
_EMPTY_COLUMN = (70, 70, 70)


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.55, color=(255, 255, 255)) -> None:
    """Text with its baseline at ``org`` on a dark box, legible on any picture."""
    (w, h), base = cv2.getTextSize(text, _FONT, scale, 1)
    x, y = org
    cv2.rectangle(img, (x - 3, y - h - 3), (x + w + 3, y + base), _BACKGROUND, -1)
    cv2.putText(img, text, org, _FONT, scale, color, 1, cv2.LINE_AA)


def top_view(labels: np.ndarray, scale: int = 3, free_label: int = FREE_LABEL) -> np.ndarray:
    """Top view (X * scale, Y * scale, 3) uint8 RGB: the highest non-free, observed class of each column.

    Image rows run along x descending (front, +x, up) and columns along y descending (left, +y, on the
    left), as seen from above. Columns without any occupied voxel are grey.
    """
    occupied = _occupied(labels, free_label)
    top = labels.shape[2] - 1 - np.argmax(occupied[:, :, ::-1], axis=2)
    label = np.take_along_axis(labels, top[..., None], axis=2)[..., 0]
    img = class_colors()[label]
    img[~occupied.any(axis=2)] = _EMPTY_COLUMN
    img = img[::-1, ::-1]
    return np.ascontiguousarray(np.repeat(np.repeat(img, scale, axis=0), scale, axis=1))


def _to_view(grid: GridSpec, xy: np.ndarray, scale: int) -> np.ndarray:
    """Metric (x, y) [m] to (col, row) pixel coordinates of :func:`top_view`."""
    upper = grid.upper
    row = (upper[0] - xy[..., 0]) / grid.voxel_size * scale
    col = (upper[1] - xy[..., 1]) / grid.voxel_size * scale
    return np.stack([col, row], axis=-1)


def _draw_ego(img: np.ndarray, grid: GridSpec, scale: int) -> None:
    """A white arrow-shaped marker at the ego origin pointing forward (+x, up)."""
    corners = np.array([[2.5, 0.0], [-1.5, 1.0], [-1.5, -1.0]])  # metres: nose, rear left, rear right
    pix = np.round(_to_view(grid, corners, scale)).astype(np.int32)
    cv2.fillPoly(img, [pix], (255, 255, 255), cv2.LINE_AA)
    cv2.polylines(img, [pix], True, (0, 0, 0), 1, cv2.LINE_AA)


def _draw_flow(
    img: np.ndarray,
    labels: np.ndarray,
    flow: np.ndarray,
    grid: GridSpec,
    scale: int,
    min_speed: float,
    stride: int,
    seconds: float,
) -> None:
    frame = OccFrame(stamp_ns=0, grid=grid, labels=labels, flow=flow)
    idx, vel = _moving_columns(frame, min_speed)
    keep = (idx[:, 0] % stride == 0) & (idx[:, 1] % stride == 0)
    idx, vel = idx[keep], vel[keep]
    start_xy = np.asarray(grid.lower[:2]) + (idx[:, :2] + 0.5) * grid.voxel_size
    start = _to_view(grid, start_xy, scale)
    end = _to_view(grid, start_xy + vel * seconds, scale)
    for (c0, r0), (c1, r1) in zip(np.round(start).astype(int).tolist(), np.round(end).astype(int).tolist()):
        cv2.arrowedLine(img, (c0, r0), (c1, r1), (255, 255, 255), 1, cv2.LINE_AA, tipLength=0.3)


def _legend(labels_present: Sequence[int], height: int, width: int) -> np.ndarray:
    img = np.full((height, width, 3), _BACKGROUND, dtype=np.uint8)
    _text(img, 'classes', (10, 24), 0.6)
    colors = class_colors()
    for i, label in enumerate(labels_present):
        y = 44 + 24 * i
        cv2.rectangle(img, (10, y), (30, y + 16), tuple(int(c) for c in colors[label]), -1)
        cv2.rectangle(img, (10, y), (30, y + 16), (200, 200, 200), 1)
        _text(img, f'{label} {CLASSES[label].name}', (38, y + 14), 0.5)
    y = 44 + 24 * len(labels_present) + 10
    cv2.rectangle(img, (10, y), (30, y + 16), _EMPTY_COLUMN, -1)
    _text(img, 'no occupied voxel', (38, y + 14), 0.5)
    return img


def _camera_block(images: np.ndarray, names: Sequence[str], width: int) -> np.ndarray:
    """Cameras in rig order (front-left, front, front-right, back-left, back, back-right) as 2 x 3 tiles."""
    n, h, w = images.shape[:3]
    tile_w = width // 3
    tile_h = round(h * tile_w / w)
    tiles = []
    for i in range(6):
        if i < n:
            tile = cv2.resize(images[i], (tile_w, tile_h), interpolation=cv2.INTER_AREA)
            _text(tile, names[i], (8, 22))
        else:
            tile = np.full((tile_h, tile_w, 3), _BACKGROUND, np.uint8)
        tiles.append(tile)
    block = np.concatenate([np.concatenate(tiles[:3], axis=1), np.concatenate(tiles[3:], axis=1)], axis=0)
    out = np.full((block.shape[0], width, 3), _BACKGROUND, np.uint8)
    out[:, : block.shape[1]] = block
    return out


def render_panel(
    images: np.ndarray | None,
    gt_labels: np.ndarray | None,
    pred_labels: np.ndarray,
    pred_flow: np.ndarray | None,
    grid: GridSpec,
    title: str,
    camera_names: Sequence[str] = FLASHOCC_CAMERA_ORDER,
    scale: int = 3,
    min_speed: float = 0.5,
) -> np.ndarray:
    """A picture of one frame: cameras on top, ground-truth and predicted top views below, legend.

    Args:
        images: (6, H, W, 3) uint8 RGB in rig order (front-left, front, front-right, back-left, back,
            back-right: drawn as two rows of three), or None.
        gt_labels: (X, Y, Z) uint8 ground truth, or None. pred_labels: (X, Y, Z) uint8.
        pred_flow: (X, Y, Z, 2) float [m/s] drawn as arrows (voxels of movable classes, every 4th column, speed above ``min_speed``,
            length = 1 s of motion) on the prediction, or None.
        grid: the voxel grid. title: text at the top. scale: pixels per voxel in the top views.

    Returns:
        (H, W, 3) uint8 RGB.

    Raises:
        OutputsError: an array does not fit the grid or the images are not (N <= 6, H, W, 3) uint8.
    """
    for name, arr in (('gt_labels', gt_labels), ('pred_labels', pred_labels)):
        if arr is not None and (tuple(arr.shape) != grid.shape or arr.dtype != np.uint8):
            raise OutputsError(f'render_panel {name}: expected {grid.shape} uint8, got {arr.shape} {arr.dtype}')
    if pred_flow is not None and tuple(pred_flow.shape) != grid.shape + (2,):
        raise OutputsError(f'render_panel pred_flow: expected {grid.shape + (2,)}, got {pred_flow.shape}')
    views = []
    present: set[int] = set()
    for name, labels in (('ground truth', gt_labels), ('prediction', pred_labels)):
        if labels is None:
            continue
        view = top_view(labels, scale)
        _draw_ego(view, grid, scale)
        if name == 'prediction' and pred_flow is not None:
            _draw_flow(view, labels, pred_flow.astype(np.float32, copy=False), grid, scale, min_speed, 4, 1.0)
        _text(view, name, (8, 22), 0.7)
        views.append(view)
        lab = labels[_occupied(labels)]
        present |= set(np.unique(lab).tolist())
    legend_w = 260
    bev = np.concatenate(views, axis=1)
    bev = np.concatenate([bev, _legend(sorted(present), bev.shape[0], legend_w)], axis=1)
    width = bev.shape[1]
    header = np.full((70, width, 3), _BACKGROUND, np.uint8)
    _text(header, title, (10, 28), 0.8)
    _text(
        header,
        'top views: front (+x) up, left (+y) left, ego at the white marker, '
        'highest occupied class per column; arrows: flow of movable classes over 1 s',
        (10, 56),
        0.5,
        (210, 210, 210),
    )
    parts = [header]
    if images is not None:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[0] > 6 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise OutputsError(
                f'render_panel images: expected (N <= 6, H, W, 3) uint8, got {images.shape} {images.dtype}'
            )
        parts.append(_camera_block(images, list(camera_names), width))
    parts.append(bev)
    return np.ascontiguousarray(np.concatenate(parts, axis=0))


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 RGB image as PNG; returns the path.

    Raises:
        OutputsError: the array is not an RGB image or the file cannot be written.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise OutputsError(f'save_png: expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode('.png', cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OutputsError(f'save_png: cannot encode the image for {path}')
    path.write_bytes(buf.tobytes())
    return path
