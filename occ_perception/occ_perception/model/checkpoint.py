"""Our own checkpoint format: ``{'format', 'config', 'history', 'history_offsets', 'flow_head', 'norm', 'state_dict'}``.

``norm`` (the config's normalisation, ``'batch'`` or ``'group'``) was added later; a checkpoint without it
holds BatchNorm layers if its state dict has ``running_mean`` entries.

Only plain types and tensors, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os

import torch

from .config import ModelConfig, get_config
from .network import OccNet

__all__ = ['FORMAT', 'ModelCheckpointError', 'load_checkpoint', 'save_checkpoint']

FORMAT = 'occ_perception.model/1'


class ModelCheckpointError(ValueError):
    """A checkpoint file is unreadable, of another format, or does not fit the requested config."""


def save_checkpoint(net: OccNet, path: str | os.PathLike[str]) -> None:
    """Write ``net``'s config name, history settings, normalisation and state dict to ``path``."""
    cfg = net.config
    torch.save(
        {
            'format': FORMAT,
            'config': cfg.name,
            'history': cfg.history,
            'history_offsets': list(cfg.history_offsets),
            'flow_head': cfg.flow_head,
            'norm': cfg.norm,
            'state_dict': net.state_dict(),
        },
        os.fspath(path),
    )


def load_checkpoint(path: str | os.PathLike[str], config: ModelConfig | None = None) -> OccNet:
    """Build the network a checkpoint describes and load its weights (``weights_only=True``).

    Args:
        path: a file written by :func:`save_checkpoint`.
        config: if given, the checkpoint must match its name, history and flow head.

    Raises:
        ModelCheckpointError: unreadable, another format, a config mismatch, or weights of another
            normalisation than the config's (e.g. a ``tiny`` trained before it used GroupNorm).
    """
    try:
        data = torch.load(os.fspath(path), map_location='cpu', weights_only=True)
    except Exception as err:  # OSError, pickle errors, RuntimeError from torch
        raise ModelCheckpointError(f'checkpoint {os.fspath(path)!r}: cannot load: {err}') from err
    if not isinstance(data, dict) or data.get('format') != FORMAT:
        raise ModelCheckpointError(
            f'checkpoint {os.fspath(path)!r}: not an {FORMAT} checkpoint '
            '(a FlashOCC checkpoint? convert it with occ-perception import-flashocc)'
        )
    stored = get_config(
        str(data['config']),
        history=int(data['history']),
        history_offsets=tuple(data['history_offsets']),
        flow_head=bool(data['flow_head']),
    )
    if config is not None and (config.name, config.history, config.flow_head) != (
        stored.name,
        stored.history,
        stored.flow_head,
    ):
        raise ModelCheckpointError(
            f'checkpoint {os.fspath(path)!r}: holds {stored.name} history={stored.history} flow_head={stored.flow_head}, '
            f'requested {config.name} history={config.history} flow_head={config.flow_head}'
        )
    state = data['state_dict']
    norm = data.get('norm') or ('batch' if any(k.endswith('.running_mean') for k in state) else 'group')
    wanted = (config or stored).norm
    if norm != wanted:
        raise ModelCheckpointError(
            f'checkpoint {os.fspath(path)!r}: holds {norm!r} normalisation layers, config {stored.name} uses '
            f'{wanted!r} (weights trained with another normalisation: retrain or fine-tune with --init)'
        )
    net = OccNet(config or stored)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelCheckpointError(f'checkpoint {os.fspath(path)!r}: state dict does not fit: {err}') from err
    return net
