"""Reading annotated image/mask TIFF pairs for training and evaluation.

Images and masks are read through the TIFF image set, so they take the same
axes handling as segmentation.  In 2D every plane of every time point is one
sample; in 3D every time point's stack is one.  With a list of channels a sample
has a trailing channel axis, (Y, X, C) or (Z, Y, X, C), as stardist takes them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..errors import IndexRangeError, PairError, SettingsError, check_index
from ..io.imagesets import TiffImageSet

__all__ = ["PairError", "Pairs", "check_channels", "count_objects", "crop", "read_pairs"]

log = logging.getLogger(__name__)


def count_objects(masks) -> int:
    """Labelled objects over all masks (label values counted once per mask)."""
    return sum(len(np.unique(m)) - 1 for m in masks)


@dataclass
class Pairs:
    """Samples (2D planes or 3D stacks) with their label masks."""

    ndim: int
    images: list[NDArray]
    masks: list[NDArray]
    voxel_size: tuple[float, float, float] | None
    sources: list[str]

    @property
    def n_objects(self) -> int:
        return count_objects(self.masks)

    @property
    def n_channels(self) -> int | None:
        """Length of the samples' trailing channel axis; None for samples without one (a single channel)."""
        first = self.images[0]
        return int(first.shape[-1]) if first.ndim > self.ndim else None

    def select(self, indices) -> Pairs:
        """The samples at ``indices``, in that order."""
        return Pairs(self.ndim, [self.images[i] for i in indices], [self.masks[i] for i in indices],
                     self.voxel_size, [self.sources[i] for i in indices])


def _plane(imageset: TiffImageSet, channel: int | tuple[int, ...], z: int, t: int) -> NDArray:
    if isinstance(channel, tuple):
        return np.stack([imageset.get_channeldata(c, z, t) for c in channel], axis=-1)
    return np.asarray(imageset.get_channeldata(channel, z, t))


def _samples(imageset: TiffImageSet, channel: int | tuple[int, ...], ndim: int) -> list[NDArray]:
    z_range = range(imageset.plane_count)
    if ndim == 2:
        return [_plane(imageset, channel, z, t) for t in range(imageset.time_point_count) for z in z_range]
    return [np.stack([_plane(imageset, channel, z, t) for z in z_range]) for t in range(imageset.time_point_count)]


def check_channels(channel: int | Sequence[int], count: int, *, what: str) -> int | tuple[int, ...]:
    """``channel`` checked against ``count`` channels: an int, or a tuple of distinct ints (from a list or tuple).

    Parameters
    ----------
    channel
        One channel index, or a list/tuple of them (several input channels, in that order).
    count
        How many channels there are.
    what
        What holds them, for the message (``"image a.tif"``).

    Raises
    ------
    SettingsError
        An index that is not a whole number, outside ``0..count-1``, or given twice; the message names the
        value, ``what`` and its channels (``channel=(0, 3): image a.tif has 2 channels (0..1); 3 is not one of
        them``, which the ``stardist-host`` command writes ``--channel 0,3: ...``).
    """
    if not isinstance(channel, (list, tuple)):
        return check_index("channel", channel, count, what=what, noun="channels")
    value = tuple(channel)
    has = f"{what} has {count} channel{'s' if count != 1 else ''} (0..{count - 1})"
    if not value:
        raise SettingsError("channel", value, f"give at least one channel; {has}")
    for c in value:
        if isinstance(c, bool) or not isinstance(c, int) and not hasattr(c, "__index__"):
            raise IndexRangeError("channel", value, f"{c!r} is not a whole number; {has}")
        if not 0 <= int(c) < count:
            raise IndexRangeError("channel", value, f"{has}; {int(c)} is not one of them")
    repeated = sorted({int(c) for c in value if value.count(c) > 1})
    if repeated:
        raise SettingsError("channel", value, f"channel {', '.join(map(str, repeated))} is given more than once; "
                            f"give each of {what}'s channels (0..{count - 1}) at most once")
    return tuple(int(c) for c in value)


def crop(array: NDArray, spec: str | None) -> NDArray:
    """Crop the last axes with numpy slice text, e.g. ``":, 384:"`` for columns 384 onwards."""
    if not spec:
        return array
    try:
        parts = [slice(*(int(v) if v.strip() else None for v in p.split(":"))) if ":" in p else int(p)
                 for p in spec.split(",")]
    except ValueError:
        raise PairError(f"crop={spec!r} is not a list of slices such as ':, 384:' or '0:256, 0:256'") from None
    return array[(Ellipsis, *parts)]


def read_pairs(
    images: Sequence[str | os.PathLike],
    masks: Sequence[str | os.PathLike],
    *,
    ndim: int | None = None,
    channel: int | Sequence[int] = 0,
    axes: str | None = None,
) -> Pairs:
    """Read matched image/mask files into samples.

    Parameters
    ----------
    images, masks
        Matched lists of TIFF files (same order, same shapes).
    ndim
        2 or 3; None decides from the data: 3 where the files have Z planes.
    channel
        The image channel with the nuclei: samples (Y, X) or (Z, Y, X).  A list or
        tuple of distinct channels: samples (Y, X, C) or (Z, Y, X, C), the channels
        in the order given (the colour samples of an RGB(A) TIFF count as channels).
    axes
        Axes for files that do not say (applies to images and masks alike).

    Raises
    ------
    PairError
        Different numbers of images and masks, different shapes, masks that are
        not integer labels, or no objects at all.
    SettingsError
        A channel outside an image's channels, or given twice (:func:`check_channels`).
    """
    if len(images) != len(masks) or not images:
        raise PairError(f"{len(images)} image file(s) but {len(masks)} mask file(s): "
                        "give them as matched pairs, in the same order")
    out_images: list[NDArray] = []
    out_masks: list[NDArray] = []
    sources: list[str] = []
    voxel = None
    pairs_ndim = ndim  # None until the first file decides it
    for image_path, mask_path in zip(images, masks):
        image_name, mask_name = Path(image_path).name, Path(mask_path).name
        with TiffImageSet(image_path, axes=axes) as img, TiffImageSet(mask_path, axes=axes) as msk:
            shape_i, shape_m = ((s.time_point_count, s.plane_count, *s.plane_shape) for s in (img, msk))
            if shape_i != shape_m:
                raise PairError(f"image {image_name} has T, Z, Y, X = {shape_i} but mask {mask_name} has {shape_m}; "
                                "each mask must have the same shape as its image")
            if msk.channel_count != 1:
                raise PairError(f"mask {mask_name} has {msk.channel_count} channels; a mask is one label channel")
            if msk.input_dtype.kind not in "ui":
                raise PairError(f"mask {mask_name} holds {msk.input_dtype} values; masks must be integer label images "
                                "(0 background, 1, 2, ... one value per object), not probabilities or binary floats")
            channel = check_channels(channel, img.channel_count, what=f"image {image_name}")
            dim = ndim or (3 if img.plane_count > 1 else 2)
            if pairs_ndim is not None and dim != pairs_ndim:
                raise PairError(f"{image_name} is {dim}D but earlier images are {pairs_ndim}D; give --dim")
            pairs_ndim = dim
            if dim == 3 and img.plane_count < 2:
                raise PairError(f"image {image_name} has a single Z plane; 3D training needs Z stacks")
            voxel = voxel or img.voxel_size
            new_i = _samples(img, channel, dim)
            new_m = _samples(msk, 0, dim)
        out_images += new_i
        out_masks += [m.astype(np.int32) if m.dtype.kind == "u" and m.dtype.itemsize >= 4 else m for m in new_m]
        sources += [f"{image_name}#{i}" for i in range(len(new_i))]
    pairs = Pairs(pairs_ndim, out_images, out_masks, voxel, sources)
    if pairs.n_objects == 0:
        raise PairError("the masks hold no objects (every value is 0)")
    log.info("read %d %dD sample(s) with %d objects", len(out_images), pairs.ndim, pairs.n_objects)
    return pairs
