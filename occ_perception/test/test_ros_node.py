"""occ_node itself under rclpy; skipped where ROS 2 (rclpy, occ_perception_msgs) is not sourced."""

from __future__ import annotations

import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('occ_perception_msgs')

from occ_perception.ros import node as occ_node  # noqa: E402


@pytest.fixture
def ros():
    yield
    if rclpy.ok():
        rclpy.shutdown()


def test_invalid_parameter_ends_the_start_with_its_name(ros):
    rclpy.init(args=['--ros-args', '-p', 'sync_slop:=5.0'])
    with pytest.raises(occ_node.StartupError, match='sync_slop'):
        occ_node.OccNode()


def test_inconsistent_parameters_end_the_start(ros):
    rclpy.init(args=['--ros-args', '-p', 'costmap_z_min:=3.0', '-p', 'costmap_z_max:=1.0'])
    with pytest.raises(occ_node.StartupError, match='z_min < z_max'):
        occ_node.OccNode()


def test_main_exits_2_on_a_missing_model(tmp_path, capsys):
    code = occ_node.main(['occ_node', '--ros-args', '-p', f'model:={tmp_path / "missing.onnx"}'])
    assert code == 2 and 'missing.onnx' in capsys.readouterr().err


def test_the_node_subscribes_each_camera_into_the_assembler_with_the_failed_camera_parameters(ros):
    rclpy.init(args=['occ_node', '--ros-args', '-p', 'camera_timeout:=2.5', '-p', 'failed_camera_mode:=blank_image'])
    node = occ_node.OccNode()
    try:
        topics = {sub.topic_name for sub in node.subscriptions}
        cams = node.params.cameras
        assert {f'/{c}/image_rect/compressed' for c in cams} | {f'/{c}/camera_info' for c in cams} <= topics
        assert {'/odom', '/tf_static'} <= topics and '/tf' not in topics
        config = node.assembly.assembler.config
        assert config.camera_timeout == 2.5 and config.cameras == cams and config.pose_source == 'odom'
        assert node.pipeline.failed_camera_mode == 'blank_image'
    finally:
        node.close()
        node.destroy_node()
