"""Everything about TIFF files: axes, metadata, lazy plane reading, safe writing.

Nothing outside this module imports tifffile.  Reading maps any series
(ImageJ hyperstack, OME-TIFF, plain multi-page) onto the host contract's
T, C, Z, Y, X axes and hands out single planes, read at their offset where the
file is uncompressed and contiguous, page by page otherwise.  Writing produces
an OME-TIFF (axes TCZYX, channel names, physical sizes) through a temporary
file that is renamed into place only once complete.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import tifffile
from numpy.typing import NDArray

from ..errors import TiffError

__all__ = ["TiffError", "TiffLayout", "TiffReader", "write_ome_tiff", "BIGTIFF_LIMIT"]

log = logging.getLogger(__name__)

#: Files whose pixel data exceed this many bytes are written as BigTIFF.
BIGTIFF_LIMIT = 2**32 - 2**25  # 4 GiB less room for the directories and metadata

_HOST_AXES = "TCZYX"
# tifffile's axes codes that we accept, and what they become
_AXIS_ALIASES = {"S": "C", "T": "T", "C": "C", "Z": "Z", "Y": "Y", "X": "X"}
_UNKNOWN_AXES = set("IQ")  # pages or samples of unknown meaning


@dataclass(frozen=True)
class TiffLayout:
    """What a TIFF series holds, in the host contract's terms."""

    axes: str  # of the series as stored, e.g. "TZCYX", with S/I/Q resolved
    shape: tuple[int, ...]
    dtype: np.dtype
    channel_names: tuple[str, ...]
    voxel_size: tuple[float, float, float] | None  # (z, y, x) in micrometres

    @property
    def sizes(self) -> dict[str, int]:
        """Length of each of T, C, Z, Y, X (1 where the file has no such axis)."""
        sizes = dict.fromkeys(_HOST_AXES, 1)
        sizes.update(zip(self.axes, self.shape))
        return sizes


def _resolve_axes(path: Path, file_axes: str, shape: tuple[int, ...], axes: str | None) -> str:
    """The axes to use: the user's where given, else the file's, else an error."""
    if axes is not None:
        given = axes.upper()
        if len(given) != len(shape) or sorted(set(given)) != sorted(given) or not set(given) <= set(_HOST_AXES):
            raise TiffError(
                f"axes={axes!r} does not fit {path.name}: its data have {len(shape)} dimensions {shape}; "
                f"give one letter per dimension from T, C, Z, Y, X, each at most once (e.g. 'ZYX')"
            )
        return given
    resolved = file_axes
    if "S" in resolved and "C" in resolved:
        raise TiffError(
            f"{path.name} has both colour samples and channels (axes {file_axes}); "
            "convert it to one grey value per channel first"
        )
    resolved = "".join(_AXIS_ALIASES.get(a, a) for a in resolved)
    unknown = [a for a in resolved if a not in _HOST_AXES]
    if unknown:
        raise TiffError(
            f"{path.name} does not say what its dimension(s) {', '.join(unknown)} of shape {shape} mean "
            f"(axes read from the file: {file_axes!r}); give the axes yourself, "
            f"e.g. axes='{'Z' * (len(shape) - 2)}YX' for a Z stack or 'T' + 'YX' for a time series"
        )
    return resolved


def _ome_metadata(tif: tifffile.TiffFile) -> tuple[list[str], tuple[float, float, float] | None]:
    pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
    if isinstance(pixels, list):
        pixels = pixels[0]
    pixels = pixels["Pixels"]
    channels = pixels.get("Channel", [])
    if isinstance(channels, dict):
        channels = [channels]
    names = [str(ch.get("Name", "")) for ch in channels]
    size = [pixels.get(f"PhysicalSize{a}") for a in "ZYX"]
    units = [pixels.get(f"PhysicalSize{a}Unit", "µm") for a in "ZYX"]
    factor = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}
    if size[1] is None or size[2] is None or any(u not in factor for u in units):
        return names, None
    z = float(size[0]) * factor[units[0]] if size[0] is not None else 1.0
    return names, (z, float(size[1]) * factor[units[1]], float(size[2]) * factor[units[2]])


def _imagej_metadata(tif: tifffile.TiffFile) -> tuple[list[str], tuple[float, float, float] | None]:
    meta = tif.imagej_metadata or {}
    page = tif.pages[0]
    unit = str(meta.get("unit", "")).lower().replace("\\u00b5", "µ")
    factor = {"micron": 1.0, "um": 1.0, "µm": 1.0, "microns": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit)
    xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
    if factor is None or xres is None or yres is None:
        return [], None
    x = xres.value[1] / xres.value[0] * factor
    y = yres.value[1] / yres.value[0] * factor
    z = float(meta.get("spacing", 1.0)) * factor
    return [], (z, y, x)


class TiffReader:
    """Read single planes of a TIFF file lazily, as (t, c, z) -> (Y, X).

    Parameters
    ----------
    path
        The TIFF file; it is opened read-only and never written.
    axes
        The axes of the file's data, e.g. ``"TZCYX"``; needed only where the
        file does not say (plain multi-page TIFF), and then overrides the file.
    """

    def __init__(self, path: str | os.PathLike, *, axes: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise TiffError(f"input file {str(self.path)!r} does not exist")
        try:
            self._tif = tifffile.TiffFile(self.path)
        except (tifffile.TiffFileError, ValueError, OSError) as err:
            raise TiffError(f"{self.path.name} is not a TIFF file that can be read: {err}") from err
        series = self._tif.series[0]
        self._series = series
        shape = tuple(series.shape)
        file_axes = series.axes
        resolved = _resolve_axes(self.path, file_axes, shape, axes)
        if not ("Y" in resolved and "X" in resolved and resolved.index("Y") < resolved.index("X")):
            raise TiffError(f"{self.path.name}: axes {resolved!r} must contain Y then X")
        if np.dtype(series.dtype).kind not in "uif":
            raise TiffError(f"{self.path.name} holds {series.dtype} data; only integer or float grey values are supported")
        # pages hold the trailing Y, X (and S for colour samples); the rest index pages
        self._samples_axis = None
        if file_axes.endswith("S") and axes is None:
            self._samples_axis = len(shape) - 1
        names: list[str] = []
        voxel = None
        try:
            if self._tif.is_ome:
                names, voxel = _ome_metadata(self._tif)
            elif self._tif.is_imagej:
                names, voxel = _imagej_metadata(self._tif)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:  # damaged metadata: keep going
            log.warning("%s: could not read its physical sizes or channel names (%s)", self.path.name, err)
        sizes = dict(zip(resolved, shape))
        n_channels = sizes.get("C", 1)
        if not names and self._tif.is_imagej:
            names = self._imagej_channel_names(resolved, shape)
        if len(names) != n_channels or not all(names):
            names = [f"Channel {c}" for c in range(n_channels)]
        self.layout = TiffLayout(resolved, shape, np.dtype(series.dtype), tuple(names), voxel)
        # Uncompressed contiguous data are read plane by plane at their offset in the file: as lazy as a
        # memory map, but the pages read do not stay resident, so memory does not grow with the stack.
        self._offset = None
        self._in_memory = None
        yx_last = resolved.endswith("YX")
        if series.dataoffset is not None and self._samples_axis is None and yx_last:
            self._offset = int(series.dataoffset)
            self._raw = open(self.path, "rb", buffering=0)  # noqa: SIM115 (closed in close())
            self._lock = threading.Lock()
        plane_shape = (sizes["Y"], sizes["X"]) + ((shape[-1],) if self._samples_axis is not None else ())
        if self._offset is None and tuple(series.keyframe.shape) != plane_shape:
            # pages that are not single planes (planar samples, volumes in one page): read the series once
            log.warning("%s: its pages are not single planes; reading the whole series into memory", self.path.name)
            self._in_memory = series.asarray().reshape(shape)
        log.info(
            "opened %s: axes %s, shape %s, %s, voxel size %s",
            self.path.name, resolved, shape, series.dtype, voxel or "unknown",
        )

    def _imagej_channel_names(self, axes: str, shape: tuple[int, ...]) -> list[str]:
        """ImageJ keeps channel names as slice labels: take those of the first time point and plane."""
        labels = (self._tif.imagej_metadata or {}).get("Labels")
        page_shape = [n for a, n in zip(axes, shape) if a not in "YX"]
        if not isinstance(labels, list) or len(labels) != int(np.prod(page_shape)) or "C" not in axes:
            return []
        page_axes = [a for a in axes if a not in "YX"]
        return [
            str(labels[int(np.ravel_multi_index([c if a == "C" else 0 for a in page_axes], page_shape))])
            for c in range(shape[axes.index("C")])
        ]

    def plane(self, t: int, c: int, z: int) -> NDArray:
        """Return the (Y, X) plane of time point ``t``, channel ``c``, plane ``z``."""
        index = {"T": t, "C": c, "Z": z}
        axes = self.layout.axes
        if self._in_memory is not None:
            key = tuple(index[a] if a in index else slice(None) for a in axes)
            return np.asarray(self._in_memory[key])
        page_axes = [a for a in axes if a not in "YX"]
        if self._samples_axis is not None:
            page_axes = page_axes[:-1]  # the last is the samples axis, inside each page
        sizes = self.layout.sizes
        page = int(np.ravel_multi_index([index[a] for a in page_axes], [sizes[a] for a in page_axes])) if page_axes else 0
        if self._offset is not None:
            out = np.empty((sizes["Y"], sizes["X"]), np.dtype(self._series.dtype))
            with self._lock:  # one file position, shared by reading threads
                self._raw.seek(self._offset + page * out.nbytes)
                if self._raw.readinto(memoryview(out).cast("B")) != out.nbytes:
                    raise TiffError(f"{self.path.name} is truncated: plane t={t}, c={c}, z={z} lies beyond its end")
            return out
        data = self._series.pages[page].asarray()
        if self._samples_axis is not None:
            data = data[..., c]
        return data

    def close(self) -> None:
        self._in_memory = None
        if self._offset is not None:
            self._raw.close()
            self._offset = None
        self._tif.close()


def write_ome_tiff(
    path: str | os.PathLike,
    planes: Iterable[NDArray],
    *,
    shape: tuple[int, int, int, int, int],
    dtype: np.dtype,
    channel_names: Sequence[str],
    voxel_size: tuple[float, float, float] | None,
) -> Path:
    """Write a TCZYX OME-TIFF from planes given in T, C, Z order, atomically.

    The data go to a hidden temporary file beside ``path`` that is renamed to
    ``path`` only when complete, so an interrupted run leaves no file that looks
    finished.  Data over 4 GiB are written as BigTIFF.

    Parameters
    ----------
    path
        The file to create (overwritten if it exists).
    planes
        An iterable of (Y, X) arrays, T-major then C then Z, so that the data
        never have to be in memory at once.
    shape
        (T, C, Z, Y, X).
    dtype
        The file's data type; each plane is cast to it.
    channel_names
        One name per channel.
    voxel_size
        (z, y, x) in micrometres, or None where unknown.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    metadata: dict = {"axes": _HOST_AXES, "Channel": {"Name": list(channel_names)}}
    resolution = None
    if voxel_size is not None:
        z, y, x = voxel_size
        metadata.update(
            PhysicalSizeZ=z, PhysicalSizeY=y, PhysicalSizeX=x,
            PhysicalSizeZUnit="µm", PhysicalSizeYUnit="µm", PhysicalSizeXUnit="µm",
        )
        resolution = (1e4 / x, 1e4 / y)  # pixels per centimetre, for readers that ignore OME
    tmp = path.with_name(f".{path.name}.partial")
    planes_cast = (np.asarray(p).astype(dtype, copy=False) for p in planes)
    try:
        tifffile.imwrite(
            tmp,
            data=planes_cast,
            shape=shape,
            dtype=dtype,
            ome=True,
            bigtiff=nbytes > BIGTIFF_LIMIT,
            photometric="minisblack",
            metadata=metadata,
            resolution=resolution,
            resolutionunit="CENTIMETER" if resolution else None,
        )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("wrote %s (%s, %.1f MB%s)", path, "x".join(map(str, shape)), nbytes / 1e6, ", BigTIFF" if nbytes > BIGTIFF_LIMIT else "")
    return path
