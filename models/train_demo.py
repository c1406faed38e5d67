"""Train and evaluate the bundled demo models, models/2D_demo, models/3D_demo and models/2D_two_channel_demo.

Seeded and reproducible on a CPU (about 30 min for 2D, 15 min for 3D, about 6 min for the
two-channel model on two cores)::

    python models/train_demo.py                        # all three models
    python models/train_demo.py --only 2D              # one of them
    python models/train_demo.py --only 2D_two_channel

It writes the training data as TIFF files to a temporary folder, then runs the
same commands a user would (printed as it goes):

2D_demo: stardist's 2D sample image (stardist.data); rows 0-383 of columns
0-383 train, rows 384-511 of columns 0-383 validate (and set the thresholds).
Columns 384-511 are never trained on; `stardist-host evaluate` scores them
(data/nuclei_2d.tif, region ':,384:'; the model sees the whole image).

3D_demo: stardist's 3D sample stack, columns 0-35 (listed twice, so that half
the patches are real), plus four synthetic stacks of dense, low-contrast,
anisotropic nuclei like the sample's (stardist_host.testing.synthetic) train; a fifth
synthetic stack validates.  Columns 36-56 of the sample are never seen; evaluate scores them
(data/nuclei_3d.tif, region ':,:,36:').

2D_two_channel_demo: synthetic two-channel scenes (stardist_host.testing.synthetic.two_channel_nuclei,
256 x 256, seeds 200-207 train, 300-301 validate) whose nuclei are the blobs present in both
channels; each channel also shows decoys of its own, alike in size and brightness, so that neither
channel alone tells which blobs are nuclei.  It trains with ``--channel 0,1`` (each channel
normalised on its own), on 96 x 96 patches.  A scene of another seed (400) is never seen; evaluate
scores it, and tests/test_two_channel_model.py segments it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from stardist_host.cli import main as cli
from stardist_host.testing import synthetic

SEED = 42
#: 3D_demo's voxel size (z, y, x) in µm, as data/nuclei_3d.tif; the synthetic stacks have the same anisotropy (2).
VOXEL_3D = (1.0, 0.5, 0.5)
#: Synthetic stacks that look like stardist's 3D sample: dense, low contrast, noisy, blurred.
LIKE_SAMPLE = {"radius": (6, 10), "anisotropy": 2.0, "background": 0.35, "noise": 0.12, "blur": 1.5}
#: The two-channel scenes: 256 x 256, 16 nuclei and 16 decoys in each channel; their seeds.
TWO_CHANNEL = {"shape": (256, 256), "n": 16}
TWO_CHANNEL_SEEDS = {"train": range(200, 208), "val": range(300, 302), "test": 400}
#: The two-channel model trains shorter than the others: small patches, a simple scene.
TWO_CHANNEL_TRAINING = {"epochs": 60, "steps": 50}
#: Where its training data come from, as its card's recipe note says.
TWO_CHANNEL_SOURCE = ("drawn by stardist_host.testing.synthetic.two_channel_nuclei((256, 256), 16, seed=S): seeds "
                      "200-207 train, 300-301 validate, 400 is the held-out scene")
log = logging.getLogger("train_demo")


def _save(folder: Path, name: str, image, mask, axes: str, voxel=None,
          mask_axes: str | None = None) -> tuple[str, str]:
    img_path, mask_path = folder / f"{name}.tif", folder / f"{name}_masks.tif"
    meta = {"axes": axes}
    if voxel:
        meta.update(PhysicalSizeZ=voxel[0], PhysicalSizeY=voxel[1], PhysicalSizeX=voxel[2])
    tifffile.imwrite(img_path, image, ome=True, photometric="minisblack", metadata=meta)
    tifffile.imwrite(mask_path, mask.astype(np.uint16), ome=True, photometric="minisblack",
                     metadata={"axes": mask_axes or axes})
    return str(img_path), str(mask_path)


def _replaced(value, old: str, new: str):
    """``value`` (a card's JSON data) with ``old`` replaced by ``new`` in every string."""
    if isinstance(value, dict):
        return {k: _replaced(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_replaced(v, old, new) for v in value]
    return value.replace(old, new) if isinstance(value, str) else value


#: Where the training data of 2D_demo and 3D_demo come from, as the card's recipe note says.
FROM_SAMPLES = "from the images the stardist package ships"


def publish_card(folder: Path, tmp: Path, recipe: str, source: str = FROM_SAMPLES) -> None:
    """Record the recipe in the model card, with this machine's temporary paths replaced (README.md follows)."""
    from stardist_host.training.train import read_card, write_card

    card = read_card(folder)
    for old, new in ((str(tmp), "<demo data>"), (str(folder.parent), "models"), (str(ROOT) + os.sep, "")):
        card = _replaced(card, old, new)
    card["recipe"] = recipe
    card["recipe_note"] = f"the training data are written to <demo data>, a temporary folder, {source}"
    write_card(folder, card)


def _run(args: list[str]) -> None:
    print("$ stardist-host " + shlex.join(args), flush=True)
    if cli(args) != 0:
        raise SystemExit(f"failed: stardist-host {shlex.join(args)}")


def train_2d(tmp: Path, epochs: int, steps: int, out: Path) -> None:
    from stardist.data import test_image_nuclei_2d

    img, mask = test_image_nuclei_2d(return_mask=True)
    train = _save(tmp, "train2d", img[:384, :384], mask[:384, :384], "YX")
    val = _save(tmp, "val2d", img[384:, :384], mask[384:, :384], "YX")
    _run(["train", "--images", train[0], "--masks", train[1], "--val-images", val[0], "--val-masks", val[1],
          "--out", str(out), "--name", "2D_demo", "--epochs", str(epochs), "--steps", str(steps),
          "--patch-size", "128,128", "--rays", "32", "--grid", "2,2", "--batch-size", "8", "--seed", str(SEED),
          "--overwrite"])
    _run(["evaluate", "--model-path", str(out), "--model-name", "2D_demo", "--images", str(ROOT / "data/nuclei_2d.tif"),
          "--masks", str(ROOT / "data/nuclei_2d_masks.tif"), "--region", ":,384:", "--save-to-card"])
    publish_card(out / "2D_demo", tmp, "python models/train_demo.py --only 2D")


def train_3d(tmp: Path, epochs: int, steps: int, out: Path) -> None:
    from stardist.data import test_image_nuclei_3d

    img, mask = test_image_nuclei_3d(return_mask=True)
    voxel, like_sample = VOXEL_3D, LIKE_SAMPLE
    sample = _save(tmp, "sample3d", img[:, :, :36], mask[:, :, :36], "ZYX", voxel)
    images, masks = [sample[0]] * 2, [sample[1]] * 2  # listed twice: half the patches come from real data
    for k in range(4):
        stack = synthetic.nuclei((32, 64, 64), 60, seed=SEED + k, **like_sample)
        paths = _save(tmp, f"synthetic{k}", *stack, "ZYX", voxel)
        images.append(paths[0])
        masks.append(paths[1])
    val = _save(tmp, "val3d", *synthetic.nuclei((32, 64, 64), 60, seed=SEED + 100, **like_sample), "ZYX", voxel)
    _run(["train", "--dim", "3", "--images", *images, "--masks", *masks, "--val-images", val[0], "--val-masks", val[1],
          "--out", str(out), "--name", "3D_demo", "--epochs", str(epochs), "--steps", str(steps),
          "--patch-size", "16,48,32", "--rays", "64", "--batch-size", "2", "--seed", str(SEED), "--overwrite"])
    _run(["evaluate", "--model-path", str(out), "--model-name", "3D_demo", "--images", str(ROOT / "data/nuclei_3d.tif"),
          "--masks", str(ROOT / "data/nuclei_3d_masks.tif"), "--region", ":,:,36:", "--save-to-card"])
    publish_card(out / "3D_demo", tmp, "python models/train_demo.py --only 3D")


def two_channel_scene(seed: int):
    """A two-channel scene as 2D_two_channel_demo trains on: image (2, Y, X) uint16 and the true nuclei's labels."""
    return synthetic.two_channel_nuclei(TWO_CHANNEL["shape"], TWO_CHANNEL["n"], seed=seed)


def train_2d_two_channel(tmp: Path, epochs: int, steps: int, out: Path) -> None:
    def written(kind: str, seeds) -> tuple[list[str], list[str]]:
        paths = [_save(tmp, f"two_channel_{kind}{s}", *two_channel_scene(s), "CYX", mask_axes="YX") for s in seeds]
        return [p[0] for p in paths], [p[1] for p in paths]

    images, masks = written("train", TWO_CHANNEL_SEEDS["train"])
    val_images, val_masks = written("val", TWO_CHANNEL_SEEDS["val"])
    test = _save(tmp, "two_channel_test", *two_channel_scene(TWO_CHANNEL_SEEDS["test"]), "CYX", mask_axes="YX")
    _run(["train", "--images", *images, "--masks", *masks, "--val-images", *val_images, "--val-masks", *val_masks,
          "--channel", "0,1", "--out", str(out), "--name", "2D_two_channel_demo", "--epochs", str(epochs),
          "--steps", str(steps), "--patch-size", "96,96", "--rays", "32", "--grid", "2,2", "--batch-size", "4",
          "--seed", str(SEED), "--overwrite"])
    _run(["evaluate", "--model-path", str(out), "--model-name", "2D_two_channel_demo", "--images", test[0],
          "--masks", test[1], "--channel", "0,1", "--save-to-card"])
    publish_card(out / "2D_two_channel_demo", tmp, "python models/train_demo.py --only 2D_two_channel",
                 TWO_CHANNEL_SOURCE)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["2D", "3D", "2D_two_channel"], help="train only this model")
    p.add_argument("--epochs", type=int, help="epochs (default: 100; 2D_two_channel: "
                   f"{TWO_CHANNEL_TRAINING['epochs']})")
    p.add_argument("--steps", type=int, help="steps per epoch (default: 50; 2D_two_channel: "
                   f"{TWO_CHANNEL_TRAINING['steps']})")
    p.add_argument("--out", type=Path, default=HERE, help="folder to write the model folders to (default: models/)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="stardist-demo-data-") as tmp:
        if args.only in (None, "2D"):
            train_2d(Path(tmp), args.epochs or 100, args.steps or 50, args.out)
        if args.only in (None, "3D"):
            train_3d(Path(tmp), args.epochs or 100, args.steps or 50, args.out)
        if args.only in (None, "2D_two_channel"):
            train_2d_two_channel(Path(tmp), args.epochs or TWO_CHANNEL_TRAINING["epochs"],
                                 args.steps or TWO_CHANNEL_TRAINING["steps"], args.out)


if __name__ == "__main__":
    main()
