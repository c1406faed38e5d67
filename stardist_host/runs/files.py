"""A run on a file: a TIFF (or microscope) file into a new OME-TIFF, an OME-Zarr image into an NGFF label image.

Output policy: the output is checked (it must not exist unless OVERWRITE, must
not be a folder, the input or in a read-only folder) and locked before the
model loads; leftovers of killed runs beside it are removed and logged; the
file appears only once complete (:mod:`stardist_host.io.outputs`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from ..console import stdout_to_log, tqdm_progress
from ..errors import OutputError, check_index
from ..host import Progress
from ..io.opening import is_omezarr, open_imageset
from ..io.outputs import claim_tiff_output, scratch_labels_store, write_tiff_output
from ..segmentation.segment import SegmentResult
from ..segmentation.settings import Settings
from .distributed import segment_distributed
from .journal import check_no_journal
from .local import run

__all__ = ["segment_file", "run_headless"]


def segment_file(
    settings: Settings,
    input: str | os.PathLike,
    output: str | os.PathLike | None,
    *,
    axes: str | None = None,
    series: int | None = None,
    current_time_point: int = 0,
    progress: Progress | None = None,
    level: int = 0,
    workers: int | None = None,
    scheduler: str | None = None,
    resume: bool = False,
) -> SegmentResult:
    """Segment a TIFF file into a new OME-TIFF, or an OME-Zarr image into an NGFF label image.

    A TIFF input gives an OME-TIFF with its channels plus the label channel
    (or the label channel alone).  An OME-Zarr input (a ``*.zarr`` folder)
    gives the label image ``labels/<name>`` in the input store (``output``
    None or the input; its arrays are untouched) or in the separate store
    ``output`` (``*.zarr``).  OME-Zarr inputs, ``workers``, ``scheduler`` and
    ``resume`` go through a label store (:mod:`stardist_host.runs.distributed`),
    whose journal makes an interrupted run resumable; the others run on the
    opened file as on a host's image set (:func:`~stardist_host.runs.local.run`).

    Parameters
    ----------
    settings
        Validated settings; ``overwrite`` allows replacing an existing output,
        ``labels_only`` writes the label channel alone (TIFF).
    input
        The input TIFF or OME-Zarr image; read lazily, never modified.
    output
        The OME-TIFF to write (it appears only once complete), or for OME-Zarr
        input None, the input, or a separate ``*.zarr`` labels store.
    axes
        The input's axes where the file does not say (e.g. "ZYX").
    series
        The file's image to read where it holds several of different sizes.
    current_time_point
        The time point CURRENT_TIME_POINT=True segments (``--time-point``).
    progress
        Called as ``progress(done, total)`` after each plane or volume.
    level
        OME-Zarr input: the resolution level (0: highest).
    workers
        Run on a local Dask cluster of this many processes.
    scheduler
        Run on the Dask cluster whose scheduler has this address.
    resume
        Continue an interrupted run, redoing only its unfinished units.

    Returns
    -------
    SegmentResult
        For an OME-TIFF output, its ``channel`` is the label channel's index in that file.

    Raises
    ------
    OutputError
        The output exists (without OVERWRITE), an interrupted run's result is
        there (without ``resume`` or OVERWRITE), is a folder, is the input or
        cannot be written; raised before the model loads.
    OutputBusyError
        Another run writes the same output.
    IndexRangeError
        ``current_time_point`` is not a time point of the file.
    """
    if is_omezarr(input) or workers is not None or scheduler is not None or resume:
        return segment_distributed(settings, input, output, level=level, axes=axes, series=series,
                                   current_time_point=current_time_point, workers=workers, scheduler=scheduler,
                                   resume=resume, progress=progress)
    if output is None:
        raise OutputError(f"{str(input)!r} is not an OME-Zarr store: give the output OME-TIFF (e.g. result.ome.tif)")
    out = Path(output)
    with claim_tiff_output(input, out, overwrite=settings.overwrite, formats=settings.export_objects) as stem:
        check_no_journal(scratch_labels_store(out), out, overwrite=settings.overwrite)
        with open_imageset(input, axes=axes, series=series, scratch_dir=out.parent) as imageset:
            check_index("--time-point", current_time_point, imageset.time_point_count, what=imageset.path.name,
                        noun="time points")
            imageset.current_time_point = current_time_point
            result = run(settings, imageset, progress=progress)
            channel, note = write_tiff_output(imageset, out, stem, label_channel=result.channel, ndim=settings.ndim,
                                              time_points=sorted({u.unit.time_point for u in result.units}),
                                              formats=settings.export_objects, labels_only=settings.labels_only,
                                              overwrite=settings.overwrite)
    # the summary names the file's channels; the probability's follows the labels' in the image set and the file
    probability = None if result.probability_channel is None else channel + 1
    return dataclasses.replace(result, channel=channel, output_note=note, probability_channel=probability)


def run_headless(settings: Settings, args: argparse.Namespace) -> SegmentResult:
    """:func:`segment_file` with the options :func:`~stardist_host.console.add_segment_arguments` parsed into
    ``args``, a progress bar on stderr (none when ``args.quiet``) and library prints in the log."""
    progress, bar = tqdm_progress("segmenting", disable=args.quiet)
    with bar, stdout_to_log():
        return segment_file(settings, args.input, args.output, axes=args.axes, series=args.series,
                            current_time_point=args.time_point, level=args.level, workers=args.workers,
                            scheduler=args.scheduler, resume=args.resume, progress=progress)
