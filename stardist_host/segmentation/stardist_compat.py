"""Every use of stardist's private API, and every Keras 2 / Keras 3 difference, in one place.

The batched pipeline (:mod:`stardist_host.segmentation.pipeline`) reuses the
steps of stardist's ``predict_instances`` one by one: the padding of
``_predict_setup``, the sparse thresholding of ``_ind_prob_thresh``, the
resizer's ``filter_points`` and the NMS and rendering of
``_instances_from_prediction``.  None of them is public, so each is wrapped
here in a small function, and :func:`check_private_api` compares their
signatures with the ones these wrappers were written for.  The tests run it,
so a stardist release that renames or changes one fails loudly instead of
giving wrong labels.

Checked against stardist 0.8.5, 0.8.6, 0.9.0, 0.9.1 and 0.9.2 (pyproject pins
``stardist<0.10``), with TensorFlow 2.10 (Keras 2) and TensorFlow 2.21 (Keras 3).
"""

from __future__ import annotations

import inspect
import logging
from typing import Callable

import numpy as np
from numpy.typing import NDArray

__all__ = ["CHECKED_VERSIONS", "PRIVATE_API", "check_private_api", "pad_for_network", "candidates", "instances",
           "nms_config", "instances_from_config", "tile_overlap", "block_grid", "network_function"]

log = logging.getLogger(__name__)

#: stardist versions whose private API the functions below were checked against.
CHECKED_VERSIONS = ("0.8.5", "0.8.6", "0.9.0", "0.9.1", "0.9.2")

#: (module, attribute path) -> the leading parameter names the wrappers rely on.
PRIVATE_API: dict[tuple[str, str], tuple[str, ...]] = {
    ("stardist.models.base", "StarDistBase._predict_setup"):
        ("self", "img", "axes", "normalizer", "n_tiles", "show_tile_progress", "predict_kwargs"),
    ("stardist.models.base", "StarDistBase._axes_tile_overlap"): ("self", "query_axes"),
    ("stardist.models.model2d", "StarDist2D._axes_div_by"): ("self", "query_axes"),
    ("stardist.models.model3d", "StarDist3D._axes_div_by"): ("self", "query_axes"),
    ("stardist.models.base", "StarDistPadAndCropResizer.filter_points"): ("self", "ndim", "points", "axes"),
    ("stardist.nms", "_ind_prob_thresh"): ("prob", "prob_thresh", "b"),
    ("stardist.models.model2d", "StarDist2D._instances_from_prediction"):
        ("self", "img_shape", "prob", "dist", "points", "prob_class", "prob_thresh", "nms_thresh"),
    ("stardist.models.model3d", "StarDist3D._instances_from_prediction"):
        ("self", "img_shape", "prob", "dist", "points", "prob_class", "prob_thresh", "nms_thresh"),
    # what _instances_from_prediction calls on its sparse path, called without the model in NMS worker
    # processes (instances_from_config); public in stardist, listed so that a change shows here too
    ("stardist.nms", "non_maximum_suppression_sparse"): ("dist", "prob", "points", "b", "nms_thresh"),
    ("stardist.nms", "non_maximum_suppression_3d_sparse"): ("dist", "prob", "points", "rays", "b", "nms_thresh"),
    ("stardist.geometry", "polygons_to_label"): ("dist", "points", "shape", "prob", "thr", "scale_dist"),
    ("stardist.geometry", "polyhedron_to_label"): ("dist", "points", "rays", "shape", "prob", "thr"),
    ("stardist.rays3d", "rays_from_json"): ("d",),
    ("stardist.matching", "relabel_sequential"): ("label_field", "offset"),
}

# _predict_setup returns a tuple; these are the places of the padded input and the resizer.
_SETUP_LENGTH, _SETUP_X, _SETUP_RESIZER = 12, 0, 5


def check_private_api() -> list[str]:
    """Differences between the installed stardist and :data:`PRIVATE_API`; empty when all is as expected.

    Returns
    -------
    list of str
        One line per private name that is missing or whose parameters changed.
    """
    import importlib

    problems = []
    for (module, path), expected in PRIVATE_API.items():
        obj = importlib.import_module(module)
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            problems.append(f"{module}.{path} is missing")
            continue
        found = tuple(inspect.signature(obj).parameters)[: len(expected)]
        if found != expected:
            problems.append(f"{module}.{path} takes {found}, expected {expected}")
    return problems


def pad_for_network(model, image: NDArray) -> tuple[NDArray, object]:
    """The input as stardist's ``predict`` pads it (network axes, channel last) and the resizer that did it.

    Parameters
    ----------
    model
        A StarDist2D or StarDist3D model.
    image
        A normalised plane (YX) or volume (ZYX).

    Returns
    -------
    x, resizer
        The padded input and the ``StarDistPadAndCropResizer`` that knows the padding.
    """
    setup = model._predict_setup(image, None, None, None, False, {})
    if len(setup) != _SETUP_LENGTH:
        raise RuntimeError(f"stardist's _predict_setup returned {len(setup)} values, expected {_SETUP_LENGTH}; "
                           f"this stardist version is not supported (checked: {', '.join(CHECKED_VERSIONS)})")
    return setup[_SETUP_X], setup[_SETUP_RESIZER]


def probability(model, resizer, prob: NDArray, shape: tuple[int, ...]) -> NDArray:
    """The network's object probability for one padded input, unpadded as stardist does and on the image's grid.

    ``prob`` is the (…, 1) output on the network's grid (every ``grid``-th
    pixel of the padded input, or of the scaled image); linear interpolation
    brings it to ``shape``, the unit's (Y, X) or (Z, Y, X), as float32.
    """
    return on_grid(np.take(resizer.after(prob, model.config.axes), 0, axis=-1), shape)


def predicted_probability(model, image: NDArray, *, n_tiles: tuple[int, ...], scale) -> NDArray:
    """The object probability of a unit that ``predict_instances`` segments itself (tiled, scaled), on its grid.

    A network pass of its own, as ``predict_instances`` makes it: the image
    resampled by ``scale`` (linear, as stardist does), ``predict`` in tiles.
    The labels stay those of the sparse ``predict_instances``: its dense path,
    which would hand the probability back, drops objects at the border of a
    scaled image that the sparse one keeps.
    """
    from scipy.ndimage import zoom

    ndim = int(model.config.n_dim)
    options = instance_options(model, prob_thresh=None, nms_thresh=None, n_tiles=n_tiles, scale=scale)
    x = image if scale is None else zoom(image, options["scale"], order=1)
    prob, _ = model.predict(x, n_tiles=options["n_tiles"], show_tile_progress=False)
    return on_grid(prob, image.shape[:ndim])


def on_grid(prob: NDArray, shape: tuple[int, ...]) -> NDArray:
    """``prob`` resampled (linear, pixel areas aligned) to ``shape``, as float32."""
    from scipy.ndimage import zoom

    prob = np.asarray(prob, np.float32)
    if prob.shape == tuple(shape):
        return prob
    factors = [n / p for n, p in zip(shape, prob.shape)]
    out = zoom(prob, factors, order=1, grid_mode=True, mode="nearest")
    return out[tuple(slice(0, n) for n in shape)].astype(np.float32, copy=False)


def instance_options(model, *, prob_thresh, nms_thresh, n_tiles, scale) -> dict:
    """``predict_instances``' options for a unit: ``n_tiles`` and ``scale`` are per spatial axis; a model with
    several input channels takes its units with the channels last, where stardist wants a 1 for that axis too."""
    extra = (1,) if int(getattr(model.config, "n_channel_in", 1)) > 1 else ()
    return dict(prob_thresh=prob_thresh, nms_thresh=nms_thresh, n_tiles=tuple(n_tiles) + extra,
                scale=None if scale is None else tuple(scale) + extra, show_tile_progress=False)


def candidates(model, x: NDArray, resizer, prob: NDArray, dist: NDArray, prob_thresh: float):
    """Points, probabilities and distances above ``prob_thresh`` inside the unpadded image, as stardist picks them.

    ``prob`` is the network's (…, 1) output and ``dist`` its (…, n_rays) one for the padded ``x``.
    """
    from stardist.nms import _ind_prob_thresh

    prob = prob[..., 0]
    inds = _ind_prob_thresh(prob, prob_thresh, b=2)
    points = np.stack(np.where(inds), axis=1) * np.asarray(model.config.grid).reshape(1, -1)
    keep = resizer.filter_points(x.ndim, points, model.config.axes)
    # as predict_instances, no zero or negative ray lengths; taken after the selection, which is
    # the same element by element and touches only the candidates' rays (a tenth of a 1024² plane's)
    return points[keep], prob[inds][keep], np.maximum(1e-3, dist[inds][keep])


def nms_config(model) -> dict:
    """What NMS and rendering need of ``model``, as plain data a worker process can rebuild them from.

    stardist's ``_instances_from_prediction`` (sparse path) reads only the
    grid, the axes and, in 3D, the rays (``rays_json``) of the model; the
    thresholds are passed explicitly.  No TensorFlow object is in it.
    """
    config = model.config
    out = {"n_dim": int(config.n_dim), "grid": tuple(int(g) for g in config.grid), "axes": str(config.axes)}
    if out["n_dim"] == 3:
        out["rays_json"] = dict(config.rays_json)
    return out


def instances_from_config(config: dict, shape: tuple[int, ...], points: NDArray, probs: NDArray, dists: NDArray, *,
                          nms_thresh: float) -> NDArray:
    """:func:`instances` without the model (no TensorFlow): the sparse path of ``_instances_from_prediction``.

    The same stardist calls with the same arguments as the model's method
    makes for sparse candidates, one class, no scale and no overlap label:
    the same labels, which the tests check on the bundled 2D and 3D samples.

    Parameters
    ----------
    config
        From :func:`nms_config`.
    shape
        The plane's (volume's) shape.
    points, probs, dists
        Candidates, from :func:`candidates`.
    nms_thresh
        Overlap threshold of NMS.
    """
    if config["n_dim"] == 2:
        from stardist.geometry import polygons_to_label
        from stardist.nms import non_maximum_suppression_sparse

        points, probi, disti, _ = non_maximum_suppression_sparse(dists, probs, points, nms_thresh=nms_thresh,
                                                                 verbose=False)
        return polygons_to_label(disti, points, prob=probi, shape=shape, scale_dist=(1, 1))
    from stardist.geometry import polyhedron_to_label
    from stardist.matching import relabel_sequential
    from stardist.nms import non_maximum_suppression_3d_sparse
    from stardist.rays3d import rays_from_json

    rays = rays_from_json(config["rays_json"])
    points, probi, disti, _ = non_maximum_suppression_3d_sparse(dists, probs, points, rays, nms_thresh=nms_thresh,
                                                                verbose=False)
    labels = polyhedron_to_label(disti, points, rays=rays, prob=probi, shape=shape, overlap_label=None,
                                 verbose=False)
    return relabel_sequential(labels)[0]


def instances(model, shape: tuple[int, ...], points: NDArray, probs: NDArray, dists: NDArray, *,
              prob_thresh: float, nms_thresh: float) -> NDArray:
    """Labels from candidates: stardist's NMS and polygon (polyhedron) rendering."""
    labels, _ = model._instances_from_prediction(
        shape, probs, dists, points=points, prob_thresh=prob_thresh, nms_thresh=nms_thresh, verbose=False,
    )
    return labels


def tile_overlap(model, axes: str) -> tuple[int, ...]:
    """The network's receptive field per axis: the context a block needs in ``predict_instances_big``."""
    return tuple(int(v) for v in model._axes_tile_overlap(axes))


def block_grid(model, axes: str) -> tuple[int, ...]:
    """What block sizes must be multiples of per axis in ``predict_instances_big`` (pooling times grid)."""
    return tuple(int(v) for v in model._axes_div_by(axes))


def network_function(model) -> Callable[[NDArray], tuple[NDArray, NDArray]]:
    """A compiled call of the model's network on a batch: ``f(x) -> (prob, dist)`` as numpy arrays.

    The input is passed as a tensor, not as ``[x]``: Keras 3 warns on every
    trace when a single-input functional model gets a list, and Keras 2
    accepts both.
    """
    import tensorflow as tf

    keras_model = model.keras_model

    @tf.autograph.experimental.do_not_convert
    def forward(x):
        return keras_model(x, training=False)

    # reduce_retracing: one trace serves every batch size (TensorFlow >= 2.9)
    compiled = tf.function(forward, reduce_retracing=True)

    def call(x: NDArray) -> tuple[NDArray, NDArray]:
        outputs = compiled(tf.convert_to_tensor(x))
        return np.asarray(outputs[0]), np.asarray(outputs[1])

    return call

