"""An image set over a host that reads and writes regions instead of planes.

Pipeline-operator scripts of some hosts (arivis is one) see the image through
two calls::

    data = host.read_imagedata(((x, y, z), (w, h, d)), channel, time_point)
    host.write_imagedata(data, ((x, y, z), (w, h, d)), channel, time_point)

:class:`RegionImageSet` turns such an object into the project's image set
contract (:class:`stardist_host.host.ImageSet`), reading and writing one
plane at a time, so segmentation and analyses run on it unchanged.

Conventions (the adapter's, stated once here):

* A region is ``((x, y, z), (w, h, d))``: the origin of the box in the host's
  voxel coordinates and its size as *counts*; it covers ``x .. x+w-1``,
  ``y .. y+h-1`` and ``z .. z+d-1``.  arivis' own bounds objects give the Z end
  *inclusive* (a box from z0 to z1 inclusive has depth ``z1 - z0 + 1``); the
  adapter takes counts, and :func:`region` is the one place where an inclusive
  last plane becomes a depth.  An integrator who has such bounds passes
  ``plane_count=z1 - z0 + 1`` and ``origin=(x0, y0, z0)``.
* Axis order of the arrays the host returns and accepts: ``order="zyx"``
  (default) means indexed ``[z][y][x]``, shape ``(d, h, w)``, as numpy and
  tifffile order image axes; ``order="xyz"`` means indexed ``[x][y][z]``,
  shape ``(w, h, d)``.  Which one a host uses is not checked here: on square
  planes a wrong choice transposes every plane silently, so check it once on
  a non-square image.  A host may also return a single plane without its
  ``d = 1`` axis, shape ``(h, w)`` (zyx) or ``(w, h)`` (xyz).
* Indices are 0-based, channels and time points as the host numbers them.

The host contract's threading rule holds here too: the adapter calls the host
only from the thread that calls the adapter, so a host whose region calls must
come from the thread that owns them starts the run on that thread.  Label
channels are uint16 or uint32; the ``add_channel`` callable must make a
channel of the dtype it is given.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..errors import ReadOnlyInputError, check_index
from ..host import check_voxel_size

__all__ = ["RegionImageSet", "region", "ORDERS"]

log = logging.getLogger(__name__)

#: Axis orders of the arrays a region host returns and accepts.
ORDERS = ("zyx", "xyz")

Region = tuple[tuple[int, int, int], tuple[int, int, int]]


def region(origin: Sequence[int], plane_shape: Sequence[int], z_first: int, z_last: int) -> Region:
    """The region ``((x, y, z), (w, h, d))`` of planes ``z_first..z_last`` (inclusive).

    Parameters
    ----------
    origin
        ``(x, y, z)`` of the image set's first voxel in the host's coordinates.
    plane_shape
        ``(h, w)`` of a plane, as the image set contract gives it (Y, X).
    z_first, z_last
        First and last plane, 0-based within the image set, both inclusive.

    Returns
    -------
    tuple
        ``((x, y, z), (w, h, d))`` with ``d = z_last - z_first + 1`` planes.
    """
    if z_last < z_first:
        raise ValueError(f"z_last={z_last} is before z_first={z_first}; both are inclusive plane indices")
    x, y, z = (int(v) for v in origin)
    h, w = (int(v) for v in plane_shape)
    return (x, y, z + int(z_first)), (w, h, int(z_last) - int(z_first) + 1)


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r}: must be a whole number of at least 1")
    return int(value)


class RegionImageSet:
    """The image set contract over a host that reads and writes regions.

    Parameters
    ----------
    host
        An object with ``read_imagedata(region, channel, time_point)`` and
        ``write_imagedata(data, region, channel, time_point)`` (see the module
        docstring for the region form and axis orders).
    plane_shape
        ``(height, width)`` of every plane in pixels (Y, X).
    plane_count
        Number of Z planes (a count; from bounds with an inclusive Z end
        ``z1``, ``z1 - z0 + 1``).
    channel_count
        Number of channels the host has now.
    time_point_count
        Number of time points (default 1).
    origin
        ``(x, y, z)`` of the first voxel in the host's coordinates (default
        ``(0, 0, 0)``); every region is offset by it.
    order
        ``"zyx"`` (default) or ``"xyz"``: the axis order of the host's arrays.
    channel_names
        One name per channel (default ``"Channel 0"``, ...).
    voxel_size
        ``(z, y, x)`` in µm, ``z`` None where unknown, or None.
    current_time_point
        The time point that "current time point only" means (default 0).
    add_channel
        ``add_channel(name, dtype) -> index``: makes a new, zero channel in
        the host and returns its index, which must be the next one
        (``channel_count``).  Default: the host's own ``add_channel`` where it
        has one; without either, :meth:`add_channel` raises.
    remove_channel
        ``remove_channel(index)``: removes the channel last added.  Default:
        the host's own ``remove_channel`` where it has one; without either,
        the image set has no ``remove_channel`` member (it is optional in the
        contract).

    Examples
    --------
    Inside a host script, with the image's extent taken from bounds whose Z
    end ``z1`` is inclusive, and a host call that makes a channel::

        imageset = RegionImageSet(
            host, plane_shape=(height, width), plane_count=z1 - z0 + 1, origin=(x0, y0, z0),
            channel_count=n_channels, time_point_count=n_time_points,
            add_channel=lambda name, dtype: make_channel(name, dtype),
        )
        stardist_host.host.set_active_imageset(imageset)
    """

    def __init__(
        self,
        host: Any,
        *,
        plane_shape: Sequence[int],
        plane_count: int,
        channel_count: int,
        time_point_count: int = 1,
        origin: Sequence[int] = (0, 0, 0),
        order: str = "zyx",
        channel_names: Sequence[str] | None = None,
        voxel_size: Sequence[float | None] | None = None,
        current_time_point: int = 0,
        add_channel: Callable[[str, DTypeLike], int] | None = None,
        remove_channel: Callable[[int], None] | None = None,
    ) -> None:
        missing = [m for m in ("read_imagedata", "write_imagedata") if not callable(getattr(host, m, None))]
        if missing:
            raise TypeError(f"{type(host).__name__} is not a region host: it lacks {', '.join(missing)}")
        if order not in ORDERS:
            raise ValueError(f"order={order!r}: must be one of {', '.join(map(repr, ORDERS))}")
        if len(tuple(plane_shape)) != 2:
            raise ValueError(f"plane_shape={tuple(plane_shape)!r}: must be (height, width)")
        if len(tuple(origin)) != 3 or not all(isinstance(v, (int, np.integer)) for v in origin):
            raise ValueError(f"origin={tuple(origin)!r}: must be (x, y, z), three whole numbers")
        self._host = host
        self.plane_shape = tuple(_positive(n, v) for n, v in zip(("height", "width"), plane_shape))
        self.plane_count = _positive("plane_count", plane_count)
        self.time_point_count = _positive("time_point_count", time_point_count)
        self._input_count = _positive("channel_count", channel_count)  # the host's own, which are never removed
        self.origin = tuple(int(v) for v in origin)
        self.order = order
        names = list(channel_names) if channel_names is not None else [f"Channel {i}" for i in range(channel_count)]
        if len(names) != self._input_count:
            raise ValueError(f"{len(names)} channel names given for channel_count={channel_count}")
        self._names = [str(n) for n in names]
        self.voxel_size = check_voxel_size(voxel_size)
        self.current_time_point = check_index(
            "current_time_point", current_time_point, self.time_point_count, noun="time points"
        )
        self._add = add_channel if add_channel is not None else getattr(host, "add_channel", None)
        remove = remove_channel if remove_channel is not None else getattr(host, "remove_channel", None)
        if remove is not None:
            self._remove = remove
            self.remove_channel = self._remove_channel  # only present where the host can do it

    @property
    def channel_count(self) -> int:
        return len(self._names)

    @property
    def channel_names(self) -> list[str]:
        return list(self._names)

    def _check(self, channel: int, plane: int, time_point: int) -> tuple[int, int, int]:
        return (
            check_index("channel", channel, self.channel_count, names=self._names),
            check_index("plane", plane, self.plane_count),
            check_index("time_point", time_point, self.time_point_count, noun="time points"),
        )

    def _region(self, plane: int) -> Region:
        return region(self.origin, self.plane_shape, plane, plane)

    def get_channeldata(self, channel: int, plane: int, time_point: int) -> NDArray:
        """Return plane ``plane`` of ``channel`` at ``time_point`` as a (Y, X) array."""
        channel, plane, time_point = self._check(channel, plane, time_point)
        data = np.asarray(self._host.read_imagedata(self._region(plane), channel, time_point))
        h, w = self.plane_shape
        yx = data if self.order == "zyx" else data.T  # xyz: (w, h, 1) -> (1, h, w), (w, h) -> (h, w)
        if yx.shape in ((1, h, w), (h, w)):
            return yx.reshape(h, w)
        expected = "(1, h, w) or (h, w)" if self.order == "zyx" else "(w, h, 1) or (w, h)"
        raise ValueError(
            f"read_imagedata returned shape {data.shape} for plane {plane} (h={h}, w={w}); with order={self.order!r} "
            f"it must be {expected}: is order right?"
        )

    def set_channeldata(self, channel: int, plane: int, time_point: int, data: NDArray) -> None:
        """Store a (Y, X) array as plane ``plane`` of ``channel`` at ``time_point``."""
        channel, plane, time_point = self._check(channel, plane, time_point)
        data = np.asarray(data)
        if data.shape != self.plane_shape:
            raise ValueError(f"plane of shape {data.shape} given, but the image set's planes are {self.plane_shape}")
        # the host gets a box one plane deep, in its own axis order
        boxed = data[None] if self.order == "zyx" else data.T[:, :, None]
        self._host.write_imagedata(np.ascontiguousarray(boxed), self._region(plane), channel, time_point)

    def add_channel(self, name: str, dtype: DTypeLike) -> int:
        """Make a new zero channel in the host and return its index."""
        if self._add is None:
            raise NotImplementedError(
                f"{type(self._host).__name__} offers no way to add a channel: pass "
                "RegionImageSet(..., add_channel=callable(name, dtype) -> index)"
            )
        index = self._add(name, np.dtype(dtype))
        if index != self.channel_count:
            raise ValueError(
                f"add_channel returned index {index!r}, but a new channel must come last, "
                f"at index {self.channel_count}"
            )
        self._names.append(str(name))
        log.debug("added channel %d %r (%s) to the region host", index, name, np.dtype(dtype))
        return index

    def _remove_channel(self, index: int) -> None:
        if index < self._input_count:
            raise ReadOnlyInputError(
                f"channel {index!r} is one of the host's own channels (0..{self._input_count - 1}); "
                "only channels made with add_channel can be removed"
            )
        if index != self.channel_count - 1:
            raise ValueError(
                f"channel {index!r} cannot be removed: only the last channel ({self.channel_count - 1}) can"
            )
        self._remove(index)
        self._names.pop()
