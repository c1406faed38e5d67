"""Calls from a worker thread that run on Qt's GUI thread: how a run off the GUI thread still meets the host rule.

The host contract asks that an image set be called from one thread; napari's
layers belong to the GUI thread.  The dock widget runs the segmentation in a
napari thread worker (so the viewer stays responsive), and wraps the
:class:`~stardist_host.napari.imageset.NapariImageSet` in a
:class:`GuiThreadImageSet`: every member it reaches is a request that the GUI
thread's event loop answers while the worker waits.  With SEPARATE_PROCESS the
worker thread serves the child process's requests and passes each one on the
same way, so TensorFlow runs in the child, the pipe is served by the worker,
and napari's objects are touched by the GUI thread alone.

A worker that waits for the GUI thread gives up when the run is stopped
(``stopped()`` turns True: the viewer closed, or the event loop no longer
runs), so neither side can wait for the other forever.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any, Callable

from qtpy.QtCore import QObject, QThread, Signal

from ..errors import Cancelled

__all__ = ["GuiCalls", "GuiThreadImageSet"]

# How often a waiting worker looks at stopped() (seconds).
_WAIT = 0.05


class GuiCalls(QObject):
    """Runs callables on the thread that made it (Qt's GUI thread), for any thread that asks.

    Make it on the GUI thread; the queued signal delivers each request to that
    thread's event loop.

    Parameters
    ----------
    stopped
        Asked while a worker waits; True makes the wait raise
        :class:`~stardist_host.errors.Cancelled` with ``reason()``.
    reason
        The text of that error.
    """

    _request = Signal(object)

    def __init__(self, stopped: Callable[[], bool], reason: Callable[[], str]) -> None:
        super().__init__()
        self._stopped, self._reason = stopped, reason
        self._request.connect(self._answer)

    def _answer(self, job: Callable[[], None]) -> None:
        job()

    def on_gui_thread(self) -> bool:
        return QThread.currentThread() is self.thread()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the GUI thread; its result, or its error raised here."""
        if self.on_gui_thread():
            return fn(*args)
        future: concurrent.futures.Future = concurrent.futures.Future()

        def job() -> None:
            if not future.set_running_or_notify_cancel():
                return  # the worker gave up waiting
            try:
                future.set_result(fn(*args))
            except BaseException as err:  # handed to the worker, which raises it
                future.set_exception(err)

        self._request.emit(job)
        while True:
            try:
                return future.result(timeout=_WAIT)
            except concurrent.futures.TimeoutError:
                if self._stopped() and future.cancel():
                    raise Cancelled(f"cancelled: {self._reason()}") from None

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """``fn(*args)`` on the GUI thread, without waiting (progress)."""
        if self.on_gui_thread():
            fn(*args)
        else:
            self._request.emit(lambda: fn(*args))


class GuiThreadImageSet:
    """An image set whose every member runs on the GUI thread, whichever thread calls it.

    Parameters
    ----------
    imageset
        The image set that belongs to the GUI thread.
    calls
        The :class:`GuiCalls` made on that thread.
    """

    def __init__(self, imageset, calls: GuiCalls) -> None:
        self._imageset, self._calls = imageset, calls
        if hasattr(imageset, "remove_channel"):  # an optional member: callers look for it
            self.remove_channel = lambda index: calls.call(imageset.remove_channel, index)

    def _get(self, name: str) -> Any:
        return self._calls.call(getattr, self._imageset, name)

    channel_count = property(lambda self: self._get("channel_count"))
    plane_count = property(lambda self: self._get("plane_count"))
    time_point_count = property(lambda self: self._get("time_point_count"))
    plane_shape = property(lambda self: self._get("plane_shape"))
    channel_names = property(lambda self: self._get("channel_names"))
    voxel_size = property(lambda self: self._get("voxel_size"))
    current_time_point = property(lambda self: self._get("current_time_point"))

    def get_channeldata(self, channel: int, plane: int, time_point: int):
        return self._calls.call(self._imageset.get_channeldata, channel, plane, time_point)

    def set_channeldata(self, channel: int, plane: int, time_point: int, data) -> None:
        self._calls.call(self._imageset.set_channeldata, channel, plane, time_point, data)

    def add_channel(self, name: str, dtype) -> int:
        return self._calls.call(self._imageset.add_channel, name, dtype)
