"""Opening an input file as an image set: TIFF through tifffile, microscope formats through bioio."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import MissingExtraError, SettingsError
from .imagesets import ScratchChannelsImageSet, TiffImageSet

__all__ = ["open_imageset", "is_omezarr", "TIFF_SUFFIXES"]

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
# the extra that brings the bioio plugin for a vendor format
_EXTRAS = {".czi": "czi", ".lif": "lif", ".nd2": "nd2"}


def open_imageset(
    path: str | os.PathLike, *, axes: str | None = None, series: int | None = None,
    scratch_dir: str | os.PathLike | None = None,
) -> ScratchChannelsImageSet:
    """Open ``path`` read-only: a TIFF as :class:`TiffImageSet`, any other file through bioio.

    ``series`` picks the TIFF series or the bioio scene; ``axes`` applies to
    TIFF files only (other formats state their axes).  The result has
    ``save(path, *, labels_only=False)`` and ``close()``.

    Raises
    ------
    SettingsError
        ``axes`` given for a file that is not a TIFF.
    MissingExtraError
        A non-TIFF file and bioio (or the format's plugin) is not installed:
        the message names the extra to install.
    """
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES or path.is_dir():
        return TiffImageSet(path, axes=axes, series=series, scratch_dir=scratch_dir)
    if axes is not None:
        raise SettingsError("--axes", axes, f"applies to TIFF files only; {path.name} states its own axes")
    try:
        from .bioio_reader import BioioImageSet
        return BioioImageSet(path, scene=series, scratch_dir=scratch_dir)
    except MissingExtraError as err:
        extra = _EXTRAS.get(path.suffix.lower(), "bioio")
        raise MissingExtraError(
            f"{path.name} is not a TIFF file; reading it needs bioio and its plugin for {path.suffix or 'this format'}: "
            f'pip install "stardist-host[{extra}]"'
        ) from err


def is_omezarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an OME-Zarr store: a name ending in .zarr, or a folder holding a Zarr group."""
    p = Path(path)
    return p.name.lower().endswith(".zarr") or (p.is_dir() and any(
        (p / n).is_file() for n in ("zarr.json", ".zgroup")))
