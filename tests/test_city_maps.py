"""City-scale maps: the ivfpq index (PQ codes + float32 rows on disk), tiles around a prior, Ray builds."""
import os
from pathlib import Path

import numpy as np
import pytest

from structvpr_edge import EdgeVPR
from structvpr_edge.errors import ConfigError, MapError
from structvpr_edge.runtime.map import EXACT_LIMIT, Place, PlaceMap, index_string
from structvpr_edge.runtime.mapping import build_map
from structvpr_edge.runtime.tiles import TiledMap, cut_tiles

SHA = "7" * 64
DIM = 64


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def grid_map(index_type: str = "flat", side: int = 40, spacing: float = 10.0, seed: int = 0) -> tuple[PlaceMap, np.ndarray]:
    """side x side places ``spacing`` m apart from (0, 0), random descriptors."""
    vectors = unit(np.random.default_rng(seed).normal(size=(side * side, DIM)))
    place_map = PlaceMap(DIM, "layout", SHA, index_type, expected_size=len(vectors))
    place_map.add(vectors, [Place(f"p{i}", spacing * (i % side), spacing * (i // side)) for i in range(len(vectors))])
    return place_map, vectors


def test_auto_picks_ivfpq_beyond_the_exact_limit():
    assert index_string("auto", EXACT_LIMIT, 512) == "Flat"
    assert index_string("auto", EXACT_LIMIT + 1, 512).endswith(",PQ64x4fs")
    assert index_string("auto", EXACT_LIMIT + 1, 100).endswith(",SQ8")  # PQ needs a length divisible by 8
    with pytest.raises(MapError, match="divisible by 8"):
        index_string("ivfpq", 1000, 100)


def test_ivfpq_reranks_exactly_and_opens_without_reading_its_rows(tmp_path):
    place_map, vectors = grid_map("ivfpq", side=80)
    queries = unit(vectors[:200] + np.random.default_rng(1).normal(0, 0.02, (200, DIM)))
    exact = np.argmax(queries @ vectors.T, axis=1)
    scores, rows = place_map.search(queries, 3)
    assert (rows[:, 0] == exact).mean() >= 0.99
    np.testing.assert_allclose(scores[:, 0], (queries * vectors[rows[:, 0]]).sum(axis=1), atol=1e-5)  # float32 scores, not PQ
    place_map.save(tmp_path / "m")
    place_map.add(vectors[:10], [Place(f"again{i}", 0.0, 0.0) for i in range(10)])  # rows kept aside until saved
    assert place_map.search(vectors[:1], 1)[0][0, 0] == pytest.approx(1.0, abs=1e-5)
    place_map.save(tmp_path / "m")
    loaded = PlaceMap.load(tmp_path / "m")
    assert len(loaded) == 6410 and len(loaded.places) == 6410 and loaded.places[6409].id == "again9"
    assert np.array_equal(loaded.search(queries, 3)[1], place_map.search(queries, 3)[1])
    rows_file = next((tmp_path / "m").glob("gen-*/vectors.f32"))
    with rows_file.open("r+b") as handle:
        handle.write(b"\0" * 16)
    PlaceMap.load(tmp_path / "m")  # checked by size only: the rows are not read at open
    with pytest.raises(MapError, match="checksum"):
        PlaceMap.load(tmp_path / "m", verify="full")
    with rows_file.open("ab") as handle:
        handle.write(b"\0" * 4)
    with pytest.raises(MapError, match="vectors.f32"):
        PlaceMap.load(tmp_path / "m")


def test_tiles_hold_each_place_in_every_tile_within_the_overlap(tmp_path):
    place_map, _ = grid_map()
    index = cut_tiles(place_map, tmp_path / "tiles", size_m=100.0, overlap_m=20.0)
    assert len(index.tiles) == 16  # 400 m x 400 m of places: 4 x 4 cells (places at x = 390 reach no fifth)
    for tile in index.tiles:
        poses = PlaceMap.load(tmp_path / "tiles" / tile.name).poses
        assert ((poses[:, 0] >= 100 * tile.col - 20) & (poses[:, 0] < 100 * tile.col + 120)).all()  # half-open squares
        inside = (place_map.poses[:, 0] >= 100 * tile.col - 20) & (place_map.poses[:, 0] < 100 * tile.col + 120) & \
                 (place_map.poses[:, 1] >= 100 * tile.row - 20) & (place_map.poses[:, 1] < 100 * tile.row + 120)
        assert tile.count == inside.sum() == len(poses)


def test_tiles_under_a_prior_answer_like_the_whole_map(tmp_path):
    place_map, vectors = grid_map()
    cut_tiles(place_map, tmp_path / "tiles", size_m=100.0, overlap_m=20.0)
    tiles = TiledMap(tmp_path / "tiles")
    assert tiles.needed((150.0, 150.0, 20.0)) == ("tile_1_1",)  # radius <= overlap: one tile
    assert len(tiles.needed((100.0, 100.0, 60.0))) == 4  # a corner, 40 m beyond the overlap
    near = np.flatnonzero(np.hypot(*(place_map.poses[:, :2] - 150).T) <= 20)
    tiles.set_prior((150.0, 150.0, 20.0), wait=True)
    for prior in ((150.0, 150.0, 20.0), (199.0, 150.0, 60.0)):  # one tile, then two in the background
        tiles.set_prior(prior)
        if tiles.worker is not None:
            tiles.worker.join()
        _, rows = tiles.view.search(vectors[near], 2)
        assert [tiles.view.places[r].id for r in rows[:, 0]] == [place_map.places[i].id for i in near]
        assert len({tiles.view.places[r].id for r in rows[0]}) == 2  # a place in two tiles is answered once
    assert set(tiles.loaded) == {"tile_1_1", "tile_2_1"}


def test_a_prior_that_jumps_beyond_the_loaded_tiles_is_answered_from_its_own_tile(tmp_path):
    """A move inside the overlap loads the next tile in the background; a jump (a restart, GNSS
    reacquired far away) waits for its tile, so the very next search is not answered by tiles that
    cannot hold the place."""
    place_map, vectors = grid_map()
    cut_tiles(place_map, tmp_path / "tiles", size_m=100.0, overlap_m=20.0)
    tiles = TiledMap(tmp_path / "tiles")
    tiles.set_prior((150.0, 150.0, 20.0), wait=True)
    tiles.set_prior((205.0, 150.0, 20.0))  # 5 m into the next tile: the old one still holds it
    assert tiles.waits == 0
    if tiles.worker is not None:
        tiles.worker.join()
    far = np.flatnonzero(np.hypot(*(place_map.poses[:, :2] - [350.0, 350.0]).T) <= 20)
    tiles.set_prior((350.0, 350.0, 20.0))  # no loaded tile holds places there
    _, rows = tiles.view.search(vectors[far], 1)  # no join: the load was waited for
    assert tiles.waits == 1 and set(tiles.loaded) == {"tile_3_3"}
    assert [tiles.view.places[r].id for r in rows[:, 0]] == [place_map.places[i].id for i in far]


def test_a_background_tile_load_gives_way_to_frames(tmp_path, monkeypatch):
    """The loader thread runs at the lowest CPU priority with a short interpreter switch interval,
    and the process's switch interval is restored when the load ends (benchmarks/tiles_drive.py
    measures the frames' latency meanwhile)."""
    import sys
    import threading

    place_map, _ = grid_map()
    cut_tiles(place_map, tmp_path / "tiles", size_m=100.0, overlap_m=20.0)
    tiles = TiledMap(tmp_path / "tiles")
    tiles.set_prior((150.0, 150.0, 20.0), wait=True)
    seen = []
    swap = TiledMap._swap
    monkeypatch.setattr(TiledMap, "_swap", lambda self, names: (seen.append(
        (os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), sys.getswitchinterval())), swap(self, names)))
    before = sys.getswitchinterval()
    tiles.set_prior((205.0, 150.0, 20.0))  # the next tile, in the background
    tiles.worker.join()
    assert seen == [(19, 0.0005)] and sys.getswitchinterval() == before and "tile_2_1" in tiles.loaded


def test_bad_tile_folders_and_priors(tmp_path):
    place_map, _ = grid_map()
    cut_tiles(place_map, tmp_path / "tiles", size_m=100.0, overlap_m=20.0)
    tiles = TiledMap(tmp_path / "tiles")
    with pytest.raises(MapError, match="outside every tile"):
        tiles.needed((5000.0, 0.0, 10.0))
    for prior in ((float("nan"), 0.0, 10.0), (0.0, 0.0, 0.0), (0.0, 0.0)):
        with pytest.raises(ConfigError, match="prior"):
            tiles.needed(prior)
    with pytest.raises(MapError, match="budget"):
        tiles.load_all(budget_mb=0.01)
    other, _ = grid_map(side=4)
    other.manifest.model_sha256 = "8" * 64
    other.save(tmp_path / "other")
    os.rename(tmp_path / "tiles" / "tile_0_0", tmp_path / "moved")
    with pytest.raises(MapError, match="tile_0_0.*missing"):
        TiledMap(tmp_path / "tiles")
    os.rename(tmp_path / "other", tmp_path / "tiles" / "tile_0_0")
    with pytest.raises(MapError, match="another model"):
        TiledMap(tmp_path / "tiles")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny uint8-input student export (untrained heads)."""
    import torch

    from structvpr_edge.deploy.export import export_onnx
    from structvpr_edge.models.checkpoint import save_checkpoint
    from structvpr_edge.models.student import StructVPRStudent, StudentConfig

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("model")
    export_onnx(save_checkpoint(out / "student.pt", StructVPRStudent(StudentConfig()).eval(), (64, 48), {}), out / "m.onnx", uint8_input=True)
    return out / "m.onnx"


def test_edgevpr_with_a_prior_loads_its_tiles(model, place_dataset, tmp_path):
    with EdgeVPR(model, threads=1) as vpr:
        whole = build_map(vpr, place_dataset, tmp_path / "map", split="train")
        cut_tiles(whole, tmp_path / "tiles", size_m=500.0, overlap_m=100.0)  # places 100 m apart along east
        frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)
        vpr.set_map(tmp_path / "tiles", prior=(1250.0, 0.0, 100.0))
        assert set(vpr.tiles.loaded) == {"tile_2_0"} and vpr.localize(frame).matches
        with pytest.raises(MapError, match="outside every tile"):
            vpr.set_prior(1250.0, 9000.0, 50.0)
        with pytest.raises(ConfigError, match="tile folder"):
            vpr.set_map(tmp_path / "map", prior=(0.0, 0.0, 10.0))
        vpr.set_prior(250.0, 0.0, 100.0)  # the refused map left the tiles in charge
        assert vpr.localize(frame).matches


MARKER = "STRUCTVPR_TEST_DIE"  # a file: the worker that finds it removes it ("once") or not ("always") and dies


def dying_describer():
    from structvpr_edge.cluster import Describer

    class Dying(Describer):
        """A worker whose batch ends its process (a killed node) while the marker file exists."""

        def __call__(self, batch):
            marker = Path(os.environ[MARKER])
            if marker.exists():
                if marker.read_text() == "once":
                    marker.unlink()
                os._exit(1)
            return super().__call__(batch)

    return Dying


@pytest.mark.slow
def test_ray_build_equals_the_single_process_build_and_a_dead_worker_leaves_no_partial_map(model, place_dataset, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="the Ray build needs structvpr-edge[cluster]")
    from structvpr_edge.cluster import RayConfig, ray_describer

    marker = tmp_path / "marker"
    monkeypatch.setenv(MARKER, str(marker))  # before ray.init: the workers inherit it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with EdgeVPR(model, threads=1) as vpr:
            single = build_map(vpr, place_dataset, tmp_path / "single", split="train")
            config = RayConfig(workers=2, batch_size=8)
            on_ray = build_map(vpr, place_dataset, tmp_path / "ray", split="train", describe=ray_describer(model, vpr.info.layout.dim, config))
            marker.write_text("once")
            retried = build_map(vpr, place_dataset, tmp_path / "retried", split="train",
                                describe=ray_describer(model, vpr.info.layout.dim, config, actor=dying_describer()))
            assert not marker.exists()  # a worker did die, and the build went on
            marker.write_text("always")
            with pytest.raises(MapError, match="Ray build failed"):
                build_map(vpr, place_dataset, tmp_path / "failed", split="train",
                          describe=ray_describer(model, vpr.info.layout.dim, config, actor=dying_describer()))
        assert not (tmp_path / "failed").exists()  # nothing written, not even a partial map
        for other in (on_ray, retried):
            assert [p.id for p in other.places] == [p.id for p in single.places]
            np.testing.assert_allclose(other.index.reconstruct_n(0, len(other)), single.index.reconstruct_n(0, len(single)), atol=1e-6)
    finally:
        ray.shutdown()
