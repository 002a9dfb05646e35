import numpy as np
import pytest

from structvpr_edge.errors import DatasetError
from structvpr_edge.metrics import per_group_recall, recall_at_n, retrieve


def test_recall_on_hand_made_case():
    predictions = np.array([[0, 1, 2], [2, 0, 1], [1, 2, 0], [2, 1, 0]])
    positives = [np.array([0]), np.array([0]), np.array([0, 2]), np.array([], dtype=int)]
    recall = recall_at_n(predictions, positives, ns=(1, 2, 3))
    # q0 hit at rank 0, q1 at rank 1, q2 at rank 1, q3 has no positive but stays in the denominator.
    assert recall == {"1": 0.25, "2": 0.75, "3": 0.75}


def test_per_group_recall_splits_by_condition():
    predictions = np.array([[0], [1], [1]])
    positives = [np.array([0]), np.array([0]), np.array([1])]
    result = per_group_recall(predictions, positives, ["night", "night", "season"], ns=(1,))
    assert result == {"night": {"1": 0.5}, "season": {"1": 1.0}}


def test_retrieve_normalises_and_orders_by_inner_product():
    database = np.array([[1.0, 0.0], [0.0, 10.0], [1.0, 1.0]])
    queries = np.array([[0.0, 0.1], [5.0, 0.2]])
    scores, ids = retrieve(database, queries, k=3)
    assert ids[:, 0].tolist() == [1, 0]
    assert ids[0].tolist() == [1, 2, 0]
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_mismatched_inputs_raise():
    with pytest.raises(DatasetError):
        retrieve(np.zeros((2, 3)), np.zeros((2, 4)), 1)
    with pytest.raises(DatasetError):
        recall_at_n(np.zeros((2, 1)), [np.array([0])])
