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
going backwards (a bag loop), an ego jump, a pose that is not finite, a change
of calibration, or an explicit request (the node's ``~/reset`` service). The
ego jump test is relative to the time since the newest entry: the ego may
move at most ``max_speed * dt + jump_margin`` metres, so a car at highway
speed keeps its history at 2 Hz as at 12 Hz while a relocalisation jump
(a teleport) still resets. Calibration is compared by digest
(:meth:`rig.Rig.digest`).

:func:`select_slots` is the slot rule on its own (a pure function of stamps),
shared with the training code so that training and inference pick the same
history.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .geometry import Transform, bev_warp_affine
from .grid import GridSpec

__all__ = [
    'BevCache',
    'CacheEntry',
    'HistoryInputs',
    'ResetReason',
    'TemporalConfig',
    'TemporalError',
    'bev_grid_for',
    'calibration_digest',
    'select_slots',
]

NS = 1_000_000_000


class TemporalError(ValueError):
    """A feature or configuration does not fit the cache."""


class ResetReason(enum.Enum):
    """Why the history was dropped."""

    GAP = 'gap'  # no frame for longer than max_gap
    TIME_BACKWARDS = 'time_backwards'  # a stamp older than the newest entry (bag loop, clock jump)
    EGO_JUMP = 'ego_jump'  # the ego moved more than max_speed * dt + jump_margin since the newest entry
    BAD_POSE = 'bad_pose'  # the pose (or the distance to the newest entry's) is not finite
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
        max_speed: fastest plausible ego speed [m/s] (default 60 m/s, about 216 km/h).
        jump_margin: slack [m] for pose noise. With ``dt`` [s] the time since the newest
            entry, the cache resets (EGO_JUMP) when the ego moved farther than
            ``max_speed * dt + jump_margin`` in x, y, z; the same at any frame rate.
    """

    offsets: tuple[float, ...] = (0.5, 1.0)
    history_span: float = 1.5
    tolerance: float = 0.25
    max_gap: float = 1.0
    max_speed: float = 60.0
    jump_margin: float = 2.0

    def __post_init__(self) -> None:
        if any(o <= 0 for o in self.offsets):
            raise TemporalError(f'TemporalConfig.offsets: expected positive seconds, got {self.offsets}')
        if self.offsets and self.history_span < max(self.offsets) + self.tolerance:
            raise TemporalError(
                f'TemporalConfig.history_span: {self.history_span} s cannot hold the offset {max(self.offsets)} s '
                f'plus the tolerance {self.tolerance} s'
            )
        if not (self.tolerance >= 0 and self.max_gap > 0 and self.max_speed > 0 and self.jump_margin >= 0):
            raise TemporalError(
                f'TemporalConfig: expected tolerance >= 0, max_gap > 0, max_speed > 0 and jump_margin >= 0, got '
                f'tolerance={self.tolerance}, max_gap={self.max_gap}, max_speed={self.max_speed}, '
                f'jump_margin={self.jump_margin}'
            )


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


def select_slots(entry_stamps_ns: np.ndarray, stamp_ns: int, config: TemporalConfig) -> np.ndarray:
    """For each history slot, the cached entry that fills it.

    Slot ``k`` targets ``stamp_ns - offsets[k]``. It takes the entry nearest to
    that target (the first such entry on a tie) if it is within ``tolerance``
    of the target and strictly older than ``stamp_ns``; otherwise it stays empty.

    Args:
        entry_stamps_ns: (N,) int64 stamps [ns] of the cached entries (oldest first).
        stamp_ns: the current frame's stamp [ns].
        config: offsets and tolerance.

    Returns:
        (K,) int64: per slot, the index into ``entry_stamps_ns`` of the chosen entry, or -1 for an empty slot.
    """
    stamps = np.asarray(entry_stamps_ns, dtype=np.int64).reshape(-1)
    k = len(config.offsets)
    if stamps.size == 0 or k == 0:
        return np.full(k, -1, dtype=np.int64)
    targets = int(stamp_ns) - np.array([round(o * NS) for o in config.offsets], dtype=np.int64)
    distance = np.abs(stamps[None, :] - targets[:, None])  # (K, N) [ns]
    best = np.argmin(distance, axis=1)
    ok = (distance[np.arange(k), best] <= config.tolerance * NS) & (stamps[best] < int(stamp_ns))
    return np.where(ok, best, -1).astype(np.int64)


def calibration_digest(calibration: Any) -> str | None:
    """The digest a cache compares: ``calibration.digest()`` (a :class:`rig.Rig`), a str as is, or None.

    Raises:
        TemporalError: anything else.
    """
    if calibration is None or isinstance(calibration, str):
        return calibration
    digest = getattr(calibration, 'digest', None)
    if callable(digest):
        return str(digest())
    raise TemporalError(
        f'calibration: expected a Rig (or anything with .digest()), a digest string or None, got {type(calibration).__name__}'
    )


def _finite_pose(pose: Transform) -> bool:
    return bool(np.all(np.isfinite(pose.translation)) and np.all(np.isfinite(pose.rotation.elements)))


def bev_grid_for(grid: GridSpec, feature_shape: Sequence[int]) -> GridSpec:
    """The planar grid of a (C, Y, X) BEV feature covering ``grid``'s x-y extent.

    Raises:
        TemporalError: the feature's cells are not square over that extent.
    """
    _, ny, nx = (int(v) for v in feature_shape)
    cell_x = grid.shape[0] * grid.voxel_size / nx
    cell_y = grid.shape[1] * grid.voxel_size / ny
    if not np.isclose(cell_x, cell_y):
        raise TemporalError(
            f'BEV feature {tuple(feature_shape)}: cells are not square over the grid ({cell_x} x {cell_y} m)'
        )
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
        self.calibration: str | None = None  # digest of the rig of the newest prepare()
        self.resets: Counter[ResetReason] = Counter()

    @property
    def size(self) -> int:
        return len(self.config.offsets)

    def reset(self, reason: ResetReason = ResetReason.REQUESTED) -> None:
        """Drop every entry and count the reason."""
        self.entries.clear()
        self.resets[reason] += 1

    def _check_reset(self, stamp_ns: int, pose: Transform, digest: str | None) -> ResetReason | None:
        if not _finite_pose(pose):
            return ResetReason.BAD_POSE
        if self.calibration is not None and digest != self.calibration:
            return ResetReason.CALIBRATION
        if not self.entries:
            return None
        newest = self.entries[-1]
        if stamp_ns < newest.stamp_ns:
            return ResetReason.TIME_BACKWARDS
        if stamp_ns - newest.stamp_ns > self.config.max_gap * NS:
            return ResetReason.GAP
        with np.errstate(over='ignore', invalid='ignore'):
            moved = float(np.linalg.norm(pose.translation - newest.pose.translation))
        if not np.isfinite(moved) or not _finite_pose(newest.pose):
            return ResetReason.BAD_POSE
        dt = (stamp_ns - newest.stamp_ns) / NS
        if moved > self.config.max_speed * dt + self.config.jump_margin:
            return ResetReason.EGO_JUMP
        return None

    def prepare(self, stamp_ns: int, pose: Transform, calibration: Any = None) -> HistoryInputs:
        """Apply the reset rules for a new frame and pick its history (:func:`select_slots`).

        Args:
            stamp_ns: the new frame's stamp [ns].
            pose: ``T_map_ego`` at that stamp.
            calibration: the rig (a :class:`rig.Rig` or anything with ``.digest()``), its digest string,
                or None; a different digest than the previous frame's resets the cache (CALIBRATION).

        Returns:
            The history inputs; empty slots have valid = 0 and zero features.

        Raises:
            TemporalError: ``calibration`` is of another type.
        """
        digest = calibration_digest(calibration)
        reason = self._check_reset(int(stamp_ns), pose, digest)
        if reason is not None:
            self.reset(reason)
        self.calibration = digest
        self._prune(int(stamp_ns))

        k = self.size
        theta = np.tile(np.eye(3, dtype=np.float32)[:2], (k, 1, 1))
        valid = np.zeros(k, np.float32)
        stamps = np.zeros(k, np.int64)
        chosen: list[CacheEntry | None] = []
        if reason is ResetReason.BAD_POSE:  # no warp can be computed from this pose
            return HistoryInputs(self._stack([None] * k), theta, valid, stamps, reason)
        picks = select_slots(np.array([e.stamp_ns for e in self.entries], dtype=np.int64), int(stamp_ns), self.config)
        for slot, index in enumerate(picks.tolist()):
            if index < 0:
                chosen.append(None)
                continue
            entry = self.entries[index]
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
            raise TemporalError(
                f'BevCache.push: expected a feature of shape {self.feature_shape}, got {tuple(feature.shape)}'
            )
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
