"""Model loading and prediction in a child process, so that TensorFlow stays out of the host's process.

With SEPARATE_PROCESS (by default inside a host) :func:`run_in_child` starts
a child process with multiprocessing's "spawn" context (what Windows uses
anyway: a fresh interpreter, no inherited locks or CUDA state).  The child
imports TensorFlow, loads the model, segments, and exits when the run ends,
so the GPU memory TensorFlow took goes back with it; a crash or an
out-of-memory kill ends the child, not the host.

The seam: the child runs the same :func:`~stardist_host.segmentation.segment.segment`
as an in-process run (pipeline, normalisation, label numbering, clean-up
included) against :class:`_RemoteImageSet`, a stand-in whose
``get_channeldata`` / ``set_channeldata`` / ``add_channel`` /
``remove_channel`` are messages that the host's calling thread answers.  So
every image-set call still happens on the thread that called ``run`` (the
host-thread-affinity rule), the labels are those of an in-process run, and
nothing in the pipeline knows about processes.  The other seam, a "remote
model" that the host's pipeline calls, would have left normalisation, NMS and
stardist's post-processing (and their imports) in the host and split
:mod:`~stardist_host.segmentation.pipeline`'s batching across two processes.

Transport: one duplex pipe (``multiprocessing.Pipe``) for planes, labels,
progress and log records, rather than shared memory.  A plane is a few MB at
most and crosses a pipe in milliseconds, against tenths of seconds to seconds
of prediction; a shared-memory block would still need the pipe to say when
it is filled, and would outlive a child that is killed (left in /dev/shm,
or a resource-tracker warning) unless the host cleaned it up.  A pipe needs
no clean-up, and a dead child shows as end-of-file at once.

What is in flight is bounded: a read is a request that waits for its one
plane, so the child holds no more planes than the pipeline's own byte bound
(:func:`~stardist_host.segmentation.device.host_memory_budget`); label
planes are sent without waiting, and the pipe's buffer holds at most a plane
or so before the child waits for the host to take them.

Failures: an error raised in the child (a ModelError, a SettingsError, a
LabelOverflowError) arrives in the host as the same class with the same
message (the child's traceback as its ``__cause__``), the child having
removed its channel through the host as an in-process run does.  A child that
ends without a word (crash, ``os._exit``, killed by the system for lack of
memory) becomes :class:`SegmentationProcessError`; an error in the host's own
calls (a failing read, write or progress callback), a cancel or Ctrl-C stop
the child at once.  In those cases the host removes the label channel itself.
The child's log records go to the host's loggers of the same names.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import traceback
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import Cancelled, SegmentationProcessError, SettingsError
from ..host import ImageSet
from ..segmentation.plan import Plan
from ..segmentation.segment import abandon, segment_with_settings
from ..segmentation.settings import Settings

__all__ = ["run_in_child", "SegmentationProcessError", "PROCESS_NAME"]

log = logging.getLogger(__name__)

#: The child process's name, as it appears in log records (``processName``) and process lists.
PROCESS_NAME = "stardist-host-segmentation"
# How often the host asks cancel() while the child works (seconds).
_POLL = 0.1
# Seconds a child that sent its result, or was terminated, gets to end before it is killed.
_EXIT_WAIT = 10.0


class _RemoteTraceback(Exception):
    """The child's traceback, shown as the cause of the error it sent (as concurrent.futures does)."""

    def __str__(self) -> str:
        return f'\n"""\n{self.args[0]}"""'


# ----- the child's side ----------------------------------------------------------------------------------------


class _Link:
    """The child's end of the pipe: sends from any thread (log records come from the pipeline's threads)."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, message: tuple) -> None:
        with self._lock:
            self.conn.send(message)

    def call(self, *request: Any) -> Any:
        """A request the host answers; its error is raised here."""
        self.send(request)
        kind, value = self.conn.recv()  # only the main thread calls, so replies come in order
        if kind == "raise":
            raise value
        return value

    def put_nowait(self, record: logging.LogRecord) -> None:  # a queue for logging's QueueHandler
        self.send(("log", record))


class _RemoteImageSet:
    """The host's image set as the child sees it: its properties at the start of the run, plane calls over the pipe.

    Made in the host and pickled into the child, which gives it its end of the pipe (``_link``).
    """

    def __init__(self, imageset: ImageSet) -> None:
        voxel = imageset.voxel_size
        self._link: _Link | None = None
        self.plane_count = int(imageset.plane_count)
        self.time_point_count = int(imageset.time_point_count)
        self.plane_shape = tuple(int(n) for n in imageset.plane_shape)
        self.channel_names = [str(n) for n in imageset.channel_names]
        self.voxel_size = None if voxel is None else tuple(None if v is None else float(v) for v in voxel)
        self.current_time_point = int(imageset.current_time_point)
        if hasattr(imageset, "remove_channel"):  # only where the host's has it: segment() falls back to zeroing
            self.remove_channel = self._remove_channel

    @property
    def channel_count(self) -> int:
        return len(self.channel_names)

    def get_channeldata(self, channel: int, plane: int, time_point: int) -> np.ndarray:
        return self._link.call("get", channel, plane, time_point)

    def set_channeldata(self, channel: int, plane: int, time_point: int, data: np.ndarray) -> None:
        self._link.send(("set", channel, plane, time_point, np.ascontiguousarray(data)))

    def add_channel(self, name: str, dtype) -> int:
        index = self._link.call("add", name, np.dtype(dtype).str)
        self.channel_names.append(name)
        return index

    def _remove_channel(self, index: int) -> None:
        self._link.call("remove", index)
        self.channel_names.pop()


@dataclass(frozen=True)
class _Job:
    """What the child is to do: the settings, the plan and the host's view of the image set."""

    settings: Settings
    plan: Plan
    output_name: str
    imageset: _RemoteImageSet
    log_level: int
    models_dir: str


def _portable(err: BaseException) -> tuple[BaseException, tuple]:
    """``err`` if it survives pickling (with its args, which a note may have extended), else a RuntimeError."""
    try:
        pickle.loads(pickle.dumps((err, err.args)))
        return err, err.args
    except Exception:
        plain = RuntimeError(f"{type(err).__name__}: {err}")
        return plain, plain.args


def _child_main(conn, job: _Job, work: Callable | None = None) -> None:
    """The child process: forward logs, segment through the host, send the result or the error, end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the host's to handle; it then stops this process
    os.environ["STARDIST_HOST_MODELS"] = job.models_dir  # the host's bundled models, wherever it found them
    link = _Link(conn)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(link)]
    root.setLevel(logging.WARNING)
    logging.getLogger("stardist_host").setLevel(job.log_level)
    try:
        job.imageset._link = link
        result = (work or _segment)(job, job.imageset, lambda done, total: link.send(("progress", done, total)))
    except BaseException as err:
        link.send(("error", *_portable(err), traceback.format_exc()))
    else:
        link.send(("done", result))
    finally:
        root.handlers[:] = []
        conn.close()


def _segment(job: _Job, imageset: _RemoteImageSet, progress: Callable[[int, int], None]):
    return segment_with_settings(job.settings, imageset, job.plan, output_name=job.output_name, progress=progress)


# ----- the host's side -----------------------------------------------------------------------------------------


@dataclass
class _Run:
    """The host's record of a child's run: the channel it added, the planes written, progress."""

    imageset: ImageSet
    ndim: int
    out: int | None = None
    written: list = field(default_factory=list)
    done: int = 0
    total: int = 0

    def where(self) -> str:
        what = "planes" if self.ndim == 2 else "volumes"
        return f" after {self.done} of {self.total} {what}" if self.total else ""


def run_in_child(settings: Settings, imageset: ImageSet, plan: Plan, *, output_name: str,
                 progress: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
                 _work: Callable | None = None):
    """Segment ``plan`` of ``imageset`` with the model loaded and run in a child process.

    The image set, ``progress`` and ``cancel`` are called on the calling
    thread only, and TensorFlow is never imported here.  The child ends
    before this returns or raises.

    Parameters
    ----------
    settings
        Validated settings; the child uses them as an in-process run does.
    imageset
        The image set, plan from :func:`~stardist_host.segmentation.plan.make_plan`.
    plan
        What to segment.
    output_name
        Name of the new label channel.
    progress
        Called as ``progress(done, total)`` after each plane or volume is written.
    cancel
        Asked about ten times a second and after each message; True stops the
        child at once and raises :class:`~stardist_host.errors.Cancelled`.

    Returns
    -------
    SegmentResult

    Raises
    ------
    SegmentationProcessError
        The child ended without finishing (crash, killed for lack of memory).
    StardistHostError
        Any error of the run, as an in-process run raises it.
    """
    from ..segmentation.models import bundled_models_dir

    job = _Job(settings, plan, output_name, _RemoteImageSet(imageset),
               logging.getLogger("stardist_host").getEffectiveLevel(), str(bundled_models_dir()))
    context = multiprocessing.get_context("spawn")
    conn, child_conn = context.Pipe()
    process = context.Process(target=_child_main, args=(child_conn, job, _work), name=PROCESS_NAME, daemon=True)
    with _spawning(context):
        process.start()
    child_conn.close()  # so that the child's end closes when the child ends, and recv() sees it
    log.info("segmentation process %d started (SEPARATE_PROCESS): the model runs there", process.pid)
    run = _Run(imageset, plan.ndim, total=len(plan.units))
    try:
        message = _serve(conn, process, run, progress=progress, cancel=cancel)
    except BaseException as err:
        _stop(process, wait=0)
        if run.out is not None:  # remove (or zero) the channel the child added, as segment() does, naming it in err
            abandon(imageset, run.out, output_name, run.written, err)
        raise
    finally:
        _stop(process, wait=_EXIT_WAIT)  # after its result the child ends by itself, freeing the GPU's memory
        conn.close()
    return _outcome(message)


def _outcome(message: tuple):
    """The child's result, or its error raised as the same class with the same message."""
    if message[0] == "done":
        return message[1]
    _, err, args, text = message
    err.args = args  # the notes segment() added in the child (a SettingsError pickles its three fields only)
    raise err from _RemoteTraceback(text)


def _serve(conn, process, run: _Run, *, progress, cancel) -> tuple:
    """Answer the child's calls on this thread until it sends its result or error."""
    while True:
        if cancel is not None and cancel():
            raise Cancelled(f"cancelled: segmentation stopped on request{run.where()}")
        try:
            if not conn.poll(_POLL):
                continue
            message = conn.recv()
        except (EOFError, OSError):
            raise _ended(process, run) from None
        if message[0] in ("done", "error"):
            return message
        reply = _answer(message, run, progress)
        if reply is not None:
            try:
                conn.send(reply)
            except OSError:  # the child ended while the host answered
                raise _ended(process, run) from None


def _answer(message: tuple, run: _Run, progress) -> tuple | None:
    """Do what one message asks, on the calling thread; the reply to send, or None."""
    kind, *args = message
    imageset = run.imageset
    if kind == "log":
        record = args[0]
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
    elif kind == "get":
        return "ok", np.asarray(imageset.get_channeldata(*args))
    elif kind == "set":
        channel, plane, time_point, data = args
        if channel == run.out:
            run.written.append((plane, time_point))
        imageset.set_channeldata(channel, plane, time_point, data)
    elif kind == "add":
        run.out = imageset.add_channel(args[0], np.dtype(args[1]))
        return "ok", run.out
    elif kind == "remove":
        try:
            imageset.remove_channel(args[0])
        except Exception as err:  # segment() in the child notes it on the run's error
            return "raise", RuntimeError(f"{type(err).__name__}: {err}")
        run.out = None
        return "ok", None
    elif kind == "progress":
        run.done, run.total = args
        if progress is not None:
            progress(*args)
    else:
        raise RuntimeError(f"unknown message {kind!r} from the segmentation process")
    return None


def _ended(process, run: _Run) -> SegmentationProcessError:
    """The error for a child that ended without a result: its exit code and what to try."""
    process.join(_EXIT_WAIT)
    code = process.exitcode
    how = f"exit code {code}"
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            how += f", killed by {signal.Signals(-code).name}"
    return SegmentationProcessError(
        f"the segmentation process ended unexpectedly ({how}){run.where()}; it may have run out of memory "
        "(the system ends a process that takes too much): try N_TILES (e.g. (2, 2) or more), or USE_GPU=False "
        "on a GPU, or a lower GPU_MEMORY_LIMIT_MB"
    )


def _stop(process, *, wait: float) -> None:
    """End the child: wait up to ``wait`` seconds for it to end by itself, then terminate it, then kill it."""
    process.join(wait)
    if process.is_alive():
        process.terminate()
        process.join(_EXIT_WAIT)
    if process.is_alive():
        process.kill()
        process.join()


@contextlib.contextmanager
def _spawning(context):
    """Start a spawned child that neither re-runs the host's main script nor starts the host's executable.

    spawn runs the parent's ``__main__`` file again in the child (as
    ``__mp_main__``); the scripts start their job at import time, so the
    child would run the script instead of its job.  The child needs nothing
    from ``__main__``, so it is hidden while the child starts.  An embedding
    host's ``sys.executable`` may be the host application itself; then the
    Python beside it (``STARDIST_HOST_PYTHON`` overrides) starts the child.
    """
    from multiprocessing import spawn

    main = sys.modules.get("__main__")
    executable = spawn.get_executable()  # bytes on some versions
    python = _python(os.fsdecode(executable))
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        context.set_executable(python)
        yield
    finally:
        context.set_executable(executable)
        if main is not None:
            sys.modules["__main__"] = main


def _python(executable: str) -> str:
    """The interpreter that starts the child: STARDIST_HOST_PYTHON, else ``executable`` if it is a Python."""
    given = os.environ.get("STARDIST_HOST_PYTHON")
    if given:
        if not os.path.isfile(given):
            raise SettingsError("STARDIST_HOST_PYTHON", given, "must be the path of a Python interpreter (python.exe)")
        return given
    if os.path.basename(executable).lower().startswith("python"):
        return executable
    names = ("python.exe", "pythonw.exe") if sys.platform == "win32" else ("bin/python3", "bin/python")
    for name in names:
        candidate = os.path.join(sys.exec_prefix, name)
        if os.path.isfile(candidate):
            return candidate
    raise SettingsError(
        "SEPARATE_PROCESS", True, f"needs a Python interpreter to start, but this process runs {executable} and "
        f"there is no Python in {sys.exec_prefix}: set STARDIST_HOST_PYTHON to the environment's python.exe, "
        "or SEPARATE_PROCESS=False")
