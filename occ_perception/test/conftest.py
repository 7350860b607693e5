"""Shared test fixtures."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from occ_perception.runtime.base import Backend

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # occ_perception/ (the ament_python package)
REPO_ROOT = PACKAGE_DIR.parent


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope='session')
def package_dir() -> Path:
    return PACKAGE_DIR


def require_devkit() -> None:
    """Skip the calling test or fixture where nuscenes-devkit is missing; under CI (make test installs it) fail."""
    try:
        import nuscenes.nuscenes  # noqa: F401
    except ImportError:
        if os.environ.get('CI'):
            raise
        pytest.skip('nuscenes-devkit is not installed (make test installs it)')


def biased_net(cfg):  # torch is imported inside: the Python 3.10 run has none
    """A random-weight OccNet (seed 4, eval mode) whose semantic head is biased to a road plane (z 0-2),
    a car layer (z 3) and free space above, so that metrics on its output are non-zero."""
    import torch
    from occ_perception.model.network import OccNet

    road, car, free = 11, 4, 17
    torch.manual_seed(4)
    net = OccNet(cfg).eval()
    with torch.no_grad():
        last = net.occ_head.predicter[2]
        last.weight.mul_(0.01)
        bias = torch.zeros(cfg.z_size, cfg.num_classes)
        bias[:3, road] = 8.0
        bias[3, car] = 8.0
        bias[4:, free] = 8.0
        last.bias.copy_(bias.reshape(-1))
    return net


class Recording(Backend):
    """Forwards to a real backend and keeps copies of every feed dict and output dict (``feeds``, ``results``)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = f'recording {inner.name}'
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.feeds: list[dict[str, np.ndarray]] = []
        self.results: list[dict[str, np.ndarray]] = []

    def _run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        self.feeds.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        out = self.inner.run(feeds)
        self.results.append({k: np.array(v, copy=True) for k, v in out.items()})
        return out


def recording_torch(net: Any) -> Recording:
    """:class:`Recording` around the torch backend of ``net``."""
    from occ_perception.runtime.torch_backend import TorchBackend

    return Recording(TorchBackend(net, net.input_specs(), net.output_names()))
