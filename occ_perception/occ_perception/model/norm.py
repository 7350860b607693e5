"""The normalisation layer of the convolutional parts: BatchNorm (FlashOCC) or GroupNorm (per sample).

``'batch'`` is ``nn.BatchNorm2d``, as in FlashOCC, so FlashOCC checkpoints import by key.
``'group'`` is ``nn.GroupNorm``: it normalises each sample by its own statistics in training and at
run time alike, so the exported (eval-mode) graph computes what training computed; it suits one frame
per forward and a sparse splatted BEV, where BatchNorm's running averages fit no single frame.
Both hold ``weight`` and ``bias`` under the same names; GroupNorm has no running statistics.
"""

from __future__ import annotations

from torch import nn

from .config import NORMS

__all__ = ['NormError', 'group_count', 'norm2d']


class NormError(ValueError):
    """An unknown normalisation kind."""


MIN_GROUP_CHANNELS = 4
"""GroupNorm: at least this many channels per group."""
MAX_GROUPS = 32
"""GroupNorm: at most this many groups (the GroupNorm paper's default count)."""


def group_count(channels: int) -> int:
    """GroupNorm groups for ``channels``: the largest divisor of ``channels`` not above
    ``min(MAX_GROUPS, channels // MIN_GROUP_CHANNELS)`` (at least 1); 16 -> 4, 32 -> 8, 64 -> 16, 128+ -> 32."""
    upper = max(1, min(MAX_GROUPS, channels // MIN_GROUP_CHANNELS))
    return next(g for g in range(upper, 0, -1) if channels % g == 0)


def norm2d(kind: str, channels: int) -> nn.Module:
    """A normalisation layer over (B, channels, H, W): ``nn.BatchNorm2d`` for ``'batch'``,
    ``nn.GroupNorm(group_count(channels), channels)`` for ``'group'``.

    Raises:
        NormError: ``kind`` is not one of :data:`NORMS`.
    """
    if kind == 'batch':
        return nn.BatchNorm2d(channels)
    if kind == 'group':
        return nn.GroupNorm(group_count(channels), channels)
    raise NormError(f'norm must be one of {NORMS}, got {kind!r}')
