"""Naive baselines written only for ``occ-perception bench`` to compare against: never used by the product.

Each baseline computes what one of our paths computes, the obvious slow way, so that the benchmark
can measure both side by side on the same inputs and check that they agree:

- :func:`scatter_splat_onnx`: the splat as one ONNX ``ScatterElements(reduction='add')`` over
  BEVPoolv2-style ranks (what the table graph of :mod:`occ_perception.model.splat` replaces);
- :class:`EncoderOnly` and :func:`export_encoder_onnx`: the image-encoder half of the network (images
  and splat tables to the BEV feature), run K extra times per frame to recompute K history frames
  instead of keeping them in the temporal cache;
- :func:`naive_semantic_occupancy_msg`, :func:`naive_occupancy_flow_msg`: the uint8[] / uint32[] /
  float32[] fields filled element by element in Python loops, as naive rclpy code does, instead of
  one bytes copy;
- :func:`naive_marker_array_msg`: one geometry_msgs/Point made per occupied voxel (all of them, not
  only the surface), in a Python loop, without a cache.

These are per-voxel Python loops on purpose: they are the baselines.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..grid import CLASS_NAMES, FREE_LABEL, class_colors
from ..messages import MSG_PACKAGE, MessageTypes
from ..messages import _grid_info as grid_info_msg
from ..model.splat_tables import splat_table_names
from ..outputs import OccFrame, _flow_marker, _marker

__all__ = [
    'BaselineError',
    'EncoderOnly',
    'export_encoder_onnx',
    'naive_marker_array_msg',
    'naive_occupancy_flow_msg',
    'naive_semantic_occupancy_msg',
    'scatter_splat_onnx',
]


class BaselineError(RuntimeError):
    """A baseline graph cannot be built or exported."""


def scatter_splat_onnx(path: str | os.PathLike[str], bev_size: tuple[int, int], channels: int) -> Path:
    """Write the ScatterElements(add) splat graph to ``path``.

    Inputs: ``depth`` (N, D, H, W) float32, ``feat`` (N, C, H, W) float32, ``ranks_depth``, ``ranks_feat``,
    ``ranks_bev`` (P,) int64 (:func:`~occ_perception.model.splat_reference.splat_ranks`). Output ``bev``
    (C, Y, X) float32 with ``bev_size`` = (X, Y): the sum over points p of depth[rd[p]] * feat_row[rf[p]]
    into cell rb[p] (flat index iy * X + ix).

    Raises:
        BaselineError: the ONNX checker rejects the graph.
    """
    import onnx
    from onnx import TensorProto, helper

    x_size, y_size = int(bev_size[0]), int(bev_size[1])
    c = int(channels)

    def const(name: str, values: list[int]) -> Any:
        return helper.make_node(
            'Constant', [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values)
        )

    nodes = [
        const('flat_shape', [-1]),
        const('rows_shape', [-1, c]),
        const('axis1', [1]),
        const('out_rows', [y_size * x_size, c]),
        const('bev_shape', [c, y_size, x_size]),
        helper.make_node('Reshape', ['depth', 'flat_shape'], ['depth_flat']),
        helper.make_node('Gather', ['depth_flat', 'ranks_depth'], ['d'], axis=0),  # (P,)
        helper.make_node('Transpose', ['feat'], ['feat_nhwc'], perm=[0, 2, 3, 1]),
        helper.make_node('Reshape', ['feat_nhwc', 'rows_shape'], ['feat_rows']),  # (N*H*W, C)
        helper.make_node('Gather', ['feat_rows', 'ranks_feat'], ['f'], axis=0),  # (P, C)
        helper.make_node('Unsqueeze', ['d', 'axis1'], ['d_col']),
        helper.make_node('Mul', ['d_col', 'f'], ['values']),  # (P, C)
        helper.make_node('Unsqueeze', ['ranks_bev', 'axis1'], ['cell_col']),
        helper.make_node('Shape', ['values'], ['values_shape']),
        helper.make_node('Expand', ['cell_col', 'values_shape'], ['cells']),  # (P, C)
        helper.make_node(
            'ConstantOfShape',
            ['out_rows'],
            ['zeros'],
            value=helper.make_tensor('zero', TensorProto.FLOAT, [1], [0.0]),
        ),
        helper.make_node('ScatterElements', ['zeros', 'cells', 'values'], ['dense'], axis=0, reduction='add'),
        helper.make_node('Transpose', ['dense'], ['dense_t'], perm=[1, 0]),
        helper.make_node('Reshape', ['dense_t', 'bev_shape'], ['bev']),
    ]
    graph = helper.make_graph(
        nodes,
        'scatter_splat_baseline',
        [
            helper.make_tensor_value_info('depth', TensorProto.FLOAT, ['N', 'D', 'H', 'W']),
            helper.make_tensor_value_info('feat', TensorProto.FLOAT, ['N', c, 'H', 'W']),
            helper.make_tensor_value_info('ranks_depth', TensorProto.INT64, ['P']),
            helper.make_tensor_value_info('ranks_feat', TensorProto.INT64, ['P']),
            helper.make_tensor_value_info('ranks_bev', TensorProto.INT64, ['P']),
        ],
        [helper.make_tensor_value_info('bev', TensorProto.FLOAT, [c, y_size, x_size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    model.ir_version = 8
    try:
        onnx.checker.check_model(model)
    except Exception as err:  # onnx.checker.ValidationError and friends
        raise BaselineError(f'scatter splat baseline: the ONNX checker rejected the graph: {err}') from err
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, os.fspath(path))
    return path


class EncoderOnly(nn.Module):
    """The image-encoder half of an :class:`~occ_perception.model.network.OccNet`: images and splat tables to
    the (C_cache, Y, X) feature the temporal cache holds (:meth:`OccNet.cache_feature` of
    :meth:`OccNet.encode_bev`); what recomputing a history frame costs."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor, *tables: torch.Tensor) -> torch.Tensor:
        bev = self.net.encode_bev(images, dict(zip(splat_table_names(), tables)))  # type: ignore[operator]
        return self.net.cache_feature(bev)  # type: ignore[operator]


def export_encoder_onnx(net: nn.Module, feeds: dict[str, np.ndarray], path: str | os.PathLike[str]) -> Path:
    """Export :class:`EncoderOnly` of ``net`` with inputs ``images`` and the splat tables taken from ``feeds``;
    output ``bev_feature`` (C_cache, Y, X).

    Raises:
        BaselineError: the export failed.
    """
    names = ['images', *splat_table_names()]
    args = tuple(torch.from_numpy(feeds[n]) for n in names)
    dynamic = {n: {i: f'{n}_{i}' for i in range(feeds[n].ndim)} for n in names if n != 'splat_cell_index'}
    path = Path(path)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter('ignore')
            torch.onnx.export(
                EncoderOnly(net.eval()),
                args,
                os.fspath(path),
                input_names=names,
                output_names=['bev_feature'],
                dynamic_axes=dynamic,
                opset_version=17,
                dynamo=False,
            )
    except Exception as err:  # the exporter raises many types
        raise BaselineError(f'encoder-only export to {path} failed: {err}') from err
    return path


def naive_semantic_occupancy_msg(frame: OccFrame, types: MessageTypes) -> Any:
    """``SemanticOccupancy`` of ``frame`` with labels and confidence assigned voxel by voxel in [x, y, z] order.

    The same message as :func:`occ_perception.outputs.semantic_occupancy_msg` (same CDR bytes), built with
    one Python assignment per voxel and field instead of a bytes copy.
    """
    sx, sy, sz = frame.grid.shape
    labels_in, confidence_in = frame.labels, frame.confidence
    labels = np.zeros(sx * sy * sz, np.uint8)
    confidence = np.zeros(0 if confidence_in is None else sx * sy * sz, np.uint8)
    i = 0
    for x in range(sx):
        for y in range(sy):
            for z in range(sz):
                labels[i] = labels_in[x, y, z]
                if confidence_in is not None:
                    confidence[i] = confidence_in[x, y, z]
                i += 1
    return types.make(
        f'{MSG_PACKAGE}/msg/SemanticOccupancy',
        header=types.header(frame.stamp_ns, frame.frame_id),
        info=grid_info_msg(types, frame.grid),
        class_names=list(CLASS_NAMES),
        free_label=int(FREE_LABEL),
        labels=types.pack(labels, 'uint8'),
        confidence=types.pack(confidence, 'uint8'),
    )


def naive_occupancy_flow_msg(frame: OccFrame, types: MessageTypes) -> Any:
    """``OccupancyFlow`` of ``frame``: a Python loop over all voxels appends the index and (vx, vy) of each
    occupied one (label neither free nor 255) element by element. The same message as
    :func:`occ_perception.outputs.occupancy_flow_msg`.

    Raises:
        BaselineError: the frame has no flow.
    """
    if frame.flow is None:
        raise BaselineError('naive_occupancy_flow_msg: the frame has no flow')
    sx, sy, sz = frame.grid.shape
    labels_in, flow_in = frame.labels, frame.flow
    indices, vx, vy = [], [], []
    i = 0
    for x in range(sx):
        for y in range(sy):
            for z in range(sz):
                label = labels_in[x, y, z]
                if label != FREE_LABEL and label != 255:
                    indices.append(i)
                    vx.append(flow_in[x, y, z, 0])
                    vy.append(flow_in[x, y, z, 1])
                i += 1
    n = len(indices)
    index_field, vx_field, vy_field = np.zeros(n, np.uint32), np.zeros(n, np.float32), np.zeros(n, np.float32)
    for k in range(n):  # element-by-element assignment into the message's arrays
        index_field[k] = indices[k]
        vx_field[k] = vx[k]
        vy_field[k] = vy[k]
    return types.make(
        f'{MSG_PACKAGE}/msg/OccupancyFlow',
        header=types.header(frame.stamp_ns, frame.frame_id),
        info=grid_info_msg(types, frame.grid),
        indices=types.pack(index_field, 'uint32'),
        velocity_x=types.pack(vx_field, 'float32'),
        velocity_y=types.pack(vy_field, 'float32'),
    )


def naive_marker_array_msg(frame: OccFrame, types: MessageTypes, ns: str = 'occupancy', min_speed: float = 0.5) -> Any:
    """visualization_msgs/MarkerArray with one CUBE_LIST per class holding a Point for every occupied voxel
    (not only the surface), each Point made in a Python loop over the voxels, no cache; then the flow arrows
    as :func:`occ_perception.outputs.marker_array_msg` draws them (the same LINE_LIST)."""
    header = types.header(frame.stamp_ns, frame.frame_id)
    marker_cls = types.resolve('visualization_msgs/msg/Marker')
    point_cls = types.resolve('geometry_msgs/msg/Point')
    sx, sy, sz = frame.grid.shape
    lower, v = frame.grid.lower, float(frame.grid.voxel_size)
    per_class: dict[int, list] = {}
    for x in range(sx):
        for y in range(sy):
            for z in range(sz):
                label = int(frame.labels[x, y, z])
                if label == FREE_LABEL or label == 255:
                    continue
                point = point_cls(
                    x=float(lower[0] + (x + 0.5) * v),
                    y=float(lower[1] + (y + 0.5) * v),
                    z=float(lower[2] + (z + 0.5) * v),
                )
                per_class.setdefault(label, []).append(point)
    colors = class_colors().astype(np.float64) / 255.0
    markers = [_marker(types, header, ns, 0, marker_cls.CUBE_LIST, marker_cls.DELETEALL, (1, 1, 1), (0, 0, 0, 0), [])]
    for label in sorted(per_class):
        rgba = (*colors[label], 1.0)
        markers.append(
            _marker(types, header, ns, label, marker_cls.CUBE_LIST, marker_cls.ADD, (v, v, v), rgba, per_class[label])
        )
    if frame.flow is not None:
        markers.append(_flow_marker(frame, types, header, f'{ns}/flow', min_speed, 1.0))
    return types.make('visualization_msgs/msg/MarkerArray', markers=markers)
