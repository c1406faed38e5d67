"""Microscope files (CZI, LIF, ND2, OME-TIFF ...) as read-only image sets, through bioio and its plugins.

:class:`BioioImageSet` opens one scene (series) of a file with
``bioio.BioImage`` and reads it one (Y, X) plane at a time from bioio's lazy
dask array: the file is never loaded whole.  Which formats open depends on the
bioio plugins installed (``bioio-czi``, ``bioio-lif``, ``bioio-nd2``,
``bioio-ome-tiff`` ...).  Channels added with :meth:`BioioImageSet.add_channel`
live in scratch files (the input file is never written); ``save`` writes
the input channels and the added ones to a new OME-TIFF, as
:class:`~stardist_host.io.imagesets.TiffImageSet` does.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InputFileError, check_index, require
from .imagesets import ScratchChannelsImageSet
from .tiff import UNITS_UM

__all__ = ["PLUGINS", "BioioImageSet"]

log = logging.getLogger(__name__)

#: bioio plugin that reads each file ending (for the message when none is installed).
PLUGINS = {
    ".czi": "bioio-czi", ".lif": "bioio-lif", ".nd2": "bioio-nd2", ".ome.tif": "bioio-ome-tiff",
    ".ome.tiff": "bioio-ome-tiff", ".tif": "bioio-tifffile", ".tiff": "bioio-tifffile", ".zarr": "bioio-ome-zarr",
}


def _plugin_hint(path: Path) -> str:
    name = path.name.lower()
    for ending in sorted(PLUGINS, key=len, reverse=True):
        if name.endswith(ending):
            return f"install the bioio plugin for {ending} files: pip install {PLUGINS[ending]}"
    return "install the bioio plugin for this format (see https://github.com/bioio-devs/bioio)"


def _open(path: Path, reader: Any):
    bioio = require("bioio", "bioio", purpose="reading microscope files (CZI, LIF, ND2 ...)")
    if not path.exists():
        raise InputFileError(f"{str(path)!r} does not exist")
    try:
        try:
            # bioio's readers chunk by whole Z stacks by default: reading one plane would read its stack
            return bioio.BioImage(str(path), reader=reader, chunk_dims=["Y", "X"])
        except TypeError as err:
            if "chunk_dims" not in str(err):
                raise
            log.warning("the bioio reader for %s cannot read single planes (%s); each plane read may read more "
                        "of the file", path.name, err)
            return bioio.BioImage(str(path), reader=reader)
    except Exception as err:  # bioio raises UnsupportedFileFormatError, plugins their own errors
        kind = type(err).__name__
        if "Unsupported" in kind:
            raise InputFileError(
                f"{str(path)!r}: no installed bioio plugin reads this file; {_plugin_hint(path)}"
            ) from err
        raise InputFileError(f"{str(path)!r} cannot be read through bioio ({kind}: {err}); is it complete and of "
                             "the format its name says?") from err


def _choose_scene(img, scene: int | str | None, where: str) -> int:
    scenes = [str(s) for s in img.scenes]
    listed = ", ".join(f"{i} ({s!r})" for i, s in enumerate(scenes))
    if scene is None:
        if len(scenes) > 1:
            raise InputFileError(f"{where} holds {len(scenes)} scenes (series): {listed}; choose one with scene= "
                                 "(its number or name)")
        return 0
    if isinstance(scene, str) and scene in scenes:
        return scenes.index(scene)
    if isinstance(scene, (int, np.integer)) and not isinstance(scene, bool) and 0 <= scene < len(scenes):
        return int(scene)
    raise InputFileError(f"scene={scene!r}: {where} holds the scenes {listed}")


def _voxel_size(img, where: str) -> tuple | None:
    """(z, y, x) in µm; bioio gives physical sizes in µm unless a dimension names another unit."""
    pps = img.physical_pixel_sizes
    props = getattr(img, "dimension_properties", None)  # bioio >= 3 only
    sizes = []
    for dim, value in zip("ZYX", (pps.Z, pps.Y, pps.X)):
        unit = getattr(getattr(props, dim, None), "unit", None)
        factor = 1.0 if unit is None else UNITS_UM.get(str(unit).lower())
        if value is not None and (factor is None or not value > 0):
            log.warning("%s: %s size %r %s is not a length known here; taken as unknown", where, dim, value, unit)
            value = None
        sizes.append(None if value is None else float(value) * factor)
    return None if sizes[1] is None or sizes[2] is None else tuple(sizes)


def _close_reader(image) -> None:
    close = getattr(getattr(image, "reader", None), "close", None)
    if callable(close):
        close()


class BioioImageSet(ScratchChannelsImageSet):
    """A read-only image set over one scene of a file that bioio reads; new channels kept in scratch files.

    Parameters
    ----------
    path
        The file (CZI, LIF, ND2, OME-TIFF ... whatever the installed bioio
        plugins read).
    scene
        The scene (series) to read: its number or its name.  Needed when the
        file holds more than one.
    reader
        A bioio reader class to use instead of bioio's choice by file name
        (e.g. ``bioio_ome_tiff.Reader``).
    current_time_point
        The time point that "current time point only" means (default 0).
    scratch_dir
        Folder for the new channels' scratch files (default: the system's
        temporary folder).

    Raises
    ------
    InputFileError
        The file is missing or unreadable (the message names the plugin to
        install), or it holds several scenes and ``scene`` does not choose one
        of them (the message lists them).
    MissingExtraError
        ``bioio`` is not installed.

    Notes
    -----
    RGB files (bioio's ``S`` dimension) give one channel per sample, named
    ``"<channel> (R)"`` and so on.  Added channels are read back with
    :meth:`get_channeldata`, saved by :meth:`save` and deleted by :meth:`close`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        scene: int | str | None = None,
        reader: Any = None,
        current_time_point: int = 0,
        scratch_dir: str | os.PathLike | None = None,
    ) -> None:
        self.path = Path(path)
        where = repr(str(self.path))
        self._image = img = _open(self.path, reader)
        try:
            self.scene = _choose_scene(img, scene, where)
        except BaseException:  # no scene chosen: the file is not kept open
            _close_reader(img)
            raise
        img.set_scene(self.scene)
        dims = img.dims
        self._samples = int(dims.S) if "S" in dims.order else 1
        self._data = img.get_image_dask_data("TCZYXS" if self._samples > 1 else "TCZYX")  # lazy: nothing read yet
        self.time_point_count, self.plane_count = int(dims.T), int(dims.Z)
        self.plane_shape = (int(dims.Y), int(dims.X))
        self._n_input = int(dims.C) * self._samples
        self._names = self._input_names(img, int(dims.C))
        self.voxel_size = _voxel_size(img, where)
        self.current_time_point = check_index(
            "current_time_point", current_time_point, self.time_point_count, what=where, noun="time points"
        )
        self._init_scratch(scratch_dir)

    def _input_names(self, img, count: int) -> list[str]:
        names = [str(n) for n in (img.channel_names or [])]
        if len(names) != count:
            names = [f"Channel {i}" for i in range(count)]
        if self._samples == 1:
            return names
        sample = "RGB" if self._samples == 3 else [str(s) for s in range(self._samples)]
        return [f"{n} ({sample[s]})" for n in names for s in range(self._samples)]

    @property
    def scenes(self) -> list[str]:
        """Names of every scene in the file."""
        return [str(s) for s in self._image.scenes]

    def _input_dtype(self, channel: int) -> np.dtype:
        return np.dtype(self._data.dtype)

    def _read_input(self, channel: int, plane: int, time_point: int) -> NDArray:
        """An input plane, read from the file now, and only that plane."""
        c, s = divmod(channel, self._samples)
        block = self._data[time_point, c, plane] if self._samples == 1 else self._data[time_point, c, plane, :, :, s]
        # synchronous: one plane is one or a few chunks, and the caller may itself be a worker thread
        return np.asarray(block.compute(scheduler="synchronous"))

    def close(self) -> None:
        """Delete the scratch files and close the file."""
        self._close_scratch()
        _close_reader(self._image)
