"""Segmenting nuclei over the planes (2D) or volumes (3D) of an image set.

Data flow: settings -> plan (which planes/volumes) -> read through the host
contract -> normalise -> predict -> write a new label channel.  This module
knows the image set only through the host contract, and calls it only from
the thread that called :func:`run` or :func:`segment` (the network and NMS
run on other threads, see :mod:`stardist_host.segmentation.pipeline`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from numpy.typing import NDArray

from ..errors import Cancelled, LabelOverflowError, NoImageSetError
from ..host import ImageSet, active_imageset, check_imageset
from .pipeline import auto_n_tiles, predict_units
from .plan import Plan, Unit, make_plan
from .settings import Settings, schema

__all__ = ["run", "segment", "segment_with_settings", "separate_process", "SegmentResult", "LabelOverflowError", "Cancelled", "label_dtype_for", "percent_progress",
           "normalise", "MIN_NUCLEUS", "NO_SIGNAL_FRACTION"]

log = logging.getLogger(__name__)

#: progress(done, total) is called after each plane (2D) or volume (3D).
Progress = Callable[[int, int], None]
#: cancel() is asked between planes (volumes) and batches; True stops the run.
Cancel = Callable[[], bool]

#: Smallest plausible nucleus, in pixels (2D: 5 x 5) or voxels (3D: 5 x 5 x 5); with
#: LABEL_DTYPE="auto" a plane (volume) is assumed to hold at most its size over this.
MIN_NUCLEUS = {2: 25, 3: 125}
#: Integer data whose max - min is below this fraction of its type's range (at most the
#: uint16 range: uint8 constant only, uint16 and wider a spread of 6 or less) has no signal.
NO_SIGNAL_FRACTION = 1e-4


@dataclass
class UnitResult:
    """What one plane or volume gave."""

    unit: Unit
    count: int
    seconds: float


@dataclass
class SegmentResult:
    """The outcome of a run: where the labels went and how many were found.

    ``channel`` is the label channel's index in the image set, or in the
    written file for a headless run (:func:`stardist_host.headless.segment_file`).
    """

    channel: int
    channel_name: str
    model: str
    device: str
    units: list[UnitResult] = field(default_factory=list)
    ndim: int = 2
    precision: str = ""  # the network's: "float32", "bfloat16" or "float16"; empty where not known
    time_point_count: int = 1  # of the image set, segmented or not

    @property
    def total(self) -> int:
        """Objects found over all planes or volumes."""
        return sum(u.count for u in self.units)

    def summary(self, *, cli: bool | None = None) -> str:
        """One line for the log or the console.

        Parameters
        ----------
        cli
            Where only some of several time points were segmented, end with a
            note that names how to segment all: True the command-line option
            (``--all-time-points``), False the script setting; None: no note.
        """
        if not self.units:
            return f"nothing segmented; channel {self.channel} {self.channel_name!r} is empty"
        counts = [u.count for u in self.units]
        what = "plane" if self.ndim == 2 else "volume"
        secs = sum(u.seconds for u in self.units)
        text = (
            f"{self.total} nuclei in {len(self.units)} {what}(s) "
            f"(per {what}: min {min(counts)}, mean {np.mean(counts):.1f}, max {max(counts)}); "
            f"labels in channel {self.channel} {self.channel_name!r}; model {self.model}"
            f"{f' on {self.device}' if self.device else ''}{f' in {self.precision}' if self.precision else ''}, "
            f"{secs / len(self.units):.3f} s per {what}"
        )
        done = sorted({u.unit.time_point for u in self.units})
        if cli is None or len(done) == self.time_point_count:
            return text
        setting = schema(self.ndim).by_name["CURRENT_TIME_POINT"]
        how = setting.flag if cli else f"{setting.name} = False"
        points = f"time point{'s' if len(done) > 1 else ''} {', '.join(map(str, done))}"
        return f"{text}; {points} of {self.time_point_count}; {how} for all"


def percent_progress(callback: Callable[[int], None]) -> Progress:
    """Turn a host's percent callback (an int 0..100) into a ``progress(done, total)`` callback.

    The host's callback is called only when the percentage changes.
    """
    last = [-1]

    def progress(done: int, total: int) -> None:
        percent = 100 if total <= 0 else min(100, max(0, done * 100 // total))
        if percent != last[0]:
            last[0] = percent
            callback(percent)

    return progress


def label_dtype_for(choice: str, plan: Plan, plane_shape: tuple[int, int], unique: bool) -> np.dtype:
    """The label channel's type: ``choice``, or for "auto" uint16 unless more labels could occur.

    "auto" bounds the number of labels by the pixels (voxels) of a plane
    (volume) over :data:`MIN_NUCLEUS`, times the number of planes (volumes)
    when labels are unique across the whole output; uint32 only where that
    bound exceeds 65535.  A 1024 x 1024 plane gives uint16.
    """
    if choice != "auto":
        return np.dtype(choice)
    units = plan.units
    pixels = math.prod(plane_shape) * (units[0].last - units[0].first + 1 if units else 1)
    bound = pixels // MIN_NUCLEUS[plan.ndim] * (len(units) if unique else 1)
    return np.dtype(np.uint16 if bound <= np.iinfo(np.uint16).max else np.uint32)


def anisotropy_scale(model, voxel_size) -> tuple[float, float, float] | None:
    """Z scale that brings the image's anisotropy to the one the 3D model was trained on."""
    trained = getattr(model.config, "anisotropy", None)
    if voxel_size is None or voxel_size[0] is None or trained is None:
        log.info("voxel size %s: the stack is segmented as it is, assuming the model's anisotropy",
                 "unknown" if voxel_size is None else f"{voxel_size} without Z spacing")
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


def _where(unit: Unit) -> str:
    planes = f"plane {unit.first}" if unit.first == unit.last else f"planes {unit.first}..{unit.last}"
    return f"time point {unit.time_point}, {planes}"


def _has_signal(image: NDArray) -> bool:
    """False for a constant image, or integer data spread less than NO_SIGNAL_FRACTION of its range."""
    low, high = image.min(), image.max()
    if image.dtype.kind in "iu":
        info = np.iinfo(image.dtype)
        span = min(int(info.max) - int(info.min), np.iinfo(np.uint16).max)
        return int(high) - int(low) >= NO_SIGNAL_FRACTION * span
    return bool(high > low)


def normalise(image: NDArray, percentiles: tuple[float, float], *, unit: Unit | None = None) -> NDArray | None:
    """Percentile-normalise a plane (volume) as stardist expects, or None where it has no signal.

    NaN and Inf pixels do not take part: the percentiles are those of the
    finite pixels, the non-finite pixels are set to 0 after normalisation, and
    a warning gives their count and the first one's position.  An image with
    no signal (constant, every pixel non-finite, or integer data whose spread
    is below :data:`NO_SIGNAL_FRACTION` of its type's range) gives None: it
    holds no nuclei and is not shown to the model.

    Parameters
    ----------
    image
        The plane (Y, X) or volume (Z, Y, X) as read.
    percentiles
        Low and high percentile mapped to 0 and 1.
    unit
        Where the image comes from, for the log.
    """
    from csbdeep.utils import normalize_mi_ma

    where = _where(unit) if unit is not None else "image"
    bad = None
    if image.dtype.kind in "fc":
        finite = np.isfinite(image)
        if not finite.all():
            bad = ~finite
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            if unit is not None and image.ndim == 3:
                first = (unit.first + first[0], *first[1:])
            log.warning("%s: %d NaN or Inf pixel(s), the first at %s (%s); normalised over the finite pixels "
                        "and set to 0", where, int(bad.sum()), first, "z, y, x" if image.ndim == 3 else "y, x")
            if not finite.any():
                log.info("%s: no finite pixel, no nuclei", where)
                return None
    values = image if bad is None else image[~bad]
    if not _has_signal(values):
        log.info("%s: no signal (min %s, max %s), no nuclei", where, values.min(), values.max())
        return None
    # csbdeep's normalize(image, low, high, axis=None), whose two np.percentile calls each copy the image:
    # here the same two calls share one copy, which they partition in place.  The same calls on the same
    # values give the same bytes (a test compares them), in 0.7x the time for a 1024² plane.
    scratch = values if bad is not None else np.array(values).reshape(-1)  # image[~bad] is a copy already
    low = np.percentile(scratch, percentiles[0], overwrite_input=True)
    high = np.percentile(scratch, percentiles[1], overwrite_input=True)
    out = normalize_mi_ma(image, low, high)
    if bad is not None:
        out[bad] = 0
    return out


def _read(imageset: ImageSet, channel: int, unit: Unit, ndim: int) -> NDArray:
    if ndim == 2:
        return np.asarray(imageset.get_channeldata(channel, unit.first, unit.time_point))
    return np.stack([np.asarray(imageset.get_channeldata(channel, z, unit.time_point)) for z in unit.planes])


def _number(labels: NDArray, unit: Unit, *, offset: int, unique: bool, dtype: np.dtype) -> tuple[NDArray, int, int]:
    """Labels in the channel's type, their count and the highest label; raises before anything is written.

    With ``unique``, labels are shifted by ``offset`` (in int64, so that the
    sum cannot wrap before the check).
    """
    highest = int(labels.max()) if labels.size else 0
    # a polygon drawn over entirely by its neighbours leaves a gap in the numbering
    count = int(np.count_nonzero(np.bincount(labels.ravel())[1:])) if highest else 0
    top = offset + highest if unique else highest
    if top > np.iinfo(dtype).max:
        raise LabelOverflowError(
            f"{_where(unit)}: label {top} does not fit the label channel's type {dtype} "
            f"(up to {np.iinfo(dtype).max}); set LABEL_DTYPE='uint32'"
        )
    if unique and highest and offset:
        labels = np.where(labels > 0, labels.astype(np.int64) + offset, 0)
    return labels.astype(dtype), count, top


def _reference(model, units, read, *, cancel: Cancel | None, **options):
    """stardist's ``predict_instances`` unit by unit on the calling thread (``pipeline=False``)."""
    for unit in units:
        if cancel is not None and cancel():
            raise Cancelled("cancelled: segmentation stopped on request")
        x = read(unit)
        if x is None:
            yield unit, None
            continue
        tiles = options["n_tiles"] or auto_n_tiles(x.shape)
        yield unit, model.predict_instances(x, prob_thresh=options["prob_thresh"], nms_thresh=options["nms_thresh"],
                                            scale=options["scale"], n_tiles=tiles, show_tile_progress=False)[0]


def _abandon(imageset: ImageSet, out: int, name: str, written: list[tuple[int, int]], err: BaseException) -> None:
    """Undo a failed or cancelled run's channel: remove it, else zero what was written and say so in ``err``."""
    remove = getattr(imageset, "remove_channel", None)
    try:
        if remove is not None:
            remove(out)
            log.info("channel %d %r removed: the run did not finish", out, name)
            return
        if written:
            zeros = np.zeros(tuple(imageset.plane_shape), np.uint8)
            for z, t in written:
                imageset.set_channeldata(out, z, t, zeros)
        note = (f"channel {out} {name!r} is incomplete and was left empty "
                "(this image set cannot remove a channel): delete it")
    except Exception as cleanup:  # the original error matters more; say both
        note = f"channel {out} {name!r} is incomplete, and clearing it failed ({cleanup}): delete it"
    log.error(note)
    if err.args and isinstance(err.args[0], str):
        err.args = (f"{err.args[0]}; {note}", *err.args[1:])
    else:
        err.args = (*err.args, note)


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
    precision: str = "",
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    pipeline: bool = True,
) -> SegmentResult:
    """Segment every plane (2D) or volume (3D) of ``plan`` into a new label channel.

    The image set is called only from the calling thread.  If the run fails or
    is cancelled after the label channel was added, the channel is removed
    (image sets with ``remove_channel``) or its written planes are set to 0
    and the error says that the channel is incomplete.

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
        Low and high percentile of each plane's (volume's) finite intensities
        that normalisation maps to 0 and 1 (see :func:`normalise`: NaN and Inf
        pixels become 0; planes without signal give no nuclei and skip the model).
    n_tiles
        Tiles per axis; None chooses them from the size.
    unique_labels
        Number labels consecutively across the whole output instead of
        restarting at 1 in each plane (volume).
    label_dtype
        "auto", "uint16" or "uint32" (see :func:`label_dtype_for`).
    device, precision
        Where TensorFlow runs and the network's precision
        (:func:`~stardist_host.segmentation.models.load_for_run`), for the summary.
    progress
        Called as ``progress(done, total)`` after each plane or volume is written.
    cancel
        Called between planes (volumes) and between network batches; True
        stops the run with :class:`~stardist_host.errors.Cancelled`.
    pipeline
        True: batched network calls overlapped with reading and NMS
        (:mod:`stardist_host.segmentation.pipeline`); False: stardist's ``predict_instances``
        unit by unit (the reference the pipeline is tested against).

    Returns
    -------
    SegmentResult

    Raises
    ------
    LabelOverflowError
        A plane or volume holds more labels than ``label_dtype`` can (raised before it is written).
    Cancelled
        ``cancel()`` returned True.
    """
    units = plan.units
    dtype = label_dtype_for(label_dtype, plan, tuple(imageset.plane_shape), unique_labels)
    scale = anisotropy_scale(model, imageset.voxel_size) if plan.ndim == 3 else None
    if cancel is not None and cancel():
        raise Cancelled("cancelled: segmentation stopped on request before it began")
    out = imageset.add_channel(output_name, dtype)
    result = SegmentResult(out, output_name, model.name, device, ndim=plan.ndim, precision=precision,
                           time_point_count=imageset.time_point_count)
    log.info(
        "segmenting channel %d, %d %s(s), time points %s, planes %d..%d -> channel %d %r (%s)",
        plan.channel, len(units), "plane" if plan.ndim == 2 else "volume",
        _ranges(plan.time_points), plan.first_plane, plan.last_plane, out, output_name, dtype,
    )
    written: list[tuple[int, int]] = []
    try:
        labelled = _labelled(imageset, model, plan, pipeline=pipeline, percentiles=percentiles, cancel=cancel,
                             prob_thresh=prob_thresh, nms_thresh=nms_thresh, n_tiles=n_tiles, scale=scale)
        with contextlib.closing(labelled):  # its threads stop at once if anything below raises
            _write_all(imageset, labelled, plan, out, result, dtype=dtype, unique=unique_labels,
                       written=written, progress=progress, cancel=cancel)
    except BaseException as err:
        _abandon(imageset, out, output_name, written, err)
        raise
    log.info(result.summary())
    return result


def _labelled(imageset: ImageSet, model, plan: Plan, *, pipeline: bool, percentiles, cancel, **options):
    """(unit, labels or None) for each unit: the batched pipeline or stardist unit by unit."""

    def read(unit: Unit) -> NDArray | None:
        return normalise(_read(imageset, plan.channel, unit, plan.ndim), percentiles, unit=unit)

    if pipeline:
        return predict_units(model, plan.units, read, cancel=cancel, **options)
    return _reference(model, plan.units, read, cancel=cancel, **options)


def _write_all(imageset: ImageSet, labelled, plan: Plan, out: int, result: SegmentResult, *, dtype: np.dtype,
               unique: bool, written: list, progress: Progress | None, cancel: Cancel | None) -> None:
    units = plan.units
    offset = 0
    start = time.perf_counter()
    zeros = None
    for done, (unit, labels) in enumerate(labelled, start=1):
        if labels is None:  # no signal: nothing to write in a channel that starts at 0
            zeros = zeros if zeros is not None else np.zeros((len(unit.planes), *imageset.plane_shape), np.uint8)
            labels = zeros[0] if plan.ndim == 2 else zeros
        labels, count, offset = _number(labels, unit, offset=offset, unique=unique, dtype=dtype)
        for i, z in enumerate(unit.planes):
            written.append((z, unit.time_point))
            imageset.set_channeldata(out, z, unit.time_point, labels if plan.ndim == 2 else labels[i])
        now = time.perf_counter()
        result.units.append(UnitResult(unit, count, now - start))
        start = now
        log.debug("%s: %d nuclei", _where(unit), count)
        if progress is not None:
            progress(done, len(units))
        if cancel is not None and done < len(units) and cancel():
            raise Cancelled(f"cancelled: segmentation stopped on request after {done} of {len(units)} "
                            f"{'planes' if plan.ndim == 2 else 'volumes'}")


def _ranges(values: tuple[int, ...]) -> str:
    return f"{values[0]}..{values[-1]}" if len(values) > 1 else str(values[0])


def run(settings: Settings, imageset: ImageSet | None = None, *, progress: Progress | None = None,
        cancel: Cancel | None = None) -> SegmentResult:
    """Validate everything, load the model once, then segment: the whole job of a script.

    Nothing is written to the image set until the settings, the plan and the
    model have all been checked; a run that fails or is cancelled later
    leaves no half-written channel (see :func:`segment`).  The image set is
    called only from the thread that calls this.  With SEPARATE_PROCESS
    (``"auto"``: when the image set is the host's active one) the model is
    loaded and run in a child process that ends with the run
    (:mod:`stardist_host.segmentation.child`), and this process never imports
    TensorFlow.

    Parameters
    ----------
    settings
        Validated settings (``Settings(...)`` or ``Settings.from_script(globals(), ndim=2)``).
    imageset
        The image set; None uses the one a host registered as active.
    progress
        Called as ``progress(done, total)`` after each plane or volume
        (:func:`percent_progress` adapts a host's percent callback).
    cancel
        Called between planes (volumes) and batches; True stops the run with
        :class:`~stardist_host.errors.Cancelled`.

    Raises
    ------
    SegmentationProcessError
        The child process ended without finishing (crashed, or killed for
        lack of memory); the label channel is removed.
    """
    imageset = check_imageset(imageset) if imageset is not None else active_imageset()
    plan = make_plan(settings, imageset)
    name = f"{settings.output_ch_name}{imageset.channel_names[plan.channel]}"
    if separate_process(settings.separate_process, imageset):
        from .child import run_in_child

        return run_in_child(settings, imageset, plan, output_name=name, progress=progress, cancel=cancel)
    return segment_with_settings(settings, imageset, plan, output_name=name, progress=progress, cancel=cancel)


def separate_process(choice: bool | str, imageset: ImageSet) -> bool:
    """SEPARATE_PROCESS resolved: ``"auto"`` is True for the host's active image set (inside a host), else False."""
    if choice != "auto":
        return bool(choice)
    try:
        return imageset is active_imageset()
    except NoImageSetError:
        return False


def segment_with_settings(settings: Settings, imageset: ImageSet, plan: Plan, *, output_name: str,
                          progress: Progress | None = None, cancel: Cancel | None = None) -> SegmentResult:
    """Set the device up, load the model and :func:`segment` in this process, as ``settings`` say.

    The one path of an in-process run and of the child process of a
    SEPARATE_PROCESS run (there ``imageset`` stands in for the host's).
    """
    from .models import load_for_run

    model, device, precision = load_for_run(
        settings.model_name, ndim=settings.ndim, path=settings.model_path, use_gpu=settings.use_gpu,
        memory_limit_mb=settings.gpu_memory_limit_mb, precision=settings.precision)
    return segment(
        imageset,
        model,
        plan,
        output_name=output_name,
        prob_thresh=settings.prob_thresh,
        nms_thresh=settings.nms_thresh,
        percentiles=(settings.percentile_low, settings.percentile_high),
        n_tiles=settings.n_tiles,
        unique_labels=settings.unique_labels,
        label_dtype=settings.label_dtype,
        device=device,
        precision=precision,
        progress=progress,
        cancel=cancel,
    )
