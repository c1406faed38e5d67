"""Segmenting unit by unit on a Dask cluster or in this process, with a journal that makes runs resumable.

Each unit of the plan (a plane in 2D, a volume in 3D) is one task,
:func:`segment_unit`: it loads the model once per process (kept for the
next tasks), reads its planes straight from the input (an OME-Zarr store, or
the TIFF file opened read-only), predicts, writes its labels straight to the
label store and then records the unit as done in the store's journal, a
folder ``.done`` of small JSON files (``t{T}_z{FIRST}-{LAST}.json``: label count,
highest label, seconds).  Nothing is gathered on the client but those records.

- OME-Zarr input: the labels are the NGFF label image ``labels/<name>``, in
  the input store (its arrays untouched) or in a separate store; the journal
  is ``labels/<name>/.done`` and is removed once the run is complete.
- TIFF input: the labels go to a hidden Zarr store beside the output,
  ``.OUTPUT.labels.zarr`` (the journal is inside it); once every unit is
  done the client writes the OME-TIFF from it, as the single-process path
  does, and removes it.

With UNIQUE_LABELS a second pass adds to each unit's labels the sum of the
highest labels of the units before it (the numbering of the single-process
path); it is journalled too (``*.offset.json``).  A run killed at any point
and started again with ``resume=True`` redoes only the units without a record;
without ``resume`` an interrupted run's labels are reported, never silently
replaced.  The journal's ``run.json`` holds what the labels depend on
(settings, plan, model, label type); a resume with other settings is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from numpy.typing import NDArray

from .errors import LabelOverflowError, OutputError, SettingsError, StardistHostError, UnitFailedError, require
from .io.files import OutputLock, atomic_write
from .segmentation.plan import Plan, Unit, make_plan
from .segmentation.segment import Progress, SegmentResult, UnitResult, label_dtype_for, normalise
from .segmentation.settings import Settings

__all__ = ["segment_distributed", "segment_unit", "renumber_unit", "is_omezarr", "tiff_journal", "check_no_journal",
           "check_journal", "check_cluster", "UnitFailedError", "dask_client", "EXIT_AFTER_ENV", "JOURNAL"]

log = logging.getLogger(__name__)

#: The journal folder inside a label image (OME-Zarr) or the scratch store (TIFF output).
JOURNAL = ".done"
#: Test hook: a process whose unit function finished this many units ends at once (``os._exit``), like a kill.
EXIT_AFTER_ENV = "STARDIST_HOST_TEST_EXIT_AFTER_UNITS"
_RUN = "run.json"


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
            from .io.omezarr import OmeZarrImageSet

            return OmeZarrImageSet(self.path, level=self.level)
        from .io.opening import open_imageset

        return open_imageset(self.path, axes=self.axes, series=self.series)


@dataclass(frozen=True)
class Target:
    """Where a worker writes labels: an NGFF label image (``store/labels/name``) or a scratch TZYX array."""

    kind: str  # "ngff" or "scratch"
    store: str
    name: str
    source: Source

    @property
    def folder(self) -> Path:
        return Path(self.store) / "labels" / self.name if self.kind == "ngff" else Path(self.store)

    @property
    def journal(self) -> Path:
        return self.folder / JOURNAL


@dataclass(frozen=True)
class Job:
    """Everything a unit task needs; small and picklable, sent with every task."""

    source: Source
    target: Target
    channel: int
    ndim: int
    dtype: str
    model_name: str
    model_path: str | None
    use_gpu: bool
    prob_thresh: float | None
    nms_thresh: float | None
    percentiles: tuple[float, float]
    n_tiles: tuple[int, ...] | None
    scale: tuple[float, ...] | None
    gpu_memory_limit_mb: int | None = None
    precision: str = "auto"


# One entry per kind ("model", "source", "target"): a worker keeps the model and its open
# stores between tasks, and a long-lived worker that moves to another job holds only that one.
_CACHE: dict[str, tuple[Any, Any]] = {}
_units_here = [0]  # units this process finished, for the test hook


def _cached(kind: str, key: Any, make: Callable[[], Any]) -> Any:
    held = _CACHE.get(kind)
    if held is not None and held[0] == key:
        return held[1]
    _release(kind)
    value = make()
    _CACHE[kind] = (key, value)
    return value


def _release(kind: str) -> None:
    held = _CACHE.pop(kind, None)
    close = getattr(held[1], "close", None) if held else None
    if close is not None and kind != "model":
        close()


def _model_key(job: Job) -> tuple:
    return job.model_name, job.model_path, job.ndim, job.use_gpu, job.precision


def _model(job: Job):
    def load():
        from .segmentation.models import load_for_run

        return load_for_run(job.model_name, ndim=job.ndim, path=job.model_path, use_gpu=job.use_gpu,
                            memory_limit_mb=job.gpu_memory_limit_mb, precision=job.precision)[0]

    return _cached("model", _model_key(job), load)


def _predictor(job: Job):
    """The unit predictor, kept between tasks: a new one would trace the network function again for each unit."""
    from .segmentation.pipeline import UnitPredictor

    model = _model(job)
    key = (id(model), job.prob_thresh, job.nms_thresh, job.n_tiles, job.scale)
    return _cached("predictor", key, lambda: UnitPredictor(model, prob_thresh=job.prob_thresh,
                                                           nms_thresh=job.nms_thresh, n_tiles=job.n_tiles,
                                                           scale=job.scale))


class _ScratchPlanes:
    """The (T, Z, Y, X) label array of a TIFF run's scratch store."""

    def __init__(self, store: str) -> None:
        self.array = _zarr().open_array(store, mode="r+")

    def read(self, t: int, z: int) -> NDArray:
        return np.asarray(self.array[t, z])

    def write(self, t: int, z: int, plane: NDArray) -> None:
        self.array[t, z] = plane

    def close(self) -> None:
        pass


class _NgffPlanes:
    """The planes of an NGFF label image, through the OME-Zarr image set (which knows the axes)."""

    def __init__(self, target: Target) -> None:
        from .io.omezarr import OmeZarrImageSet

        self.imageset = OmeZarrImageSet(target.source.path, level=target.source.level, labels_store=target.store)
        self.channel = self.imageset.open_label_channel(target.name)

    def read(self, t: int, z: int) -> NDArray:
        return self.imageset.get_channeldata(self.channel, z, t)

    def write(self, t: int, z: int, plane: NDArray) -> None:
        self.imageset.set_channeldata(self.channel, z, t, plane)

    def close(self) -> None:
        self.imageset.close()


def _planes(target: Target):
    return _cached("target", target, lambda: _NgffPlanes(target) if target.kind == "ngff" else _ScratchPlanes(target.store))


def _zarr():
    return require("zarr", "zarr", purpose="the label store of a resumable or distributed run")


# --------------------------------------------------------------------------- the tasks


def _key(unit: Unit) -> str:
    return f"t{unit.time_point}_z{unit.first}-{unit.last}"


def where(unit: Unit) -> str:
    """A unit as the log and errors name it ("time point 1, plane 3")."""
    planes = f"plane {unit.first}" if unit.first == unit.last else f"planes {unit.first}..{unit.last}"
    return f"time point {unit.time_point}, {planes}"


def _record(journal: Path, name: str, record: dict) -> None:
    with atomic_write(journal / name) as tmp:
        tmp.write_text(json.dumps(record))


def segment_unit(job: Job, unit: Unit) -> dict:
    """Segment one unit, write its labels to the label store, then record it in the journal.

    Runs on a worker (or in this process); the model and the stores are
    opened once per process.  Labels restart at 1 in every unit (UNIQUE_LABELS
    is a second pass, :func:`renumber_unit`).

    Returns
    -------
    dict
        ``{"count": objects, "highest": highest label, "seconds": time taken}``, as recorded.

    Raises
    ------
    LabelOverflowError
        The unit holds more labels than the label type can (nothing written).
    """
    start = time.perf_counter()
    imageset = _cached("source", job.source, job.source.open)
    if job.ndim == 2:
        image = np.asarray(imageset.get_channeldata(job.channel, unit.first, unit.time_point))
    else:
        image = np.stack([np.asarray(imageset.get_channeldata(job.channel, z, unit.time_point)) for z in unit.planes])
    x = normalise(image, job.percentiles, unit=unit)
    dtype = np.dtype(job.dtype)
    if x is None:
        labels = np.zeros(image.shape, dtype)
    else:
        [(_, labels)] = list(_predictor(job).predict([unit], lambda _unit: x))
    highest = int(labels.max()) if labels.size else 0
    count = int(np.count_nonzero(np.bincount(labels.ravel())[1:])) if highest else 0
    if highest > np.iinfo(dtype).max:
        raise LabelOverflowError(f"{where(unit)}: label {highest} does not fit the label channel's type {dtype} "
                                 f"(up to {np.iinfo(dtype).max}); set LABEL_DTYPE='uint32'")
    labels = labels.astype(dtype)
    planes = _planes(job.target)
    for i, z in enumerate(unit.planes):
        planes.write(unit.time_point, z, labels if job.ndim == 2 else labels[i])
    # written after the labels: a unit with a record is complete, one without is redone
    record = {"count": count, "highest": highest, "seconds": round(time.perf_counter() - start, 4)}
    _record(job.target.journal, f"{_key(unit)}.json", record)
    _units_here[0] += 1
    exit_after = os.environ.get(EXIT_AFTER_ENV)
    if exit_after and _units_here[0] >= int(exit_after):
        os._exit(137)  # the test hook: as abrupt as SIGKILL, no cleanup
    return record


def renumber_unit(job: Job, unit: Unit, offset: int) -> dict:
    """Add ``offset`` to the unit's labels (background stays 0), then record it (``*.offset.json``).

    Each plane is recorded as it is rewritten (``*.zZ.offset.json``) and skipped
    when already recorded, so a run killed halfway through a volume and resumed
    adds the offset to every plane exactly once.
    """
    planes = _planes(job.target)
    dtype = np.dtype(job.dtype)
    for z in unit.planes:
        done = f"{_key(unit)}.z{z}.offset.json"
        if _read_json(job.target.journal / done) is not None:
            continue
        plane = planes.read(unit.time_point, z)
        if plane.any():
            planes.write(unit.time_point, z, np.where(plane > 0, plane.astype(np.int64) + offset, 0).astype(dtype))
        _record(job.target.journal, done, {"offset": offset})
    _record(job.target.journal, f"{_key(unit)}.offset.json", {"offset": offset})
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
    with contextlib.ExitStack() as stack:
        if scheduler is not None:
            try:
                client = stack.enter_context(distributed.Client(scheduler, timeout="20s"))
            except (OSError, TimeoutError) as err:
                raise SettingsError("--scheduler", scheduler, f"no Dask scheduler answers there ({err}); give the "
                                    "address a running scheduler prints, e.g. tcp://10.0.0.5:8786") from err
        else:
            # processes: TensorFlow and NMS hold the GIL; one thread each: the model's own threads use the cores
            cluster = stack.enter_context(distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"))
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


def _fail(unit: Unit, err: BaseException, worker: str | None = None) -> BaseException:
    """The error to raise for a failed unit: ours with the unit prefixed, anything else as UnitFailedError."""
    on = f" on worker {worker}" if worker else ""
    keep = "; the finished units are kept: fix the cause and run again with --resume"
    if isinstance(err, StardistHostError) and err.args and isinstance(err.args[0], str):
        if not err.args[0].startswith(where(unit)):
            err.args = (f"{where(unit)}{on}: {err.args[0]}{keep}", *err.args[1:])
        else:
            err.args = (f"{err.args[0]}{keep}", *err.args[1:])
        return err
    failed = UnitFailedError(f"{where(unit)} failed{on}: {type(err).__name__}: {err}{keep}")
    failed.__cause__ = err
    return failed


def _run_tasks(client, fn, job: Job, items: list[tuple]) -> Iterator[tuple[tuple, dict]]:
    """Yield (args, result) of ``fn(job, *args)`` for each item as it finishes; in this process without a client."""
    if client is None:
        for args in items:
            try:
                yield args, fn(job, *args)
            except Exception as err:
                raise _fail(args[0], err) from err
        return
    from distributed import as_completed

    futures = {client.submit(fn, job, *args, pure=False, key=f"{fn.__name__}-{_key(args[0])}-{os.getpid()}-"
                             f"{time.monotonic_ns()}"): args for args in items}
    try:
        for future in as_completed(futures):
            args = futures[future]
            if future.status == "error":
                err = future.exception()
                who = client.who_has([future]).get(future.key) or ()
                raise _fail(args[0], err, next(iter(who), None)) from err
            yield args, future.result()
    finally:
        client.cancel([f for f in futures if not f.done()])


# --------------------------------------------------------------------------- the journal


def _fingerprint(settings: Settings, source: Source, plan: Plan, name: str, dtype: np.dtype) -> dict:
    """What the labels depend on; a resume must match it."""
    values = dataclasses.asdict(settings)
    for irrelevant in ("overwrite", "labels_only", "export_objects", "use_gpu", "current_time_point",
                       "gpu_memory_limit_mb", "separate_process"):
        values.pop(irrelevant)
    values["n_tiles"] = list(values["n_tiles"]) if values["n_tiles"] else None
    return {"input": str(Path(source.path).resolve()), "level": source.level, "axes": source.axes,
            "series": source.series, "label_image": name, "label_dtype_resolved": str(dtype),
            "time_points": list(plan.time_points), "planes": [plan.first_plane, plan.last_plane], **values}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a record that is unreadable counts as missing: the unit is redone


def _done(journal: Path, units: list[Unit], suffix: str = ".json") -> dict[Unit, dict]:
    records = {}
    for unit in units:
        record = _read_json(journal / f"{_key(unit)}{suffix}")
        if record is not None:
            records[unit] = record
    return records


def check_journal(journal: Path, what: str, fingerprint: dict, *, resume: bool, overwrite: bool,
                  units: list[Unit]) -> bool:
    """Decide between starting afresh (False) and continuing (True); refuse what may not be replaced.

    Raises
    ------
    OutputError
        An interrupted run's result exists and neither ``resume`` nor
        ``overwrite`` is given; or ``resume`` with settings other than the
        interrupted run's (the message lists them).
    """
    if not journal.is_dir():
        return False
    done = len(_done(journal, units))
    if not resume:
        if overwrite:
            log.info("starting %s again: --overwrite replaces an interrupted run's labels (%d of %d units done)",
                     what, done, len(units))
            return False
        raise OutputError(f"an interrupted run left {what!r} ({done} of {len(units)} units done); add --resume to "
                          "continue it or --overwrite to start again")
    before = _read_json(journal / _RUN) or {}
    changed = sorted(k for k in set(before) | set(fingerprint) if before.get(k) != fingerprint.get(k))
    if changed:
        listed = "; ".join(f"{k}: {before.get(k)!r} then, {fingerprint.get(k)!r} now" for k in changed)
        raise OutputError(f"--resume: the interrupted run that left {what!r} had other settings ({listed}); "
                          "resume with the same settings, or start again with --overwrite instead of --resume")
    log.info("resuming %s: %d of %d units done before", what, done, len(units))
    return True


def _start_journal(journal: Path, fingerprint: dict) -> None:
    journal.mkdir(parents=True, exist_ok=True)
    _record(journal, _RUN, fingerprint)


def _run_journalled(client, job: Job, plan: Plan, *, unique: bool, progress: Progress | None,
                    ) -> tuple[list[UnitResult], int]:
    """Segment the units without a record, then (UNIQUE_LABELS) renumber; return the results and units computed."""
    units = plan.units
    records = _done(job.target.journal, units)
    todo = [(u,) for u in units if u not in records]
    total, done = len(units), len(records)
    if progress is not None:
        progress(done, total)
    for (unit,), record in _run_tasks(client, segment_unit, job, todo):
        records[unit] = record
        done += 1
        log.debug("%s: %d nuclei", where(unit), record["count"])
        if progress is not None:
            progress(done, total)
    if unique:
        _renumber(client, job, units, records)
    return [UnitResult(u, records[u]["count"], records[u]["seconds"]) for u in units], len(todo)


def _renumber(client, job: Job, units: list[Unit], records: dict[Unit, dict]) -> None:
    """Offsets from the highest labels of the units before each, as the single-process path numbers them."""
    dtype = np.dtype(job.dtype)
    offsets, top = {}, 0
    for unit in units:
        offsets[unit] = top
        top += records[unit]["highest"]
        if top > np.iinfo(dtype).max:
            raise LabelOverflowError(f"{where(unit)}: label {top} does not fit the label channel's type {dtype} "
                                     f"(up to {np.iinfo(dtype).max}); set LABEL_DTYPE='uint32' and start again "
                                     "with --overwrite")
    renumbered = _done(job.target.journal, units, ".offset.json")
    todo = [(u, offsets[u]) for u in units if u not in renumbered and offsets[u] and records[u]["highest"]]
    for _ in _run_tasks(client, renumber_unit, job, todo):
        pass


# --------------------------------------------------------------------------- entry points


def is_omezarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an OME-Zarr store: a name ending in .zarr, or a folder holding a Zarr group."""
    p = Path(path)
    return p.name.lower().rstrip("/").endswith(".zarr") or (p.is_dir() and any(
        (p / n).is_file() for n in ("zarr.json", ".zgroup")))


def tiff_journal(output: str | os.PathLike) -> Path:
    """The scratch label store beside a TIFF output that journals a resumable or distributed run."""
    out = Path(output)
    return out.with_name(f".{out.name}.labels.zarr")


def check_no_journal(output: str | os.PathLike, *, overwrite: bool) -> None:
    """For the single-process TIFF path: refuse (or with ``overwrite`` remove) an interrupted journalled run's store."""
    journal = tiff_journal(output)
    if not journal.is_dir():
        return
    if not overwrite:
        raise OutputError(f"an interrupted run left {str(journal)!r} for {str(output)!r}; add --resume to continue it "
                          "or --overwrite to start again")
    log.info("removing %s, an interrupted run's labels (--overwrite)", journal)
    shutil.rmtree(journal)


def _load(settings: Settings):
    """The model, the device and the precision, in the client (a local run's worker keeps using them)."""
    from .segmentation.models import load_for_run

    return load_for_run(settings.model_name, ndim=settings.ndim, path=settings.model_path, use_gpu=settings.use_gpu,
                        memory_limit_mb=settings.gpu_memory_limit_mb, precision=settings.precision)


def _job(settings: Settings, source: Source, target: Target, plan: Plan, dtype: np.dtype, scale) -> Job:
    return Job(source, target, plan.channel, settings.ndim, str(dtype), settings.model_name, settings.model_path,
               settings.use_gpu, settings.prob_thresh, settings.nms_thresh,
               (settings.percentile_low, settings.percentile_high), settings.n_tiles, scale,
               settings.gpu_memory_limit_mb, settings.precision)


def _scale(model, imageset, ndim: int):
    from .segmentation.segment import anisotropy_scale  # the single-process path's rule, shared

    return anisotropy_scale(model, imageset.voxel_size) if ndim == 3 else None


def segment_distributed(
    settings: Settings, input: str | os.PathLike, output: str | os.PathLike | None = None, *, level: int = 0,
    axes: str | None = None, series: int | None = None, current_time_point: int = 0, workers: int | None = None,
    scheduler: str | None = None, resume: bool = False, progress: Progress | None = None,
) -> SegmentResult:
    """Segment an OME-Zarr or TIFF input unit by unit, on a Dask cluster or in this process, resumably.

    Parameters
    ----------
    settings
        Validated settings, as for the single-process path.
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


def _labels_store(source: Source, output) -> tuple[Path, bool]:
    """The store that gets ``labels/``, and whether it is the input's; a separate store is checked."""
    store = Path(source.path)
    if output is None or (Path(output).exists() and Path(output).resolve() == store.resolve()):
        return store, True
    out = Path(output)
    if not is_omezarr(out):
        raise OutputError(f"output {str(out)!r}: an OME-Zarr input's labels go to an OME-Zarr store (a folder ending "
                          f"in .zarr), or into the input store when no output is given")
    if out.is_file():
        raise OutputError(f"output {str(out)!r} is a file; give a folder ending in .zarr for the labels store")
    if not out.parent.is_dir():
        raise OutputError(f"output {str(out)!r}: the folder {str(out.parent)!r} does not exist")
    if out.is_dir() and any(out.iterdir()) and not is_omezarr(out):
        raise OutputError(f"output {str(out)!r} is a folder that is not a Zarr store; give a new name ending in .zarr")
    return out, False


def _segment_omezarr(settings: Settings, source: Source, output, *, current_time_point: int, workers, scheduler,
                     resume: bool, progress) -> SegmentResult:
    from .io.omezarr import OmeZarrImageSet

    if settings.export_objects:
        raise SettingsError("EXPORT_OBJECTS", list(settings.export_objects),
                            "is for TIFF output; with OME-Zarr the labels are in the store (leave it empty)")
    store, in_input = _labels_store(source, output)
    with OmeZarrImageSet(source.path, level=source.level, labels_store=store, current_time_point=current_time_point,
                         overwrite=settings.overwrite) as imageset:
        plan, time_point_count = make_plan(settings, imageset), imageset.time_point_count
        name = f"{settings.output_ch_name}{imageset.channel_names[plan.channel]}"
        dtype = label_dtype_for(settings.label_dtype, plan, tuple(imageset.plane_shape), settings.unique_labels)
        target = Target("ngff", str(store), name, source)
        fingerprint = _fingerprint(settings, source, plan, name, dtype)
        resuming = check_journal(target.journal, str(target.folder), fingerprint, resume=resume,
                                 overwrite=settings.overwrite, units=plan.units)
        if not resuming and imageset.label_image_exists(name) and not settings.overwrite:
            raise OutputError(f"{str(target.folder)!r} exists already; choose another OUTPUT_CH_NAME, or replace it "
                              "with --overwrite (scripts: OVERWRITE = True)")
        with OutputLock(store):  # one run per store: the labels list is read and rewritten
            model, device, precision = _load(settings)
            channel = imageset.open_label_channel(name) if resuming else imageset.add_channel(name, dtype)
            if not resuming:
                _start_journal(target.journal, fingerprint)
            job = _job(settings, source, target, plan, dtype, _scale(model, imageset, settings.ndim))
            results, computed = _execute(job, plan, model, settings, workers=workers, scheduler=scheduler,
                                         progress=progress)
            shutil.rmtree(target.journal)  # complete: no journal means a finished label image
    log.info("labels in %s (%s)", target.folder, "the input store" if in_input else "a separate store")
    return _result(channel, name, model, device, precision, results, computed, settings.ndim, time_point_count)


def _execute(job: Job, plan: Plan, model, settings: Settings, *, workers, scheduler, progress):
    with dask_client(workers=workers, scheduler=scheduler) as client:
        if client is None:
            _CACHE["model"] = (_model_key(job), model)
        try:
            return _run_journalled(client, job, plan, unique=settings.unique_labels, progress=progress)
        finally:
            if client is None:
                for kind in ("source", "target", "predictor", "model"):
                    _release(kind)


def _result(channel, name, model, device, precision, results, computed, ndim, time_point_count) -> SegmentResult:
    result = SegmentResult(channel, name, model.name, device, units=results, ndim=ndim, precision=precision,
                           time_point_count=time_point_count)
    result.computed = computed  # units segmented by this run (the others were done before a resume)
    log.info(result.summary())
    return result


def _segment_tiff(settings: Settings, source: Source, out: Path, *, current_time_point: int, workers, scheduler,
                  resume: bool, progress) -> SegmentResult:
    from .headless import claim_tiff_output, write_tiff_output
    from .io.opening import open_imageset

    store = tiff_journal(out)
    with claim_tiff_output(settings, source.path, out) as stem:
        with open_imageset(source.path, axes=source.axes, series=source.series, scratch_dir=out.parent) as imageset:
            imageset.current_time_point = current_time_point
            plan, time_point_count = make_plan(settings, imageset), imageset.time_point_count
            name = f"{settings.output_ch_name}{imageset.channel_names[plan.channel]}"
            dtype = label_dtype_for(settings.label_dtype, plan, tuple(imageset.plane_shape), settings.unique_labels)
            target = Target("scratch", str(store), name, source)
            fingerprint = _fingerprint(settings, source, plan, name, dtype)
            resuming = check_journal(target.journal, str(store), fingerprint, resume=resume,
                                     overwrite=settings.overwrite, units=plan.units)
            model, device, precision = _load(settings)
            if not resuming:
                shutil.rmtree(store, ignore_errors=True)
                _zarr().create(shape=(imageset.time_point_count, imageset.plane_count, *imageset.plane_shape),
                               chunks=(1, 1, *imageset.plane_shape), dtype=dtype, fill_value=0, store=str(store))
                _start_journal(target.journal, fingerprint)
            job = _job(settings, source, target, plan, dtype, _scale(model, imageset, settings.ndim))
            results, computed = _execute(job, plan, model, settings, workers=workers, scheduler=scheduler,
                                         progress=progress)
            channel = _copy_labels(imageset, store, name, dtype, plan)
            channel = write_tiff_output(settings, imageset, out, stem, label_channel=channel,
                                        time_points=plan.time_points)  # now the channel of the file
    shutil.rmtree(store)  # after the OME-TIFF is in place: until then it is the journal
    return _result(channel, name, model, device, precision, results, computed, settings.ndim, time_point_count)


def _copy_labels(imageset, store: Path, name: str, dtype: np.dtype, plan: Plan) -> int:
    """The scratch store's planes of the plan into a new label channel of the TIFF image set."""
    array = _zarr().open_array(str(store), mode="r")
    channel = imageset.add_channel(name, dtype)
    for unit in plan.units:
        for z in unit.planes:
            imageset.set_channeldata(channel, z, unit.time_point, np.asarray(array[unit.time_point, z]))
    return channel

