"""Depth targets cast from the labels: a wall and a floor seen by one camera on a non-square grid, checked
against the depth each pixel's ray must have (plane intersection), and the cases without a target."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from occ_perception.data.depth_targets import NO_TARGET, DepthTargetError, depth_targets
from occ_perception.data.occ3d import flip_matrix
from occ_perception.grid import FREE_LABEL, UNOBSERVED_LABEL, GridSpec
from occ_perception.model.config import get_config
from occ_perception.rig import RigMatrices

GRID = GridSpec(lower=(-20.0, -16.0, -1.0), size=(100, 80, 16), voxel_size=0.4)  # x [-20, 20), y [-16, 16)
CONFIG = replace(get_config('tiny'), grid=GRID)  # 352 x 128 input, 22 x 8 features, bins 1, 3, ..., 43 m
CAM_X, CAM_Y, CAM_Z = -4.0, 0.8, 1.5
WALL_X = 8.4  # voxel face: index 71 onwards
FLOOR_TOP = -0.6  # the floor is the lowest voxel layer
FX = FY = 150.0
CX, CY = 175.5, 63.5


def _rig() -> RigMatrices:
    """One camera looking along +x (optical z = ego x, image right = ego -y, image down = ego -z)."""
    c2e = np.eye(4)
    c2e[:3, :3] = [[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]
    c2e[:3, 3] = [CAM_X, CAM_Y, CAM_Z]
    k = np.array([[FX, 0.0, CX], [0.0, FY, CY], [0.0, 0.0, 1.0]])
    return RigMatrices(c2e[None], k[None], np.eye(3)[None])


def _scene() -> tuple[np.ndarray, np.ndarray]:
    sem = np.full(GRID.shape, FREE_LABEL, np.uint8)
    sem[:, :, 0] = 11  # driveable surface
    wall = int(round((WALL_X - GRID.lower[0]) / GRID.voxel_size))
    sem[wall:, :, :] = 15  # manmade
    return sem, np.ones(GRID.shape, np.uint8)


def _expected_depth() -> np.ndarray:
    """(8, 22) camera depth [m] of the first surface per feature pixel (inf: the ray leaves the grid first)."""
    (w_img, h_img), (w_f, h_f) = CONFIG.image_size, CONFIG.feature_size
    v = np.linspace(0.0, h_img - 1.0, h_f)[:, None] * np.ones((1, w_f))
    u = np.ones((h_f, 1)) * np.linspace(0.0, w_img - 1.0, w_f)[None, :]
    down = (v - CY) / FY  # ego -z per metre of camera depth
    lateral = (u - CX) / FX  # ego -y per metre of camera depth
    with np.errstate(divide='ignore'):
        floor = np.where(down > 0, (CAM_Z - FLOOR_TOP) / down, np.inf)
    depth = np.minimum(floor, WALL_X - CAM_X)
    z = CAM_Z - down * depth
    y = CAM_Y - lateral * depth
    inside = (z < GRID.upper[2]) & (np.abs(y) < GRID.upper[1])
    return np.where(inside, depth, np.inf)


def _bins(depth: np.ndarray) -> np.ndarray:
    b = np.rint((depth - CONFIG.depth_min) / CONFIG.depth_step)
    ok = np.isfinite(depth) & (b >= 0) & (b < CONFIG.num_depth_bins)
    return np.where(ok, b, NO_TARGET).astype(np.int64)


def test_wall_and_floor_give_the_plane_depths():
    sem, mask = _scene()
    got = depth_targets(CONFIG, _rig(), sem, mask)
    assert got.shape == (1, 8, 22)
    expected = _bins(_expected_depth())
    np.testing.assert_array_equal(got[0], expected)
    assert (expected == NO_TARGET).any() and (expected == 6).any()  # sky rows and the wall (12.4 m -> bin 6)
    assert len(np.unique(expected[expected >= 0])) >= 3  # the floor at several depths


def test_unobserved_or_masked_first_hits_have_no_target():
    sem, mask = _scene()
    mask[:, GRID.shape[1] // 2 :, :] = 0  # y > 0: the left half of the image
    sem[:, : GRID.shape[1] // 2, 0] = UNOBSERVED_LABEL  # the floor on the right half
    got = depth_targets(CONFIG, _rig(), sem, mask)[0]
    expected = _bins(_expected_depth())
    u = np.linspace(0.0, CONFIG.image_size[0] - 1.0, CONFIG.feature_size[0])
    depth = _expected_depth()
    y_hit = CAM_Y - ((u[None, :] - CX) / FX) * depth
    floor_hit = depth < WALL_X - CAM_X - 1e-9
    keep = np.where(y_hit >= 0, False, ~floor_hit)  # left: masked; right: only wall hits remain
    np.testing.assert_array_equal(got, np.where(keep, expected, NO_TARGET))
    assert (got >= 0).any()


def test_reflecting_rig_and_labels_together_keeps_the_targets():
    sem, mask = _scene()
    sem[60:64, 30:36, 1:6] = 4  # an object off the axis, so the reflection matters
    rig = _rig()
    plain = depth_targets(CONFIG, rig, sem, mask)
    for fx, fy in ((True, False), (False, True), (True, True)):
        axes = tuple(a for a, f in ((0, fx), (1, fy)) if f)
        flipped_rig = replace(rig, cam_to_ego=flip_matrix(fx, fy) @ rig.cam_to_ego)
        np.testing.assert_array_equal(depth_targets(CONFIG, flipped_rig, np.flip(sem, axes), mask), plain)


def test_wrong_label_shape_names_the_input():
    sem, mask = _scene()
    with pytest.raises(DepthTargetError, match='mask_camera'):
        depth_targets(CONFIG, _rig(), sem, mask[:-1])
