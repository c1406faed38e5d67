"""Per-nucleus measurements: position, size, shape and intensities, one row per object and time point."""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
from numpy.typing import NDArray

from ..host import ImageSet
from .common import Table, check_channel, empty_table, objects_ndim, resolve_voxel_size, units

__all__ = ["measure", "base_columns"]

log = logging.getLogger(__name__)


def base_columns(ndim: int) -> list[str]:
    size = "area_um2" if ndim == 2 else "volume_um3"
    return [
        "label", "time_point", "plane",
        "centroid_z_px", "centroid_y_px", "centroid_x_px", "centroid_z_um", "centroid_y_um", "centroid_x_um",
        size, "equivalent_diameter_um",
        "bbox_min_z", "bbox_min_y", "bbox_min_x", "bbox_max_z", "bbox_max_y", "bbox_max_x",
    ]


def _cell_columns(ndim: int) -> list[str]:
    if ndim == 2:
        return ["cell_area_um2", "cell_perimeter_um", "cell_area_to_perimeter_um", "nucleus_to_cell_ratio"]
    return ["cell_volume_um3", "cell_surface_um2", "cell_surface_to_volume_per_um", "nucleus_to_cell_ratio"]


def _channel_keys(imageset: ImageSet, channels: Sequence[int]) -> list[str]:
    names = [imageset.channel_names[c] for c in channels]
    unique = len(set(names)) == len(names) and all(n.replace("_", "").replace(" ", "").isalnum() for n in names)
    return [n.replace(" ", "_") if unique else f"ch{c}" for n, c in zip(names, channels)]


def _surface_um2(mask: NDArray, voxel: tuple[float, float, float]) -> float:
    """Area of the surface of a 3D mask, from a marching-cubes mesh at the voxel size."""
    from skimage.measure import marching_cubes, mesh_surface_area

    padded = np.pad(mask.astype(np.float32), 1)
    verts, faces, _, _ = marching_cubes(padded, 0.5, spacing=voxel)
    return float(mesh_surface_area(verts, faces))


def measure(
    imageset: ImageSet,
    label_channel: int,
    *,
    intensity_channels: Sequence[int] = (),
    cell_channel: int | None = None,
    voxel_size: tuple[float, float, float] | None = None,
    ndim: int | None = None,
    current_time_point: bool = False,
) -> Table:
    """Measure every labelled object of every (or the current) time point.

    Parameters
    ----------
    imageset
        The image set (host contract).
    label_channel
        LABEL_CHANNEL: the channel segmentation wrote.
    intensity_channels
        INTENSITY_CHANNELS: channels whose mean, min, max and integrated
        intensity are measured in each object.
    cell_channel
        CELL_CHANNEL: a channel of cells grown from the nuclei (same labels);
        adds cell size, surface (perimeter in 2D) and the nucleus-to-cell ratio.
    voxel_size
        VOXEL_SIZE (z, y, x) in µm; None uses the image set's.
    ndim
        NDIM: 3 for labels that span Z planes (3D segmentation), 2 for labels
        per plane; None: 3 where the image set has several planes.
    current_time_point
        Only the image set's current time point.

    Returns
    -------
    Table
        Columns :func:`base_columns`, then ``mean_<channel>``, ``min_``,
        ``max_``, ``integrated_`` per intensity channel, then the cell columns.
        Bounding boxes are in pixels, the maximum exclusive; ``plane`` is -1 for 3D objects.
    """
    from skimage.measure import regionprops

    label_channel = check_channel(imageset, label_channel, "LABEL_CHANNEL")
    channels = [check_channel(imageset, c, "INTENSITY_CHANNELS") for c in intensity_channels]
    if cell_channel is not None:
        cell_channel = check_channel(imageset, cell_channel, "CELL_CHANNEL")
    ndim = objects_ndim(imageset, ndim)
    voxel = resolve_voxel_size(imageset, voxel_size)
    keys = _channel_keys(imageset, channels)
    columns = base_columns(ndim) + [f"{s}_{k}" for k in keys for s in ("mean", "min", "max", "integrated")]
    if cell_channel is not None:
        columns += _cell_columns(ndim)
    rows: dict[str, list] = {c: [] for c in columns}
    wanted = {imageset.current_time_point} if current_time_point else None
    pixel = voxel[1] * voxel[2] if ndim == 2 else math.prod(voxel)

    for t, plane, read in units(imageset, ndim):
        if wanted is not None and t not in wanted:
            continue
        labels = read(label_channel)
        if not labels.any():
            continue
        intensity = np.stack([read(c) for c in channels], axis=-1).astype(np.float64) if channels else None
        cells = read(cell_channel) if cell_channel is not None else None
        for r in regionprops(labels, intensity_image=intensity):
            cz, cy, cx = r.centroid
            if plane is not None:
                cz = float(plane)
            n_px = int(r.area)
            size = n_px * pixel
            diameter = 2 * math.sqrt(size / math.pi) if ndim == 2 else (6 * size / math.pi) ** (1 / 3)
            z0, y0, x0, z1, y1, x1 = r.bbox
            if plane is not None:
                z0, z1 = plane, plane + 1
            values = [r.label, t, -1 if plane is None else plane, cz, cy, cx, cz * voxel[0], cy * voxel[1], cx * voxel[2],
                      size, diameter, z0, y0, x0, z1, y1, x1]
            for i in range(len(channels)):
                inside = r.image_intensity[..., i][r.image]
                values += [float(inside.mean()), float(inside.min()), float(inside.max()), float(inside.sum())]
            if cells is not None:
                values += _cell_values(cells, r.label, size, ndim, voxel)
            for c, v in zip(columns, values):
                rows[c].append(v)
    if not rows["label"]:
        log.info("the label channel %d holds no objects: the table is empty", label_channel)
        return empty_table(columns)
    return {c: np.asarray(v) for c, v in rows.items()}


def _cell_values(cells: NDArray, label: int, nucleus_size: float, ndim: int, voxel) -> list[float]:
    from skimage.measure import perimeter

    mask = cells == label
    n = int(mask.sum())
    if n == 0:
        return [math.nan] * 4
    if ndim == 2:
        area = n * voxel[1] * voxel[2]
        perim = float(perimeter(mask[0])) * math.sqrt(voxel[1] * voxel[2])
        return [area, perim, area / perim if perim else math.nan, nucleus_size / area]
    idx = np.nonzero(mask)
    box = tuple(slice(i.min(), i.max() + 1) for i in idx)
    volume = n * math.prod(voxel)
    surface = _surface_um2(mask[box], voxel)
    return [volume, surface, surface / volume, nucleus_size / volume]
