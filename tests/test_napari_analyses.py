"""The analyses' dock widgets (measure, track) in a real napari viewer (pytest-qt; Xvfb where there is no display).

The labels are a small synthetic segmentation of the 2D sample (thresholded
DAPI, one label per blob and time point), written with the sample's two
channels into one TIFF, so that ``stardist-host measure`` can read the same
image set from a file; in the viewer the labels are a Labels layer, as a
segmentation leaves them.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

napari = pytest.importorskip("napari", reason="napari is not installed (pip install -e '.[napari]')")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install -e '.[test]')")

from test_napari_widget import SAMPLE_2D, display, notes, viewer  # noqa: E402,F401  (the fixtures, shared)

RUN_TIMEOUT_MS = 60_000
VOXEL = 0.5  # µm per pixel, as the sample's resolution says


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """The 2D sample (T=3, DAPI, Membrane) with a third channel of labels, as TCYX ImageJ TIFF (0.5 µm pixels)."""
    from scipy import ndimage

    data = tifffile.imread(SAMPLE_2D)  # (T, C, Y, X)
    labels = np.zeros_like(data[:, 0])
    for t, dapi in enumerate(data[:, 0]):
        smooth = ndimage.gaussian_filter(dapi.astype(float), 2)
        labels[t], _ = ndimage.label(smooth > np.percentile(smooth, 85))
    assert all(labels[t].max() > 5 for t in range(3))
    path = tmp_path_factory.mktemp("sample") / "labelled.tif"
    tifffile.imwrite(path, np.concatenate([data, labels[:, None]], axis=1), imagej=True,
                     resolution=(1 / VOXEL, 1 / VOXEL), metadata={"axes": "TCYX", "unit": "micron",
                                                                  "Labels": ["DAPI", "Membrane", "nuclei"] * 3})
    return path


def open_labelled(viewer, path: Path):
    """The file as napari shows a segmented image: an Image layer per channel and the labels as a Labels layer."""
    data = tifffile.imread(path)
    scale = (1.0, VOXEL, VOXEL)
    dapi = viewer.add_image(data[:, 0], name="DAPI", scale=scale)
    viewer.add_image(data[:, 1], name="Membrane", scale=scale)
    viewer.add_labels(data[:, 2], name="nuclei", scale=scale)
    viewer.dims.axis_labels = ("t", "y", "x")
    return dapi


def analysis_widget(viewer, job: str, layer, out: Path):
    from stardist_host.napari.widget import AnalysisWidget

    widget = AnalysisWidget(viewer, job)
    viewer.window.add_dock_widget(widget, name=f"StarDist {job}")
    widget.layer.value = layer
    widget.settings_widgets["OUTPUT_FOLDER"].value = str(out)
    return widget


def run_to_end(qtbot, widget):
    run = widget.start()
    assert run is not None, "the run did not start"
    qtbot.waitUntil(lambda: not run.running, timeout=RUN_TIMEOUT_MS)
    return run


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_measure_writes_what_the_command_line_writes(viewer, qtbot, tmp_path, notes, labelled):
    cli = tmp_path / "cli"
    cli.mkdir()
    subprocess.run([sys.executable, "-m", "stardist_host.cli", "measure", str(labelled), str(cli), "--label-channel",
                    "2", "--intensity-channels", "0,1", "-q"], check=True, stdout=subprocess.DEVNULL)
    out = tmp_path / "napari"
    out.mkdir()
    widget = analysis_widget(viewer, "measure", open_labelled(viewer, labelled), out)
    assert widget.channels.value == "0 DAPI, 1 Membrane, 2 nuclei"
    widget.settings_widgets["LABEL_CHANNEL"].value = 2
    widget.settings_widgets["INTENSITY_CHANNELS"].value = "0, 1"
    run = run_to_end(qtbot, widget)
    assert run.result == [out / "DAPI_measurements.csv"], run.result
    expected = (cli / "labelled_measurements.csv").read_bytes()
    assert len(rows(cli / "labelled_measurements.csv")) > 20
    assert (out / "DAPI_measurements.csv").read_bytes() == expected
    assert widget.progress_bar.value == widget.progress_bar.max == 3  # one step per time point
    assert [n.message for n in notes] == [f"StarDist measure: wrote DAPI_measurements.csv in {out}"]
    assert [layer.name for layer in viewer.layers] == ["DAPI", "Membrane", "nuclei"]
    assert "tensorflow" not in sys.modules  # the analyses ran in napari's process without it


@pytest.mark.parametrize("job", ["cells", "atlas"])
def test_cells_and_atlas_write_what_the_command_line_writes(viewer, qtbot, tmp_path, notes, labelled, job):
    """cells adds its channel as a Labels layer, equal to the command line's; atlas reads a file (a path setting)."""
    atlas = tmp_path / "atlas.tif"
    halves = np.ones((256, 256), np.uint8)
    halves[:, 128:] = 2
    tifffile.imwrite(atlas, halves, imagej=True, resolution=(1 / VOXEL, 1 / VOXEL), metadata={"unit": "micron"})
    settings = {"cells": {"LABEL_CHANNEL": 2, "MEMBRANE_CHANNEL": 1, "MAX_DISTANCE_UM": 5.0, "INTENSITY_CHANNELS": "0"},
                "atlas": {"LABEL_CHANNEL": 2, "ATLAS_FILE": str(atlas)}}[job]
    cli, out = tmp_path / "cli", tmp_path / "napari"
    cli.mkdir(), out.mkdir()
    options = [f"--{name.lower().replace('_', '-')}={value}" for name, value in settings.items()]
    subprocess.run([sys.executable, "-m", "stardist_host.cli", job, str(labelled), str(cli), *options, "-q"],
                   check=True, stdout=subprocess.DEVNULL)
    widget = analysis_widget(viewer, job, open_labelled(viewer, labelled), out)
    for name, value in settings.items():
        widget.settings_widgets[name].value = value
    run = run_to_end(qtbot, widget)
    table = {"cells": "cells", "atlas": "regions"}[job]
    assert run.result == [out / f"DAPI_{table}.csv"], run.result
    assert len(rows(out / f"DAPI_{table}.csv")) > 2
    assert (out / f"DAPI_{table}.csv").read_bytes() == (cli / f"labelled_{table}.csv").read_bytes()
    if job == "cells":
        expected = tifffile.imread(cli / "labelled_cells.ome.tif")[:, 3]  # T, C, Y, X: the channel cells added
        assert expected.max() > 5
        np.testing.assert_array_equal(viewer.layers["Cells"].data, expected)
    assert len(notes) == 1 and notes[0].message.startswith(f"StarDist {job}: wrote DAPI_{table}.csv")


def test_track_adds_a_tracks_layer_with_the_rows_of_the_track_table(viewer, qtbot, tmp_path, notes, labelled,
                                                                    monkeypatch):
    import threading

    from stardist_host.analyses import jobs
    from stardist_host.napari.imageset import NapariImageSet

    threads = {"image set": set(), "job": set()}  # the image set's calls on the GUI thread, the job off it
    for name in ("get_channeldata", "set_channeldata", "add_channel"):
        def on_thread(self, *args, _call=getattr(NapariImageSet, name)):
            threads["image set"].add(threading.current_thread())
            return _call(self, *args)

        monkeypatch.setattr(NapariImageSet, name, on_thread)
    run_job = jobs.run_job
    monkeypatch.setattr(jobs, "run_job", lambda *a, **k: (threads["job"].add(threading.current_thread()),
                                                           run_job(*a, **k))[1])
    dapi = open_labelled(viewer, labelled)
    widget = analysis_widget(viewer, "track", dapi, tmp_path)
    widget.settings_widgets["LABEL_CHANNEL"].value = 2
    widget.settings_widgets["MAX_DISTANCE_UM"].value = 6.0
    run = run_to_end(qtbot, widget)
    assert threads["image set"] == {threading.main_thread()}
    assert len(threads["job"]) == 1 and threading.main_thread() not in threads["job"]
    table = tmp_path / "DAPI_tracks.csv"
    assert run.result == [table, tmp_path / "DAPI_track_properties.csv"], run.result
    tracks = viewer.layers["DAPI_tracks"]
    assert isinstance(tracks, napari.layers.Tracks)
    expected = np.array([[float(r[c]) for c in ("track_id", "t", "y_um", "x_um")] for r in rows(table)])
    assert len(expected) > 20
    order = np.lexsort((expected[:, 1], expected[:, 0]))  # napari keeps the rows sorted by track and time
    np.testing.assert_array_equal(np.asarray(tracks.data), expected[order])
    # µm onto the image's world coordinates: a track point lies on its nucleus
    track_ids = viewer.layers["Track_ids"]
    assert isinstance(track_ids, napari.layers.Labels) and track_ids.data.max() == expected[:, 0].max()
    pixel = np.round(expected[:, 2:] / VOXEL).astype(int)
    ids = track_ids.data[expected[:, 1].astype(int), pixel[:, 0], pixel[:, 1]]
    assert (ids == expected[:, 0]).mean() > 0.9
    np.testing.assert_allclose(tracks.scale, (1.0, 1.0, 1.0))  # voxel size = the image's scale: µm are world units
    assert [n.message for n in notes] == [
        f"StarDist track: wrote DAPI_tracks.csv, DAPI_track_properties.csv in {tmp_path}; "
        "added the Tracks layer 'DAPI_tracks'"]


@pytest.mark.parametrize("setting, value, message", [
    ("LABEL_CHANNEL", 0,
     "LABEL_CHANNEL=0: channel 0 ('DAPI') is an Image layer; it must be a Labels layer's channel: 2 'nuclei'"),
    ("LABEL_CHANNEL", 7, "LABEL_CHANNEL=7: must be a channel of the image set: 0 'DAPI', 1 'Membrane', 2 'nuclei'"),
    ("MAX_DISTANCE_UM", 0.0, "MAX_DISTANCE_UM=0.0: must be a number in µm > 0"),
])
def test_a_bad_setting_is_one_notification_and_nothing_written(viewer, qtbot, tmp_path, notes, labelled, setting,
                                                                value, message):
    widget = analysis_widget(viewer, "track", open_labelled(viewer, labelled), tmp_path)
    widget.settings_widgets["LABEL_CHANNEL"].value = 2
    widget.settings_widgets[setting].value = value
    assert widget.start() is None
    assert [n.message for n in notes] == [f"StarDist: {message}"]
    assert list(tmp_path.iterdir()) == []
    assert [layer.name for layer in viewer.layers] == ["DAPI", "Membrane", "nuclei"]


def test_cancel_removes_the_track_id_layer_and_writes_nothing(viewer, qtbot, tmp_path, notes, labelled):
    widget = analysis_widget(viewer, "track", open_labelled(viewer, labelled), tmp_path)
    widget.settings_widgets["LABEL_CHANNEL"].value = 2
    widget.settings_widgets["MAX_DISTANCE_UM"].value = 6.0
    seen, added = [], []
    viewer.layers.events.inserted.connect(lambda event: added.append(event.value.name))
    run = widget.start()

    def progress(done, total):
        seen.append(done)
        if done == 2:  # all time points read: the run links them, then adds Track_ids and stops writing it
            widget.cancel_button.clicked.emit()
        widget._progress(done, total)

    run._on_progress = progress
    qtbot.waitUntil(lambda: not run.running, timeout=RUN_TIMEOUT_MS)
    assert seen == [0, 1, 2] and added == ["Track_ids"]  # it was there, unfinished, and went
    assert [n.message for n in notes] == ["StarDist track cancelled; nothing was written"]
    assert list(tmp_path.iterdir()) == []
    assert [layer.name for layer in viewer.layers] == ["DAPI", "Membrane", "nuclei"]
    assert widget.run_button.enabled and not widget.cancel_button.enabled


@pytest.mark.parametrize("job", ["measure", "track", "atlas", "cells"])
def test_each_analysis_widget_is_its_schema_and_in_the_manifest(viewer, qtbot, job):
    import importlib

    import yaml

    from stardist_host.analyses.jobs import JOBS

    manifest = yaml.safe_load((Path(__file__).resolve().parents[1] / "stardist_host" / "napari" / "napari.yaml")
                              .read_text())
    command = next(c for c in manifest["contributions"]["commands"] if c["id"] == f"stardist-host.{job}")
    assert any(w["command"] == command["id"] for w in manifest["contributions"]["widgets"])
    module, name = command["python_name"].split(":")
    widget = getattr(importlib.import_module(module), name)(viewer)
    schema = JOBS[job].schema
    assert list(widget.settings_widgets) == [field.name for field in schema]
    shown = {attr: tuple(value) if isinstance(value, list) else value for attr, value in widget.settings().items()}
    assert shown == {field.attr: field.script_value for field in schema}  # lists as the command line reads them
    for field in schema:
        assert widget.settings_widgets[field.name].tooltip.startswith(f"{field.name}: {field.help}")


def test_output_folder_none_is_the_layer_files_folder_else_home(viewer, qtbot, tmp_path):
    from napari.layers._source import layer_source

    from stardist_host.napari.widget import AnalysisWidget

    with layer_source(path=str(tmp_path / "embryo 1.ome.tif")):
        opened = viewer.add_image(np.zeros((2, 8, 8), np.uint16), name="embryo 1 [DAPI]")
    made = viewer.add_image(np.zeros((2, 8, 8), np.uint16), name="embryo 1 [DAPI]/copy")
    widget = AnalysisWidget(viewer, "measure")
    assert widget.settings_widgets["OUTPUT_FOLDER"].value == "None"
    widget.layer.value = opened
    assert widget.output() == (tmp_path, "embryo 1")
    widget.layer.value = made
    assert widget.output() == (Path.home(), "embryo_1_DAPI_copy")
    widget.settings_widgets["OUTPUT_FOLDER"].value = str(tmp_path)
    assert widget.output() == (tmp_path, "embryo_1_DAPI_copy")
