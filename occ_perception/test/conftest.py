"""Shared test fixtures."""

from __future__ import annotations

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
