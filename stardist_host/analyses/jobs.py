"""The analyses as whole jobs, the same for the paste-and-edit scripts and the CLI.

Each job takes an image set, an output prefix (folder / stem) and keyword
settings named as in the scripts' USER SETTINGS blocks (lower case here),
runs one analysis and writes its files; it returns the paths written.  Jobs
that add a channel (cells, track ids) leave it in the image set; headless, the
image set is then saved as an OME-TIFF beside the tables.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..host import ImageSet, active_imageset
from .common import AnalysisError, write_csv

__all__ = ["JOBS", "run_job", "run_job_on_file", "run_analysis_script", "job_settings"]

log = logging.getLogger(__name__)


def measure_job(imageset: ImageSet, out: Path, *, label_channel: int, intensity_channels: Sequence[int] = (),
                cell_channel: int | None = None, voxel_size=None, ndim: int | None = None,
                current_time_point: bool = False) -> list[Path]:
    """Per-nucleus measurements -> <stem>_measurements.csv."""
    from .measure import measure

    table = measure(imageset, label_channel, intensity_channels=intensity_channels or (), cell_channel=cell_channel,
                    voxel_size=voxel_size, ndim=ndim, current_time_point=current_time_point)
    return [write_csv(table, f"{out}_measurements.csv")]


def track_job(imageset: ImageSet, out: Path, *, label_channel: int, max_distance_um: float, max_gap: int = 1,
              divisions: bool = False, voxel_size=None, ndim: int | None = None,
              track_channel_name: str | None = "Track_ids") -> list[Path]:
    """Tracks -> <stem>_tracks.csv and <stem>_track_properties.csv (and a track-id channel)."""
    from .tracking import track

    result = track(imageset, label_channel, max_distance_um=max_distance_um, max_gap=max_gap, divisions=divisions,
                   voxel_size=voxel_size, ndim=ndim, output_name=track_channel_name)
    return [write_csv(result.tracks, f"{out}_tracks.csv"), write_csv(result.properties, f"{out}_track_properties.csv")]


def atlas_job(imageset: ImageSet, out: Path, *, label_channel: int, atlas_channel: int | None = None,
              atlas_file: str | None = None, atlas_axes: str | None = None, atlas_voxel_size=None,
              region_names: str | None = None, voxel_size=None, current_time_point: bool = False) -> list[Path]:
    """Counts and densities per atlas region -> <stem>_regions.csv."""
    from .atlas import atlas_counts, read_region_names

    if (atlas_channel is None) == (atlas_file is None):
        raise AnalysisError(
            f"ATLAS_CHANNEL={atlas_channel!r}, ATLAS_FILE={atlas_file!r}: give exactly one, the atlas as a channel "
            "of the image set or as a separate TIFF file"
        )
    atlas: Any = atlas_channel
    if atlas_file is not None:
        from ..io.tiff import TiffReader

        reader = TiffReader(atlas_file, axes=atlas_axes)
        try:
            sizes = reader.layout.sizes
            atlas = np.stack([reader.plane(0, 0, z) for z in range(sizes["Z"])])
            atlas_voxel_size = atlas_voxel_size or reader.layout.voxel_size
        finally:
            reader.close()
    names = read_region_names(region_names) if region_names else None
    table = atlas_counts(imageset, label_channel, atlas, region_names=names, voxel_size=voxel_size,
                         atlas_voxel_size=atlas_voxel_size, current_time_point=current_time_point)
    return [write_csv(table, f"{out}_regions.csv")]


def cells_job(imageset: ImageSet, out: Path, *, label_channel: int, membrane_channel: int, max_distance_um: float,
              threshold: float | None = None, smooth_um: float = 1.0, voxel_size=None, ndim: int | None = None,
              current_time_point: bool = False, output_ch_name: str = "Cells",
              intensity_channels: Sequence[int] = ()) -> list[Path]:
    """Cells grown from the nuclei (a new channel) -> <stem>_cells.csv with nucleus and cell measurements."""
    from .cells import grow_cells
    from .measure import measure

    channel = grow_cells(imageset, label_channel, membrane_channel, max_distance_um=max_distance_um,
                         threshold=threshold, smooth_um=smooth_um, voxel_size=voxel_size, ndim=ndim,
                         current_time_point=current_time_point, output_name=output_ch_name)
    table = measure(imageset, label_channel, intensity_channels=intensity_channels or (), cell_channel=channel,
                    voxel_size=voxel_size, ndim=ndim, current_time_point=current_time_point)
    return [write_csv(table, f"{out}_cells.csv")]


def overlay_job(imageset: ImageSet, out: Path, *, image_channel: int, label_channel: int, time_point: int = 0,
                plane: int = 0, cell_channel: int | None = None, track_channel: int | None = None) -> list[Path]:
    """A QC picture -> <stem>_overlay_t<T>_z<Z>.png."""
    from .overlay import overlay

    path = Path(f"{out}_overlay_t{time_point}_z{plane}.png")
    return [overlay(imageset, path, image_channel=image_channel, label_channel=label_channel, time_point=time_point,
                    plane=plane, cell_channel=cell_channel, track_channel=track_channel)]


JOBS: dict[str, Callable[..., list[Path]]] = {
    "measure": measure_job, "track": track_job, "atlas": atlas_job, "cells": cells_job, "overlay": overlay_job,
}


def job_settings(job: str) -> dict[str, inspect.Parameter]:
    """The settings a job takes (lower case), with their defaults."""
    params = inspect.signature(JOBS[job]).parameters
    return {name: p for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def run_job(job: str, imageset: ImageSet, output_folder: str | os.PathLike, stem: str, settings: Mapping[str, Any]) -> list[Path]:
    """Check the settings' names and required values, then run ``job``; return the files written."""
    known = job_settings(job)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise AnalysisError(
            f"{unknown[0].upper()}={settings[unknown[0]]!r}: is not a setting of the {job} script; "
            f"the settings are {', '.join(k.upper() for k in known)}"
        )
    missing = [k for k, p in known.items() if p.default is inspect.Parameter.empty and settings.get(k) is None]
    if missing:
        raise AnalysisError(f"{missing[0].upper()}=None: the {job} script needs this setting")
    folder = Path(output_folder)
    if not folder.is_dir():
        raise AnalysisError(f"OUTPUT_FOLDER={str(folder)!r}: this folder does not exist")
    written = JOBS[job](imageset, folder / stem, **settings)
    for path in written:
        log.info("wrote %s", path)
    return written


def run_analysis_script(namespace: Mapping[str, Any], *, job: str, argv: Sequence[str] | None = None) -> list[Path]:
    """What an analysis script does after its USER SETTINGS block.

    In a host (no command-line arguments) it works on the active image set and
    writes into OUTPUT_FOLDER.  Headless, ``INPUT.tif OUTPUT_FOLDER`` opens the
    TIFF (e.g. the output of a segmentation script) and, where the job adds a
    channel, saves the image set as OUTPUT_FOLDER/<input>_<job>.ome.tif.
    """
    import argparse

    from ..headless import USER_ERRORS, setup_logging

    setup_logging()
    settings = {k.lower(): v for k, v in namespace.items() if k.isupper() and not k.startswith("_")}
    output_folder = settings.pop("output_folder", None)
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        imageset = active_imageset()
        if output_folder is None:
            raise AnalysisError("OUTPUT_FOLDER=None: give the folder where the tables go")
        return run_job(job, imageset, output_folder, "stardist_host", settings)

    parser = argparse.ArgumentParser(description=f"The {job} analysis on a TIFF file with this script's settings.")
    parser.add_argument("input", help="input TIFF, e.g. the output of scripts/stardist_2d.py; never modified")
    parser.add_argument("output_folder", help="folder for the tables (and the image with new channels)")
    parser.add_argument("--axes", help="axes of the input where the file does not say")
    opts = parser.parse_args(args)
    try:
        return run_job_on_file(job, opts.input, opts.output_folder, settings, axes=opts.axes)
    except (*USER_ERRORS, AnalysisError) as err:
        log.error("%s", err)
        raise SystemExit(2) from None


def run_job_on_file(job: str, input: str | os.PathLike, output_folder: str | os.PathLike, settings: Mapping[str, Any],
                    *, axes: str | None = None) -> list[Path]:
    """Run ``job`` on a TIFF file; where it adds channels, save <input>_<job>.ome.tif beside the tables."""
    from ..io.imagesets import TiffImageSet

    folder = Path(output_folder)
    with TiffImageSet(input, axes=axes, scratch_dir=folder if folder.is_dir() else None) as imageset:
        before = imageset.channel_count
        stem = Path(input).name.split(".")[0]
        written = run_job(job, imageset, folder, stem, settings)
        if imageset.channel_count > before:
            written.append(imageset.save(folder / f"{stem}_{job}.ome.tif"))
    return written
