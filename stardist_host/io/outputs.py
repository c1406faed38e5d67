"""Where a run's results go: the output OME-TIFF with its object files, and an OME-Zarr input's labels store.

Each output is checked and claimed (locked, leftovers of killed runs removed)
before any work, and finished only once complete; these functions take the
few choices they need (``overwrite``, ``formats``, ``labels_only``), not the
segmentation settings, so that io stays below segmentation.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import OutputError
from .files import check_output, claim_outputs, file_stem
from .objects import FORMATS as OBJECT_FILES
from .objects import export_objects
from .opening import is_omezarr

__all__ = ["claim_tiff_output", "write_tiff_output", "labels_store", "scratch_labels_store"]


@contextlib.contextmanager
def claim_tiff_output(input: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool,
                      formats: Sequence[str] = ()) -> Iterator[str]:
    """Check and lock an output OME-TIFF and the object files ``formats`` add beside it; yield their stem.

    Everything is checked before the block runs, that is before the model loads.

    Raises
    ------
    OutputError
        An output exists (without ``overwrite``), is a folder, is the input, or cannot be written.
    OutputBusyError
        Another run writes one of them.
    """
    out = Path(out)
    stem = file_stem(out)
    extras = [out.parent / OBJECT_FILES[f].format(stem=stem) for f in formats]
    check_output(out, inputs=(input,), overwrite=overwrite, suffixes=(".tif", ".tiff"))
    with claim_outputs([out, *extras], inputs=(input,), overwrite=overwrite):
        yield stem


def write_tiff_output(imageset, out: str | os.PathLike, stem: str, *, label_channel: int, ndim: int,
                      time_points: Sequence[int], formats: Sequence[str] = (), labels_only: bool = False,
                      overwrite: bool = False) -> tuple[int, str]:
    """The object files ``formats`` ask for, then the OME-TIFF (all channels, or ``labels_only`` the labels).

    Returns
    -------
    channel : int
        The index of the label channel in the OME-TIFF.
    note : str
        Empty where the file is one OME image; else how its images are laid
        out (float input cannot share an image with integer labels), for the summary.
    """
    if formats:
        export_objects(imageset, label_channel=label_channel, out_dir=Path(out).parent, stem=stem, formats=formats,
                       ndim=ndim, time_points=list(time_points), overwrite=overwrite)
    imageset.save(out, labels_only=labels_only)
    layout = imageset.saved_layout(labels_only=labels_only)
    return (imageset.saved_channels(labels_only=labels_only).index(label_channel),
            "" if layout.one_image else layout.describe())


def labels_store(input: str | os.PathLike, output: str | os.PathLike | None) -> tuple[Path, bool]:
    """The OME-Zarr store that gets an OME-Zarr input's ``labels/``, and whether it is the input's; a separate store is checked.

    Raises
    ------
    OutputError
        ``output`` is not a ``*.zarr`` folder (nor a folder holding a Zarr group), is a file, or is in a missing folder.
    """
    store = Path(input)
    if output is None or (Path(output).exists() and Path(output).resolve() == store.resolve()):
        return store, True
    out = Path(output)
    if not is_omezarr(out):
        raise OutputError(f"output {str(out)!r}: an OME-Zarr input's labels go to an OME-Zarr store (a folder ending "
                          f"in .zarr), or into the input store when no output is given")
    if out.is_file():
        raise OutputError(f"output {str(out)!r} is a file; give a folder ending in .zarr for the labels store")
    if not out.parent.is_dir():
        raise OutputError(f"output {str(out)!r}: the folder {str(out.parent)!r} does not exist")
    return out, False


def scratch_labels_store(output: str | os.PathLike) -> Path:
    """The hidden folder beside a TIFF output in which a resumable or distributed run keeps its labels."""
    out = Path(output)
    return out.with_name(f".{out.name}.labels")
