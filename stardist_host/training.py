"""Training helpers: reproducible seeding and data augmentation for StarDist."""

from __future__ import annotations

import random
from typing import Callable

import numpy as np
from numpy.typing import NDArray

__all__ = ["seed_everything", "make_augmenter"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow so that a training run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    import tensorflow as tf

    tf.random.set_seed(seed)


def make_augmenter(
    *,
    flip_z: bool = False,
    intensity: bool = True,
    noise: float = 0.0,
    seed: int = 0,
) -> Callable[[NDArray, NDArray], tuple[NDArray, NDArray]]:
    """Return an augmenter for ``StarDist*.train(augmenter=...)``.

    It applies a random 90-degree rotation and flips in the image plane (the
    last two axes, so it suits 2D patches and anisotropic 3D ones), a flip
    along Z when ``flip_z`` is set, a random intensity scale (0.6 to 2) and
    shift (-0.2 to 0.2) of the normalised image, and Gaussian noise of standard
    deviation up to ``noise``.

    Parameters
    ----------
    flip_z
        Also flip 3D patches along Z.
    intensity
        Randomly scale and shift intensities.
    noise
        Largest standard deviation of the additive noise; 0 switches it off.
    seed
        Seed of the augmenter's own random generator.
    """
    rng = np.random.default_rng(seed)

    def augment(x: NDArray, y: NDArray) -> tuple[NDArray, NDArray]:
        plane = (x.ndim - 2, x.ndim - 1) if x.ndim == y.ndim else (y.ndim - 2, y.ndim - 1)
        k = int(rng.integers(4))
        # rotations by 90 degrees only when the in-plane patch is square
        if x.shape[plane[0]] == x.shape[plane[1]]:
            x, y = np.rot90(x, k, axes=plane), np.rot90(y, k, axes=plane)
        for ax in plane + ((0,) if flip_z and y.ndim == 3 else ()):
            if rng.random() < 0.5:
                x, y = np.flip(x, axis=ax), np.flip(y, axis=ax)
        if intensity:
            x = x * rng.uniform(0.6, 2.0) + rng.uniform(-0.2, 0.2)
        if noise > 0:
            x = x + rng.normal(0, rng.uniform(0, noise), size=x.shape)
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)

    return augment
