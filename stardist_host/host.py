"""The host contract: what an image set must offer, and the one active image set.

A host application (or a test, or the headless scripts) hands its image set to
the scripts with :func:`set_active_imageset`; segmentation and analyses use
nothing but the members of :class:`ImageSet`, so any object that has them,
a host's native image set included, plugs in unchanged.  All indices are 0-based.

Threading: segmentation calls an image set only from the thread that
started the run (the thread that called ``run``/``segment``); the network
and NMS run on other threads but never touch the image set.  So
an image set need not be thread-safe, and a host whose objects must be used
from the thread that owns them (COM or .NET bridges, Qt) starts the run on
that thread.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import numpy as np
from numpy.typing import DTypeLike, NDArray

from .errors import NoImageSetError

__all__ = ["ImageSet", "Progress", "Cancel", "MEMBERS", "set_active_imageset", "active_imageset", "check_imageset",
           "check_voxel_size", "NoImageSetError", "active_imageset_or_none"]

#: progress(done, total) is called after each plane (2D) or volume (3D), on the thread that started the run.
Progress = Callable[[int, int], None]
#: cancel() is asked between planes (volumes) and batches; True stops the run.
Cancel = Callable[[], bool]


@runtime_checkable
class ImageSet(Protocol):
    """A multi-channel 2D/3D/4D image, read and written one plane at a time.

    Every member is called from one thread only: the one that started the run.

    Optional member: ``remove_channel(index)`` removes the channel last made
    by ``add_channel``.  Where an image set has it, a run that fails or is
    cancelled removes its unfinished label channel; without it, the planes
    written are set to 0 and the error names the incomplete channel.
    """

    @property
    def channel_count(self) -> int: ...
    @property
    def plane_count(self) -> int:
        """Number of Z planes."""
    @property
    def time_point_count(self) -> int: ...
    @property
    def plane_shape(self) -> tuple[int, int]:
        """(Y, X) of every plane."""
    @property
    def channel_names(self) -> list[str]: ...
    @property
    def voxel_size(self) -> tuple[float | None, float, float] | None:
        """(z, y, x) in micrometres, z None where only the Z spacing is unknown; None where all are unknown."""
    @property
    def current_time_point(self) -> int: ...

    def get_channeldata(self, channel: int, plane: int, time_point: int) -> NDArray:
        """Return the (Y, X) plane."""

    def set_channeldata(self, channel: int, plane: int, time_point: int, data: NDArray) -> None:
        """Store a (Y, X) plane."""

    def add_channel(self, name: str, dtype: DTypeLike) -> int:
        """Append an empty (zero) channel and return its index.

        Label channels are uint16 or uint32 (LABEL_DTYPE); an image set must
        accept both, and store them without conversion.
        """


#: The members every image set must have, in the order :class:`ImageSet` declares them.
MEMBERS: tuple[str, ...] = tuple(name for name in vars(ImageSet) if not name.startswith("_"))


_active: ImageSet | None = None


def check_imageset(obj: object) -> ImageSet:
    """Return ``obj`` if it has every member of the contract, else raise TypeError naming the missing ones."""
    missing = [m for m in MEMBERS if not hasattr(obj, m)]
    if missing:
        raise TypeError(
            f"{type(obj).__name__} is not an image set: it lacks {', '.join(missing)} "
            f"(an image set needs {', '.join(MEMBERS)})"
        )
    return obj  # type: ignore[return-value]


def check_voxel_size(voxel_size) -> tuple[float | None, float, float] | None:
    """Return ``voxel_size`` as (z, y, x) floats, z None where the Z spacing is unknown, or None.

    Raises
    ------
    ValueError
        Not three positive finite numbers (z may be None), nor None.
    """
    if voxel_size is None:
        return None
    vs, number = tuple(voxel_size), (int, float, np.integer, np.floating)
    ok = len(vs) == 3 and all(isinstance(v, number) and not isinstance(v, bool) and 0 < v < np.inf for v in vs[1:])
    if not ok or not (vs[0] is None or isinstance(vs[0], number) and 0 < vs[0] < np.inf):
        raise ValueError(
            f"voxel_size={voxel_size!r}: must be (z, y, x) in µm, three positive numbers (z may be None "
            "where the Z spacing is unknown), or None"
        )
    return (None if vs[0] is None else float(vs[0]), float(vs[1]), float(vs[2]))


def set_active_imageset(obj: ImageSet | None) -> None:
    """Make ``obj`` the image set that the scripts work on (None clears it)."""
    global _active
    _active = None if obj is None else check_imageset(obj)


def active_imageset() -> ImageSet:
    """Return the image set a host registered with :func:`set_active_imageset`."""
    if _active is None:
        raise NoImageSetError(
            "no image set is active: inside a host application, its adapter calls "
            "stardist_host.host.set_active_imageset(imageset) first; headless, run the script as "
            "'python scripts/stardist_2d.py INPUT.tif OUTPUT.tif'"
        )
    return _active


def active_imageset_or_none() -> ImageSet | None:
    """Return the image set a host registered with :func:`set_active_imageset`, or None where none is."""
    return _active

