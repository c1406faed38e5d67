"""Training and evaluation: scores on hand-made cases, a tiny real training run with resume, bad input."""

import csv
import json

import numpy as np
import pytest
import tifffile

from stardist_host.cli import main
from stardist_host.testing import synthetic
from stardist_host.training.evaluation import f1_at, score
from stardist_host.training.pairs import PairError, crop, read_pairs
from stardist_host.training.train import TrainError, TrainSettings, _rising_while_falling, split_validation, train


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
    img2, labels2 = synthetic.nuclei((16, 48, 48), 12, radius=(4, 6), anisotropy=2.0, seed=3)
    assert img.dtype == np.uint16 and labels.shape == (16, 48, 48)
    np.testing.assert_array_equal(labels, labels2)
    n = len(np.unique(labels)) - 1
    assert 8 <= n <= 12 and labels.max() == n  # labels are 1..n
    assert img[labels > 0].mean() > 2 * img[labels == 0].mean()  # nuclei brighter than background


def _write_pair(folder, name, image, mask, **kw):
    tifffile.imwrite(folder / f"{name}.tif", image, photometric="minisblack", **kw)
    tifffile.imwrite(folder / f"{name}_masks.tif", mask, photometric="minisblack", **kw)
    return folder / f"{name}.tif", folder / f"{name}_masks.tif"


@pytest.fixture
def tiny_2d(tmp_path):
    paths = [_write_pair(tmp_path, f"s{i}", *synthetic.nuclei((64, 64), 14, radius=(4, 7), seed=i)) for i in range(3)]
    return [str(p[0]) for p in paths], [str(p[1]) for p in paths]


def test_train_two_epochs_then_resume(tmp_path, tiny_2d, caplog):
    images, masks = tiny_2d
    base = tmp_path / "models"
    common = ["train", "--images", *images, "--masks", *masks, "--out", str(base), "--name", "tiny",
              "--steps", "2", "--patch-size", "32,32", "--batch-size", "2", "--val-fraction", "0.34", "--cpu"]
    assert main([*common, "--epochs", "2"]) == 0
    folder = base / "tiny"
    rows = list(csv.DictReader((folder / "losses.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(float(r["val_loss"]) > 0 for r in rows)
    assert (folder / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("weights_best.h5", "thresholds.json", "config.json", "README.md"):
        assert (folder / name).is_file(), name
    thresholds = json.loads((folder / "thresholds.json").read_text())
    assert 0 < thresholds["prob"] < 1 and 0 < thresholds["nms"] < 1
    card = json.loads((folder / "model_card.json").read_text())
    assert card["epochs"] == 2 and card["seed"] == 42 and card["command"].startswith("stardist-host train --images")
    assert [r["iou"] for r in card["validation_scores"]] == [0.3, 0.5, 0.7, 0.9]
    assert len(card["data"]["validation_samples"]) == 1 and len(card["data"]["training_samples"]) == 2

    # the folder now holds a model: refused without --overwrite or --resume
    assert main([*common, "--epochs", "2"]) == 2
    assert "already holds a model; use --overwrite to replace it or --resume" in caplog.text
    assert main([*common, "--epochs", "3", "--resume"]) == 0
    rows = list(csv.DictReader((folder / "losses.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert json.loads((folder / "model_card.json").read_text())["epochs"] == 3


def test_existing_model_is_not_overwritten(tmp_path, tiny_2d):
    images, masks = tiny_2d
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    pairs = read_pairs(images, masks)
    with pytest.raises(TrainError, match="already holds a model; use --overwrite to replace it or --resume"):
        train(TrainSettings(basedir=tmp_path, name="m"), pairs)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]


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


def test_too_few_objects_and_patch_too_large(tmp_path):
    img, lab = synthetic.nuclei((64, 64), 14, radius=(4, 7), seed=0)
    pairs = read_pairs(*map(lambda p: [p], _write_pair(tmp_path, "one", img, lab)))
    with pytest.raises(TrainError, match=r"the validation part holds [0-2] object\(s\); at least 3 are needed"):
        train(TrainSettings(basedir=tmp_path / "out", name="x", val_fraction=0.02), pairs)
    with pytest.raises(TrainError, match=r"patch_size=\(128, 128\) is larger than training sample one.tif#0"):
        train(TrainSettings(basedir=tmp_path / "out", name="x", patch_size=(128, 128), val_fraction=0.3), pairs)
    with pytest.raises(TrainError, match=r"patch_size=\(40, 40\): each side must be a multiple of grid x 8"):
        train(TrainSettings(basedir=tmp_path / "out", name="x", patch_size=(40, 40), val_fraction=0.3), pairs)
    assert not (tmp_path / "out").exists()  # nothing written


def test_single_sample_split_keeps_last_columns_for_validation(tmp_path):
    img, lab = synthetic.nuclei((64, 80), 14, radius=(4, 7), seed=0)
    pairs = read_pairs(*map(lambda p: [p], _write_pair(tmp_path, "one", img, lab)))
    train_part, val_part = split_validation(pairs, 0.25, seed=0)
    assert train_part.images[0].shape == (64, 60) and val_part.images[0].shape == (64, 20)
    np.testing.assert_array_equal(val_part.masks[0], lab[:, 60:])


def test_evaluate_command_with_region(tmp_path, capsys):
    truth = np.zeros((64, 64), np.uint16)
    out = tmp_path / "scores.csv"
    image, mask = _write_pair(tmp_path, "e", truth, _square((64, 64), 5, 40, 10).astype(np.uint16))
    assert crop(np.arange(12).reshape(3, 4), ":, 2:").tolist() == [[2, 3], [6, 7], [10, 11]]
    code = main(["evaluate", "--model-name", "2D_demo", "--images", str(image), "--masks", str(mask),
                 "--region", ":,32:", "--out", str(out), "--cpu"])
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["iou"] for r in rows] == ["0.3", "0.5", "0.7", "0.9"]
    assert rows[1]["n_true"] == "1" and rows[1]["tp"] == "0"  # a black image: the nucleus is missed
    assert "F1" in capsys.readouterr().out


def test_stopped_run_keeps_best_weights_and_resumes_at_next_epoch(tmp_path, tiny_2d, monkeypatch):
    from stardist_host.training import train as training

    images, masks = tiny_2d
    pairs = read_pairs(images, masks)
    settings = TrainSettings(basedir=tmp_path, name="stopped", epochs=4, steps_per_epoch=2, patch_size=(32, 32),
                             batch_size=2, val_fraction=0.34, use_gpu=False)
    make_logger = training._loss_logger

    def stopping_logger(folder, start_epoch, patience):
        logger = make_logger(folder, start_epoch, patience)
        on_epoch_end = logger.on_epoch_end

        def stop_after_second(epoch, logs=None):
            on_epoch_end(epoch, logs)
            if start_epoch + epoch + 1 == 2:
                raise KeyboardInterrupt  # the user pressed Ctrl-C

        logger.on_epoch_end = stop_after_second
        return logger

    monkeypatch.setattr(training, "_loss_logger", stopping_logger)
    with pytest.raises(KeyboardInterrupt):
        train(settings, pairs)
    folder = tmp_path / "stopped"
    assert [r["epoch"] for r in csv.DictReader((folder / "losses.csv").open())] == ["1", "2"]
    assert (folder / "weights_best.h5").is_file() and (folder / "weights_now.h5").is_file()

    monkeypatch.setattr(training, "_loss_logger", make_logger)
    card = train(TrainSettings(**{**settings.__dict__, "resume": True}), pairs)
    assert [r["epoch"] for r in csv.DictReader((folder / "losses.csv").open())] == ["1", "2", "3", "4"]
    assert card["epochs"] == 4


def test_mixed_2d_and_3d_pairs_are_refused(tmp_path):
    flat = _write_pair(tmp_path, "flat", *synthetic.nuclei((64, 64), 10, radius=(4, 6), seed=1))
    stack = _write_pair(tmp_path, "stack", *synthetic.nuclei((8, 64, 64), 10, radius=(4, 6), seed=2), metadata={"axes": "ZYX"})
    with pytest.raises(PairError, match="stack.tif is 3D but earlier images are 2D; give --dim"):
        read_pairs([flat[0], stack[0]], [flat[1], stack[1]])
    assert read_pairs([flat[0], stack[0]], [flat[1], stack[1]], ndim=2).ndim == 2  # every plane a 2D sample
