"""Launch occ_node (and optionally RViz) with the package's parameters.

    ros2 launch occ_perception occ.launch.py [params_file:=...] [model:=...] [backend:=...]
        [namespace:=...] [use_sim_time:=true] [rviz:=true]

``model`` and ``backend`` override the parameters file only when given (non-empty).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

OVERRIDES = ('model', 'backend')  # node parameters that launch arguments may override


def _occ_node(context, *args, **kwargs):
    overrides = {name: LaunchConfiguration(name).perform(context) for name in OVERRIDES}
    parameters = [LaunchConfiguration('params_file').perform(context)]
    given = {name: value for name, value in overrides.items() if value}
    if given:
        parameters.append(given)
    parameters.append({'use_sim_time': LaunchConfiguration('use_sim_time').perform(context).lower() in ('true', '1')})
    return [
        Node(
            package='occ_perception',
            executable='occ_node',
            name='occ_node',
            namespace=LaunchConfiguration('namespace'),
            parameters=parameters,
            output='screen',
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory('occ_perception')
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                'params_file',
                default_value=os.path.join(share, 'config', 'occ.yaml'),
                description='node parameters (YAML)',
            ),
            DeclareLaunchArgument(
                'model', default_value='', description='ONNX, engine or .pt checkpoint; empty keeps the parameters file'
            ),
            DeclareLaunchArgument(
                'backend',
                default_value='',
                description='auto, tensorrt, onnxruntime or torch; empty keeps the parameters file',
            ),
            DeclareLaunchArgument('namespace', default_value='', description='namespace of the node and its topics'),
            DeclareLaunchArgument('use_sim_time', default_value='false', description='true with ros2 bag play --clock'),
            DeclareLaunchArgument('rviz', default_value='false', description='also start RViz with config/occ.rviz'),
            OpaqueFunction(function=_occ_node),
            Node(
                package='rviz2',
                executable='rviz2',
                name='rviz2',
                namespace=LaunchConfiguration('namespace'),
                arguments=['-d', os.path.join(share, 'config', 'occ.rviz')],
                parameters=[{'use_sim_time': LaunchConfiguration('use_sim_time')}],
                condition=IfCondition(LaunchConfiguration('rviz')),
                output='screen',
            ),
        ]
    )
