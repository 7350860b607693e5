"""Occ3D-nuScenes training samples: keyframes, their history frames, labels and consistent augmentation.

Reads a nuScenes-format dataroot through nuscenes-devkit (the real Occ3D-nuScenes
layout and the synthetic world's output alike): for every keyframe the six camera
images in the rig's order (:data:`occ_perception.rig.NUSCENES_CHANNELS`), the rig
from its ``calibrated_sensor`` records, the frame's stamp and ego pose (those of
the ``CAM_FRONT`` image, DESIGN.md section 3) and the ground truth
``gts/<scene>/<sample token>/labels.npz`` (``semantics``, ``mask_lidar``,
``mask_camera`` and, where present, ``flow``).

History: for K > 0 history slots the earlier frames of the same scene (keyframes,
and camera sweeps with ``use_sweeps``) are candidates, and the slot -> frame choice
is the runtime cache's own (:func:`occ_perception.temporal.select_slots`), so the
network is trained on the time offsets it will see at run time.

Augmentation keeps everything consistent: an image scale/crop jitter changes each
camera's :class:`~occ_perception.rig.ImageTransform` (the splat tables are built
from the jittered transforms); BEV flips in x and/or y reflect the ego frame, so
the camera extrinsics (hence the tables), labels, masks, flow components and the
history warps are flipped together.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import temporal
from ..geometry import Transform, bev_warp_affine
from ..model.splat_tables import build_splat_tables
from ..rig import NUSCENES_CHANNELS, ImageTransform, Rig, RigMatrices
from ..temporal import TemporalConfig, bev_grid_for
from .depth_targets import depth_targets

__all__ = [
    'Augmentation',
    'DatasetError',
    'Frame',
    'Occ3DDataset',
    'TrainSample',
    'flip_matrix',
    'jitter_transform',
    'select_history',
    'temporal_config_for',
    'transform_image',
]

NS_PER_US = 1000


class DatasetError(ValueError):
    """The dataroot, a table record, an image or a label file is missing or malformed."""


@dataclass(frozen=True)
class Augmentation:
    """Random training augmentation (all off by default).

    Attributes:
        scale_jitter: relative image scale jitter; each camera's scale is multiplied by U(1 - a, 1 + a).
        crop_jitter: [px] of the network image; the crop moves by U(-j, j) in x and U(0, j) up in y.
        flip_x: probability of reflecting the BEV in x (x -> -x).
        flip_y: probability of reflecting the BEV in y (y -> -y).
    """

    scale_jitter: float = 0.0
    crop_jitter: int = 0
    flip_x: float = 0.0
    flip_y: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.scale_jitter < 1.0 or self.crop_jitter < 0:
            raise DatasetError(f'Augmentation: scale_jitter must be in [0, 1) and crop_jitter >= 0, got {self}')
        if not (0.0 <= self.flip_x <= 1.0 and 0.0 <= self.flip_y <= 1.0):
            raise DatasetError(f'Augmentation: flip probabilities must be in [0, 1], got {self}')

    @property
    def active(self) -> bool:
        return bool(self.scale_jitter or self.crop_jitter or self.flip_x or self.flip_y)


@dataclass(frozen=True)
class Frame:
    """One camera frame of a scene (a keyframe or a sweep), enough to load its images.

    Attributes:
        token: the sample token (keyframes) or the CAM_FRONT sample_data token (sweeps).
        scene: scene name.
        stamp_ns: the CAM_FRONT image stamp [ns].
        pose: ``T_map_ego`` at the CAM_FRONT image.
        image_paths: absolute image paths in rig order.
        calibration_key: the cameras' calibrated_sensor tokens in rig order (same key = same rig).
        keyframe: True for a sample (labelled keyframe).
    """

    token: str
    scene: str
    stamp_ns: int
    pose: Transform
    image_paths: tuple[str, ...]
    calibration_key: tuple[str, ...]
    keyframe: bool


@dataclass
class TrainSample:
    """One training sample: the current frame, its K history frames and the labels (numpy arrays).

    Attributes:
        images: (N, H, W, 3) uint8 RGB, already transformed to the network input size.
        tables: splat tables (name -> int64 array) for the (augmented) rig.
        history_images: (K, N, H, W, 3) uint8; zeros where a slot is empty.
        history_theta: (K, 2, 3) float32, rows 0-1 of ``bev_warp_affine`` (flipped with the BEV).
        history_valid: (K,) float32, 1 where a slot holds a frame.
        semantics: (X, Y, Z) uint8 Occ3D labels (255 = not observed).
        mask_camera: (X, Y, Z) uint8, 1 where a camera observed the voxel.
        mask_lidar: (X, Y, Z) uint8.
        flow: (X, Y, Z, 2) float32 (vx, vy) [m/s] in base_link axes, or None when the labels have none.
        token: the sample token.
        scene: the scene name.
        flips: (flip_x, flip_y) applied.
        depth_target: (N, H_feat, W_feat) int64 depth bin per image feature pixel, -1 = none
            (:func:`occ_perception.data.depth_targets.depth_targets`).
    """

    images: np.ndarray
    tables: dict[str, np.ndarray]
    history_images: np.ndarray
    history_theta: np.ndarray
    history_valid: np.ndarray
    semantics: np.ndarray
    mask_camera: np.ndarray
    mask_lidar: np.ndarray
    flow: np.ndarray | None
    token: str
    scene: str
    flips: tuple[bool, bool] = (False, False)
    depth_target: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.int64))


def flip_matrix(flip_x: bool, flip_y: bool) -> np.ndarray:
    """4x4 reflection of ``base_link``: x -> -x and/or y -> -y (identity without flips)."""
    return np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0, 1.0])


def jitter_transform(base: ImageTransform, rng: np.random.Generator, aug: Augmentation) -> ImageTransform:
    """A randomly rescaled and shifted copy of ``base`` (same output size; parts outside the image are black).

    The scale is multiplied by U(1 - scale_jitter, 1 + scale_jitter) about the output's centre
    column and bottom row (FlashOCC keeps the bottom of the image), then the crop moves by
    U(-crop_jitter, crop_jitter) px in x and U(0, crop_jitter) px up in y.
    """
    factor = float(rng.uniform(1.0 - aug.scale_jitter, 1.0 + aug.scale_jitter)) if aug.scale_jitter else 1.0
    scale = base.scale * factor
    # keep the source point at the output's bottom centre fixed under the rescale
    u0 = (base.out_width / 2.0 + base.crop_x) / base.scale
    v0 = (base.out_height + base.crop_y) / base.scale
    crop_x = scale * u0 - base.out_width / 2.0
    crop_y = scale * v0 - base.out_height
    if aug.crop_jitter:
        crop_x += float(rng.uniform(-aug.crop_jitter, aug.crop_jitter))
        crop_y -= float(rng.uniform(0.0, aug.crop_jitter))
    return replace(base, scale=scale, crop_x=round(crop_x), crop_y=round(crop_y))


def transform_image(image: np.ndarray, t: ImageTransform) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image by ``t.scale`` and crop it to ``(t.out_height, t.out_width, 3)``.

    The resize goes to ``(int(W * scale), int(H * scale))`` (bilinear, as FlashOCC's resize);
    crop offsets outside the resized image are filled with black.
    """
    import cv2

    h, w = image.shape[:2]
    new_w, new_h = max(int(w * t.scale), 1), max(int(h * t.scale), 1)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    out = np.zeros((t.out_height, t.out_width, 3), dtype=np.uint8)
    x0, y0 = max(t.crop_x, 0), max(t.crop_y, 0)
    x1, y1 = min(t.crop_x + t.out_width, new_w), min(t.crop_y + t.out_height, new_h)
    if x1 > x0 and y1 > y0:
        out[y0 - t.crop_y : y1 - t.crop_y, x0 - t.crop_x : x1 - t.crop_x] = resized[y0:y1, x0:x1]
    return out


def _read_rgb(path: str) -> np.ndarray:
    import cv2

    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError(f'image {path!r}: missing or not a readable image')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _flip_theta(theta: np.ndarray, flip_x: bool, flip_y: bool) -> np.ndarray:
    """Conjugate (..., 2, 3) warp thetas by the normalised-coordinate reflection (the grid is symmetric about 0)."""
    f = np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0])
    full = np.concatenate([theta, np.broadcast_to(np.array([0.0, 0.0, 1.0]), theta.shape[:-2] + (1, 3))], axis=-2)
    return (f @ full @ f)[..., :2, :].astype(np.float32)


def select_history(entry_stamps_ns: np.ndarray, stamp_ns: int, config: TemporalConfig) -> np.ndarray:
    """Per history slot the index into ``entry_stamps_ns`` of the chosen frame, or -1: the runtime cache's choice
    (:func:`occ_perception.temporal.select_slots`) over the frames kept for ``config.history_span``."""
    stamps = np.asarray(entry_stamps_ns, dtype=np.int64).reshape(-1)
    kept = np.flatnonzero(stamps >= int(stamp_ns) - round(config.history_span * temporal.NS))
    chosen = temporal.select_slots(stamps[kept], int(stamp_ns), config)
    return np.where(chosen >= 0, kept[np.maximum(chosen, 0)] if kept.size else -1, -1).astype(np.int64)


def temporal_config_for(offsets: Sequence[float]) -> TemporalConfig:
    """The cache policy the runtime uses for these trained offsets (default tolerance; span covers the offsets)."""
    base = TemporalConfig(offsets=tuple(offsets)) if offsets else TemporalConfig(offsets=())
    span = max(base.history_span, (max(offsets) + base.tolerance) if offsets else 0.0)
    return replace(base, history_span=span)


class Occ3DDataset:
    """Keyframes of a nuScenes-format dataroot with Occ3D labels, as :class:`TrainSample` items.

    Args:
        dataroot: folder with ``<version>/`` tables, ``samples/``, ``sweeps/`` and ``gts/``.
        image_size: network input (width, height) [px] (``ModelConfig.image_size``).
        model_config: the network config (image size, grid, history offsets; splat tables are built for it).
        version: table folder name (``v1.0-mini``, ``v1.0-trainval``).
        scenes: scene names to use (None = all scenes that have labels).
        history_offsets: trained offsets [s] of the K history slots (``ModelConfig.history_offsets``).
        augmentation: random augmentation (None = off); randomness comes from the ``rng`` given to ``get``.
        use_sweeps: also use non-key camera frames as history candidates (needs all cameras' sweeps).
        nusc: an already loaded ``NuScenes`` (saves loading the tables twice).

    Raises:
        DatasetError: the tables or labels are missing, or no keyframe has labels.
    """

    def __init__(
        self,
        dataroot: str | os.PathLike[str],
        model_config: Any,
        version: str = 'v1.0-mini',
        scenes: Sequence[str] | None = None,
        augmentation: Augmentation | None = None,
        use_sweeps: bool = False,
        nusc: Any = None,
    ) -> None:
        self.dataroot = Path(dataroot)
        self.model_config = model_config
        self.image_size = tuple(model_config.image_size)
        self.augmentation = augmentation or Augmentation()
        self.temporal = temporal_config_for(model_config.history_offsets)
        if not (self.dataroot / version).is_dir():
            raise DatasetError(
                f'dataset {str(self.dataroot)!r}: no table folder {version!r} (expected a nuScenes dataroot)'
            )
        if nusc is None:
            try:
                from nuscenes.nuscenes import NuScenes
            except ImportError as err:
                raise DatasetError(
                    'reading nuScenes-format data needs nuscenes-devkit (pip install nuscenes-devkit)'
                ) from err
            nusc = NuScenes(version=version, dataroot=str(self.dataroot), verbose=False)
        self.nusc = nusc
        wanted = set(scenes) if scenes is not None else None
        self.frames: list[list[Frame]] = []  # per scene, sorted by stamp (history candidates)
        self.items: list[tuple[int, int]] = []  # (scene index, frame index) of labelled keyframes
        self._sizes: dict[tuple[str, ...], dict[str, tuple[int, int]]] = {}
        for scene in sorted(nusc.scene, key=lambda s: s['name']):
            if wanted is not None and scene['name'] not in wanted:
                continue
            frames = self._scene_frames(scene, use_sweeps)
            si = len(self.frames)
            self.frames.append(frames)
            for fi, frame in enumerate(frames):
                if frame.keyframe and self.label_path(frame).is_file():
                    self.items.append((si, fi))
        if wanted is not None:
            missing = wanted - {s['name'] for s in nusc.scene}
            if missing:
                raise DatasetError(f'dataset {str(self.dataroot)!r}: no scenes named {sorted(missing)}')
        if not self.items:
            raise DatasetError(
                f'dataset {str(self.dataroot)!r}: no keyframe has labels under gts/<scene>/<token>/labels.npz'
            )

    def __len__(self) -> int:
        return len(self.items)

    def label_path(self, frame: Frame) -> Path:
        return self.dataroot / 'gts' / frame.scene / frame.token / 'labels.npz'

    def _frame(self, scene: str, token: str, cam_records: Sequence[dict], keyframe: bool) -> Frame:
        nusc = self.nusc
        front = cam_records[NUSCENES_CHANNELS.index('CAM_FRONT')]
        pose_rec = nusc.get('ego_pose', front['ego_pose_token'])
        key = tuple(r['calibrated_sensor_token'] for r in cam_records)
        if key not in self._sizes:
            self._sizes[key] = {
                ch: (int(r['width']), int(r['height'])) for ch, r in zip(NUSCENES_CHANNELS, cam_records)
            }
        return Frame(
            token=token,
            scene=scene,
            stamp_ns=int(front['timestamp']) * NS_PER_US,
            pose=Transform(pose_rec['rotation'], pose_rec['translation']),
            image_paths=tuple(str(self.dataroot / r['filename']) for r in cam_records),
            calibration_key=key,
            keyframe=keyframe,
        )

    def _scene_frames(self, scene: dict, use_sweeps: bool) -> list[Frame]:
        nusc = self.nusc
        frames: list[Frame] = []
        token = scene['first_sample_token']
        while token:
            sample = nusc.get('sample', token)
            missing = [ch for ch in NUSCENES_CHANNELS if ch not in sample['data']]
            if missing:
                raise DatasetError(f'sample {token} of {scene["name"]}: no sample_data for {missing}')
            recs = [nusc.get('sample_data', sample['data'][ch]) for ch in NUSCENES_CHANNELS]
            frames.append(self._frame(scene['name'], token, recs, True))
            if use_sweeps and sample['next']:
                frames.extend(self._sweeps_after(scene['name'], recs))
            token = sample['next']
        return sorted(frames, key=lambda f: f.stamp_ns)

    def _sweeps_after(self, scene: str, key_records: Sequence[dict]) -> list[Frame]:
        """Sweep frames between a keyframe and the next: the i-th sweep of every camera forms one frame."""
        chains: list[list[dict]] = []
        for rec in key_records:
            chain = []
            nxt = rec['next']
            while nxt:
                r = self.nusc.get('sample_data', nxt)
                if r['is_key_frame']:
                    break
                chain.append(r)
                nxt = r['next']
            chains.append(chain)
        count = min(len(c) for c in chains)
        return [self._frame(scene, chains[1][i]['token'], [c[i] for c in chains], False) for i in range(count)]

    def calibration(self, frame: Frame) -> Rig:
        """The frame's rig in :data:`NUSCENES_CHANNELS` order."""
        records = {
            ch: self.nusc.get('calibrated_sensor', tok) for ch, tok in zip(NUSCENES_CHANNELS, frame.calibration_key)
        }
        return Rig.from_nuscenes(records, self._sizes[frame.calibration_key])

    def history_indices(self, index: int) -> tuple[Frame, list[Frame | None]]:
        """The keyframe of item ``index`` and its K history frames (None where a slot is empty)."""
        si, fi = self.items[index]
        frames = self.frames[si]
        frame = frames[fi]
        if not self.temporal.offsets:
            return frame, []
        # candidates: earlier frames of the scene with the same rig (a calibration change resets the cache)
        cand = [f for f in frames[:fi] if f.calibration_key == frame.calibration_key]
        stamps = np.array([f.stamp_ns for f in cand], dtype=np.int64)
        chosen = select_history(stamps, frame.stamp_ns, self.temporal)
        return frame, [cand[int(i)] if i >= 0 else None for i in chosen]

    def keyframes(self, scene_index: int) -> list[Frame]:
        """The keyframes (samples) of scene ``scene_index`` (an index into :attr:`frames`), in time order,
        labelled or not."""
        return [f for f in self.frames[scene_index] if f.keyframe]

    def has_labels(self, frame: Frame) -> bool:
        """True when the keyframe has a ``gts/<scene>/<token>/labels.npz``."""
        return frame.keyframe and self.label_path(frame).is_file()

    def lidar_translation(self, frame: Frame) -> tuple[float, float, float]:
        """The LIDAR_TOP mounting position in base_link [m] of a keyframe (its ``calibrated_sensor`` translation).

        Raises:
            DatasetError: the frame is not a keyframe or its sample has no LIDAR_TOP sample_data.
        """
        if not frame.keyframe:
            raise DatasetError(f'frame {frame.token} of {frame.scene}: not a keyframe, so no LIDAR_TOP calibration')
        sample = self.nusc.get('sample', frame.token)
        if 'LIDAR_TOP' not in sample['data']:
            raise DatasetError(f'sample {frame.token} of {frame.scene}: no LIDAR_TOP sample_data')
        record = self.nusc.get('sample_data', sample['data']['LIDAR_TOP'])
        calibration = self.nusc.get('calibrated_sensor', record['calibrated_sensor_token'])
        x, y, z = (float(v) for v in calibration['translation'])
        return (x, y, z)

    def load_labels(self, frame: Frame) -> dict[str, np.ndarray]:
        """``semantics``, ``mask_camera``, ``mask_lidar`` (X, Y, Z) uint8 and ``flow`` (X, Y, Z, 2) if present.

        Raises:
            DatasetError: the file is missing, lacks a field, or has the wrong shape.
        """
        path = self.label_path(frame)
        grid = self.model_config.grid.shape
        try:
            with np.load(path) as z:
                out = {name: np.asarray(z[name]) for name in z.files}
        except (OSError, ValueError) as err:
            raise DatasetError(f'labels {str(path)!r}: cannot read: {err}') from err
        for name in ('semantics', 'mask_camera', 'mask_lidar'):
            if name not in out:
                raise DatasetError(f'labels {str(path)!r}: no {name!r} array (have {sorted(out)})')
            if out[name].shape != grid:
                raise DatasetError(f'labels {str(path)!r}: {name} has shape {out[name].shape}, expected {grid}')
            out[name] = out[name].astype(np.uint8)
        if 'flow' in out and out['flow'].shape != grid + (2,):
            raise DatasetError(f'labels {str(path)!r}: flow has shape {out["flow"].shape}, expected {grid + (2,)}')
        return out

    def get(self, index: int, rng: np.random.Generator | None = None) -> TrainSample:
        """Item ``index``; ``rng`` drives the augmentation (None = no augmentation).

        Raises:
            DatasetError: unreadable images or labels.
        """
        frame, history = self.history_indices(index)
        rig = self.calibration(frame)
        aug = self.augmentation if rng is not None else Augmentation()
        base = rig.image_transforms(*self.image_size)
        transforms = tuple(jitter_transform(t, rng, aug) for t in base) if (rng is not None and aug.active) else base
        flip_x = bool(rng is not None and aug.flip_x and rng.random() < aug.flip_x)
        flip_y = bool(rng is not None and aug.flip_y and rng.random() < aug.flip_y)
        m = rig.matrices(*self.image_size)
        matrices = RigMatrices(
            cam_to_ego=flip_matrix(flip_x, flip_y) @ m.cam_to_ego,
            intrinsics=m.intrinsics,
            image_transform=np.stack([t.matrix() for t in transforms]),
        )
        tables = build_splat_tables(self.model_config, matrices)

        images = self._images(frame, transforms)
        k = len(history)
        w, h = self.image_size
        hist_images = np.zeros((k, len(NUSCENES_CHANNELS), h, w, 3), np.uint8)
        theta = np.tile(np.eye(3, dtype=np.float32)[:2], (k, 1, 1))
        valid = np.zeros(k, np.float32)
        bev_grid = bev_grid_for(self.model_config.grid, (1,) + tuple(reversed(self.model_config.bev_size)))
        for slot, prev in enumerate(history):
            if prev is None:
                continue
            hist_images[slot] = self._images(prev, transforms)
            theta[slot] = bev_warp_affine(prev.pose, frame.pose, bev_grid)[:2]
            valid[slot] = 1.0
        if flip_x or flip_y:
            theta = _flip_theta(theta, flip_x, flip_y)

        labels = self.load_labels(frame)
        sem, mcam, mlid = labels['semantics'], labels['mask_camera'], labels['mask_lidar']
        flow = labels.get('flow')
        flow = None if flow is None else flow.astype(np.float32)
        if flip_x or flip_y:
            axes = tuple(a for a, f in ((0, flip_x), (1, flip_y)) if f)
            sem, mcam, mlid = (np.flip(a, axis=axes) for a in (sem, mcam, mlid))
            if flow is not None:
                flow = np.flip(flow, axis=axes) * np.array(
                    [-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0], np.float32
                )
        sem, mcam = np.ascontiguousarray(sem), np.ascontiguousarray(mcam)
        return TrainSample(
            images=images,
            tables=tables,
            history_images=hist_images,
            history_theta=theta.astype(np.float32),
            history_valid=valid,
            semantics=np.ascontiguousarray(sem),
            mask_camera=np.ascontiguousarray(mcam),
            mask_lidar=np.ascontiguousarray(mlid),
            flow=None if flow is None else np.ascontiguousarray(flow, dtype=np.float32),
            token=frame.token,
            scene=frame.scene,
            flips=(flip_x, flip_y),
            depth_target=depth_targets(self.model_config, matrices, sem, mcam),
        )

    def _images(self, frame: Frame, transforms: Sequence[ImageTransform]) -> np.ndarray:
        return np.stack([transform_image(_read_rgb(p), t) for p, t in zip(frame.image_paths, transforms)])
