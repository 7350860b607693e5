"""TensorRT backend (TensorRT 10 and 11 Python API, GPU only).

Runs a serialized engine with the name-based tensor API: input shapes via
``set_input_shape``, every tensor bound by device address with
``set_tensor_address``, and ``execute_async_v3`` on a CUDA stream. Memory is
torch's: torch CUDA tensors passed in are bound as they are (no copy when
contiguous and on the engine's device), numpy inputs are copied to the device
once, and outputs are torch CUDA tensors allocated per run.

``tensorrt`` is imported when a backend is created, never at module import,
so this module loads (and its host-side helpers are tested) without a GPU.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from .base import Backend, BackendError, TensorSpec
from .engine import ShapeRange, import_tensorrt

__all__ = ['TRT_DTYPES', 'TensorRTBackend', 'engine_io_specs', 'engine_profile']

# TensorRT DataType member names -> numpy dtype names
TRT_DTYPES = {
    'FLOAT': 'float32',
    'HALF': 'float16',
    'INT8': 'int8',
    'INT32': 'int32',
    'INT64': 'int64',
    'BOOL': 'bool',
    'UINT8': 'uint8',
}


def engine_io_specs(engine: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs of an ICudaEngine as TensorSpecs (dimension -1 becomes None).

    Raises:
        BackendError: a tensor has a type numpy cannot hold (bf16, fp8, int4).
    """
    inputs, outputs = [], []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        dtype_name = engine.get_tensor_dtype(name).name
        if dtype_name not in TRT_DTYPES:
            raise BackendError(f'tensorrt: tensor {name!r} has type {dtype_name}, which this backend does not bind')
        shape = tuple(None if int(d) < 0 else int(d) for d in engine.get_tensor_shape(name))
        spec = TensorSpec(name, TRT_DTYPES[dtype_name], shape)
        (inputs if engine.get_tensor_mode(name).name == 'INPUT' else outputs).append(spec)
    return tuple(inputs), tuple(outputs)


def engine_profile(engine: Any, name: str, profile: int = 0) -> ShapeRange:
    """The optimisation profile's (min, opt, max) shapes of input ``name``."""
    lo, opt, hi = engine.get_tensor_profile_shape(name, profile)
    return ShapeRange(tuple(int(d) for d in lo), tuple(int(d) for d in opt), tuple(int(d) for d in hi))


class TensorRTBackend(Backend):
    """Runs a serialized TensorRT engine.

    Args:
        engine_path: the ``.engine`` file (see :func:`~occ_perception.runtime.engine.build_engine`).
        device: CUDA device index.

    Outputs are torch CUDA tensors on ``device``; the call returns after the
    engine has finished (the stream is synchronised).

    Raises:
        BackendError: TensorRT, torch CUDA or the engine file is missing, or the
            engine cannot be deserialised (built by another TensorRT version or for another GPU).
    """

    name = 'tensorrt'

    def __init__(self, engine_path: str | os.PathLike[str], device: int = 0) -> None:
        import torch

        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise BackendError('tensorrt backend: needs a CUDA device; torch sees none')
        if not os.path.isfile(engine_path):
            raise BackendError(f'tensorrt backend: no engine file at {os.fspath(engine_path)!r}')
        self.torch = torch
        self.device = torch.device('cuda', device)
        torch.cuda.set_device(self.device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with open(engine_path, 'rb') as stream:
            self.engine = self.runtime.deserialize_cuda_engine(stream.read())
        if self.engine is None:
            raise BackendError(
                f'tensorrt backend: cannot deserialise {os.fspath(engine_path)!r} '
                f'(built with another TensorRT version or for another GPU?); rebuild it'
            )
        self.inputs, self.outputs = engine_io_specs(self.engine)
        self.profiles = {s.name: engine_profile(self.engine, s.name) for s in self.inputs}
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(self.device)

    def _to_device(self, value: Any) -> Any:
        torch = self.torch
        if isinstance(value, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(value)).to(self.device, non_blocking=True)
        return value.to(self.device, non_blocking=True).contiguous()

    def _run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        torch = self.torch
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            bound = {}
            for spec in self.inputs:
                tensor = self._to_device(feeds[spec.name])
                shape = tuple(tensor.shape)
                if not self.profiles[spec.name].admits(shape):
                    r = self.profiles[spec.name]
                    raise BackendError(
                        f'tensorrt: input {spec.name} of shape {list(shape)} is outside the engine profile '
                        f'min {list(r.min)} max {list(r.max)}; rebuild the engine for this rig'
                    )
                if not self.context.set_input_shape(spec.name, shape):
                    raise BackendError(f'tensorrt: set_input_shape refused {spec.name} {list(shape)}')
                self.context.set_tensor_address(spec.name, tensor.data_ptr())
                bound[spec.name] = tensor  # keep alive until the stream is done
            results = {}
            for spec in self.outputs:
                shape = tuple(int(d) for d in self.context.get_tensor_shape(spec.name))
                out = torch.empty(shape, dtype=getattr(torch, spec.dtype), device=self.device)
                self.context.set_tensor_address(spec.name, out.data_ptr())
                results[spec.name] = out
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise BackendError('tensorrt: execute_async_v3 failed (see the TensorRT log)')
        self.stream.synchronize()
        return results
