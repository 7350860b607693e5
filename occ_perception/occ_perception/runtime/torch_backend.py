"""torch backend: the reference implementation, CPU or CUDA."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .base import Backend, BackendError, TensorSpec

__all__ = ['TorchBackend']


class TorchBackend(Backend):
    """Runs a torch module whose ``forward`` takes the inputs positionally and returns a tuple of outputs.

    Args:
        module: the network (put in eval mode here).
        inputs: the input specs, in ``forward``'s argument order.
        output_names: names of the returned tuple's elements, in order.
        device: ``'cpu'`` or ``'cuda'``.

    Feeds may be numpy arrays or torch tensors; outputs are numpy arrays on the host
    (``.cpu().numpy()``), as from every backend.

    Raises:
        BackendError: CUDA requested where torch has none.
    """

    name = 'torch'

    def __init__(
        self, module: torch.nn.Module, inputs: Sequence[TensorSpec], output_names: Sequence[str], device: str = 'cpu'
    ) -> None:
        if device.startswith('cuda') and not torch.cuda.is_available():
            raise BackendError('torch backend: device cuda requested but torch has no CUDA device')
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.inputs = tuple(inputs)
        self.outputs = tuple(TensorSpec(n, 'unknown', ()) for n in output_names)

    def _run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        args = []
        for spec in self.inputs:
            value = feeds[spec.name]
            if isinstance(value, np.ndarray):
                value = torch.from_numpy(np.ascontiguousarray(value))
            args.append(value.to(self.device, non_blocking=True))
        with torch.inference_mode():
            result = self.module(*args)
        if not isinstance(result, (tuple, list)) or len(result) != len(self.outputs):
            raise BackendError(
                f'torch backend: the module returned {type(result).__name__}, expected {len(self.outputs)} outputs'
            )
        return {name: value.detach().cpu().numpy() for name, value in zip(self.output_names, result)}
