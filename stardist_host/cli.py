"""The ``stardist-host`` command: segment, doctor, models."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

__all__ = ["main"]

log = logging.getLogger(__name__)


def _tiles(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of whole numbers such as 2,2 or 1,2,2") from None


def _add_segment(sub) -> None:
    p = sub.add_parser(
        "segment",
        help="segment nuclei in a TIFF file into a new label channel",
        description="Segment nuclei with StarDist in one channel of a TIFF file. The output OME-TIFF holds "
        "all input channels plus the label channel; the input is never modified. Each option is the "
        "setting of the same name in the scripts' USER SETTINGS block.",
    )
    p.add_argument("input", help="input TIFF (ImageJ hyperstack, OME-TIFF or multi-page TIFF)")
    p.add_argument("output", help="output OME-TIFF (written only once complete)")
    p.add_argument("--dim", type=int, choices=(2, 3), default=2, help="2: each plane alone; 3: each Z range as a volume (default 2)")
    p.add_argument("--input-channel", type=int, default=0, help="INPUT_CHANNEL, 0 for the first (default 0)")
    p.add_argument("--output-ch-name", default="Stardist_", help="OUTPUT_CH_NAME, prefix of the new channel's name")
    p.add_argument("--model-path", default=None, help="MODEL2D_PATH / MODEL3D_PATH: folder holding model folders (default: bundled/registered)")
    p.add_argument("--model-name", default=None, help="MODEL_NAME (default 2D_demo or 3D_demo)")
    tp = p.add_mutually_exclusive_group()
    tp.add_argument("--all-time-points", action="store_true", help="CURRENT_TIME_POINT=False: segment every time point (default)")
    tp.add_argument("--time-point", type=int, default=None, metavar="T", help="CURRENT_TIME_POINT=True with time point T only")
    p.add_argument("--first-plane", type=int, default=-1, help="FIRST_PLANE, inclusive; -1: the bottom plane")
    p.add_argument("--last-plane", type=int, default=-1, help="LAST_PLANE, inclusive; -1: the top plane")
    p.add_argument("--prob-thresh", type=float, default=None, help="PROB_THRESH (default: the model's own)")
    p.add_argument("--nms-thresh", type=float, default=None, help="NMS_THRESH (default: the model's own)")
    p.add_argument("--percentile-low", type=float, default=1.0, help="PERCENTILE_LOW of normalisation (default 1)")
    p.add_argument("--percentile-high", type=float, default=99.8, help="PERCENTILE_HIGH of normalisation (default 99.8)")
    p.add_argument("--n-tiles", type=_tiles, default=None, help="N_TILES, e.g. 2,2 (default: automatic)")
    p.add_argument("--cpu", action="store_true", help="USE_GPU=False: run on the CPU even where there is a GPU")
    p.add_argument("--unique-labels", action="store_true", help="UNIQUE_LABELS: labels unique across the whole output")
    p.add_argument("--label-dtype", default="auto", help="LABEL_DTYPE: auto, uint16 or uint32")
    p.add_argument("--axes", default=None, help="axes of the input where the file does not say, e.g. ZYX")
    p.set_defaults(func=_segment)


def _segment(args) -> int:
    from .headless import segment_file, tqdm_progress
    from .settings import Settings

    settings = Settings(
        ndim=args.dim,
        input_channel=args.input_channel,
        output_ch_name=args.output_ch_name,
        model_path=args.model_path,
        model_name=args.model_name or f"{args.dim}D_demo",
        current_time_point=args.time_point is not None,
        first_plane=args.first_plane,
        last_plane=args.last_plane,
        prob_thresh=args.prob_thresh,
        nms_thresh=args.nms_thresh,
        percentile_low=args.percentile_low,
        percentile_high=args.percentile_high,
        n_tiles=args.n_tiles,
        use_gpu=not args.cpu,
        unique_labels=args.unique_labels,
        label_dtype=args.label_dtype,
    )
    progress, bar = tqdm_progress("segmenting")
    with bar:
        result = segment_file(
            settings, args.input, args.output, axes=args.axes,
            current_time_point=args.time_point or 0, progress=progress,
        )
    print(f"{args.output}: {result.summary()}")
    return 0


def _models(args) -> int:
    from .models import bundled_models, bundled_models_dir, registered_models

    for ndim in (2, 3) if args.dim is None else (args.dim,):
        print(f"{ndim}D bundled ({bundled_models_dir()}): {', '.join(bundled_models(ndim)) or 'none'}")
        print(f"{ndim}D registered (downloaded by stardist when online): {', '.join(registered_models(ndim))}")
    return 0


def _doctor(args) -> int:
    from .doctor import run_checks

    return 0 if run_checks(use_gpu=not args.cpu) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stardist-host`` console script."""
    from .headless import USER_ERRORS, setup_logging

    parser = argparse.ArgumentParser(prog="stardist-host", description="StarDist nucleus segmentation for host image sets and TIFF files.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every plane")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_segment(sub)
    d = sub.add_parser("doctor", help="check the environment: versions, GPUs, bundled models, a sample run")
    d.add_argument("--cpu", action="store_true", help="check on the CPU even where there is a GPU")
    d.set_defaults(func=_doctor)
    m = sub.add_parser("models", help="list bundled and registered model names")
    m.add_argument("--dim", type=int, choices=(2, 3), default=None, help="only 2D or 3D models")
    m.set_defaults(func=_models)
    args = parser.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        log.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
