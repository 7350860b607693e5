"""The temporal BEV feature cache (DESIGN.md section 5).

The network outputs the current frame's BEV feature; this cache keeps those
features with their stamps and ego poses for ``history_span`` seconds. For
each new frame it picks, for every trained time offset (for example 0.5 s
and 1.0 s ago), the cached entry nearest to ``stamp - offset``, and returns
the inputs the temporal network needs: the features, the affine that warps
each into the current ego frame (:func:`geometry.bev_warp_affine`) and a
validity flag. Because entries are chosen by time, not by count, running at
12 Hz or 2 Hz feeds the network the same history.

The cache resets itself, and says why, on: a gap over ``max_gap``, time
going backwards (a bag loop), an ego jump over ``max_jump``, a change of
calibration, or an explicit request (the node's ``~/reset`` service).
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import numpy as np

from .geometry import Transform, bev_warp_affine
from .grid import GridSpec

__all__ = ['BevCache', 'CacheEntry', 'HistoryInputs', 'ResetReason', 'TemporalConfig', 'TemporalError', 'bev_grid_for']

NS = 1_000_000_000


class TemporalError(ValueError):
    """A feature or configuration does not fit the cache."""


class ResetReason(enum.Enum):
    """Why the history was dropped."""

    GAP = 'gap'  # no frame for longer than max_gap
    TIME_BACKWARDS = 'time_backwards'  # a stamp older than the newest entry (bag loop, clock jump)
    EGO_JUMP = 'ego_jump'  # the ego moved more than max_jump since the newest entry
    CALIBRATION = 'calibration'  # the rig changed
    REQUESTED = 'requested'  # reset() called, e.g. by the ~/reset service


@dataclass(frozen=True)
class TemporalConfig:
    """Cache policy.

    Attributes:
        offsets: trained time offsets of the history slots [s], one per slot (K = len).
        history_span: how long entries are kept [s]; at least the largest offset plus ``tolerance``.
        tolerance: largest distance [s] between an entry's stamp and a slot's target time
            for the entry to fill the slot; otherwise the slot is empty (valid = 0).
        max_gap: reset when the newest entry is older than this [s].
        max_jump: reset when the ego moved farther than this [m] since the newest entry.
    """

    offsets: tuple[float, ...] = (0.5, 1.0)
    history_span: float = 1.5
    tolerance: float = 0.25
    max_gap: float = 1.0
    max_jump: float = 10.0

    def __post_init__(self) -> None:
        if any(o <= 0 for o in self.offsets):
            raise TemporalError(f'TemporalConfig.offsets: expected positive seconds, got {self.offsets}')
        if self.offsets and self.history_span < max(self.offsets) + self.tolerance:
            raise TemporalError(
                f'TemporalConfig.history_span: {self.history_span} s cannot hold the offset {max(self.offsets)} s '
                f'plus the tolerance {self.tolerance} s'
            )
        if self.tolerance < 0 or self.max_gap <= 0 or self.max_jump <= 0:
            raise TemporalError('TemporalConfig: tolerance must be >= 0, max_gap and max_jump > 0')


@dataclass(frozen=True)
class CacheEntry:
    """One cached BEV feature.

    Attributes:
        stamp_ns: the frame's stamp [ns].
        pose: ``T_map_ego`` at that stamp.
        feature: (C, Y, X) float, numpy array or torch tensor (kept on its device).
    """

    stamp_ns: int
    pose: Transform
    feature: Any


@dataclass(frozen=True)
class HistoryInputs:
    """What the temporal network takes besides the images.

    Attributes:
        bev: (K, C, Y, X) float32, the chosen features (zeros in empty slots); numpy or torch like the cache.
        theta: (K, 2, 3) float32 numpy, affine_grid theta (align_corners=True) per slot; identity in empty slots.
        valid: (K,) float32 numpy, 1 where a slot holds a feature.
        stamps_ns: (K,) int64 numpy, the chosen entries' stamps (0 in empty slots).
        reset: why the history was dropped on this step, or None.
    """

    bev: Any
    theta: np.ndarray
    valid: np.ndarray
    stamps_ns: np.ndarray
    reset: ResetReason | None

    def feeds(self) -> dict[str, Any]:
        """The network's history inputs by name: ``history_bev``, ``history_theta``, ``history_valid``."""
        return {'history_bev': self.bev, 'history_theta': self.theta, 'history_valid': self.valid}


def bev_grid_for(grid: GridSpec, feature_shape: Sequence[int]) -> GridSpec:
    """The planar grid of a (C, Y, X) BEV feature covering ``grid``'s x-y extent.

    Raises:
        TemporalError: the feature's cells are not square over that extent.
    """
    _, ny, nx = (int(v) for v in feature_shape)
    cell_x = grid.shape[0] * grid.voxel_size / nx
    cell_y = grid.shape[1] * grid.voxel_size / ny
    if not np.isclose(cell_x, cell_y):
        raise TemporalError(f'BEV feature {tuple(feature_shape)}: cells are not square over the grid ({cell_x} x {cell_y} m)')
    return GridSpec(lower=grid.lower, size=(nx, ny, 1), voxel_size=cell_x)


class BevCache:
    """Ring buffer of BEV features with the selection and reset policy above.

    Use per frame: ``history = cache.prepare(stamp, pose, calibration)``, run
    the network with ``history.feeds()``, then ``cache.push(stamp, pose, bev_feature)``.

    Args:
        config: the policy.
        grid: the occupancy grid; the BEV feature covers its x-y extent.
        feature_shape: (C, Y, X) of the BEV feature.
    """

    def __init__(self, config: TemporalConfig, grid: GridSpec, feature_shape: Sequence[int]) -> None:
        self.config = config
        self.feature_shape = tuple(int(v) for v in feature_shape)
        if len(self.feature_shape) != 3:
            raise TemporalError(f'BevCache.feature_shape: expected (C, Y, X), got {feature_shape}')
        self.bev_grid = bev_grid_for(grid, self.feature_shape)
        self.entries: deque[CacheEntry] = deque()
        self.calibration: Hashable | None = None
        self.resets: Counter[ResetReason] = Counter()

    @property
    def size(self) -> int:
        return len(self.config.offsets)

    def reset(self, reason: ResetReason = ResetReason.REQUESTED) -> None:
        """Drop every entry and count the reason."""
        self.entries.clear()
        self.resets[reason] += 1

    def _check_reset(self, stamp_ns: int, pose: Transform, calibration: Hashable) -> ResetReason | None:
        if self.calibration is not None and calibration != self.calibration:
            return ResetReason.CALIBRATION
        if not self.entries:
            return None
        newest = self.entries[-1]
        if stamp_ns < newest.stamp_ns:
            return ResetReason.TIME_BACKWARDS
        if stamp_ns - newest.stamp_ns > self.config.max_gap * NS:
            return ResetReason.GAP
        if float(np.linalg.norm(pose.translation - newest.pose.translation)) > self.config.max_jump:
            return ResetReason.EGO_JUMP
        return None

    def prepare(self, stamp_ns: int, pose: Transform, calibration: Hashable = None) -> HistoryInputs:
        """Apply the reset rules for a new frame and pick its history.

        Args:
            stamp_ns: the new frame's stamp [ns].
            pose: ``T_map_ego`` at that stamp.
            calibration: any hashable identifying the rig (a change resets the cache).

        Returns:
            The history inputs; empty slots have valid = 0 and zero features.
        """
        reason = self._check_reset(int(stamp_ns), pose, calibration)
        if reason is not None:
            self.reset(reason)
        self.calibration = calibration
        self._prune(int(stamp_ns))

        k = self.size
        theta = np.tile(np.eye(3, dtype=np.float32)[:2], (k, 1, 1))
        valid = np.zeros(k, np.float32)
        stamps = np.zeros(k, np.int64)
        chosen: list[CacheEntry | None] = []
        entry_stamps = np.array([e.stamp_ns for e in self.entries], dtype=np.int64)
        for slot, offset in enumerate(self.config.offsets):
            if entry_stamps.size == 0:
                chosen.append(None)
                continue
            target = int(stamp_ns) - int(round(offset * NS))
            best = int(np.argmin(np.abs(entry_stamps - target)))
            if abs(int(entry_stamps[best]) - target) > self.config.tolerance * NS or entry_stamps[best] >= stamp_ns:
                chosen.append(None)
                continue
            entry = self.entries[best]
            chosen.append(entry)
            theta[slot] = bev_warp_affine(entry.pose, pose, self.bev_grid)[:2]
            valid[slot] = 1.0
            stamps[slot] = entry.stamp_ns
        return HistoryInputs(self._stack(chosen), theta, valid, stamps, reason)

    def push(self, stamp_ns: int, pose: Transform, feature: Any) -> None:
        """Cache the feature the network computed for the frame at ``stamp_ns``.

        Raises:
            TemporalError: the feature's shape is not the cache's (C, Y, X).
        """
        if tuple(feature.shape) != self.feature_shape:
            raise TemporalError(f'BevCache.push: expected a feature of shape {self.feature_shape}, got {tuple(feature.shape)}')
        if self.entries and int(stamp_ns) <= self.entries[-1].stamp_ns:
            # prepare() resets on time going backwards; a repeated stamp replaces the newest entry
            self.entries.pop()
        self.entries.append(CacheEntry(int(stamp_ns), pose, feature))
        self._prune(int(stamp_ns))

    def _prune(self, stamp_ns: int) -> None:
        oldest = stamp_ns - int(round(self.config.history_span * NS))
        while self.entries and self.entries[0].stamp_ns < oldest:
            self.entries.popleft()

    def _stack(self, chosen: list[CacheEntry | None]) -> Any:
        # numpy or torch like the cached features (numpy while the cache is empty)
        template = self.entries[-1].feature if self.entries else None
        if template is None or isinstance(template, np.ndarray):
            out = np.zeros((self.size,) + self.feature_shape, np.float32)
            for slot, entry in enumerate(chosen):
                if entry is not None:
                    out[slot] = np.asarray(entry.feature)
            return out
        import torch  # a torch feature: keep it on its device

        out_t = torch.zeros((self.size,) + self.feature_shape, dtype=torch.float32, device=template.device)
        for slot, entry in enumerate(chosen):
            if entry is not None:
                out_t[slot] = entry.feature
        return out_t
