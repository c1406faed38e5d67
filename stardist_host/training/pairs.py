"""Reading annotated image/mask TIFF pairs for training and evaluation.

Images and masks are read through the TIFF image set, so they take the same
axes handling as segmentation.  In 2D every plane of every time point is one
sample; in 3D every time point's stack is one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..errors import PairError, check_index
from ..io.imagesets import TiffImageSet

__all__ = ["PairError", "Pairs", "count_objects", "crop", "read_pairs"]

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

    def select(self, indices) -> Pairs:
        """The samples at ``indices``, in that order."""
        return Pairs(self.ndim, [self.images[i] for i in indices], [self.masks[i] for i in indices],
                     self.voxel_size, [self.sources[i] for i in indices])


def _samples(imageset: TiffImageSet, channel: int, ndim: int) -> list[NDArray]:
    z_range = range(imageset.plane_count)
    if ndim == 2:
        return [np.asarray(imageset.get_channeldata(channel, z, t))
                for t in range(imageset.time_point_count) for z in z_range]
    return [np.stack([imageset.get_channeldata(channel, z, t) for z in z_range])
            for t in range(imageset.time_point_count)]


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
    channel: int = 0,
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
        The image channel with the nuclei.
    axes
        Axes for files that do not say (applies to images and masks alike).

    Raises
    ------
    PairError
        Different numbers of images and masks, different shapes, masks that are
        not integer labels, or no objects at all.
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
        with TiffImageSet(image_path, axes=axes) as img, TiffImageSet(mask_path, axes=axes) as msk:
            shape_i = (img.time_point_count, img.plane_count, *img.plane_shape)
            shape_m = (msk.time_point_count, msk.plane_count, *msk.plane_shape)
            if shape_i != shape_m:
                raise PairError(
                    f"image {Path(image_path).name} has T, Z, Y, X = {shape_i} "
                    f"but mask {Path(mask_path).name} has {shape_m}; "
                    "each mask must have the same shape as its image"
                )
            if msk.channel_count != 1:
                raise PairError(
                    f"mask {Path(mask_path).name} has {msk.channel_count} channels; a mask is one label channel")
            if msk.input_dtype.kind not in "ui":
                raise PairError(
                    f"mask {Path(mask_path).name} holds {msk.input_dtype} values; masks must be integer label images "
                    "(0 background, 1, 2, ... one value per object), not probabilities or binary floats"
                )
            check_index("--channel", channel, img.channel_count, what=f"image {Path(image_path).name}",
                        noun="channels")
            dim = ndim or (3 if img.plane_count > 1 else 2)
            if pairs_ndim is not None and dim != pairs_ndim:
                raise PairError(f"{Path(image_path).name} is {dim}D but earlier images are {pairs_ndim}D; give --dim")
            pairs_ndim = dim
            if dim == 3 and img.plane_count < 2:
                raise PairError(f"image {Path(image_path).name} has a single Z plane; 3D training needs Z stacks")
            voxel = voxel or img.voxel_size
            new_i = _samples(img, channel, dim)
            new_m = _samples(msk, 0, dim)
        out_images += new_i
        out_masks += [m.astype(np.int32) if m.dtype.kind == "u" and m.dtype.itemsize >= 4 else m for m in new_m]
        sources += [f"{Path(image_path).name}#{i}" for i in range(len(new_i))]
    pairs = Pairs(pairs_ndim, out_images, out_masks, voxel, sources)
    if pairs.n_objects == 0:
        raise PairError("the masks hold no objects (every value is 0)")
    log.info("read %d %dD sample(s) with %d objects", len(out_images), pairs.ndim, pairs.n_objects)
    return pairs
