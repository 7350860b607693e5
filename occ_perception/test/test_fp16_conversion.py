"""fp16 conversion for strongly typed TensorRT builds, on the real exported graphs.

The fp32 export of ``tiny`` (history 2) and of ``flashocc-m0`` (history 1) is converted
with :func:`convert_to_fp16` (ModelOpt AutoCast, calibrated on real example feeds);
both graphs then run under onnxruntime CPU on the same feeds and must agree on the
labels. The conversion runs in a child process with a time limit, so that a converter
that never returns fails the test instead of hanging the run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('modelopt.onnx.autocast', reason='needs nvidia-modelopt (test/requirements-modelopt.txt)')

import onnx
from occ_perception.model.config import get_config
from occ_perception.model.network import OccNet
from occ_perception.runtime.engine import convert_to_fp16, onnx_io_specs  # noqa: F401
from occ_perception.runtime.export import export_onnx, sample_inputs
from occ_perception.runtime.ort_backend import OnnxRuntimeBackend

CONVERT_TIMEOUT_S = 300  # M0 converts in about 40 s on two busy cores

CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from occ_perception.runtime.engine import convert_to_fp16
    with np.load(sys.argv[3]) as data:
        feeds = {name: data[name] for name in data.files}
    convert_to_fp16(sys.argv[1], sys.argv[2], feeds)
""")


def convert_with_time_limit(src: Path, dst: Path, feeds: dict[str, np.ndarray]) -> Path:
    npz = dst.with_suffix('.feeds.npz')
    np.savez(npz, **feeds)
    try:
        done = subprocess.run(
            [sys.executable, '-c', CHILD, str(src), str(dst), str(npz)],
            check=False,
            capture_output=True,
            text=True,
            timeout=CONVERT_TIMEOUT_S,
            cwd=Path(__file__).resolve().parents[1],
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f'fp16 conversion of {src.name} did not finish within {CONVERT_TIMEOUT_S} s')
    assert done.returncode == 0, done.stderr[-3000:]
    return dst


@pytest.mark.parametrize(('config', 'history'), [('tiny', 2), ('flashocc-m0', 1)])
def test_fp16_graph_agrees_with_fp32(tmp_path: Path, config: str, history: int) -> None:
    torch.manual_seed(1234)
    net = OccNet(get_config(config, history=history))
    full = export_onnx(net, tmp_path / f'{config}.onnx')
    feeds = sample_inputs(net)
    half = convert_with_time_limit(full, tmp_path / f'{config}.fp16.onnx', feeds)

    # inputs and outputs keep their types: uint8 images, int64 tables, uint8 labels, float32 history and flow
    assert onnx_io_specs(half) == onnx_io_specs(full)
    types = {s.name: s.dtype for s in onnx_io_specs(half)[0] + onnx_io_specs(half)[1]}
    assert types['images'] == 'uint8' and types['labels'] == 'uint8' and types['confidence'] == 'uint8'
    assert all(types[name] == 'int64' for name in net.table_names())
    # most of the network really is fp16
    model = onnx.load(str(half))
    weights = [i for i in model.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    fp16_bytes = sum(int(np.prod(i.dims)) for i in weights if i.data_type == onnx.TensorProto.FLOAT16)
    assert fp16_bytes > 0.5 * sum(int(np.prod(i.dims)) for i in weights)
    # normalisation statistics stay fp32 (the BEV's variance would overflow fp16)
    inferred = onnx.shape_inference.infer_shapes(model).graph
    elem = {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *inferred.input, *inferred.output]}
    norms = [n for n in inferred.node if n.op_type == 'InstanceNormalization']
    assert (len(norms) > 0) == (net.config.norm == 'group')
    assert all(elem.get(n.input[0]) == onnx.TensorProto.FLOAT for n in norms)

    # same feeds, another frame of images than the calibration one
    feeds['images'] = np.random.default_rng(7).integers(0, 256, feeds['images'].shape, dtype=np.uint8)
    ref = OnnxRuntimeBackend(full).run(feeds)
    out = OnnxRuntimeBackend(half).run(feeds)
    assert out['labels'].dtype == np.uint8 and out['labels'].shape == ref['labels'].shape
    agree = float((out['labels'] == ref['labels']).mean())
    assert agree >= 0.99, f'{config}: fp16 labels agree with fp32 on {agree:.4f} of voxels'
    assert len(np.unique(ref['labels'])) > 1  # not a degenerate all-one-class output
    np.testing.assert_allclose(out['bev_feature'], ref['bev_feature'], rtol=0.05, atol=0.05)


def test_export_cli_writes_the_fp16_graph_where_build_engine_looks(tmp_path: Path) -> None:
    """``occ-perception export --fp16`` writes the mixed graph beside the fp32 file, named by its digest
    (:func:`fp16_onnx_path`, what ``build-engine --precision fp16`` reuses), and it runs on onnxruntime CPU."""
    from occ_perception.runtime.engine import fp16_onnx_path

    out = tmp_path / 'tiny_k2.onnx'
    cmd = [sys.executable, '-m', 'occ_perception.cli', 'export', '--config', 'tiny', '--history', '2']
    done = subprocess.run(
        [*cmd, '--out', str(out), '--fp16'],
        check=False,
        capture_output=True,
        text=True,
        timeout=CONVERT_TIMEOUT_S,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    half = fp16_onnx_path(out)
    assert half.is_file() and str(half) in done.stdout
    assert onnx_io_specs(half) == onnx_io_specs(out)
    initializers = onnx.load(str(half)).graph.initializer
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in initializers)
    net = OccNet(get_config('tiny', history=2))
    labels = OnnxRuntimeBackend(half).run(sample_inputs(net, seed=3))['labels']
    assert labels.shape == (200, 200, 16) and labels.dtype == np.uint8
