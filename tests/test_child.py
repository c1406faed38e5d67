"""SEPARATE_PROCESS: the model in a child process, the image set on the host's calling thread.

Each test that starts a child pays for a fresh interpreter importing
TensorFlow (seconds), so the runs are few and their data small.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
from conftest import ROOT, OwnThreadImageSet, sample_planes_tczyx

from stardist_host import MemoryImageSet
from stardist_host.errors import Cancelled, ModelError, SettingsError
from stardist_host.host import set_active_imageset
from stardist_host.io.imagesets import TiffImageSet
from stardist_host.schema import SettingsErrors
from stardist_host.runs import child
from stardist_host.runs.child import PROCESS_NAME, SegmentationProcessError, run_in_child
from stardist_host.segmentation.plan import make_plan
from stardist_host.runs.local import run, separate_process
from stardist_host.segmentation.settings import Settings

CPU = dict(use_gpu=False)


def _labels(ims, channel):
    return np.stack([[ims.get_channeldata(channel, z, t) for z in range(ims.plane_count)]
                     for t in range(ims.time_point_count)])


def _no_children():
    return [p for p in multiprocessing.active_children() if p.name == PROCESS_NAME] == []


# --- one run in a fresh interpreter: the host never imports TensorFlow --------------------------------------


def test_host_process_never_imports_tensorflow():
    script = textwrap.dedent("""
        import json, logging, sys
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(processName)s|%(message)s")
        from stardist_host import MemoryImageSet
        from stardist_host.runs.local import run
        from stardist_host.segmentation.settings import Settings
        from conftest import sample_planes_tczyx
        ims = MemoryImageSet(sample_planes_tczyx(t=1, z=2), channel_names=["DAPI"])
        result = run(Settings(separate_process=True, use_gpu=False), ims)
        print(json.dumps({"tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules,
                          "nuclei": result.total, "max": int(ims.get_channeldata(1, 1, 0).max())}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT / "tests", capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT / "tests")})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    report = json.loads(lines[-1])
    assert report["tensorflow"] is False and report["keras"] is False
    assert report["nuclei"] >= 3 and report["max"] > 0
    # the child's log lines reach the host's log, named as the child's
    assert any(line.startswith(f"{PROCESS_NAME}|loading 2D model 2D_demo") for line in lines), lines


# --- the same labels as in-process -------------------------------------------------------------------------


def test_2d_bundled_sample_labels_identical_progress_and_logs(sample_2d, caplog):
    caplog.set_level(logging.INFO, logger="stardist_host")
    settings = Settings(current_time_point=False, **CPU)
    steps = {True: [], False: []}
    results, labels = {}, {}
    for separate in (False, True):
        with TiffImageSet(sample_2d) as ims:
            results[separate] = run(dataclasses.replace(settings, separate_process=separate), ims,
                                    progress=lambda d, n, s=separate: steps[s].append((d, n)))
            labels[separate] = _labels(ims, results[separate].channel)
            names = ims.channel_names
    assert np.array_equal(labels[True], labels[False]) and labels[True].dtype == labels[False].dtype
    assert [u.count for u in results[True].units] == [u.count for u in results[False].units]
    assert results[True].total > 30 and names[-1] == "Stardist_DAPI"
    assert steps[True] == steps[False] == [(1, 3), (2, 3), (3, 3)]
    from_child = [r for r in caplog.records if r.processName == PROCESS_NAME]
    assert any(r.name == "stardist_host.segmentation.segment" and "segmenting channel 0, 3 plane(s)" in r.getMessage()
               for r in from_child)
    assert _no_children()


def test_3d_sample_crop_labels_identical_and_the_image_set_used_on_one_thread(sample_3d):
    crop = tifffile.imread(sample_3d)[None, None, 8:24, :56, :56]
    labels = {}
    for separate in (False, True):
        # raises if any member is used from a thread other than this one
        ims = OwnThreadImageSet(crop.copy(), channel_names=["DAPI"], voxel_size=(2.0, 1.0, 1.0))
        result = run(Settings(ndim=3, separate_process=separate, **CPU), ims)
        labels[separate] = _labels(ims, result.channel)
    assert np.array_equal(labels[True], labels[False]) and len(np.unique(labels[True])) > 5


# --- errors raised in the child arrive as the same class and message ---------------------------------------


@pytest.mark.parametrize("case", ["model", "memory"])
def test_errors_in_the_child_arrive_as_raised_in_process(case, monkeypatch):
    if case == "model":
        settings, expected = Settings(model_name="no_such_model", **CPU), ModelError
    else:  # read where the pipeline starts, after the channel was added: the child removes it
        monkeypatch.setenv("STARDIST_HOST_MEMORY", "lots")
        settings, expected = Settings(**CPU), SettingsError
    errors = {}
    for separate in (False, True):
        ims = MemoryImageSet(sample_planes_tczyx(t=1, z=2), channel_names=["DAPI"])
        with pytest.raises(expected) as err:
            run(dataclasses.replace(settings, separate_process=separate), ims)
        errors[separate] = err.value
        assert ims.channel_count == 1 and ims.channel_names == ["DAPI"]
    assert type(errors[True]) is type(errors[False]) and str(errors[True]) == str(errors[False])
    if case == "model":
        assert "MODEL_NAME='no_such_model'" in str(errors[True])
    else:
        assert str(errors[True]).startswith("STARDIST_HOST_MEMORY='lots': must be a positive number of bytes")
        assert errors[True].setting == "STARDIST_HOST_MEMORY"
    assert "Traceback" in str(errors[True].__cause__)  # the child's traceback


def test_errors_survive_pickling_with_their_notes():
    err = SettingsErrors([SettingsError("A", 1, "must be 2"), SettingsError("B", 3, "must be 4")])
    err.args = (f"{err.args[0]}; channel 1 'x' is incomplete",)
    copy, args = child._portable(err)
    message = ("error", *pickle.loads(pickle.dumps((copy, args))), "traceback text")
    with pytest.raises(SettingsErrors) as raised:
        child._outcome(message)
    assert str(raised.value) == "A=1: must be 2 | B=3: must be 4; channel 1 'x' is incomplete"
    assert [e.setting for e in raised.value.errors] == ["A", "B"]

    class Unpicklable(Exception):
        def __init__(self, a, b):
            super().__init__(f"{a} and {b}")

    copy, _ = child._portable(Unpicklable(1, 2))
    assert type(copy) is RuntimeError and str(copy) == "Unpicklable: 1 and 2"


# --- the child ends without a word: crash, os._exit, killed -------------------------------------------------


def _exit_at_third_plane(job, imageset, progress):
    """Runs in the child: the real segmentation, ending the process as the third label plane is written."""
    written = []
    setter = imageset.set_channeldata

    def set_channeldata(channel, plane, time_point, data):
        if len(written) == 2:
            os._exit(3)
        written.append(plane)
        setter(channel, plane, time_point, data)

    imageset.set_channeldata = set_channeldata
    return child._segment(job, imageset, progress)


def _plan(settings, ims):
    return settings, ims, make_plan(settings, ims)


def test_a_child_that_exits_mid_run_is_an_error_and_the_channel_is_removed():
    ims = MemoryImageSet(sample_planes_tczyx(t=2, z=4), channel_names=["DAPI"])
    settings, ims, plan = _plan(Settings(current_time_point=False, **CPU), ims)
    with pytest.raises(SegmentationProcessError) as err:
        run_in_child(settings, ims, plan, output_name="Stardist_DAPI", _work=_exit_at_third_plane)
    assert str(err.value).startswith("the segmentation process ended unexpectedly (exit code 3) after 2 of 8 planes; ")
    assert "try N_TILES" in str(err.value) and "USE_GPU=False" in str(err.value)
    assert ims.channel_count == 1 and ims.channel_names == ["DAPI"]
    assert _no_children()


class KillsTheChildAtTheThirdRead(MemoryImageSet):
    """A host image set during whose third read the system kills the child (as the OOM killer does)."""

    reads = 0

    def get_channeldata(self, channel, plane, time_point):
        self.reads += 1
        if self.reads == 3:
            for process in multiprocessing.active_children():
                if process.name == PROCESS_NAME:
                    process.kill()
                    process.join()
        return super().get_channeldata(channel, plane, time_point)


def test_a_killed_child_is_an_error_and_the_channel_is_removed():
    ims = KillsTheChildAtTheThirdRead(sample_planes_tczyx(t=2, z=4), channel_names=["DAPI"])
    with pytest.raises(SegmentationProcessError) as err:
        run(Settings(current_time_point=False, separate_process=True, **CPU), ims)
    message = str(err.value)
    assert message.startswith("the segmentation process ended unexpectedly (exit code ")
    if sys.platform != "win32":
        assert "(exit code -9, killed by SIGKILL)" in message
    assert ims.reads == 3 and ims.channel_count == 1 and ims.channel_names == ["DAPI"]
    assert _no_children()


def test_cancel_stops_the_child_and_removes_the_channel():
    ims = MemoryImageSet(sample_planes_tczyx(t=2, z=4), channel_names=["DAPI"])
    steps = []
    with pytest.raises(Cancelled) as err:
        run(Settings(current_time_point=False, separate_process=True, **CPU), ims,
            progress=lambda d, n: steps.append(d), cancel=lambda: len(steps) >= 2)
    assert str(err.value) == "cancelled: segmentation stopped on request after 2 of 8 planes"
    assert steps == [1, 2] and ims.channel_count == 1
    assert _no_children()


# --- choosing the process, and the interpreter ---------------------------------------------------------------


def test_auto_is_separate_for_the_host_s_active_image_set_only():
    ims, other = MemoryImageSet(np.zeros((1, 1, 1, 8, 8), np.uint16)), MemoryImageSet(np.zeros((1, 1, 1, 8, 8)))
    try:
        set_active_imageset(ims)
        assert separate_process("auto", ims) is True and separate_process("auto", other) is False
        assert separate_process(False, ims) is False and separate_process(True, other) is True
    finally:
        set_active_imageset(None)
    assert separate_process("auto", ims) is False  # headless: no active image set


def test_interpreter_of_an_embedding_host(monkeypatch, tmp_path):
    assert child._python(sys.executable) == sys.executable
    monkeypatch.setenv("STARDIST_HOST_PYTHON", str(tmp_path / "nope.exe"))
    with pytest.raises(SettingsError, match=r"^STARDIST_HOST_PYTHON='.*nope\.exe': must be the path of a Python"):
        child._python(sys.executable)
    monkeypatch.delenv("STARDIST_HOST_PYTHON")
    monkeypatch.setattr(sys, "exec_prefix", str(tmp_path))
    with pytest.raises(SettingsError, match="this process runs /opt/Host/host.exe and there is no Python in"):
        child._python("/opt/Host/host.exe")
    (tmp_path / "bin").mkdir()
    python = tmp_path / ("python.exe" if sys.platform == "win32" else "bin/python3")
    python.write_text("")
    assert child._python("/opt/Host/host.exe") == str(python)


def test_a_script_that_runs_at_import_time_is_not_run_again_in_the_child(tmp_path):
    # spawn re-runs the parent's main file in the child unless it is hidden; this one would start a child there
    script = tmp_path / "my_script.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from conftest import sample_planes_tczyx
        from stardist_host import MemoryImageSet
        from stardist_host.runs.local import run
        from stardist_host.segmentation.settings import Settings
        ims = MemoryImageSet(sample_planes_tczyx(t=1, z=1), channel_names=["DAPI"])
        result = run(Settings(separate_process=True, use_gpu=False), ims)
        print("nuclei", result.total, "channels", ims.channel_count)
    """), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    words = done.stdout.split()
    assert words[0] == "nuclei" and int(words[1]) >= 1 and words[2:] == ["channels", "2"]


# --- GPU_MEMORY_LIMIT_MB (no GPU here: TensorFlow's config calls are stood in for) ---------------------------


def test_gpu_memory_limit_is_a_logical_device_before_tensorflow_starts(monkeypatch, caplog):
    import tensorflow as tf

    from stardist_host.segmentation import device

    calls = []
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0", "GPU:1"])
    monkeypatch.setattr(tf.config, "get_visible_devices", lambda kind=None: [])
    monkeypatch.setattr(tf.config, "set_logical_device_configuration", lambda gpu, conf: calls.append((gpu, conf)))
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", lambda gpu, on: calls.append((gpu, "growth")))
    device.configure_device(True, memory_limit_mb=512)
    assert calls == [(gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=512)]) for gpu in ("GPU:0", "GPU:1")]
    calls.clear()
    device.configure_device(True)
    assert calls == [("GPU:0", "growth"), ("GPU:1", "growth")]

    def initialised(gpu, conf):
        raise RuntimeError("Virtual devices cannot be modified after being initialized")

    monkeypatch.setattr(tf.config, "set_logical_device_configuration", initialised)
    with caplog.at_level(logging.WARNING, logger="stardist_host"):
        device.configure_device(True, memory_limit_mb=512)
    assert ("GPU_MEMORY_LIMIT_MB=512 not applied: TensorFlow already uses the GPU in this process; it takes effect "
            "in a new process, or with SEPARATE_PROCESS=True") in caplog.text
