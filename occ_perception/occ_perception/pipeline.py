"""The ROS-free frame path: one synchronised camera frame in, one :class:`~occ_perception.outputs.OccFrame` out.

Shared by the ROS node, the offline replay and ``occ-perception eval`` (DESIGN.md
sections 2 and 5), so that all of them drive the network and the temporal cache
the same way::

    images (N messages or JPEG bytes) --preprocess--> (N, H, W, 3) uint8
    rig --splat tables (once per calibration)-->      splat_* int64
    stamp, pose --BevCache.prepare-->                 history_* (K > 0 only)
    backend.run(feeds) --> labels, confidence, flow, bev_feature
    BevCache.push(stamp, pose, bev_feature)

Splat tables are built once per calibration, keyed by :meth:`Rig.digest`, and
reused; a calibration change rebuilds them and resets the temporal cache
(``BevCache.prepare`` with the rig compares digests and resets with
``calibration``). A history-free model (K = 0) has no cache.

:func:`load_model` opens a model file for a backend and checks that its inputs
are the ones the configuration expects.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .geometry import Transform
from .model.config import ModelConfig
from .model.splat_tables import build_splat_tables, camera_coverage, exclusive_columns, mask_cameras
from .outputs import OccFrame
from .preprocess import Preprocessor
from .rig import Rig
from .runtime.base import Backend, BackendError, match_specs
from .temporal import BevCache, HistoryInputs, ResetReason, TemporalConfig
from .tensors import TensorSpec

__all__ = [
    'BACKENDS',
    'FAILED_CAMERA_MODES',
    'JpegImage',
    'OccPipeline',
    'PipelineError',
    'expected_input_specs',
    'frame_stamp_ns',
    'load_model',
]

BACKENDS: tuple[str, ...] = ('onnxruntime', 'torch', 'tensorrt')
"""Backend names :func:`load_model` accepts."""

FAILED_CAMERA_MODES: tuple[str, ...] = ('mask_tables', 'blank_image')
"""How a failed camera (image None) is fed: its splat table entries zeroed and its image black
(``mask_tables``), or only its image black with the full tables (``blank_image``)."""

STAGES: tuple[str, ...] = ('preprocess', 'tables', 'network', 'cache', 'total')
"""Timing keys of :attr:`OccFrame.timings` [s]; 'tables' only on frames that rebuilt them."""

_ZIP_MAGIC = b'PK\x03\x04'  # torch.save writes a zip archive


class PipelineError(ValueError):
    """A frame or a model does not fit the pipeline: wrong camera count, no stamp, a model file of the wrong
    kind, a model whose inputs differ from the configuration."""


@dataclass(frozen=True)
class JpegImage:
    """Encoded image bytes (JPEG or PNG) with the fields of a sensor_msgs/CompressedImage, for raw bytes input.

    Attributes:
        data: the encoded bytes.
        format: as CompressedImage.format ('' lets the bytes decide).
    """

    data: bytes
    format: str = ''


def expected_input_specs(config: ModelConfig) -> tuple[TensorSpec, ...]:
    """The graph inputs a network of ``config`` has (:meth:`OccNet.input_specs`).

    The network is built on torch's meta device, so no weights are allocated.
    """
    import torch

    from .model.network import OccNet

    with torch.device('meta'):
        return OccNet(config).input_specs()


def _stamp_of(msg: Any) -> int | None:
    header = getattr(msg, 'header', None)
    stamp = getattr(header, 'stamp', None)
    if stamp is None:
        return None
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def frame_stamp_ns(images: Sequence[Any] | Mapping[str, Any], rig: Rig) -> int:
    """A frame's stamp [ns]: the ``cam_front`` image's header stamp (the first camera's if the rig has no cam_front).

    Raises:
        PipelineError: that image has no header (raw bytes); pass the stamp explicitly then.
    """
    name = 'cam_front' if 'cam_front' in rig.names else rig.names[0]
    msg = images[name] if isinstance(images, Mapping) else images[rig.names.index(name)]
    stamp = _stamp_of(msg)
    if stamp is None:
        raise PipelineError(
            f'frame stamp: the {name} image ({type(msg).__name__}) has no header.stamp; '
            'give stamp_ns for raw image bytes'
        )
    return stamp


def _as_message(image: Any) -> Any:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return JpegImage(bytes(image))
    return image


class OccPipeline:
    """Runs one network on synchronised camera frames, with splat tables per calibration and the BEV cache.

    Args:
        backend: any :class:`~occ_perception.runtime.base.Backend` whose inputs are
            ``expected_input_specs(config)`` (checked here).
        config: the network configuration (image size, grid, history K and offsets, flow head).
        temporal: the cache policy; default the one training used for ``config.history_offsets``
            (:func:`occ_perception.data.occ3d.temporal_config_for`). Its K must equal ``config.history``.
        use_history: False feeds a temporal model empty history (valid = 0) on every frame, to measure
            what history brings; the cache is not used then.
        preprocess_threads: decoder threads of the :class:`~occ_perception.preprocess.Preprocessor`.
        confidence: return the confidence grid (when the backend outputs one).
        failed_camera_mode: one of :data:`FAILED_CAMERA_MODES`, for frames with a failed camera.

    Raises:
        PipelineError: the backend's inputs differ from the configuration's, the policy's K differs, or an
            unknown failed_camera_mode.
    """

    def __init__(
        self,
        backend: Backend,
        config: ModelConfig,
        temporal: TemporalConfig | None = None,
        use_history: bool = True,
        preprocess_threads: int = 2,
        confidence: bool = True,
        failed_camera_mode: str = 'mask_tables',
    ) -> None:
        if failed_camera_mode not in FAILED_CAMERA_MODES:
            raise PipelineError(
                f'failed_camera_mode: expected one of {list(FAILED_CAMERA_MODES)}, got {failed_camera_mode!r}'
            )
        try:
            match_specs(expected_input_specs(config), backend.inputs, f'{backend.name} backend')
        except BackendError as err:
            raise PipelineError(str(err)) from err
        if temporal is None:
            from .data.occ3d import temporal_config_for

            temporal = temporal_config_for(config.history_offsets)
        if len(temporal.offsets) != config.history:
            raise PipelineError(
                f'temporal policy has {len(temporal.offsets)} offsets {temporal.offsets}, '
                f'the model {config.name} has history K={config.history}'
            )
        self.backend = backend
        self.config = config
        self.temporal = temporal
        self.use_history = bool(use_history)
        self.preprocess_threads = int(preprocess_threads)
        self.confidence = bool(confidence)
        self.failed_camera_mode = failed_camera_mode
        x_size, y_size = config.bev_size
        self.feature_shape = (config.cache_channels, y_size, x_size)
        self.cache: BevCache | None = BevCache(temporal, config.grid, self.feature_shape) if config.history else None
        self.rig: Rig | None = None
        self.digest: str | None = None
        self.tables: dict[str, np.ndarray] = {}
        self.table_builds = 0
        self._masked: dict[tuple[bool, ...], dict[str, np.ndarray]] = {}  # active flags -> masked tables
        self._exclusive: dict[tuple[bool, ...], np.ndarray] = {}  # active flags -> (X, Y) columns only they saw
        self._coverage: np.ndarray | None = None
        self._preprocessor: Preprocessor | None = None

    def reset(self) -> None:
        """Drop the temporal history (the node's ``~/reset`` service, or a new scene offline)."""
        if self.cache is not None:
            self.cache.reset(ResetReason.REQUESTED)

    def close(self) -> None:
        """Stop the decoder threads (the backend stays open: its owner closes it)."""
        if self._preprocessor is not None:
            self._preprocessor.close()
            self._preprocessor = None

    def __enter__(self) -> OccPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _use_rig(self, rig: Rig) -> bool:
        """Make ``rig`` the current calibration; True when the tables were rebuilt."""
        digest = rig.digest()
        if digest == self.digest:
            return False
        w, h = self.config.image_size
        self.tables = build_splat_tables(self.config, rig.matrices(w, h))
        self.table_builds += 1
        self._masked.clear()
        self._exclusive.clear()
        self._coverage = None
        if self._preprocessor is not None:
            self._preprocessor.close()
        self._preprocessor = Preprocessor(rig, (w, h), threads=self.preprocess_threads)
        self.rig, self.digest = rig, digest
        return True

    def tables_for(self, active: tuple[bool, ...]) -> dict[str, np.ndarray]:
        """The splat tables fed for the current rig with ``active`` cameras (cached per camera set).

        All active, or ``failed_camera_mode`` 'blank_image': the full tables; else :func:`mask_cameras`'s.
        """
        if all(active) or self.failed_camera_mode == 'blank_image':
            return self.tables
        found = self._masked.get(active)
        if found is None:
            found = self._masked[active] = mask_cameras(self.tables, self.config, len(active), active)
        return found

    def exclusive_columns(self, active: tuple[bool, ...]) -> np.ndarray:
        """(X, Y) bool: voxel columns that only the inactive cameras' frustums reach (current rig, cached).

        Raises:
            PipelineError: no rig yet (no frame processed).
        """
        if self.rig is None:
            raise PipelineError('exclusive_columns: no rig yet; process a frame first')
        found = self._exclusive.get(active)
        if found is None:
            if self._coverage is None:
                w, h = self.config.image_size
                self._coverage = camera_coverage(self.config, self.rig.matrices(w, h))
            found = self._exclusive[active] = exclusive_columns(self._coverage, self.config, active)
        return found

    def _empty_history(self) -> HistoryInputs:
        k = self.config.history
        theta = np.tile(np.eye(3, dtype=np.float32)[:2], (k, 1, 1))
        return HistoryInputs(
            np.zeros((k,) + self.feature_shape, np.float32), theta, np.zeros(k, np.float32), np.zeros(k, np.int64), None
        )

    def process(
        self, images: Sequence[Any] | Mapping[str, Any], pose: Transform, rig: Rig, stamp_ns: int | None = None
    ) -> OccFrame:
        """Run one synchronised frame.

        Args:
            images: one image per camera, in rig order or keyed by camera name (``cam_front``, ...):
                sensor_msgs/CompressedImage or sensor_msgs/Image instances (rosbags or rclpy), or
                encoded JPEG/PNG bytes; None for a failed camera: its image is black, its splat table
                entries are zeroed (``failed_camera_mode`` 'mask_tables') and the voxel columns only it
                saw get confidence 0 (labels unchanged).
            pose: ``T_map_base_link`` at the frame's stamp.
            rig: the cameras (CameraInfo sizes, intrinsics, extrinsics) in network order.
            stamp_ns: the frame's stamp [ns]; default the ``cam_front`` message's header stamp.

        Returns:
            The :class:`OccFrame`: labels (X, Y, Z) uint8, confidence (X, Y, Z) uint8 or None, flow
            (X, Y, Z, 2) float32 [m/s] in base_link axes or None (no flow head), the stamp, timings [s]
            for :data:`STAGES` and the cache's reset reason (a :class:`ResetReason` value) or None.

        Raises:
            PipelineError: no stamp, an image count unlike the rig's, or no camera with an image.
            occ_perception.preprocess.PreprocessError: an image cannot be decoded or has the wrong size.
            occ_perception.model.splat_tables.SplatError: the rig's matrices are malformed.
            occ_perception.runtime.base.BackendError: the backend refused the feeds.
        """
        t_start = time.perf_counter()
        if len(images) != len(rig):
            raise PipelineError(f'frame: {len(images)} images for a rig of {len(rig)} cameras {list(rig.names)}')
        if isinstance(images, Mapping):
            active = tuple(images.get(name) is not None for name in rig.names)
        else:
            active = tuple(image is not None for image in images)
        if not any(active):
            raise PipelineError(f'frame: no image from any camera of {list(rig.names)}')
        missing = tuple(name for name, on in zip(rig.names, active) if not on)
        if stamp_ns is None and missing:
            present = [name for name, on in zip(rig.names, active) if on]
            images_by_name = images if isinstance(images, Mapping) else dict(zip(rig.names, images))
            stamp_ns = _stamp_of(images_by_name[present[0]]) if 'cam_front' in missing else None
        stamp = int(stamp_ns) if stamp_ns is not None else frame_stamp_ns(images, rig)
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        rebuilt = self._use_rig(rig)
        if rebuilt:
            timings['tables'] = time.perf_counter() - t0
        assert self._preprocessor is not None

        t0 = time.perf_counter()
        if isinstance(images, Mapping):
            msgs: Sequence[Any] | Mapping[str, Any] = {
                k: None if v is None else _as_message(v) for k, v in images.items()
            }
        else:
            msgs = [None if v is None else _as_message(v) for v in images]
        batch = self._preprocessor(msgs)
        timings['preprocess'] = time.perf_counter() - t0

        t0 = time.perf_counter()
        reset: ResetReason | None = None
        feeds: dict[str, Any] = {'images': batch, **self.tables_for(active)}
        if self.config.history:
            if self.use_history and self.cache is not None:
                history = self.cache.prepare(stamp, pose, calibration=rig)
                reset = history.reset
            else:
                history = self._empty_history()
            feeds.update(history.feeds())
        t_cache = time.perf_counter() - t0

        t0 = time.perf_counter()
        outputs = self.backend.run(feeds)
        timings['network'] = time.perf_counter() - t0

        t0 = time.perf_counter()
        if self.cache is not None and self.use_history:
            self.cache.push(stamp, pose, np.asarray(outputs['bev_feature'], dtype=np.float32))
        timings['cache'] = t_cache + time.perf_counter() - t0

        confidence = outputs.get('confidence') if self.confidence else None
        if confidence is not None and missing:
            confidence = np.array(confidence, dtype=np.uint8, copy=True)
            confidence[self.exclusive_columns(active)] = 0
        flow = outputs.get('flow') if self.config.flow_head else None
        timings['total'] = time.perf_counter() - t_start
        return OccFrame(
            stamp_ns=stamp,
            frame_id='base_link',
            grid=self.config.grid,
            labels=np.asarray(outputs['labels'], dtype=np.uint8),
            confidence=None if confidence is None else np.asarray(confidence, dtype=np.uint8),
            flow=None if flow is None else np.asarray(flow, dtype=np.float32),
            timings=timings,
            reset_reason=None if reset is None else reset.value,
            missing_cameras=missing,
        )


def _kind_of(path: Path) -> str:
    """'zip' (a torch checkpoint), 'empty' or 'other', from the first bytes."""
    with open(path, 'rb') as stream:
        head = stream.read(4)
    if not head:
        return 'empty'
    return 'zip' if head == _ZIP_MAGIC else 'other'


def load_model(
    path: str | os.PathLike[str],
    config: ModelConfig,
    backend: str = 'onnxruntime',
    threads: int = 0,
    device: str = 'cpu',
    precision: str = 'fp16',
) -> Backend:
    """Open a model file with a runtime backend and check its inputs against ``config``.

    Args:
        path: our checkpoint (``.pt``, :func:`~occ_perception.model.checkpoint.save_checkpoint`) for
            ``torch``; an ONNX file for ``onnxruntime``; a TensorRT engine, or an ONNX file to build one
            from (:func:`~occ_perception.runtime.engine.build_engine`, cached beside it), for ``tensorrt``.
        config: the configuration the model must have (name, history K, flow head for checkpoints;
            input names, dtypes and fixed sizes for graphs).
        backend: one of :data:`BACKENDS`.
        threads: CPU threads (onnxruntime intra-op, torch's ``set_num_threads``); 0 = the library default.
        device: 'cpu' or 'cuda' (torch, onnxruntime); the tensorrt backend always runs on CUDA device 0.
        precision: engine precision when ``tensorrt`` builds from ONNX ('fp16' or 'fp32').

    Returns:
        The backend, ready to :meth:`~occ_perception.runtime.base.Backend.run`.

    Raises:
        PipelineError: unknown backend, missing or empty file, a file of the wrong kind for the backend
            (a checkpoint given to onnxruntime or the reverse), a truncated or unreadable file, or a model
            whose inputs (or checkpoint config) do not match ``config``; the message names the file.
    """
    if backend not in BACKENDS:
        raise PipelineError(f'backend: expected one of {list(BACKENDS)}, got {backend!r}')
    file = Path(path)
    if not file.is_file():
        raise PipelineError(f'model {str(file)!r}: no such file')
    kind = _kind_of(file)
    if kind == 'empty':
        raise PipelineError(f'model {str(file)!r}: the file is empty')
    where = f'model {str(file)!r}'
    expected = expected_input_specs(config)
    if backend == 'torch':
        if kind != 'zip':
            raise PipelineError(
                f'{where}: not a torch checkpoint (expected our .pt from train or import-flashocc; '
                'an ONNX file runs with the onnxruntime backend)'
            )
        import torch

        from .model.checkpoint import ModelCheckpointError, load_checkpoint
        from .runtime.torch_backend import TorchBackend

        try:
            net = load_checkpoint(file, config)
        except ModelCheckpointError as err:
            raise PipelineError(str(err)) from err
        if threads:
            torch.set_num_threads(int(threads))
        try:
            return TorchBackend(net, net.input_specs(), net.output_names(), device=device)
        except BackendError as err:
            raise PipelineError(f'{where}: {err}') from err
    if kind == 'zip':
        raise PipelineError(
            f'{where}: is a torch checkpoint (zip archive), not an ONNX graph or engine; run it '
            'with --backend torch or export it with occ-perception export'
        )
    if backend == 'onnxruntime':
        from .runtime.ort_backend import OnnxRuntimeBackend

        try:
            ort_backend = OnnxRuntimeBackend(file, device=device, threads=threads)
            match_specs(expected, ort_backend.inputs, where)
        except BackendError as err:
            raise PipelineError(str(err)) from err
        return ort_backend
    return _load_tensorrt(file, config, expected, precision)


def _load_tensorrt(file: Path, config: ModelConfig, expected: Sequence[TensorSpec], precision: str) -> Backend:
    """A TensorRT backend for an engine file, or for an ONNX file through a (cached) engine build."""
    from .runtime.engine import EngineError, build_engine, onnx_io_specs, shape_ranges
    from .runtime.trt_backend import TensorRTBackend

    engine = file
    try:
        if file.suffix == '.onnx':
            from .model.network import OccNet
            from .runtime.export import sample_inputs

            inputs, _ = onnx_io_specs(file)
            match_specs(expected, inputs, f'model {str(file)!r}')
            import torch

            with torch.device('meta'):
                net = OccNet(config)
            feeds = sample_inputs(net, Rig.nuscenes())
            ranges = shape_ranges(inputs, feeds, exact=('images', 'history_bev', 'history_theta', 'history_valid'))
            engine = build_engine(file, ranges, precision=precision, calibration_feeds=feeds)
        return TensorRTBackend(engine, expected_inputs=expected)
    except (BackendError, EngineError) as err:
        raise PipelineError(str(err)) from err
