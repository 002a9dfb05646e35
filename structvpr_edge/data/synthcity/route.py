"""A drivable route for the demo and the temporal filter: consecutive places along streets of
the test city, a reference traversal (database) and one query traversal, both in driving order."""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from ...errors import ConfigError
from . import world as wd
from .generate import Shot, _finish, _prepare, _write_shot, city, city_seed, get_preset


def route_places(seed: int, places: int, preset: str = "smoke") -> list[wd.Place]:
    """The first ``places`` places of the test city's streets, street after street."""
    config = get_preset(preset)
    world = city(city_seed(seed, "test"), config.test_blocks)
    route: list[wd.Place] = []
    for street in world.streets:
        route += wd.street_places(street, config.spacing)
        if len(route) >= places:
            return route[:places]
    raise ConfigError(f"the test city of seed {seed} has only {len(route)} places, {places} requested")


def generate_route(out: str | Path, seed: int = 3, places: int = 120, group: str = "hard", preset: str = "smoke") -> Path:
    """Write ``out/images/test/{database,queries}`` (+ labels, metadata.csv); queries in ``group`` conditions."""
    out = Path(out)
    config = get_preset(preset)
    route = route_places(seed, places, preset)
    shots = [Shot("test", "database", 0, "reference", i, p) for i, p in enumerate(route)]
    shots += [Shot("test", "queries", 1, group, i, p) for i, p in enumerate(route)]
    _prepare(out)
    rows = [_write_shot(out, seed, config, shot) for shot in tqdm(shots, desc="SynthCity route", unit="img")]
    return _finish(out, rows, '{"generator": "synthcity", "kind": "route"}\n')
