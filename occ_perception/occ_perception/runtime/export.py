"""ONNX export of :class:`~occ_perception.model.network.OccNet` and checks of the exported op set.

The graph's inputs and outputs are named as in :mod:`occ_perception.model.network`;
the camera count and every splat table length are dynamic axes, so one file serves
any rig. After export, ``onnx.checker`` runs and the op set is checked against what
the stock TensorRT 10 ONNX parser handles natively (:data:`FORBIDDEN_OPS`).
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    'ExportError',
    'FORBIDDEN_OPS',
    'OPSET',
    'check_op_set',
    'export_onnx',
    'graph_op_types',
    'sample_inputs',
]

OPSET = 17
"""ONNX opset (GridSample needs 16+; TensorRT 10 parses up to 20+)."""

FORBIDDEN_OPS: tuple[str, ...] = ('CumSum', 'ScatterElements', 'ScatterND', 'NonZero', 'Loop', 'If')
"""Ops the graph must not contain: a scatter with a reduction (plugin or rejected in TensorRT 10),
CumSum (slow, fp16-unsafe), and data-dependent control flow / shapes. Any custom domain is
rejected as well."""


class ExportError(RuntimeError):
    """Export failed, or the exported graph contains an op TensorRT would not parse natively."""


def sample_inputs(net: Any, rig: Any = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Example feeds for ``net``: random uint8 images, splat tables for ``rig`` and a valid history.

    Args:
        net: an :class:`OccNet`.
        rig: a :class:`~occ_perception.rig.Rig`; default the nuScenes rig.
        seed: seed of the random images and history.

    Returns:
        input name -> numpy array, in :meth:`OccNet.input_specs` order.
    """
    from ..model.splat_tables import build_splat_tables
    from ..rig import Rig

    cfg = net.config
    rig = rig if rig is not None else Rig.nuscenes()
    tables = build_splat_tables(cfg, rig.matrices(*cfg.image_size))
    rng = np.random.default_rng(seed)
    w, h = cfg.image_size
    feeds: dict[str, np.ndarray] = {'images': rng.integers(0, 256, (len(rig), h, w, 3), dtype=np.uint8)}
    feeds.update(tables)
    if cfg.history:
        k = cfg.history
        x_size, y_size = cfg.bev_size
        theta = np.zeros((k, 2, 3), dtype=np.float32)
        for i in range(k):  # small rotation and shift, different per slot
            a = 0.02 * (i + 1)
            theta[i] = [[np.cos(a), -np.sin(a), 0.01 * (i + 1)], [np.sin(a), np.cos(a), -0.02 * (i + 1)]]
        feeds['history_bev'] = rng.standard_normal((k, cfg.cache_channels, y_size, x_size)).astype(np.float32)
        feeds['history_theta'] = theta
        feeds['history_valid'] = np.ones(k, dtype=np.float32)
    return {s.name: feeds[s.name] for s in net.input_specs()}


def graph_op_types(model: Any) -> dict[str, int]:
    """Op type -> count in an ONNX model (a path or an ``onnx.ModelProto``), subgraphs included.

    Ops of a non-default domain are listed as ``domain::OpType``.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model), load_external_data=False)
    counts: Counter[str] = Counter()

    def walk(graph: Any) -> None:
        for node in graph.node:
            counts[node.op_type if node.domain in ('', 'ai.onnx') else f'{node.domain}::{node.op_type}'] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return dict(sorted(counts.items()))


def check_op_set(model: Any) -> dict[str, int]:
    """Raise unless the model's ops are all in the default domain and none is in :data:`FORBIDDEN_OPS`.

    Returns:
        the op counts (:func:`graph_op_types`).

    Raises:
        ExportError: naming the offending ops.
    """
    ops = graph_op_types(model)
    bad = sorted(op for op in ops if op in FORBIDDEN_OPS or '::' in op)
    if bad:
        raise ExportError(f'exported graph contains ops TensorRT 10 would not parse natively: {bad}')
    return ops


def export_onnx(
    net: Any, path: str | os.PathLike[str], rig: Any = None, opset: int | None = None, dynamo: bool = False
) -> Path:
    """Export ``net`` (an :class:`OccNet`) to ONNX at ``path``, then run the checker and the op-set check.

    The camera count and table lengths are dynamic axes. The default exporter is
    the TorchScript-based one (``dynamo=False``; deprecated but present in torch 2.13,
    fast, and the path the tests cover in full); ``dynamo=True`` uses the
    torch.export-based exporter (needs onnxscript) and gives the same op set.

    Args:
        net: the network (put in eval mode here).
        path: output file (a single file, weights inside); parent folders are created.
        rig: rig for the example inputs (default nuScenes); the graph does not depend on it.
        opset: ONNX opset; default :data:`OPSET` (18 with ``dynamo``, its lowest native opset).
        dynamo: use the torch.export-based exporter.

    Returns:
        the written path.

    Raises:
        ExportError: the exporter, the checker or the op-set check failed.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    specs = net.input_specs()
    feeds = sample_inputs(net, rig)
    args = tuple(torch.from_numpy(feeds[s.name]) for s in specs)
    names: dict[str, Any] = dict(input_names=[s.name for s in specs], output_names=list(net.output_names()))
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter('ignore')
            if dynamo:
                from torch.export import Dim

                def dims(spec: Any) -> dict[int, Any] | None:
                    return {i: Dim.DYNAMIC for i, d in enumerate(spec.shape) if d is None} or None

                # forward's parameters are named after the graph inputs
                shapes = {s.name: dims(s) for s in specs}
                torch.onnx.export(
                    net,
                    args,
                    os.fspath(path),
                    **names,
                    dynamic_shapes=shapes,
                    opset_version=opset or 18,
                    dynamo=True,
                    external_data=False,
                    verbose=False,
                )
            else:
                dynamic = {s.name: {i: f'{s.name}_dim{i}' for i, d in enumerate(s.shape) if d is None} for s in specs}
                torch.onnx.export(
                    net,
                    args,
                    os.fspath(path),
                    **names,
                    dynamic_axes={k: v for k, v in dynamic.items() if v},
                    opset_version=opset or OPSET,
                    dynamo=False,
                    do_constant_folding=True,
                )
    except Exception as err:  # the exporters raise many types
        raise ExportError(f'ONNX export of {net.config.name} failed: {err}') from err
    try:
        onnx.checker.check_model(os.fspath(path))
    except Exception as err:  # onnx.checker.ValidationError and friends
        raise ExportError(f'onnx.checker rejected {path}: {err}') from err
    check_op_set(os.fspath(path))
    return path
