"""A segmentation run on an image set: a new label channel, filled by the engine, removed again if the run fails.

Data flow: settings -> plan (which planes/volumes) -> :func:`segment_with_settings`
(device, precision, model) -> :func:`segment`: a new channel, then
:func:`~stardist_host.segmentation.engine.label_units` reads each unit
through the host contract, predicts and numbers it, and this module writes it
into the channel.  The image set is called only from the thread that called
:func:`segment` (the network and NMS run on other threads, see
:mod:`stardist_host.segmentation.pipeline`).  Whether a run happens in this
process or a child one is the runs layer's choice (:mod:`stardist_host.runs.local`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import Cancelled, LabelOverflowError, SettingsError
from ..host import Cancel, ImageSet, Progress
from .engine import (Normalisation, UnitResult, label_dtype_for, label_units, predictor, resolve_run, unit_planes,
                     unit_shape)
from .pipeline import BIG_PIXELS
from .plan import Plan
from .settings import Settings, schema

__all__ = ["segment", "segment_with_settings", "load_for_settings", "normalisation_for", "abandon", "SegmentResult",
           "UnitResult", "LabelOverflowError", "Cancelled", "percent_progress"]

log = logging.getLogger(__name__)


@dataclass
class SegmentResult:
    """The outcome of a run: where the labels went and how many were found.

    ``channel`` is the label channel's index in the image set, or in the
    written file for a headless run (:func:`stardist_host.runs.files.segment_file`).
    """

    channel: int
    channel_name: str
    model: str
    device: str
    units: list[UnitResult] = field(default_factory=list)
    ndim: int = 2
    precision: str = ""  # the network's: "float32", "bfloat16" or "float16"; empty where not known
    time_point_count: int = 1  # of the image set, segmented or not
    computed: int | None = None  # units segmented by this run where a resumed run found others done; None: all
    probability_channel: int | None = None  # OUTPUT_PROBABILITY's channel, where there is one
    output_note: str = ""  # how the output file deviates from one image with every channel, where it does

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
        if self.probability_channel is not None:
            text = f"{text}; object probability in channel {self.probability_channel}"
        if self.output_note:
            text = f"{text}; the file holds {self.output_note}"
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


def abandon(imageset: ImageSet, out: int, name: str, written: list[tuple[int, int]], err: BaseException) -> None:
    """Undo a failed or cancelled run's channel: remove it, else zero what was written and say so in ``err``.

    ``written`` lists the (plane, time point) pairs written so far.
    """
    remove = getattr(imageset, "remove_channel", None)
    try:
        if remove is not None:
            remove(out)
            log.info("channel %d %r removed: the run did not finish", out, name)
            return
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
    normalisation: Normalisation = Normalisation(),
    n_tiles: tuple[int, ...] | None = None,
    unique_labels: bool = False,
    label_dtype: str = "auto",
    scale: Any = "auto",
    model_pixel_size_um: Any = None,
    object_diameter_um: float | None = None,
    device: str = "",
    precision: str = "",
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    pipeline: bool = True,
    output_probability: bool = False,
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
    normalisation
        NORMALIZE: each plane's (volume's) own percentiles of its finite
        intensities, the whole run's, fixed intensities or none (see
        :mod:`~stardist_host.segmentation.normalisation`: NaN and Inf pixels
        become 0; planes without signal give no nuclei and skip the model).
    n_tiles
        Tiles per axis; None chooses them from the size.
    unique_labels
        Number labels consecutively across the whole output instead of
        restarting at 1 in each plane (volume).
    label_dtype
        "auto", "uint16" or "uint32" (see :func:`label_dtype_for`).
    scale, model_pixel_size_um, object_diameter_um
        SCALE, MODEL_PIXEL_SIZE_UM, OBJECT_DIAMETER_UM: how each unit is resampled
        before the network (:func:`~stardist_host.segmentation.engine.run_scale`).
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
    output_probability
        Also add a float32 channel ``output_name + " probability"`` with the
        network's object probability (0 where a unit has no signal).

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
    plane_shape = tuple(imageset.plane_shape)
    dtype = label_dtype_for(label_dtype, plan, plane_shape, unique_labels)
    normalisation, read, scale = resolve_run(model, imageset, plan, normalisation, scale=scale,
                                             model_pixel_size_um=model_pixel_size_um,
                                             object_diameter_um=object_diameter_um)
    if output_probability and math.prod(unit_shape(plan, plane_shape)) > BIG_PIXELS:
        raise SettingsError("OUTPUT_PROBABILITY", True, f"is not available for planes (volumes) of more than "
                            f"{BIG_PIXELS} pixels, which are predicted in blocks")
    if cancel is not None and cancel():
        raise Cancelled("cancelled: segmentation stopped on request before it began")
    out = imageset.add_channel(output_name, dtype)
    result = SegmentResult(out, output_name, model.name, device, ndim=plan.ndim, precision=precision,
                           time_point_count=imageset.time_point_count)
    added = [(out, output_name)]
    written: list[tuple[int, int]] = []

    def write(unit, labels) -> None:
        for z, plane in unit_planes(unit, labels, plan.ndim):
            written.append((z, unit.time_point))
            imageset.set_channeldata(out, z, unit.time_point, plane)

    def write_probability(unit, prob) -> None:
        for z, plane in unit_planes(unit, prob, plan.ndim):
            imageset.set_channeldata(result.probability_channel, z, unit.time_point, plane)

    what = "planes" if plan.ndim == 2 else "volumes"
    try:
        if output_probability:
            name = f"{output_name} probability"
            result.probability_channel = imageset.add_channel(name, np.float32)
            added.append((result.probability_channel, name))
        log.info("segmenting channel %s, %d %s(s), time points %s, planes %d..%d -> channel %d %r (%s)",
                 "+".join(map(str, plan.channels)), len(units), what[:-1],
                 "..".join(map(str, sorted({plan.time_points[0], plan.time_points[-1]}))),
                 plan.first_plane, plan.last_plane, out, output_name, dtype)
        with predictor(model, prob_thresh=prob_thresh, nms_thresh=nms_thresh, n_tiles=n_tiles, scale=scale,
                       cancel=cancel, pipeline=pipeline, probability=output_probability) as predict:
            labelled = label_units(predict, units, read, write, ndim=plan.ndim, plane_shape=plane_shape,
                                   dtype=dtype, unique=unique_labels,
                                   write_probability=write_probability if output_probability else None)
            for done, unit_result in enumerate(labelled, start=1):
                result.units.append(unit_result)
                if progress is not None:
                    progress(done, len(units))
                if cancel is not None and done < len(units) and cancel():
                    raise Cancelled(f"cancelled: segmentation stopped on request after {done} of {len(units)} {what}")
    except BaseException as err:
        for channel, name in reversed(added):  # the last added first: the channels before keep their indices
            abandon(imageset, channel, name, written, err)
        raise
    return result


def load_for_settings(settings: Settings):
    """Set the device and precision up and load the model, as ``settings`` say: (model, device, precision).

    The one model load of every run (:func:`~stardist_host.segmentation.models.load_for_run`).
    """
    from .models import load_for_run

    return load_for_run(settings.model_name, ndim=settings.ndim, path=settings.model_path, use_gpu=settings.use_gpu,
                        memory_limit_mb=settings.gpu_memory_limit_mb, precision=settings.precision,
                        channels=settings.input_channel)


def normalisation_for(settings: Settings, model) -> Normalisation:
    """A run's NORMALIZE, with PERCENTILE_LOW / PERCENTILE_HIGH or a bioimage.io package's own percentiles, and
    NORMALIZE_CHANNELS_JOINTLY (None: as the loaded ``model`` was trained)."""
    from .models import run_percentiles, trained_jointly

    percentiles = (settings.percentile_low, settings.percentile_high)
    if settings.normalize in ("unit", "time series"):
        percentiles = run_percentiles(settings.model_name, percentiles, ndim=settings.ndim, path=settings.model_path)
    jointly = settings.normalize_channels_jointly
    if jointly is None:
        jointly = len(settings.channels) > 1 and trained_jointly(model)
    return Normalisation.of(settings.normalize, percentiles, settings.normalize_min, settings.normalize_max,
                            jointly=jointly)


def segment_with_settings(settings: Settings, imageset: ImageSet, plan: Plan, *, output_name: str,
                          progress: Progress | None = None, cancel: Cancel | None = None) -> SegmentResult:
    """Set the device up, load the model and :func:`segment` in this process, as ``settings`` say.

    The one path of an in-process run and of the child process of a
    SEPARATE_PROCESS run (there ``imageset`` stands in for the host's).
    """
    model, device, precision = load_for_settings(settings)
    return segment(imageset, model, plan, output_name=output_name, prob_thresh=settings.prob_thresh,
                   nms_thresh=settings.nms_thresh, normalisation=normalisation_for(settings, model),
                   n_tiles=settings.n_tiles, unique_labels=settings.unique_labels, label_dtype=settings.label_dtype,
                   scale=settings.scale, model_pixel_size_um=settings.model_pixel_size_um,
                   object_diameter_um=settings.object_diameter_um, device=device, precision=precision,
                   progress=progress, cancel=cancel, output_probability=settings.output_probability)
