"""Counting nuclei per atlas region: counts, region volumes, densities and fractions."""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..host import ImageSet
from .common import AnalysisError, Table, check_channel, read_stack, resolve_voxel_size, time_points

__all__ = ["atlas_counts", "read_region_names", "ATLAS_COLUMNS"]

log = logging.getLogger(__name__)

ATLAS_COLUMNS = ("time_point", "region_id", "region_name", "count", "region_volume_um3", "region_volume_mm3",
                 "density_per_mm3", "fraction")


def read_region_names(path: str | os.PathLike) -> dict[int, str]:
    """A table of region ids and names: CSV or TSV with columns id and name (a header row is optional)."""
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"REGION_NAMES={str(path)!r}: the file does not exist")
    text = path.read_text(encoding="utf-8-sig")
    dialect = csv.excel_tab if "\t" in text.splitlines()[0] else csv.excel
    names = {}
    for row in csv.reader(text.splitlines(), dialect):
        if len(row) < 2 or not row[0].strip().lstrip("-").isdigit():
            continue  # header or blank line
        names[int(row[0])] = row[1].strip()
    if not names:
        raise AnalysisError(f"REGION_NAMES={str(path)!r}: no rows of the form 'id,name' found")
    return names


def _atlas_index(shape, atlas_shape, voxel, atlas_voxel) -> tuple[NDArray, NDArray]:
    """Scale from image micrometres to atlas voxels, checking that the atlas covers the image."""
    image_extent = np.asarray(shape) * voxel
    atlas_extent = np.asarray(atlas_shape) * atlas_voxel
    if np.any(np.abs(image_extent - atlas_extent) > np.maximum(voxel, atlas_voxel) + 1e-9):
        raise AnalysisError(
            f"the atlas (shape {tuple(atlas_shape)}, voxel size {tuple(atlas_voxel)} µm, extent "
            f"{tuple(np.round(atlas_extent, 2))} µm) cannot be matched to the image (shape {tuple(shape)}, voxel size "
            f"{tuple(voxel)} µm, extent {tuple(np.round(image_extent, 2))} µm): give an atlas of the same shape, or "
            "ATLAS_VOXEL_SIZE so that both cover the same volume"
        )
    return np.asarray(atlas_voxel), np.asarray(atlas_shape)


def atlas_counts(
    imageset: ImageSet,
    label_channel: int,
    atlas: int | NDArray,
    *,
    region_names: dict[int, str] | None = None,
    voxel_size: tuple[float, float, float] | None = None,
    atlas_voxel_size: tuple[float, float, float] | None = None,
    current_time_point: bool = False,
) -> Table:
    """Count the nuclei in each atlas region, per time point.

    Each nucleus goes to the region at its centroid. Nuclei outside every
    region are counted in region 0 ("outside"), not dropped.

    Parameters
    ----------
    imageset
        The image set (host contract).
    label_channel
        LABEL_CHANNEL: the nuclei labels.
    atlas
        ATLAS_CHANNEL (a channel index of the image set) or a label array
        (Z, Y, X) or (Y, X), e.g. read from a separate TIFF.
    region_names
        Region id -> name; regions without a name are called "region <id>".
    voxel_size
        VOXEL_SIZE of the image in µm; None uses the image set's.
    atlas_voxel_size
        ATLAS_VOXEL_SIZE in µm where the atlas has another grid; None: the
        image's (the atlas must then have the image's shape).
    current_time_point
        Only the image set's current time point.

    Returns
    -------
    Table
        :data:`ATLAS_COLUMNS`; densities are per mm³ (per mm² for a single
        plane, with region_volume_* then holding areas in µm² and mm²).
    """
    from skimage.measure import regionprops

    label_channel = check_channel(imageset, label_channel, "LABEL_CHANNEL")
    voxel = np.asarray(resolve_voxel_size(imageset, voxel_size))
    shape = (imageset.plane_count, *imageset.plane_shape)
    if isinstance(atlas, (int, np.integer)) and not isinstance(atlas, bool):
        atlas_channel = check_channel(imageset, atlas, "ATLAS_CHANNEL")
        atlas_reader = lambda t: read_stack(imageset, atlas_channel, t)  # noqa: E731
        atlas_shape = shape
    else:
        atlas = np.asarray(atlas)
        if atlas.ndim == 2:
            atlas = atlas[None]
        if atlas.ndim != 3 or atlas.dtype.kind not in "ui":
            raise AnalysisError(f"ATLAS: an atlas is an integer label image (Z, Y, X) or (Y, X); got {atlas.dtype} of shape {atlas.shape}")
        atlas_reader = lambda t: atlas  # noqa: E731
        atlas_shape = atlas.shape
    a_voxel = np.asarray(resolve_voxel_size(imageset, atlas_voxel_size, "ATLAS_VOXEL_SIZE")) if atlas_voxel_size else voxel
    if atlas_voxel_size is None and tuple(atlas_shape) != shape:
        raise AnalysisError(
            f"the atlas has shape {tuple(atlas_shape)} but the image {shape}: give ATLAS_VOXEL_SIZE so that the two "
            "can be matched by their physical size"
        )
    _atlas_index(shape, atlas_shape, voxel, a_voxel)
    planar = shape[0] == 1
    voxel_measure = float(np.prod(a_voxel[1:] if planar else a_voxel))
    to_mm = 1e-6 if planar else 1e-9

    rows = {c: [] for c in ATLAS_COLUMNS}
    names = region_names or {}
    for t in time_points(imageset, current_time_point):
        regions = atlas_reader(t)
        ids, sizes = np.unique(regions, return_counts=True)
        labels = read_stack(imageset, label_channel, t)
        centres = np.array([p.centroid for p in regionprops(labels)]).reshape(-1, 3)
        idx = np.clip(np.floor((centres + 0.5) * voxel / a_voxel).astype(int), 0, np.asarray(atlas_shape) - 1)
        hit = regions[tuple(idx.T)] if len(idx) else np.zeros(0, int)
        counts = {int(i): int(np.count_nonzero(hit == i)) for i in ids}
        for missing in set(hit.tolist()) - set(counts):
            counts[int(missing)] = int(np.count_nonzero(hit == missing))
        total = len(hit)
        size_of = dict(zip(ids.tolist(), sizes.tolist()))
        for region in sorted(set(counts) | {0}):
            volume = size_of.get(region, 0) * voxel_measure
            count = counts.get(region, 0)
            name = "outside" if region == 0 else names.get(region, f"region {region}")
            values = (t, region, name, count, volume, volume * to_mm, count / (volume * to_mm) if volume else math.nan,
                      count / total if total else math.nan)
            for c, v in zip(ATLAS_COLUMNS, values):
                rows[c].append(v)
    log.info("counted nuclei in %d region(s)", len(set(rows["region_id"])) - 1)
    return {c: np.asarray(v) for c, v in rows.items()}
