"""occ_perception_msgs definitions and numpy <-> message field conversion.

Two jobs, both independent of any ROS installation:

1. Read the ``.msg`` files of the ``occ_perception_msgs`` package (never a
   second copy of their text) and register them in a ``rosbags`` typestore
   for ROS 2 Humble or Jazzy, so that bags and CDR can be written and read
   without ROS.
2. Build and read messages from numpy arrays through whichever message
   classes the caller has: the rosbags typestore's dataclasses in tools and
   tests, or the rclpy-generated classes in the node. Classes are looked up
   by their full name (``std_msgs/msg/Header``) through a
   :class:`MessageTypes` resolver, and every message is constructed with all
   of its fields as keywords, which both kinds of class accept. Primitive
   arrays are handed over as a contiguous numpy array (rosbags) or as an
   ``array.array`` built from the array's bytes (rclpy: a copy at memory
   speed, never an element loop).
"""

from __future__ import annotations

import array
import functools
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .grid import CLASS_NAMES, FREE_LABEL, GridSpec, class_colors

__all__ = [
    'MSG_NAMES',
    'MSG_PACKAGE',
    'POINT_DTYPE',
    'FlowArrays',
    'MessageTypes',
    'MessagesError',
    'OccupancyArrays',
    'find_msg_dir',
    'flow_from_dense',
    'make_occupancy_flow',
    'make_pointcloud2',
    'make_semantic_occupancy',
    'msg_definitions',
    'occupancy_points',
    'read_occupancy_flow',
    'read_pointcloud2',
    'read_semantic_occupancy',
    'rosbags_typestore',
    'stamp_to_ns',
]

MSG_PACKAGE = 'occ_perception_msgs'
MSG_NAMES = ('VoxelGridInfo', 'SemanticOccupancy', 'OccupancyFlow')
DISTROS = ('humble', 'jazzy')


class MessagesError(ValueError):
    """Message definitions not found, or a message's fields do not describe a valid grid, flow or cloud."""


# ---------------------------------------------------------------------------
# message definitions and the rosbags typestore


def find_msg_dir() -> Path:
    """The folder holding ``occ_perception_msgs``' ``.msg`` files.

    Looked up in this order: ``$OCC_PERCEPTION_MSGS_DIR``; each prefix of
    ``$AMENT_PREFIX_PATH`` (``share/occ_perception_msgs/msg``, a ROS install);
    the source checkout (``occ_perception_msgs/msg`` beside the Python
    package's project folder); the copy a wheel carries (``occ_perception/msg``).

    Raises:
        MessagesError: none of these holds the three ``.msg`` files.
    """
    candidates: list[Path] = []
    if os.environ.get('OCC_PERCEPTION_MSGS_DIR'):
        candidates.append(Path(os.environ['OCC_PERCEPTION_MSGS_DIR']))
    for prefix in filter(None, os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep)):
        candidates.append(Path(prefix) / 'share' / MSG_PACKAGE / 'msg')
    here = Path(__file__).resolve().parent
    candidates.append(here.parent.parent / MSG_PACKAGE / 'msg')
    candidates.append(here / 'msg')
    for folder in candidates:
        if all((folder / f'{name}.msg').is_file() for name in MSG_NAMES):
            return folder
    raise MessagesError(
        f'cannot find the {MSG_PACKAGE} .msg files; looked in {[str(c) for c in candidates]}. '
        'Set OCC_PERCEPTION_MSGS_DIR to the package\'s msg folder.'
    )


def msg_definitions(msg_dir: Path | None = None) -> dict[str, str]:
    """Full type name (``occ_perception_msgs/msg/SemanticOccupancy``) -> ``.msg`` text."""
    folder = msg_dir or find_msg_dir()
    return {f'{MSG_PACKAGE}/msg/{name}': (folder / f'{name}.msg').read_text() for name in MSG_NAMES}


@functools.lru_cache(maxsize=None)
def rosbags_typestore(distro: str = 'jazzy') -> Any:
    """A rosbags typestore of ROS 2 ``distro`` (humble or jazzy) with our messages registered.

    Raises:
        MessagesError: unknown distro, or the definitions cannot be found or parsed.
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    stores = {'humble': Stores.ROS2_HUMBLE, 'jazzy': Stores.ROS2_JAZZY}
    if distro not in stores:
        raise MessagesError(f'rosbags_typestore: distro must be one of {DISTROS}, got {distro!r}')
    store = get_typestore(stores[distro])
    types: dict[str, Any] = {}
    for name, text in msg_definitions().items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store


# ---------------------------------------------------------------------------
# message classes


@dataclass(frozen=True)
class MessageTypes:
    """Where message classes come from and how primitive arrays are passed to them.

    Attributes:
        resolve: full type name (``sensor_msgs/msg/PointCloud2``) -> message class.
        flavor: ``'numpy'`` for rosbags classes (arrays stay numpy), ``'array'``
            for rclpy classes (arrays become ``array.array`` from the bytes).
    """

    resolve: Callable[[str], Any]
    flavor: str = 'numpy'

    def __post_init__(self) -> None:
        if self.flavor not in ('numpy', 'array'):
            raise MessagesError(f"MessageTypes.flavor: expected 'numpy' or 'array', got {self.flavor!r}")

    @classmethod
    def rosbags(cls, distro: str = 'jazzy') -> 'MessageTypes':
        """The rosbags typestore's classes for ``distro``, our messages included."""
        store = rosbags_typestore(distro)
        return cls(resolve=lambda name: store.types[name], flavor='numpy')

    @classmethod
    def python_modules(cls) -> 'MessageTypes':
        """Classes imported from the ROS 2 generated Python modules (``std_msgs.msg.Header``); for rclpy."""

        def resolve(name: str) -> Any:
            package, _, type_name = name.split('/')
            return getattr(importlib.import_module(f'{package}.msg'), type_name)

        return cls(resolve=resolve, flavor='array')

    def make(self, msg_type: str, /, **fields: Any) -> Any:
        """An instance of message ``msg_type`` (full name) with ``fields``."""
        return self.resolve(msg_type)(**fields)

    def pack(self, values: np.ndarray, dtype: str) -> Any:
        """A primitive array field's value from numpy: contiguous numpy or ``array.array`` of ``dtype``."""
        arr = np.ascontiguousarray(values, dtype=dtype).reshape(-1)
        if self.flavor == 'numpy':
            return arr
        return array.array(_TYPECODES[dtype], arr.tobytes())

    def header(self, stamp_ns: int, frame_id: str) -> Any:
        sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
        stamp = self.make('builtin_interfaces/msg/Time', sec=sec, nanosec=nanosec)
        return self.make('std_msgs/msg/Header', stamp=stamp, frame_id=frame_id)


_TYPECODES = {'uint8': 'B', 'uint32': 'I', 'float32': 'f', 'int8': 'b', 'float64': 'd'}
assert array.array('I').itemsize == 4 and array.array('f').itemsize == 4


def _array(field: Any, dtype: str, name: str) -> np.ndarray:
    """A primitive array field (numpy array, array.array, bytes or list) as a 1-D numpy array of ``dtype``."""
    if isinstance(field, np.ndarray):
        if field.dtype != np.dtype(dtype):
            raise MessagesError(f'{name}: expected {dtype} values, got {field.dtype}')
        return field.reshape(-1)
    if isinstance(field, (array.array, bytes, bytearray, memoryview)):
        return np.frombuffer(field, dtype=dtype)
    return np.asarray(field, dtype=dtype).reshape(-1)


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (sec, nanosec) to integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


# ---------------------------------------------------------------------------
# grid info


def _grid_info(types: MessageTypes, grid: GridSpec) -> Any:
    position = types.make('geometry_msgs/msg/Point', x=float(grid.lower[0]), y=float(grid.lower[1]), z=float(grid.lower[2]))
    orientation = types.make('geometry_msgs/msg/Quaternion', x=0.0, y=0.0, z=0.0, w=1.0)
    pose = types.make('geometry_msgs/msg/Pose', position=position, orientation=orientation)
    sx, sy, sz = grid.shape
    return types.make(
        f'{MSG_PACKAGE}/msg/VoxelGridInfo', origin=pose, resolution=float(grid.voxel_size), size_x=sx, size_y=sy, size_z=sz
    )


def _read_grid_info(info: Any, name: str) -> GridSpec:
    q = info.origin.orientation
    if not np.allclose([q.x, q.y, q.z, abs(q.w)], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise MessagesError(f'{name}.info.origin: only axis-aligned grids are supported, got orientation {q}')
    p = info.origin.position
    # resolution travels as float32: round back to what was meant (0.4, not 0.4000000059604645)
    resolution = float(np.format_float_positional(np.float32(info.resolution), unique=True))
    try:
        return GridSpec(
            lower=(float(p.x), float(p.y), float(p.z)),
            size=(int(info.size_x), int(info.size_y), int(info.size_z)),
            voxel_size=resolution,
        )
    except ValueError as err:
        raise MessagesError(f'{name}.info: {err}') from err


# ---------------------------------------------------------------------------
# SemanticOccupancy


@dataclass(frozen=True)
class OccupancyArrays:
    """A SemanticOccupancy message's content as arrays.

    Attributes:
        stamp_ns: header stamp [ns]. frame_id: header frame.
        grid: the voxel grid. labels: (X, Y, Z) uint8.
        confidence: (X, Y, Z) uint8, or None where the message carries none.
        class_names: label value -> name. free_label: the label meaning empty space.
    """

    stamp_ns: int
    frame_id: str
    grid: GridSpec
    labels: np.ndarray
    confidence: np.ndarray | None
    class_names: tuple[str, ...]
    free_label: int


def make_semantic_occupancy(
    types: MessageTypes,
    stamp_ns: int,
    frame_id: str,
    grid: GridSpec,
    labels: np.ndarray,
    confidence: np.ndarray | None = None,
    class_names: tuple[str, ...] = CLASS_NAMES,
    free_label: int = FREE_LABEL,
) -> Any:
    """An ``occ_perception_msgs/SemanticOccupancy``.

    Args:
        labels: (X, Y, Z) uint8 in ``grid``'s shape, indexed [x, y, z].
        confidence: same shape uint8 (round(255 * max probability)), or None for an empty field.

    Raises:
        MessagesError: an array's shape or dtype does not fit the grid.
    """
    _check_grid_array(labels, grid, 'labels')
    if confidence is not None:
        _check_grid_array(confidence, grid, 'confidence')
    return types.make(
        f'{MSG_PACKAGE}/msg/SemanticOccupancy',
        header=types.header(stamp_ns, frame_id),
        info=_grid_info(types, grid),
        class_names=list(class_names),
        free_label=int(free_label),
        labels=types.pack(labels, 'uint8'),
        confidence=types.pack(np.zeros(0, np.uint8) if confidence is None else confidence, 'uint8'),
    )


def _check_grid_array(values: np.ndarray, grid: GridSpec, name: str) -> None:
    if values.dtype != np.uint8:
        raise MessagesError(f'{name}: expected uint8 values, got {values.dtype}')
    if tuple(values.shape) != grid.shape:
        raise MessagesError(f'{name}: expected shape {grid.shape} (the grid), got {tuple(values.shape)}')


def read_semantic_occupancy(msg: Any) -> OccupancyArrays:
    """The arrays of a SemanticOccupancy message (any message class with its fields).

    Raises:
        MessagesError: the labels or confidence length does not match the grid.
    """
    grid = _read_grid_info(msg.info, 'SemanticOccupancy')
    labels = _array(msg.labels, 'uint8', 'SemanticOccupancy.labels')
    if labels.size != grid.num_voxels:
        raise MessagesError(f'SemanticOccupancy.labels: expected {grid.num_voxels} values (the grid), got {labels.size}')
    conf = _array(msg.confidence, 'uint8', 'SemanticOccupancy.confidence')
    if conf.size not in (0, grid.num_voxels):
        raise MessagesError(
            f'SemanticOccupancy.confidence: expected 0 or {grid.num_voxels} values, got {conf.size}'
        )
    return OccupancyArrays(
        stamp_ns=stamp_to_ns(msg.header.stamp),
        frame_id=str(msg.header.frame_id),
        grid=grid,
        labels=labels.reshape(grid.shape),
        confidence=conf.reshape(grid.shape) if conf.size else None,
        class_names=tuple(str(n) for n in msg.class_names),
        free_label=int(msg.free_label),
    )


# ---------------------------------------------------------------------------
# OccupancyFlow


@dataclass(frozen=True)
class FlowArrays:
    """Sparse per-voxel flow.

    Attributes:
        indices: (N,) uint32 flat voxel indices (DESIGN.md section 3).
        velocity: (N, 2) float32 (vx, vy) [m/s] in the header frame's axes.
    """

    stamp_ns: int
    frame_id: str
    grid: GridSpec
    indices: np.ndarray
    velocity: np.ndarray

    def dense(self) -> np.ndarray:
        """(X, Y, Z, 2) float32 flow, zero where no index carries flow."""
        out = np.zeros(self.grid.shape + (2,), dtype=np.float32)
        out.reshape(-1, 2)[self.indices.astype(np.int64)] = self.velocity
        return out


def flow_from_dense(labels: np.ndarray, flow: np.ndarray, free_label: int = FREE_LABEL) -> tuple[np.ndarray, np.ndarray]:
    """Sparse flow of the occupied voxels.

    Args:
        labels: (X, Y, Z) uint8. flow: (X, Y, Z, 2) float [m/s].

    Returns:
        ``(indices, velocity)``: (N,) uint32 flat indices of the voxels whose
        label is neither ``free_label`` nor 255, and their (N, 2) float32 velocities.

    Raises:
        MessagesError: the shapes disagree.
    """
    if flow.shape != labels.shape + (2,):
        raise MessagesError(f'flow: expected shape {labels.shape + (2,)} to match labels, got {flow.shape}')
    flat = labels.reshape(-1)
    indices = np.flatnonzero((flat != free_label) & (flat != 255)).astype(np.uint32)
    velocity = np.ascontiguousarray(flow.reshape(-1, 2)[indices], dtype=np.float32)
    return indices, velocity


def make_occupancy_flow(
    types: MessageTypes, stamp_ns: int, frame_id: str, grid: GridSpec, indices: np.ndarray, velocity: np.ndarray
) -> Any:
    """An ``occ_perception_msgs/OccupancyFlow`` from sparse flow.

    Args:
        indices: (N,) flat voxel indices. velocity: (N, 2) (vx, vy) [m/s].

    Raises:
        MessagesError: lengths differ or an index is outside the grid.
    """
    indices = np.asarray(indices)
    velocity = np.asarray(velocity)
    if velocity.shape != (indices.shape[0], 2) or indices.ndim != 1:
        raise MessagesError(f'flow: expected indices (N,) and velocity (N, 2), got {indices.shape} and {velocity.shape}')
    if indices.size and (indices.min() < 0 or indices.max() >= grid.num_voxels):
        raise MessagesError(f'flow.indices: expected values in [0, {grid.num_voxels}), the grid')
    return types.make(
        f'{MSG_PACKAGE}/msg/OccupancyFlow',
        header=types.header(stamp_ns, frame_id),
        info=_grid_info(types, grid),
        indices=types.pack(indices, 'uint32'),
        velocity_x=types.pack(velocity[:, 0], 'float32'),
        velocity_y=types.pack(velocity[:, 1], 'float32'),
    )


def read_occupancy_flow(msg: Any) -> FlowArrays:
    """The arrays of an OccupancyFlow message.

    Raises:
        MessagesError: the three arrays differ in length or an index is outside the grid.
    """
    grid = _read_grid_info(msg.info, 'OccupancyFlow')
    indices = _array(msg.indices, 'uint32', 'OccupancyFlow.indices')
    vx = _array(msg.velocity_x, 'float32', 'OccupancyFlow.velocity_x')
    vy = _array(msg.velocity_y, 'float32', 'OccupancyFlow.velocity_y')
    if not indices.size == vx.size == vy.size:
        raise MessagesError(
            f'OccupancyFlow: indices, velocity_x and velocity_y must have one length, got {indices.size}, {vx.size}, {vy.size}'
        )
    if indices.size and int(indices.max()) >= grid.num_voxels:
        raise MessagesError(f'OccupancyFlow.indices: expected values below {grid.num_voxels}, the grid')
    return FlowArrays(
        stamp_to_ns(msg.header.stamp), str(msg.header.frame_id), grid, indices, np.stack([vx, vy], axis=1)
    )


# ---------------------------------------------------------------------------
# PointCloud2 (x, y, z, rgb, label, vx, vy)

# sensor_msgs/PointField datatypes
_POINTFIELD_TYPES = {1: 'i1', 2: 'u1', 3: 'i2', 4: 'u2', 5: 'i4', 6: 'u4', 7: 'f4', 8: 'f8'}
_POINTFIELD_CODES = {'u1': 2, 'f4': 7}

POINT_DTYPE = np.dtype(
    {
        'names': ['x', 'y', 'z', 'rgb', 'vx', 'vy', 'label'],
        'formats': ['<f4', '<f4', '<f4', '<f4', '<f4', '<f4', 'u1'],
        'offsets': [0, 4, 8, 12, 16, 20, 24],
        'itemsize': 28,
    }
)
"""One point of our clouds: rgb is RViz's packed float (0x00RRGGBB bits), label uint8, vx/vy [m/s]."""


def occupancy_points(
    grid: GridSpec, labels: np.ndarray, flow: np.ndarray | None = None, free_label: int = FREE_LABEL
) -> np.ndarray:
    """Voxel centres of the occupied voxels as a :data:`POINT_DTYPE` array (flat-index order).

    Args:
        labels: (X, Y, Z) uint8 in ``grid``'s shape. flow: (X, Y, Z, 2) [m/s] or None (zeros).

    Raises:
        MessagesError: an array's shape (for example (Y, X, Z), as many voxels in another order) or dtype
            does not fit the grid.
    """
    _check_grid_array(labels, grid, 'labels')
    if flow is not None and tuple(flow.shape) != grid.shape + (2,):
        raise MessagesError(f'flow: expected shape {grid.shape + (2,)} (the grid), got {tuple(flow.shape)}')
    flat = labels.reshape(-1)
    idx = np.flatnonzero((flat != free_label) & (flat != 255))
    centers = grid.flat_centers(idx).astype(np.float32)
    lab = flat[idx]
    rgb = class_colors()[lab].astype(np.uint32)
    packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    points = np.zeros(idx.size, dtype=POINT_DTYPE)
    points['x'], points['y'], points['z'] = centers[:, 0], centers[:, 1], centers[:, 2]
    points['rgb'] = packed.view(np.float32)
    points['label'] = lab
    if flow is not None:
        vel = flow.reshape(-1, 2)[idx]
        points['vx'], points['vy'] = vel[:, 0], vel[:, 1]
    return points


def make_pointcloud2(types: MessageTypes, stamp_ns: int, frame_id: str, points: np.ndarray) -> Any:
    """A sensor_msgs/PointCloud2 (unordered, height 1) from a :data:`POINT_DTYPE` array.

    Raises:
        MessagesError: ``points`` is not of :data:`POINT_DTYPE`.
    """
    if points.dtype != POINT_DTYPE:
        raise MessagesError(f'points: expected the POINT_DTYPE layout {POINT_DTYPE}, got {points.dtype}')
    fields = []
    for name in POINT_DTYPE.names:
        fmt, offset = POINT_DTYPE.fields[name][0], POINT_DTYPE.fields[name][1]
        fields.append(
            types.make(
                'sensor_msgs/msg/PointField', name=name, offset=offset, datatype=_POINTFIELD_CODES[fmt.str[1:]], count=1
            )
        )
    data = np.ascontiguousarray(points).view(np.uint8).reshape(-1)
    return types.make(
        'sensor_msgs/msg/PointCloud2',
        header=types.header(stamp_ns, frame_id),
        height=1,
        width=int(points.size),
        fields=fields,
        is_bigendian=False,
        point_step=POINT_DTYPE.itemsize,
        row_step=POINT_DTYPE.itemsize * int(points.size),
        data=types.pack(data, 'uint8'),
        is_dense=True,
    )


def read_pointcloud2(msg: Any) -> np.ndarray:
    """A PointCloud2's points as a numpy structured array with one field per PointField (count 1 each).

    Raises:
        MessagesError: an unknown datatype, a field with count != 1, or data of the wrong length.
    """
    names, formats, offsets = [], [], []
    order = '>' if msg.is_bigendian else '<'
    for field in msg.fields:
        if int(field.datatype) not in _POINTFIELD_TYPES:
            raise MessagesError(f'PointCloud2 field {field.name!r}: unknown datatype {field.datatype}')
        if int(field.count) != 1:
            raise MessagesError(f'PointCloud2 field {field.name!r}: count {field.count} is not supported (expected 1)')
        names.append(str(field.name))
        formats.append(order + _POINTFIELD_TYPES[int(field.datatype)])
        offsets.append(int(field.offset))
    dtype = np.dtype({'names': names, 'formats': formats, 'offsets': offsets, 'itemsize': int(msg.point_step)})
    data = _array(msg.data, 'uint8', 'PointCloud2.data')
    count = int(msg.width) * int(msg.height)
    if data.size != count * int(msg.point_step):
        raise MessagesError(
            f'PointCloud2.data: expected {count} points x {msg.point_step} bytes = {count * int(msg.point_step)}, got {data.size}'
        )
    return np.frombuffer(data.tobytes(), dtype=dtype)
