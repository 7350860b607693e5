"""``occ-perception eval``: a real exported ONNX over a small synthetic dataset, checked against metrics.py
computed here from the nuScenes tables read with the devkit directly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import biased_net

torch = pytest.importorskip('torch')  # the tests export their ONNX models with torch

from occ_perception.cli import main as cli_main
from occ_perception.data.synth_nuscenes import SynthConfig, generate_dataset
from occ_perception.geometry import Transform
from occ_perception.metrics import MetricsReport, MIoU, RayMetrics, lidar_origins
from occ_perception.model.config import get_config
from occ_perception.pipeline import OccPipeline, load_model
from occ_perception.rig import NUSCENES_CHANNELS, Rig

pytest.importorskip('nuscenes')


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('synth')
    generate_dataset(SynthConfig(out=root, scenes=2, seconds=1.5, seed=11, width=320, height=180), progress=False)
    # Random weights, with the semantic head's last layer biased towards a road plane (layers 0-2), a layer of
    # cars above it and free space higher up, so that rays and voxels produce true positives (figures above 0);
    # flow stays input-dependent.
    cfg = get_config('tiny', history=2)
    net = biased_net(cfg)
    from occ_perception.runtime.export import export_onnx

    onnx = export_onnx(net, root / 'model' / 'tiny_k2.onnx')
    return root, cfg, onnx


def _direct(root: Path, cfg, onnx: Path, scenes: list[str] | None = None):
    """Metrics computed here: devkit tables, a fresh pipeline per scene, metrics.py."""
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(version='v1.0-mini', dataroot=str(root), verbose=False)
    backend = load_model(onnx, cfg)
    miou, rays = MIoU(), RayMetrics(cfg.grid)
    frames = 0
    for scene in sorted(nusc.scene, key=lambda s: s['name']):
        if scenes is not None and scene['name'] not in scenes:
            continue
        samples = []
        token = scene['first_sample_token']
        while token:
            samples.append(nusc.get('sample', token))
            token = samples[-1]['next']
        pipe = OccPipeline(backend, cfg)
        cams = [[nusc.get('sample_data', s['data'][ch]) for ch in NUSCENES_CHANNELS] for s in samples]
        poses = [
            Transform(
                nusc.get('ego_pose', c[1]['ego_pose_token'])['rotation'],
                nusc.get('ego_pose', c[1]['ego_pose_token'])['translation'],
            )
            for c in cams
        ]
        lidar_rec = nusc.get('sample_data', samples[0]['data']['LIDAR_TOP'])
        lidar = nusc.get('calibrated_sensor', lidar_rec['calibrated_sensor_token'])['translation']
        all_poses = np.stack([p.matrix() for p in poses])
        for sample, recs, pose in zip(samples, cams, poses):
            assert recs[1]['channel'] == 'CAM_FRONT'
            calib = {r['channel']: nusc.get('calibrated_sensor', r['calibrated_sensor_token']) for r in recs}
            rig = Rig.from_nuscenes(calib, {r['channel']: (r['width'], r['height']) for r in recs})
            images = [(root / r['filename']).read_bytes() for r in recs]
            occ = pipe.process(images, pose, rig, stamp_ns=recs[1]['timestamp'] * 1000)
            with np.load(root / 'gts' / scene['name'] / sample['token'] / 'labels.npz') as z:
                gt, mask, flow = z['semantics'], z['mask_camera'], z['flow']
            miou.add(occ.labels, gt, mask)
            rays.add(occ.labels, gt, lidar_origins(all_poses, pose.matrix(), tuple(lidar)), occ.flow, flow)
            frames += 1
    return MetricsReport.from_results(miou.result(), rays.result(), frames=frames), miou.result()


def _same(a, b) -> bool:
    """Equal JSON values, floats within 1e-12 relative (None for NaN on both sides)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b


def test_eval_writes_files_equal_to_a_direct_computation(setup, tmp_path, capsys):
    root, cfg, onnx = setup
    out = tmp_path / 'eval'
    status = cli_main(
        [
            'eval',
            '--model',
            str(onnx),
            '--config',
            'tiny',
            '--history',
            '2',
            '--dataroot',
            str(root),
            '--out',
            str(out),
            '--threads',
            '1',
            '--quiet',
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert 'mIoU' in printed and 'frames/s' in printed
    data = json.loads((out / 'metrics.json').read_text())
    expected, expected_miou = _direct(root, cfg, onnx)
    want = expected.to_dict()
    assert data['frames'] == want['frames'] == 6
    for key in ('miou', 'ray_iou', 'mave', 'occ_score', 'iou', 'ray_iou_at', 'ave', 'ray_iou_class'):
        assert _same(data[key], want[key]), (key, data[key], want[key])
    assert data['confusion']['counts'] == expected_miou.confusion.tolist()
    # figures above zero, so the comparison means something
    assert data['miou'] > 0 and data['iou']['driveable_surface'] > 0
    assert data['ray_iou'] > 0 and data['ray_iou_class']['2']['car'] > 0
    assert data['mave'] is not None and data['mave'] > 0
    # the description of the run
    assert data['frames_per_second'] > 0 and data['frames_run'] == 6
    assert set(data['timings_ms']) >= {'preprocess', 'network', 'cache', 'total'}
    assert data['model'] == str(onnx) and data['backend'] == 'onnxruntime' and data['config'] == 'tiny'
    assert data['history'] == 2 and data['use_history'] is True and data['mask'] == 'camera'
    assert data['dataset']['scenes'] == ['scene-0000', 'scene-0001']
    md = (out / 'metrics.md').read_text()
    assert '| driveable_surface |' in md and 'frames/s' in md and 'RayIoU@4 %' in md
    png = out / 'confusion.png'
    import matplotlib.image

    picture = matplotlib.image.imread(png)
    assert picture.shape[0] > 800 and picture.shape[1] > 900


def test_eval_options(setup, tmp_path, capsys):
    root, cfg, onnx = setup
    out = tmp_path / 'one'
    args = ['eval', '--model', str(onnx), '--history', '2', '--dataroot', str(root), '--quiet']
    assert (
        cli_main(
            args + ['--out', str(out), '--scenes', 'scene-0001', '--max-frames', '2', '--mask', 'none', '--no-history']
        )
        == 0
    )
    data = json.loads((out / 'metrics.json').read_text())
    assert data['frames'] == 2 and data['dataset']['scenes'] == ['scene-0001']
    assert data['use_history'] is False and data['mask'] == 'none'
    # no mask: every observed voxel counts, so the confusion matrix holds the whole grid of both frames
    assert sum(map(sum, data['confusion']['counts'])) > 2 * 0.5 * cfg.grid.num_voxels
    capsys.readouterr()
    cases = [
        (['--scenes', 'scene-9999'], 'scene-9999'),
        (['--split', 'mini_val'], 'mini_val'),
        (['--split', 'nonsense'], 'nonsense'),
        (['--max-frames', '0'], '--max-frames'),
        (['--history', '0'], 'history_bev'),  # a K = 2 graph for a K = 0 config
    ]
    for extra, needle in cases:
        status = cli_main(args + ['--out', str(tmp_path / 'x')] + extra)
        err = capsys.readouterr().err
        assert status == 2, extra
        assert needle in err and err.count('\n') == 1 and err.startswith('occ-perception eval: error:'), err
    status = cli_main(
        ['eval', '--model', str(tmp_path / 'missing.onnx'), '--dataroot', str(root), '--out', str(tmp_path / 'x')]
    )
    assert status == 2 and 'missing.onnx' in capsys.readouterr().err


def test_eval_with_a_dropped_camera_runs_it_as_failed_and_records_it(setup, tmp_path, capsys):
    """--drop-camera feeds that camera as failed on every frame (the pipeline sees no image of it), the
    option and the mode are in metrics.json; an unknown camera is one clear error."""
    from occ_perception.data.occ3d import Occ3DDataset
    from occ_perception.evaluate import evaluate

    root, cfg, onnx = setup
    seen = []
    with OccPipeline(load_model(onnx, cfg), cfg, failed_camera_mode='blank_image') as pipeline:
        dataset = Occ3DDataset(root, cfg, version='v1.0-mini', scenes=['scene-0001'])
        result = evaluate(
            pipeline,
            dataset,
            mask='none',
            max_frames=2,
            drop_cameras=['CAM_BACK'],
            on_frame=lambda frame, occ: seen.append(occ.missing_cameras),
        )
    assert result.frames == 2 and seen == [('cam_back',), ('cam_back',)]

    args = ['eval', '--model', str(onnx), '--history', '2', '--dataroot', str(root), '--quiet']
    args += ['--scenes', 'scene-0001', '--max-frames', '1', '--mask', 'none']
    assert cli_main(args + ['--out', str(tmp_path / 'one'), '--drop-camera', 'CAM_FRONT']) == 0
    data = json.loads((tmp_path / 'one' / 'metrics.json').read_text())
    assert data['drop_cameras'] == ['CAM_FRONT'] and data['failed_camera_mode'] == 'mask_tables'
    capsys.readouterr()
    status = cli_main(args + ['--out', str(tmp_path / 'x'), '--drop-camera', 'CAM_NOSE'])
    err = capsys.readouterr().err
    assert status == 2 and 'CAM_NOSE' in err and 'cam_front' in err, err
