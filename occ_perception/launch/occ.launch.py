"""Launch occ_node with the package's default parameters.

ros2 launch occ_perception occ.launch.py [params_file:=...] [namespace:=...]
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    default_params = os.path.join(get_package_share_directory('occ_perception'), 'config', 'occ.yaml')
    return LaunchDescription(
        [
            DeclareLaunchArgument('params_file', default_value=default_params, description='node parameters (YAML)'),
            DeclareLaunchArgument('namespace', default_value='', description='namespace of the node and its topics'),
            Node(
                package='occ_perception',
                executable='occ_node',
                name='occ_node',
                namespace=LaunchConfiguration('namespace'),
                parameters=[LaunchConfiguration('params_file')],
                output='screen',
            ),
        ]
    )
