"""The USER SETTINGS of the segmentation scripts: one definition, checked once before anything runs.

:func:`fields` defines each setting (the name a user writes in the script's
settings block, ``INPUT_CHANNEL``, ``MODEL2D_PATH`` ..., its type, default,
range, unit and help); :class:`Settings` validates against it and reports every
bad value at once, each naming the setting, the value given and what is allowed.
The CLI options, the operator parameter list, the scripts' blocks and the README
table come from the same definition.  Checks that need the image set (channel
and plane ranges) live in :mod:`stardist_host.segmentation.plan`; checks that
need the model in :mod:`stardist_host.segmentation.models`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from ..errors import SettingsError
from ..schema import Field, Schema, markdown_table, raise_all
from .precision import PRECISIONS

__all__ = ["Settings", "SettingsError", "LABEL_DTYPES", "SEPARATE_PROCESS_CHOICES", "schema", "readme_table"]

LABEL_DTYPES = ("auto", "uint16", "uint32")
SEPARATE_PROCESS_CHOICES = ("auto", True, False)


def _true_false_or_auto(value: Any) -> str | None:
    # 1 == True and 0 == False, so the choice check alone would let 1 and 0 through
    if isinstance(value, bool) or value == "auto":
        return None
    return 'must be "auto" (True inside a host, False headless), True or False'


def _folder_exists(value: Any) -> str | None:
    if Path(value).is_dir():
        return None
    return ("this folder does not exist; give the folder that holds your model folders "
            "(stardist's basedir), or None for the bundled and registered models")


@lru_cache(maxsize=None)
def schema(ndim: int) -> Schema:
    """The settings of the ``ndim``-D segmentation script, in the order of its USER SETTINGS block."""
    example = "(2, 2)" if ndim == 2 else "(1, 2, 2)"
    thresh = "must be a number between 0 and 1 (exclusive), or None for the model's own"
    plane = "must be a plane index (0 for the first plane) or -1"
    percentile = "must be a percentile between 0 and 100"
    return Schema(f"segment{ndim}d", [
        Field("INPUT_CHANNEL", "int", 0, "channel with the nuclei, 0 for the first", low=0,
              allowed="must be a whole number, 0 for the first channel"),
        Field("OUTPUT_CH_NAME", "str", "Stardist_", "prefix of the new channel's name; the input channel's name follows",
              allowed='must be a non-empty text, e.g. "Stardist_"'),
        Field(f"MODEL{ndim}D_PATH", "path", None, "folder holding your model folders (stardist's basedir)",
              none="the bundled models, then stardist's registered ones", attr="model_path", flag="--model-path",
              allowed="must be a folder path in quotes, or None for the bundled models", check=_folder_exists),
        Field("MODEL_NAME", "str", f"{ndim}D_demo", "model folder name, or a registered name such as "
              "\"2D_versatile_fluo\"",
              allowed=f'must be the name of a model folder in quotes, e.g. "{ndim}D_demo"'),
        Field("CURRENT_TIME_POINT", "bool", True, "True: the image set's current time point only; False: all time points",
              flag="--all-time-points", allowed="must be True or False"),
        Field("FIRST_PLANE", "int", -1, "first Z plane, inclusive, 0 for the first; -1: from the bottom",
              low=-1, allowed=plane),
        Field("LAST_PLANE", "int", -1, "last Z plane, inclusive; -1: up to the top", low=-1, allowed=plane),
        Field("PROB_THRESH", "float", None, "detection threshold on the object probability", none="the model's own",
              low=0, high=1, open_low=True, open_high=True, allowed=thresh),
        Field("NMS_THRESH", "float", None, "overlap threshold of non-maximum suppression", none="the model's own",
              low=0, high=1, open_low=True, open_high=True, allowed=thresh),
        Field("PERCENTILE_LOW", "float", 1.0, "intensity percentile mapped to 0 in normalisation", unit="percentile",
              low=0, high=100, allowed=percentile),
        Field("PERCENTILE_HIGH", "float", 99.8, "intensity percentile mapped to 1 in normalisation", unit="percentile",
              low=0, high=100, allowed=percentile),
        Field("N_TILES", "ints", None, "tiles per axis for large planes or volumes",
              none="chosen from the size and the free memory", length=ndim, low=1,
              allowed=f"must be None (automatic) or {ndim} whole numbers >= 1, e.g. {example}"),
        Field("USE_GPU", "bool", True, "False: run on the CPU even where there is a GPU", flag="--cpu",
              allowed="must be True or False"),
        Field("PRECISION", "choice", "auto", "arithmetic of the network: \"mixed\" runs it in bfloat16 on CPUs with "
              "AMX or AVX512_BF16 and in float16 on GPUs with tensor cores, faster with nearly the same labels; "
              "\"auto\": mixed where the hardware has it natively, else float32", choices=PRECISIONS),
        Field("SEPARATE_PROCESS", "choice", "auto", "True: load the model and predict in a separate process that "
              "ends with the run, so TensorFlow and its GPU memory stay out of the host application; \"auto\": True "
              "inside a host, False headless", choices=SEPARATE_PROCESS_CHOICES, check=_true_false_or_auto,
              allowed='must be "auto" (True inside a host, False headless), True or False'),
        Field("GPU_MEMORY_LIMIT_MB", "int", None, "most GPU memory TensorFlow may take, set before it starts",
              unit="MB", none="TensorFlow takes GPU memory as it needs it (memory growth)", low=1,
              allowed="must be a whole number of MB >= 1 (e.g. 4096), or None (memory growth)"),
        Field("UNIQUE_LABELS", "bool", False, "True: labels unique across the whole output, not restarting in each "
              "plane (2D) or volume (3D)", allowed="must be True or False"),
        Field("LABEL_DTYPE", "choice", "auto", "type of the label channel; labels never wrap around",
              choices=LABEL_DTYPES),
        Field("OVERWRITE", "bool", False, "headless: replace an output file that exists already",
              allowed="must be True or False"),
        Field("LABELS_ONLY", "bool", False, "headless: write only the label channel, not the input channels",
              allowed="must be True or False"),
        Field("EXPORT_OBJECTS", "choices", (), "headless: also write the objects beside the output file: 'roi' an "
              "ImageJ ROI set (Fiji's ROI Manager), 'geojson' QuPath detections"
              + ("" if ndim == 2 else ", both per plane; 'csv' one row per object with centroid, bounding box, volume"),
              choices=("roi", "geojson") if ndim == 2 else ("roi", "geojson", "csv")),
    ])


@dataclass(frozen=True)
class Settings:
    """Everything a segmentation run needs to know, validated on creation.

    ``ndim`` is 2 for the per-plane script, 3 for the per-volume one; the model
    folder setting is named ``MODEL2D_PATH`` or ``MODEL3D_PATH`` accordingly,
    and ``model_name`` defaults to ``"2D_demo"`` or ``"3D_demo"``.

    Raises
    ------
    SettingsError
        Naming each bad setting, its value and what is allowed
        (:class:`~stardist_host.schema.SettingsErrors` where there are several).
    """

    ndim: int = 2
    input_channel: int = 0
    output_ch_name: str = "Stardist_"
    model_path: str | None = None
    model_name: str | None = None  # None: the definition's default for ndim
    current_time_point: bool = True
    first_plane: int = -1
    last_plane: int = -1
    prob_thresh: float | None = None
    nms_thresh: float | None = None
    percentile_low: float = 1.0
    percentile_high: float = 99.8
    n_tiles: tuple[int, ...] | None = None
    use_gpu: bool = True
    precision: str = "auto"
    separate_process: bool | str = "auto"
    gpu_memory_limit_mb: int | None = None
    unique_labels: bool = False
    label_dtype: str = "auto"
    overwrite: bool = False
    labels_only: bool = False
    export_objects: tuple[str, ...] = ()

    def name(self, field: str) -> str:
        """The name a user writes for ``field`` in a settings block."""
        return schema(self.ndim).by_attr[field].name

    def __post_init__(self) -> None:
        if self.ndim not in (2, 3):
            raise SettingsError("ndim", self.ndim, "must be 2 (per-plane) or 3 (per-volume)")
        definition = schema(self.ndim)
        if self.model_name is None:
            object.__setattr__(self, "model_name", definition.by_name["MODEL_NAME"].default)
        errors = definition.errors({f.attr: getattr(self, f.attr) for f in definition})
        bad = {e.setting for e in errors}
        if not bad & {"FIRST_PLANE", "LAST_PLANE"} and 0 <= self.last_plane < self.first_plane:
            errors.append(SettingsError("FIRST_PLANE", self.first_plane, f"must not be above LAST_PLANE={self.last_plane}"))
        if not bad & {"PERCENTILE_LOW", "PERCENTILE_HIGH"} and self.percentile_low >= self.percentile_high:
            errors.append(SettingsError(
                "PERCENTILE_LOW", self.percentile_low, f"must be below PERCENTILE_HIGH={self.percentile_high}"))
        raise_all(errors)
        if self.n_tiles is not None:
            object.__setattr__(self, "n_tiles", tuple(self.n_tiles))
        object.__setattr__(self, "export_objects", tuple(dict.fromkeys(self.export_objects)))

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
            raise_all(errors + list(getattr(err, "errors", [err])))
            raise
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
