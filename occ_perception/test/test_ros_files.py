"""The node, launch, example and configuration files, checked without ROS (ast, yaml, py_compile)."""

from __future__ import annotations

import ast
import py_compile
from pathlib import Path

import pytest
from occ_perception.ros.logic import OUTPUT_TOPICS
from occ_perception.ros.params import PARAMS, validate_params

yaml = pytest.importorskip('yaml')

PACKAGE_DIR = Path(__file__).resolve().parents[1]
NODE = PACKAGE_DIR / 'occ_perception' / 'ros' / 'node.py'
PUBLISHER = PACKAGE_DIR / 'occ_perception' / 'ros' / 'publisher.py'  # the bench's bare rclpy publisher
LAUNCH = PACKAGE_DIR / 'launch' / 'occ.launch.py'
EXAMPLE = PACKAGE_DIR / 'examples' / 'occupancy_ahead.py'
CONFIG = PACKAGE_DIR / 'config' / 'occ.yaml'
RVIZ = PACKAGE_DIR / 'config' / 'occ.rviz'
LAUNCH_ARGUMENTS = {'params_file', 'model', 'backend', 'namespace', 'use_sim_time', 'rviz'}


@pytest.mark.parametrize('path', [NODE, LAUNCH, EXAMPLE], ids=lambda p: p.name)
def test_files_compile(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / 'out.pyc'), doraise=True)


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and (
            (isinstance(n.func, ast.Name) and n.func.id == name)
            or (isinstance(n.func, ast.Attribute) and n.func.attr == name)
        )
    ]


def test_node_declares_exactly_the_parameter_table():
    """node.py declares parameters in one loop over PARAMS (name, default, descriptor) and nowhere else."""
    tree = ast.parse(NODE.read_text())
    declares = _calls(tree, 'declare_parameter')
    assert len(declares) == 1
    call = declares[0]
    assert [ast.unparse(a) for a in call.args] == ['spec.name', 'spec.default', 'desc']
    assert 'desc = param_descriptor(spec, self.types)' in ast.unparse(tree)
    loops = [n for n in ast.walk(tree) if isinstance(n, ast.For) and ast.unparse(n.iter) == 'PARAMS']
    assert len(loops) == 1 and call in list(ast.walk(loops[0]))
    assert not _calls(tree, 'declare_parameters')


def test_yaml_lists_every_parameter_with_its_default_and_a_comment():
    text = CONFIG.read_text()
    values = yaml.safe_load(text)['occ_node']['ros__parameters']
    assert list(values) == [p.name for p in PARAMS]
    for p in PARAMS:
        assert values[p.name] == p.default and type(values[p.name]) is type(p.default), p.name
    validate_params(values)
    lines = text.splitlines()
    for p in PARAMS:
        i = next(k for k, line in enumerate(lines) if line.strip().startswith(f'{p.name}:'))
        assert lines[i - 1].strip().startswith('#'), f'{p.name} has no comment above it'


def test_launch_arguments_and_overrides_are_node_parameters():
    tree = ast.parse(LAUNCH.read_text())
    declared = {c.args[0].value for c in _calls(tree, 'DeclareLaunchArgument')}
    assert declared == LAUNCH_ARGUMENTS
    overrides = next(
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign) and [ast.unparse(t) for t in n.targets] == ['OVERRIDES']
    )
    names = set(ast.literal_eval(overrides))
    assert names == {'model', 'backend'} and names <= {p.name for p in PARAMS}
    # every LaunchConfiguration refers to a declared argument
    used = {c.args[0].value for c in _calls(tree, 'LaunchConfiguration') if isinstance(c.args[0], ast.Constant)}
    assert used <= declared and 'use_sim_time' in used
    nodes = _calls(tree, 'Node')
    executables = {kw.value.value for n in nodes for kw in n.keywords if kw.arg == 'executable'}
    assert executables == {'occ_node', 'rviz2'}


def test_rviz_config_shows_points_as_boxes_markers_costmap_and_front_camera():
    config = yaml.safe_load(RVIZ.read_text())
    displays = {d['Class']: d for d in config['Visualization Manager']['Displays']}
    points = displays['rviz_default_plugins/PointCloud2']
    assert points['Topic']['Value'] == 'occupancy/points' in OUTPUT_TOPICS and points['Style'] == 'Boxes'
    assert points['Color Transformer'] == 'RGB8' and points['Size (m)'] == pytest.approx(0.4)
    assert displays['rviz_default_plugins/MarkerArray']['Topic']['Value'] == 'occupancy/markers'
    assert displays['rviz_default_plugins/Map']['Topic']['Value'] == 'occupancy/costmap'
    assert displays['rviz_default_plugins/Image']['Topic']['Value'] == 'cam_front/image_rect/compressed'
    assert config['Visualization Manager']['Global Options']['Fixed Frame'] == 'base_link'


def test_only_the_node_module_imports_rclpy():
    """ROS-free modules never import rclpy (nor message_filters, tf2_ros, cv_bridge): only the node and the
    bench's bare publisher, both glue."""
    ros_only = {'rclpy', 'message_filters', 'tf2_ros', 'cv_bridge'}
    offenders = []
    for path in sorted((PACKAGE_DIR / 'occ_perception').rglob('*.py')):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            if any(n.split('.')[0] in ros_only for n in names) and path not in (NODE, PUBLISHER):
                offenders.append(str(path.relative_to(PACKAGE_DIR)))
    assert offenders == []


def test_node_module_stays_glue():
    # "about 250 lines": the formatter puts long calls one argument per line
    assert len(NODE.read_text().splitlines()) <= 255


def test_examples_are_installed_with_the_package():
    setup = (PACKAGE_DIR / 'setup.py').read_text()
    assert "share_files('examples')" in setup and "share_files('config')" in setup
