"""The one engine: units (planes in 2D, volumes in 3D) in, numbered labels out.

Every way of running goes through :func:`label_units`: an in-process run and
the SEPARATE_PROCESS child (:func:`~stardist_host.segmentation.segment.segment`,
writing to the image set), a local journalled run and each Dask task
(:mod:`stardist_host.runs.distributed`, writing to a label store).  They
differ only in where a unit is read from and where its labels go; reading,
normalisation, the batched predictor, the label type check and the numbering
are here, once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from numpy.typing import NDArray

from ..errors import Cancelled, LabelOverflowError, SettingsError
from ..host import ImageSet
from .device import host_memory_budget
from .models import trained_sizes
from .normalisation import Normalisation, normalise, series_intensities, where
from .pipeline import BIG_BLOCK, BIG_PIXELS, UnitPredictor, auto_n_tiles, bytes_per_pixel
from .plan import Plan, Unit
from .stardist_compat import instance_options, predicted_probability

__all__ = ["UnitResult", "unit_shape", "label_units", "predictor", "unit_reader", "read_unit", "resolve_run",
           "resolve_normalisation", "Normalisation", "normalise", "number", "check_fits", "first_labels",
           "unit_planes", "shifted", "label_dtype_for", "run_scale", "estimate_scale", "median_diameter_px", "where",
           "MIN_NUCLEUS"]

log = logging.getLogger(__name__)

#: Smallest plausible nucleus, in pixels (2D: 5 x 5) or voxels (3D: 5 x 5 x 5); with
#: LABEL_DTYPE="auto" a plane (volume) is assumed to hold at most its size over this.
MIN_NUCLEUS = {2: 25, 3: 125}
#: read(unit) -> the unit's normalised image, or None where it has no signal.
Read = Callable[[Unit], "NDArray | None"]
#: write(unit, labels) puts a unit's labels (Y, X or Z, Y, X, in the label type) where they belong.
Write = Callable[[Unit, NDArray], None]


@dataclass
class UnitResult:
    """What one plane or volume gave: its object count, its highest label before any offset, the seconds taken."""

    unit: Unit
    count: int
    seconds: float
    highest: int = 0


def unit_shape(plan: Plan, plane_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of one of the plan's units: a plane (Y, X), or a volume (Z, Y, X) of the plan's planes."""
    depth = (plan.last_plane - plan.first_plane + 1,) if plan.ndim == 3 and plan.time_points else ()
    return depth + tuple(plane_shape)


def label_dtype_for(choice: str, plan: Plan, plane_shape: tuple[int, int], unique: bool) -> np.dtype:
    """The label channel's type: ``choice``, or for "auto" uint16 unless more labels could occur.

    "auto" bounds the number of labels by the pixels (voxels) of a plane
    (volume) over :data:`MIN_NUCLEUS`, times the number of planes (volumes)
    when labels are unique across the whole output; uint32 only where that
    bound exceeds 65535.  A 1024 x 1024 plane gives uint16.
    """
    if choice != "auto":
        return np.dtype(choice)
    bound = math.prod(unit_shape(plan, plane_shape)) // MIN_NUCLEUS[plan.ndim] * (len(plan.units) if unique else 1)
    return np.dtype(np.uint16 if bound <= np.iinfo(np.uint16).max else np.uint32)


#: Under "auto", factors all within this ratio of 1 are not worth resampling.
DEAD_BAND = 1.2
#: Smallest size of an axis after scaling, in pixels.
MIN_SCALED_SIZE = 8


def run_scale(model, voxel_size, *, scale: Any = "auto", model_pixel_size_um: Any = None,
              object_diameter_um: float | None = None, unit_shape: tuple[int, ...] | None = None,
              read: "Read | None" = None, units: "list[Unit] | None" = None) -> tuple[float, ...] | None:
    """The factor per spatial axis by which a run resamples each unit before the network, or None for none.

    The one rule of every path (in process, the child, Dask, ``evaluate``);
    stardist's ``predict_instances(scale=)`` resamples and returns the labels
    on the image's own grid.

    Parameters
    ----------
    model
        The loaded StarDist2D / StarDist3D model; its folder's recorded sizes
        (:func:`~stardist_host.segmentation.models.trained_sizes`) and, for 3D,
        its config's anisotropy are read.
    voxel_size
        The image set's (z, y, x) in µm, z None where unknown, or None.
    scale
        SCALE: "auto", "estimate", a number for every axis, or one per axis ((Y, X) or (Z, Y, X)).
        "estimate" measures the nuclei in a sample of ``units`` (:func:`estimate_scale`).
    model_pixel_size_um
        MODEL_PIXEL_SIZE_UM: the training data's pixel size (a number or one per
        axis); None: the recorded one.  Where both are known and differ, this one wins, with a warning.
    object_diameter_um
        OBJECT_DIAMETER_UM: the nuclei's diameter in this image; with "auto" the
        scale makes it the model's recorded median diameter in pixels.
    unit_shape
        The shape of one plane (volume), to refuse a scale that leaves an axis
        under :data:`MIN_SCALED_SIZE` pixels.
    read, units
        For "estimate": how a unit is read (normalised) and the run's units.

    Returns
    -------
    tuple or None
        One factor per spatial axis; None where no resampling is done.

    Raises
    ------
    SettingsError
        OBJECT_DIAMETER_UM without the model's recorded diameter or the image's
        pixel size; a scale that makes a unit too small.
    """
    ndim = int(model.config.n_dim)
    image = None if voxel_size is None else tuple(voxel_size[-ndim:])
    if scale == "estimate":
        return estimate_scale(model, read, units, image=image, unit_shape=unit_shape)
    if scale != "auto":
        factors = tuple(float(f) for f in scale) if isinstance(scale, (list, tuple)) else (float(scale),) * ndim
        log.info("SCALE=%s: each %s is resampled by %s before the network", scale,
                 "plane" if ndim == 2 else "volume", _factors(factors))
        return _checked(None if all(f == 1 for f in factors) else factors, unit_shape, "SCALE", scale, model)
    recorded = trained_sizes(model)
    trained = recorded.pixel_size_um
    if model_pixel_size_um is not None:
        given = (tuple(float(v) for v in model_pixel_size_um) if isinstance(model_pixel_size_um, (list, tuple))
                 else (float(model_pixel_size_um),) * ndim)
        if trained is not None and not np.allclose(given, trained, rtol=1e-3):
            log.warning("MODEL_PIXEL_SIZE_UM=%s differs from the pixel size the model records (%s µm): %s is used",
                        model_pixel_size_um, _factors(trained), _factors(given))
        trained = given
    if object_diameter_um is not None:
        factors = _diameter_scale(model, recorded.object_diameter_px, image, trained, object_diameter_um)
        return _checked(factors, unit_shape, "OBJECT_DIAMETER_UM", object_diameter_um, model)
    factors = _pixel_scale(model, image, trained)
    if factors is None:
        return None
    if all(abs(math.log(f)) < math.log(DEAD_BAND) for f in factors):
        log.info("SCALE=\"auto\": factors %s are within %d%% of 1: not worth resampling", _factors(factors),
                 round((DEAD_BAND - 1) * 100))
        return None
    log.info("SCALE=\"auto\": image voxel size %s µm, model's %s µm: each %s is resampled by %s", voxel_size,
             "unknown" if trained is None else _factors(trained), "plane" if ndim == 2 else "volume", _factors(factors))
    return _checked(factors, unit_shape, "SCALE", scale, model)


def _factors(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _z_ratio(spacing) -> float:
    """Anisotropy: the Z spacing over the mean of the Y and X spacings of a (z, y, x) voxel size or model anisotropy."""
    return spacing[0] / ((spacing[1] + spacing[2]) / 2)


def _pixel_scale(model, image, trained) -> tuple[float, ...] | None:
    """SCALE="auto" from pixel sizes: image over model per axis, where known; None (logged) where nothing is."""
    ndim = int(model.config.n_dim)
    lateral_known = image is not None and image[-1] is not None
    if trained is not None and lateral_known:
        if ndim == 2 or image[0] is not None:
            return tuple(i / t for i, t in zip(image, trained))
        lateral = tuple(i / t for i, t in zip(image[1:], trained[1:]))
        log.info("SCALE=\"auto\": the image has no Z spacing: Z is scaled as Y and X, assuming the model's anisotropy")
        return (sum(lateral) / 2, *lateral)
    anisotropy = getattr(model.config, "anisotropy", None) if ndim == 3 else None
    if anisotropy is not None and image is not None and image[0] is not None:
        # the model's pixel size is unknown, its anisotropy known: bring the image's Z to it, as before
        log.info("SCALE=\"auto\": the model's pixel size is unknown; image anisotropy %.2f (voxel size %s), the "
                 "model's %.2f: only Z can be matched", _z_ratio(image), image, _z_ratio(anisotropy))
        return (_z_ratio(image) / _z_ratio(anisotropy), 1.0, 1.0)
    unknown = [what for what, known in (("the image's", lateral_known), ("the model's", trained is not None))
               if not known]
    log.info("SCALE=\"auto\": %s pixel size unknown: segmented at scale 1 (set %s)", " and ".join(unknown),
             "MODEL_PIXEL_SIZE_UM or SCALE" if lateral_known else "SCALE")
    return None


def _diameter_scale(model, diameter_px, image, trained, diameter_um) -> tuple[float, ...]:
    """SCALE="auto" with OBJECT_DIAMETER_UM: the image's nuclei brought to the model's median training diameter."""
    ndim = int(model.config.n_dim)
    if diameter_px is None:
        raise SettingsError("OBJECT_DIAMETER_UM", diameter_um, "the model records no object diameter "
                            "(object_diameter_px in its model_card.json); set SCALE instead")
    if image is None or image[-1] is None:
        raise SettingsError("OBJECT_DIAMETER_UM", diameter_um, "needs the image's pixel size, which the image set "
                            "does not state; set SCALE instead")
    lateral = diameter_px * (image[-1] + image[-2]) / 2 / diameter_um
    factors: tuple[float, ...] = (lateral, lateral)
    if ndim == 3:
        anisotropy = trained if trained is not None else getattr(model.config, "anisotropy", None)
        z = lateral * _z_ratio(image) / _z_ratio(anisotropy) if image[0] is not None and anisotropy else lateral
        factors = (z, *factors)
    log.info("OBJECT_DIAMETER_UM=%g: the model's median training diameter is %.1f pixels, the image's pixel %.4g µm: "
             "each unit is resampled by %s", diameter_um, diameter_px, (image[-1] + image[-2]) / 2, _factors(factors))
    return factors


#: SCALE="estimate" tries these factors, 0.25 to 4 in steps of a square root of 2, smallest first.
ESTIMATE_FACTORS = tuple(2 ** (k / 2) for k in range(-4, 5))
#: Units "estimate" segments: evenly spaced over the run's.
ESTIMATE_SAMPLE = 3
#: A factor fits where the nuclei reach the network within this ratio of its training diameter (about the
#: factors' step: under it, nuclei merged at too small a factor measure too small to fit).
ESTIMATE_TOLERANCE = 1.25
#: Most pixels (voxels) of a scaled unit "estimate" segments; factors beyond it are not tried.
ESTIMATE_MAX_PIXELS = 2 ** 24


def median_diameter_px(masks: Iterable[NDArray], *, ndim: int, z_ratio: float = 1.0) -> float | None:
    """Median equivalent diameter of the objects of ``masks``, in lateral pixels; None where there are none.

    2D: the diameter of the disc of an object's area.  3D: of the sphere of its
    volume, with a voxel ``z_ratio`` lateral pixels deep (Z spacing over Y/X
    spacing), so that it is the physical diameter in lateral pixels.  An object
    is counted once per mask (per sample), with all its pixels.
    """
    counts = [np.bincount(np.asarray(mask).ravel().astype(np.int64))[1:] for mask in masks]
    found = np.concatenate([c[c > 0] for c in counts] or [np.zeros(0)])
    if not found.size:
        return None
    diameters = 2 * np.sqrt(found / np.pi) if ndim == 2 else np.cbrt(6 * found * z_ratio / np.pi)
    return float(np.median(diameters))


def estimate_scale(model, read: Read, units: list[Unit], *, image=None,
                   unit_shape: tuple[int, ...] | None = None) -> tuple[float, ...] | None:
    """SCALE="estimate": the factor that brings this image's nuclei to the model's recorded training diameter.

    A sample of units (:data:`ESTIMATE_SAMPLE`, evenly spaced) is segmented at
    :data:`ESTIMATE_FACTORS`, smallest first, and the median nucleus diameter
    measured on the image's grid, until the nuclei reach the network within
    :data:`ESTIMATE_TOLERANCE` of the model's training diameter.  The smallest
    such factor is the one: a network shown nuclei larger than it was trained
    on cuts them into pieces of its own size, so every factor above the right
    one would seem to fit too.  The scale is the training diameter over the
    diameter measured at that factor.  In
    3D, Z follows the lateral factor times the anisotropy correction of
    SCALE="auto" (where it is known).  The log says what was measured and chosen.

    Raises
    ------
    SettingsError
        The model records no object diameter.
    """
    ndim = int(model.config.n_dim)
    trained = trained_sizes(model)
    if trained.object_diameter_px is None:
        raise SettingsError("SCALE", "estimate", "the model records no object diameter (object_diameter_px in its "
                                                 "model_card.json, which train writes); give a number instead")
    target = trained.object_diameter_px
    z_fix = z_ratio = 1.0
    if ndim == 3:
        anisotropy = getattr(model.config, "anisotropy", None)
        z_ratio = model_ratio = _z_ratio(anisotropy) if anisotropy is not None else 1.0
        if image is not None and image[0] is not None:
            z_ratio = _z_ratio(image)
            z_fix = z_ratio / model_ratio
    step = max(1, math.ceil(len(units) / ESTIMATE_SAMPLE))
    sample = list(units[len(units) % step // 2::step])[:ESTIMATE_SAMPLE]
    images = [(unit, x) for unit in sample for x in [read(unit)] if x is not None]
    if not images:
        log.warning('SCALE="estimate": the sampled units have no signal: segmented at scale 1')
        return None
    measured: list[tuple[float, float | None]] = []
    fit = None  # the first (smallest) factor whose nuclei reach the network at its training diameter
    for factor in ESTIMATE_FACTORS:
        factors = (factor * z_fix, factor, factor) if ndim == 3 else (factor, factor)
        shape = unit_shape or images[0][1].shape
        if (any(n > 1 and n * f < MIN_SCALED_SIZE for n, f in zip(shape, factors))
                or math.prod(n * f for n, f in zip(shape, factors)) > ESTIMATE_MAX_PIXELS):
            continue
        with predictor(model, scale=None if factor == 1 and z_fix == 1 else factors, pipeline=False) as predict:
            labels = [lab for _, lab in predict.predict([u for u, _ in images], dict(images).get) if lab is not None]
        diameter = median_diameter_px(labels, ndim=ndim, z_ratio=z_ratio)
        measured.append((factor, diameter))
        if diameter is not None and abs(math.log(diameter * factor / target)) <= math.log(ESTIMATE_TOLERANCE):
            fit = factor, diameter
            break
    text = ", ".join(f"{f:.3g}: {'none' if d is None else f'{d:.1f}'}" for f, d in measured)
    if fit is None:
        log.warning('SCALE="estimate": median nucleus diameter in pixels at each factor tried (%s) never reached the '
                    "model's %.1f pixels within %gx: segmented at scale 1; give SCALE", text, target,
                    ESTIMATE_TOLERANCE)
        return None
    factor, diameter = fit
    lateral = target / diameter
    chosen = (lateral * z_fix, lateral, lateral) if ndim == 3 else (lateral, lateral)
    log.info('SCALE="estimate": median nucleus diameter in pixels at each factor tried: %s; the model was trained '
             "on %.1f pixels; at %.3g the nuclei measure %.1f pixels: scale %s", text, target, factor, diameter,
             _factors(chosen))
    if all(abs(math.log(f)) < math.log(DEAD_BAND) for f in chosen):
        log.info('SCALE="estimate": within %d%% of 1: not resampled', round((DEAD_BAND - 1) * 100))
        return None
    return _checked(chosen, unit_shape, "SCALE", "estimate", model)


def _checked(factors, unit_shape, setting: str, value, model) -> tuple[float, ...] | None:
    """``factors``, or a SettingsError where a unit of ``unit_shape`` would shrink below MIN_SCALED_SIZE, or
    where the scaled unit (or block, for units predicted in blocks) would not fit the memory budget."""
    if factors is None or unit_shape is None:
        return factors
    small = [(n, f) for n, f in zip(unit_shape, factors) if n > 1 and n * f < MIN_SCALED_SIZE]
    if small:
        raise SettingsError(setting, value, f"scales a unit of shape {tuple(unit_shape)} by {_factors(factors)}, "
                            f"which leaves an axis under {MIN_SCALED_SIZE} pixels; give a larger scale")
    ndim = len(factors)
    piece = tuple(unit_shape) if math.prod(unit_shape) <= BIG_PIXELS else (BIG_BLOCK[ndim],) * ndim
    scaled = tuple(max(1, round(n * f)) for n, f in zip(piece, factors))
    need, budget = math.prod(scaled) * bytes_per_pixel(model), host_memory_budget()
    if need > budget:
        raise SettingsError(setting, value, f"scales {'a unit' if piece == tuple(unit_shape) else 'a block'} of "
                            f"shape {piece} to {scaled}, about {need / 2**30:.2g} GiB for the network's input "
                            f"and output, more than the {budget / 2**30:.2g} GiB a run may use here (a quarter of "
                            "the free memory, or STARDIST_HOST_MEMORY); give a smaller scale")
    return factors


# --------------------------------------------------------------------------- reading


def read_unit(imageset: ImageSet, channel: int | tuple[int, ...], unit: Unit, ndim: int) -> NDArray:
    """A unit's plane (2D) or its planes stacked into a volume (3D), through the host contract.

    ``channel`` a tuple (a model with several input channels): the channels stacked last, (Y, X, C) or (Z, Y, X, C).
    """
    if isinstance(channel, tuple):
        return np.stack([read_unit(imageset, c, unit, ndim) for c in channel], axis=-1)
    planes = [np.asarray(imageset.get_channeldata(channel, z, unit.time_point)) for z in unit.planes]
    return planes[0] if ndim == 2 else np.stack(planes)


def unit_reader(imageset: ImageSet, channel: int | tuple[int, ...], ndim: int, how: Normalisation) -> Read:
    """``read(unit)``: the unit from ``channel`` of ``imageset``, normalised (None where it has no signal).

    ``how`` must be resolved (:func:`resolve_normalisation`).
    """

    def read(unit: Unit) -> NDArray | None:
        return normalise(read_unit(imageset, channel, unit, ndim), how, unit=unit,
                         channels=isinstance(channel, tuple))

    return read


def resolve_run(model, imageset: ImageSet, plan: Plan, how: Normalisation, *, scale: Any = "auto",
                model_pixel_size_um: Any = None, object_diameter_um: float | None = None,
                ) -> tuple[Normalisation, Read, tuple[float, ...] | None]:
    """What a run settles once, before anything is written: its normalisation (:func:`resolve_normalisation`),
    the reader of its units, and its scale (:func:`run_scale`; SCALE="estimate" reads a sample of units).

    Every path calls it once: :func:`~stardist_host.segmentation.segment.segment` and, for runs through a
    label store, the client that hands the result to its tasks.
    """
    how = resolve_normalisation(how, imageset, plan.channel, plan.ndim, plan.units)
    read = unit_reader(imageset, plan.channel, plan.ndim, how)
    factors = run_scale(model, imageset.voxel_size, scale=scale, model_pixel_size_um=model_pixel_size_um,
                        object_diameter_um=object_diameter_um, unit_shape=unit_shape(plan, tuple(imageset.plane_shape)),
                        read=read, units=plan.units)
    return how, read, factors


def resolve_normalisation(how: Normalisation, imageset: ImageSet, channel: int | tuple[int, ...], ndim: int,
                          units: list[Unit]) -> Normalisation:
    """``how`` ready for :func:`unit_reader`: NORMALIZE="time series" reads the run's units once for its intensities.

    Done once per run, before its units are shared out (a Dask run's client, then every task).
    """
    return series_intensities(how, lambda unit: read_unit(imageset, channel, unit, ndim), units,
                              channels=isinstance(channel, tuple))


# --------------------------------------------------------------------------- numbering


def check_fits(top: int, dtype: np.dtype, unit: Unit, *, again: str = "") -> None:
    """Refuse a label ``top`` that the label type cannot hold, naming the unit that reached it.

    Raises
    ------
    LabelOverflowError
        ``top`` is above the type's maximum (nothing of the unit has been written).
    """
    if top > np.iinfo(dtype).max:
        fits = f"{where(unit)}: label {top} does not fit the label channel's type {dtype} (up to {np.iinfo(dtype).max})"
        err = LabelOverflowError(f"{fits}; set LABEL_DTYPE='uint32'{again}")
        err.command_line = f"{fits}; add --label-dtype uint32{again}"
        raise err


def number(labels: NDArray, unit: Unit, *, offset: int, unique: bool, dtype: np.dtype) -> tuple[NDArray, int, int]:
    """Labels in the channel's type, their count and the highest label; raises before anything is written.

    With ``unique``, labels are shifted by ``offset`` (in int64, so that the
    sum cannot wrap before the check).  A polygon drawn over entirely by its
    neighbours leaves a gap in the numbering, so the count is of the labels
    present, not the highest.
    """
    highest = int(labels.max()) if labels.size else 0
    count = int(np.count_nonzero(np.bincount(labels.ravel())[1:])) if highest else 0
    top = offset + highest if unique else highest
    check_fits(top, dtype, unit)
    if unique and highest and offset:
        return shifted(labels, offset, dtype), count, top
    return labels.astype(dtype), count, top


def shifted(labels: NDArray, offset: int, dtype: np.dtype) -> NDArray:
    """``labels`` with ``offset`` added to each object (background stays 0), in ``dtype`` (checked by the caller)."""
    return np.where(labels > 0, labels.astype(np.int64) + offset, 0).astype(dtype)


def first_labels(units: Iterable[Unit], highest: dict[Unit, int], dtype: np.dtype, *, again: str = "") -> dict[Unit, int]:
    """The offset of each unit's labels when they are unique across the run: the highest labels of the units before it.

    The numbering :func:`label_units` gives with ``unique``, for labels that
    were written unit by unit (in any order) with offset 0.
    """
    offsets, top = {}, 0
    for unit in units:
        offsets[unit] = top
        top += highest[unit]
        check_fits(top, dtype, unit, again=again)
    return offsets


# --------------------------------------------------------------------------- the engine


class _Reference(contextlib.AbstractContextManager):
    """stardist's ``predict_instances`` unit by unit on the calling thread: what the pipeline is tested against."""

    def __init__(self, model, *, prob_thresh, nms_thresh, n_tiles, scale, cancel, probability=False) -> None:
        self.model, self.cancel, self.n_tiles = model, cancel, n_tiles
        self.options = dict(prob_thresh=prob_thresh, nms_thresh=nms_thresh, scale=scale)
        self.keep_probability, self._probabilities = probability, {}

    def predict(self, units: Iterable[Unit], read: Read) -> Iterator[tuple[Unit, NDArray | None]]:
        for unit in units:
            if self.cancel is not None and self.cancel():
                raise Cancelled("cancelled: segmentation stopped on request")
            x = read(unit)
            if x is None:
                yield unit, None
                continue
            ndim = int(self.model.config.n_dim)
            options = instance_options(self.model, n_tiles=self.n_tiles or auto_n_tiles(x.shape[:ndim]), **self.options)
            if self.keep_probability:
                self._probabilities[unit] = predicted_probability(self.model, x, n_tiles=options["n_tiles"][:ndim],
                                                                  scale=self.options["scale"])
            yield unit, self.model.predict_instances(x, **options)[0]

    def probability(self, unit) -> NDArray | None:
        return self._probabilities.pop(unit, None)

    def __exit__(self, *exc) -> None:  # no threads to end
        pass


def predictor(model, *, prob_thresh: float | None = None, nms_thresh: float | None = None,
              n_tiles: tuple[int, ...] | None = None, scale: tuple[float, ...] | None = None,
              cancel: Callable[[], bool] | None = None, pipeline: bool = True, probability: bool = False):
    """What turns normalised units into labels: the batched pipeline, or (``pipeline=False``) stardist unit by unit.

    Use it as a context manager: its threads end with the block.  ``probability``:
    it also keeps each unit's object probability (``.probability(unit)``, for OUTPUT_PROBABILITY).
    """
    options = dict(prob_thresh=prob_thresh, nms_thresh=nms_thresh, n_tiles=n_tiles, scale=scale, cancel=cancel,
                   probability=probability)
    return UnitPredictor(model, **options) if pipeline else _Reference(model, **options)


def label_units(predict, units: list[Unit], read: Read, write: Write, *, ndim: int, plane_shape: tuple[int, ...],
                dtype: np.dtype, unique: bool = False, write_probability: Write | None = None) -> Iterator[UnitResult]:
    """Read, predict, number and write each unit in turn; yield what each gave once it is written.

    Parameters
    ----------
    predict
        From :func:`predictor` (or a Dask worker's cached one).
    units
        The units, in the order their labels are numbered.
    ndim
        2: a unit is a plane, its labels (Y, X); 3: a volume, (Z, Y, X).
    read
        The unit's normalised image, or None where it has no signal (no
        nuclei: the unit's labels are 0 and the model does not see it).
    write
        Puts the unit's labels (in ``dtype``) where they belong; called once per unit, in order.
    plane_shape
        (Y, X) of a plane, for the labels of a unit without signal.
    dtype
        The label type; a unit whose labels do not fit raises before it is written.
    unique
        Number labels consecutively across ``units`` instead of from 1 in each.
    write_probability
        Puts the unit's object probability (float32, the unit's shape; 0 where it
        has no signal) where it belongs; ``predict`` must keep it (``predictor(probability=True)``).

    Raises
    ------
    LabelOverflowError
        A unit's labels do not fit ``dtype``.
    """
    offset = 0
    start = time.perf_counter()
    for unit, labels in predict.predict(units, read):
        if labels is None:  # no signal: nothing to predict, nothing labelled
            labels = np.zeros(plane_shape if ndim == 2 else (len(unit.planes), *plane_shape), np.uint8)
        labels, count, top = number(labels, unit, offset=offset, unique=unique, dtype=dtype)
        highest, offset = (top - offset, top) if unique else (top, offset)
        write(unit, labels)
        if write_probability is not None:
            prob = predict.probability(unit)
            write_probability(unit, np.zeros(labels.shape, np.float32) if prob is None else prob)
        now = time.perf_counter()
        log.debug("%s: %d nuclei", where(unit), count)
        yield UnitResult(unit, count, now - start, highest)
        start = now


def unit_planes(unit: Unit, labels: NDArray, ndim: int) -> Iterator[tuple[int, NDArray]]:
    """(z, plane) for each plane of a unit's labels: the one plane in 2D, each of the volume's in 3D."""
    return zip(unit.planes, [labels] if ndim == 2 else labels)
