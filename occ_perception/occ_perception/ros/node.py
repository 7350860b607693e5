"""The ``occ_node`` entry point: rclpy glue over the ROS-free :mod:`.logic` and :mod:`.params` (topics: DESIGN.md 4).

Six cameras (and ``odom``, or ``/tf``) into the replay's FrameAssembler (:class:`logic.NodeAssembly`: approximate-time
sync, time going backwards, a failed camera), whose frames go to the inference thread (latest frame wins);
``<camera>/camera_info`` and ``/tf_static`` for the rig; outputs ``occupancy/*`` and ``/diagnostics``; ``~/reset``.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from ..messages import MessageTypes
from . import logic
from .params import PARAMS, NodeParams, ParamError, param_descriptor, validate_params

try:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import Odometry
    from rclpy.clock import Clock, ClockType
    from rclpy.exceptions import ParameterException
    from rclpy.executors import ExternalShutdownException
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image
    from std_srvs.srv import Trigger
    from tf2_msgs.msg import TFMessage

    ROS_IMPORT_ERROR: ImportError | None = None
except ImportError as err:  # no ROS 2 sourced: main() says so; the module still imports for tests
    ROS_IMPORT_ERROR = err
    Node = object

OUTPUT_QOS_DEPTH = 2
TF_QOS_DEPTH = 10  # /tf keeps up (newest 10) rather than queue behind the cameras


class StartupError(RuntimeError):
    """The node cannot start: an invalid parameter or a model that cannot be loaded."""


class OccNode(Node):
    """Subscriptions, publishers, service and timers of ``occ_node`` around a :class:`logic.FrameRunner`."""

    def __init__(self) -> None:
        super().__init__('occ_node')
        self.types = MessageTypes.python_modules()
        self.params = self._read_params()
        p, log = self.params, self.get_logger()
        try:
            self.pipeline, self.choice = logic.build_pipeline(p)
        except Exception as err:  # LogicError, PipelineError, TemporalError, ConfigError: all end the start
            raise StartupError(str(err)) from err
        log.info(self.choice.reason)
        voxels = logic.foxglove_available()
        if not voxels:
            log.info('foxglove_msgs is not installed: occupancy/voxels (foxglove_msgs/msg/VoxelGrid) is not published')
        self.drops = logic.DropCounter()
        self.stats = logic.NodeStats([*p.cameras] + (['odom'] if p.pose_source == 'odom' else []))
        self.slot = logic.FrameSlot(self.drops)
        self.assembly = logic.NodeAssembly(p, self.slot, self.drops, self.stats)
        out_qos = QoSProfile(depth=OUTPUT_QOS_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
        self.pubs = {
            topic: self.create_publisher(self.types.resolve(msg_type), topic, out_qos)
            for topic, msg_type in logic.OUTPUT_TOPICS.items()
            if voxels or not msg_type.startswith('foxglove')
        }
        self.diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)

        convert = None
        if p.image_transport == 'raw':
            from cv_bridge import CvBridge

            convert = logic.raw_converter(CvBridge())
        self.processor = logic.make_processor(self.pipeline, self.types, p, voxels)
        self.runner = logic.FrameRunner(self.processor, self.stats, self.drops, convert)

        image_type = CompressedImage if p.image_transport == 'compressed' else Image
        for cam in p.cameras:  # callbacks only store the message (decoding is the worker's)
            self.create_subscription(
                image_type,
                logic.image_topic(cam, p.image_transport),
                lambda msg, cam=cam: self.assembly.image(cam, msg),
                qos_profile_sensor_data,
            )
            self.create_subscription(
                CameraInfo,
                f'{cam}/camera_info',
                lambda msg, cam=cam: self.assembly.camera_info(cam, msg),
                qos_profile_sensor_data,
            )
        if p.pose_source == 'odom':  # the ego pose is the 7th synchronised input
            self.create_subscription(Odometry, 'odom', self.assembly.odom, qos_profile_sensor_data)
        else:  # a shallow queue: the executor takes one /tf message per camera image, a deep one would lag
            self.create_subscription(TFMessage, '/tf', self.assembly.tf, QoSProfile(depth=TF_QOS_DEPTH))
        static_qos = QoSProfile(
            depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE
        )
        self.create_subscription(TFMessage, '/tf_static', self.assembly.tf_static, static_qos)
        self.create_service(Trigger, '~/reset', self._on_reset)
        # steady time: diagnostics also go out with use_sim_time before (or without) /clock, and across bag loops
        self.create_timer(p.diagnostics_period, self._on_timer, clock=Clock(clock_type=ClockType.STEADY_TIME))

        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name='occ_inference', daemon=True)
        self._worker.start()
        log.info(
            f'occ_node ready: {len(p.cameras)} cameras ({p.image_transport}), pose from {p.pose_source}, '
            f'model {self.params.model or "shipped tiny_k2"}'
        )

    def _read_params(self) -> NodeParams:
        values = {}
        try:
            for spec in PARAMS:
                desc = param_descriptor(spec, self.types)
                values[spec.name] = self.declare_parameter(spec.name, spec.default, desc).value
            return validate_params(values)
        except (ParameterException, ParamError) as err:
            raise StartupError(f'invalid parameter: {err}') from err

    # --- callbacks (executor thread)

    def _on_reset(self, _request: Any, response: Any) -> Any:
        self.runner.request_reset()
        response.success, response.message = True, 'the temporal cache is reset before the next frame'
        return response

    def _on_timer(self) -> None:
        missing = self.assembly.rig_missing()
        if missing:
            self.get_logger().warning('waiting for ' + ', '.join(missing), throttle_duration_sec=5.0)
        reports = logic.node_reports(
            self.stats,
            self.drops,
            self.choice,
            self.params,
            self.pipeline.cache,
            missing,
            None,
        ) + self.assembly.reports(self.processor)
        self.diag_pub.publish(logic.diagnostic_array(self.types, self.get_clock().now().nanoseconds, reports))

    # --- inference thread

    def _work(self) -> None:
        while not self._stop.is_set():
            frame = self.slot.take(timeout=0.5)
            if frame is None:
                continue
            messages, problem = self.runner.run(frame)
            if problem is not None:
                self.get_logger().warning(
                    f'frame {frame.stamp_ns * 1e-9:.3f} s dropped: {problem}', throttle_duration_sec=2.0
                )
                continue
            if self.runner.last_reset:
                self.get_logger().info(f'temporal cache reset: {self.runner.last_reset}')
            try:
                for topic, msg in (messages or {}).items():
                    if topic in self.pubs:
                        self.pubs[topic].publish(msg)
            except Exception as err:  # the context may be shut down under us on Ctrl-C
                if not rclpy.ok():
                    break
                self.get_logger().error(f'publishing failed: {type(err).__name__}: {err}')

    def close(self) -> None:
        """Stop the inference thread (a pending frame counts as a 'shutdown' drop) and the decoders."""
        self._stop.set()
        self.slot.close()
        self._worker.join(timeout=5.0)
        self.pipeline.close()
        self.pipeline.backend.close()


def main(argv: list[str] | None = None) -> int:
    """Console script ``occ_node``: 0 after Ctrl-C, 2 when ROS is missing or the node cannot start."""
    if ROS_IMPORT_ERROR is not None:
        print(
            f'occ_node: ROS 2 Python packages are not importable ({ROS_IMPORT_ERROR}); source a Humble or Jazzy '
            'setup.bash and the workspace first',
            file=sys.stderr,
        )
        return 2
    rclpy.init(args=argv)
    try:
        node = OccNode()
    except StartupError as err:
        print(f'occ_node: {err}', file=sys.stderr)
        if rclpy.ok():
            rclpy.shutdown()
        return 2
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.close()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
