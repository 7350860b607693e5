"""The Occ3D training dataset on a small synthetic world: history as the runtime cache picks it, images, labels,
and augmentations that keep images, splat tables, labels, flow and history warps consistent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import require_devkit
from occ_perception.data.occ3d import (
    Augmentation,
    DatasetError,
    Occ3DDataset,
    jitter_transform,
    transform_image,
)
from occ_perception.data.synth_nuscenes import SynthConfig, generate_dataset
from occ_perception.geometry import bev_warp_affine
from occ_perception.model.config import get_config
from occ_perception.rig import NUSCENES_CHANNELS, ImageTransform
from occ_perception.temporal import BevCache, bev_grid_for

CONFIG = get_config('tiny', history=2)


@pytest.fixture(scope='module')
def dataroot(tmp_path_factory) -> Path:
    require_devkit()
    out = tmp_path_factory.mktemp('occ3d')
    # one scene of 2 s: 4 keyframes at 2 Hz (so the last has both history slots, 0.5 s and 1.0 s)
    generate_dataset(SynthConfig(out=out, scenes=1, seconds=2.0, seed=11, width=320, height=180), progress=False)
    return out


@pytest.fixture(scope='module')
def dataset(dataroot) -> Occ3DDataset:
    return Occ3DDataset(dataroot, CONFIG)


def test_history_is_what_the_runtime_cache_feeds(dataset):
    # replay the scene's frames through the runtime cache, as the node does at 2 Hz
    frames = dataset.frames[0]
    cache = BevCache(dataset.temporal, CONFIG.grid, (1, 4, 4))
    expected = {}
    for frame in frames:
        h = cache.prepare(frame.stamp_ns, frame.pose)
        expected[frame.token] = [int(s) for s in h.stamps_ns]
        cache.push(frame.stamp_ns, frame.pose, np.zeros((1, 4, 4), np.float32))
    assert len(dataset) == len(frames) == 4
    slots_filled = []
    for i in range(len(dataset)):
        frame, history = dataset.history_indices(i)
        assert [0 if h is None else h.stamp_ns for h in history] == expected[frame.token]
        slots_filled.append(sum(h is not None for h in history))
    assert slots_filled == [0, 1, 2, 2]
    # the chosen frames lie about 0.5 s and 1.0 s back
    frame, history = dataset.history_indices(3)
    assert [round((frame.stamp_ns - h.stamp_ns) / 1e9, 2) for h in history] == [0.5, 1.0]


def test_sample_holds_the_frame_labels_and_history(dataset, dataroot):
    import cv2

    sample = dataset.get(3)
    frame, history = dataset.history_indices(3)
    n = len(NUSCENES_CHANNELS)
    w, h = CONFIG.image_size
    assert sample.images.shape == (n, h, w, 3) and sample.images.dtype == np.uint8
    assert sample.history_images.shape == (2, n, h, w, 3)
    np.testing.assert_array_equal(sample.history_valid, [1.0, 1.0])
    # images in rig order, resized and cropped by the rig's ImageTransform
    rig = dataset.calibration(frame)
    for cam, (path, channel) in enumerate(zip(frame.image_paths, NUSCENES_CHANNELS)):
        assert f'/{channel}/' in path
        src = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(sample.images[cam], transform_image(src, rig.image_transforms(w, h)[cam]))
    prev = cv2.cvtColor(cv2.imread(history[1].image_paths[1]), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(sample.history_images[1, 1], transform_image(prev, rig.image_transforms(w, h)[1]))
    # labels are the Occ3D file of this keyframe
    with np.load(dataroot / 'gts' / frame.scene / frame.token / 'labels.npz') as z:
        np.testing.assert_array_equal(sample.semantics, z['semantics'])
        np.testing.assert_array_equal(sample.mask_camera, z['mask_camera'])
        np.testing.assert_array_equal(sample.flow, z['flow'])
    # history warps from the ego poses, on the BEV feature's grid (200 x 200 cells)
    bev_grid = bev_grid_for(CONFIG.grid, (1, 200, 200))
    for slot, prev_frame in enumerate(history):
        np.testing.assert_allclose(
            sample.history_theta[slot], bev_warp_affine(prev_frame.pose, frame.pose, bev_grid)[:2], atol=1e-6
        )
    first = dataset.get(0)
    np.testing.assert_array_equal(first.history_valid, [0.0, 0.0])
    assert not first.history_images.any()


def test_transform_image_maps_pixels_as_the_image_transform_says():
    # a smooth non-square image: bilinear resampling reproduces a linear ramp exactly (up to rounding)
    src_h, src_w = 90, 160
    v, u = np.mgrid[0:src_h, 0:src_w].astype(np.float64)
    src = np.stack([u, v, 0.5 * u + v], axis=-1).clip(0, 255).astype(np.uint8)
    base = ImageTransform.fit(src_w, src_h, 96, 32)
    t = jitter_transform(base, np.random.default_rng(3), Augmentation(scale_jitter=0.2, crop_jitter=6))
    assert (t.scale, t.crop_x, t.crop_y) != (base.scale, base.crop_x, base.crop_y)
    out = transform_image(src, t)
    assert out.shape == (32, 96, 3)
    ys, xs = np.mgrid[4:28:5, 4:92:7]
    # resize convention of cv2/PIL: output pixel centre x + 0.5 sits at (u + 0.5) * s_x in the source
    new_w, new_h = int(src_w * t.scale), int(src_h * t.scale)
    su = (xs + t.crop_x + 0.5) * src_w / new_w - 0.5
    sv = (ys + t.crop_y + 0.5) * src_h / new_h - 0.5
    inside = (su >= 0) & (su <= src_w - 1) & (sv >= 0) & (sv <= src_h - 1)
    assert inside.sum() > 20
    np.testing.assert_allclose(out[ys, xs, 0][inside], su[inside], atol=1.01)
    np.testing.assert_allclose(out[ys, xs, 1][inside], sv[inside], atol=1.01)
    # and that is the ImageTransform's own mapping up to the half-pixel convention
    np.testing.assert_allclose(
        t.invert(np.stack([xs, ys], -1))[inside], np.stack([su, sv], -1)[inside], atol=0.5 / t.scale + 0.5
    )


def _splat_counts(tables: dict, n_cams: int) -> np.ndarray:
    """(Y, X) number of frustum points per BEV cell, by running the splat on unit depth and features."""
    torch = pytest.importorskip('torch')
    from occ_perception.model.splat import Splat

    w, h = CONFIG.feature_size
    depth = torch.ones(n_cams, CONFIG.num_depth_bins, h, w)
    feat = torch.ones(n_cams, 1, h, w)
    splat = Splat(CONFIG.bev_size)
    bev = splat(depth, feat, *[torch.from_numpy(tables[k]) for k in sorted(tables, key=_table_order)])
    return bev[0].numpy()


def _table_order(name: str) -> int:
    from occ_perception.model.splat_tables import splat_table_names

    return splat_table_names().index(name)


@pytest.mark.parametrize('flip_x, flip_y', [(True, False), (False, True), (True, True)])
def test_bev_flip_moves_tables_labels_flow_and_history_together(dataroot, dataset, flip_x, flip_y):
    torch = pytest.importorskip('torch')
    from occ_perception.model.bev import HistoryWarp

    flipped_set = Occ3DDataset(
        dataroot, CONFIG, augmentation=Augmentation(flip_x=float(flip_x), flip_y=float(flip_y)), nusc=dataset.nusc
    )
    plain = dataset.get(3)
    flipped = flipped_set.get(3, np.random.default_rng(0))
    assert flipped.flips == (flip_x, flip_y)
    axes = tuple(a for a, f in ((0, flip_x), (1, flip_y)) if f)
    np.testing.assert_array_equal(flipped.images, plain.images)
    np.testing.assert_array_equal(flipped.semantics, np.flip(plain.semantics, axes))
    np.testing.assert_array_equal(flipped.mask_camera, np.flip(plain.mask_camera, axes))
    sign = np.array([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0], np.float32)
    np.testing.assert_array_equal(flipped.flow, np.flip(plain.flow, axes) * sign)
    assert np.abs(plain.flow).max() > 0.5  # moving objects: the sign change is visible
    # reflecting the rig and the labels together leaves what each camera pixel sees (its depth target) unchanged
    assert (plain.depth_target >= 0).mean() > 0.5
    np.testing.assert_array_equal(flipped.depth_target, plain.depth_target)

    # the splat of the flipped tables is the flipped splat ((Y, X) map: x is axis 1, y axis 0)
    counts, counts_f = _splat_counts(plain.tables, 6), _splat_counts(flipped.tables, 6)
    bev_axes = tuple(a for a, f in ((1, flip_x), (0, flip_y)) if f)
    mirrored = np.flip(counts, bev_axes)
    assert counts.sum() > 1000
    # equal but for points on the grid's outer edge (truncating binning keeps a sliver below the lower bound)
    inner = (slice(2, -2), slice(2, -2))
    np.testing.assert_allclose(counts_f[inner], mirrored[inner])

    # history warps: warping a flipped history map equals flipping the warped map
    warp = HistoryWarp(CONFIG.bev_size)
    x_size, y_size = CONFIG.bev_size
    rng = np.random.default_rng(5)
    hist = torch.from_numpy(rng.normal(size=(2, 3, y_size, x_size)).astype(np.float32))
    hist = torch.nn.functional.avg_pool2d(hist, 9, stride=1, padding=4)  # smooth: bilinear sampling commutes
    valid = torch.ones(2)
    out = warp(hist, torch.from_numpy(plain.history_theta), valid)
    dims = tuple(d for d, f in ((3, flip_x), (2, flip_y)) if f)
    out_f = warp(torch.flip(hist, dims), torch.from_numpy(flipped.history_theta), valid)
    np.testing.assert_allclose(out_f.numpy(), torch.flip(out, dims).numpy(), atol=1e-4)
    assert not np.allclose(plain.history_theta, flipped.history_theta)


def test_scale_crop_jitter_rebuilds_the_tables(dataroot, dataset):
    jitter = Occ3DDataset(
        dataroot, CONFIG, augmentation=Augmentation(scale_jitter=0.15, crop_jitter=10), nusc=dataset.nusc
    )
    plain = dataset.get(1)
    a = jitter.get(1, np.random.default_rng(1))
    b = jitter.get(1, np.random.default_rng(1))
    c = jitter.get(1, np.random.default_rng(2))
    for name in a.tables:  # the same draw gives the same sample; another draw other tables and images
        np.testing.assert_array_equal(a.tables[name], b.tables[name])
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert any(
        a.tables[k].shape != plain.tables[k].shape or not np.array_equal(a.tables[k], plain.tables[k]) for k in a.tables
    )
    # history frames go through the same jittered transforms as the current frame
    frame, history = jitter.history_indices(1)
    import cv2

    rng = np.random.default_rng(1)
    rig = jitter.calibration(frame)
    transforms = [jitter_transform(t, rng, jitter.augmentation) for t in rig.image_transforms(*CONFIG.image_size)]
    prev = cv2.cvtColor(cv2.imread(history[0].image_paths[4]), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(a.history_images[0, 4], transform_image(prev, transforms[4]))
    np.testing.assert_array_equal(a.semantics, plain.semantics)


def test_errors_name_the_input(tmp_path, dataroot, dataset):
    with pytest.raises(DatasetError, match='no table folder'):
        Occ3DDataset(tmp_path, CONFIG)
    with pytest.raises(DatasetError, match='no scenes named'):
        Occ3DDataset(dataroot, CONFIG, scenes=['scene-9999'], nusc=dataset.nusc)
    with pytest.raises(DatasetError, match='flip probabilities'):
        Augmentation(flip_x=1.5)


def test_sweeps_are_history_candidates_chosen_as_the_cache_does(tmp_path):
    require_devkit()
    generate_dataset(
        SynthConfig(out=tmp_path, scenes=1, seconds=1.5, seed=4, width=160, height=96, sweeps=True), progress=False
    )
    ds = Occ3DDataset(tmp_path, CONFIG, use_sweeps=True)
    frames = ds.frames[0]
    assert len(ds) == 3 and len(frames) == 3 + 2 * 5  # 5 camera sweeps between two keyframes
    assert [f.keyframe for f in frames[:7]] == [True] + [False] * 5 + [True]
    for f in frames[1:6]:  # a sweep frame: every camera's sweep, CAM_FRONT's stamp and pose
        assert all('/sweeps/' in p for p in f.image_paths)
        assert f'/{NUSCENES_CHANNELS[1]}/' in f.image_paths[1]
    # the node runs at the cameras' 12 Hz: replay every frame through the cache
    cache = BevCache(ds.temporal, CONFIG.grid, (1, 4, 4))
    expected = {}
    for frame in frames:
        expected[frame.token] = [int(s) for s in cache.prepare(frame.stamp_ns, frame.pose).stamps_ns]
        cache.push(frame.stamp_ns, frame.pose, np.zeros((1, 4, 4), np.float32))
    for i in range(len(ds)):
        frame, history = ds.history_indices(i)
        assert [0 if h is None else h.stamp_ns for h in history] == expected[frame.token]
    assert all(h is not None for h in ds.history_indices(2)[1])
    sample = ds.get(2)
    np.testing.assert_array_equal(sample.history_valid, [1.0, 1.0])
