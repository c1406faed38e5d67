"""Fast inference: planes in batches through the network, overlapped with reading and NMS.

stardist's ``predict_instances`` calls Keras' ``predict`` once per plane; for
small planes its per-call overhead costs more than the network itself, and
non-maximum suppression (NMS) then runs while the network waits.  Here:

- the calling thread reads and normalises each plane (volume) through the
  ``read`` callable, pads it exactly as stardist does and stacks those of one
  shape into a batch; it is the only thread that calls ``read`` and the only
  one that sees the results, so a host's image set is used from the thread
  that owns it;
- one network thread calls the network on each batch (a compiled function,
  not ``predict``);
- worker threads turn each plane's probabilities and distances into labels
  with stardist's own thresholding, NMS and rendering
  (:mod:`stardist_host.segmentation.stardist_compat`).  When the network runs
  on a GPU and the NMS time measured on the first unit shows that worker
  processes pay for their start-up
  (:func:`~stardist_host.segmentation.nms_workers.worth_processes`), the rest
  goes to worker processes through shared memory
  (:mod:`stardist_host.segmentation.nms_workers`): one NMS call holds the GIL,
  so threads never run two at once.  On a CPU the network's own threads
  already fill the cores, and NMS stays on threads (measured by
  ``benchmarks/bench_inference.py``: threads were faster at every size).
  A worker process that dies takes no unit with it: the unit is redone on a
  thread and the rest stay there.

So the labels are those of ``predict_instances`` on the same input, up to the
last bits of float32 arithmetic in a batched call.  Units that need tiling, Z
rescaling, or that are too big for one prediction go through stardist's own
``predict_instances`` (or ``predict_instances_big``) on the network thread,
with automatic tile counts and a retry with more tiles when TensorFlow runs
out of memory.  Units read but not yet handed back are bounded in bytes
(:func:`~stardist_host.segmentation.device.host_memory_budget`), not counted.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable, Iterator

import numpy as np
from numpy.typing import NDArray

from ..console import stdout_to_log
from ..errors import Cancelled
from . import nms_workers as procs
from . import stardist_compat as compat
from .device import host_memory_budget, memory_budget, network_on_gpu

__all__ = ["BatchedPredictor", "UnitPredictor", "predict_units", "auto_n_tiles", "batch_limit", "memory_budget",
           "is_out_of_memory", "plan_blocks", "BlockPlan", "BIG_PIXELS"]

log = logging.getLogger(__name__)

#: Planes (volumes) above this many pixels (voxels) go through predict_instances_big.
BIG_PIXELS = 8192 * 8192
# Block edge asked of predict_instances_big (before the planner fits it to the shape):
# 4096^2 pixels or 256^3 voxels, a quarter of BIG_PIXELS, each then tiled to fit the budget.
BIG_BLOCK = {2: 4096, 3: 256}
# Overlap of neighbouring blocks: objects up to this size (pixels) are never cut.
_BIG_OVERLAP = 96
# Largest automatic batch: beyond 8 to 16 planes a CPU gains nothing, and memory stays small.
_MAX_BATCH = 16
# Bytes of network activations per input pixel (voxel), measured for stardist's default
# U-Nets in float32 and rounded up; it sets how many pixels go through the network at once.
_BYTES_PER_PIXEL = {2: 1200, 3: 2400}

Read = Callable[[object], "NDArray | None"]


def bytes_per_pixel(model) -> float:
    """Bytes per pixel (voxel) a unit holds in prediction: the float32 input, its padded copy and the int32
    labels, plus the network's probability and distances on its grid."""
    grid = math.prod(getattr(model.config, "grid", (1,)))
    return 12 + 4 * (1 + getattr(model.config, "n_rays", 32)) / grid


def batch_limit(pixels: int, ndim: int, budget: int) -> int:
    """Inputs of ``pixels`` pixels (voxels) per network call that fit ``budget`` bytes (1 to 16)."""
    return max(1, min(_MAX_BATCH, budget // (_BYTES_PER_PIXEL[min(max(ndim, 2), 3)] * pixels)))


def auto_n_tiles(shape: tuple[int, ...], budget: int | None = None, *, ndim: int | None = None) -> tuple[int, ...]:
    """Tiles per axis so that one tile's activations fit ``budget`` bytes, splitting the largest axes first."""
    ndim = ndim or len(shape)
    budget = memory_budget() if budget is None else budget
    max_pixels = max(64 * 64, budget // _BYTES_PER_PIXEL[min(max(ndim, 2), 3)])
    tiles = [1] * len(shape)
    while math.prod(math.ceil(s / t) for s, t in zip(shape, tiles)) > max_pixels:
        axis = int(np.argmax([s / t for s, t in zip(shape, tiles)]))
        if tiles[axis] >= shape[axis]:
            break
        tiles[axis] *= 2
    return tuple(tiles)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is TensorFlow (or the system) running out of memory."""
    import tensorflow as tf

    return (isinstance(err, (tf.errors.ResourceExhaustedError, MemoryError)) or "out of memory" in str(err).lower()
            or "OOM" in str(err))


@dataclass(frozen=True)
class BlockPlan:
    """Arguments of ``predict_instances_big``, per axis."""

    block_size: tuple[int, ...]
    min_overlap: tuple[int, ...]
    context: tuple[int, ...]


def _up(value: int, grid: int) -> int:
    return -(-value // grid) * grid


def plan_blocks(
    shape: tuple[int, ...], grid: tuple[int, ...], *, block: tuple[int, ...], min_overlap: tuple[int, ...],
    context: tuple[int, ...],
) -> BlockPlan | None:
    """Block sizes that stardist's ``predict_instances_big`` accepts for ``shape``, or None where none exist.

    stardist rounds every value up to a multiple of ``grid`` and then asserts
    ``0 <= min_overlap + 2*context < block_size <= size`` on each axis; its
    cover also fails where the write regions of blocks that are not
    neighbours overlap, which ``block_size >= 3*min_overlap + 2*context +
    grid`` rules out (strides stay at least ``min_overlap`` however the cover
    shortens them).  So blocks are at least that big.  An axis too thin for
    such a block (a 100-plane Z axis) is one block over the whole axis with
    neither overlap nor context, when its size is a multiple of the grid; else
    two blocks of the largest grid multiple that fits, overlapping by all but
    one grid step (that axis is predicted twice).  None only for an axis
    shorter than two grid steps that is not a grid multiple.

    Parameters
    ----------
    shape
        The plane's (volume's) shape.
    grid
        Multiples per axis that stardist requires (:func:`stardist_compat.block_grid`).
    block, min_overlap, context
        Wanted block size, overlap between blocks and context per axis.
    """
    axes = []
    for s, g, b, o, c in zip(shape, grid, block, min_overlap, context):
        o, c = _up(o, g), _up(c, g)
        b = max(_up(b, g), 3 * o + 2 * c + g)
        if b < s:
            pass
        elif s % g == 0:
            b, o, c = s, 0, 0
        elif s >= 2 * g:
            b = s // g * g
            o, c = b - g, 0
        else:
            return None
        axes.append((b, o, c))
    return BlockPlan(*zip(*axes))


@dataclass
class _Prepared:
    unit: object
    image: NDArray  # normalised, as read
    x: NDArray  # padded, axes of the network (…, C)
    resizer: object
    future: Future = field(default_factory=Future)  # the labels, once NMS is done


class BatchedPredictor:
    """A StarDist model's network called on batches, with stardist's own post-processing per plane."""

    def __init__(self, model, *, prob_thresh: float | None = None, nms_thresh: float | None = None) -> None:
        self.model = model
        self.prob_thresh = float(model.thresholds.prob if prob_thresh is None else prob_thresh)
        self.nms_thresh = float(model.thresholds.nms if nms_thresh is None else nms_thresh)
        self.ndim = model.config.n_dim
        self._forward = compat.network_function(model)

    def prepare(self, unit, image: NDArray) -> _Prepared:
        """Pad a normalised plane (volume) as stardist's predict does."""
        x, resizer = compat.pad_for_network(self.model, image)
        return _Prepared(unit, image, x, resizer)

    def network(self, batch: list[_Prepared]) -> list[tuple[NDArray, NDArray]]:
        """Probabilities and distances for a batch of prepared inputs of one shape."""
        prob, dist = self._forward(np.stack([p.x for p in batch]))
        return [(prob[i], dist[i]) for i in range(len(batch))]

    def instances(self, prepared: _Prepared, prob: NDArray, dist: NDArray) -> NDArray:
        """Labels from one input's network output: stardist's sparse thresholding, NMS and rendering."""
        candidates = compat.candidates(self.model, prepared.x, prepared.resizer, prob, dist, self.prob_thresh)
        return compat.instances(self.model, prepared.image.shape[:self.ndim], *candidates,
                                prob_thresh=self.prob_thresh, nms_thresh=self.nms_thresh)

    def submit_to(self, pool: procs.NmsPool, prepared: _Prepared, prob: NDArray, dist: NDArray) -> Future:
        """:meth:`instances` in a worker process of ``pool`` (the same stardist calls, without the model)."""
        candidates = compat.candidates(self.model, prepared.x, prepared.resizer, prob, dist, self.prob_thresh)
        return pool.submit(*candidates, shape=prepared.image.shape[:self.ndim], nms_thresh=self.nms_thresh)


def _copy_outcome(source: Future, target: Future) -> None:
    """Give the done ``source``'s result, error or cancellation to ``target``."""
    if source.cancelled():
        target.cancel()
        return
    err = source.exception()
    target.set_exception(err) if err is not None else target.set_result(source.result())


class UnitPredictor(contextlib.AbstractContextManager):
    """Labels for a sequence of planes (volumes): reading on the calling thread, the network and NMS on others.

    Use :meth:`predict` once, then :meth:`close` (or use it as a context
    manager); :func:`predict_units` does both.

    Parameters
    ----------
    model
        A StarDist2D or StarDist3D model.
    prob_thresh, nms_thresh
        None: the model's own.
    n_tiles
        Fixed tiles per axis; None chooses from size and memory.
    scale
        Rescaling for prediction (3D anisotropy), passed to stardist.
    batch_size
        Planes per network call; None fills the network's memory budget (at most 16).
    workers
        Threads for NMS and rendering while no worker processes run.
    nms_workers
        Worker processes for NMS and rendering; None: one per core within
        the memory budget (:func:`~stardist_host.segmentation.nms_workers.auto_workers`).
        The environment variable ``STARDIST_HOST_NMS_WORKERS`` overrides it.
        1: NMS stays on ``workers`` threads in this process.
    nms_processes
        None: on a GPU, or where the worker count was chosen (``nms_workers``
        or the environment), start the worker processes once the NMS time of
        the first unit shows that they pay for their start-up
        (:func:`~stardist_host.segmentation.nms_workers.worth_processes`); on
        a CPU otherwise, threads.  True: at once; False: never (threads only).
    budget
        Bytes the network may use; None: :func:`~stardist_host.segmentation.device.memory_budget`.
    memory
        Bytes the units read but not yet handed back may hold (inputs, padded
        inputs, network outputs, labels); None:
        :func:`~stardist_host.segmentation.device.host_memory_budget`.  One unit
        is always allowed, however big.
    cancel
        Called before each unit is read and before each batch goes to the
        network; True stops with :class:`~stardist_host.errors.Cancelled`.
    probability
        Keep each unit's object probability on its own grid for :meth:`probability` (OUTPUT_PROBABILITY).
    """

    def __init__(self, model, *, prob_thresh: float | None = None, nms_thresh: float | None = None,
                 n_tiles: tuple[int, ...] | None = None, scale: tuple[float, ...] | None = None,
                 batch_size: int | None = None, workers: int = 2, nms_workers: int | None = None,
                 nms_processes: bool | None = None, budget: int | None = None,
                 memory: int | None = None, cancel: Callable[[], bool] | None = None,
                 probability: bool = False) -> None:
        self.model = model
        self.keep_probability = probability
        self._probabilities: dict = {}  # unit -> its probability, set before its labels are done
        self.prob_thresh, self.nms_thresh = prob_thresh, nms_thresh
        self.n_tiles = tuple(n_tiles) if n_tiles else None
        self.scale = scale
        self.batch_size = batch_size
        self.budget = memory_budget() if budget is None else budget
        self.memory = host_memory_budget() if memory is None else memory
        self.nms_workers = procs.resolve_workers(nms_workers, memory=self.memory)
        if nms_processes is None and not (nms_workers is not None or os.environ.get(procs.ENV_WORKERS, "").strip()
                                          or network_on_gpu()):
            nms_processes = False  # the network's threads fill the cores: processes would only compete with it
        if memory is None and self.nms_workers > 1 and nms_processes is not False:
            self.memory = max(self.memory - self.nms_workers * procs.WORKER_BYTES, 0)  # the workers' own memory
        self.nms_processes = nms_processes if procs.can_spawn() else False
        self.cancel = cancel
        self.predictor = BatchedPredictor(model, prob_thresh=prob_thresh, nms_thresh=nms_thresh)
        self.ndim = self.predictor.ndim
        # one network thread: Keras' predict is not documented as thread-safe, and one
        # call at a time keeps the activations within the budget
        self._net = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stardist-host-net")
        self._nms = ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="stardist-host-nms")
        self.pool: procs.NmsPool | None = None
        self._to_come = math.inf  # units not yet handed to the network, where the caller's units have a length
        self._thread_nms: list[float] = []  # seconds of NMS per unit on the threads, for the switch to processes
        if self.nms_workers > 1 and self.nms_processes:
            self._start_pool()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the threads and worker processes: queued work is dropped, running work is waited for."""
        self._net.shutdown(wait=True, cancel_futures=True)  # first: it hands work to the NMS pools
        try:
            if self.pool is not None:
                self.pool.close()
        finally:
            self._nms.shutdown(wait=True, cancel_futures=True)

    def _start_pool(self) -> None:
        try:
            self.pool = procs.NmsPool(compat.nms_config(self.model), workers=self.nms_workers)
            self.pool.warm_up()
        except Exception as err:  # no processes here (limits, a broken pool): NMS stays on threads
            self._no_processes(err)

    def _no_processes(self, err: BaseException) -> None:
        # a dead worker shows as BrokenProcessPool here or in its unit's future (_from_worker), by timing: one wording
        what = "an NMS worker process died" if isinstance(err, BrokenProcessPool) else "NMS worker processes failed"
        log.warning("%s (%s: %s); NMS continues on threads", what, type(err).__name__, err)
        pool, self.pool, self.nms_processes = self.pool, None, False
        if pool is not None:
            pool.close()

    def _use_processes(self) -> bool:
        """Whether this unit's NMS goes to worker processes; starts them when the measured rule says so."""
        if self.pool is not None and self.pool.broken is not None:
            self._no_processes(self.pool.broken)
        if self.pool is None and self.nms_processes is None and self.nms_workers > 1 and self._thread_nms:
            seconds = min(self._thread_nms)  # the least disturbed by the network sharing the cores
            if procs.worth_processes(seconds, self._to_come, self.nms_workers):
                log.info("NMS took %.3f s per unit on a thread: starting %d worker processes", seconds,
                         self.nms_workers)
                self._start_pool()
        return self.pool is not None

    def _timed_instances(self, prepared: _Prepared, prob: NDArray, dist: NDArray) -> NDArray:
        start = time.perf_counter()
        labels = self.predictor.instances(prepared, prob, dist)
        self._thread_nms.append(time.perf_counter() - start)
        return labels

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled("cancelled: segmentation stopped on request")

    def unit_bytes(self, image: NDArray) -> int:
        """Bytes one read unit holds until it is handed back."""
        return int(image.size * bytes_per_pixel(self.model))

    def needs_direct(self, image: NDArray) -> bool:
        """Whether ``image`` goes through stardist's own prediction: tiled, rescaled, or too big for one call."""
        tiled = bool(self.n_tiles and math.prod(self.n_tiles) > 1) or self.scale is not None
        shape = image.shape[:self.ndim]
        return tiled or math.prod(shape) > BIG_PIXELS or math.prod(auto_n_tiles(shape, self.budget, ndim=self.ndim)) > 1

    def predict(self, units: Iterable, read: Read) -> Iterator[tuple[object, NDArray | None]]:
        """Yield (unit, labels) in order; ``read(unit)`` gives the normalised image, or None for "no signal".

        ``read`` is called on the thread that iterates, and labels are handed
        back on it; only the network and NMS run elsewhere.
        """
        pending: deque[tuple[object, Future, int]] = deque()
        batch: list[_Prepared] = []
        self._to_come = len(units) if hasattr(units, "__len__") else math.inf
        estimate = 0  # bytes of the last unit read: the next one is alike
        for unit in units:
            self._check_cancel()
            while pending and sum(p[2] for p in pending) + estimate > self.memory:
                self._flush(batch)  # once: then the batch is empty
                yield self._pop(pending)
            while pending and pending[0][1].done():
                yield self._pop(pending)
            image = read(unit)
            if image is None:
                no_signal: Future = Future()
                no_signal.set_result(None)
                pending.append((unit, no_signal, 0))
                continue
            estimate = self.unit_bytes(image)
            if self.needs_direct(image):
                self._flush(batch)
                pending.append((unit, self._net.submit(self.direct, image, unit), estimate))
                continue
            prepared = self.predictor.prepare(unit, image)
            if batch and prepared.x.shape != batch[0].x.shape:
                self._flush(batch)
            batch.append(prepared)
            pending.append((unit, prepared.future, estimate))
            limit = self.batch_size or batch_limit(prepared.x.size, self.ndim, self.budget)
            if len(batch) >= limit:
                self._flush(batch)
        self._flush(batch)
        while pending:
            yield self._pop(pending)

    @staticmethod
    def _pop(pending: deque) -> tuple[object, NDArray | None]:
        unit, future, _ = pending.popleft()
        return unit, future.result()

    def _flush(self, batch: list[_Prepared]) -> None:
        """Hand the batch to the network thread (between batches: a place to stop)."""
        if not batch:
            return
        self._check_cancel()
        self._net.submit(self._run_batch, list(batch))
        batch.clear()

    def _run_batch(self, batch: list[_Prepared]) -> None:
        """On the network thread: the network on a batch (halved on out-of-memory), then NMS per input."""
        try:
            outputs = self.predictor.network(batch)
        except Exception as err:
            if not is_out_of_memory(err):
                for prepared in batch:
                    prepared.future.set_exception(err)
            elif len(batch) > 1:
                log.warning("out of memory with a batch of %d: retrying in halves", len(batch))
                self._run_batch(batch[: len(batch) // 2])
                self._run_batch(batch[len(batch) // 2:])
            else:
                log.warning("out of memory on one plane: predicting it in tiles")
                try:
                    batch[0].future.set_result(self.direct(batch[0].image, batch[0].unit))
                except Exception as again:
                    batch[0].future.set_exception(again)
            return
        for prepared, (prob, dist) in zip(batch, outputs):
            self._to_come -= 1
            if self.keep_probability:
                self._probabilities[prepared.unit] = compat.probability(self.model, prepared.resizer, prob,
                                                                        prepared.image.shape[:self.ndim])
            if self._use_processes():
                try:
                    work = self.predictor.submit_to(self.pool, prepared, prob, dist)
                except Exception as err:  # e.g. shared memory full, a dead worker: this and later units on threads
                    self._no_processes(err)
                else:
                    work.add_done_callback(partial(self._from_worker, prepared=prepared, prob=prob, dist=dist))
                    continue
            work = self._nms.submit(self._timed_instances, prepared, prob, dist)
            work.add_done_callback(partial(_copy_outcome, target=prepared.future))

    def _from_worker(self, work: Future, *, prepared: _Prepared, prob: NDArray, dist: NDArray) -> None:
        """A worker's labels to ``prepared.future``; the unit redone on a thread where its worker process died."""
        if work.cancelled() or not isinstance(work.exception(), BrokenProcessPool):
            _copy_outcome(work, prepared.future)
            return
        log.warning("an NMS worker process died (%s): its unit is redone on a thread", work.exception())
        try:
            again = self._nms.submit(self._timed_instances, prepared, prob, dist)
            again.add_done_callback(partial(_copy_outcome, target=prepared.future))
        except RuntimeError as err:  # the threads are shut down: the run is ending
            prepared.future.set_exception(err)

    def probability(self, unit) -> NDArray | None:
        """The object probability of a unit whose labels were handed back (float32, the unit's grid); once each."""
        return self._probabilities.pop(unit, None)

    def direct(self, image: NDArray, unit=None) -> NDArray:
        """stardist's own prediction, for units that are tiled, rescaled or big; retried with more tiles on OOM."""
        spatial = image.shape[:self.ndim]  # without the channels of a model with several
        plan, axes = None, "YX" if self.ndim == 2 else "ZYX"
        if math.prod(spatial) > BIG_PIXELS:  # how predict_instances_big splits it
            plan = plan_blocks(spatial, compat.block_grid(self.model, axes), block=(BIG_BLOCK[self.ndim],) * self.ndim,
                               min_overlap=(_BIG_OVERLAP,) * self.ndim, context=compat.tile_overlap(self.model, axes))
        shape = plan.block_size if plan else spatial
        shape = tuple(int(round(s * f)) for s, f in zip(shape, self.scale)) if self.scale else tuple(shape)
        tiles = self.n_tiles or auto_n_tiles(shape, self.budget, ndim=self.ndim)
        while True:
            try:
                return self._predict(image, plan, tiles, unit)
            except Exception as err:
                if not is_out_of_memory(err) or all(t >= s for t, s in zip(tiles, shape)):
                    raise
                axis = int(np.argmax([s / t for s, t in zip(shape, tiles)]))
                tiles = tuple(t * 2 if i == axis else t for i, t in enumerate(tiles))
                log.warning("out of memory: retrying with n_tiles=%s", tiles)

    def _predict(self, image: NDArray, plan: BlockPlan | None, tiles: tuple[int, ...], unit=None) -> NDArray:
        options = compat.instance_options(self.model, prob_thresh=self.prob_thresh, nms_thresh=self.nms_thresh,
                                          n_tiles=tiles, scale=self.scale)
        if plan is None and self.keep_probability:
            self._probabilities[unit] = compat.predicted_probability(self.model, image, n_tiles=tiles,
                                                                     scale=self.scale)
        if plan is None:
            return self.model.predict_instances(image, **options)[0]
        log.info("%s of %s pixels: predicted in blocks of %s (overlap %s, context %s)", "plane" if self.ndim == 2
                 else "volume", image.shape, plan.block_size, plan.min_overlap, plan.context)
        with stdout_to_log(log, level=logging.DEBUG):  # stardist prints the block geometry
            channels = (1,) if image.ndim > self.ndim else ()
            labels, _ = self.model.predict_instances_big(
                image, axes=("YX" if self.ndim == 2 else "ZYX") + ("C" if channels else ""),
                block_size=plan.block_size + channels, min_overlap=plan.min_overlap + (0,) * len(channels),
                context=plan.context + (0,) * len(channels), show_progress=False, **options)
        return labels


def predict_units(model, units: Iterable, read: Read, **options) -> Iterator[tuple[object, NDArray | None]]:
    """Yield (unit, labels) for each unit, in order, from the batched pipeline; threads end with the generator.

    ``read(unit)`` returns the unit's normalised image, or None where it has no
    signal (then labels is None).  Close the generator
    (``contextlib.closing``) when not iterating to the end, so that its threads
    stop at once.  ``options`` are those of :class:`UnitPredictor`.
    """
    with UnitPredictor(model, **options) as predictor:
        yield from predictor.predict(units, read)
