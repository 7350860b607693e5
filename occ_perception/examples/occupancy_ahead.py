"""A planner-side example node: logs what is ahead of the ego vehicle in occ_node's output.

Subscribes to ``occupancy/semantics`` and ``occupancy/flow``, pairs the two messages of a frame by
stamp, and logs once per frame the nearest blocked column straight ahead (class, distance, height,
speed) and the voxel at a fixed probe point, through the ROS-free
:class:`occ_perception.query.VoxelQuery`. Run beside occ_node:

    python3 $(ros2 pkg prefix occ_perception)/share/occ_perception/examples/occupancy_ahead.py
    python3 .../occupancy_ahead.py --ros-args -p half_width:=1.2 -p max_distance:=30.0
"""

from __future__ import annotations

import sys

import rclpy
from occ_perception.query import VoxelQuery
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from occ_perception_msgs.msg import OccupancyFlow, SemanticOccupancy


def stamp_ns(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


class OccupancyAhead(Node):
    """Pairs semantics and flow by stamp and logs the nearest obstacle in the ego lane."""

    def __init__(self) -> None:
        super().__init__('occupancy_ahead')
        self.max_distance = float(self.declare_parameter('max_distance', 40.0).value)  # [m] ahead of base_link
        self.half_width = float(self.declare_parameter('half_width', 1.0).value)  # [m] either side of y = 0
        self.probe = [float(v) for v in self.declare_parameter('probe', [10.0, 0.0, 0.6]).value]  # x, y, z [m]
        self._semantics: dict[int, SemanticOccupancy] = {}
        self._flows: dict[int, OccupancyFlow] = {}
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(SemanticOccupancy, 'occupancy/semantics', self._on_semantics, qos)
        self.create_subscription(OccupancyFlow, 'occupancy/flow', self._on_flow, qos)

    def _on_semantics(self, msg: SemanticOccupancy) -> None:
        self._semantics[stamp_ns(msg)] = msg
        self._try(stamp_ns(msg))

    def _on_flow(self, msg: OccupancyFlow) -> None:
        self._flows[stamp_ns(msg)] = msg
        self._try(stamp_ns(msg))

    def _try(self, stamp: int) -> None:
        if stamp not in self._semantics or stamp not in self._flows:
            return
        query = VoxelQuery.from_messages(self._semantics.pop(stamp), self._flows.pop(stamp))
        for old in [s for s in self._semantics if s < stamp]:  # a model without flow head never pairs: drop
            del self._semantics[old]
        for old in [s for s in self._flows if s < stamp]:
            del self._flows[old]
        ahead = query.first_blocked_ahead(self.max_distance, 0.0, self.half_width)
        probe = query.at(*self.probe)
        where = f'probe {self.probe}: {probe.name}, {probe.speed:.1f} m/s'
        if ahead is None:
            self.get_logger().info(f'clear for {self.max_distance:.0f} m ahead; {where}')
            return
        x, column = ahead
        name = query.class_name(column.top_label)
        self.get_logger().info(
            f'blocked {x:.1f} m ahead at y = {column.center[1]:.1f} m ({name}, up to '
            f'z = {column.top:.1f} m, '
            f'moving {column.max_speed:.1f} m/s: vx {column.velocity[0]:.1f}, '
            f'vy {column.velocity[1]:.1f}); {where}'
        )


def main(argv: list[str] | None = None) -> int:
    rclpy.init(args=argv)
    node = OccupancyAhead()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
