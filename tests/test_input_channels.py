"""Several input channels (issue 19, item 3, the run side): INPUT_CHANNEL lists, per-channel or joint normalisation.

The oracle: two 2-channel models built from 2D_demo's weights, whose first
convolution sees only the first input channel ("first2") or the mean of the
two ("mean2").  The first layer is linear, so their labels are exactly those
of 2D_demo's ``predict_instances`` on that channel or on that mean.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from csbdeep.utils import normalize
from stardist.data import test_image_nuclei_2d

from stardist_host import cli
from stardist_host.io.imagesets import MemoryImageSet
from stardist_host.runs.files import segment_file
from stardist_host.runs.local import run
from stardist_host.segmentation.models import bundled_models_dir, load_model
from stardist_host.segmentation.settings import Settings


def _two_channel_model(folder: Path, name: str, weights: tuple[float, float]) -> None:
    """2D_demo with two input channels; its first convolution's kernel is ``weights[i]`` x 2D_demo's on channel i."""
    from stardist.models import StarDist2D

    shutil.copytree(bundled_models_dir() / "2D_demo", folder / name)
    config = json.loads((folder / name / "config.json").read_text())
    config["n_channel_in"], config["net_input_shape"] = 2, [None, None, 2]
    (folder / name / "config.json").write_text(json.dumps(config))
    for old in (folder / name).glob("weights*.h5"):
        old.unlink()
    one, two = load_model("2D_demo", ndim=2), StarDist2D(None, name=name, basedir=str(folder))
    first = True
    for a, b in zip([x for x in one.keras_model.layers if x.get_weights()],
                    [x for x in two.keras_model.layers if x.get_weights()]):
        values = a.get_weights()
        if first:
            values[0] = np.concatenate([values[0] * weights[0], values[0] * weights[1]], axis=2)
            first = False
        b.set_weights(values)
    two.keras_model.save_weights(str(folder / name / "weights_best.h5"))


@pytest.fixture(scope="module")
def models_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    _two_channel_model(folder, "first2", (1.0, 0.0))
    _two_channel_model(folder, "mean2", (0.5, 0.5))
    return folder


def _channels() -> np.ndarray:
    """(T=1, C=3, Z=1, Y, X) uint16: three different crops of stardist's 2D sample, the third 4x brighter."""
    image = test_image_nuclei_2d()
    return np.stack([image[:128, :128], image[128:256, 128:256], image[:128, 256:384] * 4])[None, :, None]


def _settings(folder: Path, name: str, **kw) -> Settings:
    return Settings(ndim=2, model_path=str(folder), model_name=name, use_gpu=False, separate_process=False,
                    precision="float32", **kw)


def test_channels_reach_the_model_in_the_order_given(models_folder, model_2d):
    data = _channels()
    ims = MemoryImageSet(data.copy(), channel_names=["DAPI", "H2B", "Hoechst"])
    result = run(_settings(models_folder, "first2", input_channel=[1, 0]), ims)
    expected = model_2d.predict_instances(normalize(data[0, 1, 0].astype(np.float32), 1, 99.8))[0]
    np.testing.assert_array_equal(ims.channel(result.channel)[0, 0], expected)
    assert result.channel_name == "Stardist_H2B+DAPI" and result.total == expected.max() >= 5


@pytest.mark.parametrize("jointly", [False, True])
def test_channels_are_normalised_each_on_its_own_or_together(models_folder, model_2d, jointly):
    data = _channels()
    ims = MemoryImageSet(data.copy())
    result = run(_settings(models_folder, "mean2", input_channel=[0, 2], normalize_channels_jointly=jointly), ims)
    pair = np.stack([data[0, 0, 0], data[0, 2, 0]], -1).astype(np.float32)
    normalised = normalize(pair, 1, 99.8, axis=None if jointly else (0, 1))
    expected = model_2d.predict_instances(normalised.mean(-1))[0]
    np.testing.assert_array_equal(ims.channel(result.channel)[0, 0], expected)


def test_rgb_samples_are_channels_and_every_path_gives_the_same_labels(models_folder, tmp_path):
    rgb = np.moveaxis(_channels()[0, :, 0], 0, -1)
    rgb = (rgb / rgb.max() * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    settings = _settings(models_folder, "mean2", input_channel=[0, 1])
    ims = MemoryImageSet(np.moveaxis(rgb, -1, 0)[None, :, None].copy())
    expected = ims.channel(run(settings, ims).channel)[0, 0]
    assert expected.max() > 5
    for how in ({}, {"resume": True}, {"workers": 1}):
        out = tmp_path / f"out{len(how)}{'workers' in how}.ome.tif"
        segment_file(settings, tmp_path / "rgb.tif", out, **how)
        np.testing.assert_array_equal(tifffile.imread(out)[-1], expected)
    child = MemoryImageSet(np.moveaxis(rgb, -1, 0)[None, :, None].copy())
    result = run(dataclasses.replace(settings, separate_process=True), child)
    np.testing.assert_array_equal(child.channel(result.channel)[0, 0], expected)


def test_a_count_that_is_not_the_models_is_one_line_before_anything_is_written(models_folder, tmp_path, sample_2d,
                                                                                 caplog):
    out = tmp_path / "out.ome.tif"
    assert cli.main(["segment", str(sample_2d), str(out), "--cpu", "--model-path", str(models_folder),
                     "--model-name", "first2"]) == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "--model-name first2 takes 2 input channels, but --input-channel 0 gives 1: give 2 channels in the model's "
        "order, e.g. --input-channel 0,1"]
    assert not out.exists()


def test_a_channel_out_of_range_names_the_channels_there_are():
    with pytest.raises(Exception, match=r"INPUT_CHANNEL=3: the image set has channels 0\.\.2"):
        run(_settings(Path("."), "mean2", input_channel=[0, 3]), MemoryImageSet(_channels()))
