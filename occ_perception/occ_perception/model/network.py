"""OccNet: the exported graph, FlashOCC's structure plus a flow head and optional BEV history.

One frame of N cameras in, one voxel grid out (X, Y, Z = 200, 200, 16 for Occ3D):

==============  =======  ===========================  =============================================
input           dtype    shape                        meaning
==============  =======  ===========================  =============================================
images          uint8    (N, H, W, 3)                 RGB, already resized/cropped to the input size
splat_*         int64    see :mod:`.splat`            tables from :func:`build_splat_tables`
history_bev     float32  (K, C_bev, Y, X)             cached ``bev_feature`` of K earlier frames
history_theta   float32  (K, 2, 3)                    rows 0-1 of ``geometry.bev_warp_affine``
history_valid   float32  (K,)                         1 = slot filled, 0 = contributes zeros
==============  =======  ===========================  =============================================

(the history inputs exist only when ``config.history`` K > 0).

==============  =======  ===========================  =============================================
output          dtype    shape                        meaning
==============  =======  ===========================  =============================================
labels          uint8    (X, Y, Z)                    argmax over the 18 classes
confidence      uint8    (X, Y, Z)                    round(255 * max softmax probability)
flow            float32  (X, Y, Z, 2)                 (vx, vy) [m/s] in base_link axes (zeros without a flow head)
bev_feature     float32  (C_bev, Y, X)                this frame's splatted BEV feature (before the encoder)
==============  =======  ===========================  =============================================

Data path: normalise (FlashOCC mean/std) and HWC -> CHW; ResNet stages 3, 4; image
neck -> (N, 256, H/16, W/16); depth net Conv2d(256, D + C_bev, 1): softmax over the
first D channels, the next C_bev are context; splat -> (C_bev, Y, X); [current,
warped history...] on channels; BEV encoder + neck -> (1, C', Y, X); heads.
"""

from __future__ import annotations

import torch
from torch import nn

from ..runtime.base import TensorSpec
from .backbone import ImageNeck, ResNet
from .bev import BevEncoder, BevNeck, HistoryWarp
from .config import ModelConfig
from .heads import HeightHead
from .splat import SPLAT_CHUNKS, Splat, splat_table_names

__all__ = ['OUTPUT_NAMES', 'NetworkInputError', 'OccNet', 'ViewTransformer']

OUTPUT_NAMES: tuple[str, ...] = ('labels', 'confidence', 'flow', 'bev_feature')


class NetworkInputError(TypeError):
    """OccNet.forward got the wrong number of input tensors for its config."""


class ViewTransformer(nn.Module):
    """LSS depth net and splat (FlashOCC's ``img_view_transformer``: only ``depth_net`` holds parameters).

    forward(feat (N, in_ch, h, w), *tables) -> (C_bev, Y, X).
    """

    def __init__(self, in_ch: int, depth_bins: int, context: int, bev_size: tuple[int, int], levels: int) -> None:
        super().__init__()
        self.depth_net = nn.Conv2d(in_ch, depth_bins + context, 1)
        self.depth_bins, self.context = int(depth_bins), int(context)
        self.splat = Splat(bev_size, levels)

    def forward(self, feat: torch.Tensor, *tables: torch.Tensor) -> torch.Tensor:
        x = self.depth_net(feat)
        depth = x[:, : self.depth_bins].softmax(dim=1)
        context = x[:, self.depth_bins : self.depth_bins + self.context]
        return self.splat(depth, context, *tables)


class OccNet(nn.Module):
    """The occupancy network for one :class:`ModelConfig`.

    Parameter names of the FlashOCC parts equal FlashOCC's checkpoint keys
    (``img_backbone``, ``img_neck``, ``img_view_transformer.depth_net``,
    ``img_bev_encoder_backbone``, ``img_bev_encoder_neck``, ``occ_head``). Additions:
    ``flow_head.*`` (if ``config.flow_head``) and, with history K > 0, the BEV
    encoder's first convs take C_bev * (K + 1) input channels.

    forward(images, *splat_tables, [history_bev, history_theta, history_valid]) ->
    (labels, confidence, flow, bev_feature); see the module docstring for shapes.

    Raises:
        NetworkInputError: from forward, when the number of inputs does not fit the config.
    """

    def __init__(self, config: ModelConfig, splat_levels: int = len(SPLAT_CHUNKS)) -> None:
        super().__init__()
        self.config = config
        self.splat_levels = int(splat_levels)
        self.register_buffer('image_mean', torch.tensor(config.image_mean).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer('image_std', torch.tensor(config.image_std).reshape(1, 3, 1, 1), persistent=False)
        self.img_backbone = ResNet(config.blocks, config.bottleneck, config.backbone_width)
        self.img_neck = ImageNeck(config.stage_channels[2:], config.neck_channels)  # type: ignore[arg-type]
        self.img_view_transformer = ViewTransformer(
            config.neck_channels, config.num_depth_bins, config.context_channels, config.bev_size, self.splat_levels
        )
        self.history_warp = HistoryWarp(config.bev_size) if config.history else None
        self.img_bev_encoder_backbone = BevEncoder(config.bev_in_channels, config.bev_channels, config.bev_blocks)
        self.img_bev_encoder_neck = BevNeck(config.bev_channels[0] + config.bev_channels[2], config.head_channels)
        self.occ_head = HeightHead(config.head_channels, config.z_size, config.num_classes)
        self.flow_head = HeightHead(config.head_channels, config.z_size, 2) if config.flow_head else None

    def table_names(self) -> tuple[str, ...]:
        """Names of the splat table inputs, in forward order."""
        return splat_table_names(self.splat_levels)

    def input_specs(self) -> tuple[TensorSpec, ...]:
        """Graph inputs in forward order (None = dynamic: camera count and table lengths)."""
        cfg = self.config
        w, h = cfg.image_size
        x_size, y_size = cfg.bev_size
        specs = [TensorSpec('images', 'uint8', (None, h, w, 3))]
        for name in self.table_names():
            shape: tuple[int | None, ...] = (x_size * y_size,) if name == 'splat_cell_index' else (None, None)
            specs.append(TensorSpec(name, 'int64', shape))
        if cfg.history:
            k = cfg.history
            specs += [
                TensorSpec('history_bev', 'float32', (k, cfg.context_channels, y_size, x_size)),
                TensorSpec('history_theta', 'float32', (k, 2, 3)),
                TensorSpec('history_valid', 'float32', (k,)),
            ]
        return tuple(specs)

    def output_names(self) -> tuple[str, ...]:
        return OUTPUT_NAMES

    def output_specs(self) -> tuple[TensorSpec, ...]:
        cfg = self.config
        x_size, y_size = cfg.bev_size
        z = cfg.z_size
        return (
            TensorSpec('labels', 'uint8', (x_size, y_size, z)),
            TensorSpec('confidence', 'uint8', (x_size, y_size, z)),
            TensorSpec('flow', 'float32', (x_size, y_size, z, 2)),
            TensorSpec('bev_feature', 'float32', (cfg.context_channels, y_size, x_size)),
        )

    def encode_bev(self, images: torch.Tensor, *tables: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) images and splat tables -> the current BEV feature (C_bev, Y, X)."""
        x = (images.permute(0, 3, 1, 2).float() - self.image_mean) / self.image_std
        c3, c4 = self.img_backbone(x)
        return self.img_view_transformer(self.img_neck(c3, c4), *tables)

    def decode(self, bev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """BEV encoder input (1, C_bev*(K+1), Y, X) -> class logits (X, Y, Z, 18) and flow (X, Y, Z, 2) or None."""
        feats = self.img_bev_encoder_backbone(bev)
        top = self.img_bev_encoder_neck(feats[0], feats[2])
        logits = self.occ_head(top)
        flow = self.flow_head(top) if self.flow_head is not None else None
        return logits, flow

    def forward(self, images: torch.Tensor, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n_tables = len(self.table_names())
        tables, history = args[:n_tables], args[n_tables:]
        if len(tables) != n_tables or len(history) != (3 if self.config.history else 0):
            raise NetworkInputError(f'OccNet.forward: expected inputs {[s.name for s in self.input_specs()]}, '
                            f'got {1 + len(args)} tensors')
        bev_feature = self.encode_bev(images, *tables)  # (C, Y, X)
        bev = bev_feature.unsqueeze(0)
        if self.history_warp is not None:
            bev = torch.cat([bev, self.history_warp(*history)], dim=1)
        logits, flow = self.decode(bev)
        probability, labels = logits.softmax(dim=-1).max(dim=-1)
        confidence = torch.round(probability * 255.0)
        if flow is None:
            flow = torch.zeros(logits.shape[:-1] + (2,), dtype=logits.dtype, device=logits.device)
        return labels.to(torch.uint8), confidence.to(torch.uint8), flow, bev_feature
