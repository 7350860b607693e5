"""Planner-side look-ups in a SemanticOccupancy (and OccupancyFlow) message, without ROS.

Answers "what is at (x, y, z) in base_link, and how fast is it moving" and "is the column at
(x, y) blocked" from the node's two messages, read through their field names (rclpy or rosbags
classes)::

    grid = VoxelQuery.from_messages(semantics_msg, flow_msg)
    hit = grid.at(10.0, 0.0, 0.6)            # VoxelInfo: label, class name, occupied, speed ...
    col = grid.column(10.0, 0.0)             # ColumnInfo: blocked, highest obstacle, fastest voxel
    labels = grid.labels_at(points)          # vectorised, (N, 3) points -> (N,) labels

Coordinates are metres in the messages' frame (``base_link``: x forward, y left, z up); velocities
(vx, vy) are m/s over ground in the same axes (DESIGN.md section 3). A point outside the grid is
reported as not inside, label 255 (unobserved).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .grid import UNOBSERVED_LABEL
from .messages import FlowArrays, OccupancyArrays, read_occupancy_flow, read_semantic_occupancy
from .outputs import HEIGHT_BAND, OBSTACLE_LABELS

__all__ = ['ColumnInfo', 'QueryError', 'VoxelInfo', 'VoxelQuery']


class QueryError(ValueError):
    """The two messages do not belong together (stamp, frame or grid differ), or a query is malformed."""


@dataclass(frozen=True)
class VoxelInfo:
    """What occupies one voxel.

    Attributes:
        inside: the point lies in the grid (otherwise everything below says 'unobserved').
        index: (ix, iy, iz) voxel index, or None outside.
        label: class label (free_label for empty space, 255 outside or unobserved). name: its class name.
        occupied: neither free nor unobserved.
        confidence: 0..1 (round(255 * p) / 255), or None where the message carries none.
        velocity: (vx, vy) [m/s] in base_link axes; (0, 0) for free voxels and where no flow was given.
        speed: |velocity| [m/s].
    """

    inside: bool
    index: tuple[int, int, int] | None
    label: int
    name: str
    occupied: bool
    confidence: float | None
    velocity: tuple[float, float]
    speed: float


@dataclass(frozen=True)
class ColumnInfo:
    """One (x, y) column within a height band.

    Attributes:
        inside: (x, y) lies in the grid.
        blocked: an obstacle class occupies a voxel overlapping the band.
        observed: some voxel of the band is observed (not 255, and confidence > 0 where given).
        center: (x, y) [m] of the column's centre (the query point where outside).
        labels: the labels of the column's voxels in the band, bottom to top.
        top: height [m] of the top face of the highest blocking voxel, or None.
        top_label: that voxel's label, or None.
        max_speed: the fastest blocking voxel's speed [m/s] (0 where none moves or no flow was given).
        velocity: that voxel's (vx, vy) [m/s].
    """

    inside: bool
    blocked: bool
    observed: bool
    center: tuple[float, float]
    labels: tuple[int, ...]
    top: float | None
    top_label: int | None
    max_speed: float
    velocity: tuple[float, float]


class VoxelQuery:
    """Look-ups in one frame's semantic grid and flow.

    Args:
        occupancy: the arrays of a SemanticOccupancy (:func:`~occ_perception.messages.read_semantic_occupancy`).
        flow: the arrays of the OccupancyFlow of the same frame, or None.

    Raises:
        QueryError: the flow's stamp, frame or grid differ from the occupancy's.
    """

    def __init__(self, occupancy: OccupancyArrays, flow: FlowArrays | None = None) -> None:
        if flow is not None:
            if flow.stamp_ns != occupancy.stamp_ns:
                raise QueryError(
                    f'OccupancyFlow stamp {flow.stamp_ns} ns differs from SemanticOccupancy stamp '
                    f'{occupancy.stamp_ns} ns: pair messages of the same frame'
                )
            if flow.frame_id != occupancy.frame_id or flow.grid != occupancy.grid:
                raise QueryError(
                    f'OccupancyFlow grid {flow.grid} in {flow.frame_id!r} differs from SemanticOccupancy '
                    f'grid {occupancy.grid} in {occupancy.frame_id!r}'
                )
        self.occupancy = occupancy
        self.grid = occupancy.grid
        self.labels = occupancy.labels
        self.velocity = flow.dense() if flow is not None else None  # (X, Y, Z, 2) [m/s]

    @classmethod
    def from_messages(cls, semantics: Any, flow: Any | None = None) -> VoxelQuery:
        """From a SemanticOccupancy message and optionally the OccupancyFlow message of the same frame.

        Raises:
            QueryError: the messages do not belong together.
            occ_perception.messages.MessagesError: a message's arrays do not fit its grid.
        """
        return cls(read_semantic_occupancy(semantics), None if flow is None else read_occupancy_flow(flow))

    @property
    def stamp_ns(self) -> int:
        return self.occupancy.stamp_ns

    @property
    def frame_id(self) -> str:
        return self.occupancy.frame_id

    def class_name(self, label: int) -> str:
        """The message's class name of ``label`` ('unobserved' for 255)."""
        names = self.occupancy.class_names
        if label == UNOBSERVED_LABEL:
            return 'unobserved'
        return names[label] if 0 <= label < len(names) else f'label {label}'

    def labels_at(self, points: np.ndarray) -> np.ndarray:
        """Labels at (N, 3) points [m]; 255 outside the grid or for non-finite points. Returns (N,) uint8."""
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise QueryError(f'labels_at: expected (N, 3) points, got shape {pts.shape}')
        index, inside = self.grid.point_to_index(pts)
        out = np.full(pts.shape[0], UNOBSERVED_LABEL, dtype=np.uint8)
        ix, iy, iz = index[inside].T
        out[inside] = self.labels[ix, iy, iz]
        return out

    def at(self, x: float, y: float, z: float) -> VoxelInfo:
        """What is at (x, y, z) [m] and how fast it moves."""
        index, inside = self.grid.point_to_index(np.array([x, y, z], dtype=np.float64))
        if not bool(inside):
            return VoxelInfo(False, None, UNOBSERVED_LABEL, 'outside the grid', False, None, (0.0, 0.0), 0.0)
        ix, iy, iz = (int(v) for v in index)
        label = int(self.labels[ix, iy, iz])
        occupied = label not in (self.occupancy.free_label, UNOBSERVED_LABEL)
        conf = self.occupancy.confidence
        confidence = None if conf is None else float(conf[ix, iy, iz]) / 255.0
        vx, vy = (0.0, 0.0)
        if self.velocity is not None and occupied:
            vx, vy = (float(v) for v in self.velocity[ix, iy, iz])
        return VoxelInfo(
            True, (ix, iy, iz), label, self.class_name(label), occupied, confidence, (vx, vy), float(np.hypot(vx, vy))
        )

    def column(
        self,
        x: float,
        y: float,
        band: tuple[float, float] = HEIGHT_BAND,
        obstacle_labels: Sequence[int] = OBSTACLE_LABELS,
    ) -> ColumnInfo:
        """Is the (x, y) column blocked within ``band`` ([z_min, z_max) [m] in base_link), and how fast does the
        fastest blocking voxel move.

        Uses the rule of the node's costmap (:func:`~occ_perception.outputs.costmap_values`): a voxel counts when
        it overlaps the band; voxels with confidence 0 count as unobserved.

        Raises:
            QueryError: an empty or inverted band.
        """
        layers = self._band_layers(band)
        index, inside = self.grid.point_to_index(np.array([x, y, self.grid.lower[2]], dtype=np.float64))
        if not bool(inside):
            return ColumnInfo(False, False, False, (float(x), float(y)), (), None, None, 0.0, (0.0, 0.0))
        ix, iy = int(index[0]), int(index[1])
        v = self.grid.voxel_size
        z_lo = self.grid.lower[2] + np.arange(self.grid.shape[2]) * v
        labels = self.labels[ix, iy, layers]
        observed = labels != UNOBSERVED_LABEL
        if self.occupancy.confidence is not None:
            observed &= self.occupancy.confidence[ix, iy, layers] > 0
        blocking = observed & np.isin(labels, np.asarray(list(obstacle_labels), dtype=np.uint8))
        top = float(z_lo[layers[blocking][-1]] + v) if blocking.any() else None
        top_label = int(labels[blocking][-1]) if blocking.any() else None
        center = (float(self.grid.axis_centers(0)[ix]), float(self.grid.axis_centers(1)[iy]))
        velocity, speed = (0.0, 0.0), 0.0
        if self.velocity is not None and blocking.any():
            vel = self.velocity[ix, iy, layers[blocking]]
            k = int(np.argmax(np.hypot(vel[:, 0], vel[:, 1])))
            velocity = (float(vel[k, 0]), float(vel[k, 1]))
            speed = float(np.hypot(*velocity))
        return ColumnInfo(
            True,
            bool(blocking.any()),
            bool(observed.any()),
            center,
            tuple(int(v) for v in labels),
            top,
            top_label,
            speed,
            velocity,
        )

    def _band_layers(self, band: tuple[float, float]) -> np.ndarray:
        z_min, z_max = band
        if not z_max > z_min:
            raise QueryError(f'column band: expected (z_min, z_max) with z_max > z_min, got {band}')
        v = self.grid.voxel_size
        z_lo = self.grid.lower[2] + np.arange(self.grid.shape[2]) * v
        eps = 1e-6 * v  # a voxel that only touches the band's edge is outside it
        return np.flatnonzero((z_lo < z_max - eps) & (z_lo + v > z_min + eps))

    def blocked_map(
        self, band: tuple[float, float] = HEIGHT_BAND, obstacle_labels: Sequence[int] = OBSTACLE_LABELS
    ) -> np.ndarray:
        """(X, Y) bool: columns where an observed obstacle voxel overlaps ``band`` [m] (the costmap's 100 cells)."""
        layers = self._band_layers(band)
        labels = self.labels[:, :, layers]
        blocking = np.isin(labels, np.asarray(list(obstacle_labels), dtype=np.uint8))
        if self.occupancy.confidence is not None:
            blocking &= self.occupancy.confidence[:, :, layers] > 0
        return np.asarray(blocking.any(axis=2))

    def first_blocked_ahead(
        self,
        max_distance: float = 40.0,
        y: float = 0.0,
        half_width: float = 1.0,
        band: tuple[float, float] = HEIGHT_BAND,
    ) -> tuple[float, ColumnInfo] | None:
        """The nearest blocked column straight ahead (+x) whose centre lies within ``half_width`` [m] of the line
        y = ``y`` (at least the column under the line).

        Returns:
            ``(x [m] of the column centre, its ColumnInfo)``, or None when nothing blocks up to ``max_distance``
            [m] or the grid's end.
        """
        xs, ys = self.grid.axis_centers(0), self.grid.axis_centers(1)
        cols = np.flatnonzero((xs > 0) & (xs <= max_distance))
        near = np.abs(ys - y) <= max(half_width, 0.5 * self.grid.voxel_size)
        if not cols.size or not near.any():
            return None
        blocked = self.blocked_map(band)
        hits = blocked[cols][:, near].any(axis=1)
        if not hits.any():
            return None
        ix = int(cols[int(np.argmax(hits))])
        iy_all = np.flatnonzero(near)
        blocked_here = blocked[ix, iy_all]
        iy = int(iy_all[np.argmin(np.where(blocked_here, np.abs(ys[iy_all] - y), np.inf))])
        return float(xs[ix]), self.column(float(xs[ix]), float(ys[iy]), band)
