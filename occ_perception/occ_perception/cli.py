"""The ``occ-perception`` command.

Each subcommand is a plain function taking parsed arguments; :func:`build_parser`
lists them explicitly. Expected failures (a bad argument, a missing or
malformed input: :data:`EXPECTED_ERRORS`, :class:`CliError` and ``OSError``)
are reported by :func:`main` as one line on stderr with exit status 2; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import math
import platform
import sys
from importlib import metadata
from typing import NoReturn

from . import __version__

# The package's error classes, by module, for main(). They are looked up in the
# modules already imported when an error arrives, so that `info` does not import
# torch just to know the checkpoint errors (a class whose module is not imported
# cannot have been raised).
EXPECTED_ERRORS: tuple[tuple[str, str], ...] = (
    ('occ_perception.geometry', 'GeometryError'),
    ('occ_perception.grid', 'GridError'),
    ('occ_perception.rig', 'RigError'),
    ('occ_perception.temporal', 'TemporalError'),
    ('occ_perception.messages', 'MessagesError'),
    ('occ_perception.model.config', 'ConfigError'),
    ('occ_perception.model.splat_tables', 'SplatError'),
    ('occ_perception.model.flashocc', 'CheckpointError'),
    ('occ_perception.model.checkpoint', 'ModelCheckpointError'),
    ('occ_perception.model.network', 'NetworkInputError'),
    ('occ_perception.runtime.base', 'BackendError'),
    ('occ_perception.runtime.export', 'ExportError'),
    ('occ_perception.runtime.engine', 'EngineError'),
    ('occ_perception.data.synth_nuscenes', 'SynthError'),
    ('occ_perception.data.synth_world', 'WorldError'),
    ('occ_perception.data.synth_render', 'RenderError'),
    ('occ_perception.data.synth_gt', 'GroundTruthError'),
    ('occ_perception.metrics', 'MetricsError'),
    ('occ_perception.raycast', 'RaycastError'),
    ('occ_perception.preprocess', 'PreprocessError'),
    ('occ_perception.pipeline', 'PipelineError'),
    ('occ_perception.evaluate', 'EvalError'),
    ('occ_perception.data.bags', 'BagError'),
    ('occ_perception.data.convert', 'ConvertError'),
    ('occ_perception.sync', 'SyncError'),
    ('occ_perception.frame_assembly', 'AssemblyError'),
    ('occ_perception.replay', 'ReplayError'),
    ('occ_perception.demo', 'DemoError'),
)


class CliError(Exception):
    """A command cannot run with the arguments given (names the argument and what was expected)."""


def expected_errors() -> tuple[type[BaseException], ...]:
    """The exception classes :func:`main` reports as one line: CliError, OSError and the imported package errors."""
    classes: list[type[BaseException]] = [CliError, OSError]
    for module_name, class_name in EXPECTED_ERRORS:
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if isinstance(cls, type) and issubclass(cls, BaseException):
            classes.append(cls)
    return tuple(classes)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (and exit status 2, as argparse)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f'{self.prog}: error: {message} (see {self.prog} --help)\n')


def cmd_info(args: argparse.Namespace) -> int:
    """Print versions of the package and of the optional runtime libraries (as imported, whatever installed them)."""
    print(f'occ_perception {__version__} on Python {platform.python_version()}')
    for module in ('numpy', 'torch', 'onnx', 'onnxruntime', 'tensorrt', 'rosbags', 'cv2', 'pyquaternion'):
        try:
            imported = importlib.import_module(module)
            version = str(getattr(imported, '__version__', None) or metadata.version(module))
        except ImportError:
            version = 'not installed'
        except metadata.PackageNotFoundError:
            version = 'installed (version unknown)'
        print(f'  {module}: {version}')
    return 0


def cmd_import_flashocc(args: argparse.Namespace) -> int:
    """Convert a FlashOCC checkpoint into ours (identity key mapping plus documented additions)."""
    from .model.checkpoint import save_checkpoint
    from .model.config import get_config
    from .model.flashocc import load_flashocc_checkpoint

    net, report = load_flashocc_checkpoint(args.checkpoint, get_config(args.config, flow_head=not args.no_flow_head))
    print(f'{args.checkpoint}: {report.summary()}')
    if not report.ok and not args.allow_mismatch:
        print('error: the checkpoint does not match the config (use --allow-mismatch to write anyway)', file=sys.stderr)
        return 1
    save_checkpoint(net, args.out)
    print(f'wrote {args.out} ({args.config})')
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a network to ONNX (random weights unless --checkpoint) and list its ops; with ``--fp16`` also its
    mixed fp16 graph (:func:`occ_perception.runtime.engine.fp16_graph`)."""
    import torch

    from .model.checkpoint import load_checkpoint
    from .model.config import get_config
    from .model.network import OccNet
    from .runtime.export import export_onnx, graph_op_types

    config = get_config(args.config, history=args.history)
    if args.checkpoint:
        net = load_checkpoint(args.checkpoint, config)
    else:
        torch.manual_seed(args.seed)
        net = OccNet(config)
        print('note: no --checkpoint given, exporting randomly initialised weights')
    path = export_onnx(net, args.out, dynamo=args.dynamo)
    ops = graph_op_types(path)
    print(f'wrote {path}: {config.name} history={config.history}')
    print('inputs: ' + ', '.join(s.describe() for s in net.input_specs()))
    print('outputs: ' + ', '.join(s.describe() for s in net.output_specs()))
    print('ops: ' + ', '.join(f'{k} x{v}' for k, v in ops.items()))
    if args.fp16:
        from .runtime.engine import fp16_graph
        from .runtime.export import sample_inputs

        half = fp16_graph(path, sample_inputs(net), rebuild=True)
        print(f'wrote {half}: the mixed fp16 graph (inputs and outputs keep their types)')
    return 0


def cmd_build_engine(args: argparse.Namespace) -> int:
    """Build the TensorRT engine of an exported ONNX file, or find it in the cache beside the file.

    Expected failures (no ONNX file, an ONNX of another configuration, no TensorRT,
    cuda-python or GPU, a failed conversion or build) raise; :func:`main` prints them as one line.
    """
    import os

    from .model.config import get_config
    from .model.network import OccNet
    from .rig import Rig
    from .runtime.base import match_specs
    from .runtime.engine import build_engine, onnx_io_specs, shape_ranges
    from .runtime.export import sample_inputs

    if not os.path.isfile(args.onnx):
        raise CliError(f'no ONNX file at {args.onnx!r} (make one with `occ-perception export`)')
    nuscenes = Rig.nuscenes()
    if not 1 <= args.cameras <= len(nuscenes):
        raise CliError(f"--cameras: expected 1 to {len(nuscenes)} (the nuScenes rig's cameras), got {args.cameras}")
    config = get_config(args.config, history=args.history)
    net = OccNet(config)
    rig = Rig(nuscenes.cameras[: args.cameras])
    inputs, _ = onnx_io_specs(args.onnx)
    match_specs(net.input_specs(), inputs, args.onnx)
    feeds = sample_inputs(net, rig)
    # tables get headroom for a recalibrated rig; images (this camera count) and history keep exact shapes
    exact = ('images', 'history_bev', 'history_theta', 'history_valid')
    ranges = shape_ranges(inputs, feeds, headroom=args.headroom, exact=exact)
    path = build_engine(
        args.onnx,
        ranges,
        precision=args.precision,
        workspace_bytes=int(args.workspace_gb * (1 << 30)),
        rebuild=args.rebuild,
        calibration_feeds=feeds,
    )
    print(f'engine: {path}')
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Per-stage timings of the frame path with baselines in the same run (median, 10th, 90th percentile);
    with ``--backend tensorrt|onnxruntime-cuda`` the network on a GPU (:func:`cmd_bench_gpu`)."""
    if getattr(args, 'backend', 'onnxruntime') != 'onnxruntime':
        return cmd_bench_gpu(args)
    for name in ('repeats', 'm0_repeats', 'naive_repeats', 'curve_repeats'):
        if getattr(args, name) < 1:
            raise CliError(f'--{name.replace("_", "-")}: expected at least 1, got {getattr(args, name)}')
    if args.threads < 0:
        raise CliError(f'--threads: expected 0 (default) or more, got {args.threads}')
    names = [n.strip() for n in args.stages.split(',') if n.strip()]
    if names != ['all'] and (not names or any(n not in BENCH_STAGES for n in names)):
        raise CliError(
            f'--stages: expected a comma-separated subset of {",".join(BENCH_STAGES)} or all, got {args.stages!r}'
        )
    stages = BENCH_STAGES if names == ['all'] else tuple(n for n in BENCH_STAGES if n in names)
    try:
        history_ks = tuple(int(k) for k in args.history_ks.split(',') if k.strip())
    except ValueError:
        history_ks = ()
    if not history_ks or min(history_ks) < 0:
        raise CliError(
            f'--history-ks: expected comma-separated history lengths >= 0, e.g. 0,2,8, got {args.history_ks!r}'
        )
    from .runtime.bench import CURVE_KS, run_bench  # imports torch: after the argument checks

    quick = bool(args.quick)
    try:  # the MarkerArray through a real rclpy publisher, where a ROS 2 environment is sourced
        from .ros.publisher import BarePublisher as marker_publisher
    except ImportError:
        marker_publisher = None  # type: ignore[assignment,misc]

    run_bench(
        repeats=args.repeats,
        m0_repeats=args.m0_repeats,
        threads=args.threads,
        skip_m0=args.skip_m0,
        stages=stages,
        images=args.images,
        json_path=args.json,
        naive_repeats=1 if quick else args.naive_repeats,
        history_ks=history_ks,
        plots_dir=args.plots,
        curve_repeats=1 if quick else args.curve_repeats,
        curve_ks=(0, 2, 4, 8) if quick else CURVE_KS,
        marker_publisher=marker_publisher,
    )
    return 0


BENCH_STAGES = ('preprocess', 'encode', 'naive', 'splat', 'network', 'history')
"""The stages of ``occ-perception bench`` (runtime.bench.STAGES, repeated here so the CLI checks without torch)."""


def cmd_bench_gpu(args: argparse.Namespace) -> int:
    """The network on TensorRT or onnxruntime CUDA: CUDA-event (or wall) timings and agreement with the CPU.

    Fails with one line (:func:`main`) before any export or build where the GPU backend cannot run.
    """
    if args.repeats < 1:
        raise CliError(f'--repeats: expected at least 1, got {args.repeats}')
    from .runtime.gpu_bench import check_gpu_backend, format_gpu_bench, run_gpu_bench

    check_gpu_backend(args.backend)
    from .demo import find_model
    from .model.config import get_config
    from .runtime.gpu_bench import model_feeds

    config = get_config(args.config, history=args.history)
    model = args.model or find_model(config, 'onnxruntime')
    result = run_gpu_bench(
        model,
        model_feeds(config),
        backend=args.backend,
        precision=args.precision,
        repeats=args.repeats,
        rebuild=args.rebuild,
        threads=args.threads,
    )
    for line in format_gpu_bench(result):
        print(line)
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
        cfg.validate()
    except SynthError as err:  # its messages start with the field name: name the option instead
        raise CliError(f'--{str(err).replace("_", "-")}') from err
    report = generate_dataset(cfg, progress=not args.quiet)
    key = report.keyframe_seconds
    print(
        f'wrote {len(report.scene_names)} scene(s), {len(key)} keyframes to {report.out} '
        f'in {report.total_seconds:.1f} s'
    )
    print(
        f'  per keyframe (6 cameras {cfg.width}x{cfg.height}, lidar, ground truth, files): '
        f'mean {sum(key) / len(key):.2f} s, max {max(key):.2f} s'
    )
    if report.sweep_seconds:
        sw = report.sweep_seconds
        print(
            f'  per sweep frame (1 camera): mean {sum(sw) / len(sw):.3f} s; {len(sw)} frames, {sum(sw):.1f} s '
            f'(x{sum(sw) / max(sum(key), 1e-9):.1f} the keyframe cost)'
        )
    for name, classes in zip(report.scene_names, report.classes):
        print(f'  {name}: {len(classes)} of 17 classes in the ground truth')
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert nuScenes scenes (+ Occ3D ground truth and flow) to rosbag2 MCAP bags, one per scene."""
    from pathlib import Path

    from .data.convert import ConvertConfig, convert

    config = ConvertConfig(
        root=Path(args.root),
        out=Path(args.out),
        version=args.version_name,
        gts=Path(args.gts) if args.gts else None,
        scenes=tuple(args.scenes or ()),
        distro=args.distro,
        lidar=args.lidar,
        compress=not args.no_compress,
    )
    for bag in convert(config, progress=not args.quiet):
        total = sum(bag.counts.values())
        print(f'wrote {bag.path}: {total} messages on {len(bag.counts)} topics')
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train a network on a nuScenes-format dataset with Occ3D labels (single process or under torchrun)."""
    import os
    from dataclasses import replace
    from pathlib import Path

    import torch

    from .data.occ3d import Augmentation, DatasetError
    from .train import (
        TrainConfig,
        TrainError,
        class_weights_from_counts,
        label_counts,
        load_datasets,
        train,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = TrainConfig(
            model=args.config,
            history=args.history,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            warmup_steps=args.warmup,
            min_lr_ratio=args.min_lr_ratio,
            grad_clip=args.grad_clip,
            ema_decay=args.ema,
            amp=not args.no_amp,
            semantic_weight=args.semantic_weight,
            flow_weight=args.flow_weight,
            depth_weight=args.depth_weight,
            mask=args.mask,
            augmentation=Augmentation(
                scale_jitter=args.scale_jitter, crop_jitter=args.crop_jitter, flip_x=args.flip_x, flip_y=args.flip_y
            ),
            seed=args.seed,
            shuffle=not args.no_shuffle,
            workers=args.workers,
            val_every=args.val_every,
            val_samples=args.val_samples,
            checkpoint_every=args.checkpoint_every,
            log_every=args.log_every,
            use_sweeps=args.sweeps,
            freeze_bn_step=args.freeze_bn_step,
        )
        train_set, val_set = load_datasets(cfg, args.data, args.version, args.val_data, args.val_version)
        if args.class_weights == 'auto':
            cfg = replace(cfg, class_weights=class_weights_from_counts(label_counts(train_set, cfg.mask)))
        elif args.class_weights:
            try:
                weights = tuple(float(v) for v in args.class_weights.split(','))
            except ValueError:
                raise CliError(
                    f'--class-weights: expected auto or 18 comma-separated numbers, got {args.class_weights!r}'
                ) from None
            cfg = replace(cfg, class_weights=weights)
        resume = str(Path(args.out) / 'last.pt') if args.resume == 'auto' else args.resume
        result = train(
            cfg,
            train_set,
            args.out,
            val_dataset=val_set,
            init=args.init,
            resume=resume,
            progress=not args.quiet,
            device=args.device,
        )
    except (TrainError, DatasetError) as err:
        raise CliError(str(err)) from err
    if int(os.environ.get('RANK', '0')) == 0:
        world = int(os.environ.get('WORLD_SIZE', '1'))
        print(
            f'trained {result.steps} steps on {len(train_set)} samples: last loss {result.last_loss:.4f}, '
            f'throughput {result.samples_per_second:.3f} samples/s ({world} process{"es" if world > 1 else ""}, '
            f'global batch {cfg.batch_size * world})'
        )
        if result.val_miou is not None:
            print(f'validation mIoU {result.val_miou:.4f}')
        print(f'wrote {result.model_path} and {Path(args.out) / "log.jsonl"}')
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Run a model over a dataset split through the pipeline; write metrics (JSON, Markdown) and a confusion PNG."""
    from .evaluate import run_eval
    from .model.config import get_config

    if args.max_frames is not None and args.max_frames < 1:
        raise CliError(f'--max-frames: expected at least 1, got {args.max_frames}')
    config = get_config(args.config, history=args.history)
    result = run_eval(
        args.model,
        config,
        args.backend,
        args.dataroot,
        args.out,
        version=args.version,
        scenes=args.scenes,
        split=args.split,
        use_history=not args.no_history,
        max_frames=args.max_frames,
        threads=args.threads,
        mask=args.mask,
        progress=not args.quiet,
        drop_cameras=tuple(args.drop_camera or ()),
        failed_camera_mode=args.failed_camera_mode,
    )
    report = result.report
    print(report.to_markdown(), end='')
    fps = report.extra.get('frames_per_second')
    if fps is not None:
        print(f'- speed: {fps:.2f} frames/s ({result.frames} frames through the pipeline, {args.backend})')
    print('wrote ' + ', '.join(str(p) for p in result.paths.values()))
    return 0


def _assembly(args: argparse.Namespace):  # -> AssemblyConfig
    from .frame_assembly import AssemblyConfig

    if args.queue_size < 1:
        raise CliError(f'--queue-size: expected at least 1, got {args.queue_size}')
    if not args.slop >= 0:
        raise CliError(f'--slop: expected seconds >= 0, got {args.slop}')
    if not (args.camera_timeout >= 0 and math.isfinite(args.camera_timeout)):
        raise CliError(f'--camera-timeout: expected seconds >= 0 (0 = off), got {args.camera_timeout}')
    return AssemblyConfig(
        queue_size=args.queue_size, slop=args.slop, pose_source=args.pose_source, camera_timeout=args.camera_timeout
    )


def _failed_camera_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        '--failed-camera-mode',
        choices=['mask_tables', 'blank_image'],
        default='mask_tables',
        help='a failed camera is fed as a black image with its splat table entries zeroed (mask_tables) or '
        'with the full tables (blank_image) (default mask_tables)',
    )


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay a bag through the pipeline: output bag, metrics against ground truth, timings, panels."""
    from .model.config import get_config
    from .replay import format_summary, run_replay

    if args.markers_rate < 0:
        raise CliError(f'--markers-rate: expected a rate >= 0 [Hz], got {args.markers_rate}')
    if args.panels < 0:
        raise CliError(f'--panels: expected 0 or more, got {args.panels}')
    if args.max_frames is not None and args.max_frames < 1:
        raise CliError(f'--max-frames: expected at least 1, got {args.max_frames}')
    if args.loops < 1:
        raise CliError(f'--loops: expected at least 1, got {args.loops}')
    config = get_config(args.config, history=args.history)
    summary = run_replay(
        args.bag,
        args.model,
        config,
        args.backend,
        args.out,
        threads=args.threads,
        assembly=_assembly(args),
        failed_camera_mode=args.failed_camera_mode,
        markers_rate=args.markers_rate,
        gt_tolerance=args.gt_tolerance,
        panels=args.panels,
        panel_frames=tuple(args.panel_frames or ()),
        gif=args.gif,
        max_frames=args.max_frames,
        distro=args.distro,
        progress=not args.quiet,
        loops=args.loops,
    )
    print(format_summary(summary))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Synthetic scene -> bag -> replay with the shipped tiny model -> output bag, panel, GIF, metrics."""
    from .demo import run_demo

    run_demo(
        args.out,
        seconds=args.seconds,
        seed=args.seed,
        width=args.width,
        height=args.height,
        model=args.model,
        backend=args.backend,
        threads=args.threads,
        progress=not args.quiet,
    )
    return 0


def _sync_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        '--camera-timeout',
        type=float,
        default=1.0,
        help='a camera silent for longer than this [s] is failed: frames go on without it until it returns '
        '(0 = off: wait for every camera; default 1.0)',
    )
    p.add_argument(
        '--slop',
        type=float,
        default=0.1,
        help='message_filters slop [s]: largest stamp spread of a synchronised set (default 0.1)',
    )
    p.add_argument(
        '--queue-size', type=int, default=3, help='message_filters queue size per input (default 3, as the node)'
    )
    p.add_argument(
        '--pose-source',
        choices=['odom', 'tf'],
        default='odom',
        help='odom: /odom is the 7th synchroniser input, its pose carried to the frame stamp with its '
        'twist; tf: map -> base_link from /tf interpolated at the frame stamp (default odom)',
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog='occ-perception', description=__doc__.splitlines()[0])
    parser.add_argument('--version', action='version', version=f'occ_perception {__version__}')
    sub = parser.add_subparsers(dest='command', required=True)

    info = sub.add_parser('info', help='versions of the package and its runtime libraries')
    info.set_defaults(func=cmd_info)

    synth = sub.add_parser('synth', help='synthetic nuScenes-format dataset with Occ3D ground truth and flow')
    synth.add_argument('--out', required=True, help='output folder (dataroot)')
    synth.add_argument('--scenes', type=int, default=2, help='number of scenes (default 2)')
    synth.add_argument(
        '--seconds', type=float, default=10.0, help='scene length in seconds (default 10; 2 keyframes per second)'
    )
    synth.add_argument('--seed', type=int, default=0, help='dataset seed (default 0)')
    synth.add_argument('--width', type=int, default=800, help='image width in pixels (default 800)')
    synth.add_argument('--height', type=int, default=450, help='image height in pixels (default 450)')
    synth.add_argument('--sweeps', action='store_true', help='also render the 12 Hz camera sweeps between keyframes')
    synth.add_argument(
        '--version', dest='version_name', default='v1.0-mini', help='name of the table folder (default v1.0-mini)'
    )
    synth.add_argument('--jpeg-quality', type=int, default=90, help='JPEG quality 1..100 (default 90)')
    synth.add_argument(
        '--jobs',
        type=int,
        default=1,
        help='worker processes, one scene each (default 1; 2 halves the time of 2 scenes on 2 cores)',
    )
    synth.add_argument('--quiet', action='store_true', help='no progress bar')
    synth.set_defaults(func=cmd_synth)

    conv = sub.add_parser('convert', help='nuScenes (+ Occ3D ground truth and flow) to rosbag2 MCAP, one bag per scene')
    conv.add_argument('root', help='nuScenes dataroot (holds VERSION/*.json, samples/, sweeps/)')
    conv.add_argument('--version', dest='version_name', default='v1.0-mini', help='table folder (default v1.0-mini)')
    conv.add_argument(
        '--gts',
        help='Occ3D ground-truth folder (GTS/<scene>/<sample token>/labels.npz); '
        'without it no ground-truth topics are written',
    )
    conv.add_argument('--out', required=True, help='output folder; one bag folder per scene is created in it')
    conv.add_argument('--scenes', nargs='+', metavar='NAME', help='scene names to convert (default: all)')
    conv.add_argument(
        '--distro',
        choices=['jazzy', 'humble'],
        default='jazzy',
        help='ROS 2 distro whose message definitions and bag format are written (default jazzy)',
    )
    conv.add_argument('--lidar', action='store_true', help='also write LIDAR_TOP as PointCloud2 on /lidar_top/points')
    conv.add_argument('--no-compress', action='store_true', help='do not zstd-compress the MCAP chunks')
    conv.add_argument('--quiet', action='store_true', help='no progress bar')
    conv.set_defaults(func=cmd_convert)

    from .model.config import CONFIGS

    imp = sub.add_parser('import-flashocc', help='convert a FlashOCC R50 checkpoint to ours')
    imp.add_argument('checkpoint', help='FlashOCC .pth ({"state_dict": ...}, EMA or not)')
    imp.add_argument('--config', required=True, choices=['flashocc-m0', 'flashocc-m1'])
    imp.add_argument('--out', required=True, help='our checkpoint (.pt)')
    imp.add_argument('--no-flow-head', action='store_true', help='leave out the flow head (an addition)')
    imp.add_argument('--allow-mismatch', action='store_true', help='write even with missing/unexpected keys')
    imp.set_defaults(func=cmd_import_flashocc)

    exp = sub.add_parser('export', help='export a network to ONNX')
    exp.add_argument('--config', required=True, choices=sorted(CONFIGS))
    exp.add_argument('--history', type=int, default=None, help="K cached BEV features (default: the config's, 0)")
    exp.add_argument('--checkpoint', help='our checkpoint (.pt) from import-flashocc or train')
    exp.add_argument('--seed', type=int, default=0, help='seed of random weights when no checkpoint is given')
    exp.add_argument('--out', required=True, help='output .onnx')
    exp.add_argument('--dynamo', action='store_true', help='use the torch.export-based exporter (needs onnxscript)')
    exp.add_argument(
        '--fp16',
        action='store_true',
        help='also write the mixed fp16 graph beside --out (ModelOpt AutoCast, what build-engine --precision fp16 '
        'builds; runs on onnxruntime CPU too)',
    )
    exp.set_defaults(func=cmd_export)

    eng = sub.add_parser('build-engine', help='build (or find cached) the TensorRT engine of an ONNX file')
    eng.add_argument('onnx', help='ONNX file from `occ-perception export`')
    eng.add_argument('--config', required=True, choices=sorted(CONFIGS), help='the config it was exported with')
    eng.add_argument('--history', type=int, default=None, help="K it was exported with (default: the config's)")
    eng.add_argument('--precision', choices=['fp16', 'fp32'], default='fp16')
    eng.add_argument(
        '--headroom', type=float, default=2.0, help="largest splat table length as a multiple of the nuScenes rig's"
    )
    eng.add_argument(
        '--cameras',
        type=int,
        default=6,
        help='cameras the engine is built for (the first N of the nuScenes rig; default 6)',
    )
    eng.add_argument('--workspace-gb', type=float, default=4.0, help='builder workspace memory limit [GiB]')
    eng.add_argument('--rebuild', action='store_true', help='build even if the cache holds an engine for this key')
    eng.set_defaults(func=cmd_build_engine)

    bench = sub.add_parser(
        'bench',
        help='per-stage timings: preprocessing, output encoding, splat, network, history (baselines in the same run)',
    )
    bench.add_argument('--repeats', type=int, default=15, help='timed repeats per figure after warm-up')
    bench.add_argument(
        '--stages',
        default='all',
        help=f'comma-separated stages to run, of {",".join(BENCH_STAGES)} (default all), e.g. preprocess,encode',
    )
    bench.add_argument(
        '--images',
        choices=('synth', 'texture'),
        default='synth',
        help='JPEGs of the preprocess stage: a rendered synthetic-world frame (default) or textured pictures (fast)',
    )
    bench.add_argument('--json', metavar='PATH', help='also write every figure and the machine description as JSON')
    bench.add_argument('--m0-repeats', type=int, default=5)
    bench.add_argument('--threads', type=int, default=0, help='onnxruntime intra-op threads (0 = default)')
    bench.add_argument('--skip-m0', action='store_true', help='leave out the slow M0 end-to-end figure')
    bench.add_argument(
        '--naive-repeats', type=int, default=3, help='timed repeats of the naive stage (its baselines take ~1 s each)'
    )
    bench.add_argument(
        '--history-ks', default='0,2,8', help='history lengths K of the history stage, comma-separated (default 0,2,8)'
    )
    bench.add_argument(
        '--plots',
        metavar='DIR',
        help='also measure the scaling curves (grid size: splat, output encoding; K = 0..8: network) and write PNGs',
    )
    bench.add_argument('--curve-repeats', type=int, default=3, help='timed repeats per scaling-curve point')
    bench.add_argument(
        '--quick', action='store_true', help='one repeat for the naive stage and the curves, curve K in 0,2,4,8'
    )
    bench.add_argument(
        '--backend',
        choices=['onnxruntime', 'tensorrt', 'onnxruntime-cuda'],
        default='onnxruntime',
        help='onnxruntime (default): the CPU benchmark; tensorrt, onnxruntime-cuda: the network on a GPU, against the CPU',
    )
    bench.add_argument('--precision', choices=['fp16', 'fp32'], default='fp16', help='GPU backends: graph precision')
    bench.add_argument(
        '--model', help='GPU backends: fp32 ONNX file (default: the shipped tiny_k2, exported if needed)'
    )
    bench.add_argument('--config', default='tiny', choices=sorted(CONFIGS), help='GPU backends: the model config')
    bench.add_argument('--history', type=int, default=2, help='GPU backends: the model history K (default 2)')
    bench.add_argument('--rebuild', action='store_true', help='GPU backends: rebuild the engine even when cached')
    bench.set_defaults(func=cmd_bench)

    tr = sub.add_parser('train', help='train a network (torchrun --nproc_per_node N for DDP)')
    tr.add_argument('--data', required=True, help='nuScenes-format dataroot with gts/ (Occ3D labels)')
    tr.add_argument('--version', default='v1.0-mini', help='table folder of --data (default v1.0-mini)')
    tr.add_argument('--val-data', help='validation dataroot (mIoU every --val-every steps and at the end)')
    tr.add_argument('--val-version', help='table folder of --val-data (default: --version)')
    tr.add_argument('--out', required=True, help='output folder: last.pt, model.pt, log.jsonl, loss.png')
    tr.add_argument('--config', default='tiny', choices=sorted(CONFIGS))
    tr.add_argument('--history', type=int, default=2, help='K history BEV features (default 2: 0.5 s and 1.0 s)')
    tr.add_argument('--steps', type=int, default=1000)
    tr.add_argument('--batch-size', type=int, default=1, help='samples per process per step')
    tr.add_argument('--lr', type=float, default=2e-4, help='peak AdamW learning rate')
    tr.add_argument('--weight-decay', type=float, default=1e-2)
    tr.add_argument('--warmup', type=int, default=100, help='linear warm-up steps')
    tr.add_argument('--min-lr-ratio', type=float, default=0.01, help='cosine decay ends at lr * this')
    tr.add_argument('--grad-clip', type=float, default=5.0, help='max gradient norm (0 = off)')
    tr.add_argument('--ema', type=float, default=0.0, help='EMA decay of the weights, e.g. 0.999 (0 = off)')
    tr.add_argument('--no-amp', action='store_true', help='no mixed precision on CUDA')
    tr.add_argument('--semantic-weight', type=float, default=1.0)
    tr.add_argument('--flow-weight', type=float, default=0.1)
    tr.add_argument(
        '--depth-weight', type=float, default=0.1, help='depth-net loss on targets cast from the labels (0 = off)'
    )
    tr.add_argument('--mask', choices=['camera', 'lidar', 'none'], default='camera', help='per-voxel loss weight')
    tr.add_argument('--class-weights', help="'auto' (from the training labels) or 18 comma-separated weights")
    tr.add_argument('--scale-jitter', type=float, default=0.0, help='relative image scale jitter, e.g. 0.06')
    tr.add_argument('--crop-jitter', type=int, default=0, help='crop jitter [px of the network image]')
    tr.add_argument('--flip-x', type=float, default=0.0, help='probability of a BEV flip in x')
    tr.add_argument('--flip-y', type=float, default=0.0, help='probability of a BEV flip in y')
    tr.add_argument('--sweeps', action='store_true', help='camera sweeps as history candidates too')
    tr.add_argument(
        '--freeze-bn-step',
        type=int,
        help='from this step on BatchNorm uses its running statistics (tiny data sets; 0 to fine-tune)',
    )
    tr.add_argument('--seed', type=int, default=0)
    tr.add_argument('--no-shuffle', action='store_true', help='keep the dataset order')
    tr.add_argument('--workers', type=int, default=0, help='data loader processes per training process')
    tr.add_argument('--threads', type=int, default=0, help='torch threads per process (0 = torch default)')
    tr.add_argument('--val-every', type=int, default=0, help='validate every N steps (0 = at the end only)')
    tr.add_argument('--val-samples', type=int, default=0, help='validate on the first N samples (0 = all)')
    tr.add_argument('--checkpoint-every', type=int, default=0, help='write last.pt/model.pt every N steps')
    tr.add_argument('--log-every', type=int, default=10, help='JSONL record every N steps')
    tr.add_argument('--init', help='our model checkpoint to start from (e.g. from import-flashocc)')
    tr.add_argument('--resume', nargs='?', const='auto', help='continue from a last.pt (default: OUT/last.pt)')
    tr.add_argument('--device', choices=['cpu', 'cuda'], help='default: cuda if available')
    tr.add_argument('--quiet', action='store_true', help='no progress bar')
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser('eval', help='evaluate a model on a dataset split through the pipeline (mIoU, RayIoU, mAVE)')
    ev.add_argument('--model', required=True, help='checkpoint (.pt, --backend torch), ONNX or TensorRT engine')
    ev.add_argument('--config', default='tiny', choices=sorted(CONFIGS), help="the model's config (default tiny)")
    ev.add_argument(
        '--history', type=int, default=None, help="K history BEV features of the model (default: the config's, 0)"
    )
    ev.add_argument('--backend', choices=['onnxruntime', 'torch', 'tensorrt'], default='onnxruntime')
    ev.add_argument('--dataroot', required=True, help='nuScenes-format dataroot with Occ3D labels under gts/')
    ev.add_argument('--version', default='v1.0-mini', help='table folder of --dataroot (default v1.0-mini)')
    which = ev.add_mutually_exclusive_group()
    which.add_argument('--scenes', nargs='+', metavar='NAME', help='scene names (default: every scene with labels)')
    which.add_argument('--split', help='a nuScenes split (val, mini_val, ...) or all')
    ev.add_argument('--mask', choices=['camera', 'lidar', 'none'], default='camera', help='mIoU visibility mask')
    ev.add_argument('--no-history', action='store_true', help='feed a temporal model empty history (ablation)')
    ev.add_argument('--max-frames', type=int, default=None, help='stop after N frames')
    ev.add_argument('--threads', type=int, default=0, help='backend CPU threads (0 = library default)')
    ev.add_argument('--out', required=True, help='folder for metrics.json, metrics.md and confusion.png')
    ev.add_argument('--quiet', action='store_true', help='no progress bar')
    ev.add_argument(
        '--drop-camera',
        action='append',
        metavar='CAM',
        help='evaluate as if this camera had failed (nuScenes name CAM_FRONT or cam_front; repeatable)',
    )
    _failed_camera_option(ev)
    ev.set_defaults(func=cmd_eval)

    rp = sub.add_parser('replay', help='replay a bag through the pipeline: output bag, metrics, timings, panels')
    rp.add_argument('bag', help='input rosbag2 folder (from `occ-perception convert` or recorded)')
    rp.add_argument('--model', required=True, help='checkpoint (.pt, --backend torch), ONNX or TensorRT engine')
    rp.add_argument('--config', default='tiny', choices=sorted(CONFIGS), help="the model's config (default tiny)")
    rp.add_argument('--history', type=int, default=2, help='K history BEV features of the model (default 2)')
    rp.add_argument('--backend', choices=['onnxruntime', 'torch', 'tensorrt'], default='onnxruntime')
    rp.add_argument('--out', required=True, help='output folder: bag/ (MCAP), summary.json, metrics, panels')
    _sync_options(rp)
    _failed_camera_option(rp)
    rp.add_argument('--markers-rate', type=float, default=2.0, help='MarkerArray rate limit [Hz] (0: none; default 2)')
    rp.add_argument(
        '--gt-tolerance',
        type=float,
        default=0.05,
        help='largest |frame stamp - ground-truth stamp| [s] for a frame to be scored (default 0.05)',
    )
    rp.add_argument('--panels', type=int, default=1, help='PNG panels at ground-truth frames spread over the bag')
    rp.add_argument('--panel-frames', type=int, nargs='+', metavar='I', help='also draw these output frame indices')
    rp.add_argument('--gif', action='store_true', help='animated GIF of the top views (ground truth vs prediction)')
    rp.add_argument('--max-frames', type=int, default=None, help='stop after N synchronised frames')
    rp.add_argument(
        '--loops',
        type=int,
        default=1,
        help='read the bag N times in a row like `ros2 bag play --loop` (a soak run: the summary follows the '
        'resident memory; ground truth and the output bag from the first pass; default 1)',
    )
    rp.add_argument('--threads', type=int, default=0, help='backend CPU threads (0 = library default)')
    rp.add_argument('--distro', choices=['jazzy', 'humble'], default='jazzy', help='typestore of the output topics')
    rp.add_argument('--quiet', action='store_true', help='no progress bar')
    rp.set_defaults(func=cmd_replay)

    dm = sub.add_parser('demo', help='synthetic scene -> bag -> replay with the shipped tiny model -> demo_out/')
    dm.add_argument('--out', default='demo_out', help='output folder (default demo_out)')
    dm.add_argument('--seconds', type=float, default=20.0, help='scene length [s] (default 20)')
    dm.add_argument(
        '--seed',
        type=int,
        default=3000,
        help='dataset seed (default 3000; training used 1000 and the held-out set 2000)',
    )
    dm.add_argument('--width', type=int, default=800, help='image width (default 800)')
    dm.add_argument('--height', type=int, default=450, help='image height (default 450)')
    dm.add_argument(
        '--model', help='model file (default: the shipped models/tiny_k2.onnx, exported from tiny_k2.pt when missing)'
    )
    dm.add_argument('--backend', choices=['onnxruntime', 'torch', 'tensorrt'], default='onnxruntime')
    dm.add_argument('--threads', type=int, default=0, help='backend CPU threads (0 = library default)')
    dm.add_argument('--quiet', action='store_true', help='no progress bars')
    dm.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; returns its exit status.

    Expected errors (:func:`expected_errors`) print one line ``occ-perception CMD: error: MESSAGE``
    on stderr and return 2; argparse mistakes exit with status 2 as well. Other exceptions propagate.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as err:
        if not isinstance(err, expected_errors()):
            raise
        message = ' '.join(str(err).split()) or type(err).__name__
        print(f'occ-perception {args.command}: error: {message}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
