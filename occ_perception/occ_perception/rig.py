"""The surround camera rig: names, intrinsics, extrinsics and image resize/crop geometry.

Frames (DESIGN.md section 3): each camera frame is optical (z forward, x
right, y down); ``cam_to_ego`` is ``T_base_link_camera``. Pixel coordinates
follow the BEVDet/FlashOCC convention: a source pixel ``(u, v)`` maps to
``(s * u - crop_x, s * v - crop_y)`` in the network image.

A rig is built from nuScenes calibration (:meth:`Rig.from_nuscenes`), from
CameraInfo messages plus transforms (:meth:`Camera.from_camera_info`), or
directly from numbers.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .geometry import GeometryError, Transform

__all__ = [
    'FLASHOCC_CAMERA_ORDER',
    'NUSCENES_CALIBRATION',
    'NUSCENES_IMAGE_SIZE',
    'NUSCENES_CHANNELS',
    'Camera',
    'ImageTransform',
    'Rig',
    'RigError',
    'RigMatrices',
    'channel_to_frame',
]


class RigError(ValueError):
    """Camera calibration is missing or malformed (zero focal length, NaN, unknown camera)."""


# nuScenes channel names in the order FlashOCC/BEVDet batch the cameras.
NUSCENES_CHANNELS: tuple[str, ...] = (
    'CAM_FRONT_LEFT',
    'CAM_FRONT',
    'CAM_FRONT_RIGHT',
    'CAM_BACK_LEFT',
    'CAM_BACK',
    'CAM_BACK_RIGHT',
)


def channel_to_frame(channel: str) -> str:
    """nuScenes channel name to our camera frame id: ``CAM_FRONT`` -> ``cam_front``."""
    return channel.lower()


FLASHOCC_CAMERA_ORDER: tuple[str, ...] = tuple(channel_to_frame(c) for c in NUSCENES_CHANNELS)

# Calibration of the nuScenes vehicle of log n015 (singapore-hollandvillage),
# as in its calibrated_sensor records: camera-to-ego translation [m], rotation
# [w, x, y, z], and K for 1600x900 images.
NUSCENES_CALIBRATION: dict[str, dict[str, list]] = {
    'CAM_FRONT': {
        'translation': [1.70079118954, 0.0159456324149, 1.51095763913],
        'rotation': [0.4998015430569128, -0.5030316162024876, 0.4997798114386805, -0.49737083824542755],
        'camera_intrinsic': [
            [1266.417203046554, 0.0, 816.2670197447984],
            [0.0, 1266.417203046554, 491.50706579294757],
            [0.0, 0.0, 1.0],
        ],
    },
    'CAM_FRONT_LEFT': {
        'translation': [1.52387798135, 0.494631336551, 1.50932822144],
        'rotation': [0.6757265034669446, -0.6736266522251881, 0.21214015046209478, -0.21122827103904068],
        'camera_intrinsic': [
            [1272.5979470598488, 0.0, 826.6154927353808],
            [0.0, 1272.5979470598488, 479.75165386361925],
            [0.0, 0.0, 1.0],
        ],
    },
    'CAM_FRONT_RIGHT': {
        'translation': [1.5508477543, -0.493404796419, 1.49574800619],
        'rotation': [0.2060347966337182, -0.2026940577919598, 0.6824507824531167, -0.6713610884174485],
        'camera_intrinsic': [
            [1260.8474446004698, 0.0, 807.968244525554],
            [0.0, 1260.8474446004698, 495.3344268742088],
            [0.0, 0.0, 1.0],
        ],
    },
    'CAM_BACK': {
        'translation': [0.0283260309358, 0.00345136761476, 1.57910346144],
        'rotation': [0.5037872666382278, -0.49740249788611096, -0.4941850223835201, 0.5045496097725578],
        'camera_intrinsic': [
            [809.2209905677063, 0.0, 829.2196003259838],
            [0.0, 809.2209905677063, 481.77842384512485],
            [0.0, 0.0, 1.0],
        ],
    },
    'CAM_BACK_LEFT': {
        'translation': [1.03569100218, 0.484795032713, 1.59097014818],
        'rotation': [0.6924185592174665, -0.7031619420114925, -0.11648342771943819, 0.11203317912370753],
        'camera_intrinsic': [
            [1256.7414812095406, 0.0, 792.1125740759628],
            [0.0, 1256.7414812095406, 492.7757465151356],
            [0.0, 0.0, 1.0],
        ],
    },
    'CAM_BACK_RIGHT': {
        'translation': [1.0148780988, -0.480568219723, 1.56239545128],
        'rotation': [0.12280980120078765, -0.132400842670559, -0.7004305821388234, 0.690496031265798],
        'camera_intrinsic': [
            [1259.5137405846733, 0.0, 807.2529053838625],
            [0.0, 1259.5137405846733, 501.19579884916527],
            [0.0, 0.0, 1.0],
        ],
    },
    'LIDAR_TOP': {
        'translation': [0.943713, 0.0, 1.84023],
        'rotation': [0.7077955119163518, -0.006492242056004365, 0.010646214713995808, -0.7063073142877817],
        'camera_intrinsic': [],
    },
}
NUSCENES_IMAGE_SIZE = (1600, 900)


@dataclass(frozen=True)
class ImageTransform:
    """Resize by ``scale`` then crop to ``(out_width, out_height)`` starting at ``(crop_x, crop_y)``.

    Maps source pixel ``(u, v)`` to ``(scale * u - crop_x, scale * v - crop_y)``.
    ``src_width`` and ``src_height`` record the source size when known (as
    :meth:`fit` does); :attr:`resized_size` needs them.
    """

    scale: float
    crop_x: int
    crop_y: int
    out_width: int
    out_height: int
    src_width: int | None = None
    src_height: int | None = None

    @classmethod
    def fit(cls, src_width: int, src_height: int, out_width: int = 704, out_height: int = 256) -> ImageTransform:
        """FlashOCC's test-time geometry generalised to any source size.

        Resize so that the width matches ``out_width`` (and the height covers
        ``out_height``), then keep the bottom ``out_height`` rows and the
        horizontal centre. For 1600x900 (or 800x450) to 704x256 this is
        FlashOCC's resize 0.44 (0.88) to 704x396 and a crop of the top 140 rows.

        Raises:
            RigError: a size is not positive.
        """
        if min(src_width, src_height, out_width, out_height) <= 0:
            raise RigError(
                f'ImageTransform.fit: sizes must be positive, got source {src_width}x{src_height}, '
                f'output {out_width}x{out_height}'
            )
        scale = max(out_width / src_width, out_height / src_height)
        new_w, new_h = int(src_width * scale), int(src_height * scale)
        crop_y = max(new_h - out_height, 0)
        crop_x = max((new_w - out_width) // 2, 0)
        return cls(
            float(scale), int(crop_x), int(crop_y), int(out_width), int(out_height), int(src_width), int(src_height)
        )

    @property
    def resized_size(self) -> tuple[int, int]:
        """(width, height) [px] after the resize step, before the crop: ``int(src * scale)`` per axis.

        Raises:
            RigError: the transform was built without a source size.
        """
        if self.src_width is None or self.src_height is None:
            raise RigError(
                'ImageTransform.resized_size: the source size is unknown (build it with fit() or give '
                'src_width and src_height)'
            )
        return (int(self.src_width * self.scale), int(self.src_height * self.scale))

    def matrix(self) -> np.ndarray:
        """3x3 float64 affine from source pixels to network pixels (BEVDet's post_rot/post_tran)."""
        return np.array(
            [[self.scale, 0.0, -float(self.crop_x)], [0.0, self.scale, -float(self.crop_y)], [0.0, 0.0, 1.0]]
        )

    def apply(self, uv: np.ndarray) -> np.ndarray:
        """Source pixels (..., 2) to network pixels (..., 2)."""
        uv = np.asarray(uv, dtype=np.float64)
        return uv * self.scale - np.array([self.crop_x, self.crop_y], dtype=np.float64)

    def invert(self, uv: np.ndarray) -> np.ndarray:
        """Network pixels (..., 2) back to source pixels (..., 2)."""
        uv = np.asarray(uv, dtype=np.float64)
        return (uv + np.array([self.crop_x, self.crop_y], dtype=np.float64)) / self.scale


def _check_intrinsics(k: np.ndarray, name: str) -> np.ndarray:
    k = np.array(k, dtype=np.float64)  # a copy, made read-only below: cameras hash
    if k.size == 9:
        k = k.reshape(3, 3)
    if k.shape != (3, 3) or not np.all(np.isfinite(k)):
        raise RigError(f'{name}: intrinsics must be a finite 3x3 matrix, got {np.asarray(k).tolist()}')
    if k[0, 0] <= 0 or k[1, 1] <= 0:
        raise RigError(f'{name}: focal length must be positive, got fx={k[0, 0]}, fy={k[1, 1]}')
    if not np.allclose(k[2], [0.0, 0.0, 1.0]):
        raise RigError(f'{name}: the last row of the intrinsics must be [0, 0, 1], got {k[2].tolist()}')
    k.setflags(write=False)
    return k


@dataclass(frozen=True)
class Camera:
    """One pinhole camera of the rig (rectified images, no distortion).

    Attributes:
        name: frame id, e.g. ``cam_front``.
        intrinsics: (3, 3) K in source-image pixels.
        width, height: source image size [px].
        cam_to_ego: ``T_base_link_camera``.
    """

    name: str
    intrinsics: np.ndarray
    width: int
    height: int
    cam_to_ego: Transform

    def __post_init__(self) -> None:
        object.__setattr__(self, 'intrinsics', _check_intrinsics(self.intrinsics, f'camera {self.name!r}'))
        if int(self.width) != self.width or int(self.height) != self.height or self.width <= 0 or self.height <= 0:
            raise RigError(
                f'camera {self.name!r}: image size must be positive integers, got {self.width}x{self.height}'
            )
        object.__setattr__(self, 'width', int(self.width))
        object.__setattr__(self, 'height', int(self.height))

    def _key(self) -> tuple[Any, ...]:
        return (
            self.name,
            self.width,
            self.height,
            tuple(float(v) for v in self.intrinsics.reshape(-1)),
            self.cam_to_ego,
        )

    def __eq__(self, other: object) -> bool:
        """Exact equality of name, image size, intrinsics and extrinsics; :meth:`same_as` is the tolerant one."""
        if not isinstance(other, Camera):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @classmethod
    def from_camera_info(cls, info: Any, cam_to_ego: Transform, name: str | None = None) -> Camera:
        """From a sensor_msgs/CameraInfo (any message class with its field names) and ``T_base_link_camera``.

        For rectified images the projection matrix P (its left 3x3) is the
        camera matrix; where P is all zero, K is used.

        Raises:
            RigError: zero focal length, non-finite values or a zero image size.
        """
        frame = name or str(info.header.frame_id)
        p = np.asarray(info.p, dtype=np.float64).reshape(-1)
        k = np.asarray(info.k, dtype=np.float64).reshape(-1)
        if p.size == 12 and np.any(p != 0):
            intr = p.reshape(3, 4)[:, :3]
        elif k.size == 9:
            intr = k.reshape(3, 3)
        else:
            raise RigError(f'CameraInfo of {frame!r}: neither P (12 values) nor K (9 values) is set')
        return cls(frame, intr, int(info.width), int(info.height), cam_to_ego)

    def project(self, points_ego: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project ego-frame points (..., 3) [m] into source pixels.

        Returns:
            ``(uv, depth)``: uv (..., 2) pixels, depth (...,) [m] along the optical axis
            (points behind the camera get negative depth and meaningless uv).
        """
        cam = self.cam_to_ego.inverse().apply(points_ego)
        depth = cam[..., 2]
        with np.errstate(divide='ignore', invalid='ignore'):
            pix = cam @ self.intrinsics.T
            uv = pix[..., :2] / pix[..., 2:3]
        return uv, depth

    def lift(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Source pixels (..., 2) at optical-axis depth (...,) [m] to ego-frame points (..., 3)."""
        uv = np.asarray(uv, dtype=np.float64)
        depth = np.asarray(depth, dtype=np.float64)
        ones = np.ones(uv.shape[:-1] + (1,))
        rays = np.concatenate([uv, ones], axis=-1) @ np.linalg.inv(self.intrinsics).T
        return self.cam_to_ego.apply(rays * depth[..., None])

    def same_as(self, other: Camera, atol: float = 1e-9) -> bool:
        return (
            self.name == other.name
            and self.width == other.width
            and self.height == other.height
            and bool(np.allclose(self.intrinsics, other.intrinsics, atol=atol))
            and self.cam_to_ego.almost_equal(other.cam_to_ego, atol=atol)
        )


@dataclass(frozen=True)
class RigMatrices:
    """Per-camera matrices in rig order, as the network consumes them.

    Attributes:
        cam_to_ego: (N, 4, 4) float64, ``T_base_link_camera``.
        intrinsics: (N, 3, 3) float64, K in source pixels.
        image_transform: (N, 3, 3) float64, source pixels to network pixels.
    """

    cam_to_ego: np.ndarray
    intrinsics: np.ndarray
    image_transform: np.ndarray


@dataclass(frozen=True)
class Rig:
    """An ordered set of cameras (the network's camera order).

    ``==`` and ``hash`` compare the exact numbers; :meth:`same_as` is the
    tolerant comparison and :meth:`digest` a stable identity for caches.
    """

    cameras: tuple[Camera, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, 'cameras', tuple(self.cameras))
        names = [c.name for c in self.cameras]
        if not names:
            raise RigError('Rig: needs at least one camera')
        if len(set(names)) != len(names):
            raise RigError(f'Rig: camera names must be unique, got {names}')

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    def __len__(self) -> int:
        return len(self.cameras)

    def camera(self, name: str) -> Camera:
        """The camera with frame id ``name``.

        Raises:
            RigError: no such camera.
        """
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise RigError(f'Rig: no camera named {name!r}; cameras are {list(self.names)}')

    @classmethod
    def from_nuscenes(
        cls,
        calibration: Mapping[str, Mapping[str, Any]],
        image_size: tuple[int, int] | Mapping[str, tuple[int, int]] = (1600, 900),
        channels: Sequence[str] = NUSCENES_CHANNELS,
    ) -> Rig:
        """From nuScenes ``calibrated_sensor`` records keyed by channel.

        Args:
            calibration: channel (e.g. ``CAM_FRONT``) -> record with ``camera_intrinsic``
                (3x3), ``translation`` (3, [m]) and ``rotation`` ([w, x, y, z]),
                the camera-to-ego transform.
            image_size: (width, height) of every camera, or per channel.
            channels: which channels, in rig order.

        Raises:
            RigError: a channel is missing or its calibration is malformed.
        """
        cameras = []
        for channel in channels:
            if channel not in calibration:
                raise RigError(f'nuScenes calibration: no record for {channel}; have {sorted(calibration)}')
            rec = calibration[channel]
            try:
                cam_to_ego = Transform(rec['rotation'], rec['translation'])
            except (GeometryError, KeyError) as err:
                raise RigError(f'nuScenes calibration of {channel}: {err}') from err
            size = image_size[channel] if isinstance(image_size, Mapping) else image_size
            cameras.append(
                Camera(channel_to_frame(channel), np.asarray(rec['camera_intrinsic']), size[0], size[1], cam_to_ego)
            )
        return cls(tuple(cameras))

    @classmethod
    def nuscenes(cls, width: int = 1600, height: int = 900) -> Rig:
        """The six nuScenes cameras (:data:`NUSCENES_CALIBRATION`) with images of ``width`` x ``height``."""
        return cls.from_nuscenes(NUSCENES_CALIBRATION, NUSCENES_IMAGE_SIZE).scaled(width, height)

    def scaled(self, width: int, height: int) -> Rig:
        """The same rig with every image resized to ``width`` x ``height`` (intrinsics scaled)."""
        cams = []
        for cam in self.cameras:
            sx, sy = width / cam.width, height / cam.height
            k = np.diag([sx, sy, 1.0]) @ cam.intrinsics
            cams.append(Camera(cam.name, k, width, height, cam.cam_to_ego))
        return Rig(tuple(cams))

    def image_transforms(self, out_width: int = 704, out_height: int = 256) -> tuple[ImageTransform, ...]:
        """FlashOCC-style resize/crop of each camera's image to the network input size."""
        return tuple(ImageTransform.fit(c.width, c.height, out_width, out_height) for c in self.cameras)

    def matrices(self, out_width: int = 704, out_height: int = 256) -> RigMatrices:
        """Stacked per-camera matrices in rig order (see :class:`RigMatrices`)."""
        return RigMatrices(
            cam_to_ego=np.stack([c.cam_to_ego.matrix() for c in self.cameras]),
            intrinsics=np.stack([c.intrinsics for c in self.cameras]),
            image_transform=np.stack([t.matrix() for t in self.image_transforms(out_width, out_height)]),
        )

    def same_as(self, other: Rig, atol: float = 1e-9) -> bool:
        """Same cameras in the same order, numbers equal within ``atol`` (``==`` is exact)."""
        return len(self) == len(other) and all(a.same_as(b, atol) for a, b in zip(self.cameras, other.cameras))

    def digest(self) -> str:
        """A stable calibration digest: sha256 hex of every camera in rig order.

        Per camera it hashes the name (UTF-8, length-prefixed), the image size
        (two little-endian int64), the intrinsics (9 little-endian float64,
        row-major) and the extrinsics ``cam_to_ego`` (quaternion [w, x, y, z]
        then translation [m], 7 little-endian float64). The result is the same
        in every process and with any Python or numpy version; rigs that are
        ``==`` have the same digest.
        """
        h = hashlib.sha256()
        h.update(struct.pack('<q', len(self.cameras)))
        for cam in self.cameras:
            name = cam.name.encode('utf-8')
            h.update(struct.pack('<q', len(name)) + name)
            h.update(struct.pack('<qq', cam.width, cam.height))
            h.update(np.ascontiguousarray(cam.intrinsics, dtype='<f8').tobytes())
            extrinsics = np.concatenate([cam.cam_to_ego.rotation.elements, cam.cam_to_ego.translation])
            h.update(np.ascontiguousarray(extrinsics, dtype='<f8').tobytes())
        return h.hexdigest()
