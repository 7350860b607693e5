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


def cmd_synth(args: argparse.Namespace) -> int:
    """Generate a synthetic nuScenes-format dataset with Occ3D ground truth and flow."""
    from pathlib import Path

    from .data.synth_nuscenes import SynthConfig, SynthError, generate_dataset

    cfg = SynthConfig(
        out=Path(args.out),
        scenes=args.scenes,
        seconds=args.seconds,
        seed=args.seed,
        width=args.width,
        height=args.height,
        sweeps=args.sweeps,
        version=args.version_name,
        jpeg_quality=args.jpeg_quality,
        jobs=args.jobs,
    )
    try:
        report = generate_dataset(cfg, progress=not args.quiet)
    except SynthError as err:
        print(f'occ-perception synth: --{str(err).replace("_", "-")}', file=sys.stderr)
        return 2
    key = report.keyframe_seconds
    print(f'wrote {len(report.scene_names)} scene(s), {len(key)} keyframes to {report.out} '
          f'in {report.total_seconds:.1f} s')
    print(f'  per keyframe (6 cameras {cfg.width}x{cfg.height}, lidar, ground truth, files): '
          f'mean {sum(key) / len(key):.2f} s, max {max(key):.2f} s')
    if report.sweep_seconds:
        sw = report.sweep_seconds
        print(f'  per sweep frame (1 camera): mean {sum(sw) / len(sw):.3f} s; {len(sw)} frames, {sum(sw):.1f} s '
              f'(x{sum(sw) / max(sum(key), 1e-9):.1f} the keyframe cost)')
    for name, classes in zip(report.scene_names, report.classes):
        print(f'  {name}: {len(classes)} of 17 classes in the ground truth')
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='occ-perception', description=__doc__.splitlines()[0])
    parser.add_argument('--version', action='version', version=f'occ_perception {__version__}')
    sub = parser.add_subparsers(dest='command', required=True)

    info = sub.add_parser('info', help='versions of the package and its runtime libraries')
    info.set_defaults(func=cmd_info)

    synth = sub.add_parser('synth', help='synthetic nuScenes-format dataset with Occ3D ground truth and flow')
    synth.add_argument('--out', required=True, help='output folder (dataroot)')
    synth.add_argument('--scenes', type=int, default=2, help='number of scenes (default 2)')
    synth.add_argument('--seconds', type=float, default=10.0,
                       help='scene length in seconds (default 10; 2 keyframes per second)')
    synth.add_argument('--seed', type=int, default=0, help='dataset seed (default 0)')
    synth.add_argument('--width', type=int, default=800, help='image width in pixels (default 800)')
    synth.add_argument('--height', type=int, default=450, help='image height in pixels (default 450)')
    synth.add_argument('--sweeps', action='store_true', help='also render the 12 Hz camera sweeps between keyframes')
    synth.add_argument('--version', dest='version_name', default='v1.0-mini',
                       help='name of the table folder (default v1.0-mini)')
    synth.add_argument('--jpeg-quality', type=int, default=90, help='JPEG quality 1..100 (default 90)')
    synth.add_argument('--jobs', type=int, default=1,
                       help='worker processes, one scene each (default 1; 2 halves the time of 2 scenes on 2 cores)')
    synth.add_argument('--quiet', action='store_true', help='no progress bar')
    synth.set_defaults(func=cmd_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == '__main__':
    sys.exit(main())
