"""The journal that makes a run resumable: one small record per finished unit, beside the labels.

A journal is a folder ``.done`` inside the label store (an NGFF label image,
or the scratch folder beside a TIFF output) holding ``run.json`` (what the
labels depend on: the settings that change labels, the input, the plan and
the label type) and ``t{T}_z{FIRST}-{LAST}.json`` per finished unit (objects,
highest label, seconds), written after the unit's labels.  A unit with a
record is complete; one without is redone.  A run killed at any point and
started again with ``resume`` redoes only the units without a record; without
``resume`` an interrupted run's labels are reported, never silently replaced,
and a resume with other settings is refused with the list of differences.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import OutputError
from ..io.files import atomic_write
from ..segmentation.plan import Plan, Unit
from ..segmentation.settings import Settings

__all__ = ["JOURNAL", "Journal", "fingerprint", "check_no_journal"]

log = logging.getLogger(__name__)

#: The journal folder inside a label image (OME-Zarr) or the scratch folder (TIFF output).
JOURNAL = ".done"
_RUN = "run.json"


def key(unit: Unit) -> str:
    """A unit's name in the journal."""
    return f"t{unit.time_point}_z{unit.first}-{unit.last}"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a record that is unreadable counts as missing: the unit is redone


def fingerprint(settings: Settings, *, input: str | os.PathLike, level: int, axes: str | None, series: int | None,
                plan: Plan, name: str, dtype: np.dtype) -> dict:
    """What the labels depend on; a resume must match it."""
    return {"input": str(Path(input).resolve()), "level": level, "axes": axes, "series": series, "label_image": name,
            "label_dtype_resolved": str(dtype), "time_points": list(plan.time_points),
            "planes": [plan.first_plane, plan.last_plane], **settings.label_values()}


class Journal:
    """The records of one label store's run (``folder`` is the ``.done`` folder)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def record(self, name: str, record: dict) -> None:
        """Write one record, atomically: a record is there whole or not at all (one that cannot be read, as after
        a power loss, counts as missing: its unit is redone)."""
        with atomic_write(self.folder / name, fsync=False) as tmp:
            tmp.write_text(json.dumps(record))

    def recorded(self, name: str) -> bool:
        return _read_json(self.folder / name) is not None

    def done(self, units: list[Unit], suffix: str = ".json") -> dict[Unit, dict]:
        """The records of the units that have one."""
        records = {unit: _read_json(self.folder / f"{key(unit)}{suffix}") for unit in units}
        return {unit: record for unit, record in records.items() if record is not None}

    def check(self, fingerprint: dict, *, resume: bool, overwrite: bool, units: list[Unit]) -> bool:
        """Decide between starting afresh (False) and continuing (True); refuse labels that may not be replaced.

        Raises
        ------
        OutputError
            An interrupted run's result exists and neither ``resume`` nor
            ``overwrite`` is given; or ``resume`` with settings other than the
            interrupted run's (the message lists them).
        """
        if not self.folder.is_dir():
            return False
        what, done = str(self.folder.parent), len(self.done(units))
        if not resume:
            if overwrite:
                log.info("starting %s again: --overwrite replaces an interrupted run's labels (%d of %d units done)",
                         what, done, len(units))
                return False
            raise OutputError(f"an interrupted run left {what!r} ({done} of {len(units)} units done); add --resume "
                              "to continue it or --overwrite to start again")
        before = _read_json(self.folder / _RUN) or {}
        changed = sorted(k for k in set(before) | set(fingerprint) if before.get(k) != fingerprint.get(k))
        if changed:
            listed = "; ".join(f"{k}: {before.get(k)!r} then, {fingerprint.get(k)!r} now" for k in changed)
            raise OutputError(f"--resume: the interrupted run that left {what!r} had other settings ({listed}); "
                              "resume with the same settings, or start again with --overwrite instead of --resume")
        log.info("resuming %s: %d of %d units done before", what, done, len(units))
        return True

    def start(self, fingerprint: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.record(_RUN, fingerprint)


def check_no_journal(store: Path, output: str | os.PathLike, *, overwrite: bool) -> None:
    """A run without the journal refuses (with ``overwrite`` removes) an interrupted journalled run's ``store``."""
    if not store.is_dir():
        return
    if not overwrite:
        raise OutputError(f"an interrupted run left {str(store)!r} for {str(output)!r}; add --resume to continue it "
                          "or --overwrite to start again")
    log.info("removing %s, an interrupted run's labels (--overwrite)", store)
    shutil.rmtree(store)
