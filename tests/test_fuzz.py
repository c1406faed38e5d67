"""Property-based runs of the whole headless path on generated TIFF files (hypothesis).

Small random stacks in every dtype, axes order and writer, with random settings,
go through ``segment_file`` and the real batched pipeline with the bundled models.
Whatever the input, the run either succeeds or stops with one of the package's
own errors, and then:
- the input file's bytes are unchanged;
- every input channel in the output equals the input: in its own dtype, or (integer input) in the
  smallest integer type that holds it and the labels exactly;
- the label channel is integer-typed, and planes and time points outside the
  selection are zero;
- with UNIQUE_LABELS, no label appears in two units.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import sha256
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stardist_host import Settings, TiffImageSet
from stardist_host.errors import StardistHostError
from stardist_host.runs.files import segment_file

DTYPES = ("uint8", "uint16", "int16", "uint32", "float32", "float64")
IMAGEJ_DTYPES = ("uint8", "uint16", "float32")  # what ImageJ hyperstacks hold


def _image(rng: np.random.Generator, shape: tuple[int, ...], dtype: str, kind: str) -> np.ndarray:
    """Nuclei-like discs on noise (or a blank or NaN-spotted variant) in ``dtype``'s range."""
    *lead, y, x = shape
    yy, xx = np.mgrid[:y, :x]
    base = rng.normal(10, 3, shape)
    for index in np.ndindex(*lead):
        for _ in range(int(rng.integers(0, 4))):
            cy, cx, r = rng.integers(4, y - 4), rng.integers(4, x - 4), rng.integers(3, 6)
            base[index][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += 80
    if kind == "blank":
        base[:] = 7
    if np.dtype(dtype).kind == "i":
        base -= 40  # negative values too
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    data = np.clip(base, info.min, info.max) if info else base
    data = data.astype(dtype)
    if kind == "nan" and data.dtype.kind == "f":
        data.flat[rng.integers(0, data.size, 5)] = np.nan
    return data


@st.composite
def stacks(draw, ndim: int):
    """(TCZYX data, writer, axes order written, seed)."""
    writer = draw(st.sampled_from(["ome", "imagej"]))
    dtype = draw(st.sampled_from(IMAGEJ_DTYPES if writer == "imagej" else DTYPES))
    t, c = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    z = draw(st.integers(1, 3)) if ndim == 2 else draw(st.integers(4, 8))
    y, x = draw(st.integers(24, 40)), draw(st.integers(24, 40))
    kind = draw(st.sampled_from(["discs", "discs", "blank", "nan"]))
    order = "TZC" if writer == "imagej" else "".join(draw(st.permutations("TCZ")))
    seed = draw(st.integers(0, 2**16))
    data = _image(np.random.default_rng(seed), (t, c, z, y, x), dtype, kind)
    return data, writer, order


def _write(path: Path, data: np.ndarray, writer: str, order: str) -> None:
    """Write TCZYX ``data`` with its T, C, Z axes in ``order`` (then YX)."""
    stored = np.transpose(data, ["TCZ".index(a) for a in order] + [3, 4])
    if writer == "imagej":
        tifffile.imwrite(path, stored, imagej=True, metadata={"axes": order + "YX"})
    else:
        tifffile.imwrite(path, stored, ome=True, metadata={"axes": order + "YX"})


@st.composite
def run_settings(draw, ndim: int, data: np.ndarray):
    t, c, z = data.shape[:3]
    first = draw(st.integers(-1, z - 1))
    last = draw(st.sampled_from([-1, *range(max(first, 0), z)]))
    return {
        "ndim": ndim,
        "input_channel": draw(st.integers(0, c - 1)),
        "current_time_point": draw(st.booleans()),
        "first_plane": first,
        "last_plane": last,
        "unique_labels": draw(st.booleans()),
        "labels_only": draw(st.booleans()),
        "use_gpu": False,
    }, draw(st.integers(0, t - 1))


def _check_run(data: np.ndarray, writer: str, order: str, values: dict, time_point: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        inp, out = Path(folder) / "in.tif", Path(folder) / "out.ome.tif"
        _write(inp, data, writer, order)
        before = sha256(inp)
        try:
            result = segment_file(Settings(**values), inp, out, current_time_point=time_point)
        except StardistHostError:
            assert not out.exists()  # a refused run writes nothing
            return
        finally:
            assert sha256(inp) == before
        t_n, c_n, z_n = data.shape[:3]
        with TiffImageSet(out) as back:
            assert back.channel_count == (1 if values["labels_only"] else c_n + 1)
            if not values["labels_only"]:
                for t, c, z in np.ndindex(t_n, c_n, z_n):
                    plane = back.get_channeldata(c, z, t)
                    labels_dtype = back.channel_dtype(back.channel_count - 1)
                    widened = np.result_type(data.dtype, labels_dtype) if data.dtype.kind in "iu" else data.dtype
                    assert plane.dtype == widened
                    np.testing.assert_array_equal(plane, data[t, c, z])
            labels_channel = back.channel_count - 1
            first = 0 if values["first_plane"] == -1 else values["first_plane"]
            last = z_n - 1 if values["last_plane"] == -1 else values["last_plane"]
            times = [time_point] if values["current_time_point"] else range(t_n)
            seen: dict = {}
            for t, z in np.ndindex(t_n, z_n):
                labels = back.get_channeldata(labels_channel, z, t)
                signed = data.dtype.kind == "i" and not values["labels_only"]  # signed input: one signed image
                assert labels.dtype.kind == ("i" if signed else "u")
                if t not in times or not first <= z <= last:
                    assert not labels.any(), f"t={t}, z={z} is outside the selection"
                    continue
                unit = (t, z) if values["ndim"] == 2 else t
                for label in np.unique(labels[labels > 0]).tolist():
                    assert seen.setdefault(label, unit) == unit or not values["unique_labels"]
        assert result.total == sum(u.count for u in result.units)


FUZZ = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])


@pytest.fixture
def cached_models(monkeypatch, model_2d, model_3d):
    """Each run loads its model once per process, as a host session would, not once per example."""
    from stardist_host.segmentation import models

    monkeypatch.setattr(models, "load_model", lambda name, *, ndim, path=None, channels=None: model_2d if ndim == 2 else model_3d)


@FUZZ
@given(st.data())
def test_2d_runs_keep_the_input_and_the_selection(cached_models, data):
    stack, writer, order = data.draw(stacks(2))
    values, time_point = data.draw(run_settings(2, stack))
    _check_run(stack, writer, order, values, time_point)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(st.data())
def test_3d_runs_keep_the_input_and_the_selection(cached_models, data):
    stack, writer, order = data.draw(stacks(3))
    values, time_point = data.draw(run_settings(3, stack))
    _check_run(stack, writer, order, values, time_point)
