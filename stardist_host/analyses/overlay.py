"""QC overlays: a plane of the input with label outlines (and ids) drawn over it, as a PNG."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import check_index
from ..host import ImageSet
from ..io.files import atomic_write
from .common import AnalysisError, check_channel, read_labels, read_stack

__all__ = ["overlay"]

log = logging.getLogger(__name__)


def overlay(
    imageset: ImageSet,
    path: str | os.PathLike,
    *,
    image_channel: int,
    label_channel: int,
    time_point: int = 0,
    plane: int = 0,
    cell_channel: int | None = None,
    track_channel: int | None = None,
    percentiles: tuple[float, float] = (1.0, 99.8),
) -> Path:
    """Write a PNG of one plane with nucleus outlines (yellow), cell outlines (cyan) and track ids.

    Parameters
    ----------
    imageset
        The image set (host contract).
    path
        The PNG to write.
    image_channel
        IMAGE_CHANNEL shown in grey, contrast-stretched to ``percentiles``.
    label_channel
        LABEL_CHANNEL whose outlines are drawn.
    time_point, plane
        TIME_POINT and PLANE to show.
    cell_channel
        CELL_CHANNEL whose outlines are drawn too.
    track_channel
        TRACK_CHANNEL: a track-id channel; each nucleus is annotated with its id.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from skimage.measure import regionprops
    from skimage.segmentation import find_boundaries

    image_channel = check_channel(imageset, image_channel, "IMAGE_CHANNEL")
    label_channel = check_channel(imageset, label_channel, "LABEL_CHANNEL")
    layers = [(label_channel, "LABEL_CHANNEL", (1.0, 0.9, 0.0))]
    if cell_channel is not None:
        layers.append((check_channel(imageset, cell_channel, "CELL_CHANNEL"), "CELL_CHANNEL", (0.0, 0.9, 1.0)))
    if track_channel is not None:
        track_channel = check_channel(imageset, track_channel, "TRACK_CHANNEL")
    check_index("TIME_POINT", time_point, imageset.time_point_count, noun="time points")
    check_index("PLANE", plane, imageset.plane_count)
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise AnalysisError(f"output {str(path)!r} must end in .png")

    image = read_stack(imageset, image_channel, time_point, plane)[0].astype(np.float32)
    lo, hi = np.percentile(image, percentiles)
    grey = np.clip((image - lo) / (hi - lo if hi > lo else 1), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for channel, setting, colour in layers:
        rgb[find_boundaries(read_labels(imageset, channel, time_point, setting, plane)[0], mode="inner")] = colour
    height, width = rgb.shape[:2]
    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    FigureCanvasAgg(fig)  # a canvas of this figure only: the host's pyplot backend stays as it is
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    if track_channel is not None:
        for r in regionprops(read_labels(imageset, track_channel, time_point, "TRACK_CHANNEL", plane)[0]):
            ax.text(r.centroid[1], r.centroid[0], str(r.label), color="magenta", fontsize=7, ha="center", va="center")
    with atomic_write(path) as tmp, tmp.open("wb") as f:
        fig.savefig(f, format="png", dpi=100)
    log.info("wrote %s", path)
    return path
