"""TensorRT backend (TensorRT 10 and 11 Python API, GPU only, no torch).

Runs a serialized engine with the name-based tensor API: input shapes via
``context.set_input_shape``, every tensor bound by device address with
``set_tensor_address``, and ``execute_async_v3`` on a CUDA stream. Device memory,
copies and the stream come from the CUDA runtime API of NVIDIA's ``cuda-python``
(``cudaMalloc``/``cudaFree``, ``cudaMemcpyAsync``, ``cudaStreamCreate``/``Synchronize``),
so a Jetson or ROS machine runs engines with TensorRT and cuda-python only.
Inputs are numpy arrays (copied host to device), outputs are numpy arrays
(copied device to host), like every other backend.

``tensorrt`` and ``cuda-python`` are imported when a backend is created, never at
module import, so this module loads (and its host-side logic is tested with fakes)
without a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .base import Backend, BackendError, TensorSpec, match_specs
from .engine import ShapeRange, cuda_check, import_cudart, import_tensorrt

__all__ = ['TIMINGS', 'TIMING_EVENTS', 'TRT_DTYPES', 'TensorRTBackend', 'engine_io_specs', 'engine_profile']

TIMING_EVENTS = ('start', 'copied_in', 'engine_done', 'copied_out')
"""The profiling events of one run, in the order they are recorded on the stream."""
TIMINGS = ('h2d_ms', 'engine_ms', 'd2h_ms')
"""``last_timings`` keys: the GPU time between consecutive :data:`TIMING_EVENTS` [ms]."""

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
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
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
    """Runs a serialized TensorRT engine on one CUDA device.

    Args:
        engine_path: the ``.engine`` file (see :func:`~occ_perception.runtime.engine.build_engine`).
        device: CUDA device ordinal.
        expected_inputs: the model configuration's inputs (``OccNet.input_specs()``); when
            given, an engine whose inputs differ (names, dtypes, fixed sizes) is refused.
        expected_outputs: the same for the outputs.
        profile: time every run with CUDA events on the backend's stream (see :attr:`last_timings`).

    ``run`` takes numpy arrays (anything ``numpy.asarray`` accepts) and returns
    numpy arrays on the host, after the engine has finished. Device buffers are
    kept between runs and grown when a larger shape arrives; :meth:`close` frees them.

    With ``profile``, four CUDA events are recorded on the stream of each run: before
    the host-to-device copies, after them (before ``execute_async_v3``), after the
    engine and after the device-to-host copies. Once the stream is synchronised,
    :attr:`last_timings` holds ``{'h2d_ms', 'engine_ms', 'd2h_ms'}`` [ms of GPU time,
    ``cudaEventElapsedTime``] of that run; without ``profile`` it stays empty.

    Raises:
        BackendError: TensorRT, cuda-python, a GPU or the engine file is missing, the
            engine cannot be deserialised (built by another TensorRT version or for
            another GPU), it does not match the expected specs, or a CUDA call fails.
    """

    name = 'tensorrt'

    def __init__(
        self,
        engine_path: str | os.PathLike[str],
        device: int = 0,
        expected_inputs: Sequence[TensorSpec] | None = None,
        expected_outputs: Sequence[TensorSpec] | None = None,
        profile: bool = False,
    ) -> None:
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)
        self._stream: Any = None
        self._events: list[Any] = []  # with profile: start, copied in, engine done, copied out
        self.last_timings: dict[str, float] = {}
        self.context: Any = None
        self.engine: Any = None
        self.runtime: Any = None
        if not os.path.isfile(engine_path):
            raise BackendError(f'tensorrt backend: no engine file at {os.fspath(engine_path)!r}')
        trt = import_tensorrt()
        self.cudart = cudart = import_cudart()
        self.device = int(device)
        cuda_check(cudart, cudart.cudaSetDevice(self.device), f'cudaSetDevice({self.device})')
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
        where = f'engine {os.fspath(engine_path)!r}'
        if expected_inputs is not None:
            match_specs(expected_inputs, self.inputs, f'{where} (inputs)')
        if expected_outputs is not None:
            match_specs(expected_outputs, self.outputs, f'{where} (outputs)')
        self.profiles = {s.name: engine_profile(self.engine, s.name) for s in self.inputs}
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendError(f'tensorrt backend: cannot create an execution context for {where}')
        self._stream = cuda_check(cudart, cudart.cudaStreamCreate(), 'cudaStreamCreate')
        if profile:
            for _ in range(len(TIMING_EVENTS)):
                self._events.append(cuda_check(cudart, cudart.cudaEventCreate(), 'cudaEventCreate'))

    def _mark(self, index: int) -> None:
        """Record profiling event ``index`` on the stream (nothing without ``profile``)."""
        if self._events:
            cudart = self.cudart
            call = f'cudaEventRecord({TIMING_EVENTS[index]})'
            cuda_check(cudart, cudart.cudaEventRecord(self._events[index], self._stream), call)

    def _read_timings(self) -> dict[str, float]:
        """Milliseconds between consecutive profiling events of the finished run."""
        cudart = self.cudart
        cuda_check(cudart, cudart.cudaEventSynchronize(self._events[-1]), 'cudaEventSynchronize')
        timings = {}
        for index, name in enumerate(TIMINGS):
            start, end = self._events[index], self._events[index + 1]
            ms = cuda_check(cudart, cudart.cudaEventElapsedTime(start, end), f'cudaEventElapsedTime({name})')
            timings[name] = float(ms)
        return timings

    def _buffer(self, name: str, nbytes: int) -> int:
        """Device pointer of at least ``nbytes`` for tensor ``name`` (reused, grown when too small)."""
        pointer, capacity = self._buffers.get(name, (0, 0))
        if nbytes <= capacity and pointer:
            return pointer
        cudart = self.cudart
        if pointer:
            del self._buffers[name]
            cuda_check(cudart, cudart.cudaFree(pointer), f'cudaFree({name})')
        size = max(int(nbytes), 1)
        pointer = int(cuda_check(cudart, cudart.cudaMalloc(size), f'cudaMalloc({size} bytes for {name})'))
        self._buffers[name] = (pointer, size)
        return pointer

    def _run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if self.context is None:
            raise BackendError('tensorrt backend: run after close()')
        cudart = self.cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.last_timings = {}
        host = []  # (name, device pointer, array): the arrays stay alive until the stream is synchronised
        for spec in self.inputs:
            array = np.ascontiguousarray(np.asarray(feeds[spec.name]), dtype=spec.dtype)
            shape = tuple(int(d) for d in array.shape)
            r = self.profiles[spec.name]
            if not r.admits(shape):
                raise BackendError(
                    f'tensorrt: input {spec.name} of shape {list(shape)} is outside the engine profile '
                    f'min {list(r.min)} max {list(r.max)}; rebuild the engine for this rig'
                )
            if not self.context.set_input_shape(spec.name, shape):
                raise BackendError(f'tensorrt: set_input_shape refused {spec.name} {list(shape)}')
            pointer = self._buffer(spec.name, array.nbytes)
            if not self.context.set_tensor_address(spec.name, pointer):
                raise BackendError(f'tensorrt: set_tensor_address refused input {spec.name}')
            host.append((spec.name, pointer, array))
        results = {}  # every buffer is bound before the first event: the events time stream work only
        for spec in self.outputs:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise BackendError(f'tensorrt: output {spec.name} has unresolved shape {list(shape)}')
            out = np.empty(shape, dtype=spec.dtype)
            pointer = self._buffer(spec.name, out.nbytes)
            if not self.context.set_tensor_address(spec.name, pointer):
                raise BackendError(f'tensorrt: set_tensor_address refused output {spec.name}')
            results[spec.name] = out
        self._mark(0)
        for name, pointer, array in host:
            if array.nbytes:
                cuda_check(
                    cudart,
                    cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, h2d, self._stream),
                    f'cudaMemcpyAsync host to device ({name})',
                )
        self._mark(1)
        if not self.context.execute_async_v3(int(self._stream)):
            raise BackendError('tensorrt: execute_async_v3 failed (see the TensorRT log)')
        self._mark(2)
        for name, out in results.items():
            if out.nbytes:
                cuda_check(
                    cudart,
                    cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name][0], out.nbytes, d2h, self._stream),
                    f'cudaMemcpyAsync device to host ({name})',
                )
        self._mark(3)
        cuda_check(cudart, cudart.cudaStreamSynchronize(self._stream), 'cudaStreamSynchronize')
        del host
        if self._events:
            self.last_timings = self._read_timings()
        return results

    def close(self) -> None:
        """Free the device buffers, the stream, the execution context and the engine. Safe to call twice."""
        cudart: Any = getattr(self, 'cudart', None)
        errors = []
        if cudart is not None and self._stream is not None:
            try:
                cuda_check(cudart, cudart.cudaStreamSynchronize(self._stream), 'cudaStreamSynchronize')
            except BackendError as err:
                errors.append(str(err))
        # the execution context goes before the engine, the engine before the runtime
        self.context = None
        self.engine = None
        self.runtime = None
        for name, (pointer, _) in list(self._buffers.items()):
            del self._buffers[name]
            try:
                cuda_check(cudart, cudart.cudaFree(pointer), f'cudaFree({name})')
            except BackendError as err:
                errors.append(str(err))
        while self._events:
            event = self._events.pop()
            try:
                cuda_check(cudart, cudart.cudaEventDestroy(event), 'cudaEventDestroy')
            except BackendError as err:
                errors.append(str(err))
        if cudart is not None and self._stream is not None:
            stream, self._stream = self._stream, None
            try:
                cuda_check(cudart, cudart.cudaStreamDestroy(stream), 'cudaStreamDestroy')
            except BackendError as err:
                errors.append(str(err))
        if errors:
            raise BackendError('tensorrt backend: close: ' + '; '.join(errors))
