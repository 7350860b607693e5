"""Tensor descriptions shared by the network and the runtimes (no torch, no numpy needed)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ['TensorSpec']


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of one graph input or output.

    Attributes:
        name: tensor name in the graph.
        dtype: numpy dtype name, e.g. ``'uint8'``, ``'float32'``, ``'int64'``.
        shape: one entry per axis: an int for a fixed size, None for a dynamic one.
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        dims = ', '.join('?' if d is None else str(d) for d in self.shape)
        return f'{self.name}: {self.dtype}[{dims}]'
