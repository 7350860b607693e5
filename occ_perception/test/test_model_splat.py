"""The table splat against a direct index_add over all frustum points."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip('torch')  # absent in the Python 3.10 compatibility run

from occ_perception.geometry import Transform
from occ_perception.model.config import get_config
from occ_perception.model.splat import (
    Splat,
    SplatError,
    bev_cells,
    build_splat_tables,
    check_splat_tables,
    frustum_cells,
    frustum_points,
    splat_reference,
    splat_table_names,
)
from occ_perception.rig import Camera, Rig


def random_inputs(cfg, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w, h = cfg.feature_size
    depth = (3.0 * torch.randn(n, cfg.num_depth_bins, h, w, generator=gen)).softmax(1)
    feat = torch.randn(n, cfg.context_channels, h, w, generator=gen)
    return depth, feat


@pytest.mark.parametrize('name', ['flashocc-m0', 'flashocc-m1', 'tiny'])
def test_table_splat_equals_index_add(name: str) -> None:
    cfg = get_config(name)
    matrices = Rig.nuscenes().matrices(*cfg.image_size)
    tables = build_splat_tables(cfg, matrices)
    assert list(tables) == list(splat_table_names())
    check_splat_tables(tables, cfg, 6)
    cells = frustum_cells(cfg, matrices)
    kept = int((cells >= 0).sum())
    # every kept point appears exactly once in the level-0 table
    real = tables['splat_depth_index'][tables['splat_depth_index'] < cells.size]
    assert real.size == kept and np.unique(real).size == kept
    if name == 'flashocc-m1':
        assert 250_000 < kept < 350_000  # REFERENCE: about 300 k points in about 22 k cells
        assert 18_000 < np.unique(cells[cells >= 0]).size < 26_000
    depth, feat = random_inputs(cfg, 6, seed=1)
    out = Splat(cfg.bev_size)(depth, feat, *(torch.from_numpy(tables[k]) for k in splat_table_names()))
    ref = splat_reference(depth.double(), feat.double(), cells, cfg.bev_size)
    assert out.shape == (cfg.context_channels, 200, 200)
    err = (out.double() - ref).abs().max().item()
    assert err < 1e-5, err
    assert ref.abs().max() > 0.5  # not a trivially zero map
    assert int((ref.abs().sum(0) > 0).sum()) == np.unique(cells[cells >= 0]).size


def test_frustum_geometry_projects_back() -> None:
    """A frustum point projects back to its network pixel through the rig."""
    cfg = get_config('flashocc-m0')
    rig = Rig.nuscenes()
    pts = frustum_points(cfg, rig.matrices(*cfg.image_size))
    assert pts.shape == (6, 44, 16, 44, 3)
    cam = rig.cameras[1]  # cam_front
    transform = rig.image_transforms(*cfg.image_size)[1]
    uv, depth = cam.project(pts[1, 9, 5, 7])
    np.testing.assert_allclose(transform.apply(uv), [7 * 703 / 43, 5 * 255 / 15], atol=1e-6)
    assert depth == pytest.approx(10.0)


def test_binning_truncates_toward_zero_like_flashocc() -> None:
    cfg = get_config('tiny')
    pts = np.array([[-40.2, 0.0, 0.0], [-40.5, 0.0, 0.0], [39.99, 39.99, 5.3], [40.0, 0.0, 0.0], [0.0, 0.0, -1.5],
                    [0.0, 0.0, 5.4], [np.nan, 0.0, 0.0]])
    cells = bev_cells(cfg, pts)
    assert cells[0] == 100 * 200 + 0  # (-0.5 cell) truncates to cell 0, as in FlashOCC
    assert cells[1] == -1
    assert cells[2] == 199 * 200 + 199
    assert list(cells[3:]) == [-1, 100 * 200 + 100, -1, -1]  # z -1.5 is within one 6.4 m cell below: kept
    strict = bev_cells(replace(cfg, truncate_bins=False), pts)
    assert strict[0] == -1 and strict[4] == -1 and strict[2] == 199 * 200 + 199


def test_bad_rig_inputs_raise() -> None:
    cfg = get_config('tiny')
    m = Rig.nuscenes().matrices(*cfg.image_size)
    with pytest.raises(SplatError, match='intrinsics'):
        build_splat_tables(cfg, type(m)(m.cam_to_ego, m.intrinsics[:5], m.image_transform))
    bad = m.intrinsics.copy()
    bad[0, 0, 2] = np.nan
    with pytest.raises(SplatError, match='non-finite'):
        build_splat_tables(cfg, type(m)(m.cam_to_ego, bad, m.image_transform))
    # one camera 1 km up looking at the sky sees nothing of the grid
    sky = Camera('cam_sky', np.array([[500.0, 0, 400], [0, 500.0, 225], [0, 0, 1]]), 800, 450,
                 Transform.from_matrix(np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 1000], [0, 0, 0, 1]])))
    with pytest.raises(SplatError, match='no frustum point'):
        build_splat_tables(cfg, Rig((sky,)).matrices(*cfg.image_size))
    tables = build_splat_tables(cfg, m)
    with pytest.raises(SplatError, match='splat_depth_index'):
        check_splat_tables(tables, cfg, 1)  # built for 6 cameras
    with pytest.raises(SplatError, match='missing'):
        check_splat_tables({k: v for k, v in tables.items() if k != 'splat_reduce_2'}, cfg, 6)
