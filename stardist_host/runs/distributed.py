"""Runs through a label store: on a Dask cluster, or in this process with a journal that makes them resumable.

The units of the plan go in chunks to :func:`segment_units` (a Dask task, or
one call in this process for all of them), which runs the one engine
(:func:`~stardist_host.segmentation.engine.label_units`, the batched
pipeline) with the input opened read-only and the labels written straight to
the label store, then records each unit in the store's journal
(:mod:`stardist_host.runs.journal`).  Nothing is gathered on the client but
those records.

- OME-Zarr input: the labels are the NGFF label image ``labels/<name>``, in
  the input store (its arrays untouched) or in a separate store; the journal
  is ``labels/<name>/.done`` and is removed once the run is complete.
- TIFF input: the labels go to a hidden folder beside the output,
  ``.OUTPUT.labels``, one ``.npy`` file per unit written whole or not at all
  (the journal is inside it); once every unit is done the OME-TIFF is written
  from it, as a run without the journal writes it, and the folder is removed.
  (Not a Zarr store: zarr 3 hands each chunk write to its event-loop thread,
  which waits for the GIL that stardist's NMS holds; per plane that cost 1.3x
  the plain run, a file per unit 1.1x; see benchmarks/README.md.)

Tasks label their units from 1 each; with UNIQUE_LABELS each unit's labels are
raised by the highest labels of the units before it
(:func:`~stardist_host.segmentation.engine.first_labels`, the numbering of
a run without the journal): as they are copied into the OME-TIFF, or in the
NGFF label image by a second pass, journalled per plane so that it is
resumable too.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from numpy.typing import NDArray

from ..errors import OutputError, SettingsError, StardistHostError, UnitFailedError, require
from ..host import Progress
from ..io.files import OutputLock, atomic_write
from ..io.omezarr import OmeZarrImageSet
from ..io.opening import is_omezarr, open_imageset
from ..io.outputs import claim_tiff_output, labels_store, scratch_labels_store, write_tiff_output
from ..segmentation.engine import (Normalisation, first_labels, label_dtype_for, label_units, predictor, resolve_run,
                                   shifted, unit_planes, unit_reader, where)
from ..segmentation.nms_workers import available_cores
from ..segmentation.plan import Plan, Unit, make_plan
from ..segmentation.segment import SegmentResult, UnitResult, load_for_settings, normalisation_for
from ..segmentation.settings import Settings
from .journal import JOURNAL, Journal, fingerprint, key

__all__ = ["segment_distributed", "segment_units", "renumber_unit", "dask_client", "check_cluster", "UnitFailedError",
           "EXIT_AFTER_ENV", "JOURNAL"]

log = logging.getLogger(__name__)

#: Test hook: a process whose unit function finished this many units ends at once (``os._exit``), like a kill.
EXIT_AFTER_ENV = "STARDIST_HOST_TEST_EXIT_AFTER_UNITS"
#: Most units in one Dask task: enough for the pipeline to batch, few enough to spread over the workers.
TASK_UNITS = 16


# --------------------------------------------------------------------------- what a worker needs


@dataclass(frozen=True)
class Source:
    """How a worker opens the input: an OME-Zarr image (one level) or a TIFF file, read-only."""

    path: str
    kind: str  # "zarr" or "tiff"
    level: int = 0
    axes: str | None = None
    series: int | None = None

    def open(self):
        if self.kind == "zarr":
            return OmeZarrImageSet(self.path, level=self.level)
        return open_imageset(self.path, axes=self.axes, series=self.series)


@dataclass(frozen=True)
class Target:
    """Where labels go: an OME-Zarr input's NGFF label image (``store/labels/name``), else a scratch TZYX array."""

    store: str
    name: str
    source: Source

    @property
    def folder(self) -> Path:
        return Path(self.store) / "labels" / self.name if self.source.kind == "zarr" else Path(self.store)

    @property
    def journal(self) -> Journal:
        return Journal(self.folder / JOURNAL)


@dataclass(frozen=True)
class Task:
    """Everything a task needs besides its units: the settings themselves, and what the client resolved."""

    settings: Settings
    target: Target
    dtype: str
    scale: tuple[float, ...] | None
    normalisation: Normalisation  # resolved: a time series' intensities computed once, by the client


# One entry per kind ("model", "predictor", "source", "target"): a worker keeps the model and its
# open stores between tasks, and a long-lived worker that moves to another job holds only that one.
_CACHE: dict[str, tuple[Any, Any]] = {}
_units_here = [0]  # units this process finished, for the test hook


def _cached(kind: str, key: Any, make: Callable[[], Any]) -> Any:
    held = _CACHE.get(kind)
    if held is not None and held[0] == key:
        return held[1]
    _release(kind)
    _CACHE[kind] = (key, make())
    return _CACHE[kind][1]


def _release(kind: str) -> None:
    held = _CACHE.pop(kind, None)
    close = getattr(held[1], "close", None) if held else None
    if close is not None and kind != "model":
        close()


def _model_key(settings: Settings) -> tuple:
    return settings.model_name, settings.model_path, settings.ndim, settings.use_gpu, settings.precision


def _model(settings: Settings):
    return _cached("model", _model_key(settings), lambda: load_for_settings(settings)[0])


def _predictor(task: Task):
    """The unit predictor, kept between tasks: a new one would trace the network function again for each task."""
    model, s = _model(task.settings), task.settings
    key_ = (id(model), s.prob_thresh, s.nms_thresh, s.n_tiles, task.scale)
    return _cached("predictor", key_, lambda: predictor(model, prob_thresh=s.prob_thresh, nms_thresh=s.nms_thresh,
                                                        n_tiles=s.n_tiles, scale=task.scale))


class _ScratchUnits:
    """A TIFF run's scratch folder: each unit's labels in a ``.npy`` file of its own, replaced whole.

    Not fsynced, as the journal's records are not (each would cost the run
    about a tenth of its time on a busy CPU): a unit whose file cannot be read
    whole (after a power loss) is redone, recorded or not.
    """

    def __init__(self, target: Target) -> None:
        self.folder = Path(target.store)

    def _path(self, unit: Unit) -> Path:
        return self.folder / f"{key(unit)}.npy"

    def write_unit(self, unit: Unit, labels: NDArray) -> None:
        with atomic_write(self._path(unit), fsync=False) as tmp, tmp.open("wb") as f:
            np.save(f, labels)

    def read_unit(self, unit: Unit) -> NDArray:
        return np.load(self._path(unit))

    def whole(self, unit: Unit) -> bool:
        try:
            np.load(self._path(unit), mmap_mode="r")  # the header, and the file as long as it says
        except (OSError, ValueError, EOFError):
            return False
        return True


class _NgffPlanes:
    """The planes of an NGFF label image, through the OME-Zarr image set (which knows the axes)."""

    def __init__(self, target: Target) -> None:
        self.imageset = OmeZarrImageSet(target.source.path, level=target.source.level, labels_store=target.store)
        self.channel = self.imageset.open_label_channel(target.name)

    def read(self, t: int, z: int) -> NDArray:
        return self.imageset.get_channeldata(self.channel, z, t)

    def write(self, t: int, z: int, plane: NDArray) -> None:
        self.imageset.set_channeldata(self.channel, z, t, plane)

    def write_unit(self, unit: Unit, labels: NDArray) -> None:
        for z, plane in unit_planes(unit, labels, labels.ndim):
            self.write(unit.time_point, z, plane)

    def close(self) -> None:
        self.imageset.close()


def _store(target: Target):
    """Where a worker (or this process) writes units' labels: the NGFF label image, or a TIFF run's scratch folder."""
    return _cached("target", target, lambda: (_NgffPlanes if target.source.kind == "zarr" else _ScratchUnits)(target))


# --------------------------------------------------------------------------- the tasks


def _named(unit: Unit, err: BaseException) -> BaseException:
    """``err`` with the unit it happened in named first: ours as it is, anything else as UnitFailedError (its cause)."""
    if isinstance(err, StardistHostError) and err.args and isinstance(err.args[0], str):
        if not err.args[0].startswith("time point "):
            err.args = (f"{where(unit)}: {err.args[0]}", *err.args[1:])
        return err
    failed = UnitFailedError(f"{where(unit)} failed: {type(err).__name__}: {err}")
    failed.__cause__ = err
    return failed


def _finish(task: Task, result: UnitResult) -> dict:
    """Record a unit whose labels are written (a unit with a record is complete, one without is redone)."""
    record = {"count": result.count, "highest": result.highest, "seconds": round(result.seconds, 4)}
    task.target.journal.record(f"{key(result.unit)}.json", record)
    _units_here[0] += 1
    exit_after = os.environ.get(EXIT_AFTER_ENV)
    if exit_after and _units_here[0] >= int(exit_after):
        os._exit(137)  # the test hook: as abrupt as SIGKILL, no cleanup
    return record


def _segment_units(task: Task, units: list[Unit]) -> Iterator[tuple[Unit, dict]]:
    """Segment ``units`` through the engine into the label store, recording each as it is written."""
    s = task.settings
    imageset = _cached("source", task.target.source, task.target.source.open)
    store = _store(task.target)
    read_normalised = unit_reader(imageset, s.input_channel, s.ndim, task.normalisation)

    def read(unit: Unit):
        try:
            return read_normalised(unit)
        except Exception as err:  # the pipeline reads ahead: name this unit, not the one being written
            raise _named(unit, err)

    todo = list(units)
    try:
        for result in label_units(_predictor(task), units, read, store.write_unit, ndim=s.ndim,
                                  plane_shape=tuple(imageset.plane_shape), dtype=np.dtype(task.dtype)):
            yield result.unit, _finish(task, result)
            todo.pop(0)
    except Exception as err:
        raise _named(todo[0], err)


def segment_units(task: Task, units: list[Unit]) -> list[tuple[Unit, dict]]:
    """A Dask task: segment ``units`` (labels from 1 in each) into the label store and journal them.

    Runs on a worker (or in this process); the model, the predictor and the
    stores are opened once per process and kept for the next tasks.

    Returns
    -------
    list
        ``(unit, {"count": objects, "highest": highest label, "seconds": time taken})`` per unit, as recorded.

    Raises
    ------
    StardistHostError
        The unit that failed is named first (LabelOverflowError: nothing of it written).
    """
    return list(_segment_units(task, units))


def renumber_unit(task: Task, unit: Unit, offset: int) -> dict:
    """Add ``offset`` to the unit's labels in the NGFF label image (background stays 0), then record it
    (``*.offset.json``).

    Each plane is recorded as it is rewritten (``*.zZ.offset.json``) and skipped
    when already recorded, so a run killed halfway through a volume and resumed
    adds the offset to every plane exactly once.
    """
    planes = _store(task.target)
    journal = task.target.journal
    for z in unit.planes:
        done = f"{key(unit)}.z{z}.offset.json"
        if journal.recorded(done):
            continue
        plane = planes.read(unit.time_point, z)
        if plane.any():
            planes.write(unit.time_point, z, shifted(plane, offset, np.dtype(task.dtype)))
        journal.record(done, {"offset": offset})
    journal.record(f"{key(unit)}.offset.json", {"offset": offset})
    return {"offset": offset}


# --------------------------------------------------------------------------- executors


@contextlib.contextmanager
def dask_client(*, workers: int | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """A Dask client: a local cluster of ``workers`` processes, or the scheduler at ``scheduler``; None for neither.

    Raises
    ------
    SettingsError
        ``workers`` is not a whole number >= 1, both are given, or no scheduler answers at ``scheduler``.
    MissingExtraError
        ``distributed`` is not installed (``pip install "stardist-host[dask]"``).
    """
    check_cluster(workers=workers, scheduler=scheduler)
    if workers is None and scheduler is None:
        yield None
        return
    distributed = require("distributed", "dask", purpose="running on a Dask cluster (--workers, --scheduler)")
    import dask
    with contextlib.ExitStack() as stack:
        if scheduler is not None:
            try:
                client = stack.enter_context(distributed.Client(scheduler, timeout="20s"))
            except (OSError, TimeoutError) as err:
                raise SettingsError("--scheduler", scheduler, f"no Dask scheduler answers there ({err}); give the "
                                    "address a running scheduler prints, e.g. tcp://10.0.0.5:8786") from err
        else:
            # processes: TensorFlow and NMS hold the GIL; one task thread each, and the model's and NMS's own
            # threads get the worker's share of the cores.  Dask's nanny would set OMP_NUM_THREADS=1 (2x slower)
            # and MALLOC_TRIM_THRESHOLD_, which turns off glibc's adaptive mmap threshold: every large array
            # is mapped and unmapped anew (1.3x slower per 3D volume); in the workers and in this process.
            threads = str(max(1, available_cores() // workers))
            threading_env = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
            unset = dict.fromkeys(("MALLOC_TRIM_THRESHOLD_", *threading_env))
            with dask.config.set({"distributed.nanny.pre-spawn-environ": unset}):
                cluster = stack.enter_context(distributed.LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                    env=dict.fromkeys(threading_env, threads)))
            client = stack.enter_context(distributed.Client(cluster))
        log.info("Dask: %d worker(s) at %s", len(client.scheduler_info().get("workers", {})), client.scheduler.address)
        yield client


def check_cluster(*, workers: int | None, scheduler: str | None) -> None:
    """Refuse a bad ``workers`` or ``scheduler`` (before anything is read or loaded).

    Raises
    ------
    SettingsError
        ``workers`` is not a whole number >= 1, or both are given.
    """
    if workers is not None and scheduler is not None:
        raise SettingsError("--workers", workers, "give either --workers (a local cluster) or --scheduler, not both")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise SettingsError("--workers", workers, "must be a whole number >= 1 (worker processes of a local cluster)")
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
        raise SettingsError("--scheduler", scheduler, "must be a scheduler address such as tcp://10.0.0.5:8786")


_KEEP = "; the finished units are kept: fix the cause and run again with --resume"


def _kept(err: BaseException, worker: str | None = None) -> BaseException:
    """A failed task's error as the user sees it: the worker it ran on, and that the finished units are kept."""
    on = f" (on worker {worker})" if worker else ""
    if isinstance(err, StardistHostError) and err.args and isinstance(err.args[0], str):
        err.args = (f"{err.args[0]}{on}{_KEEP}", *err.args[1:])
        return err
    failed = UnitFailedError(f"a task failed{on}: {type(err).__name__}: {err}{_KEEP}")
    failed.__cause__ = err
    return failed


def _chunks(units: list[Unit], workers: int) -> list[list[Unit]]:
    """Consecutive units in tasks of up to :data:`TASK_UNITS`, at least two tasks per worker where there are enough."""
    size = max(1, min(TASK_UNITS, math.ceil(len(units) / max(2 * workers, 1))))
    return [units[i:i + size] for i in range(0, len(units), size)]


def _run_tasks(client, fn, task: Task, items: list[tuple]) -> Iterator[Any]:
    """Submit ``fn(task, *item)`` for each item and yield each result as it finishes."""
    from distributed import as_completed

    futures = {client.submit(fn, task, *item, pure=False, key=f"{fn.__name__}-{os.getpid()}-{time.monotonic_ns()}-{i}"):
               item for i, item in enumerate(items)}
    try:
        for future in as_completed(futures):
            if future.status == "error":
                err = future.exception()
                who = client.who_has([future]).get(future.key) or ()
                raise _kept(err, next(iter(who), None)) from err
            yield future.result()
    finally:
        client.cancel([f for f in futures if not f.done()])


def _in_this_process(pairs: Iterator[tuple[Unit, dict]]) -> Iterator[tuple[Unit, dict]]:
    try:
        yield from pairs
    except StardistHostError as err:  # named by _segment_units
        raise _kept(err)


def _run_journalled(client, task: Task, plan: Plan, *, progress: Progress | None) -> tuple[list[UnitResult], int]:
    """Segment the units without a record, then (UNIQUE_LABELS) renumber; return the results and units computed."""
    units = plan.units
    records = task.target.journal.done(units)
    if task.target.source.kind == "tiff":
        scratch = _ScratchUnits(task.target)
        records = {unit: record for unit, record in records.items() if scratch.whole(unit)}
    todo = [u for u in units if u not in records]
    progress = progress or (lambda done, total: None)
    progress(len(records), len(units))
    if client is None:  # all in one call: the pipeline batches across them
        finished = _in_this_process(_segment_units(task, todo))
    else:
        workers = max(len(client.scheduler_info().get("workers", {})), 1)
        finished = (pair for chunk in _run_tasks(client, segment_units, task, [(c,) for c in _chunks(todo, workers)])
                    for pair in chunk)
    for unit, record in finished:
        records[unit] = record
        progress(len(records), len(units))
    if task.settings.unique_labels and task.target.source.kind == "zarr":  # a TIFF run's as it is copied
        _renumber(client, task, units, records)
    return [UnitResult(u, records[u]["count"], records[u]["seconds"], records[u]["highest"]) for u in units], len(todo)


def _offsets(units: list[Unit], highest: dict[Unit, int], dtype: np.dtype) -> dict[Unit, int]:
    return first_labels(units, highest, dtype, again=" and start again with --overwrite")


def _renumber(client, task: Task, units: list[Unit], records: dict[Unit, dict]) -> None:
    """Offsets from the highest labels of the units before each, as a run without the journal numbers them."""
    offsets = _offsets(units, {u: records[u]["highest"] for u in units}, np.dtype(task.dtype))
    renumbered = task.target.journal.done(units, ".offset.json")
    todo = [(u, offsets[u]) for u in units if u not in renumbered and offsets[u] and records[u]["highest"]]
    here = (renumber_unit(task, *item) for item in todo)
    for _ in here if client is None else _run_tasks(client, renumber_unit, task, todo):
        pass


# --------------------------------------------------------------------------- entry points


def segment_distributed(
    settings: Settings, input: str | os.PathLike, output: str | os.PathLike | None = None, *, level: int = 0,
    axes: str | None = None, series: int | None = None, current_time_point: int = 0, workers: int | None = None,
    scheduler: str | None = None, resume: bool = False, progress: Progress | None = None,
) -> SegmentResult:
    """Segment an OME-Zarr or TIFF input through a label store, on a Dask cluster or in this process, resumably.

    Parameters
    ----------
    settings
        Validated settings, as for a run on an image set.
    input
        An OME-Zarr image (folder) or a TIFF file; never modified (OME-Zarr:
        only ``labels/`` is written in it).
    output
        OME-Zarr input: None or the input itself for ``labels/<name>`` in the
        input store, another ``*.zarr`` folder for a separate labels store.
        TIFF input: the OME-TIFF to write.
    level
        OME-Zarr resolution level (0: highest).
    axes, series
        How to read a TIFF input (see ``--axes``, ``--series``).
    current_time_point
        The time point CURRENT_TIME_POINT=True segments.
    workers
        Start a local Dask cluster of this many worker processes.
    scheduler
        Use the Dask scheduler at this address (``tcp://host:port``).
    resume
        Continue an interrupted run, redoing only the units it did not finish.
    progress
        Called as ``progress(done, total)`` as units finish.

    Raises
    ------
    OutputError
        The output exists (without OVERWRITE), an interrupted run's result is
        there (without ``resume`` or OVERWRITE), or ``resume`` with other
        settings; raised before the model loads.
    UnitFailedError
        A unit failed; the message names it.  Finished units are kept for ``resume``.
    """
    check_cluster(workers=workers, scheduler=scheduler)
    if settings.output_probability:
        raise SettingsError("OUTPUT_PROBABILITY", True, "is not available where the labels go through a label store "
                            "(an OME-Zarr input, --resume, --workers, --scheduler): run on a TIFF without them")
    source = Source(str(input), "zarr" if is_omezarr(input) else "tiff", level, axes, series)
    if source.kind == "zarr":
        return _segment_omezarr(settings, source, output, current_time_point=current_time_point, workers=workers,
                                scheduler=scheduler, resume=resume, progress=progress)
    if output is None:
        raise OutputError(f"{str(input)!r} is a TIFF file: give the output OME-TIFF (e.g. result.ome.tif)")
    if is_omezarr(output):
        raise OutputError(f"output {str(output)!r}: a TIFF input is written to an OME-TIFF (.tif, .tiff); OME-Zarr "
                          "labels are made from OME-Zarr input")
    return _segment_tiff(settings, source, Path(output), current_time_point=current_time_point, workers=workers,
                         scheduler=scheduler, resume=resume, progress=progress)


def _prepare(settings: Settings, source: Source, imageset, store: Path, *, resume: bool):
    """The plan, the label image's name and type, its target (in ``store``), fingerprint and whether the
    run continues an interrupted one (:meth:`Journal.check <stardist_host.runs.journal.Journal.check>`)."""
    plan = make_plan(settings, imageset)
    name = plan.output_name(settings.output_ch_name, imageset.channel_names)
    dtype = label_dtype_for(settings.label_dtype, plan, tuple(imageset.plane_shape), settings.unique_labels)
    stamp = fingerprint(settings, input=source.path, level=source.level, axes=source.axes, series=source.series,
                         plan=plan, name=name, dtype=dtype)
    target = Target(str(store), name, source)
    resuming = target.journal.check(stamp, resume=resume, overwrite=settings.overwrite, units=plan.units)
    return plan, name, dtype, target, stamp, resuming


def _segment_omezarr(settings: Settings, source: Source, output, *, current_time_point: int, workers, scheduler,
                     resume: bool, progress) -> SegmentResult:
    if settings.export_objects:
        raise SettingsError("EXPORT_OBJECTS", list(settings.export_objects),
                            "is for TIFF output; with OME-Zarr the labels are in the store (leave it empty)")
    store, in_input = labels_store(source.path, output)
    with OmeZarrImageSet(source.path, level=source.level, labels_store=store, current_time_point=current_time_point,
                         overwrite=settings.overwrite) as imageset:
        plan, name, dtype, target, stamp, resuming = _prepare(settings, source, imageset, store, resume=resume)
        if not resuming and imageset.label_image_exists(name) and not settings.overwrite:
            raise OutputError(f"{str(target.folder)!r} exists already; choose another OUTPUT_CH_NAME, or replace it "
                              "with --overwrite (scripts: OVERWRITE = True)")
        with OutputLock(store):  # one run per store: the labels list is read and rewritten
            model, device, precision, task = _task(settings, imageset, plan, target, dtype)  # before writing anything
            channel = imageset.open_label_channel(name) if resuming else imageset.add_channel(name, dtype)
            if not resuming:
                target.journal.start(stamp)
            results, computed = _execute(task, plan, model, workers=workers, scheduler=scheduler, progress=progress)
            shutil.rmtree(target.journal.folder)  # the run is complete: no journal means finished labels
        time_point_count = imageset.time_point_count
    log.info("labels in %s (%s)", target.folder, "the input store" if in_input else "a separate store")
    return SegmentResult(channel, name, model.name, device, units=results, ndim=settings.ndim, precision=precision,
                         time_point_count=time_point_count, computed=computed)


_load = load_for_settings  # the model, the device and the precision, in the client (a local run keeps using them)


def _task(settings: Settings, imageset, plan: Plan, target: Target, dtype: np.dtype) -> tuple:
    """The model loaded (with its device and precision) and the task of this run: the normalisation and the scale
    resolved once, here (a bad scale stops the run now)."""
    model, device, precision = _load(settings)
    normalisation, _, scale = resolve_run(model, imageset, plan, normalisation_for(settings, model),
                                          scale=settings.scale, model_pixel_size_um=settings.model_pixel_size_um,
                                          object_diameter_um=settings.object_diameter_um)
    task = Task(settings, target, str(dtype), scale, normalisation)
    return model, device, precision, task


def _execute(task: Task, plan: Plan, model, *, workers, scheduler, progress):
    with dask_client(workers=workers, scheduler=scheduler) as client:
        if client is None:
            _CACHE["model"] = (_model_key(task.settings), model)
        try:
            return _run_journalled(client, task, plan, progress=progress)
        finally:
            if client is None:
                for kind in ("source", "target", "predictor", "model"):
                    _release(kind)


def _segment_tiff(settings: Settings, source: Source, out: Path, *, current_time_point: int, workers, scheduler,
                  resume: bool, progress) -> SegmentResult:
    store = scratch_labels_store(out)
    with claim_tiff_output(source.path, out, overwrite=settings.overwrite, formats=settings.export_objects) as stem:
        with open_imageset(source.path, axes=source.axes, series=source.series, scratch_dir=out.parent) as imageset:
            imageset.current_time_point = current_time_point
            plan, name, dtype, target, stamp, resuming = _prepare(settings, source, imageset, store, resume=resume)
            model, device, precision, task = _task(settings, imageset, plan, target, dtype)  # before writing anything
            if not resuming:
                shutil.rmtree(store, ignore_errors=True)
                target.journal.start(stamp)
            results, computed = _execute(task, plan, model, workers=workers, scheduler=scheduler, progress=progress)
            scratch, channel = _ScratchUnits(target), imageset.add_channel(name, dtype)
            highest = {r.unit: r.highest for r in results}
            offsets = _offsets(plan.units, highest, dtype) if settings.unique_labels else {}
            for unit in plan.units:  # the scratch folder's units into the new label channel, numbered for the run
                labels = scratch.read_unit(unit)
                if offsets.get(unit):
                    labels = shifted(labels, offsets[unit], dtype)
                for z, plane in unit_planes(unit, labels, settings.ndim):
                    imageset.set_channeldata(channel, z, unit.time_point, plane)
            channel, note = write_tiff_output(imageset, out, stem, label_channel=channel, ndim=settings.ndim,
                                              time_points=plan.time_points, formats=settings.export_objects,
                                              labels_only=settings.labels_only, overwrite=settings.overwrite)
            time_point_count = imageset.time_point_count
    shutil.rmtree(store)  # after the OME-TIFF is in place: until then it holds the labels and the journal
    return SegmentResult(channel, name, model.name, device, units=results, ndim=settings.ndim, precision=precision,
                         time_point_count=time_point_count, computed=computed, output_note=note)
