"""Synthetic nuclei with known ground truth, for training, tests and benchmarks.

Nuclei are axis-aligned ellipsoids (ellipses in 2D) of varied size and
brightness; neighbours may touch, in which case each pixel goes to the nucleus
whose centre is nearest in the ellipsoid's own metric, so every label stays
star-convex.  The image is the labels' brightness, blurred by an anisotropic
Gaussian (the microscope's PSF, wider in Z) with Poisson-like and Gaussian noise.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = ["nuclei"]


def nuclei(
    shape: tuple[int, ...],
    n: int,
    *,
    radius: tuple[float, float] = (5.0, 9.0),
    anisotropy: float = 1.0,
    blur: float = 1.0,
    noise: float = 0.05,
    seed: int = 0,
) -> tuple[NDArray[np.uint16], NDArray[np.uint16]]:
    """Make an image of ``n`` nuclei and its label mask.

    Parameters
    ----------
    shape
        (Y, X) or (Z, Y, X) in pixels.
    n
        Number of nuclei to place (some may be dropped if no free spot is found).
    radius
        Range of nucleus radii in lateral pixels; each axis is drawn separately.
    anisotropy
        Z voxel size over lateral voxel size (3D only); radii and blur in Z are
        divided by it, so that nuclei look round in physical space.
    blur
        Gaussian sigma in lateral pixels.
    noise
        Standard deviation of the additive noise, relative to the mean brightness.
    seed
        Seed of the random generator; the same seed gives the same scene.

    Returns
    -------
    image, labels
        ``uint16`` arrays of ``shape``; labels are 1..N, 0 is background.
    """
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must be (Y, X) or (Z, Y, X), got {shape!r}")
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    scale = np.ones(ndim)
    if ndim == 3:
        scale[0] = anisotropy
    grid = np.indices(shape, dtype=np.float32)

    best = np.full(shape, np.inf, np.float32)
    labels = np.zeros(shape, np.uint16)
    centres: list[NDArray] = []
    placed = 0
    for _ in range(n * 20):
        if placed == n:
            break
        radii = rng.uniform(*radius, size=ndim) / scale
        centre = rng.uniform(0, 1, size=ndim) * (np.array(shape) - 1)
        # allow touching but not heavy overlap: keep centres apart by ~1.6 mean radii
        if centres:
            d = np.sqrt((((np.array(centres) - centre) * scale) ** 2).sum(axis=1))
            if d.min() < 1.6 * radius[0]:
                continue
        dist = sum(((grid[i] - centre[i]) / radii[i]) ** 2 for i in range(ndim))
        inside = (dist <= 1) & (dist < best)
        placed += 1
        labels[inside] = placed
        best[inside] = dist[inside]
        centres.append(centre)

    brightness = rng.uniform(0.4, 1.0, size=placed + 1)
    brightness[0] = 0.05
    image = brightness[labels].astype(np.float32)
    # texture inside nuclei, then the PSF
    image *= 1 + 0.15 * ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.5)
    image = ndimage.gaussian_filter(image, blur / scale)
    image += noise * rng.standard_normal(shape).astype(np.float32)
    image = np.clip(image, 0, None) * 4000 + 100
    return image.astype(np.uint16), labels
