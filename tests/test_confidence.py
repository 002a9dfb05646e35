"""Confidence that tells the truth: a map without a threshold says so, and calibrate-threshold works
on small sets (any split) or refuses with the counts and the precision the queries can measure."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from structvpr_edge import EdgeVPR, PlaceMap, Threshold, ThresholdError, UncalibratedWarning
from structvpr_edge.cli import main
from structvpr_edge.data.dataset import load_dataset
from structvpr_edge.runtime.mapping import build_map, calibrate_threshold, threshold_for_precision
from structvpr_edge.runtime.preprocess import read_image


@pytest.fixture(scope="module")
def setup(tmp_path_factory, place_dataset) -> SimpleNamespace:
    """An untrained student's ONNX export and an uncalibrated map of the test split's database."""
    import torch

    from structvpr_edge.deploy.export import export_onnx
    from structvpr_edge.models.checkpoint import save_checkpoint
    from structvpr_edge.models.student import StructVPRStudent, StudentConfig

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("confidence")
    checkpoint = save_checkpoint(root / "student.pt", StructVPRStudent(StudentConfig()).eval(), (64, 48), {})
    model = Path(export_onnx(checkpoint, root / "uint8.onnx", uint8_input=True, batch="dynamic").path)
    with EdgeVPR(model, max_batch=8) as vpr:
        build_map(vpr, place_dataset, root / "map", split="test")
    frames = [read_image(p) for p in load_dataset(place_dataset, "test").queries.paths[:2]]
    return SimpleNamespace(root=root, model=model, map=root / "map", dataset=place_dataset, frames=frames)


def localize_recording(vpr: EdgeVPR, frames: list) -> tuple[list, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [vpr.localize(frame) for frame in frames]
    return results, [w for w in caught if issubclass(w.category, UncalibratedWarning)]


def test_an_uncalibrated_map_warns_once_per_instance_and_each_result_says_so(setup):
    for _ in range(2):  # a second instance warns again
        with EdgeVPR(setup.model, map=setup.map) as vpr:
            results, caught = localize_recording(vpr, setup.frames * 2)
        assert len(caught) == 1 and "calibrate-threshold" in str(caught[0].message)
        assert all(not r.calibrated and not r.confident for r in results)
        assert json.loads(json.dumps(results[0].to_json()))["calibrated"] is False


def test_a_calibrated_map_neither_warns_nor_flags_its_results(setup):
    place_map = PlaceMap.load(setup.map)
    place_map.set_threshold(Threshold(score=-1.0, margin=0.0, precision=0.9, recall=1.0))  # in memory: every frame passes
    with EdgeVPR(setup.model, map=place_map) as vpr:
        results, caught = localize_recording(vpr, setup.frames)
    assert caught == [] and all(r.calibrated and r.confident for r in results)


def test_calibrate_threshold_takes_any_split_and_reports_what_it_measured(setup, tmp_path, capsys):
    directory = tmp_path / "map"
    PlaceMap.load(setup.map).save(directory)
    queries = len(load_dataset(setup.dataset, "test").queries.paths)
    argv = ["calibrate-threshold", "--model", str(setup.model), "--map", str(directory), "--dataset", str(setup.dataset), "--split", "test"]
    assert main([*argv, "--precision", "0.5"]) == 0
    out, err = capsys.readouterr()
    rule, stored = json.loads(out), PlaceMap.load(directory).manifest.threshold
    assert rule["queries"] == stored.queries == queries and 2 <= rule["correct"] == stored.correct <= queries
    assert stored.precision >= 0.5 and f"{queries} queries of split test ({stored.correct} with a correct top-1 match)" in err


def test_too_few_correct_matches_are_refused_with_the_counts_and_the_map_is_unchanged(setup, tmp_path):
    directory = tmp_path / "map"
    PlaceMap.load(setup.map).save(directory)
    before = sorted(p.name for p in directory.iterdir())
    with EdgeVPR(setup.model) as vpr, pytest.raises(ThresholdError) as refused:
        calibrate_threshold(vpr, directory, setup.dataset, precision=0.999, split="test")
    error = refused.value
    assert error.queries == len(load_dataset(setup.dataset, "test").queries.paths) and 0 < error.correct <= error.queries
    assert f"{error.correct} of {error.queries} queries have a correct top-1 match" in str(error) and "needs at least 1000" in str(error)
    assert 0 < error.supported < 0.999
    assert sorted(p.name for p in directory.iterdir()) == before and PlaceMap.load(directory).manifest.threshold is None


def test_the_precision_a_refusal_offers_can_be_measured_and_no_more():
    rng = np.random.default_rng(0)
    scores = rng.random(300)
    correct, margins = rng.random(300) < scores, rng.random(300)
    with pytest.raises(ThresholdError) as refused:
        threshold_for_precision(scores, margins, correct, 0.999)
    error = refused.value
    assert (error.queries, error.correct) == (300, int(correct.sum())) and 0.5 < error.supported < 0.999
    offered = math.floor(error.supported * 100) / 100
    assert f"--precision {offered:g} or lower" in str(error)
    found = threshold_for_precision(scores, margins, correct, offered)
    assert found.precision >= offered and (found.queries, found.correct) == (300, int(correct.sum()))
    with pytest.raises(ThresholdError):
        threshold_for_precision(scores, margins, correct, error.supported + 1e-6)
