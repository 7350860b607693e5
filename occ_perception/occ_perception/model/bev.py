"""BEV side: temporal alignment of cached BEV features, the BEV encoder and its neck.

Layout: BEV maps are (B, C, Y, X) with x along the width (B = 1 frame).

- :class:`HistoryWarp`: K cached maps (K, C, Y, X) warped into the current ego frame
  with an affine sampling grid computed as MatMul of a constant base grid with theta
  (no AffineGrid op), GridSample bilinear / zeros / align_corners=True, times the
  validity flags -> (1, K*C, Y, X).
- :class:`BevEncoder`: 3 stages x ``blocks`` BasicBlocks (128/256/512 for FlashOCC),
  stride 2 each, first block's downsample a 3x3 stride-2 conv WITH bias;
  (1, C_in, Y, X) -> stages (1, 128, Y/2, X/2), (1, 256, Y/4, X/4), (1, 512, Y/8, X/8).
- :class:`BevNeck`: FlashOCC's FPN_LSS: concat stage 1 with stage 3 upsampled x4
  (bilinear, align_corners=True), conv-BN-ReLU x2 at 2C', bilinear x2, conv-BN-ReLU
  to C', 1x1 conv with bias -> (1, C', Y, X).

``norm`` ('batch' as FlashOCC, or 'group'; :mod:`.norm`) picks the layer under the ``bn*`` and
``conv.{1,4}`` / ``up2.2`` names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .norm import norm2d

__all__ = ['BevBlock', 'BevEncoder', 'BevNeck', 'HistoryWarp']


class BevBlock(nn.Module):
    """BasicBlock of the BEV encoder (mmdet names); ``downsample`` is a plain conv with bias."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, norm: str = 'batch') -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = norm2d(norm, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = norm2d(norm, out_ch)
        self.downsample = (
            nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=True) if (stride != 1 or in_ch != out_ch) else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + identity)


class BevEncoder(nn.Module):
    """FlashOCC's CustomResNet BEV encoder (``layers.{stage}.{block}``).

    forward: (1, in_ch, Y, X) -> list of the 3 stage outputs.
    """

    def __init__(self, in_ch: int, channels: tuple[int, int, int], blocks: int = 2, norm: str = 'batch') -> None:
        super().__init__()
        stages = []
        for out_ch in channels:
            stage = [BevBlock(in_ch, out_ch, 2, norm)] + [BevBlock(out_ch, out_ch, 1, norm) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            in_ch = out_ch
        self.layers = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.layers:
            x = stage(x)
            feats.append(x)
        return feats


class BevNeck(nn.Module):
    """FlashOCC's FPN_LSS neck: (stage 1, stage 3) -> (1, out_ch, Y, X).

    Parameter names: ``conv.{0,1,3,4}`` and ``up2.{1,2,4}`` (ReLUs and upsamplers hold none).
    """

    def __init__(self, in_ch: int, out_ch: int, norm: str = 'batch') -> None:
        super().__init__()
        mid = out_ch * 2
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch, mid, 3, 1, 1, bias=False),
            norm2d(norm, mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, 1, 1, bias=False),
            norm2d(norm, mid),
            nn.ReLU(inplace=True),
        )
        self.up2 = nn.Sequential(
            nn.Upsample(scale_factor=2.0, mode='bilinear', align_corners=True),
            nn.Conv2d(mid, out_ch, 3, 1, 1, bias=False),
            norm2d(norm, out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 1, 1, 0, bias=True),
        )

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        high = F.interpolate(high, scale_factor=4.0, mode='bilinear', align_corners=True)
        return self.up2(self.conv(torch.cat([low, high], dim=1)))


class HistoryWarp(nn.Module):
    """Warp K cached BEV maps into the current ego frame (no parameters).

    Args:
        bev_size: (X, Y) cells.

    forward(history_bev (K, C, Y, X), history_theta (K, 2, 3), history_valid (K,)) -> (1, K*C, Y, X).
    ``history_theta`` are rows 0-1 of :func:`occ_perception.geometry.bev_warp_affine`
    (normalised coordinates, x along the width, align_corners=True); a slot with
    ``history_valid`` 0 contributes zeros.
    """

    base_grid: torch.Tensor

    def __init__(self, bev_size: tuple[int, int]) -> None:
        super().__init__()
        x_size, y_size = bev_size
        xs = torch.linspace(-1.0, 1.0, x_size)
        ys = torch.linspace(-1.0, 1.0, y_size)
        gy, gx = torch.meshgrid(ys, xs, indexing='ij')
        base = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(-1, 3)  # (Y*X, 3)
        self.register_buffer('base_grid', base, persistent=False)
        self.bev_size = (int(x_size), int(y_size))

    def forward(
        self, history_bev: torch.Tensor, history_theta: torch.Tensor, history_valid: torch.Tensor
    ) -> torch.Tensor:
        k, c = history_bev.shape[0], history_bev.shape[1]
        x_size, y_size = self.bev_size
        grid = torch.matmul(self.base_grid, history_theta.transpose(1, 2))  # (K, Y*X, 2)
        grid = grid.reshape(k, y_size, x_size, 2)
        warped = F.grid_sample(history_bev, grid, mode='bilinear', padding_mode='zeros', align_corners=True)
        warped = warped * history_valid.reshape(k, 1, 1, 1)
        return warped.reshape(1, k * c, y_size, x_size)
