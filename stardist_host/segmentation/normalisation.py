"""Normalisation (NORMALIZE): how a unit's intensities become the 0..1 range the network was trained on.

Four scopes, each a :class:`Normalisation`:

- ``"unit"``: each plane (volume) by its own percentiles PERCENTILE_LOW and
  PERCENTILE_HIGH (stardist's and csbdeep's default);
- ``"time series"``: the same percentiles, of all the run's units together,
  computed once before the first unit (:func:`series_intensities`, streamed
  unit by unit and memory bounded) and then applied as fixed intensities;
- ``"fixed"``: NORMALIZE_MIN and NORMALIZE_MAX intensities map to 0 and 1 in
  every unit, for quantitative comparisons across images;
- ``"none"``: the intensities as they are (a model trained on raw values).

Percentiles are computed once per unit, before any tiling, so every tile of
a plane (and every Dask task) sees the same mapping.  A unit of more than
:data:`EXACT_VALUES` values takes them from a regular subsample of at least
:data:`SAMPLE_VALUES` (:func:`sample`): the value found for percentile ``p``
lies between the exact percentiles ``p - PERCENTILE_ERROR`` and
``p + PERCENTILE_ERROR`` (a random sample of that size misses by more with
a probability under 1e-6 at any ``p``; ``tests/test_normalisation.py`` checks
the grid sample on microscope images and noise).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Callable, Iterable

import numpy as np
from numpy.typing import NDArray

from .plan import Unit

__all__ = ["Normalisation", "normalise", "sample", "unit_percentiles", "series_intensities", "where",
           "EXACT_VALUES", "SAMPLE_VALUES", "PERCENTILE_ERROR", "SERIES_VALUES", "NO_SIGNAL_FRACTION"]

log = logging.getLogger(__name__)

#: Units with up to this many values (a 2048 x 2048 plane) get exact percentiles.
EXACT_VALUES = 2**22
#: Larger units: percentiles of a regular grid subsample of at least this many values.
SAMPLE_VALUES = 2**20
#: The subsample's percentile p lies between the exact percentiles p -/+ this many percentile points.
#: (For a random sample of SAMPLE_VALUES the empirical CDF's error at any p has a standard deviation of at
#: most 0.05 points: this is 5 of them.)
PERCENTILE_ERROR = 0.25
#: "time series": most values held at once, in all (each unit contributes an equal share).
SERIES_VALUES = 2**24
#: Integer data whose max - min is below this fraction of its type's range (at most the
#: uint16 range: uint8 constant only, uint16 and wider a spread of 6 or less) has no signal.
NO_SIGNAL_FRACTION = 1e-4


def where(unit: Unit) -> str:
    """A unit as the log and errors name it ("time point 1, plane 3")."""
    planes = f"plane {unit.first}" if unit.first == unit.last else f"planes {unit.first}..{unit.last}"
    return f"time point {unit.time_point}, {planes}"


@dataclass(frozen=True)
class Normalisation:
    """How each unit is normalised: by its own ``percentiles``, by fixed ``intensities``, or (neither) not at all.

    ``scope`` is the NORMALIZE it came from, for the log; a "time series"
    scope holds its percentiles until :func:`series_intensities` has turned
    them into intensities (:meth:`with_intensities`).
    """

    scope: str = "unit"
    percentiles: tuple[float, float] | None = (1.0, 99.8)
    intensities: tuple[float, float] | None = None
    jointly: bool = False  # several input channels: one mapping for all (True) or one per channel
    per_channel: tuple[tuple[float, float], ...] | None = None  # "time series" of several channels, not jointly

    @classmethod
    def of(cls, scope: str, percentiles: tuple[float, float], low: float | None = None,
           high: float | None = None, *, jointly: bool = False) -> "Normalisation":
        """From the settings: NORMALIZE, the percentiles, NORMALIZE_MIN, NORMALIZE_MAX, NORMALIZE_CHANNELS_JOINTLY."""
        if scope == "fixed":
            return cls(scope, None, (float(low), float(high)), jointly)  # type: ignore[arg-type]
        if scope == "none":
            return cls(scope, None, None, jointly)
        return cls(scope, tuple(float(p) for p in percentiles), None, jointly)  # type: ignore[arg-type]

    @property
    def pending(self) -> bool:
        """A "time series" scope whose intensities are not computed yet."""
        return self.scope == "time series" and self.intensities is None and self.per_channel is None

    def channel(self, index: int) -> "Normalisation":
        """The mapping of one of several input channels normalised each on its own."""
        per_channel = self.per_channel
        return self if per_channel is None else replace(self, intensities=per_channel[index], per_channel=None)


def _has_signal(image: NDArray) -> bool:
    """False for a constant image, or integer data spread less than NO_SIGNAL_FRACTION of its range."""
    low, high = image.min(), image.max()
    if image.dtype.kind in "iu":
        info = np.iinfo(image.dtype)
        span = min(int(info.max) - int(info.min), np.iinfo(np.uint16).max)
        return int(high) - int(low) >= NO_SIGNAL_FRACTION * span
    return bool(high > low)


def sample(image: NDArray, values: int = SAMPLE_VALUES) -> NDArray:
    """Every ``s``-th pixel along Y and X (a regular grid) with ``s`` the largest step that keeps ``values`` of them.

    ``image`` itself (a view) where it has no more than ``values`` values.
    """
    step = max(1, math.isqrt(image.size // max(values, 1)))
    if step == 1:
        return image
    return image[::step * step] if image.ndim == 1 else image[..., ::step, ::step]


def unit_percentiles(values: NDArray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """The two percentiles of ``values`` (finite, any shape): exact up to EXACT_VALUES, else of a subsample.

    The exact case is csbdeep's ``normalize(axis=None)``'s two ``np.percentile``
    calls, sharing one copy that they partition in place (the same bytes, in
    0.7x the time for a 1024² plane; a test compares them).
    """
    return _exact(sample(values) if values.size > EXACT_VALUES else values, percentiles)


def _exact(values: NDArray, percentiles: tuple[float, float]) -> tuple[float, float]:
    scratch = np.array(values).reshape(-1)
    return tuple(np.percentile(scratch, p, overwrite_input=True) for p in percentiles)  # type: ignore[return-value]


def normalise(image: NDArray, how: Normalisation, *, unit: Unit | None = None, channels: bool = False,
              ) -> NDArray | None:
    """Normalise a plane (volume) as ``how`` says (float32), or None where it has no signal.

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
    how
        Percentiles of this image, fixed intensities, or neither (unchanged but for the type).
    unit
        Where the image comes from, for the log.
    channels
        The last axis holds several input channels: each is normalised on its
        own (a channel without signal becomes 0; None only where none has
        any), or all together where ``how.jointly``.
    """
    from csbdeep.utils import normalize_mi_ma

    if channels and not how.jointly:
        parts = [normalise(image[..., c], how.channel(c), unit=unit) for c in range(image.shape[-1])]
        if all(part is None for part in parts):
            return None
        return np.stack([np.zeros(image.shape[:-1], np.float32) if part is None else part for part in parts], -1)
    if how.pending:
        raise ValueError('NORMALIZE="time series": compute its intensities first (series_intensities)')
    place = where(unit) if unit is not None else "image"
    bad = None
    if image.dtype.kind in "fc":
        finite = np.isfinite(image)
        if not finite.all():
            bad = ~finite
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            if unit is not None and image.ndim == 3:
                first = (unit.first + first[0], *first[1:])
            log.warning("%s: %d NaN or Inf pixel(s), the first at %s (%s); normalised over the finite pixels "
                        "and set to 0", place, int(bad.sum()), first, "z, y, x" if image.ndim == 3 else "y, x")
            if not finite.any():
                log.info("%s: no finite pixel, no nuclei", place)
                return None
    values = image if bad is None else image[~bad]
    if not _has_signal(values):
        log.info("%s: no signal (min %s, max %s), no nuclei", place, values.min(), values.max())
        return None
    if how.intensities is not None:
        out = normalize_mi_ma(image, *how.intensities)
    elif how.percentiles is not None:
        out = normalize_mi_ma(image, *unit_percentiles(np.moveaxis(values, -1, 0) if channels and bad is None
                                                       else values, how.percentiles))
    else:
        out = image.astype(np.float32)
    if bad is not None:
        out[bad] = 0
    return out


def series_intensities(how: Normalisation, read: Callable[[Unit], NDArray], units: Iterable[Unit], *,
                       channels: bool = False) -> Normalisation:
    """NORMALIZE="time series": the percentiles of all ``units`` together, as fixed intensities.

    Each unit is read once (``read`` gives it as stored; ``channels``: with
    several input channels last) and contributes a regular subsample of its
    finite values (:func:`sample`), an equal share of :data:`SERIES_VALUES`,
    so memory holds one unit and the samples.  Several channels get one pair
    of intensities each, or one for all where ``how.jointly``.  Where the whole
    series has no signal, the percentiles are of nothing: each unit is then
    found empty as it is read again.
    """
    if not how.pending:
        return how
    units = list(units)
    share = max(1, SERIES_VALUES // max(len(units), 1))
    samples: list[list[NDArray]] = []
    for unit in units:
        image = np.asarray(read(unit))
        image = np.moveaxis(image, -1, 0) if channels else image  # (C, ..., Y, X): sample() strides Y and X
        parts = list(image) if channels and not how.jointly else [image]
        samples = samples or [[] for _ in parts]
        for bucket, part in zip(samples, parts):
            values = sample(part, share // len(parts))
            if values.dtype.kind in "fc":
                values = values[np.isfinite(values)]
            bucket.append(values.reshape(-1).copy())
    found = []
    for bucket in samples:
        values = np.concatenate(bucket)
        found.append(_exact(values, how.percentiles) if values.size else (0.0, 1.0))  # type: ignore[arg-type]
        log.info('NORMALIZE="time series"%s: percentiles %g and %g of %d values sampled from %d unit(s): intensity '
                 "%.6g -> 0, %.6g -> 1 in every unit", f", channel {len(found) - 1} of the input" if len(samples) > 1
                 else "", *how.percentiles, values.size, len(units), *found[-1])  # type: ignore[misc]
    if len(found) > 1:
        return replace(how, per_channel=tuple((float(a), float(b)) for a, b in found))
    return replace(how, intensities=(float(found[0][0]), float(found[0][1])))
