"""Segmentation over planes and volumes: range semantics (fake model) and real counts (bundled models)."""

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from conftest import FakeModel, OwnThreadImageSet, blobs_tczyx, sample_planes_tczyx
from csbdeep.utils import normalize
from stardist.data import test_image_nuclei_2d as stardist_sample_2d
from stardist.data import test_image_nuclei_3d as stardist_sample_3d
from stardist.matching import matching

from stardist_host import MemoryImageSet, Settings, TiffImageSet
from stardist_host.segmentation.pipeline import auto_n_tiles
from stardist_host.segmentation.plan import make_plan
from stardist_host.errors import Cancelled
from stardist_host.runs.local import run
from stardist_host.segmentation.engine import Normalisation, label_dtype_for, normalise
from stardist_host.segmentation.segment import LabelOverflowError, percent_progress, segment


def _segment(imageset, settings, model=None, **kwargs):
    """Segment with a stand-in model, through the plain per-unit path (it has no Keras network to batch)."""
    model = model or FakeModel(settings.ndim)
    return segment(imageset, model, make_plan(settings, imageset), output_name="labels", pipeline=False, **kwargs), model


def test_2d_selected_planes_only_others_stay_zero(memory_imageset):
    result, model = _segment(memory_imageset, Settings(current_time_point=True, first_plane=1, last_plane=2))
    out = memory_imageset.channel(result.channel)
    assert out.dtype == np.uint16
    assert [u.count for u in result.units] == [3, 3] and result.total == 6
    assert out[1, 1].max() == 3 and out[1, 2].max() == 3  # labels 1..3 per plane
    assert not out[1, 0].any() and not out[1, 3].any()  # planes outside the range
    assert not out[0].any() and not out[2].any()  # other time points
    assert len(model.calls) == 2 and model.calls[0]["shape"] == (32, 32)


def test_2d_all_time_points_and_unique_labels(memory_imageset):
    result, _ = _segment(memory_imageset, Settings(current_time_point=False), unique_labels=True)
    out = memory_imageset.channel(result.channel)
    assert result.total == 3 * 4 * 3
    assert len(np.unique(out)) == 3 * 4 * 3 + 1  # every object its own label
    assert out[2, 3].max() == 36


def test_3d_one_volume_per_time_point(memory_imageset):
    result, model = _segment(memory_imageset, Settings(ndim=3, current_time_point=False, first_plane=1, last_plane=3))
    out = memory_imageset.channel(result.channel)
    assert [c["shape"] for c in model.calls] == [(3, 32, 32)] * 3
    assert [u.count for u in result.units] == [3, 3, 3]  # squares span the volume: one object each
    assert not out[:, 0].any() and out[:, 1:].max() == 3


def test_progress_is_called_per_plane(memory_imageset):
    seen = []
    _segment(memory_imageset, Settings(current_time_point=False, first_plane=0, last_plane=1),
             progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 6) for i in range(1, 7)]


def test_label_overflow_is_an_error_not_a_wrap(memory_imageset):
    class Many(FakeModel):
        def predict_instances(self, x, **kwargs):
            return np.full(x.shape, 70000, np.int32), {}

    with pytest.raises(LabelOverflowError, match=r"label 70000 does not fit the label channel's type uint16 .*LABEL_DTYPE='uint32'"):
        _segment(memory_imageset, Settings(), model=Many(), label_dtype="uint16")


def test_label_dtype_auto():
    ims = MemoryImageSet(np.zeros((2, 1, 1, 64, 64), np.uint8))
    plan = make_plan(Settings(current_time_point=False), ims)  # two planes
    assert label_dtype_for("auto", plan, (64, 64), unique=False) == np.uint16
    assert label_dtype_for("auto", plan, (1024, 1024), unique=False) == np.uint16  # 41943 nuclei of 5 x 5 px
    assert label_dtype_for("auto", plan, (2048, 2048), unique=False) == np.uint32  # 167772
    # unique labels: 2 planes x 32767 (175 x 4681 px / 25) fit uint16; 2 x 32768 (800 x 1024 / 25) do not
    assert label_dtype_for("auto", plan, (175, 4681), unique=True) == np.uint16
    assert label_dtype_for("auto", plan, (800, 1024), unique=True) == np.uint32
    assert label_dtype_for("auto", plan, (800, 1024), unique=False) == np.uint16  # the uint32 came from unique
    assert label_dtype_for("uint32", plan, (8, 8), unique=False) == np.uint32


def test_auto_n_tiles_follows_the_memory_budget():
    assert auto_n_tiles((512, 512), budget=2**30) == (1, 1)
    # 1200 bytes per pixel: 2**30 bytes hold 894784 pixels; 8192 x 4096 halves to 512 x 1024 tiles
    assert auto_n_tiles((8192, 4096), budget=2**30) == (16, 4)
    assert auto_n_tiles((2048, 2048), budget=2**30) == (4, 2)
    assert auto_n_tiles((2048, 2048), budget=2**28) == (8, 4)  # less memory, more tiles
    assert auto_n_tiles((64, 1024, 1024), budget=2**32) == (1, 8, 8)  # 2400 bytes per voxel: 64 x 128 x 128


def _truth_2d_t0():
    """Ground truth for time point 0 of the bundled 2D sample (see data/make_samples.py)."""
    return stardist_sample_2d(return_mask=True)[1][128:384, 240:496]


def test_2d_bundled_sample_finds_the_nuclei(sample_2d, model_2d):
    with TiffImageSet(sample_2d) as ims:
        plan = make_plan(Settings(current_time_point=True), ims)
        result = segment(ims, model_2d, plan, output_name="Stardist_DAPI")
        labels = ims.get_channeldata(result.channel, 0, 0)
    truth = _truth_2d_t0()
    n_true = len(np.unique(truth)) - 1
    assert abs(result.total - n_true) <= 0.15 * n_true
    assert matching(truth, labels, thresh=0.5).f1 >= 0.8


def test_3d_bundled_sample_finds_the_nuclei(sample_3d, model_3d):
    with TiffImageSet(sample_3d) as ims:
        result = run(Settings(ndim=3, model_name="3D_demo", use_gpu=False), ims)
        labels = np.stack([ims.get_channeldata(result.channel, z, 0) for z in range(ims.plane_count)])
    truth = stardist_sample_3d(return_mask=True)[1]
    n_true = len(np.unique(truth)) - 1  # 51
    assert abs(result.total - n_true) <= 0.25 * n_true
    assert matching(truth, labels, thresh=0.5).f1 >= 0.6


def test_3d_plane_range_leaves_outside_planes_zero(sample_3d, model_3d):
    with TiffImageSet(sample_3d) as ims:
        plan = make_plan(Settings(ndim=3, first_plane=5, last_plane=25), ims)
        result = segment(ims, model_3d, plan, output_name="labels")
        outside = [ims.get_channeldata(result.channel, z, 0).max() for z in (*range(5), *range(26, 31))]
        inside = max(ims.get_channeldata(result.channel, z, 0).max() for z in range(5, 26))
    assert outside == [0] * 10 and inside > 0 and result.total > 10


# --- the production path (pipeline=True) with the bundled 2D_demo model -----------------------


def _expected_planes(data, model, planes):
    """stardist's own predict_instances on each (t, z) plane: the oracle."""
    return {(t, z): model.predict_instances(normalize(data[t, 0, z], 1, 99.8, axis=None),
                                            show_tile_progress=False)[0] for t, z in planes}


def test_production_path_plane_range_time_points_unique_labels_and_progress(model_2d):
    data = sample_planes_tczyx(t=2, z=4)
    ims = MemoryImageSet(data.copy(), current_time_point=1)
    seen = []
    plan = make_plan(Settings(current_time_point=False, first_plane=1, last_plane=2), ims)
    result = segment(ims, model_2d, plan, output_name="labels", unique_labels=True,
                     progress=lambda done, total: seen.append((done, total)))
    out = ims.channel(result.channel)
    assert seen == [(i, 4) for i in range(1, 5)]
    assert not out[:, 0].any() and not out[:, 3].any()  # planes outside the range
    inside = [(t, z) for t in (0, 1) for z in (1, 2)]
    expected = _expected_planes(data, model_2d, inside)
    ids = [set(np.unique(out[t, z])) - {0} for t, z in inside]
    for (t, z), got in zip(inside, ids):
        assert len(got) == len(np.unique(expected[t, z])) - 1 > 0
    assert sum(len(i) for i in ids) == len(set().union(*ids)) == result.total  # no label in two planes
    assert max(max(i) for i in ids) == result.total  # consecutive across the output
    m = matching(expected[1, 2], out[1, 2], thresh=0.95)
    assert m.n_true == m.n_pred == m.tp


def test_production_path_current_time_point_only(model_2d):
    data = sample_planes_tczyx(t=3, z=2)
    ims = MemoryImageSet(data.copy(), current_time_point=2)
    result = segment(ims, model_2d, make_plan(Settings(), ims), output_name="labels")
    out = ims.channel(result.channel)
    assert [u.unit.time_point for u in result.units] == [2, 2]
    assert not out[:2].any() and out[2, 0].max() > 0 and out[2, 1].max() > 0


@pytest.mark.parametrize("ndim", [2, 3])
def test_image_set_is_used_only_from_the_calling_thread(request, ndim):
    model = request.getfixturevalue(f"model_{ndim}d")
    data = sample_planes_tczyx(t=2, z=4) if ndim == 2 else np.stack(
        [stardist_sample_3d()[None, 8:16, :56, :56]] * 2).astype(np.uint16)
    ims = OwnThreadImageSet(data.copy())
    result = segment(ims, model, make_plan(Settings(ndim=ndim, current_time_point=False), ims), output_name="labels")
    assert result.total > 0 and len(result.units) == (8 if ndim == 2 else 2)
    with pytest.raises(RuntimeError, match="used from thread"):  # the check itself works
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(lambda: ims.channel_count).result()


class _NoRemove:
    """An image set without remove_channel (it is optional in the contract)."""

    def __init__(self, ims):
        self._ims = ims

    def __getattr__(self, name):
        if name == "remove_channel":
            raise AttributeError(name)
        return getattr(self._ims, name)


def test_cancel_at_the_fifth_plane_leaves_the_original_channels(model_2d):
    data = sample_planes_tczyx(t=2, z=4)
    ims = MemoryImageSet(data.copy(), channel_names=["DAPI"])
    seen = []
    with pytest.raises(Cancelled, match="stopped on request"):
        segment(ims, model_2d, make_plan(Settings(current_time_point=False), ims), output_name="labels",
                progress=lambda done, total: seen.append(done), cancel=lambda: len(seen) >= 4)
    assert seen == [1, 2, 3, 4]
    assert ims.channel_names == ["DAPI"] and np.array_equal(ims.channel(0), data[:, 0])


def test_read_failing_at_the_fifth_plane_leaves_the_original_channels(model_2d):
    data = sample_planes_tczyx(t=2, z=4)
    ims = MemoryImageSet(data.copy(), channel_names=["DAPI"])
    reads = []
    original = ims.get_channeldata

    def failing(channel, plane, time_point):
        reads.append(plane)
        if len(reads) == 5:
            raise OSError("plane 0 of time point 1 is unreadable")
        return original(channel, plane, time_point)

    ims.get_channeldata = failing
    with pytest.raises(OSError, match="unreadable"):
        segment(ims, model_2d, make_plan(Settings(current_time_point=False), ims), output_name="labels")
    assert ims.channel_names == ["DAPI"] and np.array_equal(ims.channel(0), data[:, 0])


def test_without_remove_channel_the_channel_is_zeroed_and_named(model_2d):
    ims = MemoryImageSet(sample_planes_tczyx(t=2, z=4), channel_names=["DAPI"])
    seen = []
    with pytest.raises(Cancelled, match=r"channel 1 'labels' is incomplete and was left empty"):
        segment(_NoRemove(ims), model_2d, make_plan(Settings(current_time_point=False), ims), output_name="labels",
                progress=lambda done, total: seen.append(done), cancel=lambda: len(seen) >= 4)
    assert ims.channel_count == 2 and not ims.channel(1).any()


def test_label_overflow_removes_the_channel(memory_imageset):
    class Many(FakeModel):
        def predict_instances(self, x, **kwargs):
            return np.full(x.shape, 70000, np.int32), {}

    with pytest.raises(LabelOverflowError):
        _segment(memory_imageset, Settings(), model=Many(), label_dtype="uint16")
    assert memory_imageset.channel_names == ["DAPI", "Other"]


def test_unique_label_offsets_do_not_wrap(memory_imageset):
    from stardist_host.segmentation.engine import number as _number
    from stardist_host.segmentation.plan import Unit

    labels = np.array([[0, 100]], np.int32)  # stardist's type; an offset past 2**31 does not fit it
    got, count, top = _number(labels, Unit(0, 0, 0), offset=2**31 + 10, unique=True, dtype=np.dtype(np.uint32))
    assert got.tolist() == [[0, 2**31 + 110]] and count == 1 and top == 2**31 + 110


def test_nan_pixels_normalised_over_finite_ones_and_set_to_zero(caplog):
    from stardist_host.segmentation.plan import Unit

    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    image[3, 4] = np.nan
    image[7, 1] = np.inf
    with caplog.at_level("WARNING"):
        got = normalise(image, Normalisation(percentiles=(0.0, 100.0)), unit=Unit(2, 5, 5))
    assert "time point 2, plane 5: 2 NaN or Inf pixel(s), the first at (3, 4) (y, x)" in caplog.text
    assert got[3, 4] == 0 and got[7, 1] == 0 and np.isfinite(got).all()
    assert got[0, 0] == 0 and got[9, 9] == pytest.approx(1)  # min and max of the finite pixels


@given(dtype=st.sampled_from(["uint8", "uint16", "int16", "uint32", "float32", "float64"]),
       shape=st.sampled_from([(17, 23), (64, 64), (3, 19, 11)]), seed=st.integers(0, 2**16),
       low=st.floats(0, 20), high=st.floats(80, 100))
@example(dtype="float32", shape=(17, 23), seed=62953, low=19.0, high=80.0)  # percentiles of float32 in float32
@hypothesis_settings(max_examples=60, deadline=None)
def test_normalise_equals_csbdeeps_normalize_bit_for_bit(dtype, shape, seed, low, high):
    rng = np.random.default_rng(seed)
    top = 1000 if np.dtype(dtype).kind in "iu" else 1.0
    image = (rng.random(shape) * top).astype(dtype)
    image.flat[0] = 0  # a spread that is signal for every type
    before = image.copy()
    got = normalise(image, Normalisation(percentiles=(low, high)))
    assert got.dtype == np.float32 and got.tobytes() == normalize(image, low, high, axis=None).tobytes()
    assert np.array_equal(image, before)  # the scratch copy, not the image, was partitioned


def test_no_signal_planes_give_no_nuclei_without_the_model(caplog):
    data = blobs_tczyx(t=1, c=2, z=3)
    data[0, 0, 1] = 500  # constant
    data[0, 0, 2] = 500 + (np.indices((32, 32)).sum(0) % 7).astype(np.uint16)  # spread 6: below 1e-4 of uint16
    ims = MemoryImageSet(data)
    with caplog.at_level("INFO"):
        result, model = _segment(ims, Settings())
    assert [u.count for u in result.units] == [3, 0, 0]
    assert len(model.calls) == 1 and "plane 1: no signal (min 500, max 500)" in caplog.text
    data[0, 0, 2, 0, 0] = 507  # a spread of 7 counts is signal
    assert normalise(data[0, 0, 2], Normalisation()) is not None
    assert normalise(np.full((4, 4), 0.25, np.float32), Normalisation()) is None  # float: constant only


def test_percent_progress_reports_each_percent_once():
    got = []
    progress = percent_progress(got.append)
    for done in range(0, 8):
        progress(done, 7)
    assert got == [0, 14, 28, 42, 57, 71, 85, 100]
    progress(7, 7)
    assert got[-1] == 100 and len(got) == 8


def test_3d_anisotropy_rescales_z_and_keeps_the_image_shape(model_3d, monkeypatch):
    vol = stardist_sample_3d()[None, None, 8:20, :56, :56].astype(np.uint16)
    ims = MemoryImageSet(vol, voxel_size=(4.0, 1.0, 1.0))  # Z twice the model's anisotropy (2, 1, 1)
    scales = []
    original = type(model_3d).predict_instances

    def spy(self, img, **kwargs):
        scales.append(kwargs.get("scale"))
        labels = original(self, img, **kwargs)
        assert labels[0].shape == img.shape
        return labels

    monkeypatch.setattr(type(model_3d), "predict_instances", spy)
    result = segment(ims, model_3d, make_plan(Settings(ndim=3), ims), output_name="labels")
    assert scales == [(2.0, 1.0, 1.0)]
    assert ims.channel(result.channel).shape == (1, 12, 56, 56) and result.total > 0
    scales.clear()
    unknown_z = MemoryImageSet(vol.copy(), voxel_size=(4.0, 1.0, 1.0))
    unknown_z.voxel_size = (None, 1.0, 1.0)
    segment(unknown_z, model_3d, make_plan(Settings(ndim=3), unknown_z), output_name="labels")
    assert scales == []  # no rescale: the batched path, not predict_instances with a scale
