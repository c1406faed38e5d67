"""Training StarDist models from annotated TIFF pairs: checks, configuration, loss logging, resume, model card.

A run writes into the model folder, as it goes:

- ``weights_best.h5`` whenever the validation loss improves (stardist's own
  checkpoint) and ``weights_now.h5`` after every epoch (``weights_last.h5``
  once finished), so a stopped run loses nothing;
- ``losses.csv`` (one row per epoch) and ``losses.png`` (the curves);
- at the end ``thresholds.json`` (optimised on the validation data) and
  ``model_card.json`` / ``README.md`` (data, command, seed, epochs, scores,
  the number of input channels and how they were normalised).

Every file this module writes goes through :func:`stardist_host.io.files.atomic_write`
in UTF-8; the weights are written by Keras.  Keras's per-step progress bars and
stardist's prints go to the DEBUG log; each epoch is one INFO line.

Without ``--patch-size`` the patch is, along each axis, the largest multiple of
what the network needs (2^depth x grid) up to 256 x 256 (2D) or 48 x 96 x 96
(3D) that fits every training and validation sample.  Without validation files
several samples are split by whole samples, a single sample along its longest
axis (its last ``val_fraction`` of rows, columns or planes).

Samples with a trailing channel axis (:func:`~stardist_host.training.pairs.read_pairs`
with a list of channels) train a model with that many input channels, each
channel normalised on its own over space, or all of them together with
``normalize_channels_jointly``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from numpy.typing import NDArray

from ..console import stdout_to_log
from ..errors import TrainError
from ..io.files import atomic_write
from ..segmentation.engine import median_diameter_px
from .pairs import Pairs

__all__ = [
    "LARGEST_PATCH",
    "LOSS_COLUMNS",
    "TrainError",
    "TrainSettings",
    "card_text",
    "fit_patch",
    "make_augmenter",
    "read_card",
    "record_test_scores",
    "seed_everything",
    "split_validation",
    "train",
    "write_card",
]

log = logging.getLogger(__name__)

LOSS_COLUMNS = ("epoch", "loss", "val_loss", "prob_loss", "val_prob_loss", "dist_loss", "val_dist_loss",
                "learning_rate", "seconds", "overfitting")
MIN_TRAIN_OBJECTS = 10
MIN_VAL_OBJECTS = 3
#: The largest patch chosen when none is given (stardist's examples use these).
LARGEST_PATCH = {2: (256, 256), 3: (48, 96, 96)}
_UNET_DEPTH_3D = 2  # a shallower U-Net than stardist's 3D default suits the small Z extent of most stacks
_AXES = {2: "YX", 3: "ZYX"}
_STALE = ("losses.csv", "losses.png", "thresholds.json", "weights_best.h5", "weights_now.h5", "weights_last.h5",
          "model_card.json", "README.md")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow so that a training run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    import tensorflow as tf

    tf.random.set_seed(seed)


def make_augmenter(
    *,
    flip_z: bool = False,
    rotate_flip: bool = True,
    intensity: bool = True,
    noise: float = 0.0,
    seed: int = 0,
) -> Callable[[NDArray, NDArray], tuple[NDArray, NDArray]]:
    """Return an augmenter for ``StarDist*.train(augmenter=...)``.

    It applies a random 90-degree rotation (square patches only) and flips in
    the image plane (the last two axes, so it suits 2D patches and anisotropic
    3D ones) to image and mask alike, a flip along Z of both when ``flip_z``
    is set, and to the image only a random intensity scale (0.6 to 2) and
    shift (-0.2 to 0.2) and Gaussian noise of standard deviation up to ``noise``.

    Parameters
    ----------
    flip_z
        Also flip 3D patches along Z.
    rotate_flip
        Rotate and flip in the image plane.
    intensity
        Randomly scale and shift intensities.
    noise
        Largest standard deviation of the additive noise; 0 switches it off.
    seed
        Seed of the augmenter's own random generator.

    Returns
    -------
    callable
        ``augment(x, y) -> (x, y)``: float32 image, mask of the input's type.
    """
    rng = np.random.default_rng(seed)

    def augment(x: NDArray, y: NDArray) -> tuple[NDArray, NDArray]:
        plane = (y.ndim - 2, y.ndim - 1)
        if rotate_flip:
            k = int(rng.integers(4))
            if x.shape[plane[0]] == x.shape[plane[1]]:  # a rotated non-square patch no longer fits the batch
                x, y = np.rot90(x, k, axes=plane), np.rot90(y, k, axes=plane)
            for ax in plane:
                if rng.random() < 0.5:
                    x, y = np.flip(x, axis=ax), np.flip(y, axis=ax)
        if flip_z and y.ndim == 3 and rng.random() < 0.5:
            x, y = np.flip(x, axis=0), np.flip(y, axis=0)
        if intensity:
            x = x * rng.uniform(0.6, 2.0) + rng.uniform(-0.2, 0.2)
        if noise > 0:
            x = x + rng.normal(0, rng.uniform(0, noise), size=x.shape)
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)

    return augment


@dataclass(frozen=True)
class TrainSettings:
    """Choices of a training run; None picks stardist's recommendation for the data."""

    basedir: Path
    name: str
    epochs: int = 100
    steps_per_epoch: int = 100
    patch_size: tuple[int, ...] | None = None
    n_rays: int | None = None
    grid: tuple[int, ...] | None = None
    batch_size: int = 4
    val_fraction: float = 0.15
    seed: int = 42
    rotate_flip: bool = True
    flip_z: bool = True
    intensity: bool = True
    noise: float = 0.0
    voxel_size: tuple[float | None, float, float] | None = None
    percentiles: tuple[float, float] = (1.0, 99.8)
    normalize_channels_jointly: bool = False
    overwrite: bool = False
    resume: bool = False
    use_gpu: bool = True
    command: str = ""
    data: dict = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return Path(self.basedir) / self.name


# ---------------------------------------------------------------------------------------------------------------------
# validation split and patch size


@dataclass(frozen=True)
class _Validation:
    """Where the validation samples came from, for advice when they are too small."""

    origin: str  # "files" (--val-images), "samples" (whole samples held out) or "part" (a part of one sample)
    fraction: float = 0.0
    length: int = 0  # the split sample's length along the split axis
    axis: str = ""

    def advice(self, needed: int | None = None) -> str:
        if self.origin == "part":
            wanted = "" if needed is None else f" to at least {math.ceil(100 * needed / self.length) / 100:g}"
            return (f"raise --val-fraction (now {self.fraction:g}: the last {round(self.length * self.fraction)} of "
                    f"{self.length} along {self.axis} validate){wanted}, or give --val-images/--val-masks")
        if self.origin == "files":
            return "give larger --val-images/--val-masks"
        return "give larger images, or --val-images/--val-masks"


def split_validation(pairs: Pairs, fraction: float, seed: int) -> tuple[Pairs, Pairs]:
    """Hold out about ``fraction`` of the samples, or of a single sample along its longest axis, for validation.

    Parameters
    ----------
    pairs
        The annotated samples.
    fraction
        Between 0 and 1: the part that validates.
    seed
        Seed of the random choice of whole samples.

    Returns
    -------
    (Pairs, Pairs)
        Training and validation samples.  A single sample gives its last
        ``fraction`` along its longest axis (the last of equally long ones:
        columns in a square plane), its source named with the slice taken.

    Raises
    ------
    TrainError
        ``fraction`` is not between 0 and 1.
    """
    if not 0 < fraction < 1:
        raise TrainError(f"val_fraction={fraction}: must be between 0 and 1 (e.g. 0.15), or give validation files")
    n = len(pairs.images)
    if n >= 2:
        order = np.random.default_rng(seed).permutation(n)
        n_val = min(n - 1, max(1, round(n * fraction)))
        return pairs.select(sorted(order[n_val:])), pairs.select(sorted(order[:n_val]))
    shape = pairs.images[0].shape[:pairs.ndim]  # a trailing channel axis is never split
    axis = max(range(len(shape)), key=lambda a: (shape[a], a))
    length = shape[axis]
    cut = length - max(1, round(length * fraction))

    def part(start: int, stop: int) -> Pairs:
        index = (slice(None),) * axis + (slice(start, stop),)
        text = ", ".join(f"{start}:{stop}" if a == axis else ":" for a in range(len(shape)))
        return Pairs(pairs.ndim, [pairs.images[0][index]], [pairs.masks[0][index]], pairs.voxel_size,
                     [f"{pairs.sources[0]}[{text}]"])

    log.info("validation: %s %d..%d of %d of the single sample (val_fraction=%g)",
             _AXES[pairs.ndim][axis], cut, length - 1, length, fraction)
    return part(0, cut), part(cut, length)


def fit_patch(
    train_pairs: Pairs,
    val_pairs: Pairs,
    divisor: tuple[int, ...],
    *,
    largest: tuple[int, ...],
    validation: _Validation | None = None,
) -> tuple[int, ...]:
    """The largest patch, side by side a multiple of ``divisor`` up to ``largest``, that fits every sample.

    Stardist cuts training and validation patches alike, so both limit it.

    Raises
    ------
    TrainError
        A sample is smaller than ``divisor`` along some axis; the message names
        the sample and the option that fixes it.
    """
    validation = validation or _Validation("files")
    axes = _AXES[train_pairs.ndim]
    patch, limits = [], []
    for a, (d, cap) in enumerate(zip(divisor, largest)):
        smallest = []
        for what, pairs, fix in (("training", train_pairs, "give larger images, or a smaller --grid"),
                                 ("validation", val_pairs, validation.advice(d))):
            size, src = min((im.shape[a], s) for im, s in zip(pairs.images, pairs.sources))
            if size < d:
                raise TrainError(f"{what} sample {src} has {size} pixels along {axes[a]}, but the network needs "
                                 f"patches of at least {d} there (a multiple of 2^depth x grid); {fix}")
            smallest.append((size, src))
        (t_size, _), (v_size, v_src) = smallest
        patch.append(min(cap, t_size, v_size) // d * d)
        if v_size < min(cap, t_size) and v_size // d < min(cap, t_size) // d:
            limits.append(f"{axes[a]} is limited by validation sample {v_src} ({v_size} pixels)")
    log.info("patch size %s: the largest multiple of %s up to %s that fits the training and validation samples%s",
             tuple(patch), tuple(divisor), tuple(largest), "; " + ", ".join(limits) if limits else "")
    if limits and validation.origin == "part":
        log.info("for larger patches %s", validation.advice())
    return tuple(patch)


def _divisor(config) -> tuple[int, ...]:
    """What each patch side must be a multiple of (stardist's ``_axes_div_by`` for a U-Net)."""
    return tuple(int(p**config.unet_n_depth * g) for p, g in zip(config.unet_pool, config.grid))


def _check_patch(patch: tuple[int, ...], divisor: tuple[int, ...], train_pairs: Pairs, val_pairs: Pairs,
                 validation: _Validation) -> None:
    """A given patch size: a multiple of the divisor and no larger than any sample."""
    if any(p % d for p, d in zip(patch, divisor)):
        raise TrainError(
            f"patch_size={patch}: each side must be a multiple of {divisor} (2^depth x grid), "
            f"e.g. {tuple(max(d, p // d * d) for p, d in zip(patch, divisor))}; give another --patch-size"
        )
    for what, pairs in (("training", train_pairs), ("validation", val_pairs)):
        for image, source in zip(pairs.images, pairs.sources):
            if any(p > s for p, s in zip(patch, image.shape)):
                fix = "give a smaller --patch-size (or larger images)" if what == "training" else \
                    f"give a smaller --patch-size, or {validation.advice()}"
                raise TrainError(
                    f"patch_size={patch} is larger than {what} sample {source} of shape {image.shape}; {fix}")


def _check_objects(train_pairs: Pairs, val_pairs: Pairs, validation: _Validation) -> None:
    n_train, n_val = train_pairs.n_objects, val_pairs.n_objects
    if n_train < MIN_TRAIN_OBJECTS:
        raise TrainError(
            f"the training data hold {n_train} objects; at least {MIN_TRAIN_OBJECTS} are needed: annotate more")
    if n_val < MIN_VAL_OBJECTS:
        fix = ("annotate more validation objects" if validation.origin == "files"
               else "annotate more, raise --val-fraction, or give --val-images/--val-masks")
        raise TrainError(f"the validation part holds {n_val} object(s); at least {MIN_VAL_OBJECTS} are needed: {fix}")


# ---------------------------------------------------------------------------------------------------------------------
# configuration


def _anisotropy(pairs: Pairs, voxel_size) -> tuple[float, float, float]:
    if voxel_size is not None and voxel_size[0] is not None:
        smallest = min(voxel_size)
        return tuple(float(v / smallest) for v in voxel_size)
    from stardist import calculate_extents

    log.info("Z spacing unknown (give --voxel-size z,y,x): the anisotropy is estimated from the masks' object extents")
    extents = calculate_extents(pairs.masks)
    return tuple(float(a) for a in np.max(extents) / extents)


def _config(settings: TrainSettings, train_pairs: Pairs, val_pairs: Pairs, validation: _Validation):
    """Stardist's Config for the data, its patch fitted or checked; and the 3D anisotropy (None in 2D)."""
    common = {
        "n_channel_in": train_pairs.n_channels or 1, "train_batch_size": settings.batch_size,
        "train_epochs": settings.epochs, "train_steps_per_epoch": settings.steps_per_epoch, "train_tensorboard": False,
    }
    if train_pairs.ndim == 2:
        from stardist.models import Config2D

        anisotropy = None
        config = Config2D(n_rays=settings.n_rays or 32, grid=settings.grid or (2, 2), **common)
    else:
        from stardist import Rays_GoldenSpiral
        from stardist.models import Config3D

        anisotropy = _anisotropy(train_pairs, settings.voxel_size or train_pairs.voxel_size)
        grid = settings.grid or tuple(1 if a > 1.5 else 2 for a in anisotropy)  # stardist's recommendation
        rays = Rays_GoldenSpiral(settings.n_rays or 96, anisotropy=anisotropy)
        config = Config3D(rays=rays, grid=grid, anisotropy=anisotropy, backbone="unet", unet_n_depth=_UNET_DEPTH_3D,
                          **common)
        log.info("3D: anisotropy %s, grid %s, %d rays", tuple(round(a, 3) for a in anisotropy), grid, len(rays))
    divisor = _divisor(config)
    if settings.patch_size is None:
        patch = fit_patch(train_pairs, val_pairs, divisor, largest=LARGEST_PATCH[train_pairs.ndim],
                          validation=validation)
    else:
        patch = tuple(settings.patch_size)
        if len(patch) != train_pairs.ndim:
            raise TrainError(f"patch_size={patch}: give {train_pairs.ndim} sides for {train_pairs.ndim}D data")
        _check_patch(patch, divisor, train_pairs, val_pairs, validation)
    config.train_patch_size = patch
    return config, anisotropy


# ---------------------------------------------------------------------------------------------------------------------
# losses, plot, console


def _read_losses(folder: Path) -> list[dict]:
    path = folder / "losses.csv"
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as f:
        return [{k: (int(float(v)) if k in ("epoch", "overfitting") else float(v)) for k, v in row.items()
                 if v not in ("", None)} for row in csv.DictReader(f)]


def _write_losses(history: list[dict], path: Path) -> None:
    with atomic_write(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOSS_COLUMNS)
        writer.writeheader()
        writer.writerows({k: row.get(k, "") for k in LOSS_COLUMNS} for row in history)


def _rising_while_falling(history: list[dict], patience: int) -> bool:
    """Validation loss up and training loss down for ``patience`` epochs in a row."""
    if len(history) <= patience:
        return False
    recent = history[-patience - 1:]
    return all(b["val_loss"] > a["val_loss"] and b["loss"] < a["loss"] for a, b in zip(recent, recent[1:]))


def _loss_logger(folder: Path, start_epoch: int, patience: int, *, epochs: int | None = None):
    """A Keras callback that logs each epoch, rewrites losses.csv and losses.png, and warns of overfitting."""
    from csbdeep.utils.tf import keras_import

    Callback = keras_import("callbacks", "Callback")

    class LossLogger(Callback):
        def __init__(self):
            super().__init__()
            self.history = _read_losses(folder)
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            lr = logs.get("learning_rate", logs.get("lr"))
            if lr is None:
                lr = np.asarray(self.model.optimizer.learning_rate)
            row = {"epoch": start_epoch + epoch + 1, "learning_rate": float(lr),
                   "seconds": round(time.perf_counter() - self.started, 2)}
            row.update({k: float(logs[k]) for k in LOSS_COLUMNS[1:7] if k in logs})
            if self.history and not math.isclose(row["learning_rate"], self.history[-1]["learning_rate"]):
                log.info("learning rate lowered to %.3g (validation loss on a plateau)", row["learning_rate"])
            self.history.append(row)
            row["overfitting"] = int(_rising_while_falling(self.history, patience))
            if row["overfitting"]:
                log.warning(
                    "epoch %d: validation loss has risen for %d epochs while training loss fell: the model may be "
                    "overfitting (weights_best.h5 keeps the best epoch so far)", row["epoch"], patience,
                )
            _write_losses(self.history, folder / "losses.csv")
            _plot(self.history, folder / "losses.png")
            log.info("epoch %d%s: loss %.4f, val_loss %.4f (%.1f s)", row["epoch"], f"/{epochs}" if epochs else "",
                     row.get("loss", math.nan), row.get("val_loss", math.nan), row["seconds"])
            self.started = time.perf_counter()

    return LossLogger()


def _plot(history: list[dict], path: Path) -> None:
    # a Figure of its own, not pyplot: switching the global backend would close a host's open figures
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    epochs = [h["epoch"] for h in history]
    for key, label in (("loss", "training"), ("val_loss", "validation")):
        ax.plot(epochs, [h.get(key, math.nan) for h in history], marker=".", label=label)
    ax.set(xlabel="epoch", ylabel="loss", yscale="log", title=f"{path.parent.name}: loss per epoch")
    ax.legend()
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _normalized(images, percentiles, ndim: int, *, jointly: bool = False) -> list[NDArray]:
    """Each image mapped by its ``percentiles``: a trailing channel axis each channel on its own over space
    (csbdeep's ``axis=(0, 1)`` in 2D, ``(0, 1, 2)`` in 3D), or with ``jointly`` all channels together."""
    from csbdeep.utils import normalize

    return [normalize(x, *percentiles, axis=None if jointly or x.ndim == ndim else tuple(range(ndim)))
            .astype(np.float32) for x in images]


# ---------------------------------------------------------------------------------------------------------------------
# training


def _channels(pairs: Pairs) -> str:
    n = pairs.n_channels
    return "one channel (no channel axis)" if n is None else f"{n} channel{'s' if n != 1 else ''} (a channel axis)"


def _validation_split(settings: TrainSettings, train_pairs: Pairs, val_pairs: Pairs | None):
    if val_pairs is not None:
        if val_pairs.ndim != train_pairs.ndim:
            raise TrainError(f"the validation data are {val_pairs.ndim}D but the training data {train_pairs.ndim}D")
        if val_pairs.n_channels != train_pairs.n_channels:
            raise TrainError(f"the validation data have {_channels(val_pairs)} but the training data "
                             f"{_channels(train_pairs)}; read both with the same --channel")
        return train_pairs, val_pairs, _Validation("files")
    validation = _Validation("samples")
    if len(train_pairs.images) == 1:  # split_validation takes a part of the sample along its longest axis
        shape = train_pairs.images[0].shape[:train_pairs.ndim]
        axis = max(range(len(shape)), key=lambda a: (shape[a], a))
        validation = _Validation("part", settings.val_fraction, shape[axis], _AXES[train_pairs.ndim][axis])
    return (*split_validation(train_pairs, settings.val_fraction, settings.seed), validation)


def _resumed_model(cls, settings: TrainSettings, history: list[dict]):
    """The stopped (or finished) model with its last epoch's weights and learning rate."""
    folder = settings.folder
    model = cls(None, name=settings.name, basedir=str(settings.basedir))
    # the last epoch's weights: weights_now.h5 of a stopped run, weights_last.h5 of a finished one
    last = next((w for w in ("weights_now.h5", "weights_last.h5") if (folder / w).is_file()), None)
    if last is None:
        raise TrainError(f"--resume: {folder} holds neither weights_now.h5 nor weights_last.h5; start without --resume")
    model.load_weights(last)
    log.info("resuming %s at epoch %d of %d from %s", folder.name, len(history) + 1, settings.epochs, last)
    if history:
        model.config.train_learning_rate = history[-1]["learning_rate"]
    return model


def _fit(model, settings: TrainSettings, train_pairs: Pairs, val_pairs: Pairs, history: list[dict], patience: int,
         device: str) -> None:
    model.prepare_for_training()
    # Keras's per-step progress bar off: stardist calls fit(verbose=1); the loss logger reports each epoch
    fit = model.keras_model.fit
    model.keras_model.fit = lambda *args, **kwargs: fit(*args, **{**kwargs, "verbose": 0})
    best = min((h["val_loss"] for h in history if "val_loss" in h), default=None)
    for cb in model.callbacks:
        if best is not None and str(getattr(cb, "filepath", "")).endswith("weights_best.h5"):
            cb.best = best  # a resumed run keeps the earlier best weights unless it beats them
    model.callbacks.append(_loss_logger(settings.folder, len(history), patience, epochs=settings.epochs))

    def normalized(pairs: Pairs) -> list[NDArray]:
        return _normalized(pairs.images, settings.percentiles, pairs.ndim, jointly=settings.normalize_channels_jointly)

    X, Y = normalized(train_pairs), train_pairs.masks
    X_val, Y_val = normalized(val_pairs), val_pairs.masks
    augmenter = None
    if settings.rotate_flip or settings.intensity or settings.noise or (settings.flip_z and train_pairs.ndim == 3):
        augmenter = make_augmenter(flip_z=settings.flip_z, rotate_flip=settings.rotate_flip,
                                   intensity=settings.intensity, noise=settings.noise, seed=settings.seed)
    patch = tuple(model.config.train_patch_size)
    if settings.rotate_flip and patch[-1] != patch[-2]:
        log.info("patch %s is not square in the image plane: 90-degree rotations are skipped, flips kept", patch)
    n = train_pairs.n_channels
    how = "jointly" if settings.normalize_channels_jointly else "each on its own"
    channels = f"{n} input channels normalised {how}" if n else "1 input channel"
    log.info("training %s (%dD, %s) on %d samples (%d objects), validating on %d (%d objects), on %s",
             settings.name, train_pairs.ndim, channels, len(X),
             train_pairs.n_objects, len(X_val), val_pairs.n_objects, device)
    model.train(X, Y, validation_data=(X_val, Y_val), augmenter=augmenter, seed=settings.seed,
                epochs=settings.epochs - len(history), steps_per_epoch=settings.steps_per_epoch)
    # stardist has reloaded weights_best.h5: thresholds and scores are those of the best epoch
    thresholds = model.optimize_thresholds(X_val, Y_val, optimize_kwargs={"verbose": 0}, save_to_json=False)
    with atomic_write(settings.folder / "thresholds.json") as tmp:
        values = {"prob": float(thresholds["prob"]), "nms": float(thresholds["nms"])}
        tmp.write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")
    log.info("thresholds optimised on the validation data: prob %.3f, nms %.3f", thresholds["prob"], thresholds["nms"])


def train(settings: TrainSettings, train_pairs: Pairs, val_pairs: Pairs | None = None, *, patience: int = 3) -> dict:
    """Train (or resume training) a StarDist model and return its model card.

    Parameters
    ----------
    settings
        Where the model goes and how it is trained.
    train_pairs
        Training samples; without ``val_pairs`` a part of them validates
        (:func:`split_validation`).
    val_pairs
        Explicit validation samples.
    patience
        Epochs of rising validation loss under falling training loss before
        the overfitting warning.

    Returns
    -------
    dict
        The model card, as written to ``model_card.json``.

    Raises
    ------
    TrainError
        Data or choices that cannot train a model; raised before anything is written.
    """
    from ..segmentation.device import configure_device
    from ..segmentation.precision import configure_precision
    from .evaluation import predict_all, score

    folder = settings.folder
    exists = (folder / "config.json").is_file()
    if exists and not (settings.overwrite or settings.resume):
        raise TrainError(
            f"{folder} already holds a model; use --overwrite to replace it or --resume to continue its training")
    if settings.resume and not exists:
        raise TrainError(f"--resume: {folder} holds no model to continue; start without --resume")
    train_pairs, val_pairs, validation = _validation_split(settings, train_pairs, val_pairs)
    history = _read_losses(folder) if settings.resume else []
    if settings.resume:
        trained = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("n_channel_in", 1)
        if trained != (train_pairs.n_channels or 1):
            raise TrainError(f"--resume: {folder.name} takes {trained} input channel(s), but the data have "
                             f"{_channels(train_pairs)}; give the --channel it was trained with")
    if len(history) >= settings.epochs:
        raise TrainError(f"--resume: {folder.name} has already trained {len(history)} of {settings.epochs} epochs; "
                         "raise --epochs")
    config = None if settings.resume else _config(settings, train_pairs, val_pairs, validation)[0]
    _check_objects(train_pairs, val_pairs, validation)

    device = configure_device(settings.use_gpu)
    configure_precision("float32")  # training, its thresholds and validation scores: float32, whatever ran before
    seed_everything(settings.seed)
    from stardist.models import StarDist2D, StarDist3D

    cls = StarDist2D if train_pairs.ndim == 2 else StarDist3D
    with stdout_to_log(log, level=logging.DEBUG):  # stardist's and Keras's prints
        if settings.resume:
            model = _resumed_model(cls, settings, history)
            patch = tuple(model.config.train_patch_size)
            _check_patch(patch, _divisor(model.config), train_pairs, val_pairs, validation)
        else:
            for stale in _STALE if exists else ():
                (folder / stale).unlink(missing_ok=True)
            model = cls(config, name=settings.name, basedir=str(settings.basedir))
        _fit(model, settings, train_pairs, val_pairs, history, patience, device)
        rows = score(val_pairs.masks, predict_all(model, val_pairs.images, percentiles=settings.percentiles,
                                                  voxel_size=val_pairs.voxel_size,
                                                  normalize_channels_jointly=settings.normalize_channels_jointly))
    card = _model_card(settings, model, train_pairs, val_pairs, _read_losses(folder), rows, device)
    write_card(folder, card)
    return card


# ---------------------------------------------------------------------------------------------------------------------
# model card: written by train, extended by evaluate --save-to-card and models/train_demo.py, all through write_card


def training_sizes(pairs: Pairs, voxel_size, anisotropy) -> dict:
    """What a model card records about its training data's size: ``pixel_size_um`` (per axis, None where
    unknown), ``object_diameter_px`` and ``object_diameter_um`` (None without the lateral pixel size).

    A run's SCALE="auto" and OBJECT_DIAMETER_UM read them
    (:func:`~stardist_host.segmentation.models.trained_sizes`).
    """
    lateral = size = None
    if voxel_size is not None and voxel_size[-1] is not None:
        lateral = (float(voxel_size[-2]) + float(voxel_size[-1])) / 2
        if pairs.ndim == 2 or voxel_size[0] is not None:
            size = [float(v) for v in voxel_size[-pairs.ndim:]]
    z_ratio = 1.0
    if pairs.ndim == 3:
        if size is not None:
            z_ratio = size[0] / lateral
        elif anisotropy is not None:
            z_ratio = anisotropy[0] / ((anisotropy[1] + anisotropy[2]) / 2)
    diameter = median_diameter_px(pairs.masks, ndim=pairs.ndim, z_ratio=z_ratio)
    return {"pixel_size_um": size, "object_diameter_px": diameter,
            "object_diameter_um": diameter * lateral if diameter is not None and lateral is not None else None}


def _model_card(settings, model, train_pairs, val_pairs, history, rows, device) -> dict:
    import csbdeep
    import stardist
    import tensorflow as tf

    anisotropy = getattr(model.config, "anisotropy", None)  # None in 2D
    val_losses = [h["val_loss"] for h in history if "val_loss" in h]
    return {
        "name": settings.name,
        "ndim": train_pairs.ndim,
        "command": settings.command,
        "seed": settings.seed,
        "epochs": len(history),
        "steps_per_epoch": settings.steps_per_epoch,
        "best_epoch": int(np.argmin(val_losses)) + 1 if val_losses else None,
        "best_val_loss": min(val_losses) if val_losses else None,
        "data": {
            **settings.data,
            "training_samples": train_pairs.sources,
            "validation_samples": val_pairs.sources,
            "training_objects": train_pairs.n_objects,
            "validation_objects": val_pairs.n_objects,
        },
        "patch_size": [int(p) for p in model.config.train_patch_size],
        "n_rays": int(model.config.n_rays),
        "grid": [int(g) for g in model.config.grid],
        "anisotropy": list(anisotropy) if anisotropy is not None else None,
        **training_sizes(train_pairs, settings.voxel_size or train_pairs.voxel_size, anisotropy),
        "augmentation": {"rotate_flip": settings.rotate_flip, "flip_z": settings.flip_z,
                         "intensity": settings.intensity, "noise": settings.noise},
        "normalization_percentiles": list(settings.percentiles),
        # the run side reads these two: how many channels the model takes and how it wants them normalised
        "input_channels": int(model.config.n_channel_in),
        "normalize_channels_jointly": bool(settings.normalize_channels_jointly and model.config.n_channel_in > 1),
        "thresholds": {"prob": float(model.thresholds.prob), "nms": float(model.thresholds.nms)},
        "validation_scores": rows,
        "device": device,
        "versions": {"stardist": stardist.__version__, "csbdeep": csbdeep.__version__, "tensorflow": tf.__version__},
    }


def read_card(folder: str | Path) -> dict:
    """A model folder's ``model_card.json``, or an empty dict where it has none."""
    path = Path(folder) / "model_card.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_card(folder: str | Path, card: dict) -> None:
    """Write ``model_card.json`` and, for a card of a model trained here, ``README.md`` (:func:`card_text`).

    A model trained elsewhere keeps its own README.md.  Both files are
    written atomically in UTF-8.
    """
    folder = Path(folder)
    with atomic_write(folder / "model_card.json") as tmp:
        tmp.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if "validation_scores" in card:
        with atomic_write(folder / "README.md") as tmp:
            tmp.write_text(card_text(card), encoding="utf-8")


def record_test_scores(folder: str | Path, rows: list[dict], test_data: dict) -> dict:
    """Add scores on held-out data to a model folder's card (``evaluate --save-to-card``).

    Parameters
    ----------
    folder
        The model folder (``model.logdir``).
    rows
        Scores from :func:`stardist_host.training.evaluation.score`.
    test_data
        What was scored (model, images, masks, region, number of objects).

    Returns
    -------
    dict
        The card as written.
    """
    card = read_card(folder)
    card.setdefault("data", {}).update(test_scores=rows, test_data=test_data)
    write_card(folder, card)
    return card


def card_text(card: dict) -> str:
    """The model card as Markdown, for the model folder's README.md."""
    from .evaluation import format_table

    lines = []
    if card.get("recipe"):
        note = f"; {card['recipe_note']}" if card.get("recipe_note") else ""
        lines += [f"Made by `{card['recipe']}`{note}.", ""]
    best = f"{card['best_val_loss']:.4f}" if card.get("best_val_loss") is not None else "none"
    data = card["data"]
    n = card.get("input_channels") or 1
    how = "all together" if card.get("normalize_channels_jointly") else "each channel on its own"
    lines += [
        f"# {card['name']} ({card['ndim']}D StarDist model)", "",
        f"Trained with: `{card['command']}`", "",
        (f"Seed {card['seed']}, {card['epochs']} epochs x {card['steps_per_epoch']} steps, "
         f"best epoch {card['best_epoch']} (validation loss {best}); patch {card['patch_size']}, "
         f"{card['n_rays']} rays, grid {card['grid']}, thresholds prob {card['thresholds']['prob']:.3f}, "
         f"nms {card['thresholds']['nms']:.3f}."), "",
        *([f"Input: {n} channels, normalised {how}.", ""] if n > 1 else []),  # one-channel cards stay as they were
        f"Training data: {data['training_objects']} objects; validation: {data['validation_objects']} objects.", "",
        "Scores on the validation data:", "", "```", format_table(card["validation_scores"]), "```", "",
    ]
    if data.get("test_scores"):
        lines += ["Scores on held-out data never used in training:", "", "```", format_table(data["test_scores"]),
                  "```", ""]
    return "\n".join(lines)
