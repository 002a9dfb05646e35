"""Evaluate a descriptor on a VPR dataset split: Recall@N overall and per query condition."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..data.dataset import Subset, VPRDataset
from ..data.names import parse_name
from ..errors import ConfigError, DatasetError
from ..images import read_label, read_rgb
from ..metrics import RECALL_NS, per_group_recall, recall_at_n, retrieve
from ..runtime.preprocess import describe_files
from ..runtime.temporal import PlaceFilter, TemporalConfig


class Extractor(Protocol):
    """Anything that turns a batch of images (or label maps) into descriptors."""

    input_kind: str  # "rgb": (B,H,W,3) uint8 RGB; "labels": (B,H,W) uint8 class ids
    image_size: tuple[int, int] | None  # (W, H) to resize to; None keeps the dataset's size

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def extract(extractor: Extractor, paths: list[Path], batch_size: int = 32, desc: str = "describe") -> np.ndarray:
    """Descriptors of ``paths`` in order; images are read and resized on a thread pool."""
    read = read_label if extractor.input_kind == "labels" else read_rgb
    size = extractor.image_size
    if size is None:  # one size per run: take the first image's
        first = read(paths[0], None)
        size = (first.shape[1], first.shape[0])
    return describe_files(lambda images: extractor(np.stack(images)), paths, lambda p: read(p, size), batch_size, desc)


@dataclass
class EvalResult:
    """Recalls as fractions, plus the retrievals for plots."""

    recall: dict[str, float]
    per_condition: dict[str, dict[str, float]]
    num_queries: int
    num_database: int
    num_queries_without_positive: int
    predictions: np.ndarray  # (Q, max N) database indices, best first
    scores: np.ndarray

    def to_json(self) -> dict:
        """Every field but the retrievals."""
        return {k: v for k, v in vars(self).items() if k not in ("predictions", "scores")}


def _subset_inputs(extractor: Extractor, dataset: VPRDataset) -> tuple[list[Path], list[Path]]:
    if extractor.input_kind == "rgb":
        return dataset.database.paths, dataset.queries.paths
    if extractor.input_kind == "labels":
        if not dataset.has_labels:
            raise DatasetError(f"{dataset!r} has no label maps; this model needs labels/ (synthetic data only)")
        return dataset.database.label_paths, dataset.queries.label_paths
    raise ConfigError(f"unknown extractor input kind {extractor.input_kind!r}")


def evaluate(extractor: Extractor, dataset: VPRDataset, ns: tuple[int, ...] = RECALL_NS, batch_size: int = 32) -> EvalResult:
    """Describe database and queries, retrieve with exact inner product, and score."""
    db_paths, q_paths = _subset_inputs(extractor, dataset)
    db = extract(extractor, db_paths, batch_size, desc="database")
    q = extract(extractor, q_paths, batch_size, desc="queries")
    scores, predictions = retrieve(db, q, max(ns))
    positives = dataset.positives
    conditions = dataset.queries.column("condition")
    return EvalResult(
        recall=recall_at_n(predictions, positives, ns),
        per_condition=per_group_recall(predictions, positives, conditions, ns) if conditions else {},
        num_queries=len(q),
        num_database=len(db),
        num_queries_without_positive=sum(len(p) == 0 for p in positives),
        predictions=predictions,
        scores=scores,
    )


def traversal_order(queries: Subset) -> tuple[np.ndarray, str]:
    """The queries' indices in the order they were recorded, and the name field that gave it: the
    timestamp where every name has a numeric one, else the pano id where every name has its own."""
    names = [parse_name(p) for p in queries.paths]
    try:
        stamps = [float(n.timestamp) for n in names]
    except ValueError:
        stamps = []
    if stamps:
        return np.argsort(stamps, kind="stable"), "timestamp"
    panos = [n.pano_id for n in names]
    if all(panos) and len(set(panos)) == len(panos):
        return np.argsort(panos, kind="stable"), "pano_id"
    raise DatasetError(f"the queries of {queries.paths[0].parent} are not one traversal: a temporal reading needs a numeric "
                       "timestamp, or a pano id of its own, in every query's name")


def temporal_recall(result: EvalResult, dataset: VPRDataset, config: TemporalConfig | None = None, top_k: int = 5) -> dict:
    """Recall@1 of the place the runtime's temporal filter chooses, the queries fed in traversal order,
    each with its first ``top_k`` retrievals (EdgeVPR's default; all of them in a smaller map): what a
    vehicle driving the query route would be told, beside the single-frame Recall@N."""
    top_k = min(top_k, result.predictions.shape[1])
    order, field = traversal_order(dataset.queries)
    place_filter = PlaceFilter(config)
    chosen = np.zeros((len(order), 1), np.int64)  # per query, in the dataset's order
    for q in order:
        place_filter.update(result.predictions[q, :top_k], result.scores[q, :top_k], dataset.database.utm)
        chosen[q] = place_filter.choice
    return {"recall@1": recall_at_n(chosen, dataset.positives, (1,))["1"], "order": field, "top_k": top_k}
