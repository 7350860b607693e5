"""occ_perception: camera-only 3D semantic occupancy and occupancy flow for ROS 2.

Everything but :mod:`occ_perception.ros` is free of ROS imports and runs (and
is tested) without a ROS installation. See DESIGN.md for the module map.
"""

__version__ = '0.1.0'
