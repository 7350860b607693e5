"""Training: losses and the loop, single process or ``torchrun --nproc_per_node N`` (DistributedDataParallel).

The network takes one frame (N cameras) per forward, so a batch of B samples is B
forwards; each sample's loss is divided by the global batch and back-propagated at
once (gradient accumulation, DDP synchronises on the last sample). With P processes
of B samples each, a step therefore equals one single-process step of P * B samples.

Losses (per sample):

- semantics: FlashOCC's cross-entropy, per-voxel weight = the visibility mask
  (``mask_camera`` by default, ``mask_lidar`` or none), summed and divided by the
  mask's sum; label 255 is ignored; optional per-class weights.
- flow: L1 of (vx, vy) [m/s] on the voxels that are occupied (label not free, not
  255) and inside the same mask, divided by their count.

Outputs in ``out_dir``: ``last.pt`` (training state for ``--resume``), ``model.pt``
(our model checkpoint, :func:`occ_perception.model.checkpoint.save_checkpoint`;
EMA weights when EMA is on), ``log.jsonl`` (losses, learning rate, throughput,
validation mIoU) and ``loss.png``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.occ3d import Augmentation, Occ3DDataset, TrainSample
from .grid import FREE_LABEL, NUM_CLASSES, UNOBSERVED_LABEL
from .model.checkpoint import save_checkpoint
from .model.config import ModelConfig, get_config
from .model.flashocc import HISTORY_INPUT_KEYS, copy_current_frame_channels
from .model.network import OccNet

__all__ = [
    'STATE_FORMAT',
    'TrainConfig',
    'TrainError',
    'TrainResult',
    'class_weights_from_counts',
    'depth_loss',
    'flow_loss',
    'label_counts',
    'learning_rate',
    'network_outputs',
    'semantic_loss',
    'train',
]

STATE_FORMAT = 'occ_perception.train/1'
MASKS = ('camera', 'lidar', 'none')


class TrainError(ValueError):
    """A training option, dataset or checkpoint does not fit."""


@dataclass(frozen=True)
class TrainConfig:
    """Every training option.

    Attributes:
        model: model config name (``tiny``, ``flashocc-m0``, ``flashocc-m1``).
        history: K history slots (trained offsets 0.5 s apart unless ``history_offsets``).
        history_offsets: trained offsets [s], one per slot (None = 0.5, 1.0, ...).
        steps: optimiser steps.
        batch_size: samples per process per step (global batch = batch_size * processes).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up from lr / warmup_steps to lr.
        min_lr_ratio: the cosine decay ends at lr * min_lr_ratio.
        grad_clip: max gradient norm (0 = no clipping).
        ema_decay: exponential moving average of the weights (0 = off); the EMA weights are saved and validated.
        amp: mixed precision (float16 autocast and a gradient scaler) on CUDA; ignored on CPU.
        semantic_weight, flow_weight, depth_weight: loss weights (depth: :func:`depth_loss` on targets cast
            from the labels, :mod:`occ_perception.data.depth_targets`; 0 = off).
        mask: the per-voxel loss weight: ``camera`` (mask_camera), ``lidar`` (mask_lidar) or ``none``.
        class_weights: per-class CE weights (18 values) or None.
        augmentation: random training augmentation.
        seed: seed of the initial weights, the data order and the augmentation.
        shuffle: shuffle the data order each epoch.
        workers: DataLoader worker processes per training process (0 = load in the loop).
        val_every: validation every N steps (0 = only at the end when a validation set is given).
        val_samples: validate on the first N samples (0 = all).
        checkpoint_every: write ``last.pt`` and ``model.pt`` every N steps (0 = only at the end).
        log_every: write a JSONL record every N steps.
        use_sweeps: camera sweeps as history candidates too.
        freeze_bn_step: from this step on, BatchNorm layers normalise with (and keep) their running
            statistics, so training adapts to what evaluation computes (None = never; 0 suits fine-tuning
            a trained network). The network sees one frame per forward, so BatchNorm in training uses one
            sample's statistics; on tiny data sets these differ from the running averages used at run time.
            No effect on configs with GroupNorm (``ModelConfig.norm == 'group'``, e.g. ``tiny``).
    """

    model: str = 'tiny'
    history: int = 2
    history_offsets: tuple[float, ...] | None = None
    steps: int = 1000
    batch_size: int = 1
    lr: float = 2e-4
    weight_decay: float = 1e-2
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01
    grad_clip: float = 5.0
    ema_decay: float = 0.0
    amp: bool = True
    semantic_weight: float = 1.0
    flow_weight: float = 0.1
    depth_weight: float = 0.1
    mask: str = 'camera'
    class_weights: tuple[float, ...] | None = None
    augmentation: Augmentation = field(default_factory=Augmentation)
    seed: int = 0
    shuffle: bool = True
    workers: int = 0
    val_every: int = 0
    val_samples: int = 0
    checkpoint_every: int = 0
    log_every: int = 10
    use_sweeps: bool = False
    freeze_bn_step: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise TrainError(f'TrainConfig: steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}')
        if self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise TrainError(
                f'TrainConfig: need lr > 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1; got {self.lr}, '
                f'{self.warmup_steps}, {self.min_lr_ratio}'
            )
        if not 0 <= self.ema_decay < 1:
            raise TrainError(f'TrainConfig.ema_decay: expected [0, 1), got {self.ema_decay}')
        if self.mask not in MASKS:
            raise TrainError(f'TrainConfig.mask: expected one of {MASKS}, got {self.mask!r}')
        if self.class_weights is not None and len(self.class_weights) != NUM_CLASSES:
            raise TrainError(f'TrainConfig.class_weights: expected {NUM_CLASSES} values, got {len(self.class_weights)}')
        if self.log_every < 1:
            raise TrainError(f'TrainConfig.log_every: expected >= 1, got {self.log_every}')

    def model_config(self) -> ModelConfig:
        return get_config(self.model, history=self.history, history_offsets=self.history_offsets)


@dataclass
class TrainResult:
    """What a run did (rank 0's view).

    Attributes:
        steps: the last step done.
        samples_per_second: global training throughput over the run (first step excluded).
        last_loss: the last step's total loss.
        val_miou: the last validation mIoU, or None.
        model_path: the written model checkpoint.
    """

    steps: int
    samples_per_second: float
    last_loss: float
    val_miou: float | None
    model_path: Path | None


# -- losses -------------------------------------------------------------------------------------------------------


def semantic_loss(
    logits: torch.Tensor,
    semantics: torch.Tensor,
    weight: torch.Tensor | None,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """FlashOCC's occupancy cross-entropy.

    Args:
        logits: (X, Y, Z, C) class logits.
        semantics: (X, Y, Z) integer labels; 255 = ignored.
        weight: (X, Y, Z) per-voxel weight (mask_camera or mask_lidar, 0/1), or None for all ones.
        class_weights: (C,) per-class weights, or None.

    Returns:
        scalar: sum(weight * class_weight[label] * CE) / max(sum(weight), 1), over voxels whose label is not 255.
    """
    target = semantics.long()
    valid = target != UNOBSERVED_LABEL
    w = valid.float() if weight is None else weight.float() * valid.float()
    ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        torch.where(valid, target, 0).reshape(-1),
        weight=class_weights,
        reduction='none',
    )
    return (ce * w.reshape(-1)).sum() / w.sum().clamp(min=1.0)


def flow_loss(
    flow: torch.Tensor, flow_gt: torch.Tensor, semantics: torch.Tensor, weight: torch.Tensor | None
) -> torch.Tensor:
    """L1 flow loss on occupied voxels.

    Args:
        flow: (X, Y, Z, 2) predicted (vx, vy) [m/s].
        flow_gt: (X, Y, Z, 2) ground truth [m/s].
        semantics: (X, Y, Z) labels; voxels labelled free (17) or 255 are left out.
        weight: (X, Y, Z) mask (0/1) or None.

    Returns:
        scalar: sum over those voxels of |dvx| + |dvy|, divided by their (weighted) count (at least 1).
    """
    occupied = (semantics.long() != FREE_LABEL) & (semantics.long() != UNOBSERVED_LABEL)
    w = occupied.float() if weight is None else weight.float() * occupied.float()
    l1 = (flow.float() - flow_gt.float()).abs().sum(dim=-1)
    return (l1 * w).sum() / w.sum().clamp(min=1.0)


def depth_loss(depth: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the target depth bin under the depth net's distribution.

    Args:
        depth: (N, D, h, w) probabilities (softmax over D).
        target: (N, h, w) integer bin index, -1 where a pixel has no target.

    Returns:
        scalar: mean over pixels with a target of ``-log(depth[target])`` (0 when no pixel has one).
    """
    valid = target >= 0
    if not bool(valid.any()):
        return depth.sum() * 0.0
    p = depth.float().permute(0, 2, 3, 1)[valid]  # (M, D)
    picked = p.gather(1, target[valid].long().unsqueeze(1)).squeeze(1)
    return -torch.log(picked.clamp(min=1e-6)).mean()


def class_weights_from_counts(counts: np.ndarray, power: float = 0.5, max_weight: float = 10.0) -> tuple[float, ...]:
    """Per-class weights ``(median / count) ** power``, clipped to [1/max_weight, max_weight]; unseen classes get 1.

    Args:
        counts: (C,) voxel counts per class in the training labels (inside the loss mask).
    """
    counts = np.asarray(counts, dtype=np.float64)
    seen = counts > 0
    if not seen.any():
        return tuple(1.0 for _ in counts)
    med = float(np.median(counts[seen]))
    w = np.ones_like(counts)
    w[seen] = np.clip((med / counts[seen]) ** power, 1.0 / max_weight, max_weight)
    return tuple(float(v) for v in w)


def label_counts(dataset: Occ3DDataset, mask: str = 'camera') -> np.ndarray:
    """(18,) int64 voxel count per class over every labelled keyframe of ``dataset`` (inside ``mask``; 255 left out)."""
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    for si, fi in dataset.items:
        labels = dataset.load_labels(dataset.frames[si][fi])
        sem = labels['semantics']
        keep = sem != UNOBSERVED_LABEL
        if mask != 'none':
            keep &= labels[f'mask_{mask}'] > 0
        counts += np.bincount(sem[keep].ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
    return counts


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Learning rate of (0-based) ``step``: linear warm-up over ``warmup_steps``, then cosine to lr * min_lr_ratio."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    low = cfg.lr * cfg.min_lr_ratio
    return low + 0.5 * (cfg.lr - low) * (1.0 + math.cos(math.pi * progress))


# -- the network calls (the one place that knows OccNet's training API) --------------------------------------------


def _encode(net: OccNet, images: torch.Tensor, tables: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """One frame's BEV feature (C_bev, Y, X)."""
    return net.encode_bev(images, tables)


def network_outputs(
    net: OccNet,
    images: torch.Tensor,
    tables: Mapping[str, torch.Tensor],
    history_bev: torch.Tensor | None = None,
    history_theta: torch.Tensor | None = None,
    history_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Class logits (X, Y, Z, 18), flow (X, Y, Z, 2) or None, and the depth distribution (N, D, h, w) for one
    frame (uint8 images (N, H, W, 3)). ``history_bev`` (K, C_bev, Y, X) are the history frames' splatted BEV
    features (:func:`_history_bev`); their cached form (``OccNet.cache_feature``, which trains here) is taken
    inside this call, so that the projection is part of the forward that DDP wraps."""
    if not net.config.history:
        history_bev = history_theta = history_valid = None
    elif history_bev is not None:
        history_bev = net.cache_feature(history_bev)
    logits, flow, _, depth = net.predict(images, tables, history_bev, history_theta, history_valid)
    return logits, flow, depth


class _Step(nn.Module):
    """The module DDP wraps: its forward is one sample's prediction."""

    def __init__(self, net: OccNet) -> None:
        super().__init__()
        self.net = net

    def forward(
        self,
        images: torch.Tensor,
        tables: dict[str, torch.Tensor],
        history_bev: torch.Tensor | None,
        history_theta: torch.Tensor | None,
        history_valid: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        return network_outputs(self.net, images, tables, history_bev, history_theta, history_valid)


def _history_bev(
    net: OccNet, sample: TrainSample, tables: Mapping[str, torch.Tensor], device: torch.device
) -> torch.Tensor | None:
    """(K, C_bev, Y, X): the network's own splatted BEV features of the history frames (no gradient; zeros in
    empty slots); :func:`network_outputs` takes their cached form.

    The frames are encoded as the run-time cache holds them: with the BatchNorm layers in eval mode (running
    statistics, which these forwards leave unchanged), also while ``net`` trains. In train mode each history
    frame would otherwise be normalised with its own batch statistics, a feature the cache never holds.
    """
    cfg = net.config
    k = cfg.history
    if not k:
        return None
    x_size, y_size = cfg.bev_size
    out = torch.zeros((k, cfg.context_channels, y_size, x_size), device=device)
    training_bn = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for module in training_bn:
        module.eval()
    try:
        with torch.no_grad():
            for slot in range(k):
                if sample.history_valid[slot] > 0:
                    out[slot] = _encode(net, torch.from_numpy(sample.history_images[slot]).to(device), tables).float()
    finally:
        for module in training_bn:
            module.train()
    return out


def _sample_tensors(sample: TrainSample, device: torch.device) -> dict[str, Any]:
    t = {
        'images': torch.from_numpy(sample.images).to(device),
        'tables': {k: torch.from_numpy(v).to(device) for k, v in sample.tables.items()},
        'semantics': torch.from_numpy(sample.semantics).to(device),
        'mask_camera': torch.from_numpy(sample.mask_camera).to(device),
        'mask_lidar': torch.from_numpy(sample.mask_lidar).to(device),
        'flow': None if sample.flow is None else torch.from_numpy(sample.flow).to(device),
        'history_theta': torch.from_numpy(sample.history_theta).to(device),
        'history_valid': torch.from_numpy(sample.history_valid).to(device),
        'depth_target': torch.from_numpy(sample.depth_target).to(device),
    }
    return t


def _loss_mask(t: Mapping[str, Any], mask: str) -> torch.Tensor | None:
    return {'camera': t['mask_camera'], 'lidar': t['mask_lidar'], 'none': None}[mask]


# -- distributed helpers --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dist:
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed() -> _Dist:
    """Join the torchrun process group (WORLD_SIZE > 1): nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1:
        return _Dist(0, 1, 0)
    import torch.distributed as dist

    local = int(os.environ.get('LOCAL_RANK', '0'))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        backend = 'nccl'
    else:
        backend = 'gloo'
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return _Dist(dist.get_rank(), dist.get_world_size(), local)


def _barrier(d: _Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


class _Items(torch.utils.data.Dataset):
    """Dataset indices -> TrainSample; augmentation seeded by (seed, epoch, index) so every run draws the same."""

    def __init__(self, dataset: Occ3DDataset, seed: int, augment: bool) -> None:
        self.dataset, self.seed, self.augment, self.epoch = dataset, int(seed), bool(augment), 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> TrainSample:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)]) if self.augment else None
        return self.dataset.get(int(index), rng)


def _batches(items: _Items, cfg: TrainConfig, d: _Dist, start_step: int) -> Iterator[list[TrainSample]]:
    """Endless per-rank batches in a deterministic order (DistributedSampler, reshuffled each epoch).

    Step ``s`` always gets the same samples, so a resumed run continues where the first one stopped
    (without loading the batches it skips).
    """
    from torch.utils.data import DataLoader, DistributedSampler

    sampler: DistributedSampler = DistributedSampler(
        items, num_replicas=d.world, rank=d.rank, shuffle=cfg.shuffle, seed=cfg.seed, drop_last=False
    )
    per_epoch = max(len(sampler) // cfg.batch_size, 1)
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        sampler.set_epoch(epoch)
        items.epoch = epoch
        order = list(sampler)
        chunks = [order[i * cfg.batch_size : (i + 1) * cfg.batch_size] for i in range(per_epoch)][skip:]
        skip = 0
        loader = DataLoader(items, batch_sampler=chunks, num_workers=cfg.workers, collate_fn=list)
        yield from loader
        epoch += 1


# -- checkpoints ----------------------------------------------------------------------------------------------------


def _load_init(net: OccNet, path: str | os.PathLike[str]) -> tuple[int, list[str]]:
    """Copy every tensor of our checkpoint at ``path`` whose name and shape fit ``net``; of the BEV encoder's first
    convs, whose width depends on the history (K, ``history_channels``), the current frame's input channels
    (e.g. an imported single-frame FlashOCC model into a temporal variant: its history channels start at zero).
    Returns (tensors copied, names skipped).

    Raises:
        TrainError: unreadable or not our model checkpoint format, or nothing fits.
    """
    from .model.checkpoint import FORMAT

    try:
        data = torch.load(os.fspath(path), map_location='cpu', weights_only=True)
    except Exception as err:  # OSError, unpickling errors
        raise TrainError(f'--init {os.fspath(path)!r}: cannot load: {err}') from err
    if not isinstance(data, dict) or data.get('format') != FORMAT:
        raise TrainError(
            f'--init {os.fspath(path)!r}: not an {FORMAT} checkpoint (convert FlashOCC ones with '
            'occ-perception import-flashocc)'
        )
    own = net.state_dict()
    fit = {k: v for k, v in data['state_dict'].items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    c_bev = net.config.context_channels
    for key in HISTORY_INPUT_KEYS:
        value = data['state_dict'].get(key)
        if key in own and key not in fit and value is not None:
            if copy_current_frame_channels(own[key], value, c_bev):  # own[key] shares net's storage
                fit[key] = own[key]
    if not fit:
        raise TrainError(f'--init {os.fspath(path)!r}: no tensor fits the {net.config.name} network')
    net.load_state_dict(fit, strict=False)
    skipped = sorted(set(own) - set(fit))
    return len(fit), skipped


def _save_state(
    path: Path,
    step: int,
    net: OccNet,
    opt: torch.optim.Optimizer,
    scaler: Any,
    ema: dict[str, torch.Tensor] | None,
    cfg: TrainConfig,
) -> None:
    tmp = path.with_suffix('.tmp')
    torch.save(
        {
            'format': STATE_FORMAT,
            'step': int(step),
            'model': net.state_dict(),
            'optimizer': opt.state_dict(),
            'scaler': scaler.state_dict() if scaler is not None else None,
            'ema': ema,
            'model_config': {
                'name': net.config.name,
                'history': net.config.history,
                'history_offsets': list(net.config.history_offsets),
            },
            'train_config': json.dumps(asdict(cfg)),
        },
        os.fspath(tmp),
    )
    os.replace(tmp, path)


def _load_state(path: Path, net: OccNet, opt: torch.optim.Optimizer, scaler: Any) -> tuple[int, dict | None]:
    try:
        data = torch.load(os.fspath(path), map_location='cpu', weights_only=True)
    except Exception as err:
        raise TrainError(f'--resume {os.fspath(path)!r}: cannot load: {err}') from err
    if not isinstance(data, dict) or data.get('format') != STATE_FORMAT:
        raise TrainError(f'--resume {os.fspath(path)!r}: not an {STATE_FORMAT} training state')
    mc = data['model_config']
    if (mc['name'], int(mc['history'])) != (net.config.name, net.config.history):
        raise TrainError(
            f'--resume {os.fspath(path)!r}: holds {mc["name"]} history={mc["history"]}, '
            f'training {net.config.name} history={net.config.history}'
        )
    net.load_state_dict(data['model'])
    opt.load_state_dict(data['optimizer'])
    if scaler is not None and data.get('scaler'):
        scaler.load_state_dict(data['scaler'])
    return int(data['step']), data.get('ema')


def _ema_update(ema: dict[str, torch.Tensor], net: OccNet, decay: float) -> None:
    with torch.no_grad():
        for name, value in net.state_dict().items():
            if value.dtype.is_floating_point:
                ema[name].mul_(decay).add_(value.detach(), alpha=1.0 - decay)
            else:
                ema[name].copy_(value)


def _set_train_mode(net: OccNet, freeze_bn: bool) -> None:
    """Training mode, with the BatchNorm layers in eval mode when ``freeze_bn``."""
    net.train()
    if freeze_bn:
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _weights_net(net: OccNet, ema: dict[str, torch.Tensor] | None) -> OccNet:
    """The network to validate and ship: ``net`` itself, or a copy holding the EMA weights."""
    if ema is None:
        return net
    out = copy.deepcopy(net)
    out.load_state_dict(ema)
    return out


# -- validation -----------------------------------------------------------------------------------------------------


def evaluate(
    net: OccNet, dataset: Occ3DDataset, device: torch.device, limit: int = 0, progress: bool = False
) -> dict[str, Any]:
    """mIoU (Occ3D definition, mask_camera) of ``net`` on ``dataset`` (its first ``limit`` samples; 0 = all).

    Returns:
        ``{'miou': float, 'per_class': [IoU of labels 0..17, None where absent], 'samples': int}``
        from :class:`occ_perception.metrics.MIoU`.
    """
    from .metrics import MIoU

    metric = MIoU()
    was_training = net.training
    net.eval()
    count = len(dataset) if not limit else min(limit, len(dataset))
    indices = range(count)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc='validate', leave=False)
    with torch.no_grad():
        for i in indices:
            sample = dataset.get(i)
            t = _sample_tensors(sample, device)
            hist = _history_bev(net, sample, t['tables'], device)
            logits, _, _ = network_outputs(net, t['images'], t['tables'], hist, t['history_theta'], t['history_valid'])
            pred = logits.argmax(dim=-1).to(torch.uint8).cpu().numpy()
            metric.add(pred, sample.semantics, sample.mask_camera.astype(bool))
    net.train(was_training)
    result = metric.result()
    per_class = [None if math.isnan(v) else float(v) for v in result.iou.tolist()]
    return {'miou': float(result.miou), 'per_class': per_class, 'samples': count}


# -- plots ----------------------------------------------------------------------------------------------------------


def plot_log(log_path: Path, png_path: Path) -> None:
    """Loss curves (total, semantic, flow) and validation mIoU from a JSONL log, as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    train_rows, val_rows = [], []
    for line in log_path.read_text().splitlines():
        row = json.loads(line)
        if 'val_miou' in row:
            val_rows.append(row)
        elif 'loss' in row:
            train_rows.append(row)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train_rows:
        steps = [r['step'] for r in train_rows]
        for key in ('loss', 'loss_semantic', 'loss_flow', 'loss_depth'):
            if all(key in r for r in train_rows):
                ax.plot(steps, [r[key] for r in train_rows], label=key)
        ax.set_yscale('log')
    ax.set_xlabel('step')
    ax.set_ylabel('loss')
    ax.grid(True, alpha=0.3)
    if val_rows:
        ax2 = ax.twinx()
        ax2.plot([r['step'] for r in val_rows], [r['val_miou'] for r in val_rows], 'k.-', label='val mIoU')
        ax2.set_ylabel('mIoU')
        ax2.set_ylim(0.0, 1.0)
        ax2.legend(loc='upper right')
    ax.legend(loc='upper left')
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)


# -- the loop -------------------------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    dataset: Occ3DDataset,
    out_dir: str | os.PathLike[str],
    val_dataset: Occ3DDataset | None = None,
    init: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    progress: bool = True,
    device: str | None = None,
) -> TrainResult:
    """Train ``cfg.model`` on ``dataset``; run under ``torchrun`` for DDP (one process per device or CPU share).

    Args:
        cfg: the options.
        dataset: training samples (its augmentation is used when random flips/jitter are set).
        out_dir: where ``last.pt``, ``model.pt``, ``log.jsonl`` and ``loss.png`` go (rank 0 writes).
        val_dataset: validation samples (mIoU every ``cfg.val_every`` steps and at the end), or None.
        init: our model checkpoint to start from (tensors whose name and shape fit).
        resume: a ``last.pt`` to continue from (weights, optimiser, EMA, step).
        progress: a tqdm bar on rank 0.
        device: ``cpu``, ``cuda`` (default: cuda if available).

    Returns:
        :class:`TrainResult` (meaningful on rank 0).

    Raises:
        TrainError: bad init/resume checkpoint or a dataset for another model.
    """
    d = _init_distributed()
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    dev = torch.device(f'cuda:{d.local_rank}' if device == 'cuda' else device)
    out = Path(out_dir)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    model_cfg = cfg.model_config()
    if tuple(dataset.model_config.history_offsets) != tuple(model_cfg.history_offsets) or tuple(
        dataset.image_size
    ) != tuple(model_cfg.image_size):
        raise TrainError(
            f'training set built for image size {dataset.image_size} and history offsets '
            f'{dataset.model_config.history_offsets}, the model wants {model_cfg.image_size} and '
            f'{model_cfg.history_offsets}'
        )

    torch.manual_seed(cfg.seed)
    net = OccNet(model_cfg)
    if init is not None:
        loaded, skipped = _load_init(net, init)
        if d.main:
            print(
                f'init from {init}: {loaded} tensors loaded, {len(skipped)} left at their initialisation'
                + (f' ({", ".join(skipped[:6])}{", ..." if len(skipped) > 6 else ""})' if skipped else '')
            )
    net.to(dev).train()
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in net.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.AdamW(
        [{'params': decay, 'weight_decay': cfg.weight_decay}, {'params': no_decay, 'weight_decay': 0.0}], lr=cfg.lr
    )
    use_amp = bool(cfg.amp and dev.type == 'cuda')
    scaler = torch.amp.GradScaler('cuda') if use_amp else None
    ema: dict[str, torch.Tensor] | None = None
    start = 0
    if resume is not None:
        start, ema = _load_state(Path(resume), net, opt, scaler)
        net.to(dev)
        if ema is not None:
            ema = {k: v.to(dev) for k, v in ema.items()}
        if d.main:
            print(f'resumed from {resume} at step {start}')
    if cfg.ema_decay and ema is None:
        ema = {k: v.detach().clone() for k, v in net.state_dict().items()}

    step_module: nn.Module = _Step(net)
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        step_module = DistributedDataParallel(
            step_module, device_ids=[dev.index] if dev.type == 'cuda' else None, broadcast_buffers=False
        )
    class_weights = torch.tensor(cfg.class_weights, dtype=torch.float32, device=dev) if cfg.class_weights else None
    items = _Items(dataset, cfg.seed, dataset.augmentation.active)
    batches = _batches(items, cfg, d, start)
    global_batch = cfg.batch_size * d.world
    log_path = out / 'log.jsonl'
    if d.main and start == 0 and log_path.exists():
        log_path.unlink()

    bar = None
    if d.main and progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc='train', unit='step', dynamic_ncols=True)
    last = {'loss': float('nan'), 'loss_semantic': float('nan'), 'loss_flow': float('nan'), 'loss_depth': float('nan')}
    window: list[float] = []
    sums = {'loss': 0.0, 'loss_semantic': 0.0, 'loss_flow': 0.0, 'loss_depth': 0.0}
    timed_steps, timed_seconds = 0, 0.0
    val_miou: float | None = None
    model_path: Path | None = None

    def write_log(row: dict[str, Any]) -> None:
        with log_path.open('a') as f:
            f.write(json.dumps(row) + '\n')

    def validate(step: int) -> None:
        nonlocal val_miou
        if val_dataset is None:
            return
        if d.main:
            res = evaluate(_weights_net(net, ema), val_dataset, dev, cfg.val_samples, progress=progress)
            val_miou = res['miou']
            write_log(
                {
                    'step': step,
                    'val_miou': res['miou'],
                    'val_per_class': res['per_class'],
                    'val_samples': res['samples'],
                }
            )
            if bar is not None:
                bar.write(f'step {step}: val mIoU {res["miou"]:.4f} on {res["samples"]} samples')
        _barrier(d)

    def save(step: int) -> None:
        nonlocal model_path
        if d.main:
            _save_state(out / 'last.pt', step, net, opt, scaler, ema, cfg)
            model_path = out / 'model.pt'
            save_checkpoint(_weights_net(net, ema), model_path)
            if log_path.exists():
                plot_log(log_path, out / 'loss.png')
        _barrier(d)

    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        _set_train_mode(net, cfg.freeze_bn_step is not None and step >= cfg.freeze_bn_step)  # validation sets eval
        batch = next(batches)
        lr = learning_rate(step, cfg)
        for group in opt.param_groups:
            group['lr'] = lr
        opt.zero_grad(set_to_none=True)
        parts = {'loss': 0.0, 'loss_semantic': 0.0, 'loss_flow': 0.0, 'loss_depth': 0.0}
        for i, sample in enumerate(batch):
            t = _sample_tensors(sample, dev)
            hist = _history_bev(net, sample, t['tables'], dev)
            sync = i == len(batch) - 1
            ctx: Any = contextlib.nullcontext()
            if d.world > 1 and not sync:
                ctx = step_module.no_sync()  # type: ignore[operator]
            with ctx:
                with torch.autocast('cuda', dtype=torch.float16, enabled=use_amp):
                    logits, flow, depth = step_module(
                        t['images'], t['tables'], hist, t['history_theta'], t['history_valid']
                    )
                mask = _loss_mask(t, cfg.mask)
                sem = semantic_loss(logits, t['semantics'], mask, class_weights)
                if flow is not None and t['flow'] is not None:
                    fl = flow_loss(flow, t['flow'], t['semantics'], mask)
                else:  # keep every parameter in the graph (DDP) without a flow target
                    fl = flow.float().sum() * 0.0 if flow is not None else torch.zeros((), device=dev)
                dl = depth_loss(depth, t['depth_target'])
                loss = (cfg.semantic_weight * sem + cfg.flow_weight * fl + cfg.depth_weight * dl) / len(batch)
                if scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
            parts['loss'] += float(loss.detach())
            parts['loss_semantic'] += float(sem.detach()) / len(batch)
            parts['loss_flow'] += float(fl.detach()) / len(batch)
            parts['loss_depth'] += float(dl.detach()) / len(batch)
        if scaler is not None:
            scaler.unscale_(opt)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        if ema is not None:
            _ema_update(ema, net, cfg.ema_decay)
        if dev.type == 'cuda':
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - t0
        if step > start:  # the first step pays for start-up
            timed_steps += 1
            timed_seconds += seconds
        window.append(seconds)
        for k in sums:
            sums[k] += parts[k]
        last = parts
        done = step + 1
        if d.main:
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f'{parts["loss"]:.4f}', lr=f'{lr:.2e}', sps=f'{global_batch / seconds:.2f}')
            if done % cfg.log_every == 0 or done == cfg.steps:
                n = len(window)
                write_log(
                    {
                        'step': done,
                        'loss': sums['loss'] / n,
                        'loss_semantic': sums['loss_semantic'] / n,
                        'loss_flow': sums['loss_flow'] / n,
                        'loss_depth': sums['loss_depth'] / n,
                        'lr': lr,
                        'samples_per_s': global_batch * n / sum(window),
                        'global_batch': global_batch,
                        'processes': d.world,
                        'time': time.time(),
                    }
                )
        if done % cfg.log_every == 0 or done == cfg.steps:
            window.clear()
            sums = {k: 0.0 for k in sums}
        if cfg.val_every and done % cfg.val_every == 0 and done != cfg.steps:
            validate(done)
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done != cfg.steps:
            save(done)
    if bar is not None:
        bar.close()
    if val_dataset is not None:
        validate(cfg.steps)
    save(cfg.steps)
    sps = global_batch * timed_steps / timed_seconds if timed_seconds > 0 else float('nan')
    if d.main:
        write_log(
            {
                'step': cfg.steps,
                'summary': True,
                'samples_per_s': sps,
                'processes': d.world,
                'global_batch': global_batch,
            }
        )
        plot_log(log_path, out / 'loss.png')
    return TrainResult(cfg.steps, sps, last['loss'], val_miou, model_path)


def load_datasets(
    cfg: TrainConfig,
    data: str | os.PathLike[str],
    version: str = 'v1.0-mini',
    val_data: str | os.PathLike[str] | None = None,
    val_version: str | None = None,
    scenes: Sequence[str] | None = None,
    val_scenes: Sequence[str] | None = None,
) -> tuple[Occ3DDataset, Occ3DDataset | None]:
    """The training set (with ``cfg.augmentation``) and the validation set (none) for ``cfg``'s model."""
    model_cfg = cfg.model_config()
    train_set = Occ3DDataset(
        data, model_cfg, version=version, scenes=scenes, augmentation=cfg.augmentation, use_sweeps=cfg.use_sweeps
    )
    val_set = None
    if val_data is not None:
        val_set = Occ3DDataset(
            val_data, model_cfg, version=val_version or version, scenes=val_scenes, use_sweeps=cfg.use_sweeps
        )
    return train_set, val_set
