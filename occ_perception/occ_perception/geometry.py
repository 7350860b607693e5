"""Rigid transforms (SE(3) on pyquaternion), ego motion and BEV warps.

A :class:`Transform` ``T_a_b`` maps points expressed in frame ``b`` into frame
``a``: ``p_a = R @ p_b + t``. An ego pose is ``T_map_ego`` (the pose of
``base_link`` in ``map``), as carried by nav_msgs/Odometry and nuScenes
``ego_pose`` records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyquaternion import Quaternion

from .grid import GridSpec

__all__ = [
    'UNIT_QUATERNION_TOLERANCE',
    'GeometryError',
    'Transform',
    'bev_norm_matrix',
    'bev_warp_affine',
    'ego_motion',
    'yaw_of',
]


class GeometryError(ValueError):
    """A pose or transform is malformed (NaN, zero or non-unit quaternion, wrong shape)."""


UNIT_QUATERNION_TOLERANCE = 0.01
"""Largest ``|x^2 + y^2 + z^2 + w^2 - 1|`` of a message's quaternion (tf2's ``QUATERNION_NORMALIZATION_TOLERANCE``)."""


def _quaternion(rotation: Quaternion | Sequence[float], name: str) -> Quaternion:
    if isinstance(rotation, Quaternion):
        q = rotation
    else:
        values = np.asarray(rotation, dtype=np.float64).reshape(-1)
        if values.shape != (4,):
            raise GeometryError(f'{name}: expected a quaternion [w, x, y, z], got shape {values.shape}')
        q = Quaternion(values)
    arr = np.asarray(q.elements, dtype=np.float64)
    norm = float(np.linalg.norm(arr))
    if not np.all(np.isfinite(arr)) or norm < 1e-9:
        raise GeometryError(f'{name}: expected a finite non-zero quaternion, got {arr.tolist()}')
    return Quaternion(arr / norm)


@dataclass(frozen=True)
class Transform:
    """A rigid transform ``T_a_b``: ``p_a = rotation.rotate(p_b) + translation``.

    Immutable (the translation array is read-only); ``==`` and ``hash`` use the
    exact stored numbers, :meth:`almost_equal` compares within a tolerance.

    Attributes:
        rotation: unit quaternion (pyquaternion, [w, x, y, z] order).
        translation: (3,) float64 [m].
    """

    rotation: Quaternion = field(default_factory=Quaternion)
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self) -> None:
        object.__setattr__(self, 'rotation', _quaternion(self.rotation, 'Transform.rotation'))
        t = np.array(self.translation, dtype=np.float64).reshape(-1)  # a copy, made read-only: transforms hash
        if t.shape != (3,) or not np.all(np.isfinite(t)):
            raise GeometryError(f'Transform.translation: expected 3 finite metres, got {t.tolist()}')
        t.setflags(write=False)
        object.__setattr__(self, 'translation', t)

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> Transform:
        """From a 4x4 homogeneous matrix.

        Raises:
            GeometryError: not 4x4, not finite, or the 3x3 block is not a rotation.
        """
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)):
            raise GeometryError(f'Transform.from_matrix: expected a finite 4x4 matrix, got shape {m.shape}')
        rot = m[:3, :3]
        if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-6) or np.linalg.det(rot) < 0:
            raise GeometryError('Transform.from_matrix: the 3x3 block is not a rotation')
        return cls(Quaternion(matrix=rot, atol=1e-6, rtol=1e-6), m[:3, 3])

    @classmethod
    def from_xyzw(cls, translation: Sequence[float], xyzw: Sequence[float], check_unit: bool = False) -> Transform:
        """From a translation [m] and a ROS-order quaternion (x, y, z, w).

        Args:
            check_unit: refuse a quaternion whose squared norm is off 1 by more than
                :data:`UNIT_QUATERNION_TOLERANCE` (as tf2 does with messages); otherwise, and for smaller
                errors, the quaternion is normalised.

        Raises:
            GeometryError: NaN or infinite values, a zero quaternion, or (``check_unit``) a non-unit one.
        """
        x, y, z, w = (float(v) for v in xyzw)
        if check_unit:
            norm2 = x * x + y * y + z * z + w * w  # Python floats: inf on overflow, never an exception
            if np.isfinite(norm2) and norm2 >= 1e-18 and abs(norm2 - 1.0) > UNIT_QUATERNION_TOLERANCE:
                raise GeometryError(
                    f'quaternion (x, y, z, w) = {[x, y, z, w]}: expected a unit quaternion, its squared norm is '
                    f'{norm2:.6g} (tolerance {UNIT_QUATERNION_TOLERANCE})'
                )
        return cls(_quaternion([w, x, y, z], 'quaternion (x, y, z, w)'), np.asarray(translation, dtype=np.float64))

    @classmethod
    def from_msg(cls, msg: Any) -> Transform:
        """From a geometry_msgs/Transform (translation, rotation) or Pose (position, orientation).

        Any message class with those field names works (rclpy or rosbags).

        Raises:
            GeometryError: NaN or infinite values, a zero quaternion, or one whose squared norm is off 1 by more
                than :data:`UNIT_QUATERNION_TOLERANCE`.
        """
        if hasattr(msg, 'translation'):
            t, q = msg.translation, msg.rotation
        else:
            t, q = msg.position, msg.orientation
        return cls.from_xyzw([t.x, t.y, t.z], [q.x, q.y, q.z, q.w], check_unit=True)

    @classmethod
    def from_yaw(cls, yaw: float, translation: Sequence[float] = (0.0, 0.0, 0.0)) -> Transform:
        """A rotation of ``yaw`` radians about +z followed by ``translation``."""
        return cls(Quaternion(axis=[0.0, 0.0, 1.0], angle=float(yaw)), np.asarray(translation, dtype=np.float64))

    def matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix, float64."""
        m = np.eye(4)
        m[:3, :3] = self.rotation.rotation_matrix
        m[:3, 3] = self.translation
        return m

    def rotation_matrix(self) -> np.ndarray:
        """3x3 rotation matrix, float64."""
        return np.asarray(self.rotation.rotation_matrix, dtype=np.float64)

    def xyzw(self) -> tuple[float, float, float, float]:
        """The rotation as a ROS-order quaternion (x, y, z, w)."""
        w, x, y, z = (float(v) for v in self.rotation.elements)
        return (x, y, z, w)

    def inverse(self) -> Transform:
        inv = self.rotation.inverse
        return Transform(inv, -inv.rotate(self.translation))

    def __matmul__(self, other: Transform) -> Transform:
        """Composition: ``(T_a_b @ T_b_c) = T_a_c``."""
        return Transform(self.rotation * other.rotation, self.rotation.rotate(other.translation) + self.translation)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform points (..., 3) [m] from frame b into frame a."""
        pts = np.asarray(points, dtype=np.float64)
        return pts @ self.rotation_matrix().T + self.translation

    def _key(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.rotation.elements) + tuple(float(v) for v in self.translation)

    def __eq__(self, other: object) -> bool:
        """Exact equality of the stored numbers (quaternion [w, x, y, z] and translation); see :meth:`almost_equal`."""
        if not isinstance(other, Transform):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def almost_equal(self, other: Transform, atol: float = 1e-9) -> bool:
        """Equal 4x4 matrices within ``atol`` (so ``q`` and ``-q`` compare equal here, not with ``==``)."""
        return bool(np.allclose(self.matrix(), other.matrix(), atol=atol))


def yaw_of(transform: Transform) -> float:
    """Heading [rad] of the transform's x axis projected on the xy plane."""
    x_axis = transform.rotation_matrix()[:, 0]
    return float(np.arctan2(x_axis[1], x_axis[0]))


def ego_motion(pose_from: Transform, pose_to: Transform) -> Transform:
    """The transform taking points in the ego frame at ``pose_from`` into the ego frame at ``pose_to``.

    Args:
        pose_from: ``T_map_ego`` at the earlier stamp.
        pose_to: ``T_map_ego`` at the later stamp.

    Returns:
        ``T_egoTo_egoFrom = inv(pose_to) @ pose_from``.
    """
    return pose_to.inverse() @ pose_from


def _planar(pose: Transform) -> np.ndarray:
    """3x3 SE(2) matrix of a pose's x, y and yaw."""
    yaw = yaw_of(pose)
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, pose.translation[0]], [s, c, pose.translation[1]], [0.0, 0.0, 1.0]])


def bev_norm_matrix(grid: GridSpec) -> np.ndarray:
    """3x3 affine from metric (x, y, 1) in ``base_link`` to grid_sample coordinates.

    The BEV feature map is laid out (C, Y, X): width is x, height is y. With
    ``align_corners=True`` the normalised coordinate -1 is the centre of the
    first cell and +1 the centre of the last, which is what this matrix maps to.
    """
    m = np.eye(3)
    for axis in (0, 1):
        centers = grid.axis_centers(axis)
        span = centers[-1] - centers[0]
        if span <= 0:
            raise GeometryError(f'bev_norm_matrix: the grid needs at least 2 cells along axis {axis}')
        m[axis, axis] = 2.0 / span
        m[axis, 2] = -1.0 - 2.0 * centers[0] / span
    return m


def bev_warp_affine(pose_prev: Transform, pose_cur: Transform, grid: GridSpec) -> np.ndarray:
    """Affine for ``torch.nn.functional.affine_grid`` that warps a previous BEV map into the current ego frame.

    For each cell of the current BEV map (normalised coordinates, x along
    width, y along height) it gives where to sample the previous map:
    ``n_prev = A @ [n_cur_x, n_cur_y, 1]``. Only the planar part (x, y, yaw) of
    the ego poses is used (x, y and yaw of each in ``map``), as in BEVDet4D; the
    warps A -> B and B -> A are exact inverses.

    Args:
        pose_prev: ``T_map_ego`` when the previous feature was computed.
        pose_cur: ``T_map_ego`` now.
        grid: the BEV grid (x, y extents and cell size).

    Returns:
        (3, 3) float64; rows 0-1 are the ``theta`` of ``affine_grid`` (use align_corners=True).
    """
    motion = np.linalg.solve(_planar(pose_prev), _planar(pose_cur))  # current ego -> previous ego
    norm = bev_norm_matrix(grid)
    return norm @ motion @ np.linalg.inv(norm)
