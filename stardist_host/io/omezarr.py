"""OME-Zarr (NGFF 0.4 and 0.5) images as image sets, with label channels in the NGFF labels group.

:class:`OmeZarrImageSet` reads one resolution level of an OME-Zarr image one
plane at a time (a plane read touches only the chunks that hold it), with its
axes, channel names (``omero`` metadata) and voxel size (the level's ``scale``
transformations and the axes' units) taken from the metadata.

Channels made with :meth:`OmeZarrImageSet.add_channel` are NGFF label images,
``labels/<name>`` with ``image-label`` metadata and the name added to the
``labels`` list, inside the input store by default (its arrays and
metadata are never written) or in a separate store (``labels_store=``).  A
label array has the image's axes with a channel axis of size 1, and one chunk
per plane, so each plane is written by one writer and a written plane is one
file.  OME-Zarr readers (ome-zarr-py, napari, bioio-ome-zarr) show them as labels.

The metadata are read with ``zarr`` directly, not through ``ome-zarr``:
``zarr`` 2.18 (Python 3.10, NGFF 0.4 only) and ``zarr`` 3 (NGFF 0.4 and 0.5)
both work.  ``zarr`` is imported only when an image set is opened; without it
the error says which extra to install.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..errors import InputFileError, OutputError, ReadOnlyInputError, check_index, require
from .imagesets import ChannelChecks, fit_to_dtype
from .tiff import UNITS_UM

__all__ = ["NGFF_VERSIONS", "UNITS_UM", "OmeZarrImageSet"]

log = logging.getLogger(__name__)

#: NGFF versions this reader understands.
NGFF_VERSIONS = ("0.4", "0.5")


def _zarr():
    return require("zarr", "zarr", purpose="reading OME-Zarr")


def _zarr_major() -> int:
    return int(_zarr().__version__.split(".")[0])


# --------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class Level:
    """One resolution level of a multiscale image."""

    index: int
    path: str
    shape: tuple[int, ...]
    transforms: tuple  # the dataset's coordinateTransformations, as in the metadata


@dataclass(frozen=True)
class _Meta:
    version: str
    axes: tuple[dict, ...]
    levels: tuple[Level, ...]
    global_transforms: tuple
    omero: dict


def _ome_attrs(attrs: dict, where: str) -> tuple[str, dict]:
    """The NGFF version and the attributes that hold the OME metadata (0.5: under "ome")."""
    if "ome" in attrs and isinstance(attrs["ome"], dict):
        ome = attrs["ome"]
        version = str(ome.get("version", "unknown"))
    else:
        ome = attrs
        ms = attrs.get("multiscales")
        version = str(ms[0].get("version", "unknown")) if isinstance(ms, list) and ms else "unknown"
    if "multiscales" not in ome:
        if "bioformats2raw.layout" in ome:
            raise InputFileError(f"{where} is a bioformats2raw container, not one image; open an image inside it, e.g. "
                                 f"{os.path.join(where, '0')!r}")
        if "plate" in ome or "well" in ome:
            raise InputFileError(f"{where} is an OME-Zarr plate or well (HCS); open one field of view, "
                                 "e.g. PLATE.zarr/A/1/0")
        raise InputFileError(f"{where} is a Zarr group without OME-Zarr 'multiscales' metadata; it is not an "
                             "OME-Zarr image")
    if version not in NGFF_VERSIONS:
        raise InputFileError(f"{where}: OME-Zarr (NGFF) version {version!r} is not supported; this reader knows "
                             f"versions {', '.join(NGFF_VERSIONS)}")
    return version, ome


def _read_meta(group, where: str) -> _Meta:
    version, ome = _ome_attrs(dict(group.attrs), where)
    ms = ome["multiscales"][0]
    axes = tuple(a if isinstance(a, dict) else {"name": str(a)} for a in ms.get("axes", ()))
    levels = []
    for i, ds in enumerate(ms.get("datasets", ())):
        try:
            shape = tuple(int(n) for n in group[ds["path"]].shape)
        except KeyError:
            raise InputFileError(
                f"{where}: level {i} names the array {ds.get('path')!r}, which is not in the store"
            ) from None
        if len(shape) != len(axes):
            raise InputFileError(f"{where}: level {i} ({ds['path']!r}) has {len(shape)} dimensions but the metadata "
                                 f"name {len(axes)} axes ({', '.join(a['name'] for a in axes)})")
        levels.append(Level(i, ds["path"], shape, tuple(ds.get("coordinateTransformations", ()))))
    if not levels:
        raise InputFileError(f"{where}: the multiscales metadata list no datasets (resolution levels)")
    global_transforms = tuple(ms.get("coordinateTransformations", ()))
    return _Meta(version, axes, tuple(levels), global_transforms, dict(ome.get("omero") or {}))


def _axis_roles(axes: tuple[dict, ...], shape: tuple[int, ...], where: str) -> dict[str, int]:
    """Map the roles T, C, Z, Y, X to axis positions; other axes must have size 1 (read at index 0)."""
    roles: dict[str, int] = {}
    for pos, axis in enumerate(axes):
        name, kind = str(axis.get("name", "")).lower(), axis.get("type")
        role = {"time": "T", "channel": "C"}.get(kind) or {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}.get(name)
        if role is None or role in roles:
            if shape[pos] != 1:
                raise InputFileError(f"{where}: axis {axis.get('name')!r} (type {kind!r}, size {shape[pos]}) is not "
                                     "one of t, c, z, y, x; only axes of size 1 can be ignored")
            continue
        roles[role] = pos
    missing = [r for r in "YX" if r not in roles]
    if missing:
        raise InputFileError(f"{where}: the image has no {' and no '.join(missing)} axis (axes: "
                             f"{', '.join(str(a.get('name')) for a in axes)}); planes need y and x")
    return roles


def _scale(transforms) -> list[float] | None:
    for tr in transforms:
        if tr.get("type") == "scale":
            return [float(v) for v in tr["scale"]] if "scale" in tr else None
    return None


def _voxel_size(meta: _Meta, level: Level, roles: dict[str, int], where: str) -> tuple | None:
    """(z, y, x) in µm from the level's and the multiscale's scale; None where a unit is missing or unknown."""
    scale = _scale(level.transforms)
    extra = _scale(meta.global_transforms)
    if scale is None:
        log.warning("%s: level %d has no scale transformation; the voxel size is unknown", where, level.index)
        return None
    if extra is not None:
        scale = [a * b for a, b in zip(scale, extra)]
    sizes: dict[str, float | None] = dict.fromkeys("ZYX")
    for role in (r for r in "ZYX" if r in roles):
        axis = meta.axes[roles[role]]
        unit = axis.get("unit")
        factor = UNITS_UM.get(str(unit).lower())
        value = scale[roles[role]]
        if unit is None:
            log.warning("%s: axis %r has no unit, so its scale %r is in unknown units; its voxel size is taken as "
                        "unknown (NGFF axes name a unit such as 'micrometer')", where, axis.get("name"), value)
        elif factor is None or not (math.isfinite(value) and value > 0):
            log.warning("%s: axis %r has scale %r with unit %r, which is not a length unit known here (%s); its "
                        "voxel size is taken as unknown", where, axis.get("name"), value, unit, ", ".join(UNITS_UM))
        else:
            sizes[role] = value * factor
    return None if sizes["Y"] is None or sizes["X"] is None else (sizes["Z"], sizes["Y"], sizes["X"])


def _channel_names(omero: dict, count: int) -> list[str]:
    channels = omero.get("channels")
    names = [f"Channel {i}" for i in range(count)]
    if isinstance(channels, list) and len(channels) == count:
        names = [str(ch.get("label") or names[i]) if isinstance(ch, dict) else names[i]
                 for i, ch in enumerate(channels)]
    elif channels:
        log.warning("omero metadata name %d channels, but the image has %d; channels are named by number",
                    len(channels), count)
    return names


# --------------------------------------------------------------------------- stores


def _open_input(path: Path):
    """Open the input group read-only, with errors that say what the path is instead."""
    zarr = _zarr()
    where = repr(str(path))
    if not path.exists():
        raise InputFileError(f"{where} does not exist")
    if path.is_dir():
        has_v3, has_v2 = (path / "zarr.json").is_file(), (path / ".zgroup").is_file()
        if not (has_v3 or has_v2):
            raise InputFileError(f"{where} is a folder but not a Zarr group (no zarr.json or .zgroup); "
                                 "it is not an OME-Zarr image")
        if has_v3 and not has_v2 and _zarr_major() < 3:
            raise InputFileError(f"{where} is a Zarr v3 store (OME-Zarr 0.5), which needs zarr 3 (Python 3.11 or "
                                 f"newer); zarr {zarr.__version__} is installed")
    elif path.is_file():
        raise InputFileError(f"{where} is a file, not an OME-Zarr folder (.zarr)")
    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as err:  # zarr 2 and 3 raise different errors for a group they cannot read
        raise InputFileError(f"{where} cannot be read as a Zarr group: {err}") from err


def _create_plane_array(group, name: str, *, shape, chunks, dtype, dim_names, zarr_format: int):
    """A zero-filled array; NGFF wants '/' chunk keys in v2 stores and dimension names in v3 ones."""
    if _zarr_major() >= 3:
        extra = ({"chunk_key_encoding": {"name": "v2", "separator": "/"}} if zarr_format == 2
                 else {"dimension_names": list(dim_names)})
        return group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, fill_value=0, **extra)
    return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, dimension_separator="/")


def _check_label_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or name in (".", "..") or any(c in name for c in "/\\"):
        raise ValueError(f"name={name!r}: a label image's name must be a non-empty text without '/' or '\\' "
                         "(it becomes the folder labels/<name>)")
    if name.startswith("."):
        raise ValueError(f"name={name!r}: must not start with '.' (hidden, and reserved for Zarr metadata)")
    return name


def _label_attrs(meta: _Meta, level: Level, name: str, source: str) -> dict:
    """Attributes of a label image group: one level with the image level's transformations, and image-label."""
    multiscale: dict[str, Any] = {
        "axes": [dict(a) for a in meta.axes],
        "datasets": [{"path": "0", "coordinateTransformations": [dict(t) for t in level.transforms]}],
        "name": name,
    }
    if meta.global_transforms:
        multiscale["coordinateTransformations"] = [dict(t) for t in meta.global_transforms]
    image_label = {"version": meta.version, "source": {"image": source}}
    if meta.version == "0.4":
        return {"multiscales": [{**multiscale, "version": "0.4"}], "image-label": image_label}
    return {"ome": {"version": meta.version, "multiscales": [multiscale], "image-label": image_label}}


def _list_label(group, version: str, name: str, *, listed: bool) -> None:
    """Add ``name`` (last) to, or drop it from, the ``labels`` list of the labels group."""
    attrs = dict(group.attrs)
    holder = attrs.get("ome", {}) if version != "0.4" else attrs
    names = [str(n) for n in holder.get("labels", []) if str(n) != name] + ([name] if listed else [])
    if version == "0.4":
        group.attrs["labels"] = names
    else:
        group.attrs["ome"] = {**attrs.get("ome", {}), "version": version, "labels": names}


class OmeZarrImageSet(ChannelChecks):
    """An image set over one resolution level of an OME-Zarr image; new channels are NGFF label images.

    Parameters
    ----------
    path
        The OME-Zarr image: the folder whose metadata hold ``multiscales``
        (NGFF 0.4, Zarr v2; or NGFF 0.5, Zarr v3).
    level
        Resolution level to read, 0 (default) for the highest resolution.
    labels_store
        Folder of a separate Zarr store to hold ``labels/<name>``; default:
        the input store itself (only ``labels/`` is written there).
    current_time_point
        The time point that "current time point only" means (default 0).
    overwrite
        Whether :meth:`add_channel` may replace an existing ``labels/<name>``
        (default False: it refuses).

    Raises
    ------
    InputFileError
        ``path`` is not an OME-Zarr image, has an NGFF version other than
        0.4 and 0.5, or has no level ``level`` (the message lists the levels).
    MissingExtraError
        ``zarr`` is not installed.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        level: int = 0,
        labels_store: str | os.PathLike | None = None,
        current_time_point: int = 0,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        where = repr(str(self.path))
        group = _open_input(self.path)
        try:  # damaged metadata (a dataset without a path, a scale of the wrong length ...): one clear error
            self._meta = meta = _read_meta(group, where)
            if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level < len(meta.levels):
                listed = ", ".join(f"{lv.index} ({lv.path!r}, {'x'.join(map(str, lv.shape))})" for lv in meta.levels)
                raise InputFileError(f"level={level!r}: {where} has resolution levels {listed}")
            self._level = meta.levels[int(level)]
            self._roles = roles = _axis_roles(meta.axes, self._level.shape, where)
            position = {pos: role for role, pos in roles.items()}
            self._role_at = [position.get(i) for i in range(len(meta.axes))]  # T, C, Z, Y, X or None, per axis
            self._array = group[self._level.path]
            shape = self._level.shape
            size = {role: shape[pos] for role, pos in roles.items()}
            self.time_point_count, self.plane_count, self._n_input = (size.get(role, 1) for role in "TZC")
            self.plane_shape = (size["Y"], size["X"])
            self._names = _channel_names(meta.omero, self._n_input)
            # a label image's shape: the level's with a channel axis of size 1
            self._label_shape = tuple(1 if role == "C" else n for role, n in zip(self._role_at, shape))
            self.voxel_size = _voxel_size(meta, self._level, roles, where)
        except InputFileError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
            raise InputFileError(f"{where}: its OME-Zarr metadata is damaged or not as NGFF describes it "
                                 f"({type(err).__name__}: {err})") from err
        self.current_time_point = check_index(
            "current_time_point", current_time_point, self.time_point_count, what=where, noun="time points"
        )
        self._labels_path = Path(labels_store) if labels_store is not None else self.path
        self._labels_root = None  # opened for writing at the first add_channel only
        self._zarr_format = 2 if self._meta.version == "0.4" else 3  # the labels' is the input's
        self._overwrite = bool(overwrite)
        # (name, zarr array, attached) per label channel; attached: an earlier run's (open_label_channel), never deleted
        self._added: list[tuple[str, Any, bool]] = []

    # ------------------------------------------------------------------ description

    @property
    def ngff_version(self) -> str:
        """The NGFF version of the input ("0.4" or "0.5")."""
        return self._meta.version

    @property
    def level(self) -> int:
        """The resolution level read (0: highest)."""
        return self._level.index

    @property
    def levels(self) -> list[tuple[int, ...]]:
        """Shape of every resolution level, highest first."""
        return [lv.shape for lv in self._meta.levels]

    @property
    def axes(self) -> str:
        """The input's axis names, in its order (e.g. ``"tczyx"``)."""
        return "".join(str(a.get("name")) for a in self._meta.axes)

    @property
    def channel_count(self) -> int:
        return self._n_input + len(self._added)

    @property
    def channel_names(self) -> list[str]:
        return self._names + [name for name, *_ in self._added]

    def label_image_path(self, channel: int) -> Path:
        """The folder ``labels/<name>`` of an added channel."""
        check_index("channel", channel, self.channel_count, noun="channels")
        if channel < self._n_input:
            raise ValueError(f"channel={channel} is an input channel of {self.path.name}, not a label image")
        return self._labels_path / "labels" / self._added[channel - self._n_input][0]

    # ------------------------------------------------------------------ planes

    def _check_channel(self, channel: int) -> None:
        check_index("channel", channel, self.channel_count, noun="channels", names=self.channel_names)

    def _index(self, channel: int, plane: int, time_point: int) -> tuple:
        """The array index of one (Y, X) plane: a whole number on every axis but y and x."""
        at = {"T": time_point, "C": channel, "Z": plane}
        return tuple(slice(None) if role in ("Y", "X") else int(at.get(role, 0)) for role in self._role_at)

    def _plane(self, array, index: tuple) -> NDArray:
        data = np.asarray(array[index])
        # NGFF recommends ...yx but allows x before y; planes are always returned (Y, X)
        return np.ascontiguousarray(data.T) if self._roles["Y"] > self._roles["X"] else data

    def get_channeldata(self, channel: int, plane: int, time_point: int) -> NDArray:
        """Return the (Y, X) plane, read from the chunks that hold it."""
        self._check(channel, plane, time_point)
        if channel < self._n_input:
            return self._plane(self._array, self._index(channel, plane, time_point))
        return self._plane(self._added[channel - self._n_input][1], self._index(0, plane, time_point))

    def set_channeldata(self, channel: int, plane: int, time_point: int, data: NDArray) -> None:
        """Write a (Y, X) plane into a label channel (one chunk); input channels are refused."""
        self._check(channel, plane, time_point)
        if channel < self._n_input:
            raise ReadOnlyInputError(
                f"channel {channel} comes from the input {self.path.name}, which is never modified; "
                "write results to a channel made with add_channel"
            )
        self._check_plane(data)
        array = self._added[channel - self._n_input][1]
        data = fit_to_dtype(data, np.dtype(array.dtype), f"channel {channel}, plane {plane}, time point {time_point}")
        if self._roles["Y"] > self._roles["X"]:
            data = data.T
        array[self._index(0, plane, time_point)] = data

    # ------------------------------------------------------------------ label channels

    def _labels_group(self):
        """The group ``labels/`` of the input store (opened for writing) or of the separate store."""
        if self._labels_root is None:
            path = str(self._labels_path)
            v3 = {"zarr_format": self._zarr_format, "use_consolidated": False} if _zarr_major() >= 3 else {}
            try:
                self._labels_root = _zarr().open_group(path, mode="a", **v3)
            except Exception as err:
                raise OutputError(f"labels cannot be written to {path!r} ({err}); give a writable folder as "
                                  "labels_store=") from err
        return self._labels_root.require_group("labels")

    def _source(self) -> str:
        """Relative path from labels/<name> to the image, as image-label's "source" wants it."""
        if self._labels_path.resolve() == self.path.resolve():
            return "../../"
        try:
            rel = os.path.relpath(self.path.resolve(), (self._labels_path / "labels" / "x").resolve())
        except ValueError:  # Windows: the labels store on another drive has no relative path to the image
            return self.path.resolve().as_uri() + "/"
        return Path(rel).as_posix() + "/"

    def add_channel(self, name: str, dtype: DTypeLike) -> int:
        """Create the label image ``labels/<name>`` (zeros, one chunk per plane) and return its channel index.

        Raises
        ------
        ValueError
            ``name`` is not a usable folder name, or ``dtype`` is not an integer type (NGFF labels are integers).
        OutputError
            ``labels/<name>`` exists already (and ``overwrite`` is False), or the store cannot be written.
        """
        name = _check_label_name(name)
        dtype = np.dtype(dtype)
        if dtype.kind not in "iu":
            raise ValueError(f"dtype={dtype}: an OME-Zarr label image holds whole numbers; use an integer type "
                             "such as uint16 or uint32")
        if name in (n for n, *_ in self._added):
            raise OutputError(f"name={name!r}: this image set has a label channel of that name already")
        labels = self._labels_group()
        if name in labels:
            if not self._overwrite:
                raise OutputError(f"{str(self._labels_path / 'labels' / name)!r} exists already; choose another "
                                  "name, or replace it with overwrite=True (scripts: OVERWRITE = True)")
            log.info("replacing the label image %s", self._labels_path / "labels" / name)
            del labels[name]
        chunks = tuple(n if role in ("Y", "X") else 1 for role, n in zip(self._role_at, self._label_shape))
        image = labels.require_group(name)
        array = _create_plane_array(image, "0", shape=self._label_shape, chunks=chunks, dtype=dtype,
                                    dim_names=[str(a.get("name")) for a in self._meta.axes],
                                    zarr_format=self._zarr_format)
        image.attrs.update(_label_attrs(self._meta, self._level, name, self._source()))
        # listed last, so a reader never finds a listed label image without its metadata
        _list_label(labels, self._meta.version, name, listed=True)
        self._added.append((name, array, False))
        return self.channel_count - 1

    def label_image_exists(self, name: str) -> bool:
        """Whether ``labels/<name>`` exists in the labels store (read without opening it for writing)."""
        return (self._labels_path / "labels" / _check_label_name(name)).is_dir()

    def open_label_channel(self, name: str) -> int:
        """Attach the existing label image ``labels/<name>`` as a channel, to write more of its planes.

        A resumed run continues the label image an interrupted one made; its
        planes already written are kept.

        Raises
        ------
        OutputError
            ``labels/<name>`` does not exist, or its array does not have the
            shape a label image of this image would have (it belongs to another image).
        """
        name = _check_label_name(name)
        where = str(self._labels_path / "labels" / name)
        labels = self._labels_group()
        if name not in labels or "0" not in labels[name]:
            raise OutputError(f"{where!r} is not a label image (no array '0'); nothing to continue")
        array = labels[name]["0"]
        if tuple(array.shape) != self._label_shape or np.dtype(array.dtype).kind not in "iu":
            raise OutputError(f"{where!r} holds an array of shape {tuple(array.shape)} and type {array.dtype}, but a "
                              f"label image of {self.path.name} has shape {self._label_shape} and an integer type")
        if name in (n for n, *_ in self._added):
            raise OutputError(f"name={name!r}: this image set has a label channel of that name already")
        self._added.append((name, array, True))
        return self.channel_count - 1

    def remove_channel(self, index: int) -> None:
        """Delete a label channel made by :meth:`add_channel`: its ``labels/<name>`` and its labels list entry.

        Later channels move down by one.  A label image attached with
        :meth:`open_label_channel` (an earlier run's) is only let go of, never deleted.

        Raises
        ------
        IndexRangeError
            ``index`` is not a channel of the image set (an ``IndexError``).
        ReadOnlyInputError
            ``index`` is a channel of the input, which is never modified.
        """
        check_index("index", index, self.channel_count, noun="channels", names=self.channel_names)
        if index < self._n_input:
            raise ReadOnlyInputError(f"channel {index} comes from the input {self.path.name}, which is never modified; "
                                  "only channels made with add_channel can be removed")
        name, _, attached = self._added.pop(index - self._n_input)
        if attached:  # an earlier run's label image, attached to continue it: let go, keep it
            return
        labels = self._labels_group()
        del labels[name]
        _list_label(labels, self._meta.version, name, listed=False)

    def close(self) -> None:
        """Forget the stores (Zarr keeps no files open between reads)."""
        self._labels_root = None

    def __enter__(self) -> OmeZarrImageSet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
