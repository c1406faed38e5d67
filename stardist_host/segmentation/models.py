"""Finding and loading StarDist models: a folder, a bundled model, or a registered pretrained one.

Models are folders as stardist saves them (config.json, weights_best.h5,
thresholds.json).  A name is looked up, in this order, in the folder the
user gives (MODEL2D_PATH / MODEL3D_PATH), else among the bundled models, else
as the path of a bioimage.io package (:mod:`.bioimageio`), else among
stardist's registered pretrained models, which stardist's own loader
downloads (and caches) when the machine is online.  A package (a ``.zip``, or a
folder with ``rdf.yaml``) may also be named inside MODEL2D_PATH / MODEL3D_PATH.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..console import stdout_to_log
from ..errors import ModelError
from ..resources import bundled_folder
from . import bioimageio

__all__ = ["ModelError", "bundled_models_dir", "bundled_models", "registered_models", "load_model", "load_for_run",
           "read_config", "run_percentiles", "import_package", "export_model", "TrainedSizes", "trained_sizes",
           "check_channels", "trained_jointly"]

log = logging.getLogger(__name__)

# weights_bioimageio.h5: what stardist's own import_bioimageio writes
_WEIGHTS = ("weights_best.h5", "weights_last.h5", "weights_bioimageio.h5")


def bundled_models_dir() -> Path:
    """The folder of the bundled models (``STARDIST_HOST_MODELS`` overrides it)."""
    return bundled_folder("models", "STARDIST_HOST_MODELS")


def read_config(folder: Path) -> dict[str, Any]:
    """The model's config.json, or a ModelError saying what is missing."""
    config = folder / "config.json"
    if not config.is_file():
        raise ModelError(f"{folder} is not a StarDist model folder: it has no config.json")
    try:
        return json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"{config} is not valid JSON ({err}); the model folder is damaged") from err


def _model_folders(basedir: Path) -> list[str]:
    return sorted(p.name for p in basedir.iterdir() if (p / "config.json").is_file()) if basedir.is_dir() else []


def _folders_there(basedir: Path) -> str:
    return f"model folders there: {', '.join(_model_folders(basedir)) or 'none'}"


def bundled_models(ndim: int | None = None) -> list[str]:
    """Names of the bundled models, optionally only those of dimensionality ``ndim``."""
    base = bundled_models_dir()
    return [n for n in _model_folders(base) if ndim is None or read_config(base / n).get("n_dim") == ndim]


def registered_models(ndim: int) -> list[str]:
    """Names of stardist's registered pretrained models for ``ndim``."""
    from csbdeep.models.pretrained import get_registered_models

    return list(get_registered_models(_model_class(ndim), return_aliases=False, verbose=False))


def _model_class(ndim: int):
    from stardist.models import StarDist2D, StarDist3D

    return StarDist2D if ndim == 2 else StarDist3D


def check_channels(name: str, expected: int, channels: int | tuple[int, ...] | None) -> None:
    """Refuse a model whose input channels (``expected``) are not the run's INPUT_CHANNEL (None: not checked).

    Raises
    ------
    ModelError
        Naming both counts and what to give.
    """
    given = (channels,) if isinstance(channels, int) else channels
    if given is None or len(given) == expected:
        return
    value = list(given) if len(given) > 1 else given[0]
    give = "one channel, e.g. INPUT_CHANNEL=0" if expected == 1 else (
        f"{expected} channels in the model's order, e.g. INPUT_CHANNEL={list(range(expected))}")
    raise ModelError(f"MODEL_NAME={name!r} takes {expected} input channel{'s' if expected > 1 else ''}, but "
                     f"INPUT_CHANNEL={value} gives {len(given)}: give {give}")


def _check_folder(folder: Path, ndim: int, name: str | None = None, where: Path | None = None,
                  channels=None) -> dict[str, Any]:
    """``name``: MODEL_NAME as given (default the folder's name); ``where``: the path messages show;
    ``channels``: the run's INPUT_CHANNEL (:func:`check_channels`)."""
    config = read_config(folder)
    name, where = name or folder.name, where or folder
    found = config.get("n_dim")
    if found != ndim:
        other = "scripts/stardist_2d.py" if found == 2 else "scripts/stardist_3d.py"
        raise ModelError(f"MODEL_NAME={name!r} ({where}) is a {found}D model, but this is the {ndim}D run: "
                         f"give a {ndim}D model, or use {other} for a {found}D model")
    check_channels(name, config.get("n_channel_in", 1), channels)
    if not any((folder / w).is_file() for w in _WEIGHTS):
        raise ModelError(f"MODEL_NAME={name!r}: {where} has no weights ({' or '.join(_WEIGHTS)})")
    return config


def load_model(name: str, *, ndim: int, path: str | os.PathLike | None = None,
               channels: int | tuple[int, ...] | None = None):
    """Load a StarDist model once, checking that it fits the run before TensorFlow builds it.

    Parameters
    ----------
    name
        MODEL_NAME: a model folder's name.
    ndim
        2 or 3: the dimensionality the run needs.
    path
        MODEL2D_PATH / MODEL3D_PATH: the folder holding model folders; None
        looks among the bundled models, then stardist's registered ones.
    channels
        INPUT_CHANNEL: the run's channel, or channels; None: not checked.

    Returns
    -------
    StarDist2D or StarDist3D

    Raises
    ------
    ModelError
        The model does not exist, is of the wrong dimensionality, is damaged,
        or (registered models) cannot be downloaded.
    """
    cls = _model_class(ndim)
    kind, where = _locate(name, ndim, path)
    if kind == "package":
        return _load_package(cls, where, name, ndim, channels)
    if kind == "folder":
        _check_folder(where, ndim, channels=channels)
        log.info("loading %dD model %s from %s", ndim, where.name, where.parent)
        return _build(cls, where, str(where))
    model = _load_pretrained(cls, name, ndim)
    check_channels(name, int(model.config.n_channel_in), channels)
    return model


def _locate(name: str, ndim: int, path: str | os.PathLike | None) -> tuple[str, Any]:
    """Where MODEL_NAME is: ("folder", Path), ("package", Path) or ("registered", name); else a ModelError."""
    path_setting = f"MODEL{ndim}D_PATH"
    if path is not None:
        basedir = Path(path)
        if not basedir.is_dir():
            raise ModelError(f"{path_setting}={str(path)!r}: this folder does not exist")
        folder = basedir / name
        if bioimageio.is_package(folder):
            return "package", folder
        if not folder.is_dir():
            raise ModelError(f"MODEL_NAME={name!r}: there is no model folder {name!r} in {path_setting}={str(path)!r}; "
                             f"{_folders_there(basedir)}")
        return "folder", folder

    bundled = bundled_models_dir()
    if (bundled / name).is_dir():
        return "folder", bundled / name
    if bioimageio.is_package(name):
        return "package", Path(name)
    if name.lower().endswith(".zip"):
        raise ModelError(f"MODEL_NAME={name!r}: there is no such bioimage.io package (no file {Path(name).resolve()})")
    registered = registered_models(ndim)
    if name in registered:
        return "registered", name
    raise ModelError(
        f"MODEL_NAME={name!r} with {path_setting}=None: no such bundled or registered {ndim}D model; "
        f"bundled: {', '.join(bundled_models(ndim)) or 'none'}; registered: {', '.join(registered)}; "
        f"or set {path_setting} to the folder that holds your model folder, or give the path of a bioimage.io "
        "package (.zip)"
    )


def load_for_run(name: str, *, ndim: int, path: str | os.PathLike | None = None, use_gpu: bool = True,
                 memory_limit_mb: int | None = None, precision: str = "auto",
                 channels: int | tuple[int, ...] | None = None) -> tuple[Any, str, str]:
    """Set TensorFlow's device and precision up, then :func:`load_model`: the start of every run that predicts.

    Every way of running (in this process, the SEPARATE_PROCESS child, each
    Dask worker, ``evaluate``) starts here, so that each runs the network as
    the settings say.

    Returns
    -------
    tuple
        The model, the device (:func:`~stardist_host.segmentation.device.configure_device`)
        and the precision the network runs in
        (:func:`~stardist_host.segmentation.precision.configure_precision`).
    """
    from .device import configure_device
    from .precision import configure_precision

    device = configure_device(use_gpu, memory_limit_mb=memory_limit_mb)
    dtype = configure_precision(precision)
    return load_model(name, ndim=ndim, path=path, channels=channels), device, dtype


def _build(cls, folder: Path, where: str):
    """The model in ``folder``; a ModelError naming ``where`` where stardist cannot load it."""
    try:
        with stdout_to_log(log, level=logging.DEBUG):  # stardist prints "Loading network weights ..." and thresholds
            return cls(None, name=folder.name, basedir=str(folder.parent))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelError(f"the model in {where} could not be loaded: {err}") from err


def _load_package(cls, package: Path, name: str, ndim: int, channels=None):
    """Install the package into a scratch folder, load it from there, and remove the folder again."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="stardist-host-package-") as tmp:
        folder = bioimageio.install_package(package, tmp, label=f"MODEL_NAME={name!r}")
        _check_folder(folder, ndim, name=name, where=package, channels=channels)
        log.info("loading %dD model %s from the bioimage.io package %s", ndim, folder.name, package)
        model = _build(cls, folder, f"the package {package}")
        model.stardist_host_card = _model_card(folder)  # the folder goes with the block: keep what it records
        return model


def run_percentiles(name: str, percentiles: tuple[float, float], *, ndim: int,
                    path: str | os.PathLike | None = None) -> tuple[float, float]:
    """The normalisation percentiles a run with MODEL_NAME ``name`` uses: PERCENTILE_LOW / PERCENTILE_HIGH
    (``percentiles``), or, for a bioimage.io package or a folder installed from one, the package's
    ``scale_range`` percentiles where it states them (logged where they differ).  Reads files only; no TensorFlow.
    """
    kind, where = _locate(name, ndim, path)
    package = (bioimageio.read_package(where, label=f"MODEL_NAME={name!r}") if kind == "package"
               else bioimageio.package_of_folder(where) if kind == "folder" else None)
    if package is None:
        return tuple(percentiles)  # type: ignore[return-value]
    return bioimageio.run_percentiles(package, percentiles, label=f"MODEL_NAME={name!r}")


def import_package(package: str | os.PathLike, *, path: str | os.PathLike | None = None, name: str | None = None,
                   overwrite: bool = False) -> Path:
    """Install a bioimage.io package of a StarDist model as a model folder (``stardist-host models import``).

    Parameters
    ----------
    package
        The ``.zip``, or a folder with ``rdf.yaml`` / ``bioimageio.yaml``.
    path
        The folder to install into (MODEL2D_PATH / MODEL3D_PATH); None: the bundled models folder.
    name
        The model folder's name, then MODEL_NAME; default from the package's name.
    overwrite
        Replace a model folder of that name.

    Returns
    -------
    Path
        The model folder.

    Raises
    ------
    ModelError
        The package holds no StarDist model we can run, or the folder exists.
    """
    models_dir = Path(path) if path is not None else bundled_models_dir()
    # install_package has checked what _check_folder would (n_dim 2 or 3) and written config.json and the weights
    return bioimageio.install_package(package, models_dir, name=name, overwrite=overwrite)


def export_model(name: str, out: str | os.PathLike, *, path: str | os.PathLike | None = None,
                 test_input=None, overwrite: bool = False, **options) -> Path:
    """Write a model folder as a bioimage.io package (``stardist-host models export``).

    Parameters
    ----------
    name
        MODEL_NAME: a model folder in ``path``, or a bundled one.
    out
        The ``.zip`` to write.
    path
        The folder holding the model folder; None: the bundled models.
    test_input
        A plane (2D) or volume (3D) for the package's test input, or a TIFF
        file holding one (its first channel and time point); None: the bundled
        sample of the model's dimensionality.
    overwrite
        Replace ``out`` where it exists.
    options
        ``authors``, ``license``, ``pixel_size_um`` for
        :func:`~stardist_host.segmentation.bioimageio.write_package`.

    Returns
    -------
    Path
        ``out``.
    """
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise ModelError(f"{str(out)!r}: a bioimage.io package is a .zip file; give a name ending in .zip")
    if out.exists() and not overwrite:
        raise ModelError(f"{str(out)!r} exists already; set overwrite=True to replace it",
                         command_line=f"{str(out)!r} exists already; give --overwrite to replace it")
    basedir = Path(path) if path is not None else bundled_models_dir()
    folder = basedir / name
    if not (folder / "config.json").is_file():
        raise ModelError(f"there is no model folder {name!r} in {basedir}; {_folders_there(basedir)}")
    ndim = read_config(folder).get("n_dim")
    card = _model_card(folder)
    model = load_model(name, ndim=ndim, path=basedir)
    weights = next(folder / w for w in _WEIGHTS if (folder / w).is_file())
    if test_input is None or isinstance(test_input, (str, os.PathLike)):
        test_input = _test_image(ndim, test_input)
    readme = folder / "README.md"
    options.setdefault("documentation", readme.read_text(encoding="utf-8") if readme.is_file() else None)
    options.setdefault("pixel_size_um", card.get("pixel_size_um"))
    bioimageio.write_package(model, weights, out, test_input,
                             percentiles=tuple(card.get("normalization_percentiles") or (1.0, 99.8)), **options)
    return out


@dataclass(frozen=True)
class TrainedSizes:
    """What a model folder records about its training data's size (model_card.json); None where unknown.

    ``pixel_size_um`` is per spatial axis, (Y, X) or (Z, Y, X); ``object_diameter_px``
    is the median equivalent diameter of the training masks' objects in lateral
    pixels (3D: of the sphere of their physical volume, in Y/X pixels).
    """

    pixel_size_um: tuple[float, ...] | None = None
    object_diameter_px: float | None = None


def trained_sizes(model) -> TrainedSizes:
    """The recorded pixel size and object diameter of a loaded model's training data (``model_card.json``)."""
    card = _card_of(model)
    size, diameter = card.get("pixel_size_um"), card.get("object_diameter_px")
    ndim = int(model.config.n_dim)
    ok = (isinstance(size, list) and len(size) == ndim
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in size))
    if size is not None and not ok:
        log.warning("%s/model_card.json: pixel_size_um=%r is not %d numbers above 0; taken as unknown",
                    getattr(model, "logdir", None), size, ndim)
    good = isinstance(diameter, (int, float)) and not isinstance(diameter, bool) and diameter > 0
    return TrainedSizes(tuple(float(v) for v in size) if ok else None, float(diameter) if good else None)


#: Registered pretrained models trained on channels normalised together (stardist's H&E example does so).
_JOINTLY = {"2D_versatile_he": True}


def trained_jointly(model) -> bool:
    """Whether a loaded model with several input channels was trained on them normalised together.

    Its ``model_card.json``'s ``normalize_channels_jointly`` (``train`` records
    it), for stardist's registered H&E model True, else False (each on its own).
    """
    recorded = _card_of(model).get("normalize_channels_jointly")
    return recorded if isinstance(recorded, bool) else _JOINTLY.get(getattr(model, "name", ""), False)


def _card_of(model) -> dict[str, Any]:
    """A loaded model's model_card.json: kept on it where it came from a package, else read from its folder."""
    kept = getattr(model, "stardist_host_card", None)
    if isinstance(kept, dict):
        return kept
    logdir = getattr(model, "logdir", None)
    return _model_card(Path(logdir)) if logdir is not None else {}


def _model_card(folder: Path) -> dict[str, Any]:
    """What our training recorded (model_card.json): percentiles, pixel size; {} where there is none."""
    try:
        card = json.loads((folder / "model_card.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return card if isinstance(card, dict) else {}


def _test_image(ndim: int, path: str | os.PathLike | None = None):
    """A plane (2D) or volume (3D) of a TIFF file (first channel and time point), default the bundled sample."""
    from contextlib import closing

    import numpy as np

    from ..io.tiff import TiffReader

    path = path or bundled_folder("data") / ("nuclei_2d.tif" if ndim == 2 else "nuclei_3d.tif")
    with closing(TiffReader(path)) as reader:
        planes = [reader.plane(0, 0, z) for z in range(reader.layout.sizes["Z"] if ndim == 3 else 1)]
    return planes[0] if ndim == 2 else np.stack(planes)


def _is_offline(err: BaseException) -> bool:
    """Whether ``err`` is a failed download: no network, no name resolution, a refused or timed-out connection."""
    if isinstance(err, (urllib.error.URLError, ConnectionError, TimeoutError, socket.gaierror, socket.timeout)):
        return True
    # keras' get_file turns URLError and HTTPError into a bare Exception with this text
    return type(err) is Exception and "URL fetch failure" in str(err)


def _load_pretrained(cls, name: str, ndim: int):
    log.info("loading registered pretrained %dD model %s (downloaded once, then cached)", ndim, name)
    cache = Path.home() / ".keras" / "models" / cls.__name__ / name
    try:
        with stdout_to_log(log, level=logging.DEBUG):
            return cls.from_pretrained(name)
    except Exception as err:
        if not _is_offline(err):
            raise ModelError(
                f"the pretrained model {name!r} could not be loaded ({type(err).__name__}: {err}); if its cached "
                f"copy is damaged, delete {cache} and run again"
            ) from err
        raise ModelError(
            f"the pretrained model {name!r} could not be downloaded ({err}). This machine may be offline. "
            f"On a computer with internet access run: python -c \"from stardist.models import {cls.__name__}; "
            f"{cls.__name__}.from_pretrained('{name}')\", then copy the folder it creates ({cache}) here, "
            f"and set MODEL{ndim}D_PATH to the folder that contains {name!r} and MODEL_NAME={name!r}"
        ) from err
