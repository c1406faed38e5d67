"""StarDist as a host operator: a parameter list a host turns into a form, and one call that runs it.

A host that builds pipeline operators from a description asks :func:`parameters`
for the settings of the 2D or 3D segmentation (generated from the same
definition as the scripts and the CLI) and calls :func:`main` with the values
its form collected; :func:`main` validates them all at once and segments the
active image set.
"""

from __future__ import annotations

from typing import Any, Callable

from .host import Progress, active_imageset
from .runs.local import run
from .schema import raise_all
from .segmentation.segment import SegmentResult
from .segmentation.settings import Settings, schema

__all__ = ["parameters", "main"]


def parameters(ndim: int = 2) -> list[dict[str, Any]]:
    """The settings of the ``ndim``-D segmentation as a machine-readable list.

    Parameters
    ----------
    ndim
        2 (per plane) or 3 (per volume).

    Returns
    -------
    list of dict
        One entry per setting, in the scripts' order, with ``name`` (as in the
        scripts: ``INPUT_CHANNEL``), ``type`` (``int``, ``float``, ``bool``,
        ``str``, ``path``, ``choice``, ``ints``, ``floats``), ``default``,
        ``required``, ``optional`` (None allowed), ``length`` (of ``ints`` /
        ``floats``), ``allowed`` (a list of choices, a ``{"min", "max",
        "min_exclusive", "max_exclusive"}`` range, or None), ``unit``,
        ``description`` and ``rule`` (what an error message says is allowed).
    """
    return [f.describe() for f in schema(ndim)]


def main(*, ndim: int = 2, progress: Progress | None = None, cancel: Callable[[], bool] | None = None,
         **params: Any) -> SegmentResult:
    """Validate ``params`` and segment the active image set.

    Parameters
    ----------
    ndim
        2 (per plane) or 3 (per volume).
    progress
        Called as ``progress(done, total)`` after each plane or volume.
    cancel
        Returns True to stop the run; a stop raises :class:`~stardist_host.errors.Cancelled`.
    **params
        Settings by the names :func:`parameters` gives (``INPUT_CHANNEL=1``);
        missing ones take their default.

    Raises
    ------
    SettingsError
        Naming every unknown or bad setting at once.
    """
    definition = schema(ndim)
    # a script's block passes over other names; an operator's parameters are all meant as settings
    raise_all([definition.unknown(k, v) for k, v in params.items() if k not in definition.by_name])
    settings = Settings.from_script(params, ndim=ndim)
    return run(settings, active_imageset(), progress=progress, cancel=cancel)
