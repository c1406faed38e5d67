"""NORMALIZE: per unit, across the time series, fixed intensities, none; subsampled percentiles (issue 19, item 5).

Oracles: numpy's percentiles of the whole series or plane, and stardist's
``predict_instances`` on the image normalised by hand (float32).
"""

from __future__ import annotations

import numpy as np
import pytest
from csbdeep.utils import normalize_mi_ma
from stardist.data import test_image_nuclei_2d

from stardist_host import cli
from stardist_host.errors import SettingsError
from stardist_host.io.imagesets import MemoryImageSet
from stardist_host.runs.files import segment_file
from stardist_host.runs.local import run
from stardist_host.segmentation import normalisation
from stardist_host.segmentation.normalisation import PERCENTILE_ERROR, Normalisation, unit_percentiles
from stardist_host.segmentation.settings import Settings

PERCENTILES = (0.1, 1.0, 50.0, 99.8, 99.99)


def _settings(**kw) -> Settings:
    return Settings(ndim=2, use_gpu=False, separate_process=False, precision="float32", **kw)


def _series() -> np.ndarray:
    """(T=3, C=1, Z=1, Y, X) float32: one field of nuclei fading over time (x1, x0.5, x0.25, plus background)."""
    image = test_image_nuclei_2d()[:160, :160].astype(np.float32)
    return np.stack([image * f + 20 for f in (1.0, 0.5, 0.25)])[:, None, None]


@pytest.mark.parametrize("kind", ["nuclei", "noise"])
def test_percentiles_of_a_large_plane_come_from_a_sample_within_the_stated_bound(kind):
    rng = np.random.default_rng(3)
    side = 2100  # 4.41 M pixels: above EXACT_VALUES (4.19 M)
    if kind == "nuclei":
        tile = test_image_nuclei_2d().astype(np.float32)
        plane = np.tile(tile, (5, 5))[:side, :side] + rng.normal(0, 2, (side, side)).astype(np.float32)
    else:
        plane = rng.lognormal(3, 1, (side, side)).astype(np.float32)
    assert plane.size > normalisation.EXACT_VALUES
    for p in PERCENTILES:
        got = unit_percentiles(plane, (p, p))[0]
        low, high = np.percentile(plane, [max(p - PERCENTILE_ERROR, 0), min(p + PERCENTILE_ERROR, 100)])
        assert low <= got <= high, (p, low, got, high)
    small = plane[:1000, :1000]  # at most EXACT_VALUES: exact
    assert unit_percentiles(small, (1.0, 99.8)) == (np.percentile(small, 1.0), np.percentile(small, 99.8))


def test_time_series_percentiles_are_those_of_the_whole_series_and_label_as_stardist_does(model_2d, caplog):
    data = _series()
    low, high = np.percentile(data, [1.0, 99.8])  # oracle: numpy over every plane of the run
    ims = MemoryImageSet(data.copy())
    with caplog.at_level("INFO"):
        result = run(_settings(normalize="time series", current_time_point=False), ims)
    assert f"intensity {low:.6g} -> 0, {high:.6g} -> 1 in every unit" in caplog.text
    labels = ims.channel(result.channel)[:, 0]
    for t in range(3):
        expected = model_2d.predict_instances(normalize_mi_ma(data[t, 0, 0], low, high), n_tiles=(1, 1))[0]
        np.testing.assert_array_equal(labels[t], expected)
    # the network sees the fading (per-unit normalisation would undo it: each plane's top near 1)
    from stardist_host.segmentation.engine import resolve_normalisation, unit_reader
    from stardist_host.segmentation.plan import Unit

    units = [Unit(t, 0, 0) for t in range(3)]
    how = resolve_normalisation(Normalisation("time series"), ims, 0, 2, units)
    tops = [float(np.percentile(unit_reader(ims, 0, 2, how)(unit), 99.8)) for unit in units]
    assert tops == pytest.approx([np.percentile(normalize_mi_ma(data[t, 0, 0], low, high), 99.8) for t in range(3)])
    assert tops[2] < 0.3 * tops[0]


def test_time_series_reads_each_unit_once_within_the_memory_bound(monkeypatch):
    monkeypatch.setattr(normalisation, "SERIES_VALUES", 3 * 40 * 40)
    data = _series()
    seen = []

    def read(unit):
        seen.append(unit)
        return data[unit.time_point, 0, unit.first]

    from stardist_host.segmentation.plan import Unit

    units = [Unit(t, 0, 0) for t in range(3)]
    spy = []
    monkeypatch.setattr(normalisation, "_exact", lambda values, p: spy.append(values.size) or (0.0, 1.0))
    normalisation.series_intensities(Normalisation("time series"), read, units)
    assert seen == units and spy and spy[0] <= 3 * 40 * 40


def test_fixed_and_none_label_as_stardist_on_the_image_mapped_by_hand(model_2d):
    image = test_image_nuclei_2d()[:160, :160].astype(np.float32)
    ims = MemoryImageSet(image[None, None, None])
    fixed = run(_settings(normalize="fixed", normalize_min=5.0, normalize_max=200.0), ims)
    expected = model_2d.predict_instances(normalize_mi_ma(image, 5.0, 200.0), n_tiles=(1, 1))[0]
    np.testing.assert_array_equal(ims.channel(fixed.channel)[0, 0], expected)
    scaled = normalize_mi_ma(image, *np.percentile(image, [1, 99.8]))  # already 0..1: "none" keeps it
    ims = MemoryImageSet(scaled[None, None, None])
    none = run(_settings(normalize="none"), ims)
    np.testing.assert_array_equal(ims.channel(none.channel)[0, 0],
                                  model_2d.predict_instances(scaled, n_tiles=(1, 1))[0])
    assert none.total == fixed.total > 10


def test_a_plane_cut_into_four_tiles_gives_the_labels_of_the_whole_plane():
    image = test_image_nuclei_2d()[:256, :256]
    labels = []
    for tiles in ((1, 1), (2, 2)):
        ims = MemoryImageSet(image[None, None, None])
        labels.append(ims.channel(run(_settings(n_tiles=tiles), ims).channel)[0, 0])
    assert labels[0].max() > 20
    np.testing.assert_array_equal(labels[0], labels[1])


def test_time_series_is_the_same_in_process_and_resumed(tmp_path):
    import tifffile

    data = _series()
    tifffile.imwrite(tmp_path / "in.tif", data[:, 0, 0].astype(np.uint16), imagej=True, metadata={"axes": "TYX"})
    settings = _settings(normalize="time series", current_time_point=False)
    ims = MemoryImageSet(data[:, :, :].astype(np.uint16))
    expected = ims.channel(run(settings, ims).channel)[:, 0]
    segment_file(settings, tmp_path / "in.tif", tmp_path / "out.ome.tif", resume=True)
    got = tifffile.imread(tmp_path / "out.ome.tif")
    np.testing.assert_array_equal(got.reshape(expected.shape[0], -1, *expected.shape[1:])[:, -1], expected)


@pytest.mark.parametrize("values, message", [
    (dict(normalize="fixed"), 'NORMALIZE_MIN=None: must be an intensity with NORMALIZE="fixed"'),
    (dict(normalize_max=4000.0), 'NORMALIZE_MAX=4000.0: is used only with NORMALIZE="fixed" (here NORMALIZE="unit")'),
    (dict(normalize="fixed", normalize_min=9.0, normalize_max=2.0), "NORMALIZE_MIN=9.0: must be below NORMALIZE_MAX=2.0"),
    (dict(normalize="per plane"), "NORMALIZE='per plane': must be one of 'unit', 'time series', 'fixed', 'none'"),
])
def test_bad_normalize_settings_are_refused(values, message):
    with pytest.raises(SettingsError) as err:
        _settings(**values)
    assert message in str(err.value)


def test_command_line_options_and_their_mistakes(tmp_path, sample_2d, caplog):
    out = tmp_path / "out.ome.tif"
    assert cli.main(["segment", str(sample_2d), str(out), "--normalize-min", "5"]) == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "--normalize-min 5.0: is used only with --normalize fixed (here --normalize unit)"]
    assert not out.exists()
    assert cli.main(["segment", str(sample_2d), str(out), "--cpu", "--normalize", "time series"]) == 0
    assert out.exists()
