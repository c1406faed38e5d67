"""Training StarDist models from annotated TIFF pairs: checks, configuration, loss logging, resume, model card.

A run writes into the model folder, as it goes:

- ``weights_best.h5`` whenever the validation loss improves (stardist's own
  checkpoint) and ``weights_now.h5`` after every epoch (``weights_last.h5``
  once finished), so a stopped run loses nothing;
- ``losses.csv`` (one row per epoch) and ``losses.png`` (the curves);
- at the end ``thresholds.json`` (optimised on the validation data) and
  ``model_card.json`` / ``README.md`` (data, command, seed, epochs, scores).
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

from ..errors import TrainError
from .pairs import Pairs

__all__ = ["TrainSettings", "TrainError", "seed_everything", "make_augmenter", "split_validation", "train", "card_text", "record_test_scores", "LOSS_COLUMNS"]

log = logging.getLogger(__name__)

LOSS_COLUMNS = ("epoch", "loss", "val_loss", "prob_loss", "val_prob_loss", "dist_loss", "val_dist_loss", "learning_rate",
                "seconds", "overfitting")
MIN_TRAIN_OBJECTS = 10
MIN_VAL_OBJECTS = 3
_UNET_DEPTH = {2: 3, 3: 2}


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

    It applies a random 90-degree rotation and flips in the image plane (the
    last two axes, so it suits 2D patches and anisotropic 3D ones), a flip
    along Z when ``flip_z`` is set, a random intensity scale (0.6 to 2) and
    shift (-0.2 to 0.2) of the normalised image, and Gaussian noise of standard
    deviation up to ``noise``.

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
    """
    rng = np.random.default_rng(seed)

    def augment(x: NDArray, y: NDArray) -> tuple[NDArray, NDArray]:
        plane = (y.ndim - 2, y.ndim - 1)
        if rotate_flip:
            k = int(rng.integers(4))
            if x.shape[plane[0]] == x.shape[plane[1]]:  # rotations by 90 degrees only for square patches
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
    voxel_size: tuple[float, float, float] | None = None
    percentiles: tuple[float, float] = (1.0, 99.8)
    overwrite: bool = False
    resume: bool = False
    use_gpu: bool = True
    command: str = ""
    data: dict = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return Path(self.basedir) / self.name


def split_validation(pairs: Pairs, fraction: float, seed: int) -> tuple[Pairs, Pairs]:
    """Hold out about ``fraction`` of the samples (or of a single sample's width) for validation."""
    if not 0 < fraction < 1:
        raise TrainError(f"val_fraction={fraction}: must be between 0 and 1 (e.g. 0.15), or give validation files")
    n = len(pairs.images)
    if n >= 2:
        order = np.random.default_rng(seed).permutation(n)
        n_val = min(n - 1, max(1, round(n * fraction)))
        return pairs.select(sorted(order[n_val:])), pairs.select(sorted(order[:n_val]))
    # a single sample: its last columns validate
    width = pairs.images[0].shape[-1]
    cut = width - max(1, round(width * fraction))

    def columns(s: slice) -> Pairs:
        return Pairs(pairs.ndim, [pairs.images[0][..., s]], [pairs.masks[0][..., s]], pairs.voxel_size,
                     [f"{pairs.sources[0]}[..., {s.start or 0}:{s.stop or width}]"])

    return columns(slice(None, cut)), columns(slice(cut, None))


def _check(train_pairs: Pairs, val_pairs: Pairs, patch: tuple[int, ...], grid: tuple[int, ...]) -> None:
    n_train, n_val = train_pairs.n_objects, val_pairs.n_objects
    if n_train < MIN_TRAIN_OBJECTS:
        raise TrainError(f"the training data hold {n_train} objects; at least {MIN_TRAIN_OBJECTS} are needed: annotate more")
    if n_val < MIN_VAL_OBJECTS:
        raise TrainError(
            f"the validation part holds {n_val} object(s); at least {MIN_VAL_OBJECTS} are needed: "
            "annotate more, raise --val-fraction, or give --val-images/--val-masks"
        )
    depth = _UNET_DEPTH[len(patch)]
    for p, g in zip(patch, grid):
        if p % (g * 2**depth):
            raise TrainError(
                f"patch_size={patch}: each side must be a multiple of grid x {2**depth} (grid={grid}), "
                f"e.g. {tuple(max(g * 2**depth, q // (g * 2**depth) * g * 2**depth) for q, g in zip(patch, grid))}"
            )
    for what, pairs in (("training", train_pairs), ("validation", val_pairs)):
        for image, source in zip(pairs.images, pairs.sources):
            if any(p > s for p, s in zip(patch, image.shape)):
                raise TrainError(
                    f"patch_size={patch} is larger than {what} sample {source} of shape {image.shape}; "
                    "give a smaller --patch-size (or larger images)"
                )


def _default_patch(pairs: Pairs, grid: tuple[int, ...]) -> tuple[int, ...]:
    """The largest patch up to 256 (2D) or (48, 96, 96) (3D) that fits every sample."""
    depth = _UNET_DEPTH[pairs.ndim]
    smallest = np.min([im.shape for im in pairs.images], axis=0)
    wanted = (256, 256) if pairs.ndim == 2 else (48, 96, 96)
    return tuple(int(max(g * 2**depth, min(w, s) // (g * 2**depth) * g * 2**depth)) for w, s, g in zip(wanted, smallest, grid))


def _anisotropy(pairs: Pairs, voxel_size) -> tuple[float, float, float]:
    if voxel_size is not None:
        smallest = min(voxel_size)
        return tuple(float(v / smallest) for v in voxel_size)
    from stardist import calculate_extents

    extents = calculate_extents(pairs.masks)
    return tuple(float(a) for a in np.max(extents) / extents)


def _config(settings: TrainSettings, pairs: Pairs, patch: tuple[int, ...] | None):
    common = dict(
        n_channel_in=1, train_batch_size=settings.batch_size, train_epochs=settings.epochs,
        train_steps_per_epoch=settings.steps_per_epoch, train_tensorboard=False,
    )
    if pairs.ndim == 2:
        from stardist.models import Config2D

        grid = settings.grid or (2, 2)
        patch = patch or _default_patch(pairs, grid)
        return Config2D(n_rays=settings.n_rays or 32, grid=grid, train_patch_size=patch, **common), None
    from stardist import Rays_GoldenSpiral
    from stardist.models import Config3D

    anisotropy = _anisotropy(pairs, settings.voxel_size or pairs.voxel_size)
    grid = settings.grid or tuple(1 if a > 1.5 else 2 for a in anisotropy)
    patch = patch or _default_patch(pairs, grid)
    rays = Rays_GoldenSpiral(settings.n_rays or 96, anisotropy=anisotropy)
    conf = Config3D(rays=rays, grid=grid, anisotropy=anisotropy, backbone="unet", unet_n_depth=_UNET_DEPTH[3],
                    train_patch_size=patch, **common)
    return conf, anisotropy


def _read_losses(folder: Path) -> list[dict]:
    path = folder / "losses.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: (float(v) if k != "epoch" else int(v)) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def _rising_while_falling(history: list[dict], patience: int) -> bool:
    """Validation loss up and training loss down for ``patience`` epochs in a row."""
    if len(history) <= patience:
        return False
    recent = history[-patience - 1:]
    return all(b["val_loss"] > a["val_loss"] and b["loss"] < a["loss"] for a, b in zip(recent, recent[1:]))


def _loss_logger(folder: Path, start_epoch: int, patience: int):
    from csbdeep.utils.tf import keras_import

    Callback = keras_import("callbacks", "Callback")

    class LossLogger(Callback):
        """Append each epoch's losses to losses.csv, redraw losses.png, warn of overfitting."""

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
            for key in ("loss", "val_loss", "prob_loss", "val_prob_loss", "dist_loss", "val_dist_loss"):
                if key in logs:
                    row[key] = float(logs[key])
            self.history.append(row)
            row["overfitting"] = int(_rising_while_falling(self.history, patience))
            if row["overfitting"]:
                log.warning(
                    "epoch %d: validation loss has risen for %d epochs while training loss fell: the model may be "
                    "overfitting (weights_best.h5 keeps the best epoch so far)", row["epoch"], patience,
                )
            new = not (folder / "losses.csv").exists()
            with (folder / "losses.csv").open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=LOSS_COLUMNS)
                if new:
                    writer.writeheader()
                writer.writerow({k: row.get(k, "") for k in LOSS_COLUMNS})
            _plot(self.history, folder / "losses.png")
            log.info("epoch %d: loss %.4f, val_loss %.4f", row["epoch"], row.get("loss", math.nan), row.get("val_loss", math.nan))
            self.started = time.perf_counter()

    return LossLogger()


def _plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    for key, label in (("loss", "training"), ("val_loss", "validation")):
        ax.plot(epochs, [h.get(key, math.nan) for h in history], marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(f"{path.parent.name}: loss per epoch")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.partial.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def _normalized(images, percentiles) -> list[NDArray]:
    from csbdeep.utils import normalize

    return [normalize(x, *percentiles, axis=None).astype(np.float32) for x in images]


def train(settings: TrainSettings, train_pairs: Pairs, val_pairs: Pairs | None = None, *, patience: int = 3) -> dict:
    """Train (or resume training) a StarDist model and return its model card.

    Parameters
    ----------
    settings
        Where the model goes and how it is trained.
    train_pairs
        Training samples; without ``val_pairs`` a part of them validates.
    val_pairs
        Explicit validation samples.
    patience
        Epochs of rising validation loss under falling training loss before
        the overfitting warning.

    Raises
    ------
    TrainError
        Data or choices that cannot train a model; raised before anything is written.
    """
    from ..segmentation.device import configure_device
    from .evaluation import predict_all, score

    folder = settings.folder
    exists = (folder / "config.json").is_file()
    if exists and not (settings.overwrite or settings.resume):
        raise TrainError(f"{folder} already holds a model; use --overwrite to replace it or --resume to continue its training")
    if settings.resume and not exists:
        raise TrainError(f"--resume: {folder} holds no model to continue; start without --resume")
    if val_pairs is None:
        train_pairs, val_pairs = split_validation(train_pairs, settings.val_fraction, settings.seed)
    if val_pairs.ndim != train_pairs.ndim:
        raise TrainError(f"the validation data are {val_pairs.ndim}D but the training data {train_pairs.ndim}D")

    device = configure_device(settings.use_gpu)
    seed_everything(settings.seed)
    from stardist.models import StarDist2D, StarDist3D

    cls = StarDist2D if train_pairs.ndim == 2 else StarDist3D
    history: list[dict] = []
    if settings.resume:
        history = _read_losses(folder)
        done = len(history)
        if done >= settings.epochs:
            raise TrainError(f"--resume: {folder.name} has already trained {done} of {settings.epochs} epochs; raise --epochs")
        model = cls(None, name=settings.name, basedir=str(settings.basedir))
        # the last epoch's weights: weights_now.h5 of a stopped run, weights_last.h5 of a finished one
        last = next((w for w in ("weights_now.h5", "weights_last.h5") if (folder / w).is_file()), None)
        if last:
            model.load_weights(last)
        _check(train_pairs, val_pairs, tuple(model.config.train_patch_size), tuple(model.config.grid))
        if history:
            model.config.train_learning_rate = history[-1]["learning_rate"]
        anisotropy = getattr(model.config, "anisotropy", None)
        log.info("resuming %s at epoch %d of %d", folder.name, done + 1, settings.epochs)
    else:
        config, anisotropy = _config(settings, train_pairs, settings.patch_size)
        _check(train_pairs, val_pairs, tuple(config.train_patch_size), tuple(config.grid))
        if exists:
            for stale in ("losses.csv", "losses.png", "thresholds.json", "weights_best.h5", "weights_now.h5", "weights_last.h5"):
                (folder / stale).unlink(missing_ok=True)
        done = 0
        model = cls(config, name=settings.name, basedir=str(settings.basedir))

    model.prepare_for_training()
    best = min((h["val_loss"] for h in history if "val_loss" in h), default=None)
    for cb in model.callbacks:
        if best is not None and str(getattr(cb, "filepath", "")).endswith("weights_best.h5"):
            cb.best = best  # a resumed run keeps the earlier best weights unless it beats them
    model.callbacks.append(_loss_logger(folder, done, patience))

    X, Y = _normalized(train_pairs.images, settings.percentiles), train_pairs.masks
    X_val, Y_val = _normalized(val_pairs.images, settings.percentiles), val_pairs.masks
    augmenter = None
    if settings.rotate_flip or settings.intensity or settings.noise or (settings.flip_z and train_pairs.ndim == 3):
        augmenter = make_augmenter(flip_z=settings.flip_z, rotate_flip=settings.rotate_flip,
                                   intensity=settings.intensity, noise=settings.noise, seed=settings.seed)
    log.info("training %s (%dD) on %d samples (%d objects), validating on %d (%d objects), on %s",
             folder.name, train_pairs.ndim, len(X), train_pairs.n_objects, len(X_val), val_pairs.n_objects, device)
    model.train(X, Y, validation_data=(X_val, Y_val), augmenter=augmenter, seed=settings.seed,
                epochs=settings.epochs - done, steps_per_epoch=settings.steps_per_epoch)
    # stardist has reloaded weights_best.h5; thresholds and scores are those of the best epoch
    model.optimize_thresholds(X_val, Y_val)
    rows = score(Y_val, predict_all(model, val_pairs.images, percentiles=settings.percentiles))
    history = _read_losses(folder)
    card = _model_card(settings, model, train_pairs, val_pairs, history, rows, anisotropy, device)
    (folder / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    (folder / "README.md").write_text(card_text(card))
    return card


def _model_card(settings, model, train_pairs, val_pairs, history, rows, anisotropy, device) -> dict:
    import csbdeep
    import stardist
    import tensorflow as tf

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
        "patch_size": list(model.config.train_patch_size),
        "n_rays": int(model.config.n_rays),
        "grid": list(model.config.grid),
        "anisotropy": list(anisotropy) if anisotropy is not None else None,
        "augmentation": {"rotate_flip": settings.rotate_flip, "flip_z": settings.flip_z,
                         "intensity": settings.intensity, "noise": settings.noise},
        "normalization_percentiles": list(settings.percentiles),
        "thresholds": {"prob": float(model.thresholds.prob), "nms": float(model.thresholds.nms)},
        "validation_scores": rows,
        "device": device,
        "versions": {"stardist": stardist.__version__, "csbdeep": csbdeep.__version__, "tensorflow": tf.__version__},
    }


def record_test_scores(folder: Path, rows: list[dict], test_data: dict) -> None:
    """Add scores on held-out data to a model folder's model_card.json (and its README.md)."""
    card_path = folder / "model_card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    card.setdefault("data", {})["test_scores"] = rows
    card["data"]["test_data"] = test_data
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    if "validation_scores" in card:
        (folder / "README.md").write_text(card_text(card))


def card_text(card: dict) -> str:
    """The model card as Markdown, for the model folder's README.md."""
    from .evaluation import format_table

    lines = [
        f"# {card['name']} ({card['ndim']}D StarDist model)", "",
        f"Trained with: `{card['command']}`", "",
        f"Seed {card['seed']}, {card['epochs']} epochs x {card['steps_per_epoch']} steps, best epoch {card['best_epoch']} "
        f"(validation loss {card['best_val_loss']:.4f}); patch {card['patch_size']}, {card['n_rays']} rays, grid {card['grid']}, "
        f"thresholds prob {card['thresholds']['prob']:.3f}, nms {card['thresholds']['nms']:.3f}.", "",
        f"Training data: {card['data']['training_objects']} objects; validation: {card['data']['validation_objects']} objects.", "",
        "Scores on the validation data:", "", "```", format_table(card["validation_scores"]), "```", "",
    ]
    if card["data"].get("test_scores"):
        lines += ["Scores on held-out data never used in training:", "", "```", format_table(card["data"]["test_scores"]), "```", ""]
    return "\n".join(lines)

