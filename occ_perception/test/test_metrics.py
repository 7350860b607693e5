"""Occ3D mIoU, RayIoU and mAVE against hand-built scenes, direct counts and brute-force ray sampling."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from occ_perception.grid import FREE_LABEL, GridSpec
from occ_perception.metrics import (
    FLOW_CLASSES,
    LIDAR_TRANSLATION,
    MetricsError,
    MetricsReport,
    MIoU,
    RayMetrics,
    cast_rays,
    lidar_origins,
    ray_directions,
    ray_pitch_angles,
)
from occ_perception.raycast import first_hits, grid_interval

# A small non-square grid: x in [-2, 10), y in [-3.2, 4.8), z in [-3.2, 3.2) m.
SMALL = GridSpec(lower=(-2.0, -3.2, -3.2), size=(30, 20, 16), voxel_size=0.4)


# ----------------------------------------------------------------------------------------------- mIoU


def _direct_iou(frames):
    """Per-class IoU by explicit loops over classes with boolean masks (the definition, written out)."""
    tp = np.zeros(18)
    fp = np.zeros(18)
    fn = np.zeros(18)
    for pred, gt, mask in frames:
        counted = (gt != 255) & (np.ones(gt.shape, bool) if mask is None else mask)
        for c in range(18):
            tp[c] += np.sum((pred == c) & (gt == c) & counted)
            fp[c] += np.sum((pred == c) & (gt != c) & counted)
            fn[c] += np.sum((pred != c) & (gt == c) & counted)
    iou = np.full(18, np.nan)
    for c in range(18):
        if tp[c] + fp[c] + fn[c] > 0:
            iou[c] = tp[c] / (tp[c] + fp[c] + fn[c])
    return iou


def test_miou_class_absent_from_both_is_nan_and_left_out():
    gt = np.full((4, 3, 2), FREE_LABEL, np.uint8)
    pred = gt.copy()
    gt[0, 0, 0] = pred[0, 0, 0] = 4  # car: 1 TP
    gt[1, 0, 0] = 4
    pred[1, 0, 0] = 1  # car FN, barrier FP
    m = MIoU()
    m.add(pred, gt)
    r = m.result()
    assert r.iou[4] == pytest.approx(0.5)
    assert r.iou[1] == 0.0
    absent = [c for c in range(17) if c not in (1, 4)]
    assert np.all(np.isnan(r.iou[absent]))
    assert r.miou == pytest.approx(0.25)  # mean of car 0.5 and barrier 0.0 only
    assert r.iou[FREE_LABEL] == 1.0  # free is in the matrix ...
    assert r.confusion[1, 4] == 1 and r.confusion.sum() == 24


def test_miou_free_false_positive_and_negative_lower_the_class():
    gt = np.full((5, 2, 2), FREE_LABEL, np.uint8)
    gt[:4, 0, 0] = 13  # four sidewalk voxels
    pred = gt.copy()
    m = MIoU()
    m.add(pred, gt)
    assert m.result().iou[13] == 1.0 and m.result().miou == 1.0
    pred[0, 0, 0] = FREE_LABEL  # predicted free where there is sidewalk: a false negative of sidewalk
    pred[4, 1, 1] = 13  # predicted sidewalk in free space: a false positive of sidewalk
    m = MIoU()
    m.add(pred, gt)
    r = m.result()
    assert r.iou[13] == pytest.approx(3 / 5)  # TP 3, FN 1, FP 1
    assert r.miou == pytest.approx(3 / 5)  # ... but not in the mean


def test_miou_ignores_voxels_outside_the_mask_and_unobserved_ground_truth():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 18, (6, 5, 4)).astype(np.uint8)
    pred = gt.copy()
    mask = np.ones(gt.shape, bool)
    mask[0] = False
    pred[0] = (gt[0] + 1) % 18  # wrong everywhere outside the mask
    gt_unobserved = gt.copy()
    gt_unobserved[1] = 255
    pred[1] = (gt[1] + 5) % 18  # wrong where the ground truth is unobserved
    m = MIoU()
    m.add(pred, gt_unobserved, mask)
    r = m.result()
    assert r.confusion.sum() == gt[2:].size
    assert np.array_equal(np.diag(r.confusion), np.bincount(gt[2:].ravel(), minlength=18))
    present = np.unique(gt[2:])
    assert np.all(r.iou[present] == 1.0)
    # Without the mask, the wrong voxels of x = 0 count.
    m2 = MIoU()
    m2.add(pred, gt_unobserved)
    assert m2.result().confusion.sum() == gt[2:].size + gt[0].size and m2.result().miou < 1.0


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_miou_equals_a_direct_per_class_count_on_random_grids(seed):
    rng = np.random.default_rng(seed)
    shape = (13, 7, 5)
    frames = []
    m = MIoU()
    for _ in range(3):
        gt = rng.integers(0, 18, shape).astype(np.uint8)
        gt[rng.random(shape) < 0.1] = 255
        pred = np.where(rng.random(shape) < 0.5, gt, rng.integers(0, 18, shape)).astype(np.uint8)
        pred[pred == 255] = FREE_LABEL
        gt[gt == 6] = FREE_LABEL  # class 6 only ever predicted: IoU 0, not NaN
        pred[pred == 9] = 3
        gt[gt == 9] = 3  # class 9 absent from both: NaN
        mask = rng.random(shape) < 0.7 if seed % 2 else None
        frames.append((pred, gt, mask))
        m.add(pred, gt, mask)
    expected = _direct_iou(frames)
    r = m.result()
    np.testing.assert_allclose(r.iou, expected, rtol=1e-12)
    assert np.isnan(r.iou[9]) and r.iou[6] == 0.0
    assert r.miou == pytest.approx(np.nanmean(expected[:17]))


def test_miou_rejects_bad_input_with_a_clear_message():
    m = MIoU()
    gt = np.zeros((2, 2, 2), np.uint8)
    with pytest.raises(MetricsError, match='pred: expected labels of shape'):
        m.add(np.zeros((2, 2, 3), np.uint8), gt)
    with pytest.raises(MetricsError, match=r'pred: labels must be 0\.\.17'):
        m.add(np.full((2, 2, 2), 255, np.uint8), gt)
    with pytest.raises(MetricsError, match='gt: labels must be'):
        m.add(gt, np.full((2, 2, 2), 40, np.uint8))


def test_metrics_accept_torch_tensors():
    torch = pytest.importorskip('torch')
    rng = np.random.default_rng(5)
    gt = rng.integers(0, 18, (6, 4, 3)).astype(np.uint8)
    pred = rng.integers(0, 18, (6, 4, 3)).astype(np.uint8)
    mask = rng.random(gt.shape) < 0.5
    a, b = MIoU(), MIoU()
    a.add(pred, gt, mask)
    b.add(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(mask))
    assert np.array_equal(a.result().confusion, b.result().confusion)
    labels = _blocks_scene(np.random.default_rng(0))
    origins = np.array([[0.2, 0.6, 0.2]])
    ra, rb = RayMetrics(SMALL), RayMetrics(SMALL)
    ra.add(labels, labels, origins)
    rb.add(torch.from_numpy(labels), torch.from_numpy(labels), torch.from_numpy(origins))
    assert ra.result().rays == rb.result().rays > 0


def test_metrics_module_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import occ_perception.metrics; print('ok')"
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == 'ok'


# ----------------------------------------------------------------------------------------------- rays


def test_ray_directions_are_the_39_sparseocc_pitches_times_360_azimuths():
    pitch = ray_pitch_angles()
    assert pitch.shape == (39,)
    # The first ten: -(pi/2 - atan(k)), i.e. tan(pitch) = -1/k.
    np.testing.assert_allclose(np.tan(pitch[:10]), -1.0 / np.arange(1, 11), rtol=1e-12)
    last_step = math.atan(10) - math.atan(9)
    np.testing.assert_allclose(np.diff(pitch[9:]), last_step, rtol=1e-9)
    assert pitch[-2] < 0.21 <= pitch[-1]
    dirs = ray_directions()
    assert dirs.shape == (14040, 3)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.arcsin(dirs[::360, 2]), pitch, atol=1e-12)
    az = np.rad2deg(np.arctan2(dirs[:360, 1], dirs[:360, 0])) % 360
    np.testing.assert_allclose(az, np.arange(360), atol=1e-9)


def test_lidar_origins_in_the_current_ego_frame_filtered_and_subsampled():
    def pose(x, y, yaw):
        t = np.eye(4)
        t[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
        t[:3, 3] = (x, y, 0.5)
        return t

    # A keyframe 5 m ahead in map of a current ego turned 90 degrees left: its lidar is 5.986 m to the right.
    o = lidar_origins(pose(25.0, 0.0, 0.0)[None], pose(20.0, 0.0, math.pi / 2))
    np.testing.assert_allclose(o, [[0.0, -5.986, 1.84]], atol=1e-9)
    # Twelve keyframes along x every 5 m, the current one at x = 20: all within 39 m, 8 kept.
    poses = np.stack([pose(5.0 * i, 0.0, 0.0) for i in range(12)])
    o = lidar_origins(poses, pose(20.0, 0.0, 0.0))
    kept = np.array([0, 2, 3, 5, 6, 8, 9, 11])  # round(linspace(0, 11, 8))
    np.testing.assert_allclose(o[:, 0], 5.0 * kept - 20.0 + LIDAR_TRANSLATION[0], atol=1e-9)
    np.testing.assert_allclose(o[:, 1:], np.broadcast_to([0.0, 1.84], (8, 2)), atol=1e-9)
    # Seen from x = 0, keyframes from x = 40 m on fall outside |x| < 39 m: 0..35 remain (8, none dropped).
    o = lidar_origins(poses, pose(0.0, 0.0, 0.0))
    np.testing.assert_allclose(o[:, 0], 5.0 * np.arange(8) + LIDAR_TRANSLATION[0], atol=1e-9)
    with pytest.raises(MetricsError, match='scene_ego_poses'):
        lidar_origins(np.eye(3), pose(0.0, 0.0, 0.0))


def _brute_first_hit(grid, occupied, origin, direction, step):
    """First occupied voxel (flat index, -1) by sampling the ray every ``step`` voxels inside the grid."""
    o = (origin - np.asarray(grid.lower)) / grid.voxel_size
    d = direction / np.linalg.norm(direction)
    t0, t1 = grid_interval(grid.shape, o[None], d[None])
    start, end = max(t0[0], 0.0), t1[0]
    if start >= end:
        return -1
    t = np.arange(start + step / 2, end, step)
    idx = np.floor(o + t[:, None] * d).astype(np.int64)
    idx = np.clip(idx, 0, np.asarray(grid.shape) - 1)
    occ = occupied[idx[:, 0], idx[:, 1], idx[:, 2]]
    if not occ.any():
        return -1
    return int(grid.flat_index(*idx[np.argmax(occ)]))


def _voxel_segment(grid, flat, origin, direction):
    """Entry and exit distance [m] of the ray in voxel ``flat`` (slab test on the voxel's box)."""
    d = direction / np.linalg.norm(direction)
    lo = np.asarray(grid.lower) + np.array(grid.unflatten(np.array([flat]))).ravel() * grid.voxel_size
    with np.errstate(divide='ignore'):
        ta, tb = (lo - origin) / d, (lo + grid.voxel_size - origin) / d
    return np.max(np.minimum(ta, tb)), np.min(np.maximum(ta, tb))


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_traversal_first_hit_equals_brute_force_sampling(seed):
    rng = np.random.default_rng(seed)
    grid = GridSpec(lower=(-3.7, 1.3, -0.9), size=(23, 14, 9), voxel_size=0.5)
    occupied = rng.random(grid.shape) < 0.08
    n = 300
    lower, upper = np.asarray(grid.lower), np.asarray(grid.upper)
    # Origins off-centre, some outside the grid (the traversal starts where the ray enters).
    origins = rng.uniform(lower - 2.0, upper + 1.0, (n, 3))
    dirs = rng.normal(size=(n, 3))
    dirs[:40, 2] = 0.0  # horizontal rays
    dirs[40:50, 1:] = 0.0  # axis-aligned rays
    hits = first_hits(grid, occupied, origins, dirs)
    step = 0.002  # voxels
    mismatches = 0
    for i in range(n):
        brute = _brute_first_hit(grid, occupied, origins[i], dirs[i], step)
        v = int(hits.voxel[i])
        if v >= 0:
            _, t_out = _voxel_segment(grid, v, origins[i], dirs[i])
            assert occupied.reshape(-1)[v]
            assert hits.depth[i] == pytest.approx(t_out, abs=1e-9)  # where the ray leaves the hit voxel
        else:
            d = dirs[i] / np.linalg.norm(dirs[i])
            t0, t1 = grid_interval(grid.shape, ((origins[i] - lower) / grid.voxel_size)[None], d[None])
            expected = t1[0] * grid.voxel_size if max(t0[0], 0.0) < t1[0] else 0.0
            assert hits.depth[i] == pytest.approx(expected, abs=1e-9)  # where the ray leaves the grid
        if brute != v:
            # Sampling can only miss a voxel the ray clips for less than a step.
            mismatches += 1
            clipped = [_voxel_segment(grid, u, origins[i], dirs[i]) for u in (v, brute) if u >= 0]
            shortest = min(b - a for a, b in clipped)
            assert shortest < 2 * step * grid.voxel_size, (i, v, brute, shortest)
    assert mismatches <= n // 50
    assert np.sum(hits.voxel >= 0) > n // 6  # the test exercised hits, not only misses


def _blocks_scene(rng):
    """Labels on SMALL: a ground layer, random blocks of several classes, some unobserved voxels."""
    labels = np.full(SMALL.shape, FREE_LABEL, np.uint8)
    labels[:, :, 4] = 11  # ground at z in [-1.6, -1.2)
    for c in (1, 4, 7, 10, 15):
        for _ in range(3):
            x, y, z = rng.integers(0, 26), rng.integers(0, 17), rng.integers(5, 12)
            labels[x : x + 3, y : y + 2, z : z + 3] = c
    labels[20:24, 0:3, 5:7] = 255
    return labels


def test_rayiou_is_one_for_a_perfect_prediction_and_zero_for_all_free():
    labels = _blocks_scene(np.random.default_rng(3))
    origins = np.array([[0.2, 0.6, 0.0], [4.6, -1.4, 0.4], [12.0, 1.0, 0.0]])  # the last one outside the grid
    perfect = RayMetrics(SMALL)
    perfect.add(labels, labels, origins)
    r = perfect.result()
    assert r.rays > 1000
    assert r.ray_iou == 1.0 and np.all(r.ray_iou_at == 1.0)
    present = np.isin(np.arange(17), [1, 4, 7, 10, 11, 15])
    assert np.all(r.iou[:, present] == 1.0) and np.all(np.isnan(r.iou[:, ~present]))
    empty = RayMetrics(SMALL)
    empty.add(np.full(SMALL.shape, FREE_LABEL, np.uint8), labels, origins)
    r = empty.result()
    assert r.ray_iou == 0.0 and np.all(r.iou[:, present] == 0.0)


def test_a_wall_moved_3_2_m_along_its_rays_passes_at_4_m_only():
    # One origin; a barrier wall perpendicular to x with its front face 3.2 m ahead, 0.4 m thick.
    # The prediction moves it 3.2 m further along the same rays: front face at 6.4 m and the patch
    # twice as wide and high, so exactly the same rays meet its front face. Their depths differ by
    # between 3.2 and 3.6 m divided by the ray's x component (>= 0.93 here): under 4 m, over 2 m.
    origin = np.array([[0.0, 0.4, 0.0]])

    def wall(distance, half_width, half_height):
        labels = np.full(SMALL.shape, FREE_LABEL, np.uint8)
        lo = np.round((origin[0] + [distance, -half_width, -half_height] - SMALL.lower) / SMALL.voxel_size)
        hi = np.round((origin[0] + [distance, half_width, half_height] - SMALL.lower) / SMALL.voxel_size)
        (x0, y0, z0), (y1, z1) = lo.astype(int), hi[1:].astype(int)
        labels[x0, y0:y1, z0:z1] = 1
        return labels

    gt = wall(3.2, 0.4, 1.2)
    pred = wall(6.4, 0.8, 2.4)
    assert np.sum(gt == 1) == 2 * 6 and np.sum(pred == 1) == 4 * 12
    g = cast_rays(gt, origin, SMALL)
    p = cast_rays(pred, origin, SMALL)
    assert np.array_equal(g.label == 1, p.label == 1)  # the same rays hit both walls
    diff = (p.depth - g.depth)[g.label == 1]
    assert diff.min() > 2.0 and diff.max() < 4.0
    rm = RayMetrics(SMALL)
    rm.add(pred, gt, origin)
    r = rm.result()
    assert r.rays == np.sum(g.label == 1) > 0
    np.testing.assert_array_equal(r.iou[:, 1], [0.0, 0.0, 1.0])  # thresholds 1, 2, 4 m
    assert np.all(np.isnan(np.delete(r.iou, 1, axis=1)))
    assert r.ray_iou == pytest.approx(1 / 3) and r.ray_iou_at.tolist() == [0.0, 0.0, 1.0]
    # Depth is where the ray leaves the wall: the head-on ray (azimuth 0, pitch nearest 0) at x = 3.6 m.
    head_on = np.argmin(np.abs(ray_pitch_angles())) * 360
    assert g.label[head_on] == 1 and g.depth[head_on] == pytest.approx(3.6 / ray_directions()[head_on, 0])
    assert p.depth[head_on] == pytest.approx(6.8 / ray_directions()[head_on, 0])


def test_mave_is_zero_for_exact_flow_and_half_for_a_0_3_0_4_shift():
    rng = np.random.default_rng(7)
    labels = _blocks_scene(rng)
    flow = rng.normal(size=SMALL.shape + (2,)).astype(np.float32)
    origins = np.array([[0.2, 0.6, 0.0], [6.0, 2.0, -0.4]])
    exact = RayMetrics(SMALL)
    garbage = flow.copy()
    garbage[labels == FREE_LABEL] = 100.0  # never read: only hit voxels are
    exact.add(labels, labels, origins, garbage, flow)
    r = exact.result()
    with_tp = [c for c in FLOW_CLASSES if c in (4, 7, 10)]
    assert r.mave == 0.0 and np.all(r.ave[with_tp] == 0.0)
    assert np.all(np.isnan(r.ave[[c for c in FLOW_CLASSES if c not in with_tp]]))
    assert r.occ_score == pytest.approx(0.9 * 1.0 + 0.1 * 1.0)
    shifted = RayMetrics(SMALL)
    shifted.add(labels, labels, origins, flow + np.array([0.3, 0.4], np.float32), flow)
    r = shifted.result()
    assert r.mave == pytest.approx(0.5, abs=1e-6)
    np.testing.assert_allclose(r.ave[with_tp], 0.5, atol=1e-6)
    assert r.occ_score == pytest.approx(0.9 + 0.1 * 0.5, abs=1e-6)
    no_flow = RayMetrics(SMALL)
    no_flow.add(labels, labels, origins)
    assert math.isnan(no_flow.result().mave) and math.isnan(no_flow.result().occ_score)


def test_report_json_and_markdown():
    labels = _blocks_scene(np.random.default_rng(3))
    m = MIoU()
    observed = np.where(labels == 255, FREE_LABEL, labels)
    m.add(observed, labels)
    rm = RayMetrics(SMALL)
    rm.add(labels, labels, np.array([[0.2, 0.6, 0.0]]), np.zeros(SMALL.shape + (2,)), np.zeros(SMALL.shape + (2,)))
    report = MetricsReport.from_results(m.result(), rm.result(), frames=1)
    data = json.loads(report.to_json())
    assert data['miou'] == 1.0 and data['iou']['car'] == 1.0 and data['iou']['bus'] is None
    assert data['ray_iou'] == 1.0 and data['ray_iou_at'] == {'1': 1.0, '2': 1.0, '4': 1.0}
    assert data['mave'] == 0.0 and data['occ_score'] == pytest.approx(1.0)
    md = report.to_markdown()
    rows = [line for line in md.splitlines() if line.startswith('| ') and not line.startswith('| class')]
    assert len(rows) == 17 and rows[4].startswith('| car | 100.00 | 100.00 | 100.00 | 100.00 | 0.000 |')
    assert 'RayIoU: 100.00' in md


def test_unobserved_ground_truth_stops_rays_and_counts_without_a_class():
    # Along +x from the origin: an unobserved voxel (255) 2 m ahead, a car behind it.
    labels = np.full(SMALL.shape, FREE_LABEL, np.uint8)
    labels[10, 9, 8] = 255  # x in [2.0, 2.4)
    labels[12, 9, 8] = 4
    origin = np.array([[0.0, 0.4, 0.0]])
    hit = cast_rays(labels, origin, SMALL, np.array([[1.0, 0.0, 0.0]]))
    assert hit.label.tolist() == [255] and hit.depth[0] == pytest.approx(2.4)
    # A prediction of car where the ground truth is unobserved: the rays count, Pred_car > 0, GT_car = 0.
    gt = np.full(SMALL.shape, FREE_LABEL, np.uint8)
    gt[13, :, :] = 255
    pred = np.where(gt == 255, 4, FREE_LABEL).astype(np.uint8)
    rm = RayMetrics(SMALL)
    rm.add(pred, gt, origin)
    r = rm.result()
    assert r.rays > 0 and np.all(r.iou[:, 4] == 0.0) and np.all(np.isnan(np.delete(r.iou, 4, axis=1)))


def test_flow_is_read_at_each_volume_own_hit_voxel():
    # Ground-truth car wall at x index 13, predicted one voxel further (index 14), both spanning y and z.
    gt = np.full(SMALL.shape, FREE_LABEL, np.uint8)
    gt[13] = 4
    pred = np.full(SMALL.shape, FREE_LABEL, np.uint8)
    pred[14] = 4
    gt_flow = np.zeros(SMALL.shape + (2,), np.float32)
    gt_flow[14] = (1.0, 0.0)  # where the prediction hits: must not be read for the ground truth
    pred_flow = np.zeros(SMALL.shape + (2,), np.float32)
    pred_flow[13] = (5.0, 5.0)  # where the ground truth hits: must not be read for the prediction
    pred_flow[14] = (1.0, 0.0)
    rm = RayMetrics(SMALL)
    rm.add(pred, gt, np.array([[0.0, 0.4, 0.0]]), pred_flow, gt_flow)
    r = rm.result()
    assert r.iou[1, 4] > 0.5  # true positives at 2 m exist
    assert r.ave[4] == pytest.approx(1.0) and r.mave == pytest.approx(1.0)
    assert r.occ_score == pytest.approx(0.9 * r.ray_iou)  # max(1 - 1, 0) = 0
