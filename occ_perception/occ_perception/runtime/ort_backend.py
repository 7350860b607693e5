"""onnxruntime backend: CPU by default, CUDA or TensorRT execution providers where present."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .base import Backend, BackendError, TensorSpec

__all__ = ['ORT_TYPES', 'OnnxRuntimeBackend']

# onnxruntime's type strings -> numpy dtype names
ORT_TYPES = {
    'tensor(float)': 'float32',
    'tensor(float16)': 'float16',
    'tensor(double)': 'float64',
    'tensor(uint8)': 'uint8',
    'tensor(int8)': 'int8',
    'tensor(int32)': 'int32',
    'tensor(int64)': 'int64',
    'tensor(bool)': 'bool',
}

PROVIDERS = {
    'cpu': ['CPUExecutionProvider'],
    'cuda': ['CUDAExecutionProvider', 'CPUExecutionProvider'],
    'tensorrt': ['TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider'],
}


def _spec(node: Any) -> TensorSpec:
    dtype = ORT_TYPES.get(node.type)
    if dtype is None:
        raise BackendError(f'onnxruntime: tensor {node.name!r} has unsupported type {node.type}')
    shape = tuple(d if isinstance(d, int) else None for d in node.shape)
    return TensorSpec(node.name, dtype, shape)


class OnnxRuntimeBackend(Backend):
    """Runs an ONNX file with onnxruntime.

    Args:
        path: the .onnx file.
        device: ``'cpu'``, ``'cuda'`` or ``'tensorrt'`` (execution providers, with
            fallbacks in that order to what the installed onnxruntime offers).
        threads: intra-op threads; 0 lets onnxruntime choose.

    Raises:
        BackendError: onnxruntime is not installed, the file is missing or invalid,
            or the requested device has no provider in this onnxruntime build.
    """

    name = 'onnxruntime'

    def __init__(self, path: str | os.PathLike[str], device: str = 'cpu', threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:  # pragma: no cover - depends on the install
            raise BackendError('onnxruntime backend: the onnxruntime package is not installed') from err
        if device not in PROVIDERS:
            raise BackendError(f'onnxruntime backend: device must be one of {sorted(PROVIDERS)}, got {device!r}')
        if not os.path.isfile(path):
            raise BackendError(f'onnxruntime backend: no ONNX file at {os.fspath(path)!r}')
        available = set(ort.get_available_providers())
        providers: Sequence[str] = [p for p in PROVIDERS[device] if p in available]
        if PROVIDERS[device][0] not in available:
            raise BackendError(
                f'onnxruntime backend: device {device!r} needs {PROVIDERS[device][0]}, '
                f'this onnxruntime has {sorted(available)}'
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session: Any = None
        try:
            self.session = ort.InferenceSession(os.fspath(path), sess_options=options, providers=list(providers))
        except Exception as err:  # onnxruntime raises its own exception types
            raise BackendError(f'onnxruntime backend: cannot load {os.fspath(path)!r}: {err}') from err
        self.device = device
        self.inputs = tuple(_spec(n) for n in self.session.get_inputs())
        self.outputs = tuple(_spec(n) for n in self.session.get_outputs())

    def _run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if self.session is None:
            raise BackendError('onnxruntime backend: run after close()')
        arrays = {k: np.ascontiguousarray(_to_numpy(v)) for k, v in feeds.items()}
        values = self.session.run(list(self.output_names), arrays)
        return dict(zip(self.output_names, values))

    def close(self) -> None:
        """Drop the inference session (onnxruntime frees its memory with it)."""
        self.session = None


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    detach = getattr(value, 'detach', None)
    if detach is not None:  # a torch tensor
        return detach().cpu().numpy()
    return np.asarray(value)
