"""``occ-perception bench`` on its quick stages: report structure, JSON, stage selection, the encode frame.

No timing is asserted (speed belongs to the benchmark itself); only that the figures exist and are positive.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from occ_perception.grid import FREE_LABEL, GridSpec
from occ_perception.outputs import surface_mask

pytest.importorskip('torch')
from occ_perception.cli import main  # noqa: E402
from occ_perception.runtime.bench import (  # noqa: E402
    STAGES,
    BenchError,
    Timing,
    encode_frame,
    run_bench,
    synthetic_jpegs,
)

ENCODE_FIGURES = [
    'encode_semantics',
    'encode_flow',
    'encode_points',
    'encode_markers',
    'encode_costmap',
    'encode_voxel_grid',
    'encode_total',
    'encode_total_without_markers',
]
PREPROCESS_FIGURES = ['preprocess_ours', 'preprocess_ours_1thread', 'preprocess_pil']


def _check_figure(name: str, fig: dict, repeats: int) -> None:
    assert set(fig) == {'median_ms', 'p10_ms', 'p90_ms', 'cpu_median_ms', 'repeats'}, name
    assert fig['repeats'] == repeats, name
    assert 0 < fig['p10_ms'] <= fig['median_ms'] <= fig['p90_ms'], (name, fig)
    assert fig['cpu_median_ms'] is None or fig['cpu_median_ms'] >= 0, (name, fig)


def test_quick_stages_write_a_complete_json(tmp_path: Path) -> None:
    lines: list[str] = []
    out = tmp_path / 'sub' / 'bench.json'
    report = run_bench(
        repeats=5, stages=('preprocess', 'encode'), images='texture', json_path=out, print_fn=lines.append
    )
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(report))
    assert data['stages'] == ['preprocess', 'encode']
    assert set(data['figures']) == set(ENCODE_FIGURES + PREPROCESS_FIGURES)  # no splat or network figures
    for name, fig in data['figures'].items():
        _check_figure(name, fig, 5)
    machine = data['machine']
    assert machine['cpu_count'] >= 1
    for lib in ('python', 'numpy', 'torch', 'onnxruntime', 'PIL', 'opencv'):
        assert isinstance(machine[lib], str) and machine[lib][0].isdigit(), lib
    assert len(data['load_before']) == 3 and len(data['load_after']) == 3
    assert data['derived']['preprocess_ratio_pil_over_ours'] > 0
    enc = data['info']['encode']
    assert enc['grid'] == [200, 200, 16] and enc['occupied_voxels'] == 30_000
    assert 0 < enc['surface_voxels'] <= 30_000 and enc['moving_voxels'] > 0
    assert all(size > 0 for size in enc['message_bytes'].values())
    pre = data['info']['preprocess']
    assert pre['images'] == 'texture' and pre['jpeg_kb_mean'] > 50
    table = '\n'.join(lines)
    assert 'target <= 10 ms' in table and 'target >= 4' in table and str(out) in table


def test_cli_runs_one_stage(tmp_path: Path) -> None:
    out = tmp_path / 'b.json'
    assert main(['bench', '--stages', 'encode', '--repeats', '5', '--json', str(out)]) == 0
    data = json.loads(out.read_text())
    assert data['stages'] == ['encode'] and set(data['figures']) == set(ENCODE_FIGURES)


def test_unknown_stage_is_refused(capsys) -> None:
    assert main(['bench', '--stages', 'encode,warp']) == 2
    err = capsys.readouterr().err
    assert "'encode,warp'" in err and 'preprocess' in err
    with pytest.raises(BenchError, match='stages'):
        run_bench(stages=('encode', 'warp'))
    assert STAGES == ('preprocess', 'encode', 'splat', 'network')


def test_timing_percentiles() -> None:
    t = Timing.of('x', [0.004, 0.001, 0.002, 0.003, 0.005], [0.001] * 5)
    assert (t.median_s, t.repeats, t.cpu_median_s) == (0.003, 5, 0.001)
    assert 0.001 < t.p10_s < 0.002 and 0.004 < t.p90_s < 0.005
    with pytest.raises(BenchError):
        Timing.of('x', [])


@pytest.mark.parametrize(
    'grid, occupied',
    [(GridSpec(), 30_000), (GridSpec(lower=(-20.0, -30.0, -1.0), size=(100, 150, 16), voxel_size=0.4), 12_000)],
)
def test_encode_frame_has_exactly_the_occupied_count(grid: GridSpec, occupied: int) -> None:
    frame = encode_frame(grid, occupied)
    labels = frame.labels
    assert int(np.count_nonzero((labels != FREE_LABEL) & (labels != 255))) == occupied
    assert frame.occupied_indices.size == occupied
    moving = np.hypot(frame.flow[..., 0], frame.flow[..., 1]) > 0.5
    assert moving.any() and not moving[labels == FREE_LABEL].any()  # flow only on occupied voxels
    assert set(np.unique(labels[moving]).tolist()) <= {4, 7}  # cars and pedestrians move, nothing else
    assert 11 in labels and 13 in labels and 15 in labels and 16 in labels
    assert 0 < int(surface_mask(labels).sum()) < occupied


def test_encode_frame_refuses_too_few_voxels() -> None:
    with pytest.raises(BenchError, match='objects alone'):
        encode_frame(GridSpec(), 1_000)


def test_texture_jpegs_are_six_full_size_images() -> None:
    import cv2

    jpegs = synthetic_jpegs('texture')
    assert len(jpegs) == 6
    for data in jpegs:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (900, 1600, 3) and img.std() > 10
    with pytest.raises(BenchError, match='texture'):
        synthetic_jpegs('noise')
