"""The ``occ_node`` entry point (rclpy).

The node itself is not written yet: the ROS-free parts it will glue together
(rig, geometry, messages, network, temporal cache, pipeline) come first. Until
then ``occ_node`` exits with a clear message instead of pretending to run.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Console script ``occ_node``; exits with status 2 and says why."""
    print(
        'occ_node: the ROS 2 node is not implemented in this version of occ_perception; '
        'the ROS-free pipeline it will run is being built first (see README).',
        file=sys.stderr,
    )
    return 2


if __name__ == '__main__':
    sys.exit(main())
