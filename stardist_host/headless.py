"""Running a segmentation on a TIFF file instead of a host's image set, and the scripts' entry point.

Output policy: the output is checked (it must not exist unless OVERWRITE, must
not be a folder, the input or in a read-only folder) and locked before the
model loads; leftovers of killed runs beside it are removed and logged; the
file appears only once complete.  On the console, every user error
(:class:`~stardist_host.errors.StardistHostError`) is one log line and exit
status 2; a cancel or Ctrl-C is the line "cancelled" and status 130.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .console import add_input_options, add_scale_options, setup_logging, stdout_to_log, tqdm_progress, user_errors
from .errors import NoImageSetError, OutputError, check_index
from .host import active_imageset
from .io.files import check_output, claim_outputs, file_stem
from .io.objects import FORMATS as OBJECT_FILES
from .io.objects import export_objects
from .segmentation.segment import Progress, SegmentResult, run
from .segmentation.settings import Settings

__all__ = ["segment_file", "run_headless", "run_script"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def claim_tiff_output(settings: Settings, input: str | os.PathLike, out: Path) -> Iterator[str]:
    """Check and lock an output OME-TIFF and the object files EXPORT_OBJECTS adds beside it; yield their stem.

    Everything is checked before the block runs, that is before the model loads.
    """
    stem = file_stem(out)
    extras = [out.parent / OBJECT_FILES[f].format(stem=stem) for f in settings.export_objects]
    check_output(out, inputs=(input,), overwrite=settings.overwrite, suffixes=(".tif", ".tiff"))
    with claim_outputs([out, *extras], inputs=(input,), overwrite=settings.overwrite):
        yield stem


def write_tiff_output(settings: Settings, imageset, out: Path, stem: str, *, label_channel: int,
                      time_points: Sequence[int]) -> int:
    """The objects files EXPORT_OBJECTS asks for, then the OME-TIFF (all channels, or LABELS_ONLY the labels).

    Returns the index of the label channel in the OME-TIFF.
    """
    if settings.export_objects:
        export_objects(imageset, label_channel=label_channel, out_dir=out.parent, stem=stem,
                       formats=settings.export_objects, ndim=settings.ndim, time_points=list(time_points),
                       overwrite=settings.overwrite)
    imageset.save(out, labels_only=settings.labels_only)
    return imageset.saved_channels(labels_only=settings.labels_only).index(label_channel)


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
    ``resume`` go unit by unit through :mod:`stardist_host.distributed`, which
    journals finished units so that an interrupted run can be resumed.

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
    from .distributed import check_no_journal, is_omezarr, segment_distributed
    from .io.opening import open_imageset

    if is_omezarr(input) or workers is not None or scheduler is not None or resume:
        return segment_distributed(settings, input, output, level=level, axes=axes, series=series,
                                   current_time_point=current_time_point, workers=workers, scheduler=scheduler,
                                   resume=resume, progress=progress)
    if output is None:
        raise OutputError(f"{str(input)!r} is not an OME-Zarr store: give the output OME-TIFF (e.g. result.ome.tif)")
    out = Path(output)
    with claim_tiff_output(settings, input, out) as stem:
        check_no_journal(out, overwrite=settings.overwrite)
        with open_imageset(input, axes=axes, series=series, scratch_dir=out.parent) as imageset:
            check_index("--time-point", current_time_point, imageset.time_point_count, what=imageset.path.name,
                        noun="time points")
            imageset.current_time_point = current_time_point
            result = run(settings, imageset, progress=progress)
            channel = write_tiff_output(settings, imageset, out, stem, label_channel=result.channel,
                                        time_points=sorted({u.unit.time_point for u in result.units}))
    return dataclasses.replace(result, channel=channel)  # the summary names the channel of the file


def run_headless(
    settings: Settings, input: str | os.PathLike, output: str | os.PathLike | None, *, axes: str | None = None,
    series: int | None = None, current_time_point: int = 0, quiet: bool = False, level: int = 0,
    workers: int | None = None, scheduler: str | None = None, resume: bool = False,
) -> SegmentResult:
    """:func:`segment_file` with a progress bar on stderr (none when ``quiet``) and library prints in the log."""
    progress, bar = tqdm_progress("segmenting", disable=quiet)
    with bar, stdout_to_log():
        return segment_file(settings, input, output, axes=axes, series=series, current_time_point=current_time_point,
                            progress=progress, level=level, workers=workers, scheduler=scheduler, resume=resume)


def run_script(namespace: Mapping[str, Any], *, ndim: int, argv: Sequence[str] | None = None) -> SegmentResult | None:
    """What a paste-and-edit script does after its USER SETTINGS block.

    With no command-line arguments it segments the host's active image set
    (errors propagate to the host); where no host registered one, it logs
    how to run headless as one line and exits with status 2.  With
    ``INPUT.tif OUTPUT.tif`` (or ``INPUT.zarr [OUTPUT.zarr]``, and
    ``--workers``, ``--scheduler``, ``--resume`` as for ``stardist-host
    segment``) it runs headless on the file and prints the summary on stdout:
    a user error is logged as one line and the process exits with status 2;
    a Ctrl-C exits with status 130.
    """
    if namespace.get("__name__") == "__mp_main__":
        # a worker process of --workers re-imports the script as its main module: it must not run again
        return None
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        setup_logging()
        try:
            imageset = active_imageset()
        except NoImageSetError:
            with user_errors():  # no host, so a command line without arguments: one line and status 2
                raise
        settings = Settings.from_script(namespace, ndim=ndim)
        return run(settings, imageset)

    parser = argparse.ArgumentParser(
        prog=Path(sys.argv[0]).name or f"stardist_{ndim}d.py",
        description=f"StarDist {ndim}D on a TIFF file with the settings at the top of this script.",
    )
    parser.add_argument("input", help="input TIFF (ImageJ hyperstack, OME-TIFF or multi-page TIFF) or OME-Zarr "
                        "image (.zarr); never modified")
    parser.add_argument("output", nargs="?", default=None,
                        help="output OME-TIFF: the input channels plus the label channel; for OME-Zarr input a "
                             "separate labels store (.zarr), default: labels/ in the input store")
    add_input_options(parser)
    add_scale_options(parser)
    parser.add_argument("--time-point", "--current-time-point", type=int, default=0, dest="time_point",
                        help="the time point CURRENT_TIME_POINT=True segments, 0 for the first (default 0)")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    opts = parser.parse_args(args)
    setup_logging(quiet=opts.quiet)
    with user_errors():
        settings = Settings.from_script(namespace, ndim=ndim)
        result = run_headless(settings, opts.input, opts.output, axes=opts.axes, series=opts.series,
                              current_time_point=opts.time_point, quiet=opts.quiet, level=opts.level,
                              workers=opts.workers, scheduler=opts.scheduler, resume=opts.resume)
    print(f"{opts.output or opts.input}: {result.summary(cli=False)}")  # as stardist-host segment, in script words
    return result
