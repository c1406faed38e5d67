"""The USER SETTINGS of the segmentation scripts, checked once before anything runs.

Each field carries the name a user writes in the script's settings block
(``INPUT_CHANNEL``, ``MODEL2D_PATH`` ...); a bad value raises
:class:`SettingsError` naming the setting, the value given and what is allowed.
Checks that need the image set (channel and plane ranges) live in
:mod:`stardist_host.segmentation.plan`; checks that need the model in :mod:`stardist_host.segmentation.models`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from ..errors import SettingsError

__all__ = ["Settings", "SettingsError", "LABEL_DTYPES"]

LABEL_DTYPES = ("auto", "uint16", "uint32")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Settings:
    """Everything a segmentation run needs to know, validated on creation.

    ``ndim`` is 2 for the per-plane script, 3 for the per-volume one; the model
    folder setting is named ``MODEL2D_PATH`` or ``MODEL3D_PATH`` accordingly.
    """

    ndim: int = 2
    input_channel: int = 0
    output_ch_name: str = "Stardist_"
    model_path: str | None = None
    model_name: str = "2D_demo"
    current_time_point: bool = True
    first_plane: int = -1
    last_plane: int = -1
    prob_thresh: float | None = None
    nms_thresh: float | None = None
    percentile_low: float = 1.0
    percentile_high: float = 99.8
    n_tiles: tuple[int, ...] | None = None
    use_gpu: bool = True
    unique_labels: bool = False
    label_dtype: str = "auto"

    def name(self, field: str) -> str:
        """The name a user writes for ``field`` in a settings block."""
        if field == "model_path":
            return f"MODEL{self.ndim}D_PATH"
        return field.upper()

    def _fail(self, field: str, allowed: str) -> None:
        raise SettingsError(self.name(field), getattr(self, field), allowed)

    def __post_init__(self) -> None:
        if self.ndim not in (2, 3):
            raise SettingsError("ndim", self.ndim, "must be 2 (per-plane) or 3 (per-volume)")
        if not _is_int(self.input_channel) or self.input_channel < 0:
            self._fail("input_channel", "must be a whole number, 0 for the first channel")
        if not isinstance(self.output_ch_name, str) or not self.output_ch_name.strip():
            self._fail("output_ch_name", 'must be a non-empty text, e.g. "Stardist_"')
        if self.model_path is not None:
            if not isinstance(self.model_path, (str, Path)):
                self._fail("model_path", "must be a folder path in quotes, or None for the bundled models")
            if not Path(self.model_path).is_dir():
                self._fail(
                    "model_path",
                    "this folder does not exist; give the folder that holds your model folders "
                    "(stardist's basedir), or None for the bundled and registered models",
                )
        if not isinstance(self.model_name, str) or not self.model_name.strip():
            self._fail("model_name", 'must be the name of a model folder in quotes, e.g. "2D_demo"')
        for field in ("current_time_point", "use_gpu", "unique_labels"):
            if not isinstance(getattr(self, field), bool):
                self._fail(field, "must be True or False")
        for field in ("first_plane", "last_plane"):
            value = getattr(self, field)
            if not _is_int(value) or value < -1:
                self._fail(field, "must be a plane index (0 for the first plane) or -1")
        if self.first_plane >= 0 and self.last_plane >= 0 and self.first_plane > self.last_plane:
            raise SettingsError(
                "FIRST_PLANE", self.first_plane, f"must not be above LAST_PLANE={self.last_plane}"
            )
        for field in ("prob_thresh", "nms_thresh"):
            value = getattr(self, field)
            if value is not None and not (_is_number(value) and 0 < value < 1):
                self._fail(field, "must be a number between 0 and 1 (exclusive), or None for the model's own")
        for field in ("percentile_low", "percentile_high"):
            value = getattr(self, field)
            if not (_is_number(value) and 0 <= value <= 100):
                self._fail(field, "must be a percentile between 0 and 100")
        if self.percentile_low >= self.percentile_high:
            raise SettingsError(
                "PERCENTILE_LOW", self.percentile_low, f"must be below PERCENTILE_HIGH={self.percentile_high}"
            )
        if self.n_tiles is not None:
            tiles = self.n_tiles
            if not (
                isinstance(tiles, (tuple, list))
                and len(tiles) == self.ndim
                and all(_is_int(n) and n >= 1 for n in tiles)
            ):
                example = "(2, 2)" if self.ndim == 2 else "(1, 2, 2)"
                self._fail("n_tiles", f"must be None (automatic) or {self.ndim} whole numbers >= 1, e.g. {example}")
            object.__setattr__(self, "n_tiles", tuple(tiles))
        if self.label_dtype not in LABEL_DTYPES:
            self._fail("label_dtype", f"must be one of {', '.join(map(repr, LABEL_DTYPES))}")

    @classmethod
    def from_script(cls, namespace: Mapping[str, Any], *, ndim: int) -> "Settings":
        """Build settings from a script's USER SETTINGS block (its ``globals()``).

        Every upper-case name in ``namespace`` must be a known setting, so that a
        typo (``INPUT_CHANEL``) stops the run instead of being ignored.
        """
        known = {f.name.upper(): f.name for f in fields(cls) if f.name not in ("ndim", "model_path")}
        own_path, other_path = f"MODEL{ndim}D_PATH", f"MODEL{5 - ndim}D_PATH"
        values: dict[str, Any] = {}
        for key, value in namespace.items():
            if not key.isupper() or key.startswith("_"):
                continue
            if key == own_path:
                values["model_path"] = value
            elif key == other_path:
                raise SettingsError(
                    key, value, f"this is the {ndim}D script: set {own_path} instead (or use the {5 - ndim}D script)"
                )
            elif key in known:
                values[known[key]] = value
            else:
                allowed = ", ".join(sorted([*known, own_path]))
                raise SettingsError(key, value, f"is not a setting of this script; the settings are {allowed}")
        return cls(ndim=ndim, **values)
