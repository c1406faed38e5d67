"""Counting nuclei per atlas region: counts, region volumes (areas), densities and fractions.

:func:`count_regions` is the pure part (centroids and an atlas in, rows out);
:func:`atlas_counts` reads the image set one time point at a time.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..host import ImageSet
from .common import (AnalysisError, Table, check_channel, check_labels, objects_ndim, read_labels, resolve_voxel_size,
                     time_points)

__all__ = ["atlas_counts", "count_regions", "region_sizes", "read_region_names", "ATLAS_COLUMNS", "ATLAS_COLUMNS_2D"]

log = logging.getLogger(__name__)

ATLAS_COLUMNS = ("time_point", "region_id", "region_name", "count", "region_volume_um3", "region_volume_mm3",
                 "density_per_mm3", "fraction")
#: The columns for a single plane or per-plane labels (NDIM=2): region sizes are areas summed over the planes.
ATLAS_COLUMNS_2D = ("time_point", "region_id", "region_name", "count", "region_area_um2", "region_area_mm2",
                    "density_per_mm2", "fraction")


def read_region_names(path: str | os.PathLike) -> dict[int, str]:
    """A table of region ids and names: CSV or TSV with columns id and name (a header row is optional).

    The file is read as UTF-8 (with or without a byte-order mark); a tab in the
    first line makes it TSV.

    Raises
    ------
    AnalysisError
        The file does not exist or holds no ``id,name`` rows.
    """
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"REGION_NAMES={str(path)!r}: the file does not exist")
    text = path.read_text(encoding="utf-8-sig")
    dialect = csv.excel_tab if "\t" in text.partition("\n")[0] else csv.excel
    names = {int(row[0]): row[1].strip() for row in csv.reader(text.splitlines(), dialect)
             if len(row) >= 2 and row[0].strip().lstrip("-").isdigit()}  # not a header or blank line
    if not names:
        raise AnalysisError(f"REGION_NAMES={str(path)!r}: no rows of the form 'id,name' found")
    return names


def count_regions(
    centroids_px: NDArray,
    regions: NDArray,
    scale: NDArray,
    sizes: dict[int, float],
    *,
    ndim: int,
    names: dict[int, str] | None = None,
    time_point: int = 0,
) -> Table:
    """Count objects per atlas region by the region at each centroid.

    Parameters
    ----------
    centroids_px
        (N, 3) object centroids in image pixels (z, y, x).
    regions
        (Z, Y, X) atlas labels; 0 is outside every region.
    scale
        Image pixels to atlas pixels, per axis.
    sizes
        Region id -> volume in µm³ (``ndim`` 3) or area in µm² (``ndim`` 2), see :func:`region_sizes`.
    ndim
        3: volumes and densities per mm³; 2: areas and densities per mm².
    names
        Region id -> name; others are called "region <id>", 0 "outside".
    time_point
        Written into the rows.

    Returns
    -------
    Table
        :data:`ATLAS_COLUMNS` (``ndim`` 3) or :data:`ATLAS_COLUMNS_2D` rows for
        region 0 and every region of ``sizes`` or with objects, in id order.
    """
    idx = np.clip(np.floor((np.asarray(centroids_px).reshape(-1, 3) + 0.5) * scale).astype(int), 0,
                  np.asarray(regions.shape) - 1)
    hit = regions[tuple(idx.T)]
    found, counts = np.unique(hit, return_counts=True)
    count_of = dict(zip(found.tolist(), counts.tolist()))
    to_mm = 1e-6 if ndim == 2 else 1e-9
    rows = []
    for region in sorted(set(sizes) | set(count_of) | {0}):
        size, count = sizes.get(region, 0.0), count_of.get(region, 0)
        name = "outside" if region == 0 else (names or {}).get(region, f"region {region}")
        rows.append((time_point, region, name, count, size, size * to_mm,
                     count / (size * to_mm) if size else math.nan, count / len(hit) if len(hit) else math.nan))
    columns = ATLAS_COLUMNS if ndim == 3 else ATLAS_COLUMNS_2D
    return {c: np.asarray(v) for c, v in zip(columns, zip(*rows))}


def region_sizes(regions: NDArray, atlas_voxel: NDArray, *, ndim: int, planes: NDArray | None = None) -> dict[int, float]:
    """Region id -> volume in µm³ (``ndim`` 3), or area in µm² summed over the image's planes (``ndim`` 2).

    ``planes`` gives, for each image plane, its atlas plane (``ndim`` 2 only;
    None: the atlas planes themselves).
    """
    if ndim == 3:
        ids, n = np.unique(regions, return_counts=True)
        return dict(zip(ids.tolist(), (n * float(np.prod(atlas_voxel))).tolist()))
    pixel = float(atlas_voxel[1] * atlas_voxel[2])
    total: dict[int, float] = {}
    for z in (range(len(regions)) if planes is None else planes):
        ids, n = np.unique(regions[z], return_counts=True)
        for i, k in zip(ids.tolist(), n.tolist()):
            total[i] = total.get(i, 0.0) + k * pixel
    return total


def _atlas_source(imageset: ImageSet, atlas, shape: tuple[int, int, int]):
    """(reader of the atlas at time point t, atlas shape) from a channel index or an array."""
    if isinstance(atlas, (int, np.integer)) and not isinstance(atlas, bool):
        channel = check_channel(imageset, atlas, "ATLAS_CHANNEL")
        return (lambda t: read_labels(imageset, channel, t, "ATLAS_CHANNEL")), shape
    atlas = np.asarray(atlas)
    if atlas.ndim == 2:
        atlas = atlas[None]
    if atlas.ndim != 3 or atlas.dtype.kind not in "uif":
        raise AnalysisError(f"ATLAS: an atlas is an integer label image (Z, Y, X) or (Y, X); got {atlas.dtype} of shape {atlas.shape}")
    atlas = check_labels(atlas, "ATLAS")
    return (lambda t: atlas), atlas.shape


def _match(imageset: ImageSet, shape, atlas_shape, voxel, atlas_voxel_size) -> tuple[NDArray, NDArray]:
    """(image pixels -> atlas pixels per axis, atlas voxel size with z NaN where unknown), checking the cover."""
    if atlas_voxel_size is None:
        if tuple(atlas_shape) != tuple(shape):
            raise AnalysisError(
                f"the atlas has shape {tuple(atlas_shape)} but the image {tuple(shape)}: give ATLAS_VOXEL_SIZE so that "
                "the two can be matched by their physical size"
            )
        return np.ones(3), np.array(voxel, float)  # None -> NaN
    a_voxel = resolve_voxel_size(imageset, atlas_voxel_size, "ATLAS_VOXEL_SIZE", need_z=False)
    axes = [0, 1, 2] if voxel[0] is not None and a_voxel[0] is not None else [1, 2]
    if len(axes) == 2 and atlas_shape[0] != shape[0]:
        raise AnalysisError(
            f"VOXEL_SIZE={tuple(voxel)!r}, ATLAS_VOXEL_SIZE={tuple(a_voxel)!r}: matching an atlas of {atlas_shape[0]} "
            f"plane(s) to an image of {shape[0]} needs both Z spacings; give them as (z, y, x) in µm"
        )
    image_extent = np.array([shape[a] * voxel[a] for a in axes])
    atlas_extent = np.array([atlas_shape[a] * a_voxel[a] for a in axes])
    tolerance = np.array([max(voxel[a], a_voxel[a]) for a in axes]) + 1e-9
    if np.any(np.abs(image_extent - atlas_extent) > tolerance):
        raise AnalysisError(
            f"the atlas (shape {tuple(atlas_shape)}, voxel size {tuple(a_voxel)} µm, extent "
            f"{tuple(np.round(atlas_extent, 2))} µm) cannot be matched to the image (shape {tuple(shape)}, voxel size "
            f"{tuple(voxel)} µm, extent {tuple(np.round(image_extent, 2))} µm): give an atlas of the same shape, or "
            "ATLAS_VOXEL_SIZE so that both cover the same volume"
        )
    scale = np.ones(3)
    scale[axes] = [voxel[a] / a_voxel[a] for a in axes]
    return scale, np.array(a_voxel, float)


def _centroids(labels: NDArray, ndim: int) -> NDArray:
    """(N, 3) centroids in pixels: of 3D objects, or of each plane's objects on their own (``ndim`` 2)."""
    from skimage.measure import regionprops

    if ndim == 3:
        return np.array([r.centroid for r in regionprops(labels)]).reshape(-1, 3)
    centroids = [(z, *r.centroid) for z, plane in enumerate(labels) for r in regionprops(plane)]
    return np.array(centroids, float).reshape(-1, 3)


def atlas_counts(
    imageset: ImageSet,
    label_channel: int,
    atlas: int | NDArray,
    *,
    region_names: dict[int, str] | None = None,
    voxel_size: tuple[float | None, float, float] | None = None,
    atlas_voxel_size: tuple[float | None, float, float] | None = None,
    ndim: int | None = None,
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
        VOXEL_SIZE of the image in µm; None uses the image set's.  z may be
        None (unknown) for 2D objects on an atlas of the image's planes.
    atlas_voxel_size
        ATLAS_VOXEL_SIZE in µm where the atlas has another grid; None: the
        image's (the atlas must then have the image's shape).
    ndim
        NDIM: 3 where labels span Z planes (one nucleus, one label in the
        stack); 2 where labels restart in each plane, so each plane's objects
        count on their own; None: 3 where the image set has several planes.
    current_time_point
        Only the image set's current time point.

    Returns
    -------
    Table
        :data:`ATLAS_COLUMNS` (volumes, per mm³) for 3D objects;
        :data:`ATLAS_COLUMNS_2D` (areas summed over the planes, per mm²) for a
        single plane or ``ndim`` 2.

    Raises
    ------
    AnalysisError
        A bad channel, an atlas or label channel that holds no labels, an atlas
        that does not cover the image, or a voxel size that is missing.
    """
    label_channel = check_channel(imageset, label_channel, "LABEL_CHANNEL")
    ndim = objects_ndim(imageset, ndim)
    voxel = resolve_voxel_size(imageset, voxel_size, need_z=ndim == 3)
    shape = (imageset.plane_count, *imageset.plane_shape)
    read_atlas, atlas_shape = _atlas_source(imageset, atlas, shape)
    scale, a_voxel = _match(imageset, shape, atlas_shape, voxel, atlas_voxel_size)
    if ndim == 3 and math.isnan(a_voxel[0]):
        raise AnalysisError(f"ATLAS_VOXEL_SIZE={atlas_voxel_size!r}: region volumes need the atlas's Z spacing")
    planes = np.clip(np.floor((np.arange(shape[0]) + 0.5) * scale[0]).astype(int), 0, atlas_shape[0] - 1)
    tables = []
    for t in time_points(imageset, current_time_point):
        regions = read_atlas(t)
        labels = read_labels(imageset, label_channel, t)
        sizes = region_sizes(regions, a_voxel, ndim=ndim, planes=planes)
        tables.append(count_regions(_centroids(labels, ndim), regions, scale, sizes, ndim=ndim, names=region_names,
                                    time_point=t))
    table = {c: np.concatenate([tb[c] for tb in tables]) for c in tables[0]}
    log.info("counted nuclei in %d region(s)", len(set(table["region_id"].tolist())) - 1)
    return table
