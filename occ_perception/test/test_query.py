"""Planner-side look-ups (VoxelQuery) on messages built by outputs.py, through rosbags CDR, on a non-square grid."""

from __future__ import annotations

import numpy as np
import pytest
from occ_perception.grid import CLASS_NAMES, FREE_LABEL, GridSpec
from occ_perception.messages import MessageTypes, rosbags_typestore
from occ_perception.outputs import OccFrame, costmap_values, occupancy_flow_msg, semantic_occupancy_msg
from occ_perception.query import QueryError, VoxelQuery

STAMP = 1_700_000_000_250_000_000
GRID = GridSpec(lower=(-8.0, -6.0, -1.0), size=(50, 30, 16), voxel_size=0.4)  # x [-8, 12), y [-6, 6)
CAR, DRIVE, SIDEWALK, PEDESTRIAN = 4, 11, 13, 7


def _cdr(msg, msgtype: str, distro: str = 'jazzy'):
    store = rosbags_typestore(distro)
    return store.deserialize_cdr(bytes(store.serialize_cdr(msg, msgtype)), msgtype)


def _index(x: float, y: float, z: float) -> tuple[int, int, int]:
    return tuple(int(np.floor((v - lo) / GRID.voxel_size + 1e-9)) for v, lo in zip((x, y, z), GRID.lower))  # type: ignore


def _frame() -> OccFrame:
    """Road layer at z in [-0.2, 0.2); a car at x [6, 8) m, y [-0.8, 0.8) m, z [0.2, 1.8) moving (3, -1) m/s; a
    pedestrian column at (4.2, 3.0) moving (0, 1.5) m/s; a sidewalk strip at y >= 4.4; an unobserved patch behind;
    a confidence-0 barrier-like car column at (10.2, 0.2)."""
    labels = np.full(GRID.shape, FREE_LABEL, np.uint8)
    flow = np.zeros(GRID.shape + (2,), np.float32)
    conf = np.full(GRID.shape, 200, np.uint8)
    road_z = _index(0, 0, 0.0)[2]
    labels[:, :, road_z] = DRIVE
    sy = _index(0, 4.4, 0)[1]
    labels[:, sy:, road_z] = SIDEWALK
    x0, y0, z0 = _index(6.0, -0.8, 0.2)
    x1, y1, z1 = _index(8.0, 0.8, 1.8)
    labels[x0:x1, y0:y1, z0:z1] = CAR
    flow[x0:x1, y0:y1, z0:z1] = (3.0, -1.0)
    px, py, _ = _index(4.2, 3.0, 0)
    labels[px, py, z0 : z0 + 4] = PEDESTRIAN
    flow[px, py, z0 : z0 + 4] = (0.0, 1.5)
    ux = _index(-8.0, 0, 0)[0]
    labels[ux : ux + 3, :, :] = 255
    gx, gy, _ = _index(10.2, 0.2, 0)
    labels[gx, gy, z0 : z0 + 2] = CAR
    conf[gx, gy, :] = 0
    return OccFrame(stamp_ns=STAMP, grid=GRID, labels=labels, confidence=conf, flow=flow)


@pytest.fixture(params=['numpy', 'array'])
def query(request) -> VoxelQuery:
    """Messages from outputs.py (rosbags classes; 'array' passes array.array fields as rclpy would), through CDR."""
    store = rosbags_typestore('jazzy')
    types = MessageTypes(resolve=lambda name: store.types[name], flavor=request.param)
    frame = _frame()
    sem = semantic_occupancy_msg(frame, types)
    flow = occupancy_flow_msg(frame, types)
    if request.param == 'numpy':
        sem = _cdr(sem, 'occ_perception_msgs/msg/SemanticOccupancy')
        flow = _cdr(flow, 'occ_perception_msgs/msg/OccupancyFlow')
    return VoxelQuery.from_messages(sem, flow)


def test_point_queries_name_the_class_and_its_velocity(query):
    car = query.at(7.1, 0.1, 1.0)
    assert car.inside and car.occupied and car.label == CAR and car.name == 'car'
    assert car.index == _index(7.1, 0.1, 1.0)
    assert car.velocity == pytest.approx((3.0, -1.0)) and car.speed == pytest.approx(np.hypot(3.0, 1.0))
    assert car.confidence == pytest.approx(200 / 255)
    road = query.at(-2.0, -3.0, 0.0)
    assert road.label == DRIVE and road.name == CLASS_NAMES[DRIVE] and road.speed == 0.0
    free = query.at(7.1, 0.1, 2.5)  # above the car
    assert free.inside and not free.occupied and free.name == 'free' and free.velocity == (0.0, 0.0)
    behind = query.at(-7.5, 0.0, 0.0)
    assert behind.inside and behind.label == 255 and behind.name == 'unobserved' and not behind.occupied
    for point in [(12.0, 0.0, 0.0), (0.0, -6.01, 0.0), (0.0, 0.0, 5.4), (float('nan'), 0.0, 0.0)]:
        out = query.at(*point)
        assert not out.inside and out.index is None and out.label == 255
    # the grid's lower corner is inside, its upper faces are not (half-open intervals)
    assert query.at(-8.0, -6.0, -1.0).index == (0, 0, 0)


def test_labels_at_is_the_vectorised_point_query(query):
    rng = np.random.default_rng(4)
    points = rng.uniform([-9, -7, -1.5], [13, 7, 6], size=(400, 3))
    expected = [query.at(*p).label for p in points]
    assert query.labels_at(points).tolist() == expected
    with pytest.raises(QueryError, match='N, 3'):
        query.labels_at(points[:, :2])


def test_column_queries_use_the_height_band_and_confidence(query):
    car = query.column(7.0, 0.0)
    assert car.inside and car.blocked and car.observed and car.top_label == CAR
    assert car.top == pytest.approx(1.8) and car.max_speed == pytest.approx(np.hypot(3.0, 1.0))
    assert car.center == pytest.approx((7.0, 0.2))  # voxel (37, 15): x [6.8, 7.2), y [0.0, 0.4)
    road = query.column(-2.0, -3.0)
    assert road.inside and road.observed and not road.blocked and road.top is None and road.max_speed == 0.0
    ped = query.column(4.3, 3.1)
    assert ped.blocked and ped.velocity == pytest.approx((0.0, 1.5)) and ped.top_label == PEDESTRIAN
    # a band above the pedestrian's head: the column is free there
    assert not query.column(4.3, 3.1, band=(2.0, 4.0)).blocked
    # confidence 0 counts as unobserved: no block from a voxel only a failed camera could have seen
    ghost = query.column(10.3, 0.3)
    assert not ghost.blocked and not ghost.observed
    assert not query.column(-7.5, 0.0).observed
    assert not query.column(20.0, 0.0).inside
    with pytest.raises(QueryError, match='z_max > z_min'):
        query.column(0.0, 0.0, band=(1.0, 1.0))


def test_blocked_map_is_the_costmaps_obstacle_layer(query):
    frame = _frame()
    cost = costmap_values(frame.labels, frame.grid, frame.confidence)
    np.testing.assert_array_equal(query.blocked_map(), cost == 100)
    assert query.blocked_map().shape == (50, 30)


def test_first_blocked_ahead_finds_the_car_not_the_pedestrian_beside_the_lane(query):
    found = query.first_blocked_ahead(max_distance=12.0, half_width=1.0)
    assert found is not None
    x, column = found
    assert x == pytest.approx(6.2) and column.top_label == CAR and column.blocked
    # a wider lane reaches the pedestrian at x = 4.2 m first
    x_wide, column_wide = query.first_blocked_ahead(max_distance=12.0, half_width=3.2)
    assert x_wide == pytest.approx(4.2) and column_wide.top_label == PEDESTRIAN
    assert query.first_blocked_ahead(max_distance=5.0, half_width=1.0) is None


def test_messages_of_different_frames_are_refused():
    store = rosbags_typestore('humble')
    types = MessageTypes(resolve=lambda name: store.types[name])
    frame = _frame()
    sem = semantic_occupancy_msg(frame, types)
    later = OccFrame(stamp_ns=STAMP + 1, grid=GRID, labels=frame.labels, flow=frame.flow)
    with pytest.raises(QueryError, match='stamp'):
        VoxelQuery.from_messages(sem, occupancy_flow_msg(later, types))
    other = GridSpec(lower=(-8.0, -6.0, -1.0), size=(50, 30, 16), voxel_size=0.5)
    moved = OccFrame(stamp_ns=STAMP, grid=other, labels=frame.labels, flow=frame.flow)
    with pytest.raises(QueryError, match='grid'):
        VoxelQuery.from_messages(sem, occupancy_flow_msg(moved, types))
    # semantics alone: no velocities
    alone = VoxelQuery.from_messages(sem)
    assert alone.at(7.1, 0.1, 1.0).label == CAR and alone.at(7.1, 0.1, 1.0).speed == 0.0
