"""The paste-and-edit scripts (headless and in a host) and the stardist-host command, as a user runs them."""

import os
import runpy
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from conftest import ROOT, sha256

from stardist_host import MemoryImageSet, set_active_imageset
from stardist_host.cli import main

SCRIPT_2D = ROOT / "scripts" / "stardist_2d.py"
SCRIPT_3D = ROOT / "scripts" / "stardist_3d.py"


def _run(args, **kwargs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env, **kwargs)


def _edited(tmp_path, script, **settings):
    """A copy of ``script`` with settings changed, as a user edits the USER SETTINGS block."""
    lines = []
    for line in script.read_text().splitlines():
        key = line.split("=")[0].strip()
        lines.append(f"{key} = {settings.pop(key)!r}" if key in settings and "=" in line else line)
    assert not settings, f"settings not in the script: {settings}"
    copy = tmp_path / script.name
    copy.write_text("\n".join(lines) + "\n")
    return copy


def test_2d_script_headless_as_documented(tmp_path, sample_2d):
    before = sha256(sample_2d)
    out = tmp_path / "out.ome.tif"
    proc = _run([SCRIPT_2D, sample_2d, out])
    assert proc.returncode == 0, proc.stderr
    assert sha256(sample_2d) == before
    with tifffile.TiffFile(out) as tf:
        pixels = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]["Pixels"]  # what Bio-Formats/Fiji reads
        data = tf.asarray()[:, :, None]  # T, C, (Z), Y, X
    assert [pixels[k] for k in ("DimensionOrder", "SizeT", "SizeC", "SizeZ", "SizeY", "SizeX")] == ["XYZCT", 3, 3, 1, 256, 256]
    assert [c["Name"] for c in pixels["Channel"]] == ["DAPI", "Membrane", "Stardist_DAPI"]
    assert pixels["PhysicalSizeX"] == pytest.approx(0.5)
    labels = data[:, 2, 0]
    assert labels[0].max() >= 20  # the current time point (0) is segmented ...
    assert not labels[1:].any()  # ... and only it (CURRENT_TIME_POINT = True)
    np.testing.assert_array_equal(data[:, :2, 0], tifffile.imread(sample_2d))
    assert "nuclei in 1 plane(s)" in proc.stderr and "Stardist_DAPI" in proc.stderr


def test_3d_script_headless_as_documented(tmp_path, sample_3d):
    out = tmp_path / "out3d.tif"
    proc = _run([SCRIPT_3D, sample_3d, out])
    assert proc.returncode == 0, proc.stderr
    labels = tifffile.imread(out)[1]
    assert labels.shape == (31, 61, 57) and len(np.unique(labels)) - 1 >= 30


def test_bad_setting_in_script_stops_before_writing(tmp_path, sample_2d):
    script = _edited(tmp_path, SCRIPT_2D, INPUT_CHANNEL=5)
    before = sha256(sample_2d)
    out = tmp_path / "out.tif"
    proc = _run([script, sample_2d, out])
    assert proc.returncode == 2
    assert "INPUT_CHANNEL=5: the image set has channels 0..1 (DAPI, Membrane)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stardist_2d.py"]  # no output, no partial file
    assert sha256(sample_2d) == before


def test_3d_script_refuses_a_2d_model(tmp_path, sample_3d):
    script = _edited(tmp_path, SCRIPT_3D, MODEL_NAME="2D_demo", MODEL3D_PATH=str(ROOT / "models"))
    proc = _run([script, sample_3d, tmp_path / "out.tif"])
    assert proc.returncode == 2
    assert "MODEL_NAME='2D_demo'" in proc.stderr and "is a 2D model, but this is the 3D run" in proc.stderr
    assert not (tmp_path / "out.tif").exists()


def test_script_in_a_host_uses_the_active_imageset(monkeypatch):
    stack = tifffile.imread(ROOT / "data" / "nuclei_2d_t.tif")  # T, C, Y, X
    imageset = MemoryImageSet(stack[:, :, None], channel_names=["DAPI", "Membrane"], current_time_point=2)
    monkeypatch.setattr(sys, "argv", [""])  # a host's script editor passes no arguments
    set_active_imageset(imageset)
    try:
        runpy.run_path(str(SCRIPT_2D))
    finally:
        set_active_imageset(None)
    assert imageset.channel_names == ["DAPI", "Membrane", "Stardist_DAPI"]
    labels = imageset.channel(2)
    assert labels[2, 0].max() >= 20 and not labels[:2].any()


def test_cli_segment_time_point_and_planes(tmp_path, sample_2d, capsys):
    out = tmp_path / "cli.tif"
    assert main(["segment", str(sample_2d), str(out), "--time-point", "1", "--cpu", "--unique-labels"]) == 0
    labels = tifffile.imread(out)[:, 2]
    assert not labels[0].any() and not labels[2].any() and labels[1].max() >= 20
    assert "nuclei in 1 plane(s)" in capsys.readouterr().out


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, sample_2d, caplog):
    out = tmp_path / "out.tif"
    assert main(["segment", str(sample_2d), str(out), "--last-plane", "3"]) == 2
    assert "LAST_PLANE=3: the image set has planes 0..0 (or -1)" in caplog.text
    assert main(["segment", str(sample_2d), str(tmp_path / "out.png")]) == 2
    assert "must end in .tif or .tiff" in caplog.text
    assert main(["segment", str(tmp_path / "missing.tif"), str(out)]) == 2
    assert "does not exist" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_cli_models_lists_names(capsys):
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "2D bundled" in text and "2D_demo" in text and "3D_demo" in text and "2D_versatile_fluo" in text


def test_doctor_passes(capsys):
    assert main(["doctor", "--cpu"]) == 0
    text = capsys.readouterr().out
    assert "[FAIL]" not in text and "all checks passed" in text
    assert "[ OK ] 2D sample: 2D_demo on nuclei_2d_t.tif" in text and "[ OK ] 3D sample: 3D_demo" in text


def test_doctor_fails_with_the_reason(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("STARDIST_HOST_MODELS", str(tmp_path))  # no bundled models there
    assert main(["doctor", "--cpu"]) == 1
    text = capsys.readouterr().out
    assert "[FAIL] bundled models: RuntimeError: no bundled models in" in text and "some checks failed" in text
