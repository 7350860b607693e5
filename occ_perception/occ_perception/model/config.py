"""Network configurations: FlashOCC R50 M0 and M1, and ``tiny``.

A :class:`ModelConfig` is a frozen dataclass holding every number that decides
the network's structure. :data:`CONFIGS` maps the public names
(``flashocc-m0``, ``flashocc-m1``, ``tiny``) to instances; :func:`get_config`
looks one up and optionally switches the temporal history on.

Geometry (DESIGN.md section 3): the BEV grid is the x, y extent of the Occ3D
grid (``GridSpec``: [-40, 40) m, 0.4 m cells, 200 x 200) with z collapsed to a
single 6.4 m bin over [-1, 5.4) m, as in FlashOCC. The semantic head lifts the
BEV features back to ``z_size`` (16) voxel layers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..grid import NUM_CLASSES, OCC3D_GRID, GridSpec

__all__ = ['CONFIGS', 'NORMS', 'ConfigError', 'ModelConfig', 'get_config']

NORMS: tuple[str, ...] = ('batch', 'group')
"""The values of :attr:`ModelConfig.norm` (:mod:`.norm` builds the layers)."""


class ConfigError(ValueError):
    """A model configuration is inconsistent or unknown."""


@dataclass(frozen=True)
class ModelConfig:
    """Every structural number of :class:`~occ_perception.model.network.OccNet`.

    Attributes:
        name: config name.
        image_size: network input (width, height) [px]; images arrive already resized/cropped.
        backbone_depth: ResNet depth: 50 (bottleneck blocks, 3-4-6-3) or 18 (basic blocks, 2-2-2-2).
        backbone_blocks: blocks per stage, overriding the depth's default (None = default).
        backbone_width: channels of the stem / first stage (64 for torchvision's ResNet).
        feature_stride: image feature stride (16; stages 3 and 4 have strides 16 and 32).
        neck_channels: image neck output channels (256 for FlashOCC).
        depth_min, depth_max, depth_step: depth bins ``arange(depth_min, depth_max, depth_step)`` [m]
            (FlashOCC: 1, 45, 1.0 for M0 = 44 bins; 0.5 for M1 = 88 bins).
        context_channels: context channels splatted into the BEV (C_bev, 64).
        grid: the voxel grid of the output; its x, y extent and cell size are the BEV grid.
        bev_z_range: (z_min, z_max) [m] of the single BEV height bin.
        truncate_bins: bin frustum points as FlashOCC does (``(p - lower) / cell`` cast to int,
            i.e. truncated toward zero, then kept where the index is inside the grid); this keeps
            points up to one cell below the lower bounds. False bins with floor (strict bounds).
        bev_channels: BEV encoder stage widths (128, 256, 512).
        bev_blocks: BasicBlocks per BEV encoder stage (2).
        head_channels: C' of the BEV neck and head (128 M0, 256 M1).
        num_classes: semantic classes incl. free (18).
        flow_head: add the flow head (``flow_head.*``, an addition to FlashOCC).
        history: K cached BEV features concatenated before the BEV encoder (0 = single frame).
        history_offsets: the trained time offsets of the K history slots [s] before the current frame.
        history_channels: channels of the feature the temporal cache holds (the graph's ``bev_feature``
            output and ``history_bev`` input): None keeps the whole splatted BEV feature (``context_channels``,
            FlashOCC's BEVDet4D-style fusion); a smaller number adds a learned 1x1 projection
            (``history_proj``) of the splatted feature, so warping and fusing K slots costs
            ``history_channels / context_channels`` of the full width.
        image_mean, image_std: RGB normalisation (0-255 scale).
        norm: normalisation layer of the image backbone, BEV encoder and BEV neck (:mod:`.norm`):
            ``'batch'`` (BatchNorm, FlashOCC's, needed to import FlashOCC checkpoints) or ``'group'``
            (GroupNorm: per-sample statistics, so train and eval mode compute the same; for configs
            trained from scratch at one frame per forward).
    """

    name: str
    image_size: tuple[int, int] = (704, 256)
    backbone_depth: int = 50
    backbone_blocks: tuple[int, int, int, int] | None = None
    backbone_width: int = 64
    feature_stride: int = 16
    neck_channels: int = 256
    depth_min: float = 1.0
    depth_max: float = 45.0
    depth_step: float = 1.0
    context_channels: int = 64
    grid: GridSpec = OCC3D_GRID
    bev_z_range: tuple[float, float] = (-1.0, 5.4)
    truncate_bins: bool = True
    bev_channels: tuple[int, int, int] = (128, 256, 512)
    bev_blocks: int = 2
    head_channels: int = 128
    num_classes: int = NUM_CLASSES
    flow_head: bool = True
    history: int = 0
    history_offsets: tuple[float, ...] = ()
    history_channels: int | None = None
    image_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    image_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    norm: str = 'batch'

    def __post_init__(self) -> None:
        w, h = self.image_size
        if w % 32 or h % 32 or w <= 0 or h <= 0:
            raise ConfigError(f'{self.name}: image_size must be positive multiples of 32, got {self.image_size}')
        if self.feature_stride != 16:
            raise ConfigError(
                f'{self.name}: feature_stride must be 16 (stage 3 of the ResNet), got {self.feature_stride}'
            )
        if self.backbone_depth not in (18, 50):
            raise ConfigError(f'{self.name}: backbone_depth must be 18 or 50, got {self.backbone_depth}')
        if self.num_depth_bins <= 0:
            raise ConfigError(
                f'{self.name}: no depth bins in [{self.depth_min}, {self.depth_max}) step {self.depth_step}'
            )
        if self.history < 0 or len(self.history_offsets) != self.history:
            raise ConfigError(
                f'{self.name}: history_offsets needs one offset per history slot, got history={self.history}, '
                f'offsets={self.history_offsets}'
            )
        if self.history_channels is not None and not 0 < self.history_channels <= self.context_channels:
            raise ConfigError(
                f'{self.name}: history_channels must be in [1, context_channels={self.context_channels}] or None, '
                f'got {self.history_channels}'
            )
        if self.bev_z_range[1] <= self.bev_z_range[0]:
            raise ConfigError(f'{self.name}: bev_z_range must be increasing, got {self.bev_z_range}')
        if self.norm not in NORMS:
            raise ConfigError(f'{self.name}: norm must be one of {NORMS}, got {self.norm!r}')
        if len(self.bev_channels) != 3:
            raise ConfigError(f'{self.name}: bev_channels needs 3 stage widths, got {self.bev_channels}')

    @property
    def blocks(self) -> tuple[int, int, int, int]:
        """Residual blocks per ResNet stage."""
        if self.backbone_blocks is not None:
            return tuple(self.backbone_blocks)  # type: ignore[return-value]
        return (3, 4, 6, 3) if self.backbone_depth == 50 else (2, 2, 2, 2)

    @property
    def bottleneck(self) -> bool:
        """Bottleneck (R50) or basic (R18) residual blocks."""
        return self.backbone_depth == 50

    @property
    def stage_channels(self) -> tuple[int, int, int, int]:
        """Output channels of the four ResNet stages (R50: 256, 512, 1024, 2048)."""
        expansion = 4 if self.bottleneck else 1
        return tuple(self.backbone_width * (2**i) * expansion for i in range(4))  # type: ignore[return-value]

    @property
    def depth_bins(self) -> np.ndarray:
        """Depth bin values [m], shape (D,) float64: ``arange(depth_min, depth_max, depth_step)``."""
        return np.arange(self.depth_min, self.depth_max, self.depth_step, dtype=np.float64)

    @property
    def num_depth_bins(self) -> int:
        return int(len(self.depth_bins))

    @property
    def feature_size(self) -> tuple[int, int]:
        """Image feature map (width, height) at the feature stride."""
        return (self.image_size[0] // self.feature_stride, self.image_size[1] // self.feature_stride)

    @property
    def bev_size(self) -> tuple[int, int]:
        """BEV map (X, Y) cells; the map is laid out (C, Y, X)."""
        return (self.grid.shape[0], self.grid.shape[1])

    @property
    def z_size(self) -> int:
        return self.grid.shape[2]

    @property
    def cache_channels(self) -> int:
        """C_cache: channels of the cached feature (``bev_feature``, ``history_bev``); ``history_channels`` when
        set and K > 0, else ``context_channels``."""
        if self.history and self.history_channels is not None:
            return self.history_channels
        return self.context_channels

    @property
    def history_projection(self) -> bool:
        """Whether the network holds ``history_proj`` (K > 0 and ``cache_channels < context_channels``)."""
        return self.cache_channels != self.context_channels

    @property
    def bev_in_channels(self) -> int:
        """Input channels of the BEV encoder: C_bev + K * C_cache."""
        return self.context_channels + self.history * self.cache_channels


_M0 = ModelConfig(name='flashocc-m0', depth_step=1.0, head_channels=128)
_M1 = ModelConfig(name='flashocc-m1', depth_step=0.5, head_channels=256)
_TINY = ModelConfig(
    name='tiny',
    image_size=(352, 128),
    backbone_depth=18,
    backbone_blocks=(1, 1, 1, 1),
    backbone_width=16,
    neck_channels=64,
    depth_step=2.0,
    context_channels=32,
    bev_channels=(32, 64, 128),
    head_channels=16,
    history_channels=8,
    norm='group',
)

CONFIGS: dict[str, ModelConfig] = {c.name: c for c in (_M0, _M1, _TINY)}


def get_config(
    name: str,
    history: int | None = None,
    history_offsets: tuple[float, ...] | None = None,
    flow_head: bool | None = None,
) -> ModelConfig:
    """The named config, optionally with K history slots and/or without the flow head.

    Args:
        name: one of :data:`CONFIGS`.
        history: K; None keeps the config's own.
        history_offsets: trained offsets [s]; default 0.5 s apart (0.5, 1.0, ...).
        flow_head: None keeps the config's own.

    Raises:
        ConfigError: unknown name or an inconsistent history.
    """
    if name not in CONFIGS:
        raise ConfigError(f'unknown model config {name!r}; known: {sorted(CONFIGS)}')
    cfg = CONFIGS[name]
    changes: dict = {}
    if history is not None:
        if history < 0:
            raise ConfigError(f'history must be >= 0, got {history}')
        offsets = history_offsets if history_offsets is not None else tuple(0.5 * (i + 1) for i in range(history))
        changes.update(history=int(history), history_offsets=tuple(float(o) for o in offsets))
    if flow_head is not None:
        changes['flow_head'] = bool(flow_head)
    return replace(cfg, **changes) if changes else cfg
