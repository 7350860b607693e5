"""The BEV cache: slot selection by time, warps of a static world, and each reset rule."""

from __future__ import annotations

import numpy as np
import pytest
from occ_perception.geometry import Transform
from occ_perception.grid import GridSpec
from occ_perception.rig import Rig
from occ_perception.temporal import BevCache, ResetReason, TemporalConfig, TemporalError, select_slots

GRID = GridSpec()
SHAPE = (4, 50, 50)  # (C, Y, X): 1.6 m cells over the 80 m grid
MS = 1_000_000


def cache(**kw) -> BevCache:
    return BevCache(TemporalConfig(**kw), GRID, SHAPE)


def feature(value: float) -> np.ndarray:
    return np.full(SHAPE, value, np.float32)


def drive(c: BevCache, hz: float, seconds: float, speed: float = 5.0):
    """Push frames along x at ``speed`` m/s; return the last prepare() result."""
    step = int(1000 / hz) * MS
    history = None
    for i in range(int(seconds * hz) + 1):
        stamp = 1_000_000_000 + i * step
        pose = Transform(translation=[speed * i * step / 1e9, 0.0, 0.0])
        history = c.prepare(stamp, pose, 'rig')
        c.push(stamp, pose, feature(stamp / 1e9))
    return history, stamp


def test_same_history_at_12hz_and_2hz() -> None:
    h12, now12 = drive(cache(), 12.0, 3.0)
    h2, now2 = drive(cache(), 2.0, 3.0)
    assert h12.valid.tolist() == h2.valid.tolist() == [1.0, 1.0]
    # entries nearest 0.5 s and 1.0 s before the current stamp, whatever the rate
    ages12 = (now12 - h12.stamps_ns) / 1e9
    ages2 = (now2 - h2.stamps_ns) / 1e9
    np.testing.assert_allclose(ages12, [0.5, 1.0], atol=1 / 24 + 1e-3)
    np.testing.assert_allclose(ages2, [0.5, 1.0], atol=1e-9)
    np.testing.assert_allclose(h2.bev[:, 0, 0, 0], h2.stamps_ns / 1e9)


def test_slots_empty_until_history_exists() -> None:
    c = cache()
    first = c.prepare(0, Transform(), 'rig')
    assert first.valid.tolist() == [0.0, 0.0] and first.reset is None
    assert not first.bev.any()
    np.testing.assert_array_equal(first.theta, np.tile(np.eye(3)[:2], (2, 1, 1)))
    c.push(0, Transform(), feature(1.0))
    second = c.prepare(500 * MS, Transform(), 'rig')
    assert second.valid.tolist() == [1.0, 0.0]
    assert set(second.feeds()) == {'history_bev', 'history_theta', 'history_valid'}


def test_reset_on_gap() -> None:
    c = cache(max_gap=1.0)
    c.prepare(0, Transform(), 'rig')
    c.push(0, Transform(), feature(1.0))
    h = c.prepare(1_001 * MS, Transform(), 'rig')
    assert h.reset is ResetReason.GAP and h.valid.sum() == 0 and not c.entries
    c.push(1_001 * MS, Transform(), feature(2.0))
    h = c.prepare(2_000 * MS, Transform(), 'rig')  # 0.999 s: kept
    assert h.reset is None and h.valid.tolist() == [0.0, 1.0]


def test_reset_on_time_going_backwards() -> None:
    c = cache()
    for t in (0, 500, 1000):
        c.prepare(t * MS, Transform(), 'rig')
        c.push(t * MS, Transform(), feature(t))
    h = c.prepare(200 * MS, Transform(), 'rig')  # bag loop
    assert h.reset is ResetReason.TIME_BACKWARDS and h.valid.sum() == 0
    assert c.resets[ResetReason.TIME_BACKWARDS] == 1


def drive_resets(hz: float, seconds: float, speed: float) -> tuple[BevCache, list]:
    """Frames at ``hz`` along x at ``speed`` m/s (default jump policy); the reset reason of every frame."""
    c = cache()
    reasons = []
    for i in range(int(seconds * hz) + 1):
        stamp = round(i * 1e9 / hz)
        pose = Transform.from_yaw(0.3, [speed * stamp / 1e9, 0.0, 0.0])
        h = c.prepare(stamp, pose, 'rig')
        c.push(stamp, pose, feature(i))
        reasons.append(h.reset)
    return c, reasons


@pytest.mark.parametrize('hz', [2.0, 12.0])
def test_highway_speed_keeps_the_history(hz: float) -> None:
    c, reasons = drive_resets(hz, 5.0, 30.0)  # 30 m/s = 108 km/h: 15 m between 2 Hz frames
    assert reasons == [None] * len(reasons)
    assert not c.resets
    h = c.prepare(round(5.5 * 1e9), Transform.from_yaw(0.3, [30.0 * 5.5, 0.0, 0.0]), 'rig')
    assert h.reset is None and h.valid.tolist() == [1.0, 1.0]


def test_reset_on_ego_jump_relative_to_time() -> None:
    c, reasons = drive_resets(12.0, 2.0, 30.0)
    assert c.entries and reasons[-1] is None
    newest = c.entries[-1]
    stamp = newest.stamp_ns + round(1e9 / 12)
    teleport = Transform.from_yaw(0.3, newest.pose.translation + [0.0, 50.0, 0.0])  # relocalisation, 50 m
    h = c.prepare(stamp, teleport, 'rig')
    assert h.reset is ResetReason.EGO_JUMP and h.valid.sum() == 0 and not c.entries
    # the bound is max_speed * dt + jump_margin: 60 m/s * 0.5 s + 2 m = 32 m
    c = cache()
    c.prepare(0, Transform(), 'rig')
    c.push(0, Transform(), feature(1.0))
    assert c.prepare(500 * MS, Transform(translation=[31.9, 0, 0]), 'rig').reset is None
    assert c.prepare(500 * MS, Transform(translation=[0, 32.1, 0]), 'rig').reset is ResetReason.EGO_JUMP
    c = cache(max_speed=10.0, jump_margin=0.5)
    c.prepare(0, Transform(), 'rig')
    c.push(0, Transform(), feature(1.0))
    assert c.prepare(100 * MS, Transform(translation=[1.4, 0, 0]), 'rig').reset is None
    assert c.prepare(100 * MS, Transform(translation=[1.6, 0, 0]), 'rig').reset is ResetReason.EGO_JUMP


def test_reset_on_pose_that_is_not_finite() -> None:
    c = cache()
    c.prepare(0, Transform(), 'rig')
    c.push(0, Transform(), feature(1.0))
    # a pose built around the checks of Transform (as a foreign pose object could be)
    bad = Transform()
    object.__setattr__(bad, 'translation', np.array([np.nan, 0.0, 0.0]))
    h = c.prepare(500 * MS, bad, 'rig')
    assert h.reset is ResetReason.BAD_POSE and h.valid.sum() == 0 and np.isfinite(h.theta).all()
    # finite poses whose distance overflows
    c.push(500 * MS, Transform(translation=[1e308, 0.0, 0.0]), feature(1.0))
    h = c.prepare(1000 * MS, Transform(translation=[-1e308, 0.0, 0.0]), 'rig')
    assert h.reset is ResetReason.BAD_POSE and c.resets[ResetReason.BAD_POSE] == 2


def test_bad_jump_policy_is_refused() -> None:
    with pytest.raises(TemporalError, match='max_speed'):
        TemporalConfig(max_speed=0.0)
    with pytest.raises(TemporalError, match='jump_margin'):
        TemporalConfig(jump_margin=-1.0)


def reference_slots(stamps: list[int], stamp: int, config: TemporalConfig) -> list[int]:
    """The slot rule written out: nearest to stamp - offset, within tolerance, strictly older than stamp."""
    out = []
    for offset in config.offsets:
        target = stamp - round(offset * 1e9)
        if not stamps:
            out.append(-1)
            continue
        best = min(range(len(stamps)), key=lambda i: (abs(stamps[i] - target), i))
        ok = abs(stamps[best] - target) <= config.tolerance * 1e9 and stamps[best] < stamp
        out.append(best if ok else -1)
    return out


def test_select_slots_rule() -> None:
    config = TemporalConfig()  # offsets 0.5 s, 1.0 s, tolerance 0.25 s
    stamps = np.array([0, 400, 700, 1000], np.int64) * MS
    # targets 500 ms (400 ms is nearer than 700 ms) and 0 ms
    np.testing.assert_array_equal(select_slots(stamps, 1000 * MS, config), [1, 0])
    assert select_slots(stamps, 1000 * MS, config).dtype == np.int64
    # nothing near 1.0 s ago, and an entry at the current stamp never fills a slot
    np.testing.assert_array_equal(select_slots(np.array([1000], np.int64) * MS, 1000 * MS, config), [-1, -1])
    np.testing.assert_array_equal(select_slots(np.zeros(0, np.int64), 0, config), [-1, -1])
    rng = np.random.default_rng(4)
    for _ in range(300):
        stamps = np.sort(rng.choice(np.arange(0, 2000, 10), size=rng.integers(0, 8), replace=False)).astype(np.int64)
        now = int(rng.integers(0, 2200))
        got = select_slots(stamps * MS, now * MS, config)
        assert got.tolist() == reference_slots((stamps * MS).tolist(), now * MS, config), (stamps, now)


def test_prepare_uses_select_slots() -> None:
    c = cache()
    for t in (0, 330, 620, 910):
        c.prepare(t * MS, Transform(), 'rig')
        c.push(t * MS, Transform(), feature(t))
    h = c.prepare(1200 * MS, Transform(), 'rig')
    picks = select_slots(np.array([e.stamp_ns for e in c.entries]), 1200 * MS, c.config)
    expected = [c.entries[i].stamp_ns if i >= 0 else 0 for i in picks]
    assert h.stamps_ns.tolist() == expected and h.valid.tolist() == [float(i >= 0) for i in picks]


def test_rig_as_calibration() -> None:
    c = cache()
    rig = Rig.nuscenes(800, 450)
    c.prepare(0, Transform(), calibration=rig)
    c.push(0, Transform(), feature(1.0))
    same = Rig.nuscenes(800, 450)  # equal numbers, another object
    h = c.prepare(500 * MS, Transform(), calibration=same)
    assert h.reset is None and h.valid.tolist() == [1.0, 0.0]
    c.push(500 * MS, Transform(), feature(2.0))
    assert c.prepare(1000 * MS, Transform(), calibration=rig.digest()).reset is None  # the digest string works too
    c.push(1000 * MS, Transform(), feature(3.0))
    h = c.prepare(1500 * MS, Transform(), calibration=Rig.nuscenes(1600, 900))
    assert h.reset is ResetReason.CALIBRATION and h.valid.sum() == 0
    with pytest.raises(TemporalError, match='calibration'):
        c.prepare(2000 * MS, Transform(), calibration=3)


def test_reset_on_calibration_change() -> None:
    c = cache()
    c.prepare(0, Transform(), 'rig-a')
    c.push(0, Transform(), feature(1.0))
    h = c.prepare(500 * MS, Transform(), 'rig-b')
    assert h.reset is ResetReason.CALIBRATION and h.valid.sum() == 0
    c.push(500 * MS, Transform(), feature(1.0))
    assert c.prepare(1000 * MS, Transform(), 'rig-b').reset is None


def test_reset_on_request() -> None:
    c = cache()
    c.prepare(0, Transform(), 'rig')
    c.push(0, Transform(), feature(1.0))
    c.reset()
    assert c.resets[ResetReason.REQUESTED] == 1
    assert c.prepare(500 * MS, Transform(), 'rig').valid.sum() == 0


def test_entries_older_than_span_are_dropped() -> None:
    c = cache(history_span=1.5)
    for t in range(0, 3001, 250):
        c.prepare(t * MS, Transform(), 'rig')
        c.push(t * MS, Transform(), feature(t))
    assert min(e.stamp_ns for e in c.entries) >= 1500 * MS


def test_bad_inputs() -> None:
    with pytest.raises(TemporalError, match='history_span'):
        TemporalConfig(offsets=(0.5, 2.0), history_span=1.5)
    c = cache()
    with pytest.raises(TemporalError, match='shape'):
        c.push(0, Transform(), np.zeros((4, 10, 10), np.float32))


def world_field(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A smooth static world: a sum of soft blobs and a gentle wave, in map coordinates [m]."""
    out = 0.3 * np.sin(x / 7.0) * np.cos(y / 5.0)
    for cx, cy, s in [(112.0, 48.0, 3.0), (95.0, 62.0, 4.0), (120.0, 70.0, 2.5), (85.0, 40.0, 5.0)]:
        out += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))
    return out


def bev_of_world(pose: Transform, bev_grid: GridSpec) -> np.ndarray:
    """(1, Y, X) map of the world field seen from ``pose``."""
    xs, ys = bev_grid.axis_centers(0), bev_grid.axis_centers(1)
    gx, gy = np.meshgrid(xs, ys, indexing='xy')  # (Y, X)
    ego = np.stack([gx, gy, np.zeros_like(gx)], -1)
    world = pose.apply(ego)
    return world_field(world[..., 0], world[..., 1])[None].astype(np.float32)


@pytest.mark.parametrize('motion', [(3.0, 0.0, 0.0), (2.0, 1.5, 0.25), (-1.0, 4.0, -0.6)])
def test_warp_of_static_world_matches_map_at_new_pose(motion) -> None:
    torch = pytest.importorskip('torch')
    F = torch.nn.functional
    grid_shape = (1, 200, 200)
    c = BevCache(TemporalConfig(offsets=(0.5,), history_span=1.0), GRID, grid_shape)
    prev_pose = Transform.from_yaw(0.4, [100.0, 50.0, 0.0])
    dx, dy, dyaw = motion
    cur_pose = prev_pose @ Transform.from_yaw(dyaw, [dx, dy, 0.0])
    prev_map = bev_of_world(prev_pose, c.bev_grid)
    c.prepare(0, prev_pose, 'rig')
    c.push(0, prev_pose, prev_map)
    history = c.prepare(500 * MS, cur_pose, 'rig')
    assert history.valid[0] == 1.0
    theta = torch.from_numpy(history.theta)
    sample = F.affine_grid(theta, (1, 1, 200, 200), align_corners=True)
    warped = F.grid_sample(torch.from_numpy(history.bev), sample, align_corners=True, padding_mode='zeros')[
        0, 0
    ].numpy()
    expected = bev_of_world(cur_pose, c.bev_grid)[0]
    inside = (sample[0].abs() <= 1.0).all(-1).numpy()  # cells that the previous map covers
    assert inside.mean() > 0.6
    error = np.abs(warped - expected)[inside]
    assert error.max() < 0.02, error.max()  # bilinear interpolation error of a smooth field at 0.4 m cells
    # and it is the warp that does it: without it the maps disagree
    assert np.abs(history.bev[0, 0] - expected)[inside].max() > 0.2
    # the network's own warp (what the exported graph runs) gives the same map
    from occ_perception.model.bev import HistoryWarp

    feeds = {k: torch.from_numpy(v) for k, v in history.feeds().items()}
    in_graph = HistoryWarp((200, 200))(feeds['history_bev'], feeds['history_theta'], feeds['history_valid'])
    np.testing.assert_allclose(in_graph[0, 0].numpy(), warped, atol=1e-5)


def test_cache_feeds_a_temporal_network() -> None:
    """Three frames at 2 Hz through the tiny temporal network: the history fills slot by slot."""
    torch = pytest.importorskip('torch')
    from occ_perception.model.config import get_config
    from occ_perception.model.network import OccNet
    from occ_perception.runtime.export import sample_inputs
    from occ_perception.runtime.torch_backend import TorchBackend

    config = get_config('tiny', history=2)
    torch.manual_seed(0)
    net = OccNet(config)
    backend = TorchBackend(net, net.input_specs(), net.output_names())
    bev_spec = next(s for s in net.output_specs() if s.name == 'bev_feature')
    c = BevCache(TemporalConfig(offsets=config.history_offsets), GRID, bev_spec.shape)
    feeds = sample_inputs(net)
    seen = []
    for i in range(3):
        stamp, pose = i * 500 * MS, Transform(translation=[2.0 * i, 0.0, 0.0])
        history = c.prepare(stamp, pose, 'nuscenes')
        feeds.update(history.feeds())
        out = backend.run(feeds)
        c.push(stamp, pose, out['bev_feature'])
        seen.append(history.valid.tolist())
    assert seen == [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]
    assert out['labels'].shape == GRID.shape


# A non-square grid whose origin is not centred on the ego: x in [-24, 40), y in [-40, 56) at 0.4 m.
OFFSET_GRID = GridSpec(lower=(-24.0, -40.0, -1.0), size=(160, 240, 16), voxel_size=0.4)


@pytest.mark.parametrize('motion', [(3.0, 0.0, 0.0), (2.0, 1.5, 0.25), (-1.0, 4.0, -0.6)])
def test_warp_on_an_offset_non_square_grid(motion) -> None:
    """The same static-world check as above on 160 x 240 cells; a swap of x and y cannot pass it."""
    torch = pytest.importorskip('torch')
    F = torch.nn.functional
    shape = (1, 240, 160)  # (C, Y, X)
    c = BevCache(TemporalConfig(offsets=(0.5,), history_span=1.0), OFFSET_GRID, shape)
    assert c.bev_grid.shape[:2] == (160, 240) and c.bev_grid.lower[:2] == (-24.0, -40.0)
    prev_pose = Transform.from_yaw(0.4, [90.0, 40.0, 0.0])
    dx, dy, dyaw = motion
    cur_pose = prev_pose @ Transform.from_yaw(dyaw, [dx, dy, 0.0])
    prev_map = bev_of_world(prev_pose, c.bev_grid)
    assert prev_map.shape == shape
    c.prepare(0, prev_pose, 'rig')
    c.push(0, prev_pose, prev_map)
    history = c.prepare(500 * MS, cur_pose, 'rig')
    theta = torch.from_numpy(history.theta)
    sample = F.affine_grid(theta, (1, 1, 240, 160), align_corners=True)
    warped = F.grid_sample(torch.from_numpy(history.bev), sample, align_corners=True)[0, 0].numpy()
    expected = bev_of_world(cur_pose, c.bev_grid)[0]
    inside = (sample[0].abs() <= 1.0).all(-1).numpy()
    assert inside.mean() > 0.6
    assert np.abs(warped - expected)[inside].max() < 0.02
    assert np.abs(history.bev[0, 0] - expected)[inside].max() > 0.2
    from occ_perception.model.bev import HistoryWarp

    feeds = {k: torch.from_numpy(v) for k, v in history.feeds().items()}
    in_graph = HistoryWarp((160, 240))(feeds['history_bev'], feeds['history_theta'], feeds['history_valid'])
    assert tuple(in_graph.shape) == (1, 1, 240, 160)
    np.testing.assert_allclose(in_graph[0, 0].numpy(), warped, atol=1e-5)


def test_warp_moves_a_cell_to_the_right_cell_on_an_offset_grid() -> None:
    """Exact cell arithmetic without interpolation: a pure translation by whole cells along x, then y."""
    torch = pytest.importorskip('torch')
    F = torch.nn.functional
    c = BevCache(TemporalConfig(offsets=(0.5,), history_span=1.0), OFFSET_GRID, (1, 240, 160))
    for step, (di, dj) in [((2.0, 0.0), (5, 0)), ((0.0, -3.2), (0, -8))]:  # metres -> cells (x, y)
        c.reset()
        prev_map = np.zeros((1, 240, 160), np.float32)
        ix, iy = 100, 30  # the cell at x = -24 + 100.5 * 0.4 = 16.2 m, y = -40 + 30.5 * 0.4 = -27.8 m
        prev_map[0, iy, ix] = 1.0
        c.prepare(0, Transform(), 'rig')
        c.push(0, Transform(), prev_map)
        history = c.prepare(500 * MS, Transform(translation=[step[0], step[1], 0.0]), 'rig')
        sample = F.affine_grid(torch.from_numpy(history.theta), (1, 1, 240, 160), align_corners=True)
        warped = F.grid_sample(torch.from_numpy(history.bev), sample, align_corners=True)[0, 0].numpy()
        # the ego moved by +step, so a fixed cell appears at -step in the new ego frame
        peak = np.unravel_index(np.argmax(warped), warped.shape)
        assert peak == (iy - dj, ix - di) and warped[peak] == pytest.approx(1.0, abs=1e-5)
