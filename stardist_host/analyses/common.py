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
from typing import Iterable, Sequence

import numpy as np
from numpy.typing import NDArray

from ..errors import AnalysisError
from ..host import ImageSet

__all__ = [
    "AnalysisError", "Table", "check_channel", "check_positive", "objects_ndim", "resolve_voxel_size", "read_stack", "write_stack",
    "units", "write_csv", "empty_table", "time_points",
]

Table = dict  # column name -> 1D numpy array, all of one length


def check_channel(imageset: ImageSet, channel, setting: str) -> int:
    """``channel`` as a valid channel index, or an AnalysisError naming ``setting``."""
    n = imageset.channel_count
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or not 0 <= channel < n:
        raise AnalysisError(f"{setting}={channel!r}: the image set has channels 0..{n - 1} ({', '.join(imageset.channel_names)})")
    return int(channel)


def objects_ndim(imageset: ImageSet, ndim: int | None) -> int:
    """3 where objects are 3D labels across Z planes, 2 where each plane stands alone.

    None decides from the image set: 3 where it has more than one plane.
    """
    if ndim is None:
        return 3 if imageset.plane_count > 1 else 2
    if ndim not in (2, 3):
        raise AnalysisError(f"NDIM={ndim!r}: must be 2 (labels per plane), 3 (labels per volume) or None")
    return ndim


def check_positive(value, setting: str, unit: str = "µm") -> float:
    """``value`` as a positive number, or an AnalysisError naming ``setting``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value > 0:
        raise AnalysisError(f"{setting}={value!r}: must be a positive distance in {unit}")
    return float(value)


def resolve_voxel_size(imageset: ImageSet, voxel_size, setting: str = "VOXEL_SIZE") -> tuple[float, float, float]:
    """The given voxel size, else the image set's, else an error saying how to give one."""
    chosen = voxel_size if voxel_size is not None else imageset.voxel_size
    if chosen is None:
        raise AnalysisError(
            f"{setting}=None: the image set has no voxel size, and the results are in micrometres; "
            f"give {setting}=(z, y, x) in µm (e.g. (2.0, 0.5, 0.5), or (1, 1, 1) for pixel units)"
        )
    if len(chosen) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and math.isfinite(v) for v in chosen):
        raise AnalysisError(f"{setting}={tuple(chosen)!r}: must be three positive numbers (z, y, x) in µm")
    return tuple(float(v) for v in chosen)


def time_points(imageset: ImageSet, current_only: bool = False) -> range:
    """The image set's current time point only, or all."""
    if current_only:
        t = imageset.current_time_point
        return range(t, t + 1)
    return range(imageset.time_point_count)


def read_stack(imageset: ImageSet, channel: int, t: int) -> NDArray:
    """All planes of one channel and time point as (Z, Y, X)."""
    return np.stack([np.asarray(imageset.get_channeldata(channel, z, t)) for z in range(imageset.plane_count)])


def write_stack(imageset: ImageSet, channel: int, t: int, stack: NDArray) -> None:
    for z in range(imageset.plane_count):
        imageset.set_channeldata(channel, z, t, stack[z])


def units(imageset: ImageSet, ndim: int) -> Iterable[tuple[int, int | None, NDArray]]:
    """Yield (t, plane or None, reader) per plane (2D) or time point (3D), reading lazily."""
    for t in range(imageset.time_point_count):
        if ndim == 3:
            yield t, None, lambda ch, t=t: read_stack(imageset, ch, t)
        else:
            for z in range(imageset.plane_count):
                yield t, z, lambda ch, t=t, z=z: np.asarray(imageset.get_channeldata(ch, z, t))[None]


def empty_table(columns: Sequence[str]) -> Table:
    return {c: np.zeros(0) for c in columns}


def write_csv(table: Table, path: str | os.PathLike) -> Path:
    """Write a table as CSV through a temporary file, so a partial file never looks complete."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    columns = list(table)
    n = len(next(iter(table.values()))) if table else 0
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i in range(n):
            writer.writerow([_cell(table[c][i]) for c in columns])
    tmp.replace(path)
    return path


def _cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)
