"""occ_perception: an ament_python package that pip can install as well.

On a ROS 2 machine colcon runs this file; elsewhere ``pip install ./occ_perception``
does. The Python-only requirements (torch, onnxruntime, rosbags, ...) live in
extras, not in install_requires: on a ROS machine they come from pip, and a
missing one must neither fail ``colcon build`` nor stop the console scripts.
The message definitions of the sibling package ``occ_perception_msgs`` are
copied into the Python package at build time, so that a pip-installed
``occ_perception`` can read them without a ROS installation.
"""

from __future__ import annotations

import shutil
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

PACKAGE = 'occ_perception'
HERE = Path(__file__).resolve().parent
MSG_DIR = HERE.parent / 'occ_perception_msgs' / 'msg'


class BuildPyWithMessages(build_py):
    """build_py that also copies ``occ_perception_msgs/msg/*.msg`` into ``occ_perception/msg``."""

    def run(self) -> None:
        super().run()
        if not self.dry_run and MSG_DIR.is_dir():
            target = Path(self.build_lib) / PACKAGE / 'msg'
            target.mkdir(parents=True, exist_ok=True)
            for path in sorted(MSG_DIR.glob('*.msg')):
                shutil.copy2(path, target / path.name)


def share_files(folder: str) -> list[tuple[str, list[str]]]:
    """data_files entries installing ``folder`` (recursively) under share/occ_perception."""
    entries: dict[str, list[str]] = {}
    for path in sorted(glob(f'{folder}/**/*', recursive=True)):
        if Path(path).is_file() and '__pycache__' not in path:
            entries.setdefault(str(Path('share', PACKAGE, Path(path).parent)), []).append(path)
    return sorted(entries.items())


RUNTIME = [
    'numpy>=1.22',
    'pyquaternion>=0.9.5',
    'opencv-python-headless>=4.5',
    'pillow>=9',
    'rosbags>=0.10.4',
    'tqdm>=4.60',
    'torch>=2.1',
    'onnx>=1.15',
    'onnxruntime>=1.16',
    'onnxscript>=0.1',  # only for `occ-perception export --dynamo`
    'matplotlib>=3.6',  # the confusion-matrix and loss PNGs of eval, demo and train
]

# What nuscenes-devkit 1.2.0's `nuscenes.nuscenes` module imports beyond RUNTIME. The devkit itself pins
# numpy<2 and Shapely~=2.0.3 for parts we do not use, so `make test` installs it with --no-deps from
# test/requirements-devkit.txt; loading tables, get_box and ego poses work with numpy 2.
DEVKIT_IMPORTS = ['matplotlib>=3.6', 'scikit-learn>=1.3', 'cachetools>=5']

setup(
    name=PACKAGE,
    version='0.1.0',
    description='Camera-only 3D semantic occupancy and flow for ROS 2 (FlashOCC-class, TensorRT).',
    license='Apache-2.0',
    maintainer='occ_perception maintainers',
    maintainer_email='maintainers@occ-perception.org',
    python_requires='>=3.10',
    packages=find_packages(exclude=['test', 'test.*']),
    package_data={PACKAGE: ['msg/*.msg', 'msg_foxglove/*.msg']},
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        *share_files('launch'),
        *share_files('config'),
        *share_files('models'),
        *share_files('examples'),
    ],
    install_requires=[],
    extras_require={
        'runtime': RUNTIME,
        # engine builds and runs on a GPU machine: TensorRT 10 or 11 and the CUDA runtime API of cuda-python
        # (no torch). fp16 engines need the fp16 ONNX from ModelOpt AutoCast, installed lean with --no-deps
        # from test/requirements-modelopt.txt (its [onnx] extra would pull a second torch and onnxruntime-gpu).
        'tensorrt': ['tensorrt>=10', 'cuda-python>=12'],
        # occ-perception train: the devkit's own install (nuscenes-devkit, with --no-deps) plus what it imports
        'train': RUNTIME + DEVKIT_IMPORTS,
        # mcap + mcap-ros2-support: an independent reader that decodes converted bags from their stored definitions
        'test': RUNTIME
        + [
            'pytest>=7',
            'hypothesis>=6.100',  # fuzz tests (test/test_fuzz.py)
            'catkin_pkg>=0.5',
            'mcap>=1.1',
            'mcap-ros2-support>=0.5',
            'pyyaml>=5.4',
            'ruff>=0.6',
            'mypy>=1.10',
        ]
        + DEVKIT_IMPORTS,
    },
    cmdclass={'build_py': BuildPyWithMessages},
    zip_safe=False,
    entry_points={
        'console_scripts': [
            'occ_node = occ_perception.ros.node:main',
            'occ-perception = occ_perception.cli:main',
        ],
    },
)
