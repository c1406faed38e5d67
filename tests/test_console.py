"""The console of every command: one error line, no early progress bar, quiet TensorFlow, one summary."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import pytest
import tifffile

from stardist_host import cli
from stardist_host.console import stdout_to_log, tqdm_progress

TF_START_UP = ("absl::InitializeLog", "oneDNN", "TF_ENABLE_ONEDNN_OPTS", "cpu_feature_guard")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _cli(*args, env=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"} if env is None else env
    return subprocess.run([sys.executable, "-m", "stardist_host.cli", *map(str, args)], capture_output=True,
                          text=True, env=env)


@pytest.fixture
def truncated(tmp_path, sample_2d):
    data = sample_2d.parent.joinpath("nuclei_2d_t.tif").read_bytes()
    path = tmp_path / "truncated.tif"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def tiny(tmp_path, sample_2d):
    path = tmp_path / "tiny.tif"
    tifffile.imwrite(path, tifffile.imread(sample_2d.parent / "nuclei_2d.tif")[:64, :64])
    return path


def test_the_bar_appears_at_the_first_progress_not_before(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    progress, bar = tqdm_progress("segmenting")
    with bar:
        assert terminal.getvalue() == ""  # a run that fails while checking its input draws nothing
        progress(1, 4)
        assert "segmenting" in terminal.getvalue()


def test_no_bar_where_stderr_is_not_a_terminal(monkeypatch):
    log_file = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log_file)
    progress, bar = tqdm_progress("segmenting")
    with bar:
        progress(1, 4)
        progress(4, 4)
    assert log_file.getvalue() == ""


def test_a_truncated_tiff_is_one_error_line(tmp_path, truncated):
    out = tmp_path / "out.ome.tif"
    proc = _cli("segment", truncated, out)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "ERROR" in lines[0] and "truncated.tif is truncated (393887 bytes)" in lines[0]
    assert "tifffile" not in proc.stderr and "segmenting" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("command", [
    ["track", "--label-channel", "0", "--max-distance-um", "5"],
    ["segment"],
])
def test_bad_input_draws_no_bar_before_its_error(tmp_path, monkeypatch, truncated, command):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    out = tmp_path / ("out" if command[0] == "track" else "out.ome.tif")
    if command[0] == "track":
        out.mkdir()
    assert cli.main([command[0], str(truncated), str(out), *command[1:]]) == 2
    assert terminal.getvalue() == ""


def test_quiet_shows_no_tensorflow_start_up_lines(tmp_path, tiny):
    proc = _cli("-q", "segment", tiny, tmp_path / "out.ome.tif")
    assert proc.returncode == 0, proc.stderr
    assert not [line for line in proc.stderr.splitlines() if any(word in line for word in TF_START_UP)], proc.stderr
    assert proc.stdout.count("nuclei in 1 plane(s)") == 1


def test_models_lists_the_registered_names_without_tensorflow():
    from stardist_host.segmentation.models import registered_models

    code = ("import sys; from stardist_host.cli import main; main(['models']); "
            "print('tensorflow' in sys.modules, 'stardist.models' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "False False"
    for ndim in (2, 3):  # the oracle: stardist's own registry, which imports TensorFlow
        assert f"{ndim}D registered (downloaded by stardist when online): {', '.join(registered_models(ndim))}" \
            in proc.stdout


def test_a_run_states_its_summary_once(tmp_path, tiny):
    proc = _cli("segment", tiny, tmp_path / "out.ome.tif")
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout + proc.stderr).count("nuclei in 1 plane(s)") == 1


def test_library_prints_go_to_the_log_as_lines(caplog):
    log = logging.getLogger("stardist_host.test_prints")
    with caplog.at_level(logging.DEBUG, logger=log.name), stdout_to_log(log, level=logging.DEBUG):
        print("Loading network weights", end="")
        print("\n 1/3 [==>   ]\r 3/3 [======]")
    assert [r.getMessage() for r in caplog.records if r.name == log.name] == ["Loading network weights",
                                                                              " 3/3 [======]"]
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == log.name)
