"""Grid indexing, rig projection through resize/crop, CameraInfo rigs, SE(3) and BEV warps."""

from __future__ import annotations

import numpy as np
import pytest
from occ_perception.geometry import GeometryError, Transform, bev_warp_affine, ego_motion, yaw_of
from occ_perception.grid import GridError, GridSpec
from occ_perception.messages import rosbags_typestore
from occ_perception.rig import NUSCENES_CALIBRATION, Camera, ImageTransform, Rig, RigError


def test_flat_index_matches_ravel_multi_index() -> None:
    grid = GridSpec()
    rng = np.random.default_rng(0)
    idx = [rng.integers(0, n, 5000) for n in grid.shape]
    np.testing.assert_array_equal(grid.flat_index(*idx), np.ravel_multi_index(idx, grid.shape))
    back = grid.unflatten(grid.flat_index(*idx))
    for a, b in zip(back, idx):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(GridError):
        grid.flat_index(np.array([200]), np.array([0]), np.array([0]))


def test_grid_default_is_occ3d() -> None:
    grid = GridSpec()
    assert grid.shape == (200, 200, 16)
    np.testing.assert_allclose(grid.upper, (40.0, 40.0, 5.4))
    centers = grid.voxel_centers()
    index, inside = grid.point_to_index(centers.reshape(-1, 3))
    assert inside.all()
    np.testing.assert_array_equal(grid.flat_index(*index.T), np.arange(grid.num_voxels))
    _, inside = grid.point_to_index(np.array([[40.0, 0.0, 0.0], [0.0, -40.01, 0.0], [np.nan, 0, 0]]))
    assert not inside.any()


def test_flashocc_image_geometry() -> None:
    t = ImageTransform.fit(1600, 900, 704, 256)
    assert (t.scale, t.crop_x, t.crop_y) == (0.44, 0, 140)
    assert t.resized_size == (704, 396)
    t2 = ImageTransform.fit(800, 450, 704, 256)
    assert (t2.scale, t2.crop_x, t2.crop_y) == (0.88, 0, 140)
    uv = np.array([[0.0, 140 / 0.44], [1599.0, 899.0]])
    np.testing.assert_allclose(t.apply(uv), [[0.0, 0.0], [1599 * 0.44, 899 * 0.44 - 140]])
    np.testing.assert_allclose(t.invert(t.apply(uv)), uv)


@pytest.mark.parametrize('size', [(1600, 900), (800, 450), (640, 480)])
def test_project_resize_crop_and_lift_back(size: tuple[int, int]) -> None:
    rig = Rig.nuscenes(*size)
    rng = np.random.default_rng(3)
    pts = np.stack([rng.uniform(-40, 40, 20000), rng.uniform(-40, 40, 20000), rng.uniform(-1, 5.4, 20000)], -1)
    transforms = rig.image_transforms(704, 256)
    seen = 0
    for cam, tf in zip(rig.cameras, transforms):
        uv, depth = cam.project(pts)
        net = tf.apply(uv)
        ok = (depth > 0.5) & (net[:, 0] >= 0) & (net[:, 0] < 704) & (net[:, 1] >= 0) & (net[:, 1] < 256)
        seen += int(ok.sum())
        back = cam.lift(tf.invert(net[ok]), depth[ok])
        assert np.abs(back - pts[ok]).max() < 1e-4
        # the same through the stacked matrices the network uses
        m = rig.matrices(704, 256)
        i = rig.names.index(cam.name)
        cam_pts = (np.linalg.inv(m.cam_to_ego[i]) @ np.c_[pts[ok], np.ones(ok.sum())].T)[:3]
        pix = m.image_transform[i] @ m.intrinsics[i] @ cam_pts
        np.testing.assert_allclose((pix[:2] / pix[2]).T, net[ok], atol=1e-6)
    assert seen > 1000  # the six cameras see a good share of the points


def test_nuscenes_rig_faces_the_right_way() -> None:
    rig = Rig.nuscenes()
    for name, point in [('cam_front', (20, 0, 1)), ('cam_back', (-20, 0, 1)), ('cam_front_left', (10, 10, 1)),
                        ('cam_back_right', (-5, -15, 1))]:  # fmt: skip
        cam = rig.camera(name)
        uv, depth = cam.project(np.array(point, float))
        assert depth > 0 and 0 <= uv[0] < cam.width and 0 <= uv[1] < cam.height, name


def _camera_info(store, cam: Camera):
    t = store.types
    k = cam.intrinsics
    p = np.zeros((3, 4))
    p[:, :3] = k
    return t['sensor_msgs/msg/CameraInfo'](
        header=t['std_msgs/msg/Header'](stamp=t['builtin_interfaces/msg/Time'](sec=1, nanosec=0), frame_id=cam.name),
        height=cam.height,
        width=cam.width,
        distortion_model='plumb_bob',
        d=np.zeros(5),
        k=k.reshape(-1).copy(),
        r=np.eye(3).reshape(-1),
        p=p.reshape(-1),
        binning_x=0,
        binning_y=0,
        roi=t['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )


def _tf_msg(store, parent: str, child: str, transform: Transform):
    t = store.types
    x, y, z, w = transform.xyzw()
    return t['geometry_msgs/msg/TransformStamped'](
        header=t['std_msgs/msg/Header'](stamp=t['builtin_interfaces/msg/Time'](sec=1, nanosec=0), frame_id=parent),
        child_frame_id=child,
        transform=t['geometry_msgs/msg/Transform'](
            translation=t['geometry_msgs/msg/Vector3'](
                x=transform.translation[0], y=transform.translation[1], z=transform.translation[2]
            ),
            rotation=t['geometry_msgs/msg/Quaternion'](x=x, y=y, z=z, w=w),
        ),
    )


@pytest.mark.parametrize('distro', ['humble', 'jazzy'])
def test_camera_info_rig_equals_calibration_rig(distro: str) -> None:
    store = rosbags_typestore(distro)
    reference = Rig.nuscenes(800, 450)
    cams = []
    for cam in reference.cameras:
        info = store.deserialize_cdr(
            store.serialize_cdr(_camera_info(store, cam), 'sensor_msgs/msg/CameraInfo'), 'sensor_msgs/msg/CameraInfo'
        )
        raw = store.serialize_cdr(
            _tf_msg(store, 'base_link', cam.name, cam.cam_to_ego), 'geometry_msgs/msg/TransformStamped'
        )
        tf = store.deserialize_cdr(raw, 'geometry_msgs/msg/TransformStamped')
        cams.append(Camera.from_camera_info(info, Transform.from_msg(tf.transform)))
    rig = Rig(tuple(cams))
    assert rig.same_as(reference, atol=1e-9)


def test_camera_info_falls_back_to_k_and_rejects_zero_focal() -> None:
    store = rosbags_typestore('jazzy')
    cam = Rig.nuscenes().camera('cam_front')
    info = _camera_info(store, cam)
    info.p = np.zeros(12)
    assert Camera.from_camera_info(info, cam.cam_to_ego).same_as(cam)
    info.k = np.zeros(9)
    with pytest.raises(RigError, match='cam_front'):
        Camera.from_camera_info(info, cam.cam_to_ego)


def test_rig_errors_name_the_input() -> None:
    calib = {k: dict(v) for k, v in NUSCENES_CALIBRATION.items()}
    del calib['CAM_BACK']
    with pytest.raises(RigError, match='CAM_BACK'):
        Rig.from_nuscenes(calib)
    calib = {k: dict(v) for k, v in NUSCENES_CALIBRATION.items()}
    calib['CAM_FRONT']['rotation'] = [0.0, 0.0, 0.0, 0.0]
    with pytest.raises(RigError, match='CAM_FRONT'):
        Rig.from_nuscenes(calib)


def test_transform_algebra() -> None:
    a = Transform.from_yaw(0.7, [3.0, -2.0, 0.5])
    b = Transform.from_xyzw([1.0, 2.0, 3.0], [0.1, -0.2, 0.3, 0.9])
    assert (a @ a.inverse()).almost_equal(Transform(), atol=1e-12)
    pts = np.random.default_rng(0).normal(size=(100, 3))
    np.testing.assert_allclose((a @ b).apply(pts), a.apply(b.apply(pts)), atol=1e-12)
    np.testing.assert_allclose(Transform.from_matrix((a @ b).matrix()).matrix(), (a @ b).matrix(), atol=1e-12)
    assert yaw_of(a) == pytest.approx(0.7)
    # ego motion: a point fixed in the world, seen from two poses
    world = np.array([10.0, 5.0, 1.0])
    p0, p1 = Transform.from_yaw(0.2, [1.0, 1.0, 0.0]), Transform.from_yaw(-0.1, [4.0, 2.0, 0.0])
    in0 = p0.inverse().apply(world)
    np.testing.assert_allclose(ego_motion(p0, p1).apply(in0), p1.inverse().apply(world), atol=1e-12)
    with pytest.raises(GeometryError):
        Transform.from_xyzw([0, 0, 0], [np.nan, 0, 0, 1])
    with pytest.raises(GeometryError):
        Transform(translation=[0.0, np.inf, 0.0])


def test_bev_warp_inverse_pair_is_identity() -> None:
    grid = GridSpec()
    a = Transform.from_yaw(0.4, [12.0, -3.0, 0.2])
    b = Transform.from_xyzw([15.5, -1.0, 0.3], [0.01, 0.02, 0.3, 0.95])
    ab = bev_warp_affine(a, b, grid)
    ba = bev_warp_affine(b, a, grid)
    np.testing.assert_allclose(ab @ ba, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(bev_warp_affine(a, a, grid), np.eye(3), atol=1e-12)


def test_bev_warp_moves_a_static_object() -> None:
    """A world-fixed blob in the previous BEV map lands where the current ego frame sees it."""
    torch = pytest.importorskip('torch')
    F = torch.nn.functional
    grid = GridSpec()
    prev_pose = Transform.from_yaw(0.3, [100.0, 50.0, 0.0])
    cur_pose = Transform.from_yaw(0.5, [104.0, 51.0, 0.0])
    world = np.array([110.0, 60.0, 0.0])
    bev_prev = np.zeros((1, 1, 200, 200), np.float32)
    (ix, iy, _), _ = grid.point_to_index(prev_pose.inverse().apply(world))
    bev_prev[0, 0, iy - 1 : iy + 2, ix - 1 : ix + 2] = 1.0  # (C, Y, X) layout
    theta = torch.from_numpy(bev_warp_affine(prev_pose, cur_pose, grid)[None, :2]).float()
    sample = F.affine_grid(theta, (1, 1, 200, 200), align_corners=True)
    warped = F.grid_sample(torch.from_numpy(bev_prev), sample, align_corners=True)[0, 0].numpy()
    (jx, jy, _), _ = grid.point_to_index(cur_pose.inverse().apply(world))
    peak_y, peak_x = np.unravel_index(np.argmax(warped), warped.shape)
    assert abs(peak_x - jx) <= 1 and abs(peak_y - jy) <= 1


def test_transform_value_equality_and_hash() -> None:
    a = Transform.from_yaw(0.7, [3.0, -2.0, 0.5])
    b = Transform.from_yaw(0.7, [3.0, -2.0, 0.5])
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != Transform.from_yaw(0.7, [3.0, -2.0, 0.5 + 1e-12])  # exact
    assert a.almost_equal(Transform.from_yaw(0.7, [3.0, -2.0, 0.5 + 1e-12]))  # tolerant
    assert a != 'not a transform'
    with pytest.raises(ValueError):
        a.translation[0] = 1.0  # immutable: the hash cannot go stale


def test_rig_value_equality_hash_and_digest() -> None:
    a, b = Rig.nuscenes(800, 450), Rig.nuscenes(800, 450)
    assert a is not b and a == b and hash(a) == hash(b) and a.digest() == b.digest()
    assert {a: 1}[b] == 1
    assert a != Rig.nuscenes(1600, 900) and a.digest() != Rig.nuscenes(1600, 900).digest()
    # one number of one camera changes: != and another digest, while same_as tolerates a tiny change
    cams = list(a.cameras)
    k = cams[2].intrinsics.copy()
    k[0, 2] += 1e-9
    moved = Rig(
        tuple(cams[:2] + [Camera(cams[2].name, k, cams[2].width, cams[2].height, cams[2].cam_to_ego)] + cams[3:])
    )
    assert moved != a and moved.digest() != a.digest() and moved.same_as(a, atol=1e-6)
    # the camera order is part of the identity
    swapped = Rig(tuple(reversed(a.cameras)))
    assert swapped != a and swapped.digest() != a.digest()
    digest = a.digest()
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_rig_digest_is_the_documented_sha256() -> None:
    """The digest is recomputed here from its definition, so it is stable across processes and versions."""
    import hashlib
    import struct

    cam = Camera(
        'cam_a',
        np.array([[500.0, 0, 320.5], [0, 501.0, 240.25], [0, 0, 1]]),
        640,
        480,
        Transform.from_xyzw([1.5, -0.25, 1.75], [0.5, -0.5, 0.5, -0.5]),
    )
    h = hashlib.sha256()
    h.update(struct.pack('<q', 1))
    h.update(struct.pack('<q', 5) + b'cam_a')
    h.update(struct.pack('<qq', 640, 480))
    h.update(struct.pack('<9d', 500.0, 0, 320.5, 0, 501.0, 240.25, 0, 0, 1))
    h.update(struct.pack('<7d', -0.5, 0.5, -0.5, 0.5, 1.5, -0.25, 1.75))  # [w, x, y, z] then translation
    assert Rig((cam,)).digest() == h.hexdigest()
    # and in a fresh interpreter
    import subprocess
    import sys

    code = 'import numpy as np; from occ_perception.rig import Rig; print(Rig.nuscenes(800, 450).digest())'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == Rig.nuscenes(800, 450).digest()


@pytest.mark.parametrize('src', [(1000, 300), (2000, 700), (3000, 1000)])  # overhangs 149, 27, 64 px
def test_resized_size_with_odd_overhang(src: tuple[int, int]) -> None:
    """Height-limited sources overhang horizontally; an odd overhang must not be assumed even."""
    t = ImageTransform.fit(*src, 704, 256)
    scale = max(704 / src[0], 256 / src[1])
    expected = (int(src[0] * scale), int(src[1] * scale))
    assert t.resized_size == expected
    # the crop lies inside the resized image and the far corner of the source maps to its far edge
    assert t.crop_x + t.out_width <= expected[0] and t.crop_y + t.out_height <= expected[1]
    far = t.apply(np.array([src[0], src[1]], float)) + [t.crop_x, t.crop_y]
    np.testing.assert_allclose(far, np.array(src) * scale)
