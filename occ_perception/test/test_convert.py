"""nuScenes -> rosbag2 MCAP conversion, checked on a small synthetic dataset with camera sweeps.

The expected topics and counts are computed here from the dataset's own JSON
tables; the bags are read back with rosbags' AnyReader and, independently,
with the mcap reader and its ROS 2 decoder.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from occ_perception.cli import main as cli_main
from occ_perception.data.bags import read_bag
from occ_perception.data.convert import ConvertConfig, ConvertError, convert
from occ_perception.data.synth_nuscenes import (
    SynthConfig,
    generate_dataset,
    scene_world,
)
from occ_perception.geometry import Transform
from occ_perception.grid import CLASS_NAMES, FREE_LABEL
from occ_perception.messages import (
    read_occupancy_flow,
    read_pointcloud2,
    read_semantic_occupancy,
)
from occ_perception.sync import ApproximateTimeSync
from ruamel.yaml import YAML


def _yaml(text: str):
    """YAML with the parser rosbags itself depends on (ruamel.yaml)."""
    return YAML(typ='safe').load(text)


CAMS = ('CAM_FRONT_LEFT', 'CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_BACK_LEFT', 'CAM_BACK', 'CAM_BACK_RIGHT')


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp('convert')
    cfg = SynthConfig(out=root / 'nuscenes', scenes=2, seconds=1.0, seed=3, width=288, height=160, sweeps=True)
    generate_dataset(cfg, progress=False)
    bags = convert(ConvertConfig(root=cfg.out, out=root / 'bags', gts=cfg.out / 'gts', lidar=True), progress=False)
    return cfg, root, bags


def _tables(root: Path) -> dict[str, list[dict]]:
    return {
        n: json.loads((root / 'v1.0-mini' / f'{n}.json').read_text())
        for n in ('scene', 'sample', 'sample_data', 'ego_pose', 'calibrated_sensor', 'sensor')
    }


def _scene_records(root: Path, scene_name: str):
    """(samples, channel -> sample_data list, token -> ego_pose, channel -> calibrated_sensor) of one scene."""
    t = _tables(root)
    scene = next(s for s in t['scene'] if s['name'] == scene_name)
    samples = [s for s in t['sample'] if s['scene_token'] == scene['token']]
    tokens = {s['token'] for s in samples}
    calib = {c['token']: c for c in t['calibrated_sensor']}
    sensor = {s['token']: s['channel'] for s in t['sensor']}
    by_channel = defaultdict(list)
    calib_of = {}
    for sd in t['sample_data']:
        if sd['sample_token'] in tokens:
            c = calib[sd['calibrated_sensor_token']]
            by_channel[sensor[c['sensor_token']]].append(sd)
            calib_of[sensor[c['sensor_token']]] = c
    poses = {p['token']: p for p in t['ego_pose']}
    return samples, by_channel, poses, calib_of


def _messages(path: Path):
    return list(read_bag(path))


def test_topics_types_and_counts_follow_the_tables(dataset):
    cfg, _, bags = dataset
    assert [b.scene for b in bags] == ['scene-0000', 'scene-0001']
    for bag in bags:
        samples, by_channel, poses, _ = _scene_records(cfg.out, bag.scene)
        assert any(not sd['is_key_frame'] for sd in by_channel['CAM_FRONT'])  # sweeps are there
        expected = {'/tf_static': 1}
        pose_stamps = {poses[sd['ego_pose_token']]['timestamp'] for ch in (*CAMS, 'LIDAR_TOP') for sd in by_channel[ch]}
        expected['/tf'] = expected['/odom'] = len(pose_stamps)
        for ch in CAMS:
            expected[f'/{ch.lower()}/image_rect/compressed'] = len(by_channel[ch])
            expected[f'/{ch.lower()}/camera_info'] = len(by_channel[ch])
        expected['/lidar_top/points'] = len(by_channel['LIDAR_TOP'])
        for topic in ('/occupancy/ground_truth', '/occupancy/ground_truth/flow', '/occupancy/ground_truth/mask_camera'):
            expected[topic] = len(samples)
        types = {
            '/tf_static': 'tf2_msgs/msg/TFMessage',
            '/tf': 'tf2_msgs/msg/TFMessage',
            '/odom': 'nav_msgs/msg/Odometry',
            '/lidar_top/points': 'sensor_msgs/msg/PointCloud2',
            '/occupancy/ground_truth': 'occ_perception_msgs/msg/SemanticOccupancy',
            '/occupancy/ground_truth/mask_camera': 'occ_perception_msgs/msg/SemanticOccupancy',
            '/occupancy/ground_truth/flow': 'occ_perception_msgs/msg/OccupancyFlow',
        }
        for ch in CAMS:
            types[f'/{ch.lower()}/image_rect/compressed'] = 'sensor_msgs/msg/CompressedImage'
            types[f'/{ch.lower()}/camera_info'] = 'sensor_msgs/msg/CameraInfo'
        msgs = _messages(bag.path)
        assert Counter(m.topic for m in msgs) == Counter(expected)
        assert {m.topic: m.msgtype for m in msgs} == types
        assert bag.counts == expected
        stamps = [m.log_time_ns for m in msgs]
        assert stamps == sorted(stamps) and msgs[0].topic == '/tf_static'
        meta = _yaml((bag.path / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
        assert meta['version'] == 9 and meta['storage_identifier'] == 'mcap'
        assert {t['topic_metadata']['name']: t['message_count'] for t in meta['topics_with_message_count']} == expected


def test_mcap_reader_decodes_every_message_with_the_stored_definitions(dataset):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    _, _, bags = dataset
    bag = bags[0]
    counts = Counter()
    with open(bag.path / f'{bag.scene}.mcap', 'rb') as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        assert reader.get_header().profile == 'ros2'
        for schema, channel, message, decoded in reader.iter_decoded_messages():
            assert schema.encoding == 'ros2msg' and channel.message_encoding == 'cdr'
            headers = [t.header for t in decoded.transforms] if channel.topic.startswith('/tf') else [decoded.header]
            assert [h.stamp.sec * 10**9 + h.stamp.nanosec for h in headers] == [message.log_time] * len(headers)
            qos = _yaml(channel.metadata['offered_qos_profiles'])
            durability = 'transient_local' if channel.topic == '/tf_static' else 'volatile'
            assert qos[0]['durability'] == durability
            counts[channel.topic] += 1
            if channel.topic == '/occupancy/ground_truth':
                assert len(decoded.labels) == 200 * 200 * 16 and list(decoded.class_names) == list(CLASS_NAMES)
            if channel.topic == '/cam_front/image_rect/compressed':
                assert decoded.format == 'jpeg' and bytes(decoded.data[:2]) == b'\xff\xd8'
    assert counts == Counter(bag.counts)


def test_images_are_byte_identical_and_camera_info_matches_calibration(dataset):
    cfg, _, bags = dataset
    bag = bags[1]
    _, by_channel, _, calib_of = _scene_records(cfg.out, bag.scene)
    msgs = _messages(bag.path)
    infos = {(m.topic, m.log_time_ns): m.msg for m in msgs if m.topic.endswith('/camera_info')}
    seen = 0
    for ch in CAMS:
        frame = ch.lower()
        files = {sd['timestamp'] * 1000: cfg.out / sd['filename'] for sd in by_channel[ch]}
        images = [m for m in msgs if m.topic == f'/{frame}/image_rect/compressed']
        assert sorted(m.log_time_ns for m in images) == sorted(files)
        k = np.array(calib_of[ch]['camera_intrinsic'])
        for m in images:
            stamp = m.msg.header.stamp.sec * 10**9 + m.msg.header.stamp.nanosec
            assert stamp == m.log_time_ns and m.msg.header.frame_id == frame and m.msg.format == 'jpeg'
            assert m.msg.data.tobytes() == files[stamp].read_bytes()
            info = infos[(f'/{frame}/camera_info', stamp)]
            assert info.header.frame_id == frame and (info.width, info.height) == (cfg.width, cfg.height)
            np.testing.assert_array_equal(info.k.reshape(3, 3), k)
            np.testing.assert_array_equal(info.p.reshape(3, 4), np.hstack([k, np.zeros((3, 1))]))
            np.testing.assert_array_equal(info.r.reshape(3, 3), np.eye(3))
            assert info.distortion_model == 'plumb_bob' and not np.any(info.d)
            seen += 1
    assert seen == sum(len(by_channel[ch]) for ch in CAMS)


def _tf(msg) -> Transform:
    return Transform.from_msg(msg.transform)


def test_tf_chain_gives_each_sample_datas_ego_pose_and_camera_pose(dataset):
    cfg, _, bags = dataset
    bag = bags[0]
    _, by_channel, poses, calib_of = _scene_records(cfg.out, bag.scene)
    msgs = _messages(bag.path)
    (static,) = [m.msg for m in msgs if m.topic == '/tf_static']
    sensors = {t.child_frame_id: t for t in static.transforms}
    assert sorted(sensors) == sorted([c.lower() for c in CAMS] + ['lidar_top'])
    assert {t.header.frame_id for t in static.transforms} == {'base_link'}
    tf_at = {}
    for m in msgs:
        if m.topic == '/tf':
            (t,) = m.msg.transforms
            assert (t.header.frame_id, t.child_frame_id) == ('map', 'base_link')
            tf_at[m.log_time_ns] = _tf(t)
    n = 0
    for ch in (*CAMS, 'LIDAR_TOP'):
        calib = calib_of[ch]
        base_sensor = _tf(sensors[ch.lower()])
        assert base_sensor.almost_equal(Transform(calib['rotation'], calib['translation']), atol=1e-9)
        for sd in by_channel[ch]:
            ego = poses[sd['ego_pose_token']]
            map_base = tf_at[sd['timestamp'] * 1000]
            assert map_base.almost_equal(Transform(ego['rotation'], ego['translation']), atol=1e-9)
            # map <- sensor through the chain equals the records' composition
            expected = Transform(ego['rotation'], ego['translation']) @ Transform(
                calib['rotation'], calib['translation']
            )
            assert (map_base @ base_sensor).almost_equal(expected, atol=1e-9)
            n += 1
    assert n == sum(len(v) for v in by_channel.values())


def test_odometry_matches_tf_and_the_worlds_ego_velocity(dataset):
    cfg, _, bags = dataset
    world = scene_world(cfg, 0)
    msgs = _messages(bags[0].path)
    tf_at = {m.log_time_ns: _tf(m.msg.transforms[0]) for m in msgs if m.topic == '/tf'}
    odoms = [m for m in msgs if m.topic == '/odom']
    assert len(odoms) == len(tf_at)
    for m in odoms:
        o = m.msg
        assert (o.header.frame_id, o.child_frame_id) == ('map', 'base_link')
        pose = Transform.from_msg(o.pose.pose)
        assert pose.almost_equal(tf_at[m.log_time_ns], atol=1e-12)
        v_body = np.array([o.twist.twist.linear.x, o.twist.twist.linear.y, o.twist.twist.linear.z])
        v_map = pose.rotation_matrix() @ v_body
        truth = world.state_at(m.log_time_ns).ego_velocity
        np.testing.assert_allclose(v_map[:2], truth, atol=0.05)
        assert abs(v_body[1]) < 0.05 and v_body[0] > 1.0  # driving forward along base_link x
        w = o.twist.twist.angular
        assert abs(w.x) < 1e-9 and abs(w.y) < 1e-9 and abs(w.z) <= np.linalg.norm(truth) / 30.0 + 1e-3  # radius >= 30 m


def test_ground_truth_decodes_equal_to_labels_npz(dataset):
    cfg, _, bags = dataset
    for bag in bags:
        samples, _, _, _ = _scene_records(cfg.out, bag.scene)
        by_stamp = {s['timestamp'] * 1000: s['token'] for s in samples}
        msgs = _messages(bag.path)
        checked = 0
        for m in msgs:
            if not m.topic.startswith('/occupancy/ground_truth'):
                continue
            with np.load(cfg.out / 'gts' / bag.scene / by_stamp[m.log_time_ns] / 'labels.npz') as z:
                gt = {k: z[k] for k in z.files}
            if m.topic == '/occupancy/ground_truth':
                occ = read_semantic_occupancy(m.msg)
                np.testing.assert_array_equal(occ.labels, gt['semantics'])
                assert occ.confidence is None and occ.free_label == FREE_LABEL and occ.frame_id == 'base_link'
                assert occ.stamp_ns == m.log_time_ns and occ.grid.shape == (200, 200, 16)
            elif m.topic == '/occupancy/ground_truth/mask_camera':
                mask = read_semantic_occupancy(m.msg)
                np.testing.assert_array_equal(mask.labels, gt['mask_camera'])
                assert mask.class_names == ('not_observed', 'observed') and mask.free_label == 0
            else:
                flow = read_occupancy_flow(m.msg)
                assert flow.indices.size > 0 and np.any(flow.velocity != 0)
                np.testing.assert_array_equal(flow.dense(), gt['flow'])  # flow is zero on free voxels
            checked += 1
        assert checked == 3 * len(samples)


def test_lidar_points_are_the_scan_files(dataset):
    cfg, _, bags = dataset
    _, by_channel, _, _ = _scene_records(cfg.out, bags[0].scene)
    files = {sd['timestamp'] * 1000: cfg.out / sd['filename'] for sd in by_channel['LIDAR_TOP']}
    clouds = [m for m in _messages(bags[0].path) if m.topic == '/lidar_top/points']
    assert sorted(m.log_time_ns for m in clouds) == sorted(files)
    for m in clouds:
        assert m.msg.header.frame_id == 'lidar_top'
        pts = read_pointcloud2(m.msg)
        raw = np.fromfile(files[m.log_time_ns], dtype=np.float32).reshape(-1, 5)
        assert pts.dtype.names == ('x', 'y', 'z', 'intensity', 'ring')
        np.testing.assert_array_equal(np.stack([pts[n] for n in pts.dtype.names], axis=1), raw)


def test_bag_streams_through_the_synchroniser_one_set_per_camera_frame(dataset):
    """Six image topics and /odom in log order, as a node would receive them on replay."""
    cfg, _, bags = dataset
    _, by_channel, _, _ = _scene_records(cfg.out, bags[0].scene)
    streams = {f'/{ch.lower()}/image_rect/compressed': i for i, ch in enumerate(CAMS)}
    streams['/odom'] = 6
    sync = ApproximateTimeSync(7, queue_size=5, slop=0.05)
    fed = 0
    sets = []
    for m in read_bag(bags[0].path, topics=sorted(streams)):
        out = sync.add(streams[m.topic], m.log_time_ns, m.topic)
        fed += 1
        if out is not None:
            sets.append(out)
    sync.flush()
    frames = len(by_channel['CAM_FRONT'])
    assert len(sets) == frames and fed == 7 * len(sets) + sync.dropped
    assert all(s.spread_ns < 50_000_000 for s in sets)


def test_humble_cli_selects_scenes_and_writes_integer_qos(dataset, capsys):
    cfg, root, _ = dataset
    out = root / 'humble'
    assert (
        cli_main(
            [
                'convert',
                str(cfg.out),
                '--gts',
                str(cfg.out / 'gts'),
                '--out',
                str(out),
                '--scenes',
                'scene-0001',
                '--distro',
                'humble',
                '--quiet',
            ]
        )
        == 0
    )
    assert 'scene-0001' in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ['scene-0001']
    meta = _yaml((out / 'scene-0001' / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert meta['version'] == 8
    qos = {
        t['topic_metadata']['name']: _yaml(t['topic_metadata']['offered_qos_profiles'])
        for t in meta['topics_with_message_count']
    }
    assert qos['/tf_static'][0]['durability'] == 1 and qos['/tf_static'][0]['depth'] == 1  # transient local
    assert qos['/tf'][0]['durability'] == 2  # volatile
    topics = Counter(m.topic for m in read_bag(out / 'scene-0001', distro='humble'))
    assert '/lidar_top/points' not in topics and topics['/occupancy/ground_truth'] == 2


def test_errors_name_the_input(dataset, tmp_path):
    cfg, root, _ = dataset
    with pytest.raises(ConvertError, match="unknown scene.*'scene-9'"):
        convert(ConvertConfig(root=cfg.out, out=tmp_path / 'a', scenes=('scene-9',)), progress=False)
    with pytest.raises(ConvertError, match='bag folders exist already'):
        convert(ConvertConfig(root=cfg.out, out=root / 'bags'), progress=False)
    with pytest.raises(ConvertError, match='v9.9'):
        convert(ConvertConfig(root=cfg.out, out=tmp_path / 'b', version='v9.9'), progress=False)
    empty = tmp_path / 'gts'
    empty.mkdir()
    with pytest.raises(ConvertError, match='labels.npz: missing Occ3D ground truth'):
        convert(ConvertConfig(root=cfg.out, out=tmp_path / 'c', gts=empty), progress=False)
