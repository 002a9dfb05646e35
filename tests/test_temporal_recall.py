"""The temporal reading of an evaluation (`eval --temporal`): the runtime's filter run over the queries
in the order their names give, beside the single-frame Recall@1."""
import json

import cv2
import numpy as np
import pytest

from structvpr_edge.cli import main
from structvpr_edge.data.dataset import load_dataset
from structvpr_edge.data.names import ImageName, format_name
from structvpr_edge.errors import DatasetError
from structvpr_edge.eval.evaluate import EvalResult, temporal_recall, traversal_order

PLACES = 10  # a straight route, a place every 10 m (within the filter's 25 m move)


def write_route(root, pano_ids=None, stamps=None):
    """Database and queries at east 0, 10, ..., 90 m; query i named with pano_ids[i] / stamps[i]."""
    rng = np.random.default_rng(0)
    for subset in ("database", "queries"):
        for i in range(PLACES):
            fields = {"pano_id": f"{subset}{i:02d}"}
            if subset == "queries":
                fields = {"pano_id": "" if pano_ids is None else pano_ids[i], "timestamp": "" if stamps is None else stamps[i]}
            path = root / "images" / "test" / subset / format_name(ImageName(east=10.0 * i, north=0.0, **fields))
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    return load_dataset(root, "test", positive_radius=5.0)


def retrievals(dataset, wrong_at):
    """Each query's own place first, except query ``wrong_at``, whose first is the far end of the
    route (scored a little higher) and its own place second."""
    east = dataset.queries.utm[:, 0]
    predictions = np.zeros((PLACES, 5), np.int64)
    scores = np.tile(np.linspace(0.9, 0.5, 5, dtype=np.float32), (PLACES, 1))
    for q in range(PLACES):
        own = int(np.flatnonzero(dataset.database.utm[:, 0] == east[q])[0])
        others = [r for r in np.argsort(-np.abs(dataset.database.utm[:, 0] - east[q])) if r != own]
        predictions[q] = [own, *others[:4]]
        if q == wrong_at:
            predictions[q, :2] = predictions[q, 1], own
    return EvalResult({}, {}, PLACES, PLACES, 0, predictions, scores)


def test_the_filter_mends_a_lone_wrong_first_choice_along_the_route(tmp_path):
    dataset = write_route(tmp_path, pano_ids=[f"f{i:02d}" for i in range(PLACES)])
    result = retrievals(dataset, wrong_at=5)
    single = np.mean([np.isin(p[0], pos) for p, pos in zip(result.predictions, dataset.positives)])
    temporal = temporal_recall(result, dataset)
    assert single == pytest.approx(0.9)
    assert temporal == {"recall@1": 1.0, "order": "pano_id", "top_k": 5}


def test_the_order_comes_from_the_names(tmp_path):
    """Pano ids that hop 30 m or more every frame (east 0, 30, 60, 90, 20, ...): the motion model now
    misleads the filter instead of mending the wrong choice; timestamps in route order, where
    present, decide over those pano ids and mend it again."""
    hops = [0, 7, 4, 1, 8, 5, 2, 9, 6, 3]  # traversal position of the query at east 10 * i
    dataset = write_route(tmp_path / "hops", pano_ids=[f"f{hops[i]:02d}" for i in range(PLACES)])
    assert temporal_recall(retrievals(dataset, wrong_at=5), dataset)["recall@1"] < 0.9
    timed = write_route(tmp_path / "timed", pano_ids=[f"f{hops[i]:02d}" for i in range(PLACES)], stamps=[f"{100 + i}" for i in range(PLACES)])
    order, field = traversal_order(timed.queries)
    assert field == "timestamp" and list(timed.queries.utm[order, 0]) == [10.0 * i for i in range(PLACES)]
    assert temporal_recall(retrievals(timed, wrong_at=5), timed)["recall@1"] == 1.0


@pytest.mark.parametrize("pano_ids", [None, ["same"] * PLACES], ids=["no-pano-ids", "one-pano-id-for-all"])
def test_queries_without_an_order_are_refused(tmp_path, pano_ids):
    dataset = write_route(tmp_path, pano_ids=pano_ids)
    with pytest.raises(DatasetError, match="not one traversal"):
        traversal_order(dataset.queries)


def test_a_map_smaller_than_top_k_gives_the_filter_all_its_places(tmp_path):
    dataset = write_route(tmp_path, pano_ids=[f"f{i:02d}" for i in range(PLACES)])
    result = retrievals(dataset, wrong_at=5)
    result.predictions, result.scores = result.predictions[:, :3], result.scores[:, :3]  # what a map of 3 places returns
    assert temporal_recall(result, dataset) == {"recall@1": 1.0, "order": "pano_id", "top_k": 3}


def test_eval_temporal_command(tmp_path, capsys):
    ordered = write_route(tmp_path / "ordered", pano_ids=[f"f{i:02d}" for i in range(PLACES)]).root
    out = tmp_path / "r.json"
    assert main(["eval", "--model", "pixels", "--dataset", str(ordered), "--radius", "5", "--temporal", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["temporal"]["order"] == "pano_id" and 0 <= report["temporal"]["recall@1"] <= 1
    unordered = write_route(tmp_path / "unordered").root
    assert main(["eval", "--model", "pixels", "--dataset", str(unordered), "--temporal"]) == 2
    assert "not one traversal" in capsys.readouterr().err
