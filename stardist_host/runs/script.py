"""What a paste-and-edit script does after its USER SETTINGS block: one call, in a host or on a file."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..console import add_segment_arguments, parse_script_arguments, setup_logging, user_errors
from ..host import active_imageset, active_imageset_or_none
from ..segmentation.segment import SegmentResult
from ..segmentation.settings import Settings
from .files import run_headless
from .local import run

__all__ = ["run_script"]

log = logging.getLogger(__name__)


def run_script(namespace: Mapping[str, Any], *, ndim: int, argv: Sequence[str] | None = None) -> SegmentResult | None:
    """What a paste-and-edit script does after its USER SETTINGS block.

    Where a host registered its image set it segments that, whatever the
    process's command line holds (a host's own, such as ``napari file.tif``;
    errors propagate to the host).  With no command-line arguments and no
    host, it logs how to run headless as one line and exits with status 2.  With
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
    imageset = active_imageset_or_none()
    if imageset is not None or not args:
        setup_logging()
        if imageset is None:
            with user_errors():  # no host, so a command line without arguments: one line and status 2
                active_imageset()
        settings = Settings.from_script(namespace, ndim=ndim)
        result = run(settings, imageset)
        log.info("%s", result.summary(cli=False))
        return result

    parser = argparse.ArgumentParser(
        prog=Path(sys.argv[0]).name or f"stardist_{ndim}d.py",
        description=f"StarDist {ndim}D on a TIFF file with the settings at the top of this script.",
    )
    add_segment_arguments(parser, "--current-time-point")
    opts = parse_script_arguments(parser, args)
    with user_errors():
        settings = Settings.from_script(namespace, ndim=ndim)
        result = run_headless(settings, opts)
    print(f"{opts.output or opts.input}: {result.summary(cli=False)}")  # as stardist-host segment, in script words
    return result
