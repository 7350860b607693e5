"""A failed camera: frames go on with five cameras, its own columns get confidence 0, status names it.

Through the real frame path: rosbags typestore messages and real JPEGs into a FrameAssembler, its frames
through a FrameProcessor and the tiny network on the torch backend (on a non-square grid), and a real
rosbag2 file through the replay. The columns only the failed camera sees are computed here from the rig's
matrices by an independent back-projection and binning, not with the package's coverage functions.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import biased_net, recording_torch

torch = pytest.importorskip('torch')

from occ_perception.frame_assembly import (  # noqa: E402
    AssemblyConfig,
    AssemblyError,
    Frame,
    FrameAssembler,
    FrameDrop,
    FrameProcessor,
    FrameResult,
    camera_status,
    frame_accounting,
)
from occ_perception.grid import GridSpec  # noqa: E402
from occ_perception.model.splat_tables import build_splat_tables, camera_coverage, exclusive_columns  # noqa: E402
from occ_perception.pipeline import OccPipeline, PipelineError  # noqa: E402
from occ_perception.replay import ReplayOptions, replay  # noqa: E402
from test_reliability import CAMS, NS, TYPES, Item, _tf_static, feed, frame_items, write_bag  # noqa: E402

# a non-square grid (x 64 m, y 48 m), so that a swapped x / y would show
GRID = GridSpec(lower=(-32.0, -24.0, -1.0), size=(160, 120, 16), voxel_size=0.4)
CFG = dataclasses.replace(__import__('test_reliability').CFG, grid=GRID)
STEP = NS // 2
T0 = 10 * NS
FAILED = 'cam_back'
SILENT = range(2, 8)  # frames k without a cam_back image (3 s)


def expected_exclusive(config: Any, matrices: Any, camera: int) -> np.ndarray:
    """(X, Y) bool: columns a frustum point of ``camera`` reaches and no other camera's does.

    Written independently of the package: each feature pixel centre's network pixel taken back through the
    image transform and K to a ray with z = 1, scaled by each depth bin, moved to base_link; a point's
    column is its coordinates over the voxel size cast to int (truncation, as FlashOCC), kept when x, y
    fall in the grid and z in the single BEV height bin.
    """
    (w_img, h_img), (w_f, h_f) = config.image_size, config.feature_size
    grid = config.grid
    z_lo, z_hi = config.bev_z_range
    columns = []
    for n in range(matrices.cam_to_ego.shape[0]):
        seen = set()
        to_source = np.linalg.inv(matrices.image_transform[n])
        k_inv = np.linalg.inv(matrices.intrinsics[n])
        for v in np.linspace(0.0, h_img - 1.0, h_f):
            for u in np.linspace(0.0, w_img - 1.0, w_f):
                ray = k_inv @ (to_source @ np.array([u, v, 1.0]))
                ray = ray / ray[2]
                for d in config.depth_bins:
                    p = matrices.cam_to_ego[n] @ np.append(ray * d, 1.0)
                    ix = int((p[0] - grid.lower[0]) / grid.voxel_size)
                    iy = int((p[1] - grid.lower[1]) / grid.voxel_size)
                    iz = int((p[2] - z_lo) / (z_hi - z_lo))
                    if 0 <= ix < grid.size[0] and 0 <= iy < grid.size[1] and iz == 0:
                        seen.add((ix, iy))
        columns.append(seen)
    only = columns[camera] - set().union(*(c for i, c in enumerate(columns) if i != camera))
    out = np.zeros(grid.size[:2], dtype=bool)
    for ix, iy in only:
        out[ix, iy] = True
    return out


@pytest.fixture(scope='module')
def net():
    return biased_net(CFG)


def _pipeline(net: Any, mode: str = 'mask_tables') -> OccPipeline:
    return OccPipeline(recording_torch(net), CFG, preprocess_threads=1, failed_camera_mode=mode)


def _items(silent: range = SILENT, frames: int = 11) -> list[Item]:
    items: list[Item] = [('tf_static', '', _tf_static())]
    for k in range(frames):
        items += frame_items(T0 + k * STEP, 0.5 * k, k, skip={FAILED} if k in silent else set())
    return items


def test_frames_go_on_without_a_silent_camera_and_six_camera_operation_resumes(net) -> None:
    assembler = FrameAssembler(AssemblyConfig(camera_timeout=1.0))
    pipeline = _pipeline(net)
    processor = FrameProcessor(pipeline, TYPES, markers_rate=0.0, voxels=False)
    status: dict[int, list[tuple[str, str, str]]] = {}
    results: list[FrameResult] = []
    feed(assembler, [('tf_static', '', _tf_static())])
    for k in range(11):
        stamp = T0 + k * STEP
        for event in feed(assembler, frame_items(stamp, 0.5 * k, k, skip={FAILED} if k in SILENT else set())):
            if isinstance(event, FrameDrop):
                assert event.stage == 'sync', event  # the other cameras' messages of frames 2 and 3
                continue
            result = processor.process(event)
            assert isinstance(result, FrameResult), result
            results.append(result)
        status[k] = camera_status(assembler, stamp)
    pipeline.close()

    # frames 2 and 3: cam_back only 0.5 and 1.0 s late (not over camera_timeout): no set; from frame 4 on
    # (1.5 s) the sets go without it until it sends again at frame 8
    stamps = [r.frame.stamp_ns for r in results]
    assert stamps == [T0 + k * STEP for k in (0, 1, 4, 5, 6, 7, 8, 9, 10)]
    without = {T0 + k * STEP for k in (4, 5, 6, 7)}
    assert [r.frame.missing for r in results] == [(FAILED,) if s in without else () for s in stamps]
    assert [r.occ.missing_cameras for r in results] == [r.frame.missing for r in results]
    cam = CAMS.index(FAILED)
    assert all(r.frame.images[cam] is None for r in results if r.frame.missing)

    # the tables the backend got: full ones with six cameras, cam_back's entries gone without it
    rig = results[0].frame.rig
    w, h = CFG.image_size
    full = build_splat_tables(CFG, rig.matrices(w, h))
    w_f, h_f = CFG.feature_size
    per_camera = CFG.num_depth_bins * h_f * w_f
    zero_slot = len(CAMS) * per_camera
    runs = pipeline.backend.feeds
    assert len(runs) == len(results)
    for result, run in zip(results, runs):
        depth, full_depth = run['splat_depth_index'], full['splat_depth_index']
        owner, full_owner = depth // per_camera, full_depth // per_camera
        if result.frame.missing:
            assert not np.any(owner == cam) and np.any(full_owner == cam)
            kept = full_owner != cam
            assert np.array_equal(depth[kept], full_depth[kept])  # the other cameras' entries unchanged
            assert np.all(depth[~kept] == zero_slot) and np.all(run['splat_feat_index'][~kept] == 0)
            assert not run['images'][cam].any() and all(run['images'][i].any() for i in range(6) if i != cam)
        else:
            assert all(np.array_equal(run[name], full[name]) for name in full)
            assert all(run['images'][i].any() for i in range(6))

    # confidence 0 exactly in the columns only cam_back sees, over the whole column; labels untouched
    only = expected_exclusive(CFG, rig.matrices(w, h), cam)
    assert only.shape == (160, 120) and 0 < only.sum() < only.size // 4
    for result in results:
        conf = result.occ.confidence
        assert conf is not None and conf.shape == (160, 120, 16)
        zero_columns = (conf == 0).all(axis=2)
        if result.frame.missing:
            assert np.array_equal(zero_columns, only)
        else:
            assert not (conf == 0).any()
        assert np.isin(result.occ.labels, np.arange(18)).all()
        semantics = result.messages['occupancy/semantics']
        assert np.array_equal(np.asarray(semantics.confidence), conf.reshape(-1))

    # status: WARN naming cam_back while it is failed, OK before and after; frames without it counted
    for k, entries in status.items():
        assert [c for c, _, _ in entries] == list(CAMS)
        levels = {c: level for c, level, _ in entries}
        failed = 4 <= k <= 7
        assert levels == {c: 'WARN' if failed and c == FAILED else 'OK' for c in CAMS}, k
        if failed:
            message = dict((c, m) for c, _, m in entries)[FAILED]
            assert FAILED in message and f'{0.5 * (k - 1):.1f} s' in message
    assert assembler.missing_camera_frames == Counter({FAILED: 4})
    acc = frame_accounting(assembler, processor)
    assert acc['missing_camera_frames'] == {FAILED: 4}
    assert acc['outputs'] == 9 and acc['frames_exact'] and acc['sync_exact'] and assembler.accounted()


def test_blank_image_mode_feeds_the_full_tables_and_a_black_image(net) -> None:
    assembler = FrameAssembler(AssemblyConfig(camera_timeout=1.0))
    pipeline = _pipeline(net, 'blank_image')
    processor = FrameProcessor(pipeline, TYPES, markers_rate=0.0, voxels=False)
    frames = [e for e in feed(assembler, _items(silent=range(1, 5), frames=5)) if isinstance(e, Frame)]
    assert [f.missing for f in frames] == [(), (FAILED,), (FAILED,)]
    results = [processor.process(f) for f in frames]
    pipeline.close()
    cam = CAMS.index(FAILED)
    w, h = CFG.image_size
    rig = frames[0].rig
    full = build_splat_tables(CFG, rig.matrices(w, h))
    only = expected_exclusive(CFG, rig.matrices(w, h), cam)
    for result, run in zip(results, pipeline.backend.feeds):
        assert isinstance(result, FrameResult)
        assert all(np.array_equal(run[name], full[name]) for name in full)
        assert run['images'][cam].any() != bool(result.frame.missing)
        assert result.occ.confidence is not None
        assert np.array_equal((result.occ.confidence == 0).all(axis=2), only & bool(result.frame.missing))


def test_camera_timeout_zero_waits_for_every_camera_and_a_never_seen_camera_is_not_failed() -> None:
    off = FrameAssembler(AssemblyConfig(camera_timeout=0.0))
    frames = [e for e in feed(off, _items()) if isinstance(e, Frame)]
    assert [f.stamp_ns for f in frames] == [T0 + k * STEP for k in (0, 1, 8, 9, 10)]
    assert all(level == 'OK' for _, level, _ in camera_status(off, T0 + 7 * STEP))
    # a camera that never sent: sets wait for it (the rig needs its CameraInfo and first image anyway)
    never = FrameAssembler(AssemblyConfig(camera_timeout=1.0))
    assert not any(isinstance(e, Frame) for e in feed(never, _items(silent=range(0, 11))))
    assert never.failed(T0 + 10 * STEP) == ()
    with pytest.raises(AssemblyError, match='camera_timeout'):
        AssemblyConfig(camera_timeout=-1.0)


def test_the_pipeline_refuses_a_frame_without_any_image_and_an_unknown_mode(net) -> None:
    with pytest.raises(PipelineError, match="failed_camera_mode.*'mask_tables'"):
        _pipeline(net, 'drop')
    assembler = FrameAssembler(AssemblyConfig())
    frame = next(e for e in feed(assembler, _items(frames=1)) if isinstance(e, Frame))
    with _pipeline(net) as pipeline, pytest.raises(PipelineError, match='no image from any camera'):
        pipeline.process([None] * 6, frame.pose, frame.rig, stamp_ns=frame.stamp_ns)


def test_coverage_functions_match_the_independent_geometry_for_every_camera() -> None:
    assembler = FrameAssembler(AssemblyConfig())
    frame = next(e for e in feed(assembler, _items(frames=1)) if isinstance(e, Frame))
    w, h = CFG.image_size
    matrices = frame.rig.matrices(w, h)
    coverage = camera_coverage(CFG, matrices)
    assert coverage.shape == (6, 120 * 160)
    for cam in range(6):
        active = [i != cam for i in range(6)]
        assert np.array_equal(exclusive_columns(coverage, CFG, active), expected_exclusive(CFG, matrices, cam))


def test_replay_of_a_bag_with_a_camera_silent_for_3_s_goes_on_with_five(net, tmp_path: Path) -> None:
    bag = write_bag(tmp_path / 'silent', _items(silent=range(1, 4), frames=5))
    pipeline = _pipeline(net)
    try:
        options = ReplayOptions(
            bag=bag, out=tmp_path / 'out', markers_rate=0.0, panels=0, progress=False, assembly=AssemblyConfig()
        )
        summary = replay(options, pipeline)
    finally:
        pipeline.close()
    d = summary.to_dict()
    acc = d['frame_accounting']
    # frame 0 with six cameras; 1 and 2: cam_back 0.5 and 1.0 s late, no set; 3 without it; 4 with six again
    assert summary.frames_out == 3 == summary.out_counts['occupancy/semantics']
    assert acc['missing_camera_frames'] == {FAILED: 1}
    assert acc['frames_exact'] and acc['sync_exact'] and summary.frame_drops == {}
    assert summary.silent_inputs == {FAILED: pytest.approx(2.0)}
    assert any(n.startswith(f'1 frame(s) went without {FAILED}') for n in summary.notes)
    assert sum(summary.sync_drops.values()) == 12  # frames 1 and 2: five images and an odometry each
    cam = CAMS.index(FAILED)
    assert [run['images'][cam].any() for run in pipeline.backend.feeds] == [True, False, True]


def test_a_camera_silent_after_time_went_backwards_is_failed_camera_timeout_after_the_jump() -> None:
    """A bag played again without one camera: the jump flushes the synchroniser, and the camera heard before it
    fails camera_timeout after the stamp time went back to (frames go on with five cameras)."""
    assembler = FrameAssembler(AssemblyConfig(camera_timeout=1.0))
    first = [e for e in feed(assembler, _items(silent=range(0), frames=4)) if isinstance(e, Frame)]
    assert [f.missing for f in first] == [()] * 4
    again = [e for e in feed(assembler, _items(silent=range(0, 11), frames=8)) if isinstance(e, Frame)]
    assert assembler.time_jumps >= 1
    # after the jump to T0, cam_back (silent) fails once the others' stamps are more than 1 s past T0
    assert [f.stamp_ns for f in again] == [T0 + k * STEP for k in range(3, 8)]
    assert all(f.missing == (FAILED,) for f in again)
    status = dict((cam, level) for cam, level, _ in camera_status(assembler, assembler.newest_ns))
    assert status[FAILED] == 'WARN' and [c for c, lv in status.items() if lv == 'WARN'] == [FAILED]
    assert assembler.newest_ns is not None and assembler.newest_ns >= T0 + 7 * STEP
