import numpy as np
import pytest

from structvpr_edge.data.dataset import load_dataset
from structvpr_edge.data.places import cluster_utm, place_groups
from structvpr_edge.errors import DatasetError
from tests.conftest import write_tiny_dataset


def test_corridor_loads_with_published_ground_truth(corridor):
    dataset = load_dataset(corridor)
    assert (len(dataset.database), len(dataset.queries)) == (111, 111)
    assert not dataset.has_labels
    # Frame i sits at east = 10 i: query i matches database frames i-2 .. i+2.
    db_frames = np.round(dataset.database.utm[:, 0] / 10).astype(int)
    for q, positives in enumerate(dataset.positives):
        frame = round(dataset.queries.utm[q, 0] / 10)
        expected = {f for f in range(frame - 2, frame + 3) if 0 <= f < 111}
        assert set(db_frames[positives].tolist()) == expected


def test_positive_radius_is_inclusive_and_configurable(corridor):
    assert max(len(p) for p in load_dataset(corridor, positive_radius=10.0).positives) == 3
    with pytest.raises(DatasetError):
        load_dataset(corridor, positive_radius=0)


def test_tiny_dataset_positives_labels_metadata(tiny_dataset):
    dataset = load_dataset(tiny_dataset)
    matches = {q_east: dataset.database.utm[p, 0].tolist() for q_east, p in zip(dataset.queries.utm[:, 0], dataset.positives)}
    assert matches == {3.0: [0.0], 104.0: [100.0], 500.0: []}
    assert dataset.has_labels
    by_east = dict(zip(dataset.queries.utm[:, 0], dataset.queries.column("condition")))
    assert by_east == {3.0: "dynamic", 104.0: "night", 500.0: "night"}
    assert dataset.database.headings.tolist() == [90.0, 90.0, 90.0]


def test_images_paths_listing_is_used(tiny_dataset):
    folder = tiny_dataset / "images" / "test" / "database"
    first = sorted(p.name for p in folder.iterdir())[0]
    (folder.parent / "database_images_paths.txt").write_text(first + "\n")
    assert len(load_dataset(tiny_dataset).database) == 1
    (folder.parent / "database_images_paths.txt").write_text("missing.jpg\n")
    with pytest.raises(DatasetError, match="missing"):
        load_dataset(tiny_dataset)


def test_missing_split_and_bad_names_raise(tiny_dataset, tmp_path):
    with pytest.raises(DatasetError, match="split 'train'"):
        load_dataset(tiny_dataset, split="train")
    with pytest.raises(DatasetError, match="no images/"):
        load_dataset(tmp_path)
    (tiny_dataset / "images" / "test" / "queries" / "holiday.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="holiday.jpg"):
        load_dataset(tiny_dataset)


def test_labels_absent_when_any_missing(tmp_path):
    root = write_tiny_dataset(tmp_path / "d", with_labels=False, with_metadata=False)
    dataset = load_dataset(root)
    assert not dataset.has_labels and dataset.queries.column("condition") is None


def test_place_groups_from_metadata(tiny_dataset):
    groups = place_groups(load_dataset(tiny_dataset), min_images=2)
    # place_id 0 and 1 each have a database and a query image; place 2 too.
    assert sorted(len(g) for g in groups.places) == [2, 2, 2]
    for g in groups.places:
        assert len({groups.paths[i].parent.name for i in g}) == 2


def test_place_groups_from_utm_clustering(corridor):
    groups = place_groups(load_dataset(corridor), min_images=2, cell_m=10.0)
    assert len(groups) == 111  # each frame's database and query image share a 10 m cell
    with pytest.raises(DatasetError):
        place_groups(load_dataset(corridor), min_images=3, cell_m=10.0)


def test_cluster_utm_separates_headings():
    utm = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [50.0, 0.0]])
    headings = np.array([0.0, 10.0, 180.0, 0.0])
    place = cluster_utm(utm, headings, cell_m=10.0)
    assert place[0] == place[1] and place[1] != place[2] and place[0] != place[3]
