"""Finding and loading models, and the errors for models that do not fit."""

import json
import shutil

import pytest

from stardist_host.segmentation import models
from stardist_host.segmentation.models import ModelError, load_model


def test_bundled_and_registered_names():
    assert models.bundled_models(2) == ["2D_demo", "2D_two_channel_demo"] and models.bundled_models(3) == ["3D_demo"]
    assert "2D_versatile_fluo" in models.registered_models(2)


def test_bundled_model_loads_with_thresholds(model_2d):
    assert model_2d.config.n_dim == 2 and model_2d.name == "2D_demo"
    assert 0 < model_2d.thresholds.prob < 1 and 0 < model_2d.thresholds.nms < 1


def test_missing_model_in_folder_lists_what_is_there(tmp_path):
    shutil.copytree(models.bundled_models_dir() / "2D_demo", tmp_path / "mine")
    with pytest.raises(ModelError, match=r"MODEL_NAME='stardist': there is no model folder 'stardist' in "
                                         r"MODEL2D_PATH='.*'; model folders there: mine"):
        load_model("stardist", ndim=2, path=tmp_path)


def test_2d_model_given_to_3d_run_is_refused():
    with pytest.raises(ModelError, match=r"MODEL_NAME='2D_demo' \(.*\) is a 2D model, but this is the 3D run: "
                                         r"give a 3D model, or use scripts/stardist_2d.py"):
        load_model("2D_demo", ndim=3, path=models.bundled_models_dir())


def test_folder_without_config_or_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="is not a StarDist model folder: it has no config.json"):
        load_model("empty", ndim=2, path=tmp_path)
    shutil.copytree(models.bundled_models_dir() / "2D_demo", tmp_path / "noweights")
    for weights in (tmp_path / "noweights").glob("*.h5"):
        weights.unlink()
    with pytest.raises(ModelError, match=r"has no weights \(weights_best.h5 or weights_last.h5 or weights_bioimageio.h5\)"):
        load_model("noweights", ndim=2, path=tmp_path)


def test_a_model_whose_input_channels_are_not_the_runs_is_refused_before_it_loads(tmp_path, monkeypatch):
    shutil.copytree(models.bundled_models_dir() / "2D_demo", tmp_path / "rgb")
    config = json.loads((tmp_path / "rgb" / "config.json").read_text())
    config["n_channel_in"] = 3
    (tmp_path / "rgb" / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(models, "_model_class", lambda ndim: lambda *a, **k: pytest.fail("the model was built"))
    with pytest.raises(ModelError) as err:
        load_model("rgb", ndim=2, path=tmp_path, channels=1)
    assert str(err.value) == ("MODEL_NAME='rgb' takes 3 input channels, but INPUT_CHANNEL=1 gives 1: give 3 channels "
                              "in the model's order, e.g. INPUT_CHANNEL=[0, 1, 2]")
    with pytest.raises(ModelError, match=r"MODEL_NAME='2D_demo' takes 1 input channel, but INPUT_CHANNEL=\[0, 1\] gives "
                                         "2: give one channel, e.g. INPUT_CHANNEL=0"):
        load_model("2D_demo", ndim=2, channels=(0, 1))


def test_unknown_name_lists_bundled_and_registered():
    with pytest.raises(ModelError, match=r"no such bundled or registered 2D model; bundled: 2D_demo, 2D_two_channel_demo; registered: .*2D_versatile_fluo"):
        load_model("nope", ndim=2)


def test_pretrained_offline_says_how_to_get_it(monkeypatch):
    from stardist.models import StarDist2D

    def offline(name):
        raise Exception(f"URL fetch failure on https://example.invalid/{name}.zip: [Errno -2] Name or service not known")

    monkeypatch.setattr(StarDist2D, "from_pretrained", offline)
    with pytest.raises(ModelError) as err:
        load_model("2D_versatile_fluo", ndim=2)
    text = str(err.value)
    assert "the pretrained model '2D_versatile_fluo' could not be downloaded (URL fetch failure" in text
    assert "StarDist2D.from_pretrained('2D_versatile_fluo')" in text
    assert "set MODEL2D_PATH to the folder that contains '2D_versatile_fluo'" in text


def test_pretrained_damaged_cache_is_not_called_offline(monkeypatch):
    from stardist.models import StarDist2D

    def damaged(name):
        raise ValueError("Unknown layer: 'Conv2DX'")

    monkeypatch.setattr(StarDist2D, "from_pretrained", damaged)
    with pytest.raises(ModelError) as err:
        load_model("2D_versatile_fluo", ndim=2)
    text = str(err.value)
    assert "the pretrained model '2D_versatile_fluo' could not be loaded (ValueError: Unknown layer" in text
    assert "delete" in text and "offline" not in text


def test_stardist_prints_go_to_the_log_not_stdout(capsys, caplog):
    with caplog.at_level("DEBUG", logger="stardist_host.segmentation.models"):
        load_model("2D_demo", ndim=2)
    assert capsys.readouterr().out == ""
    assert "Loading network weights from 'weights_best.h5'." in caplog.text
