"""occ_node itself under rclpy; skipped where ROS 2 (rclpy, message_filters, occ_perception_msgs) is not sourced."""

from __future__ import annotations

import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('message_filters')
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
