"""A run on an image set: validate everything, then segment in this process or in a child process.

With SEPARATE_PROCESS (``"auto"``: when the image set is the host's active
one) the model is loaded and run in a child process that ends with the run
(:mod:`stardist_host.runs.child`), and this process never imports TensorFlow.
"""

from __future__ import annotations

from ..host import Cancel, ImageSet, Progress, active_imageset, active_imageset_or_none, check_imageset
from ..segmentation.plan import make_plan
from ..segmentation.segment import SegmentResult, segment_with_settings
from ..segmentation.settings import Settings

__all__ = ["run", "separate_process"]


def run(settings: Settings, imageset: ImageSet | None = None, *, progress: Progress | None = None,
        cancel: Cancel | None = None) -> SegmentResult:
    """Validate everything, load the model once, then segment: the whole job of a script.

    Nothing is written to the image set until the settings, the plan and the
    model have all been checked; a run that fails or is cancelled later
    leaves no half-written channel (see
    :func:`~stardist_host.segmentation.segment.segment`).  The image set is
    called only from the thread that calls this.

    Parameters
    ----------
    settings
        Validated settings (``Settings(...)`` or ``Settings.from_script(globals(), ndim=2)``).
    imageset
        The image set; None uses the one a host registered as active.
    progress
        Called as ``progress(done, total)`` after each plane or volume
        (:func:`~stardist_host.segmentation.segment.percent_progress` adapts a host's percent callback).
    cancel
        Called between planes (volumes) and batches; True stops the run with
        :class:`~stardist_host.errors.Cancelled`.

    Raises
    ------
    SegmentationProcessError
        The child process ended without finishing (crashed, or killed for
        lack of memory); the label channel is removed.
    """
    imageset = check_imageset(imageset) if imageset is not None else active_imageset()
    plan = make_plan(settings, imageset)
    name = plan.output_name(settings.output_ch_name, imageset.channel_names)
    if separate_process(settings.separate_process, imageset):
        from .child import run_in_child

        return run_in_child(settings, imageset, plan, output_name=name, progress=progress, cancel=cancel)
    return segment_with_settings(settings, imageset, plan, output_name=name, progress=progress, cancel=cancel)


def separate_process(choice: bool | str, imageset: ImageSet) -> bool:
    """SEPARATE_PROCESS resolved: ``"auto"`` is True for the host's active image set (inside a host), else False."""
    if choice != "auto":
        return bool(choice)
    return imageset is active_imageset_or_none()
