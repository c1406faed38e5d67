"""bioimage.io model packages of StarDist models: read, install as a model folder, write.

A package is a ``.zip`` (or its unpacked folder) with ``rdf.yaml`` or
``bioimageio.yaml``.  A StarDist package carries, beside the bioimage.io
description, the section ``config.stardist`` that stardist's own
``export_bioimageio`` writes: ``config`` (stardist's ``config.json``),
``thresholds`` and ``weights``, the name of a Keras HDF5 weights file in the
package.  That is all a model folder needs, so a package is read here with
zipfile and YAML alone, offline, without bioimageio.core (whose API
stardist's ``import_bioimageio`` calls no longer exists, stardist #276).

The package's ``scale_range`` preprocessing (its percentiles) is what the run's
normalisation must use (:func:`run_percentiles`); the installed folder keeps
the package under ``bioimageio/``, as stardist's ``import_bioimageio`` does,
so the folder still says what the package stated.

Writing (:func:`write_package`) describes the network in format 0.5 with a
``keras_hdf5`` weights entry: a model with stardist's single upsampled output,
as ``StarDist2D.export_TF`` builds it for Fiji, saved as Keras HDF5.  stardist's
``export_bioimageio`` cannot be used: it needs bioimageio.core's old
``build_spec`` and a TensorFlow SavedModel, which Keras 3 no longer exports.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import shutil
import zipfile
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from ..errors import ModelError

__all__ = ["Package", "RDF_NAMES", "is_package", "read_package", "install_package", "package_of_folder",
           "run_percentiles", "write_package", "validate_package", "folder_name"]

log = logging.getLogger(__name__)

#: The description's file name in a package, in the order they are looked for.
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
#: Where an installed model folder keeps the package it came from (stardist's import_bioimageio does the same).
PACKAGE_FOLDER = "bioimageio"

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: Preprocessing steps that need nothing from us: the network gets float32 anyway.
_HARMLESS = ("ensure_dtype",)
#: What a package must have, said in every refusal of its weights.
_NEEDED = ("a Keras HDF5 weights file named in config.stardist.weights, as stardist's export_bioimageio and "
           "stardist-host models export write it")
#: Largest test input per axis: its output (1 + n_rays channels of float32) stays a few MB.
_TEST_SIZE = {2: (128, 128), 3: (16, 32, 32)}
_CITE = [
    {"text": "Schmidt et al., Cell Detection with Star-Convex Polygons, MICCAI 2018",
     "doi": "10.1007/978-3-030-00934-2_30"},
    {"text": "Weigert et al., Star-convex Polyhedra for 3D Object Detection and Segmentation in Microscopy, "
             "WACV 2020", "doi": "10.1109/WACV45572.2020.9093435"},
]


@dataclass(frozen=True)
class Package:
    """What stardist-host takes from a bioimage.io package of a StarDist model."""

    name: str
    config: dict[str, Any]  # stardist's config.json
    thresholds: dict[str, float] | None  # prob, nms
    weights: str  # the member (path inside the package) of the Keras HDF5 weights
    weights_formats: tuple[str, ...]  # the bioimage.io weights entries, for messages
    percentiles: tuple[float, float] | None  # scale_range's min/max percentile; None: no scale_range
    pixel_size_um: tuple[float, ...] | None  # per spatial axis (Z)YX, where the input axes state micrometres


# --------------------------------------------------------------------------- reading


def is_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` is meant as a package: a ``.zip`` or zip file, or a folder with ``rdf.yaml``
    / ``bioimageio.yaml`` that is not a model folder (no ``config.json``)."""
    p = Path(path)
    if p.is_file():
        return p.suffix.lower() == ".zip" or zipfile.is_zipfile(p)
    return p.is_dir() and not (p / "config.json").is_file() and _rdf_in_folder(p) is not None


def _rdf_name(names) -> str | None:
    """The description among a package's top-level file names: :data:`RDF_NAMES`, else a ``*.bioimageio.yaml``."""
    found = [n for n in RDF_NAMES if n in names] or sorted(n for n in names if n.endswith(".bioimageio.yaml"))
    return found[0] if found else None


def _rdf_in_folder(folder: Path) -> str | None:
    return _rdf_name({p.name for p in folder.iterdir() if p.is_file()})


class _Files:
    """The files of a package, a zip or a folder, by their POSIX path inside it."""

    def __init__(self, source: Path, label: str | None) -> None:
        label = label or repr(str(source))
        self.source, self.label = source, label
        self._zip: zipfile.ZipFile | None = None
        if source.is_dir():
            self.rdf = _rdf_in_folder(source)
            if self.rdf is None:
                raise ModelError(f"{label}: the folder {source} has no {' or '.join(RDF_NAMES)}, so it is not a "
                                 "bioimage.io model package")
            self.names = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
            return
        if not source.exists():
            raise ModelError(f"{label}: there is no such file or folder")
        if not zipfile.is_zipfile(source):
            raise ModelError(f"{label}: {source} is not a zip file; a bioimage.io model package is a .zip, or a "
                             f"folder with {' or '.join(RDF_NAMES)}")
        try:
            self._zip = zipfile.ZipFile(source)
            self.names = [n for n in self._zip.namelist() if not n.endswith("/")]
        except (zipfile.BadZipFile, OSError) as err:
            raise ModelError(f"{label}: {source} cannot be read as a zip file ({err})") from err
        self.rdf = _rdf_name([n for n in self.names if "/" not in n])
        if self.rdf is None:
            self.close()
            raise ModelError(f"{label}: the zip file {source} has no {' or '.join(RDF_NAMES)} at its top, so it "
                             "is not a bioimage.io model package")

    def member(self, name: str) -> str | None:
        """``name`` as a path inside the package, or None where it leaves the package or is not there."""
        name = posixpath.normpath(str(name).replace("\\", "/"))
        if name.startswith(("../", "/")) or name == ".." or ":" in name:
            return None
        return name if name in self.names else None

    def open(self, name: str):
        return self._zip.open(name) if self._zip is not None else open(self.source / name, "rb")

    def read(self, name: str, size: int = -1) -> bytes:
        with self.open(name) as f:
            return f.read(size)

    def copy(self, name: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self.open(name) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def read_package(path: str | os.PathLike, *, label: str | None = None) -> Package:
    """Read what a StarDist model needs from a bioimage.io package, without unpacking it.

    Parameters
    ----------
    path
        The package: a ``.zip``, or a folder with ``rdf.yaml`` / ``bioimageio.yaml``.
    label
        How messages name the package (``MODEL_NAME='x.zip'``); default its path.

    Returns
    -------
    Package

    Raises
    ------
    ModelError
        Not a zip, no description, not a model, no ``config.stardist``, no
        Keras HDF5 weights we can run (the message names the weights formats
        the package has and what is needed), or preprocessing we do not apply.
    """
    with closing(_Files(Path(path), label)) as files:
        return _package(files)


def _package(files: _Files) -> Package:
    """The package's description, parsed and checked (:func:`read_package`)."""
    import yaml

    label = files.label
    try:
        rdf = yaml.safe_load(files.read(files.rdf).decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ModelError(f"{label}: {files.rdf} is not valid YAML ({err})") from err
    if not isinstance(rdf, dict):
        raise ModelError(f"{label}: {files.rdf} holds no description (a YAML mapping)")
    kind = rdf.get("type")
    if kind != "model":
        raise ModelError(f"{label}: the package describes a bioimage.io {kind or 'resource of no type'}, not a model")
    formats = tuple(sorted(rdf.get("weights") or {}))
    stardist = (rdf.get("config") or {}).get("stardist") if isinstance(rdf.get("config"), dict) else None
    if not isinstance(stardist, dict) or not isinstance(stardist.get("config"), dict):
        raise ModelError(
            f"{label}: the package is a bioimage.io model ({_formats(formats)}) but not a StarDist one: it has no "
            "config.stardist section; stardist-host runs StarDist models, packaged with config.stardist (config, "
            "thresholds, weights) as stardist's export_bioimageio and stardist-host models export write them")
    config = stardist["config"]
    if config.get("n_dim") not in (2, 3):
        raise ModelError(f"{label}: config.stardist.config has n_dim={config.get('n_dim')!r}; StarDist models are "
                         "2D or 3D")
    weights = stardist.get("weights")
    member = files.member(weights) if isinstance(weights, str) else None
    if member is None:
        what = (f"config.stardist.weights names {weights!r}, which is not in the package" if weights
                else "config.stardist names no weights file")
        raise ModelError(f"{label}: {what}; its weights are {_formats(formats)}; stardist-host needs {_NEEDED}")
    if files.read(member, len(_HDF5_SIGNATURE)) != _HDF5_SIGNATURE:
        raise ModelError(f"{label}: config.stardist.weights names {member}, which is not an HDF5 file; its weights "
                         f"are {_formats(formats)}; stardist-host needs {_NEEDED}")
    thresholds = stardist.get("thresholds")
    if not (isinstance(thresholds, dict) and {"prob", "nms"} <= set(thresholds)):
        log.warning("%s: the package records no thresholds (config.stardist.thresholds); stardist's defaults apply",
                    label)
        thresholds = None
    else:
        thresholds = {"prob": float(thresholds["prob"]), "nms": float(thresholds["nms"])}
    inputs = rdf.get("inputs") or [{}]
    return Package(str(rdf.get("name") or files.source.stem), config, thresholds, member, formats,
                   _percentiles(inputs[0], label), _pixel_size(inputs[0]))


def _formats(formats: Sequence[str]) -> str:
    return "weights " + ", ".join(formats) if formats else "no weights entry"


def _percentiles(tensor: dict[str, Any], label: str) -> tuple[float, float] | None:
    """scale_range's percentiles of the input tensor (format 0.4: ``name``, 0.5: ``id``); None without scale_range."""
    found = None
    for step in tensor.get("preprocessing") or []:
        kind = step.get("id") or step.get("name")
        kwargs = step.get("kwargs") or {}
        if kind in _HARMLESS:
            continue
        if kind != "scale_range":
            raise ModelError(f"{label}: the package preprocesses its input with {kind!r}, which stardist-host does "
                             "not apply; it normalises with percentiles (scale_range) only")
        low, high = float(kwargs.get("min_percentile", 0.0)), float(kwargs.get("max_percentile", 100.0))
        if not 0 <= low < high <= 100:
            raise ModelError(f"{label}: scale_range percentiles {low}..{high} are not 0 <= low < high <= 100")
        if kwargs.get("mode", "per_sample") != "per_sample":
            log.warning("%s: scale_range mode %r; stardist-host takes the percentiles of each plane (volume)",
                        label, kwargs.get("mode"))
        found = (low, high)
    return found


def _pixel_size(tensor: dict[str, Any]) -> tuple[float, ...] | None:
    """The input's spatial scales where the axes (format 0.5) give them in micrometres."""
    axes = tensor.get("axes")
    if not isinstance(axes, list):
        return None  # format 0.4: "byxc", no sizes
    space = [a for a in axes if isinstance(a, dict) and a.get("type") == "space"]
    if not space or any(a.get("unit") != "micrometer" for a in space):
        return None
    return tuple(float(a.get("scale", 1.0)) for a in space)


# --------------------------------------------------------------------------- installing


def folder_name(name: str) -> str:
    """A model folder name from a package's name: letters, digits, ``._-``; anything else becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "bioimageio_model"


def install_package(path: str | os.PathLike, models_dir: str | os.PathLike, *, name: str | None = None,
                    overwrite: bool = False, label: str | None = None) -> Path:
    """Write a package as a StarDist model folder in ``models_dir``: config.json, thresholds.json, weights.

    The folder keeps the whole package in ``bioimageio/``.  It is written
    beside the target and renamed into place once complete.

    Parameters
    ----------
    path
        The package (``.zip`` or folder).
    models_dir
        The folder that holds model folders (stardist's basedir); must exist.
    name
        The model folder's name; default the package's name (:func:`folder_name`).
    overwrite
        Replace a model folder of that name.

    Returns
    -------
    Path
        The model folder.

    Raises
    ------
    ModelError
        The package cannot be run (:func:`read_package`), or a model folder of
        that name exists and ``overwrite`` is False.
    """
    from ..io.files import scratch_dir

    source, models_dir = Path(path), Path(models_dir)
    with closing(_Files(source, label)) as files:
        package = _package(files)
        label = files.label
        name = name or folder_name(package.name)
        dest = models_dir / name
        if not models_dir.is_dir():
            raise ModelError(f"{label}: the models folder {models_dir} does not exist")
        if dest.exists() and not overwrite:
            raise ModelError(f"{label}: a model folder {dest} exists already; choose another name or overwrite it",
                             command_line=f"{label}: a model folder {dest} exists already; give --name to install "
                             "it under another name, or --overwrite to replace it")
        with scratch_dir(models_dir) as tmp:
            folder = Path(tmp) / name
            folder.mkdir()
            (folder / "config.json").write_text(json.dumps(package.config))
            if package.thresholds is not None:
                (folder / "thresholds.json").write_text(json.dumps(package.thresholds))
            files.copy(package.weights, folder / "weights_best.h5")  # a name models.py and stardist's loader take
            if package.pixel_size_um is not None:  # what a run's SCALE="auto" reads, as train records it
                card = {"name": package.name, "source": "bioimage.io package",
                        "pixel_size_um": [float(v) for v in package.pixel_size_um]}
                (folder / "model_card.json").write_text(json.dumps(card, indent=2))
            for member in files.names:
                if files.member(member) is not None:
                    files.copy(member, folder / PACKAGE_FOLDER / member)
            if dest.exists():
                os.replace(dest, Path(tmp) / ".replaced")
            os.replace(folder, dest)
    log.info("installed %dD StarDist model %r from %s as %s", package.config["n_dim"], package.name, source, dest)
    return dest


def package_of_folder(folder: str | os.PathLike) -> Package | None:
    """The package a model folder was installed from (its ``bioimageio/`` copy), or None for other folders."""
    kept = Path(folder) / PACKAGE_FOLDER
    if not kept.is_dir() or _rdf_in_folder(kept) is None:
        return None
    return read_package(kept, label=repr(str(folder)))


def run_percentiles(package: Package, percentiles: tuple[float, float], *, label: str) -> tuple[float, float]:
    """The normalisation percentiles of a run with ``package``'s model: the package's where it states them.

    ``percentiles`` are the run's PERCENTILE_LOW / PERCENTILE_HIGH; where the
    package's ``scale_range`` differs, the package's are taken and the change
    is logged, since the network was trained on data normalised that way.
    """
    stated = package.percentiles
    if stated is None:
        log.info("%s: the package states no scale_range preprocessing; normalising with PERCENTILE_LOW=%s, "
                 "PERCENTILE_HIGH=%s", label, *percentiles)
        return tuple(percentiles)  # type: ignore[return-value]
    if tuple(map(float, percentiles)) != stated:
        log.warning("%s: the package normalises with scale_range percentiles %s..%s; they replace PERCENTILE_LOW=%s, "
                    "PERCENTILE_HIGH=%s", label, stated[0], stated[1], *percentiles)
    return stated


# --------------------------------------------------------------------------- writing


def write_package(model, weights: str | os.PathLike, out: str | os.PathLike, test_input: NDArray, *,
                  name: str | None = None, percentiles: tuple[float, float] = (1.0, 99.8),
                  pixel_size_um: Sequence[float] | None = None, authors: Sequence[str] = (),
                  license: str = "CC-BY-4.0", documentation: str | None = None, validate: bool = True) -> Path:
    """Write a loaded StarDist model as a bioimage.io package (format 0.5) ``out`` (a ``.zip``).

    Parameters
    ----------
    model
        A loaded StarDist2D / StarDist3D.
    weights
        Its Keras HDF5 weights file (``weights_best.h5``), packaged as
        ``stardist_weights.h5`` and named in ``config.stardist.weights``.
    out
        The package to write; written beside and renamed into place once complete.
    test_input
        A plane (2D) or volume (3D), raw intensities; it is cropped to a size
        the network takes and, normalised, gives the test output.
    name, percentiles, pixel_size_um, authors, license, documentation
        The package's name (default the model's), the ``scale_range``
        percentiles, the pixel size in µm per axis ((Z)YX) where known, the
        authors' names, an SPDX licence and a README text.
    validate
        Check the package with bioimageio.spec (where installed, the
        ``bioimageio`` extra) before it is put in place.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    ModelError
        The test input does not fit the model, or bioimageio.spec finds the
        package invalid (then nothing is written).
    """
    import tempfile
    from importlib.metadata import version

    import tensorflow as tf
    import yaml
    from csbdeep.utils import normalize

    from ..io.files import atomic_write
    from .stardist_compat import block_grid

    config = dict(vars(model.config))
    ndim = int(config["n_dim"])
    spatial = "YX" if ndim == 2 else "ZYX"
    name = name or model.name
    div_by = block_grid(model, spatial + "C")[:ndim]
    x = np.asarray(test_input, dtype=np.float32)
    if x.ndim != ndim:
        raise ModelError(f"the test input has {x.ndim} axes; a {ndim}D model needs a {spatial} array")
    crop = tuple(min(s, cap) // d * d for s, cap, d in zip(x.shape, _TEST_SIZE[ndim], div_by))
    if min(crop) < 1:
        raise ModelError(f"the test input {x.shape} is smaller than the network's smallest input {tuple(div_by)}")
    x = x[tuple(slice(0, c) for c in crop)][..., np.newaxis]
    x_norm = normalize(x, *percentiles, axis=tuple(range(ndim))).astype(np.float32)
    network = single_output_network(model)
    y = network.predict(x_norm[np.newaxis], verbose=0)
    thresholds = dict(model.thresholds._asdict())

    space_in, space_out = [], []
    for i, axis in enumerate(spatial.lower()):
        described: dict[str, Any] = {"type": "space", "id": axis}
        if pixel_size_um is not None:
            described.update(scale=float(pixel_size_um[i]), unit="micrometer")
        space_in.append({**described, "size": {"min": int(div_by[i]), "step": int(div_by[i])}})
        space_out.append({**described, "size": {"tensor_id": "input", "axis_id": axis}})
    n_rays = int(config["n_rays"])
    rdf = {
        "format_version": "0.5.4",
        "type": "model",
        "name": name,
        "description": f"StarDist {ndim}D nucleus segmentation model {name!r}, exported by stardist-host",
        "authors": [{"name": a} for a in authors] or [{"name": "stardist-host user"}],
        "cite": _CITE,
        "license": license,
        "documentation": "README.md",
        "tags": ["stardist", f"{ndim}d", "nuclei", "instance-segmentation", "tensorflow", "stardist-host"],
        "inputs": [{
            "id": "input",
            "axes": [{"type": "batch"}, *space_in, {"type": "channel", "channel_names": ["channel0"]}],
            "test_tensor": {"source": "test_input.npy"},
            "preprocessing": [{"id": "scale_range", "kwargs": {
                "axes": list(spatial.lower()), "min_percentile": float(percentiles[0]),
                "max_percentile": float(percentiles[1])}}],
        }],
        "outputs": [{
            "id": "output",
            "description": "object probability (channel prob) and the distances along the rays (dist0 ...), "
                           "upsampled to the input's grid",
            "axes": [{"type": "batch"}, *space_out,
                     {"type": "channel", "channel_names": ["prob", *(f"dist{i}" for i in range(n_rays))]}],
            "test_tensor": {"source": "test_output.npy"},
        }],
        "weights": {"keras_hdf5": {"source": "keras_model.h5", "tensorflow_version": tf.__version__}},
        "attachments": [{"source": "stardist_weights.h5"}],
        "config": {"stardist": {
            "stardist_version": version("stardist"),
            "thresholds": thresholds,
            "weights": "stardist_weights.h5",
            "config": config,
        }},
    }
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "test_input.npy", x[np.newaxis])
        np.save(tmp / "test_output.npy", y.astype(np.float32))
        absl = logging.getLogger("absl")  # Keras 3 warns that HDF5 is a legacy format: it is the one both stacks read
        level = absl.level
        absl.setLevel(logging.ERROR)
        try:
            network.save(str(tmp / "keras_model.h5"))
        finally:
            absl.setLevel(level)
        shutil.copyfile(weights, tmp / "stardist_weights.h5")
        (tmp / "README.md").write_text(documentation or _readme(name, ndim, thresholds, percentiles))
        plain = json.loads(json.dumps(rdf, default=lambda v: v.item()))  # YAML takes lists and Python scalars only
        (tmp / "rdf.yaml").write_text(yaml.safe_dump(plain, sort_keys=False))
        package = tmp / "package" / "package.zip"
        package.parent.mkdir()
        with zipfile.ZipFile(package, "w", zipfile.ZIP_DEFLATED) as z:
            for f in ("rdf.yaml", "README.md", "test_input.npy", "test_output.npy", "keras_model.h5",
                      "stardist_weights.h5"):
                z.write(tmp / f, f)
        problems = validate_package(package) if validate else "not asked for"
        if problems not in (None, "not checked", "not asked for"):
            raise ModelError(f"the package of {name!r} did not pass bioimage.io validation, so {out} was not "
                             f"written:\n{problems}")
        with atomic_write(out) as partial:
            shutil.copyfile(package, partial)
    log.info("wrote bioimage.io package %s of %dD model %r (test input %s), %s", out, ndim, name, crop,
             "valid for bioimageio.spec" if problems is None else
             "not validated: bioimageio.spec is not installed (pip install 'stardist-host[bioimageio]')"
             if problems == "not checked" else "not validated")
    return out


def single_output_network(model):
    """stardist's network with one output, the probability and distances upsampled to the input's grid
    and concatenated, as ``StarDist2D.export_TF`` builds it for Fiji and stardist's packages describe it."""
    from csbdeep.utils.tf import keras_import

    Concatenate, UpSampling2D, UpSampling3D, Conv2DTranspose, Conv3DTranspose = keras_import(
        "layers", "Concatenate", "UpSampling2D", "UpSampling3D", "Conv2DTranspose", "Conv3DTranspose")
    Model = keras_import("models", "Model")
    ndim, grid = model.config.n_dim, tuple(model.config.grid)
    prob, dist = model.keras_model.outputs[:2]
    if any(g > 1 for g in grid):
        transpose = Conv2DTranspose if ndim == 2 else Conv3DTranspose
        prob = transpose(1, (1,) * ndim, strides=grid, padding="same", kernel_initializer="ones",
                         use_bias=False)(prob)
        dist = (UpSampling2D if ndim == 2 else UpSampling3D)(grid)(dist)
    return Model(model.keras_model.inputs[0], Concatenate()([prob, dist]))


def _readme(name: str, ndim: int, thresholds: dict, percentiles: tuple[float, float]) -> str:
    return (f"# {name}\n\nA StarDist {ndim}D model for star-convex nuclei, exported by stardist-host.\n\n"
            f"- input: one channel, normalised per image with percentiles {percentiles[0]} and {percentiles[1]}\n"
            f"- output: object probability and {ndim}D ray distances on the input's grid; objects come from "
            f"StarDist's non-maximum suppression with prob_thresh={thresholds.get('prob')}, "
            f"nms_thresh={thresholds.get('nms')}\n"
            "- StarDist: https://github.com/stardist/stardist\n")


def validate_package(path: str | os.PathLike) -> str | None:
    """Check a package with bioimageio.spec, offline.

    Returns
    -------
    str or None
        None where it is valid, else the validation summary; ``"not checked"``
        where bioimageio.spec is not installed (the ``bioimageio`` extra).
    """
    try:
        from bioimageio.spec import load_description
        from bioimageio.spec.model import v0_5
    except ImportError:
        return "not checked"
    description = load_description(str(path), perform_io_checks=True)
    if isinstance(description, v0_5.ModelDescr) and description.validation_summary.status in ("valid-format", "passed"):
        return None
    return description.validation_summary.format()
