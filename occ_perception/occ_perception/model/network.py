"""OccNet: the exported graph, FlashOCC's structure plus a flow head and optional BEV history.

One frame of N cameras in, one voxel grid out (X, Y, Z = 200, 200, 16 for Occ3D):

==============  =======  ===========================  =============================================
input           dtype    shape                        meaning
==============  =======  ===========================  =============================================
images          uint8    (N, H, W, 3)                 RGB, already resized/cropped to the input size
splat_*         int64    see :mod:`.splat_tables`     tables from :func:`.splat_tables.build_splat_tables`
history_bev     float32  (K, C_cache, Y, X)           cached ``bev_feature`` of K earlier frames
history_theta   float32  (K, 2, 3)                    rows 0-1 of ``geometry.bev_warp_affine``
history_valid   float32  (K,)                         1 = slot filled, 0 = contributes zeros
==============  =======  ===========================  =============================================

(the history inputs exist only when ``config.history`` K > 0). C_cache is
``config.cache_channels``: the splatted BEV feature's C_bev channels, or with
``config.history_channels`` set, a learned 1x1 projection of it (``history_proj``)
to fewer channels, so that warping and fusing K slots stays cheap.

==============  =======  ===========================  =============================================
output          dtype    shape                        meaning
==============  =======  ===========================  =============================================
labels          uint8    (X, Y, Z)                    argmax over the 18 classes
confidence      uint8    (X, Y, Z)                    round(255 * max softmax probability)
flow            float32  (X, Y, Z, 2)                 (vx, vy) [m/s] in base_link axes (zeros without a flow head)
bev_feature     float32  (C_cache, Y, X)              this frame's feature for the temporal cache
==============  =======  ===========================  =============================================

Data path: normalise (FlashOCC mean/std) and HWC -> CHW; ResNet stages 3, 4; image
neck -> (N, 256, H/16, W/16); depth net Conv2d(256, D + C_bev, 1): softmax over the
first D channels, the next C_bev are context; splat -> (C_bev, Y, X); [current,
warped history (K x C_cache)...] on channels; BEV encoder + neck -> (1, C', Y, X); heads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import nn

from ..tensors import TensorSpec
from .backbone import ImageNeck, ResNet
from .bev import BevEncoder, BevNeck, HistoryWarp
from .config import ModelConfig
from .heads import HeightHead
from .splat import Splat
from .splat_tables import splat_table_names

__all__ = ['HISTORY_NAMES', 'OUTPUT_NAMES', 'NetworkInputError', 'OccNet', 'Prediction', 'ViewTransformer']

OUTPUT_NAMES: tuple[str, ...] = ('labels', 'confidence', 'flow', 'bev_feature')
HISTORY_NAMES: tuple[str, ...] = ('history_bev', 'history_theta', 'history_valid')


class NetworkInputError(TypeError):
    """OccNet got missing, unexpected or misnamed inputs for its config (splat tables, history)."""


class Prediction(NamedTuple):
    """What :meth:`OccNet.predict` returns for one frame.

    Attributes:
        logits: (X, Y, Z, num_classes) class logits indexed [x, y, z].
        flow: (X, Y, Z, 2) (vx, vy) [m/s] in base_link axes, or None without a flow head.
        bev_feature: (C_bev, Y, X) this frame's splatted BEV feature (the cache stores its :meth:`OccNet.cache_feature`).
        depth: (N, D, h, w) the depth net's probabilities over ``config.depth_bins``.
    """

    logits: torch.Tensor
    flow: torch.Tensor | None
    bev_feature: torch.Tensor
    depth: torch.Tensor


class ViewTransformer(nn.Module):
    """LSS depth net and splat (FlashOCC's ``img_view_transformer``: only ``depth_net`` holds parameters).

    forward(feat (N, in_ch, h, w), *tables) -> ((C_bev, Y, X), depth probabilities (N, D, h, w)).
    """

    def __init__(self, in_ch: int, depth_bins: int, context: int, bev_size: tuple[int, int]) -> None:
        super().__init__()
        self.depth_net = nn.Conv2d(in_ch, depth_bins + context, 1)
        self.depth_bins, self.context = int(depth_bins), int(context)
        self.splat = Splat(bev_size)

    def forward(self, feat: torch.Tensor, *tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (BEV feature (C_bev, Y, X), depth probabilities (N, D, h, w), softmax over D)."""
        x = self.depth_net(feat)
        depth = x[:, : self.depth_bins].softmax(dim=1)
        context = x[:, self.depth_bins : self.depth_bins + self.context]
        return self.splat(depth, context, *tables), depth


class OccNet(nn.Module):
    """The occupancy network for one :class:`ModelConfig`.

    Parameter names of the FlashOCC parts equal FlashOCC's checkpoint keys
    (``img_backbone``, ``img_neck``, ``img_view_transformer.depth_net``,
    ``img_bev_encoder_backbone``, ``img_bev_encoder_neck``, ``occ_head``). Additions:
    ``flow_head.*`` (if ``config.flow_head``) and, with history K > 0, the BEV
    encoder's first convs take C_bev + K * C_cache input channels (the current
    frame's first), plus ``history_proj`` when ``config.history_channels`` is set.

    Entry points:

    - :meth:`forward` (the exported graph): named inputs in, (labels, confidence, flow,
      bev_feature) out; see the module docstring for shapes.
    - :meth:`predict` (training): the differentiable part, logits and flow.
    - :meth:`encode_bev`: images and tables to the current BEV feature.
    - :meth:`tables_from`: the splat tables of a feed dict, in forward order.
    """

    image_mean: torch.Tensor
    image_std: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer('image_mean', torch.tensor(config.image_mean).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer('image_std', torch.tensor(config.image_std).reshape(1, 3, 1, 1), persistent=False)
        self.img_backbone = ResNet(config.blocks, config.bottleneck, config.backbone_width, config.norm)
        self.img_neck = ImageNeck(config.stage_channels[2:], config.neck_channels)  # type: ignore[arg-type]
        self.img_view_transformer = ViewTransformer(
            config.neck_channels, config.num_depth_bins, config.context_channels, config.bev_size
        )
        self.history_warp = HistoryWarp(config.bev_size) if config.history else None
        self.history_proj = (
            nn.Conv2d(config.context_channels, config.cache_channels, 1) if config.history_projection else None
        )
        self.img_bev_encoder_backbone = BevEncoder(
            config.bev_in_channels, config.bev_channels, config.bev_blocks, config.norm
        )
        self.img_bev_encoder_neck = BevNeck(
            config.bev_channels[0] + config.bev_channels[2], config.head_channels, config.norm
        )
        self.occ_head = HeightHead(config.head_channels, config.z_size, config.num_classes)
        self.flow_head = HeightHead(config.head_channels, config.z_size, 2) if config.flow_head else None

    def table_names(self) -> tuple[str, ...]:
        """Names of the splat table inputs, in forward order (:func:`.splat_tables.splat_table_names`)."""
        return splat_table_names()

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
                TensorSpec('history_bev', 'float32', (k, cfg.cache_channels, y_size, x_size)),
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
            TensorSpec('bev_feature', 'float32', (cfg.cache_channels, y_size, x_size)),
        )

    def tables_from(self, feeds: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The splat tables of ``feeds`` (a dict holding at least the table names), in forward order.

        Args:
            feeds: name -> int64 tensor; other entries (images, history) are ignored.

        Returns:
            ``(splat_depth_index, splat_feat_index, splat_reduce_1, splat_reduce_2, splat_cell_index)``.

        Raises:
            NetworkInputError: a table is missing.
        """
        names = self.table_names()
        missing = [n for n in names if n not in feeds]
        if missing:
            raise NetworkInputError(
                f'OccNet: splat tables {missing} missing; expected {list(names)}, got {sorted(feeds)}'
            )
        return tuple(feeds[n] for n in names)

    def encode_bev(self, images: torch.Tensor, tables: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Images and splat tables -> the current BEV feature, before the BEV encoder.

        Args:
            images: (N, H, W, 3) RGB, uint8 or float on the 0..255 scale, at ``config.image_size``.
            tables: splat table name -> int64 tensor (:func:`.splat_tables.build_splat_tables`).

        Returns:
            (C_bev, Y, X) float, x along the width.

        Raises:
            NetworkInputError: a table is missing.
        """
        return self.encode(images, tables)[0]

    def encode(self, images: torch.Tensor, tables: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode_bev` that also returns the depth net's distribution (what depth supervision trains).

        Returns:
            ``(bev_feature, depth)``: (C_bev, Y, X) and (N, D, h, w) probabilities (softmax over the D bins
            of ``config.depth_bins``; h, w = ``config.feature_size`` reversed).
        """
        x = (images.permute(0, 3, 1, 2).float() - self.image_mean) / self.image_std
        c3, c4 = self.img_backbone(x)
        return self.img_view_transformer(self.img_neck(c3, c4), *self.tables_from(tables))

    def cache_feature(self, bev_feature: torch.Tensor) -> torch.Tensor:
        """What the temporal cache holds of a frame: (C_bev, Y, X) or (K, C_bev, Y, X) splatted BEV features ->
        the same with C_cache channels (``history_proj``, or the feature itself without a projection)."""
        if self.history_proj is None:
            return bev_feature
        if bev_feature.dim() == 3:
            return self.history_proj(bev_feature.unsqueeze(0))[0]
        return self.history_proj(bev_feature)

    def decode(self, bev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """BEV encoder input (1, C_bev + K*C_cache, Y, X) -> class logits (X, Y, Z, 18) and flow (X, Y, Z, 2) or None."""
        feats = self.img_bev_encoder_backbone(bev)
        top = self.img_bev_encoder_neck(feats[0], feats[2])
        logits = self.occ_head(top)
        flow = self.flow_head(top) if self.flow_head is not None else None
        return logits, flow

    def predict(
        self,
        images: torch.Tensor,
        tables: Mapping[str, torch.Tensor],
        history_bev: torch.Tensor | None = None,
        history_theta: torch.Tensor | None = None,
        history_valid: torch.Tensor | None = None,
    ) -> Prediction:
        """The differentiable network (training entry point): images, tables and history -> logits and flow.

        Args:
            images: (N, H, W, 3) RGB, uint8 or float 0..255.
            tables: splat table name -> int64 tensor.
            history_bev: (K, C_cache, Y, X) cached features (:meth:`cache_feature` of earlier frames);
                required iff ``config.history`` K > 0.
            history_theta: (K, 2, 3) warp affines (rows 0-1 of ``geometry.bev_warp_affine``).
            history_valid: (K,) 1 = slot filled, 0 = contributes zeros.

        Returns:
            :class:`Prediction` ``(logits, flow, bev_feature, depth)``.

        Raises:
            NetworkInputError: history inputs missing for K > 0 or given for K = 0, or a table missing.
        """
        history = (history_bev, history_theta, history_valid)
        given = [name for name, v in zip(HISTORY_NAMES, history) if v is not None]
        if self.config.history and len(given) != 3:
            raise NetworkInputError(
                f'OccNet ({self.config.name}, history K={self.config.history}): needs '
                f'{list(HISTORY_NAMES)}, got only {given}'
            )
        if not self.config.history and given:
            raise NetworkInputError(f'OccNet ({self.config.name}): no history (K=0), but got {given}')
        bev_feature, depth = self.encode(images, tables)  # (C, Y, X), (N, D, h, w)
        bev = bev_feature.unsqueeze(0)
        if self.history_warp is not None:
            bev = torch.cat([bev, self.history_warp(history_bev, history_theta, history_valid)], dim=1)
        logits, flow = self.decode(bev)
        return Prediction(logits, flow, bev_feature, depth)

    def forward(
        self,
        images: torch.Tensor,
        splat_depth_index: torch.Tensor,
        splat_feat_index: torch.Tensor,
        splat_reduce_1: torch.Tensor,
        splat_reduce_2: torch.Tensor,
        splat_cell_index: torch.Tensor,
        history_bev: torch.Tensor | None = None,
        history_theta: torch.Tensor | None = None,
        history_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """The exported graph: :meth:`predict`, then softmax, argmax and the uint8 casts.

        Args:
            images: (N, H, W, 3) uint8 RGB.
            splat_*: the splat tables (:mod:`.splat_tables`).
            history_bev, history_theta, history_valid: as in :meth:`predict`, only with history K > 0.

        Returns:
            ``(labels, confidence, flow, bev_feature)``: uint8 (X, Y, Z), uint8 (X, Y, Z),
            float32 (X, Y, Z, 2) (zeros without a flow head), float32 (C_cache, Y, X), this frame's
            :meth:`cache_feature`.

        Raises:
            NetworkInputError: history inputs missing for K > 0 or given for K = 0.
        """
        tables = {
            'splat_depth_index': splat_depth_index,
            'splat_feat_index': splat_feat_index,
            'splat_reduce_1': splat_reduce_1,
            'splat_reduce_2': splat_reduce_2,
            'splat_cell_index': splat_cell_index,
        }
        logits, flow, bev_feature, _ = self.predict(images, tables, history_bev, history_theta, history_valid)
        probability, labels = logits.softmax(dim=-1).max(dim=-1)
        confidence = torch.round(probability * 255.0)
        if flow is None:
            flow = torch.zeros(logits.shape[:-1] + (2,), dtype=logits.dtype, device=logits.device)
        return labels.to(torch.uint8), confidence.to(torch.uint8), flow, self.cache_feature(bev_feature)
