"""OccNet on a non-square, off-centre grid (160 x 240 x 16): axis order of heads, history warp, forward and export.

A square grid would hide an x/y transposition; here X = 160 and Y = 240 differ and the ego is not in the middle.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip('torch')  # absent in the Python 3.10 compatibility run

from occ_perception.geometry import Transform, bev_warp_affine
from occ_perception.model.bev import HistoryWarp
from occ_perception.model.config import get_config
from occ_perception.model.heads import HeightHead
from occ_perception.model.network import OccNet
from occ_perception.runtime.export import export_onnx, graph_op_types, sample_inputs
from occ_perception.runtime.ort_backend import OnnxRuntimeBackend
from occ_perception.runtime.torch_backend import TorchBackend
from test_splat_tables import WIDE_GRID


def wide_net(history: int = 0, seed: int = 0) -> OccNet:
    torch.manual_seed(seed)
    return OccNet(replace(get_config('tiny', history=history), name='tiny-160x240', grid=WIDE_GRID)).eval()


def test_head_puts_a_bev_cell_at_its_x_y_voxels() -> None:
    """A BEV feature (1, C, Y, X) non-zero only at (ix, iy) changes the head's output only around [ix, iy, :]."""
    torch.manual_seed(0)
    head = HeightHead(4, 16, 3).eval()
    ix, iy = 10, 200  # iy beyond X: a transposed head could not even index it
    bev = torch.zeros(1, 4, 240, 160)
    with torch.no_grad():
        base = head(bev)
        bev[0, :, iy, ix] = torch.tensor([1.0, -2.0, 3.0, 0.5])
        out = head(bev)
    assert out.shape == (160, 240, 16, 3)
    changed = torch.nonzero((out - base).abs().amax(dim=(2, 3)) > 1e-6).tolist()
    assert changed and {tuple(c) for c in changed} <= {(ix + a, iy + b) for a in (-1, 0, 1) for b in (-1, 0, 1)}
    assert [ix, iy] in changed


def test_history_warp_on_non_square_grid() -> None:
    """0.4 m forward shifts the previous map one cell toward -x; 0.4 m left one cell toward -y."""
    warp = HistoryWarp((160, 240))
    prev = torch.randn(1, 3, 240, 160)
    start = Transform.from_yaw(0.0, (10.0, 3.0, 0.0))
    for motion, shifted in (
        ((10.4, 3.0), lambda m: (m[..., :-1], prev[..., 1:])),
        ((10.0, 3.4), lambda m: (m[..., :-1, :], prev[..., 1:, :])),
    ):
        theta = torch.tensor(
            bev_warp_affine(start, Transform.from_yaw(0.0, (*motion, 0.0)), WIDE_GRID)[:2], dtype=torch.float32
        )
        moved = warp(prev, theta[None], torch.ones(1))
        assert moved.shape == (1, 3, 240, 160)
        a, b = shifted(moved)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_forward_predict_and_encode_bev_agree() -> None:
    net = wide_net(history=1)
    feeds = {k: torch.from_numpy(v) for k, v in sample_inputs(net, seed=1).items()}
    tables = dict(zip(net.table_names(), net.tables_from(feeds)))
    with torch.no_grad():
        labels, confidence, flow, bev_feature = net(**feeds)
        logits, flow_p, bev_p, _ = net.predict(
            feeds['images'], tables, feeds['history_bev'], feeds['history_theta'], feeds['history_valid']
        )
        bev_float = net.encode_bev(feeds['images'].float(), tables)
    assert labels.shape == confidence.shape == (160, 240, 16) and labels.dtype == torch.uint8
    assert flow.shape == (160, 240, 16, 2) and bev_feature.shape == (8, 240, 160)  # tiny caches 8 channels
    assert logits.shape == (160, 240, 16, 18) and flow_p is not None
    assert bev_p.shape == bev_float.shape == (32, 240, 160)  # the splatted feature
    torch.testing.assert_close(logits.argmax(-1).to(torch.uint8), labels)
    torch.testing.assert_close(flow_p, flow)
    with torch.no_grad():
        torch.testing.assert_close(net.cache_feature(bev_p), bev_feature)
    torch.testing.assert_close(bev_float, bev_p)  # uint8 and float 0..255 images give the same feature
    assert len(torch.unique(labels)) > 1


def test_predict_is_differentiable() -> None:
    net = wide_net().train()
    feeds = {k: torch.from_numpy(v) for k, v in sample_inputs(net, seed=2).items()}
    images = feeds.pop('images').float().requires_grad_(True)
    logits, flow, bev, _ = net.predict(images, feeds)
    (logits.logsumexp(-1).mean() + flow.square().mean()).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert net.occ_head.predicter[2].weight.grad is not None


def test_export_on_non_square_grid(tmp_path: Path) -> None:
    net = wide_net(history=1, seed=3)
    path = export_onnx(net, tmp_path / 'wide.onnx')
    feeds = sample_inputs(net, seed=4)
    out = OnnxRuntimeBackend(path).run(feeds)
    ref = TorchBackend(net, net.input_specs(), net.output_names()).run(feeds)
    assert out['labels'].shape == (160, 240, 16) and out['bev_feature'].shape == (8, 240, 160)
    assert float((out['labels'] == ref['labels']).mean()) >= 0.999
    np.testing.assert_allclose(out['bev_feature'], ref['bev_feature'], atol=1e-4, rtol=1e-4)
    assert np.abs(out['flow'] - ref['flow']).max() < 1e-3
    ops = graph_op_types(path)
    assert 'GridSample' in ops and 'ScatterElements' not in ops
