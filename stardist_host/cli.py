"""The ``stardist-host`` command: segment, doctor, models."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from typing import Sequence

from .console import (add_analysis_arguments, add_segment_arguments, setup_logging, stdout_to_log, tqdm_progress,
                      user_errors)
from .errors import Option, PairError, SettingsError

__all__ = ["main"]


def _list_of(convert, expected: str, *, by: str = ","):
    """An argparse type: a text of comma-separated numbers (``by`` separates them too) as a tuple."""
    def parse(text: str) -> tuple:
        try:
            return tuple(convert(v) for v in text.replace(by, ",").split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
    return parse


_tiles = _list_of(int, "a list of whole numbers such as 2,2 or 1,2,2", by="x")
_floats = _list_of(float, "a list of numbers such as 2,0.5,0.5")


#: Segmentation options whose default depends on --dim: argparse keeps None and Settings fills in the definition's.
SEGMENT_DIM_DEFAULTS = {"MODEL_NAME": {"default": None, "help": 'model folder name, or a registered name such as '
                                       '"2D_versatile_fluo"; default "2D_demo" with --dim 2, "3D_demo" with --dim 3 '
                                       "(script setting MODEL_NAME)"}}


def _add_segment(sub) -> None:
    from .segmentation.settings import schema

    p = sub.add_parser(
        "segment",
        help="segment nuclei in a TIFF file or OME-Zarr image into a new label channel",
        description="Segment nuclei with StarDist in one channel of a TIFF file or OME-Zarr image. The output "
        "OME-TIFF holds all input channels plus the label channel; OME-Zarr labels are an NGFF label image in "
        "the input store (no OUTPUT) or in a separate store. The input is never modified. Each option is the "
        "setting of the same name in the scripts' USER SETTINGS block, with the same default.",
    )
    p.add_argument("--dim", type=int, choices=(2, 3), default=2, help="2: each plane alone; 3: each Z range as a volume (default 2)")
    add_segment_arguments(p)
    # --dim is known only once parsed: take the 3D choices of EXPORT_OBJECTS (a superset); Settings checks them
    exports = schema(3).by_name["EXPORT_OBJECTS"]
    overrides = {**SEGMENT_DIM_DEFAULTS, "EXPORT_OBJECTS": {"type": exports.parse, "help": exports.cli_help()
                                                            + "; 'csv' with --dim 3 only"}}
    schema(2).add_arguments(p, overrides=overrides)
    p.set_defaults(func=_segment)


def _segment(args) -> int:
    from .runs.files import run_headless
    from .segmentation.settings import Settings, schema

    values = schema(args.dim).values_from_args(args)
    if args.dim == 2 and "csv" in (values.get("export_objects") or ()):
        # the option takes the 3D choices (--dim is known only once parsed): say so in its words
        err = SettingsError("EXPORT_OBJECTS", tuple(values["export_objects"]), "'csv' is for 3D runs")
        err.command_line = ("--export-objects csv needs --dim 3 (one row per object of a volume); "
                            "with --dim 2 give roi, geojson or roi,geojson")
        raise err
    settings = Settings(ndim=args.dim, **values)
    result = run_headless(settings, args)
    if args.resume and result.computed is not None:
        print(f"resumed: {len(result.units) - result.computed} of {len(result.units)} units were done before; "
              f"{result.computed} segmented now")
    print(f"{args.output or args.input}: {result.summary(cli=True)}")
    return 0


def _channels(text: str) -> int | tuple[int, ...]:
    """--channel: one channel (an int), or a comma list of them for a model with several input channels (a tuple)."""
    values = _list_of(int, "a channel number or a list such as 0,1")(text)
    return values if "," in text else values[0]


def _add_pair_options(p) -> None:
    p.add_argument("--images", nargs="+", required=True, help="image TIFF files")
    p.add_argument("--masks", nargs="+", required=True, help="label mask TIFF files, one per image, same order")
    p.add_argument("--dim", type=int, choices=(2, 3), default=None, help="2 or 3 (default: 3 where the files have Z planes)")
    p.add_argument("--channel", type=_channels, default=0,
                   help="image channel with the nuclei (default 0), or a list such as 0,1 for a model with several "
                   "input channels, in its order (an RGB image's colours are channels 0,1,2)")
    p.add_argument("--axes", default=None, help="axes of files that do not say, e.g. ZYX")


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a StarDist model from image/mask TIFF pairs",
        description="Train a 2D or 3D StarDist model. Losses go to losses.csv and losses.png in the model folder "
        "each epoch; the best weights (by validation loss) are kept at every epoch; --resume continues a stopped run.",
    )
    _add_pair_options(p)
    p.add_argument("--out", required=True, help="folder to hold the model folder (stardist's basedir)")
    p.add_argument("--name", required=True, help="name of the model folder")
    p.add_argument("--val-images", nargs="+", default=None, help="validation images (default: a part of --images)")
    p.add_argument("--val-masks", nargs="+", default=None, help="validation masks")
    p.add_argument("--val-fraction", type=float, default=0.15, help="fraction held out for validation (default 0.15)")
    p.add_argument("--epochs", type=int, default=100, help="epochs (default 100)")
    p.add_argument("--steps", type=int, default=100, help="steps per epoch (default 100)")
    p.add_argument("--patch-size", type=_tiles, default=None, help="training patch size, e.g. 256,256 or 48,96,96")
    p.add_argument("--rays", type=int, default=None, help="number of rays (default 32 in 2D, 96 in 3D)")
    p.add_argument("--grid", type=_tiles, default=None, help="output grid, e.g. 2,2 (default from the anisotropy)")
    p.add_argument("--batch-size", type=int, default=4, help="patches per step (default 4)")
    p.add_argument("--voxel-size", type=_floats, default=None, help="z,y,x in µm for 3D anisotropy (default: from the file)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--no-rotate-flip", action="store_true", help="no 90-degree rotations and flips in the image plane")
    p.add_argument("--no-flip-z", action="store_true", help="no flips along Z (3D)")
    p.add_argument("--no-intensity", action="store_true", help="no random intensity scale and shift")
    p.add_argument("--noise", type=float, default=0.0, help="largest std of additive noise on normalised images (default 0: off)")
    p.add_argument("--normalize-channels-jointly", action="store_true",
                   help="with several --channel: normalise them together (as stardist's H&E model), "
                   "not each on its own")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in the folder")
    p.add_argument("--resume", action="store_true", help="continue a stopped run from its last epoch")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even where there is a GPU")
    p.set_defaults(func=_train)


def _train(args) -> int:
    import shlex
    from pathlib import Path

    from .training.evaluation import format_table
    from .training.pairs import read_pairs
    from .training.train import TrainSettings, train

    if (args.val_images is None) != (args.val_masks is None):
        raise PairError("give both --val-images and --val-masks, or neither")
    pairs = read_pairs(args.images, args.masks, ndim=args.dim, channel=args.channel, axes=args.axes)
    val = None
    if args.val_images:
        val = read_pairs(args.val_images, args.val_masks, ndim=pairs.ndim, channel=args.channel, axes=args.axes)
    settings = TrainSettings(
        basedir=Path(args.out), name=args.name, epochs=args.epochs, steps_per_epoch=args.steps,
        patch_size=args.patch_size, n_rays=args.rays, grid=args.grid, batch_size=args.batch_size,
        val_fraction=args.val_fraction, seed=args.seed, rotate_flip=not args.no_rotate_flip,
        flip_z=not args.no_flip_z, intensity=not args.no_intensity, noise=args.noise, voxel_size=args.voxel_size,
        normalize_channels_jointly=args.normalize_channels_jointly, overwrite=args.overwrite, resume=args.resume,
        use_gpu=not args.cpu,
        command="stardist-host " + shlex.join(args.argv),
        data={"images": list(map(str, args.images)), "masks": list(map(str, args.masks)),
              "val_images": args.val_images, "val_masks": args.val_masks,
              "channel": list(args.channel) if isinstance(args.channel, tuple) else args.channel},
    )
    card = train(settings, pairs, val)
    print(f"{settings.folder}: {card['epochs']} epochs, best {card['best_epoch']}; validation scores:")
    print(format_table(card["validation_scores"]))
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a model on image/mask TIFF pairs (precision, recall, F1, accuracy, PQ)",
        description="Segment the images with the model and match the result to the masks at IoU 0.3, 0.5, 0.7 "
        "and 0.9 with stardist's matching functions.",
    )
    _add_pair_options(p)
    p.add_argument("--model-path", default=None, help="folder holding the model folder (default: bundled/registered)")
    p.add_argument("--model-name", required=True, help="model folder name")
    p.add_argument("--region", default=None, help="score only this crop of the last axes, e.g. ':,384:' for columns 384 on "
                   "(the model still sees the whole image)")
    p.add_argument("--prob-thresh", type=float, default=None, help="default: the model's own")
    p.add_argument("--nms-thresh", type=float, default=None, help="default: the model's own")
    p.add_argument("--out", default=None, help="write the scores to this .csv or .json file")
    p.add_argument("--save-to-card", action="store_true", help="record the scores in the model's model_card.json and README.md")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where there is a GPU")
    from .segmentation.settings import schema

    precision = schema(2).by_name["PRECISION"]
    p.add_argument("--precision", choices=precision.choices, default=precision.default,
                   help=precision.cli_help() + "; compare the scores of float32 and mixed on your own annotated data")
    _size_schema(2).add_arguments(p)  # --dim is known once parsed: the values are checked against it then
    p.set_defaults(func=_evaluate)


def _size_schema(ndim: int):
    """The physical-size settings (SCALE, MODEL_PIXEL_SIZE_UM, OBJECT_DIAMETER_UM) of a run, for ``evaluate``."""
    from .schema import Schema
    from .segmentation.settings import schema

    return Schema(schema(ndim).by_name[name] for name in ("SCALE", "MODEL_PIXEL_SIZE_UM", "OBJECT_DIAMETER_UM"))


def _evaluate(args) -> int:
    from pathlib import Path

    from .schema import raise_all
    from .segmentation.models import load_for_run, trained_jointly
    from .training.evaluation import evaluate, format_table, write_scores
    from .training.pairs import read_pairs
    from .training.train import record_test_scores

    pairs = read_pairs(args.images, args.masks, ndim=args.dim, channel=args.channel, axes=args.axes)
    sizes = _size_schema(pairs.ndim)
    values = sizes.values_from_args(args)
    raise_all(sizes.errors(values))
    model, _, precision = load_for_run(args.model_name, ndim=pairs.ndim, path=args.model_path, use_gpu=not args.cpu,
                                       precision=args.precision)
    rows, n_objects = evaluate(model, pairs, region=args.region, prob_thresh=args.prob_thresh,
                               nms_thresh=args.nms_thresh, normalize_channels_jointly=trained_jointly(model), **values)
    what = {"model": args.model_name, "images": list(map(str, args.images)), "masks": list(map(str, args.masks)),
            "region": args.region, "n_objects": n_objects, "precision": precision}
    print(f"{args.model_name} on {len(pairs.images)} sample(s), {n_objects} true objects, network in {precision}:")
    print(format_table(rows))
    if args.out:
        write_scores(rows, args.out, **what)
    if args.save_to_card:
        record_test_scores(Path(model.logdir), rows, what)
    return 0


def _add_jobs(sub) -> None:
    from .analyses.jobs import JOBS

    for name, job in JOBS.items():
        what = (job.function.__doc__ or "").strip()
        p = sub.add_parser(name, help=job.help, description=f"{job.help}. {what} Each option is the setting of "
                           f"the same name in scripts/{job.script}, with the same default.")
        add_analysis_arguments(p)
        job.schema.add_arguments(p)
        p.set_defaults(func=_job)


def _job(args) -> int:
    from .analyses.jobs import JOBS, run_job_on_file
    settings = JOBS[args.command].schema.values_from_args(args)
    progress, bar = tqdm_progress(args.command, disable=args.quiet)
    with bar, stdout_to_log():
        written = run_job_on_file(args.command, args.input, args.output_folder, settings, axes=args.axes,
                                  series=args.series, progress=progress)
    for path in written:
        print(path)
    return 0


def _registered_names(ndim: int) -> list[str]:
    """stardist's registered pretrained models, read from its ``stardist.models`` source without running it.

    Running it imports TensorFlow (seconds, and its start-up lines) only to list
    names; where the source does not read as expected, it is imported after all.
    """
    import ast
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("stardist")
    cls = f"StarDist{ndim}D"
    names: list[str] = []
    with contextlib.suppress(OSError, SyntaxError, TypeError, IndexError):
        source = Path(list(spec.submodule_search_locations)[0], "models", "__init__.py").read_text()
        for node in ast.walk(ast.parse(source)):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register_model"
                    and len(node.args) >= 2 and getattr(node.args[0], "id", None) == cls
                    and isinstance(node.args[1], ast.Constant)):
                names.append(node.args[1].value)
    if names:
        return names
    from .segmentation.models import registered_models

    return registered_models(ndim)


def _models(args) -> int:
    from .segmentation.models import bundled_models, bundled_models_dir

    for ndim in (2, 3) if args.dim is None else (args.dim,):
        print(f"{ndim}D bundled ({bundled_models_dir()}): {', '.join(bundled_models(ndim)) or 'none'}")
        print(f"{ndim}D registered (downloaded by stardist when online): {', '.join(_registered_names(ndim))}")
    return 0


def _models_import(args) -> int:
    from .segmentation.bioimageio import package_of_folder
    from .segmentation.models import import_package

    folder = import_package(args.package, path=args.model_path, name=args.name, overwrite=args.overwrite)
    use = f"--model-name {folder.name}" + ("" if args.model_path is None else f" --model-path {folder.parent}")
    percentiles = package_of_folder(folder).percentiles
    if percentiles is not None and percentiles != (1.0, 99.8):  # the run's defaults
        use += f" --percentile-low {percentiles[0]:g} --percentile-high {percentiles[1]:g}"
    print(f"{folder}: installed from {args.package}; segment with {use}")
    return 0


def _models_export(args) -> int:
    from .segmentation.models import export_model

    out = export_model(args.model, args.output, path=args.model_path, test_input=args.test_image,
                       overwrite=args.overwrite, authors=args.author or (), license=args.license)
    print(f"{out}: bioimage.io package of {args.model}")
    return 0


def _add_models(sub) -> None:
    m = sub.add_parser(
        "models", help="list model names; import or export bioimage.io packages",
        description="List the model names --model-name takes without --model-path: the models bundled with "
        "stardist-host (in the folder shown) and stardist's registered pretrained models, which stardist downloads "
        "the first time one is used. A model of your own is a folder: give --model-path the folder that holds it. "
        "'models import PACKAGE' installs a bioimage.io package of a StarDist model as a model folder; "
        "'models export MODEL OUT.zip' writes a model folder as a bioimage.io package.",
    )
    m.add_argument("--dim", type=int, choices=(2, 3), default=None, help="only 2D or 3D models")
    m.set_defaults(func=_models)
    commands = m.add_subparsers(dest="models_command", metavar="{import,export}")
    i = commands.add_parser(
        "import", help="install a bioimage.io package (.zip or folder) of a StarDist model as a model folder",
        description="Install a bioimage.io model package of a StarDist model (its config.stardist section, as "
        "stardist's export_bioimageio writes it) as a model folder, offline: config.json, thresholds.json, the "
        "Keras weights, and the package itself in bioimageio/. --model-name can also name the .zip directly.")
    i.add_argument("package", help="the package: a .zip, or a folder with rdf.yaml or bioimageio.yaml")
    i.add_argument("--model-path", default=None,
                   help="folder to install into (default: the bundled models folder that 'stardist-host models' shows)")
    i.add_argument("--name", default=None, help="name of the model folder, then --model-name (default: the package's name)")
    i.add_argument("--overwrite", action="store_true", help="replace a model folder of that name")
    i.set_defaults(func=_models_import)
    e = commands.add_parser(
        "export", help="write a model folder as a bioimage.io package (.zip)",
        description="Write a StarDist model folder as a bioimage.io model package (format 0.5): the network as "
        "Keras HDF5 with one output (probability and distances on the input's grid), stardist's config, "
        "thresholds and weights in config.stardist, the normalisation percentiles the model was trained with, "
        "and a test input with its output. Validated with bioimageio.spec where installed (extra 'bioimageio').")
    e.add_argument("model", help="model folder name, e.g. 2D_demo")
    e.add_argument("output", help="the package to write, ending in .zip")
    e.add_argument("--model-path", default=None, help="folder that holds the model folder (default: the bundled models)")
    e.add_argument("--test-image", default=None,
                   help="TIFF for the test input: its first channel's plane (2D) or Z stack (3D) at the first time "
                        "point (default: the bundled sample)")
    e.add_argument("--author", action="append", default=None, help="an author's name; repeat for several")
    e.add_argument("--license", default="CC-BY-4.0", help="SPDX licence of the model (default CC-BY-4.0)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    e.set_defaults(func=_models_export)


def _doctor(args) -> int:
    from .doctor import run_checks

    return 0 if run_checks(use_gpu=not args.cpu) else 1


def _options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Option]:
    """The command's options by the names errors give settings: script names (``MODEL2D_PATH``) and
    lower-case names (``axes``), so that an error speaks of ``--model-path`` and ``--axes``."""
    from .analyses.jobs import JOBS
    from .segmentation.settings import schema

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    by_dest: dict[str, Option] = {}
    for action in sub.choices[args.command]._actions:
        if action.dest in (argparse.SUPPRESS, "help"):
            continue
        flags = [f for f in action.option_strings if f.startswith("--")]
        sets = action.const if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) else None
        by_dest[action.dest] = Option(flags[0] if flags else action.dest.replace("_", " "), sets)
    fields = schema(args.dim or 2) if args.command in ("segment", "evaluate") else (  # evaluate: model and sizes
        JOBS[args.command].schema if args.command in JOBS else ())
    return {**by_dest, **{f.name: by_dest[f.attr] for f in fields if f.attr in by_dest}}


def build_parser() -> argparse.ArgumentParser:
    """The ``stardist-host`` argument parser, with every command and its options."""
    parser = argparse.ArgumentParser(prog="stardist-host",
                                     description="StarDist nucleus segmentation for host image sets and TIFF files.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_segment(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_jobs(sub)
    d = sub.add_parser(
        "doctor", help="check the environment: versions, GPUs, bundled models, a sample run",
        description="Check that this computer can segment: Python, the host, the package versions, the device "
        "and precision the network would use, the GPUs TensorFlow sees, the bundled models, and a 2D and a 3D "
        "sample segmented. Each check prints one line, [ OK ] or [FAIL] with the reason; the status is 0 when all "
        "pass, 1 otherwise.",
    )
    d.add_argument("--cpu", action="store_true", help="check on the CPU even where there is a GPU")
    d.set_defaults(func=_doctor)
    _add_models(sub)
    for command in (parser, *sub.choices.values()):  # -q / -v after the command too; SUPPRESS keeps one given before it
        default = {} if command is parser else {"default": argparse.SUPPRESS}
        command.add_argument("-v", "--verbose", action="store_true", help="log every plane", **default)
        command.add_argument("-q", "--quiet", action="store_true",
                             help="only warnings, errors and the final summary; no progress bar", **default)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stardist-host`` console script.

    Returns 0 on success, 2 after a user error (one log line), 130 after a
    cancel or Ctrl-C (the line "cancelled"), 141 when the reader of the
    standard output went away (``| head``; nothing more is printed).
    """
    if hasattr(sys.stdout, "reconfigure"):  # a redirected stdout in a legacy code page cannot refuse a file name
        sys.stdout.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # the arguments of this invocation, for the model card
    setup_logging(logging.DEBUG if args.verbose else logging.INFO, quiet=args.quiet)
    try:
        with user_errors(cli=_options(parser, args)):
            code = args.func(args)
            sys.stdout.flush()  # a reader that went away (| head) shows here, not in Python's flush at exit
            return code
    except SystemExit as stop:
        return int(stop.code or 0)


if __name__ == "__main__":
    sys.exit(main())
