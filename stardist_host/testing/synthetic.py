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

__all__ = ["nuclei", "two_channel_nuclei", "render", "moving_nuclei", "atlas_scene", "cell_scene"]


def nuclei(
    shape: tuple[int, ...],
    n: int,
    *,
    radius: tuple[float, float] = (5.0, 9.0),
    anisotropy: float = 1.0,
    blur: float = 1.0,
    noise: float = 0.05,
    background: float = 0.05,
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
        Standard deviation of the additive noise, relative to the brightest nucleus.
    background
        Background brightness relative to the brightest nucleus (nuclei are 0.4 to 1);
        raise it for low-contrast images.
    seed
        Seed of the random generator; the same seed gives the same scene.

    Returns
    -------
    image, labels
        ``uint16`` arrays of ``shape``; labels are 1..N, 0 is background.
    """
    rng, scale = _start(shape, anisotropy, seed)
    labels, placed = _place(shape, n, radius, scale, rng)
    brightness = rng.uniform(0.4, 1.0, size=placed + 1)
    brightness[0] = background
    return _shade(labels, brightness, scale, blur=blur, noise=noise, rng=rng), labels


def _start(shape: tuple[int, ...], anisotropy: float, seed: int) -> tuple[np.random.Generator, NDArray]:
    """The scene's random generator and its voxel scale (Z voxel over lateral voxel in 3D, else 1)."""
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must be (Y, X) or (Z, Y, X), got {shape!r}")
    return np.random.default_rng(seed), np.array([anisotropy, 1.0, 1.0])[-len(shape):]


def _place(shape: tuple[int, ...], n: int, radius: tuple[float, float], scale: NDArray,
           rng: np.random.Generator) -> tuple[NDArray[np.uint16], int]:
    """Up to ``n`` ellipsoids at random, touching but not overlapping much: their labels 1..N and N."""
    ndim = len(shape)
    centres: list[NDArray] = []
    radii: list[NDArray] = []
    for _ in range(n * 20):
        if len(centres) == n:
            break
        r = rng.uniform(*radius, size=ndim) / scale
        centre = rng.uniform(0, 1, size=ndim) * (np.array(shape) - 1)
        # allow touching but not heavy overlap: keep centres apart by ~1.6 mean radii
        if centres and np.sqrt((((np.array(centres) - centre) * scale) ** 2).sum(axis=1)).min() < 1.6 * radius[0]:
            continue
        centres.append(centre)
        radii.append(r)
    return render(shape, centres, radii).astype(np.uint16), len(centres)


def _shade(labels: NDArray, brightness: NDArray, scale: NDArray, *, blur: float, noise: float,
           rng: np.random.Generator) -> NDArray[np.uint16]:
    """The image of ``labels`` (``brightness`` per label, [0] the background): texture, the PSF, noise."""
    shape = labels.shape
    image = brightness[labels].astype(np.float32)
    # texture inside nuclei, then the PSF
    image *= 1 + 0.15 * ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.5)
    image = ndimage.gaussian_filter(image, blur / scale)
    image += noise * rng.standard_normal(shape).astype(np.float32)
    image = np.clip(image, 0, None) * 4000 + 100
    return image.astype(np.uint16)


def two_channel_nuclei(
    shape: tuple[int, ...],
    n: int,
    *,
    decoys: int | None = None,
    radius: tuple[float, float] = (5.0, 9.0),
    anisotropy: float = 1.0,
    blur: float = 1.0,
    noise: float = 0.05,
    background: float = 0.05,
    seed: int = 0,
) -> tuple[NDArray[np.uint16], NDArray[np.uint16]]:
    """Two channels in which neither alone shows which blobs are nuclei: the nuclei are the blobs in both.

    Objects are placed as :func:`nuclei` places them; each is a true nucleus
    (in both channels) or a decoy of channel 0 or of channel 1 (in that one
    only).  Decoys are drawn like the nuclei: the same sizes, and in every
    channel each object's brightness drawn anew from the same range, so that
    one channel alone cannot tell them apart.

    Parameters
    ----------
    shape
        (Y, X) or (Z, Y, X) in pixels.
    n
        Number of true nuclei to place (with the decoys, some may be dropped if no free spot is found).
    decoys
        Decoys in each channel; None: ``n``.
    radius, anisotropy, blur, noise, background, seed
        As :func:`nuclei`.

    Returns
    -------
    image
        ``uint16`` (2, ``*shape``): the two channels, channel axis first (as a CYX / CZYX TIFF stores them).
    labels
        ``uint16`` ``shape``: the true nuclei only, 1..N; 0 is background and the decoys.
    """
    rng, scale = _start(shape, anisotropy, seed)
    decoys = n if decoys is None else decoys
    every, placed = _place(shape, n + 2 * decoys, radius, scale, rng)
    # role of object k (label k + 1): 0 a true nucleus, 1 a decoy of channel 0, 2 a decoy of channel 1
    roles = rng.permutation(np.repeat([0, 1, 2], [n, decoys, decoys]))[:placed]
    true = np.flatnonzero(roles == 0) + 1
    relabel = np.zeros(placed + 1, np.uint16)
    relabel[true] = np.arange(1, len(true) + 1)
    channels = []
    for decoy_role in (1, 2):
        brightness = rng.uniform(0.4, 1.0, size=placed + 1)
        brightness[0] = background
        brightness[1:][(roles != 0) & (roles != decoy_role)] = background  # the other channel's decoys
        channels.append(_shade(every, brightness, scale, blur=blur, noise=noise, rng=rng))
    return np.stack(channels), relabel[every]


def render(shape: tuple[int, ...], centres, radii) -> NDArray[np.int32]:
    """Label image of ellipsoids (label i + 1 for centre i); a pixel in several goes to the nearest centre.

    ``centres`` and ``radii`` are (N, ndim) in pixels; each ellipsoid is drawn
    inside its bounding box only, so large scenes stay fast.
    """
    labels = np.zeros(shape, np.int32)
    best = np.full(shape, np.inf, np.float32)
    for i, (c, r) in enumerate(zip(np.asarray(centres, float), np.asarray(radii, float))):
        lo = np.maximum(np.floor(c - r).astype(int), 0)
        hi = np.minimum(np.ceil(c + r).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grid = np.indices(tuple(hi - lo), dtype=np.float32)
        dist = sum(((grid[k] + lo[k] - c[k]) / r[k]) ** 2 for k in range(len(shape)))
        inside = (dist <= 1) & (dist < best[box])
        labels[box][inside] = i + 1
        best[box][inside] = dist[inside]
    return labels


def moving_nuclei(
    shape: tuple[int, ...],
    n: int,
    frames: int,
    *,
    step: float = 3.0,
    radius: float = 5.0,
    division_rate: float = 0.0,
    seed: int = 0,
) -> tuple[NDArray[np.int32], list[tuple[int, int, int]], list[tuple[int, int, int, int]]]:
    """Nuclei that move (and sometimes divide) over ``frames`` time points, with the true links.

    Each nucleus moves ``step`` pixels per frame in a persistent direction that
    turns a little each frame, bouncing off the borders; labels are shuffled in
    every frame so that a label says nothing about identity.  A dividing
    nucleus is replaced in the next frame by two daughters one radius to
    either side.

    Returns
    -------
    labels
        (T, *shape) int32 label images.
    links
        True frame-to-frame links (t, label at t, label at t + 1), daughters included.
    divisions
        (t, mother label at t, daughter label, daughter label at t + 1).
    """
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    size = np.asarray(shape, float)
    margin = radius + 2
    pos = rng.uniform(margin, size - margin, size=(n, ndim))
    vel = rng.normal(size=(n, ndim))
    vel *= step / np.linalg.norm(vel, axis=1, keepdims=True)
    ids = np.arange(n)  # identity of each nucleus
    labels = np.zeros((frames, *shape), np.int32)
    links: list[tuple[int, int, int]] = []
    dividing: list[tuple[int, int]] = []  # (t, mother label at t)
    next_id = n
    previous: dict[int, int] = {}
    for t in range(frames):
        order = rng.permutation(len(pos))  # label of nucleus k is order[k] + 1
        lab = {int(ids[k]): int(order[k]) + 1 for k in range(len(pos))}
        labels[t] = render(shape, pos[np.argsort(order)], np.full((len(pos), ndim), radius))
        links += [(t - 1, previous[me], lab[me]) for me in map(int, ids) if me in previous]
        # move, divide, bounce
        new_pos, new_vel, new_ids, previous = [], [], [], {}
        for k in range(len(pos)):
            me = int(ids[k])
            if t < frames - 1 and rng.random() < division_rate:
                axis = rng.normal(size=ndim)
                axis *= radius * 1.1 / np.linalg.norm(axis)
                for sign in (1, -1):
                    new_pos.append(pos[k] + sign * axis)
                    new_vel.append(vel[k])
                    new_ids.append(next_id)
                    previous[next_id] = lab[me]
                    next_id += 1
                dividing.append((t, lab[me]))  # daughters' labels filled in below
                continue
            turned = vel[k] + rng.normal(scale=0.3 * step, size=ndim)
            new_vel.append(turned * step / np.linalg.norm(turned))
            new_pos.append(pos[k] + new_vel[-1])
            new_ids.append(me)
            previous[me] = lab[me]
        pos, vel, ids = np.array(new_pos), np.array(new_vel), np.array(new_ids)
        vel[(pos < margin) | (pos > size - margin)] *= -1
        pos = np.clip(pos, margin, size - margin)
    # the daughters' labels in the frame after the division (never the last frame, so there are always two)
    by_link: dict[tuple[int, int], list[int]] = {}
    for t, a, b in links:
        by_link.setdefault((t, a), []).append(b)
    divisions = [(t, m, *sorted(by_link[(t, m)])) for t, m in dividing]
    return labels, links, divisions


def atlas_scene(
    shape: tuple[int, int, int] = (20, 80, 120), counts: tuple[int, ...] = (12, 20, 8), outside: int = 5, seed: int = 0
) -> tuple[NDArray[np.int32], NDArray[np.int32], dict[int, int]]:
    """An atlas of ``len(counts)`` slab regions along X inside a border of no region, with known nuclei in each.

    Returns (nuclei labels, atlas labels, {region: true count}, region 0 being outside every region).
    """
    rng = np.random.default_rng(seed)
    z, y, x = shape
    atlas = np.zeros(shape, np.int32)
    edges = np.linspace(10, x - 10, len(counts) + 1).astype(int)
    for i in range(len(counts)):
        atlas[2:-2, 10:-10, edges[i]:edges[i + 1]] = i + 1
    centres: list[NDArray] = []
    truth = {}
    for region, count in enumerate((outside, *counts)):
        spots = np.argwhere(ndimage.binary_erosion(atlas == region, iterations=2))
        placed = 0
        for spot in spots[rng.permutation(len(spots))]:
            if placed == count:
                break
            if all(np.abs(spot - c).max() > 3 for c in centres):  # nuclei never touch
                centres.append(spot)
                placed += 1
        truth[region] = placed
    nuclei = render(shape, np.asarray(centres) + 0.0, np.full((len(centres), 3), 1.2))
    return nuclei, atlas, truth


def cell_scene(
    shape: tuple[int, ...] = (24, 96, 96),
    n: int = 12,
    *,
    nucleus_radius: float = 4.0,
    cell_radius: float = 11.0,
    anisotropy: float = 2.0,
    seed: int = 0,
) -> tuple[NDArray[np.uint16], NDArray[np.int32], NDArray[np.uint16], NDArray[np.int32]]:
    """Cells around nuclei: nuclei image and labels, membrane image and true cell labels (same label per cell).

    Cells are the points within ``cell_radius`` (physical, lateral pixels) of
    their nucleus centre and nearer to it than to any other (a bounded Voronoi
    partition).  The membrane channel is bright on every cell boundary, dim
    inside cells (cytoplasmic background) and dark outside, blurred and noisy.
    ``shape`` is (Z, Y, X), or (Y, X) for a 2D scene (``anisotropy`` unused).
    """
    rng = np.random.default_rng(seed)
    scale = np.array([anisotropy, 1.0, 1.0])[-len(shape):]
    size = np.asarray(shape, float)
    centres: list[NDArray] = []
    while len(centres) < n:
        c = rng.uniform(cell_radius / scale, size - cell_radius / scale)
        if all(np.linalg.norm((c - o) * scale) > 1.3 * cell_radius for o in centres):
            centres.append(c)
    centres_arr = np.array(centres)
    nuclei = render(shape, centres_arr, np.tile(nucleus_radius / scale, (n, 1)))
    cells = render(shape, centres_arr, np.tile(cell_radius / scale, (n, 1)))
    edges = ndimage.grey_dilation(cells, size=3) != ndimage.grey_erosion(cells, size=3)
    membrane = 0.3 * (cells > 0) + 1.0 * edges
    membrane = ndimage.gaussian_filter(membrane.astype(np.float32), 0.8 / scale) + 0.03 * rng.standard_normal(shape)
    dapi = ndimage.gaussian_filter((nuclei > 0).astype(np.float32), 1.0 / scale) + 0.03 * rng.standard_normal(shape)
    to16 = lambda a: (np.clip(a, 0, None) * 3000 + 100).astype(np.uint16)  # noqa: E731
    return to16(dapi), nuclei, to16(membrane), cells
