"""The confidence rule and the temporal filter keep their promises at the edges: tied scores, a small
top_k, a place mapped many times over, a map renumbered by a merged save, a tiny temperature."""
from __future__ import annotations

import numpy as np
import pytest

from structvpr_edge.runtime.edgevpr import EdgeVPR, margin_to_other_places, search_depth
from structvpr_edge.runtime.map import Place, PlaceMap
from structvpr_edge.runtime.mapping import threshold_for_precision
from structvpr_edge.runtime.temporal import PlaceFilter, TemporalConfig

D = 16


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_threshold_never_cuts_a_run_of_tied_scores():
    scores = np.array([0.9] * 20 + [0.8] * 20)  # the 0.8 run holds 10 right and 10 wrong top-1 matches
    correct = np.array([True] * 30 + [False] * 10)
    margins = np.full(40, 0.1)
    threshold = threshold_for_precision(scores, margins, correct, 0.9)
    accepted = (scores >= threshold.score) & (margins >= threshold.margin)
    assert threshold.precision == correct[accepted].mean() >= 0.9
    assert threshold.recall == (correct & accepted).sum() / 40


class Descriptors:
    """Stands in for the preprocessor: the frames given are descriptors already."""

    input = [None] * 64

    def __call__(self, frames: list[np.ndarray]) -> np.ndarray:
        return np.stack(frames)


def localizer(place_map: PlaceMap, top_k: int, temporal: bool = False) -> EdgeVPR:
    """An EdgeVPR whose model is the identity, on ``place_map``: localize takes descriptors."""
    vpr = EdgeVPR.__new__(EdgeVPR)
    vpr.top_k, vpr.map, vpr.tiles, vpr.warned_uncalibrated, vpr.preprocess = top_k, place_map, None, True, Descriptors()
    vpr.filter = PlaceFilter() if temporal else None
    vpr._frames = list  # type: ignore[method-assign]
    vpr._infer = lambda batch: batch  # type: ignore[method-assign]
    return vpr


@pytest.mark.parametrize("top_k", [1, 5, 20])
@pytest.mark.parametrize("temporal", [False, True])
def test_the_margin_is_the_one_calibration_measures_whatever_top_k(top_k, temporal):
    rng = np.random.default_rng(0)
    place_map = PlaceMap(D, "h", "5" * 64, "flat")
    place_map.add(unit(rng, 40), [Place(str(i), 10.0 * i, 0.0) for i in range(40)])  # neighbours within 25 m: not ambiguity
    queries = unit(rng, 6)
    scores, rows = place_map.search(queries, search_depth(top_k))  # what calibrate_threshold searches
    vpr = localizer(place_map, top_k, temporal)
    for query, s, r in zip(queries, scores, rows):
        found = vpr.localize(query)
        chosen_row = vpr.filter.rows[np.argmax(vpr.filter.belief)] if temporal else r[0]
        chosen = int(np.flatnonzero(r == chosen_row)[0])
        assert found.margin == margin_to_other_places(s, r, place_map.poses, chosen) < np.inf
        assert [m.row for m in found.matches] == list(r[:top_k])
        if temporal:
            assert list(vpr.filter.rows) == list(r[:top_k])  # the filter sees the listed candidates only


def route_with_a_parked_spot(parked: int) -> tuple[np.ndarray, np.ndarray]:
    """Poses of a route mapped every 5 m (rows 0..399) and ``parked`` rows of one spot 3 km away."""
    poses = np.zeros((400 + parked, 3))
    poses[:400, 0] = np.arange(400) * 5.0
    poses[400:, :2] = 3000.0
    return poses, np.arange(400, 400 + parked)


@pytest.mark.parametrize("parked", [1, 3, 4])
def test_a_place_mapped_many_times_does_not_hold_the_filter_for_good(parked):
    poses, spot = route_with_a_parked_spot(parked)
    place_filter = PlaceFilter()
    for t in range(20):  # a wrong stretch: the parked spot looks best
        place_filter.update(np.array([*spot, t]), np.array([0.85] * parked + [0.80]), poses)
    picked = []
    for t in range(20, 60):  # then the true place wins every frame
        posterior = place_filter.update(np.array([t, *spot]), np.array([0.82] + [0.80] * parked), poses)
        picked.append(int(place_filter.rows[np.argmax(posterior)]))
    assert picked[10:] == list(range(30, 60))


def test_a_belief_spread_over_a_place_mapped_twice_stays_even():
    poses = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [1000.0, 0.0, 0.0]])
    place_filter = PlaceFilter()
    for _ in range(3):
        posterior = place_filter.update(np.array([0, 1, 2]), np.array([0.5, 0.5, 0.5]), poses)
    assert np.allclose(posterior, 1 / 3)


def test_the_filter_starts_over_when_a_merged_save_renumbers_the_map(tmp_path):
    rng = np.random.default_rng(0)
    base = PlaceMap(D, "h", "5" * 64, "flat")
    base.add(unit(rng, 10), [Place(f"a{i}", 10.0 * i, 0.0) for i in range(10)])
    base.save(tmp_path / "map")
    ours, other = PlaceMap.load(tmp_path / "map"), PlaceMap.load(tmp_path / "map")
    ours.add(unit(rng, 10), [Place(f"b{i}", 100.0 + 10 * i, 0.0) for i in range(10)])  # rows 10..19
    other.add(unit(rng, 10), [Place(f"c{i}", 5000.0 + 10 * i, 0.0) for i in range(10)])
    other.save(tmp_path / "map")  # another writer publishes first
    place_filter = PlaceFilter()
    place_filter.update(np.array([15, 3]), np.array([0.90, 0.60]), ours.poses)  # at b5
    ours.save(tmp_path / "map")  # merged: the other writer's rows 10..19 come first, b5 is row 25
    b6, c6 = (next(i for i, p in enumerate(ours.places) if p.id == name) for name in ("b6", "c6"))
    posterior = place_filter.update(np.array([b6, c6]), np.array([0.90, 0.87]), ours.poses)
    assert place_filter.rows[np.argmax(posterior)] == b6


def test_the_filter_keeps_its_belief_on_a_map_that_grows():
    poses = np.array([[0.0, 0.0, 0.0], [1000.0, 0.0, 0.0]])
    place_filter = PlaceFilter()
    place_filter.update(np.array([0, 1]), np.array([0.9, 0.5]), poses)
    grown = np.vstack([poses, [[10.0, 0.0, 0.0]]])  # a new row 10 m on; rows 0 and 1 unchanged
    posterior = place_filter.update(np.array([1, 2]), np.array([0.81, 0.80]), grown)
    assert place_filter.rows[np.argmax(posterior)] == 2  # reached from row 0: the far row's lead is not enough


def test_a_tiny_temperature_gives_a_posterior_not_nan():
    poses = np.zeros((3, 3))
    poses[:, 0] = [0.0, 10.0, 1000.0]
    place_filter = PlaceFilter(TemporalConfig(temperature=1e-46))
    for rows in ([0, 1], [1, 2]):
        posterior = place_filter.update(np.array(rows), np.array([0.7, 0.1], np.float32), poses)  # PlaceMap.search's float32
        assert np.isfinite(posterior).all() and place_filter.rows[np.argmax(posterior)] == rows[0]
