"""The view transform's splat in the graph: :class:`Splat` runs the host-built tables.

The tables and their layout are described in :mod:`.splat_tables` (numpy only). Here
the sum is a short chain of Gather / Mul / ReduceSum ops, all native in the TensorRT 10
ONNX parser and fp16-safe (no scatter with a reduction, no cumulative sum).

Layout: the BEV map is (C, Y, X) with x along the width; cell (ix, iy) has flat index
``iy * X + ix``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ['Splat']


class Splat(nn.Module):
    """Table-driven splat (ONNX: Concat, Gather, Unsqueeze, Mul, ReduceSum, Transpose, Reshape).

    forward(depth, feat, depth_index, feat_index, *reduce, cell_index):

    Args:
        depth: (N, D, H, W) depth probabilities.
        feat: (N, C, H, W) context features.
        depth_index, feat_index: (R0, L0) int64.
        reduce: the ``splat_reduce_k`` tables (R_k, L_k) int64, k = 1, 2, ...
        cell_index: (Y*X,) int64.

    Returns:
        (C, Y, X) BEV feature.
    """

    def __init__(self, bev_size: tuple[int, int]) -> None:
        super().__init__()
        self.bev_size = (int(bev_size[0]), int(bev_size[1]))

    def forward(
        self,
        depth: torch.Tensor,
        feat: torch.Tensor,
        depth_index: torch.Tensor,
        feat_index: torch.Tensor,
        *tables: torch.Tensor,
    ) -> torch.Tensor:
        reduce, cell_index = tables[:-1], tables[-1]
        c = feat.shape[1]
        depth_flat = torch.cat([depth.reshape(-1), depth.new_zeros(1)])  # (N*D*H*W + 1,)
        feat_rows = feat.permute(0, 2, 3, 1).reshape(-1, c)  # (N*H*W, C)
        # index_select on flattened indices exports as a plain Gather with either torch exporter
        d = depth_flat.index_select(0, depth_index.reshape(-1)).reshape(depth_index.shape[0], -1, 1)  # (R0, L0, 1)
        f = feat_rows.index_select(0, feat_index.reshape(-1)).reshape(feat_index.shape[0], -1, c)  # (R0, L0, C)
        rows = (d * f).sum(1)  # (R0, C)
        zero = feat.new_zeros(1, c)
        levels = [rows]
        for table in reduce:
            rows = torch.cat([rows, zero]).index_select(0, table.reshape(-1)).reshape(table.shape[0], -1, c).sum(1)
            levels.append(rows)  # (R_k, C)
        dense = torch.cat(levels + [zero]).index_select(0, cell_index)  # (Y*X, C)
        x_size, y_size = self.bev_size
        return dense.t().reshape(c, y_size, x_size)
