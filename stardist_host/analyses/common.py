"""What the analyses after segmentation share: checks, reading a time point, tables as CSV.

Every analysis works on an image set through the host contract and reads one
plane (2D) or one time point's stack (3D) at a time, so memory does not grow
with the number of time points.  Tables are dicts of equally long numpy
arrays, one per column, in column order.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from numpy.typing import NDArray

from ..errors import AnalysisError, check_index
from ..host import ImageSet
from ..io.files import atomic_write

__all__ = [
    "AnalysisError", "Table", "check_channel", "check_positive", "objects_ndim", "resolve_voxel_size", "read_stack",
    "read_labels", "write_stack", "write_csv", "empty_table", "time_points", "check_labels",
    "LABEL_NEIGHBOUR_SHARE",
]

Table = dict  # column name -> 1D numpy array, all of one length
_NUMBER = (int, float, np.integer, np.floating)


def check_channel(imageset: ImageSet, channel, setting: str) -> int:
    """``channel`` as a valid channel index, or an :class:`~stardist_host.errors.IndexRangeError` naming ``setting``."""
    return check_index(setting, channel, imageset.channel_count, noun="channels", names=imageset.channel_names)


def objects_ndim(imageset: ImageSet, ndim: int | None) -> int:
    """3 where objects are 3D labels across Z planes, 2 where each plane stands alone.

    None decides from the image set: 3 where it has more than one plane.
    """
    if ndim is None:
        return 3 if imageset.plane_count > 1 else 2
    if ndim not in (2, 3):
        raise AnalysisError(f"NDIM={ndim!r}: must be 2 (labels per plane), 3 (labels per volume) or None")
    return ndim


def check_positive(value, setting: str) -> float:
    """``value`` as a positive number, or an AnalysisError naming ``setting``."""
    if isinstance(value, bool) or not isinstance(value, _NUMBER) or not value > 0:
        raise AnalysisError(f"{setting}={value!r}: must be a positive distance in µm")
    return float(value)


def resolve_voxel_size(
    imageset: ImageSet, voxel_size, setting: str = "VOXEL_SIZE", *, need_z: bool = True
) -> tuple[float | None, float, float]:
    """The given voxel size, else the image set's, else an error saying how to give one.

    Parameters
    ----------
    imageset
        The image set whose ``voxel_size`` is used where ``voxel_size`` is None.
    voxel_size
        (z, y, x) in µm, or None; z may be None where the Z spacing is unknown.
    setting
        The setting's name for messages.
    need_z
        Whether the analysis needs the Z spacing (3D objects); where it does
        not, an unknown z is returned as None.

    Raises
    ------
    AnalysisError
        No voxel size, a malformed one, or an unknown Z spacing where ``need_z``.
    """
    chosen = voxel_size if voxel_size is not None else imageset.voxel_size
    if chosen is None:
        raise AnalysisError(
            f"{setting}=None: the image set has no voxel size, and the results are in micrometres; "
            f"give {setting}=(z, y, x) in µm (e.g. (2.0, 0.5, 0.5), or (1, 1, 1) for pixel units)"
        )
    chosen = tuple(chosen)
    if len(chosen) != 3 or not all(_is_length(v) for v in chosen[1:]) or not (chosen[0] is None or _is_length(chosen[0])):
        raise AnalysisError(f"{setting}={chosen!r}: must be three positive numbers (z, y, x) in µm, z may be None")
    if chosen[0] is None and need_z:
        raise AnalysisError(
            f"{setting}={chosen!r}: the Z spacing is unknown, and 3D objects need it; "
            f"give {setting}=(z, {chosen[1]!r}, {chosen[2]!r}) with z in µm"
        )
    return (None if chosen[0] is None else float(chosen[0]), float(chosen[1]), float(chosen[2]))


def _is_length(value) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def time_points(imageset: ImageSet, current_only: bool = False) -> range:
    """The image set's current time point only, or all."""
    if current_only:
        t = imageset.current_time_point
        return range(t, t + 1)
    return range(imageset.time_point_count)


def read_stack(imageset: ImageSet, channel: int, t: int, plane: int | None = None) -> NDArray:
    """All planes of one channel and time point as (Z, Y, X), or only ``plane`` as (1, Y, X)."""
    planes = range(imageset.plane_count) if plane is None else [plane]
    return np.stack([np.asarray(imageset.get_channeldata(channel, z, t)) for z in planes])


def read_labels(imageset: ImageSet, channel: int, t: int, setting: str = "LABEL_CHANNEL",
                plane: int | None = None) -> NDArray:
    """:func:`read_stack` of a label channel through :func:`check_labels`, the channel named by ``setting``."""
    what = f"{setting}={channel} ({imageset.channel_names[channel]!r})"  # LABEL_CHANNEL=2 ('DAPI')
    return check_labels(read_stack(imageset, channel, t, plane), what)


def write_stack(imageset: ImageSet, channel: int, t: int, stack: NDArray) -> None:
    for z in range(imageset.plane_count):
        imageset.set_channeldata(channel, z, t, stack[z])


def empty_table(columns: Sequence[str]) -> Table:
    """A table with ``columns`` and no rows."""
    return {c: np.zeros(0) for c in columns}


def check_labels(array: NDArray, what: str) -> NDArray:
    """``array`` as an integer label image, or an AnalysisError saying why it is not one.

    A label image is integer-typed (or boolean), or a float image that holds
    only whole, finite numbers (cast to an unsigned integer type); labels are
    never negative.  An intensity image given by mistake is refused by its
    shape: in a label image nearly every object pixel shares its value with a
    neighbour along Y, X (and Z in a stack), because objects are areas of one
    value; in a microscope image fewer than one pixel in five does (the bundled
    samples: 8-20%, their masks: 100%).  Fewer than
    :data:`LABEL_NEIGHBOUR_SHARE` of the non-zero pixels is refused, where
    there are at least :data:`LABEL_SHAPE_MIN_PIXELS` of them.

    Parameters
    ----------
    array
        The label data of one plane or stack.
    what
        How the message names it, e.g. ``LABEL_CHANNEL=2 ('DAPI')``.
    """
    array = np.asarray(array)
    allowed = "labels are whole numbers 0 (background) and up, in an integer channel (uint8, uint16, uint32, int32)"
    kind = array.dtype.kind
    if kind == "b":
        array = array.astype(np.uint8)
    elif kind == "f":
        bad = ~np.isfinite(array) | (array != np.round(array))
        if bad.any():
            raise AnalysisError(f"{what} has dtype {array.dtype} with values that are not whole numbers "
                                f"(e.g. {array[bad].flat[0]!r}): {allowed}")
    elif kind not in "ui":
        raise AnalysisError(f"{what} has dtype {array.dtype}: {allowed}")
    if array.size and kind in "if" and array.min() < 0:
        raise AnalysisError(f"{what} holds negative values (down to {array.min()!r}): {allowed}")
    if kind == "f":
        array = array.astype(np.uint32 if array.size == 0 or array.max() <= np.iinfo(np.uint32).max else np.uint64)
    share, n = _neighbour_share(array)
    if n >= LABEL_SHAPE_MIN_PIXELS and share < LABEL_NEIGHBOUR_SHARE:
        raise AnalysisError(
            f"{what} looks like an intensity image, not labels: only {share:.0%} of its {n} non-zero pixels share "
            f"their value with a neighbour (in labels nearly all do, at least {LABEL_NEIGHBOUR_SHARE:.0%}); "
            "give the channel that segmentation wrote"
        )
    return array


#: In a label image at least this share of the non-zero pixels has a neighbour of the same value.
LABEL_NEIGHBOUR_SHARE = 0.5
#: The shape rule of :func:`check_labels` applies from this many non-zero pixels (a few tiny objects are no evidence).
LABEL_SHAPE_MIN_PIXELS = 64


def _neighbour_share(array: NDArray) -> tuple[float, int]:
    """(share of non-zero pixels with a same-valued face neighbour, number of non-zero pixels)."""
    inside = array != 0
    n = int(np.count_nonzero(inside))
    if n == 0:
        return 1.0, 0
    same = np.zeros(array.shape, bool)
    for axis in range(array.ndim):
        a, s = np.moveaxis(array, axis, 0), np.moveaxis(same, axis, 0)  # views: writing s writes same
        equal = a[1:] == a[:-1]
        s[1:] |= equal
        s[:-1] |= equal
    return float(np.count_nonzero(same & inside)) / n, n


def write_csv(table: Table, path: str | os.PathLike) -> Path:
    """Write a table as UTF-8 CSV through :func:`~stardist_host.io.files.atomic_write`.

    Floats are written in full precision (Python's shortest repr, which reads
    back to the same number), NaN as an empty cell.
    """
    path = Path(path)
    with atomic_write(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(table)
        writer.writerows([_cell(v) for v in row] for row in zip(*table.values()))
    return path


def _cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else repr(float(value))
    return str(value)
