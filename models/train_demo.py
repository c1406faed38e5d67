"""Train the bundled demo models, models/2D_demo and models/3D_demo.

Seeded and reproducible on a CPU::

    python models/train_demo.py            # both models
    python models/train_demo.py --only 2D  # one of them

2D_demo learns from stardist's 2D sample image (stardist.data), all but its
right quarter: rows 0-383 of columns 0-383 train, rows 384-511 of columns 0-383
validate (and set the thresholds), and columns 384-511 are never seen.

3D_demo learns from stardist's 3D sample stack, columns 0-35 only (columns
36-56 are never seen), plus synthetic anisotropic nuclei from
``stardist_host.synthetic``; a further synthetic stack validates.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from stardist_host import synthetic  # noqa: E402
from stardist_host.training import make_augmenter, seed_everything  # noqa: E402

log = logging.getLogger("train_demo")
SEED = 42


def _norm(x):
    from csbdeep.utils import normalize

    return normalize(x, 1, 99.8, axis=None).astype(np.float32)


def _finish(model, X_val, Y_val, card: dict) -> None:
    """Optimise thresholds, drop what need not ship, and write the model card."""
    model.optimize_thresholds(X_val, Y_val)
    folder = Path(model.logdir)
    for extra in ("weights_last.h5", "weights_now.h5", "logs"):
        p = folder / extra
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    card["thresholds"] = model.thresholds._asdict()
    (folder / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    log.info("wrote %s", folder)


def train_2d(epochs: int, steps: int, out: Path = HERE) -> None:
    from stardist.data import test_image_nuclei_2d
    from stardist.models import Config2D, StarDist2D

    seed_everything(SEED)
    img, mask = test_image_nuclei_2d(return_mask=True)
    x = _norm(img)
    X, Y = [x[:384, :384]], [mask[:384, :384]]
    X_val, Y_val = [x[384:, :384]], [mask[384:, :384]]
    conf = Config2D(
        n_rays=32,
        grid=(2, 2),
        n_channel_in=1,
        train_patch_size=(128, 128),
        train_batch_size=8,
        train_epochs=epochs,
        train_steps_per_epoch=steps,
        train_tensorboard=False,
    )
    shutil.rmtree(out / "2D_demo", ignore_errors=True)
    model = StarDist2D(conf, name="2D_demo", basedir=str(out))
    model.train(X, Y, validation_data=(X_val, Y_val), augmenter=make_augmenter(seed=SEED), seed=SEED)
    _finish(
        model,
        X_val,
        Y_val,
        {
            "name": "2D_demo",
            "data": "stardist.data.test_image_nuclei_2d: train rows 0-383 x cols 0-383, "
            "validate rows 384-511 x cols 0-383; cols 384-511 held out",
            "normalization": "percentiles 1, 99.8",
            "command": "python models/train_demo.py --only 2D",
            "seed": SEED,
            "epochs": epochs,
            "steps_per_epoch": steps,
        },
    )


def train_3d(epochs: int, steps: int, out: Path = HERE) -> None:
    from stardist import Rays_GoldenSpiral, calculate_extents
    from stardist.data import test_image_nuclei_3d
    from stardist.models import Config3D, StarDist3D

    seed_everything(SEED)
    img, mask = test_image_nuclei_3d(return_mask=True)
    X, Y = [_norm(img[:, :, :36])], [mask[:, :, :36]]
    for i in range(4):
        s_img, s_mask = synthetic.nuclei((32, 64, 64), 40, radius=(5, 8), anisotropy=2.0, seed=SEED + i)
        X.append(_norm(s_img))
        Y.append(s_mask)
    s_img, s_mask = synthetic.nuclei((32, 64, 64), 40, radius=(5, 8), anisotropy=2.0, seed=SEED + 100)
    X_val, Y_val = [_norm(s_img)], [s_mask]

    extents = calculate_extents(Y)
    anisotropy = tuple(np.max(extents) / extents)
    grid = tuple(1 if a > 1.5 else 2 for a in anisotropy)
    conf = Config3D(
        rays=Rays_GoldenSpiral(64, anisotropy=anisotropy),
        grid=grid,
        anisotropy=anisotropy,
        n_channel_in=1,
        backbone="unet",
        unet_n_depth=2,
        unet_n_filter_base=16,
        train_patch_size=(16, 48, 32),
        train_batch_size=2,
        train_epochs=epochs,
        train_steps_per_epoch=steps,
        train_tensorboard=False,
    )
    shutil.rmtree(out / "3D_demo", ignore_errors=True)
    model = StarDist3D(conf, name="3D_demo", basedir=str(out))
    model.train(
        X, Y, validation_data=(X_val, Y_val), augmenter=make_augmenter(flip_z=True, seed=SEED), seed=SEED
    )
    _finish(
        model,
        X_val,
        Y_val,
        {
            "name": "3D_demo",
            "data": "stardist.data.test_image_nuclei_3d cols 0-35 (cols 36-56 held out) "
            "+ 4 synthetic stacks (32, 64, 64), anisotropy 2; validated on a 5th synthetic stack",
            "normalization": "percentiles 1, 99.8",
            "anisotropy": [float(a) for a in anisotropy],
            "command": "python models/train_demo.py --only 3D",
            "seed": SEED,
            "epochs": epochs,
            "steps_per_epoch": steps,
        },
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["2D", "3D"], help="train only this model")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: 100)")
    p.add_argument("--steps", type=int, default=None, help="steps per epoch (default: 50)")
    p.add_argument("--out", type=Path, default=HERE, help="folder to write the model folders to (default: models/)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.only in (None, "2D"):
        train_2d(args.epochs or 100, args.steps or 50, args.out)
    if args.only in (None, "3D"):
        train_3d(args.epochs or 100, args.steps or 50, args.out)


if __name__ == "__main__":
    main()
