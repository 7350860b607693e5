"""nuScenes (+ Occ3D ground truth and flow) to rosbag2 MCAP, one bag per scene.

Topics (DESIGN.md section 4; names absolute in a bag):

| topic | type | one message per |
|---|---|---|
| ``/<cam>/image_rect/compressed`` (six) | sensor_msgs/CompressedImage | camera sample_data (keyframes and sweeps); JPEG bytes unchanged |
| ``/<cam>/camera_info`` (six) | sensor_msgs/CameraInfo | camera sample_data, same stamp as the image |
| ``/tf_static`` | tf2_msgs/TFMessage | bag: base_link -> each camera and lidar_top, latched QoS |
| ``/tf`` | tf2_msgs/TFMessage | ego-pose timestamp: map -> base_link |
| ``/odom`` | nav_msgs/Odometry | ego-pose timestamp: map -> base_link, twist in base_link |
| ``/occupancy/ground_truth`` | occ_perception_msgs/SemanticOccupancy | keyframe (with ``gts``) |
| ``/occupancy/ground_truth/flow`` | occ_perception_msgs/OccupancyFlow | keyframe (``gts`` files with ``flow``) |
| ``/occupancy/ground_truth/mask_camera`` | occ_perception_msgs/SemanticOccupancy | keyframe (with ``gts``): labels 0/1 |
| ``/lidar_top/points`` | sensor_msgs/PointCloud2 | LIDAR_TOP sample_data (``lidar=True``) |

Ego poses: those of the converted sample_data (the six cameras and
LIDAR_TOP, keyframes and sweeps, whether or not the lidar points are
written, so the keyframe's own pose is on ``/tf`` for the ground truth), one
message per distinct timestamp. Stamps are the tables' microseconds times
1000; each message's log time is its header stamp; ``/tf_static`` is logged at
the first stamp of the bag.

The tables are read directly as JSON (scene, sample, sample_data, ego_pose,
calibrated_sensor, sensor): six small look-ups need no devkit, which pins
numpy < 2, loads every annotation table and is not installed everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pyquaternion import Quaternion

from ..geometry import GeometryError, Transform
from ..grid import GridSpec
from ..messages import (
    MessagesError,
    MessageTypes,
    flow_from_dense,
    make_occupancy_flow,
    make_semantic_occupancy,
)
from ..rig import NUSCENES_CHANNELS, channel_to_frame
from .bags import BagError, BagWriter

__all__ = [
    'GT_FLOW_TOPIC',
    'GT_MASK_TOPIC',
    'GT_TOPIC',
    'LIDAR_CHANNEL',
    'LIDAR_TOPIC',
    'MASK_CLASS_NAMES',
    'ODOM_TOPIC',
    'TF_STATIC_TOPIC',
    'TF_TOPIC',
    'ConvertConfig',
    'ConvertError',
    'NuScenesTables',
    'SceneBag',
    'camera_info_topic',
    'convert',
    'convert_scene',
    'image_topic',
    'odometry_twists',
]

LIDAR_CHANNEL = 'LIDAR_TOP'
TF_TOPIC = '/tf'
TF_STATIC_TOPIC = '/tf_static'
ODOM_TOPIC = '/odom'
GT_TOPIC = '/occupancy/ground_truth'
GT_FLOW_TOPIC = '/occupancy/ground_truth/flow'
GT_MASK_TOPIC = '/occupancy/ground_truth/mask_camera'
LIDAR_TOPIC = '/lidar_top/points'
MAP_FRAME = 'map'
EGO_FRAME = 'base_link'
MASK_CLASS_NAMES = ('not_observed', 'observed')
"""class_names of the mask topic: label 1 where a camera ray reaches the voxel (Occ3D's mask_camera)."""

# nuScenes .pcd.bin: float32 x, y, z [m], intensity, ring index, in the lidar frame
_LIDAR_FIELDS = ('x', 'y', 'z', 'intensity', 'ring')
_TABLES = ('scene', 'sample', 'sample_data', 'ego_pose', 'calibrated_sensor', 'sensor')


def image_topic(channel: str) -> str:
    """``CAM_FRONT`` -> ``/cam_front/image_rect/compressed``."""
    return f'/{channel_to_frame(channel)}/image_rect/compressed'


def camera_info_topic(channel: str) -> str:
    """``CAM_FRONT`` -> ``/cam_front/camera_info``."""
    return f'/{channel_to_frame(channel)}/camera_info'


class ConvertError(ValueError):
    """The nuScenes folder, tables, ground truth or output folder is not as expected."""


@dataclass(frozen=True)
class ConvertConfig:
    """What to convert.

    Attributes:
        root: nuScenes dataroot (holds ``<version>/``, ``samples/``, ``sweeps/``).
        out: folder receiving one bag folder per scene (``<out>/<scene name>/``).
        version: table folder, e.g. ``v1.0-mini``.
        gts: Occ3D ground-truth folder (``<gts>/<scene>/<sample token>/labels.npz``), or None for no ground truth.
        scenes: scene names to convert; all when empty.
        distro: ``'jazzy'`` or ``'humble'`` (typestore and bag format version).
        lidar: also write LIDAR_TOP as PointCloud2.
        compress: zstd-compress the MCAP chunks.
    """

    root: Path
    out: Path
    version: str = 'v1.0-mini'
    gts: Path | None = None
    scenes: tuple[str, ...] = ()
    distro: str = 'jazzy'
    lidar: bool = False
    compress: bool = True


@dataclass(frozen=True)
class SceneBag:
    """One written bag: scene name, bag folder and messages per topic."""

    scene: str
    path: Path
    counts: dict[str, int] = field(default_factory=dict)


class NuScenesTables:
    """The six nuScenes tables the conversion needs, indexed by token.

    Args:
        root: dataroot. version: table folder.

    Raises:
        ConvertError: the folder or a table is missing or not valid JSON.
    """

    def __init__(self, root: Path | str, version: str) -> None:
        self.root = Path(root)
        folder = self.root / version
        if not folder.is_dir():
            raise ConvertError(f'{folder}: no nuScenes table folder (expected NUSCENES_ROOT/{version}/*.json)')
        self.tables: dict[str, list[dict[str, Any]]] = {}
        for name in _TABLES:
            path = folder / f'{name}.json'
            try:
                self.tables[name] = json.loads(path.read_text())
            except FileNotFoundError:
                raise ConvertError(f'{path}: missing nuScenes table {name!r}') from None
            except json.JSONDecodeError as err:
                raise ConvertError(f'{path}: not valid JSON ({err})') from None
        self.by_token = {name: {r['token']: r for r in rows} for name, rows in self.tables.items()}
        # one pass each, so that a scene's records are found without scanning the whole table per scene
        self._samples_of_scene: dict[str, list[dict[str, Any]]] = {}
        for s in self.tables['sample']:
            self._samples_of_scene.setdefault(s['scene_token'], []).append(s)
        self._data_of_sample: dict[str, list[dict[str, Any]]] = {}
        for sd in self.tables['sample_data']:
            self._data_of_sample.setdefault(sd['sample_token'], []).append(sd)

    def get(self, table: str, token: str) -> dict[str, Any]:
        """The record of ``table`` with ``token``.

        Raises:
            ConvertError: no such record.
        """
        try:
            return self.by_token[table][token]
        except KeyError:
            raise ConvertError(f'nuScenes table {table!r} has no record {token!r}') from None

    def scene_names(self) -> list[str]:
        return [s['name'] for s in self.tables['scene']]

    def channel(self, sample_data: dict[str, Any]) -> str:
        """The sensor channel (``CAM_FRONT``) of a sample_data record."""
        calib = self.get('calibrated_sensor', sample_data['calibrated_sensor_token'])
        return str(self.get('sensor', calib['sensor_token'])['channel'])

    def scene_samples(self, scene: dict[str, Any]) -> list[dict[str, Any]]:
        """The scene's keyframes (sample records) in time order."""
        return sorted(self._samples_of_scene.get(scene['token'], []), key=lambda s: s['timestamp'])

    def scene_sample_data(self, scene: dict[str, Any], channels: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """Channel -> the scene's sample_data of that channel (keyframes and sweeps) in time order."""
        out: dict[str, list[dict[str, Any]]] = {ch: [] for ch in channels}
        for sample in self._samples_of_scene.get(scene['token'], []):
            for sd in self._data_of_sample.get(sample['token'], []):
                ch = self.channel(sd)
                if ch in out:
                    out[ch].append(sd)
        for rows in out.values():
            rows.sort(key=lambda r: r['timestamp'])
        return out


# ---------------------------------------------------------------------------
# message builders (rosbags typestore classes through MessageTypes)


def _transform_msg(types: MessageTypes, t: Transform) -> Any:
    x, y, z, w = t.xyzw()
    return types.make(
        'geometry_msgs/msg/Transform',
        translation=types.make(
            'geometry_msgs/msg/Vector3', x=float(t.translation[0]), y=float(t.translation[1]), z=float(t.translation[2])
        ),
        rotation=types.make('geometry_msgs/msg/Quaternion', x=x, y=y, z=z, w=w),
    )


def _tf_message(types: MessageTypes, stamp_ns: int, parent: str, children: Sequence[tuple[str, Transform]]) -> Any:
    transforms = [
        types.make(
            'geometry_msgs/msg/TransformStamped',
            header=types.header(stamp_ns, parent),
            child_frame_id=child,
            transform=_transform_msg(types, t),
        )
        for child, t in children
    ]
    return types.make('tf2_msgs/msg/TFMessage', transforms=transforms)


def _vector3(types: MessageTypes, v: np.ndarray) -> Any:
    return types.make('geometry_msgs/msg/Vector3', x=float(v[0]), y=float(v[1]), z=float(v[2]))


def _odometry(types: MessageTypes, stamp_ns: int, pose: Transform, linear: np.ndarray, angular: np.ndarray) -> Any:
    x, y, z, w = pose.xyzw()
    p = types.make(
        'geometry_msgs/msg/Pose',
        position=types.make(
            'geometry_msgs/msg/Point',
            x=float(pose.translation[0]),
            y=float(pose.translation[1]),
            z=float(pose.translation[2]),
        ),
        orientation=types.make('geometry_msgs/msg/Quaternion', x=x, y=y, z=z, w=w),
    )
    twist = types.make('geometry_msgs/msg/Twist', linear=_vector3(types, linear), angular=_vector3(types, angular))
    return types.make(
        'nav_msgs/msg/Odometry',
        header=types.header(stamp_ns, MAP_FRAME),
        child_frame_id=EGO_FRAME,
        pose=types.make('geometry_msgs/msg/PoseWithCovariance', pose=p, covariance=np.zeros(36)),
        twist=types.make('geometry_msgs/msg/TwistWithCovariance', twist=twist, covariance=np.zeros(36)),
    )


def _camera_info(types: MessageTypes, stamp_ns: int, frame: str, k: np.ndarray, width: int, height: int) -> Any:
    """CameraInfo of a rectified pinhole image: P = [K | 0], R = I, plumb_bob with five zero coefficients."""
    p = np.zeros((3, 4))
    p[:, :3] = k
    roi = types.make('sensor_msgs/msg/RegionOfInterest', x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return types.make(
        'sensor_msgs/msg/CameraInfo',
        header=types.header(stamp_ns, frame),
        height=int(height),
        width=int(width),
        distortion_model='plumb_bob',
        d=np.zeros(5),
        k=np.ascontiguousarray(k, dtype=np.float64).reshape(9),
        r=np.eye(3).reshape(9),
        p=p.reshape(12),
        binning_x=0,
        binning_y=0,
        roi=roi,
    )


def _image_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in ('.jpg', '.jpeg'):
        return 'jpeg'
    if suffix == '.png':
        return 'png'
    raise ConvertError(f'{path}: expected a JPEG (.jpg) or PNG camera image')


def _pointcloud(types: MessageTypes, stamp_ns: int, frame: str, data: bytes, path: Path) -> Any:
    step = 4 * len(_LIDAR_FIELDS)
    if len(data) % step:
        raise ConvertError(
            f'{path}: expected float32 points of {len(_LIDAR_FIELDS)} values ({_LIDAR_FIELDS}), '
            f'got {len(data)} bytes, not a multiple of {step}'
        )
    count = len(data) // step
    fields = [
        types.make('sensor_msgs/msg/PointField', name=n, offset=4 * i, datatype=7, count=1)
        for i, n in enumerate(_LIDAR_FIELDS)
    ]
    return types.make(
        'sensor_msgs/msg/PointCloud2',
        header=types.header(stamp_ns, frame),
        height=1,
        width=count,
        fields=fields,
        is_bigendian=False,
        point_step=step,
        row_step=step * count,
        data=np.frombuffer(data, dtype=np.uint8),
        is_dense=True,
    )


def _pose(record: dict[str, Any], what: str) -> Transform:
    try:
        return Transform(record['rotation'], record['translation'])
    except (GeometryError, KeyError) as err:
        raise ConvertError(f'{what}: {err}') from err


def odometry_twists(stamps_ns: np.ndarray, poses: Sequence[Transform]) -> tuple[np.ndarray, np.ndarray]:
    """Body-frame twists from a pose sequence by differences of the neighbours.

    Args:
        stamps_ns: (N,) strictly increasing stamps [ns]. poses: N poses ``T_map_base_link``.

    Returns:
        ``(linear, angular)``: (N, 3) [m/s] and (N, 3) [rad/s] in ``base_link`` at each stamp, from
        poses i-1 and i+1 (the first and last from their one neighbour); zeros for a single pose.
    """
    n = len(poses)
    linear, angular = np.zeros((n, 3)), np.zeros((n, 3))
    for i in range(n):
        a, b = max(i - 1, 0), min(i + 1, n - 1)
        if a == b:
            continue
        dt = (int(stamps_ns[b]) - int(stamps_ns[a])) * 1e-9
        linear[i] = poses[i].rotation_matrix().T @ (poses[b].translation - poses[a].translation) / dt
        # rotation from a to b in a's body frame, as a rotation vector, then into the body frame at i
        rel: Quaternion = poses[a].rotation.inverse * poses[b].rotation
        if rel.w < 0:  # the same rotation, the short way round
            rel = -rel
        rotvec = np.asarray(rel.axis) * rel.angle if rel.angle != 0.0 else np.zeros(3)
        to_i = (poses[i].rotation.inverse * poses[a].rotation).rotation_matrix
        angular[i] = to_i @ rotvec / dt
    return linear, angular


# ---------------------------------------------------------------------------
# conversion


def _sensor_calibration(tables: NuScenesTables, rows: list[dict[str, Any]], channel: str, scene: str) -> dict[str, Any]:
    tokens = {r['calibrated_sensor_token'] for r in rows}
    if len(tokens) != 1:
        raise ConvertError(f'{scene}: {channel} has {len(tokens)} calibrations in one scene; expected exactly one')
    return tables.get('calibrated_sensor', tokens.pop())


def _load_gt(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as z:
            gt = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ConvertError(f'{path}: missing Occ3D ground truth for this keyframe') from None
    except (OSError, ValueError) as err:
        raise ConvertError(f'{path}: cannot read as labels.npz ({err})') from None
    for key in ('semantics', 'mask_camera'):
        if key not in gt:
            raise ConvertError(f'{path}: expected arrays semantics and mask_camera, got {sorted(gt)}')
    return gt


def convert_scene(tables: NuScenesTables, scene_name: str, config: ConvertConfig, progress: bool = True) -> SceneBag:
    """Write the bag of one scene to ``<config.out>/<scene_name>/``.

    Raises:
        ConvertError: unknown scene, missing files, inconsistent calibration, malformed
            ground truth, or the bag folder exists.
    """
    scenes = {s['name']: s for s in tables.tables['scene']}
    if scene_name not in scenes:
        raise ConvertError(f'unknown scene {scene_name!r}; the tables have {sorted(scenes)}')
    scene = scenes[scene_name]
    grid = GridSpec()
    types = MessageTypes.rosbags(config.distro)
    channels = [*NUSCENES_CHANNELS, LIDAR_CHANNEL]
    per_channel = tables.scene_sample_data(scene, channels)
    for ch in NUSCENES_CHANNELS:
        if not per_channel[ch]:
            raise ConvertError(f'{scene_name}: no {ch} sample_data; expected all six cameras')
    samples = tables.scene_samples(scene)

    # static transforms base_link <- sensor
    static: list[tuple[str, Transform]] = []
    for ch in channels:
        if per_channel[ch]:
            calib = _sensor_calibration(tables, per_channel[ch], ch, scene_name)
            static.append((channel_to_frame(ch), _pose(calib, f'calibrated_sensor of {ch}')))

    # ego poses of the converted sample_data, one per distinct timestamp
    pose_by_stamp: dict[int, Transform] = {}
    for ch in channels:
        for sd in per_channel[ch]:
            rec = tables.get('ego_pose', sd['ego_pose_token'])
            stamp = int(rec['timestamp']) * 1000
            if stamp not in pose_by_stamp:
                pose_by_stamp[stamp] = _pose(rec, f'ego_pose {rec["token"]}')
    pose_stamps = np.array(sorted(pose_by_stamp), dtype=np.int64)
    poses = [pose_by_stamp[int(s)] for s in pose_stamps]
    linear, angular = odometry_twists(pose_stamps, poses)

    # events: (stamp [ns], order at equal stamps, kind, payload)
    events: list[tuple[int, int, str, Any]] = []
    for i, stamp in enumerate(pose_stamps):
        events.append((int(stamp), 0, 'pose', i))
    for ch in NUSCENES_CHANNELS:
        for sd in per_channel[ch]:
            events.append((int(sd['timestamp']) * 1000, 1, 'camera', (ch, sd)))
    if config.lidar:
        for sd in per_channel[LIDAR_CHANNEL]:
            events.append((int(sd['timestamp']) * 1000, 2, 'lidar', sd))
    flow_present: bool | None = None
    if config.gts is not None:
        for sample in samples:
            events.append((int(sample['timestamp']) * 1000, 3, 'gt', sample))
        if samples:
            first = _load_gt(Path(config.gts) / scene_name / samples[0]['token'] / 'labels.npz')
            flow_present = 'flow' in first
    events.sort(key=lambda e: (e[0], e[1]))
    if not events:
        raise ConvertError(f'{scene_name}: nothing to convert')

    calib_k = {}
    for ch in NUSCENES_CHANNELS:
        calib = _sensor_calibration(tables, per_channel[ch], ch, scene_name)
        k = np.asarray(calib.get('camera_intrinsic', []), dtype=np.float64)
        if k.shape != (3, 3) or not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0:
            raise ConvertError(
                f'{scene_name}: calibrated_sensor of {ch}: expected a 3x3 camera_intrinsic with '
                f'positive focal lengths, got {calib.get("camera_intrinsic")}'
            )
        calib_k[ch] = k

    path = Path(config.out) / scene_name
    try:
        writer = BagWriter(path, distro=config.distro, compress=config.compress)
    except BagError as err:
        raise ConvertError(str(err)) from None
    from tqdm import tqdm

    with writer:
        writer.add_topic(TF_STATIC_TOPIC, 'tf2_msgs/msg/TFMessage', latched=True)
        writer.add_topic(TF_TOPIC, 'tf2_msgs/msg/TFMessage')
        writer.add_topic(ODOM_TOPIC, 'nav_msgs/msg/Odometry')
        for ch in NUSCENES_CHANNELS:
            writer.add_topic(image_topic(ch), 'sensor_msgs/msg/CompressedImage')
            writer.add_topic(camera_info_topic(ch), 'sensor_msgs/msg/CameraInfo')
        if config.lidar:
            writer.add_topic(LIDAR_TOPIC, 'sensor_msgs/msg/PointCloud2')
        if config.gts is not None:
            writer.add_topic(GT_TOPIC, 'occ_perception_msgs/msg/SemanticOccupancy')
            writer.add_topic(GT_MASK_TOPIC, 'occ_perception_msgs/msg/SemanticOccupancy')
            if flow_present:
                writer.add_topic(GT_FLOW_TOPIC, 'occ_perception_msgs/msg/OccupancyFlow')

        start = events[0][0]
        writer.write(TF_STATIC_TOPIC, start, _tf_message(types, start, EGO_FRAME, static))
        bar = tqdm(events, desc=scene_name, unit='msg', disable=not progress, leave=True)
        for stamp, _, kind, item in bar:
            if kind == 'pose':
                writer.write(TF_TOPIC, stamp, _tf_message(types, stamp, MAP_FRAME, [(EGO_FRAME, poses[item])]))
                writer.write(ODOM_TOPIC, stamp, _odometry(types, stamp, poses[item], linear[item], angular[item]))
            elif kind == 'camera':
                ch, sd = item
                frame = channel_to_frame(ch)
                file = tables.root / sd['filename']
                try:
                    data = file.read_bytes()
                except OSError as err:
                    raise ConvertError(
                        f'{file}: cannot read the {ch} image of sample_data {sd["token"]} ({err})'
                    ) from None
                msg = types.make(
                    'sensor_msgs/msg/CompressedImage',
                    header=types.header(stamp, frame),
                    format=_image_format(file),
                    data=np.frombuffer(data, dtype=np.uint8),
                )
                writer.write(
                    camera_info_topic(ch),
                    stamp,
                    _camera_info(types, stamp, frame, calib_k[ch], sd['width'], sd['height']),
                )
                writer.write(image_topic(ch), stamp, msg)
            elif kind == 'lidar':
                file = tables.root / item['filename']
                try:
                    data = file.read_bytes()
                except OSError as err:
                    raise ConvertError(f'{file}: cannot read the LIDAR_TOP scan ({err})') from None
                writer.write(LIDAR_TOPIC, stamp, _pointcloud(types, stamp, channel_to_frame(LIDAR_CHANNEL), data, file))
            else:
                _write_gt(
                    writer,
                    types,
                    grid,
                    Path(config.gts or '') / scene_name / item['token'] / 'labels.npz',
                    stamp,
                    bool(flow_present),
                )
        bar.close()
    return SceneBag(scene_name, path, dict(writer.counts))


def _write_gt(writer: BagWriter, types: MessageTypes, grid: GridSpec, path: Path, stamp: int, flow: bool) -> None:
    gt = _load_gt(path)
    semantics, mask = gt['semantics'], gt['mask_camera']
    try:
        writer.write(GT_TOPIC, stamp, make_semantic_occupancy(types, stamp, EGO_FRAME, grid, semantics))
        writer.write(
            GT_MASK_TOPIC,
            stamp,
            make_semantic_occupancy(
                types, stamp, EGO_FRAME, grid, (mask != 0).astype(np.uint8), class_names=MASK_CLASS_NAMES, free_label=0
            ),
        )
        if flow:
            if 'flow' not in gt:
                raise ConvertError(f"{path}: has no flow array but the scene's first keyframe has one")
            indices, velocity = flow_from_dense(semantics, gt['flow'])
            writer.write(GT_FLOW_TOPIC, stamp, make_occupancy_flow(types, stamp, EGO_FRAME, grid, indices, velocity))
    except MessagesError as err:
        raise ConvertError(f'{path}: {err}') from None


def convert(config: ConvertConfig, progress: bool = True) -> list[SceneBag]:
    """Convert the selected scenes, one bag folder each under ``config.out``.

    Raises:
        ConvertError: bad tables, unknown scene names, missing files or an existing bag folder;
            every requested bag folder is checked before anything is written.
    """
    tables = NuScenesTables(config.root, config.version)
    names = list(config.scenes) or tables.scene_names()
    unknown = [n for n in names if n not in tables.scene_names()]
    if unknown:
        raise ConvertError(f'unknown scene(s) {unknown}; {config.root}/{config.version} has {tables.scene_names()}')
    if config.gts is not None and not Path(config.gts).is_dir():
        raise ConvertError(f'{config.gts}: no Occ3D ground-truth folder (expected GTS/<scene>/<sample>/labels.npz)')
    existing = [str(Path(config.out) / n) for n in names if (Path(config.out) / n).exists()]
    if existing:
        raise ConvertError(f'bag folders exist already: {existing}; remove them or choose another --out')
    Path(config.out).mkdir(parents=True, exist_ok=True)
    return [convert_scene(tables, name, config, progress=progress) for name in names]
