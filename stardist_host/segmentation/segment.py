"""Segmenting nuclei over the planes (2D) or volumes (3D) of an image set.

Data flow: settings -> plan (which planes/volumes) -> read through the host
contract -> normalise -> predict -> write a new label channel.  This module
knows the image set only through the host contract.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from numpy.typing import NDArray

from ..errors import LabelOverflowError
from ..host import ImageSet, active_imageset, check_imageset
from .pipeline import auto_n_tiles, predict_units
from .plan import Plan, Unit, make_plan
from .settings import Settings

__all__ = ["run", "segment", "SegmentResult", "LabelOverflowError", "label_dtype_for"]

log = logging.getLogger(__name__)

#: progress(done, total) is called after each plane (2D) or volume (3D).
Progress = Callable[[int, int], None]

# Smallest nucleus (pixels in 2D, voxels in 3D) assumed when LABEL_DTYPE="auto"
# bounds the number of labels a plane or volume can hold.
_MIN_NUCLEUS = {2: 16, 3: 64}


@dataclass
class UnitResult:
    """What one plane or volume gave."""

    unit: Unit
    count: int
    seconds: float


@dataclass
class SegmentResult:
    """The outcome of a run: where the labels went and how many were found."""

    channel: int
    channel_name: str
    model: str
    device: str
    units: list[UnitResult] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Objects found over all planes or volumes."""
        return sum(u.count for u in self.units)

    def summary(self) -> str:
        """A few lines for the log or the console."""
        if not self.units:
            return f"nothing segmented; channel {self.channel} {self.channel_name!r} is empty"
        counts = [u.count for u in self.units]
        what = "plane" if self.units[0].unit.first == self.units[0].unit.last else "volume"
        secs = sum(u.seconds for u in self.units)
        return (
            f"{self.total} nuclei in {len(self.units)} {what}(s) "
            f"(per {what}: min {min(counts)}, mean {np.mean(counts):.1f}, max {max(counts)}); "
            f"labels in channel {self.channel} {self.channel_name!r}; model {self.model} on {self.device}, "
            f"{secs / len(self.units):.3f} s per {what}"
        )


def label_dtype_for(choice: str, plan: Plan, plane_shape: tuple[int, int], unique: bool) -> np.dtype:
    """The label channel's type: ``choice``, or for "auto" the smallest that cannot overflow.

    "auto" bounds the number of labels by the pixels (voxels) of a plane
    (volume) over the smallest plausible nucleus, times the number of planes
    (volumes) when labels are unique across the whole output.
    """
    if choice != "auto":
        return np.dtype(choice)
    units = plan.units
    pixels = math.prod(plane_shape) * (units[0].last - units[0].first + 1 if units else 1)
    bound = pixels // _MIN_NUCLEUS[plan.ndim] * (len(units) if unique else 1)
    return np.dtype(np.uint16 if bound <= np.iinfo(np.uint16).max else np.uint32)


def _anisotropy_scale(model, voxel_size: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
    """Z scale that brings the image's anisotropy to the one the 3D model was trained on."""
    trained = getattr(model.config, "anisotropy", None)
    if voxel_size is None or trained is None:
        log.info("voxel size unknown: the stack is segmented as it is, assuming the model's anisotropy")
        return None
    z, y, x = voxel_size
    image_aniso = z / ((y + x) / 2)
    model_aniso = trained[0] / ((trained[1] + trained[2]) / 2)
    factor = image_aniso / model_aniso
    if abs(math.log(factor)) < math.log(1.2):  # within 20%: not worth resampling
        return None
    log.info(
        "image anisotropy %.2f (voxel size %s) differs from the model's %.2f: Z is rescaled by %.2f",
        image_aniso, voxel_size, model_aniso, factor,
    )
    return (factor, 1.0, 1.0)


def _read(imageset: ImageSet, channel: int, unit: Unit, ndim: int) -> NDArray:
    if ndim == 2:
        return np.asarray(imageset.get_channeldata(channel, unit.first, unit.time_point))
    return np.stack([np.asarray(imageset.get_channeldata(channel, z, unit.time_point)) for z in unit.planes])


def segment(
    imageset: ImageSet,
    model,
    plan: Plan,
    *,
    output_name: str,
    prob_thresh: float | None = None,
    nms_thresh: float | None = None,
    percentiles: tuple[float, float] = (1.0, 99.8),
    n_tiles: tuple[int, ...] | None = None,
    unique_labels: bool = False,
    label_dtype: str = "auto",
    device: str = "",
    progress: Progress | None = None,
    pipeline: bool = True,
) -> SegmentResult:
    """Segment every plane (2D) or volume (3D) of ``plan`` into a new label channel.

    Parameters
    ----------
    imageset
        Any object that fulfils the host contract.
    model
        A loaded StarDist2D (per plane) or StarDist3D (per volume) model.
    plan
        What to segment, from :func:`stardist_host.segmentation.plan.make_plan`.
    output_name
        Name of the new channel.
    prob_thresh, nms_thresh
        Thresholds; None uses the model's own (thresholds.json).
    percentiles
        Low and high percentile of each plane's (volume's) intensities that
        normalisation maps to 0 and 1.
    n_tiles
        Tiles per axis; None chooses them from the size.
    unique_labels
        Number labels consecutively across the whole output instead of
        restarting at 1 in each plane (volume).
    label_dtype
        "auto", "uint16" or "uint32".
    device
        Where TensorFlow runs, for the summary.
    progress
        Called as ``progress(done, total)`` after each plane or volume.
    pipeline
        True: batched network calls overlapped with reading and NMS
        (:mod:`stardist_host.segmentation.pipeline`); False: stardist's ``predict_instances``
        plane by plane (the reference the pipeline is tested against).

    Returns
    -------
    SegmentResult

    Raises
    ------
    LabelOverflowError
        A plane or volume holds more labels than ``label_dtype`` can.
    """
    from csbdeep.utils import normalize

    units = plan.units
    dtype = label_dtype_for(label_dtype, plan, tuple(imageset.plane_shape), unique_labels)
    scale = _anisotropy_scale(model, imageset.voxel_size) if plan.ndim == 3 else None
    out = imageset.add_channel(output_name, dtype)
    result = SegmentResult(out, output_name, model.name, device)
    log.info(
        "segmenting channel %d, %d %s(s), time points %s, planes %d..%d -> channel %d %r (%s)",
        plan.channel, len(units), "plane" if plan.ndim == 2 else "volume",
        _ranges(plan.time_points), plan.first_plane, plan.last_plane, out, output_name, dtype,
    )
    lock = threading.Lock()  # a host's image set need not be thread-safe: one call at a time

    def read(unit: Unit) -> NDArray:
        with lock:
            image = _read(imageset, plan.channel, unit, plan.ndim)
        return normalize(image, *percentiles, axis=None)

    if pipeline:
        labelled = predict_units(model, units, read, prob_thresh=prob_thresh, nms_thresh=nms_thresh,
                                 n_tiles=n_tiles, scale=scale)
    else:
        labelled = (
            (unit, model.predict_instances(x, prob_thresh=prob_thresh, nms_thresh=nms_thresh, scale=scale,
                                           n_tiles=n_tiles or auto_n_tiles(x.shape), show_tile_progress=False)[0])
            for unit in units for x in (read(unit),)
        )
    offset = 0
    start = time.perf_counter()
    for done, (unit, labels) in enumerate(labelled, start=1):
        # a polygon drawn over entirely by its neighbours leaves a gap in the numbering
        highest = int(labels.max())
        count = int(np.count_nonzero(np.bincount(labels.ravel())[1:])) if highest else 0
        if unique_labels and highest:
            labels = np.where(labels > 0, labels + offset, 0)
        top = offset + highest if unique_labels else highest
        if top > np.iinfo(dtype).max:
            raise LabelOverflowError(
                f"time point {unit.time_point}, planes {unit.first}..{unit.last}: label {top} does not fit the "
                f"label channel's type {dtype} (up to {np.iinfo(dtype).max}); set LABEL_DTYPE='uint32'"
            )
        labels = labels.astype(dtype)
        with lock:
            for i, z in enumerate(unit.planes):
                imageset.set_channeldata(out, z, unit.time_point, labels if plan.ndim == 2 else labels[i])
        offset = top
        now = time.perf_counter()
        result.units.append(UnitResult(unit, count, now - start))
        start = now
        log.debug("time point %d, planes %d..%d: %d nuclei", unit.time_point, unit.first, unit.last, count)
        if progress is not None:
            progress(done, len(units))
    log.info(result.summary())
    return result


def _ranges(values: tuple[int, ...]) -> str:
    return f"{values[0]}..{values[-1]}" if len(values) > 1 else str(values[0])


def run(settings: Settings, imageset: ImageSet | None = None, *, progress: Progress | None = None) -> SegmentResult:
    """Validate everything, load the model once, then segment: the whole job of a script.

    Nothing is written to the image set until the settings, the plan and the
    model have all been checked.

    Parameters
    ----------
    settings
        Validated settings (``Settings(...)`` or ``Settings.from_script(globals(), ndim=2)``).
    imageset
        The image set; None uses the one a host registered as active.
    progress
        Called as ``progress(done, total)`` after each plane or volume.
    """
    from .device import configure_device
    from .models import load_model

    imageset = check_imageset(imageset) if imageset is not None else active_imageset()
    plan = make_plan(settings, imageset)
    device = configure_device(settings.use_gpu)
    model = load_model(settings.model_name, ndim=settings.ndim, path=settings.model_path)
    name = f"{settings.output_ch_name}{imageset.channel_names[plan.channel]}"
    return segment(
        imageset,
        model,
        plan,
        output_name=name,
        prob_thresh=settings.prob_thresh,
        nms_thresh=settings.nms_thresh,
        percentiles=(settings.percentile_low, settings.percentile_high),
        n_tiles=settings.n_tiles,
        unique_labels=settings.unique_labels,
        label_dtype=settings.label_dtype,
        device=device,
        progress=progress,
    )
