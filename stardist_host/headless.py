"""Running a segmentation on a TIFF file instead of a host's image set, and the scripts' entry point."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from .host import NoImageSetError, active_imageset
from .io.imagesets import TiffImageSet
from .io.tiff import TiffError
from .segmentation.models import ModelError
from .segmentation.segment import LabelOverflowError, Progress, SegmentResult, run
from .segmentation.settings import Settings, SettingsError
from .training.pairs import PairError

__all__ = ["segment_file", "run_script", "setup_logging", "USER_ERRORS", "tqdm_progress"]

log = logging.getLogger(__name__)

#: Errors that are the user's to fix: shown as one clear line, without a traceback.
USER_ERRORS = (SettingsError, ModelError, TiffError, PairError, NoImageSetError, LabelOverflowError, FileNotFoundError)


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr with times, unless the host (or the caller) set logging up already."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("stardist_host").setLevel(level)


def check_output_path(output: str | os.PathLike, input: str | os.PathLike) -> Path:
    """Refuse an output that would overwrite the input or cannot be created, before any work."""
    out = Path(output)
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise TiffError(f"output {str(out)!r} must end in .tif or .tiff (e.g. result.ome.tif)")
    if not out.parent.is_dir():
        raise TiffError(f"output {str(out)!r}: the folder {str(out.parent)!r} does not exist")
    if out.exists() and out.resolve() == Path(input).resolve():
        raise TiffError(f"output {str(out)!r} is the input file; the input file is never overwritten")
    return out


def tqdm_progress(desc: str) -> tuple[Progress, Any]:
    """A progress callback that drives a tqdm bar; returns (callback, bar)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=0, desc=desc, unit="step")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return progress, bar


def segment_file(
    settings: Settings,
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    axes: str | None = None,
    current_time_point: int = 0,
    progress: Progress | None = None,
) -> SegmentResult:
    """Segment a TIFF file and write its channels plus the label channel to a new OME-TIFF.

    Parameters
    ----------
    settings
        Validated settings.
    input
        The input TIFF; read lazily, never modified.
    output
        The OME-TIFF to write; it appears only once complete.
    axes
        The input's axes where the file does not say (e.g. "ZYX").
    current_time_point
        The time point CURRENT_TIME_POINT=True segments.
    progress
        Called as ``progress(done, total)`` after each plane or volume.
    """
    out = check_output_path(output, input)
    with TiffImageSet(input, axes=axes, current_time_point=current_time_point, scratch_dir=out.parent) as imageset:
        result = run(settings, imageset, progress=progress)
        imageset.save(out)
    return result


def run_script(namespace: Mapping[str, Any], *, ndim: int, argv: Sequence[str] | None = None) -> SegmentResult | None:
    """What a paste-and-edit script does after its USER SETTINGS block.

    With no command-line arguments it segments the host's active image set;
    with ``INPUT.tif OUTPUT.tif`` it runs headless on the file.  Headless, a
    user error is logged as one line and the process exits with status 2.
    """
    setup_logging()
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        settings = Settings.from_script(namespace, ndim=ndim)
        return run(settings, active_imageset())

    parser = argparse.ArgumentParser(
        prog=Path(sys.argv[0]).name or f"stardist_{ndim}d.py",
        description=f"StarDist {ndim}D on a TIFF file with the settings at the top of this script.",
    )
    parser.add_argument("input", help="input TIFF (ImageJ hyperstack, OME-TIFF or multi-page TIFF); never modified")
    parser.add_argument("output", help="output OME-TIFF: the input channels plus the label channel")
    parser.add_argument("--axes", help="axes of the input where the file does not say, e.g. ZYX or TZCYX")
    parser.add_argument("--current-time-point", type=int, default=0, help="the time point CURRENT_TIME_POINT=True means")
    opts = parser.parse_args(args)
    try:
        settings = Settings.from_script(namespace, ndim=ndim)
        progress, bar = tqdm_progress("segmenting")
        with bar:
            result = segment_file(
                settings, opts.input, opts.output, axes=opts.axes,
                current_time_point=opts.current_time_point, progress=progress,
            )
    except USER_ERRORS as err:
        log.error("%s", err)
        raise SystemExit(2) from None
    return result
