"""The synthetic nuScenes-format dataset: devkit loading, agreement with the generator, determinism, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from occ_perception.cli import main as cli_main
from occ_perception.data.synth_nuscenes import (
    CAMERA_CHANNELS,
    CAMERA_OFFSETS_US,
    SynthConfig,
    SynthError,
    _token,
    generate_dataset,
    scene_world,
)

SMALL = dict(scenes=2, seconds=1.5, seed=5, width=320, height=180)


def _import_nuscenes():
    """The devkit (installed by `make test` with --no-deps); skipped only outside CI when it is missing."""
    try:
        from nuscenes.nuscenes import NuScenes
    except ImportError:
        if os.environ.get('CI'):
            raise
        pytest.skip('nuscenes-devkit is not installed (make test installs it)')
    return NuScenes


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp('synth')
    cfg = SynthConfig(out=out, sweeps=True, **SMALL)
    report = generate_dataset(cfg, progress=False)
    return cfg, report


def test_layout_and_occ3d_labels(dataset):
    cfg, report = dataset
    out = Path(cfg.out)
    assert report.scene_names == ['scene-0000', 'scene-0001']
    for classes in report.classes:  # non-free Occ3D classes in each scene's ground truth (3 keyframes)
        print('classes in the ground truth:', len(classes), classes)
        assert len(classes) >= 12
    samples = json.loads((out / 'v1.0-mini' / 'sample.json').read_text())
    assert len(samples) == 2 * cfg.keyframes
    for scene in report.scene_names:
        files = sorted((out / 'gts' / scene).glob('*/labels.npz'))
        assert len(files) == cfg.keyframes
        with np.load(files[0]) as z:
            assert sorted(z.files) == ['flow', 'mask_camera', 'mask_lidar', 'semantics']
            for name in ('semantics', 'mask_lidar', 'mask_camera'):
                assert z[name].shape == (200, 200, 16) and z[name].dtype == np.uint8
            assert z['flow'].shape == (200, 200, 16, 2) and z['flow'].dtype == np.float32
    for ch in CAMERA_CHANNELS:
        assert len(list((out / 'samples' / ch).glob('*.jpg'))) == 2 * cfg.keyframes
        assert len(list((out / 'sweeps' / ch).glob('*.jpg'))) == 2 * (cfg.keyframes - 1) * 5
    assert sorted(p.name for p in (out / 'preview').glob('*.png')) == ['scene-0000.png', 'scene-0001.png']
    scans = sorted((out / 'samples' / 'LIDAR_TOP').glob('*.pcd.bin'))
    pts = np.fromfile(scans[0], dtype=np.float32).reshape(-1, 5)
    assert len(pts) > 10000 and set(np.unique(pts[:, 4])) <= set(range(32))


def test_devkit_loads_and_agrees_with_the_generator(dataset):
    NuScenes = _import_nuscenes()
    from nuscenes.utils.data_classes import LidarPointCloud

    cfg, _ = dataset
    nusc = NuScenes(version='v1.0-mini', dataroot=str(cfg.out), verbose=False)
    assert len(nusc.scene) == 2 and len(nusc.sample) == 2 * cfg.keyframes
    n_boxes = n_poses = 0
    for si, scene in enumerate(nusc.scene):
        world = scene_world(cfg, si)
        instance_of = {_token(cfg.seed, 'instance', si, i): i for i in range(world.num_objects)}
        token = scene['first_sample_token']
        while token:
            sample = nusc.get('sample', token)
            state = world.state_at(sample['timestamp'] * 1000)
            assert set(sample['data']) == {*CAMERA_CHANNELS, 'LIDAR_TOP'}
            assert nusc.get('sample_data', sample['data']['LIDAR_TOP'])['timestamp'] == sample['timestamp']
            for ann in sample['anns']:
                box = nusc.get_box(ann)
                i = instance_of[nusc.get('sample_annotation', ann)['instance_token']]
                np.testing.assert_allclose(box.center[:2], state.obj_xy[i], atol=1e-6)
                assert box.center[2] == pytest.approx(world.obj_size[i, 2] / 2)
                np.testing.assert_allclose(box.wlh, world.obj_size[i, [1, 0, 2]], atol=1e-9)
                dyaw = (box.orientation.yaw_pitch_roll[0] - state.obj_yaw[i] + np.pi) % (2 * np.pi) - np.pi
                assert abs(dyaw) < 1e-6
                n_boxes += 1
            # Each camera's own timestamp and ego pose, and the boxes the devkit puts in its frame.
            for ch, sd_token in sample['data'].items():
                sd = nusc.get('sample_data', sd_token)
                offset = CAMERA_OFFSETS_US.get(ch, 0)
                assert sd['timestamp'] == sample['timestamp'] + offset
                pose = nusc.get('ego_pose', sd['ego_pose_token'])
                expected = world.state_at(sd['timestamp'] * 1000).ego_pose
                np.testing.assert_allclose(pose['translation'], expected.translation, atol=1e-9)
                np.testing.assert_allclose(pose['rotation'], expected.rotation.elements, atol=1e-9)
                n_poses += 1
            path, boxes, k = nusc.get_sample_data(sample['data']['CAM_FRONT'])
            assert Path(path).is_file() and k[0, 0] == pytest.approx(1266.417203046554 * cfg.width / 1600)
            pc = LidarPointCloud.from_file(nusc.get_sample_data_path(sample['data']['LIDAR_TOP']))
            assert pc.points.shape[0] == 4 and pc.points.shape[1] > 10000
            token = sample['next']
    assert n_boxes > 50 and n_poses == 2 * cfg.keyframes * 7
    # Sweeps: non-keyframe camera records chained between the keyframes, each with its own ego pose.
    sweeps = [sd for sd in nusc.sample_data if not sd['is_key_frame']]
    assert len(sweeps) == 2 * (cfg.keyframes - 1) * 5 * 6
    sd = nusc.get('sample_data', nusc.sample[0]['data']['CAM_FRONT'])
    chain = [sd]
    while chain[-1]['next']:
        chain.append(nusc.get('sample_data', chain[-1]['next']))
    assert [c['is_key_frame'] for c in chain[:7]] == [True] + [False] * 5 + [True]
    assert all(b['timestamp'] > a['timestamp'] for a, b in zip(chain, chain[1:]))
    # The devkit interpolates a sweep's boxes between its sample and the previous one: close to the truth.
    world = scene_world(cfg, 0)
    instance_of = {_token(cfg.seed, 'instance', 0, i): i for i in range(world.num_objects)}
    sweep = chain[3]
    assert sweep['sample_token'] == chain[6]['sample_token']
    state = world.state_at(sweep['timestamp'] * 1000)
    prev = nusc.get('sample', nusc.get('sample', sweep['sample_token'])['prev'])
    in_prev = {nusc.get('sample_annotation', a)['instance_token'] for a in prev['anns']}
    checked = 0
    for box in nusc.get_boxes(sweep['token']):
        instance = nusc.get('sample_annotation', box.token)['instance_token']
        if instance in in_prev:  # annotated in both samples: interpolated
            i = instance_of[instance]
            assert np.linalg.norm(box.center[:2] - state.obj_xy[i]) < 0.3
            checked += 1
    assert checked > 20


def test_same_seed_gives_identical_files(tmp_path):
    """Two runs with one seed give the same bytes, whether scenes are written in one process or two."""
    cfgs = [
        SynthConfig(out=tmp_path / name, scenes=2, seconds=1.0, seed=11, width=200, height=112, jobs=jobs)
        for name, jobs in (('a', 1), ('b', 2))
    ]
    for cfg in cfgs:
        generate_dataset(cfg, progress=False)
    files_a = sorted(p.relative_to(cfgs[0].out) for p in Path(cfgs[0].out).rglob('*') if p.is_file())
    files_b = sorted(p.relative_to(cfgs[1].out) for p in Path(cfgs[1].out).rglob('*') if p.is_file())
    assert files_a == files_b
    assert any(str(p).endswith('labels.npz') for p in files_a) and any(str(p).endswith('.jpg') for p in files_a)
    for rel in files_a:
        assert (cfgs[0].out / rel).read_bytes() == (cfgs[1].out / rel).read_bytes(), rel
    other = SynthConfig(out=tmp_path / 'c', scenes=1, seconds=1.0, seed=12, width=200, height=112)
    generate_dataset(other, progress=False)
    a_imgs = sorted((cfgs[0].out / 'samples' / 'CAM_FRONT').glob('*.jpg'))
    c_imgs = sorted((tmp_path / 'c' / 'samples' / 'CAM_FRONT').glob('*.jpg'))
    assert a_imgs[0].read_bytes() != c_imgs[0].read_bytes()


def test_bad_arguments_are_named(tmp_path):
    for kwargs, name in (
        (dict(scenes=0), 'scenes'),
        (dict(seconds=-1.0), 'seconds'),
        (dict(width=3), 'width'),
        (dict(seed=-2), 'seed'),
    ):
        with pytest.raises(SynthError, match=name):
            generate_dataset(SynthConfig(out=tmp_path, **kwargs), progress=False)


def test_cli_writes_a_dataset_and_reports_timings(tmp_path, capsys):
    rc = cli_main(
        [
            'synth',
            '--out',
            str(tmp_path),
            '--scenes',
            '1',
            '--seconds',
            '0.5',
            '--width',
            '160',
            '--height',
            '90',
            '--quiet',
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert 'per keyframe' in out and 'classes' in out
    assert (tmp_path / 'v1.0-mini' / 'scene.json').is_file()
    rc = cli_main(['synth', '--out', str(tmp_path), '--scenes', '0', '--quiet'])
    assert rc == 2
    assert '--scenes' in capsys.readouterr().err
