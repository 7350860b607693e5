"""Every output message, serialised to CDR, equals one built by a plain reference from the frame.

The references below build each message directly with the rosbags typestore's classes from
straightforward per-voxel / per-column computations (np.argwhere, explicit loops, the padded
6-neighbourhood), independent of the vectorised code in outputs.py and messages.py. The frame is a
non-square grid with a non-round origin, every kind of label (classes, free, unobserved), confidence
with zeros and flow on free voxels too (which must not leak into any message).
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from occ_perception.grid import CLASS_NAMES, CLASSES, FREE_LABEL, GridSpec
from occ_perception.messages import MessageTypes, rosbags_typestore
from occ_perception.outputs import (
    OccFrame,
    VoxelPointCache,
    costmap_msg,
    marker_array_msg,
    occupancy_flow_msg,
    pointcloud_msg,
    semantic_occupancy_msg,
    voxel_grid_msg,
)

DISTROS = ['humble', 'jazzy']
STAMP = 1_533_151_603_512_404_123
GRID = GridSpec(lower=(-24.4, -18.0, -1.0), size=(120, 90, 16), voxel_size=0.4)
CAR, DRIVE, SIDEWALK, TERRAIN, MANMADE = 4, 11, 13, 14, 15
OBSTACLES = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 16}


def _frame(seed: int = 3) -> OccFrame:
    rng = np.random.default_rng(seed)
    labels = np.full(GRID.shape, FREE_LABEL, np.uint8)
    labels[:, :, 2] = DRIVE
    labels[:, 60:75, 2] = SIDEWALK
    labels[:, 75:, 2] = TERRAIN
    labels[10:30, 80:88, 3:12] = MANMADE  # a building
    labels[50:61, 20:26, 3:7] = CAR  # a solid car box
    labels[70:80, 40:45, 3:6] = CAR
    scatter = rng.random(GRID.shape) < 0.03
    labels[scatter] = rng.integers(0, 18, int(scatter.sum()), dtype=np.uint8)
    labels[100:, :10, :] = 255  # an unobserved corner
    labels[rng.random(GRID.shape) < 0.01] = 255
    confidence = rng.integers(1, 256, GRID.shape, dtype=np.uint8)
    confidence[rng.random(GRID.shape) < 0.05] = 0
    confidence[:4, :, :] = 0  # whole columns seen only by a failed camera
    flow = rng.normal(0.0, 0.05, GRID.shape + (2,)).astype(np.float32)  # slow everywhere, free voxels too
    flow[labels == CAR] = (3.25, -1.5)
    flow[70:80, 40:45, 3:6] = (-2.0, 0.75)
    return OccFrame(stamp_ns=STAMP, grid=GRID, labels=labels, confidence=confidence, flow=flow, frame_id='base_link')


def _occupied(labels: np.ndarray) -> np.ndarray:
    return np.isin(labels, [FREE_LABEL, 255], invert=True)


def _surface(labels: np.ndarray) -> np.ndarray:
    occ = np.pad(_occupied(labels), 1, constant_values=False)
    core = occ[1:-1, 1:-1, 1:-1]
    hidden = core.copy()
    for axis in range(3):
        for shift in (-1, 1):
            hidden &= np.roll(occ, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return core & ~hidden


# ---------------------------------------------------------------------------
# reference builders (typestore classes, plain computations)


class Ref:
    def __init__(self, distro: str, grid: GridSpec = GRID) -> None:
        self.grid = grid
        self.store = rosbags_typestore(distro)
        self.t = self.store.types

    def header(self):
        sec, nsec = divmod(STAMP, 1_000_000_000)
        return self.t['std_msgs/msg/Header'](
            stamp=self.t['builtin_interfaces/msg/Time'](sec, nsec), frame_id='base_link'
        )

    def pose(self, x: float, y: float, z: float):
        point = self.t['geometry_msgs/msg/Point'](x, y, z)
        return self.t['geometry_msgs/msg/Pose'](point, self.t['geometry_msgs/msg/Quaternion'](0.0, 0.0, 0.0, 1.0))

    def info(self):
        return self.t['occ_perception_msgs/msg/VoxelGridInfo'](
            self.pose(*self.grid.lower), self.grid.voxel_size, *self.grid.shape
        )

    def semantics(self, f: OccFrame):
        return self.t['occ_perception_msgs/msg/SemanticOccupancy'](
            self.header(),
            self.info(),
            list(CLASS_NAMES),
            FREE_LABEL,
            np.array(f.labels.ravel().tolist(), np.uint8),
            np.array(f.confidence.ravel().tolist(), np.uint8),
        )

    def flow(self, f: OccFrame):
        sx, sy, sz = self.grid.shape
        cells = np.argwhere(_occupied(f.labels))
        indices = [(ix * sy + iy) * sz + iz for ix, iy, iz in cells.tolist()]
        vx = [f.flow[ix, iy, iz, 0] for ix, iy, iz in cells.tolist()]
        vy = [f.flow[ix, iy, iz, 1] for ix, iy, iz in cells.tolist()]
        return self.t['occ_perception_msgs/msg/OccupancyFlow'](
            self.header(), self.info(), np.array(indices, np.uint32), np.array(vx, np.float32), np.array(vy, np.float32)
        )

    def center(self, ix: int, iy: int, iz: int) -> tuple[float, float, float]:
        lo, v = self.grid.lower, self.grid.voxel_size
        return (lo[0] + (ix + 0.5) * v, lo[1] + (iy + 0.5) * v, lo[2] + (iz + 0.5) * v)

    def points(self, f: OccFrame):
        data = bytearray()
        cells = np.argwhere(_surface(f.labels)).tolist()
        for ix, iy, iz in cells:
            label = int(f.labels[ix, iy, iz])
            r, g, b = CLASSES[label].color
            x, y, z = self.center(ix, iy, iz)
            vx, vy = (float(a) for a in f.flow[ix, iy, iz])
            data += struct.pack('<3fI2fB3x', x, y, z, (r << 16) | (g << 8) | b, vx, vy, label)
        fields = [
            self.t['sensor_msgs/msg/PointField'](name, offset, code, 1)
            for name, offset, code in (('x', 0, 7), ('y', 4, 7), ('z', 8, 7), ('rgb', 12, 7))
            + (('vx', 16, 7), ('vy', 20, 7), ('label', 24, 2))
        ]
        return self.t['sensor_msgs/msg/PointCloud2'](
            self.header(), 1, len(cells), fields, False, 28, 28 * len(cells), np.frombuffer(bytes(data), np.uint8), True
        )

    def marker(self, ns, marker_id, kind, action, scale, rgba, points):
        t = self.t
        empty = np.zeros(0, np.uint8)
        return t['visualization_msgs/msg/Marker'](
            header=self.header(),
            ns=ns,
            id=marker_id,
            type=kind,
            action=action,
            pose=self.pose(0.0, 0.0, 0.0),
            scale=t['geometry_msgs/msg/Vector3'](*scale),
            color=t['std_msgs/msg/ColorRGBA'](*rgba),
            lifetime=t['builtin_interfaces/msg/Duration'](0, 0),
            frame_locked=False,
            points=[t['geometry_msgs/msg/Point'](*p) for p in points],
            colors=[],
            texture_resource='',
            texture=t['sensor_msgs/msg/CompressedImage'](self.header(), '', empty),
            uv_coordinates=[],
            text='',
            mesh_resource='',
            mesh_file=t['visualization_msgs/msg/MeshFile']('', empty),
            mesh_use_embedded_materials=False,
        )

    def markers(self, f: OccFrame):
        m = self.t['visualization_msgs/msg/Marker']
        v = self.grid.voxel_size
        out = [self.marker('occupancy', 0, m.CUBE_LIST, m.DELETEALL, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0, 0.0), [])]
        left = _surface(f.labels)
        sx, sy, sz = self.grid.shape
        for t in (8, 4, 2, 1):  # aligned uniform t x t patches, largest first, then single voxels
            cubes: dict[int, list] = {}
            for x0 in range(0, sx - t + 1, t):
                for y0 in range(0, sy - t + 1, t):
                    for z in range(sz):
                        block = (slice(x0, x0 + t), slice(y0, y0 + t), z)
                        if left[block].all() and (f.labels[block] == f.labels[x0, y0, z]).all():
                            x, y, zc = self.center(x0, y0, z)
                            pts = cubes.setdefault(int(f.labels[x0, y0, z]), [])
                            pts.append((x + 0.5 * (t - 1) * v, y + 0.5 * (t - 1) * v, zc))
                            left[block] = False
            for label in sorted(cubes):
                rgba = (*(c / 255.0 for c in CLASSES[label].color), 1.0)
                marker_id = label + 256 * t if t > 1 else label
                out.append(
                    self.marker('occupancy', marker_id, m.CUBE_LIST, m.ADD, (t * v, t * v, v), rgba, cubes[label])
                )
        c, s = math.cos(math.radians(25.0)), math.sin(math.radians(25.0))
        segments = []
        occ = _occupied(f.labels)
        speed = np.hypot(f.flow[..., 0], f.flow[..., 1])
        for ix in range(self.grid.shape[0]):
            for iy in range(self.grid.shape[1]):
                filled = [iz for iz in range(self.grid.shape[2]) if occ[ix, iy, iz]]
                if not filled:
                    continue
                iz = filled[-1]  # the highest occupied voxel, drawn only when movable and fast
                if not CLASSES[f.labels[ix, iy, iz]].dynamic or speed[ix, iy, iz] <= 0.5:
                    continue
                start = self.center(ix, iy, iz)
                vx, vy = (float(a) for a in f.flow[ix, iy, iz])
                end = (start[0] + vx * 1.0, start[1] + vy * 1.0, start[2])
                bx, by = (start[0] - end[0]) * 0.25, (start[1] - end[1]) * 0.25
                heads = [
                    (end[0] + (c * bx - (sign * s) * by), end[1] + ((sign * s) * bx + c * by), end[2])
                    for sign in (1.0, -1.0)
                ]
                segments += [start, end, end, heads[0], end, heads[1]]
        out.append(self.marker('occupancy/flow', 0, m.LINE_LIST, m.ADD, (0.1 * v, 0.0, 0.0), (1.0,) * 4, segments))
        return self.t['visualization_msgs/msg/MarkerArray'](out)

    def costmap(self, f: OccFrame):
        sx, sy, sz = self.grid.shape
        cost = np.zeros((sy, sx), np.int8)  # rows along y
        for ix in range(sx):
            for iy in range(sy):
                observed, obstacle, rough, drivable = False, False, False, False
                for iz in range(sz):
                    label = int(f.labels[ix, iy, iz])
                    if label == 255 or (f.confidence is not None and f.confidence[ix, iy, iz] == 0):
                        continue
                    observed = True
                    z_lo = round(self.grid.lower[2] + iz * self.grid.voxel_size, 6)
                    in_band = z_lo < 2.0 and round(z_lo + self.grid.voxel_size, 6) > 0.2
                    obstacle |= in_band and label in OBSTACLES
                    rough |= label in (12, 13, 14)
                    drivable |= label == 11
                value = 100 if obstacle else -1 if not observed else 50 if rough and not drivable else 0
                cost[iy, ix] = value
        sec, nsec = divmod(STAMP, 1_000_000_000)
        info = self.t['nav_msgs/msg/MapMetaData'](
            self.t['builtin_interfaces/msg/Time'](sec, nsec),
            self.grid.voxel_size,
            sx,
            sy,
            self.pose(self.grid.lower[0], self.grid.lower[1], 0.0),
        )
        return self.t['nav_msgs/msg/OccupancyGrid'](self.header(), info, cost.ravel())

    def voxel_grid(self, f: OccFrame):
        sx, sy, sz = self.grid.shape
        data = np.zeros((sz, sy, sx, 4), np.uint8)
        for label in np.unique(f.labels).tolist():
            where = f.labels.transpose(2, 1, 0) == label
            color = CLASSES[label].color if label < len(CLASSES) else (0, 0, 0)
            data[where] = (*color, 0 if label in (FREE_LABEL, 255) else 255)
        t = self.t
        sec, nsec = divmod(STAMP, 1_000_000_000)
        fields = [
            t['foxglove_msgs/msg/PackedElementField'](n, i, 1) for i, n in enumerate(('red', 'green', 'blue', 'alpha'))
        ]
        v = self.grid.voxel_size
        return t['foxglove_msgs/msg/VoxelGrid'](
            t['builtin_interfaces/msg/Time'](sec, nsec),
            'base_link',
            self.pose(*self.grid.lower),
            sy,
            sx,
            t['geometry_msgs/msg/Vector3'](v, v, v),
            4 * sx * sy,
            4 * sx,
            4,
            fields,
            data.ravel(),
        )


# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def frame() -> OccFrame:
    return _frame()


def _same_cdr(store, ours, ref, msgtype: str) -> None:
    a = bytes(store.serialize_cdr(ours, msgtype))
    b = bytes(store.serialize_cdr(ref, msgtype))
    assert len(a) == len(b), f'{msgtype}: {len(a)} bytes, reference {len(b)}'
    if a != b:
        first = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        raise AssertionError(f'{msgtype}: CDR differs from the reference first at byte {first} of {len(a)}')


def test_frame_exercises_every_case(frame):
    surface = _surface(frame.labels)
    assert 0 < surface.sum() < _occupied(frame.labels).sum()  # filled volumes have hidden voxels
    assert (frame.labels == 255).any() and (frame.confidence == 0).any()
    assert len(set(np.unique(frame.labels[surface]).tolist())) == 17
    assert (np.hypot(frame.flow[..., 0], frame.flow[..., 1])[frame.labels == CAR] > 0.5).all()  # flow arrows


@pytest.mark.parametrize('distro', DISTROS)
def test_dense_messages_equal_the_reference(distro, frame):
    types, ref = MessageTypes.rosbags(distro), Ref(distro)
    pairs = [
        (semantic_occupancy_msg(frame, types), ref.semantics(frame), 'occ_perception_msgs/msg/SemanticOccupancy'),
        (occupancy_flow_msg(frame, types), ref.flow(frame), 'occ_perception_msgs/msg/OccupancyFlow'),
        (pointcloud_msg(frame, types), ref.points(frame), 'sensor_msgs/msg/PointCloud2'),
        (costmap_msg(frame, types), ref.costmap(frame), 'nav_msgs/msg/OccupancyGrid'),
        (voxel_grid_msg(frame, types), ref.voxel_grid(frame), 'foxglove_msgs/msg/VoxelGrid'),
    ]
    for ours, expected, msgtype in pairs:
        _same_cdr(ref.store, ours, expected, msgtype)


@pytest.mark.parametrize('distro', DISTROS)
def test_markers_equal_the_reference_with_and_without_cache(distro, frame):
    types, ref = MessageTypes.rosbags(distro), Ref(distro)
    expected = ref.markers(frame)
    cache = VoxelPointCache(types, GRID)
    for ours in (marker_array_msg(frame, types), marker_array_msg(frame, types, cache=cache)):
        _same_cdr(ref.store, ours, expected, 'visualization_msgs/msg/MarkerArray')
    # a second frame through the warm cache: other voxels, same answer as the reference
    other = _frame(seed=4)
    _same_cdr(
        ref.store, marker_array_msg(other, types, cache=cache), ref.markers(other), 'visualization_msgs/msg/MarkerArray'
    )


def _odd_frames() -> list[OccFrame]:
    """Mostly unobserved (ground-truth like, Z not a multiple of 8), all free, all occupied, all unobserved."""
    rng = np.random.default_rng(5)
    gt_grid = GridSpec(lower=(-8.0, -6.0, -2.2), size=(40, 30, 10), voxel_size=0.4)
    labels = rng.integers(0, 18, gt_grid.shape, dtype=np.uint8)
    labels[rng.random(gt_grid.shape) < 0.6] = 255
    flow = rng.normal(0.0, 2.0, gt_grid.shape + (2,)).astype(np.float32)
    frames = [OccFrame(stamp_ns=STAMP, grid=gt_grid, labels=labels, flow=flow)]
    small = GridSpec(lower=(-2.0, -1.6, -1.0), size=(12, 9, 8), voxel_size=0.4)
    flow = np.full(small.shape + (2,), 1.0, np.float32)
    for fill in (FREE_LABEL, CAR, 255):
        labels = np.full(small.shape, fill, np.uint8)
        conf = np.full(small.shape, 200, np.uint8)
        frames.append(OccFrame(stamp_ns=STAMP, grid=small, labels=labels, confidence=conf, flow=flow))
    return frames


@pytest.mark.parametrize('index', range(4))
def test_odd_frames_equal_the_reference(index):
    frame = _odd_frames()[index]
    types, ref = MessageTypes.rosbags('jazzy'), Ref('jazzy', frame.grid)
    pairs = [
        (occupancy_flow_msg(frame, types), ref.flow(frame), 'occ_perception_msgs/msg/OccupancyFlow'),
        (pointcloud_msg(frame, types), ref.points(frame), 'sensor_msgs/msg/PointCloud2'),
        (marker_array_msg(frame, types), ref.markers(frame), 'visualization_msgs/msg/MarkerArray'),
        (voxel_grid_msg(frame, types), ref.voxel_grid(frame), 'foxglove_msgs/msg/VoxelGrid'),
        (costmap_msg(frame, types), ref.costmap(frame), 'nav_msgs/msg/OccupancyGrid'),
    ]
    for ours, expected, msgtype in pairs:
        _same_cdr(ref.store, ours, expected, msgtype)


def test_messages_from_one_frame_do_not_depend_on_call_order():
    """Selections cached on the frame give the same messages whichever message is built first."""
    types = MessageTypes.rosbags('jazzy')
    store = rosbags_typestore('jazzy')
    builders = [
        (pointcloud_msg, 'sensor_msgs/msg/PointCloud2'),
        (occupancy_flow_msg, 'occ_perception_msgs/msg/OccupancyFlow'),
        (costmap_msg, 'nav_msgs/msg/OccupancyGrid'),
        (marker_array_msg, 'visualization_msgs/msg/MarkerArray'),
    ]
    first = {name: bytes(store.serialize_cdr(fn(_frame(), types), name)) for fn, name in builders}
    shared = _frame()
    for fn, name in reversed(builders):
        assert bytes(store.serialize_cdr(fn(shared, types), name)) == first[name], name
