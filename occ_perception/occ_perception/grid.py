"""Voxel grid geometry and the semantic class table.

Conventions (DESIGN.md section 3):

- The grid lives in the ego frame ``base_link`` (x forward, y left, z up).
- Arrays are indexed ``[x, y, z]`` in C order, so the flat index of voxel
  ``(ix, iy, iz)`` is ``(ix * size_y + iy) * size_z + iz``.
- The grid's origin is its minimum corner in ``base_link``.
- Labels follow Occ3D-nuScenes: 0..16 are semantic classes, 17 is ``free``,
  255 marks voxels that were not observed (ground-truth masks only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    'CLASSES',
    'CLASS_NAMES',
    'FREE_LABEL',
    'NUM_CLASSES',
    'UNOBSERVED_LABEL',
    'ClassInfo',
    'GridError',
    'GridSpec',
    'class_colors',
]


class GridError(ValueError):
    """A grid specification or an index array is inconsistent."""


@dataclass(frozen=True)
class ClassInfo:
    """One semantic class: its label value, name and display colour (RGB, 0-255)."""

    label: int
    name: str
    color: tuple[int, int, int]
    dynamic: bool = False


# Occ3D-nuScenes order. Colours follow the nuScenes lidarseg palette so that a
# picture of ours reads like the pictures people already know.
CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo(0, 'others', (255, 0, 255)),
    ClassInfo(1, 'barrier', (112, 128, 144)),
    ClassInfo(2, 'bicycle', (220, 20, 60), dynamic=True),
    ClassInfo(3, 'bus', (255, 127, 80), dynamic=True),
    ClassInfo(4, 'car', (255, 158, 0), dynamic=True),
    ClassInfo(5, 'construction_vehicle', (233, 150, 70), dynamic=True),
    ClassInfo(6, 'motorcycle', (255, 61, 99), dynamic=True),
    ClassInfo(7, 'pedestrian', (0, 0, 230), dynamic=True),
    ClassInfo(8, 'traffic_cone', (47, 79, 79)),
    ClassInfo(9, 'trailer', (255, 140, 0), dynamic=True),
    ClassInfo(10, 'truck', (255, 99, 71), dynamic=True),
    ClassInfo(11, 'driveable_surface', (0, 207, 191)),
    ClassInfo(12, 'other_flat', (175, 0, 75)),
    ClassInfo(13, 'sidewalk', (75, 0, 75)),
    ClassInfo(14, 'terrain', (112, 180, 60)),
    ClassInfo(15, 'manmade', (222, 184, 135)),
    ClassInfo(16, 'vegetation', (0, 175, 0)),
    ClassInfo(17, 'free', (255, 255, 255)),
)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
NUM_CLASSES = len(CLASSES)  # 18, free included
FREE_LABEL = 17
UNOBSERVED_LABEL = 255


def class_colors() -> np.ndarray:
    """Colour lookup table, shape (256, 3) uint8, indexed by label value.

    Labels without a class (18..254) and 255 (unobserved) are black.
    """
    table = np.zeros((256, 3), dtype=np.uint8)
    for info in CLASSES:
        table[info.label] = info.color
    return table


@dataclass(frozen=True)
class GridSpec:
    """A dense axis-aligned voxel grid in ``base_link``.

    Attributes:
        lower: minimum corner (x, y, z) [m]; the grid's origin.
        size: number of voxels along x, y and z.
        voxel_size: edge length of a cubic voxel [m].

    The default is Occ3D-nuScenes: x and y in [-40, 40) m, z in [-1, 5.4) m,
    0.4 m voxels, 200 x 200 x 16.
    """

    lower: tuple[float, float, float] = (-40.0, -40.0, -1.0)
    size: tuple[int, int, int] = (200, 200, 16)
    voxel_size: float = 0.4

    def __post_init__(self) -> None:
        if len(self.lower) != 3 or len(self.size) != 3:
            raise GridError(f'GridSpec: lower and size need 3 values, got {self.lower!r}, {self.size!r}')
        if any(int(n) != n or n <= 0 for n in self.size):
            raise GridError(f'GridSpec.size: expected three positive integers, got {self.size!r}')
        if not (np.isfinite(self.voxel_size) and self.voxel_size > 0):
            raise GridError(f'GridSpec.voxel_size: expected a positive number of metres, got {self.voxel_size!r}')
        if not all(np.isfinite(v) for v in self.lower):
            raise GridError(f'GridSpec.lower: expected finite metres, got {self.lower!r}')

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(size_x, size_y, size_z)``."""
        return (int(self.size[0]), int(self.size[1]), int(self.size[2]))

    @property
    def num_voxels(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    @property
    def upper(self) -> tuple[float, float, float]:
        """Maximum corner (x, y, z) [m] (exclusive)."""
        return tuple(lo + n * self.voxel_size for lo, n in zip(self.lower, self.shape))  # type: ignore[return-value]

    def axis_centers(self, axis: int) -> np.ndarray:
        """Voxel centre coordinates along one axis (0=x, 1=y, 2=z), shape (size[axis],), float64 [m]."""
        n = self.shape[axis]
        return self.lower[axis] + (np.arange(n, dtype=np.float64) + 0.5) * self.voxel_size

    def voxel_centers(self) -> np.ndarray:
        """Centres of all voxels, shape (X, Y, Z, 3), float64 [m] in ``base_link``."""
        xs, ys, zs = (self.axis_centers(a) for a in range(3))
        return np.stack(np.meshgrid(xs, ys, zs, indexing='ij'), axis=-1)

    def flat_index(self, ix: np.ndarray, iy: np.ndarray, iz: np.ndarray) -> np.ndarray:
        """Flat C-order index ``(ix * size_y + iy) * size_z + iz`` (int64).

        Raises:
            GridError: an index is outside the grid.
        """
        ix, iy, iz = (np.asarray(a, dtype=np.int64) for a in (ix, iy, iz))
        sx, sy, sz = self.shape
        if ix.size and (
            ix.min() < 0 or iy.min() < 0 or iz.min() < 0 or ix.max() >= sx or iy.max() >= sy or iz.max() >= sz
        ):
            raise GridError(f'flat_index: voxel index outside the {self.shape} grid')
        return (ix * sy + iy) * sz + iz

    def unflatten(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Inverse of :meth:`flat_index`: (ix, iy, iz) int64 arrays.

        Raises:
            GridError: a flat index is outside ``[0, num_voxels)``.
        """
        flat = np.asarray(flat, dtype=np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= self.num_voxels):
            raise GridError(f'unflatten: flat index outside [0, {self.num_voxels})')
        sx, sy, sz = self.shape
        iz = flat % sz
        iy = (flat // sz) % sy
        ix = flat // (sy * sz)
        return ix, iy, iz

    def flat_centers(self, flat: np.ndarray) -> np.ndarray:
        """Centres of the voxels with the given flat indices, shape (N, 3) float64 [m]."""
        ix, iy, iz = self.unflatten(flat)
        idx = np.stack([ix, iy, iz], axis=-1).astype(np.float64)
        return np.asarray(self.lower, dtype=np.float64) + (idx + 0.5) * self.voxel_size

    def point_to_index(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Voxel index of metric points in ``base_link``.

        Args:
            points: (..., 3) [m].

        Returns:
            ``(index, inside)``: index (..., 3) int64 (floor of the voxel
            coordinate, meaningful only where ``inside``), and inside (...,) bool.
        """
        points = np.asarray(points, dtype=np.float64)
        finite = np.all(np.isfinite(points), axis=-1)
        rel = (np.where(finite[..., None], points, 0.0) - np.asarray(self.lower)) / self.voxel_size
        index = np.floor(np.clip(rel, -1.0, np.asarray(self.shape, dtype=np.float64))).astype(np.int64)
        inside = np.all((index >= 0) & (index < np.asarray(self.shape)), axis=-1) & finite
        return index, inside

    def check_array(self, array: np.ndarray, name: str, trailing: tuple[int, ...] = ()) -> None:
        """Check that ``array`` has shape ``self.shape + trailing``.

        Raises:
            GridError: naming ``name``, the expected and the actual shape.
        """
        expected = self.shape + tuple(trailing)
        if tuple(array.shape) != expected:
            raise GridError(f'{name}: expected shape {expected}, got {tuple(array.shape)}')


OCC3D_GRID = GridSpec()
