"""The paste-and-edit scripts (headless and in a host) and the stardist-host command, as a user runs them."""

import os
import runpy
import subprocess
import sys
from pathlib import Path

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
    assert "Stardist_DAPI" in proc.stderr and "nuclei in 1 plane(s)" not in proc.stderr  # the summary once: on stdout
    assert proc.stdout.startswith(f"{out}: ") and "nuclei in 1 plane(s)" in proc.stdout  # the summary, as stardist-host segment prints it, in script words
    assert proc.stdout.rstrip().endswith("; time point 0 of 3; CURRENT_TIME_POINT = False for all")


def test_3d_script_headless_as_documented(tmp_path, sample_3d):
    out = tmp_path / "out3d.tif"
    proc = _run([SCRIPT_3D, sample_3d, out])
    assert proc.returncode == 0, proc.stderr
    labels = tifffile.imread(out)[1]
    assert labels.shape == (31, 61, 57) and len(np.unique(labels)) - 1 >= 30
    assert "nuclei in 1 volume(s)" in proc.stdout and "time point" not in proc.stdout  # one time point: no note


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


@pytest.mark.parametrize("argv", [[""], ["napari", "cells.tif"]], ids=["no arguments", "the host's own arguments"])
def test_script_in_a_host_uses_the_active_imageset(monkeypatch, argv):
    stack = tifffile.imread(ROOT / "data" / "nuclei_2d_t.tif")  # T, C, Y, X
    imageset = MemoryImageSet(stack[:, :, None], channel_names=["DAPI", "Membrane"], current_time_point=2)
    monkeypatch.setattr(sys, "argv", argv)  # a script editor passes none; a host started on a file has its own
    set_active_imageset(imageset)
    try:
        runpy.run_path(str(SCRIPT_2D))
    finally:
        set_active_imageset(None)
    assert imageset.channel_names == ["DAPI", "Membrane", "Stardist_DAPI"]
    labels = imageset.channel(2)
    assert labels[2, 0].max() >= 20 and not labels[:2].any()


def test_cli_segment_time_point(tmp_path, sample_2d, capsys):
    out = tmp_path / "cli.tif"
    assert main(["segment", str(sample_2d), str(out), "--time-point", "1", "--cpu"]) == 0
    labels = tifffile.imread(out)[:, 2]
    assert not labels[0].any() and not labels[2].any() and labels[1].max() >= 20
    printed = capsys.readouterr().out
    assert "nuclei in 1 plane(s)" in printed
    assert printed.rstrip().endswith("; time point 1 of 3; --all-time-points for all")


def test_cli_unique_labels_across_time_points(tmp_path, sample_2d, capsys):
    out = tmp_path / "cli.tif"
    assert main(["segment", str(sample_2d), str(out), "--all-time-points", "--cpu", "--unique-labels"]) == 0
    assert "time point" not in capsys.readouterr().out  # all segmented: no note
    labels = tifffile.imread(out)[:, 2]
    per_t = [set(np.unique(labels[t])) - {0} for t in range(3)]
    assert all(len(ids) >= 20 for ids in per_t)
    assert not (per_t[0] & per_t[1]) and not (per_t[0] & per_t[2]) and not (per_t[1] & per_t[2])
    # and within each time point, each label is one object: the ids are the consecutive run after the previous ones
    assert sorted(per_t[0] | per_t[1] | per_t[2]) == list(range(1, sum(map(len, per_t)) + 1))


def test_cli_exports_objects_for_fiji_and_qupath(tmp_path, sample_2d):
    import json

    import roifile

    out = tmp_path / "seg.ome.tif"
    assert main(["segment", str(sample_2d), str(out), "--time-point", "1", "--cpu", "--export-objects", "roi,geojson"]) == 0
    labels = tifffile.imread(out)[1, 2]  # T, C, Y, X: the single plane is squeezed
    n = len(np.unique(labels)) - 1
    rois = roifile.roiread(tmp_path / "seg_rois.zip")
    assert n >= 20 and len(rois) == n
    assert {(r.t_position, r.z_position) for r in rois} == {(2, 1)}  # time point 1, plane 0, 1-based as in Fiji
    features = json.loads((tmp_path / "seg.geojson").read_text(encoding="utf-8"))["features"]
    assert sorted(f["properties"]["label"] for f in features) == sorted(np.unique(labels)[1:].tolist())


def test_cli_export_objects_refused_before_the_model_loads(tmp_path, sample_2d, caplog, no_model):
    (tmp_path / "seg_rois.zip").write_bytes(b"earlier")
    assert main(["segment", str(sample_2d), str(tmp_path / "seg.ome.tif"), "--export-objects", "roi"]) == 2
    assert "seg_rois.zip' exists already" in caplog.text
    assert (tmp_path / "seg_rois.zip").read_bytes() == b"earlier" and not (tmp_path / "seg.ome.tif").exists()


@pytest.mark.parametrize("t", ["5", "-1"])
def test_cli_time_point_outside_the_file(tmp_path, sample_2d, caplog, t):
    out = tmp_path / "out.tif"
    assert main(["segment", str(sample_2d), str(out), "--time-point", t]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"--time-point={t}: nuclei_2d_t.tif has time points 0..2"]
    assert list(tmp_path.iterdir()) == []


# ----- output policy --------------------------------------------------------------------------------------------

@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails loudly: a test with this fixture proves the run stopped before it."""
    from stardist_host.segmentation import models

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(models, "load_model", load_model)


def _errors(caplog):
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


def test_existing_output_refused_without_overwrite(tmp_path, sample_2d, caplog, no_model):
    out = tmp_path / "out.tif"
    out.write_bytes(b"an older result")
    assert main(["segment", str(sample_2d), str(out)]) == 2
    assert _errors(caplog) == [f"output {str(out)!r} exists already; choose another name, or replace it with "
                               "--overwrite (scripts: OVERWRITE = True)"]
    assert out.read_bytes() == b"an older result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]  # no lock, no partial file left


def test_overwrite_replaces_the_output(tmp_path, sample_2d):
    out = tmp_path / "out.tif"
    out.write_bytes(b"an older result")
    assert main(["segment", str(sample_2d), str(out), "--overwrite", "--cpu"]) == 0
    assert tifffile.imread(out).shape == (3, 3, 256, 256)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]


def test_output_folder_and_read_only_folder_refused_before_the_model_loads(tmp_path, sample_2d, caplog, no_model,
                                                                             monkeypatch):
    folder = tmp_path / "out.tif"
    folder.mkdir()
    assert main(["segment", str(sample_2d), str(folder)]) == 2
    assert "is a folder; give a file name inside it" in _errors(caplog)[-1]
    locked = tmp_path / "locked"
    locked.mkdir()
    from stardist_host.io import files

    # a read-only folder, also where the tests run as root (who may write anywhere)
    monkeypatch.setattr(files.os, "access", lambda path, mode: Path(path) != locked)
    assert main(["segment", str(sample_2d), str(locked / "out.tif")]) == 2
    assert _errors(caplog)[-1] == (f"output {str(locked / 'out.tif')!r}: the folder {str(locked)!r} cannot be "
                                   "written (read-only?)")
    assert list(locked.iterdir()) == [] and list(folder.iterdir()) == []


def test_output_in_use_by_another_run(tmp_path, sample_2d, caplog, no_model):
    from stardist_host.io.files import OutputLock

    out = tmp_path / "out.tif"
    with OutputLock(out):
        assert main(["segment", str(sample_2d), str(out)]) == 2
    assert f"output {str(out)!r} is in use by another run (process {os.getpid()})" in _errors(caplog)[0]
    assert list(tmp_path.iterdir()) == []


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_lock_and_partial_are_removed_and_logged(tmp_path, sample_2d, caplog, monkeypatch):
    from stardist_host.segmentation import models

    pid = _dead_pid()
    out = tmp_path / "out.tif"
    lock, partial = tmp_path / ".out.tif.lock", tmp_path / f".out.tif.{pid}-0123abcd.partial"
    lock.write_text(str(pid))
    partial.write_bytes(b"x" * 1000)
    other = tmp_path / f".other.tif.{pid}-0123abcd.partial"  # another output's: left alone
    other.write_bytes(b"y")
    seen = []

    def load_model(*args, **kwargs):
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        raise models.ModelError("stop here")

    monkeypatch.setattr(models, "load_model", load_model)
    assert main(["segment", str(sample_2d), str(out), "--cpu"]) == 2
    # when the model loads, the stale files are gone and the lock is this run's
    assert seen == [sorted([".out.tif.lock", other.name])]
    text = caplog.text
    assert f"removing {lock}, left by a run (process {pid}) that no longer runs" in text
    assert f"removing {partial} (0.0 MB) left by an interrupted run" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name]


@pytest.mark.parametrize("stop", [KeyboardInterrupt, "Cancelled"])
def test_ctrl_c_and_cancel_exit_130_in_one_line(tmp_path, sample_2d, caplog, monkeypatch, stop):
    from stardist_host.errors import Cancelled
    from stardist_host.segmentation import models

    error = Cancelled("stopped") if stop == "Cancelled" else stop()

    def load_model(*args, **kwargs):
        raise error

    monkeypatch.setattr(models, "load_model", load_model)
    assert main(["segment", str(sample_2d), str(tmp_path / "out.tif"), "--cpu"]) == 130
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= 30] == [("ERROR", "cancelled")]
    assert "Traceback" not in caplog.text
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_leaves_only_the_summary_on_stdout(tmp_path, sample_2d, where):
    out = tmp_path / "q.tif"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    args = ["segment", str(sample_2d), str(out), "--cpu"]
    args = ["-q", *args] if where == "before" else [*args, "-q"]  # as users type it, either way
    proc = subprocess.run([sys.executable, "-m", "stardist_host.cli", *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{out}: " + proc.stdout.split(": ", 1)[1].strip()]
    assert "nuclei in 1 plane(s)" in proc.stdout
    assert " INFO " not in proc.stderr and "segmenting" not in proc.stderr  # no log lines, no progress bar
    assert "I tensorflow" not in proc.stderr and "Loading network weights" not in proc.stderr + proc.stdout


def test_analysis_output_exists_refused_without_overwrite(tmp_path, caplog):
    src = tmp_path / "seg.tif"
    tifffile.imwrite(src, np.ones((1, 16, 16), np.uint16), photometric="minisblack", metadata={"axes": "TYX"})
    out = tmp_path / "out"
    out.mkdir()
    table = out / "seg_measurements.csv"
    table.write_text("older")
    args = ["measure", str(src), str(out), "--label-channel", "0", "--voxel-size", "1,1,1"]
    assert main(args) == 2
    assert f"output {str(table)!r} exists already" in caplog.text and table.read_text() == "older"
    assert main([*args, "--overwrite"]) == 0
    assert table.read_text().startswith("label,time_point")
    assert sorted(p.name for p in out.iterdir()) == ["seg_measurements.csv"]


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, sample_2d, caplog):
    out = tmp_path / "out.tif"
    assert main(["segment", str(sample_2d), str(out), "--last-plane", "3"]) == 2
    assert "--last-plane 3: the image set has planes 0..0 (or -1)" in caplog.text  # the command line speaks options
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


def test_doctor_says_whether_it_runs_inside_a_host_and_on_which_thread(capsys):
    from stardist_host.doctor import _host

    assert _host().startswith("no active image set") and "'MainThread'" in _host()
    set_active_imageset(MemoryImageSet(np.zeros((2, 1, 3, 8, 9), np.uint16), channel_names=["DAPI"]))
    try:
        assert _host().startswith("inside a host: active image set MemoryImageSet, TCZYX 2x1x3x8x9, channels DAPI")
    finally:
        set_active_imageset(None)


def test_doctor_fails_with_the_reason(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("STARDIST_HOST_MODELS", str(tmp_path))  # no bundled models there
    assert main(["doctor", "--cpu"]) == 1
    text = capsys.readouterr().out
    assert "[FAIL] bundled models: RuntimeError: no bundled models in" in text and "some checks failed" in text


def test_cli_segments_a_file_bioio_reads_and_keeps_its_channels(tmp_path):
    """A non-TIFF input goes through bioio (here a PNG, read by bioio-imageio) to the same OME-TIFF output."""
    pytest.importorskip("bioio_imageio")  # the "bioio" extra, in the test extras; absent from a bare stack
    from skimage.io import imsave

    from stardist_host.io.opening import open_imageset

    plane = tifffile.imread(ROOT / "data" / "nuclei_2d.tif")[:256, :256]
    png = tmp_path / "nuclei.png"
    imsave(png, plane, check_contrast=False)
    before = sha256(png)
    out = tmp_path / "seg.ome.tif"
    assert main(["segment", str(png), str(out), "--cpu"]) == 0
    assert sha256(png) == before
    with open_imageset(png) as source:
        assert type(source).__name__ == "BioioImageSet"
        expected = source.get_channeldata(0, 0, 0)
    written = tifffile.imread(out)
    np.testing.assert_array_equal(written[0], expected)  # the input channel, exactly
    assert written.dtype == expected.dtype and len(np.unique(written[1])) - 1 >= 20  # and the nuclei
    assert main(["segment", str(png), str(tmp_path / "x.ome.tif"), "--axes", "YX"]) == 2


def test_script_without_arguments_headless_says_how_in_one_line(tmp_path):
    proc = _run([SCRIPT_2D], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "no image set is active" in proc.stderr
    assert "python scripts/stardist_2d.py INPUT.tif OUTPUT.tif" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", [[], ["--resume"]], ids=["single-process", "dask"])
def test_labels_only_summary_names_the_channel_of_the_written_file(tmp_path, sample_2d, capsys, path):
    import re

    out = tmp_path / "labels.ome.tif"
    assert main(["segment", str(sample_2d), str(out), "--labels-only", "--cpu", "-q", *path]) == 0
    channel = int(re.search(r"labels in channel (\d+) 'Stardist_DAPI'", capsys.readouterr().out).group(1))
    with tifffile.TiffFile(out) as tf:
        pixels = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]["Pixels"]
        data = tf.series[0].asarray().reshape(pixels["SizeT"], pixels["SizeC"], pixels["SizeY"], pixels["SizeX"])
    assert channel < pixels["SizeC"] == 1
    assert data[0, channel].max() >= 20 and not data[1:, channel].any()  # the labels of time point 0


@pytest.mark.parametrize("path", [[], ["--resume"]], ids=["single-process", "dask"])
def test_cli_3d_on_single_planes_refused_before_the_model_loads(tmp_path, sample_2d, caplog, no_model, path):
    assert main(["segment", str(sample_2d), str(tmp_path / "out.tif"), "--dim", "3", *path]) == 2
    assert _errors(caplog) == ["--dim 3 needs Z planes, but the image set has one plane per time point: use --dim 2"]
    assert list(tmp_path.iterdir()) == []


def test_3d_script_on_single_planes_names_the_2d_script(tmp_path, sample_2d):
    proc = _run([SCRIPT_3D, sample_2d, tmp_path / "out.tif"])
    assert proc.returncode == 2
    assert ("the 3D script needs Z planes, but the image set has one plane per time point: use the 2D script "
            "(stardist_2d.py)") in proc.stderr
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []
