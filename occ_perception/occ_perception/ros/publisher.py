"""A bare rclpy publisher in its own context, for measuring what publishing costs (``occ-perception bench``).

rclpy glue like :mod:`.node`: imported only where a ROS 2 environment is sourced.
"""

from __future__ import annotations

from typing import Any

import rclpy
from rclpy.context import Context


class BarePublisher:
    """One node with one publisher (depth 1, no subscriber needed) in a private rclpy context.

    Args:
        msg_type: the generated message class (e.g. ``visualization_msgs.msg.MarkerArray``).
        topic: topic name, relative to the node (``~/markers``).
        node_name: the node's name.

    Use as a context manager; :meth:`publish` sends one message.
    """

    def __init__(self, msg_type: Any, topic: str = '~/out', node_name: str = 'occ_perception_bench') -> None:
        self._context = Context()
        rclpy.init(context=self._context)
        try:
            self._node = rclpy.create_node(node_name, context=self._context)
            self._publisher = self._node.create_publisher(msg_type, topic, 1)
        except Exception:
            rclpy.shutdown(context=self._context)
            raise

    def publish(self, msg: Any) -> None:
        self._publisher.publish(msg)

    def close(self) -> None:
        self._node.destroy_node()
        rclpy.shutdown(context=self._context)

    def __enter__(self) -> BarePublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
