"""A ROS 2 node: camera frames in, poses out (docs/ros2.md has a launch example).

    ros2 run ... / python -m structvpr_edge.ros2 --ros-args -p model:=model.int8.cpu.onnx -p map:=maps/route \
        -p image_topic:=/camera/image/compressed

It subscribes to ``image_topic`` (``sensor_msgs/msg/CompressedImage`` when the topic name ends
in ``compressed``, else ``sensor_msgs/msg/Image``; the sensor-data QoS, best effort) and publishes,
per frame and stamped with the frame's own time, the messages ``localize --out result.mcap`` writes (runtime/outputs.py):
``/structvpr_edge/pose`` (PoseWithCovarianceStamped) and ``/diagnostics`` (DiagnosticArray).

rclpy and the ROS message packages come with a ROS 2 install (sourced ``setup.bash``), never
from pip, so they are imported only inside ``main``; the messages are built as rosbags objects
(the MCAP writer's) and copied field by field into rclpy ones (``to_rclpy``), which is what the
tests check without ROS.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np

from .data.drives import image_of, stamp_ns
from .errors import StructVPRError
from .runtime.outputs import DEFAULT_FRAME, TOPICS, messages

PARAMETERS = {"model": "", "map": "", "image_topic": "/camera/image/compressed", "top_k": 5, "threads": 1, "temporal": False}


def message_class(msgtype: str) -> type:
    """The generated ROS class of ``pkg/msg/Name`` (rclpy's, from the package's Python module)."""
    package, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def to_rclpy(message: Any) -> Any:
    """A rosbags message object as the rclpy message of the same type, nested fields and
    sequences included (fixed arrays such as a covariance as float lists; a ``byte`` field, an
    int in rosbags, as the one-byte ``bytes`` rclpy wants)."""
    target = message_class(message.__msgtype__)()
    kinds = target.get_fields_and_field_types()
    for field in fields(message):
        value = getattr(message, field.name)
        if is_dataclass(value):
            value = to_rclpy(value)
        elif isinstance(value, list):
            value = [to_rclpy(v) if is_dataclass(v) else v for v in value]
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        elif kinds.get(field.name) == "octet" and isinstance(value, int):
            value = bytes([value])
        setattr(target, field.name, value)
    return target


def main(argv: list[str] | None = None) -> None:
    import rclpy  # noqa: PLC0415 - a ROS 2 install, not a pip dependency
    from rclpy.node import Node  # noqa: PLC0415
    from rclpy.executors import ExternalShutdownException  # noqa: PLC0415
    from rclpy.qos import qos_profile_sensor_data  # noqa: PLC0415

    from .runtime.edgevpr import EdgeVPR  # noqa: PLC0415

    class VPRNode(Node):
        def __init__(self) -> None:
            super().__init__("structvpr_edge")
            values = {name: self.declare_parameter(name, default).value for name, default in PARAMETERS.items()}
            self.vpr = EdgeVPR(values["model"], map=values["map"], top_k=values["top_k"], threads=values["threads"], temporal=values["temporal"])
            self.frame_id = self.vpr.map.manifest.frame_id or DEFAULT_FRAME  # the map was given: never None
            compressed = values["image_topic"].rstrip("/").endswith("compressed")
            image_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
            self.publishers_by_topic = {topic: self.create_publisher(message_class(msgtype), topic, 10) for topic, msgtype in TOPICS.items()}
            # best effort, as camera drivers publish (a reliable subscriber gets nothing from a best-effort
            # publisher; a best-effort one takes both); the last 5 frames are kept, older ones dropped
            self.create_subscription(message_class(image_type), values["image_topic"], self.on_frame, qos_profile_sensor_data)

        def on_frame(self, message: Any) -> None:
            stamp = stamp_ns(message.header) or self.get_clock().now().nanoseconds  # a zero stamp: the receive time, as drives take the bag's
            try:
                result = self.vpr.localize(image_of(message, f"frame at {stamp} ns"))
            except StructVPRError as exc:  # one bad frame (an unsupported encoding, a truncated JPEG) must not stop the node
                self.get_logger().error(str(exc))
                return
            for topic, built in messages(result, stamp, self.frame_id):
                self.publishers_by_topic[topic].publish(to_rclpy(built))

    rclpy.init(args=argv if argv is not None else sys.argv)
    node = None
    try:
        node = VPRNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):  # Ctrl-C, or a launch file stopping the node: a normal end
        pass
    finally:
        if node is not None:
            node.vpr.close()
            node.destroy_node()
        rclpy.try_shutdown()  # rclpy's signal handler may have shut the context down already


if __name__ == "__main__":
    main()
