"""Map and tile robustness: a bad place, query or tiles.json is refused with a MapError before
anything changes; a save that made its generation live is never applied twice; a failed tile load
is retried; tiles next to a gap in the coverage are loaded; exact ties answer alike in any batch."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from structvpr_edge.errors import MapError
from structvpr_edge.runtime import map as map_module
from structvpr_edge.runtime.map import Place, PlaceMap, read_current
from structvpr_edge.runtime.tiles import TiledMap, cut_tiles

SHA = "7" * 64
DIM = 64


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def random_rows(count: int, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).normal(size=(count, DIM)))


def small_map(count: int = 16) -> tuple[PlaceMap, np.ndarray]:
    """``count`` places 10 m apart along east, random descriptors."""
    vectors = random_rows(count)
    place_map = PlaceMap(DIM, "layout", SHA, "flat")
    place_map.add(vectors, [Place(f"p{i}", 10.0 * i, 0.0) for i in range(count)])
    return place_map, vectors


def grid_tiles(folder: Path) -> tuple[PlaceMap, np.ndarray, TiledMap]:
    """40 x 40 places 10 m apart cut into 100 m tiles with 20 m of overlap."""
    vectors = random_rows(1600)
    place_map = PlaceMap(DIM, "layout", SHA, "flat")
    place_map.add(vectors, [Place(f"p{i}", 10.0 * (i % 40), 10.0 * (i // 40)) for i in range(1600)])
    cut_tiles(place_map, folder, size_m=100.0, overlap_m=20.0)
    return place_map, vectors, TiledMap(folder)


def damage_index(tile: Path) -> bytes:
    """Zero the end of a tile's index (it no longer matches its checksum); returns the good bytes."""
    path = tile / read_current(tile) / "index.faiss"
    good = path.read_bytes()
    path.write_bytes(good[:-8] + b"\0" * 8)
    return good


def repair_index(tile: Path, good: bytes) -> None:
    (tile / read_current(tile) / "index.faiss").write_bytes(good)


def ids_near(place_map: PlaceMap, east: float, north: float, radius: float) -> np.ndarray:
    return np.flatnonzero(np.hypot(place_map.poses[:, 0] - east, place_map.poses[:, 1] - north) <= radius)


def test_a_failed_tile_load_is_retried_at_the_next_prior(tmp_path):
    place_map, vectors, tiles = grid_tiles(tmp_path / "tiles")
    tiles.set_prior((150.0, 150.0, 20.0), wait=True)
    good = damage_index(tmp_path / "tiles" / "tile_3_3")
    for _ in range(2):  # a jump waits for its tile: each prior tries again, none answers from the old tile
        with pytest.raises(MapError, match="checksum"):
            tiles.set_prior((350.0, 350.0, 20.0))
    repair_index(tmp_path / "tiles" / "tile_3_3", good)
    tiles.set_prior((350.0, 350.0, 20.0))
    far = ids_near(place_map, 350.0, 350.0, 20.0)
    _, rows = tiles.current().search(vectors[far], 1)
    assert set(tiles.loaded) == {"tile_3_3"}
    assert [tiles.current().places[r].id for r in rows[:, 0]] == [place_map.places[i].id for i in far]


def test_a_failed_background_tile_load_is_retried_at_the_next_prior(tmp_path):
    _, _, tiles = grid_tiles(tmp_path / "tiles")
    tiles.set_prior((150.0, 150.0, 20.0), wait=True)
    good = damage_index(tmp_path / "tiles" / "tile_2_1")
    tiles.set_prior((205.0, 150.0, 40.0))  # inside the overlap: loaded in the background, and fails
    tiles.worker.join()
    with pytest.raises(MapError, match="checksum"):
        tiles.set_prior((205.0, 150.0, 40.0))  # the failure is raised at the next prior
    repair_index(tmp_path / "tiles" / "tile_2_1", good)
    tiles.set_prior((205.0, 150.0, 40.0))
    tiles.worker.join()
    assert set(tiles.loaded) == {"tile_1_1", "tile_2_1"}


@pytest.fixture
def gappy_tiles(tmp_path) -> tuple[PlaceMap, np.ndarray, TiledMap]:
    """Places in cells (0, 0) and (1, 1) of 100 m, one of them at (99, 79); cells (1, 0) and (0, 1)
    hold none, so they have no tile and lend no overlap."""
    positions = [(x, y) for x in range(5, 100, 10) for y in range(5, 100, 10)]
    positions += [(x, y) for x in range(105, 200, 10) for y in range(105, 200, 10)] + [(99, 79)]
    vectors = random_rows(len(positions))
    place_map = PlaceMap(DIM, "layout", SHA, "flat")
    place_map.add(vectors, [Place(f"p{i}", float(x), float(y)) for i, (x, y) in enumerate(positions)])
    cut_tiles(place_map, tmp_path / "tiles", size_m=100.0, overlap_m=20.0)
    return place_map, vectors, TiledMap(tmp_path / "tiles")


def test_tiles_next_to_a_gap_in_the_coverage_are_loaded(gappy_tiles):
    place_map, vectors, tiles = gappy_tiles
    assert tiles.needed((130.0, 95.0, 45.0)) == ("tile_0_0", "tile_1_1")  # (99, 79) is 35 m away, in tile_0_0 only
    assert tiles.needed((105.0, 45.0, 12.0)) == ("tile_0_0",)  # in a gap: (95, 45) is 10 m away
    tiles.set_prior((130.0, 95.0, 45.0), wait=True)
    _, rows = tiles.current().search(vectors[-1:], 1)
    assert tiles.current().places[int(rows[0, 0])].id == place_map.places[len(place_map) - 1].id


def test_every_place_within_a_priors_radius_is_in_its_tiles(gappy_tiles):
    place_map, _, tiles = gappy_tiles
    held = {t.name: {p.id for p in PlaceMap.load(tiles.folder / t.name).places} for t in tiles.index.tiles}
    for east in range(-30, 231, 15):
        for north in range(-30, 231, 15):
            for radius in (5.0, 20.0, 35.0, 60.0):
                near = {place_map.places[i].id for i in ids_near(place_map, east, north, radius)}
                if near:
                    loaded = set().union(*(held[name] for name in tiles.needed((float(east), float(north), radius))))
                    assert near <= loaded, (east, north, radius)


def test_a_save_is_not_failed_by_a_leftover_it_cannot_remove(tmp_path, monkeypatch):
    """Leftovers are removed best-effort: one that stays (an immutable file) is left to the next
    writer, and the save that published its generation succeeds and is recorded once."""
    place_map, vectors = small_map()
    place_map.save(tmp_path / "map")

    def refuse(folder: Path) -> None:
        raise PermissionError(f"cannot remove {folder}")

    monkeypatch.setattr(map_module, "_remove_generation", refuse)
    place_map.add(vectors[:2], [Place("new0", 1.0, 1.0), Place("new1", 2.0, 2.0)])
    place_map.save(tmp_path / "map")  # gen-00000001 stays
    place_map.save(tmp_path / "map")  # a retried save adds nothing twice
    monkeypatch.undo()
    place_map.save(tmp_path / "map")
    ids = [p.id for p in PlaceMap.load(tmp_path / "map").places]
    assert len(ids) == 18 and ids.count("new0") == ids.count("new1") == 1
    assert sorted(p.name for p in (tmp_path / "map").glob("gen-*")) == ["gen-00000004"]


def test_a_save_whose_directory_sync_fails_after_publishing_is_not_applied_twice(tmp_path, monkeypatch):
    place_map, vectors = small_map()
    folder = tmp_path / "map"
    place_map.save(folder)
    fsync, failed = map_module._fsync, []

    def fail_once_when_live(path: Path) -> None:
        if path == folder and read_current(folder) == "gen-00000002" and not failed:
            failed.append(path)
            raise OSError(5, "Input/output error")
        fsync(path)

    monkeypatch.setattr(map_module, "_fsync", fail_once_when_live)
    place_map.add(vectors[:2], [Place("new0", 1.0, 1.0), Place("new1", 2.0, 2.0)])
    with pytest.raises(MapError, match="is live"):
        place_map.save(folder)
    assert place_map._pending == [] and len(place_map) == 18
    place_map.save(folder)
    ids = [p.id for p in PlaceMap.load(folder).places]
    assert len(ids) == 18 and ids.count("new0") == ids.count("new1") == 1


def test_numpy_float32_positions_are_saved_as_numbers(tmp_path):
    place_map, vectors = small_map()
    east, north, heading = np.array([10.5, 20.25, 90.0], np.float32)
    place_map.add(vectors[:1], [Place("x", east, north, heading)])
    place_map.save(tmp_path / "map")
    place = PlaceMap.load(tmp_path / "map").places[16]
    assert (place.east, place.north, place.heading) == (10.5, 20.25, 90.0)
    assert all(type(v) is float for v in (place.east, place.north, place.heading))


def test_a_stored_position_that_is_no_number_fails_the_load_with_a_map_error(tmp_path):
    place_map, _ = small_map()
    place_map.save(tmp_path / "map")
    with sqlite3.connect(tmp_path / "map" / read_current(tmp_path / "map") / "places.sqlite") as db:
        db.execute("UPDATE places SET east = ? WHERE row = 3", (np.float32(1.0).tobytes(),))
    db.close()
    with pytest.raises(MapError, match="places.sqlite"):
        PlaceMap.load(tmp_path / "map", verify=False)


BAD_PLACES = {
    "heading ''": (Place("x", 1.0, 2.0, ""), "heading"),
    "heading None": (Place("x", 1.0, 2.0, None), "heading"),
    "heading 'n/a'": (Place("x", 1.0, 2.0, "n/a"), "heading"),
    "heading inf": (Place("x", 1.0, 2.0, float("inf")), "heading"),
    "heading True": (Place("x", 1.0, 2.0, True), "heading"),
    "east '1.0'": (Place("x", "1.0", 2.0), "east"),
    "east None": (Place("x", None, 2.0), "east"),
    "east nan": (Place("x", float("nan"), 2.0), "east"),
    "north inf": (Place("x", 1.0, float("inf")), "north"),
    "id 5": (Place(5, 1.0, 2.0), "id"),
    "timestamp 123": (Place("x", 1.0, 2.0, 0.0, 123), "timestamp"),
    "source None": (Place("x", 1.0, 2.0, 0.0, "", None), "source"),
    "a tuple": (("x", 1.0, 2.0), "Place"),
}


@pytest.mark.parametrize("case", sorted(BAD_PLACES))
def test_a_bad_place_field_is_refused_before_the_map_changes(tmp_path, case):
    place_map, _ = small_map()
    place_map.save(tmp_path / "map")
    place, field = BAD_PLACES[case]
    with pytest.raises(MapError, match=field):
        place_map.add(random_rows(2, seed=1), [Place("good", 0.0, 0.0), place])
    assert len(place_map) == len(place_map.places) == len(place_map.poses) == place_map.manifest.count == 16
    assert place_map._pending == []
    place_map.save(tmp_path / "map")
    assert sorted(p.name for p in (tmp_path / "map").iterdir()) == [".lock", "CURRENT", "gen-00000002"]
    assert len(PlaceMap.load(tmp_path / "map")) == 16


def test_an_unknown_heading_is_nan_and_integers_are_positions(tmp_path):
    place_map, vectors = small_map()
    place_map.add(vectors[:2], [Place("a", 3, np.int64(4)), Place("b", np.float64(5.0), 6.0, float("nan"))])
    place_map.save(tmp_path / "map")
    loaded = PlaceMap.load(tmp_path / "map")
    assert loaded.poses[16, :2].tolist() == [3.0, 4.0] and np.isnan(loaded.poses[17, 2])


@pytest.mark.parametrize("queries", [[[0.1] * DIM, [0.1] * (DIM - 1)], [["a"] * DIM], {"q": 1}], ids=["ragged", "strings", "dict"])
def test_search_refuses_queries_that_are_no_numeric_array(queries):
    place_map, _ = small_map()
    with pytest.raises(MapError, match="queries"):
        place_map.search(queries, 1)


TILES_JSON_CHANGES = {
    "tile name 5": lambda d: d["tiles"][0].update(name=5),
    "tile col '1'": lambda d: d["tiles"][0].update(col="1"),
    "tile count -1": lambda d: d["tiles"][0].update(count=-1),
    "size_m '100'": lambda d: d.update(size_m="100"),
    "size_m 0": lambda d: d.update(size_m=0),
    "overlap_m null": lambda d: d.update(overlap_m=None),
    "overlap_m half the size": lambda d: d.update(overlap_m=50.0),
    "layout_hash 7": lambda d: d.update(layout_hash=7),
}


@pytest.mark.parametrize("case", sorted(TILES_JSON_CHANGES))
def test_a_tiles_json_field_of_the_wrong_type_is_refused_when_opened(tmp_path, case):
    place_map, _ = small_map(100)
    cut_tiles(place_map, tmp_path / "tiles", size_m=100.0, overlap_m=20.0)
    index = tmp_path / "tiles" / "tiles.json"
    data = json.loads(index.read_text())
    TILES_JSON_CHANGES[case](data)
    index.write_text(json.dumps(data))
    with pytest.raises(MapError, match="tiles.json"):
        TiledMap(tmp_path / "tiles")


def test_exact_duplicates_answer_alike_alone_and_in_a_batch():
    """The 8-bit scan answers single frames, FAISS batches of 64 or more: equal scores come in the
    same order from both, so a frame's top-1 among duplicates does not depend on the batch size."""
    import faiss

    rows = random_rows(5000)
    place_map = PlaceMap(DIM, "layout", SHA, "flat")
    flat = faiss.IndexFlatIP(DIM)
    for block in (rows, np.repeat(rows[:1], 3, axis=0)):  # the first frame stored three more times
        place_map.add(block, [Place(str(i), 0.0, 0.0) for i in range(len(block))])
        flat.add(block)
    assert place_map.scan is not None and len(place_map) >= place_map.scan.min_entries  # single frames take the 8-bit scan
    for k in (1, 2, 4, 6):
        alone = place_map.search(rows[:1], k)[1]
        batch = place_map.search(np.repeat(rows[:1], 64, axis=0), k)[1]
        assert (batch == alone).all() and (alone == flat.search(rows[:1], k)[1]).all()
    assert place_map.scan.fallbacks == 0


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_an_index_without_lists_needs_no_expected_size(index_type):
    """Only the IVF types size their lists by the map; a flat or HNSW map may not know its size yet."""
    built = PlaceMap(dim=16, layout_hash="x" * 16, model_sha256="0" * 64, index_type=index_type, expected_size=None)
    assert built.factory == {"flat": "Flat", "hnsw": "HNSW32,SQfp16"}[index_type]
