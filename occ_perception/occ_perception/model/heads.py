"""Channel-to-height heads: BEV features (1, C', Y, X) -> per-voxel outputs (X, Y, Z, out).

FlashOCC's BEVOCCHead2D: conv3x3 (bias) + ReLU, permute (B, C, Y, X) -> (B, X, Y, C),
Linear(C', 2C') - Softplus - Linear(2C', Z * out), reshape (B, X, Y, Z, out): channel
index = z * out + k. The semantic head has out = 18 classes (logits); the flow head
(an addition) uses the same structure with out = 2 (vx, vy) [m/s] in ``base_link`` axes.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import ConvBias

__all__ = ['HeightHead']


class HeightHead(nn.Module):
    """Channel-to-height head (names ``final_conv.conv``, ``predicter.0``, ``predicter.2``).

    Args:
        channels: C'.
        z_size: output voxel layers Z (16).
        out: values per voxel (18 class logits, or 2 flow components).

    forward: (1, C', Y, X) -> (X, Y, Z, out).
    """

    def __init__(self, channels: int, z_size: int, out: int) -> None:
        super().__init__()
        self.final_conv = ConvBias(channels, channels, 3, relu=True)
        self.predicter = nn.Sequential(
            nn.Linear(channels, channels * 2), nn.Softplus(), nn.Linear(channels * 2, z_size * out)
        )
        self.z_size, self.out = int(z_size), int(out)

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        x = self.final_conv(bev)[0].permute(2, 1, 0)  # (X, Y, C')
        x = self.predicter(x)
        return x.reshape(x.shape[0], x.shape[1], self.z_size, self.out)
