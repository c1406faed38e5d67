"""Finding and loading StarDist models: a folder, a bundled model, or a registered pretrained one.

Models are folders as stardist saves them (config.json, weights_best.h5,
thresholds.json).  A name is looked up, in this order, in the folder the
user gives (MODEL2D_PATH / MODEL3D_PATH), else among the bundled models, else
among stardist's registered pretrained models, which stardist's own loader
downloads (and caches) when the machine is online.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import urllib.error
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..resources import bundled_folder
from .stardist_compat import prints_to_log

__all__ = ["ModelError", "bundled_models_dir", "bundled_models", "registered_models", "load_model", "load_for_run",
           "read_config"]

log = logging.getLogger(__name__)

_WEIGHTS = ("weights_best.h5", "weights_last.h5")


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


def _check_folder(folder: Path, ndim: int, path_setting: str) -> dict[str, Any]:
    config = read_config(folder)
    found = config.get("n_dim")
    if found != ndim:
        other = "scripts/stardist_2d.py" if found == 2 else "scripts/stardist_3d.py"
        raise ModelError(
            f"MODEL_NAME={folder.name!r} ({folder}) is a {found}D model, but this is the {ndim}D run: "
            f"give a {ndim}D model, or use {other} for a {found}D model"
        )
    if config.get("n_channel_in", 1) != 1:
        raise ModelError(
            f"MODEL_NAME={folder.name!r} expects {config['n_channel_in']} input channels; "
            "stardist-host segments one channel (INPUT_CHANNEL), so the model must have n_channel_in=1"
        )
    if not any((folder / w).is_file() for w in _WEIGHTS):
        raise ModelError(f"MODEL_NAME={folder.name!r}: {folder} has no weights ({' or '.join(_WEIGHTS)})")
    return config


def load_model(name: str, *, ndim: int, path: str | os.PathLike | None = None):
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
    path_setting = f"MODEL{ndim}D_PATH"
    if path is not None:
        basedir = Path(path)
        if not basedir.is_dir():
            raise ModelError(f"{path_setting}={str(path)!r}: this folder does not exist")
        folder = basedir / name
        if not folder.is_dir():
            found = _model_folders(basedir)
            raise ModelError(
                f"MODEL_NAME={name!r}: there is no model folder {name!r} in {path_setting}={str(path)!r}; "
                f"model folders there: {', '.join(found) if found else 'none'}"
            )
        return _load_folder(cls, folder, ndim, path_setting)

    bundled = bundled_models_dir()
    if (bundled / name).is_dir():
        return _load_folder(cls, bundled / name, ndim, path_setting)
    registered = registered_models(ndim)
    if name in registered:
        return _load_pretrained(cls, name, ndim)
    raise ModelError(
        f"MODEL_NAME={name!r} with {path_setting}=None: no such bundled or registered {ndim}D model; "
        f"bundled: {', '.join(bundled_models(ndim)) or 'none'}; registered: {', '.join(registered)}; "
        f"or set {path_setting} to the folder that holds your model folder"
    )


def load_for_run(name: str, *, ndim: int, path: str | os.PathLike | None = None, use_gpu: bool = True,
                 memory_limit_mb: int | None = None, precision: str = "auto") -> tuple[Any, str, str]:
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
    return load_model(name, ndim=ndim, path=path), device, dtype


def _load_folder(cls, folder: Path, ndim: int, path_setting: str):
    _check_folder(folder, ndim, path_setting)
    log.info("loading %dD model %s from %s", ndim, folder.name, folder.parent)
    try:
        with prints_to_log(log):  # stardist prints "Loading network weights from ..." and the thresholds
            return cls(None, name=folder.name, basedir=str(folder.parent))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelError(f"the model in {folder} could not be loaded: {err}") from err


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
        with prints_to_log(log):
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
