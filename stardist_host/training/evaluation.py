"""Accuracy of a model on annotated data, with stardist's matching functions."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["IOU_THRESHOLDS", "COLUMNS", "score", "predict_all", "evaluate", "write_scores", "format_table"]

log = logging.getLogger(__name__)

IOU_THRESHOLDS = (0.3, 0.5, 0.7, 0.9)
COLUMNS = ("iou", "precision", "recall", "f1", "accuracy", "panoptic_quality", "tp", "fp", "fn", "n_true", "n_pred",
           "mean_true_score", "mean_matched_score")


def score(
    truth: Sequence[NDArray], predicted: Sequence[NDArray], thresholds: Sequence[float] = IOU_THRESHOLDS
) -> list[dict]:
    """Match predicted to true objects over all samples, at each IoU threshold.

    Returns one dict per threshold with :data:`COLUMNS` (counts summed over the
    data set, as stardist's ``matching_dataset`` does).
    """
    from stardist.matching import matching_dataset

    rows = []
    for t in thresholds:
        m = matching_dataset(list(truth), list(predicted), thresh=t, show_progress=False, by_image=False)
        row = {"iou": float(t)}
        for key in COLUMNS[1:]:
            value = getattr(m, key)
            row[key] = int(value) if key in ("tp", "fp", "fn", "n_true", "n_pred") else float(value)
        rows.append(row)
    return rows


def predict_all(model, images: Sequence[NDArray], *, percentiles=(1.0, 99.8), prob_thresh=None, nms_thresh=None) -> list[NDArray]:
    """Normalise and segment each sample as :mod:`stardist_host.segmentation.segment` does."""
    from csbdeep.utils import normalize

    from ..segmentation.pipeline import auto_n_tiles

    out = []
    for x in images:
        xn = normalize(x, *percentiles, axis=None)
        labels, _ = model.predict_instances(
            xn, prob_thresh=prob_thresh, nms_thresh=nms_thresh, n_tiles=auto_n_tiles(xn.shape), show_tile_progress=False
        )
        out.append(labels)
    return out


def evaluate(model, pairs, *, region: str | None = None, prob_thresh=None, nms_thresh=None) -> tuple[list[dict], int]:
    """Segment each sample whole, as in use, and score only ``region`` of it; return (rows, true objects).

    Cropping before predicting would turn nuclei cut by the region's edge into
    slivers that no model finds, so the model always sees the whole image.
    """
    from .pairs import count_objects, crop

    predicted = predict_all(model, pairs.images, prob_thresh=prob_thresh, nms_thresh=nms_thresh)
    masks = [crop(m, region) for m in pairs.masks]
    return score(masks, [crop(p, region) for p in predicted]), count_objects(masks)


def format_table(rows: list[dict]) -> str:
    """The scores as an aligned text table."""
    head = ("IoU", "precision", "recall", "F1", "accuracy", "PQ", "TP", "FP", "FN")
    keys = ("iou", "precision", "recall", "f1", "accuracy", "panoptic_quality", "tp", "fp", "fn")
    lines = ["  ".join(f"{h:>9}" for h in head)]
    for r in rows:
        lines.append("  ".join(f"{r[k]:>9.3f}" if isinstance(r[k], float) else f"{r[k]:>9d}" for k in keys))
    return "\n".join(lines)


def write_scores(rows: list[dict], path: str | os.PathLike, **extra) -> Path:
    """Write scores as CSV (``.csv``) or JSON (anything else, with ``extra`` fields)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text(json.dumps({**extra, "scores": rows}, indent=2) + "\n")
    return path


def f1_at(rows: list[dict], iou: float) -> float:
    """F1 at the given IoU threshold from :func:`score`'s rows."""
    return next(r["f1"] for r in rows if np.isclose(r["iou"], iou))
