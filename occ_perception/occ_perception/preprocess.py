"""Camera messages to the network's uint8 input images.

One synchronised set of camera messages (sensor_msgs/CompressedImage with
JPEG or PNG data, or sensor_msgs/Image with an 8-bit encoding) becomes one
``(N, H, W, 3)`` uint8 array, RGB, C-contiguous, in rig order, through each
camera's :class:`~occ_perception.rig.ImageTransform` (resize by ``scale``,
then crop). Normalisation happens inside the network graph (DESIGN.md
section 5), not here.

Geometry: pixel coordinates are continuous with pixel ``i`` covering
``[i, i + 1)``; ImageTransform maps source ``u`` to ``scale * u - crop_x``.
JPEGs are decoded at a reduced size (libjpeg's scaled IDCT, 1/2, 1/4 or 1/8)
where the scale allows; decoded pixel ``d`` then covers source
``[f * d, f * d + f)``, so the remaining resize uses the factor
``scale * f`` exactly (``cv2.resize`` with ``fx``/``fy``, not a rounded
target size), and the result equals ImageTransform's geometry up to
interpolation.

Messages are read through their field names only (``format``/``data`` or
``encoding``/``width``/``height``/``step``/``is_bigendian``/``data``), so
rosbags and rclpy message classes both work. ``data`` may be a numpy array,
``bytes``, ``array.array`` or a list.
"""

from __future__ import annotations

import array
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np

from .rig import Camera, ImageTransform, Rig

__all__ = [
    'RAW_ENCODINGS',
    'PreprocessError',
    'Preprocessor',
    'decode_compressed',
    'decode_raw',
    'image_size_of',
    'pil_baseline',
    'preprocess_image',
    'reduction_factor',
]

RAW_ENCODINGS: tuple[str, ...] = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8')
"""sensor_msgs/Image encodings accepted (8 bits per channel, so ``is_bigendian`` never matters)."""

_CHANNELS = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1}
# colour conversion of each raw encoding to RGB (None: already RGB)
_TO_RGB = {
    'rgb8': None,
    'bgr8': cv2.COLOR_BGR2RGB,
    'rgba8': cv2.COLOR_RGBA2RGB,
    'bgra8': cv2.COLOR_BGRA2RGB,
    'mono8': cv2.COLOR_GRAY2RGB,
}
_REDUCED_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


class PreprocessError(ValueError):
    """A camera message cannot become a network image: unknown encoding, wrong size, undecodable data."""


def _bytes_of(data: Any) -> np.ndarray:
    """A message's ``data`` field as a 1-D uint8 numpy array (no copy where the buffer allows)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype == np.uint8 else data.astype(np.uint8).reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview, array.array)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8).reshape(-1)


def reduction_factor(transform: ImageTransform, max_factor: int = 8) -> int:
    """The largest JPEG decode reduction f in (1, 2, 4, 8) with ``transform.scale * f <= 1``.

    Decoding at 1/f never leaves fewer pixels than the resized image needs,
    so the remaining resize always shrinks (or keeps) the image.
    """
    factor = 1
    for f in (2, 4, 8):
        if f <= max_factor and transform.scale * f <= 1.0 + 1e-9:
            factor = f
    return factor


def image_size_of(data: np.ndarray, name: str) -> tuple[int, int]:
    """(width, height) [px] from a JPEG's frame header or a PNG's IHDR, without decoding.

    Raises:
        PreprocessError: the bytes are neither a JPEG nor a PNG, or the header is cut short.
    """
    head = data[:8].tobytes()
    if head.startswith(_PNG_MAGIC):
        if data.size < 24:
            raise PreprocessError(f'{name}: PNG data of {data.size} bytes ends inside its header')
        ihdr = data[16:24].tobytes()
        return int.from_bytes(ihdr[:4], 'big'), int.from_bytes(ihdr[4:], 'big')
    if not head.startswith(b'\xff\xd8'):
        raise PreprocessError(f'{name}: data is neither JPEG nor PNG (starts with {head[:4].hex()})')
    pos, n = 2, int(data.size)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            raise PreprocessError(f'{name}: corrupt JPEG header (no marker at byte {pos})')
        marker = int(data[pos + 1])
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = (int(data[pos + 2]) << 8) | int(data[pos + 3])
        if marker in _JPEG_SOF:
            if pos + 9 > n:
                break
            height = (int(data[pos + 5]) << 8) | int(data[pos + 6])
            width = (int(data[pos + 7]) << 8) | int(data[pos + 8])
            return width, height
        if marker == 0xDA or length < 2:  # scan started before any frame header, or a broken length
            raise PreprocessError(f'{name}: corrupt JPEG header (no frame header before the scan)')
        pos += 2 + length
    raise PreprocessError(f'{name}: JPEG data of {n} bytes ends before its frame header')


def _check_size(width: int, height: int, camera: Camera, what: str) -> None:
    if (width, height) != (camera.width, camera.height):
        raise PreprocessError(
            f'camera {camera.name!r}: {what} is {width}x{height}, but its CameraInfo (the rig) says '
            f'{camera.width}x{camera.height}'
        )


def decode_compressed(msg: Any, camera: Camera, factor: int = 1) -> tuple[np.ndarray, int]:
    """Decode a sensor_msgs/CompressedImage (JPEG or PNG), a JPEG at 1/``factor`` size, BGR.

    Damage inside a JPEG's entropy-coded data that libjpeg recovers from gives a damaged
    image (as with every libjpeg-based decoder), not an error.

    Args:
        msg: any CompressedImage class (fields ``format``, ``data``). ``format`` may be
            empty (the bytes decide), ``jpeg``/``png`` or image_transport's
            ``"rgb8; jpeg compressed bgr8"`` style.
        camera: the rig camera, for its name and its CameraInfo size (width, height).
        factor: 1, 2, 4 or 8: JPEGs are decoded by libjpeg's scaled IDCT to ceil(width / factor) x
            ceil(height / factor) pixels, decoded pixel d covering source [factor * d, factor * d + factor);
            PNGs are always decoded at full size.

    Returns:
        ``(image, applied)``: (H', W', 3) uint8 BGR (OpenCV's order), and the reduction actually applied
        (``factor`` for JPEG, 1 for PNG).

    Raises:
        PreprocessError: naming the camera: unsupported format, empty, truncated or undecodable
        data, or an image size that disagrees with the camera's.
    """
    fmt = str(msg.format).lower()
    if fmt and not any(key in fmt for key in ('jpeg', 'jpg', 'png')):
        raise PreprocessError(
            f'camera {camera.name!r}: CompressedImage format {msg.format!r} is not supported (expected jpeg or png)'
        )
    data = _bytes_of(msg.data)
    if data.size == 0:
        raise PreprocessError(f'camera {camera.name!r}: CompressedImage data is empty')
    width, height = image_size_of(data, f'camera {camera.name!r}')
    _check_size(width, height, camera, 'the compressed image')
    if data[:2].tobytes() == b'\xff\xd8' and data[-64:].tobytes().rfind(b'\xff\xd9') < 0:
        # Entropy-coded data stuffs every 0xFF, so an end-of-image marker in the tail is the real one.
        raise PreprocessError(f'camera {camera.name!r}: JPEG data of {data.size} bytes is truncated (no end marker)')
    if factor not in _REDUCED_FLAGS:
        raise PreprocessError(f'camera {camera.name!r}: decode reduction must be 1, 2, 4 or 8, got {factor}')
    if data[:2].tobytes() != b'\xff\xd8':
        factor = 1  # OpenCV reduces PNGs by a resize of its own rounding; the caller reduces exactly
    image = cv2.imdecode(data, _REDUCED_FLAGS[factor])
    if image is None:
        raise PreprocessError(f'camera {camera.name!r}: cannot decode the {data.size}-byte compressed image')
    expected = (-(-height // factor), -(-width // factor))
    if image.shape[:2] != expected:
        raise PreprocessError(
            f'camera {camera.name!r}: decoded image is {image.shape[1]}x{image.shape[0]}, expected '
            f'{expected[1]}x{expected[0]} (1/{factor} of {width}x{height})'
        )
    return image, factor


def decode_raw(msg: Any, camera: Camera) -> tuple[np.ndarray, str]:
    """A sensor_msgs/Image as an (H, W, C) uint8 view honouring ``step`` (row padding), and its encoding.

    Every accepted encoding (:data:`RAW_ENCODINGS`) has one byte per channel,
    so ``is_bigendian`` does not change the bytes' meaning.

    Raises:
        PreprocessError: naming the camera: unknown encoding, size unlike the camera's,
        ``step`` shorter than a row, or fewer bytes than ``step * height``.
    """
    encoding = str(msg.encoding).lower()
    if encoding not in _CHANNELS:
        raise PreprocessError(
            f'camera {camera.name!r}: Image encoding {msg.encoding!r} is not supported (expected one of {RAW_ENCODINGS})'
        )
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    _check_size(width, height, camera, 'the Image')
    channels = _CHANNELS[encoding]
    if step < width * channels:
        raise PreprocessError(
            f'camera {camera.name!r}: Image step {step} is shorter than a row of {width} {encoding} pixels '
            f'({width * channels} bytes)'
        )
    data = _bytes_of(msg.data)
    if data.size < step * height:
        raise PreprocessError(
            f'camera {camera.name!r}: Image data has {data.size} bytes, expected step {step} x height {height} '
            f'= {step * height}'
        )
    rows = data[: step * height].reshape(height, step)
    return rows[:, : width * channels].reshape(height, width, channels), encoding


def _reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """f x f block averages: pixel d covers source [f * d, f * d + f), as in libjpeg's scaled decode."""
    return cv2.resize(image, None, fx=1.0 / factor, fy=1.0 / factor, interpolation=cv2.INTER_AREA)


def _resize_crop(
    image: np.ndarray, factor: float, transform: ImageTransform, interpolation: int | None, name: str
) -> np.ndarray:
    """Resize ``image`` by ``factor`` (exactly, not a rounded target size) and crop per ``transform``.

    ``interpolation`` None picks bilinear for factors of at least 0.5 (the reduced decode already
    averaged the pixels) and pixel-area averaging below.
    """
    if abs(factor - 1.0) < 1e-12:
        resized = image
    else:
        if interpolation is None:
            interpolation = cv2.INTER_LINEAR if factor >= 0.5 else cv2.INTER_AREA
        resized = cv2.resize(image, None, fx=factor, fy=factor, interpolation=interpolation)
    x0, y0 = transform.crop_x, transform.crop_y
    x1, y1 = x0 + transform.out_width, y0 + transform.out_height
    if resized.shape[0] < y1 or resized.shape[1] < x1 or x0 < 0 or y0 < 0:
        raise PreprocessError(
            f'camera {name!r}: crop [{x0}:{x1}] x [{y0}:{y1}] does not fit the resized image '
            f'{resized.shape[1]}x{resized.shape[0]}; the ImageTransform does not belong to this image size'
        )
    return resized[y0:y1, x0:x1]


def preprocess_image(
    msg: Any,
    camera: Camera,
    transform: ImageTransform,
    out: np.ndarray | None = None,
    reduced_decode: bool = True,
    interpolation: int | None = None,
) -> np.ndarray:
    """One camera message to its (out_height, out_width, 3) uint8 RGB network image.

    The image is first reduced by an integer factor f (:func:`reduction_factor`): JPEGs through
    libjpeg's scaled decode, raw images by pixel-area averaging of f x f blocks; then resized by
    ``transform.scale * f`` and cropped, so source pixel (u, v) lands at ``transform.apply((u, v))``.

    Args:
        msg: sensor_msgs/CompressedImage (has ``format``) or sensor_msgs/Image (has ``encoding``).
        camera: the rig camera (name, CameraInfo width and height).
        transform: the camera's resize-then-crop geometry.
        out: optional (out_height, out_width, 3) uint8 array written in place and returned.
        reduced_decode: reduce by f before the resize where the scale allows (f = 1 otherwise).
        interpolation: OpenCV interpolation of the remaining resize; None: bilinear when that
            resize shrinks by at most 2 (always the case after the reduction), pixel-area below.

    Raises:
        PreprocessError: naming the camera (see :func:`decode_compressed`, :func:`decode_raw`).
    """
    shape = (transform.out_height, transform.out_width, 3)
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    elif out.shape != shape or out.dtype != np.uint8:
        raise PreprocessError(f'camera {camera.name!r}: out must be {shape} uint8, got {out.shape} {out.dtype}')
    factor = reduction_factor(transform) if reduced_decode else 1
    if hasattr(msg, 'format'):
        bgr, applied = decode_compressed(msg, camera, factor)
        if applied < factor:
            bgr = _reduce(bgr, factor // applied)
        crop = _resize_crop(bgr, transform.scale * factor, transform, interpolation, camera.name)
        cv2.cvtColor(crop, cv2.COLOR_BGR2RGB, dst=out)
        return out
    if hasattr(msg, 'encoding'):
        pixels, encoding = decode_raw(msg, camera)
        if encoding == 'mono8':
            pixels = pixels[:, :, 0]
        if factor > 1:
            pixels = _reduce(pixels, factor)
        crop = _resize_crop(pixels, transform.scale * factor, transform, interpolation, camera.name)
        code = _TO_RGB[encoding]
        if code is None:
            out[...] = crop
        else:
            cv2.cvtColor(np.ascontiguousarray(crop), code, dst=out)
        return out
    raise PreprocessError(
        f'camera {camera.name!r}: expected a sensor_msgs/CompressedImage or sensor_msgs/Image, got {type(msg).__name__}'
    )


class Preprocessor:
    """Turns one synchronised set of camera messages into the network's input images.

    Owns a thread pool that decodes the cameras in parallel (OpenCV releases
    the GIL while decoding and resizing). Use as a context manager or call
    :meth:`close`.

    Args:
        rig: the cameras in network order (their width and height are the CameraInfo sizes).
        image_size: network input (width, height) [px], e.g. ``config.image_size``.
        threads: worker threads (1 decodes in the calling thread).
        reduced_decode: decode JPEGs at reduced size where the scale allows.
        interpolation: OpenCV interpolation for the resize (None: see :func:`preprocess_image`).
    """

    def __init__(
        self,
        rig: Rig,
        image_size: tuple[int, int] = (704, 256),
        threads: int = 2,
        reduced_decode: bool = True,
        interpolation: int | None = None,
    ) -> None:
        if threads < 1:
            raise PreprocessError(f'Preprocessor: threads must be at least 1, got {threads}')
        self.rig = rig
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.transforms: tuple[ImageTransform, ...] = rig.image_transforms(*self.image_size)
        self.reduced_decode = reduced_decode
        self.interpolation = interpolation
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix='preprocess') if threads > 1 else None

    def __call__(self, images: Sequence[Any] | Mapping[str, Any]) -> np.ndarray:
        """Decode, resize and crop every camera.

        Args:
            images: one CompressedImage or Image per camera, in rig order, or keyed by camera name; None
                for a failed camera (its image is all zeros).

        Returns:
            (N, H, W, 3) uint8 RGB, C-contiguous, in rig order (H, W from ``image_size``).

        Raises:
            PreprocessError: a camera is missing or its message is unusable (the first failing camera in
            rig order is named).
        """
        if isinstance(images, Mapping):
            missing = [name for name in self.rig.names if name not in images]
            if missing:
                raise PreprocessError(f'Preprocessor: no image for camera(s) {missing}; got {sorted(images)}')
            msgs = [images[name] for name in self.rig.names]
        else:
            msgs = list(images)
            if len(msgs) != len(self.rig):
                raise PreprocessError(
                    f'Preprocessor: expected {len(self.rig)} images (cameras {list(self.rig.names)}), got {len(msgs)}'
                )
        width, height = self.image_size
        batch = np.empty((len(msgs), height, width, 3), dtype=np.uint8)
        jobs = [
            (msg, cam, tf, batch[i]) for i, (msg, cam, tf) in enumerate(zip(msgs, self.rig.cameras, self.transforms))
        ]
        if self._pool is None:
            for job in jobs:
                self._one(*job)
        else:
            for future in [self._pool.submit(self._one, *job) for job in jobs]:
                future.result()  # re-raises the first camera's error in rig order
        return batch

    def _one(self, msg: Any, camera: Camera, transform: ImageTransform, out: np.ndarray) -> None:
        if msg is None:
            out[...] = 0
            return
        preprocess_image(msg, camera, transform, out, self.reduced_decode, self.interpolation)

    def close(self) -> None:
        """Stop the worker threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> Preprocessor:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pil_baseline(jpegs: Sequence[bytes], transforms: Sequence[ImageTransform]) -> np.ndarray:
    """Reference path for benchmarks: full-size PIL decode, PIL resize (bilinear), crop.

    The way BEVDet/FlashOCC prepare images at test time; single-threaded.

    Args:
        jpegs: encoded images in rig order. transforms: their ImageTransforms.

    Returns:
        (N, H, W, 3) uint8 RGB.
    """
    import io

    from PIL import Image

    out = []
    for data, tf in zip(jpegs, transforms):
        with Image.open(io.BytesIO(bytes(data))) as img:
            rgb = img.convert('RGB')
            new_size = (int(rgb.width * tf.scale), int(rgb.height * tf.scale))
            resized = rgb.resize(new_size, Image.Resampling.BILINEAR)
            box = (tf.crop_x, tf.crop_y, tf.crop_x + tf.out_width, tf.crop_y + tf.out_height)
            out.append(np.asarray(resized.crop(box)))
    return np.ascontiguousarray(np.stack(out))
