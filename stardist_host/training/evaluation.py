"""Accuracy of a model on annotated data, with stardist's matching functions."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..io.files import atomic_write

__all__ = ["COLUMNS", "IOU_THRESHOLDS", "evaluate", "format_table", "predict_all", "score", "write_scores"]

IOU_THRESHOLDS = (0.3, 0.5, 0.7, 0.9)
COLUMNS = ("iou", "precision", "recall", "f1", "accuracy", "panoptic_quality", "tp", "fp", "fn", "n_true", "n_pred",
           "mean_true_score", "mean_matched_score")
_COUNTS = ("tp", "fp", "fn", "n_true", "n_pred")


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
        rows.append({"iou": float(t), **{k: (int if k in _COUNTS else float)(getattr(m, k)) for k in COLUMNS[1:]}})
    return rows


def predict_all(
    model,
    images: Sequence[NDArray],
    *,
    percentiles: tuple[float, float] = (1.0, 99.8),
    prob_thresh: float | None = None,
    nms_thresh: float | None = None,
    voxel_size: tuple[float | None, float, float] | None = None,
    scale: Any = "auto",
    model_pixel_size_um: Any = None,
    object_diameter_um: float | None = None,
    normalize_channels_jointly: bool = False,
) -> list[NDArray]:
    """Segment each sample whole with the production path, :func:`stardist_host.segmentation.segment.segment`.

    Samples of one shape go into one in-memory image set (2D: as its planes,
    3D: as its time points), so that scores are measured with the batched
    pipeline, normalisation and 3D anisotropy rescaling a user's run gets.
    Samples with a trailing channel axis, (Y, X, C) or (Z, Y, X, C), become an
    image set of C channels, run as the tuple of all of them (a model with C
    input channels).

    Parameters
    ----------
    model
        A StarDist2D or StarDist3D model.
    images
        2D planes or 3D stacks, each with or without a trailing channel axis.
    percentiles
        Normalisation percentiles, as ``PERCENTILE_LOW/HIGH``.
    prob_thresh, nms_thresh
        None: the model's own thresholds.
    voxel_size
        (z, y, x) µm of the samples (z None in 2D), for SCALE="auto"; None: unknown.
    scale, model_pixel_size_um, object_diameter_um
        SCALE, MODEL_PIXEL_SIZE_UM, OBJECT_DIAMETER_UM, as a run takes them
        (:func:`~stardist_host.segmentation.engine.run_scale`).
    normalize_channels_jointly
        Samples with several channels: normalise them together, not each on its own.

    Returns
    -------
    list of ndarray
        One label image per sample, in the order given.
    """
    from ..io.imagesets import MemoryImageSet
    from ..segmentation.plan import Plan
    from ..segmentation.normalisation import Normalisation
    from ..segmentation.segment import segment

    ndim = int(model.config.n_dim)
    out: list[NDArray | None] = [None] * len(images)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(images):
        groups.setdefault(tuple(x.shape), []).append(i)
    for shape, members in groups.items():
        stack = np.stack([np.asarray(images[i]) for i in members])
        if len(shape) > ndim:  # a trailing channel axis: the image set's channels, run together
            stack = np.moveaxis(stack, -1, 1)
            channel: int | tuple[int, ...] = tuple(range(shape[-1]))
        else:
            stack, channel = stack[:, None], 0
        # 2D: samples are planes of one time point; 3D: stacks are time points
        data = np.swapaxes(stack, 0, 1)[None] if ndim == 2 else stack
        imageset = MemoryImageSet(data, voxel_size=voxel_size)
        n = len(members)
        plan = (Plan(ndim, channel, (0,), 0, n - 1) if ndim == 2
                else Plan(ndim, channel, tuple(range(n)), 0, shape[0] - 1))
        how = Normalisation(percentiles=tuple(percentiles),
                            jointly=isinstance(channel, tuple) and normalize_channels_jointly)
        result = segment(imageset, model, plan, output_name="labels", prob_thresh=prob_thresh, nms_thresh=nms_thresh,
                         normalisation=how, scale=scale, model_pixel_size_um=model_pixel_size_um,
                         object_diameter_um=object_diameter_um)
        labels = imageset.channel(result.channel)  # (T, Z, Y, X)
        for k, i in enumerate(members):
            out[i] = np.asarray(labels[0, k] if ndim == 2 else labels[k], dtype=np.int32)
    return out


def evaluate(model, pairs, *, region: str | None = None, **options) -> tuple[list[dict], int]:
    """Segment each sample whole, as in use, and score only ``region`` of it; return (rows, true objects).

    ``options``: those of :func:`predict_all` but the voxel size, which the pairs give (pass
    ``normalize_channels_jointly`` as the model was trained: its card's ``normalize_channels_jointly``).

    Cropping before predicting would turn nuclei cut by the region's edge into
    slivers that no model finds, so the model always sees the whole image.

    Raises
    ------
    PairError
        The samples have another number of channels than the model takes.
    """
    from ..errors import PairError
    from .pairs import count_objects, crop

    expected, given = int(getattr(model.config, "n_channel_in", 1)), pairs.n_channels or 1
    if expected != given:
        example = ",".join(map(str, range(expected)))
        give = "one" if expected == 1 else f"{expected} in the model's order, e.g. {example}"
        raise PairError(f"the model takes {expected} input channel(s) but --channel gives {given}: give {give}")
    predicted = predict_all(model, pairs.images, voxel_size=pairs.voxel_size, **options)
    masks = [crop(m, region) for m in pairs.masks]
    return score(masks, [crop(p, region) for p in predicted]), count_objects(masks)


def format_table(rows: list[dict]) -> str:
    """The scores as an aligned text table."""
    head = ("IoU", "precision", "recall", "F1", "accuracy", "PQ", "TP", "FP", "FN")
    lines = ["  ".join(f"{h:>9}" for h in head)]
    for r in rows:
        lines.append("  ".join(f"{r[k]:>9.3f}" if isinstance(r[k], float) else f"{r[k]:>9d}" for k in COLUMNS[:9]))
    return "\n".join(lines)


def write_scores(rows: list[dict], path: str | os.PathLike, **extra) -> Path:
    """Write scores as CSV (``.csv``) or JSON (anything else, with ``extra`` fields), atomically in UTF-8."""
    path = Path(path)
    with atomic_write(path) as tmp:
        if path.suffix.lower() == ".csv":
            with tmp.open("w", encoding="utf-8", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
        else:
            tmp.write_text(json.dumps({**extra, "scores": rows}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def f1_at(rows: list[dict], iou: float) -> float:
    """F1 at the given IoU threshold from :func:`score`'s rows."""
    return next(r["f1"] for r in rows if np.isclose(r["iou"], iou))
