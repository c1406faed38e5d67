"""Runs started from napari: off the GUI thread, image-set calls on it, progress, cancel, notifications.

:class:`SegmentationRun` runs :func:`stardist_host.runs.local.run` (the same
run a script makes) in a napari thread worker, on a
:class:`~stardist_host.napari.calls.GuiThreadImageSet` over the layers, with
SEPARATE_PROCESS ``"auto"`` resolved to True, as inside any host: TensorFlow
runs in a child process that the worker thread serves.  Progress goes to
napari's progress bar (the activity dock) and to ``on_progress``; the outcome
is one notification, one line (the summary, or the error's message).

What stops a run, within a plane (volume): :meth:`SegmentationRun.cancel`
(the Cancel button), an input layer or the new Labels layer removed from the
viewer, the viewer closed (napari asks its workers to quit).  A stopped or
failed run removes its unfinished Labels layer, as every run removes its
unfinished channel.

:class:`AnalysisRun` runs an analysis job the same way (the worker thread
computes; no TensorFlow, so no child process) and reports the files it wrote.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any, Callable

from ..errors import Cancelled, SettingsError, StardistHostError
from .calls import GuiCalls, GuiThreadImageSet
from .imageset import NapariImageSet

__all__ = ["SegmentationRun", "AnalysisRun", "one_line"]

log = logging.getLogger(__name__)


def one_line(err: BaseException) -> str:
    """An error as the one line a notification shows: the package's message, else the type and the message."""
    text = " ".join(str(err).split())
    return text if isinstance(err, StardistHostError) else f"{type(err).__name__}: {text}"


class _ThreadRun:
    """A run in a napari thread worker over a :class:`NapariImageSet`: progress, cancel, stops, one notification.

    Subclasses say what runs (``_call(imageset, progress, cancel)``, on the
    worker thread, with the image set wrapped so that every call goes to the GUI
    thread) and how its outcome reads (``_done_text(outcome)``, :attr:`cancelled_note`).
    """

    #: The notifications' first word(s).
    title = "StarDist"
    #: What a cancelled run's notification adds.
    cancelled_note = ""

    def __init__(self, viewer, imageset: NapariImageSet, *, desc: str,
                 on_progress: Callable[[int, int], None] | None = None,
                 on_finished: Callable[[Any], None] | None = None) -> None:
        from napari.qt.threading import create_worker
        from napari.utils import progress

        self.viewer, self.imageset = viewer, imageset
        self.result: Any = None  # the outcome or the error, once the run has finished
        self._outcome: Any = RuntimeError("the run ended without a result")  # set by the worker thread
        self.reason: str | None = None  # why the run was stopped, where it was not the Cancel button
        self._cancel = threading.Event()
        self._on_progress, self._on_finished = on_progress, on_finished
        self._calls = GuiCalls(stopped=self._gui_gone, reason=lambda: self.reason or "the viewer was closed")
        self._bar = progress(total=0, desc=desc)
        self.worker = create_worker(self._work, _start_thread=False)
        # finished, not returned: a worker that napari asked to quit (the viewer closing) returns nothing
        self.worker.finished.connect(self._finished)
        viewer.layers.events.removed.connect(self._removed)
        self.running = False

    def start(self) -> None:
        self.running = True
        self.worker.start()

    def cancel(self, reason: str | None = None) -> None:
        """Stop the run within a unit (plane, volume, time point); ``reason``: why, where not the user's Cancel."""
        if reason and not self.reason:
            self.reason = reason
        self._cancel.set()

    # ----- the worker thread -------------------------------------------------------------------------------------

    def _work(self) -> Any:
        imageset = GuiThreadImageSet(self.imageset, self._calls)
        try:
            self._outcome = self._call(imageset, self._progress, self._cancelled)
        except Exception as err:  # shown as a notification of one line, not napari's traceback dialog
            if not isinstance(err, StardistHostError):
                log.exception("%s run failed", self.title)
            self._outcome = err  # kept, not returned: a worker that returns an exception raises it

    def _cancelled(self) -> bool:
        return self._cancel.is_set() or self._gui_gone()

    def _gui_gone(self) -> bool:
        return self.worker.abort_requested  # napari asks its workers to quit when the viewer closes

    def _progress(self, done: int, total: int) -> None:
        self._calls.post(self._show_progress, done, total)

    # ----- the GUI thread ----------------------------------------------------------------------------------------

    def _show_progress(self, done: int, total: int) -> None:
        if self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)
        if self._on_progress is not None:
            self._on_progress(done, total)

    def _removed(self, event) -> None:
        layer = event.value
        if layer in self.imageset.layers:
            self.cancel(f"layer {layer.name!r} was removed from the viewer during the run")
        elif any(layer is added for added in self.imageset._added):
            self.cancel(f"the new Labels layer {layer.name!r} was removed from the viewer during the run")

    def _finished(self) -> None:
        from napari.utils.notifications import show_error, show_info

        self.running = False
        outcome = self.result = self._outcome
        self.viewer.layers.events.removed.disconnect(self._removed)
        self._bar.close()
        if self.worker.abort_requested:  # napari >= 0.6; 0.5 names the layers its closing removed
            self.reason = "the viewer was closed during the run"
        if isinstance(outcome, BaseException) and self.reason:  # the stop, or what the removal made fail first
            at = str(outcome).find(" after ")  # a Cancelled message's "after 5 of 30 planes"
            after = f"{str(outcome)[at + 1:].split(';')[0]}; " if at >= 0 else ""
            show_error(f"{self.title} stopped: {self.reason}; {after}nothing was kept")
        elif isinstance(outcome, Cancelled):
            show_info(f"{self.title} {one_line(outcome)}; {self.cancelled_note}")
        elif isinstance(outcome, BaseException):
            show_error(f"{self.title}: {one_line(outcome)}")
        else:
            try:
                text = self._done_text(outcome)
            except Exception as err:  # what follows the run (a Tracks layer) failed: the run's files stay
                log.exception("%s: after the run", self.title)
                outcome = self.result = err
                text = f"{self.title}: {one_line(err)}"
            show_info(text)
        if self._on_finished is not None:
            self._on_finished(outcome)


class SegmentationRun(_ThreadRun):
    """One segmentation of napari layers, run in a thread worker; make it and :meth:`start` it on the GUI thread.

    Parameters
    ----------
    viewer
        The ``napari.Viewer``.
    layers
        The Image layer, or one Image layer per channel (see
        :class:`~stardist_host.napari.imageset.NapariImageSet`).
    settings
        Validated :class:`~stardist_host.segmentation.settings.Settings`.
    axes
        The layers' axes where their labels do not say (see :func:`~stardist_host.napari.imageset.layer_axes`).
    on_progress
        Called on the GUI thread as ``on_progress(done, total)``.
    on_finished
        Called on the GUI thread with the :class:`SegmentResult` or the error.

    Raises
    ------
    LayerError
        The layers cannot be segmented (RGB, Labels, no Y and X axes); raised here, before a thread starts.
    SettingsError
        SEPARATE_PROCESS=False: inside napari the model runs in its own process.
    """

    cancelled_note = "the unfinished Labels layer was removed"

    def __init__(self, viewer, layers, settings, *, axes: str | None = None, on_progress: Callable[[int, int], None] | None = None,
                 on_finished: Callable[[Any], None] | None = None) -> None:
        imageset = NapariImageSet(viewer, layers, axes=axes)
        if settings.separate_process is False:
            # seen here: TensorFlow 2.21's import on a worker thread of napari's process (PyQt5, vispy) segfaults
            raise SettingsError("SEPARATE_PROCESS", False, 'must be "auto" or True in napari: the model runs in its '
                                "own process (TensorFlow imported into napari's process can crash napari)")
        if settings.separate_process == "auto":  # inside a host: TensorFlow stays out of napari's process
            settings = dataclasses.replace(settings, separate_process=True)
        self.settings = settings
        super().__init__(viewer, imageset, desc=f"StarDist {settings.ndim}D", on_progress=on_progress,
                         on_finished=on_finished)

    def _call(self, imageset, progress, cancel) -> Any:
        from ..runs.local import run  # the run a script makes, imported when a run starts

        return run(self.settings, imageset, progress=progress, cancel=cancel)

    def _done_text(self, outcome) -> str:
        return f"StarDist: {outcome.summary()}"


class AnalysisRun(_ThreadRun):
    """One analysis job (:data:`~stardist_host.analyses.jobs.JOBS`) on napari layers, run in a thread worker.

    The job needs no TensorFlow: it runs in the worker thread itself, through
    :func:`~stardist_host.analyses.jobs.run_job`, with every image-set call on
    the GUI thread.  It writes its tables into ``output_folder`` (every output
    checked and locked first) and adds its channels (cells, track ids) as
    Labels layers; a stopped or failed job removes them again.  The outcome is
    the list of files written; ``after`` (on the GUI thread) may add to the
    viewer from them and returns a text for the notification.

    Parameters
    ----------
    viewer
        The ``napari.Viewer``.
    imageset
        The :class:`NapariImageSet` (with its label channels).
    job
        A name in :data:`~stardist_host.analyses.jobs.JOBS`.
    output_folder, stem
        Where the files go: ``output_folder/stem_measurements.csv`` ...
    settings
        The job's settings by attribute name (validated by ``run_job``).
    after
        Called on the GUI thread with the files written; returns what the
        notification adds (e.g. "added the Tracks layer 'tracks'").
    """

    cancelled_note = "nothing was written"

    def __init__(self, viewer, imageset: NapariImageSet, job: str, output_folder, stem: str, settings: dict, *,
                 after: Callable[[list], str] | None = None, on_progress: Callable[[int, int], None] | None = None,
                 on_finished: Callable[[Any], None] | None = None) -> None:
        self.job, self.output_folder, self.stem, self.settings = job, output_folder, stem, dict(settings)
        self.title = f"StarDist {job}"
        self._after_run = after
        super().__init__(viewer, imageset, desc=self.title, on_progress=on_progress, on_finished=on_finished)

    def _call(self, imageset, progress, cancel) -> Any:
        from ..analyses.jobs import run_job

        return run_job(self.job, imageset, self.output_folder, self.stem, self.settings, progress=progress,
                       cancel=cancel)

    def _done_text(self, outcome: list) -> str:
        extra = self._after_run(outcome) if self._after_run is not None else ""
        names = ", ".join(Path(p).name for p in outcome)
        return f"{self.title}: wrote {names} in {Path(self.output_folder)}" + (f"; {extra}" if extra else "")
