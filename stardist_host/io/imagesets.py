"""Two image sets that fulfil the host contract: in memory, and backed by a TIFF file."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from itertools import product
from pathlib import Path
from typing import Sequence

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..errors import ReadOnlyInputError, check_index
from ..host import check_voxel_size
from .files import scratch_dir as make_scratch_dir
from .tiff import OmeImage, OmeLayout, TiffReader, ome_layout, write_ome_images

__all__ = ["ScratchChannelsImageSet", "MemoryImageSet", "TiffImageSet"]

log = logging.getLogger(__name__)


def fit_to_dtype(data: NDArray, dtype: np.dtype, what: str) -> NDArray:
    """Cast ``data`` to ``dtype``, refusing values that the type cannot hold.

    Raises
    ------
    ValueError
        Floats with NaN, infinite or fractional values for an integer channel
        (they would be truncated silently).
    OverflowError
        Values outside the range of an integer channel's type.
    """
    data = np.asarray(data)
    dtype = np.dtype(dtype)
    if data.dtype != dtype and data.size and np.issubdtype(dtype, np.integer):
        if data.dtype.kind in "fc":
            if not np.isfinite(data).all():
                raise ValueError(f"{what}: NaN or infinite values cannot be stored in the channel's type {dtype}")
            fractional = data[data != np.round(data)]
            if fractional.size:
                raise ValueError(
                    f"{what}: value {fractional.flat[0].item()!r} is not a whole number, but the channel's type {dtype} "
                    "holds whole numbers only; round the data first"
                )
        info = np.iinfo(dtype)
        lo, hi = data.min(), data.max()
        if lo < info.min or hi > info.max:
            raise OverflowError(
                f"{what}: values {lo}..{hi} do not fit the channel's type {dtype} ({info.min}..{info.max})"
            )
    return data.astype(dtype, copy=False)


class ChannelChecks:
    """Index and shape checks, and the removal of added channels, that the image sets share.

    A subclass has ``_n_input`` input channels (never modified), named by the
    first names of ``_names``, and implements ``_input_is()`` (what an input
    channel is, for the message that refuses to change it) and ``_drop(index)``
    (forget the added channel ``index``).
    """

    channel_count: int
    plane_count: int
    time_point_count: int
    plane_shape: tuple[int, int]
    _n_input: int
    _names: list[str]

    @property
    def channel_names(self) -> list[str]:
        return list(self._names)

    def _check(self, channel: int, plane: int, time_point: int) -> None:
        self._check_channel(channel)
        check_index("plane", plane, self.plane_count)
        check_index("time_point", time_point, self.time_point_count, noun="time points")

    def _check_channel(self, channel: int) -> None:
        check_index("channel", channel, self.channel_count)

    def _check_plane(self, data: NDArray) -> None:
        if tuple(np.shape(data)) != tuple(self.plane_shape):
            raise ValueError(f"plane of shape {np.shape(data)} given, but the image set's planes are {self.plane_shape}")

    def _refuse_input(self, channel: int, doing: str) -> None:
        if channel < self._n_input:
            raise ReadOnlyInputError(f"channel {channel} ({self._names[channel]!r}) {self._input_is()}; {doing}")

    def remove_channel(self, index: int) -> None:
        """Remove a channel made with ``add_channel`` and what holds it; the channels after it move down by one.

        Raises
        ------
        IndexError
            ``index`` is not a channel of the image set.
        ReadOnlyInputError
            ``index`` is an input channel (one the image set was made with), which is never modified.
        """
        self._check_channel(index)
        self._refuse_input(index, "only channels made with add_channel can be removed")
        self._drop(index)


class MemoryImageSet(ChannelChecks):
    """An image set held in memory, made from a numpy array with axes TCZYX.

    Parameters
    ----------
    data
        Array of shape (T, C, Z, Y, X); it is used as is, not copied.
    channel_names
        One name per channel (default ``"Channel 0"``, ...).
    voxel_size
        (z, y, x) in micrometres, z None where the Z spacing is unknown, or None.
    current_time_point
        The time point that "current time point only" means.

    Notes
    -----
    ``get_channeldata`` returns a view of the image set's memory, not a copy:
    change it only through ``set_channeldata``.
    """

    def __init__(
        self,
        data: NDArray,
        *,
        channel_names: Sequence[str] | None = None,
        voxel_size: tuple[float | None, float, float] | None = None,
        current_time_point: int = 0,
    ) -> None:
        data = np.asarray(data)
        if data.ndim != 5:
            raise ValueError(f"data must have 5 axes (T, C, Z, Y, X), got shape {data.shape}")
        t, c = data.shape[:2]
        self._channels = [data[:, i] for i in range(c)]  # each (T, Z, Y, X)
        names = list(channel_names) if channel_names is not None else [f"Channel {i}" for i in range(c)]
        if len(names) != c:
            raise ValueError(f"{len(names)} channel names given for {c} channels")
        self._names = names
        self._n_input = c
        self.voxel_size = check_voxel_size(voxel_size)
        check_index("current_time_point", current_time_point, t, noun="time points")
        self.current_time_point = current_time_point
        self.time_point_count = t
        self.plane_count = data.shape[2]
        self.plane_shape = tuple(data.shape[3:])

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    def get_channeldata(self, channel: int, plane: int, time_point: int) -> NDArray:
        self._check(channel, plane, time_point)
        return self._channels[channel][time_point, plane]

    def set_channeldata(self, channel: int, plane: int, time_point: int, data: NDArray) -> None:
        self._check(channel, plane, time_point)
        self._check_plane(data)
        target = self._channels[channel]
        target[time_point, plane] = fit_to_dtype(data, target.dtype, f"channel {channel}, plane {plane}, time point {time_point}")

    def add_channel(self, name: str, dtype: DTypeLike) -> int:
        shape = (self.time_point_count, self.plane_count, *self.plane_shape)
        self._channels.append(np.zeros(shape, dtype=dtype))
        self._names.append(name)
        return len(self._channels) - 1

    def _input_is(self) -> str:
        return f"is one of the image set's own channels (0..{self._n_input - 1})"

    def _drop(self, index: int) -> None:
        del self._channels[index]
        del self._names[index]

    def channel(self, channel: int) -> NDArray:
        """The whole channel as an array (T, Z, Y, X)."""
        return self._channels[channel]


class DiskChannel:
    """A (T, Z, Y, X) channel in a scratch file, read and written a plane at a time.

    Plain file reads and writes rather than a memory map: planes written do not
    stay resident, so memory does not grow with the stack.  The file starts
    sparse, so unwritten planes read as zeros.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int, int], dtype: DTypeLike) -> None:
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        self._plane_bytes = shape[2] * shape[3] * self.dtype.itemsize
        self._file = open(path, "w+b", buffering=0)  # noqa: SIM115 (closed in close())
        self._file.truncate(shape[0] * shape[1] * self._plane_bytes)
        self._lock = threading.Lock()

    def _seek(self, t: int, z: int) -> None:
        self._file.seek((t * self.shape[1] + z) * self._plane_bytes)

    def read(self, t: int, z: int) -> NDArray:
        out = np.empty(self.shape[2:], self.dtype)
        with self._lock:
            self._seek(t, z)
            self._file.readinto(memoryview(out).cast("B"))
        return out

    def write(self, t: int, z: int, data: NDArray) -> None:
        with self._lock:
            self._seek(t, z)
            self._file.write(np.ascontiguousarray(data, self.dtype).tobytes())

    def close(self) -> None:
        self._file.close()


class ScratchChannelsImageSet(ChannelChecks):
    """Base of image sets over a read-only input: its channels come from the input, added ones live on disk.

    A subclass sets ``path``, ``time_point_count``, ``plane_count``,
    ``plane_shape``, ``voxel_size``, ``current_time_point``, the input's
    channel count ``_n_input`` and names ``_names``, calls
    :meth:`_init_scratch`, and implements ``_read_input(channel, plane, time_point)``,
    ``_input_dtype(channel)`` and ``close``.  Channels made with :meth:`add_channel`
    are kept in scratch files in a hidden folder
    (:func:`stardist_host.io.files.scratch_dir`), so memory does not grow with
    the data; :meth:`_close_scratch` deletes them.
    """

    path: Path

    def _init_scratch(self, scratch_dir: str | os.PathLike | None) -> None:
        self._added: list[DiskChannel] = []
        self._made = 0  # scratch names are never reused, even after remove_channel
        self._scratch_parent = scratch_dir
        self._scratch: tempfile.TemporaryDirectory | None = None

    @property
    def channel_count(self) -> int:
        return self._n_input + len(self._added)

    def get_channeldata(self, channel: int, plane: int, time_point: int) -> NDArray:
        self._check(channel, plane, time_point)
        if channel < self._n_input:
            return self._read_input(channel, plane, time_point)
        return self._added[channel - self._n_input].read(time_point, plane)

    def _input_is(self) -> str:
        return f"comes from the input file {self.path.name}, which is never modified"

    def set_channeldata(self, channel: int, plane: int, time_point: int, data: NDArray) -> None:
        self._check(channel, plane, time_point)
        self._refuse_input(channel, "write results to a channel made with add_channel")
        self._check_plane(data)
        target = self._added[channel - self._n_input]
        what = f"channel {channel}, plane {plane}, time point {time_point}"
        target.write(time_point, plane, fit_to_dtype(data, target.dtype, what))

    def add_channel(self, name: str, dtype: DTypeLike) -> int:
        if self._scratch is None:
            self._scratch = make_scratch_dir(self._scratch_parent)
        index = self.channel_count
        shape = (self.time_point_count, self.plane_count, *self.plane_shape)
        self._made += 1
        self._added.append(DiskChannel(Path(self._scratch.name) / f"channel{self._made}.raw", shape, dtype))
        self._names.append(str(name))
        return index

    def _drop(self, index: int) -> None:
        channel = self._added.pop(index - self._n_input)
        channel.close()
        channel.path.unlink(missing_ok=True)
        del self._names[index]

    @property
    def input_dtype(self) -> np.dtype:
        """The type of the first input channel (see :meth:`channel_dtype` for each)."""
        return self._input_dtype(0)

    def channel_dtype(self, channel: int) -> np.dtype:
        """The type of ``channel``'s values: the input's for input channels, ``add_channel``'s for added ones."""
        self._check_channel(channel)
        if channel < self._n_input:
            return self._input_dtype(channel)
        return self._added[channel - self._n_input].dtype

    def saved_channels(self, *, labels_only: bool = False) -> list[int]:
        """The channels :meth:`save` writes, in the file's order: all, or ``labels_only`` the added ones."""
        return list(range(self._n_input if labels_only else 0, self.channel_count))

    def saved_layout(self, *, labels_only: bool = False) -> OmeLayout:
        """How :meth:`save` lays out the channels of :meth:`saved_channels`: one OME image or several.

        For a run's summary: ``saved_layout().one_image`` says whether the file
        holds one image (series), ``locate(channel)`` where a channel of the
        file is, ``describe()`` says it in words.  See
        :func:`stardist_host.io.tiff.ome_layout`.
        """
        return ome_layout([self.channel_dtype(c) for c in self.saved_channels(labels_only=labels_only)])

    def save(self, path: str | os.PathLike, *, labels_only: bool = False) -> Path:
        """Write the channels to a new OME-TIFF at ``path``, every value exactly.

        Where an integer type holds every channel's values (uint8 input with
        uint16 labels: uint16), the file holds one TCZYX image in that type, so
        that readers that open only the first image see the labels too.
        Otherwise (float32 input with uint16 labels) image 0 holds the input
        channels and image 1 the labels, each in its own type, both of the same
        T, Z, Y, X, channel names and voxel size; :meth:`saved_layout` says which.
        :class:`TiffImageSet` reads either back as one image set with all
        channels in the same order.  The input is read a plane at a time, so
        memory does not grow with the data.

        Parameters
        ----------
        path
            The output file; it may not be the input file.
        labels_only
            Write only the channels made with :meth:`add_channel`.

        Returns
        -------
        Path
            ``path``.

        Raises
        ------
        ValueError
            ``path`` is the input file, or ``labels_only`` with no added channel.
        """
        path = Path(path)
        if path.exists() and path.resolve() == self.path.resolve():
            raise ValueError(f"the output {str(path)!r} is the input file; the input file is never overwritten")
        channels = self.saved_channels(labels_only=labels_only)
        if not channels:
            raise ValueError(f"labels_only=True, but no channel was added to {self.path.name}; nothing to write")
        images = [
            # product() takes ``positions`` now, where a nested ``for`` would see the last image's
            OmeImage((self.get_channeldata(channels[p], z, t)
                      for t, p, z in product(range(self.time_point_count), positions, range(self.plane_count))),
                     (self.time_point_count, len(positions), self.plane_count, *self.plane_shape),
                     dtype, [self._names[channels[p]] for p in positions])
            for dtype, positions in self.saved_layout(labels_only=labels_only).images
        ]
        return write_ome_images(path, images, voxel_size=self.voxel_size)

    def _close_scratch(self) -> None:
        for channel in self._added:
            channel.close()
        self._added.clear()
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TiffImageSet(ScratchChannelsImageSet):
    """An image set read lazily from a TIFF file, with new channels kept on disk.

    The input file is opened read-only and read one plane at a time; each
    input channel keeps the file's type (a file whose series share T, Z, Y, X
    offers the channels of all its series; colour samples are channels).
    Channels added with :meth:`add_channel` live in scratch files on disk, so
    that memory use does not grow with the data; :meth:`save` writes the input
    channels and the new ones to a new OME-TIFF, every value exactly.
    ``get_channeldata`` returns a new array on every call, never a view.

    Parameters
    ----------
    path
        The input TIFF file.
    axes
        Axes of the file's data where the file does not say (e.g. ``"ZYX"``).
    series
        The file's series (image) to read, where it holds several that differ
        in T, Z, Y or X.
    current_time_point
        The time point that "current time point only" means (default 0).
    scratch_dir
        Folder in which the new channels' scratch folder is made (default: the
        system's temporary folder).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        axes: str | None = None,
        series: int | None = None,
        current_time_point: int = 0,
        scratch_dir: str | os.PathLike | None = None,
    ) -> None:
        self._reader = reader = TiffReader(path, axes=axes, series=series)
        self.path, layout = reader.path, reader.layout
        sizes = layout.sizes
        self.time_point_count, self.plane_count = sizes["T"], sizes["Z"]
        self.plane_shape = (sizes["Y"], sizes["X"])
        self.voxel_size = layout.voxel_size
        try:
            check_index("current_time_point", current_time_point, self.time_point_count, what=self.path.name,
                        noun="time points")
        except BaseException:
            reader.close()
            raise
        self.current_time_point = current_time_point
        self._n_input = sizes["C"]
        self._names = list(layout.channel_names)
        self._init_scratch(scratch_dir)

    def _input_dtype(self, channel: int) -> np.dtype:
        return self._reader.layout.dtypes[channel]

    def _read_input(self, channel: int, plane: int, time_point: int) -> NDArray:
        return self._reader.plane(time_point, channel, plane)

    def close(self) -> None:
        """Close the input file and delete the scratch files."""
        self._close_scratch()
        self._reader.close()
