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
- :func:`add_input_options`, :func:`add_scale_options`: the input options that
  the ``stardist-host`` command and the scripts share.

It imports nothing heavy, so any entry point can use it before TensorFlow loads.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
from typing import Any, Callable, Iterator

from .errors import EXIT_CANCELLED, EXIT_USER_ERROR, Cancelled, StardistHostError

__all__ = ["setup_logging", "user_errors", "stdout_to_log", "tqdm_progress", "add_input_options",
           "add_scale_options"]

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
    checking its input draws none.
    """
    bar = _LazyBar(desc, disable=disable)
    return bar.update, bar


class _LazyBar:
    """A tqdm bar that appears at its first update; log lines go above it, not through it."""

    def __init__(self, desc: str, *, disable: bool) -> None:
        self._desc, self._disable, self._bar = desc, disable, None
        self._stack = contextlib.ExitStack()

    def update(self, done: int, total: int) -> None:
        if self._disable:
            return
        if self._bar is None:
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=total, desc=self._desc, unit="step", file=sys.stderr)
            self._stack.enter_context(logging_redirect_tqdm())
        self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._stack.close()

    def __enter__(self) -> "_LazyBar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
