"""Objects from a label channel as files other programs open: ImageJ ROIs, QuPath GeoJSON, a 3D object table.

* :func:`write_imagej_rois`: a ZIP of ImageJ ROIs, one polygon per object per
  plane, for Fiji's ROI Manager;
* :func:`write_geojson`: a GeoJSON FeatureCollection of QuPath detections;
* :func:`object_table`: one row per 3D object (centroid, bounding box,
  volume), written by :func:`export_objects` as UTF-8 CSV.

:func:`export_objects` reads an image set's label channel one plane at a time
(``get_channeldata``) and writes any of them in one pass, so memory does not
grow with the stack.  Every file goes through
:func:`stardist_host.io.files.atomic_write`.

Coordinates: outlines are in pixel units with the origin at the top-left
*corner* of the first pixel, as ImageJ and QuPath draw them (pixel ``(x, y)``
covers ``x..x+1``, ``y..y+1``).  They follow the mask's boundary through the
midpoints between inside and outside pixel centres
(``skimage.measure.find_contours`` at level 0.5), so a polygon is slightly
smaller than the pixel squares of its object.  An object that falls into
several pieces in one plane is outlined by its largest piece; holes are not
kept.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from ..errors import AnalysisError, SettingsError, check_index
from .files import atomic_write, check_output

__all__ = [
    "FORMATS",
    "TABLE_COLUMNS",
    "outlines",
    "roi_name",
    "write_imagej_rois",
    "write_geojson",
    "object_table",
    "export_objects",
]

log = logging.getLogger(__name__)

#: Formats :func:`export_objects` writes, and the file each goes to (``{stem}`` replaced).
FORMATS = {"roi": "{stem}_rois.zip", "geojson": "{stem}.geojson", "csv": "{stem}_objects.csv"}

#: Columns of :func:`object_table`; bounding box ends are exclusive, as in ``regionprops``.
TABLE_COLUMNS = (
    "label", "time_point",
    "centroid_z", "centroid_y", "centroid_x", "centroid_z_um", "centroid_y_um", "centroid_x_um",
    "bbox_z0", "bbox_y0", "bbox_x0", "bbox_z1", "bbox_y1", "bbox_x1",
    "volume_voxels", "volume_um3",
)

#: One plane of labels: (time point, plane, (Y, X) label array), indices 0-based.
PlaneLabels = tuple[int, int, NDArray]


def outlines(labels: NDArray) -> dict[int, NDArray]:
    """The outline of every object in a 2D label array.

    Parameters
    ----------
    labels
        (Y, X) integer labels, 0 for background.

    Returns
    -------
    dict
        Label -> (N, 2) float array of ``(x, y)`` vertices in pixel-corner
        coordinates (see the module docstring), the ring not closed (the
        first vertex is not repeated).
    """
    from skimage.measure import find_contours

    labels = np.asarray(labels)
    result = {}
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        # one pixel of background around the crop, so that contours close
        mask = np.pad(labels[box] == index, 1).astype(np.float32)
        contours = find_contours(mask, 0.5, fully_connected="high", positive_orientation="high")
        ring = max(contours, key=len)[:-1]
        # crop row/col -> image corner coordinates: undo the pad (-1), add the crop origin and half a pixel
        y = ring[:, 0] + box[0].start - 0.5
        x = ring[:, 1] + box[1].start - 0.5
        result[index] = np.column_stack([x, y])
    return result


def roi_name(time_point: int, plane: int, label: int) -> str:
    """The name an object's ROI gets: ``t{t:03d}-z{z:03d}-label{n:05d}``, 0-based indices."""
    return f"t{time_point:03d}-z{plane:03d}-label{label:05d}"


class _RoiZip:
    """ImageJ ROIs added plane by plane to an open ZIP file."""

    def __init__(self, path: Path) -> None:
        self._zip = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED)
        self.count = 0

    def add(self, t: int, z: int, rings: dict[int, NDArray]) -> None:
        from roifile import ImagejRoi

        for label, xy in rings.items():
            name = roi_name(t, z, label)
            # z and t as hyperstack positions (stored 1-based), so Fiji shows each ROI on its plane
            roi = ImagejRoi.frompoints(xy, name=name, z=z, t=t)
            self._zip.writestr(f"{name}.roi", roi.tobytes())
            self.count += 1

    def close(self) -> None:
        self._zip.close()


class _GeoJson:
    """A GeoJSON FeatureCollection written feature by feature."""

    def __init__(self, path: Path, classification: str | None) -> None:
        self._file = open(path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 (closed in close())
        self._file.write('{"type": "FeatureCollection", "features": [')
        self._classification = classification
        self.count = 0

    def add(self, t: int, z: int, rings: dict[int, NDArray]) -> None:
        for label, xy in rings.items():
            ring = [[float(x), float(y)] for x, y in xy]
            ring.append(ring[0])  # GeoJSON rings are closed: the last position repeats the first
            properties = {"objectType": "detection", "label": int(label), "plane": int(z), "time_point": int(t)}
            if self._classification is not None:
                properties["classification"] = {"name": self._classification}
            geometry = {"type": "Polygon", "coordinates": [ring]}
            feature = {"type": "Feature", "geometry": geometry, "properties": properties}
            self._file.write(("\n" if self.count == 0 else ",\n") + json.dumps(feature))
            self.count += 1

    def close(self) -> None:
        self._file.write("\n]}\n")
        self._file.close()


def write_imagej_rois(path: str | os.PathLike, labels_per_plane: Iterable[PlaneLabels]) -> Path:
    """Write one ImageJ polygon ROI per object per plane to a ZIP file for Fiji's ROI Manager.

    Parameters
    ----------
    path
        The ``.zip`` file to write (replaced atomically).
    labels_per_plane
        ``(time_point, plane, labels)`` for each plane, ``labels`` a (Y, X)
        integer array; read lazily, one plane at a time.

    Returns
    -------
    Path
        ``path``.  Each ROI is named :func:`roi_name` and carries its plane
        and time point as hyperstack position (``z_position = plane + 1``,
        ``t_position = time_point + 1``; channel 0, i.e. all channels).
    """
    return _write_outlines(path, _RoiZip, labels_per_plane, "ImageJ ROIs")


def write_geojson(
    path: str | os.PathLike, labels_per_plane: Iterable[PlaneLabels], *, classification: str | None = "Nucleus"
) -> Path:
    """Write one QuPath detection per object per plane as a GeoJSON FeatureCollection.

    Parameters
    ----------
    path
        The ``.geojson`` file to write (UTF-8, replaced atomically).
    labels_per_plane
        ``(time_point, plane, labels)`` for each plane, as for :func:`write_imagej_rois`.
    classification
        The class name QuPath shows, or None for unclassified detections.

    Returns
    -------
    Path
        ``path``.  Each Feature has a Polygon geometry (one closed ring of
        ``[x, y]`` pixel coordinates) and properties ``objectType``
        ("detection"), ``label``, ``plane``, ``time_point`` and
        ``classification`` (``{"name": ...}``).
    """
    return _write_outlines(path, lambda tmp: _GeoJson(tmp, classification), labels_per_plane, "GeoJSON detections")


def _write_outlines(path: str | os.PathLike, make_writer, labels_per_plane: Iterable[PlaneLabels], what: str) -> Path:
    """Every plane's outlines through ``make_writer(temporary path)`` (``add``, ``close``, ``count``), atomically."""
    path = Path(path)
    with atomic_write(path) as tmp:
        writer = make_writer(tmp)
        try:
            for t, z, labels in labels_per_plane:
                writer.add(t, z, outlines(labels))
        finally:
            writer.close()
    log.info("%d %s written to %s", writer.count, what, path)
    return path


class _VolumeStats:
    """Per-label voxel counts, coordinate sums and bounding boxes, gathered plane by plane."""

    def __init__(self) -> None:
        self.n = np.zeros(1, np.int64)
        self.sums = np.zeros((3, 1))  # z, y, x
        self.lo = np.zeros((3, 1), np.int64)
        self.hi = np.zeros((3, 1), np.int64)

    def _grow(self, size: int) -> None:
        extra = size - len(self.n)
        if extra > 0:
            self.n = np.concatenate([self.n, np.zeros(extra, np.int64)])
            self.sums = np.concatenate([self.sums, np.zeros((3, extra))], axis=1)
            self.lo = np.concatenate([self.lo, np.full((3, extra), np.iinfo(np.int64).max)], axis=1)
            self.hi = np.concatenate([self.hi, np.zeros((3, extra), np.int64)], axis=1)

    def add(self, z: int, plane: NDArray) -> None:
        ys, xs = np.nonzero(plane)
        if not len(ys):
            return
        lab = plane[ys, xs].astype(np.intp)
        size = int(lab.max()) + 1
        self._grow(size)
        counts = np.bincount(lab, minlength=size)
        self.n[:size] += counts
        self.sums[0, :size] += counts * z
        self.sums[1, :size] += np.bincount(lab, ys, minlength=size)
        self.sums[2, :size] += np.bincount(lab, xs, minlength=size)
        boxes = ndimage.find_objects(plane)
        present = np.array([i + 1 for i, b in enumerate(boxes) if b is not None], np.intp)
        lo = np.array([[z, boxes[i - 1][0].start, boxes[i - 1][1].start] for i in present]).T
        hi = np.array([[z + 1, boxes[i - 1][0].stop, boxes[i - 1][1].stop] for i in present]).T
        # each label once per plane: plain fancy assignment is safe
        self.lo[:, present] = np.minimum(self.lo[:, present], lo)
        self.hi[:, present] = np.maximum(self.hi[:, present], hi)

    def table(self, time_point: int, voxel_size) -> dict:
        labels = np.flatnonzero(self.n[1:]) + 1
        n = self.n[labels]
        centroid = self.sums[:, labels] / n
        vs = (math.nan, math.nan, math.nan) if voxel_size is None else tuple(
            math.nan if v is None else float(v) for v in voxel_size
        )
        table = {"label": labels, "time_point": np.full(len(labels), time_point), "volume_voxels": n,
                 "volume_um3": n * (vs[0] * vs[1] * vs[2])}
        for i, axis in enumerate("zyx"):
            table.update({f"centroid_{axis}": centroid[i], f"centroid_{axis}_um": centroid[i] * vs[i],
                          f"bbox_{axis}0": self.lo[i, labels], f"bbox_{axis}1": self.hi[i, labels]})
        return {column: table[column] for column in TABLE_COLUMNS}


def object_table(
    labels: Iterable[NDArray], voxel_size: Sequence[float | None] | None, *, time_point: int = 0
) -> dict[str, NDArray]:
    """One row per 3D object of one time point: centroid, bounding box, volume.

    Parameters
    ----------
    labels
        The (Y, X) label planes of one time point in Z order (a (Z, Y, X)
        array will do); read one at a time.
    voxel_size
        ``(z, y, x)`` in µm, ``z`` None where unknown, or None.  Micrometre
        columns whose axis is unknown are NaN (empty cells in the CSV).
    time_point
        Written into the ``time_point`` column.

    Returns
    -------
    dict
        Column name -> 1D array, columns :data:`TABLE_COLUMNS`, rows in label
        order.  Centroids are in pixel indices (pixel centres at whole
        numbers) and in µm; bounding boxes ``[z0, z1)`` etc.; volumes in
        voxels and µm³.
    """
    stats = _VolumeStats()
    for z, plane in enumerate(labels):
        stats.add(z, np.asarray(plane))
    return stats.table(time_point, voxel_size)


def _write_table(path: Path, tables: Iterable[dict[str, NDArray]]) -> None:
    """Object tables (one per time point) as one UTF-8 CSV file."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TABLE_COLUMNS)
        for table in tables:
            for i in range(len(table["label"])):
                writer.writerow([_cell(table[c][i]) for c in TABLE_COLUMNS])


def _cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _check_export(imageset, label_channel, out_dir, stem, formats, ndim, time_points) -> tuple[int, tuple, list]:
    """Every argument of :func:`export_objects` checked, before anything is read or written."""
    channel = check_index("LABEL_CHANNEL", label_channel, imageset.channel_count, names=imageset.channel_names)
    if isinstance(formats, str) or not formats or any(f not in FORMATS for f in formats):
        raise SettingsError("FORMATS", formats, f"must be a non-empty list of {', '.join(map(repr, FORMATS))}")
    if ndim not in (2, 3):
        raise SettingsError("NDIM", ndim, "must be 2 (labels per plane) or 3 (labels per volume)")
    if "csv" in formats and ndim != 3:
        raise SettingsError("FORMATS", formats, "'csv' (the 3D object table) needs NDIM=3")
    if not isinstance(stem, str) or not stem.strip() or any(s in stem for s in "/\\:"):
        raise SettingsError("STEM", stem, "must be a file name without folder, e.g. 'cells'")
    if not Path(out_dir).is_dir():
        raise SettingsError("OUT_DIR", str(out_dir), "must be an existing folder")
    n_t = imageset.time_point_count
    chosen = list(range(n_t)) if time_points is None else [
        check_index("TIME_POINTS", t, n_t, noun="time points") for t in time_points
    ]
    if not chosen:
        raise SettingsError("TIME_POINTS", time_points, "must list at least one time point, or be None for all")
    first = np.asarray(imageset.get_channeldata(channel, 0, chosen[0]))
    if first.dtype.kind not in "ui":
        raise AnalysisError(
            f"LABEL_CHANNEL={channel}: channel {imageset.channel_names[channel]!r} holds {first.dtype} values, "
            "not labels (whole numbers); choose the channel segmentation wrote"
        )
    return channel, tuple(dict.fromkeys(formats)), chosen


def export_objects(
    imageset, *, label_channel: int, out_dir: str | os.PathLike, stem: str,
    formats: Sequence[str] = ("roi", "geojson"), ndim: int = 2, time_points: Sequence[int] | None = None,
    classification: str | None = "Nucleus", overwrite: bool = False,
) -> dict[str, Path]:
    """Write the objects of an image set's label channel as ROI, GeoJSON and/or table files.

    The label channel is read once, one plane at a time; all requested files
    are written in that one pass.

    Parameters
    ----------
    imageset
        Any object that fulfils the host contract.
    label_channel
        The channel that holds the labels (what segmentation wrote).
    out_dir
        Existing folder for the files.
    stem
        Start of the file names: ``{stem}_rois.zip``, ``{stem}.geojson``, ``{stem}_objects.csv``.
    formats
        Any of "roi" (ImageJ ROI ZIP), "geojson" (QuPath) and "csv" (3D
        object table, needs ``ndim=3``).
    ndim
        2 where labels stand alone in each plane, 3 where a label continues
        across the planes of a time point (ROIs and detections are per plane
        either way).
    time_points
        Time points to export; None for all.
    classification
        Class name of the GeoJSON detections; None for none.
    overwrite
        Whether existing files may be replaced.

    Returns
    -------
    dict
        Format -> the path written, in the order of ``formats``.

    Raises
    ------
    SettingsError
        A bad argument (named as the setting it will be), before anything is written.
    AnalysisError
        The label channel does not hold whole numbers.
    OutputError
        A file exists (without ``overwrite``) or the folder cannot be written.
    """
    channel, formats, chosen = _check_export(imageset, label_channel, out_dir, stem, formats, ndim, time_points)
    paths = {f: Path(out_dir) / FORMATS[f].format(stem=stem) for f in formats}
    for path in paths.values():
        check_output(path, overwrite=overwrite)
    voxel_size = getattr(imageset, "voxel_size", None)
    if "csv" in formats and (voxel_size is None or voxel_size[0] is None):
        log.info("voxel size %s: the table's µm columns without a known size are left empty", voxel_size)
    with contextlib.ExitStack() as stack:
        temps = {f: stack.enter_context(atomic_write(p)) for f, p in paths.items()}
        writers = []
        if "roi" in temps:
            writers.append(_RoiZip(temps["roi"]))
        if "geojson" in temps:
            writers.append(_GeoJson(temps["geojson"], classification))
        # closed (and so complete) before atomic_write's exit fsyncs and replaces
        for writer in writers:
            stack.callback(writer.close)
        tables = []
        for t in chosen:
            stats = _VolumeStats()
            for z in range(imageset.plane_count):
                plane = np.asarray(imageset.get_channeldata(channel, z, t))
                if writers:
                    rings = outlines(plane)
                    for writer in writers:
                        writer.add(t, z, rings)
                if "csv" in temps:
                    stats.add(z, plane)
            if "csv" in temps:
                tables.append(stats.table(t, voxel_size))
        if "csv" in temps:
            _write_table(temps["csv"], tables)
    log.info("objects of channel %d written: %s", channel, ", ".join(str(p) for p in paths.values()))
    return paths
