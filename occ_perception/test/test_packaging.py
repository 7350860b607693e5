"""The two ROS 2 packages: manifests, wheel contents, console scripts."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from catkin_pkg.package import parse_package
from occ_perception.messages import MSG_NAMES


@pytest.mark.parametrize('name', ['occ_perception', 'occ_perception_msgs'])
def test_package_xml_is_valid_format_3(repo_root: Path, name: str) -> None:
    package = parse_package(str(repo_root / name / 'package.xml'))
    package.validate()  # raises InvalidPackage on any problem
    assert package.package_format == 3
    assert package.name == name


def test_node_package_declares_its_run_dependencies(package_dir: Path) -> None:
    package = parse_package(str(package_dir / 'package.xml'))
    run = {d.name for d in package.exec_depends}
    needed = {
        'rclpy', 'cv_bridge', 'sensor_msgs', 'sensor_msgs_py', 'nav_msgs', 'geometry_msgs',
        'std_msgs', 'std_srvs', 'visualization_msgs', 'diagnostic_msgs', 'tf2_msgs', 'occ_perception_msgs',
        'python3-numpy', 'python3-opencv', 'python3-pyquaternion',
    }  # fmt: skip
    assert needed <= run, f'missing exec_depends: {sorted(needed - run)}'
    assert package.get_build_type() == 'ament_python'


def test_messages_package_generates_interfaces(repo_root: Path) -> None:
    package = parse_package(str(repo_root / 'occ_perception_msgs' / 'package.xml'))
    assert 'rosidl_interface_packages' in [g.name for g in package.member_of_groups]
    assert package.get_build_type() == 'ament_cmake'
    cmake = (repo_root / 'occ_perception_msgs' / 'CMakeLists.txt').read_text()
    for name in MSG_NAMES:
        assert f'"msg/{name}.msg"' in cmake
        assert (repo_root / 'occ_perception_msgs' / 'msg' / f'{name}.msg').is_file()


@pytest.fixture(scope='module')
def wheel(tmp_path_factory: pytest.TempPathFactory, package_dir: Path) -> Path:
    out = tmp_path_factory.mktemp('wheel')
    subprocess.run(
        [
            sys.executable,
            '-m',
            'pip',
            'wheel',
            '--no-deps',
            '--no-build-isolation',
            '-q',
            '-w',
            str(out),
            str(package_dir),
        ],
        check=True,
    )
    (path,) = out.glob('occ_perception-*.whl')
    return path


def test_wheel_carries_share_folders(wheel: Path, package_dir: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    share = [n.split('.data/data/', 1)[1] for n in names if '.data/data/' in n]
    for folder in ('launch', 'config', 'models'):
        expected = sorted(
            f'share/occ_perception/{p.relative_to(package_dir).as_posix()}'
            for p in (package_dir / folder).rglob('*')
            if p.is_file() and '__pycache__' not in p.parts
        )
        assert expected, f'{folder}/ is empty'
        assert set(expected) <= set(share), f'{folder} missing from the wheel: {sorted(set(expected) - set(share))}'
    assert 'share/occ_perception/package.xml' in share
    assert 'share/ament_index/resource_index/packages/occ_perception' in share
    # the message definitions travel inside the Python package for ROS-free installs
    for name in MSG_NAMES:
        assert f'occ_perception/msg/{name}.msg' in names


def test_wheel_declares_console_scripts_and_no_hard_requirements(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        info = next(n for n in zf.namelist() if n.endswith('.dist-info/entry_points.txt'))
        entry_points = zf.read(info).decode()
        meta = zf.read(info.replace('entry_points.txt', 'METADATA')).decode()
    assert 'occ_node = occ_perception.ros.node:main' in entry_points
    assert 'occ-perception = occ_perception.cli:main' in entry_points
    # Python-only requirements are extras: a ROS machine that lacks one still starts the scripts
    hard = [line for line in meta.splitlines() if line.startswith('Requires-Dist:') and 'extra ==' not in line]
    assert hard == []


def test_cli_runs(tmp_path: Path) -> None:
    # from another folder: in the repository root, the ament package folder occ_perception/ would shadow the module
    result = subprocess.run(
        [sys.executable, '-m', 'occ_perception.cli', 'info'], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert 'occ_perception' in result.stdout and 'numpy' in result.stdout
