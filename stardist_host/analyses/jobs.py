"""The analyses as whole jobs, the same for the paste-and-edit scripts and the CLI.

Each job has one settings definition (:class:`~stardist_host.schema.Schema`:
the scripts' USER SETTINGS, the CLI options and the README tables come from
it), takes an image set and an output prefix (folder / stem), runs one
analysis and writes its files; it returns the paths written.  Jobs that add a
channel (cells, track ids) leave it in the image set; headless, the image set
is then saved as an OME-TIFF beside the tables.

Output policy, as for segmentation: every file a job will write is checked
(it must not exist unless OVERWRITE, must not be a folder, an input or in a
read-only folder) and locked before any work; leftovers of killed runs are
removed and logged.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import AnalysisError, Cancelled, SettingsError
from ..host import Cancel, ImageSet, Progress, active_imageset
from ..io.files import claim_outputs, file_stem
from ..schema import Field, Schema, raise_all
from .common import write_csv

__all__ = ["JOBS", "Job", "run_job", "run_job_on_file", "run_analysis_script"]

log = logging.getLogger(__name__)


# ----- the jobs: each takes its schema's settings as keywords ------------------------------------------------------

def measure_job(imageset: ImageSet, paths: list[Path], **settings: Any) -> list[Path]:
    """Per-nucleus measurements -> <stem>_measurements.csv."""
    from .measure import measure

    return [write_csv(measure(imageset, **settings), paths[0])]


def track_job(imageset: ImageSet, paths: list[Path], *, track_channel_name: str | None, **settings: Any) -> list[Path]:
    """Tracks -> <stem>_tracks.csv and <stem>_track_properties.csv (and a track-id channel)."""
    from .tracking import track

    result = track(imageset, output_name=track_channel_name, **settings)
    return [write_csv(result.tracks, paths[0]), write_csv(result.properties, paths[1])]


def _read_atlas_file(path: str, axes: str | None) -> tuple[np.ndarray, Any]:
    from ..io.tiff import TiffReader

    with closing(TiffReader(path, axes=axes)) as reader:
        return np.stack([reader.plane(0, 0, z) for z in range(reader.layout.sizes["Z"])]), reader.layout.voxel_size


def atlas_job(imageset: ImageSet, paths: list[Path], *, label_channel: int, atlas_channel: int | None,
              atlas_file: str | None, atlas_axes: str | None, atlas_voxel_size, region_names: str | None, voxel_size,
              ndim: int | None, current_time_point: bool) -> list[Path]:
    """Counts and densities per atlas region -> <stem>_regions.csv."""
    from .atlas import atlas_counts, read_region_names

    if (atlas_channel is None) == (atlas_file is None):
        raise AnalysisError(
            f"ATLAS_CHANNEL={atlas_channel!r}, ATLAS_FILE={atlas_file!r}: give exactly one, the atlas as a channel "
            "of the image set or as a separate TIFF file"
        )
    atlas: Any = atlas_channel
    if atlas_file is not None:
        atlas, file_voxel = _read_atlas_file(atlas_file, atlas_axes)
        atlas_voxel_size = atlas_voxel_size or file_voxel
    names = read_region_names(region_names) if region_names else None
    table = atlas_counts(imageset, label_channel, atlas, region_names=names, voxel_size=voxel_size,
                         atlas_voxel_size=atlas_voxel_size, ndim=ndim, current_time_point=current_time_point)
    return [write_csv(table, paths[0])]


def cells_job(imageset: ImageSet, paths: list[Path], *, label_channel: int, membrane_channel: int,
              max_distance_um: float, threshold: float | None, smooth_um: float, voxel_size, ndim: int | None,
              current_time_point: bool, output_ch_name: str, intensity_channels: Sequence[int]) -> list[Path]:
    """Cells grown from the nuclei (a new channel) -> <stem>_cells.csv with nucleus and cell measurements."""
    from .cells import grow_cells
    from .measure import measure

    channel = grow_cells(imageset, label_channel, membrane_channel, max_distance_um=max_distance_um,
                         threshold=threshold, smooth_um=smooth_um, voxel_size=voxel_size, ndim=ndim,
                         current_time_point=current_time_point, output_name=output_ch_name)
    table = measure(imageset, label_channel, intensity_channels=intensity_channels, cell_channel=channel,
                    voxel_size=voxel_size, ndim=ndim, current_time_point=current_time_point)
    return [write_csv(table, paths[0])]


def overlay_job(imageset: ImageSet, paths: list[Path], **settings: Any) -> list[Path]:
    """A QC picture -> <stem>_overlay_t<T>_z<Z>.png."""
    from .overlay import overlay

    return [overlay(imageset, paths[0], **settings)]


# ----- their settings ---------------------------------------------------------------------------------------------

def _file_exists(value: Any) -> str | None:
    return None if Path(value).is_file() else "this file does not exist"


def _folder_exists(value: Any) -> str | None:
    return None if Path(value).is_dir() else "this folder does not exist"


_LABEL_CHANNEL = Field("LABEL_CHANNEL", "int", help="channel with the nucleus labels a StarDist script made, "
                       "0 for the first", low=0, example=2)
_CURRENT_TIME_POINT = Field("CURRENT_TIME_POINT", "bool", False,
                            "True: the image set's current time point only; False: all")


def _channel(name: str, help: str, none: str) -> Field:
    return Field(name, "int", None, help=f"{help}, 0 for the first", low=0, none=none)


def _intensity_channels(default: tuple) -> Field:
    return Field("INTENSITY_CHANNELS", "ints", default, "channels whose intensities are measured in each nucleus",
                 low=0)


def _voxel_size(name: str = "VOXEL_SIZE", none: str = "the image set's own") -> Field:
    return Field(name, "floats", None, "voxel size (z, y, x)", unit="µm", none=none, length=3, low=0, open_low=True)


def _ndim(what: str) -> Field:
    return Field("NDIM", "choice", None, f"3: labels span Z planes (3D script); 2: {what}", choices=(2, 3),
                 none="3 where the image set has more than one plane")


def _common_tail(what: str) -> list[Field]:
    return [
        Field("OUTPUT_FOLDER", "path", None, f"folder for {what} in a host (headless: the second argument)",
              none="headless only", flag="", check=_folder_exists),
        Field("OVERWRITE", "bool", False, "replace output files that exist already"),
    ]


_PER_PLANE = "labels per plane (2D script)"
_SCHEMAS: dict[str, Schema] = {
    "measure": Schema([
        _LABEL_CHANNEL, _intensity_channels((0,)),
        _channel("CELL_CHANNEL", "channel of grown cells (cell_volumes.py)", none="no cell measurements"),
        _voxel_size(), _ndim(_PER_PLANE), _CURRENT_TIME_POINT, *_common_tail("NAME_measurements.csv"),
    ]),
    "track": Schema([
        _LABEL_CHANNEL,
        Field("MAX_DISTANCE_UM", "float", help="farthest a nucleus moves between two time points", unit="µm",
              low=0, open_low=True, example=5.0),
        Field("MAX_GAP", "int", 1, "time points a nucleus may be missing and still be linked", low=0),
        Field("DIVISIONS", "bool", True, "detect divisions (one track splitting into two)"),
        Field("TRACK_CHANNEL_NAME", "str", "Track_ids", "name of the new channel of track ids", none="no channel"),
        _voxel_size(), _ndim("single-plane images"),
        *_common_tail("NAME_tracks.csv, NAME_track_properties.csv"),
    ]),
    "atlas": Schema([
        _LABEL_CHANNEL,
        _channel("ATLAS_CHANNEL", "the atlas as a channel of this image set", none="the atlas is ATLAS_FILE"),
        Field("ATLAS_FILE", "path", None, "the atlas as a separate label TIFF file", none="the atlas is ATLAS_CHANNEL",
              check=_file_exists),
        Field("ATLAS_AXES", "str", None, 'axes of ATLAS_FILE, e.g. "ZYX"', none="as the file says"),
        _voxel_size("ATLAS_VOXEL_SIZE", "the atlas file's own, else the image's"),
        Field("REGION_NAMES", "path", None, "CSV/TSV file with columns id,name", none='regions named "region ID"',
              check=_file_exists),
        _voxel_size(), _ndim(_PER_PLANE), _CURRENT_TIME_POINT, *_common_tail("NAME_regions.csv"),
    ]),
    "cells": Schema([
        _LABEL_CHANNEL,
        Field("MEMBRANE_CHANNEL", "int", help="channel of the membrane stain, 0 for the first", low=0, example=1),
        Field("MAX_DISTANCE_UM", "float", help="farthest a cell reaches from its nucleus", unit="µm", low=0,
              open_low=True, example=10.0),
        Field("THRESHOLD", "float", None, "membrane intensity separating cells from background",
              none="computed per time point (Otsu)"),
        Field("SMOOTH_UM", "float", 1.0, "Gaussian smoothing of the membrane channel", unit="µm", low=0),
        Field("OUTPUT_CH_NAME", "str", "Cells", "name of the new channel (its labels are the nuclei's)"),
        _intensity_channels(()), _voxel_size(), _ndim("each plane alone"), _CURRENT_TIME_POINT,
        *_common_tail("NAME_cells.csv"),
    ]),
    "overlay": Schema([
        Field("IMAGE_CHANNEL", "int", help="channel shown in grey, 0 for the first", low=0, example=0),
        Field("LABEL_CHANNEL", "int", help="channel with the nucleus labels, drawn as yellow outlines", low=0,
              example=2),
        _channel("CELL_CHANNEL", "channel of grown cells, drawn as cyan outlines", none="no cell outlines"),
        _channel("TRACK_CHANNEL", "channel of track ids, written on the nuclei", none="no track ids"),
        Field("TIME_POINT", "int", 0, "time point shown, 0 for the first", low=0),
        Field("PLANE", "int", 0, "Z plane shown, 0 for the first", low=0),
        *_common_tail("NAME_overlay_tT_zZ.png"),
    ]),
}


@dataclass(frozen=True)
class Job:
    """One analysis: its settings, its function (given the paths of :attr:`tables`) and the files it writes."""

    name: str
    script: str
    help: str
    schema: Schema
    function: Callable[..., list[Path]]
    #: The files it writes for an output prefix and settings (tables and pictures).
    tables: Callable[[Path, Mapping[str, Any]], list[Path]]
    #: Whether it adds a channel to the image set, for settings.
    adds_channel: Callable[[Mapping[str, Any]], bool] = lambda settings: False


JOBS: dict[str, Job] = {
    "measure": Job("measure", "measure.py", "per-nucleus measurements (position, size, intensities) to CSV",
                   _SCHEMAS["measure"], measure_job, lambda out, s: [Path(f"{out}_measurements.csv")]),
    "track": Job("track", "track.py", "link nuclei over time into tracks (CSV, track-id channel)", _SCHEMAS["track"],
                 track_job, lambda out, s: [Path(f"{out}_tracks.csv"), Path(f"{out}_track_properties.csv")],
                 lambda s: s["track_channel_name"] is not None),
    "atlas": Job("atlas", "atlas.py", "count nuclei and densities per atlas region (CSV)", _SCHEMAS["atlas"],
                 atlas_job, lambda out, s: [Path(f"{out}_regions.csv")]),
    "cells": Job("cells", "cell_volumes.py", "grow cells from the nuclei over a membrane channel (new channel, CSV)",
                 _SCHEMAS["cells"], cells_job, lambda out, s: [Path(f"{out}_cells.csv")], lambda s: True),
    "overlay": Job("overlay", "overlay.py", "a QC picture of one plane with the outlines drawn over it (PNG)",
                   _SCHEMAS["overlay"], overlay_job,
                   lambda out, s: [Path(f"{out}_overlay_t{s['time_point']}_z{s['plane']}.png")]),
}


# ----- running them -----------------------------------------------------------------------------------------------

def _validated(job: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings with defaults filled in, or every bad one reported at once."""
    if job not in JOBS:
        raise AnalysisError(f"job={job!r}: must be one of {', '.join(JOBS)}")
    schema = JOBS[job].schema
    errors = [schema.unknown(k.upper(), v) for k, v in settings.items() if k not in schema.by_attr]
    values = {f.attr: settings.get(f.attr, f.default) for f in schema if f.attr in settings or not f.required}
    raise_all(errors + schema.errors(values))
    return values


class _Watched:
    """The image set as a job sees it: each plane read checks ``cancel`` first; progress follows the time points.

    ``progress(done, total)`` counts the time points finished: a time point is
    done when the job starts reading the next one, and all are at the end.
    """

    def __init__(self, imageset: ImageSet, total: int, *, progress: Progress | None, cancel: Cancel | None) -> None:
        self._inner, self._total, self._progress, self._cancel = imageset, total, progress, cancel
        self._seen: set[int] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def get_channeldata(self, channel: int, plane: int, time_point: int):
        if self._cancel is not None and self._cancel():
            raise Cancelled("cancelled")
        if time_point not in self._seen:
            self._seen.add(time_point)
            if self._progress is not None:
                self._progress(min(len(self._seen) - 1, self._total), self._total)
        return self._inner.get_channeldata(channel, plane, time_point)


def _remove_added(imageset: ImageSet, before: int) -> None:
    """Take away the channels a failed or cancelled job added, so that none is left half-written."""
    added = list(range(before, imageset.channel_count))
    if added and hasattr(imageset, "remove_channel"):
        for index in reversed(added):
            imageset.remove_channel(index)
    elif added:
        log.warning("channel(s) %s were added by the job that stopped and are incomplete: delete them", added)


def _run(job: str, imageset: ImageSet, out: Path, values: Mapping[str, Any], *, progress: Progress | None = None,
         cancel: Cancel | None = None) -> list[Path]:
    kwargs = {k: v for k, v in values.items() if k not in ("output_folder", "overwrite")}  # where results go
    single = values.get("current_time_point") or job == "overlay"
    total = 1 if single else imageset.time_point_count
    before = imageset.channel_count
    try:
        watched = _Watched(imageset, total, progress=progress, cancel=cancel)
        written = JOBS[job].function(watched, JOBS[job].tables(out, values), **kwargs)
    except BaseException:
        _remove_added(imageset, before)
        raise
    if progress is not None:
        progress(total, total)
    for path in written:
        log.info("wrote %s", path)
    return written


def run_job(job: str, imageset: ImageSet, output_folder: str | os.PathLike, stem: str,
            settings: Mapping[str, Any], *, progress: Progress | None = None, cancel: Cancel | None = None) -> list[Path]:
    """Check the settings and the outputs, then run ``job``; return the files written.

    Parameters
    ----------
    job
        A name in :data:`JOBS`.
    imageset
        The image set (host contract); channels the job adds stay in it.
    output_folder
        Folder for the tables and pictures.
    stem
        Prefix of the files' names.
    settings
        The job's settings by lower-case name; missing ones take their default.
    progress
        Called as ``progress(done, total)`` as time points are finished
        (:func:`~stardist_host.segmentation.segment.percent_progress` adapts a
        host's percent callback).
    cancel
        Called before each plane is read; True stops the job with
        :class:`~stardist_host.errors.Cancelled`, and channels the job added are
        removed again (where the image set has ``remove_channel``).

    Raises
    ------
    SettingsError
        Naming every unknown or bad setting.
    OutputError
        An output exists (without OVERWRITE), is a folder or cannot be written.
    Cancelled
        ``cancel()`` returned True.
    """
    values = _validated(job, settings)
    out = Path(output_folder) / stem
    with claim_outputs(JOBS[job].tables(out, values), inputs=(), overwrite=values["overwrite"]):
        return _run(job, imageset, out, values, progress=progress, cancel=cancel)


def run_job_on_file(job: str, input: str | os.PathLike, output_folder: str | os.PathLike, settings: Mapping[str, Any],
                    *, axes: str | None = None, series: int | None = None, progress: Progress | None = None,
                    cancel: Cancel | None = None) -> list[Path]:
    """Run ``job`` on a TIFF file; where it adds channels, save <input>_<job>.ome.tif beside the tables.

    Every output is checked and locked before the input is opened.
    """
    from ..io.opening import open_imageset

    values = _validated(job, {**settings, "output_folder": str(output_folder)})
    folder = Path(output_folder)
    stem = file_stem(input)
    outputs = JOBS[job].tables(folder / stem, values)
    image = folder / f"{stem}_{job}.ome.tif"
    if JOBS[job].adds_channel(values):
        outputs.append(image)
    with claim_outputs(outputs, inputs=(input,), overwrite=values["overwrite"]):
        with open_imageset(input, axes=axes, series=series, scratch_dir=folder) as imageset:
            before = imageset.channel_count
            written = _run(job, imageset, folder / stem, values, progress=progress, cancel=cancel)
            if imageset.channel_count > before:
                written.append(imageset.save(image))
    return written


def run_analysis_script(namespace: Mapping[str, Any], *, job: str, argv: Sequence[str] | None = None) -> list[Path]:
    """What an analysis script does after its USER SETTINGS block.

    In a host (no command-line arguments) it works on the active image set and
    writes into OUTPUT_FOLDER.  Headless, ``INPUT.tif OUTPUT_FOLDER`` opens the
    TIFF (e.g. the output of a segmentation script) and, where the job adds a
    channel, saves the image set as OUTPUT_FOLDER/<input>_<job>.ome.tif; a user
    error is one log line and exit status 2, Ctrl-C exits with status 130.
    """
    import argparse

    from ..console import add_analysis_arguments, parse_script_arguments, setup_logging, user_errors

    args = list(sys.argv[1:] if argv is None else argv)
    values, errors = JOBS[job].schema.from_namespace(namespace)
    if not args:
        setup_logging()
        raise_all(errors)
        if values.get("output_folder") is None:
            raise SettingsError("OUTPUT_FOLDER", None, "give the folder where the results go")
        return run_job(job, active_imageset(), values.pop("output_folder"), "stardist_host", values)

    parser = argparse.ArgumentParser(description=f"The {job} analysis on a TIFF file with this script's settings.")
    add_analysis_arguments(parser)
    opts = parse_script_arguments(parser, args)
    with user_errors():
        raise_all(errors)
        return run_job_on_file(job, opts.input, opts.output_folder, values, axes=opts.axes, series=opts.series)
