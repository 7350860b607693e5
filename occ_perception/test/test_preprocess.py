"""Camera messages to network images: JPEG (reduced decode) and raw encodings, geometry, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from occ_perception.preprocess import (
    PreprocessError,
    Preprocessor,
    image_size_of,
    pil_baseline,
    preprocess_image,
    reduction_factor,
)
from occ_perception.rig import ImageTransform, Rig
from rosbags.typesys import Stores, get_typestore

STORE = get_typestore(Stores.ROS2_JAZZY)
CompressedImage = STORE.types['sensor_msgs/msg/CompressedImage']
Image = STORE.types['sensor_msgs/msg/Image']
Header = STORE.types['std_msgs/msg/Header']
Time = STORE.types['builtin_interfaces/msg/Time']
OUT = (704, 256)


def _header(frame: str) -> object:
    return Header(stamp=Time(sec=1, nanosec=0), frame_id=frame)


def _compressed(data: bytes | np.ndarray, frame: str = 'cam', fmt: str = 'jpeg') -> object:
    return CompressedImage(header=_header(frame), format=fmt, data=np.frombuffer(bytes(data), np.uint8).copy())


def _raw(pixels: np.ndarray, encoding: str, frame: str = 'cam', pad: int = 0) -> object:
    """An Image message; ``pad`` extra bytes (0xAB) at the end of every row."""
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    if pad:
        rows = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    return Image(
        header=_header(frame),
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=0,
        step=rows.shape[1],
        data=np.ascontiguousarray(rows).reshape(-1),
    )


def _encode(rgb: np.ndarray, ext: str = '.jpg', quality: int = 95) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == '.jpg' else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    assert ok
    return buf.tobytes()


def _scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth structure with distinct channels: red grows with u, green with v, blue a soft checker."""
    u = np.arange(width, dtype=np.float64)[None, :]
    v = np.arange(height, dtype=np.float64)[:, None]
    red = 255 * u / width + 0 * v
    green = 255 * v / height + 0 * u
    checker = ((np.floor(u / 48) + np.floor(v / 48)) % 2) * 200 + 25
    blue = cv2.GaussianBlur(checker.astype(np.float32), (0, 0), 4)
    return np.clip(np.stack([red, green, blue], axis=-1), 0, 255).astype(np.uint8)


def _spot_image(width: int, height: int, u0: float, v0: float, radius: float = 6.0) -> np.ndarray:
    """Black image with a bright disc centred at continuous source point (u0, v0) (pixel i covers [i, i+1))."""
    u = np.arange(width) + 0.5
    v = np.arange(height)[:, None] + 0.5
    disc = ((u - u0) ** 2 + (v - v0) ** 2 <= radius**2).astype(np.uint8) * 255
    return np.repeat(disc[:, :, None], 3, axis=2)


def _centroid(image: np.ndarray) -> np.ndarray:
    """Intensity centroid (u, v) in continuous network pixels (pixel centres at i + 0.5)."""
    w = image.astype(np.float64).sum(axis=2)
    w = np.where(w > 0.1 * w.max(), w, 0.0)
    vv, uu = np.mgrid[: w.shape[0], : w.shape[1]]
    return np.array([(w * (uu + 0.5)).sum() / w.sum(), (w * (vv + 0.5)).sum() / w.sum()])


def _reference(rgb: np.ndarray, tf: ImageTransform) -> np.ndarray:
    """Full-size image, one cv2.resize (pixel area) by tf.scale, crop."""
    resized = cv2.resize(rgb, None, fx=tf.scale, fy=tf.scale, interpolation=cv2.INTER_AREA)
    return resized[tf.crop_y : tf.crop_y + tf.out_height, tf.crop_x : tf.crop_x + tf.out_width]


@pytest.fixture(scope='module')
def rig() -> Rig:
    return Rig.nuscenes(1600, 900)


@pytest.fixture(scope='module')
def jpegs(rig):
    """Six different 1600x900 JPEGs (shifted scenes) and their source pixels."""
    images = [np.roll(_scene(1600, 900), 37 * i, axis=1) for i in range(len(rig))]
    return images, [_encode(im) for im in images]


def test_reduction_factor_follows_the_scale():
    assert reduction_factor(ImageTransform.fit(1600, 900)) == 2  # 0.44: decode 800x450, then x0.88
    assert reduction_factor(ImageTransform.fit(3200, 1800)) == 4
    assert reduction_factor(ImageTransform.fit(800, 450)) == 1  # 0.88
    assert reduction_factor(ImageTransform.fit(6400, 3600)) == 8
    assert reduction_factor(ImageTransform.fit(6400, 3600), max_factor=2) == 2


def test_image_size_read_from_the_headers():
    rgb = _scene(321, 123)
    for ext in ('.jpg', '.png'):
        assert image_size_of(np.frombuffer(_encode(rgb, ext), np.uint8), 'x') == (321, 123)


def test_jpeg_batch_shape_order_and_agreement_with_full_decode(rig, jpegs):
    images, data = jpegs
    msgs = [_compressed(d, cam.name) for d, cam in zip(data, rig.cameras)]
    with Preprocessor(rig, OUT, threads=2) as pre:
        batch = pre(msgs)
        by_name = pre({cam.name: m for cam, m in zip(rig.cameras, msgs)})
    assert batch.shape == (6, 256, 704, 3) and batch.dtype == np.uint8 and batch.flags.c_contiguous
    np.testing.assert_array_equal(batch, by_name)
    tfs = rig.image_transforms(*OUT)
    for i, (rgb, tf) in enumerate(zip(images, tfs)):
        ref = _reference(rgb, tf).astype(np.int16)
        err = np.abs(batch[i].astype(np.int16) - ref).mean()
        # a one-pixel shift of the reference is what a geometry slip would cost
        shifted = np.abs(ref[:, 1:] - ref[:, :-1]).mean()
        print(f'camera {i}: MAE against full decode + cv2.resize {err:.2f}, one-pixel shift {shifted:.2f}')
        assert err < 2.0
        assert err < 0.5 * shifted
        # rig order: camera i got its own image (each is shifted differently)
        if i:
            assert np.abs(batch[i].astype(np.int16) - _reference(images[0], tf)).mean() > 5 * err
    # the full-size decode path agrees too, and so does the PIL reference
    with Preprocessor(rig, OUT, threads=1, reduced_decode=False) as pre:
        full = pre(msgs)
    assert np.abs(full.astype(np.int16) - batch).mean() < 2.0
    pil = pil_baseline(data, tfs)
    assert pil.shape == batch.shape and np.abs(pil.astype(np.int16) - batch).mean() < 3.0


@pytest.mark.parametrize('size', [(1600, 900), (1601, 901), (1280, 720), (3200, 1800)])
@pytest.mark.parametrize('kind', ['jpeg', 'png', 'rgb8'])
def test_bright_spot_lands_where_the_image_transform_says(size, kind):
    width, height = size
    rig = Rig.nuscenes(width, height)
    cam = rig.cameras[1]
    tf = rig.image_transforms(*OUT)[1]
    # a source point inside the kept region, deliberately off the pixel grid
    target = np.array([0.31 * OUT[0], 0.62 * OUT[1]])
    u0, v0 = tf.invert(target) + np.array([0.37, -0.21])
    expected = tf.apply(np.array([u0, v0]))
    spot = _spot_image(width, height, u0, v0, radius=5.0 * width / 1600)
    if kind == 'rgb8':
        msg = _raw(spot, 'rgb8', cam.name)
    else:
        msg = _compressed(_encode(spot, '.jpg' if kind == 'jpeg' else '.png'), cam.name, kind)
    out = preprocess_image(msg, cam, tf)
    got = _centroid(out)
    print(size, kind, 'expected', expected, 'got', got)
    np.testing.assert_allclose(got, expected, atol=0.15)


def test_raw_encodings_channel_order_padding_and_mono(rig):
    cam, tf = rig.cameras[0], rig.image_transforms(*OUT)[0]
    rgb = _scene(1600, 900)
    ref = preprocess_image(_raw(rgb, 'rgb8', cam.name), cam, tf)
    # red grows with u, green with v: RGB order survived
    assert ref[128, 600, 0] > ref[128, 100, 0] + 50 and ref[240, 350, 1] > ref[10, 350, 1] + 20
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    alpha = np.full((900, 1600, 1), 7, np.uint8)
    cases = {
        'bgr8': _raw(bgr, 'bgr8', cam.name),
        'rgba8': _raw(np.concatenate([rgb, alpha], axis=2), 'rgba8', cam.name),
        'bgra8': _raw(np.concatenate([bgr, alpha], axis=2), 'bgra8', cam.name),
        'rgb8 padded': _raw(rgb, 'rgb8', cam.name, pad=64),
        'bgr8 padded': _raw(bgr, 'bgr8', cam.name, pad=5),
    }
    for name, msg in cases.items():
        np.testing.assert_array_equal(preprocess_image(msg, cam, tf), ref, err_msg=name)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    for pad in (0, 3):
        mono = preprocess_image(_raw(gray, 'mono8', cam.name, pad=pad), cam, tf)
        assert np.array_equal(mono[..., 0], mono[..., 1]) and np.array_equal(mono[..., 0], mono[..., 2])
        expected = cv2.cvtColor(ref, cv2.COLOR_RGB2GRAY)
        assert np.abs(mono[..., 0].astype(np.int16) - expected).max() <= 2
    # bytes and array.array data (rclpy style) work like numpy
    import array

    msg = _raw(rgb, 'rgb8', cam.name)
    msg.data = array.array('B', msg.data.tobytes())
    np.testing.assert_array_equal(preprocess_image(msg, cam, tf), ref)


def test_errors_name_the_camera(rig, jpegs):
    _, data = jpegs
    good = [_compressed(d, cam.name) for d, cam in zip(data, rig.cameras)]
    bad_cam = rig.cameras[2].name  # cam_front_right
    small = _encode(_scene(800, 450))
    corrupt_header = bytearray(data[2])
    corrupt_header[2:300] = bytes(range(1, 256)) + bytes(range(1, 44))
    cases = {
        'truncated': (_compressed(data[2][: len(data[2]) // 2], bad_cam), 'truncated'),
        'empty': (_compressed(b'', bad_cam), 'empty'),
        'not an image': (_compressed(b'hello world, not a jpeg at all', bad_cam), 'neither JPEG nor PNG'),
        'corrupt header': (_compressed(bytes(corrupt_header), bad_cam), 'corrupt JPEG header'),
        'wrong size': (_compressed(small, bad_cam), '800x450.*1600x900'),
        'unknown format': (_compressed(data[2], bad_cam, fmt='tiff'), "format 'tiff'"),
        'unknown encoding': (_raw(np.zeros((900, 1600, 2), np.uint8), 'yuv422', bad_cam), "encoding 'yuv422'"),
        'raw wrong size': (_raw(np.zeros((450, 800, 3), np.uint8), 'rgb8', bad_cam), '800x450'),
        'raw short data': (
            Image(
                header=_header(bad_cam),
                height=900,
                width=1600,
                encoding='rgb8',
                is_bigendian=0,
                step=4800,
                data=np.zeros(4800 * 899, np.uint8),
            ),
            'expected step 4800',
        ),
        'raw short step': (
            Image(
                header=_header(bad_cam),
                height=900,
                width=1600,
                encoding='rgb8',
                is_bigendian=0,
                step=1600,
                data=np.zeros(4800 * 900, np.uint8),
            ),
            'step 1600 is shorter',
        ),
    }
    with Preprocessor(rig, OUT, threads=2) as pre:
        for msg, pattern in cases.values():
            msgs = list(good)
            msgs[2] = msg
            with pytest.raises(PreprocessError, match=f"camera '{bad_cam}'.*{pattern}"):
                pre(msgs)
        with pytest.raises(PreprocessError, match='expected 6 images'):
            pre(good[:5])
        with pytest.raises(PreprocessError, match='cam_back'):
            pre({cam.name: m for cam, m in zip(rig.cameras, good) if cam.name != 'cam_back'})
        # the preprocessor still works after errors
        assert pre(good).shape == (6, 256, 704, 3)
