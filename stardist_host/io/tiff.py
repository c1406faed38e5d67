"""Everything about TIFF files: axes, metadata, lazy plane reading, safe writing.

Nothing outside this module imports tifffile.  Reading maps any series
(ImageJ hyperstack, OME-TIFF, plain multi-page) onto the host contract's
T, C, Z, Y, X axes and hands out single planes in the file's own type: read at
their offset (in the file's byte order) where the file is uncompressed and
contiguous, page by page otherwise.  Colour samples (RGB, RGBA) become
channels.  Series that share T, Z, Y and X are read as one image with their
channels one after the other.  A damaged, truncated or empty file is refused
when it is opened, before any work.

Writing produces an OME-TIFF (axes TCZYX, channel names, physical sizes)
through :func:`~stardist_host.io.files.atomic_write`: one image in a type that
holds every channel's values exactly where an integer type does
(:func:`ome_layout`), else one image (series) per run of channels of one type,
so that no value changes.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import tifffile
from numpy.typing import DTypeLike, NDArray

from ..errors import TiffError
from .files import atomic_write

__all__ = ["BIGTIFF_LIMIT", "UNITS_UM", "OmeImage", "OmeLayout", "TiffError", "TiffLayout", "TiffReader", "ome_layout",
           "write_ome_images", "write_ome_tiff"]

log = logging.getLogger(__name__)

#: Files whose pixel data exceed this many bytes are written as BigTIFF.
BIGTIFF_LIMIT = 2**32 - 2**25  # 4 GiB less room for the directories and metadata

_HOST_AXES = "TCZYX"
# the example in the error for a file whose axes are unknown, by number of dimensions
_EXAMPLE_AXES = {2: "YX", 3: "ZYX", 4: "TZYX"}


@dataclass(frozen=True)
class TiffLayout:
    """What a TIFF file holds, in the host contract's terms."""

    axes: str  # of the series as stored, e.g. "TZCYX", with S/I/Q resolved; "TCZYX" for series combined
    shape: tuple[int, ...]
    channel_names: tuple[str, ...]
    voxel_size: tuple[float | None, float, float] | None  # (z, y, x) in micrometres, z None where unknown
    dtypes: tuple[np.dtype, ...]  # one per channel

    @property
    def sizes(self) -> dict[str, int]:
        """Length of each of T, C, Z, Y, X (1 where the file has no such axis)."""
        return {**dict.fromkeys(_HOST_AXES, 1), **dict(zip(self.axes, self.shape))}


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
    if "S" in file_axes and "C" in file_axes:
        raise TiffError(
            f"{path.name} has both colour samples and channels (axes {file_axes}); "
            "convert it to one grey value per channel first"
        )
    resolved = file_axes.replace("S", "C")  # colour samples become channels
    unknown = [a for a in resolved if a not in _HOST_AXES]
    if unknown:
        raise TiffError(
            f"{path.name} does not say what its dimension(s) {', '.join(unknown)} of shape {shape} mean "
            f"(axes read from the file: {file_axes!r}); give the axes yourself, one letter per dimension, "
            f"e.g. axes='{_EXAMPLE_AXES.get(len(shape), 'TZCYX')}'"
        )
    return resolved


#: Micrometres per unit, for the length units that OME-XML, ImageJ, NGFF axes (UDUNITS-2 names) and bioio write
#: (ASCII, micro sign U+00B5, Greek mu U+03BC, Angstrom as letter U+00C5 and as sign U+212B).
UNITS_UM = {
    "\u00b5m": 1.0, "\u03bcm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "nm": 1e-3, "\u00c5": 1e-4, "\u212b": 1e-4, "pm": 1e-6, "mm": 1e3, "cm": 1e4, "m": 1e6, "angstrom": 1e-4,
    "picometer": 1e-6, "nanometer": 1e-3, "millimeter": 1e3, "centimeter": 1e4, "decimeter": 1e5, "meter": 1e6,
}
# ImageJ's names for "not calibrated": no size, and no warning either
_NO_UNIT = {"", "pixel", "pixels", "none"}


def _micrometres(value, unit: str, *, where: str) -> float | None:
    """``value`` in ``unit`` as micrometres; None (with a warning) for a unit that is not a known length."""
    unit = str(unit).strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ")
    factor = UNITS_UM.get(unit, UNITS_UM.get(unit.lower()))
    if factor is None:
        if unit.lower() not in _NO_UNIT:
            log.warning("%s: unit %r is not a length unit known here (\u00b5m, um, nm, \u00c5, mm, cm, m); "
                        "that size is taken as unknown", where, unit)
        return None
    size = float(value) * factor
    if not (np.isfinite(size) and size > 0):
        log.warning("%s: size %r %s is not a positive length; it is taken as unknown", where, value, unit)
        return None
    return size


def _voxel(values: Sequence, units: Sequence[str], where: str) -> tuple | None:
    """(z, y, x) in µm of ``values`` (None where absent) in ``units``; None where y or x is unknown, z may be None."""
    z, y, x = (None if value is None else _micrometres(value, unit, where=where) for value, unit in zip(values, units))
    return None if y is None or x is None else (z, y, x)


def _ome_metadata(tif: tifffile.TiffFile, index: int, n_series: int) -> tuple[list[str], tuple | None]:
    """Channel names and (z, y, x) in µm of OME image ``index``, the file's ``index``-th series."""
    images = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
    if not isinstance(images, list):
        images = [images]
    # tifffile makes one series per OME image that has data; pick by position only when the counts agree
    pixels = images[index if len(images) == n_series else 0]["Pixels"]
    channels = pixels.get("Channel", [])
    if isinstance(channels, dict):
        channels = [channels]
    names = [str(ch.get("Name", "")) for ch in channels]
    values = [pixels.get(f"PhysicalSize{a}") for a in "ZYX"]
    units = [pixels.get(f"PhysicalSize{a}Unit", "µm") for a in "ZYX"]  # OME's default unit is the micrometre
    return names, _voxel(values, units, f"{Path(tif.filename).name} (OME PhysicalSize)")


def _imagej_voxel(tif: tifffile.TiffFile) -> tuple | None:
    """(z, y, x) in µm from ImageJ's unit, the pixel resolution and ``spacing`` (z None where absent)."""
    meta = tif.imagej_metadata or {}
    page = tif.pages[0]
    xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
    if xres is None or yres is None or "unit" not in meta:
        return None
    values = (meta.get("spacing"), yres.value[1] / yres.value[0], xres.value[1] / xres.value[0])
    return _voxel(values, [meta["unit"]] * 3, f"{Path(tif.filename).name} (ImageJ calibration)")


class _Part:
    """One series of the file, mapped onto T, C, Z, Y, X and read a plane at a time."""

    def __init__(self, tif: tifffile.TiffFile, index: int, path: Path, axes: str | None) -> None:
        series = tif.series[index]
        self.index, self.series, self.path = index, series, path
        self.shape = tuple(series.shape)
        self.axes = _resolve_axes(path, series.axes, self.shape, axes)
        if not ("Y" in self.axes and "X" in self.axes and self.axes.index("Y") < self.axes.index("X")):
            raise TiffError(f"{path.name}: axes {self.axes!r} must contain Y then X")
        self.dtype = np.dtype(series.dtype)  # tifffile's dtype is native, whatever the file's byte order
        if self.dtype.kind not in "uif":
            raise TiffError(f"{path.name} holds {series.dtype} data; only integer or float grey values are supported")
        self.sizes = {**dict.fromkeys(_HOST_AXES, 1), **dict(zip(self.axes, self.shape))}
        # colour samples (RGB, RGBA) are the last axis inside each page; they become channels
        self.samples = axes is None and series.axes.endswith("S")
        in_pages = self.axes[:-1] if self.samples else self.axes
        self.page_axes = [a for a in in_pages if a not in "YX"]
        self.page_shape = [self.sizes[a] for a in self.page_axes]
        self.n_pages = int(np.prod(self.page_shape))
        self.geometry = tuple(self.sizes[a] for a in "TZYX")
        # uncompressed contiguous data are read at their offset, in the file's byte order
        self.offset = int(series.dataoffset) if series.dataoffset is not None and in_pages.endswith("YX") else None
        self.file_dtype = np.dtype(tif.byteorder + self.dtype.char)
        self.plane_shape = (self.sizes["Y"], self.sizes["X"]) + ((self.shape[-1],) if self.samples else ())
        self.whole = self.offset is None and tuple(series.keyframe.shape) != self.plane_shape
        self.in_memory: NDArray | None = None
        self.names: list[str] = []
        self.voxel: tuple | None = None
        try:
            if tif.is_ome:
                self.names, self.voxel = _ome_metadata(tif, index, len(tif.series))
            elif tif.is_imagej:
                self.voxel = _imagej_voxel(tif)
                # ImageJ keeps channel names as slice labels (one per page): those of the first time point and plane
                labels = (tif.imagej_metadata or {}).get("Labels")
                if not self.samples and "C" in self.axes and isinstance(labels, list) and len(labels) == self.n_pages:
                    self.names = [str(labels[self.page_of(0, c, 0)]) for c in range(self.sizes["C"])]
        except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError, SyntaxError) as err:  # damaged: go on
            log.warning("%s: could not read its physical sizes or channel names (%s)", path.name, err)
        if len(self.names) != self.sizes["C"] or not all(self.names):
            self.names = []

    def page_of(self, t: int, c: int, z: int) -> int:
        index = {"T": t, "C": c, "Z": z}
        if not self.page_axes:
            return 0
        return int(np.ravel_multi_index([index[a] for a in self.page_axes], self.page_shape))

    def where(self, page: int) -> str:
        """Page ``page`` as t=, c=, z= (the axes that index pages)."""
        if not self.page_axes:
            return "the first plane"
        at = np.unravel_index(page, self.page_shape)
        return ", ".join(f"{a.lower()}={int(i)}" for a, i in zip(self.page_axes, at))

    def check_within(self, size: int, tif: tifffile.TiffFile) -> None:
        """Raise TiffError if some of the series' data lie beyond the file's ``size`` bytes."""
        if self.offset is not None:
            page_bytes = int(np.prod(self.plane_shape)) * self.dtype.itemsize
            if self.offset + self.n_pages * page_bytes <= size:
                return
            self._truncated(size, max(0, (size - self.offset) // page_bytes))
        for k, page in enumerate(self.series.pages):
            if page is None:
                raise TiffError(f"{self.path.name} is damaged: plane {self.where(k)} of image {self.index} is missing")
            if page.parent is not tif:  # a page in another file of a multi-file OME-TIFF
                continue
            ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts) if n]
            if ends and max(ends) > size:
                self._truncated(size, k)

    def _truncated(self, size: int, whole: int) -> None:
        last = "no plane can be read"
        if whole:
            last = f"the last plane that can be read whole is {self.where(whole - 1)} (page {whole - 1} of {self.n_pages})"
        raise TiffError(
            f"{self.path.name} is truncated ({size} bytes, its data need more): {last} "
            "(an interrupted copy or download? copy the file again)"
        )

    def read(self, t: int, c: int, z: int, raw, lock: threading.Lock) -> NDArray:
        if self.whole:
            if self.in_memory is None:
                log.warning("%s: its pages are not single planes; reading the whole image into memory", self.path.name)
                with lock:
                    self.in_memory = self.series.asarray().reshape(self.shape)
            return self.in_memory[tuple({"T": t, "C": c, "Z": z}.get(a, slice(None)) for a in self.axes)].copy()
        page = self.page_of(t, c, z)
        if self.offset is not None:
            out = np.empty(self.plane_shape, self.file_dtype)
            with lock:  # one file position, shared by reading threads
                raw.seek(self.offset + page * out.nbytes)
                if raw.readinto(memoryview(out).cast("B")) != out.nbytes:
                    raise TiffError(f"{self.path.name} is truncated: plane t={t}, c={c}, z={z} lies beyond its end")
            data = out.astype(self.dtype, copy=False)  # to native byte order
        else:
            with lock:  # tifffile's own file handle is not shared safely between threads
                try:
                    data = self.series.pages[page].asarray()
                except Exception as err:  # a damaged compressed plane: the codec's own error, whatever it is
                    raise TiffError(
                        f"{self.path.name} is damaged: plane t={t}, c={c}, z={z} cannot be decoded "
                        f"({type(err).__name__}: {err}); copy the file again"
                    ) from err
        return data[..., c] if self.samples else data


class TiffReader:
    """Read single planes of a TIFF file lazily, as (t, c, z) -> (Y, X).

    Every series (image) of the file that has the same T, Z, Y and X is read
    as one image with the channels of all series one after the other (an
    OME-TIFF written by :meth:`TiffImageSet.save` from a float input with
    integer labels is such a file).  Colour samples (RGB, RGBA)
    are channels.  Planes come in the file's own type, in native byte order.

    Parameters
    ----------
    path
        The TIFF file; it is opened read-only and never written.
    axes
        The axes of the file's data, e.g. ``"TZCYX"``; needed only where the
        file does not say (plain multi-page TIFF), and then overrides the file.
    series
        Read only this series (0-based) of a file with several; needed where
        the series differ in T, Z, Y or X.

    Raises
    ------
    TiffError
        The file is missing, a folder, empty, not a TIFF, truncated or damaged,
        or its axes or series are ambiguous; the message names the file.
    """

    def __init__(self, path: str | os.PathLike, *, axes: str | None = None, series: int | None = None) -> None:
        self.path = Path(path)
        self._tif = _open(self.path)
        try:
            self._parts = self._choose(axes, series)
            size = os.path.getsize(self.path)
            for part in self._parts:
                part.check_within(size, self._tif)
            self.layout = self._layout()
        except BaseException:
            self._tif.close()
            raise
        self._raw = open(self.path, "rb", buffering=0)  # noqa: SIM115 (closed in close())
        self._lock = threading.Lock()
        self._channels = [(part, c) for part in self._parts for c in range(part.sizes["C"])]
        log.info(
            "opened %s: axes %s, shape %s, %s, voxel size %s", self.path.name, self.layout.axes,
            self.layout.shape, "/".join(sorted({str(d) for d in self.layout.dtypes})), self.layout.voxel_size or "unknown",
        )

    def _choose(self, axes: str | None, series: int | None) -> list[_Part]:
        """The series to read: the one asked for, the only one, or all where they share T, Z, Y, X."""
        count = len(self._tif.series)
        if series is not None or count == 1:
            series = 0 if series is None else series
            if isinstance(series, bool) or not isinstance(series, (int, np.integer)) or not 0 <= series < count:
                raise TiffError(
                    f"series={series!r}: {self.path.name} holds images (series) 0..{count - 1}: {self._listing()}"
                )
            return [_Part(self._tif, int(series), self.path, axes)]
        try:
            parts = [_Part(self._tif, i, self.path, axes) for i in range(count)]
        except TiffError:
            parts = []
        if not parts or len({p.geometry for p in parts}) != 1:
            raise TiffError(
                f"{self.path.name} holds {count} images (series) that differ in size or axes ({self._listing()}); "
                f"choose one with series=0..{count - 1}"
            )
        return parts

    def _listing(self) -> str:
        return "; ".join(
            f"{i}: {s.axes} {'x'.join(map(str, s.shape))} {s.dtype}" for i, s in enumerate(self._tif.series)
        )

    def _layout(self) -> TiffLayout:
        first = self._parts[0]
        names: list[str] = []
        for part in self._parts:  # a series without names gets "Channel <index>" for its channels
            names += part.names or [f"Channel {len(names) + c}" for c in range(part.sizes["C"])]
        for part in self._parts[1:]:
            if part.voxel != first.voxel:
                log.warning("%s: image %d states voxel size %s, image 0 %s; using image 0's",
                            self.path.name, part.index, part.voxel, first.voxel)
        dtypes = tuple(part.dtype for part in self._parts for _ in range(part.sizes["C"]))
        if len(self._parts) == 1:
            axes, shape = first.axes, first.shape
        else:
            t, z, y, x = first.geometry
            axes, shape = _HOST_AXES, (t, len(names), z, y, x)
        return TiffLayout(axes, shape, tuple(names), first.voxel, dtypes)

    def plane(self, t: int, c: int, z: int) -> NDArray:
        """Return a new (Y, X) array: the plane of time point ``t``, channel ``c``, plane ``z``."""
        part, channel = self._channels[c]
        return part.read(t, channel, z, self._raw, self._lock)

    def close(self) -> None:
        """Close the file."""
        for part in self._parts:
            part.in_memory = None
        self._raw.close()
        self._tif.close()


def _open(path: Path) -> tifffile.TiffFile:
    """Open ``path`` with tifffile, turning every way it can fail into one TiffError line naming the file."""
    if path.is_dir():
        raise TiffError(f"input {str(path)!r} is a folder, not a file; give a TIFF file inside it")
    if not path.is_file():
        raise TiffError(f"input file {str(path)!r} does not exist")
    if os.path.getsize(path) == 0:
        raise TiffError(f"{path.name} is empty (0 bytes); it is not a TIFF file (an interrupted copy?)")
    # collects the errors and warnings tifffile logs (not raises) while it parses a damaged file
    caught = logging.handlers.BufferingHandler(capacity=2**31)
    caught.setLevel(logging.WARNING)
    logger = logging.getLogger("tifffile")
    logger.addHandler(caught)
    # tifffile logs (not raises) much of the damage it meets: its records stop here and are folded into
    # the one error, or logged as our warning, instead of reaching the console as lines of their own
    propagate, logger.propagate = logger.propagate, False
    tif = None
    try:
        tif = tifffile.TiffFile(path)
        series = tif.series  # parsing the series is where tifffile meets most damage
    except Exception as err:  # tifffile raises many types (struct.error, IndexError ...) on damaged files
        if tif is not None:
            tif.close()
        with open(path, "rb") as f:
            header = f.read(4)
        if header in _TIFF_HEADERS:
            raise TiffError(f"{path.name} is a damaged or truncated TIFF file ({err}); copy the file again") from err
        raise TiffError(f"{path.name} is not a TIFF file that can be read: {err}") from err
    finally:
        logger.removeHandler(caught)
        logger.propagate = propagate
    if not series:
        tif.close()
        raise TiffError(f"{path.name} holds no image data")
    # offsets beyond the end mean lost data; anything else (malformed OME-XML, odd ImageJ metadata) is
    # metadata tifffile could not use: the pixels are there, so say so and go on with what the file says
    messages = [record.getMessage() for record in caught.buffer]
    damage = [m for m in messages if any(word in m for word in ("offset", "truncat", "corrupt"))]
    for message in messages:
        if message not in damage:
            log.warning("%s: some of its metadata cannot be read (%s); reading it without", path.name, message)
    if damage:
        ij = _imagej_truncated(tif, os.path.getsize(path))
        pages = len(tif.pages)
        tif.close()
        raise TiffError(ij or (
            f"{path.name} is truncated or damaged ({damage[0]}); only {pages} of its pages can be found, "
            f"the last readable plane is page {pages - 1} (an interrupted copy or download? copy the file again)"
        ))
    return tif


# classic and BigTIFF, little- and big-endian
_TIFF_HEADERS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _imagej_truncated(tif: tifffile.TiffFile, size: int) -> str | None:
    """For an ImageJ file whose planes stop early, a message naming the last whole plane as t, z, c."""
    meta = tif.imagej_metadata if tif.is_imagej else None
    page = tif.pages[0]
    if not meta or int(meta.get("images", 1)) <= 1 or not page.dataoffsets or page.compression != 1:
        return None
    images = int(meta["images"])
    dims = [int(meta.get(k, 1)) for k in ("frames", "slices", "channels")]  # ImageJ's plane order: t, z, c
    if int(np.prod(dims)) != images:  # a plain stack: its planes are slices
        dims = [1, images, 1]
    whole = (size - page.dataoffsets[0]) // (int(np.prod(page.shape)) * page.dtype.itemsize)
    if whole >= images:
        return None
    last = "no plane can be read"
    if whole > 0:
        t, z, c = np.unravel_index(whole - 1, dims)
        last = f"the last plane that can be read whole is t={t}, z={z}, c={c} (plane {whole - 1} of {images})"
    return f"{Path(tif.filename).name} is truncated ({size} bytes): {last} (an interrupted copy? copy the file again)"


@dataclass(frozen=True)
class OmeLayout:
    """Which channels an OME-TIFF holds in which of its images (series), and in what type.

    Attributes
    ----------
    images
        One ``(dtype, channels)`` per image, in file order; ``channels`` are
        positions in the channel list the layout was made for, which is also
        the channel index that :class:`TiffReader` gives them reading the file
        back (the images' channels one after the other).
    dtypes
        The channels' own types, one per channel.
    """

    images: tuple[tuple[np.dtype, tuple[int, ...]], ...]
    dtypes: tuple[np.dtype, ...]

    @property
    def one_image(self) -> bool:
        """Whether the file holds one image, which every reader opens with all channels."""
        return len(self.images) == 1

    def locate(self, channel: int) -> tuple[int, int]:
        """(image, channel within that image) of the file's ``channel``: where Fiji shows it."""
        for image, (_, channels) in enumerate(self.images):
            if channel in channels:
                return image, channels.index(channel)
        raise IndexError(f"channel {channel}: the layout has channels 0..{len(self.dtypes) - 1}")

    def describe(self) -> str:
        """A phrase for a run's summary, e.g. ``one OME image, uint16 (uint8 channels widened, values unchanged)``."""
        if self.one_image:
            dtype = self.images[0][0]
            widened = sorted({str(d) for d in self.dtypes if d != dtype})
            return f"one OME image, {dtype}" + (f" ({', '.join(widened)} channels widened, values unchanged)"
                                                if widened else "")
        parts = ", ".join(f"image {i}: channel{'s' if len(c) > 1 else ''} {', '.join(map(str, c))} {d}"
                          for i, (d, c) in enumerate(self.images))
        first = ", ".join(map(str, self.images[0][1]))
        return (f"{len(self.images)} OME images (series) as no integer type holds every channel exactly ({parts}); "
                f"readers that open only the first image show only channel(s) {first}")


def ome_layout(dtypes: Sequence[DTypeLike]) -> OmeLayout:
    """The images an OME-TIFF of channels of ``dtypes`` is written as: one where an integer type holds all values.

    Where every channel is an integer type, the file holds one image in the
    smallest integer type that holds every channel's values exactly (numpy's
    type promotion: uint8 and uint16 -> uint16, uint8 and uint32 -> uint32,
    int8 and uint16 -> int32), so that readers that open the first image only
    (napari, ``tifffile.imread``, bioio's default scene, Fiji without asking)
    show every channel, labels included.  Otherwise (a float input with integer
    labels, which stay integers for the programs that read them as labels, or
    an OUTPUT_PROBABILITY channel after them) each run of consecutive channels
    that one type holds exactly, integers or one float type, is an image of its own.

    Parameters
    ----------
    dtypes
        The channels' types, in file order.

    Returns
    -------
    OmeLayout
    """
    dtypes = tuple(np.dtype(d) for d in dtypes)
    runs: list[tuple[np.dtype, list[int]]] = []
    for c, dtype in enumerate(dtypes):
        joint = np.result_type(runs[-1][0], dtype) if runs else None
        # numpy promotes integers to an integer only where it holds both ranges
        if joint is not None and (joint.kind in "ui" or runs[-1][0] == dtype):
            runs[-1] = (joint, runs[-1][1] + [c])
        else:
            runs.append((dtype, [c]))
    return OmeLayout(tuple((d, tuple(c)) for d, c in runs), dtypes)


@dataclass(frozen=True)
class OmeImage:
    """One image (series) of an OME-TIFF to write, axes TCZYX.

    Attributes
    ----------
    planes
        (Y, X) arrays, T-major then C then Z, so that the data never have to be
        in memory at once.
    shape
        (T, C, Z, Y, X).
    dtype
        The image's data type; planes must fit it exactly (they are cast).
    channel_names
        One name per channel.
    """

    planes: Iterable[NDArray]
    shape: tuple[int, int, int, int, int]
    dtype: np.dtype
    channel_names: Sequence[str]


def write_ome_tiff(
    path: str | os.PathLike,
    planes: Iterable[NDArray],
    *,
    shape: tuple[int, int, int, int, int],
    dtype: np.dtype,
    channel_names: Sequence[str],
    voxel_size: tuple[float | None, float, float] | None,
) -> Path:
    """Write a TCZYX OME-TIFF of one image from planes given in T, C, Z order, atomically.

    See :func:`write_ome_images`; the parameters are those of :class:`OmeImage`.
    """
    return write_ome_images(path, [OmeImage(planes, shape, np.dtype(dtype), channel_names)], voxel_size=voxel_size)


def write_ome_images(
    path: str | os.PathLike, images: Sequence[OmeImage], *, voxel_size: tuple[float | None, float, float] | None,
) -> Path:
    """Write one OME-TIFF holding ``images`` as its series, each in its own type, atomically.

    The data go to a hidden temporary file beside ``path`` that replaces
    ``path`` only when complete (:func:`~stardist_host.io.files.atomic_write`),
    so an interrupted run leaves no file that looks finished.  Data over 4 GiB
    are written as BigTIFF.

    Parameters
    ----------
    path
        The file to create (replaced if it exists).
    images
        The images; all share T, Z, Y, X and the voxel size.
    voxel_size
        (z, y, x) in micrometres, z None where unknown (then no PhysicalSizeZ
        is written), or None where unknown.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    OutputBusyError
        The finished file could not replace ``path``; it was kept beside it.
    """
    path = Path(path)
    nbytes = sum(int(np.prod(image.shape)) * np.dtype(image.dtype).itemsize for image in images)
    bigtiff = nbytes > BIGTIFF_LIMIT
    sizes: dict = {}
    resolution = None
    if voxel_size is not None:
        z, y, x = voxel_size
        sizes.update(PhysicalSizeY=y, PhysicalSizeX=x, PhysicalSizeYUnit="µm", PhysicalSizeXUnit="µm")
        if z is not None:
            sizes.update(PhysicalSizeZ=z, PhysicalSizeZUnit="µm")
        resolution = (1e4 / x, 1e4 / y)  # pixels per centimetre, for readers that ignore OME
    with atomic_write(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff, ome=True) as writer:
        for image in images:
            writer.write(
                data=(np.asarray(p).astype(image.dtype, copy=False) for p in image.planes),
                shape=tuple(image.shape), dtype=image.dtype, photometric="minisblack",
                metadata={"axes": _HOST_AXES, "Channel": {"Name": list(image.channel_names)}, **sizes},
                resolution=resolution, resolutionunit="CENTIMETER" if resolution else None,
            )
    log.info(
        "wrote %s (%s, %.1f MB%s)", path, " + ".join(f"{'x'.join(map(str, i.shape))} {np.dtype(i.dtype)}" for i in images),
        nbytes / 1e6, ", BigTIFF" if bigtiff else "",
    )
    return path
