"""Training with several input channels (issue 19, item 3): read_pairs with a channel list, its errors, RGB
samples, augmentation and normalisation with a channel axis, the synthetic two-channel scene, a tiny training."""

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from stardist_host.cli import main
from stardist_host.errors import SettingsError
from stardist_host.testing import synthetic
from stardist_host.training import train as training
from stardist_host.training.evaluation import evaluate, f1_at, score
from stardist_host.training.pairs import PairError, Pairs, read_pairs
from stardist_host.training.train import TrainError, TrainSettings, make_augmenter, train


def _write(path, data, **kw):
    tifffile.imwrite(path, data, **kw)
    return path


def _mask(path, shape, seed=0):
    """A label mask with a few objects (read_pairs refuses masks without any)."""
    _, labels = synthetic.nuclei(shape, 4, radius=(3, 4), seed=seed)
    return _write(path, labels, photometric="minisblack")


# ---------------------------------------------------------------------------------------------------------------------
# reading


def test_a_channel_list_stacks_the_channels_last_in_the_order_given(tmp_path):
    rng = np.random.default_rng(0)
    flat = _write(tmp_path / "flat.tif", rng.integers(0, 4000, (3, 24, 32), dtype=np.uint16),
                  photometric="minisblack", metadata={"axes": "CYX"})
    flat_mask = _mask(tmp_path / "flat_masks.tif", (24, 32))
    truth = tifffile.imread(flat)  # (C, Y, X)
    pairs = read_pairs([flat], [flat_mask], channel=[2, 0])
    assert pairs.ndim == 2 and pairs.n_channels == 2 and pairs.images[0].shape == (24, 32, 2)
    np.testing.assert_array_equal(pairs.images[0], np.moveaxis(truth[[2, 0]], 0, -1))
    one = read_pairs([flat], [flat_mask], channel=1)  # an int: no channel axis, as before
    assert one.n_channels is None and one.images[0].shape == (24, 32)
    np.testing.assert_array_equal(one.images[0], truth[1])

    # 3D, two time points (ImageJ's TZCYX): one (Z, Y, X, C) sample per time point
    stack = _write(tmp_path / "stack.tif", rng.integers(0, 4000, (2, 5, 2, 24, 32), dtype=np.uint16),
                   imagej=True, metadata={"axes": "TZCYX"})
    labels = np.stack([synthetic.nuclei((5, 24, 32), 3, radius=(3, 4), seed=s)[1] for s in (1, 2)])
    stack_mask = _write(tmp_path / "stack_masks.tif", labels, imagej=True, metadata={"axes": "TZYX"})
    truth = tifffile.imread(stack)  # (T, Z, C, Y, X)
    pairs = read_pairs([stack], [stack_mask], channel=(1, 0))
    assert pairs.ndim == 3 and pairs.n_channels == 2 and [x.shape for x in pairs.images] == [(5, 24, 32, 2)] * 2
    for t in range(2):
        np.testing.assert_array_equal(pairs.images[t], np.moveaxis(truth[t][:, [1, 0]], 1, -1))
        np.testing.assert_array_equal(pairs.masks[t], labels[t])


def test_rgb_samples_are_three_channels(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (32, 40, 3), dtype=np.uint8)
    image = _write(tmp_path / "he.tif", rgb, photometric="rgb")
    mask = _mask(tmp_path / "he_masks.tif", (32, 40))
    pairs = read_pairs([image], [mask], channel=[0, 1, 2])
    assert pairs.n_channels == 3 and pairs.images[0].dtype == np.uint8
    np.testing.assert_array_equal(pairs.images[0], tifffile.imread(image))
    np.testing.assert_array_equal(read_pairs([image], [mask], channel=(2, 1, 0)).images[0], rgb[..., ::-1])
    with pytest.raises(SettingsError, match=r"^channel=\(0, 1, 2, 3\): image he.tif has 3 channels \(0..2\); 3 is"):
        read_pairs([image], [mask], channel=[0, 1, 2, 3])


@pytest.mark.parametrize("channel, message", [
    ((0, 1, 0), r"channel=\(0, 1, 0\): channel 0 is given more than once; give each of image a.tif's channels "
                r"\(0..2\) at most once"),
    ([0, 3], r"channel=\(0, 3\): image a.tif has 3 channels \(0..2\); 3 is not one of them"),
    ([0, -1], r"channel=\(0, -1\): image a.tif has 3 channels \(0..2\); -1 is not one of them"),
    ([], r"channel=\(\): give at least one channel; image a.tif has 3 channels \(0..2\)"),
])
def test_a_bad_channel_list_names_the_value_the_file_and_its_channels(tmp_path, channel, message):
    image = _write(tmp_path / "a.tif", np.zeros((3, 16, 16), np.uint16), photometric="minisblack",
                   metadata={"axes": "CYX"})
    mask = _mask(tmp_path / "a_masks.tif", (16, 16))
    with pytest.raises(SettingsError, match="^" + message):
        read_pairs([image], [mask], channel=channel)


def test_the_command_names_the_channel_and_the_file_that_lacks_it_and_writes_nothing(tmp_path, caplog):
    three = _write(tmp_path / "a.tif", np.zeros((3, 16, 16), np.uint16), photometric="minisblack",
                   metadata={"axes": "CYX"})
    two = _write(tmp_path / "b.tif", np.zeros((2, 16, 16), np.uint16), photometric="minisblack",
                 metadata={"axes": "CYX"})
    masks = [_mask(tmp_path / f"{n}_masks.tif", (16, 16)) for n in "ab"]
    out = tmp_path / "models"
    common = ["--masks", *map(str, masks), "--out", str(out), "--name", "m", "--cpu"]
    with caplog.at_level(logging.ERROR):
        assert main(["train", "--images", str(three), str(two), "--channel", "0,2", *common]) == 2
        assert main(["train", "--images", str(three), str(two), "--channel", "1,1", *common]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["--channel 0,2: image b.tif has 2 channels (0..1); 2 is not one of them",
                      "--channel 1,1: channel 1 is given more than once; give each of image a.tif's channels (0..2) "
                      "at most once"]
    assert not out.exists()
    with pytest.raises(SystemExit) as stop:
        main(["train", "--images", str(three), "--channel", "0,x", *common[:2], *common[3:]])
    assert stop.value.code == 2 and not out.exists()


# ---------------------------------------------------------------------------------------------------------------------
# augmentation and normalisation with a channel axis


@pytest.mark.parametrize("shape", [(8, 8), (4, 6, 6)])
def test_augmenter_moves_every_channel_with_the_mask(shape):
    y = (np.arange(np.prod(shape)) + 1).reshape(shape).astype(np.int32)
    x = np.stack([y, 10 * y, 100 * y], axis=-1).astype(np.float32)
    augment = make_augmenter(flip_z=True, intensity=False, seed=1)
    moved = set()
    for _ in range(20):
        xa, ya = augment(x, y)
        assert xa.shape == x.shape and ya.shape == y.shape
        for c, k in enumerate((1, 10, 100)):
            np.testing.assert_array_equal(xa[..., c], k * ya)
        moved.add(ya.tobytes())
    assert len(moved) > 2  # it did move them


def test_channels_are_normalised_each_on_its_own_or_jointly():
    from csbdeep.utils import normalize

    rng = np.random.default_rng(2)
    dim, bright = rng.uniform(0, 100, (2, 32, 32)), rng.uniform(0, 10000, (2, 32, 32))
    for ndim, x in ((2, np.stack([dim[0], bright[0]], -1)), (3, np.stack([dim, bright], -1))):
        own, = training._normalized([x], (1, 99.8), ndim)
        together, = training._normalized([x], (1, 99.8), ndim, jointly=True)
        for c in range(2):
            np.testing.assert_allclose(own[..., c], normalize(x[..., c], 1, 99.8), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(together, normalize(x, 1, 99.8), rtol=1e-5, atol=1e-6)
        assert own[..., 0].max() > 0.9 and together[..., 0].max() < 0.02  # the dim channel: own range vs shared
    plane = dim[0]  # one channel, no channel axis: as before
    np.testing.assert_array_equal(training._normalized([plane], (1, 99.8), 2)[0],
                                  normalize(plane, 1, 99.8, axis=None).astype(np.float32))


# ---------------------------------------------------------------------------------------------------------------------
# the synthetic two-channel scene


def _threshold_objects(image, level=1000, smallest=20):
    labels, _ = ndimage.label(image > level)
    sizes = np.bincount(labels.ravel())
    labels[sizes[labels] < smallest] = 0
    return labels


def test_two_channel_scene_needs_both_channels():
    image, labels = synthetic.two_channel_nuclei((128, 128), 6, radius=(4, 6), seed=0)
    again, labels_again = synthetic.two_channel_nuclei((128, 128), 6, radius=(4, 6), seed=0)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(labels, labels_again)
    assert image.shape == (2, 128, 128) and image.dtype == np.uint16 and labels.max() == 6
    assert len(np.unique(labels)) - 1 == 6
    alone = [f1_at(score([labels], [_threshold_objects(image[c])]), 0.5) for c in (0, 1)]
    both = f1_at(score([labels], [_threshold_objects(np.minimum(image[0], image[1]))]), 0.5)
    # each channel shows 6 decoys beside the 6 nuclei, alike in size and brightness: F1 at most 2 * 6 / 18
    assert max(alone) <= 0.7 and both >= 0.9
    for c in (0, 1):  # decoys as bright as the nuclei
        decoys = (_threshold_objects(image[c]) > 0) & (ndimage.binary_dilation(labels > 0, iterations=3) == 0)
        assert decoys.sum() > 0.5 * (labels > 0).sum()
        assert abs(np.median(image[c][decoys]) / np.median(image[c][labels > 0]) - 1) < 0.35
    volume, volume_labels = synthetic.two_channel_nuclei((12, 48, 48), 4, radius=(4, 6), anisotropy=2.0, seed=1)
    assert volume.shape == (2, 12, 48, 48) and volume_labels.shape == (12, 48, 48) and volume_labels.max() >= 3


# ---------------------------------------------------------------------------------------------------------------------
# training


def _scene_pairs(folder, seeds):
    images, masks = [], []
    for s in seeds:
        image, labels = synthetic.two_channel_nuclei((64, 64), 6, radius=(4, 7), seed=s)
        images.append(_write(folder / f"s{s}.tif", image, photometric="minisblack", metadata={"axes": "CYX"}))
        masks.append(_write(folder / f"s{s}_masks.tif", labels, photometric="minisblack"))
    return [str(p) for p in images], [str(p) for p in masks]


def test_a_two_channel_model_trains_and_records_its_channels(tmp_path, monkeypatch, capsys):
    images, masks = _scene_pairs(tmp_path, range(3))
    fed = []
    from stardist.models import StarDist2D

    fit = StarDist2D.train

    def recording_train(self, X, Y, **kw):
        fed.append(X)
        return fit(self, X, Y, **kw)

    monkeypatch.setattr(StarDist2D, "train", recording_train)
    models = tmp_path / "models"
    options = ["--out", str(models), "--epochs", "1", "--steps", "2", "--patch-size", "32,32", "--batch-size", "2",
               "--val-fraction", "0.34", "--cpu", "--seed", "3"]
    assert main(["train", "--images", *images, "--masks", *masks, "--channel", "0,1", "--name", "own",
                 *options]) == 0
    assert main(["train", "--images", *images, "--masks", *masks, "--channel", "0,1", "--name", "joint",
                 "--normalize-channels-jointly", *options]) == 0
    for name, jointly in (("own", False), ("joint", True)):
        folder = models / name
        config = json.loads((folder / "config.json").read_text())
        card = json.loads((folder / "model_card.json").read_text())
        assert config["n_channel_in"] == 2
        assert card["input_channels"] == 2 and card["normalize_channels_jointly"] is jointly
        assert card["data"]["channel"] == [0, 1] and len(card["validation_scores"]) == 4
        how = "all together" if jointly else "each channel on its own"
        assert f"Input: 2 channels, normalised {how}." in (folder / "README.md").read_text()
    # what the network was fed: two channels, normalised as asked
    own, joint = fed
    assert all(x.shape[-1] == 2 for x in own + joint)
    np.testing.assert_allclose(np.percentile(own[0], 99.8, axis=(0, 1)), [1, 1], rtol=1e-3)
    raw = np.moveaxis(tifffile.imread(images[0]), 0, -1).astype(np.float32)
    sample = next(x for x in joint if x.shape == raw.shape)
    from csbdeep.utils import normalize

    np.testing.assert_allclose(sample, normalize(raw, 1, 99.8), rtol=1e-4, atol=1e-5)

    # evaluate takes the model with the same channels and normalises them as the card says
    from stardist_host.segmentation import segment

    taken = []
    run = segment.segment
    monkeypatch.setattr(segment, "segment", lambda *a, **kw: taken.append(kw["normalisation"]) or run(*a, **kw))
    capsys.readouterr()
    assert main(["evaluate", "--model-path", str(models), "--model-name", "joint", "--images", images[0],
                 "--masks", masks[0], "--channel", "0,1", "--cpu"]) == 0
    assert "joint on 1 sample(s), 6 true objects" in capsys.readouterr().out
    assert [how.jointly for how in taken] == [True]


def test_one_channel_models_record_one_channel(tmp_path):
    img, lab = synthetic.nuclei((64, 64), 14, radius=(4, 7), seed=0)
    pairs = Pairs(2, [img, img[:, ::-1]], [lab, lab[:, ::-1].copy()], None, ["a", "b"])
    settings = TrainSettings(basedir=tmp_path, name="one", epochs=1, steps_per_epoch=1, patch_size=(32, 32),
                             batch_size=1, use_gpu=False, normalize_channels_jointly=True)
    card = train(settings, pairs.select([0]), pairs.select([1]))
    assert card["input_channels"] == 1 and card["normalize_channels_jointly"] is False
    assert json.loads((tmp_path / "one" / "config.json").read_text())["n_channel_in"] == 1
    assert "Input:" not in (tmp_path / "one" / "README.md").read_text()


def test_channel_counts_that_do_not_fit_stop_before_anything_is_written(tmp_path):
    img, lab = synthetic.nuclei((64, 64), 14, radius=(4, 7), seed=0)
    two = Pairs(2, [np.stack([img, img], -1)], [lab], None, ["two"])
    one = Pairs(2, [img], [lab], None, ["one"])
    train_part, val_part = training.split_validation(two, 0.15, seed=0)  # along X, never along the channels
    assert train_part.images[0].shape == (64, 54, 2) and val_part.images[0].shape == (64, 10, 2)
    assert val_part.sources == ["two[:, 54:64]"] and val_part.n_channels == 2
    with pytest.raises(TrainError, match=r"the validation data have one channel \(no channel axis\) but the training "
                                         r"data 2 channels \(a channel axis\); read both with the same --channel"):
        train(TrainSettings(basedir=tmp_path, name="x"), two, one)
    assert not (tmp_path / "x").exists()
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"n_dim": 2, "n_channel_in": 2}))
    with pytest.raises(TrainError, match=r"--resume: m takes 2 input channel\(s\), but the data have one channel "
                                         r"\(no channel axis\); give the --channel it was trained with"):
        train(TrainSettings(basedir=tmp_path, name="m", epochs=2, resume=True), one)
    assert [p.name for p in folder.iterdir()] == ["config.json"]
    model = SimpleNamespace(config=SimpleNamespace(n_dim=2, n_channel_in=2), logdir=None)
    with pytest.raises(PairError, match=r"the model takes 2 input channel\(s\) but --channel gives 1: give 2 in the "
                                        r"model's order, e.g. 0,1"):
        evaluate(model, one)
