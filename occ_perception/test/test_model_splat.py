"""The table splat against a direct index_add over all frustum points.

Needs torch; the table tests that do not are in test_splat_tables.py.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip('torch')  # absent in the Python 3.10 compatibility run

from occ_perception.model.config import get_config
from occ_perception.model.splat import Splat
from occ_perception.model.splat_reference import splat_reference
from occ_perception.model.splat_tables import (
    build_splat_tables,
    check_splat_tables,
    frustum_cells,
    frustum_points,
    mask_cameras,
    splat_table_names,
)
from occ_perception.rig import Rig
from test_splat_tables import sparse_rigs, wide_config


def random_inputs(cfg, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w, h = cfg.feature_size
    depth = (3.0 * torch.randn(n, cfg.num_depth_bins, h, w, generator=gen)).softmax(1)
    feat = torch.randn(n, cfg.context_channels, h, w, generator=gen)
    return depth, feat


def table_splat(cfg, tables: dict[str, np.ndarray], depth: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
    return Splat(cfg.bev_size)(depth, feat, *(torch.from_numpy(tables[k]) for k in splat_table_names()))


def assert_matches_reference(cfg, rig: Rig, seed: int = 1) -> torch.Tensor:
    matrices = rig.matrices(*cfg.image_size)
    tables = build_splat_tables(cfg, matrices)
    check_splat_tables(tables, cfg, len(rig))
    cells = frustum_cells(cfg, matrices)
    depth, feat = random_inputs(cfg, len(rig), seed)
    out = table_splat(cfg, tables, depth, feat)
    ref = splat_reference(depth.double(), feat.double(), cells, cfg.bev_size)
    x_size, y_size = cfg.bev_size
    assert out.shape == ref.shape == (cfg.context_channels, y_size, x_size)
    err = (out.double() - ref).abs().max().item()
    assert err < 1e-5, err
    assert int((ref.abs().sum(0) > 0).sum()) == np.unique(cells[cells >= 0]).size  # not a trivially zero map
    return ref


@pytest.mark.parametrize('name', ['flashocc-m0', 'flashocc-m1', 'tiny'])
def test_table_splat_equals_index_add(name: str) -> None:
    cfg = get_config(name)
    matrices = Rig.nuscenes().matrices(*cfg.image_size)
    tables = build_splat_tables(cfg, matrices)
    cells = frustum_cells(cfg, matrices)
    kept = int((cells >= 0).sum())
    if name == 'flashocc-m1':
        assert 250_000 < kept < 350_000  # REFERENCE: about 300 k points in about 22 k cells
        assert 18_000 < np.unique(cells[cells >= 0]).size < 26_000
    assert tables['splat_reduce_2'].shape[0] > 1  # the full rig uses every level
    ref = assert_matches_reference(cfg, Rig.nuscenes())
    assert ref.abs().max() > 0.5


@pytest.mark.parametrize('case', sorted(sparse_rigs()))
def test_table_splat_on_sparse_rigs(case: str) -> None:
    """One camera, a small or far grid: levels that no cell needs are padding rows, and the sum is still exact."""
    cfg, rig = sparse_rigs()[case]
    assert_matches_reference(cfg, rig, seed=2)


def test_table_splat_on_non_square_grid() -> None:
    assert_matches_reference(wide_config(), Rig.nuscenes(), seed=3)


def test_masked_camera_equals_zeroed_depth() -> None:
    cfg = get_config('tiny')
    matrices = Rig.nuscenes().matrices(*cfg.image_size)
    tables = build_splat_tables(cfg, matrices)
    cells = frustum_cells(cfg, matrices)
    depth, feat = random_inputs(cfg, 6, seed=4)
    active = [True, True, False, True, True, True]
    masked = mask_cameras(tables, cfg, 6, active)
    assert {k: v.shape for k, v in masked.items()} == {k: v.shape for k, v in tables.items()}
    zeroed = depth.double().clone()
    zeroed[2] = 0.0
    ref = splat_reference(zeroed, feat.double(), cells, cfg.bev_size)
    out = table_splat(cfg, masked, depth, feat)
    assert (out.double() - ref).abs().max().item() < 1e-5
    # the camera did contribute before
    full = table_splat(cfg, tables, depth, feat)
    assert (full.double() - ref).abs().max().item() > 0.1
    # every camera off: a zero map, same graph shapes
    none = table_splat(cfg, mask_cameras(tables, cfg, 6, [False] * 6), depth, feat)
    assert none.abs().max().item() == 0.0


def test_one_point_lands_in_its_cell_on_non_square_grid() -> None:
    """A single frustum point with depth 1 fills exactly the (ix, iy) cell computed here from its ego position."""
    cfg = wide_config()
    x_size, y_size = cfg.bev_size
    lower_x, lower_y, _ = cfg.grid.lower
    rig = Rig.nuscenes()
    matrices = rig.matrices(*cfg.image_size)
    tables = build_splat_tables(cfg, matrices)
    points = frustum_points(cfg, matrices)
    w, h = cfg.feature_size
    for cam, d, v, u in ((1, 9, 5, 3), (4, 4, 6, 15), (2, 12, 5, 1)):  # front, back, front-right
        x, y, _ = points[cam, d, v, u]
        ix, iy = int(np.floor((x - lower_x) / 0.4)), int(np.floor((y - lower_y) / 0.4))
        assert 0 <= ix < x_size and 0 <= iy < y_size and ix != iy
        depth = torch.zeros(6, cfg.num_depth_bins, h, w)
        depth[cam, d, v, u] = 1.0
        feat = torch.zeros(6, cfg.context_channels, h, w)
        feat[cam, :, v, u] = torch.arange(1.0, cfg.context_channels + 1.0)
        out = table_splat(cfg, tables, depth, feat)  # (C, Y, X)
        hit = torch.nonzero(out.abs().sum(0)).tolist()
        assert hit == [[iy, ix]], (cam, x, y, hit)
        torch.testing.assert_close(out[:, iy, ix], feat[cam, :, v, u])
