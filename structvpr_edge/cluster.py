"""Map building on Ray (``pip install structvpr-edge[cluster]``): the describe step of
runtime/mapping.py run by an actor pool, one model per worker, on a local or remote Ray.

Why Ray: where a fleet's frames outgrow one machine, Ray Data schedules, streams and retries the
work (a worker that dies is restarted and its batch described again); nothing of ours does.
Only the describing moves: paths and places are listed, and the map is assembled and written
(one crash-safe generation, runtime/map.py) by the caller exactly as in the single process.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, MapError
from .runtime.edgevpr import EdgeVPR
from .runtime.mapping import describe_paths

RETRIES = 2  # restarts of a dead worker, and re-runs of its batch, before the build fails


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


def ray_describer(model: str, dim: int, config: RayConfig, backend: str = "auto", actor: type = Describer):
    """A ``describe(paths) -> (N, dim)`` for mapping.build_map that runs on Ray. Every row must
    come back exactly once, or a MapError is raised and nothing is written."""
    try:
        import ray  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError("--ray needs Ray: pip install 'structvpr-edge[cluster]'") from exc
    if config.workers < 1 or config.batch_size < 1:
        raise ConfigError(f"a Ray build needs workers >= 1 and batch_size >= 1, got {config}")

    def describe(paths: list[Path]) -> np.ndarray:
        if not ray.is_initialized():
            ray.init(address=config.address, include_dashboard=False, log_to_driver=False)
        items = [{"row": i, "path": str(p)} for i, p in enumerate(paths)]
        described = ray.data.from_items(items).map_batches(
            actor, batch_size=config.batch_size, compute=ray.data.ActorPoolStrategy(size=config.workers), num_cpus=config.cpus, num_gpus=config.gpus,
            fn_constructor_kwargs={"model": str(model), "backend": backend, "threads": config.threads},
            max_restarts=RETRIES, max_task_retries=RETRIES)
        out, seen = np.zeros((len(paths), dim), np.float32), np.zeros(len(paths), np.int64)
        try:
            for shard in described.iter_batches(batch_size=None, batch_format="numpy"):
                out[shard["row"]] = np.stack(shard["descriptor"])
                np.add.at(seen, shard["row"], 1)
        except ray.exceptions.RayError as exc:
            raise MapError(f"the Ray build failed, no map was written: {str(exc).splitlines()[0]}") from exc
        if not (seen == 1).all():
            raise MapError(f"the Ray build returned {int((seen == 0).sum())} frames missing, {int((seen > 1).sum())} twice; no map was written")
        return out

    return describe
