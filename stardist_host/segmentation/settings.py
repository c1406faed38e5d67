"""The USER SETTINGS of the segmentation scripts: one definition, checked once before anything runs.

:class:`Settings` declares each setting once and reports every bad value at
once; the CLI options, the operator parameter list, the scripts' blocks, the
README table and a resumed run's check (:meth:`Settings.label_values`) come
from :func:`schema`.  Checks that need the image set (channel and plane ranges)
live in :mod:`stardist_host.segmentation.plan`; checks that need the model in
:mod:`stardist_host.segmentation.models`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from ..errors import SettingsError
from ..schema import Schema, markdown_table, raise_all, setting
from .precision import PRECISIONS

__all__ = ["Settings", "SettingsError", "LABEL_DTYPES", "SEPARATE_PROCESS_CHOICES", "NORMALIZE_CHOICES",
           "SCALE_CHOICES", "MAX_SCALE", "schema", "readme_table"]

LABEL_DTYPES = ("auto", "uint16", "uint32")
SEPARATE_PROCESS_CHOICES = ("auto", True, False)
#: NORMALIZE's scopes (:mod:`~stardist_host.segmentation.normalisation`).
NORMALIZE_CHOICES = ("unit", "time series", "fixed", "none")


def _folder_exists(value: Any) -> str | None:
    if not Path(value).is_dir():
        return ("this folder does not exist; give the folder that holds your model folders "
                "(stardist's basedir), or None for the bundled and registered models")


@lru_cache(maxsize=None)
def schema(ndim: int) -> Schema:
    """The settings of the ``ndim``-D segmentation script, in the order of its USER SETTINGS block."""
    if ndim not in (2, 3):
        raise SettingsError("ndim", ndim, "must be 2 (per-plane) or 3 (per-volume)")
    return Schema.from_dataclass(Settings, ndim)


#: SCALE's words; a number (or one per axis) is the other kind of value.
SCALE_CHOICES = ("auto", "estimate")
#: Largest SCALE factor: beyond it a plane is more interpolation than image.
MAX_SCALE = 16.0


def _per_axis_allowed(ndim: int, one: str, z: float) -> str:
    """SCALE's and MODEL_PIXEL_SIZE_UM's allowed text: ``one`` number for every axis, or one per axis."""
    axes, example = ("Y, X", "[0.5, 0.5]") if ndim == 2 else ("Z, Y, X", f"[{z}, 0.5, 0.5]")
    return f"must be {one} for every axis, or {ndim} such numbers ({axes}), e.g. {example}"


_PLANE = "must be a plane index (0 for the first plane) or -1"
_PERCENTILE = "must be a percentile between 0 and 100"


@dataclass(frozen=True)
class Settings:
    """Everything a segmentation run needs to know, validated on creation.

    Each setting is declared once, below: its default, and with
    :func:`~stardist_host.schema.setting` its type, range, unit, help and whether
    it changes the labels; :func:`schema` reads the declarations.  ``ndim`` is
    2 for the per-plane script, 3 for the per-volume one; the model folder
    setting is named ``MODEL2D_PATH`` or ``MODEL3D_PATH`` accordingly, and
    ``model_name`` defaults to ``"2D_demo"`` or ``"3D_demo"``.

    Raises
    ------
    SettingsError
        Naming each bad setting, its value and what is allowed
        (:class:`~stardist_host.schema.SettingsErrors` where there are several).
    """

    ndim: int = 2
    input_channel: int | tuple[int, ...] = setting(
        "int_or_ints", 0, "channel with the nuclei, 0 for the first; a list of channels for a model with several "
        "input channels, in the model's order", low=0, affects_labels=True,
        allowed="must be a whole number, 0 for the first channel, or a list such as [0, 1] for a model with "
                "several input channels")
    # the label channel's (or label image's) name: a resume continues only the output it started
    output_ch_name: str = setting(
        "str", "Stardist_", "prefix of the new channel's name; the input channel's name follows", affects_labels=True)
    model_path: str | None = setting(
        "path", None, "folder holding your model folders (stardist's basedir)", affects_labels=True,
        none="the bundled models, then stardist's registered ones", check=_folder_exists,
        vary=lambda ndim: {"name": f"MODEL{ndim}D_PATH"})
    model_name: str | None = setting(  # None: the ndim's default, filled in on creation
        "str", None, 'model folder name, or a registered name such as "2D_versatile_fluo"', affects_labels=True,
        vary=lambda ndim: {"default": f"{ndim}D_demo",
                           "allowed": f'must be the name of a model folder in quotes, e.g. "{ndim}D_demo"'})
    # which time points, not their labels; the journal records the plan's time points itself
    current_time_point: bool = setting(
        "bool", True, "True: the image set's current time point only; False: all time points", flag="--all-time-points",
        affects_labels=False)
    first_plane: int = setting(
        "int", -1, "first Z plane, inclusive, 0 for the first; -1: from the bottom", low=-1, allowed=_PLANE,
        affects_labels=True)
    last_plane: int = setting(
        "int", -1, "last Z plane, inclusive; -1: up to the top", low=-1, allowed=_PLANE, affects_labels=True)
    prob_thresh: float | None = setting(
        "float", None, "detection threshold on the object probability", none="the model's own",
        low=0, high=1, open_low=True, open_high=True, affects_labels=True)
    nms_thresh: float | None = setting(
        "float", None, "overlap threshold of non-maximum suppression", none="the model's own",
        low=0, high=1, open_low=True, open_high=True, affects_labels=True)
    percentile_low: float = setting(
        "float", 1.0, "intensity percentile mapped to 0 in normalisation", unit="percentile", low=0, high=100,
        allowed=_PERCENTILE, affects_labels=True)
    percentile_high: float = setting(
        "float", 99.8, "intensity percentile mapped to 1 in normalisation", unit="percentile", low=0, high=100,
        allowed=_PERCENTILE, affects_labels=True)
    normalize: str = setting(
        "choice", "unit", 'what the percentiles are taken over: "unit" each plane (volume) on its own; "time series" '
        'all the planes (volumes) of the run together, so that intensities compare across time; "fixed" '
        'NORMALIZE_MIN and NORMALIZE_MAX instead of percentiles; "none" the raw intensities',
        choices=NORMALIZE_CHOICES, affects_labels=True)
    normalize_min: float | None = setting(
        "float", None, 'with NORMALIZE="fixed": the intensity mapped to 0', none='NORMALIZE is not "fixed"',
        affects_labels=True)
    normalize_max: float | None = setting(
        "float", None, 'with NORMALIZE="fixed": the intensity mapped to 1', none='NORMALIZE is not "fixed"',
        affects_labels=True)
    normalize_channels_jointly: bool | None = setting(
        "bool", None, "with several input channels: True normalises them together (one pair of percentiles, as "
        "stardist's H&E model expects), False each on its own", none="as the model was trained (its "
        "model_card.json), else each on its own", affects_labels=True)
    # tiles overlap, but the network sees different context at their borders
    n_tiles: tuple[int, ...] | None = setting(
        "ints", None, "tiles per axis for large planes or volumes", none="chosen from the size and the free memory",
        low=1, affects_labels=True,
        vary=lambda ndim: {"length": ndim, "allowed": f"must be None (automatic) or {ndim} whole numbers >= 1, "
                                                      f"e.g. {(2, 2) if ndim == 2 else (1, 2, 2)}"})
    # the image is resampled by this factor before the network sees it; labels come back on the image's grid
    scale: Any = setting(
        "number_or_numbers", "auto", 'resampling before the network: "auto" scales each axis by the image\'s pixel '
        "(voxel) size over the model's where both are known (else 1, said in the log); \"estimate\": measures the "
        "nuclei in a sample of planes (volumes) and scales them to the model's training size; a number: every axis "
        "by it; one number per axis: each axis by its own",
        choices=SCALE_CHOICES, low=0, open_low=True, high=MAX_SCALE, affects_labels=True,
        vary=lambda ndim: {"length": ndim, "allowed": _per_axis_allowed(
            ndim, f'"auto", "estimate", a number above 0 and at most {MAX_SCALE:g}', 1.0)})
    model_pixel_size_um: Any = setting(
        "number_or_numbers", None, "pixel (voxel) size of the model's training data, for SCALE=\"auto\"", unit="µm",
        none="the size the model folder records (model_card.json), where it records one", low=0, open_low=True,
        affects_labels=True,
        vary=lambda ndim: {"length": ndim, "allowed": _per_axis_allowed(
            ndim, "None (the model's recorded size), a number above 0 in µm", 2.0)})
    object_diameter_um: float | None = setting(
        "float", None, 'typical nucleus diameter in this image, for SCALE="auto": the image is scaled so that it '
        "matches the median diameter the model was trained on (needs the image's pixel size)", unit="µm",
        none="scale from the pixel sizes", low=0, open_low=True, affects_labels=True)
    # A GPU's float32 can differ from a CPU's in the last bits, which may move an object at a threshold.  The
    # journal has always let a run begun on a GPU go on on a CPU, the device being where, not what, it computes.
    use_gpu: bool = setting(
        "bool", True, "False: run on the CPU even where there is a GPU", flag="--cpu", affects_labels=False)
    # mixed precision gives nearly, not exactly, float32's labels
    precision: str = setting(
        "choice", "auto", 'arithmetic of the network: "mixed" runs it in bfloat16 on CPUs with AMX or AVX512_BF16 '
        'and in float16 on GPUs with tensor cores, faster with nearly the same labels; "auto": mixed where the '
        "hardware has it natively, else float32", choices=PRECISIONS, affects_labels=True)
    separate_process: bool | str = setting(
        "choice", "auto", "True: load the model and predict in a separate process that ends with the run, so "
        'TensorFlow and its GPU memory stay out of the host application; "auto": True inside a host, False headless',
        choices=SEPARATE_PROCESS_CHOICES, affects_labels=False)
    gpu_memory_limit_mb: int | None = setting(
        "int", None, "most GPU memory TensorFlow may take, set before it starts", unit="MB", low=1,
        none="memory growth, TensorFlow taking GPU memory as it needs it", affects_labels=False)
    unique_labels: bool = setting(
        "bool", False, "True: labels unique across the whole output, not restarting in each plane (2D) or volume (3D)",
        affects_labels=True)
    label_dtype: str = setting(
        "choice", "auto", "type of the label channel; labels never wrap around", choices=LABEL_DTYPES,
        affects_labels=True)
    output_probability: bool = setting(
        "bool", False, "True: also a float32 channel of the network's object probability at each pixel, to choose "
        "PROB_THRESH by (not for label stores: OME-Zarr, resumed and Dask runs)", affects_labels=False)
    # the three below choose what is written beside the labels
    overwrite: bool = setting(
        "bool", False, "headless: replace an output file that exists already", affects_labels=False)
    labels_only: bool = setting(
        "bool", False, "headless: write only the label channel, not the input channels", affects_labels=False)
    export_objects: tuple[str, ...] = setting(
        "choices", (), affects_labels=False,
        vary=lambda ndim: {
            "choices": ("roi", "geojson") if ndim == 2 else ("roi", "geojson", "csv"),
            "help": "headless: also write the objects beside the output file: 'roi' an ImageJ ROI set (Fiji's ROI "
                    "Manager), 'geojson' QuPath detections" + ("" if ndim == 2 else ", both per plane; 'csv' one row "
                                                               "per object with centroid, bounding box, volume")})

    @property
    def channels(self) -> tuple[int, ...]:
        """INPUT_CHANNEL as a tuple: one channel, or the model's input channels in its order."""
        return self.input_channel if isinstance(self.input_channel, tuple) else (self.input_channel,)

    def name(self, field: str) -> str:
        """The name a user writes for ``field`` in a settings block."""
        return schema(self.ndim).by_attr[field].name

    def __post_init__(self) -> None:
        definition = schema(self.ndim)  # refuses an ndim other than 2 and 3
        if self.model_name is None:
            object.__setattr__(self, "model_name", definition.by_attr["model_name"].default)
        errors = definition.errors({f.attr: getattr(self, f.attr) for f in definition})
        bad = {e.setting for e in errors}
        if not bad & {"FIRST_PLANE", "LAST_PLANE"} and 0 <= self.last_plane < self.first_plane:
            errors.append(SettingsError("FIRST_PLANE", self.first_plane, f"must not be above LAST_PLANE={self.last_plane}"))
        if not bad & {"PERCENTILE_LOW", "PERCENTILE_HIGH"} and self.percentile_low >= self.percentile_high:
            errors.append(SettingsError(
                "PERCENTILE_LOW", self.percentile_low, f"must be below PERCENTILE_HIGH={self.percentile_high}"))
        errors += self._normalize_errors(bad)
        channels = self.input_channel
        if "INPUT_CHANNEL" not in bad and isinstance(channels, (list, tuple)) and len(set(channels)) < len(channels):
            errors.append(SettingsError("INPUT_CHANNEL", list(channels), "lists a channel more than once; give "
                                        "each of the model's input channels once, in the model's order"))
        raise_all(errors)
        if isinstance(self.input_channel, (list, tuple)):  # one channel is the channel, not a list of one
            channels = tuple(self.input_channel)
            object.__setattr__(self, "input_channel", channels[0] if len(channels) == 1 else channels)
        for attr in ("n_tiles", "scale", "model_pixel_size_um"):
            if isinstance(getattr(self, attr), list):
                object.__setattr__(self, attr, tuple(getattr(self, attr)))
        object.__setattr__(self, "export_objects", tuple(dict.fromkeys(self.export_objects)))

    def _normalize_errors(self, bad: set[str]) -> list[SettingsError]:
        """NORMALIZE_MIN and NORMALIZE_MAX: both, in order, with "fixed"; neither without."""
        if bad & {"NORMALIZE", "NORMALIZE_MIN", "NORMALIZE_MAX"}:
            return []
        given = {name: value for name, value in (("NORMALIZE_MIN", self.normalize_min),
                                                 ("NORMALIZE_MAX", self.normalize_max)) if value is not None}
        if self.normalize != "fixed":
            return [SettingsError(name, value, f'is used only with NORMALIZE="fixed" (here NORMALIZE="{self.normalize}")')
                    for name, value in given.items()]
        missing = [name for name in ("NORMALIZE_MIN", "NORMALIZE_MAX") if name not in given]
        if missing:
            return [SettingsError(name, None, 'must be an intensity with NORMALIZE="fixed", e.g. 100 '
                                              "(NORMALIZE_MIN) and 4000 (NORMALIZE_MAX)") for name in missing]
        if self.normalize_min >= self.normalize_max:  # type: ignore[operator]
            return [SettingsError("NORMALIZE_MIN", self.normalize_min,
                                  f"must be below NORMALIZE_MAX={self.normalize_max}")]
        return []

    def label_values(self) -> dict[str, Any]:
        """The settings the labels depend on, ready for JSON: ``ndim`` and each setting declared ``affects_labels``.

        A resumed run continues only where these are the same (the journal's
        fingerprint); sequences are lists and paths texts, as JSON gives them back.
        """
        values: dict[str, Any] = {"ndim": self.ndim}
        for f in schema(self.ndim):
            if f.affects_labels:
                value = getattr(self, f.attr)
                values[f.attr] = list(value) if isinstance(value, tuple) else (
                    os.fspath(value) if isinstance(value, os.PathLike) else value)
        return values

    @classmethod
    def from_script(cls, namespace: Mapping[str, Any], *, ndim: int) -> "Settings":
        """Build settings from a script's USER SETTINGS block (its ``globals()``).

        Upper-case names are read as settings; modules, classes and callables
        are passed over (a host may inject them), any other unknown name is an
        error that suggests the closest setting.  All errors, unknown names and
        bad values, are reported together.
        """
        other = 5 - ndim
        wrong = {f"MODEL{other}D_PATH": f"this is the {ndim}D script: set MODEL{ndim}D_PATH instead "
                                        f"(or use the {other}D script)"}
        values, errors = schema(ndim).from_namespace(namespace, wrong=wrong)
        try:
            settings = cls(ndim=ndim, **values)
        except SettingsError as err:
            raise_all(errors + list(getattr(err, "errors", [err])))  # raises: the list holds err at least
        raise_all(errors)
        return settings


def readme_table() -> str:
    """The README's "Settings" table, from the 2D and 3D definitions (names or defaults that differ: "2D / 3D")."""
    rows = []
    for two, three in zip(schema(2).table_rows(), schema(3).table_rows()):
        row = [a if a == b else f"{a} / {b}" for a, b in zip(two, three)]
        row[1] = two[1] if two[0] == three[0] else row[1]  # meaning: one text for renamed settings
        rows.append(row)
    return markdown_table(rows)
