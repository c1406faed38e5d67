"""The napari GUI tests, run in a process of their own: a Qt OpenGL viewer and TensorFlow cannot share one.

Either order (TensorFlow, then a viewer; a viewer, then TensorFlow) ends in a segmentation
fault on this machine's software OpenGL, and the rest of the suite imports TensorFlow.  The
GUI modules (``conftest.GUI_TESTS``) are left out of a mixed session and run here as their
own pytest session; given alone (``pytest tests/test_napari_widget.py``) they run directly.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GUI_TESTS

pytest.importorskip("napari", reason="napari is not installed (pip install -e '.[napari]')")

HERE = Path(__file__).resolve().parent


def test_the_gui_tests_pass_in_a_process_without_tensorflow():
    files = [name for name in GUI_TESTS if (HERE / name).is_file()]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *files], cwd=HERE,
                          capture_output=True, text=True, timeout=1800)
    report = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    summary = proc.stdout.strip().splitlines()[-1]
    print(summary)  # shown with -rA or on failure: how many GUI tests ran
    if not re.search(r"\d+ passed", summary):
        pytest.skip(f"no GUI test ran: {summary}; {' '.join(re.findall(r'SKIPPED .*', proc.stdout))[:500]}")
