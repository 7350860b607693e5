"""occ_perception_msgs through the rosbags typestores: CDR round trips and field conversion."""

from __future__ import annotations

import array

import numpy as np
import pytest
from occ_perception.grid import CLASS_NAMES, FREE_LABEL, GridSpec, class_colors
from occ_perception.messages import (
    POINT_DTYPE,
    MessagesError,
    MessageTypes,
    find_msg_dir,
    flow_from_dense,
    make_occupancy_flow,
    make_pointcloud2,
    make_semantic_occupancy,
    msg_definitions,
    occupancy_points,
    read_occupancy_flow,
    read_pointcloud2,
    read_semantic_occupancy,
    rosbags_typestore,
)

DISTROS = ['humble', 'jazzy']
STAMP = 1_533_151_603_512_404_000


def roundtrip(distro: str, msg, msgtype: str):
    store = rosbags_typestore(distro)
    raw = store.serialize_cdr(msg, msgtype)
    return store.deserialize_cdr(bytes(raw), msgtype)


def test_definitions_come_from_the_msg_package(repo_root) -> None:
    folder = find_msg_dir()
    assert folder.resolve() == (repo_root / 'occ_perception_msgs' / 'msg').resolve()
    defs = msg_definitions()
    assert defs['occ_perception_msgs/msg/SemanticOccupancy'] == (folder / 'SemanticOccupancy.msg').read_text()


def test_definitions_found_through_env(tmp_path, monkeypatch, repo_root) -> None:
    for p in (repo_root / 'occ_perception_msgs' / 'msg').glob('*.msg'):
        (tmp_path / p.name).write_text(p.read_text())
    monkeypatch.setenv('OCC_PERCEPTION_MSGS_DIR', str(tmp_path))
    assert find_msg_dir() == tmp_path


@pytest.mark.parametrize('distro', DISTROS)
def test_semantic_occupancy_roundtrip_default_grid(distro: str) -> None:
    grid = GridSpec()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 18, size=grid.shape, dtype=np.uint8)
    confidence = rng.integers(0, 256, size=grid.shape, dtype=np.uint8)
    types = MessageTypes.rosbags(distro)
    msg = make_semantic_occupancy(types, STAMP, 'base_link', grid, labels, confidence)
    back = read_semantic_occupancy(roundtrip(distro, msg, 'occ_perception_msgs/msg/SemanticOccupancy'))
    assert back.labels.shape == (200, 200, 16)
    np.testing.assert_array_equal(back.labels, labels)
    np.testing.assert_array_equal(back.confidence, confidence)
    assert back.grid == grid
    assert back.stamp_ns == STAMP and back.frame_id == 'base_link'
    assert back.class_names == CLASS_NAMES and back.free_label == FREE_LABEL


@pytest.mark.parametrize('distro', DISTROS)
def test_semantic_occupancy_without_confidence(distro: str) -> None:
    grid = GridSpec(lower=(-10.0, -8.0, -1.0), size=(50, 40, 16), voxel_size=0.4)
    labels = np.full(grid.shape, FREE_LABEL, np.uint8)
    labels[3, 4, 5] = 4
    msg = make_semantic_occupancy(MessageTypes.rosbags(distro), 5, 'base_link', grid, labels)
    back = read_semantic_occupancy(roundtrip(distro, msg, 'occ_perception_msgs/msg/SemanticOccupancy'))
    assert back.confidence is None
    assert back.labels[3, 4, 5] == 4 and back.grid == grid


@pytest.mark.parametrize('distro', DISTROS)
def test_flow_roundtrip_30000_entries(distro: str) -> None:
    grid = GridSpec()
    rng = np.random.default_rng(1)
    indices = np.sort(rng.choice(grid.num_voxels, size=30_000, replace=False)).astype(np.uint32)
    velocity = rng.normal(0, 5, size=(30_000, 2)).astype(np.float32)
    msg = make_occupancy_flow(MessageTypes.rosbags(distro), STAMP, 'base_link', grid, indices, velocity)
    back = read_occupancy_flow(roundtrip(distro, msg, 'occ_perception_msgs/msg/OccupancyFlow'))
    np.testing.assert_array_equal(back.indices, indices)
    np.testing.assert_array_equal(back.velocity, velocity)
    assert back.grid == grid and back.stamp_ns == STAMP


def test_flow_from_dense_keeps_occupied_voxels_only() -> None:
    grid = GridSpec(size=(4, 5, 3))
    labels = np.full(grid.shape, FREE_LABEL, np.uint8)
    labels[1, 2, 0] = 4
    labels[3, 4, 2] = 11
    labels[0, 0, 0] = 255
    flow = np.zeros(grid.shape + (2,), np.float32)
    flow[1, 2, 0] = (3.0, -1.0)
    flow[2, 2, 2] = (9.0, 9.0)  # a free voxel: never sent
    indices, velocity = flow_from_dense(labels, flow)
    expected = np.ravel_multi_index(([1, 3], [2, 4], [0, 2]), grid.shape)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_array_equal(velocity, [[3.0, -1.0], [0.0, 0.0]])
    msg = make_occupancy_flow(MessageTypes.rosbags(), 0, 'base_link', grid, indices, velocity)
    dense = read_occupancy_flow(msg).dense()
    np.testing.assert_array_equal(dense[1, 2, 0], [3.0, -1.0])
    assert np.count_nonzero(dense) == 2


@pytest.mark.parametrize('distro', DISTROS)
def test_pointcloud2_roundtrip(distro: str) -> None:
    grid = GridSpec()
    labels = np.full(grid.shape, FREE_LABEL, np.uint8)
    labels[100, 110, 3] = 4
    labels[0, 199, 15] = 16
    flow = np.zeros(grid.shape + (2,), np.float32)
    flow[100, 110, 3] = (2.5, 0.5)
    points = occupancy_points(grid, labels, flow)
    assert points.size == 2
    msg = make_pointcloud2(MessageTypes.rosbags(distro), STAMP, 'base_link', points)
    back = read_pointcloud2(roundtrip(distro, msg, 'sensor_msgs/msg/PointCloud2'))
    assert back.dtype.names == POINT_DTYPE.names
    # flat-index order: (0, 199, 15) comes before (100, 110, 3)
    np.testing.assert_allclose(back['x'], [-40 + 0.2, 100 * 0.4 - 40 + 0.2], atol=1e-5)
    np.testing.assert_allclose(back['y'], [199 * 0.4 - 40 + 0.2, 110 * 0.4 - 40 + 0.2], atol=1e-5)
    np.testing.assert_allclose(back['z'], [15 * 0.4 - 1 + 0.2, 3 * 0.4 - 1 + 0.2], atol=1e-5)
    np.testing.assert_array_equal(back['label'], [16, 4])
    np.testing.assert_array_equal(back['vx'], [0.0, 2.5])
    np.testing.assert_array_equal(back['vy'], [0.0, 0.5])
    rgb = back['rgb'].view(np.uint32)
    colors = class_colors()
    assert rgb[1] == (int(colors[4, 0]) << 16 | int(colors[4, 1]) << 8 | int(colors[4, 2]))


def test_array_flavor_packs_bytes_for_rclpy() -> None:
    types = MessageTypes(resolve=lambda name: None, flavor='array')
    values = np.arange(10, dtype=np.float32) * 0.5
    packed = types.pack(values, 'float32')
    assert isinstance(packed, array.array) and packed.typecode == 'f'
    assert packed.tobytes() == values.tobytes()
    labels = np.arange(200, dtype=np.uint8)
    assert types.pack(labels, 'uint8').tobytes() == labels.tobytes()
    indices = np.array([0, 7, 2**31], dtype=np.uint32)
    assert list(types.pack(indices, 'uint32')) == [0, 7, 2**31]


def test_reading_fields_given_as_array_array() -> None:
    """rclpy hands uint8[]/float32[] fields over as array.array; reading must accept them."""
    grid = GridSpec(size=(2, 3, 4))
    labels = np.arange(24, dtype=np.uint8).reshape(grid.shape)
    msg = make_semantic_occupancy(MessageTypes.rosbags(), 0, 'base_link', grid, labels)
    msg.labels = array.array('B', labels.tobytes())
    msg.confidence = array.array('B')
    back = read_semantic_occupancy(msg)
    np.testing.assert_array_equal(back.labels, labels)


def test_bad_inputs_are_named() -> None:
    grid = GridSpec()
    types = MessageTypes.rosbags()
    with pytest.raises(MessagesError, match='labels: expected shape'):
        make_semantic_occupancy(types, 0, 'base_link', grid, np.zeros((10, 10, 10), np.uint8))
    with pytest.raises(MessagesError, match='labels: expected uint8'):
        make_semantic_occupancy(types, 0, 'base_link', grid, np.zeros(grid.shape, np.int32))
    with pytest.raises(MessagesError, match='velocity'):
        make_occupancy_flow(types, 0, 'base_link', grid, np.zeros(3, np.uint32), np.zeros((2, 2), np.float32))
    with pytest.raises(MessagesError, match='indices'):
        make_occupancy_flow(types, 0, 'base_link', grid, np.array([grid.num_voxels]), np.zeros((1, 2), np.float32))
    small = GridSpec(size=(2, 2, 2))
    msg = make_semantic_occupancy(types, 0, 'base_link', small, np.zeros(small.shape, np.uint8))
    msg.labels = np.zeros(7, np.uint8)
    with pytest.raises(MessagesError, match='expected 8 values'):
        read_semantic_occupancy(msg)
    with pytest.raises(MessagesError, match='distro'):
        rosbags_typestore('rolling')


# A non-square grid whose origin is not centred on the ego: x in [-24, 40), y in [-40, 56) at 0.4 m.
OFFSET_GRID = GridSpec(lower=(-24.0, -40.0, -1.0), size=(160, 240, 16), voxel_size=0.4)
# (ix, iy, iz), label, (vx, vy): chosen so that no two share an index value
VOXELS = [((150, 20, 3), 4, (1.5, -0.5)), ((5, 230, 12), 9, (-2.0, 3.0)), ((80, 199, 0), 7, (0.25, 0.75))]


def _offset_grid_arrays() -> tuple[np.ndarray, np.ndarray]:
    labels = np.full(OFFSET_GRID.shape, FREE_LABEL, np.uint8)
    flow = np.zeros(OFFSET_GRID.shape + (2,), np.float32)
    for index, label, velocity in VOXELS:
        labels[index] = label
        flow[index] = velocity
    return labels, flow


def _flat(ix: int, iy: int, iz: int) -> int:
    return (ix * 240 + iy) * 16 + iz  # DESIGN.md: (ix * size_y + iy) * size_z + iz


@pytest.mark.parametrize('distro', DISTROS)
def test_offset_non_square_grid_through_every_message(distro: str) -> None:
    labels, flow = _offset_grid_arrays()
    types = MessageTypes.rosbags(distro)

    msg = roundtrip(
        distro,
        make_semantic_occupancy(types, STAMP, 'base_link', OFFSET_GRID, labels),
        'occ_perception_msgs/msg/SemanticOccupancy',
    )
    assert (msg.info.size_x, msg.info.size_y, msg.info.size_z) == (160, 240, 16)
    assert (msg.info.origin.position.x, msg.info.origin.position.y, msg.info.origin.position.z) == (-24.0, -40.0, -1.0)
    raw = np.asarray(msg.labels)
    for (ix, iy, iz), label, _ in VOXELS:
        assert raw[_flat(ix, iy, iz)] == label
    assert np.count_nonzero(raw != FREE_LABEL) == len(VOXELS)
    back = read_semantic_occupancy(msg)
    assert back.grid == OFFSET_GRID
    np.testing.assert_array_equal(back.labels, labels)

    indices, velocity = flow_from_dense(labels, flow)
    msg = roundtrip(
        distro,
        make_occupancy_flow(types, STAMP, 'base_link', OFFSET_GRID, indices, velocity),
        'occ_perception_msgs/msg/OccupancyFlow',
    )
    got = dict(zip(np.asarray(msg.indices).tolist(), zip(np.asarray(msg.velocity_x), np.asarray(msg.velocity_y))))
    assert got == {_flat(*index): velocity for index, _, velocity in VOXELS}
    np.testing.assert_array_equal(read_occupancy_flow(msg).dense(), flow)

    points = occupancy_points(OFFSET_GRID, labels, flow)
    msg = roundtrip(distro, make_pointcloud2(types, STAMP, 'base_link', points), 'sensor_msgs/msg/PointCloud2')
    cloud = read_pointcloud2(msg)
    by_label = {int(p['label']): p for p in cloud}
    assert sorted(by_label) == sorted(label for _, label, _ in VOXELS)
    for (ix, iy, iz), label, (vx, vy) in VOXELS:
        p = by_label[label]
        # voxel centre = lower + (index + 0.5) * 0.4, written out per axis
        expected = (-24.0 + (ix + 0.5) * 0.4, -40.0 + (iy + 0.5) * 0.4, -1.0 + (iz + 0.5) * 0.4)
        np.testing.assert_allclose((p['x'], p['y'], p['z']), expected, atol=1e-5)
        assert (p['vx'], p['vy']) == (vx, vy)


def test_arrays_in_the_wrong_axis_order_are_refused() -> None:
    """(Y, X, Z) arrays hold as many voxels as (X, Y, Z) ones; they must not pass as the grid."""
    labels, flow = _offset_grid_arrays()
    swapped = np.ascontiguousarray(labels.transpose(1, 0, 2))
    types = MessageTypes.rosbags('jazzy')
    with pytest.raises(MessagesError, match=r'labels.*\(160, 240, 16\)'):
        make_semantic_occupancy(types, STAMP, 'base_link', OFFSET_GRID, swapped)
    with pytest.raises(MessagesError, match=r'labels.*\(160, 240, 16\)'):
        occupancy_points(OFFSET_GRID, swapped)
    with pytest.raises(MessagesError, match=r'flow.*\(160, 240, 16, 2\)'):
        occupancy_points(OFFSET_GRID, labels, np.ascontiguousarray(flow.transpose(1, 0, 2, 3)))
