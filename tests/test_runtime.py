"""EdgeVPR, the place map and the runtime commands, on a tiny exported student."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from structvpr_edge import EdgeVPR
from structvpr_edge.cli import main
from structvpr_edge.data.dataset import load_dataset
from structvpr_edge.errors import ConfigError, MapError, UpscaleWarning
from structvpr_edge.runtime.map import Place, PlaceMap, index_string
from structvpr_edge.modelinfo import read_onnx_info, sha256_file
from structvpr_edge.runtime.mapping import build_map, threshold_for_precision
from structvpr_edge.runtime.preprocess import Preprocessor
from structvpr_edge.runtime.temporal import PlaceFilter, TemporalConfig


MODEL_SHA = "5" * 64  # a stand-in model-file hash for maps built from synthetic descriptors


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A checkpoint (ImageNet init, untrained heads) and its float and uint8-input ONNX exports."""
    import torch

    from structvpr_edge.deploy.export import export_onnx
    from structvpr_edge.models.checkpoint import save_checkpoint
    from structvpr_edge.models.student import StructVPRStudent, StudentConfig

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("exported")
    checkpoint = save_checkpoint(out / "student.pt", StructVPRStudent(StudentConfig()).eval(), (64, 48), {})
    export_onnx(checkpoint, out / "float.onnx", batch="dynamic")
    export_onnx(checkpoint, out / "uint8.onnx", uint8_input=True)
    return out


def frames_of(dataset_root: Path, subset: str = "queries") -> list[np.ndarray]:
    paths = getattr(load_dataset(dataset_root), subset).paths
    return [cv2.imread(str(p)) for p in paths]


def test_backends_agree(exported, place_dataset):
    frames = frames_of(place_dataset)[:4]
    descriptors = {}
    for name, backend in (("float.onnx", "onnxruntime"), ("uint8.onnx", "onnxruntime"), ("student.pt", "torch")):
        with EdgeVPR(exported / name, backend=backend) as vpr:
            descriptors[name] = np.stack([vpr.describe(f) for f in frames])
    np.testing.assert_allclose(np.linalg.norm(descriptors["float.onnx"], axis=1), 1, atol=1e-4)
    for name in ("uint8.onnx", "student.pt"):
        cosine = (descriptors[name] * descriptors["float.onnx"]).sum(axis=1)
        assert cosine.min() > 0.9999, name


def test_rgb_frames_and_bad_frames(exported, place_dataset):
    frame = frames_of(place_dataset)[0]
    with EdgeVPR(exported / "float.onnx") as bgr, EdgeVPR(exported / "float.onnx", colour="RGB") as rgb:
        assert float(bgr.describe(frame) @ rgb.describe(frame[..., ::-1].copy())) > 0.9999
        with pytest.raises(ConfigError, match="HxWx3 uint8"):
            bgr.describe(frame.astype(np.float32))
        with pytest.raises(MapError, match="no map"):
            bgr.localize(frame)
    with pytest.raises(ConfigError):
        EdgeVPR(exported / "float.onnx", colour="YUV")


def test_map_build_localize_save_append(exported, place_dataset, tmp_path):
    with EdgeVPR(exported / "float.onnx", max_batch=4) as vpr:
        built = build_map(vpr, place_dataset, tmp_path / "map")
        assert len(built) == 6 and built.manifest.index_string == "Flat"
        vpr.set_map(tmp_path / "map")
        queries = frames_of(place_dataset)
        results = vpr.localize_batch(queries)
        assert len(results) == len(queries)
        first = results[0]
        assert len(first.matches) == 5 and first.matches[0].similarity >= first.matches[-1].similarity
        assert set(first.timing_ms) == {"preprocess", "inference", "search", "total"}
        assert not first.confident  # no threshold calibrated yet
        assert (first.east, first.north) == (first.matches[0].east, first.matches[0].north)
        build_map(vpr, place_dataset, tmp_path / "map", append=True, split="val")  # other images: added
        build_map(vpr, place_dataset, tmp_path / "map", append=True)  # the same images again: nothing added
    assert len(PlaceMap.load(tmp_path / "map")) == 12


def test_map_refuses_other_layout_and_corruption(exported, place_dataset, tmp_path):
    with EdgeVPR(exported / "float.onnx") as vpr:
        build_map(vpr, place_dataset, tmp_path / "map")
    place_map = PlaceMap.load(tmp_path / "map")
    with pytest.raises(MapError, match="layout"):
        place_map.check_compatible("0" * 16)
    with pytest.raises(MapError, match="rebuild"):
        place_map.check_compatible(place_map.manifest.layout_hash, "f" * 64)
    live = tmp_path / "map" / (tmp_path / "map" / "CURRENT").read_text().strip()
    with (live / "places.sqlite").open("ab") as handle:
        handle.write(b"garbage")
    with pytest.raises(MapError, match="checksum"):
        PlaceMap.load(tmp_path / "map")
    with pytest.raises(MapError, match="not a map"):
        PlaceMap.load(tmp_path)


def test_map_rejects_bad_descriptors():
    place_map = PlaceMap(4, "h", MODEL_SHA)
    with pytest.raises(MapError, match="normalised"):
        place_map.add(np.ones((1, 4)), [Place("a", 0, 0)])
    with pytest.raises(MapError, match=r"\(N, 4\)"):
        place_map.add(np.ones((1, 3)) / np.sqrt(3), [Place("a", 0, 0)])
    with pytest.raises(MapError, match="empty"):
        place_map.search(np.ones((1, 4)), 1)
    with pytest.raises(MapError):
        index_string("kdtree", 10, 4)
    assert index_string("auto", 10, 4) == "Flat" and index_string("auto", 10**6, 4).startswith("IVF")


def test_approximate_index_agrees_with_exact_on_clustered_data(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(400, 32))
    data = centres[rng.integers(0, 400, 8000)] + 0.3 * rng.normal(size=(8000, 32))
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    places = [Place(str(i), float(i), 0.0) for i in range(len(data))]
    exact, approx = PlaceMap(32, "h", MODEL_SHA, "flat"), PlaceMap(32, "h", MODEL_SHA, "ivf", expected_size=len(data))
    for place_map in (exact, approx):
        place_map.add(data.astype(np.float32), places)
    approx.set_search_effort(nprobe=32)
    queries = (data[:500] + 0.05 * rng.normal(size=(500, 32))).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    agreement = np.mean(exact.search(queries, 1)[1][:, 0] == approx.search(queries, 1)[1][:, 0])
    assert agreement >= 0.95
    approx.save(tmp_path / "ivf")
    assert np.array_equal(PlaceMap.load(tmp_path / "ivf").search(queries, 3)[1], approx.search(queries, 3)[1])


def test_threshold_reaches_target_precision():
    rng = np.random.default_rng(0)
    correct = rng.random(1000) < 0.7
    scores = np.where(correct, rng.normal(0.8, 0.05, 1000), rng.normal(0.6, 0.08, 1000))
    margins = rng.random(1000) * 0.1
    threshold = threshold_for_precision(scores, margins, correct, 0.99)
    kept = (scores >= threshold.score) & (margins >= threshold.margin)
    assert correct[kept].mean() >= 0.99 and threshold.recall == pytest.approx(correct[kept].sum() / 1000)
    assert 0.2 < threshold.recall < 0.7
    assert (correct[scores >= threshold.score] & (margins[scores >= threshold.score] >= threshold.margin)).sum() >= 100
    with pytest.raises(MapError, match="needs at least 100"):  # no measured precision: no rule, never "score": Infinity
        threshold_for_precision(scores, margins, np.zeros(1000, bool), 0.99)


def test_temporal_filter_fixes_isolated_mistakes():
    poses = np.column_stack([np.arange(100) * 5.0, np.zeros(100), np.zeros(100)])
    place_filter = PlaceFilter(TemporalConfig(max_move_m=12, temperature=0.05))
    single, filtered = 0, 0
    rng = np.random.default_rng(1)
    for t in range(60):
        true = t
        rows = np.array([true, rng.integers(0, 100), rng.integers(0, 100)])
        scores = np.array([0.8, 0.7, 0.6])
        if t % 5 == 4:  # a distractor wins this frame
            scores = np.array([0.78, 0.82, 0.6])
        order = np.argsort(-scores)
        rows, scores = rows[order], scores[order]
        single += rows[0] == true
        posterior = place_filter.update(rows, scores, poses)
        filtered += place_filter.rows[np.argmax(posterior)] == true
    assert filtered > single and filtered >= 56


def test_runtime_imports_without_torch(exported, place_dataset):
    """An edge device installs only what it runs: the ONNX Runtime path must not import torch."""
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
import cv2
from structvpr_edge import EdgeVPR
from structvpr_edge.runtime.mapping import build_map
with EdgeVPR({str(exported / 'uint8.onnx')!r}) as vpr:
    build_map(vpr, {str(place_dataset)!r}, None)
    print(vpr.describe(cv2.imread({str(frames_path(place_dataset))!r})).shape)
assert "torch" not in sys.modules
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def frames_path(root: Path) -> Path:
    return load_dataset(root).queries.paths[0]


def test_localize_command_prints_json_lines(exported, place_dataset, tmp_path, capsys):
    assert main(["build-map", "--model", str(exported / "uint8.onnx"), "--images", str(place_dataset), "--out", str(tmp_path / "m")]) == 0
    paths = [str(p) for p in load_dataset(place_dataset).queries.paths[:2]]
    capsys.readouterr()
    assert main(["localize", "--model", str(exported / "uint8.onnx"), "--map", str(tmp_path / "m"), *paths]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["frame"] for line in lines] == paths and all(len(line["matches"]) == 5 for line in lines)
    assert main(["localize", "--model", str(exported / "uint8.onnx"), "--map", str(tmp_path / "m"), str(tmp_path / "nope.jpg")]) == 2


def test_calibrate_threshold_command_stores_the_rule_used_by_localize(exported, place_dataset, tmp_path, capsys):
    model = str(exported / "uint8.onnx")  # the map covers the val places: the threshold is picked on val by default
    assert main(["build-map", "--model", model, "--images", str(place_dataset), "--split", "val", "--out", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    assert main(["calibrate-threshold", "--model", model, "--map", str(tmp_path / "m"), "--val", str(place_dataset), "--precision", "0.5"]) == 0
    rule = json.loads(capsys.readouterr().out)
    stored = PlaceMap.load(tmp_path / "m").manifest.threshold
    assert stored is not None and stored.score == pytest.approx(rule["score"]) and stored.precision >= 0.5
    with EdgeVPR(model, map=tmp_path / "m") as vpr:
        results = vpr.localize_batch(frames_of(place_dataset))
    assert all(r.confident == (r.matches[0].similarity >= stored.score and r.margin >= stored.margin) for r in results)
    assert main(["calibrate-threshold", "--model", model, "--map", str(tmp_path / "m"), "--val", str(place_dataset), "--precision", "1.5"]) == 2


def test_preprocess_area_resize_matches_one_inter_area(exported):
    """Halving first must give the box average that one INTER_AREA resize gives, for any frame size."""
    info = read_onnx_info(exported / "uint8.onnx")
    rng = np.random.default_rng(0)
    for uint8_input in (True, False):
        pre = Preprocessor(dataclasses.replace(info, uint8_input=uint8_input, colour="BGR"), colour="BGR")
        sizes = ((4 * info.height, 4 * info.width), (info.height, info.width), (6 * info.height, 12 * info.width), (480, 640), (info.height + 7, info.width + 5))
        for h, w in sizes:
            frame = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 3)
            reference = cv2.resize(frame, (info.width, info.height), interpolation=cv2.INTER_AREA)
            batch = pre([frame])
            if uint8_input:
                got = batch[0].astype(int)
            else:  # undo the normalisation and the BGR -> RGB swap
                rgb = batch[0].transpose(1, 2, 0) * np.array(info.std) + np.array(info.mean)
                got = np.rint(rgb[..., ::-1] * 255).astype(int)
            assert np.abs(got - reference).max() <= 1, (h, w, uint8_input)
        assert [len(pre.halvings[size]) for size in sizes] == [2, 0, 1, 1, 0]


def test_a_frame_smaller_than_the_model_input_warns_once_per_size(exported):
    """A frame below the model input is outside what training saw (never enlarged): say so, once per size."""
    import warnings

    info = read_onnx_info(exported / "uint8.onnx")
    pre = Preprocessor(info)
    small, large = (info.height // 2, info.width), (2 * info.height, 2 * info.width)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for shape in (small, small, large, (info.height, info.width)):
            pre([np.zeros((*shape, 3), np.uint8)])
    assert [type(w.message) for w in caught] == [UpscaleWarning]
    assert f"{info.width}x{info.height // 2} frames are enlarged" in str(caught[0].message)


def test_single_frame_search_on_a_flat_map_is_exact(tmp_path, monkeypatch):
    """The int8 scan + float32 re-scoring must return exactly what a float32 scan returns, also on a
    map opened from disk, whose scan is mirrored a block at a time (blocks of 1,000 here)."""
    import faiss

    from structvpr_edge.runtime import quantized_scan

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(500, 64))
    data = centres[rng.integers(0, 500, 5000)] + 0.4 * rng.normal(size=(5000, 64))
    twins = data[:1] + 1e-4 * rng.normal(size=(60, 64))  # a parked vehicle: 60 near-identical frames
    spikes = np.eye(64)[:10]  # later entries beyond the first batch's int8 range get clipped
    place_map = PlaceMap(64, "h", MODEL_SHA, "flat")
    truth = faiss.IndexFlatIP(64)
    for batch in (data, twins, spikes):
        batch = (batch / np.linalg.norm(batch, axis=1, keepdims=True)).astype(np.float32)
        place_map.add(batch, [Place(str(i), 0.0, 0.0) for i in range(len(batch))])
        truth.add(batch)
    assert place_map.scan is not None and place_map.scan.error > 0
    assert place_map.scan.outliers.tolist() == list(range(5060, 5070))  # the spikes
    queries = np.concatenate([data[:200] + 0.2 * rng.normal(size=(200, 64)), twins[:5], spikes[:3] + 0.01]).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for query in queries:
        scores, rows = place_map.search(query[None], 5)
        true_scores, true_rows = truth.search(query[None], 5)
        assert np.array_equal(rows, true_rows)
        np.testing.assert_allclose(scores, true_scores, atol=1e-5)
    assert 0 < place_map.scan.fallbacks < 20  # the twins needed the float32 scan; the rest did not
    place_map.save(tmp_path / "flat")
    monkeypatch.setattr(quantized_scan, "MIRROR_BLOCK", 1000)
    loaded = PlaceMap.load(tmp_path / "flat")
    assert loaded.scan is not None and loaded.scan.index.ntotal == len(loaded)
    assert set(range(5060, 5070)) <= set(loaded.scan.outliers.tolist())
    for query in queries:
        assert np.array_equal(loaded.search(query[None], 5)[1], truth.search(query[None], 5)[1])


def test_search_sets_the_process_wide_faiss_threads_only_when_they_change(monkeypatch):
    """One frame after another must not touch FAISS's global OpenMP setting each time."""
    import faiss

    calls = []
    monkeypatch.setattr(faiss, "omp_set_num_threads", calls.append)
    monkeypatch.setattr(PlaceMap, "omp_threads", None)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    place_map = PlaceMap(16, "h", MODEL_SHA, "flat")
    place_map.add(vectors, [Place(str(i), float(i), 0.0) for i in range(200)])
    for frame in vectors[:20]:
        place_map.search(frame[None], 5)
    assert calls == [1]
    place_map.search(vectors, 5)  # a large batch: every core, set once
    place_map.search(vectors[:1], 5)
    assert len(calls) == 3 and calls[0] == calls[2] == 1


@pytest.mark.parametrize("name", ["structvprpp", "student-nokd", "baseline"])
def test_shipped_models_are_small_and_self_describing(name):
    from structvpr_edge.models.checkpoint import load_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(name)
    assert path.stat().st_size < 3 * 2**20  # fp16 weights
    model, meta = load_checkpoint(name)
    assert meta["train_config"]["mode"] == ("baseline" if name == "baseline" else "structvpr++")
    if name != "baseline":  # baseline mode never distils, whatever its config's weight says
        import warnings

        from structvpr_edge.train.config import load_config

        with warnings.catch_warnings():  # a file trained before config version 2 is converted on reading
            warnings.simplefilter("ignore")
            config = load_config(path)
        assert config.distill.enabled == (name == "structvprpp") and config.distill.weight == 1.0
    assert meta["input"]["size"] == list(meta["train_config"]["image_size"])
    assert sum(segment["size"] for segment in meta["layout"]["segments"]) == 512 and meta["steps_done"] == 1000


def test_demo_exports_again_when_the_cached_onnx_has_other_weights(tmp_path):
    """A demo folder from before the shipped weights changed must not run the old model."""
    from structvpr_edge.demo import export_shipped
    from structvpr_edge.deploy.export import export_onnx
    from structvpr_edge.models.checkpoint import resolve_checkpoint

    cached = tmp_path / "structvprpp.onnx"
    export_onnx("baseline", cached, uint8_input=True)
    assert read_onnx_info(cached).checkpoint_sha256 == sha256_file(resolve_checkpoint("baseline"))
    assert export_shipped(tmp_path, "structvprpp") == cached
    assert read_onnx_info(cached).checkpoint_sha256 == sha256_file(resolve_checkpoint("structvprpp"))


@pytest.mark.slow
def test_demo_localizes_a_night_drive_with_the_shipped_model(tmp_path):
    from structvpr_edge.demo import run_demo

    summary = run_demo(tmp_path / "demo", places=30, threads=2)
    assert summary["recall@1"] >= 0.7 and summary["recall@1_temporal"] >= summary["recall@1"] - 0.05
    assert Path(summary["figure"]).stat().st_size > 0


@pytest.mark.slow
def test_the_demo_from_bags_scores_what_the_folder_demo_scores(tmp_path):
    """The same route recorded as two bags: the map from drive1's bag, drive2 localized from its own
    bag and fixes, gives the folder demo's Recall@1 (the same frames, poses through UTM and back)."""
    pytest.importorskip("rosbags")
    from structvpr_edge.demo import run_bag_demo, run_demo

    folder = run_demo(tmp_path / "folder", places=30, threads=1)
    bags = run_bag_demo(tmp_path / "bags", places=30, threads=1)
    assert bags["frames"] == 30 and bags["recall"]["1"] == pytest.approx(folder["recall@1"])
    assert bags["error_m"]["median"] < 5.0 and Path(bags["figure"]).stat().st_size > 0
