"""The host contract: what an image set must offer, and the one active image set.

A host application (or a test, or the headless scripts) hands its image set to
the scripts with :func:`set_active_imageset`; segmentation and analyses use
nothing but the members of :class:`ImageSet`, so any object that has them,
a host's native image set included, plugs in unchanged.  All indices are 0-based.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from numpy.typing import DTypeLike, NDArray

from .errors import NoImageSetError

__all__ = ["ImageSet", "set_active_imageset", "active_imageset", "check_imageset", "NoImageSetError"]

_MEMBERS = (
    "channel_count",
    "plane_count",
    "time_point_count",
    "plane_shape",
    "channel_names",
    "voxel_size",
    "current_time_point",
    "get_channeldata",
    "set_channeldata",
    "add_channel",
)


@runtime_checkable
class ImageSet(Protocol):
    """A multi-channel 2D/3D/4D image, read and written one plane at a time."""

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
    def voxel_size(self) -> tuple[float, float, float] | None:
        """(z, y, x) in micrometres, or None where unknown."""
    @property
    def current_time_point(self) -> int: ...

    def get_channeldata(self, channel: int, plane: int, time_point: int) -> NDArray:
        """Return the (Y, X) plane."""

    def set_channeldata(self, channel: int, plane: int, time_point: int, data: NDArray) -> None:
        """Store a (Y, X) plane."""

    def add_channel(self, name: str, dtype: DTypeLike) -> int:
        """Append an empty (zero) channel and return its index."""


_active: ImageSet | None = None


def check_imageset(obj: object) -> ImageSet:
    """Return ``obj`` if it has every member of the contract, else raise TypeError naming the missing ones."""
    missing = [m for m in _MEMBERS if not hasattr(obj, m)]
    if missing:
        raise TypeError(
            f"{type(obj).__name__} is not an image set: it lacks {', '.join(missing)} "
            f"(an image set needs {', '.join(_MEMBERS)})"
        )
    return obj  # type: ignore[return-value]


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

