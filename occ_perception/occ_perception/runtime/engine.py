"""TensorRT engine builds from ONNX, and the engine cache.

An engine is built on first use and cached next to its ONNX file under a
name that carries everything that invalidates it: the ONNX file's SHA-256,
the TensorRT version, the GPU's name and the precision. A later start with
the same four finds the file and skips the build.

Precision ``fp16`` is reached two ways, as the TensorRT versions require:

- TensorRT 10: a weakly typed network with ``BuilderFlag.FP16``.
- TensorRT 11 (weak typing removed): the ONNX graph is converted to fp16
  (inputs and outputs keep their types) and built as a strongly typed network.

Everything here but :func:`build_engine` runs without TensorRT or a GPU.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .base import BackendError, TensorSpec

__all__ = [
    'PRECISIONS',
    'EngineError',
    'EngineKey',
    'ShapeRange',
    'build_engine',
    'convert_to_fp16',
    'import_tensorrt',
    'onnx_digest',
    'onnx_io_specs',
    'shape_ranges',
    'trt_major',
]

PRECISIONS = ('fp32', 'fp16')


class EngineError(BackendError):
    """An engine cannot be built: TensorRT or a GPU is missing, the parser or builder failed."""


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


def _slug(text: str) -> str:
    return re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-') or 'unknown'


@dataclass(frozen=True)
class EngineKey:
    """What a cached engine depends on.

    Attributes:
        onnx_sha256: hex digest of the ONNX file.
        trt_version: TensorRT version string.
        gpu_name: CUDA device name, e.g. 'NVIDIA GeForce RTX 3090'.
        precision: 'fp32' or 'fp16'.
    """

    onnx_sha256: str
    trt_version: str
    gpu_name: str
    precision: str

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EngineError(f'precision: expected one of {PRECISIONS}, got {self.precision!r}')
        if not re.fullmatch(r'[0-9a-f]{64}', self.onnx_sha256):
            raise EngineError(f'onnx_sha256: expected 64 hex digits, got {self.onnx_sha256!r}')

    @classmethod
    def for_file(cls, onnx_path: str | os.PathLike[str], trt_version: str, gpu_name: str, precision: str) -> 'EngineKey':
        return cls(onnx_digest(onnx_path), str(trt_version), str(gpu_name), precision)

    def engine_path(self, onnx_path: str | os.PathLike[str]) -> Path:
        """Where the engine for this key lives: beside the ONNX file."""
        onnx_path = Path(onnx_path)
        name = f'{onnx_path.stem}.{self.onnx_sha256[:16]}.trt{self.trt_version}.{_slug(self.gpu_name)}.{self.precision}.engine'
        return onnx_path.with_name(name)


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


@dataclass(frozen=True)
class ShapeRange:
    """An optimisation profile entry: smallest, typical and largest shape of one input."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def admits(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.opt) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))


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


def convert_to_fp16(onnx_path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> Path:
    """Write an fp16 copy of an fp32 ONNX graph (inputs and outputs keep their types), for strongly typed builds.

    Raises:
        EngineError: onnxconverter-common is not installed.
    """
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError as err:
        raise EngineError('fp16 conversion needs onnxconverter-common: pip install onnxconverter-common') from err
    model = onnx.load(os.fspath(onnx_path))
    # Cast nodes stay as they are (the converter would retype their outputs but not their 'to'
    # attribute); it wraps them in casts to and from fp16 instead.
    block = list(float16.DEFAULT_OP_BLOCK_LIST) + ['Cast']
    converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    onnx.save(converted, os.fspath(out_path))
    return Path(out_path)


def _gpu_name() -> str:
    import torch

    if not torch.cuda.is_available():
        raise EngineError('building a TensorRT engine needs a CUDA device; torch sees none')
    return torch.cuda.get_device_name(torch.cuda.current_device())


def build_engine(
    onnx_path: str | os.PathLike[str],
    ranges: Mapping[str, ShapeRange],
    precision: str = 'fp16',
    workspace_bytes: int = 4 << 30,
    rebuild: bool = False,
) -> Path:
    """Build (or find in the cache) the TensorRT engine of an ONNX file.

    Args:
        onnx_path: the fp32 ONNX graph from ``occ-perception export``.
        ranges: optimisation profile per input (see :func:`shape_ranges`).
        precision: 'fp32' or 'fp16'.
        workspace_bytes: builder workspace memory pool limit.
        rebuild: build even when the cache has the engine.

    Returns:
        The engine file's path (see :meth:`EngineKey.engine_path`).

    Raises:
        EngineError: TensorRT or a GPU is missing, the ONNX parser reports
            errors (each is listed), or the builder fails.
    """
    trt = import_tensorrt()
    key = EngineKey.for_file(onnx_path, trt.__version__, _gpu_name(), precision)
    target = key.engine_path(onnx_path)
    if target.is_file() and not rebuild:
        return target

    major = trt_major(trt.__version__)
    source = Path(onnx_path)
    flags = 0
    if precision == 'fp16' and major >= 11:
        source = convert_to_fp16(onnx_path, target.with_suffix('.fp16.onnx'))
    if major >= 11 or source != Path(onnx_path):
        # accepted and ignored by 11 (always strongly typed); explicit for clarity
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(source)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(f'TensorRT cannot parse {os.fspath(source)!r}: ' + ' | '.join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if precision == 'fp16' and major < 11:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        name = network.get_input(index).name
        if name not in ranges:
            raise EngineError(f'build_engine: no shape range for network input {name!r}')
        r = ranges[name]
        profile.set_shape(name, r.min, r.opt, r.max)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f'TensorRT failed to build an engine from {os.fspath(source)!r} (see its log above)')
    partial = target.with_suffix('.partial')
    with open(partial, 'wb') as stream:
        stream.write(memoryview(serialized))
    os.replace(partial, target)
    return target
