"""Splat tables on the host, numpy only: geometry, binning, table structure, camera masks (runs without torch)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from occ_perception.geometry import Transform
from occ_perception.grid import GridSpec
from occ_perception.model.config import ModelConfig, get_config
from occ_perception.model.splat_tables import (
    SPLAT_CHUNKS,
    SplatError,
    bev_cells,
    build_splat_tables,
    check_splat_tables,
    frustum_cells,
    frustum_points,
    mask_cameras,
    splat_table_names,
)
from occ_perception.rig import Camera, Rig

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# 160 x 240 cells, origin not centred on the ego: x in [-24, 40), y in [-40, 56) m
WIDE_GRID = GridSpec(lower=(-24.0, -40.0, -1.0), size=(160, 240, 16), voxel_size=0.4)


def wide_config() -> ModelConfig:
    return replace(get_config('tiny'), name='tiny-160x240', grid=WIDE_GRID)


def sky_camera() -> Camera:
    """A camera 1 km up looking at the sky: it sees nothing of any grid."""
    return Camera(
        'cam_sky',
        np.array([[500.0, 0, 400], [0, 500.0, 225], [0, 0, 1]]),
        800,
        450,
        Transform.from_matrix(np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 1000], [0, 0, 0, 1]])),
    )


def sparse_rigs() -> dict[str, tuple[ModelConfig, Rig]]:
    """Rigs whose tables have levels no cell needs: one camera, or most points outside a small grid."""
    nus = Rig.nuscenes()
    front = Rig((nus.camera('cam_front'),))
    far = GridSpec(lower=(30.0, -1.6, -1.0), size=(8, 16, 16), voxel_size=0.4)  # 30 m ahead, few points per cell
    near = GridSpec(lower=(8.0, -3.2, -1.0), size=(8, 16, 16), voxel_size=0.4)
    small = GridSpec(lower=(-2.0, -6.0, -1.0), size=(24, 16, 16), voxel_size=0.4)
    return {
        'one-camera-far-grid': (replace(get_config('tiny'), grid=far), front),  # no cell needs levels 1 and 2
        'one-camera-far-grid-m0': (replace(get_config('flashocc-m0'), grid=far), front),  # none needs level 2
        'one-camera-near-grid': (replace(get_config('tiny'), grid=near), front),
        'one-camera': (get_config('tiny'), front),
        'small-grid': (replace(get_config('tiny'), grid=small), nus),
        'sky-and-front': (replace(get_config('tiny'), grid=far), Rig((sky_camera(), nus.camera('cam_front')))),
    }


def test_table_module_does_not_import_torch() -> None:
    code = (
        'import sys; import occ_perception.model.splat_tables, occ_perception.tensors; '
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, '-c', code], cwd=PACKAGE_DIR, check=True)


def test_table_names() -> None:
    assert len(SPLAT_CHUNKS) == 2
    assert splat_table_names() == (
        'splat_depth_index',
        'splat_feat_index',
        'splat_reduce_1',
        'splat_reduce_2',
        'splat_cell_index',
    )


@pytest.mark.parametrize('case', sorted(sparse_rigs()))
def test_every_table_has_a_row_for_sparse_rigs(case: str) -> None:
    cfg, rig = sparse_rigs()[case]
    tables = build_splat_tables(cfg, rig.matrices(*cfg.image_size))
    check_splat_tables(tables, cfg, len(rig))
    assert list(tables) == list(splat_table_names())
    for name, t in tables.items():
        assert t.dtype == np.int64 and t.shape[0] >= 1, (name, t.shape)
    cells = frustum_cells(cfg, rig.matrices(*cfg.image_size))
    kept = int((cells >= 0).sum())
    real = tables['splat_depth_index'][tables['splat_depth_index'] < cells.size]
    assert real.size == kept and np.unique(real).size == kept  # every kept point exactly once
    # a padding level (one (1, 1) row summing the zero row; real rows are wider) is referenced by no cell
    rows = [tables[n].shape[0] for n in ('splat_depth_index', 'splat_reduce_1', 'splat_reduce_2')]
    for k in (1, 2):
        t = tables[f'splat_reduce_{k}']
        if t.shape == (1, 1):
            assert t[0, 0] == rows[k - 1]
            assert sum(rows[:k]) not in tables['splat_cell_index'], f'splat_reduce_{k} padding row referenced'
    # the number of cells with a row equals the number of cells hit
    total = sum(rows)
    assert int((tables['splat_cell_index'] < total).sum()) == np.unique(cells[cells >= 0]).size


def test_sparse_rig_has_a_padding_level() -> None:
    """Where no cell needs a reduce level it is one padding row that sums the previous level's zero row."""
    cfg, rig = sparse_rigs()['one-camera-far-grid']
    tables = build_splat_tables(cfg, rig.matrices(*cfg.image_size))
    r0 = tables['splat_depth_index'].shape[0]
    np.testing.assert_array_equal(tables['splat_reduce_1'], [[r0]])
    np.testing.assert_array_equal(tables['splat_reduce_2'], [[1]])
    # every hit cell takes its level-0 row; the others the zero row after all levels (r0 + 1 + 1)
    cell = tables['splat_cell_index']
    assert set(np.unique(cell)) <= set(range(r0)) | {r0 + 2}


def test_mask_cameras_points_inactive_entries_at_zero_slot() -> None:
    cfg = get_config('tiny')
    m = Rig.nuscenes().matrices(*cfg.image_size)
    tables = build_splat_tables(cfg, m)
    w, h = cfg.feature_size
    per_camera = cfg.num_depth_bins * h * w
    zero = 6 * per_camera
    active = [True, False, True, True, True, False]
    masked = mask_cameras(tables, cfg, 6, active)
    assert {k: v.shape for k, v in masked.items()} == {k: v.shape for k, v in tables.items()}
    check_splat_tables(masked, cfg, 6)
    depth = tables['splat_depth_index']
    camera = depth // per_camera
    off = (depth < zero) & np.isin(camera, [1, 5])
    assert off.any()
    assert np.all(masked['splat_depth_index'][off] == zero) and np.all(masked['splat_feat_index'][off] == 0)
    np.testing.assert_array_equal(masked['splat_depth_index'][~off], depth[~off])
    for name in ('splat_reduce_1', 'splat_reduce_2', 'splat_cell_index'):
        np.testing.assert_array_equal(masked[name], tables[name])
    assert tables['splat_depth_index'] is depth and np.array_equal(tables['splat_depth_index'], depth)  # input kept
    # all off: nothing but the zero slot remains
    none = mask_cameras(tables, cfg, 6, [False] * 6)
    assert np.all(none['splat_depth_index'] == zero)
    with pytest.raises(SplatError, match='one flag per camera'):
        mask_cameras(tables, cfg, 6, [True] * 5)
    with pytest.raises(SplatError, match='splat_depth_index'):
        mask_cameras(tables, cfg, 5, [True] * 5)  # tables built for 6 cameras


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
    pts = np.array(
        [
            [-40.2, 0.0, 0.0],
            [-40.5, 0.0, 0.0],
            [39.99, 39.99, 5.3],
            [40.0, 0.0, 0.0],
            [0.0, 0.0, -1.5],
            [0.0, 0.0, 5.4],
            [np.nan, 0.0, 0.0],
        ]
    )
    cells = bev_cells(cfg, pts)
    assert cells[0] == 100 * 200 + 0  # (-0.5 cell) truncates to cell 0, as in FlashOCC
    assert cells[1] == -1
    assert cells[2] == 199 * 200 + 199
    assert list(cells[3:]) == [-1, 100 * 200 + 100, -1, -1]  # z -1.5 is within one 6.4 m cell below: kept
    strict = bev_cells(replace(cfg, truncate_bins=False), pts)
    assert strict[0] == -1 and strict[4] == -1 and strict[2] == 199 * 200 + 199


def test_binning_on_a_non_square_off_centre_grid() -> None:
    """Cell ``iy * X + ix`` with X = 160, Y = 240; the ego sits at (ix, iy) = (60, 100), not in the middle."""
    cfg = wide_config()
    assert cfg.bev_size == (160, 240)
    pts = np.array(
        [
            [0.1, 0.1, 0.0],
            [39.9, 0.1, 0.0],
            [0.1, 55.9, 0.0],
            [-23.9, -39.9, 0.0],
            [40.1, 0.0, 0.0],
            [0.0, 56.1, 0.0],
            [0.0, -40.5, 0.0],
            [50.0, 50.0, 0.0],
        ]
    )
    cells = bev_cells(replace(cfg, truncate_bins=False), pts)
    assert list(cells) == [100 * 160 + 60, 100 * 160 + 159, 239 * 160 + 60, 0, -1, -1, -1, -1]
    # the nuScenes rig sees the whole 64 m x 96 m area around it; the front camera only x > 0 (ix >= 60)
    c = frustum_cells(cfg, Rig.nuscenes().matrices(*cfg.image_size))
    front = c[1][c[1] >= 0]
    assert front.size and np.all(front % 160 >= 59)
    back = c[4][c[4] >= 0]
    assert back.size and np.all(back % 160 <= 61)


def test_bad_rig_inputs_raise() -> None:
    cfg = get_config('tiny')
    m = Rig.nuscenes().matrices(*cfg.image_size)
    with pytest.raises(SplatError, match='intrinsics'):
        build_splat_tables(cfg, type(m)(m.cam_to_ego, m.intrinsics[:5], m.image_transform))
    bad = m.intrinsics.copy()
    bad[0, 0, 2] = np.nan
    with pytest.raises(SplatError, match='non-finite'):
        build_splat_tables(cfg, type(m)(m.cam_to_ego, bad, m.image_transform))
    # a rig that sees nothing of the grid is a calibration error
    with pytest.raises(SplatError, match='no frustum point'):
        build_splat_tables(cfg, Rig((sky_camera(),)).matrices(*cfg.image_size))
    tables = build_splat_tables(cfg, m)
    with pytest.raises(SplatError, match='splat_depth_index'):
        check_splat_tables(tables, cfg, 1)  # built for 6 cameras
    with pytest.raises(SplatError, match='missing'):
        check_splat_tables({k: v for k, v in tables.items() if k != 'splat_reduce_2'}, cfg, 6)
    with pytest.raises(SplatError, match='at least one row'):
        check_splat_tables(dict(tables, splat_reduce_2=np.zeros((0, 1), np.int64)), cfg, 6)
