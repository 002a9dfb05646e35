"""Ray for one build (cluster.ray_session) and what a worker's failure tells the user, on a stand-in Ray."""
from __future__ import annotations

import socket

import pytest

from structvpr_edge.cluster import ray_session, worker_error
from structvpr_edge.errors import ConfigError


class StandInRay:
    def __init__(self, running: bool = False, refuse: Exception | None = None) -> None:
        self.running, self.refuse, self.shutdowns = running, refuse, 0

    def is_initialized(self) -> bool:
        return self.running

    def init(self, **options) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.running = True

    def shutdown(self) -> None:
        self.running, self.shutdowns = False, self.shutdowns + 1


def test_a_build_shuts_down_the_ray_it_started_also_after_an_error():
    ray = StandInRay()
    with pytest.raises(RuntimeError), ray_session(ray, None):
        raise RuntimeError("a worker failed")
    assert ray.shutdowns == 1 and not ray.running


def test_a_build_leaves_a_running_ray_as_it_found_it():
    ray = StandInRay(running=True)
    with ray_session(ray, "auto"):
        pass
    assert ray.shutdowns == 0 and ray.running


@pytest.fixture
def listening_port():
    """A local port that accepts connections, as a Ray head's does."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.mark.parametrize("refusal", [ValueError("Ray Client requires pip package `ray[client]`"), ConnectionError("no cluster at auto")])
def test_an_address_ray_cannot_use_is_a_config_error(refusal, listening_port):
    address = f"ray://127.0.0.1:{listening_port}"
    with pytest.raises(ConfigError, match=f"cannot start or reach Ray at {address}"), ray_session(StandInRay(refuse=refusal), address):
        pytest.fail("no build without Ray")


def test_an_address_that_does_not_answer_fails_before_ray_is_asked():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    ray = StandInRay(refuse=AssertionError("ray.init must not be reached"))
    for address in (f"ray://127.0.0.1:{closed}", f"127.0.0.1:{closed}"):
        with pytest.raises(ConfigError, match=f"cannot reach Ray at {address}"), ray_session(ray, address):
            pytest.fail("no build without Ray")  # and ray.init, which retries for minutes, was never called


def test_a_worker_error_of_ours_is_what_the_user_reads():
    ray_text = ("\x1b[36mray::MapWorker(MapBatches(FrameDescriber)).submit()\x1b[39m (pid=1)\nTraceback (most recent call last):\n"
                '    raise DatasetError(f"cannot read {what}: the data is truncated")\n'
                "structvpr_edge.errors.DatasetError: cannot read frame /cam@4 of bag: the data is truncated")
    assert worker_error(RuntimeError(ray_text)) == "DatasetError: cannot read frame /cam@4 of bag: the data is truncated"
    assert worker_error(RuntimeError("ray::Worker died\nOOM")) == "ray::Worker died"
