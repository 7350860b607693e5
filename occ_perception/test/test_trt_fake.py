"""build_engine and TensorRTBackend end to end on the host, with fake ``tensorrt`` and fake ``cuda-python``.

The fakes implement the parts of the TensorRT 10/11 Python API and of the CUDA
runtime bindings that the code calls, with their real names and return
conventions (cuda-python returns ``(err, value...)`` tuples). The fake "device
memory" is host memory, so copies in both directions are real byte copies and the
fake engine computes real outputs from what was copied in. No torch is needed.
"""

from __future__ import annotations

import ctypes
import enum
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from occ_perception.runtime.base import BackendError, TensorSpec
from occ_perception.runtime.engine import (
    EngineError,
    build_engine,
    fp16_onnx_path,
    shape_ranges,
    sidecar_path,
)
from occ_perception.runtime.trt_backend import TensorRTBackend
from onnx import TensorProto, helper

INPUTS = (TensorSpec('images', 'uint8', (None, 4, 8, 3)), TensorSpec('table', 'int64', (None,)))
OUTPUTS = (TensorSpec('labels', 'uint8', (None,)), TensorSpec('score', 'float32', (None, 4)))


def graph(path: Path, scale: float = 2.0) -> Path:
    """images uint8 (cams, 4, 8, 3) + table int64 (n,) -> labels uint8 (n,), score float32 (n, 4)."""
    nodes = [
        helper.make_node('Cast', ['table'], ['t'], to=TensorProto.FLOAT),
        helper.make_node('Unsqueeze', ['t', 'axis1'], ['col']),
        helper.make_node('Mul', ['col', 'w'], ['score']),
        helper.make_node('Cast', ['table'], ['labels'], to=TensorProto.UINT8),
    ]
    g = helper.make_graph(
        nodes,
        'fake',
        [
            helper.make_tensor_value_info('images', TensorProto.UINT8, ['cams', 4, 8, 3]),
            helper.make_tensor_value_info('table', TensorProto.INT64, ['n']),
        ],
        [
            helper.make_tensor_value_info('labels', TensorProto.UINT8, ['n']),
            helper.make_tensor_value_info('score', TensorProto.FLOAT, ['n', 4]),
        ],
        initializer=[
            helper.make_tensor('axis1', TensorProto.INT64, [1], [1]),
            helper.make_tensor('w', TensorProto.FLOAT, [1, 4], [scale, 2 * scale, 3 * scale, 4 * scale]),
        ],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)], ir_version=8), str(path))
    return path


def example(cams: int = 6, n: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        'images': rng.integers(0, 256, (cams, 4, 8, 3), dtype=np.uint8),
        'table': rng.integers(0, 200, n).astype(np.int64),
    }


# ---------------------------------------------------------------------------------------------- fake cuda-python


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorNoDevice = 100


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class FakeStream:
    def __init__(self, handle: int) -> None:
        self.handle = handle

    def __int__(self) -> int:
        return self.handle


class FakeCudart(types.ModuleType):
    """``cuda.bindings.runtime`` as far as the code uses it; "device" memory is host memory it owns."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind

    def __init__(self, name: str = 'NVIDIA Fake GPU', cc: tuple[int, int] = (8, 6), devices: int = 1) -> None:
        super().__init__('cuda.bindings.runtime')
        self.gpu_name, self.cc, self.devices = name, cc, devices
        self.memory: dict[int, ctypes.Array] = {}
        self.streams: set[int] = set()
        self.copies: list[tuple[str, int]] = []
        self.fail: dict[str, cudaError_t] = {}
        self.current = 0

    def _status(self, call: str) -> cudaError_t:
        return self.fail.get(call, cudaError_t.cudaSuccess)

    def cudaGetDeviceCount(self):
        if self.devices == 0:
            return (cudaError_t.cudaErrorNoDevice, 0)
        return (self._status('cudaGetDeviceCount'), self.devices)

    def cudaGetDevice(self):
        return (self._status('cudaGetDevice'), self.current)

    def cudaSetDevice(self, device: int):
        self.current = device
        return (self._status('cudaSetDevice'),)

    def cudaGetDeviceProperties(self, device: int):
        props = types.SimpleNamespace(name=self.gpu_name.encode() + b'\0' * 8, major=self.cc[0], minor=self.cc[1])
        return (self._status('cudaGetDeviceProperties'), props)

    def cudaMalloc(self, size: int):
        if 'cudaMalloc' in self.fail:
            return (self.fail['cudaMalloc'], 0)
        buffer = ctypes.create_string_buffer(size)
        self.memory[ctypes.addressof(buffer)] = buffer
        return (cudaError_t.cudaSuccess, ctypes.addressof(buffer))

    def cudaFree(self, pointer: int):
        del self.memory[pointer]
        return (cudaError_t.cudaSuccess,)

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: cudaMemcpyKind, stream: FakeStream):
        assert int(stream) in self.streams
        device = dst if kind == cudaMemcpyKind.cudaMemcpyHostToDevice else src
        assert any(p <= device and device + count <= p + len(b) for p, b in self.memory.items()), 'not device memory'
        ctypes.memmove(dst, src, count)
        self.copies.append((kind.name, count))
        return (self._status('cudaMemcpyAsync'),)

    def cudaStreamCreate(self):
        handle = 0x1000 + len(self.streams) + 1
        self.streams.add(handle)
        return (cudaError_t.cudaSuccess, FakeStream(handle))

    def cudaStreamSynchronize(self, stream: FakeStream):
        assert int(stream) in self.streams
        return (self._status('cudaStreamSynchronize'),)

    def cudaStreamDestroy(self, stream: FakeStream):
        self.streams.remove(int(stream))
        return (cudaError_t.cudaSuccess,)


def device_array(cudart: FakeCudart, pointer: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = (ctypes.c_char * count).from_address(pointer)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


# ---------------------------------------------------------------------------------------------- fake tensorrt


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    INT64 = 8


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


ONNX_TO_TRT = {
    TensorProto.FLOAT: DataType.FLOAT,
    TensorProto.FLOAT16: DataType.HALF,
    TensorProto.UINT8: DataType.UINT8,
    TensorProto.INT64: DataType.INT64,
}


class FakeNetwork:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.tensors: list[dict] = []

    @property
    def num_inputs(self) -> int:
        return sum(t['mode'] == 'INPUT' for t in self.tensors)

    def get_input(self, index: int):
        return types.SimpleNamespace(name=[t for t in self.tensors if t['mode'] == 'INPUT'][index]['name'])


class FakeParser:
    def __init__(self, network: FakeNetwork, logger) -> None:
        self.network = network
        self.errors: list[str] = []

    def parse_from_file(self, path: str) -> bool:
        model = onnx.load(path)
        if any(n.op_type == 'Unsupported' for n in model.graph.node):
            self.errors = ['In node 0 (Unsupported): No importer registered for op: Unsupported']
            return False
        trt = sys.modules['tensorrt']
        trt.parsed.append(path)
        for mode, values in (('INPUT', model.graph.input), ('OUTPUT', model.graph.output)):
            for v in values:
                dims = [d.dim_value if d.HasField('dim_value') else -1 for d in v.type.tensor_type.shape.dim]
                self.network.tensors.append(
                    {
                        'name': v.name,
                        'mode': mode,
                        'shape': dims,
                        'dtype': ONNX_TO_TRT[v.type.tensor_type.elem_type].name,
                    }
                )
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> str:
        return self.errors[index]


class FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, list] = {}

    def set_shape(self, name, lo, opt, hi) -> None:
        self.shapes[name] = [list(lo), list(opt), list(hi)]


class FakeConfig:
    def __init__(self) -> None:
        self.flags: list = []
        self.pools: dict = {}
        self.profiles: list[FakeProfile] = []

    def set_flag(self, flag) -> None:
        self.flags.append(flag)

    def set_memory_pool_limit(self, pool, size: int) -> None:
        self.pools[pool] = size

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class FakeBuilder:
    def __init__(self, logger) -> None:
        self.trt = sys.modules['tensorrt']

    def create_network(self, flags: int) -> FakeNetwork:
        self.trt.network_flags.append(flags)
        return FakeNetwork(flags)

    def create_builder_config(self) -> FakeConfig:
        return FakeConfig()

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile()

    def build_serialized_network(self, network: FakeNetwork, config: FakeConfig):
        self.trt.builds.append(
            {
                'flags': network.flags,
                'builder_flags': list(config.flags),
                'workspace': config.pools,
                'profile': config.profiles[0].shapes,
            }
        )
        plan = {'tensors': network.tensors, 'profile': config.profiles[0].shapes}
        return json.dumps(plan).encode()


class FakeEngine:
    def __init__(self, plan: dict) -> None:
        self.tensors = {t['name']: t for t in plan['tensors']}
        self.profile = plan['profile']

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    def get_tensor_name(self, index: int) -> str:
        return list(self.tensors)[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode[self.tensors[name]['mode']]

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[self.tensors[name]['dtype']]

    def get_tensor_shape(self, name: str) -> list[int]:
        return self.tensors[name]['shape']

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[list[int]]:
        return self.profile[name]

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


class FakeContext:
    """Computes the fake graph: labels = uint8(table), score = table[:, None] * w."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.executed = 0

    def set_input_shape(self, name: str, shape) -> bool:
        lo, _, hi = self.engine.profile[name]
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        n = self.shapes['table'][0]
        return {'labels': (n,), 'score': (n, 4)}.get(name, self.shapes.get(name))

    def set_tensor_address(self, name: str, pointer: int) -> bool:
        self.addresses[name] = pointer
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        cudart = sys.modules['cuda.bindings.runtime']
        assert isinstance(stream_handle, int) and stream_handle in cudart.streams
        assert set(self.addresses) == set(self.engine.tensors), 'every tensor must be bound'
        n = self.shapes['table'][0]
        table = device_array(cudart, self.addresses['table'], 'int64', (n,))
        device_array(cudart, self.addresses['labels'], 'uint8', (n,))[:] = table.astype(np.uint8)
        device_array(cudart, self.addresses['score'], 'float32', (n, 4))[:] = table[:, None] * np.float32([2, 4, 6, 8])
        self.executed += 1
        return True


class FakeRuntime:
    def __init__(self, logger) -> None:
        pass

    def deserialize_cuda_engine(self, data: bytes):
        try:
            return FakeEngine(json.loads(data))
        except ValueError:
            return None


def fake_tensorrt(version: str) -> types.ModuleType:
    trt = types.ModuleType('tensorrt')
    trt.__version__ = version
    major = int(version.split('.')[0])
    trt.NetworkDefinitionCreationFlag = enum.IntEnum(
        'NetworkDefinitionCreationFlag', {'EXPLICIT_BATCH': 0, 'STRONGLY_TYPED': 1}
    )
    # TensorRT 11 removed the weak-typing precision flags
    flags = {'TF32': 7} if major >= 11 else {'FP16': 0, 'INT8': 1, 'TF32': 7}
    trt.BuilderFlag = enum.IntEnum('BuilderFlag', flags)
    trt.MemoryPoolType = enum.IntEnum('MemoryPoolType', {'WORKSPACE': 0})
    trt.Logger = type('Logger', (), {'WARNING': 2, '__init__': lambda self, severity=2: None})
    trt.Builder, trt.OnnxParser, trt.Runtime = FakeBuilder, FakeParser, FakeRuntime
    trt.DataType, trt.TensorIOMode = DataType, TensorIOMode
    trt.network_flags, trt.builds, trt.parsed = [], [], []
    return trt


@pytest.fixture()
def fakes(monkeypatch):
    """Install fake tensorrt 10 and cuda-python; returns a function to switch them."""

    def install(version: str = '10.13.0.35', cudart: FakeCudart | None = None) -> tuple[types.ModuleType, FakeCudart]:
        trt = fake_tensorrt(version)
        cudart = cudart or FakeCudart()
        bindings = types.ModuleType('cuda.bindings')
        bindings.runtime = cudart
        cuda = types.ModuleType('cuda')
        cuda.bindings = bindings
        monkeypatch.setitem(sys.modules, 'tensorrt', trt)
        monkeypatch.setitem(sys.modules, 'cuda', cuda)
        monkeypatch.setitem(sys.modules, 'cuda.bindings', bindings)
        monkeypatch.setitem(sys.modules, 'cuda.bindings.runtime', cudart)
        return trt, cudart

    return install


def ranges_for(cams: int = 6, n: int = 50, headroom: float = 2.0):
    return shape_ranges(INPUTS, example(cams, n), headroom=headroom, exact=('images',))


# ---------------------------------------------------------------------------------------------- build_engine


@pytest.mark.parametrize('version', ['10.13.0.35', '11.4.0.106'])
@pytest.mark.parametrize('precision', ['fp32', 'fp16'])
def test_build_is_strongly_typed_and_fp16_parses_the_fp16_graph(tmp_path, fakes, version, precision) -> None:
    trt, _ = fakes(version)
    onnx_path = graph(tmp_path / 'net.onnx')
    if precision == 'fp16':  # converted earlier (ModelOpt), reused from beside the fp32 file
        graph(fp16_onnx_path(onnx_path), scale=2.0)
    engine = build_engine(onnx_path, ranges_for(), precision=precision, workspace_bytes=1 << 30)
    strongly_typed = 1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED.value
    assert trt.network_flags == [strongly_typed]
    (build,) = trt.builds
    assert build['builder_flags'] == []  # never BuilderFlag.FP16: precision comes from the graph's types
    assert list(build['workspace'].values()) == [1 << 30]
    assert build['profile']['images'] == [[6, 4, 8, 3]] * 3
    assert build['profile']['table'] == [[1], [50], [100]]
    expected_source = fp16_onnx_path(onnx_path) if precision == 'fp16' else onnx_path
    assert trt.parsed == [str(expected_source)]
    assert engine.is_file() and engine.parent == tmp_path and f'.{precision}.' in engine.name
    key = json.loads(sidecar_path(engine).read_text())['key']
    assert key['trt_version'] == version and key['compute_capability'] == '8.6' and key['precision'] == precision
    assert key['gpu_name'] == 'NVIDIA Fake GPU' and key['workspace_bytes'] == 1 << 30
    assert key['profile']['table'] == {'min': [1], 'opt': [50], 'max': [100]}


def test_fp16_build_converts_with_the_calibration_feeds(tmp_path, fakes, monkeypatch) -> None:
    from occ_perception.runtime import engine as engine_module

    trt, _ = fakes('11.4.0.106')
    onnx_path = graph(tmp_path / 'net.onnx')
    with pytest.raises(EngineError, match='no calibration feeds'):
        build_engine(onnx_path, ranges_for(), precision='fp16')
    calls = []

    def convert(src, dst, feeds):
        calls.append((Path(src), Path(dst), sorted(feeds)))
        return graph(Path(dst))

    monkeypatch.setattr(engine_module, 'convert_to_fp16', convert)
    build_engine(onnx_path, ranges_for(), precision='fp16', calibration_feeds=example())
    assert calls == [(onnx_path, fp16_onnx_path(onnx_path), ['images', 'table'])]
    assert trt.parsed == [str(fp16_onnx_path(onnx_path))]


def test_cache_hit_miss_on_every_key_change_and_rebuild(tmp_path, fakes) -> None:
    trt, cudart = fakes()
    onnx_path = graph(tmp_path / 'net.onnx')
    first = build_engine(onnx_path, ranges_for(), precision='fp32')
    assert build_engine(onnx_path, ranges_for(), precision='fp32') == first and len(trt.builds) == 1  # hit
    assert build_engine(onnx_path, ranges_for(), precision='fp32', rebuild=True) == first and len(trt.builds) == 2
    seen = {first}

    def miss(path: Path) -> None:
        assert path not in seen and path.is_file() and sidecar_path(path).is_file()
        seen.add(path)

    count = len(trt.builds)
    miss(build_engine(onnx_path, ranges_for(headroom=3.0), precision='fp32'))  # table headroom
    miss(build_engine(onnx_path, ranges_for(cams=4), precision='fp32'))  # camera count
    miss(build_engine(onnx_path, ranges_for(), precision='fp32', workspace_bytes=1 << 30))  # workspace
    graph(fp16_onnx_path(onnx_path))
    miss(build_engine(onnx_path, ranges_for(), precision='fp16'))  # precision
    cudart.cc = (8, 9)
    miss(build_engine(onnx_path, ranges_for(), precision='fp32'))  # compute capability
    cudart.gpu_name = 'NVIDIA Other GPU'
    miss(build_engine(onnx_path, ranges_for(), precision='fp32'))  # GPU name
    trt.__version__ = '10.14.1.48'
    miss(build_engine(onnx_path, ranges_for(), precision='fp32'))  # TensorRT version
    graph(onnx_path, scale=3.0)
    miss(build_engine(onnx_path, ranges_for(), precision='fp32'))  # ONNX content
    assert len(trt.builds) == count + 8


def test_a_cached_engine_without_its_exact_key_is_rebuilt_never_loaded(tmp_path, fakes) -> None:
    """The engine file is used only with a sidecar holding exactly the wanted key; otherwise it is rebuilt."""
    trt, _ = fakes()
    onnx_path = graph(tmp_path / 'net.onnx')
    engine = build_engine(onnx_path, ranges_for(), precision='fp32')
    key = json.loads(sidecar_path(engine).read_text())
    builds = len(trt.builds)

    def damage(edit) -> None:
        nonlocal builds
        edit()
        assert build_engine(onnx_path, ranges_for(), precision='fp32') == engine
        assert len(trt.builds) == builds + 1, 'the stale engine was used instead of a rebuild'
        assert json.loads(sidecar_path(engine).read_text()) == key
        builds += 1

    damage(lambda: sidecar_path(engine).unlink())  # a build interrupted between the two writes
    damage(lambda: sidecar_path(engine).write_text('{"key": '))  # a sidecar cut short
    stale = dict(key, key=dict(key['key'], trt_version='8.6.1'), digest='0' * 64)
    damage(lambda: sidecar_path(engine).write_text(json.dumps(stale)))  # another key under this name
    damage(lambda: engine.write_bytes(b''))  # an empty engine file
    assert build_engine(onnx_path, ranges_for(), precision='fp32') == engine and len(trt.builds) == builds  # hit


def test_build_errors_are_engine_errors(tmp_path, fakes, monkeypatch) -> None:
    onnx_path = graph(tmp_path / 'net.onnx')
    with pytest.raises(EngineError, match='no ONNX file'):
        build_engine(tmp_path / 'missing.onnx', ranges_for())
    monkeypatch.setitem(sys.modules, 'tensorrt', None)
    with pytest.raises(EngineError, match='pip install tensorrt'):
        build_engine(onnx_path, ranges_for(), precision='fp32')
    fakes(cudart=FakeCudart(devices=0))
    with pytest.raises(EngineError, match='cudaErrorNoDevice'):
        build_engine(onnx_path, ranges_for(), precision='fp32')
    fakes()
    monkeypatch.setitem(sys.modules, 'cuda.bindings', None)
    monkeypatch.setitem(sys.modules, 'cuda', types.ModuleType('cuda'))
    with pytest.raises(EngineError, match='pip install cuda-python'):
        build_engine(onnx_path, ranges_for(), precision='fp32')
    fakes()
    with pytest.raises(EngineError, match="no shape range for network inputs \\['table'\\]"):
        build_engine(onnx_path, {'images': ranges_for()['images']}, precision='fp32')
    bad = onnx.load(str(onnx_path))
    bad.graph.node.append(helper.make_node('Unsupported', ['table'], ['x']))
    onnx.save(bad, str(tmp_path / 'bad.onnx'))
    with pytest.raises(EngineError, match='No importer registered for op: Unsupported'):
        build_engine(tmp_path / 'bad.onnx', ranges_for(), precision='fp32')
    assert not list(tmp_path.glob('*.engine'))


def test_older_cuda_python_module_layout(tmp_path, fakes, monkeypatch) -> None:
    """cuda-python before 12.6 (some JetPacks) has ``from cuda import cudart`` only."""
    _, cudart = fakes()
    monkeypatch.setitem(sys.modules, 'cuda.bindings', None)
    cuda = types.ModuleType('cuda')
    cuda.cudart = cudart
    monkeypatch.setitem(sys.modules, 'cuda', cuda)
    assert build_engine(graph(tmp_path / 'net.onnx'), ranges_for(), precision='fp32').is_file()


# ---------------------------------------------------------------------------------------------- TensorRTBackend


@pytest.fixture()
def engine_file(tmp_path, fakes) -> Path:
    fakes()
    return build_engine(graph(tmp_path / 'net.onnx'), ranges_for(), precision='fp32')


def test_backend_binds_runs_copies_back_and_closes(engine_file, fakes) -> None:
    _, cudart = fakes()
    backend = TensorRTBackend(engine_file, expected_inputs=INPUTS, expected_outputs=OUTPUTS)
    assert backend.inputs == INPUTS and backend.outputs == OUTPUTS
    for n in (50, 80, 20):  # the buffers grow for 80 and are reused for 20
        feeds = example(n=n, seed=n)
        out = backend.run(feeds)
        assert backend.context.shapes == {'images': (6, 4, 8, 3), 'table': (n,)}
        assert set(backend.context.addresses) == {'images', 'table', 'labels', 'score'}
        assert isinstance(out['labels'], np.ndarray) and out['labels'].dtype == np.uint8
        np.testing.assert_array_equal(out['labels'], feeds['table'].astype(np.uint8))
        np.testing.assert_array_equal(out['score'], feeds['table'][:, None] * np.float32([2, 4, 6, 8]))
    assert ('cudaMemcpyHostToDevice', 80 * 8) in cudart.copies and (
        'cudaMemcpyDeviceToHost',
        80 * 4 * 4,
    ) in cudart.copies
    assert len(cudart.memory) == 4 and len(cudart.streams) == 1
    with pytest.raises(BackendError, match='outside the engine profile'):
        backend.run(example(n=101))
    with pytest.raises(BackendError, match='table.*dtype int32'):
        backend.run({'images': example()['images'], 'table': example()['table'].astype(np.int32)})
    backend.close()
    assert not cudart.memory and not cudart.streams and backend.context is None
    backend.close()
    with pytest.raises(BackendError, match='after close'):
        backend.run(example())


def test_backend_refuses_an_engine_of_another_configuration(engine_file, fakes) -> None:
    _, cudart = fakes()
    other = (TensorSpec('images', 'uint8', (None, 8, 16, 3)), TensorSpec('table', 'int64', (None,)))
    with pytest.raises(BackendError, match='does not match the model configuration.*images: shape'):
        TensorRTBackend(engine_file, expected_inputs=other)
    more = OUTPUTS + (TensorSpec('flow', 'float32', (None, 2)),)
    with pytest.raises(BackendError, match='missing flow'):
        TensorRTBackend(engine_file, expected_inputs=INPUTS, expected_outputs=more)
    assert not cudart.memory and not cudart.streams


def test_backend_errors(engine_file, tmp_path, fakes) -> None:
    _, cudart = fakes()
    with pytest.raises(BackendError, match='no engine file'):
        TensorRTBackend(tmp_path / 'missing.engine')
    (tmp_path / 'junk.engine').write_bytes(b'\x00junk')
    with pytest.raises(BackendError, match='cannot deserialise'):
        TensorRTBackend(tmp_path / 'junk.engine')
    backend = TensorRTBackend(engine_file)
    cudart.fail['cudaMalloc'] = cudaError_t.cudaErrorMemoryAllocation
    with pytest.raises(BackendError, match='cudaMalloc.*cudaErrorMemoryAllocation'):
        backend.run(example())
    del cudart.fail['cudaMalloc']
    assert backend.run(example())['labels'].shape == (50,)
    backend.close()


def test_tensorrt_path_imports_no_torch(package_dir) -> None:
    """engine.py and trt_backend.py load with torch unimportable (a TensorRT machine without torch)."""
    code = (
        'import sys\n'
        'class NoTorch:\n'
        '    def find_spec(self, name, path=None, target=None):\n'
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked')\n"
        'sys.meta_path.insert(0, NoTorch())\n'
        'import occ_perception.runtime.engine, occ_perception.runtime.trt_backend\n'
        "assert 'torch' not in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, '-c', code], check=False, cwd=package_dir, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
