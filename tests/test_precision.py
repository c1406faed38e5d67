"""PRECISION: the network in float32 or mixed (bfloat16 on CPUs with native support), on every path.

The suite runs PRECISION="auto" as float32 (conftest sets STARDIST_HOST_NATIVE_BF16=0); the tests here
that need bfloat16 set it to 1, so they run on any CPU whose oneDNN has bfloat16 kernels.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import tifffile
from conftest import sample_planes_tczyx

from stardist_host import MemoryImageSet
from stardist_host.cli import main
from stardist_host.errors import SettingsError
from stardist_host.segmentation import precision as prec
from stardist_host.segmentation.precision import Support, configure_precision, cpu_support, resolve
from stardist_host.runs.local import run
from stardist_host.segmentation.settings import Settings
from stardist_host.testing import synthetic

ENV = "STARDIST_HOST_NATIVE_BF16"


@pytest.fixture
def bf16(monkeypatch):
    """bfloat16 counted as native, whatever this CPU's flags say."""
    monkeypatch.setenv(ENV, "1")


def _cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    return str(path)


# --- detection and choice -------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, dtype, reason", [
    ("fpu sse2 avx2 avx512f avx512_bf16", "bfloat16", "the CPU has AVX512_BF16"),
    ("fpu avx512f amx_bf16 amx_tile avx512_bf16", "bfloat16", "the CPU has AMX_BF16"),
    ("fpu sse2 avx2 avx512f", None, "the CPU has neither AMX_BF16 nor AVX512_BF16"),
])
def test_cpu_support_is_read_from_the_cpu_flags(tmp_path, monkeypatch, flags, dtype, reason):
    monkeypatch.delenv(ENV)
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setattr(prec, "_onednn_enabled", lambda: True)
    assert cpu_support(_cpuinfo(tmp_path, flags)) == Support(dtype, reason)


def test_cpu_support_needs_onednn_and_known_flags(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV)
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    support = cpu_support(_cpuinfo(tmp_path, "avx512f avx512_bf16"))
    assert support.dtype is None and "AVX512_BF16 but TensorFlow's oneDNN is off" in support.reason
    monkeypatch.setattr(prec, "_cpu_flags", lambda path: None)  # no /proc/cpuinfo, no py-cpuinfo
    support = cpu_support(str(tmp_path / "missing"))
    assert support.dtype is None and "does not tell the CPU's flags" in support.reason and ENV in support.reason


@pytest.mark.parametrize("env, system, tensorflow_says, expected", [
    ("0", "Linux", True, False), ("1", "Windows", False, True),
    ("", "Linux", False, True),  # TensorFlow 2.10 on Linux: oneDNN on, though IsMklEnabled says False
    ("", "Windows", False, False), ("", "Windows", True, True),
])
def test_onednn_from_the_environment_else_the_platform_s_default(monkeypatch, env, system, tensorflow_says, expected):
    from tensorflow.python.util import _pywrap_util_port

    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", env)
    monkeypatch.setattr(prec.platform, "system", lambda: system)
    monkeypatch.setattr(prec.platform, "machine", lambda: "x86_64" if system == "Linux" else "AMD64")
    monkeypatch.setattr(_pywrap_util_port, "IsMklEnabled", lambda: tensorflow_says)
    assert prec._onednn_enabled() is expected


@pytest.mark.parametrize("value, dtype", [("0", None), ("1", "bfloat16")])
def test_environment_overrides_the_detection(tmp_path, monkeypatch, value, dtype):
    monkeypatch.setenv(ENV, value)
    flags = "avx512_bf16" if dtype is None else "sse2"  # the opposite of what is forced
    assert cpu_support(_cpuinfo(tmp_path, flags)) == Support(dtype, f"{ENV}={value}")


@pytest.mark.parametrize("details, dtype, reason", [
    ({"device_name": "Tesla T4", "compute_capability": (7, 5)}, "float16",
     "Tesla T4 has tensor cores (compute capability 7.5)"),
    ({"device_name": "Quadro P4000", "compute_capability": (6, 1)}, None,
     "Quadro P4000 (compute capability 6.1) has no tensor cores (7.0 or newer)"),
    ({}, None, "the compute capability of /physical_device:GPU:0 is unknown"),
])
def test_gpu_support_is_read_from_the_compute_capability(monkeypatch, details, dtype, reason):
    import tensorflow as tf

    gpu = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
    monkeypatch.setattr(tf.config, "get_visible_devices", lambda kind=None: [gpu])
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda device: details)
    assert prec.gpu_support() == Support(dtype, reason)


def test_choice_and_the_line_that_says_why(caplog):
    caplog.set_level(logging.INFO, logger="stardist_host")
    native, none = Support("bfloat16", "the CPU has AMX_BF16"), Support(None, "the CPU has neither X nor Y")
    assert resolve("auto", native) == resolve("mixed", native) == "bfloat16"
    assert resolve("float32", native) == "float32"
    assert resolve("mixed", Support("float16", "A100 has tensor cores"), device="GPU") == "float16"
    caplog.clear()
    assert resolve("auto", none) == "float32"
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "network in float32: no native 16-bit arithmetic on the CPU (the CPU has neither X nor Y)")]
    caplog.clear()
    assert resolve("mixed", none) == "float32"
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "mixed precision asked for, but the CPU has neither X nor Y: the network runs in float32 "
                    "(emulated 16-bit arithmetic would be slower)")]


def test_bad_precision_is_refused_before_anything_runs(tmp_path, sample_2d, caplog, capsys):
    with pytest.raises(SettingsError, match=r"^PRECISION='half': must be one of 'auto', 'float32', 'mixed'$"):
        Settings(precision="half")
    with pytest.raises(SettingsError, match=r"PRECISION=True: must be one of 'auto', 'float32', 'mixed'"):
        Settings.from_script({"PRECISION": True}, ndim=3)
    with pytest.raises(SystemExit) as stop:
        main(["segment", str(sample_2d), str(tmp_path / "out.ome.tif"), "--precision", "half"])
    assert stop.value.code == 2
    assert "argument --precision: 'half' is not one of auto, float32, mixed" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_configure_precision_switches_tensorflow_s_rewrite(bf16):
    import tensorflow as tf

    assert configure_precision("mixed", on_gpu=False) == "bfloat16"
    assert tf.config.optimizer.get_experimental_options()["auto_mixed_precision_onednn_bfloat16"] is True
    assert configure_precision("float32", on_gpu=False) == "float32"
    assert tf.config.optimizer.get_experimental_options()["auto_mixed_precision_onednn_bfloat16"] is False


def test_a_tensorflow_without_the_rewrite_runs_float32_and_says_so(bf16, monkeypatch, caplog):
    monkeypatch.setitem(prec._REWRITES, "bfloat16", "no_such_rewrite_in_this_tensorflow")
    assert configure_precision("mixed", on_gpu=False) == "float32"
    assert "has no 'no_such_rewrite_in_this_tensorflow' graph rewrite: the network runs in float32" in caplog.text


# --- what mixed precision does to the network and the labels --------------------------------------------------


def test_mixed_really_runs_the_network_in_bfloat16(bf16, model_2d):
    from csbdeep.utils import normalize
    from stardist.data import test_image_nuclei_2d

    from stardist_host.segmentation.stardist_compat import network_function

    x = normalize(test_image_nuclei_2d()[:256, :256], 1, 99.8).astype(np.float32)[None, ..., None]
    outputs = {}
    for choice in ("float32", "mixed", "float32"):
        configure_precision(choice, on_gpu=False)
        outputs.setdefault(choice, []).append(network_function(model_2d)(x)[0])
    f32, mixed = outputs["float32"], outputs["mixed"][0]
    assert f32[0].dtype == mixed.dtype == np.float32
    assert np.array_equal(f32[0], f32[1])  # float32 again after mixed
    difference = np.abs(mixed - f32[0])
    assert 1e-4 < difference.max() < 0.1 and difference.mean() < 0.01  # bfloat16's 8 bits, not another network


def _f1(truth, predicted) -> float:
    from stardist.matching import matching

    return matching(truth, predicted, thresh=0.5).f1


def _accuracy(truth, predicted) -> float:
    from stardist.matching import matching

    return matching(truth, predicted, thresh=0.5).accuracy


def _run(data, ndim: int, choice: str, **options):
    ims = MemoryImageSet(data, channel_names=["DAPI"], **options)
    result = run(Settings(ndim=ndim, precision=choice, current_time_point=False, use_gpu=False), ims)
    labels = np.asarray(ims.channel(result.channel))
    return result, labels


@pytest.mark.parametrize("ndim", [2, 3])
def test_mixed_labels_agree_with_float32_on_the_bundled_samples(bf16, sample_2d, sample_3d, ndim):
    if ndim == 2:
        data, options = tifffile.imread(sample_2d)[:, :1, None], {}  # (T, C, Y, X): DAPI of 3 time points
    else:
        data, options = tifffile.imread(sample_3d)[None, None], {"voxel_size": (2.0, 1.0, 1.0)}
    (r32, f32), (r16, mixed) = (_run(data, ndim, c, **options) for c in ("float32", "mixed"))
    assert (r32.precision, r16.precision) == ("float32", "bfloat16")
    assert " in bfloat16, " in r16.summary() and " in float32, " in r32.summary()
    assert r32.total > (60 if ndim == 2 else 40)
    for a, b in zip(f32.reshape(-1, *f32.shape[-ndim:]), mixed.reshape(-1, *mixed.shape[-ndim:])):
        assert _f1(a, b) >= 0.99


@pytest.mark.parametrize("ndim", [2, 3])
def test_mixed_is_as_accurate_as_float32_against_known_truth(bf16, ndim):
    shape = (384, 384) if ndim == 2 else (32, 96, 96)
    image, truth = synthetic.nuclei(shape, 120 if ndim == 2 else 60, seed=7)
    data = image[None, None, None] if ndim == 2 else image[None, None]
    scores = {}
    for choice in ("float32", "mixed"):
        result, labels = _run(data, ndim, choice, voxel_size=None if ndim == 2 else (1.0, 1.0, 1.0))
        scores[choice] = _accuracy(truth, labels.reshape(shape))
        assert result.total > 30
    assert scores["float32"] > 0.5
    assert abs(scores["mixed"] - scores["float32"]) <= 0.01, scores


# --- every path that runs the network sets it ----------------------------------------------------------------


def test_command_line_summary_says_which_precision_ran(bf16, tmp_path, sample_2d, capsys, monkeypatch, caplog):
    out = tmp_path / "mixed.ome.tif"
    assert main(["segment", str(sample_2d), str(out), "--cpu", "-q", "--precision", "mixed"]) == 0
    assert " in bfloat16, " in capsys.readouterr().out
    monkeypatch.setenv(ENV, "0")  # a CPU without native bfloat16
    out = tmp_path / "auto.ome.tif"
    assert main(["segment", str(sample_2d), str(out), "--cpu", "-q", "--precision", "mixed"]) == 0
    assert " in float32, " in capsys.readouterr().out
    assert f"mixed precision asked for, but {ENV}=0: the network runs in float32" in caplog.text


def test_the_separate_process_runs_the_precision_asked_for(bf16):
    data = sample_planes_tczyx(t=1, z=3)
    results = {}
    for separate in (False, True):
        ims = MemoryImageSet(data, channel_names=["DAPI"])
        result = run(Settings(precision="mixed", separate_process=separate, use_gpu=False), ims)
        results[separate] = (result.precision, np.asarray(ims.channel(result.channel)))
    assert results[True][0] == results[False][0] == "bfloat16"
    assert np.array_equal(results[True][1], results[False][1])


def test_a_dask_worker_loads_its_model_in_the_precision_of_the_job(bf16):
    import tensorflow as tf

    from stardist_host.runs.distributed import _model, _release

    try:
        assert _model(Settings(ndim=2, use_gpu=False, precision="mixed")).name == "2D_demo"
        assert tf.config.optimizer.get_experimental_options()["auto_mixed_precision_onednn_bfloat16"] is True
    finally:
        _release("model")


def test_evaluate_takes_precision(bf16, tmp_path, capsys):
    from stardist.data import test_image_nuclei_2d

    image, truth = test_image_nuclei_2d(return_mask=True)
    tifffile.imwrite(tmp_path / "img.tif", image[:256, :256])
    tifffile.imwrite(tmp_path / "mask.tif", truth[:256, :256].astype(np.uint16))
    scores = {}
    for choice, dtype in (("float32", "float32"), ("mixed", "bfloat16")):
        out = tmp_path / f"{choice}.json"
        assert main(["evaluate", "--model-name", "2D_demo", "--images", str(tmp_path / "img.tif"), "--masks",
                     str(tmp_path / "mask.tif"), "--cpu", "--precision", choice, "--out", str(out)]) == 0
        assert f"network in {dtype}:" in capsys.readouterr().out
        written = json.loads(out.read_text())
        assert written["precision"] == dtype
        scores[choice] = {r["iou"]: r["f1"] for r in written["scores"]}
    assert scores["float32"][0.5] > 0.7
    assert abs(scores["mixed"][0.5] - scores["float32"][0.5]) <= 0.01
