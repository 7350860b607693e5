"""The parameters of ``occ_node``: names, types, ranges, descriptions, defaults, and their validation.

ROS-free (no rclpy import): the node declares every :data:`PARAMS` entry with its
description and range, reads the values back and calls :func:`validate_params`,
which either returns a :class:`NodeParams` or raises :class:`ParamError` naming the
parameter, the value and what was expected. ``config/occ.yaml`` lists exactly these
names (a test checks it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..rig import FLASHOCC_CAMERA_ORDER

__all__ = [
    'BACKEND_CHOICES',
    'PARAMS',
    'NodeParams',
    'ParamError',
    'ParamSpec',
    'param_defaults',
    'param_descriptor',
    'validate_params',
]

BACKEND_CHOICES: tuple[str, ...] = ('auto', 'tensorrt', 'onnxruntime', 'torch')
FAILED_CAMERA_MODES: tuple[str, ...] = ('mask_tables', 'blank_image')  # pipeline.FAILED_CAMERA_MODES (a test checks)
KINDS = ('bool', 'integer', 'double', 'string', 'string_array')


class ParamError(ValueError):
    """A node parameter has a value of the wrong type, outside its range, or inconsistent with another."""


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter.

    Attributes:
        name: the parameter name. kind: one of ``bool``, ``integer``, ``double``, ``string``, ``string_array``.
        default: the default value (of ``kind``). description: what it means, with its unit.
        low, high: inclusive range for ``integer``/``double`` (None: unbounded on that side).
        choices: allowed values of a ``string``.
    """

    name: str
    kind: str
    default: Any
    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()


def param_descriptor(spec: ParamSpec, types: Any) -> Any:
    """rcl_interfaces/msg/ParameterDescriptor of ``spec``: description (with the choices of a string), and
    the integer or floating-point range where both bounds are given (step 0: any value in the range).

    Args:
        spec: the parameter. types: a :class:`occ_perception.messages.MessageTypes` (rclpy or rosbags classes).
    """
    text = spec.description + (f' (one of {", ".join(spec.choices)})' if spec.choices else '')
    integer_range, float_range = [], []
    if spec.low is not None and spec.high is not None and spec.kind == 'integer':
        integer_range = [
            types.make('rcl_interfaces/msg/IntegerRange', from_value=int(spec.low), to_value=int(spec.high), step=1)
        ]
    elif spec.low is not None and spec.high is not None and spec.kind == 'double':
        low, high = float(spec.low), float(spec.high)
        float_range = [types.make('rcl_interfaces/msg/FloatingPointRange', from_value=low, to_value=high, step=0.0)]
    return types.make(
        'rcl_interfaces/msg/ParameterDescriptor',
        name=spec.name,
        type=0,  # PARAMETER_NOT_SET: declare_parameter takes the type from the default value
        description=text,
        additional_constraints='',
        read_only=False,
        dynamic_typing=False,
        floating_point_range=float_range,
        integer_range=integer_range,
    )


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec(
        'cameras',
        'string_array',
        list(FLASHOCC_CAMERA_ORDER),
        "camera names in the network's order; each subscribes <name>/image_rect/compressed (or "
        '<name>/image_rect with image_transport raw) and <name>/camera_info; cam_front gives the frame stamp',
    ),
    ParamSpec(
        'image_transport',
        'string',
        'compressed',
        'compressed: sensor_msgs/CompressedImage (JPEG/PNG); raw: sensor_msgs/Image through cv_bridge',
        choices=('compressed', 'raw'),
    ),
    ParamSpec(
        'pose_source',
        'string',
        'odom',
        'odom: nav_msgs/Odometry on "odom" as a 7th synchronised input, '
        'carried to the frame stamp with its twist; tf: TF lookup world_frame -> ego_frame at the frame stamp',
        choices=('odom', 'tf'),
    ),
    ParamSpec('ego_frame', 'string', 'base_link', 'the vehicle frame of the grid (x forward, y left, z up)'),
    ParamSpec('world_frame', 'string', 'map', 'the fixed frame of the ego pose'),
    ParamSpec(
        'sync_queue_size',
        'integer',
        3,
        'ApproximateTimeSynchronizer queue per input; keep small (2-5) with six or seven inputs',
        low=1,
        high=20,
    ),
    ParamSpec(
        'sync_slop',
        'double',
        0.1,
        'largest spread of the synchronised stamps within one frame [s]',
        low=0.001,
        high=1.0,
    ),
    ParamSpec(
        'tf_timeout', 'double', 0.2, 'pose_source tf: how long a frame waits for its transform [s]', low=0.0, high=5.0
    ),
    ParamSpec(
        'camera_timeout',
        'double',
        1.0,
        'a camera silent this long [s] of newer stamps is failed: frames go on without it (0: wait for all cameras)',
        low=0.0,
        high=60.0,
    ),
    ParamSpec(
        'failed_camera_mode',
        'string',
        'mask_tables',
        'frames without a failed camera: mask_tables zeroes its splat entries, blank_image feeds it black',
        choices=FAILED_CAMERA_MODES,
    ),
    ParamSpec(
        'backend',
        'string',
        'auto',
        'auto (tensorrt, else onnxruntime CUDA, else onnxruntime CPU), tensorrt, onnxruntime or torch',
        choices=BACKEND_CHOICES,
    ),
    ParamSpec(
        'device',
        'string',
        'auto',
        'onnxruntime/torch device: auto (cuda where available), cpu or cuda',
        choices=('auto', 'cpu', 'cuda'),
    ),
    ParamSpec(
        'model',
        'string',
        '',
        'ONNX file, TensorRT engine or .pt checkpoint; empty: the shipped model '
        'models/tiny_k2.onnx (tiny_k2.pt with torch) of the occ_perception share folder',
    ),
    ParamSpec(
        'model_config',
        'string',
        'tiny',
        "the model's configuration (tiny, flashocc-m0, flashocc-m1)",
        choices=('tiny', 'flashocc-m0', 'flashocc-m1'),
    ),
    ParamSpec(
        'history',
        'integer',
        2,
        "K cached BEV features the model takes (2 for the shipped tiny_k2); -1: the configuration's own",
        low=-1,
        high=8,
    ),
    ParamSpec(
        'precision', 'string', 'fp16', 'engine precision when tensorrt builds from ONNX', choices=('fp16', 'fp32')
    ),
    ParamSpec('threads', 'integer', 0, 'backend CPU threads; 0: the library default', low=0, high=64),
    ParamSpec('preprocess_threads', 'integer', 2, 'image decode threads', low=1, high=16),
    ParamSpec('history_span', 'double', 1.5, 'how long BEV features are kept [s]', low=0.0, high=10.0),
    ParamSpec(
        'max_gap', 'double', 1.0, 'reset the temporal cache after a longer gap between frames [s]', low=0.01, high=60.0
    ),
    ParamSpec(
        'max_speed',
        'double',
        60.0,
        'reset the temporal cache when the ego moved farther than max_speed * dt + jump_margin [m/s]',
        low=0.1,
        high=200.0,
    ),
    ParamSpec('jump_margin', 'double', 2.0, 'slack of the ego-jump test [m]', low=0.0, high=100.0),
    ParamSpec('publish_confidence', 'bool', True, 'fill SemanticOccupancy.confidence'),
    ParamSpec('points_surface_only', 'bool', True, 'occupancy/points carries only surface voxels (what RViz shows)'),
    ParamSpec('markers_rate', 'double', 2.0, 'MarkerArray rate limit [Hz]; 0 disables the markers', low=0.0, high=30.0),
    ParamSpec('marker_min_speed', 'double', 0.5, 'flow arrows for voxels faster than this [m/s]', low=0.0, high=50.0),
    ParamSpec(
        'costmap_z_min',
        'double',
        0.2,
        'lower edge of the vehicle height band of the costmap [m, base_link]',
        low=-10.0,
        high=10.0,
    ),
    ParamSpec(
        'costmap_z_max',
        'double',
        2.0,
        'upper edge of the vehicle height band of the costmap [m, base_link]',
        low=-10.0,
        high=10.0,
    ),
    ParamSpec(
        'costmap_rough_cost', 'integer', 50, 'cost of observed sidewalk/terrain/other flat columns', low=0, high=100
    ),
    ParamSpec('diagnostics_period', 'double', 1.0, 'period of /diagnostics [s]', low=0.1, high=60.0),
)


def param_defaults() -> dict[str, Any]:
    """name -> default of every :data:`PARAMS` entry (lists copied)."""
    return {p.name: list(p.default) if isinstance(p.default, list) else p.default for p in PARAMS}


@dataclass(frozen=True)
class NodeParams:
    """Validated parameter values (see :data:`PARAMS` for meanings and units)."""

    cameras: tuple[str, ...]
    image_transport: str
    pose_source: str
    ego_frame: str
    world_frame: str
    sync_queue_size: int
    sync_slop: float
    tf_timeout: float
    camera_timeout: float
    failed_camera_mode: str
    backend: str
    device: str
    model: str
    model_config: str
    history: int
    precision: str
    threads: int
    preprocess_threads: int
    history_span: float
    max_gap: float
    max_speed: float
    jump_margin: float
    publish_confidence: bool
    points_surface_only: bool
    markers_rate: float
    marker_min_speed: float
    costmap_z_min: float
    costmap_z_max: float
    costmap_rough_cost: int
    diagnostics_period: float


def _check(spec: ParamSpec, value: Any) -> Any:
    where = f'parameter {spec.name!r}'
    if spec.kind == 'bool':
        if not isinstance(value, bool):
            raise ParamError(f'{where}: expected true or false, got {value!r}')
        return value
    if spec.kind == 'string':
        if not isinstance(value, str):
            raise ParamError(f'{where}: expected a string, got {value!r}')
        if spec.choices and value not in spec.choices:
            raise ParamError(f'{where}: expected one of {list(spec.choices)}, got {value!r}')
        return value
    if spec.kind == 'string_array':
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise ParamError(f'{where}: expected a list of strings, got {value!r}')
        return tuple(value)
    if spec.kind == 'integer':
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamError(f'{where}: expected an integer, got {value!r}')
    elif spec.kind == 'double':
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise ParamError(f'{where}: expected a finite number, got {value!r}')
        value = float(value)
    if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
        raise ParamError(f'{where}: expected a value in [{spec.low}, {spec.high}], got {value!r}')
    return value


def validate_params(values: Mapping[str, Any]) -> NodeParams:
    """Check every parameter and their consistency.

    Args:
        values: name -> value as read from the node (missing names take their default).

    Returns:
        The validated :class:`NodeParams`.

    Raises:
        ParamError: an unknown name, a wrong type, a value outside its range or choices, an empty or repeated
            camera list, empty frame names, an empty or inverted costmap height band; the message names the
            parameter and the value.
    """
    known = {p.name for p in PARAMS}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ParamError(f'unknown parameter(s) {unknown}; known: {sorted(known)}')
    merged = param_defaults()
    merged.update(values)
    checked = {p.name: _check(p, merged[p.name]) for p in PARAMS}
    cameras = checked['cameras']
    if not cameras or any(not c.strip() for c in cameras):
        raise ParamError(f"parameter 'cameras': expected a non-empty list of camera names, got {list(cameras)}")
    if len(set(cameras)) != len(cameras):
        raise ParamError(f"parameter 'cameras': names must be unique, got {list(cameras)}")
    for name in ('ego_frame', 'world_frame'):
        if not checked[name].strip():
            raise ParamError(f'parameter {name!r}: expected a frame name, got an empty string')
    if checked['ego_frame'] == checked['world_frame']:
        raise ParamError(
            f'parameters ego_frame and world_frame: expected two frames, both are {checked["ego_frame"]!r}'
        )
    if not checked['costmap_z_max'] > checked['costmap_z_min']:
        raise ParamError(
            f'parameters costmap_z_min/costmap_z_max: expected z_min < z_max, got '
            f'{checked["costmap_z_min"]} and {checked["costmap_z_max"]}'
        )
    return NodeParams(**checked)
