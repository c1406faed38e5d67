"""Writing result files: the atomic-write helper, output checks, the output lock and stale leftovers."""

import os
import subprocess
import sys

import pytest

from stardist_host.errors import OutputBusyError, OutputError, StardistHostError
from stardist_host.io import files
from stardist_host.io.files import OutputLock, atomic_write, check_output, claim_outputs, remove_stale, scratch_dir


def _dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_write_replaces_only_when_complete(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".table.csv.") and tmp.name.endswith(".partial")
        tmp.write_text("new")
        assert target.read_text() == "old"  # not yet replaced while the block runs
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_atomic_write_fsyncs_before_the_replace(tmp_path, monkeypatch):
    order = []
    monkeypatch.setattr(files.os, "fsync", lambda fd: order.append("fsync"))
    real_replace = os.replace
    monkeypatch.setattr(files.os, "replace", lambda a, b: (order.append("replace"), real_replace(a, b)))
    with atomic_write(tmp_path / "a.txt") as tmp:
        tmp.write_text("x")
    assert order == ["fsync", "replace"]


def test_a_failure_inside_the_block_leaves_the_old_file_and_no_partial(tmp_path):
    target = tmp_path / "out.ome.tif"
    target.write_bytes(b"earlier result")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"earlier result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.ome.tif"]


def test_each_write_has_its_own_temporary_name(tmp_path):
    with atomic_write(tmp_path / "x.tif") as first, atomic_write(tmp_path / "x.tif") as second:
        first.write_bytes(b"1")
        second.write_bytes(b"2")
        assert first != second


def test_a_failing_replace_keeps_the_finished_file_and_says_where(tmp_path, monkeypatch):
    target = tmp_path / "seg.ome.tif"
    target.write_bytes(b"open in Fiji")
    tries = []

    def busy(src, dst):
        if dst == target:
            tries.append(dst)
            raise PermissionError(13, "The process cannot access the file because it is being used")
        return os.rename(src, dst)

    monkeypatch.setattr(files.os, "replace", busy)
    monkeypatch.setattr(files, "_RETRY_DELAY", 0.001)
    with pytest.raises(OutputBusyError) as info:
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"hours of work")
    kept = tmp_path / "seg.new.ome.tif"
    assert kept.read_bytes() == b"hours of work"
    assert target.read_bytes() == b"open in Fiji"
    assert len(tries) == files.REPLACE_RETRIES
    message = str(info.value)
    assert "open in another program" in message and str(kept) in message
    assert isinstance(info.value, StardistHostError) and isinstance(info.value, OSError)
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_a_second_kept_result_gets_its_own_name(tmp_path, monkeypatch):
    target = tmp_path / "cells.csv"
    (tmp_path / "cells.new.csv").write_text("first kept")
    monkeypatch.setattr(files.os, "replace", lambda a, b: os.rename(a, b) if b != target else (_ for _ in ()).throw(
        PermissionError(13, "busy")))
    monkeypatch.setattr(files, "_RETRY_DELAY", 0.001)
    with pytest.raises(OutputBusyError, match="cells.new2.csv"):
        with atomic_write(target) as tmp:
            tmp.write_text("second")
    assert (tmp_path / "cells.new.csv").read_text() == "first kept"
    assert (tmp_path / "cells.new2.csv").read_text() == "second"


@pytest.mark.parametrize("case, message", [
    ("exists", "exists already; choose another name, or replace it with --overwrite"),
    ("folder", "is a folder; give a file name inside it"),
    ("no folder", "the folder"),
    ("input", "is an input file; input files are never overwritten"),
    ("suffix", "must end in .tif or .tiff"),
])
def test_check_output_refuses(tmp_path, case, message):
    path = {
        "exists": tmp_path / "a.tif", "folder": tmp_path, "no folder": tmp_path / "missing" / "a.tif",
        "input": tmp_path / "in.tif", "suffix": tmp_path / "a.png",
    }[case]
    (tmp_path / "a.tif").write_bytes(b"x")
    (tmp_path / "in.tif").write_bytes(b"x")
    with pytest.raises(OutputError, match=message):
        check_output(path, inputs=(tmp_path / "in.tif",), suffixes=(".tif", ".tiff"))


def test_check_output_allows_overwrite_and_refuses_a_read_only_folder(tmp_path, monkeypatch):
    (tmp_path / "a.tif").write_bytes(b"x")
    assert check_output(tmp_path / "a.tif", overwrite=True) == tmp_path / "a.tif"
    monkeypatch.setattr(files.os, "access", lambda path, mode: False)  # tests run as root: chmod would not bite
    with pytest.raises(OutputError, match="cannot be written"):
        check_output(tmp_path / "b.tif")


def test_output_lock_is_exclusive_and_released(tmp_path):
    out = tmp_path / "seg.ome.tif"
    with OutputLock(out):
        assert (tmp_path / ".seg.ome.tif.lock").read_text() == f"{os.getpid()} {files._host()}"
        with pytest.raises(OutputBusyError, match=rf"in use by another run \(process {os.getpid()}\)"):
            OutputLock(out).acquire()
    assert not (tmp_path / ".seg.ome.tif.lock").exists()
    with OutputLock(out):  # free again
        pass


def test_a_lock_of_a_dead_process_is_taken_over_and_logged(tmp_path, caplog):
    lock = tmp_path / ".seg.ome.tif.lock"
    lock.write_text(str(_dead_pid()))  # an older lock without a host: this machine's
    with OutputLock(tmp_path / "seg.ome.tif"):
        assert lock.read_text() == f"{os.getpid()} {files._host()}"
    assert "no longer runs" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the dead lock removed, ours released


def test_a_lock_from_another_machine_is_never_taken_over(tmp_path):
    lock = tmp_path / ".seg.ome.tif.lock"
    lock.write_text(f"{_dead_pid()} someotherhost")  # the same id means nothing on another machine
    with pytest.raises(OutputBusyError, match="in use by another run \\(process \\d+ on someotherhost\\)"):
        OutputLock(tmp_path / "seg.ome.tif").acquire()
    assert lock.read_text().endswith("someotherhost")


_HOLD = ("import sys, time; from stardist_host.io.files import OutputLock; "
         "held = OutputLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)")


def test_a_run_killed_with_sigkill_leaves_a_lock_the_next_run_takes_over(tmp_path, caplog):
    out, lock = tmp_path / "seg.ome.tif", tmp_path / ".seg.ome.tif.lock"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(OutputBusyError, match=rf"in use by another run \(process {holder.pid}\); wait"):
            OutputLock(out).acquire()
        assert lock.read_text() == f"{holder.pid} {files._host()}"  # a refused run leaves the holder's file as it was
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the file stays; the kernel drops the OS lock
        holder.wait()
    assert lock.exists()
    with OutputLock(out):
        assert lock.read_text() == f"{os.getpid()} {files._host()}"
    assert f"removing {lock}, left by a run (process {holder.pid}) that no longer runs" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_a_lock_file_naming_a_live_process_without_the_lock_is_taken_over(tmp_path):
    """A killed run's process id given since to another program (ids are reused) does not keep the output busy."""
    lock = tmp_path / ".seg.ome.tif.lock"
    lock.write_text(f"{os.getppid()} {files._host()}")  # a process that runs, but holds no lock
    with OutputLock(tmp_path / "seg.ome.tif"):
        assert lock.read_text() == f"{os.getpid()} {files._host()}"
    assert not lock.exists()


def test_remove_stale_removes_only_what_dead_runs_left(tmp_path, caplog):
    dead, alive = _dead_pid(), os.getpid()
    stale_partial = tmp_path / f".seg.ome.tif.{dead}-0123abcd.partial"
    live_partial = tmp_path / f".seg.ome.tif.{alive}-0123abcd.partial"
    other_output = tmp_path / f".other.tif.{dead}-0123abcd.partial"
    stale_scratch = tmp_path / f".stardist-host-{dead}-{files._host()}-xyz"
    other_machine = tmp_path / f".stardist-host-{dead}-someotherhost-xyz"
    other_machine.mkdir()
    for p in (stale_partial, live_partial, other_output):
        p.write_bytes(b"x" * 1000)
    stale_scratch.mkdir()
    (stale_scratch / "channel2.raw").write_bytes(b"0" * 5000)
    user_file = tmp_path / "stardist-host-notes.txt"
    user_file.write_text("mine")

    removed = remove_stale(tmp_path, "seg.ome.tif")
    assert sorted(removed) == sorted([stale_partial, stale_scratch])
    assert live_partial.exists() and other_output.exists() and user_file.exists() and other_machine.exists()
    assert str(stale_partial) in caplog.text and "left by an interrupted run" in caplog.text


def test_scratch_folder_is_recognised_once_its_run_is_gone(tmp_path):
    scratch = scratch_dir(tmp_path)
    name = os.path.basename(scratch.name)
    assert name.startswith(f".stardist-host-{os.getpid()}-")
    assert remove_stale(tmp_path) == []  # this run is alive
    scratch.cleanup()


def test_claim_outputs_checks_every_output_before_locking_any(tmp_path):
    (tmp_path / "b.csv").write_text("earlier")
    with pytest.raises(OutputError, match="b.csv' exists already"):
        with claim_outputs([tmp_path / "a.csv", tmp_path / "b.csv"]):
            pass
    assert not list(tmp_path.glob(".*.lock"))
    with claim_outputs([tmp_path / "a.csv", tmp_path / "b.csv"], overwrite=True) as claimed:
        assert claimed == [tmp_path / "a.csv", tmp_path / "b.csv"]
        assert sorted(p.name for p in tmp_path.glob(".*.lock")) == [".a.csv.lock", ".b.csv.lock"]
    assert not list(tmp_path.glob(".*.lock"))


@pytest.mark.parametrize("name, stem", [
    ("2024.05.01_embryo1.tif", "2024.05.01_embryo1"),
    ("seg.ome.tif", "seg"),
    ("Series.OME.TIFF", "Series"),
    ("tl.zarr", "tl"),
    ("scan.czi", "scan"),
    ("notes", "notes"),
])
def test_file_stem_keeps_the_dots_of_a_name(name, stem):
    assert files.file_stem(name) == stem
