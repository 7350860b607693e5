"""Backend host-side logic that needs no GPU: feed checks, ONNX specs, engine cache keys,
optimisation profiles, TensorRT I/O mapping and the fp16 conversion for strongly typed builds."""

from __future__ import annotations

import enum
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from occ_perception.runtime.base import (
    BackendError,
    TensorSpec,
    check_feeds,
    match_specs,
)
from occ_perception.runtime.engine import (
    EngineError,
    EngineKey,
    GpuInfo,
    ShapeRange,
    convert_to_fp16,
    import_tensorrt,
    onnx_digest,
    onnx_io_specs,
    shape_ranges,
    sidecar_path,
    trt_major,
)
from occ_perception.runtime.ort_backend import OnnxRuntimeBackend
from occ_perception.runtime.trt_backend import (
    TRT_DTYPES,
    engine_io_specs,
    engine_profile,
)
from onnx import TensorProto, helper

SPECS = (
    TensorSpec('images', 'uint8', (6, 16, 32, 3)),
    TensorSpec('table', 'int64', (None,)),
)


def small_graph(path: Path, weight_seed: int = 0) -> Path:
    """images uint8 (6,16,32,3) + table int64 (n,) -> labels uint8 (n,), score float32 (n, 4).

    score = Gather(mean colour per camera-row, table) @ W; labels = ArgMax(score).
    """
    w = np.random.default_rng(weight_seed).normal(size=(3, 4)).astype(np.float32)
    nodes = [
        helper.make_node('Cast', ['images'], ['f'], to=TensorProto.FLOAT),
        helper.make_node('ReduceMean', ['f', 'axes2'], ['rows'], keepdims=0),  # (6, 16, 3)
        helper.make_node('Reshape', ['rows', 'shape'], ['flat']),  # (96, 3)
        helper.make_node('Gather', ['flat', 'table'], ['picked'], axis=0),  # (n, 3)
        helper.make_node('MatMul', ['picked', 'w'], ['score']),
        helper.make_node('ArgMax', ['score'], ['arg'], axis=1, keepdims=0),
        helper.make_node('Cast', ['arg'], ['labels'], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(
        nodes,
        'small',
        [
            helper.make_tensor_value_info('images', TensorProto.UINT8, [6, 16, 32, 3]),
            helper.make_tensor_value_info('table', TensorProto.INT64, ['n']),
        ],
        [
            helper.make_tensor_value_info('labels', TensorProto.UINT8, ['n']),
            helper.make_tensor_value_info('score', TensorProto.FLOAT, ['n', 4]),
        ],
        initializer=[
            helper.make_tensor('axes2', TensorProto.INT64, [1], [2]),
            helper.make_tensor('shape', TensorProto.INT64, [2], [-1, 3]),
            helper.make_tensor('w', TensorProto.FLOAT, [3, 4], w.reshape(-1).tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def feeds(n: int = 40, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        'images': rng.integers(0, 256, size=(6, 16, 32, 3), dtype=np.uint8),
        'table': rng.integers(0, 96, size=n).astype(np.int64),
    }


def test_check_feeds_names_the_bad_input() -> None:
    check_feeds(SPECS, feeds(), 'graph')
    with pytest.raises(BackendError, match=r"missing \['table'\]"):
        check_feeds(SPECS, {'images': feeds()['images']}, 'graph')
    bad = feeds()
    bad['images'] = bad['images'].astype(np.float32)
    with pytest.raises(BackendError, match='images.*dtype float32'):
        check_feeds(SPECS, bad, 'graph')
    bad = feeds()
    bad['images'] = bad['images'][:5]
    with pytest.raises(BackendError, match=r'images.*shape \[5, 16, 32, 3\]'):
        check_feeds(SPECS, bad, 'graph')


def test_check_feeds_accepts_torch_tensors() -> None:
    torch = pytest.importorskip('torch')
    check_feeds(SPECS, {k: torch.from_numpy(v) for k, v in feeds().items()}, 'graph')
    with pytest.raises(BackendError, match='images.*dtype float32'):
        check_feeds(SPECS, {'images': torch.zeros(6, 16, 32, 3), 'table': torch.zeros(3, dtype=torch.int64)}, 'graph')


def test_match_specs_refuses_another_configuration() -> None:
    match_specs(SPECS, SPECS, 'engine')
    other = (TensorSpec('images', 'uint8', (6, 32, 64, 3)), TensorSpec('table', 'int64', (None,)))
    with pytest.raises(BackendError, match='images: shape'):
        match_specs(SPECS, other, 'engine')
    with pytest.raises(BackendError, match="unexpected tensors \\['history_bev'\\]"):
        match_specs(SPECS, SPECS + (TensorSpec('history_bev', 'float32', (2, 64, 200, 200)),), 'engine')


def test_onnx_io_specs_and_onnxruntime_backend(tmp_path: Path) -> None:
    path = small_graph(tmp_path / 'small.onnx')
    inputs, outputs = onnx_io_specs(path)
    assert inputs == SPECS
    assert [o.name for o in outputs] == ['labels', 'score'] and outputs[1].shape == (None, 4)
    backend = OnnxRuntimeBackend(path)
    assert backend.inputs == SPECS
    out = backend.run(feeds())
    assert out['labels'].dtype == np.uint8 and out['labels'].shape == (40,)
    np.testing.assert_array_equal(out['labels'], out['score'].argmax(1))
    with pytest.raises(BackendError, match='table'):
        backend.run({'images': feeds()['images'], 'table': feeds()['table'].astype(np.int32)})
    with pytest.raises(BackendError, match='no ONNX file'):
        OnnxRuntimeBackend(tmp_path / 'missing.onnx')
    with pytest.raises(BackendError, match='device'):
        OnnxRuntimeBackend(path, device='tpu')


def test_torch_backend_matches_onnxruntime(tmp_path: Path) -> None:
    torch = pytest.importorskip('torch')
    from occ_perception.runtime.torch_backend import TorchBackend

    path = small_graph(tmp_path / 'small.onnx')
    w = torch.from_numpy(onnx.numpy_helper.to_array(onnx.load(str(path)).graph.initializer[2]).copy())

    class Small(torch.nn.Module):
        def forward(self, images: torch.Tensor, table: torch.Tensor):
            rows = images.float().mean(dim=2).reshape(-1, 3)
            score = rows[table] @ w
            return score.argmax(1).to(torch.uint8), score

    f = feeds()
    ref = TorchBackend(Small(), SPECS, ['labels', 'score']).run(f)
    ort = OnnxRuntimeBackend(path).run(f)
    assert isinstance(ref['score'], np.ndarray) and isinstance(ref['labels'], np.ndarray)
    np.testing.assert_allclose(ref['score'], ort['score'], rtol=1e-5, atol=1e-5)


def test_engine_key_and_path(tmp_path: Path) -> None:
    path = small_graph(tmp_path / 'occ_tiny.onnx')
    gpu = GpuInfo(0, 'NVIDIA GeForce RTX 3090', '8.6')
    ranges = shape_ranges(SPECS, feeds(n=1000), headroom=2.0, exact=('images',))
    key = EngineKey.create(path, '10.13.0.35', gpu, 'fp16', ranges, 4 << 30)
    assert key.onnx_sha256 == onnx_digest(path) and len(key.onnx_sha256) == 64
    assert dict(key.as_dict()['profile']['table']) == {'min': [1], 'opt': [1000], 'max': [2000]}
    engine = key.engine_path(path)
    assert engine.parent == tmp_path
    assert engine.name == f'occ_tiny.fp16.{key.digest()[:16]}.engine'
    assert sidecar_path(engine).name == engine.name + '.json'
    # every build input changes the file name
    other_ranges = shape_ranges(SPECS, feeds(n=1000), headroom=1.5, exact=('images',))
    variants = [
        EngineKey.create(path, '11.4.0', gpu, 'fp16', ranges, 4 << 30),
        EngineKey.create(path, '10.13.0.35', GpuInfo(0, 'NVIDIA A100-SXM4-40GB', '8.6'), 'fp16', ranges, 4 << 30),
        EngineKey.create(path, '10.13.0.35', GpuInfo(0, 'NVIDIA GeForce RTX 3090', '8.9'), 'fp16', ranges, 4 << 30),
        EngineKey.create(path, '10.13.0.35', gpu, 'fp32', ranges, 4 << 30),
        EngineKey.create(path, '10.13.0.35', gpu, 'fp16', other_ranges, 4 << 30),
        EngineKey.create(path, '10.13.0.35', gpu, 'fp16', ranges, 2 << 30),
        EngineKey.create(
            small_graph(tmp_path / 'other.onnx', weight_seed=1), '10.13.0.35', gpu, 'fp16', ranges, 4 << 30
        ),
    ]
    names = {v.engine_path(path) for v in variants}
    assert engine not in names and len(names) == len(variants)
    assert EngineKey.create(path, '10.13.0.35', gpu, 'fp16', dict(reversed(list(ranges.items()))), 4 << 30) == key
    with pytest.raises(EngineError, match='precision'):
        EngineKey.create(path, '10.0', gpu, 'int4', ranges, 1)
    with pytest.raises(EngineError, match='compute_capability'):
        EngineKey.create(path, '10.0', GpuInfo(0, 'gpu', 'sm86'), 'fp16', ranges, 1)
    assert trt_major('10.13.0.35') == 10 and trt_major('11.4.0.106') == 11
    with pytest.raises(EngineError):
        trt_major('ten')


def test_shape_ranges_from_example_feeds() -> None:
    ranges = shape_ranges(SPECS, feeds(n=1000), headroom=1.5)
    assert ranges['images'] == ShapeRange((6, 16, 32, 3), (6, 16, 32, 3), (6, 16, 32, 3))
    assert ranges['table'] == ShapeRange((1,), (1000,), (1500,))
    assert ranges['table'].admits((1400,)) and not ranges['table'].admits((1501,))
    with pytest.raises(EngineError, match='table'):
        shape_ranges(SPECS, {'images': feeds()['images']})
    with pytest.raises(EngineError, match='images'):
        shape_ranges(SPECS, {'images': np.zeros((6, 8, 32, 3), np.uint8), 'table': np.zeros(3, np.int64)})


class FakeMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


class FakeDataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT64 = 2
    UINT8 = 3
    BF16 = 4


class FakeEngine:
    """The part of tensorrt.ICudaEngine's name-based API that the backend reads."""

    def __init__(self, tensors):
        self.tensors = tensors  # name -> (mode, dtype, shape, profile)

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    def get_tensor_name(self, index: int) -> str:
        return list(self.tensors)[index]

    def get_tensor_mode(self, name: str):
        return self.tensors[name][0]

    def get_tensor_dtype(self, name: str):
        return self.tensors[name][1]

    def get_tensor_shape(self, name: str):
        return self.tensors[name][2]

    def get_tensor_profile_shape(self, name: str, profile: int):
        return self.tensors[name][3]


def test_engine_io_specs_map_tensorrt_types_and_dynamic_dims() -> None:
    engine = FakeEngine(
        {
            'images': (FakeMode.INPUT, FakeDataType.UINT8, (6, 256, 704, 3), [(6, 256, 704, 3)] * 3),
            'ranks': (FakeMode.INPUT, FakeDataType.INT64, (-1, 8), [(1, 8), (30000, 8), (60000, 8)]),
            'labels': (FakeMode.OUTPUT, FakeDataType.UINT8, (200, 200, 16), None),
            'flow': (FakeMode.OUTPUT, FakeDataType.FLOAT, (200, 200, 16, 2), None),
        }
    )
    inputs, outputs = engine_io_specs(engine)
    assert inputs == (TensorSpec('images', 'uint8', (6, 256, 704, 3)), TensorSpec('ranks', 'int64', (None, 8)))
    assert [o.name for o in outputs] == ['labels', 'flow'] and outputs[1].dtype == 'float32'
    assert engine_profile(engine, 'ranks') == ShapeRange((1, 8), (30000, 8), (60000, 8))
    bf16 = FakeEngine({'x': (FakeMode.INPUT, FakeDataType.BF16, (1,), None)})
    with pytest.raises(BackendError, match='BF16'):
        engine_io_specs(bf16)
    assert set(TRT_DTYPES.values()) <= {'float32', 'float16', 'int8', 'int32', 'int64', 'bool', 'uint8'}


def test_tensorrt_dtypes_exist_in_torch() -> None:
    torch = pytest.importorskip('torch')
    assert all(isinstance(getattr(torch, v), torch.dtype) for v in TRT_DTYPES.values())


def test_missing_tensorrt_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, 'tensorrt', None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(EngineError, match='pip install tensorrt'):
        import_tensorrt()


def test_fp16_conversion_keeps_io_types_and_results(tmp_path: Path) -> None:
    pytest.importorskip('torch')  # ModelOpt AutoCast imports torch
    pytest.importorskip('modelopt.onnx.autocast', reason='needs nvidia-modelopt (test/requirements-modelopt.txt)')
    path = small_graph(tmp_path / 'small.onnx')
    half = convert_to_fp16(path, tmp_path / 'small.fp16.onnx', feeds(n=500))
    inputs, outputs = onnx_io_specs(half)
    assert inputs == SPECS and outputs[1].dtype == 'float32'
    model = onnx.load(str(half))
    assert any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)
    f = feeds(n=500, seed=3)
    full = OnnxRuntimeBackend(path).run(f)
    reduced = OnnxRuntimeBackend(half).run(f)
    np.testing.assert_allclose(reduced['score'], full['score'], rtol=2e-2, atol=0.5)
    assert (reduced['labels'] == full['labels']).mean() > 0.97


def test_missing_modelopt_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, 'modelopt.onnx.autocast', None)
    with pytest.raises(EngineError, match='nvidia-modelopt'):
        convert_to_fp16(small_graph(tmp_path / 'small.onnx'), tmp_path / 'half.onnx', feeds())


def test_backends_return_numpy_and_close(tmp_path: Path) -> None:
    backend = OnnxRuntimeBackend(small_graph(tmp_path / 'small.onnx'))
    out = backend.run(feeds())
    assert all(isinstance(v, np.ndarray) for v in out.values())
    backend.close()
    backend.close()
    with pytest.raises(BackendError, match='after close'):
        backend.run(feeds())
