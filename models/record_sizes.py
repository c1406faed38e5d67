"""Record the bundled models' training sizes in their model_card.json, without retraining them.

``train`` records these itself (``pixel_size_um``, ``object_diameter_px``,
``object_diameter_um``: :func:`stardist_host.training.train.training_sizes`);
the bundled models were trained before it did, so this script computes them
from the same training masks that ``models/train_demo.py`` trains on::

    python models/record_sizes.py

2D_demo: stardist's 2D sample (``stardist.data.test_image_nuclei_2d``), rows
and columns 0-383.  Its pixel size is not stated anywhere, so none is recorded
(``pixel_size_um`` null: SCALE="auto" needs MODEL_PIXEL_SIZE_UM for it); the
median nucleus diameter in pixels is known from the masks.

3D_demo: stardist's 3D sample, columns 0-35, listed twice, and four synthetic
stacks.  train_demo.py writes them with the voxel size (1.0, 0.5, 0.5) µm
(train_demo.VOXEL_3D), but that is this project's label for stardist's sample,
which states no voxel size; only its anisotropy (2: Z spacing twice the lateral,
as the model's config.json records) is known.  So no pixel size is recorded
(SCALE="auto" matches Z to the anisotropy, as before), and the median diameter
is that of the objects' physical volume, in lateral pixels.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from train_demo import LIKE_SAMPLE, SEED, VOXEL_3D  # noqa: E402

from stardist_host.testing import synthetic  # noqa: E402
from stardist_host.training.pairs import Pairs  # noqa: E402
from stardist_host.training.train import read_card, training_sizes  # noqa: E402


def sizes_2d() -> dict:
    from stardist.data import test_image_nuclei_2d

    img, mask = test_image_nuclei_2d(return_mask=True)
    pairs = Pairs(2, [img[:384, :384]], [mask[:384, :384]], None, ["train2d.tif#0"])
    return training_sizes(pairs, None, None)


def sizes_3d() -> dict:
    from stardist.data import test_image_nuclei_3d

    img, mask = test_image_nuclei_3d(return_mask=True)
    masks = [mask[:, :, :36]] * 2 + [synthetic.nuclei((32, 64, 64), 60, seed=SEED + k, **LIKE_SAMPLE)[1]
                                     for k in range(4)]
    pairs = Pairs(3, [None] * len(masks), masks, None, [])
    return training_sizes(pairs, None, tuple(v / VOXEL_3D[-1] for v in VOXEL_3D))  # the anisotropy (2, 1, 1)


def main() -> None:
    for name, sizes in (("2D_demo", sizes_2d()), ("3D_demo", sizes_3d())):
        folder = HERE / name
        card = read_card(folder)
        card.update(sizes)
        # the card only: README.md keeps the text train_demo.py published
        (folder / "model_card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(name, sizes)


if __name__ == "__main__":
    main()
