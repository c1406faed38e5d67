"""Fast inference: planes in batches through the network, overlapped with reading and NMS.

stardist's ``predict_instances`` calls Keras' ``predict`` once per plane; for
small planes its per-call overhead costs more than the network itself, and
non-maximum suppression (NMS) then runs while the network waits.  Here:

- a reader thread reads and normalises the next planes (or volumes);
- the main thread pads them exactly as stardist does, stacks those of one
  shape into a batch and calls the network directly (a compiled function,
  not ``predict``);
- worker threads turn each plane's probabilities and distances into labels
  with stardist's own thresholding, NMS and rendering.

So the labels are those of ``predict_instances`` on the same input.  Units
that need tiling, Z rescaling, or that are too big for one prediction go
through stardist's own ``predict_instances`` (or ``predict_instances_big``)
on the same threads, with automatic tile counts and a retry with more tiles
when TensorFlow runs out of memory.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
from numpy.typing import NDArray

__all__ = ["BatchedPredictor", "predict_units", "auto_n_tiles", "batch_limit", "memory_budget", "is_out_of_memory", "BIG_PIXELS"]

log = logging.getLogger(__name__)

#: Planes (volumes) above this many pixels (voxels) go through predict_instances_big.
BIG_PIXELS = 8192 * 8192
# Largest automatic batch: beyond 8 to 16 planes a CPU gains nothing, and memory stays small.
_MAX_BATCH = 16
# Bytes of network activations per input pixel (voxel), measured for stardist's default
# U-Nets in float32 and rounded up; it sets how many pixels go through the network at once.
_BYTES_PER_PIXEL = {2: 1200, 3: 2400}


def batch_limit(pixels: int, ndim: int, budget: int) -> int:
    """Inputs of ``pixels`` pixels (voxels) per network call that fit ``budget`` bytes (1 to 16)."""
    return max(1, min(_MAX_BATCH, budget // (_BYTES_PER_PIXEL[min(max(ndim, 2), 3)] * pixels)))


def memory_budget(use_gpu: bool | None = None) -> int:
    """Bytes the network may use for one call: a share of the free GPU or main memory.

    Main memory is what the machine has available, or the process's cgroup
    limit where that is lower.

    ``STARDIST_HOST_MEMORY`` (bytes) overrides it, e.g. to leave room for a host.
    """
    env = os.environ.get("STARDIST_HOST_MEMORY")
    if env:
        return int(float(env))
    if use_gpu is not False:
        try:
            import tensorflow as tf

            if tf.config.get_visible_devices("GPU"):
                info = tf.config.experimental.get_memory_info("GPU:0")
                total = int(os.environ.get("STARDIST_HOST_GPU_BYTES", 8 * 2**30))
                return max(2**28, (total - info["current"]) // 2)
        except (ImportError, ValueError, RuntimeError):
            pass
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        available = 4 * 2**30
    limit = _cgroup_limit()
    if limit is not None:  # a container or a cluster job may allow far less than the machine has
        available = min(available, limit)
    return max(2**28, available // 4)


def _cgroup_limit(proc: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """The memory limit of this process's control group (Linux, cgroup v1 or v2), if any."""
    try:
        with open(proc) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            candidate = os.path.join(root, path.lstrip("/"), "memory.max")
        elif "memory" in controllers.split(","):
            candidate = os.path.join(root, "memory", path.lstrip("/"), "memory.limit_in_bytes")
        else:
            continue
        try:
            with open(candidate) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    return None


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
    try:
        import tensorflow as tf

        if isinstance(err, tf.errors.ResourceExhaustedError):
            return True
    except ImportError:
        pass
    return isinstance(err, MemoryError) or "out of memory" in str(err).lower() or "OOM" in str(err)


@dataclass
class _Prepared:
    unit: object
    image: NDArray  # normalised, as read
    x: NDArray  # padded, axes of the network (…, C)
    resizer: object


class BatchedPredictor:
    """A StarDist model's network called on batches, with stardist's own post-processing per plane."""

    def __init__(self, model, *, prob_thresh: float | None = None, nms_thresh: float | None = None) -> None:
        import tensorflow as tf

        self.model = model
        self.prob_thresh = float(model.thresholds.prob if prob_thresh is None else prob_thresh)
        self.nms_thresh = float(model.thresholds.nms if nms_thresh is None else nms_thresh)
        self.ndim = model.config.n_dim
        # one compiled call per model, kept on it, so that later runs reuse its traces
        self._forward = getattr(model, "_stardist_host_forward", None)
        if self._forward is None:
            keras_model = model.keras_model

            @tf.autograph.experimental.do_not_convert
            def forward(x):
                return keras_model([x], training=False)

            self._forward = model._stardist_host_forward = tf.function(forward, reduce_retracing=True)

    def prepare(self, unit, image: NDArray) -> _Prepared:
        """Pad a normalised plane (volume) as stardist's predict does."""
        setup = self.model._predict_setup(image, None, None, None, False, {})
        x, resizer = setup[0], setup[5]
        return _Prepared(unit, image, x, resizer)

    def network(self, batch: list[_Prepared]) -> list[tuple[NDArray, NDArray]]:
        """Probabilities and distances for a batch of prepared inputs of one shape."""
        outputs = self._forward(np.stack([p.x for p in batch]))
        prob, dist = (np.asarray(o) for o in outputs[:2])
        return [(prob[i], dist[i]) for i in range(len(batch))]

    def instances(self, prepared: _Prepared, prob: NDArray, dist: NDArray) -> NDArray:
        """Labels from one input's network output: stardist's sparse thresholding, NMS and rendering."""
        from stardist.models.base import _ind_prob_thresh

        model = self.model
        prob = prob[..., 0]
        dist = np.maximum(1e-3, dist)
        inds = _ind_prob_thresh(prob, self.prob_thresh, b=2)
        points = np.stack(np.where(inds), axis=1) * np.asarray(model.config.grid).reshape(1, -1)
        probs, dists = prob[inds].copy(), dist[inds].copy()
        keep = prepared.resizer.filter_points(prepared.x.ndim, points, model.config.axes)
        labels, _ = model._instances_from_prediction(
            prepared.image.shape, probs[keep], dists[keep], points=points[keep],
            prob_thresh=self.prob_thresh, nms_thresh=self.nms_thresh, verbose=False,
        )
        return labels


def predict_units(
    model,
    units: Iterable,
    read: Callable[[object], NDArray],
    *,
    prob_thresh: float | None = None,
    nms_thresh: float | None = None,
    n_tiles: tuple[int, ...] | None = None,
    scale: tuple[float, ...] | None = None,
    batch_size: int | None = None,
    workers: int = 2,
    budget: int | None = None,
) -> Iterator[tuple[object, NDArray]]:
    """Yield (unit, labels) for each unit, in order, from the batched pipeline.

    Parameters
    ----------
    model
        A StarDist2D or StarDist3D model.
    units
        What to predict, in order; ``read(unit)`` returns its normalised image.
    prob_thresh, nms_thresh
        None: the model's own.
    n_tiles
        Fixed tiles per axis; None chooses from size and memory.
    scale
        Rescaling for prediction (3D anisotropy), passed to stardist.
    batch_size
        Planes per network call; None fills the memory budget (at most 16).
    workers
        Threads for NMS and rendering.
    budget
        Bytes the network may use; None: :func:`memory_budget`.
    """
    budget = memory_budget() if budget is None else budget
    predictor = BatchedPredictor(model, prob_thresh=prob_thresh, nms_thresh=nms_thresh)
    ndim = predictor.ndim
    inbox: queue.Queue = queue.Queue(maxsize=2 * (batch_size or 8))
    done = object()
    stop = threading.Event()

    def reader() -> None:
        try:
            for unit in units:
                image = read(unit)
                while not stop.is_set():
                    try:
                        inbox.put((unit, image), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as err:  # handed to the main thread
            inbox.put(err)
            return
        inbox.put(done)

    def direct(unit, image) -> NDArray:
        """stardist's own prediction, for units that are tiled, rescaled or big; retried on OOM."""
        tiles = tuple(n_tiles) if n_tiles else auto_n_tiles(image.shape, budget, ndim=ndim)
        while True:
            try:
                if math.prod(image.shape) > BIG_PIXELS:
                    block = tuple(min(s, 4096 if ndim == 2 else 512) for s in image.shape)
                    labels, _ = model.predict_instances_big(
                        image, axes="YX" if ndim == 2 else "ZYX", block_size=block, min_overlap=(96,) * ndim,
                        context=(64,) * ndim, prob_thresh=prob_thresh, nms_thresh=nms_thresh, n_tiles=tiles,
                        show_progress=False, show_tile_progress=False)
                else:
                    labels, _ = model.predict_instances(image, prob_thresh=prob_thresh, nms_thresh=nms_thresh,
                                                        n_tiles=tiles, scale=scale, show_tile_progress=False)
                return labels
            except Exception as err:
                if not is_out_of_memory(err) or all(t >= s for t, s in zip(tiles, image.shape)):
                    raise
                axis = int(np.argmax([s / t for s, t in zip(image.shape, tiles)]))
                tiles = tuple(t * 2 if i == axis else t for i, t in enumerate(tiles))
                log.warning("out of memory: retrying with n_tiles=%s", tiles)

    def needs_direct(image: NDArray) -> bool:
        tiled = bool(n_tiles and math.prod(n_tiles) > 1) or scale is not None
        return tiled or math.prod(auto_n_tiles(image.shape, budget, ndim=ndim)) > 1

    def submit(batch: list[_Prepared]) -> None:
        """Run a batch through the network (halving it on out-of-memory) and queue its post-processing."""
        try:
            outputs = predictor.network(batch)
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            if len(batch) == 1:
                log.warning("out of memory on one plane: predicting it in tiles")
                pending.append((batch[0].unit, pool.submit(direct, batch[0].unit, batch[0].image)))
                return
            log.warning("out of memory with a batch of %d: retrying in halves", len(batch))
            submit(batch[: len(batch) // 2])
            submit(batch[len(batch) // 2:])
            return
        for prepared, (prob, dist) in zip(batch, outputs):
            pending.append((prepared.unit, pool.submit(predictor.instances, prepared, prob, dist)))

    def take(block: bool):
        item = inbox.get() if block else _get_nowait(inbox)
        if isinstance(item, BaseException):
            raise item
        return item

    thread = threading.Thread(target=reader, name="stardist-host-reader", daemon=True)
    thread.start()
    pending: deque[tuple[object, Future]] = deque()
    max_pending = 2 * max(workers, 1) + (batch_size or 8)
    carry = None  # an item read but not yet placed: it did not fit the last batch
    finished = False
    with ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="stardist-host-nms") as pool:
        try:
            while not finished or pending:
                if not finished:
                    batch: list[_Prepared] = []
                    limit = batch_size or _MAX_BATCH
                    while len(batch) < limit:
                        item, carry = (carry, None) if carry is not None else (take(block=not batch), None)
                        if item is None:
                            break
                        if item is done:
                            finished = True
                            break
                        unit, image = item
                        if needs_direct(image):
                            if batch:
                                carry = item
                            else:
                                pending.append((unit, pool.submit(direct, unit, image)))
                            break
                        prepared = predictor.prepare(unit, image)
                        if batch and prepared.x.shape != batch[0].x.shape:
                            carry = item
                            break
                        batch.append(prepared)
                        if batch_size is None:
                            limit = batch_limit(prepared.x.size, ndim, budget)
                    if batch:
                        submit(batch)
                # hand back finished units in order; wait when too many are in flight, or at the end
                while pending and (pending[0][1].done() or len(pending) > max_pending or finished):
                    unit, future = pending.popleft()
                    yield unit, future.result()
        finally:
            stop.set()
            for _, future in pending:
                future.cancel()
            thread.join(timeout=5)


def _get_nowait(inbox: queue.Queue):
    try:
        return inbox.get(timeout=0.005)
    except queue.Empty:
        return None
