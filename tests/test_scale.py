"""Physical size: SCALE, MODEL_PIXEL_SIZE_UM, OBJECT_DIAMETER_UM, and what ``train`` records (issue 19, item 1).

The known truth: a synthetic scene drawn at twice the pixel density of the
model's training data (nuclei twice as many pixels across) segments as well
as the same scene at the model's density where the pixel sizes are known,
and much worse where they are not.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from stardist.matching import matching

from stardist_host.errors import SettingsError
from stardist_host.io.imagesets import MemoryImageSet, TiffImageSet
from stardist_host.runs.files import segment_file
from stardist_host.runs.local import run
from stardist_host.segmentation.engine import median_diameter_px, run_scale
from stardist_host.segmentation.models import bundled_models_dir, load_model, trained_sizes
from stardist_host.segmentation.settings import Settings, schema
from stardist_host.testing import synthetic
from stardist_host.training.evaluation import predict_all
from stardist_host.training.pairs import Pairs
from stardist_host.training.train import training_sizes

#: The pixel size (µm) the test's copy of 2D_demo records for its training data.
PIXEL = 0.5
#: A scene at the density 2D_demo was trained at: its median training diameter is 23.6 pixels.
SHAPE, COUNT, RADIUS, SEED = (192, 192), 30, (10.0, 14.0), 1


def scene(density: int):
    """The same scene drawn at ``density`` times the pixel density: (image, truth)."""
    return synthetic.nuclei(tuple(s * density for s in SHAPE), COUNT, radius=tuple(r * density for r in RADIUS),
                            blur=1.0 * density, seed=SEED)


def f1(truth, labels) -> float:
    assert labels.shape == truth.shape  # the labels come back on the image's own grid
    return matching(truth, labels, thresh=0.5).f1


def write_tiff(path: Path, image, pixel: float | None) -> Path:
    metadata = {"axes": "YX"}
    if pixel is not None:
        metadata.update(PhysicalSizeY=pixel, PhysicalSizeX=pixel)
    tifffile.imwrite(path, image, ome=True, photometric="minisblack", metadata=metadata)
    return path


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """A copy of 2D_demo whose card records a pixel size, as ``train`` records one for files that state it."""
    base = tmp_path_factory.mktemp("models")
    folder = base / "demo_px"
    shutil.copytree(bundled_models_dir() / "2D_demo", folder)
    card = json.loads((folder / "model_card.json").read_text(encoding="utf-8"))
    card.update(pixel_size_um=[PIXEL, PIXEL], object_diameter_um=card["object_diameter_px"] * PIXEL)
    (folder / "model_card.json").write_text(json.dumps(card), encoding="utf-8")
    return base


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """The 1x scene at the model's pixel size, the 2x scene at half of it, and the 2x scene without a pixel size."""
    folder = tmp_path_factory.mktemp("scenes")
    (one, truth1), (two, truth2) = scene(1), scene(2)
    return SimpleNamespace(
        one=write_tiff(folder / "one.tif", one, PIXEL), truth1=truth1,
        two=write_tiff(folder / "two.tif", two, PIXEL / 2), truth2=truth2,
        two_unknown=write_tiff(folder / "two_unknown.tif", two, None), image2=two,
    )


def labels_of(path: Path):
    return tifffile.imread(path)[-1]  # the label channel, after the input's


# ----------------------------------------------------------------------------- known truth, every path


@pytest.mark.parametrize("way", ["in process", "resumable"])
def test_twice_the_pixel_density_segments_as_well_when_the_files_state_the_pixel_size(tmp_path, models_dir, scenes,
                                                                                        way):
    settings = Settings(ndim=2, model_path=str(models_dir), model_name="demo_px", use_gpu=False)
    options = {"resume": True} if way == "resumable" else {}  # resumable: runs/distributed.py's label store
    got = {}
    for name in ("one", "two", "two_unknown"):
        segment_file(settings, getattr(scenes, name), tmp_path / f"{name}.ome.tif", **options)
        got[name] = labels_of(tmp_path / f"{name}.ome.tif")
    at_1x = f1(scenes.truth1, got["one"])
    at_2x = f1(scenes.truth2, got["two"])
    unknown = f1(scenes.truth2, got["two_unknown"])
    assert at_1x > 0.9
    assert abs(at_2x - at_1x) <= 0.05, (at_1x, at_2x)
    assert unknown < at_1x - 0.5, (at_1x, unknown)  # over-split at scale 1 (seen: 0.0)


def test_the_evaluate_command_takes_the_scale_options(tmp_path, scenes, caplog):
    from stardist_host import cli

    tifffile.imwrite(tmp_path / "mask.tif", scenes.truth2)
    scores = {}
    for option in ([], ["--scale", "0.5"]):
        out = tmp_path / f"scores{len(option)}{option[:1]}.json"
        assert cli.main(["evaluate", "--images", str(scenes.two_unknown), "--masks", str(tmp_path / "mask.tif"),
                         "--model-name", "2D_demo", "--cpu", "--out", str(out), *option]) == 0
        row = next(r for r in json.loads(out.read_text())["scores"] if r["iou"] == 0.5)
        scores[" ".join(option)] = row["f1"]
    assert scores["--scale 0.5"] > 0.9 > 0.5 > scores[""], scores  # the 2x scene at scale 1 is over-split
    caplog.clear()  # a value the option cannot take is one line, status 2, before the model loads
    assert cli.main(["evaluate", "--images", str(scenes.two_unknown), "--masks", str(tmp_path / "mask.tif"),
                     "--model-name", "2D_demo", "--scale", "0.5,0.5,0.5"]) == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        '--scale 0.5,0.5,0.5: must be "auto", "estimate", a number above 0 and at most 16 for every axis, or 2 such '
        "numbers (Y, X), e.g. [0.5, 0.5]"]


def test_the_separate_process_gets_the_same_scale(models_dir, scenes):
    settings = Settings(ndim=2, model_path=str(models_dir), model_name="demo_px", use_gpu=False,
                        separate_process=True)
    with TiffImageSet(scenes.two) as ims:
        result = run(settings, ims)
        labels = ims.get_channeldata(result.channel, 0, 0)
    assert f1(scenes.truth2, labels) > 0.9


def test_evaluate_scales_as_a_run_does(models_dir, scenes):
    model = load_model("demo_px", ndim=2, path=models_dir)
    scaled, = predict_all(model, [scenes.image2], voxel_size=(None, PIXEL / 2, PIXEL / 2))
    unscaled, = predict_all(model, [scenes.image2], voxel_size=None)
    assert f1(scenes.truth2, scaled) > 0.9 and f1(scenes.truth2, unscaled) < 0.4


def test_model_pixel_size_um_states_what_the_bundled_model_does_not_record(tmp_path, scenes, caplog):
    caplog.set_level(logging.INFO, logger="stardist_host")
    bundled = Settings(ndim=2, use_gpu=False)
    segment_file(bundled, scenes.two, tmp_path / "as_is.ome.tif")
    assert "SCALE=\"auto\": the model's pixel size unknown: segmented at scale 1" in caplog.text
    segment_file(dataclasses.replace(bundled, model_pixel_size_um=PIXEL), scenes.two, tmp_path / "stated.ome.tif")
    assert f1(scenes.truth2, labels_of(tmp_path / "stated.ome.tif")) > 0.9
    assert f1(scenes.truth2, labels_of(tmp_path / "as_is.ome.tif")) < 0.4


def test_object_diameter_um_scales_to_the_models_training_diameter(tmp_path, scenes):
    # 2x scene at 0.25 µm: nuclei about 47 pixels, 11.9 µm across; 2D_demo's median training diameter 23.6 pixels
    truth_um = median_diameter_px([scenes.truth2], ndim=2) * PIXEL / 2
    settings = Settings(ndim=2, use_gpu=False, object_diameter_um=round(truth_um, 1))
    segment_file(settings, scenes.two, tmp_path / "out.ome.tif")
    assert f1(scenes.truth2, labels_of(tmp_path / "out.ome.tif")) > 0.9


# ----------------------------------------------------------------------------- the rule, on a stand-in model


def fake_model(tmp_path: Path, ndim: int = 2, *, pixel=None, diameter=None, anisotropy=None, name: str = ""):
    folder = tmp_path / (name or f"m{ndim}")
    folder.mkdir(exist_ok=True)
    (folder / "model_card.json").write_text(json.dumps({"pixel_size_um": pixel, "object_diameter_px": diameter}))
    return SimpleNamespace(config=SimpleNamespace(n_dim=ndim, anisotropy=anisotropy), logdir=folder)


def test_auto_is_image_over_model_per_axis(tmp_path):
    model = fake_model(tmp_path, pixel=[0.5, 0.4])
    assert run_scale(model, (None, 0.25, 0.2)) == (0.5, 0.5)
    assert run_scale(model, (None, 1.0, 0.4)) == (2.0, 1.0)
    assert run_scale(model, (None, 0.55, 0.44)) is None  # within 20%: not worth resampling
    model3 = fake_model(tmp_path, 3, pixel=[1.0, 0.5, 0.5], anisotropy=(2.0, 1.0, 1.0))
    assert run_scale(model3, (2.0, 0.25, 0.25)) == (2.0, 0.5, 0.5)
    assert run_scale(model3, (None, 0.25, 0.25)) == (0.5, 0.5, 0.5)  # no Z spacing: the model's anisotropy


def test_without_the_models_pixel_size_3d_keeps_matching_z_only(tmp_path):
    model3 = fake_model(tmp_path, 3, anisotropy=(2.0, 1.0, 1.0))
    assert run_scale(model3, (4.0, 1.0, 1.0)) == (2.0, 1.0, 1.0)
    assert run_scale(model3, (2.2, 1.0, 1.0)) is None  # 10%: the dead band
    assert run_scale(model3, (None, 1.0, 1.0)) is None


def test_nothing_known_is_scale_1_with_one_log_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="stardist_host")
    assert run_scale(fake_model(tmp_path), None) is None
    lines = [r.getMessage() for r in caplog.records if "SCALE" in r.getMessage()]
    assert lines == ["SCALE=\"auto\": the image's and the model's pixel size unknown: segmented at scale 1 "
                     "(set SCALE)"]


def test_a_number_or_one_per_axis_is_used_as_given(tmp_path):
    model = fake_model(tmp_path, pixel=[0.5, 0.5])
    assert run_scale(model, (None, 0.25, 0.25), scale=1.1) == (1.1, 1.1)  # no dead band for a given number
    assert run_scale(model, (None, 0.25, 0.25), scale=(0.5, 2.0)) == (0.5, 2.0)
    assert run_scale(model, None, scale=1) is None


def test_a_given_model_pixel_size_wins_with_a_warning(tmp_path, caplog):
    model = fake_model(tmp_path, pixel=[0.5, 0.5])
    assert run_scale(model, (None, 0.25, 0.25), model_pixel_size_um=1.0) == (0.25, 0.25)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "MODEL_PIXEL_SIZE_UM=1.0 differs from the pixel size the model records" in \
        warned[0].getMessage()


def test_object_diameter_needs_a_recorded_diameter_and_the_images_pixel_size(tmp_path):
    model = fake_model(tmp_path, diameter=20.0)
    assert run_scale(model, (None, 0.5, 0.5), object_diameter_um=20.0) == (0.5, 0.5)  # 40 pixels to 20
    with pytest.raises(SettingsError, match=r"OBJECT_DIAMETER_UM=20.0: needs the image's pixel size"):
        run_scale(model, None, object_diameter_um=20.0)
    with pytest.raises(SettingsError, match=r"OBJECT_DIAMETER_UM=20.0: the model records no object diameter"):
        run_scale(fake_model(tmp_path, name="none"), (None, 0.5, 0.5), object_diameter_um=20.0)


def test_a_scale_that_shrinks_a_unit_below_the_minimum_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(SettingsError, match=r"SCALE=0.1: scales a unit of shape \(40, 40\) by \(0.1, 0.1\)"):
        run_scale(fake_model(tmp_path), None, scale=0.1, unit_shape=(40, 40))


def test_scale_settings_are_checked_and_parsed():
    assert schema(3).by_name["SCALE"].parse("1,0.5,0.5") == (1.0, 0.5, 0.5)
    assert schema(2).by_name["SCALE"].parse("auto") == "auto"
    assert Settings(ndim=3, scale=[1, 0.5, 0.5]).scale == (1, 0.5, 0.5)
    with pytest.raises(SettingsError, match=r"SCALE=\[1, 2, 3\]: must be \"auto\", \"estimate\", a number above 0"):
        Settings(ndim=2, scale=[1, 2, 3])
    with pytest.raises(SettingsError, match=r"MODEL_PIXEL_SIZE_UM=0: must be None"):
        Settings(ndim=2, model_pixel_size_um=0)
    assert {"scale", "model_pixel_size_um", "object_diameter_um"} <= set(Settings(ndim=2).label_values())


# ----------------------------------------------------------------------------- what train records


def test_median_diameter_of_discs_and_balls_of_known_size():
    discs = synthetic.render((100, 100), [(25, 25), (25, 75), (75, 50)], [(8, 8), (10, 10), (12, 12)])
    assert median_diameter_px([discs], ndim=2) == pytest.approx(20, rel=0.03)
    # balls 4 planes deep in Z at twice the lateral spacing: radius 10 lateral pixels physically
    balls = synthetic.render((20, 60, 60), [(10, 30, 30)], [(5, 10, 10)])
    assert median_diameter_px([balls], ndim=3, z_ratio=2.0) == pytest.approx(20, rel=0.05)


def test_training_sizes_record_the_pixel_size_where_known():
    masks = [synthetic.render((64, 64), [(20, 20), (40, 44)], [(6, 6), (6, 6)])]
    pairs = Pairs(2, [None], masks, (None, 0.25, 0.25), ["a"])
    sizes = training_sizes(pairs, pairs.voxel_size, None)
    assert sizes["pixel_size_um"] == [0.25, 0.25] and sizes["object_diameter_px"] == pytest.approx(12, rel=0.05)
    assert sizes["object_diameter_um"] == pytest.approx(sizes["object_diameter_px"] * 0.25)
    assert training_sizes(pairs, None, None)["pixel_size_um"] is None


def test_train_records_the_sizes_and_a_run_reads_them(tmp_path):
    from stardist_host.training.pairs import read_pairs
    from stardist_host.training.train import TrainSettings, train

    paths = []
    for i in range(2):
        image, mask = synthetic.nuclei((64, 64), 10, radius=(5, 7), seed=i)
        paths.append((write_tiff(tmp_path / f"i{i}.tif", image, 0.3), write_tiff(tmp_path / f"m{i}.tif", mask, 0.3)))
    pairs = read_pairs([str(paths[0][0])], [str(paths[0][1])])
    val = read_pairs([str(paths[1][0])], [str(paths[1][1])])
    settings = TrainSettings(basedir=tmp_path / "models", name="px", epochs=1, steps_per_epoch=1, patch_size=(32, 32),
                             batch_size=1, use_gpu=False)
    card = train(settings, pairs, val)
    expected = median_diameter_px(pairs.masks, ndim=2)
    assert card["pixel_size_um"] == [0.3, 0.3] and card["object_diameter_px"] == pytest.approx(expected)
    assert 10 < expected < 14  # radii 5..7
    model = load_model("px", ndim=2, path=tmp_path / "models")
    assert trained_sizes(model).pixel_size_um == (0.3, 0.3)
    assert run_scale(model, (None, 0.15, 0.15)) == pytest.approx((0.5, 0.5))


def test_the_bundled_models_record_their_training_diameter():
    for name, ndim in (("2D_demo", 2), ("3D_demo", 3)):
        card = json.loads((bundled_models_dir() / name / "model_card.json").read_text(encoding="utf-8"))
        assert card["pixel_size_um"] is None  # stardist's samples state none
        assert card["object_diameter_px"] == pytest.approx(23.6 if ndim == 2 else 14.7, abs=0.05)


def test_a_memory_imageset_without_voxel_size_runs_at_scale_1(model_2d):
    from stardist_host.segmentation.plan import make_plan
    from stardist_host.segmentation.segment import segment

    image, truth = scene(1)
    ims = MemoryImageSet(image[None, None, None])
    result = segment(ims, model_2d, make_plan(Settings(ndim=2), ims), output_name="labels")
    assert f1(truth, ims.get_channeldata(result.channel, 0, 0)) > 0.9


# ----------------------------------------------------------------------------- SCALE="estimate" (item 2)


@pytest.mark.parametrize("way", ["in process", "resumable"])
def test_estimate_finds_the_scale_of_the_2x_scene_without_any_pixel_size(tmp_path, scenes, caplog, way):
    caplog.set_level(logging.INFO, logger="stardist_host")
    settings = Settings(ndim=2, use_gpu=False, scale="estimate")  # the bundled 2D_demo: no pixel size, a diameter
    options = {"resume": True} if way == "resumable" else {}
    segment_file(settings, scenes.two_unknown, tmp_path / "two.ome.tif", **options)
    segment_file(settings, scenes.one, tmp_path / "one.ome.tif", **options)
    at_2x = f1(scenes.truth2, labels_of(tmp_path / "two.ome.tif"))
    at_1x = f1(scenes.truth1, labels_of(tmp_path / "one.ome.tif"))
    assert at_1x > 0.9 and abs(at_2x - at_1x) <= 0.05, (at_1x, at_2x)
    chosen = [r.getMessage() for r in caplog.records if r.getMessage().startswith('SCALE="estimate": median')]
    assert len(chosen) == 2 and "the model was trained on 23.6 pixels" in chosen[0]
    factor = float(chosen[0].rsplit("scale (", 1)[1].split(",")[0])
    assert factor == pytest.approx(0.5, abs=0.08)  # the scene is drawn at twice the model's density


def test_estimate_on_small_nuclei_scales_up(scenes, model_2d, caplog):
    from stardist_host.segmentation.engine import Normalisation, unit_reader
    from stardist_host.segmentation.plan import make_plan

    image, truth = synthetic.nuclei((96, 96), 30, radius=(5.0, 7.0), seed=SEED)  # half the model's density
    ims = MemoryImageSet(image[None, None, None])
    plan = make_plan(Settings(ndim=2), ims)
    read = unit_reader(ims, 0, 2, Normalisation())
    factors = run_scale(model_2d, None, scale="estimate", read=read, units=list(plan.units), unit_shape=(96, 96))
    assert factors is not None and factors[0] == pytest.approx(2.0, abs=0.35)


def test_estimate_needs_the_models_recorded_diameter(tmp_path):
    model = fake_model(tmp_path, pixel=[0.5, 0.5])
    with pytest.raises(SettingsError, match=r"SCALE='estimate': the model records no object diameter"):
        run_scale(model, None, scale="estimate", read=lambda unit: np.zeros((32, 32), np.float32), units=[object()])


@pytest.mark.parametrize("way", ["in process", "resumable"])
def test_a_scale_too_small_for_the_unit_stops_the_run_before_anything_is_written(tmp_path, scenes, way):
    from stardist_host.io.outputs import scratch_labels_store

    out = tmp_path / "out.ome.tif"
    with pytest.raises(SettingsError, match=r"SCALE=0.02: scales a unit of shape \(192, 192\) by \(0.02, 0.02\), "
                                            r"which leaves an axis under 8 pixels"):
        segment_file(Settings(ndim=2, use_gpu=False, scale=0.02), scenes.one, out,
                     **({"resume": True} if way == "resumable" else {}))
    assert not out.exists() and not scratch_labels_store(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_scale_beyond_the_memory_budget_stops_the_run_before_anything_is_written(scenes, monkeypatch):
    monkeypatch.setenv("STARDIST_HOST_MEMORY", str(64 * 2**20))
    ims = TiffImageSet(scenes.one)
    with pytest.raises(SettingsError, match=r"SCALE=8: scales a unit of shape \(192, 192\) to \(1536, 1536\), about "
                                            r"0.099 GiB for the network's input and output, more than the 0.062 GiB a "
                                            r"run may use here"):
        run(Settings(ndim=2, use_gpu=False, separate_process=False, scale=8), ims)
    assert ims.channel_count == 1  # no label channel was added
    monkeypatch.setenv("STARDIST_HOST_MEMORY", str(2**30))  # the same scale within a larger budget
    assert run(Settings(ndim=2, use_gpu=False, separate_process=False, scale=8, n_tiles=(2, 2)), ims).total > 0


def test_estimate_on_the_3d_sample_at_the_models_own_density_keeps_scale_1(model_3d, caplog):
    """Nuclei merged at too small a factor measure too small to fit: the estimate stays at the model's density."""
    from stardist.data import test_image_nuclei_3d

    from stardist_host.segmentation.engine import Normalisation, unit_reader
    from stardist_host.segmentation.plan import make_plan

    caplog.set_level(logging.INFO, logger="stardist_host")
    volume = test_image_nuclei_3d()[8:24, :64, :64]  # what 3D_demo trained on (columns 0-35) and beside it
    ims = MemoryImageSet(volume[None, None])
    plan = make_plan(Settings(ndim=3), ims)
    read = unit_reader(ims, 0, 3, Normalisation())
    assert run_scale(model_3d, None, scale="estimate", read=read, units=list(plan.units),
                     unit_shape=volume.shape) is None
    assert 'SCALE="estimate": within 20% of 1: not resampled' in caplog.text
