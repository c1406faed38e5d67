"""The console of every command and script: logging, library prints, progress bars and exit statuses.

One place decides what a user sees on a terminal:

- :func:`setup_logging`: log lines on stderr, quiet mode, library loggers and
  TensorFlow's C++ log kept down;
- :func:`stdout_to_log`: what stardist, csbdeep and Keras print goes to the log,
  so that stdout holds only the result;
- :func:`tqdm_progress`: a progress bar on stderr, drawn only once work starts
  and only on a terminal;
- :func:`user_errors`: a user error is one log line and status 2, a cancel or
  Ctrl-C the line "cancelled" and status 130;
- :func:`add_segment_arguments`, :func:`add_analysis_arguments`: the arguments
  that the ``stardist-host`` commands and the scripts share; :func:`parse_script_arguments`
  a script's command line.

It imports nothing heavy, so any entry point can use it before TensorFlow loads.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.abc
import importlib.util
import io
import logging
import os
import re
import sys
import tempfile
from typing import Any, Callable, Iterator, Mapping, Sequence

from .errors import EXIT_BROKEN_PIPE, EXIT_CANCELLED, EXIT_USER_ERROR, Cancelled, Option, StardistHostError

__all__ = ["setup_logging", "user_errors", "stdout_to_log", "tqdm_progress",
           "add_input_options", "add_segment_arguments", "add_analysis_arguments", "parse_script_arguments"]

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


def add_segment_arguments(parser: argparse.ArgumentParser, *time_point_aliases: str) -> None:
    """A segmentation of a file: its input and output, ``--time-point`` (and ``time_point_aliases``), the input
    options and those of large inputs: ``--level`` (OME-Zarr), ``--workers``, ``--scheduler`` (Dask), ``--resume``."""
    parser.add_argument("input", help="input TIFF (ImageJ hyperstack, OME-TIFF or multi-page TIFF) or OME-Zarr "
                        "image (.zarr); never modified")
    parser.add_argument("output", nargs="?", default=None,
                        help="output OME-TIFF (written only once complete): the input channels plus the label "
                             "channel; for OME-Zarr input a separate labels store (.zarr), default: labels/ in the "
                             "input store")
    parser.add_argument("--time-point", *time_point_aliases, type=int, default=0, dest="time_point", metavar="T",
                        help="the time point CURRENT_TIME_POINT=True segments, 0 for the first (default 0)")
    add_input_options(parser)
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


def add_analysis_arguments(parser: argparse.ArgumentParser) -> None:
    """An analysis of a file: its input, the folder for the results, the input options."""
    parser.add_argument("input", help="input TIFF, e.g. the output of a segmentation; never modified")
    parser.add_argument("output_folder", help="folder for the results (tables, pictures, the image with new channels)")
    add_input_options(parser)


def parse_script_arguments(parser: argparse.ArgumentParser, args: Sequence[str]) -> argparse.Namespace:
    """A script's command line parsed with ``parser`` and ``-q``; logging set up as it asks."""
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    opts = parser.parse_args(args)
    setup_logging(quiet=opts.quiet)
    return opts


def setup_logging(level: int = logging.INFO, *, quiet: bool = False) -> None:
    """Log to stderr with times, unless the host (or the caller) set logging up already.

    ``quiet`` leaves warnings and errors only: it also silences TensorFlow's C++
    log, which reads ``TF_CPP_MIN_LOG_LEVEL`` once, when TensorFlow is imported
    (so this runs first), and the Python loggers of absl and TensorFlow.
    """
    if quiet:
        level = max(level, logging.WARNING)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
            sys.meta_path.insert(0, _QuietTensorFlow())
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("stardist_host").setLevel(level)
    if level > logging.DEBUG:
        for name in _NOISY:
            logging.getLogger(name).setLevel(logging.WARNING)


#: What TensorFlow >= 2.16 writes to stderr on import whatever TF_CPP_MIN_LOG_LEVEL says: absl's preamble,
#: glog-style INFO/WARNING lines (oneDNN's "To turn them off ... TF_ENABLE_ONEDNN_OPTS=0", cpu_feature_guard)
#: and their continuation lines; older versions' "2024-01-01 12:00:00.0: I tensorflow/..." lines too.
_TF_START_UP = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} \d\d:\d\d:\d\d"
    r"|\S+ \S+: [IW] tensorflow/"
    r"|To enable the following instructions:"
    r"|To turn them off, set the environment variable"
)


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Imports TensorFlow, the first time it is asked for, with its start-up lines on stderr dropped.

    Setting ``TF_ENABLE_ONEDNN_OPTS=0`` would silence oneDNN's line but change how the
    network computes; only the lines go.
    """

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        with _stderr_filtered(_TF_START_UP):
            module = importlib.import_module(name)
        return importlib.util.spec_from_loader(name, _Imported(module), origin=getattr(module, "__file__", None))


class _Imported(importlib.abc.Loader):
    """A loader that hands back a module imported already."""

    def __init__(self, module) -> None:
        self._module = module

    def create_module(self, spec):
        return self._module

    def exec_module(self, module) -> None:
        pass


@contextlib.contextmanager
def _stderr_filtered(drop: re.Pattern) -> Iterator[None]:
    """Drop the lines matching ``drop`` that anything in this process (C++ included) writes to stderr."""
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (a windowed host): nothing is shown anyway
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(AttributeError, ValueError, OSError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().decode(errors="replace").splitlines(keepends=True)
                    if not drop.match(line)]
            if kept:
                with contextlib.suppress(AttributeError, ValueError, OSError):
                    sys.stderr.write("".join(kept))
                    sys.stderr.flush()


@contextlib.contextmanager
def user_errors(*, cli: Mapping[str, Option] | None = None) -> Iterator[None]:
    """Turn a user error into one log line and ``SystemExit(2)``, a cancel or Ctrl-C into ``SystemExit(130)``,
    standard output whose reader went away (``| head``) into a silent ``SystemExit(141)``.

    No traceback is shown for any: the message says what to change, in
    the words of a script (its settings), or with ``cli`` (settings to their
    options) in those of the command line
    (:meth:`~stardist_host.errors.StardistHostError.in_words_of`).
    """
    try:
        yield
    except (Cancelled, KeyboardInterrupt):
        log.error("cancelled")
        raise SystemExit(EXIT_CANCELLED) from None
    except StardistHostError as err:
        log.error("%s", err if cli is None else err.in_words_of(cli))
        raise SystemExit(EXIT_USER_ERROR) from None
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):  # so that Python's own flush at exit does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(EXIT_BROKEN_PIPE) from None


class _LogWriter(io.TextIOBase):
    """A text stream that sends each line to a logger (stardist, csbdeep and Keras print to stdout).

    A line redrawn with carriage returns (a text progress bar) is logged as its last state.
    """

    def __init__(self, logger: logging.Logger, level: int) -> None:
        super().__init__()
        self._log, self._level, self._line = logger, level, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._line += text
        *lines, self._line = self._line.split("\n")
        for line in lines:
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        self._emit(self._line)
        self._line = ""

    def _emit(self, line: str) -> None:
        line = line.rsplit("\r", 1)[-1].rstrip()
        if line.strip():
            self._log.log(self._level, "%s", line)


@contextlib.contextmanager
def stdout_to_log(logger: logging.Logger | None = None, *, level: int = logging.INFO) -> Iterator[None]:
    """Send what libraries print to stdout to ``logger`` (default ``stardist_host.stdout``) at ``level``.

    ``sys.stdout`` is process-wide, so prints of other threads during the block
    land in the log too; stdout is left to the result.
    """
    writer = _LogWriter(logger or logging.getLogger("stardist_host.stdout"), level)
    try:
        with contextlib.redirect_stdout(writer):
            yield
    finally:
        writer.flush()


def tqdm_progress(desc: str, *, disable: bool = False) -> tuple[Callable[[int, int], None], Any]:
    """A progress callback that drives a tqdm bar on stderr; returns (callback, bar).

    ``bar`` is a context manager to wrap the work in; the tqdm bar itself is
    created at the first call of the callback, so that a run that fails while
    checking its input draws none, and only where stderr is a terminal (or a
    notebook): a log file gets the log lines without the bar's redraws.
    """
    bar = _LazyBar(desc, disable=disable)
    return bar.update, bar


class _LazyBar(contextlib.ExitStack):
    """A tqdm bar that appears at its first update; log lines go above it, not through it."""

    def __init__(self, desc: str, *, disable: bool) -> None:
        super().__init__()
        self._desc, self._disable, self._bar = desc, disable, None

    def update(self, done: int, total: int) -> None:
        if self._disable:
            return
        if self._bar is None:
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            try:
                terminal = bool(sys.stderr.isatty())
            except (AttributeError, ValueError):  # no isatty, or a closed stream
                terminal = False
            if tqdm.__module__ != "tqdm.notebook" and not terminal:
                # a file or pipe would keep every redraw, glued onto the log lines between them
                self._disable = True
                return
            self.enter_context(logging_redirect_tqdm())
            self._bar = self.enter_context(tqdm(total=total, desc=self._desc, unit="step", file=sys.stderr))
        self._bar.total = total
        self._bar.update(done - self._bar.n)
