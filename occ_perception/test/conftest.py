"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
