"""Direct splats with ``index_add``: the reference the table splat is tested and benchmarked against.

Not part of the exported graph. Layout as in :mod:`.splat_tables`: the BEV map is
(C, Y, X) with x along the width; cell (ix, iy) has flat index ``iy * X + ix``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ['splat_index_add', 'splat_ranks', 'splat_reference']


def splat_ranks(cells: np.ndarray | torch.Tensor, depth_shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """BEVPoolv2-style ranks of the frustum points that fall in the grid, sorted by BEV cell.

    Args:
        cells: (N, D, H, W) int64 from :func:`frustum_cells` (-1 = outside).
        depth_shape: (N, D, H, W).

    Returns:
        ``(ranks_depth, ranks_feat, ranks_bev)``, each (P,) int64: index into the flattened
        depth (N*D*H*W), into the flattened feature rows (N*H*W), and the BEV cell.
    """
    _, d, h, w = depth_shape
    cells = torch.as_tensor(cells).reshape(-1)
    keep = torch.nonzero(cells >= 0).squeeze(1)
    keep = keep[torch.argsort(cells[keep], stable=True)]
    return keep, (keep // (d * h * w)) * (h * w) + keep % (h * w), cells[keep]


def splat_index_add(
    depth: torch.Tensor, feat: torch.Tensor, ranks: tuple[torch.Tensor, ...], bev_size: tuple[int, int]
) -> torch.Tensor:
    """Direct splat with gathers and ``index_add`` over precomputed :func:`splat_ranks`.

    Args:
        depth: (N, D, H, W); feat: (N, C, H, W); bev_size: (X, Y).

    Returns:
        (C, Y, X).
    """
    ranks_depth, ranks_feat, ranks_bev = ranks
    c = feat.shape[1]
    feat_rows = feat.permute(0, 2, 3, 1).reshape(-1, c)
    values = depth.reshape(-1).index_select(0, ranks_depth).unsqueeze(1) * feat_rows.index_select(0, ranks_feat)
    out = feat.new_zeros(bev_size[0] * bev_size[1], c).index_add_(0, ranks_bev, values)
    return out.t().reshape(c, bev_size[1], bev_size[0])


def splat_reference(
    depth: torch.Tensor, feat: torch.Tensor, cells: np.ndarray | torch.Tensor, bev_size: tuple[int, int]
) -> torch.Tensor:
    """Direct splat with ``index_add`` over all frustum points (the test reference).

    Args:
        depth: (N, D, H, W); feat: (N, C, H, W).
        cells: (N, D, H, W) int64 from :func:`frustum_cells` (-1 = outside).
        bev_size: (X, Y).

    Returns:
        (C, Y, X).
    """
    return splat_index_add(depth, feat, splat_ranks(cells, tuple(depth.shape)), bev_size)
