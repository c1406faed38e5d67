"""Cell boundaries grown from the nuclei over a membrane channel (seeded watershed)."""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from ..host import ImageSet
from .common import (AnalysisError, check_channel, check_positive, objects_ndim, read_labels, read_stack,
                     resolve_voxel_size, time_points, write_stack)

__all__ = ["grow_cells", "grow"]

log = logging.getLogger(__name__)


def _exterior(low: NDArray) -> NDArray:
    """The below-threshold voxels that are outside the cells: components reaching the Y/X border, or large.

    Small below-threshold pockets enclosed by membrane (the middle of a big
    cell, far from its membranes) are not background.  Only the lateral
    borders count: a cell cut by the top or bottom of a stack stays a cell.
    """
    labels, n = ndimage.label(low)
    if n == 0:
        return low
    lateral = np.zeros(low.shape, bool)
    lateral[..., 0, :] = lateral[..., -1, :] = lateral[..., :, 0] = lateral[..., :, -1] = True
    outside = np.zeros(n + 1, bool)
    outside[np.unique(labels[lateral])] = True
    outside |= np.bincount(labels.ravel(), minlength=n + 1) > 0.05 * low.size
    outside[0] = False
    return outside[labels]


def _within_own_reach(cells: NDArray, nuclei: NDArray, voxel, max_distance_um: float) -> NDArray:
    """Drop the voxels of each cell that are farther than ``max_distance_um`` from its own nucleus."""
    from skimage.measure import regionprops

    for r in regionprops(cells):
        box = r.slice
        far = ndimage.distance_transform_edt(nuclei[box] != r.label, sampling=voxel) > max_distance_um
        cells[box][(cells[box] == r.label) & far] = 0
    return cells


def grow(
    nuclei: NDArray,
    membrane: NDArray,
    *,
    voxel: tuple[float, float, float],
    max_distance_um: float,
    threshold: float | None = None,
    smooth_um: float = 1.0,
) -> tuple[NDArray, float]:
    """Grow each nucleus label over the membrane intensity; return (cell labels, threshold used).

    1. The membrane image is smoothed by ``smooth_um`` and split into cells
       and background at ``threshold`` (None: Otsu's threshold).
    2. A seeded watershed floods it from the nuclei and from the background
       outside the cells at once, so cells meet on bright membranes and no cell
       can run along the outside of its neighbours.
    3. The membrane ridge itself, which the flooding leaves to the background
       where they tie, joins the cell it bounds (voxels above the threshold next
       to the cell, at the finest voxel spacing).
    4. Each cell is cut to ``max_distance_um`` from its own nucleus.

    Labels match the nuclei they grew from.
    """
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    spacing = np.asarray(voxel, float)
    smooth = ndimage.gaussian_filter(membrane.astype(np.float32), [smooth_um / v for v in spacing])
    if threshold is None:
        threshold = float(threshold_otsu(smooth)) if smooth.max() > smooth.min() else float(smooth.max())
    background = int(nuclei.max()) + 1
    markers = nuclei.astype(np.int32, copy=True)
    markers[_exterior((smooth < threshold) & (nuclei == 0))] = background
    cells = watershed(smooth, markers=markers)
    cells[cells == background] = 0
    # the ridge: one voxel along the finest axes (a Z plane only where Z is as fine as Y and X)
    footprint = ndimage.generate_binary_structure(cells.ndim, 1)
    for axis in np.flatnonzero(spacing > spacing.min() * 1.01):
        np.moveaxis(footprint, axis, 0)[[0, 2]] = False  # a view: no neighbours along this coarser axis
    grown = ndimage.grey_dilation(cells, footprint=footprint)
    ridge = (cells == 0) & (smooth >= threshold) & (grown > 0)
    cells[ridge] = grown[ridge]
    return _within_own_reach(cells, nuclei, spacing, max_distance_um), threshold


def grow_cells(
    imageset: ImageSet,
    nuclei_channel: int,
    membrane_channel: int,
    *,
    max_distance_um: float,
    threshold: float | None = None,
    smooth_um: float = 1.0,
    voxel_size: tuple[float, float, float] | None = None,
    ndim: int | None = None,
    current_time_point: bool = False,
    output_name: str = "Cells",
) -> int:
    """Grow cells from the nuclei of every (or the current) time point into a new label channel.

    Parameters
    ----------
    imageset
        The image set (host contract).
    nuclei_channel
        LABEL_CHANNEL: the nuclei labels (from segmentation).
    membrane_channel
        MEMBRANE_CHANNEL: the membrane stain.
    max_distance_um
        MAX_DISTANCE_UM: how far a cell may reach from its nucleus.
    threshold
        THRESHOLD on the smoothed membrane intensity that separates cells from
        background; None computes it (Otsu) per time point.
    smooth_um
        SMOOTH_UM: Gaussian smoothing of the membrane channel, in µm.
    voxel_size
        VOXEL_SIZE in µm; None uses the image set's.  z may be None (unknown)
        where ``ndim`` is 2.
    ndim
        NDIM: 3 grows in 3D through the stack, 2 in each plane alone.
    current_time_point
        Only the image set's current time point.
    output_name
        Name of the new channel.

    Returns
    -------
    int
        Index of the new channel; its labels equal the nuclei's (all zero
        where there are no nuclei).

    Raises
    ------
    AnalysisError
        A bad setting or channel, or a label channel that holds no labels;
        raised before the channel is added.
    """
    nuclei_channel = check_channel(imageset, nuclei_channel, "LABEL_CHANNEL")
    membrane_channel = check_channel(imageset, membrane_channel, "MEMBRANE_CHANNEL")
    max_distance_um = check_positive(max_distance_um, "MAX_DISTANCE_UM")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number))
                                  or not np.isfinite(threshold)):
        raise AnalysisError(f"THRESHOLD={threshold!r}: must be an intensity, or None to compute it")
    ndim = objects_ndim(imageset, ndim)
    voxel = resolve_voxel_size(imageset, voxel_size, need_z=ndim == 3)
    first = read_labels(imageset, nuclei_channel, time_points(imageset, current_time_point)[0])
    dtype = np.result_type(np.uint16, first.dtype)
    out = imageset.add_channel(output_name, dtype if dtype.kind == "u" else np.uint32)
    options = {"max_distance_um": max_distance_um, "threshold": threshold, "smooth_um": smooth_um}
    for t in time_points(imageset, current_time_point):
        nuclei = read_labels(imageset, nuclei_channel, t)
        membrane = read_stack(imageset, membrane_channel, t)
        if ndim == 3:
            cells, used = grow(nuclei, membrane, voxel=voxel, **options)
        else:
            # one plane at a time: the Z spacing (1.0 here) never enters, no filter or distance crosses planes
            planes = [grow(n[None], m[None], voxel=(1.0, voxel[1], voxel[2]), **options)
                      for n, m in zip(nuclei, membrane)]
            cells, used = np.concatenate([p[0] for p in planes]), planes[0][1]
        write_stack(imageset, out, t, cells)
        log.info("time point %d: %d cells grown (threshold %.1f)", t, len(np.unique(cells)) - 1, used)
    return out
