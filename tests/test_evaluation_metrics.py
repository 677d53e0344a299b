"""Retrieval metrics against hand-computed cases."""

import numpy as np
import pytest

from indexer.evaluation import (
    average_precision_at,
    chance_precision,
    metric_names,
    per_query_metrics,
    precision_at,
    recall_at,
    relevance,
)


def test_relevance_pads_short_rows_with_misses():
    rel = relevance(["a", "b"], [["a", "b", "a"], ["b"]], k=3)
    assert rel.tolist() == [[True, False, True], [True, False, False]]


def test_precision_at():
    rel = np.array([[1, 0, 1, 1, 0], [0, 0, 0, 0, 1]], bool)
    assert precision_at(rel, 1).tolist() == [1.0, 0.0]
    assert precision_at(rel, 5).tolist() == [0.6, 0.2]
    with pytest.raises(ValueError):
        precision_at(rel, 6)


def test_average_precision_hand_computed():
    # hits at ranks 1, 3, 4 of 5; class of 10 -> denominator min(5, 10) = 5
    # AP = (1/1 + 2/3 + 3/4) / 5 = 0.48333
    rel = np.array([[1, 0, 1, 1, 0]], bool)
    assert average_precision_at(rel, np.array([10]))[0] == pytest.approx((1 + 2 / 3 + 3 / 4) / 5)
    # a class of only 3 items, all found at ranks 1-3: perfect
    assert average_precision_at(np.array([[1, 1, 1, 0, 0]], bool), np.array([3]))[0] == pytest.approx(1.0)
    # the only relevant item at rank 2: 1/2
    assert average_precision_at(np.array([[0, 1, 0]], bool), np.array([1]))[0] == pytest.approx(0.5)
    # empty class: 0, not a division by zero
    assert average_precision_at(np.array([[0, 0, 0]], bool), np.array([0]))[0] == 0.0


def test_recall_divides_by_what_could_be_found():
    rel = np.array([[1, 1, 0, 0, 0], [1, 0, 1, 0, 1]], bool)
    # class of 2 (both found) -> 1.0; class of 50 -> 3 / min(5, 50)
    assert recall_at(rel, np.array([2, 50])).tolist() == pytest.approx([1.0, 0.6])


def test_metric_names_and_per_query():
    assert metric_names(10) == ["P@1", "P@5", "P@10", "mAP@10", "recall@10"]
    assert metric_names(5) == ["P@1", "P@5", "mAP@5", "recall@5"]
    assert metric_names(1) == ["P@1", "mAP@1", "recall@1"]
    m = per_query_metrics(np.ones((2, 10), bool), np.array([20, 20]))
    assert all(v.tolist() == [1.0, 1.0] for v in m.values())


def test_chance_is_the_class_prior():
    sizes = {"a": 30, "b": 10}
    assert chance_precision(["a", "b"], sizes) == pytest.approx((30 / 40 + 10 / 40) / 2)
    assert chance_precision(["a", "a", "a", "b"], sizes) == pytest.approx((3 * 0.75 + 0.25) / 4)
