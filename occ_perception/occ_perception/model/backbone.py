"""Image encoder: a ResNet (torchvision parameter names, no torchvision import) and FlashOCC's image neck.

Shapes for one frame of N cameras at the network input size (W, H):

- :class:`ResNet`: (N, 3, H, W) normalised RGB -> stage 3 (N, C3, H/16, W/16) and
  stage 4 (N, C4, H/32, W/32); R50: C3 = 1024, C4 = 2048.
- :class:`ImageNeck`: both stages -> (N, 256, H/16, W/16): lateral 1x1 convs (with
  bias), nearest x2 upsample of the coarser one, sum, one 3x3 conv (with bias).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .norm import norm2d

__all__ = ['BasicBlock', 'Bottleneck', 'ConvBias', 'ImageNeck', 'ResNet']


class BasicBlock(nn.Module):
    """3x3 - 3x3 residual block (ResNet-18/34), torchvision names ``conv1, bn1, conv2, bn2, downsample.0/1``."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, norm: str = 'batch') -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride, 1, bias=False)
        self.bn1 = norm2d(norm, planes)
        self.conv2 = nn.Conv2d(planes, out, 3, 1, 1, bias=False)
        self.bn2 = norm2d(norm, out)
        self.downsample = None
        if stride != 1 or in_ch != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out, 1, stride, bias=False), norm2d(norm, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + identity)


class Bottleneck(nn.Module):
    """1x1 - 3x3 (stride here, torchvision/'pytorch' style) - 1x1 block, expansion 4."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, norm: str = 'batch') -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = norm2d(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = norm2d(norm, planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = norm2d(norm, out)
        self.downsample = None
        if stride != 1 or in_ch != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out, 1, stride, bias=False), norm2d(norm, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + identity)


class ResNet(nn.Module):
    """ResNet without the classifier, returning stages 3 and 4.

    Args:
        blocks: residual blocks per stage, e.g. (3, 4, 6, 3) for R50.
        bottleneck: Bottleneck (R50) or BasicBlock (R18) blocks.
        width: stem / first-stage channels (64 in torchvision).
        norm: ``'batch'`` (BatchNorm, torchvision/FlashOCC) or ``'group'`` (GroupNorm); see :mod:`.norm`.

    forward: (N, 3, H, W) -> ((N, C3, H/16, W/16), (N, C4, H/32, W/32)).
    """

    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(
        self, blocks: tuple[int, int, int, int], bottleneck: bool = True, width: int = 64, norm: str = 'batch'
    ) -> None:
        super().__init__()
        block = Bottleneck if bottleneck else BasicBlock
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = norm2d(norm, width)
        in_ch = width
        for i, n in enumerate(blocks):
            planes = width * 2**i
            layers = []
            for j in range(n):
                layers.append(block(in_ch, planes, 2 if (j == 0 and i > 0) else 1, norm))
                in_ch = planes * block.expansion
            setattr(self, f'layer{i + 1}', nn.Sequential(*layers))
        self.out_channels = (width * 4 * block.expansion, width * 8 * block.expansion)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer2(self.layer1(x))
        c3 = self.layer3(x)
        return c3, self.layer4(c3)


class ConvBias(nn.Module):
    """A conv with bias under the name ``conv`` (mmcv ConvModule without norm); optional ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, relu: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, 1, kernel // 2, bias=True)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.relu(x) if self.relu else x


class ImageNeck(nn.Module):
    """FlashOCC's CustomFPN with one output at stride 16.

    forward: (N, C3, h, w), (N, C4, h/2, w/2) -> (N, out_ch, h, w).
    """

    def __init__(self, in_channels: tuple[int, int], out_ch: int) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList([ConvBias(c, out_ch, 1) for c in in_channels])
        self.fpn_convs = nn.ModuleList([ConvBias(out_ch, out_ch, 3)])

    def forward(self, c3: torch.Tensor, c4: torch.Tensor) -> torch.Tensor:
        top = F.interpolate(self.lateral_convs[1](c4), scale_factor=2.0, mode='nearest')
        return self.fpn_convs[0](self.lateral_convs[0](c3) + top)
