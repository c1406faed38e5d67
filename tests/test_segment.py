"""Segmentation over planes and volumes: range semantics (fake model) and real counts (bundled models)."""

import numpy as np
import pytest
from conftest import FakeModel
from stardist.data import test_image_nuclei_2d as stardist_sample_2d
from stardist.data import test_image_nuclei_3d as stardist_sample_3d
from stardist.matching import matching

from stardist_host import MemoryImageSet, Settings, TiffImageSet
from stardist_host.segmentation.pipeline import auto_n_tiles
from stardist_host.segmentation.plan import make_plan
from stardist_host.segmentation.segment import LabelOverflowError, label_dtype_for, run, segment


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
    plan = make_plan(Settings(current_time_point=False), ims)
    assert label_dtype_for("auto", plan, (64, 64), unique=False) == np.uint16
    assert label_dtype_for("auto", plan, (4096, 4096), unique=False) == np.uint32
    assert label_dtype_for("auto", plan, (1024, 1024), unique=True) == np.uint32  # 2 x 65536 possible
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
