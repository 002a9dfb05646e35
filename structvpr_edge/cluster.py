"""Map building on Ray (``pip install structvpr-edge[cluster]``): the describe step of
runtime/mapping.py run by an actor pool, one model per worker, on a local or remote Ray.

Why Ray: where a fleet's frames outgrow one machine, Ray Data schedules, streams and retries the
work (a worker that dies is restarted and its batch described again); nothing of ours does.
Only the describing moves: paths and places are listed, and the map is assembled and written
(one crash-safe generation, runtime/map.py) by the caller exactly as in the single process.
A drive recorded as a bag is listed the same way (times and poses, no image decoded); each
worker reads and decodes only its batch's stretch of the bag, found by bag time through the
bag's index (the bag must be readable at the same path on every node, as image folders are).
"""
from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data.drives import DriveFrame, Skipped, read_frames
from .errors import ConfigError, DatasetError, MapError
from .runtime.edgevpr import EdgeVPR
from .runtime.mapping import describe_frames, describe_paths

RETRIES = 2  # restarts of a dead worker, and re-runs of its batch, before the build fails
REACH_TIMEOUT_S = 5.0  # a head that does not answer in this time is unreachable (ray.init itself retries for minutes)
WORKER_ERROR = re.compile(r"^structvpr_edge\.errors\.(\w+: .*)$", re.MULTILINE)  # our error's last traceback line


@dataclass(frozen=True)
class RayConfig:
    """address: a running Ray cluster ("auto", "ray://host:10001"), None to start one on this machine
    workers: actors in the pool, each holding one model
    cpus, gpus: Ray resources per worker (gpus > 0 puts each model on a GPU)
    batch_size: frames per Ray batch
    threads: inference threads per worker"""

    address: str | None = None
    workers: int = 2
    cpus: float = 1.0
    gpus: float = 0.0
    batch_size: int = 64
    threads: int = 1


class Describer:
    """One Ray worker: a model opened once, describing batches of image files as describe_paths does."""

    def __init__(self, model: str, backend: str, threads: int) -> None:
        self.vpr = EdgeVPR(model, backend=backend, threads=threads, max_batch=16)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [Path(p) for p in batch["path"]]
        return {"row": batch["row"], "descriptor": describe_paths(self.vpr, paths, desc="worker")}


class FrameDescriber(Describer):
    """One Ray worker for a bag: reads the stretch of the camera topic its batch spans (bag times
    [first, last]) and describes the batch's frames, known by (bag time, header time)."""

    def __init__(self, model: str, backend: str, threads: int, bag: str, topic: str) -> None:
        super().__init__(model, backend, threads)
        self.bag, self.topic = bag, topic

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        wanted = list(zip(batch["bag_ns"].tolist(), batch["stamp_ns"].tolist()))
        window = (min(wanted)[0], max(wanted)[0] + 1)
        found = {(f.bag_ns, f.stamp_ns): f for f in read_frames(self.bag, self.topic, Skipped(), window=window)}
        missing = [key for key in wanted if key not in found]
        if missing:
            raise DatasetError(f"{len(missing)} frames of this batch are not in {self.bag} (bag time {missing[0][0]}): it changed since it was listed")
        return {"row": batch["row"], "descriptor": describe_frames(self.vpr, [found[key] for key in wanted])[0]}


def require_ray(config: RayConfig) -> Any:
    """The ray module, once ``config`` is checked: called when a describer is made, before any work."""
    try:
        import ray  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError("--ray needs Ray: pip install 'structvpr-edge[cluster]'") from exc
    if config.workers < 1 or config.batch_size < 1:
        raise ConfigError(f"a Ray build needs workers >= 1 and batch_size >= 1, got {config}")
    return ray


def check_reachable(address: str | None) -> None:
    """A ``host:port`` or ``ray://host:port`` address must accept a connection before Ray is asked
    to join it: a mistyped host or a closed port fails here in seconds, not inside ``ray.init``."""
    host, colon, port = (address or "").removeprefix("ray://").rpartition(":")
    if not (host and colon and port.isdigit()):  # None, "auto", "local": nothing to reach
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach Ray at {address}: {exc} (is the head running and its port open?)") from None


@contextmanager
def ray_session(ray: Any, address: str | None) -> Iterator[None]:
    """Ray for one build: started here unless it already runs (then left as found), and shut down
    after the build that started it, failed or not: its processes must not outlive the build."""
    started = not ray.is_initialized()
    if started:
        check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except (ValueError, ConnectionError, RuntimeError) as exc:  # a bad or unreachable address, a missing Ray Client
            raise ConfigError(f"cannot start or reach Ray at {address or 'this machine'}: {exc}") from None
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def worker_error(exc: BaseException) -> str:
    """What a Ray failure says to the user: the worker's own error (a truncated frame, a changed
    bag), which Ray Data passes on only as the text of the worker's traceback, else Ray's first line."""
    ours = WORKER_ERROR.findall(str(exc))
    return ours[-1] if ours else str(exc).splitlines()[0]


def ray_pool(items: list[dict], dim: int, config: RayConfig, actor: type, actor_kwargs: dict) -> np.ndarray:
    """The (len(items), dim) descriptors of ``items`` (each with its ``row``) from an actor pool
    of ``actor``; every row must come back exactly once, or a MapError is raised and nothing is
    written."""
    ray = require_ray(config)
    out, seen = np.zeros((len(items), dim), np.float32), np.zeros(len(items), np.int64)
    with ray_session(ray, config.address):
        described = ray.data.from_items(items).map_batches(
            actor, batch_size=config.batch_size, compute=ray.data.ActorPoolStrategy(size=config.workers), num_cpus=config.cpus, num_gpus=config.gpus,
            fn_constructor_kwargs={**actor_kwargs, "threads": config.threads},
            ray_remote_args_fn=lambda: {"max_restarts": RETRIES, "max_task_retries": RETRIES})
        try:
            for shard in described.iter_batches(batch_size=None, batch_format="numpy"):
                out[shard["row"]] = np.stack(shard["descriptor"])
                np.add.at(seen, shard["row"], 1)
        except ray.exceptions.RayError as exc:
            raise MapError(f"the Ray build failed, no map was written: {worker_error(exc)}") from exc
    if not (seen == 1).all():
        raise MapError(f"the Ray build returned {int((seen == 0).sum())} frames missing, {int((seen > 1).sum())} twice; no map was written")
    return out


def ray_describer(model: str, dim: int, config: RayConfig, backend: str = "auto", actor: type = Describer):
    """A ``describe(paths) -> (N, dim)`` for mapping.build_map that runs on Ray."""
    require_ray(config)

    def describe(paths: list[Path]) -> np.ndarray:
        items = [{"row": i, "path": str(p)} for i, p in enumerate(paths)]
        return ray_pool(items, dim, config, actor, {"model": str(model), "backend": backend})

    return describe


def ray_frame_describer(model: str, dim: int, config: RayConfig, bag: str | Path, topic: str, backend: str = "auto",
                        actor: type = FrameDescriber):
    """A ``describe(frames) -> (N, dim)`` for mapping.build_map_from_frames that runs on Ray: the
    frames as data/drives.read_drive lists them with ``pixels=False``, in bag order."""
    require_ray(config)

    def describe(frames: list[DriveFrame]) -> np.ndarray:
        items = [{"row": i, "bag_ns": f.bag_ns, "stamp_ns": f.stamp_ns} for i, f in enumerate(frames)]
        return ray_pool(items, dim, config, actor, {"model": str(model), "backend": backend, "bag": str(bag), "topic": topic})

    return describe
