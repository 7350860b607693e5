"""TensorRT engine builds from ONNX, the engine cache, and the CUDA runtime calls both need.

An engine is built on first use and cached next to its ONNX file. Its name
carries a digest of everything that shapes it (:class:`EngineKey`): the ONNX
file's SHA-256, the TensorRT version, the GPU's name and compute capability,
the precision, every input's optimisation-profile range and the workspace
limit. A JSON sidecar beside the engine lists the full key. A later start with
the same key finds the file and skips the build; any change builds anew. A cached
engine is used only when its sidecar is there and holds exactly the wanted key
(:func:`cached_engine`): an engine without one (a build interrupted between the
two writes, a file copied without it) or with another key is rebuilt, never
loaded stale.

One precision path for TensorRT 10 and 11: the network is always strongly typed
(``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; weak typing is deprecated
since 10.12 and gone in 11, with ``BuilderFlag.FP16``). ``fp16`` therefore means
an fp16 ONNX graph, made by NVIDIA ModelOpt's AutoCast from the fp32 export with
real example feeds as calibration data (:func:`convert_to_fp16`); ``fp32``
parses the export as it is.

GPU queries and memory go through NVIDIA's ``cuda-python`` (CUDA runtime API),
never torch, so a machine with TensorRT and no torch builds and runs engines.
Everything here but :func:`build_engine`, :func:`gpu_info` and
:func:`convert_to_fp16` runs without TensorRT, CUDA or ModelOpt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import BackendError, TensorSpec

log = logging.getLogger(__name__)

__all__ = [
    'FP32_NODES',
    'FP32_OP_TYPES',
    'PRECISIONS',
    'EngineError',
    'EngineKey',
    'GpuInfo',
    'ShapeRange',
    'build_engine',
    'cached_engine',
    'convert_to_fp16',
    'cuda_check',
    'fp16_graph',
    'fp16_onnx_path',
    'gpu_info',
    'import_cudart',
    'import_tensorrt',
    'onnx_digest',
    'onnx_io_specs',
    'shape_ranges',
    'sidecar_path',
    'strongly_typed_flags',
    'trt_major',
]

PRECISIONS = ('fp32', 'fp16')


class EngineError(BackendError):
    """An engine cannot be built: TensorRT, CUDA or a GPU is missing, the converter, parser or builder failed."""


def import_tensorrt() -> Any:
    """Import the ``tensorrt`` module.

    Raises:
        EngineError: it is not installed (with how to get it).
    """
    try:
        import tensorrt
    except ImportError as err:
        raise EngineError(
            'TensorRT is not installed: pip install tensorrt (10.x or 11.x, matching your CUDA), '
            "or use backend 'onnxruntime' or 'torch'"
        ) from err
    return tensorrt


def import_cudart() -> Any:
    """Import the CUDA runtime bindings of NVIDIA's ``cuda-python``.

    ``cuda.bindings.runtime`` (cuda-python 12.6+ and 13), falling back to the
    older ``cuda.cudart`` (still what some JetPack installs carry).

    Raises:
        EngineError: cuda-python is not installed (with how to get it).
    """
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]
        except ImportError as err:
            raise EngineError(
                "the TensorRT path needs NVIDIA's cuda-python: pip install cuda-python (matching your CUDA major)"
            ) from err
    return cudart


def cuda_check(cudart: Any, result: Any, call: str) -> Any:
    """Unpack a cuda-python call's result, raising on an error code.

    cuda-python returns ``(err,)`` or ``(err, value)`` or ``(err, v1, v2, ...)``.

    Returns:
        None, the single value, or a tuple of the values.

    Raises:
        EngineError: the error code is not ``cudaSuccess``; the message names ``call`` and the CUDA error.
    """
    err, values = result[0], tuple(result[1:])
    if err != cudart.cudaError_t.cudaSuccess:
        name = getattr(err, 'name', str(err))
        raise EngineError(f'CUDA {call} failed: {name} ({int(err)})')
    if not values:
        return None
    return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class GpuInfo:
    """The CUDA device an engine is built for.

    Attributes:
        index: CUDA device ordinal.
        name: device name, e.g. 'NVIDIA GeForce RTX 3090'.
        compute_capability: 'major.minor', e.g. '8.6'.
    """

    index: int
    name: str
    compute_capability: str


def gpu_info(device: int | None = None) -> GpuInfo:
    """Name and compute capability of a CUDA device via the CUDA runtime API (no torch).

    Args:
        device: device ordinal; None for the current device (``cudaGetDevice``).

    Raises:
        EngineError: cuda-python is missing, there is no CUDA device, or a CUDA call failed.
    """
    cudart = import_cudart()
    count = cuda_check(cudart, cudart.cudaGetDeviceCount(), 'cudaGetDeviceCount (is there a GPU and a driver?)')
    if not count:
        raise EngineError('building or running a TensorRT engine needs a CUDA device; the CUDA runtime sees none')
    if device is None:
        device = int(cuda_check(cudart, cudart.cudaGetDevice(), 'cudaGetDevice'))
    if not 0 <= device < int(count):
        raise EngineError(f'CUDA device {device}: expected an index below the device count {int(count)}')
    props = cuda_check(cudart, cudart.cudaGetDeviceProperties(device), f'cudaGetDeviceProperties({device})')
    name = props.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b'\0', 1)[0].decode('utf-8', 'replace')
    return GpuInfo(int(device), str(name), f'{int(props.major)}.{int(props.minor)}')


def trt_major(version: str) -> int:
    """Major version number of a TensorRT version string ('10.13.0.35' -> 10).

    Raises:
        EngineError: not a version string.
    """
    match = re.match(r'^(\d+)\.', str(version))
    if not match:
        raise EngineError(f'TensorRT version: expected a string like 10.13.0, got {version!r}')
    return int(match.group(1))


def onnx_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        for block in iter(lambda: stream.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ShapeRange:
    """An optimisation profile entry: smallest, typical and largest shape of one input."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def admits(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.opt) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))


@dataclass(frozen=True)
class EngineKey:
    """Everything a cached engine depends on; any change means another engine file.

    Attributes:
        onnx_sha256: hex digest of the fp32 ONNX file (the fp16 graph is derived from it).
        trt_version: TensorRT version string.
        gpu_name: CUDA device name, e.g. 'NVIDIA GeForce RTX 3090'.
        compute_capability: 'major.minor' of that device.
        precision: 'fp32' or 'fp16'.
        profile: one ``(input name, min, opt, max)`` per network input, sorted by name.
        workspace_bytes: builder workspace memory pool limit [bytes].
    """

    onnx_sha256: str
    trt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...]
    workspace_bytes: int

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EngineError(f'precision: expected one of {PRECISIONS}, got {self.precision!r}')
        if not re.fullmatch(r'[0-9a-f]{64}', self.onnx_sha256):
            raise EngineError(f'onnx_sha256: expected 64 hex digits, got {self.onnx_sha256!r}')
        if not re.fullmatch(r'\d+\.\d+', self.compute_capability):
            raise EngineError(f'compute_capability: expected major.minor like 8.6, got {self.compute_capability!r}')
        if int(self.workspace_bytes) <= 0:
            raise EngineError(f'workspace_bytes: expected a positive size, got {self.workspace_bytes}')

    @classmethod
    def create(
        cls,
        onnx_path: str | os.PathLike[str],
        trt_version: str,
        gpu: GpuInfo,
        precision: str,
        ranges: Mapping[str, ShapeRange],
        workspace_bytes: int,
    ) -> EngineKey:
        """The key of building ``onnx_path`` with these settings on ``gpu`` (hashes the file)."""
        profile = tuple(
            (name, tuple(int(d) for d in r.min), tuple(int(d) for d in r.opt), tuple(int(d) for d in r.max))
            for name, r in sorted(ranges.items())
        )
        return cls(
            onnx_digest(onnx_path),
            str(trt_version),
            gpu.name,
            gpu.compute_capability,
            precision,
            profile,
            int(workspace_bytes),
        )

    def as_dict(self) -> dict[str, Any]:
        """The key as plain JSON-able data (the sidecar's content)."""
        data = asdict(self)
        data['profile'] = {
            name: {'min': list(lo), 'opt': list(opt), 'max': list(hi)} for name, lo, opt, hi in self.profile
        }
        return data

    def digest(self) -> str:
        """SHA-256 (hex) of the key's canonical JSON: equal keys, equal digests; any field changed, another one."""
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(',', ':'))
        return hashlib.sha256(text.encode('utf-8')).hexdigest()

    def engine_path(self, onnx_path: str | os.PathLike[str]) -> Path:
        """Where the engine for this key lives: beside the ONNX file, ``<stem>.<precision>.<digest[:16]>.engine``."""
        onnx_path = Path(onnx_path)
        return onnx_path.with_name(f'{onnx_path.stem}.{self.precision}.{self.digest()[:16]}.engine')


def sidecar_path(engine_path: str | os.PathLike[str]) -> Path:
    """The JSON file beside an engine that holds its full :class:`EngineKey`."""
    return Path(os.fspath(engine_path) + '.json')


def cached_engine(key: EngineKey, onnx_path: str | os.PathLike[str]) -> tuple[Path | None, str]:
    """The cached engine for ``key``, if there is one that may be used.

    Returns:
        ``(path, '')`` when the engine file exists, is not empty and its sidecar holds exactly ``key``
        (full key and digest); otherwise ``(None, why)``, ``why`` empty when there is simply no engine yet.
    """
    target = key.engine_path(onnx_path)
    if not target.is_file():
        return None, ''
    if target.stat().st_size == 0:
        return None, f'{target.name} is empty'
    sidecar = sidecar_path(target)
    try:
        stored = json.loads(sidecar.read_text(encoding='utf-8'))
    except (OSError, ValueError) as err:
        return None, f'{target.name} has no readable key sidecar {sidecar.name} ({type(err).__name__})'
    if not isinstance(stored, dict) or stored.get('key') != key.as_dict() or stored.get('digest') != key.digest():
        return None, f'the key in {sidecar.name} is not the wanted one'
    return target, ''


def onnx_io_specs(path: str | os.PathLike[str]) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The graph inputs and outputs of an ONNX file (dynamic dimensions as None).

    Raises:
        EngineError: the file cannot be read as ONNX.
    """
    import onnx
    from onnx import helper

    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and OSError subclasses
        raise EngineError(f'cannot read ONNX file {os.fspath(path)!r}: {err}') from err
    initializers = {i.name for i in model.graph.initializer}

    def spec(value: Any) -> TensorSpec:
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField('dim_value') else None for d in tensor.shape.dim)
        return TensorSpec(value.name, np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name, dims)

    inputs = tuple(spec(v) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(spec(v) for v in model.graph.output)
    return inputs, outputs


def shape_ranges(
    specs: Sequence[TensorSpec], feeds: Mapping[str, Any], headroom: float = 2.0, exact: Sequence[str] = ()
) -> dict[str, ShapeRange]:
    """Optimisation-profile ranges for every input from one example of feeds.

    Fixed dimensions stay fixed; each dynamic dimension (splat tables, whose
    lengths depend on the rig) gets min 1, opt the example's size and max
    ``ceil(size * headroom)``, so a recalibrated rig fits the same engine.
    Inputs named in ``exact`` (the images: one camera count) keep the example's shape.

    Raises:
        EngineError: a feed is missing or contradicts a fixed dimension.
    """
    ranges = {}
    for spec in specs:
        if spec.name not in feeds:
            raise EngineError(f'shape_ranges: no example for input {spec.describe()}')
        shape = tuple(int(d) for d in feeds[spec.name].shape)
        if len(shape) != len(spec.shape) or any(e is not None and e != s for e, s in zip(spec.shape, shape)):
            raise EngineError(f'shape_ranges: example {list(shape)} does not fit input {spec.describe()}')
        if spec.name in exact:
            ranges[spec.name] = ShapeRange(shape, shape, shape)
            continue
        lo = tuple(s if e is not None else 1 for e, s in zip(spec.shape, shape))
        hi = tuple(s if e is not None else max(s, math.ceil(s * headroom)) for e, s in zip(spec.shape, shape))
        ranges[spec.name] = ShapeRange(lo, shape, hi)
    return ranges


MODELOPT_INSTALL = (
    'pip install --no-deps nvidia-modelopt==0.47.0 onnx-graphsurgeon onnxslim polygraphy nvidia-ml-py lief '
    '(see test/requirements-modelopt.txt; ModelOpt AutoCast also imports torch)'
)


FP32_NODES: tuple[str, ...] = (r'.*occ_head[/._]',)
"""Node-name patterns (``re.match``) that the fp16 conversion keeps in fp32: the semantic head, whose 18
logits per voxel decide the label. On the random-weight M0 export (history 1) labels agree with fp32 on
99.9 % of voxels with the head in fp32 and on 99.0 % without; the head is a small part of M0's compute."""

FP32_OP_TYPES: tuple[str, ...] = ('InstanceNormalization',)
"""Op types the fp16 conversion keeps in fp32: the group norms of ``tiny`` (exported as InstanceNormalization)
take statistics of the splatted BEV, whose rms is about 1e3, so its variance would overflow fp16 (65504)."""


def fp16_onnx_path(onnx_path: str | os.PathLike[str]) -> Path:
    """Where :func:`build_engine` keeps the fp16 graph of an fp32 ONNX file: beside it, named by its digest.

    A graph converted once (for example on a machine with ModelOpt and torch) and
    copied next to the fp32 file is reused by later builds on machines without them.
    """
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f'{onnx_path.stem}.{onnx_digest(onnx_path)[:16]}.fp16.onnx')


def convert_to_fp16(
    onnx_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration_feeds: Mapping[str, np.ndarray],
    keep_fp32: Sequence[str] = FP32_NODES,
) -> Path:
    """Write a mixed fp16/fp32 copy of an fp32 ONNX graph for a strongly typed TensorRT build.

    Uses ModelOpt AutoCast (``modelopt.onnx.autocast.convert_to_mixed_precision``):
    it runs the fp32 graph once under onnxruntime CPU on ``calibration_feeds`` and
    keeps in fp32 the nodes whose values would overflow fp16 (the splat-table index
    arithmetic, large reductions); the rest becomes fp16. Graph inputs and outputs
    keep their types (uint8 images, int64 tables, uint8 labels, float32 history).

    Args:
        onnx_path: the fp32 graph (``occ-perception export``).
        out_path: where to write the converted graph.
        calibration_feeds: one real example of every graph input (input name -> numpy array,
            e.g. :func:`occ_perception.runtime.export.sample_inputs`); random feeds do not work
            here: they are not valid uint8 images and index outside the splat tables.
        keep_fp32: node-name patterns kept in fp32 in any case (default :data:`FP32_NODES`).

    Returns:
        ``out_path``.

    Raises:
        EngineError: ModelOpt is not installed, the conversion failed, or the result changed
            an input's or output's type.
    """
    import onnx

    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError as err:
        raise EngineError(f'fp16 conversion needs NVIDIA ModelOpt AutoCast: {MODELOPT_INSTALL}; ({err})') from err
    src = os.fspath(onnx_path)
    feeds = {name: np.ascontiguousarray(value) for name, value in calibration_feeds.items()}
    try:
        model = convert_to_mixed_precision(
            onnx_path=src,
            low_precision_type='fp16',
            keep_io_types=True,
            calibration_data=feeds,
            nodes_to_exclude=list(keep_fp32),
            op_types_to_exclude=list(FP32_OP_TYPES),
        )
    except Exception as err:  # AutoCast raises ValueError, AssertionError, onnxruntime errors
        raise EngineError(f'ModelOpt AutoCast could not convert {src!r} to fp16: {err}') from err
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + '.partial')
    onnx.save(model, os.fspath(partial))
    before, after = onnx_io_specs(src), onnx_io_specs(partial)
    if before != after:
        partial.unlink()
        raise EngineError(f'fp16 conversion of {src!r} changed the graph inputs or outputs: {before} -> {after}')
    os.replace(partial, out_path)
    return out_path


def fp16_graph(
    onnx_path: str | os.PathLike[str],
    calibration_feeds: Mapping[str, np.ndarray] | None = None,
    rebuild: bool = False,
) -> Path:
    """The fp16 graph of an fp32 ONNX file (:func:`fp16_onnx_path`), converted when it is not there yet.

    Args:
        onnx_path: the fp32 graph.
        calibration_feeds: one real example of the inputs (see :func:`convert_to_fp16`); needed to convert.
        rebuild: convert even when the fp16 graph exists.

    Raises:
        EngineError: no fp16 graph and no feeds to make one, or the conversion failed.
    """
    half = fp16_onnx_path(onnx_path)
    if rebuild or not half.is_file():
        if calibration_feeds is None:
            raise EngineError(
                f'fp16 graph of {os.fspath(onnx_path)!r}: none at {os.fspath(half)!r} '
                'and no calibration feeds to make one'
            )
        convert_to_fp16(onnx_path, half, calibration_feeds)
    return half


def strongly_typed_flags(trt: Any) -> int:
    """``create_network`` flags: strongly typed (TensorRT 10; accepted and always on in 11)."""
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def build_engine(
    onnx_path: str | os.PathLike[str],
    ranges: Mapping[str, ShapeRange],
    precision: str = 'fp16',
    workspace_bytes: int = 4 << 30,
    rebuild: bool = False,
    calibration_feeds: Mapping[str, np.ndarray] | None = None,
    device: int | None = None,
) -> Path:
    """Build (or find in the cache) the TensorRT engine of an ONNX file, TensorRT 10 or 11.

    The network is always strongly typed. ``fp16`` parses the fp16 graph of the
    ONNX file (:func:`fp16_onnx_path`; made with :func:`convert_to_fp16` when it is
    not there yet, or on ``rebuild``); ``fp32`` parses the file as it is.

    Args:
        onnx_path: the fp32 ONNX graph from ``occ-perception export``.
        ranges: optimisation profile per input (see :func:`shape_ranges`).
        precision: 'fp32' or 'fp16'.
        workspace_bytes: builder workspace memory pool limit [bytes].
        rebuild: build (and convert) even when the cache has the engine.
        calibration_feeds: one real example of the inputs; needed to convert to fp16.
        device: CUDA device ordinal; None for the current device.

    Returns:
        The engine file's path (see :meth:`EngineKey.engine_path`); its full key is
        in the JSON sidecar (:func:`sidecar_path`).

    Raises:
        EngineError: the ONNX file, TensorRT, cuda-python or a GPU is missing, the fp16
            conversion needs feeds or fails, the ONNX parser reports errors (each is
            listed), an input has no shape range, or the builder fails.
    """
    if precision not in PRECISIONS:
        raise EngineError(f'precision: expected one of {PRECISIONS}, got {precision!r}')
    if not os.path.isfile(onnx_path):
        raise EngineError(f'no ONNX file at {os.fspath(onnx_path)!r}')
    trt = import_tensorrt()
    gpu = gpu_info(device)
    cudart = import_cudart()
    cuda_check(cudart, cudart.cudaSetDevice(gpu.index), f'cudaSetDevice({gpu.index})')
    key = EngineKey.create(onnx_path, trt.__version__, gpu, precision, ranges, workspace_bytes)
    target = key.engine_path(onnx_path)
    if not rebuild:
        found, why = cached_engine(key, onnx_path)
        if found is not None:
            return found
        if why:
            log.warning('TensorRT engine cache: %s; building it anew', why)
    sidecar_path(target).unlink(missing_ok=True)  # written again after the engine: no sidecar, no cache hit

    source = fp16_graph(onnx_path, calibration_feeds, rebuild) if precision == 'fp16' else Path(onnx_path)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(source)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(f'TensorRT cannot parse {os.fspath(source)!r}: ' + ' | '.join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    profile = builder.create_optimization_profile()
    names = [network.get_input(index).name for index in range(network.num_inputs)]
    missing = [n for n in names if n not in ranges]
    if missing:
        raise EngineError(f'build_engine: no shape range for network inputs {missing}')
    for name in names:
        r = ranges[name]
        profile.set_shape(name, r.min, r.opt, r.max)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f'TensorRT failed to build an engine from {os.fspath(source)!r} (see its log above)')
    partial = target.with_name(target.name + '.partial')
    with open(partial, 'wb') as stream:
        stream.write(memoryview(serialized))
    os.replace(partial, target)
    sidecar = {'key': key.as_dict(), 'digest': key.digest(), 'parsed_onnx': source.name}
    sidecar_path(target).write_text(json.dumps(sidecar, indent=2, sort_keys=True) + '\n')
    return target
