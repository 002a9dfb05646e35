"""The ROS 2 node's main loop on a stand-in rclpy (no ROS here): stamps, shutdown, a node that fails to start."""
from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

from structvpr_edge import ros2
from structvpr_edge.errors import ConfigError
from structvpr_edge.runtime import edgevpr
from tests.test_drives import jpeg, localization, stand_in_ros_messages


SENSOR_DATA = SimpleNamespace(reliability="best effort")  # rclpy.qos's profile, as the node passes it on


class ExternalShutdownException(Exception):
    """rclpy.executors' exception when a launch file or another node shuts the context down."""


def stand_in_rclpy(monkeypatch, spin) -> SimpleNamespace:
    """rclpy, rclpy.node, rclpy.qos and rclpy.executors as far as ros2.main uses them; ``spin(node)`` drives the node."""
    calls = SimpleNamespace(published=[], try_shutdown=0, subscription_qos=None)

    class Node:
        def __init__(self, name: str) -> None:
            self.callback = None

        def declare_parameter(self, name, default):
            return SimpleNamespace(value=default)

        def create_publisher(self, kind, topic, depth):
            return SimpleNamespace(publish=calls.published.append)

        def create_subscription(self, kind, topic, callback, qos):
            self.callback, calls.subscription_qos = callback, qos

        def get_clock(self):
            return SimpleNamespace(now=lambda: SimpleNamespace(nanoseconds=7_000_000_042))

        def destroy_node(self) -> None:
            calls.destroyed = True

    def try_shutdown() -> None:
        calls.try_shutdown += 1

    rclpy = types.ModuleType("rclpy")
    rclpy.init, rclpy.spin, rclpy.try_shutdown = (lambda args=None: None), spin, try_shutdown
    rclpy.shutdown = lambda: pytest.fail("rclpy.shutdown fails once a signal handler shut the context down; try_shutdown does not")
    modules = {name: types.ModuleType(name) for name in ("rclpy.node", "rclpy.qos", "rclpy.executors")} | {"rclpy": rclpy}
    modules["rclpy.node"].Node = Node
    modules["rclpy.qos"].qos_profile_sensor_data = SENSOR_DATA
    modules["rclpy.executors"].ExternalShutdownException = ExternalShutdownException
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    stand_in_ros_messages(monkeypatch)
    return calls


class StubVPR:
    """EdgeVPR as the node sees it: one fixed localization."""

    closed = False

    def __init__(self, *args, **kwargs) -> None:
        self.map = SimpleNamespace(manifest=SimpleNamespace(frame_id="utm_32N"))

    def localize(self, frame):
        return localization()

    def close(self) -> None:
        StubVPR.closed = True


@pytest.mark.parametrize("stop", [KeyboardInterrupt, ExternalShutdownException])
def test_a_frame_without_a_stamp_takes_the_receive_time_and_a_stop_ends_cleanly(monkeypatch, stop):
    def spin(node) -> None:
        frame = SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=0, nanosec=0)), format="jpeg", data=jpeg(0))
        node.callback(frame)
        raise stop

    calls = stand_in_rclpy(monkeypatch, spin)
    monkeypatch.setattr(edgevpr, "EdgeVPR", StubVPR)
    StubVPR.closed = False
    ros2.main([])  # a stop is a normal end: no exception, no second shutdown
    stamp = calls.published[0].header.stamp
    assert (stamp.sec, stamp.nanosec) == (7, 42) and len(calls.published) == 2
    assert calls.try_shutdown == 1 and StubVPR.closed and calls.destroyed
    assert calls.subscription_qos is SENSOR_DATA  # camera drivers publish best effort: a reliable subscription would get nothing


def test_a_node_that_fails_to_start_still_shuts_rclpy_down(monkeypatch):
    def refuse(*args, **kwargs):
        raise ConfigError("model is required")

    calls = stand_in_rclpy(monkeypatch, lambda node: pytest.fail("no node to spin"))
    monkeypatch.setattr(edgevpr, "EdgeVPR", refuse)
    with pytest.raises(ConfigError, match="model"):
        ros2.main([])
    assert calls.try_shutdown == 1
