"""bioimage.io packages: export a model folder, validate it, import it back, and refuse what cannot run.

The oracles: bioimageio.spec for the package's form, stardist's own ``predict``
for the test output, and stardist's ``predict_instances`` with the bundled
model for the labels of a model loaded from a package.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from stardist_host.cli import main
from stardist_host.errors import EXIT_USER_ERROR, ModelError
from stardist_host.segmentation import bioimageio
from stardist_host.segmentation.models import bundled_models_dir, export_model, import_package, load_model, run_percentiles

DEMO_2D = bundled_models_dir() / "2D_demo"
WEIGHTS = DEMO_2D / "weights_best.h5"


@pytest.fixture(scope="module")
def package_2d(tmp_path_factory) -> Path:
    """2D_demo as a package, written once for the module (with a pixel size, as a trained model records it)."""
    out = tmp_path_factory.mktemp("export") / "2D_demo.zip"
    return export_model("2D_demo", out, pixel_size_um=(0.5, 0.5), authors=["Test Author"])


@pytest.fixture(scope="module")
def model_2d():
    return load_model("2D_demo", ndim=2)


def _rdf(package: Path) -> dict:
    with zipfile.ZipFile(package) as z:
        return yaml.safe_load(z.read("rdf.yaml"))


def _zip(path: Path, files: dict[str, bytes | str | dict]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, content in files.items():
            if isinstance(content, dict):
                content = yaml.safe_dump(content)
            z.writestr(name, content)
    return path


def _stardist_04_rdf(**changes) -> dict:
    """A format 0.4 description as stardist's export_bioimageio writes it (TF SavedModel + the h5 attachment)."""
    rdf = {
        "format_version": "0.4.10", "type": "model", "name": "StarDist demo 0.4",
        "inputs": [{"name": "input", "axes": "byxc", "data_type": "float32",
                    "preprocessing": [{"name": "scale_range", "kwargs": {
                        "mode": "per_sample", "axes": "yx", "min_percentile": 3.0, "max_percentile": 99.5}}]}],
        "weights": {"tensorflow_saved_model_bundle": {"source": "TF_SavedModel.zip", "tensorflow_version": "1.15"}},
        "attachments": {"files": ["stardist_weights.h5"]},
        "config": {"stardist": {"python_version": "0.8.3", "thresholds": {"prob": 0.6, "nms": 0.3},
                                "weights": "stardist_weights.h5",
                                "config": json.loads((DEMO_2D / "config.json").read_text())}},
    }
    rdf.update(changes)
    return rdf


@pytest.fixture
def stardist_04_zip(tmp_path) -> Path:
    return _zip(tmp_path / "stardist04.zip", {"rdf.yaml": _stardist_04_rdf(),
                                                "stardist_weights.h5": WEIGHTS.read_bytes()})


# --------------------------------------------------------------------------- export


def test_export_is_a_valid_bioimageio_package(package_2d):
    pytest.importorskip("bioimageio.spec", reason="bioimageio.spec (extra 'bioimageio') is not installed")
    from bioimageio.spec import load_description

    description = load_description(str(package_2d), perform_io_checks=True)
    assert description.validation_summary.status == "valid-format", description.validation_summary.format()
    assert bioimageio.validate_package(package_2d) is None


def test_export_records_config_thresholds_weights_percentiles_and_pixel_size(package_2d):
    rdf = _rdf(package_2d)
    stardist = rdf["config"]["stardist"]
    assert stardist["config"] == json.loads((DEMO_2D / "config.json").read_text())
    assert stardist["thresholds"] == json.loads((DEMO_2D / "thresholds.json").read_text())
    with zipfile.ZipFile(package_2d) as z:
        assert z.read(stardist["weights"]) == WEIGHTS.read_bytes()
    card = json.loads((DEMO_2D / "model_card.json").read_text())
    scale_range = rdf["inputs"][0]["preprocessing"][0]
    assert scale_range["id"] == "scale_range"
    assert [scale_range["kwargs"]["min_percentile"], scale_range["kwargs"]["max_percentile"]] == \
        card["normalization_percentiles"]
    assert bioimageio.read_package(package_2d).pixel_size_um == (0.5, 0.5)
    assert rdf["authors"] == [{"name": "Test Author"}]


def test_export_test_output_is_stardists_prediction(package_2d, model_2d):
    from csbdeep.utils import normalize

    with zipfile.ZipFile(package_2d) as z:
        x = np.load(z.open("test_input.npy"))
        y = np.load(z.open("test_output.npy"))
    assert x.shape == (1, 128, 128, 1) and y.shape == (1, 128, 128, 33)
    prob, dist = model_2d.predict(normalize(x[0], 1, 99.8, axis=(0, 1)))  # stardist's own, on the grid (2, 2)
    np.testing.assert_allclose(y[0, ::2, ::2, 0], prob, atol=1e-5)
    # the raw network output, as in stardist's own packages; stardist's predict clips the distances at 1e-3
    np.testing.assert_allclose(np.maximum(y[0, ::2, ::2, 1:], 1e-3), dist, atol=1e-4)


def test_export_refuses_a_name_without_zip_and_an_existing_file(tmp_path):
    with pytest.raises(ModelError, match="a bioimage.io package is a .zip file"):
        export_model("2D_demo", tmp_path / "out.tar")
    (tmp_path / "out.zip").write_bytes(b"kept")
    assert main(["models", "export", "2D_demo", str(tmp_path / "out.zip")]) == EXIT_USER_ERROR
    assert (tmp_path / "out.zip").read_bytes() == b"kept"


# --------------------------------------------------------------------------- import


def test_import_writes_a_model_folder_that_loads_with_the_packages_model(package_2d, tmp_path, model_2d):
    folder = import_package(package_2d, path=tmp_path, name="imported")
    assert json.loads((folder / "config.json").read_text()) == json.loads((DEMO_2D / "config.json").read_text())
    assert json.loads((folder / "thresholds.json").read_text()) == json.loads((DEMO_2D / "thresholds.json").read_text())
    assert (folder / "weights_best.h5").read_bytes() == WEIGHTS.read_bytes()
    assert (folder / "bioimageio" / "rdf.yaml").is_file()  # the package, kept as stardist's import keeps it
    imported = load_model("imported", ndim=2, path=tmp_path)
    assert imported.thresholds == model_2d.thresholds
    image = np.load(zipfile.ZipFile(package_2d).open("test_input.npy"))[0, ..., 0]
    from csbdeep.utils import normalize

    x = normalize(image, 1, 99.8)
    labels, _ = imported.predict_instances(x)
    expected, _ = model_2d.predict_instances(x)  # the oracle: the bundled model
    assert labels.max() > 3
    np.testing.assert_array_equal(labels, expected)


def test_model_name_may_name_the_zip_and_the_packages_thresholds_are_used(stardist_04_zip, tmp_path):
    model = load_model(str(stardist_04_zip), ndim=2)
    assert (model.thresholds.prob, model.thresholds.nms) == (0.6, 0.3)
    model = load_model(stardist_04_zip.name, ndim=2, path=stardist_04_zip.parent)  # inside MODEL2D_PATH
    assert (model.thresholds.prob, model.thresholds.nms) == (0.6, 0.3)
    assert list(tmp_path.iterdir()) == [stardist_04_zip]  # loading unpacks nothing beside the package


def test_a_stardist_04_package_and_its_unpacked_folder_read_alike(stardist_04_zip, tmp_path):
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(stardist_04_zip).extractall(unpacked)
    for source in (stardist_04_zip, unpacked):
        package = bioimageio.read_package(source)
        assert package.percentiles == (3.0, 99.5)
        assert package.thresholds == {"prob": 0.6, "nms": 0.3}
        assert package.weights == "stardist_weights.h5"
        assert package.weights_formats == ("tensorflow_saved_model_bundle",)
        assert package.pixel_size_um is None


def test_the_packages_percentiles_replace_the_runs_and_say_so(stardist_04_zip, tmp_path, caplog):
    assert run_percentiles(str(stardist_04_zip), (1.0, 99.8), ndim=2) == (3.0, 99.5)
    assert "scale_range percentiles 3.0..99.5; they replace PERCENTILE_LOW=1.0, PERCENTILE_HIGH=99.8" in caplog.text
    folder = import_package(stardist_04_zip, path=tmp_path, name="installed")
    assert run_percentiles("installed", (1.0, 99.8), ndim=2, path=tmp_path) == (3.0, 99.5)
    assert run_percentiles("2D_demo", (2.0, 99.0), ndim=2) == (2.0, 99.0)  # a model folder of ours: the run's
    assert folder.name == "installed"


def test_a_run_through_a_package_normalises_with_its_percentiles(stardist_04_zip, tmp_path, caplog):
    """In process and through the label store (--resume), the package's 3.0..99.5 replace the settings' 1.0..99.8."""
    import tifffile
    from stardist.data import test_image_nuclei_2d

    from stardist_host.io.imagesets import MemoryImageSet
    from stardist_host.runs.files import segment_file
    from stardist_host.runs.local import run
    from stardist_host.segmentation.normalisation import Normalisation
    from stardist_host.segmentation.plan import make_plan
    from stardist_host.segmentation.segment import segment
    from stardist_host.segmentation.settings import Settings

    image = test_image_nuclei_2d()[:128, :128]
    settings = Settings(ndim=2, model_name=str(stardist_04_zip), use_gpu=False, separate_process=False)
    ims = MemoryImageSet(image[None, None, None])
    result = run(settings, ims)
    assert "they replace PERCENTILE_LOW=1.0, PERCENTILE_HIGH=99.8" in caplog.text
    # the oracle: the engine given the package's percentiles by hand
    oracle = MemoryImageSet(image[None, None, None])
    expected = segment(oracle, load_model(str(stardist_04_zip), ndim=2), make_plan(settings, oracle),
                       output_name="labels", normalisation=Normalisation(percentiles=(3.0, 99.5)))
    np.testing.assert_array_equal(ims.channel(result.channel), oracle.channel(expected.channel))
    tifffile.imwrite(tmp_path / "in.tif", image)
    caplog.clear()
    segment_file(settings, tmp_path / "in.tif", tmp_path / "out.ome.tif", resume=True)
    assert "they replace PERCENTILE_LOW=1.0, PERCENTILE_HIGH=99.8" in caplog.text
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.ome.tif")[-1], oracle.channel(expected.channel)[0, 0])


def test_models_import_on_the_command_line(stardist_04_zip, tmp_path, capsys, caplog):
    models = tmp_path / "models"
    models.mkdir()
    assert main(["models", "import", str(stardist_04_zip), "--model-path", str(models)]) == 0
    assert (models / "StarDist_demo_0.4" / "weights_best.h5").is_file()
    said = capsys.readouterr().out
    assert "segment with --model-name StarDist_demo_0.4 --model-path" in said
    assert said.rstrip().endswith("--percentile-low 3 --percentile-high 99.5")  # the package's scale_range
    caplog.clear()
    assert main(["models", "import", str(stardist_04_zip), "--model-path", str(models)]) == EXIT_USER_ERROR
    assert "exists already; give --name to install it under another name, or --overwrite to replace it" in \
        caplog.text
    assert main(["models", "import", str(stardist_04_zip), "--model-path", str(models), "--overwrite"]) == 0
    assert sorted(p.name for p in models.iterdir()) == ["StarDist_demo_0.4"]  # no scratch folder left


def test_models_without_further_words_still_lists(capsys):
    assert main(["models", "--dim", "2"]) == 0
    assert capsys.readouterr().out.startswith(f"2D bundled ({bundled_models_dir()}): 2D_demo")


# --------------------------------------------------------------------------- refused


def _tiny_h5() -> bytes:
    return b"\x89HDF\r\n\x1a\n" + b"\0" * 8


BAD = {
    "not a zip": ({"@raw": b"PK? no"}, "is not a zip file; a bioimage.io model package is a .zip"),
    "no description": ({"weights.h5": _tiny_h5()}, "has no rdf.yaml or bioimageio.yaml at its top"),
    "a dataset": ({"rdf.yaml": {"type": "dataset", "name": "d"}}, "describes a bioimage.io dataset, not a model"),
    "another framework": (
        {"rdf.yaml": {"type": "model", "name": "unet", "weights": {"pytorch_state_dict": {"source": "w.pt"}},
                      "config": {"other": 1}}, "w.pt": b"torch"},
        "is a bioimage.io model (weights pytorch_state_dict) but not a StarDist one: it has no config.stardist"),
    "weights we cannot run": (
        {"rdf.yaml": _stardist_04_rdf(weights={"onnx": {"source": "m.onnx"}, "torchscript": {"source": "m.pt"}}),
         "m.onnx": b"onnx"},
        "config.stardist.weights names 'stardist_weights.h5', which is not in the package; its weights are weights "
        "onnx, torchscript; stardist-host needs a Keras HDF5 weights file named in config.stardist.weights"),
    "weights not HDF5": (
        {"rdf.yaml": _stardist_04_rdf(), "stardist_weights.h5": b"not hdf5"},
        "config.stardist.weights names stardist_weights.h5, which is not an HDF5 file"),
    "weights outside the package": (
        {"rdf.yaml": _stardist_04_rdf(config={"stardist": {**_stardist_04_rdf()["config"]["stardist"],
                                                           "weights": "../stardist_weights.h5"}})},
        "config.stardist.weights names '../stardist_weights.h5', which is not in the package"),
    "preprocessing we do not apply": (
        {"rdf.yaml": _stardist_04_rdf(inputs=[{"name": "input", "axes": "byxc", "preprocessing": [
            {"name": "zero_mean_unit_variance", "kwargs": {"mode": "per_sample", "axes": "yx"}}]}]),
         "stardist_weights.h5": _tiny_h5()},
        "preprocesses its input with 'zero_mean_unit_variance', which stardist-host does not apply"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_package_we_cannot_run_gets_one_clear_error_and_nothing_is_written(case, tmp_path, caplog):
    files, message = BAD[case]
    package = tmp_path / "package.zip"
    if "@raw" in files:
        package.write_bytes(files["@raw"])
    else:
        _zip(package, files)
    models = tmp_path / "models"
    models.mkdir()
    with pytest.raises(ModelError, match="^'.*package.zip': ") as err:
        import_package(package, path=models)
    assert message in str(err.value)
    assert main(["models", "import", str(package), "--model-path", str(models)]) == EXIT_USER_ERROR
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0]
    assert list(models.iterdir()) == []


def test_a_missing_package_on_the_command_line_names_the_option(tmp_path, caplog):
    from stardist_host.doctor import SAMPLE_2D, samples_dir

    out = tmp_path / "out.ome.tif"
    code = main(["segment", str(samples_dir() / SAMPLE_2D), str(out), "--model-name", str(tmp_path / "no.zip")])
    assert code == EXIT_USER_ERROR
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"--model-name {tmp_path / 'no.zip'}: there is no such bioimage.io package "
                      f"(no file {tmp_path / 'no.zip'})"]
    assert not out.exists()


def test_an_unpacked_folder_is_a_package_and_a_model_folder_is_not(stardist_04_zip, tmp_path):
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(stardist_04_zip).extractall(unpacked)
    assert bioimageio.is_package(unpacked) and bioimageio.is_package(stardist_04_zip)
    assert not bioimageio.is_package(DEMO_2D)
    shutil.copy(DEMO_2D / "config.json", unpacked)
    assert not bioimageio.is_package(unpacked)  # a model folder that happens to hold an rdf.yaml


def test_members_that_leave_the_package_are_not_unpacked(tmp_path):
    package = _zip(tmp_path / "package.zip", {"rdf.yaml": _stardist_04_rdf(), "stardist_weights.h5": WEIGHTS.read_bytes(),
                                              "../../../../outside.txt": b"zip slip", "docs/ok.md": b"kept"})
    models = tmp_path / "a" / "b" / "models"
    models.mkdir(parents=True)
    folder = import_package(package, path=models, name="m")
    assert (folder / "bioimageio" / "docs" / "ok.md").read_bytes() == b"kept"
    assert sorted(p.name for p in tmp_path.rglob("outside.txt")) == []


def test_the_packages_pixel_size_is_the_models_for_scale_auto(package_2d, tmp_path):
    """Loaded from the .zip or installed from it, the model records the package's pixel size: SCALE="auto" uses it."""
    from stardist_host.segmentation.engine import run_scale
    from stardist_host.segmentation.models import trained_sizes

    import_package(package_2d, path=tmp_path, name="demo")
    for model in (load_model(str(package_2d), ndim=2), load_model("demo", ndim=2, path=tmp_path)):
        assert trained_sizes(model).pixel_size_um == (0.5, 0.5)
        assert run_scale(model, (None, 0.25, 0.25), unit_shape=(256, 256)) == (0.5, 0.5)  # twice the density
