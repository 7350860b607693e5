"""The synthetic world: determinism, content, road shape and exact motion."""

from __future__ import annotations

import numpy as np
import pytest
from occ_perception.data.synth_world import WorldError, generate_world
from occ_perception.geometry import yaw_of
from occ_perception.grid import CLASS_NAMES


@pytest.fixture(scope='module')
def world():
    return generate_world(7, duration_s=6.0)


def test_same_seed_same_world_other_seed_other_world(world):
    again = generate_world(7, duration_s=6.0)
    for name in ('prim_center', 'prim_half', 'prim_color', 'obj_s0', 'obj_rate', 'obj_static_xy', 'ground', 'dist'):
        np.testing.assert_array_equal(getattr(world, name), getattr(again, name), err_msg=name)
    other = generate_world(8, duration_s=6.0)
    assert other.prim_center.shape != world.prim_center.shape or not np.array_equal(
        other.prim_center, world.prim_center
    )


def test_world_has_most_classes_and_every_kind_of_thing(world):
    present = world.classes_present()
    assert len(present - {17}) >= 14, [CLASS_NAMES[c] for c in present]
    for name in (
        'driveable_surface',
        'sidewalk',
        'terrain',
        'manmade',
        'vegetation',
        'car',
        'pedestrian',
        'barrier',
        'traffic_cone',
        'bicycle',
    ):
        assert CLASS_NAMES.index(name) in present, name
    assert {'vehicle.car', 'human.pedestrian.adult'} <= set(world.obj_category)


def test_road_has_straights_and_curves(world):
    assert (world.road.curvatures == 0).any() and (world.road.curvatures != 0).any()
    # Continuity of position and heading at segment joints.
    for s in world.road.s0[1:]:
        (p0, p1), (h0, h1), _ = world.road.eval(np.array([s - 1e-7, s + 1e-7]))
        assert np.linalg.norm(p0 - p1) < 1e-5 and abs(h0 - h1) < 1e-5


def test_agents_move_at_their_own_speeds_and_some_are_parked(world):
    st = world.state_at(world.start_ns + 2 * 10**9)
    speed = np.linalg.norm(st.obj_velocity, axis=1)
    moving = speed > 0.1
    vehicles = np.isin(world.obj_label, [3, 4, 10])
    assert (vehicles & moving).sum() >= 5 and (vehicles & ~moving).sum() >= 3
    assert len(np.unique(np.round(speed[moving], 2))) > 10
    assert (np.isin(world.obj_label, [7]) & moving).sum() >= 5


def test_velocity_is_the_derivative_of_position(world):
    t = world.start_ns + 3 * 10**9
    dt = 1_000_000  # 1 ms
    a, b, c = world.state_at(t - dt), world.state_at(t), world.state_at(t + dt)
    fd = (c.obj_xy - a.obj_xy) / 2e-3
    np.testing.assert_allclose(b.obj_velocity, fd, atol=1e-4)
    ego_fd = (c.ego_pose.translation[:2] - a.ego_pose.translation[:2]) / 2e-3
    np.testing.assert_allclose(b.ego_velocity, ego_fd, atol=1e-4)
    # The ego drives forward along its own x axis on the ground.
    yaw = yaw_of(b.ego_pose)
    assert np.dot(b.ego_velocity, [np.cos(yaw), np.sin(yaw)]) > 3.0
    assert b.ego_pose.translation[2] == 0.0


def _footprints_overlap(c1, y1, h1, c2, y2, h2) -> bool:
    """Separating-axis test of two oriented rectangles (centre, yaw, half sizes)."""

    def axes(y):
        return [np.array([np.cos(y), np.sin(y)]), np.array([-np.sin(y), np.cos(y)])]

    def corners(c, y, h):
        a, b = axes(y)
        return np.array([c + sx * h[0] * a + sy * h[1] * b for sx in (-1, 1) for sy in (-1, 1)])

    p1, p2 = corners(c1, y1, h1), corners(c2, y2, h2)
    for ax in axes(y1) + axes(y2):
        a1, a2 = p1 @ ax, p2 @ ax
        if a1.max() < a2.min() or a2.max() < a1.min():
            return False
    return True


@pytest.mark.parametrize('seed', [1, 7])
def test_nothing_collides_during_the_scene(seed):
    """No agent overlaps another agent, a static object or the ego at any time of the scene."""
    world = generate_world(seed, duration_s=8.0)
    n = world.num_objects
    for t in np.arange(0.0, 8.01, 1.0):
        st = world.state_at(world.start_ns + int(t * 1e9))
        yaw_e = yaw_of(st.ego_pose)
        ego_xy = st.ego_pose.translation[:2] + 1.3 * np.array([np.cos(yaw_e), np.sin(yaw_e)])  # box centre
        centers = np.vstack([st.obj_xy, ego_xy])
        yaws = np.append(st.obj_yaw, yaw_e)
        half = np.vstack([world.obj_size[:, :2] / 2, [2.4, 1.0]])
        moving = np.append(world.obj_follow, True)
        reach = np.linalg.norm(half, axis=1)
        dist = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
        for i, j in zip(*np.nonzero(np.triu(dist < reach[:, None] + reach[None], 1))):
            if moving[i] or moving[j]:
                assert not _footprints_overlap(centers[i], yaws[i], half[i], centers[j], yaws[j], half[j]), (
                    f't={t}: objects {i} ({world.obj_category[i] if i < n else "ego"}) and '
                    f'{j} ({world.obj_category[j] if j < n else "ego"}) overlap'
                )


def test_bad_arguments_are_named():
    with pytest.raises(WorldError, match='seed'):
        generate_world(-1)
    with pytest.raises(WorldError, match='duration_s'):
        generate_world(0, duration_s=0.0)
