"""The ``occ-perception`` command.

Each subcommand is a plain function taking parsed arguments; :func:`build_parser`
lists them explicitly.
"""

from __future__ import annotations

import argparse
import platform
import sys
from importlib import metadata

from . import __version__


def cmd_info(args: argparse.Namespace) -> int:
    """Print versions of the package and of the optional runtime libraries."""
    print(f'occ_perception {__version__} on Python {platform.python_version()}')
    for dist in ('numpy', 'torch', 'onnx', 'onnxruntime', 'tensorrt', 'rosbags', 'opencv-python-headless'):
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = 'not installed'
        print(f'  {dist}: {version}')
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='occ-perception', description=__doc__.splitlines()[0])
    parser.add_argument('--version', action='version', version=f'occ_perception {__version__}')
    sub = parser.add_subparsers(dest='command', required=True)

    info = sub.add_parser('info', help='versions of the package and its runtime libraries')
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == '__main__':
    sys.exit(main())
