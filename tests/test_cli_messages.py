"""The command line speaks its own options: help of on/off flags, choices, and each mistake as one line, status 2."""

from __future__ import annotations

import argparse
import os

import pytest

from stardist_host import cli


def _help(monkeypatch, command: str) -> dict[str, str]:
    """Each option's help text of ``command``, by its long option."""
    monkeypatch.setenv("COLUMNS", "500")
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    return {a.option_strings[-1]: a.help for a in parser._actions if a.option_strings}


def test_on_off_flags_say_what_they_do(monkeypatch):
    segment = _help(monkeypatch, "segment")
    assert segment["--cpu"] == "run on the CPU even where there is a GPU (script setting USE_GPU=False; default True)"
    assert segment["--all-time-points"] == "all time points (script setting CURRENT_TIME_POINT=False; default True)"
    assert segment["--unique-labels"].startswith("labels unique across the whole output")
    assert _help(monkeypatch, "track")["--no-divisions"] == (
        "do not detect divisions (one track splitting into two) (script setting DIVISIONS=False; default True)")


def test_choices_and_defaults_as_the_option_takes_them(monkeypatch):
    assert "; one of auto, uint16, uint32; default auto (script setting LABEL_DTYPE)" in \
        _help(monkeypatch, "segment")["--label-dtype"]
    measure = _help(monkeypatch, "measure")
    assert "; default 0 (script setting INTENSITY_CHANNELS)" in measure["--intensity-channels"]
    assert "default [0]" not in measure["--intensity-channels"]


def test_doctor_and_models_have_descriptions():
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sub.choices["doctor"].description.startswith("Check that this computer can segment")
    assert sub.choices["models"].description.startswith("List the model names --model-name takes")


@pytest.fixture
def no_model(monkeypatch):
    """Every mistake below is found before the model loads."""
    from stardist_host.segmentation import models

    def refuse(*args, **kwargs):
        raise AssertionError("the model loaded before the mistake was found")

    monkeypatch.setattr(models, "load_for_run", refuse)


@pytest.mark.parametrize("args, message", [
    (["--axes", "ZYX"], "--axes ZYX does not fit nuclei_2d.tif: its data have 2 dimensions (512, 512); give one "
                        "letter per dimension from T, C, Z, Y, X, each at most once (e.g. 'ZYX')"),
    (["--model-path", "/no/such/folder"], "--model-path /no/such/folder: this folder does not exist; give the folder "
     "that holds your model folders (stardist's basedir), or None for the bundled and registered models"),
    (["--export-objects", "csv"], "--export-objects csv needs --dim 3 (one row per object of a volume); with --dim 2 "
                                  "give roi, geojson or roi,geojson"),
])
def test_segment_mistakes_name_options(tmp_path, sample_2d, caplog, no_model, args, message):
    out = tmp_path / "out.ome.tif"
    assert cli.main(["segment", str(sample_2d.parent / "nuclei_2d.tif"), str(out), *args]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [message]
    assert list(tmp_path.iterdir()) == []


def test_a_job_mistake_names_the_argument(tmp_path, sample_2d, caplog):
    missing = tmp_path / "missing"
    assert cli.main(["measure", str(sample_2d), str(missing), "--label-channel", "0"]) == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"output folder {missing}: this folder does not exist"]


def test_intensity_channels_take_what_the_help_shows(tmp_path, sample_2d):
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    args = sub.choices["measure"].parse_args([str(sample_2d), str(tmp_path), "--label-channel", "2",
                                              "--intensity-channels", "0"])
    assert list(args.intensity_channels) == [0]


def test_a_reader_that_goes_away_ends_the_command_quietly():
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as a user's shell has it
    proc = subprocess.Popen([sys.executable, "-m", "stardist_host.cli", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # as `| head -0` would, before the list is printed
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "Traceback" not in err and "BrokenPipe" not in err, err
