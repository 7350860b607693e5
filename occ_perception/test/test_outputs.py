"""OccFrame to messages (through real rosbags CDR) and PNG panels, on non-square grids."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from occ_perception.grid import CLASSES, FREE_LABEL, GridSpec, class_colors
from occ_perception.messages import (
    FOXGLOVE_SCHEMAS_VERSION,
    MessageTypes,
    foxglove_msg_definitions,
    read_occupancy_flow,
    read_pointcloud2,
    read_semantic_occupancy,
    rosbags_typestore,
)
from occ_perception.outputs import (
    TILE_ID_STRIDE,
    OccFrame,
    OutputsError,
    VoxelPointCache,
    costmap_msg,
    marker_array_msg,
    occupancy_flow_msg,
    pointcloud_msg,
    render_panel,
    save_png,
    semantic_occupancy_msg,
    surface_mask,
    surface_tiles,
    tile_centers,
    top_view,
    voxel_grid_msg,
)
from rosbags.interfaces import Nodetype
from rosbags.typesys import get_types_from_msg

DISTROS = ['humble', 'jazzy']
STAMP = 1_533_151_603_512_404_000
FIXTURE = Path(__file__).parent / 'fixtures' / f'foxglove_schemas_{FOXGLOVE_SCHEMAS_VERSION}.txt'
CAR, BARRIER, DRIVE, SIDEWALK, VEG = 4, 1, 11, 13, 16


def roundtrip(distro: str, msg, msgtype: str):
    store = rosbags_typestore(distro)
    raw = store.serialize_cdr(msg, msgtype)
    return store.deserialize_cdr(bytes(raw), msgtype)


def _grid(sx: int = 30, sy: int = 20, sz: int = 16) -> GridSpec:
    return GridSpec(lower=(-6.0, -4.0, -1.0), size=(sx, sy, sz), voxel_size=0.4)


def _scene(grid: GridSpec, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels with a road layer, a solid car box, scattered voxels; flow on the car (vx 3, vy -1 m/s)."""
    rng = np.random.default_rng(seed)
    labels = np.full(grid.shape, FREE_LABEL, np.uint8)
    labels[:, :, 2] = DRIVE
    scatter = rng.random(grid.shape) < 0.02
    others = np.array([c for c in range(17) if c != CAR], np.uint8)
    labels[scatter] = rng.choice(others, size=int(scatter.sum()))
    labels[4:9, 3:9, 3:7] = CAR  # the only car: a solid box, top layer z index 6
    flow = np.zeros(grid.shape + (2,), np.float32)
    flow[labels == CAR] = (3.0, -1.0)
    return labels, flow


def _surface_reference(labels: np.ndarray) -> np.ndarray:
    """Loop reference: occupied and some 6-neighbour free, unobserved or outside the grid."""
    occ = (labels != FREE_LABEL) & (labels != 255)
    out = np.zeros_like(occ)
    sx, sy, sz = labels.shape
    for x, y, z in zip(*np.nonzero(occ)):
        for dx, dy, dz in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
            nx, ny, nz = x + dx, y + dy, z + dz
            if not (0 <= nx < sx and 0 <= ny < sy and 0 <= nz < sz) or not occ[nx, ny, nz]:
                out[x, y, z] = True
    return out


# ---------------------------------------------------------------------------


def test_modules_import_without_torch():
    code = (
        'import sys; sys.modules["torch"] = None\n'
        'import occ_perception.preprocess, occ_perception.outputs\n'
        'assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]\n'
    )
    subprocess.run([sys.executable, '-c', code], check=True, cwd=Path(__file__).parents[1])


def test_occframe_checks_its_arrays():
    grid = _grid()
    labels, flow = _scene(grid)
    frame = OccFrame(stamp_ns=STAMP, grid=grid, labels=labels, flow=flow)
    assert frame.frame_id == 'base_link' and frame.timings == {} and frame.reset_reason is None
    with pytest.raises(OutputsError, match='labels.*shape'):
        OccFrame(stamp_ns=STAMP, grid=grid, labels=labels[:, :-1])
    with pytest.raises(OutputsError, match='flow.*float32'):
        OccFrame(stamp_ns=STAMP, grid=grid, labels=labels, flow=flow.astype(np.float64))
    with pytest.raises(OutputsError, match='confidence.*uint8'):
        OccFrame(stamp_ns=STAMP, grid=grid, labels=labels, confidence=np.zeros(grid.shape, np.float32))


def test_surface_mask_against_a_loop_reference():
    grid = _grid(12, 9, 7)
    rng = np.random.default_rng(3)
    labels = np.where(rng.random(grid.shape) < 0.6, np.uint8(CAR), np.uint8(FREE_LABEL)).astype(np.uint8)
    labels[rng.random(grid.shape) < 0.05] = 255
    np.testing.assert_array_equal(surface_mask(labels), _surface_reference(labels))
    # a solid box: its shell only; touching the border exposes the border faces
    box = np.full(grid.shape, FREE_LABEL, np.uint8)
    box[2:7, 1:7, 1:5] = BARRIER
    assert surface_mask(box).sum() == 5 * 6 * 4 - 3 * 4 * 2
    full = np.full(grid.shape, CAR, np.uint8)
    assert surface_mask(full).sum() == grid.num_voxels - 10 * 7 * 5


@pytest.mark.parametrize('distro', DISTROS)
def test_semantics_and_flow_messages_roundtrip(distro):
    grid = _grid()
    labels, flow = _scene(grid)
    conf = np.random.default_rng(1).integers(0, 256, grid.shape, dtype=np.uint8)
    frame = OccFrame(stamp_ns=STAMP, grid=grid, labels=labels, confidence=conf, flow=flow)
    types = MessageTypes.rosbags(distro)
    sem = read_semantic_occupancy(
        roundtrip(distro, semantic_occupancy_msg(frame, types), 'occ_perception_msgs/msg/SemanticOccupancy')
    )
    assert sem.grid == grid and sem.stamp_ns == STAMP and sem.frame_id == 'base_link'
    np.testing.assert_array_equal(sem.labels, labels)
    np.testing.assert_array_equal(sem.confidence, conf)
    back = read_occupancy_flow(
        roundtrip(distro, occupancy_flow_msg(frame, types), 'occ_perception_msgs/msg/OccupancyFlow')
    )
    dense = back.dense()
    np.testing.assert_array_equal(dense[labels == CAR], np.tile([3.0, -1.0], ((labels == CAR).sum(), 1)))
    assert back.indices.size == int(((labels != FREE_LABEL) & (labels != 255)).sum())
    assert occupancy_flow_msg(OccFrame(stamp_ns=STAMP, grid=grid, labels=labels), types) is None


@pytest.mark.parametrize('distro', DISTROS)
def test_pointcloud_holds_surface_voxels(distro):
    grid = _grid()
    labels, flow = _scene(grid)
    frame = OccFrame(stamp_ns=STAMP, grid=grid, labels=labels, flow=flow)
    msg = roundtrip(distro, pointcloud_msg(frame, MessageTypes.rosbags(distro)), 'sensor_msgs/msg/PointCloud2')
    pts = read_pointcloud2(msg)
    surface = surface_mask(labels)
    assert pts.size == int(surface.sum()) < int((labels != FREE_LABEL).sum())
    xyz = np.stack([pts['x'], pts['y'], pts['z']], axis=1).astype(np.float64)
    index, inside = grid.point_to_index(xyz)
    assert inside.all() and surface[tuple(index.T)].all()
    np.testing.assert_allclose(xyz, np.asarray(grid.lower) + (index + 0.5) * grid.voxel_size, atol=1e-5)
    np.testing.assert_array_equal(pts['label'], labels[tuple(index.T)])
    rgb = pts['rgb'].view(np.uint32)
    colors = class_colors()[pts['label']].astype(np.uint32)
    np.testing.assert_array_equal(rgb, (colors[:, 0] << 16) | (colors[:, 1] << 8) | colors[:, 2])
    car = pts['label'] == CAR
    assert car.any() and np.all(pts['vx'][car] == 3.0) and np.all(pts['vy'][car] == -1.0)
    # the car box's interior (not exposed) is not in the cloud
    assert not np.any(np.all(index == [6, 5, 4], axis=1))


@pytest.mark.parametrize('distro', DISTROS)
def test_markers_one_cube_list_per_class_and_flow_lines(distro):
    grid = _grid()
    labels, flow = _scene(grid)
    slow = labels == VEG
    flow[slow] = (0.2, 0.0)  # below the speed threshold: no arrow
    static_classes = [c.label for c in CLASSES if not c.dynamic and c.label not in (VEG, FREE_LABEL)]
    static = np.isin(labels, static_classes)
    assert static.any()
    flow[static] = (4.0, 1.0)  # fast, but on static classes (no ground truth flow there): no arrow
    frame = OccFrame(stamp_ns=STAMP, grid=grid, labels=labels, flow=flow)
    msg = roundtrip(
        distro,
        marker_array_msg(frame, MessageTypes.rosbags(distro), min_speed=0.5),
        'visualization_msgs/msg/MarkerArray',
    )
    marker_cls = rosbags_typestore(distro).types['visualization_msgs/msg/Marker']
    first, *cubes, lines = msg.markers
    assert first.action == marker_cls.DELETEALL
    surface = surface_mask(labels)
    colors = class_colors()
    covered = np.zeros(grid.shape, np.int64)
    tiled = 0
    for m in cubes:
        assert m.type == marker_cls.CUBE_LIST and m.action == marker_cls.ADD and m.ns == 'occupancy'
        label, t = m.id % TILE_ID_STRIDE, max(1, m.id // TILE_ID_STRIDE)
        assert t in (1, 2, 4, 8) and m.header.frame_id == 'base_link'
        assert (m.scale.x, m.scale.y, m.scale.z) == pytest.approx((0.4 * t, 0.4 * t, 0.4))
        np.testing.assert_allclose([m.color.r, m.color.g, m.color.b], colors[label] / 255.0, atol=1e-6)
        xyz = np.array([[p.x, p.y, p.z] for p in m.points])
        for dx in range(t):  # every voxel of every cube: inside, of the marker's class, on the surface
            for dy in range(t):
                corner = xyz + np.array([(dx + 0.5 - t / 2) * 0.4, (dy + 0.5 - t / 2) * 0.4, 0.0])
                index, inside = grid.point_to_index(corner)
                assert inside.all() and np.all(labels[tuple(index.T)] == label) and surface[tuple(index.T)].all()
                np.add.at(covered, tuple(index.T), 1)
        tiled += len(m.points) if t > 1 else 0
    assert np.array_equal(covered, surface.astype(np.int64))  # each surface voxel in exactly one cube
    assert tiled > 0  # the ground's uniform patches are merged
    assert sum(len(m.points) for m in cubes) < 0.7 * surface.sum()
    plain = marker_array_msg(frame, MessageTypes.rosbags(distro), tiles=())  # one cube per surface voxel
    present = np.unique(labels[surface])
    assert [m.id for m in plain.markers[1:-1]] == present.tolist()
    assert [len(m.points) for m in plain.markers[1:-1]] == [int((surface & (labels == c)).sum()) for c in present]
    assert lines.type == marker_cls.LINE_LIST and lines.ns == 'occupancy/flow'
    occupied = (labels != FREE_LABEL) & (labels != 255)
    top_z = np.where(occupied.any(-1), grid.shape[2] - 1 - np.argmax(occupied[..., ::-1], axis=-1), -1)
    car_on_top = (labels[4:9, 3:9, 6] == CAR) & (top_z[4:9, 3:9] == 6)  # the car is the column's highest voxel
    assert 20 <= car_on_top.sum() < 30  # some scattered voxels sit above the car
    # one arrow (shaft + two head strokes) per column whose highest voxel is the car
    assert len(lines.points) == int(car_on_top.sum()) * 6
    strokes = np.array([[p.x, p.y, p.z] for p in lines.points]).reshape(-1, 3, 2, 3)
    seg = strokes[:, 0]  # shafts
    # head strokes start at the tip and point back along the shaft, symmetric about it
    np.testing.assert_allclose(strokes[:, 1, 0], seg[:, 1])
    np.testing.assert_allclose(strokes[:, 2, 0], seg[:, 1])
    shaft = seg[:, 1] - seg[:, 0]
    for k in (1, 2):
        head = strokes[:, k, 1] - strokes[:, k, 0]
        cos = (head * -shaft).sum(axis=1) / np.linalg.norm(head, axis=1) / np.linalg.norm(shaft, axis=1)
        np.testing.assert_allclose(cos, np.cos(np.radians(25.0)), atol=1e-9)
    np.testing.assert_allclose(
        strokes[:, 1, 1] + strokes[:, 2, 1] - 2 * seg[:, 1], -2 * 0.25 * np.cos(np.radians(25.0)) * shaft, atol=1e-9
    )
    np.testing.assert_allclose(seg[:, 1, :2] - seg[:, 0, :2], np.tile([3.0, -1.0], (len(seg), 1)), atol=1e-9)
    # each arrow starts at the top car voxel of its column (z index 6)
    index, _ = grid.point_to_index(seg[:, 0])
    assert np.all(labels[tuple(index.T)] == CAR) and np.all(index[:, 2] == 6)


def _tiles_reference(grid: GridSpec, chosen: np.ndarray, labels: np.ndarray, tiles) -> dict[int, set]:
    """Loop reference of the greedy tiling: {t: {(x0, y0, z, label)}} over aligned blocks, largest first."""
    left = chosen.copy()
    out: dict[int, set] = {}
    sx, sy, sz = grid.shape
    for t in tiles:
        out[t] = set()
        for x0 in range(0, sx - t + 1, t):
            for y0 in range(0, sy - t + 1, t):
                for z in range(sz):
                    block = (slice(x0, x0 + t), slice(y0, y0 + t), z)
                    if left[block].all() and len(np.unique(labels[block])) == 1:
                        out[t].add((x0, y0, z, int(labels[x0, y0, z])))
                        left[block] = False
    out[1] = {(x, y, z, int(labels[x, y, z])) for x, y, z in zip(*np.nonzero(left))}
    return out


@pytest.mark.parametrize('seed', [0, 1])
def test_surface_tiles_equal_a_loop_reference_on_a_non_square_grid(seed):
    grid = GridSpec(lower=(-6.0, -4.0, -1.0), size=(30, 21, 5), voxel_size=0.4)  # 30, 21: not multiples of 4
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.array([DRIVE, SIDEWALK, CAR], np.uint8), size=grid.shape, p=[0.8, 0.15, 0.05])
    labels[10:18, 4:12, :] = DRIVE  # uniform patches, some aligned to 4, some only to 2
    chosen = rng.random(grid.shape) < 0.9
    flat = np.flatnonzero(chosen)
    got = surface_tiles(grid, flat, labels.reshape(-1)[flat], (4, 2))
    want = _tiles_reference(grid, chosen, labels, (4, 2))
    assert [t for t, _, _ in got] == [4, 2, 1]
    for t, first, lab in got:
        x, y, z = np.unravel_index(first, grid.shape)
        assert set(zip(x.tolist(), y.tolist(), z.tolist(), lab.tolist())) == want[t]
        assert np.all(np.diff(first) > 0)
    assert len(want[4]) > 0 and len(want[2]) > 0
    centers = tile_centers(grid, np.array([np.ravel_multi_index((4, 8, 2), grid.shape)]), 4)
    np.testing.assert_allclose(centers, [[-6.0 + 0.4 * 6, -4.0 + 0.4 * 10, -1.0 + 0.4 * 2.5]], atol=1e-12)


def test_marker_point_cache_gives_the_same_markers():
    grid = _grid()
    types = MessageTypes.rosbags('jazzy')
    cache = VoxelPointCache(types, grid)
    for seed in (0, 1, 0):  # a second scene adds voxels to the cache; the first comes back from it
        labels, flow = _scene(grid, seed)
        frame = OccFrame(stamp_ns=STAMP, grid=grid, labels=labels, flow=flow)
        plain = marker_array_msg(frame, types)
        cached = marker_array_msg(frame, types, cache=cache)
        assert len(plain.markers) == len(cached.markers)
        for a, b in zip(plain.markers, cached.markers):
            assert (a.id, a.type, a.ns) == (b.id, b.type, b.ns)
            assert [(p.x, p.y, p.z) for p in a.points] == [(p.x, p.y, p.z) for p in b.points]
    again = marker_array_msg(frame, types, cache=cache)
    assert again.markers[1].points[0] is cached.markers[1].points[0]  # reused, not rebuilt
    with pytest.raises(OutputsError, match='VoxelPointCache'):
        marker_array_msg(
            OccFrame(stamp_ns=STAMP, grid=_grid(31), labels=np.full((31, 20, 16), 17, np.uint8)), types, cache=cache
        )


@pytest.mark.parametrize('distro', DISTROS)
def test_costmap_columns_and_layout(distro):
    grid = _grid(30, 20, 16)  # z voxels: [-1 + 0.4 k, -0.6 + 0.4 k); ground layer k = 2 is [-0.2, 0.2)
    labels = np.full(grid.shape, FREE_LABEL, np.uint8)
    labels[:, :, 2] = DRIVE
    labels[3, 5, 4] = CAR  # [0.6, 1.0): in the band -> 100
    labels[7, 2, 14] = VEG  # [4.6, 5.0): above the band, an overhanging tree -> still drivable
    labels[8, 2, 2] = BARRIER  # [-0.2, 0.2): below the band -> not an obstacle
    labels[10, 11, :] = 255  # never observed -> -1
    labels[12, 1, 2] = SIDEWALK  # observed ground, not road -> rough cost
    conf = np.full(grid.shape, 200, np.uint8)
    conf[20, 15, :] = 0  # only a failed camera could see it -> -1
    labels[20, 15, 5] = CAR  # ... even with an obstacle label
    frame = OccFrame(stamp_ns=STAMP, grid=grid, labels=labels, confidence=conf)
    msg = roundtrip(
        distro, costmap_msg(frame, MessageTypes.rosbags(distro), rough_cost=50), 'nav_msgs/msg/OccupancyGrid'
    )
    assert (msg.info.width, msg.info.height) == (30, 20)
    assert msg.info.resolution == pytest.approx(0.4)
    assert (msg.info.origin.position.x, msg.info.origin.position.y) == (-6.0, -4.0)
    data = np.asarray(msg.data, dtype=np.int8)
    assert data.size == 600

    def cell(ix, iy):
        return int(data[iy * 30 + ix])  # row-major, rows along y

    assert cell(3, 5) == 100 and cell(5, 3) == 0
    assert cell(7, 2) == 0 and cell(8, 2) == 0 and cell(0, 0) == 0
    assert cell(10, 11) == -1 and cell(20, 15) == -1
    assert cell(12, 1) == 50 and cell(13, 1) == 0  # sidewalk beside road
    labels[13, 1, 1] = SIDEWALK  # under the road voxel of the same column: drivable wins
    frame = OccFrame(stamp_ns=STAMP, grid=grid, labels=labels, confidence=conf)
    data = np.asarray(costmap_msg(frame, MessageTypes.rosbags(distro), rough_cost=50).data)
    assert data[1 * 30 + 13] == 0 and data[1 * 30 + 12] == 50
    assert np.asarray(costmap_msg(frame, MessageTypes.rosbags(distro), rough_cost=0).data)[1 * 30 + 12] == 0
    # a taller height band makes the tree an obstacle
    data = np.asarray(costmap_msg(frame, MessageTypes.rosbags(distro), height_band=(0.2, 5.0)).data)
    assert data[2 * 30 + 7] == 100
    with pytest.raises(OutputsError, match='height_band'):
        costmap_msg(frame, MessageTypes.rosbags(distro), height_band=(2.0, 0.2))


def _field_list(definition: str, name: str) -> tuple[list, dict]:
    """(name, type, is_array) of each field and the constants, from a .msg text via rosbags' parser."""
    consts, fields = get_types_from_msg(definition, name)[name]
    out = []
    for fname, (node, desc) in fields:
        is_array = node == Nodetype.SEQUENCE
        if is_array:
            node, desc = desc[0]
        out.append((fname, desc[0] if node == Nodetype.BASE else desc, is_array))
    return out, {c[0]: c[2] for c in consts}


def test_foxglove_definitions_match_the_npm_package():
    """The stored .msg texts against fields extracted from @foxglove/schemas (test/fixtures)."""
    lines = [ln.split() for ln in FIXTURE.read_text().splitlines() if ln and not ln.startswith('#')]
    nested = {
        'Timestamp': 'builtin_interfaces/msg/Time',
        'Pose': 'geometry_msgs/msg/Pose',
        'Vector3': 'geometry_msgs/msg/Vector3',
        'PackedElementField': 'foxglove_msgs/msg/PackedElementField',
    }
    enum = {ln[1]: int(ln[2]) for ln in lines if ln[0] == 'NumericType'}
    defs = foxglove_msg_definitions()
    for message in ('VoxelGrid', 'PackedElementField'):
        expected = []
        for _, fname, kind, ftype, arity in (ln for ln in lines if ln[0] == message):
            if kind == 'nested':
                expected.append((fname, nested[ftype], arity == 'array'))
            elif kind == 'enum':
                expected.append((fname, 'uint8', arity == 'array'))
            elif ftype == 'bytes':
                expected.append((fname, 'uint8', True))
            else:
                expected.append((fname, ftype, arity == 'array'))
        name = f'foxglove_msgs/msg/{message}'
        fields, consts = _field_list(defs[name], name)
        assert fields == expected, message
        if message == 'PackedElementField':
            assert consts == enum and consts['UINT8'] == 1 and consts['FLOAT32'] == 7
    for distro in DISTROS:
        assert 'foxglove_msgs/msg/VoxelGrid' in rosbags_typestore(distro).types


@pytest.mark.parametrize('distro', DISTROS)
def test_voxel_grid_non_square_strides_colours_and_transparency(distro):
    grid = GridSpec(lower=(-32.0, -48.0, -1.0), size=(160, 240, 16), voxel_size=0.4)
    rng = np.random.default_rng(7)
    labels = np.full(grid.shape, FREE_LABEL, np.uint8)
    occ = rng.random(grid.shape) < 0.1
    labels[occ] = rng.integers(0, 17, size=int(occ.sum()), dtype=np.uint8)
    labels[5, 200, 9] = CAR
    labels[150, 3, 0] = VEG
    labels[6, 200, 9] = FREE_LABEL
    frame = OccFrame(stamp_ns=STAMP, grid=grid, labels=labels)
    msg = roundtrip(distro, voxel_grid_msg(frame, MessageTypes.rosbags(distro)), 'foxglove_msgs/msg/VoxelGrid')
    assert (msg.column_count, msg.row_count) == (160, 240)
    assert (msg.cell_stride, msg.row_stride, msg.slice_stride) == (4, 4 * 160, 4 * 160 * 240)
    assert (msg.pose.position.x, msg.pose.position.y, msg.pose.position.z) == (-32.0, -48.0, -1.0)
    assert msg.cell_size.x == msg.cell_size.y == msg.cell_size.z == pytest.approx(0.4)
    assert [(f.name, f.offset, f.type) for f in msg.fields] == [
        ('red', 0, 1),
        ('green', 1, 1),
        ('blue', 2, 1),
        ('alpha', 3, 1),
    ]
    assert msg.timestamp.sec * 1_000_000_000 + msg.timestamp.nanosec == STAMP and msg.frame_id == 'base_link'
    data = np.asarray(msg.data, dtype=np.uint8)
    assert data.size == 4 * grid.num_voxels
    colors = class_colors()
    # single voxels: the schema's formulas from the byte offset back to (x, y, z)
    for x, y, z in ((5, 200, 9), (150, 3, 0), (6, 200, 9)):
        i = z * msg.slice_stride + y * msg.row_stride + x * msg.cell_stride
        assert (
            i // msg.slice_stride,
            (i % msg.slice_stride) // msg.row_stride,
            (i % msg.row_stride) // msg.cell_stride,
        ) == (z, y, x)
        rgba = data[i : i + 4]
        if labels[x, y, z] == FREE_LABEL:
            assert rgba[3] == 0
        else:
            assert rgba[:3].tolist() == colors[labels[x, y, z]].tolist() and rgba[3] == 255
    # every voxel: decode all element offsets with the formulas
    offsets = np.arange(0, data.size, 4)
    z = offsets // msg.slice_stride
    y = (offsets % msg.slice_stride) // msg.row_stride
    x = (offsets % msg.row_stride) // msg.cell_stride
    lab = labels[x, y, z]
    rgba = data.reshape(-1, 4)
    free = lab == FREE_LABEL
    assert np.all(rgba[free, 3] == 0) and np.all(rgba[~free, 3] == 255)
    np.testing.assert_array_equal(rgba[~free, :3], colors[lab[~free]])


# ---------------------------------------------------------------------------
# pictures


def test_top_view_orientation_front_up_left_left():
    grid = _grid(30, 20, 16)  # x in [-6, 6), y in [-4, 4)
    labels = np.full(grid.shape, FREE_LABEL, np.uint8)
    labels[27, 18, 3] = CAR  # front (x = +5) and left (y = +3.4)
    labels[27, 18, 8] = VEG  # higher in the same column: the view shows it
    labels[1, 1, 2] = DRIVE  # behind-right
    view = top_view(labels, scale=1)
    assert view.shape == (30, 20, 3)
    row, col = 30 - 1 - 27, 20 - 1 - 18  # near the top, near the left
    assert view[row, col].tolist() == list(CLASSES[VEG].color)
    assert view[30 - 1 - 1, 20 - 1 - 1].tolist() == list(CLASSES[DRIVE].color)
    assert view[15, 10].tolist() != list(CLASSES[VEG].color)


def test_render_panel_and_png(tmp_path):
    grid = _grid(60, 40, 16)
    labels, flow = _scene(grid)
    images = np.random.default_rng(0).integers(0, 255, (6, 64, 176, 3), dtype=np.uint8)
    panel = render_panel(images, labels, labels, flow, grid, 'test panel')
    assert panel.dtype == np.uint8 and panel.ndim == 3 and panel.shape[2] == 3
    # both top views (60 x 40 voxels at 3 px) are in the panel side by side
    assert panel.shape[1] >= 2 * 40 * 3 and panel.shape[0] >= 60 * 3
    present = {tuple(int(c) for c in class_colors()[lab]) for lab in np.unique(labels) if lab != FREE_LABEL}
    colours = {tuple(c) for c in panel.reshape(-1, 3)[::7].tolist()}
    assert len(present & colours) >= len(present) - 1  # legend swatches and top views show the classes
    path = save_png(tmp_path / 'panel.png', panel)
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, panel)
    no_gt = render_panel(None, None, labels, None, grid, 'prediction only')
    assert no_gt.shape[1] < panel.shape[1]
    with pytest.raises(OutputsError, match='pred_labels'):
        render_panel(images, None, labels[:, :-1], None, grid, 'bad')
