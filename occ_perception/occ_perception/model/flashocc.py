"""Import of FlashOCC checkpoints (R50 M0/M1, Occ3D-nuScenes) into :class:`OccNet`.

FlashOCC saves ``{'state_dict': ...}`` (its EMA checkpoints: ``{'epoch', 'state_dict',
'updates'}``), sometimes with a DataParallel ``module.`` prefix. Our parameter names
for the FlashOCC parts equal FlashOCC's keys, so the mapping is the identity after
stripping the prefix. Documented additions, absent from FlashOCC checkpoints and
left at their initialisation:

- ``flow_head.*``: the flow head;
- with BEV history K > 0, ``img_bev_encoder_backbone.layers.0.0.conv1.weight`` and
  ``.downsample.weight`` take C_bev * (K + 1) input channels: the checkpoint's weights
  fill the current-frame slice ``[:, :C_bev]`` and the history slices start at zero,
  so the imported temporal network computes exactly what FlashOCC computes.

Keys FlashOCC carries that have no counterpart here (none for the R50 configs) are
reported as unexpected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .config import ModelConfig
from .network import OccNet

__all__ = [
    'ADDITION_PREFIXES',
    'CheckpointError',
    'ImportReport',
    'extract_state_dict',
    'flashocc_to_ours',
    'import_flashocc_state_dict',
    'load_flashocc_checkpoint',
]


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the config."""


ADDITION_PREFIXES: tuple[str, ...] = ('flow_head.', 'history_proj.')
"""Parameter prefixes of ours that FlashOCC checkpoints do not have."""

HISTORY_INPUT_KEYS: tuple[str, ...] = (
    'img_bev_encoder_backbone.layers.0.0.conv1.weight',
    'img_bev_encoder_backbone.layers.0.0.downsample.weight',
)


@dataclass
class ImportReport:
    """What an import did.

    Attributes:
        loaded: keys copied from the checkpoint.
        missing: our keys the checkpoint lacks that are not documented additions (should be empty).
        unexpected: checkpoint keys without a counterpart here (should be empty).
        additions: our keys left at initialisation because they are documented additions.
        widened: keys whose current-frame slice was filled (history > 0).
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    additions: list[str] = field(default_factory=list)
    widened: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def summary(self) -> str:
        return (
            f'loaded {len(self.loaded)} tensors, {len(self.additions)} documented additions left at init, '
            f'{len(self.widened)} widened for history, missing {self.missing}, unexpected {self.unexpected}'
        )


def extract_state_dict(checkpoint: object) -> dict[str, torch.Tensor]:
    """The FlashOCC state dict inside a loaded checkpoint, ``module.`` prefix stripped.

    Accepts ``{'state_dict': ...}`` (also EMA-style ``{'epoch', 'state_dict', 'updates'}``)
    or a bare state dict.

    Raises:
        CheckpointError: not a mapping of tensors.
    """
    if isinstance(checkpoint, Mapping) and 'state_dict' in checkpoint:
        checkpoint = checkpoint['state_dict']
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise CheckpointError(
            'FlashOCC checkpoint: expected {"state_dict": {name: tensor}} or a state dict, '
            f'got {type(checkpoint).__name__}'
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f'FlashOCC checkpoint: entry {key!r} is a {type(value).__name__}, expected a tensor')
        out[key[len('module.') :] if key.startswith('module.') else key] = value
    return out


def flashocc_to_ours(key: str) -> str:
    """Our parameter name for a FlashOCC key: the identity (names were chosen to match)."""
    return key


def copy_current_frame_channels(target: torch.Tensor, value: torch.Tensor, c_bev: int) -> bool:
    """Copy the current frame's input channels ``[:, :c_bev]`` of a BEV encoder first conv (``HISTORY_INPUT_KEYS``)
    from ``value`` into ``target`` and zero the rest of ``target`` (its history channels), in place.

    For a checkpoint of another history width (a single-frame one, or another K or ``history_channels``): the
    current frame's channels come first in both. Returns False (and leaves ``target`` alone) when the two
    differ in anything but the input channels or either has fewer than ``c_bev`` of them.
    """
    same_rest = target.shape[:1] + target.shape[2:] == value.shape[:1] + value.shape[2:]
    if target.dim() < 2 or not same_rest or min(target.shape[1], value.shape[1]) < c_bev:
        return False
    with torch.no_grad():
        target.zero_()
        target[:, :c_bev].copy_(value[:, :c_bev])
    return True


def import_flashocc_state_dict(net: OccNet, flashocc: Mapping[str, torch.Tensor]) -> ImportReport:
    """Copy FlashOCC tensors into ``net`` (in place) and report what matched.

    Raises:
        CheckpointError: a tensor's shape does not match ours (wrong config, e.g. M0 vs M1).
    """
    ours = net.state_dict()
    report = ImportReport()
    mapped = {flashocc_to_ours(k): v for k, v in flashocc.items()}
    c_bev = net.config.context_channels
    with torch.no_grad():
        for key, value in mapped.items():
            if key not in ours:
                report.unexpected.append(key)
                continue
            target = ours[key]
            if key in HISTORY_INPUT_KEYS and net.config.history and target.shape[1] != value.shape[1]:
                if value.shape[1] != c_bev or not copy_current_frame_channels(target, value, c_bev):
                    raise CheckpointError(
                        f'FlashOCC checkpoint: {key} has shape {list(value.shape)}, '
                        f'expected {[target.shape[0], c_bev, *target.shape[2:]]}'
                    )
                report.widened.append(key)
            elif target.shape != value.shape:
                raise CheckpointError(
                    f'FlashOCC checkpoint: {key} has shape {list(value.shape)}, ours is '
                    f'{list(target.shape)} (config {net.config.name})'
                )
            else:
                target.copy_(value)
            report.loaded.append(key)
    for key in ours:
        if key not in mapped:
            (report.additions if key.startswith(ADDITION_PREFIXES) else report.missing).append(key)
    return report


def load_flashocc_checkpoint(path: str | os.PathLike[str], config: ModelConfig) -> tuple[OccNet, ImportReport]:
    """Build an :class:`OccNet` for ``config`` and load a FlashOCC checkpoint into it.

    Loads with ``torch.load(weights_only=True)`` on the CPU.

    Raises:
        CheckpointError: unreadable file, not a state dict, or shapes that do not fit ``config``.
    """
    try:
        checkpoint = torch.load(os.fspath(path), map_location='cpu', weights_only=True)
    except (OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(f'FlashOCC checkpoint {os.fspath(path)!r}: cannot load: {err}') from err
    except Exception as err:  # pickle.UnpicklingError for non-weights content
        raise CheckpointError(f'FlashOCC checkpoint {os.fspath(path)!r}: not a weights-only checkpoint: {err}') from err
    net = OccNet(config)
    report = import_flashocc_state_dict(net, extract_state_dict(checkpoint))
    return net, report
