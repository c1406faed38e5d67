"""Training and evaluation: scores on hand-made cases, patch and split rules, augmentation, tiny real trainings
(2D defaults, 3D anisotropy, resume, Ctrl-C), evaluate with a region, bad input."""

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from stardist_host.cli import main
from stardist_host.testing import synthetic
from stardist_host.training import train as training
from stardist_host.training.evaluation import evaluate, f1_at, score
from stardist_host.training.pairs import PairError, Pairs, crop, read_pairs
from stardist_host.training.train import (
    TrainError,
    TrainSettings,
    _rising_while_falling,
    card_text,
    make_augmenter,
    read_card,
    split_validation,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


def _square(shape, y, x, size, label=1, out=None):
    out = np.zeros(shape, np.int32) if out is None else out
    out[y:y + size, x:x + size] = label
    return out


def test_scores_identical_disjoint_and_partial():
    truth = _square((40, 40), 5, 5, 10)
    assert f1_at(score([truth], [truth.copy()]), 0.9) == 1.0
    assert f1_at(score([truth], [_square((40, 40), 25, 25, 10)]), 0.3) == 0.0
    # shifted by 5 columns: intersection 50, union 150, IoU 1/3
    rows = score([truth], [_square((40, 40), 5, 10, 10)])
    assert f1_at(rows, 0.3) == 1.0 and f1_at(rows, 0.5) == 0.0
    # two true objects, one found exactly, one missed: precision 1, recall 0.5, F1 2/3
    two = _square((40, 40), 25, 25, 10, label=2, out=truth.copy())
    row = score([two], [truth])[1]
    assert (row["iou"], row["tp"], row["fp"], row["fn"]) == (0.5, 1, 0, 1)
    assert row["precision"] == 1.0 and row["recall"] == 0.5 and row["f1"] == pytest.approx(2 / 3)
    assert row["panoptic_quality"] == pytest.approx(2 / 3)  # matched IoU 1 x F1


def test_overfitting_rule():
    falling_rising = [{"loss": 1 - 0.1 * i, "val_loss": 0.5 + 0.1 * i} for i in range(4)]
    assert _rising_while_falling(falling_rising, patience=3)
    assert not _rising_while_falling(falling_rising[:3], patience=3)
    both_falling = [{"loss": 1 - 0.1 * i, "val_loss": 0.9 - 0.1 * i} for i in range(5)]
    assert not _rising_while_falling(both_falling, patience=3)


def test_synthetic_nuclei_are_reproducible_and_labelled():
    img, labels = synthetic.nuclei((16, 48, 48), 12, radius=(4, 6), anisotropy=2.0, seed=3)
    _img2, labels2 = synthetic.nuclei((16, 48, 48), 12, radius=(4, 6), anisotropy=2.0, seed=3)
    assert img.dtype == np.uint16 and labels.shape == (16, 48, 48)
    np.testing.assert_array_equal(labels, labels2)
    n = len(np.unique(labels)) - 1
    assert 8 <= n <= 12 and labels.max() == n  # labels are 1..n
    assert img[labels > 0].mean() > 2 * img[labels == 0].mean()  # nuclei brighter than background


# ---------------------------------------------------------------------------------------------------------------------
# augmentation


def _positions(shape):
    """A label image whose every pixel holds its own value: any geometric change shows."""
    return (np.arange(np.prod(shape)) + 1).reshape(shape).astype(np.int32)


def _dihedral(plane):
    """The 8 rotations and flips of a square plane (4 of a non-square one), by name."""
    out = {}
    for k in range(4):
        for flip in (False, True):
            moved = np.rot90(plane, k)
            out[f"rot{90 * k}{'+flip' if flip else ''}"] = moved[:, ::-1] if flip else moved
    return {name: m for name, m in out.items() if m.shape == plane.shape}


@pytest.mark.parametrize("shape", [(8, 8), (8, 12), (4, 6, 6)])
def test_augmenter_moves_image_and_mask_together(shape):
    y = _positions(shape)
    augment = make_augmenter(flip_z=True, intensity=False, noise=0.0, seed=1)
    seen = set()
    for _ in range(60):
        xa, ya = augment(y.astype(np.float32), y)
        assert xa.dtype == np.float32 and ya.dtype == np.int32 and ya.shape == y.shape
        np.testing.assert_array_equal(xa, ya)  # the image moved exactly as the mask did
        z_flipped = y.ndim == 3 and ya[0].min() == y[-1].min()
        planes = zip(ya, y[::-1] if z_flipped else y) if y.ndim == 3 else [(ya, y)]
        names = set()
        for out_plane, in_plane in planes:  # each output plane is the matching input plane moved in-plane
            names |= {n for n, m in _dihedral(in_plane).items() if np.array_equal(out_plane, m)}
        assert len(names) == 1, "one in-plane move for the whole patch"
        seen |= names | ({"flip_z" if z_flipped else "z kept"} if y.ndim == 3 else set())
    expected = 8 if shape[-1] == shape[-2] else 4  # non-square patches are flipped, never turned by 90 degrees
    assert len(seen - {"flip_z", "z kept"}) == expected
    if len(shape) == 3:
        assert {"flip_z", "z kept"} <= seen


def test_augmenter_changes_intensities_and_noise_of_the_image_only():
    y = _positions((16, 16))
    x = np.linspace(0, 1, y.size, dtype=np.float32).reshape(y.shape)
    scaled = make_augmenter(rotate_flip=False, intensity=True, seed=2)
    for _ in range(5):
        xa, ya = scaled(x, y)
        np.testing.assert_array_equal(ya, y)
        a, b = np.polyfit(x.ravel(), xa.ravel(), 1)  # an exact affine change: scale 0.6..2, shift -0.2..0.2
        assert 0.6 <= a <= 2.0 and -0.2 <= b <= 0.2 and np.allclose(xa, a * x + b, atol=1e-5)
        assert not np.allclose(xa, x)
    noisy = make_augmenter(rotate_flip=False, intensity=False, noise=0.5, seed=3)
    xa, ya = noisy(x, y)
    np.testing.assert_array_equal(ya, y)
    assert 0 < np.std(xa - x) < 0.5
    plain = make_augmenter(rotate_flip=False, intensity=False, noise=0.0, seed=4)
    np.testing.assert_array_equal(plain(x, y)[0], x)


# ---------------------------------------------------------------------------------------------------------------------
# validation split and patch size


def _write_pair(folder, name, image, mask, **kw):
    tifffile.imwrite(folder / f"{name}.tif", image, photometric="minisblack", **kw)
    tifffile.imwrite(folder / f"{name}_masks.tif", mask, photometric="minisblack", **kw)
    return folder / f"{name}.tif", folder / f"{name}_masks.tif"


def _configured(settings, pairs):
    train_part, val_part, validation = training._validation_split(settings, pairs, None)
    config, anisotropy = training._config(settings, train_part, val_part, validation)
    return train_part, val_part, config, anisotropy


def test_default_patch_and_split_fit_the_bundled_samples(tmp_path):
    settings = TrainSettings(basedir=tmp_path, name="m")
    pairs = read_pairs([DATA / "nuclei_2d.tif"], [DATA / "nuclei_2d_masks.tif"])
    train_part, val_part, config, _ = _configured(settings, pairs)
    # 512 x 512: the last 77 columns validate; the patch is a multiple of 16 (grid 2 x 2^3) that fits them
    assert train_part.images[0].shape == (512, 435) and val_part.images[0].shape == (512, 77)
    assert tuple(config.train_patch_size) == (256, 64)

    pairs = read_pairs([DATA / "nuclei_3d.tif"], [DATA / "nuclei_3d_masks.tif"])
    train_part, val_part, config, anisotropy = _configured(settings, pairs)
    # 31 x 61 x 57 at (1, 0.5, 0.5) µm: Y is longest, its last 9 rows validate; grid (1, 2, 2), divisor (4, 8, 8)
    assert val_part.images[0].shape == (31, 9, 57) and val_part.sources == ["nuclei_3d.tif#0[:, 52:61, :]"]
    assert anisotropy == (2.0, 1.0, 1.0) and tuple(config.grid) == (1, 2, 2)
    assert tuple(config.train_patch_size) == (28, 8, 56)
    assert not (tmp_path / "m").exists()


def test_patch_that_cannot_fit_names_the_option_that_fixes_it(tmp_path):
    img = tifffile.imread(DATA / "nuclei_3d.tif")[:, :40, :30]
    mask = tifffile.imread(DATA / "nuclei_3d_masks.tif")[:, :40, :30]
    pairs = Pairs(3, [img], [mask.astype(np.int32)], (1.0, 0.5, 0.5), ["crop"])
    with pytest.raises(TrainError, match=r"validation sample crop\[:, 34:40, :\] has 6 pixels along Y, but the network "
                                         r"needs patches of at least 8 there .*raise --val-fraction "
                                         r"\(now 0.15: the last 6 of 40 along Y validate\) to at least 0.2, "
                                         r"or give --val-images/--val-masks"):
        train(TrainSettings(basedir=tmp_path, name="x"), pairs)
    assert not (tmp_path / "x").exists()
    # the suggested fraction fits
    _, val_part, config, _ = _configured(TrainSettings(basedir=tmp_path, name="x", val_fraction=0.2), pairs)
    assert val_part.images[0].shape == (31, 8, 30) and tuple(config.train_patch_size) == (28, 8, 24)
    # too small to train at all: the training sample is named, not the validation fraction
    tiny = Pairs(2, [np.zeros((12, 100), np.uint16)], [np.ones((12, 100), np.int32)], None, ["thin"])
    with pytest.raises(TrainError, match=r"training sample thin\[:, 0:85\] has 12 pixels along Y, but the "
                                         r"network needs patches of at least 16 there .*"
                                         r"give larger images, or a smaller --grid"):
        train(TrainSettings(basedir=tmp_path, name="x"), tiny)


def test_single_sample_split_keeps_last_columns_for_validation(tmp_path):
    img, lab = synthetic.nuclei((64, 80), 14, radius=(4, 7), seed=0)
    pairs = read_pairs(*([p] for p in _write_pair(tmp_path, "one", img, lab)))
    train_part, val_part = split_validation(pairs, 0.25, seed=0)
    assert train_part.images[0].shape == (64, 60) and val_part.images[0].shape == (64, 20)
    np.testing.assert_array_equal(val_part.masks[0], lab[:, 60:])
    tall = Pairs(2, [img.T], [lab.T], None, ["tall"])  # 80 x 64: the rows are longest
    train_part, val_part = split_validation(tall, 0.25, seed=0)
    assert val_part.images[0].shape == (20, 64) and val_part.sources == ["tall[60:80, :]"]
    np.testing.assert_array_equal(val_part.masks[0], lab.T[60:])


def test_too_few_objects_and_patch_too_large(tmp_path):
    img, lab = synthetic.nuclei((64, 64), 14, radius=(4, 7), seed=0)
    pairs = read_pairs(*([p] for p in _write_pair(tmp_path, "one", img, lab)))
    few = Pairs(2, [img, img], [lab, np.where(lab > 2, 0, lab)], None, ["a", "b"])
    with pytest.raises(TrainError, match=r"the validation part holds 2 object\(s\); at least 3 are needed: annotate"):
        train(TrainSettings(basedir=tmp_path / "out", name="x"), few.select([0]), few.select([1]))
    with pytest.raises(TrainError, match=r"patch_size=\(128, 128\) is larger than training sample one.tif#0"):
        train(TrainSettings(basedir=tmp_path / "out", name="x", patch_size=(128, 128), val_fraction=0.3), pairs)
    with pytest.raises(TrainError, match=r"patch_size=\(32, 32\) is larger than validation sample "
                                         r"one.tif#0\[:, 45:64\] of shape \(64, 19\); "
                                         r"give a smaller --patch-size, or raise --val-fraction"):
        train(TrainSettings(basedir=tmp_path / "out", name="x", patch_size=(32, 32), val_fraction=0.3), pairs)
    with pytest.raises(TrainError, match=r"patch_size=\(40, 40\): each side must be a multiple of \(16, 16\)"):
        train(TrainSettings(basedir=tmp_path / "out", name="x", patch_size=(40, 40), val_fraction=0.3), pairs)
    assert not (tmp_path / "out").exists()  # nothing written


# ---------------------------------------------------------------------------------------------------------------------
# tiny real trainings


def test_default_options_train_a_crop_of_the_2d_sample(tmp_path, monkeypatch, caplog, capsys):
    import matplotlib

    img = tifffile.imread(DATA / "nuclei_2d.tif")[:128, :256]
    mask = tifffile.imread(DATA / "nuclei_2d_masks.tif")[:128, :256]
    pairs = read_pairs(*([p] for p in _write_pair(tmp_path, "crop", img, mask)))
    written = []
    atomic = training.atomic_write

    def recording(path):
        written.append(Path(path).name)
        return atomic(path)

    monkeypatch.setattr(training, "atomic_write", recording)
    monkeypatch.setattr(matplotlib, "use", lambda *a, **k: pytest.fail("the plot switched matplotlib's backend"))
    caplog.set_level(logging.DEBUG, logger="stardist_host")  # whatever an earlier run set for the package
    settings = TrainSettings(basedir=tmp_path / "models", name="defaults", epochs=1, steps_per_epoch=1, use_gpu=False,
                             command="stardist-host train --voxel-size 1µm")
    card = train(settings, pairs)
    folder = tmp_path / "models" / "defaults"
    # 128 x 256: the last 38 columns validate, the patch fits them
    assert card["patch_size"] == [128, 32] and card["data"]["validation_samples"] == ["crop.tif#0[:, 218:256]"]
    assert sorted(set(written)) == ["README.md", "losses.csv", "losses.png", "model_card.json", "thresholds.json"]
    assert not list(folder.glob(".*partial"))
    assert (folder / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "1µm" in (folder / "model_card.json").read_bytes().decode("utf-8")
    assert json.loads((folder / "thresholds.json").read_text()) == card["thresholds"]
    # quiet: nothing on the console, no per-step bars even in the debug log, one INFO line per epoch
    out = capsys.readouterr()
    assert out.out == "" and "NMS threshold" not in out.err
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "/step" in m or "━" in m]
    assert [m for m in messages if m.startswith("epoch 1/1: loss ")]
    assert any("Using optimized values" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


def test_3d_training_follows_the_voxel_size(tmp_path):
    like = {"radius": (5, 8), "anisotropy": 2.0}
    stacks = [synthetic.nuclei((16, 48, 48), 14, seed=s, **like) for s in (1, 2)]
    meta = {"axes": "ZYX", "PhysicalSizeZ": 1.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5}
    paths = [_write_pair(tmp_path, f"s{i}", *st, ome=True, metadata=meta) for i, st in enumerate(stacks)]
    train_pairs = read_pairs([paths[0][0]], [paths[0][1]])
    val_pairs = read_pairs([paths[1][0]], [paths[1][1]])
    assert train_pairs.ndim == 3 and train_pairs.voxel_size == (1.0, 0.5, 0.5)
    settings = TrainSettings(basedir=tmp_path / "models", name="aniso", epochs=1, steps_per_epoch=1, batch_size=1,
                             n_rays=32, use_gpu=False)
    card = train(settings, train_pairs, val_pairs)
    config = json.loads((tmp_path / "models" / "aniso" / "config.json").read_text())
    assert config["anisotropy"] == [2.0, 1.0, 1.0] and config["grid"] == [1, 2, 2]
    assert config["rays_json"]["kwargs"]["anisotropy"] == [2.0, 1.0, 1.0] and config["n_rays"] == 32
    assert card["anisotropy"] == [2.0, 1.0, 1.0] and card["grid"] == [1, 2, 2] and card["patch_size"] == [16, 48, 48]
    # isotropic voxels: grid 2 on every axis, rays without anisotropy
    iso = TrainSettings(basedir=tmp_path / "models", name="iso", voxel_size=(0.5, 0.5, 0.5))
    config, anisotropy = training._config(iso, train_pairs, val_pairs, training._Validation("files"))
    assert anisotropy == (1.0, 1.0, 1.0) and tuple(config.grid) == (2, 2, 2)
    assert config.rays_json["kwargs"]["anisotropy"] == (1.0, 1.0, 1.0)


@pytest.fixture
def tiny_2d(tmp_path):
    paths = [_write_pair(tmp_path, f"s{i}", *synthetic.nuclei((64, 64), 14, radius=(4, 7), seed=i)) for i in range(3)]
    return [str(p[0]) for p in paths], [str(p[1]) for p in paths]


def _record_weights(monkeypatch, snapshots, *, stop_after=None):
    """Keep the weights at the start of training and after each epoch; optionally press Ctrl-C after an epoch."""
    make_logger = training._loss_logger

    def recording_logger(folder, start_epoch, patience, **kw):
        logger = make_logger(folder, start_epoch, patience, **kw)
        on_epoch_end = logger.on_epoch_end

        def on_train_begin(logs=None):
            snapshots["start"] = logger.model.get_weights()

        def on_epoch_end_and_record(epoch, logs=None):
            on_epoch_end(epoch, logs)
            snapshots[start_epoch + epoch + 1] = logger.model.get_weights()
            if start_epoch + epoch + 1 == stop_after:
                raise KeyboardInterrupt  # the user pressed Ctrl-C

        logger.on_train_begin = on_train_begin
        logger.on_epoch_end = on_epoch_end_and_record
        return logger

    monkeypatch.setattr(training, "_loss_logger", recording_logger)


def _record_loads(monkeypatch):
    from stardist.models import StarDist2D

    loaded = []
    load = StarDist2D.load_weights

    def recording_load(self, name="weights_best.h5"):
        loaded.append(name)
        return load(self, name)

    monkeypatch.setattr(StarDist2D, "load_weights", recording_load)
    return loaded


def _weights_in(folder, name):
    from stardist.models import StarDist2D

    model = StarDist2D(None, name=folder.name, basedir=str(folder.parent))
    model.keras_model.load_weights(str(folder / name))
    return model.keras_model.get_weights()


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _val_losses(folder):
    return [float(r["val_loss"]) for r in csv.DictReader((folder / "losses.csv").open())]


def test_train_then_resume_loads_the_last_weights_and_keeps_the_earlier_best(tmp_path, tiny_2d, monkeypatch):
    images, masks = tiny_2d
    pairs = read_pairs(images, masks)
    settings = TrainSettings(basedir=tmp_path, name="tiny", epochs=2, steps_per_epoch=2, patch_size=(32, 32),
                             batch_size=2, val_fraction=0.34, use_gpu=False)
    first = {}
    _record_weights(monkeypatch, first)
    card = train(settings, pairs)
    folder = tmp_path / "tiny"
    losses = _val_losses(folder)
    best = int(np.argmin(losses)) + 1
    assert len(losses) == 2 and card["epochs"] == 2 and card["best_epoch"] == best
    assert not _same(first[1], first[2])  # training changed the weights, so the comparisons below mean something
    assert _same(_weights_in(folder, "weights_best.h5"), first[best])
    assert _same(_weights_in(folder, "weights_last.h5"), first[2])
    assert len(card["data"]["validation_samples"]) == 1 and len(card["data"]["training_samples"]) == 2
    assert [r["iou"] for r in card["validation_scores"]] == [0.3, 0.5, 0.7, 0.9]

    # record an earlier best that no new epoch can beat: the resumed run must keep its weights
    rows = list(csv.DictReader((folder / "losses.csv").open()))
    rows[best - 1]["val_loss"] = "0.0"
    with (folder / "losses.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=rows[0].keys())
        writer.writeheader()
        writer.writerows(rows)
    second = {}
    _record_weights(monkeypatch, second)
    loaded = _record_loads(monkeypatch)
    card = train(TrainSettings(**{**settings.__dict__, "epochs": 3, "resume": True}), pairs)
    assert "weights_last.h5" in loaded
    assert _same(second["start"], first[2])  # resumed from the last epoch's weights
    assert [r["epoch"] for r in csv.DictReader((folder / "losses.csv").open())] == ["1", "2", "3"]
    assert card["epochs"] == 3 and card["best_epoch"] == best
    assert _same(_weights_in(folder, "weights_best.h5"), first[best])
    assert not _same(second[3], first[best])


def test_ctrl_c_loses_nothing_and_resume_continues_at_the_next_epoch(tmp_path, tiny_2d, monkeypatch):
    images, masks = tiny_2d
    pairs = read_pairs(images, masks)
    settings = TrainSettings(basedir=tmp_path, name="stopped", epochs=4, steps_per_epoch=2, patch_size=(32, 32),
                             batch_size=2, val_fraction=0.34, use_gpu=False)
    first = {}
    _record_weights(monkeypatch, first, stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        train(settings, pairs)
    folder = tmp_path / "stopped"
    losses = _val_losses(folder)
    assert len(losses) == 2
    assert _same(_weights_in(folder, "weights_best.h5"), first[int(np.argmin(losses)) + 1])
    assert _same(_weights_in(folder, "weights_now.h5"), first[2])

    second = {}
    _record_weights(monkeypatch, second)
    loaded = _record_loads(monkeypatch)
    card = train(TrainSettings(**{**settings.__dict__, "resume": True}), pairs)
    assert "weights_now.h5" in loaded and _same(second["start"], first[2])
    losses = _val_losses(folder)
    assert [r["epoch"] for r in csv.DictReader((folder / "losses.csv").open())] == ["1", "2", "3", "4"]
    assert card["epochs"] == 4 and card["best_epoch"] == int(np.argmin(losses)) + 1
    assert _same(_weights_in(folder, "weights_best.h5"), {**first, **second}[card["best_epoch"]])


def test_existing_model_is_not_overwritten_and_resume_needs_more_epochs(tmp_path, tiny_2d):
    images, masks = tiny_2d
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    pairs = read_pairs(images, masks)
    with pytest.raises(TrainError, match="already holds a model; use --overwrite to replace it or --resume"):
        train(TrainSettings(basedir=tmp_path, name="m"), pairs)
    (folder / "losses.csv").write_text("epoch,loss,val_loss\n1,1,1\n2,1,1\n")
    with pytest.raises(TrainError, match="--resume: m has already trained 2 of 2 epochs; raise --epochs"):
        train(TrainSettings(basedir=tmp_path, name="m", epochs=2, resume=True), pairs)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "losses.csv"]


# ---------------------------------------------------------------------------------------------------------------------
# evaluation


def test_evaluate_scores_only_the_region_and_records_it(tmp_path, capsys):
    """Right of column 128: the held-out quarter of the sample, truly annotated.  Left: nuclei with no annotation
    (false positives if scored) and five annotated squares where there is none (misses if scored)."""
    img = tifffile.imread(DATA / "nuclei_2d.tif")[:256, 256:]
    mask = tifffile.imread(DATA / "nuclei_2d_masks.tif")[:256, 256:].astype(np.uint16)
    mask[:, :128] = 0
    for i in range(5):
        mask[10 + 50 * i:22 + 50 * i, 4:16] = 1000 + i
    inside = len(np.unique(mask[:, 128:])) - 1
    image_path, mask_path = _write_pair(tmp_path, "held_out", img, mask)
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "2D_demo", models / "2D_demo")
    before = read_card(models / "2D_demo")

    out = tmp_path / "scores.json"
    assert main(["evaluate", "--model-path", str(models), "--model-name", "2D_demo", "--images", str(image_path),
                 "--masks", str(mask_path), "--region", ":,128:", "--out", str(out), "--save-to-card", "--cpu"]) == 0
    assert "F1" in capsys.readouterr().out
    written = json.loads(out.read_text(encoding="utf-8"))
    rows = {r["iou"]: r for r in written["scores"]}
    assert written["region"] == ":,128:" and written["n_objects"] == inside
    assert rows[0.5]["n_true"] == inside and rows[0.5]["tp"] + rows[0.5]["fn"] == inside
    assert rows[0.5]["f1"] >= 0.85  # the five unfindable objects outside the region do not count

    card = read_card(models / "2D_demo")
    assert card["data"]["test_scores"] == written["scores"]
    assert card["data"]["test_data"]["region"] == ":,128:" and card["data"]["test_data"]["n_objects"] == inside
    assert card["validation_scores"] == before["validation_scores"] and card["recipe"] == before["recipe"]
    readme = (models / "2D_demo" / "README.md").read_text(encoding="utf-8")
    assert readme == card_text(card) and f"{rows[0.5]['tp']:>9d}" in readme

    # the whole image: the squares are missed and the unannotated nuclei are false positives
    from stardist_host.segmentation.models import load_model

    everything, n = evaluate(load_model("2D_demo", ndim=2, path=models), read_pairs([image_path], [mask_path]))
    assert n == inside + 5 and everything[1]["fn"] >= rows[0.5]["fn"] + 5
    assert everything[1]["fp"] >= rows[0.5]["fp"] + 10


def test_evaluate_writes_csv(tmp_path):
    from stardist_host.training.evaluation import COLUMNS, write_scores

    rows = score([_square((40, 40), 5, 5, 10)], [_square((40, 40), 5, 10, 10)])
    path = write_scores(rows, tmp_path / "s.csv", region="ignored in CSV")
    back = list(csv.DictReader(path.open(encoding="utf-8")))
    assert tuple(back[0]) == COLUMNS and [r["tp"] for r in back] == ["1", "0", "0", "0"]
    assert not list(tmp_path.glob(".*partial"))


def test_bundled_cards_render_as_their_readmes():
    note = ("the training data are written to <demo data>, a temporary folder, from the images the stardist "
            "package ships")
    for name in ("2D_demo", "3D_demo"):
        card = {**read_card(ROOT / "models" / name), "recipe_note": note}
        assert card_text(card) == (ROOT / "models" / name / "README.md").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------------
# bad pairs


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: _write_pair(d, "a", np.zeros((32, 32), np.uint16), np.zeros((32, 30), np.uint16)),
         r"image a.tif has T, Z, Y, X = \(1, 1, 32, 32\) but mask a_masks.tif has \(1, 1, 32, 30\)"),
        (lambda d: _write_pair(d, "f", np.zeros((32, 32), np.uint16), np.ones((32, 32), np.float32)),
         "mask f_masks.tif holds float32 values; masks must be integer label images"),
        (lambda d: _write_pair(d, "e", np.zeros((32, 32), np.uint16), np.zeros((32, 32), np.uint16)),
         r"the masks hold no objects"),
    ],
)
def test_bad_pairs(tmp_path, make, message):
    image, mask = make(tmp_path)
    with pytest.raises(PairError, match=message):
        read_pairs([image], [mask])


def test_crop_takes_numpy_slices_of_the_last_axes():
    assert crop(np.arange(12).reshape(3, 4), ":, 2:").tolist() == [[2, 3], [6, 7], [10, 11]]
    with pytest.raises(PairError, match=r"crop='a:b' is not a list of slices"):
        crop(np.zeros((2, 2)), "a:b")


def test_mixed_2d_and_3d_pairs_are_refused(tmp_path):
    flat = _write_pair(tmp_path, "flat", *synthetic.nuclei((64, 64), 10, radius=(4, 6), seed=1))
    stack = _write_pair(tmp_path, "stack", *synthetic.nuclei((8, 64, 64), 10, radius=(4, 6), seed=2),
                        metadata={"axes": "ZYX"})
    with pytest.raises(PairError, match="stack.tif is 3D but earlier images are 2D; give --dim"):
        read_pairs([flat[0], stack[0]], [flat[1], stack[1]])
    assert read_pairs([flat[0], stack[0]], [flat[1], stack[1]], ndim=2).ndim == 2  # every plane a 2D sample
