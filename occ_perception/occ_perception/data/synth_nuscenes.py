"""Write synthetic scenes as a nuScenes-schema dataset with Occ3D ground truth and flow.

Layout under ``out``::

    <version>/                      nuScenes v1.0 JSON tables (scene, sample, sample_data, ego_pose, ...)
    samples/CAM_*/*.jpg             keyframe images (6 cameras)
    samples/LIDAR_TOP/*.pcd.bin     keyframe lidar scans, float32 (x, y, z, intensity, ring) per point
    sweeps/CAM_*/*.jpg              12 Hz camera frames between keyframes (with ``sweeps=True``)
    maps/<token>.png                drivable-area mask per log, 0.1 m per pixel (the devkit's MapMask)
    preview/<scene>.png             the middle keyframe: six cameras and a top view of the ground truth
    gts/<scene>/<sample>/labels.npz Occ3D ground truth of each keyframe (+ flow)

Timing follows nuScenes: a keyframe (sample) every 0.5 s at the LIDAR_TOP
timestamp; the six cameras fire one after another as the lidar sweeps past
them, 8 ms apart, from 42 ms before the lidar timestamp (CAM_FRONT_LEFT) to
2 ms before (CAM_BACK_LEFT). Every sample_data has its own ego_pose at its own
timestamp, and every image is rendered with the world (ego and agents) at that
timestamp. Timestamps in the tables are integer microseconds.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..geometry import Transform
from ..grid import OCC3D_GRID, class_colors
from ..rig import NUSCENES_CALIBRATION, Rig
from .synth_gt import GroundTruth, ground_truth, save_labels_npz
from .synth_render import LidarSpec, render_camera, scan_lidar
from .synth_world import World, WorldState, generate_world

__all__ = [
    'CAMERA_CHANNELS',
    'CAMERA_OFFSETS_US',
    'SynthConfig',
    'SynthError',
    'SynthReport',
    'generate_dataset',
    'scene_world',
]


class SynthError(ValueError):
    """Bad arguments for the synthetic dataset (naming the argument and what was expected)."""


CAMERA_CHANNELS = ('CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_BACK_RIGHT', 'CAM_BACK', 'CAM_BACK_LEFT', 'CAM_FRONT_LEFT')
# Offsets of each camera's exposure relative to the LIDAR_TOP timestamp [us]: sequential, clockwise
# from the front-left, as the lidar sweeps across each camera's field of view.
CAMERA_OFFSETS_US = {
    'CAM_FRONT_LEFT': -42_000,
    'CAM_FRONT': -34_000,
    'CAM_FRONT_RIGHT': -26_000,
    'CAM_BACK_RIGHT': -18_000,
    'CAM_BACK': -10_000,
    'CAM_BACK_LEFT': -2_000,
}
KEYFRAME_PERIOD_US = 500_000  # 2 Hz
CAMERA_SWEEPS_PER_KEYFRAME = 6  # 12 Hz cameras: 5 sweeps between two keyframes
LIDAR = 'LIDAR_TOP'
BASE_TIME_US = 1_767_225_600 * 1_000_000  # 2026-01-01T00:00:00Z
SCENE_SPACING_US = 3600 * 1_000_000
ANNOTATION_RANGE = 60.0  # [m] objects whose centre is this close to the ego are annotated

CATEGORIES = {
    'vehicle.car': 'Vehicle designed primarily for personal use.',
    'vehicle.truck': 'Vehicles primarily designed to haul cargo.',
    'vehicle.bus.rigid': 'Rigid bus.',
    'vehicle.trailer': 'Any vehicle trailer.',
    'vehicle.construction': 'Vehicles primarily designed for construction.',
    'vehicle.motorcycle': 'Gasoline or electric powered 2-wheeled vehicle.',
    'vehicle.bicycle': 'Human or electric powered 2-wheeled vehicle.',
    'human.pedestrian.adult': 'Adult subcategory.',
    'movable_object.barrier': 'Temporary road barrier placed in the scene.',
    'movable_object.trafficcone': 'All types of traffic cone.',
    'movable_object.pushable_pullable': 'Objects that a pedestrian may push or pull (bins, carts).',
}
ATTRIBUTES = {
    'vehicle.moving': 'Vehicle is moving.',
    'vehicle.stopped': 'Vehicle, with a driver/rider in/on it, is currently stationary but has an intent to move.',
    'vehicle.parked': 'Vehicle is stationary (usually for a longer duration) with no immediate intent to move.',
    'cycle.with_rider': 'There is someone on the bicycle or motorcycle.',
    'cycle.without_rider': 'There is NO rider on the bicycle or motorcycle.',
    'pedestrian.sitting_lying_down': 'The human is sitting or lying down.',
    'pedestrian.standing': 'The human is standing.',
    'pedestrian.moving': 'The human is moving.',
}
VISIBILITY = [
    ('1', 'v0-40', 'visibility of whole object is between 0 and 40%'),
    ('2', 'v40-60', 'visibility of whole object is between 40 and 60%'),
    ('3', 'v60-80', 'visibility of whole object is between 60 and 80%'),
    ('4', 'v80-100', 'visibility of whole object is between 80 and 100%'),
]


@dataclass
class SynthConfig:
    """What to generate.

    Attributes:
        out: output folder (created).
        scenes: number of scenes (>= 1).
        seconds: length of each scene [s] (> 0); keyframes = round(2 * seconds).
        seed: dataset seed (>= 0); scene i uses :func:`scene_seed`.
        width, height: camera image size [px] (intrinsics are scaled from nuScenes' 1600 x 900).
        sweeps: also render the 12 Hz camera frames between keyframes.
        version: name of the table folder (nuScenes ``version``).
        jpeg_quality: 1..100.
        jobs: worker processes, one scene each at a time (the output does not depend on it).
    """

    out: Path
    scenes: int = 2
    seconds: float = 10.0
    seed: int = 0
    width: int = 800
    height: int = 450
    sweeps: bool = False
    version: str = 'v1.0-mini'
    jpeg_quality: int = 90
    jobs: int = 1

    def validate(self) -> None:
        """Raises SynthError naming the first bad argument."""
        if int(self.scenes) != self.scenes or self.scenes < 1:
            raise SynthError(f'scenes: expected a positive integer, got {self.scenes!r}')
        if not (np.isfinite(self.seconds) and 0.5 <= self.seconds <= 3600):
            raise SynthError(f'seconds: expected a scene length between 0.5 and 3600 s, got {self.seconds!r}')
        if int(self.seed) != self.seed or self.seed < 0:
            raise SynthError(f'seed: expected a non-negative integer, got {self.seed!r}')
        for name in ('width', 'height'):
            v = getattr(self, name)
            if int(v) != v or not 16 <= v <= 4096:
                raise SynthError(f'{name}: expected an image size between 16 and 4096 pixels, got {v!r}')
        if int(self.jobs) != self.jobs or not 1 <= self.jobs <= 64:
            raise SynthError(f'jobs: expected 1..64 worker processes, got {self.jobs!r}')
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise SynthError(f'jpeg_quality: expected 1..100, got {self.jpeg_quality!r}')
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise SynthError(f'out: expected a folder, {str(self.out)!r} is a file')
        if not self.version or '/' in self.version:
            raise SynthError(f'version: expected a folder name such as v1.0-mini, got {self.version!r}')

    @property
    def keyframes(self) -> int:
        return max(1, int(round(self.seconds * 2)))


@dataclass
class SynthReport:
    """What was written and how long it took.

    Attributes:
        keyframe_seconds: wall time of each keyframe (six images, lidar, ground truth, files) [s].
        sweep_seconds: wall time of each sweep frame (one camera image) [s].
        classes: per scene, the sorted Occ3D labels that occur in its ground truth.
    """

    out: Path
    scene_names: list = field(default_factory=list)
    keyframe_seconds: list = field(default_factory=list)
    sweep_seconds: list = field(default_factory=list)
    classes: list = field(default_factory=list)
    total_seconds: float = 0.0


def scene_seed(seed: int, index: int) -> int:
    """World seed of scene ``index`` of a dataset with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def scene_world(cfg: SynthConfig, index: int) -> World:
    """The world of scene ``index`` exactly as :func:`generate_dataset` builds it."""
    start_ns = (BASE_TIME_US + index * SCENE_SPACING_US) * 1000
    return generate_world(
        scene_seed(cfg.seed, index), duration_s=cfg.keyframes * 0.5 + 1.0, start_ns=start_ns, name=f'scene-{index:04d}'
    )


def _token(*parts) -> str:
    return hashlib.md5('/'.join(str(p) for p in parts).encode()).hexdigest()


def _pose_record(token: str, pose: Transform, timestamp_us: int) -> dict:
    return {
        'token': token,
        'timestamp': int(timestamp_us),
        'rotation': [float(v) for v in pose.rotation.elements],
        'translation': [float(v) for v in pose.translation],
    }


def _yaw_quaternion(yaw: float) -> list:
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def _write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    ok, buf = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise SynthError(f'could not encode {path}')
    path.write_bytes(buf.tobytes())


def _write_map(path: Path, world: World) -> None:
    """Drivable-area mask at 0.1 m/px covering map [0, x_max] x [0, y_max], row 0 at y_max (nuScenes MapMask)."""
    res = 0.1
    scale = int(round(world.raster_res / res))
    drive = (world.dist < world.params.road_half_width).astype(np.uint8) * 255
    drive = np.repeat(np.repeat(drive, scale, axis=0), scale, axis=1)
    ox, oy = (int(round(v / res)) for v in world.raster_origin)
    full = np.zeros((oy + drive.shape[0], ox + drive.shape[1]), np.uint8)
    full[oy:, ox:] = drive
    ok, buf = cv2.imencode('.png', full[::-1], [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise SynthError(f'could not encode {path}')
    path.write_bytes(buf.tobytes())


def bev_image(gt: GroundTruth, scale: int = 2) -> np.ndarray:
    """Top view of the ground truth (H, W, 3) uint8 RGB: the highest occupied voxel's class colour per column,
    x (forward) up and y (left) to the left; columns never seen by a camera are darkened."""
    occupied = gt.semantics != 17
    top = gt.semantics.shape[2] - 1 - np.argmax(occupied[:, :, ::-1], axis=2)
    label = np.take_along_axis(gt.semantics, top[..., None], axis=2)[..., 0]
    img = class_colors()[label]
    img[~occupied.any(axis=2)] = 0
    seen = gt.mask_camera.any(axis=2)
    img[~seen] = img[~seen] // 3
    img = img[::-1, ::-1]  # rows: -x, columns: -y
    return np.kron(img, np.ones((scale, scale, 1), np.uint8))


def _preview(images: list[np.ndarray], gt: GroundTruth) -> np.ndarray:
    """Six camera images (rig order: front-left, front, front-right over back-left, back, back-right) beside a BEV."""
    h = 225
    small = [
        cv2.resize(im, (int(round(im.shape[1] * h / im.shape[0])), h), interpolation=cv2.INTER_AREA) for im in images
    ]
    grid = np.concatenate([np.concatenate(small[:3], axis=1), np.concatenate(small[3:], axis=1)], axis=0)
    bev = cv2.resize(bev_image(gt, 1), (grid.shape[0], grid.shape[0]), interpolation=cv2.INTER_NEAREST)
    return np.concatenate([grid, bev], axis=1)


class _Tables:
    def __init__(self) -> None:
        self.t: dict[str, list] = {
            name: []
            for name in (
                'category',
                'attribute',
                'visibility',
                'instance',
                'sensor',
                'calibrated_sensor',
                'ego_pose',
                'log',
                'scene',
                'sample',
                'sample_data',
                'sample_annotation',
                'map',
            )
        }

    def add(self, table: str, record: dict) -> dict:
        self.t[table].append(record)
        return record

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, records in self.t.items():
            (folder / f'{name}.json').write_text(json.dumps(records, indent=1))


def _annotation_boxes(world: World, state: WorldState) -> list[int]:
    """Indices of annotated objects near the ego at ``state``."""
    ego_xy = state.ego_pose.translation[:2]
    near = np.linalg.norm(state.obj_xy - ego_xy, axis=1) < ANNOTATION_RANGE
    return [int(i) for i in np.nonzero(near)[0] if world.obj_category[i]]


@dataclass
class _SceneResult:
    """One scene's table records (in table order), timings and ground-truth classes."""

    name: str = ''
    tables: dict = field(default_factory=dict)
    keyframe_seconds: list = field(default_factory=list)
    sweep_seconds: list = field(default_factory=list)
    classes: list = field(default_factory=list)


def _common_tables(seed: int) -> _Tables:
    """The tables shared by all scenes: category, attribute, visibility, sensor."""
    tables = _Tables()
    for name, desc in CATEGORIES.items():
        tables.add('category', {'token': _token(seed, 'category', name), 'name': name, 'description': desc})
    for name, desc in ATTRIBUTES.items():
        tables.add('attribute', {'token': _token(seed, 'attribute', name), 'name': name, 'description': desc})
    for token, level, desc in VISIBILITY:
        tables.add('visibility', {'token': token, 'level': level, 'description': desc})
    for ch in (*CAMERA_CHANNELS, LIDAR):
        tables.add(
            'sensor',
            {'token': _token(seed, 'sensor', ch), 'channel': ch, 'modality': 'lidar' if ch == LIDAR else 'camera'},
        )
    return tables


def _frames_per_scene(cfg: SynthConfig) -> int:
    n_key = cfg.keyframes
    return n_key + ((n_key - 1) * 6 * (CAMERA_SWEEPS_PER_KEYFRAME - 1) if cfg.sweeps else 0)


def _write_scene(
    cfg: SynthConfig,
    si: int,
    tick: Callable[[], None] = lambda: None,
    on_keyframe: Callable[[str, int, GroundTruth], None] | None = None,
) -> _SceneResult:
    """Render and write scene ``si`` (images, lidar, ground truth, map, preview); return its table records."""
    out = Path(cfg.out)
    rig = Rig.nuscenes(int(cfg.width), int(cfg.height))
    channels_of = {c: rig.camera(c.lower()) for c in CAMERA_CHANNELS}
    lidar_cal = NUSCENES_CALIBRATION[LIDAR]
    lidar_to_ego = Transform(lidar_cal['rotation'], np.asarray(lidar_cal['translation'], dtype=np.float64))
    lidar_spec = LidarSpec()
    seed = int(cfg.seed)
    sensor_token = {ch: _token(seed, 'sensor', ch) for ch in (*CAMERA_CHANNELS, LIDAR)}
    n_key = cfg.keyframes
    tables = _Tables()
    result = _SceneResult()

    world = scene_world(cfg, si)
    scene_name = world.name
    scene_token = _token(seed, 'scene', si)
    log_token = _token(seed, 'log', si)
    logname = f'synth{seed}-2026-01-01-{si // 60:02d}-{si % 60:02d}-00+0000'
    tables.add(
        'log',
        {
            'token': log_token,
            'logfile': logname,
            'vehicle': 'synth-ego',
            'date_captured': '2026-01-01',
            'location': 'synthetic-town',
        },
    )
    map_token = _token(seed, 'map', si)
    (out / 'maps').mkdir(parents=True, exist_ok=True)
    _write_map(out / 'maps' / f'{map_token}.png', world)
    tables.add(
        'map',
        {
            'token': map_token,
            'log_tokens': [log_token],
            'category': 'semantic_prior',
            'filename': f'maps/{map_token}.png',
        },
    )
    calib_token = {}
    for ch in (*CAMERA_CHANNELS, LIDAR):
        calib_token[ch] = _token(seed, 'calibrated_sensor', si, ch)
        if ch == LIDAR:
            rec = {
                'translation': list(lidar_cal['translation']),
                'rotation': list(lidar_cal['rotation']),
                'camera_intrinsic': [],
            }
        else:
            cam = channels_of[ch]
            rec = {
                'translation': [float(v) for v in cam.cam_to_ego.translation],
                'rotation': [float(v) for v in cam.cam_to_ego.rotation.elements],
                'camera_intrinsic': [[float(v) for v in row] for row in cam.intrinsics],
            }
        tables.add('calibrated_sensor', {'token': calib_token[ch], 'sensor_token': sensor_token[ch], **rec})

    scene_start_us = BASE_TIME_US + si * SCENE_SPACING_US
    sample_tokens = [_token(seed, 'sample', si, k) for k in range(n_key)]
    last_sd: dict[str, dict | None] = {ch: None for ch in (*CAMERA_CHANNELS, LIDAR)}
    instance_anns: dict[int, list[dict]] = {}
    present: set[int] = set()

    def add_sample_data(
        ch: str,
        ts_us: int,
        sample_token: str,
        key: bool,
        filename: str,
        pose: Transform,
        width: int,
        height: int,
        fileformat: str,
    ) -> dict:
        token = _token(seed, 'sample_data', si, ch, ts_us)
        tables.add('ego_pose', _pose_record(token, pose, ts_us))
        rec = tables.add(
            'sample_data',
            {
                'token': token,
                'sample_token': sample_token,
                'ego_pose_token': token,
                'calibrated_sensor_token': calib_token[ch],
                'timestamp': int(ts_us),
                'fileformat': fileformat,
                'is_key_frame': bool(key),
                'height': int(height),
                'width': int(width),
                'filename': filename,
                'prev': '',
                'next': '',
            },
        )
        prev = last_sd[ch]
        if prev is not None:
            prev['next'] = token
            rec['prev'] = prev['token']
        last_sd[ch] = rec
        return rec

    for k in range(n_key):
        t0 = time.perf_counter()
        lidar_us = scene_start_us + k * KEYFRAME_PERIOD_US
        sample_token = sample_tokens[k]
        tables.add(
            'sample',
            {
                'token': sample_token,
                'timestamp': int(lidar_us),
                'prev': sample_tokens[k - 1] if k > 0 else '',
                'next': sample_tokens[k + 1] if k + 1 < n_key else '',
                'scene_token': scene_token,
            },
        )
        # Cameras, each at its own time.
        hits = np.zeros(world.num_objects, np.int64)
        visible = np.zeros(world.num_objects, np.int64)
        rgbs = {}
        for ch in CAMERA_CHANNELS:
            ts = lidar_us + CAMERA_OFFSETS_US[ch]
            st = world.state_at(ts * 1000)
            img = render_camera(world, st, channels_of[ch])
            hits += img.owner_hits
            visible += img.owner_visible
            rgbs[ch] = img.rgb
            fname = f'samples/{ch}/{logname}__{ch}__{ts}.jpg'
            (out / 'samples' / ch).mkdir(parents=True, exist_ok=True)
            _write_jpeg(out / fname, img.rgb, cfg.jpeg_quality)
            add_sample_data(ch, ts, sample_token, True, fname, st.ego_pose, cfg.width, cfg.height, 'jpg')
        # Lidar and ground truth at the keyframe time.
        st = world.state_at(lidar_us * 1000)
        scan = scan_lidar(world, st, lidar_to_ego, lidar_spec)
        fname = f'samples/{LIDAR}/{logname}__{LIDAR}__{lidar_us}.pcd.bin'
        (out / 'samples' / LIDAR).mkdir(parents=True, exist_ok=True)
        scan.points.astype(np.float32).tofile(out / fname)
        add_sample_data(LIDAR, lidar_us, sample_token, True, fname, st.ego_pose, 0, 0, 'pcd')
        gt = ground_truth(world, st, rig, lidar_to_ego, OCC3D_GRID, lidar=lidar_spec)
        gt_dir = out / 'gts' / scene_name / sample_token
        gt_dir.mkdir(parents=True, exist_ok=True)
        save_labels_npz(gt_dir / 'labels.npz', gt)
        present |= set(np.unique(gt.semantics).tolist())
        if k == n_key // 2:  # a picture of the scene for people: six cameras and the ground truth from above
            (out / 'preview').mkdir(parents=True, exist_ok=True)
            panel = _preview([rgbs[c.name.upper()] for c in rig.cameras], gt)
            cv2.imwrite(str(out / 'preview' / f'{scene_name}.png'), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
        if on_keyframe is not None:
            on_keyframe(scene_name, k, gt)
        # Annotations.
        lidar_pts = np.bincount(scan.owner[scan.owner >= 0], minlength=world.num_objects)
        for i in _annotation_boxes(world, st):
            frac = visible[i] / hits[i] if hits[i] > 0 else 0.0
            vis = '4' if frac >= 0.8 else '3' if frac >= 0.6 else '2' if frac >= 0.4 else '1'
            length, w, h = (float(v) for v in world.obj_size[i])
            attr = world.obj_attribute[i]
            ann = {
                'token': _token(seed, 'sample_annotation', si, k, i),
                'sample_token': sample_token,
                'instance_token': _token(seed, 'instance', si, i),
                'visibility_token': vis,
                'attribute_tokens': [_token(seed, 'attribute', attr)] if attr else [],
                'translation': [float(st.obj_xy[i, 0]), float(st.obj_xy[i, 1]), h / 2.0],
                'size': [w, length, h],
                'rotation': _yaw_quaternion(float(st.obj_yaw[i])),
                'prev': '',
                'next': '',
                'num_lidar_pts': int(lidar_pts[i]),
                'num_radar_pts': 0,
            }
            chain = instance_anns.setdefault(i, [])
            if chain:
                chain[-1]['next'] = ann['token']
                ann['prev'] = chain[-1]['token']
            chain.append(ann)
            tables.add('sample_annotation', ann)
        result.keyframe_seconds.append(time.perf_counter() - t0)
        tick()
        # Camera sweeps between this keyframe and the next.
        if cfg.sweeps and k + 1 < n_key:
            for j in range(1, CAMERA_SWEEPS_PER_KEYFRAME):
                for ch in CAMERA_CHANNELS:
                    t1 = time.perf_counter()
                    ts = lidar_us + CAMERA_OFFSETS_US[ch] + (j * KEYFRAME_PERIOD_US) // CAMERA_SWEEPS_PER_KEYFRAME
                    st = world.state_at(ts * 1000)
                    img = render_camera(world, st, channels_of[ch])
                    fname = f'sweeps/{ch}/{logname}__{ch}__{ts}.jpg'
                    (out / 'sweeps' / ch).mkdir(parents=True, exist_ok=True)
                    _write_jpeg(out / fname, img.rgb, cfg.jpeg_quality)
                    # A sweep belongs to the following sample: the devkit interpolates its boxes between the
                    # previous sample and this one.
                    add_sample_data(
                        ch, ts, sample_tokens[k + 1], False, fname, st.ego_pose, cfg.width, cfg.height, 'jpg'
                    )
                    result.sweep_seconds.append(time.perf_counter() - t1)
                    tick()

    for i, chain in instance_anns.items():
        tables.add(
            'instance',
            {
                'token': _token(seed, 'instance', si, i),
                'category_token': _token(seed, 'category', world.obj_category[i]),
                'nbr_annotations': len(chain),
                'first_annotation_token': chain[0]['token'],
                'last_annotation_token': chain[-1]['token'],
            },
        )
    tables.add(
        'scene',
        {
            'token': scene_token,
            'log_token': log_token,
            'nbr_samples': n_key,
            'first_sample_token': sample_tokens[0],
            'last_sample_token': sample_tokens[-1],
            'name': scene_name,
            'description': f'synthetic driving scene, seed {seed}, scene {si} (world seed {scene_seed(seed, si)})',
        },
    )
    result.name = scene_name
    result.classes = sorted(int(c) for c in present if c != 17)
    result.tables = tables.t
    return result


def _scene_worker(cfg: SynthConfig, si: int, queue) -> _SceneResult:
    """Process-pool entry: one scene, reporting each finished frame on ``queue``."""
    return _write_scene(cfg, si, tick=lambda: queue.put(1))


def generate_dataset(
    cfg: SynthConfig,
    progress: bool = True,
    on_keyframe: Callable[[str, int, GroundTruth], None] | None = None,
) -> SynthReport:
    """Generate ``cfg.scenes`` scenes under ``cfg.out`` (see the module docstring for the layout).

    With ``cfg.jobs`` > 1, scenes are written by that many worker processes; the output is the same.

    Args:
        cfg: what to generate; validated first.
        progress: show a tqdm progress bar over frames.
        on_keyframe: optional callback (scene name, keyframe index, ground truth) for tests and tools
            (single process only).

    Raises:
        SynthError: a bad argument (naming it).
    """
    cfg.validate()
    if on_keyframe is not None and cfg.jobs > 1:
        raise SynthError('jobs: on_keyframe needs jobs=1')
    t_start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tables = _common_tables(int(cfg.seed))
    report = SynthReport(out=out)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.scenes * _frames_per_scene(cfg), unit='frame', desc='synth', dynamic_ncols=True)
    tick = (lambda: bar.update(1)) if bar is not None else (lambda: None)

    if cfg.jobs == 1:
        results = [_write_scene(cfg, si, tick, on_keyframe) for si in range(int(cfg.scenes))]
    else:
        import multiprocessing
        import queue as queue_module
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context('spawn')
        with ctx.Manager() as manager, ProcessPoolExecutor(max_workers=int(cfg.jobs), mp_context=ctx) as pool:
            frames = manager.Queue()
            futures = [pool.submit(_scene_worker, cfg, si, frames) for si in range(int(cfg.scenes))]
            while not all(f.done() for f in futures):
                try:
                    frames.get(timeout=0.2)
                    tick()
                except queue_module.Empty:
                    pass
            while not frames.empty():
                frames.get()
                tick()
            results = [f.result() for f in futures]

    for result in results:  # scene order, so the tables do not depend on jobs
        for name, records in result.tables.items():
            tables.t[name].extend(records)
        report.scene_names.append(result.name)
        report.classes.append(result.classes)
        report.keyframe_seconds.extend(result.keyframe_seconds)
        report.sweep_seconds.extend(result.sweep_seconds)
    if bar is not None:
        bar.close()
    tables.write(out / cfg.version)
    report.total_seconds = time.perf_counter() - t_start
    return report
