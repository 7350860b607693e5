"""build_engine, TensorRTBackend and the GPU bench end to end on the host, with fake ``tensorrt`` and ``cuda-python``.

The fakes implement the parts of the TensorRT 10/11 Python API and of the CUDA
runtime bindings that the code calls, with their real names and return
conventions (cuda-python returns ``(err, value...)`` tuples). The fake "device
memory" is host memory, so copies in both directions are real byte copies, and the
fake engine computes real outputs from what was copied in: it runs the ONNX graph
it was built from with onnxruntime CPU. CUDA events read a fake per-stream GPU
clock that every copy and every engine run advances by known durations, so the
event plumbing (which events, on which stream, in which order) shows in the
timings. Only the GPU bench tests on the shipped model need torch (to export it).
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
from occ_perception.runtime.trt_backend import TRT_DTYPES, TensorRTBackend
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
    cudaErrorNotReady = 600


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
        # fake GPU time: every copy and engine run advances its stream's clock by these [ms]
        self.clock: dict[int, float] = {}
        self.h2d_ms, self.d2h_ms = 0.25, 0.5
        self.engine_ms: list[float] = []  # one per engine run, consumed in order; 3.0 when empty
        self.events: dict[int, FakeEvent] = {}
        self.timeline: list[tuple[str, int]] = []  # (what, stream): 'record <event>', 'H2D', 'execute', 'D2H'

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
        h2d = kind == cudaMemcpyKind.cudaMemcpyHostToDevice
        self.advance(int(stream), 'H2D' if h2d else 'D2H', self.h2d_ms if h2d else self.d2h_ms)
        return (self._status('cudaMemcpyAsync'),)

    def advance(self, stream: int, what: str, ms: float) -> None:
        self.clock[stream] += ms
        self.timeline.append((what, stream))

    def cudaStreamCreate(self):
        handle = 0x1000 + len(self.streams) + 1
        self.streams.add(handle)
        self.clock[handle] = 0.0
        return (cudaError_t.cudaSuccess, FakeStream(handle))

    def cudaStreamSynchronize(self, stream: FakeStream):
        assert int(stream) in self.streams
        for event in self.events.values():
            if event.stream == int(stream):
                event.done = True
        return (self._status('cudaStreamSynchronize'),)

    def cudaEventCreate(self):
        event = FakeEvent(0x2000 + len(self.events) + 1)
        self.events[event.handle] = event
        return (self._status('cudaEventCreate'), event)

    def cudaEventRecord(self, event: FakeEvent, stream: FakeStream):
        assert event.handle in self.events and int(stream) in self.streams
        event.stream, event.time_ms, event.done = int(stream), self.clock[int(stream)], False
        self.timeline.append((f'record {event.handle}', int(stream)))
        return (self._status('cudaEventRecord'),)

    def cudaEventSynchronize(self, event: FakeEvent):
        assert event.handle in self.events and event.stream is not None, 'synchronising an unrecorded event'
        event.done = True
        return (self._status('cudaEventSynchronize'),)

    def cudaEventElapsedTime(self, start: FakeEvent, end: FakeEvent):
        if not (start.done and end.done):  # as CUDA: an event still pending on its stream
            return (cudaError_t.cudaErrorNotReady, 0.0)
        assert start.stream == end.stream
        return (self._status('cudaEventElapsedTime'), end.time_ms - start.time_ms)

    def cudaEventDestroy(self, event: FakeEvent):
        del self.events[event.handle]
        return (cudaError_t.cudaSuccess,)

    def cudaStreamDestroy(self, stream: FakeStream):
        self.streams.remove(int(stream))
        return (cudaError_t.cudaSuccess,)


class FakeEvent:
    """A ``cudaEvent_t``: the fake GPU clock of its stream when it was recorded, and whether it has completed."""

    def __init__(self, handle: int) -> None:
        self.handle = handle
        self.stream: int | None = None
        self.time_ms: float | None = None
        self.done = False

    def __int__(self) -> int:
        return self.handle


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
        self.onnx = ''

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
        self.network.onnx = path
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
        plan = {'tensors': network.tensors, 'profile': config.profiles[0].shapes, 'onnx': network.onnx}
        return json.dumps(plan).encode()


class FakeEngine:
    def __init__(self, plan: dict) -> None:
        self.tensors = {t['name']: t for t in plan['tensors']}
        self.profile = plan['profile']
        self.onnx = plan['onnx']
        self.session = None

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
    """Runs the engine's ONNX graph with onnxruntime CPU on the bound device memory."""

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
        if name in self.shapes:
            return self.shapes[name]
        shape = self.engine.tensors[name]['shape']
        if all(d >= 0 for d in shape):
            return tuple(shape)
        n = self.shapes['table'][0]  # the small test graph: outputs (n,) and (n, 4)
        return {'labels': (n,), 'score': (n, 4)}[name]

    def set_tensor_address(self, name: str, pointer: int) -> bool:
        self.addresses[name] = pointer
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        import onnxruntime as ort

        cudart = sys.modules['cuda.bindings.runtime']
        assert isinstance(stream_handle, int) and stream_handle in cudart.streams
        assert set(self.addresses) == set(self.engine.tensors), 'every tensor must be bound'
        engine = self.engine
        if engine.session is None:
            engine.session = ort.InferenceSession(engine.onnx, providers=['CPUExecutionProvider'])
        dtype = {name: TRT_DTYPES[t['dtype']] for name, t in engine.tensors.items()}
        feeds = {
            name: device_array(cudart, self.addresses[name], dtype[name], self.shapes[name]).copy()
            for name, t in engine.tensors.items()
            if t['mode'] == 'INPUT'
        }
        names = [name for name, t in engine.tensors.items() if t['mode'] == 'OUTPUT']
        outputs = dict(zip(names, engine.session.run(names, feeds)))
        perturb = getattr(sys.modules['tensorrt'], 'perturb', None)
        if perturb is not None:  # a test's stand-in for GPU numerics
            perturb(outputs)
        for name, value in outputs.items():
            device_array(cudart, self.addresses[name], dtype[name], self.get_tensor_shape(name))[...] = value
        durations = cudart.engine_ms
        cudart.advance(stream_handle, 'execute', durations.pop(0) if durations else 3.0)
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


def test_profiled_backend_times_copies_and_engine_with_events_on_its_stream(engine_file, fakes) -> None:
    _, cudart = fakes()
    cudart.engine_ms = [3.0, 7.5]
    plain = TensorRTBackend(engine_file)
    assert not cudart.events
    plain.run(example())
    assert plain.last_timings == {}
    plain.close()
    cudart.timeline.clear()
    backend = TensorRTBackend(engine_file, profile=True)
    events = sorted(cudart.events)
    assert len(events) == 4
    (stream,) = cudart.streams
    for engine_ms in (7.5, 3.0):  # the plain run used 3.0; then 7.5, then the default 3.0
        cudart.timeline.clear()
        out = backend.run(example(n=30))
        np.testing.assert_array_equal(out['labels'], example(n=30)['table'].astype(np.uint8))
        e0, e1, e2, e3 = (f'record {e}' for e in events)
        # two inputs (images, table) copied in, two outputs (labels, score) copied out
        expected = [e0, 'H2D', 'H2D', e1, 'execute', e2, 'D2H', 'D2H', e3]
        assert cudart.timeline == [(what, stream) for what in expected]
        assert backend.last_timings == {'h2d_ms': 2 * 0.25, 'engine_ms': engine_ms, 'd2h_ms': 2 * 0.5}
    backend.close()
    assert not cudart.events and not cudart.streams and not cudart.memory


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
    """engine.py, trt_backend.py and gpu_bench.py load with torch unimportable (a TensorRT machine without torch)."""
    code = (
        'import sys\n'
        'class NoTorch:\n'
        '    def find_spec(self, name, path=None, target=None):\n'
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked')\n"
        'sys.meta_path.insert(0, NoTorch())\n'
        'import occ_perception.runtime.engine, occ_perception.runtime.trt_backend, occ_perception.runtime.gpu_bench\n'
        "assert 'torch' not in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, '-c', code], check=False, cwd=package_dir, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------------------------- GPU bench


@pytest.fixture(scope='module')
def tiny_k2(tmp_path_factory, package_dir):
    """The shipped tiny K=2 model exported to ONNX, and one frame of feeds for it (needs torch)."""
    pytest.importorskip('torch')
    from occ_perception.model.checkpoint import load_checkpoint
    from occ_perception.model.config import get_config
    from occ_perception.runtime.export import export_onnx
    from occ_perception.runtime.gpu_bench import model_feeds

    config = get_config('tiny', history=2)
    net = load_checkpoint(package_dir / 'models' / 'tiny_k2.pt', config).eval()
    path = export_onnx(net, tmp_path_factory.mktemp('gpu-bench') / 'tiny_k2.onnx')
    return path, model_feeds(config)


def test_gpu_bench_tensorrt_times_with_events_and_compares_with_onnxruntime_cpu(tiny_k2, fakes) -> None:
    from occ_perception.runtime.gpu_bench import format_gpu_bench, run_gpu_bench

    onnx_path, feeds = tiny_k2
    trt, cudart = fakes()
    flipped = 37

    def perturb(outputs: dict) -> None:  # what fp16 numerics might do: some labels, some flow
        labels = outputs['labels'].reshape(-1)
        labels[:flipped] = (labels[:flipped] + 1) % 18
        outputs['flow'][1, 2, 3, 0] += 0.125

    trt.perturb = perturb
    cudart.engine_ms = [50.0, 50.0] + [float(v) for v in (9, 1, 8, 2, 7, 3, 6, 4, 5)]  # 2 warm-up runs, 9 timed
    result = run_gpu_bench(onnx_path, feeds, backend='tensorrt', precision='fp32', warmup=2, repeats=9)
    assert len(trt.builds) == 1 and trt.parsed == [str(onnx_path)]
    assert result.device == 'NVIDIA Fake GPU' and result.engine.endswith('.engine') and result.repeats == 9
    assert sorted(result.timings) == ['d2h_ms', 'engine_ms', 'h2d_ms']
    engine = result.timings['engine_ms']
    assert (engine.median, engine.p10, engine.p90) == pytest.approx((5.0, 1.8, 8.2))  # 1..9 ms, linear percentiles
    # every input copied in (images, 5 tables, 3 history tensors), 4 outputs copied out, every run alike
    h2d, d2h = result.timings['h2d_ms'], result.timings['d2h_ms']
    assert len(feeds) == 9 and (h2d.median, h2d.p10, h2d.p90) == pytest.approx((9 * 0.25,) * 3)
    assert (d2h.median, d2h.p10, d2h.p90) == pytest.approx((4 * 0.5,) * 3)
    # agreement against a real onnxruntime CPU run of the fp32 graph
    assert result.voxels == 200 * 200 * 16
    assert result.label_agreement == pytest.approx(1 - flipped / result.voxels, abs=1e-12)
    assert result.flow_max_abs_diff == pytest.approx(0.125, abs=1e-5)
    assert not cudart.events and not cudart.memory  # the backend was closed
    text = '\n'.join(format_gpu_bench(result))
    assert 'engine_ms  median     5.000 ms   p10     1.800 ms   p90     8.200 ms' in text
    assert f'labels {100 * (1 - flipped / result.voxels):.3f} % of 640000 voxels' in text and '0.125 m/s' in text

    # the engine is reused from the cache; fp16 parses the fp16 graph beside the ONNX file
    trt.perturb = None
    again = run_gpu_bench(onnx_path, feeds, backend='tensorrt', precision='fp32', warmup=1, repeats=1)
    assert len(trt.builds) == 1 and again.engine == result.engine
    assert again.label_agreement == 1.0 and again.flow_max_abs_diff == pytest.approx(0.0, abs=1e-5)
    from occ_perception.runtime.engine import fp16_onnx_path

    half = fp16_onnx_path(onnx_path)
    half.write_bytes(Path(onnx_path).read_bytes())  # stands in for the ModelOpt graph
    fp16 = run_gpu_bench(onnx_path, feeds, backend='tensorrt', precision='fp16', warmup=1, repeats=1)
    assert trt.parsed[-1] == str(half) and '.fp16.' in fp16.engine and fp16.precision == 'fp16'


@pytest.mark.filterwarnings('ignore:Specified provider .CUDAExecutionProvider. is not in available')
def test_gpu_bench_errors(tmp_path, fakes, monkeypatch) -> None:
    import onnxruntime
    from occ_perception.runtime.gpu_bench import GpuBenchError, compare_outputs, run_gpu_bench

    onnx_path = graph(tmp_path / 'net.onnx')
    fakes(cudart=FakeCudart(devices=0))
    with pytest.raises(GpuBenchError, match='needs a CUDA GPU.*cudaErrorNoDevice'):
        run_gpu_bench(onnx_path, example(), backend='tensorrt')
    fakes()
    with pytest.raises(GpuBenchError, match="output 'flow' missing"):  # the small graph has labels and score
        run_gpu_bench(onnx_path, example(), backend='tensorrt', precision='fp32', warmup=1, repeats=1)
    with pytest.raises(GpuBenchError, match='precision'):
        run_gpu_bench(onnx_path, example(), backend='tensorrt', precision='int8')
    labels = np.zeros((4, 3, 2), np.uint8)
    with pytest.raises(GpuBenchError, match="'flow' has shape \\[4, 3, 2, 2\\] on the GPU, \\[3, 4, 2, 2\\]"):
        compare_outputs(
            {'labels': labels, 'flow': np.zeros((3, 4, 2, 2), np.float32)},
            {'labels': labels, 'flow': np.zeros((4, 3, 2, 2), np.float32)},
        )
    # onnxruntime offering CUDA but starting on the CPU (no CUDA libraries) is refused, not timed as a GPU
    monkeypatch.setattr(
        onnxruntime, 'get_available_providers', lambda: ['CUDAExecutionProvider', 'CPUExecutionProvider']
    )
    with pytest.raises(GpuBenchError, match='could not start CUDAExecutionProvider'):
        run_gpu_bench(onnx_path, example(), backend='onnxruntime-cuda', precision='fp32')


def test_bench_without_gpu_libraries_fails_with_one_line(capsys) -> None:
    """The real environment (no fakes): exit status 2 and one stderr line naming what is missing."""
    import importlib.util

    import onnxruntime
    from occ_perception.cli import main

    if importlib.util.find_spec('tensorrt') is None:
        assert main(['bench', '--backend', 'tensorrt', '--precision', 'fp32']) == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('occ-perception bench: error:'), captured.err
        assert 'TensorRT' in lines[0] and 'pip install tensorrt' in lines[0]
        if importlib.util.find_spec('cuda') is None:
            assert 'cuda-python' in lines[0]
        assert captured.out == ''
    if 'CUDAExecutionProvider' not in onnxruntime.get_available_providers():
        assert main(['bench', '--backend', 'onnxruntime-cuda']) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and 'CUDAExecutionProvider' in lines[0] and 'onnxruntime-gpu' in lines[0]
