"""NMS and rendering in worker processes, fed through shared memory.

One NMS call is C code that holds Python's GIL while it runs (its inner loops
are OpenMP-parallel), so two threads never run two NMS calls at once; worker
processes do.  The parent picks each plane's (volume's) candidates from the
network output, as stardist's sparse prediction does (cheap: a threshold and a
gather), and copies them, a tenth or less of the output, into one
``multiprocessing.shared_memory`` block, which also has room for the labels
the worker writes back.  No array is pickled.  A worker attaches to it,
runs NMS and renders the labels with the same stardist calls as the model's own
``_instances_from_prediction``
(:func:`~stardist_host.segmentation.stardist_compat.instances_from_config`).
Workers rebuild what they need from
:func:`~stardist_host.segmentation.stardist_compat.nms_config` (grid, axes,
rays): they never import TensorFlow, and they start with the ``spawn``
method, so no TensorFlow state is forked.

The parent owns every block: it unlinks it once the worker's result (or
error, or cancellation) is in.  :meth:`NmsPool.close` cancels queued work,
waits for running work (at most one unit per worker) and unlinks what is left.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import current_process, get_context
from multiprocessing.shared_memory import SharedMemory

import numpy as np
from numpy.typing import NDArray

from ..errors import SettingsError
from .device import host_memory_budget

__all__ = ["NmsPool", "auto_workers", "resolve_workers", "available_cores", "ENV_WORKERS", "WORKER_BYTES"]

log = logging.getLogger(__name__)

#: Environment variable overriding the number of NMS worker processes (1: NMS on threads in-process).
ENV_WORKERS = "STARDIST_HOST_NMS_WORKERS"
#: Resident memory of one worker after its first unit (numpy, scipy, stardist; measured 143 MB),
#: rounded up: the memory budget pays this per worker before any unit.
WORKER_BYTES = 160 * 2**20
_ALLOWED = "must be a whole number of worker processes, 1 or more"
# The most workers chosen automatically: beyond this the parent's single network thread is the limit.
_MAX_AUTO = 8


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def auto_workers(*, cores: int | None = None, memory: int | None = None) -> int:
    """Worker processes that fit the cores and the memory budget: one per core, at most 8, at least 1.

    Parameters
    ----------
    cores
        None: :func:`available_cores`.
    memory
        Bytes for post-processing; None:
        :func:`~stardist_host.segmentation.device.host_memory_budget`.  Each
        worker costs :data:`WORKER_BYTES`, and half the budget is left for the units in flight.
    """
    cores = available_cores() if cores is None else cores
    memory = host_memory_budget() if memory is None else memory
    return max(1, min(cores, _MAX_AUTO, memory // 2 // WORKER_BYTES))


def resolve_workers(workers: int | None, *, memory: int | None = None) -> int:
    """The worker count: :data:`ENV_WORKERS` if set, else ``workers``, else :func:`auto_workers`.

    Raises
    ------
    SettingsError
        The environment variable or ``workers`` is not a whole number of at least 1.
    """
    text = os.environ.get(ENV_WORKERS, "").strip()
    if text:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise SettingsError(ENV_WORKERS, text, _ALLOWED)
        return value
    if workers is None:
        return auto_workers(memory=memory)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SettingsError("nms_workers", workers, _ALLOWED)
    return workers


def can_spawn() -> bool:
    """Whether worker processes can start: ``sys.executable`` is a Python, not an embedding host application,
    and this process is not a daemon (as a SEPARATE_PROCESS child is: daemons may not have children)."""
    name = os.path.basename(sys.executable or "").lower()
    return name.startswith(("python", "pypy")) and not current_process().daemon


def _check_shared_room(size: int) -> None:
    """Refuse a block that the shared-memory file system cannot hold.

    On Linux a block is a sparse file in /dev/shm: creating it succeeds whatever
    its size, and copying into it past the file system's limit (64 MB in a
    default Docker container) kills the process with SIGBUS.  A MemoryError here
    makes the caller keep NMS on threads instead.
    """
    if not os.path.isdir("/dev/shm"):
        return
    free = shutil.disk_usage("/dev/shm").free
    if size > free:
        raise MemoryError(f"a {size / 1e6:.0f} MB block does not fit the {free / 1e6:.0f} MB free in /dev/shm")


# --- in the worker process ------------------------------------------------------------------


def _init_worker(threads: int) -> None:
    """Before stardist loads OpenMP: this worker's share of the cores, and OpenMP threads that sleep at barriers.

    With a spinning wait (libgomp's default), a worker's two OpenMP threads
    ran NMS at a third of the speed of one thread while another process kept
    one of the two cores busy (34 against 74 planes/s, 256²); sleeping, at
    nearly the speed of one (62/s), and as fast as spinning on idle cores
    (``benchmarks/README.md``).  A user's own ``OMP_WAIT_POLICY`` is kept.
    """
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import stardist.geometry  # noqa: F401
    import stardist.nms  # noqa: F401

    from . import stardist_compat  # noqa: F401  (imports stardist's NMS now, not in the first unit)


def _views(buf, layout: tuple) -> list[NDArray]:
    """Arrays in a shared block: ``layout`` is ((shape, dtype, offset), …)."""
    return [np.ndarray(shape, dtype, buffer=buf, offset=offset) for shape, dtype, offset in layout]


def _labels(config: dict, block: str, layout: tuple, nms_thresh: float) -> str:
    """In a worker: NMS and rendering of the candidates in ``block``; the labels go into its last array (int32).

    Returns the dtype stardist gave the labels, which the parent restores.
    """
    from . import stardist_compat as compat

    shm = SharedMemory(name=block)
    try:
        points, probs, dists, target = _views(shm.buf, layout)
        labels = compat.instances_from_config(config, target.shape, points, probs, dists, nms_thresh=nms_thresh)
        target[...] = labels  # label numbers count objects of one unit: far below 2**31
        del points, probs, dists, target  # views of the block: released before it closes
        return labels.dtype.str
    finally:
        shm.close()


def _imported(names: tuple[str, ...]) -> list[str]:
    """In a worker: which of ``names`` are imported (the tests check that TensorFlow is not)."""
    return [n for n in names if n in sys.modules]


# --- in the parent --------------------------------------------------------------------------


class NmsPool:
    """Worker processes that turn network outputs into labels.

    Parameters
    ----------
    config
        From :func:`~stardist_host.segmentation.stardist_compat.nms_config`.
    workers
        Processes (at least 1).
    threads
        OpenMP threads per worker; None: the cores divided among the workers, at least 1.
    """

    def __init__(self, config: dict, *, workers: int, threads: int | None = None) -> None:
        self.config = config
        self.workers = workers
        self.threads = threads or max(1, available_cores() // workers)
        self._blocks: dict[str, SharedMemory] = {}
        #: The error that broke the pool (a worker process died), or None.
        self.broken: BaseException | None = None
        self._executor = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                             initializer=_init_worker, initargs=(self.threads,))
        log.info("NMS in %d worker process(es), %d OpenMP thread(s) each", workers, self.threads)

    def __enter__(self) -> "NmsPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def warm_up(self) -> list[Future]:
        """Start every worker now (spawning and importing take about a second), so that the first units do not wait."""
        return [self._executor.submit(_imported, ("stardist.nms",)) for _ in range(self.workers)]

    def call(self, function, *args):
        """``function(*args)`` run in a worker (a module-level function, for checks such as the tests')."""
        return self._executor.submit(function, *args).result()

    def imported(self, names: tuple[str, ...]) -> list[str]:
        """Which of the modules ``names`` a worker has imported (after its work so far)."""
        return self.call(_imported, tuple(names))

    def submit(self, points: NDArray, probs: NDArray, dists: NDArray, *, shape: tuple[int, ...],
               nms_thresh: float) -> Future:
        """Labels of one unit, computed in a worker from its candidates (copied once into shared memory).

        Parameters
        ----------
        points, probs, dists
            The unit's candidates, from
            :func:`~stardist_host.segmentation.stardist_compat.candidates`.
        shape
            The unit's shape (the labels' shape).
        nms_thresh
            Overlap threshold of NMS.
        """
        places = [(a.shape, a.dtype) for a in (points, probs, dists)] + [(tuple(shape), np.dtype(np.int32))]
        layout, offset = [], 0
        for place_shape, dtype in places:
            layout.append((place_shape, dtype.str, offset))
            offset += -(-math.prod(place_shape) * dtype.itemsize // 8) * 8  # each array 8-byte aligned
        _check_shared_room(offset)
        # one block per unit, the candidates in and the labels out: each block costs system calls and
        # messages to multiprocessing's resource tracker, which the parent pays for every unit
        shm = SharedMemory(create=True, size=max(1, offset))
        self._blocks[shm.name] = shm
        try:
            for view, array in zip(_views(shm.buf, tuple(layout[:3])), (points, probs, dists)):
                view[...] = array
            del view
            work = self._executor.submit(_labels, self.config, shm.name, tuple(layout), nms_thresh)
        except BaseException:
            self._release(shm.name)
            raise
        result: Future = Future()
        work.add_done_callback(lambda f: self._finish(f, result, shm.name, layout[3]))
        return result

    def _finish(self, work: Future, result: Future, block: str, place: tuple) -> None:
        """When a worker is done: the labels copied out of the block, the block released, then ``result`` set."""
        labels, error = None, (None if work.cancelled() else work.exception())
        if isinstance(error, BrokenProcessPool):
            self.broken = error
        try:
            if not work.cancelled() and error is None:
                view, = _views(self._blocks[block].buf, (place,))
                labels = view.astype(work.result())  # a copy, in the dtype stardist gave
                del view
        except BaseException as err:  # noqa: BLE001 (an error in a callback would only be logged)
            error = err
        finally:
            self._release(block)
        if work.cancelled():
            result.cancel()
        elif error is not None:
            result.set_exception(error)
        else:
            result.set_result(labels)

    def _release(self, name: str) -> None:
        shm = self._blocks.pop(name, None)
        if shm is None:
            return
        shm.close()
        with contextlib.suppress(FileNotFoundError):
            shm.unlink()

    @property
    def blocks_held(self) -> int:
        """Shared memory blocks not yet released (0 once every unit is done)."""
        return len(self._blocks)

    def close(self) -> None:
        """Drop queued units, wait for running ones, stop the workers and release every block."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        for name in list(self._blocks):
            self._release(name)


def worth_processes(nms_seconds: float, remaining: float, workers: int) -> bool:
    """Whether starting ``workers`` processes pays: the NMS time they save exceeds their start-up.

    ``nms_seconds`` is one unit's NMS measured on a thread, ``remaining`` the
    units still to come (``math.inf`` when unknown).  Start-up is taken as
    :data:`STARTUP_SECONDS` (measured), saved time as the fraction of NMS the
    extra workers take off one core.
    """
    if workers < 2:
        return False
    saved = remaining * nms_seconds * (1 - 1 / workers)
    return saved > STARTUP_SECONDS if math.isfinite(saved) else nms_seconds > 0


#: Seconds from starting a worker pool to its first result (spawn, import numpy, scipy and stardist),
#: measured with two workers on two busy cores and rounded up.
STARTUP_SECONDS = 3.0
