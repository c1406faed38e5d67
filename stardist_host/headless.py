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
import io
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .errors import (EXIT_CANCELLED, EXIT_USER_ERROR, Cancelled, NoImageSetError, OutputError, StardistHostError,
                     check_index)
from .host import active_imageset
from .io.files import check_output, claim_outputs, file_stem
from .io.objects import FORMATS as OBJECT_FILES
from .io.objects import export_objects
from .segmentation.segment import Progress, SegmentResult, run
from .segmentation.settings import Settings

__all__ = ["add_input_options", "add_scale_options", "segment_file", "run_headless", "run_script", "setup_logging",
           "user_errors", "tqdm_progress", "stdout_to_log"]

log = logging.getLogger(__name__)

#: Loggers of libraries that log progress at INFO on import or model load.
_NOISY = ("absl", "tensorflow", "h5py", "matplotlib", "PIL")


def add_input_options(parser: argparse.ArgumentParser) -> None:
    """The options that say how to read an input TIFF: ``--axes`` and ``--series``."""
    parser.add_argument("--axes", default=None,
                        help="axes of the input where the file does not say, e.g. ZYX or TZCYX")
    parser.add_argument("--series", type=int, default=None, metavar="N",
                        help="the file's image (series) to read, 0 for the first, where it holds several of "
                             "different sizes (default: all of the same size, as one image)")


def add_scale_options(parser: argparse.ArgumentParser) -> None:
    """The options of large inputs: ``--level`` (OME-Zarr), ``--workers``, ``--scheduler`` (Dask), ``--resume``."""
    parser.add_argument("--level", type=int, default=0, metavar="N",
                        help="OME-Zarr input: the resolution level to segment, 0 for the highest (default 0)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, default=None, metavar="N",
                       help="segment on a local Dask cluster of N worker processes, one plane (volume) per task "
                            '(needs pip install "stardist-host[dask]")')
    group.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="segment on the running Dask cluster whose scheduler is at ADDRESS, e.g. "
                            "tcp://10.0.0.5:8786 (a cluster of HPC jobs: dask-jobqueue)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run with the same settings, redoing only the planes "
                             "(volumes) it did not finish")


def setup_logging(level: int = logging.INFO, *, quiet: bool = False) -> None:
    """Log to stderr with times, unless the host (or the caller) set logging up already.

    ``quiet`` leaves warnings and errors only: it also silences TensorFlow's C++
    log, which reads ``TF_CPP_MIN_LOG_LEVEL`` once, when TensorFlow is imported
    (so this runs first), and the Python loggers of absl and TensorFlow.
    """
    if quiet:
        level = max(level, logging.WARNING)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("stardist_host").setLevel(level)
    if level > logging.DEBUG:
        for name in _NOISY:
            logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def user_errors(*, cli: bool = False) -> Iterator[None]:
    """Turn a user error into one log line and ``SystemExit(2)``, a cancel or Ctrl-C into ``SystemExit(130)``.

    No traceback is shown for either: the message says what to change, in
    the words of the command line (``cli``: its options) or of a script (its
    settings) where the error has both.
    """
    try:
        yield
    except (Cancelled, KeyboardInterrupt):
        log.error("cancelled")
        raise SystemExit(EXIT_CANCELLED) from None
    except StardistHostError as err:
        log.error("%s", err.command_line if cli and err.command_line else err)
        raise SystemExit(EXIT_USER_ERROR) from None


class _LogWriter(io.TextIOBase):
    """A text stream that sends each line to the log at INFO (stardist and Keras print to stdout)."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log, self._line = logger, ""

    def write(self, text: str) -> int:
        self._line += text
        *lines, self._line = self._line.split("\n")
        for line in lines:
            if line.strip():
                self._log.info("%s", line.rstrip())
        return len(text)

    def flush(self) -> None:
        if self._line.strip():
            self._log.info("%s", self._line.rstrip())
        self._line = ""


@contextlib.contextmanager
def stdout_to_log() -> Iterator[None]:
    """Send what libraries print to stdout to the log instead, so that stdout holds only the result."""
    writer = _LogWriter(logging.getLogger("stardist_host.stdout"))
    try:
        with contextlib.redirect_stdout(writer):
            yield
    finally:
        writer.flush()


def tqdm_progress(desc: str, *, disable: bool = False) -> tuple[Progress, Any]:
    """A progress callback that drives a tqdm bar on stderr; returns (callback, bar)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=0, desc=desc, unit="step", file=sys.stderr, disable=disable)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return progress, bar


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
    from tqdm.contrib.logging import logging_redirect_tqdm

    progress, bar = tqdm_progress("segmenting", disable=quiet)
    with bar, logging_redirect_tqdm(), stdout_to_log():  # log lines above the bar, not through it
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
