"""The backend interface shared by torch, onnxruntime and TensorRT.

A backend runs one network graph: named inputs in, named outputs out, batch
size one frame. Inputs are checked against the graph's declared names, dtypes
and shapes before they are handed to the engine, so that a mismatch is a
clear :class:`BackendError` naming the tensor, never a crash deep inside a
runtime.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..tensors import TensorSpec

__all__ = ['Backend', 'BackendError', 'TensorSpec', 'check_feeds']


class BackendError(RuntimeError):
    """A backend cannot be created (missing library, bad file) or was fed the wrong tensors."""


def _shape_of(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in value.shape)


def _dtype_of(value: Any) -> str:
    dtype = value.dtype
    if isinstance(dtype, np.dtype):
        return dtype.name
    # torch dtypes print as 'torch.float32'
    return str(dtype).replace('torch.', '')


def check_feeds(specs: Sequence[TensorSpec], feeds: Mapping[str, Any], where: str) -> None:
    """Check that ``feeds`` holds exactly the inputs in ``specs`` with matching dtype and shape.

    Works for numpy arrays and torch tensors (anything with ``.shape`` and ``.dtype``).

    Raises:
        BackendError: naming ``where``, the tensor, and what was expected.
    """
    expected = {s.name for s in specs}
    missing = sorted(expected - set(feeds))
    extra = sorted(set(feeds) - expected)
    if missing or extra:
        raise BackendError(f'{where}: inputs do not match the graph: missing {missing}, unexpected {extra}')
    for spec in specs:
        value = feeds[spec.name]
        dtype = _dtype_of(value)
        if dtype != spec.dtype:
            raise BackendError(f'{where}: input {spec.describe()} got dtype {dtype}')
        shape = _shape_of(value)
        if len(shape) != len(spec.shape) or any(e is not None and e != s for e, s in zip(spec.shape, shape)):
            raise BackendError(f'{where}: input {spec.describe()} got shape {list(shape)}')


class Backend(ABC):
    """One loaded network graph.

    Subclasses set :attr:`inputs` and :attr:`outputs`, implement :meth:`_run`, and
    override :meth:`close` when they hold a session, a context or device memory.
    Every backend returns numpy arrays on the host from :meth:`run`.
    """

    name: str = 'backend'
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Run the graph once.

        Args:
            feeds: input name -> array (numpy, or a torch tensor where the backend accepts one).

        Returns:
            output name -> numpy array on the host (every backend; device outputs are copied back).

        Raises:
            BackendError: the feeds do not match the graph's inputs.
        """
        check_feeds(self.inputs, feeds, self.name)
        return self._run(feeds)

    @abstractmethod
    def _run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Run with already-checked feeds; return numpy arrays."""

    def close(self) -> None:  # noqa: B027 - a no-op unless the backend holds something
        """Release what the backend holds (session, execution context, device memory). Safe to call twice."""

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.outputs)


def match_specs(expected: Sequence[TensorSpec], actual: Sequence[TensorSpec], where: str) -> None:
    """Check that a loaded graph's inputs or outputs are the ones the model configuration expects.

    Names and dtypes must agree, and every fixed dimension of ``expected`` must
    be fixed to the same size in ``actual``, so that an engine built for another
    configuration is refused at load time instead of failing mid-run.

    Raises:
        BackendError: listing every difference, naming ``where``.
    """
    problems = []
    actual_by_name = {s.name: s for s in actual}
    for spec in expected:
        got = actual_by_name.get(spec.name)
        if got is None:
            problems.append(f'missing {spec.describe()}')
            continue
        if got.dtype != spec.dtype:
            problems.append(f'{spec.name}: dtype {got.dtype}, expected {spec.dtype}')
        if len(got.shape) != len(spec.shape) or any(e is not None and e != g for e, g in zip(spec.shape, got.shape)):
            problems.append(f'{spec.name}: shape {got.describe()}, expected {spec.describe()}')
    extra = sorted(set(actual_by_name) - {s.name for s in expected})
    if extra:
        problems.append(f'unexpected tensors {extra}')
    if problems:
        raise BackendError(f'{where} does not match the model configuration: ' + '; '.join(problems))
