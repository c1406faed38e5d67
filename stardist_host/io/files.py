"""Writing result files safely: one atomic-write helper, output checks, a lock per output.

Every file the package writes (OME-TIFF, CSV, JSON, PNG, model files) goes
through :func:`atomic_write`: the data go to a hidden temporary file beside the
target, with a name unique to this run, are flushed to disk, and only then
replace the target.  An interrupted run leaves no file that looks complete;
a replace that fails (the old output open in Fiji, an antivirus scan) keeps
the finished file under a clear name and says where, never deletes it.

:func:`check_output` refuses, before any work, an output that exists (unless
``overwrite``), is the input, is a directory or lies in a folder that cannot be
written; :class:`OutputLock` (an OS lock, released by the kernel when a run's
process dies) makes a second run on the same output stop with "in use" instead
of mixing bytes.  Leftovers of killed runs (``.NAME.*.partial`` files and
scratch folders whose process is gone) are removed and named in the log by
:func:`remove_stale`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import OutputBusyError, OutputError

__all__ = [
    "atomic_write",
    "check_output",
    "file_stem",
    "claim_outputs",
    "OutputLock",
    "remove_stale",
    "scratch_dir",
    "REPLACE_RETRIES",
]

log = logging.getLogger(__name__)

#: Tries of the final replace; Windows refuses it while another program has the target open.
REPLACE_RETRIES = 5
_RETRY_DELAY = 0.2  # seconds, doubled after each try

_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.partial$")
_SCRATCH = re.compile(r"^\.?stardist-host-(?P<pid>\d+)-(?P<host>[A-Za-z0-9]*)-")


def _host() -> str:
    """This machine's name as file names carry it: a run's process id means something only on its own machine."""
    import socket

    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24]


def _pid_alive(pid: int) -> bool:
    import psutil

    return pid == os.getpid() or psutil.pid_exists(pid)


_KNOWN_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr", ".btf", ".czi", ".lif", ".nd2",
                   ".png", ".jpg", ".csv")


def file_stem(path: str | os.PathLike) -> str:
    """A file's name without its format's suffix: ``2024.05.01_embryo.ome.tif`` -> ``2024.05.01_embryo``.

    Only known image and table suffixes are taken off, so dots inside the name stay.
    """
    name = Path(path).name
    for suffix in _KNOWN_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or name


def _kept_name(path: Path) -> Path:
    """A free name beside ``path`` for a finished result that could not replace it."""
    stem = file_stem(path)
    suffix = path.name[len(stem):]
    for i in range(1, 1000):
        candidate = path.with_name(f"{stem}.new{'' if i == 1 else i}{suffix}")
        if not candidate.exists():
            return candidate
    raise OutputError(f"no free name beside {str(path)!r} to keep the finished result")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, it replaces ``path``.

    The temporary file is ``.NAME.PID-RANDOM.partial``: hidden, unique to the
    run, and recognisable as unfinished.  On error inside the block it is
    removed.  The finished file is fsynced before the replace; with
    ``fsync=False`` it is not, for files written by the hundred whose reader
    takes one that cannot be read whole as missing: a killed process still
    leaves the old file or the new one whole, but after a power loss the new
    name may hold no data.

    Raises
    ------
    OutputBusyError
        The replace kept failing (the target is open in another program).  The
        finished file has been kept as ``NAME.new.EXT`` and the message says so.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for attempt in range(REPLACE_RETRIES):
        try:
            os.replace(tmp, path)
            return
        except PermissionError as err:  # Windows: the target is open elsewhere
            last = err
            if attempt < REPLACE_RETRIES - 1:
                time.sleep(_RETRY_DELAY * 2**attempt)
        except OSError as err:
            last = err
            break
    kept = _kept_name(path)
    try:
        os.replace(tmp, kept)
    except OSError:
        kept = tmp  # the finished file stays where it is, under its temporary name
    raise OutputBusyError(
        f"{str(path)!r} could not be replaced ({last.strerror or last}); is it open in another program? "
        f"The finished result is kept as {str(kept)!r}: close the other program and rename it"
    ) from last


def check_output(
    output: str | os.PathLike, *, inputs: tuple[str | os.PathLike, ...] = (), overwrite: bool = False,
    suffixes: tuple[str, ...] | None = None,
) -> Path:
    """Refuse an output that cannot or may not be written, before any work is done.

    Parameters
    ----------
    output
        The file to write.
    inputs
        Files the run reads; the output may be none of them.
    overwrite
        Whether an existing file at ``output`` may be replaced.
    suffixes
        Allowed endings (lower case), e.g. ``(".tif", ".tiff")``.

    Raises
    ------
    OutputError
        Naming the path, what is wrong and what to do.
    """
    out = Path(output)
    if out.is_dir():
        example = out / f"result{suffixes[0] if suffixes else ''}"
        raise OutputError(f"output {str(out)!r} is a folder; give a file name inside it, e.g. {str(example)!r}")
    if suffixes and not out.name.lower().endswith(suffixes):
        raise OutputError(f"output {str(out)!r} must end in {' or '.join(suffixes)} (e.g. result{suffixes[0]})")
    folder = out.parent
    if not folder.is_dir():
        raise OutputError(f"output {str(out)!r}: the folder {str(folder)!r} does not exist")
    for given in inputs:
        if out.exists() and Path(given).exists() and out.resolve() == Path(given).resolve():
            raise OutputError(f"output {str(out)!r} is an input file; input files are never overwritten")
    if out.exists() and not overwrite:
        raise OutputError(
            f"output {str(out)!r} exists already; choose another name, or replace it with --overwrite "
            "(scripts: OVERWRITE = True)"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output {str(out)!r}: the folder {str(folder)!r} cannot be written (read-only?)")
    return out


class OutputLock:
    """An exclusive claim on an output path for the length of a run: an OS lock on ``.NAME.lock`` (:mod:`filelock`).

    The kernel releases it when the run's process ends, however it ends; a second run gets :class:`OutputBusyError`
    naming the holder, which the file names (``PID HOST``) while held.  The file is removed on release; one left by a
    killed run is taken over and logged, one naming another machine never (an OS lock need not reach across machines).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        import filelock  # here: its import (asyncio, about 0.1 s) is for headless runs only, a host locks nothing

        self.path = Path(path)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        self._lock = filelock.FileLock(self.lock_path, timeout=0, on_acquired=_write_owner)

    def acquire(self) -> "OutputLock":
        pid, host = _read_owner(self.lock_path)
        if host and host != _host():
            raise self._busy(pid, host)
        try:
            self._lock.acquire()
        except TimeoutError:  # filelock.Timeout: another process holds it
            raise self._busy(*_read_owner(self.lock_path)) from None
        except OSError as err:  # a read-only folder, a file system without locks
            raise OutputError(f"output {str(self.path)!r} cannot be locked ({err.strerror or err})") from err
        if pid is not None and not _pid_alive(pid):  # not a run that ended cleanly just now: a killed one's file
            log.warning("removing %s, left by a run (process %d) that no longer runs", self.lock_path, pid)
        return self

    def _busy(self, pid: int | None, host: str) -> OutputBusyError:
        where = "" if pid is None else f" (process {pid}{f' on {host}' if host != _host() else ''})"
        return OutputBusyError(f"output {str(self.path)!r} is in use by another run{where}; wait for it to end or "
                               f"choose another output (if no run is active, delete {str(self.lock_path)!r})")

    def release(self) -> None:
        if self._lock.is_locked:
            with contextlib.suppress(OSError):  # Windows refuses while open; filelock removes it there
                self.lock_path.unlink()  # before unlocking: a file that another run has locked is never removed
            self._lock.release()

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _write_owner(fd: int) -> None:
    """Name this run in the lock file it has just locked, through the locking descriptor (Windows allows no other)."""
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()} {_host()}".encode())


def _read_owner(path: Path) -> tuple[int | None, str]:
    """(process id, host) that a lock file names; (None, "") where it names none; without a host (older): this host."""
    try:
        pid, _, host = path.read_text().strip().partition(" ")
    except OSError:  # no lock file, or (Windows) its holder's lock keeps it unreadable
        return None, ""
    return (int(pid), host or _host()) if pid.isdigit() else (None, "")


@contextlib.contextmanager
def claim_outputs(
    paths: Sequence[str | os.PathLike], *, inputs: Sequence[str | os.PathLike] = (), overwrite: bool = False,
) -> Iterator[list[Path]]:
    """Check every output (:func:`check_output`), lock each and remove what killed runs left beside them.

    All of it happens before any work, so a run that cannot write one of its
    outputs stops at once; the locks are held until the block ends.
    """
    checked = [check_output(p, inputs=tuple(inputs), overwrite=overwrite) for p in paths]
    with contextlib.ExitStack() as stack:
        for path in checked:
            stack.enter_context(OutputLock(path))
            remove_stale(path.parent, path.name)
        yield checked


def remove_stale(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove what killed runs left in ``folder``, and return what was removed.

    That is ``.NAME.PID-RANDOM.partial`` files of output ``name`` (call it
    while holding that output's :class:`OutputLock`) and this machine's
    ``.stardist-host-PID-HOST-*`` scratch folders whose process no longer runs.
    A folder shared between machines (NFS, SMB) keeps what other machines'
    runs write.  Each removal is named in the log.
    """
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        partial, scratch = _PARTIAL.match(entry.name), _SCRATCH.match(entry.name)
        if partial and (name is None or partial["name"] != name):
            continue  # another output's partial file: only that output's run, holding its lock, may remove it
        if scratch and scratch["host"] != _host():
            continue  # a run on another machine that shares this folder
        match = partial or scratch
        if match is None or _pid_alive(int(match["pid"])):
            continue
        size = entry.stat().st_size if entry.is_file() else sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
        log.warning("removing %s (%.1f MB) left by an interrupted run", entry, size / 1e6)
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def scratch_dir(parent: str | os.PathLike | None = None) -> tempfile.TemporaryDirectory:
    """A hidden scratch folder ``.stardist-host-PID-*`` that :func:`remove_stale` recognises once its run is gone."""
    return tempfile.TemporaryDirectory(prefix=f".stardist-host-{os.getpid()}-{_host()}-", dir=parent)
