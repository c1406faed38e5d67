"""The batched pipeline gives stardist's own labels; tiling, out-of-memory retries and bounded memory."""

import tracemalloc

import numpy as np
import pytest
import tifffile
from csbdeep.utils import normalize
from stardist.data import test_image_nuclei_2d as stardist_sample_2d
from stardist.data import test_image_nuclei_3d as stardist_sample_3d

from stardist_host import Settings, TiffImageSet
from stardist_host.segmentation import pipeline
from stardist_host.segmentation.plan import make_plan
from stardist_host.segmentation.segment import segment


def _same_partition(a, b) -> bool:
    """Identical label images up to renumbering."""
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def _planes(n, size=128):
    img = normalize(stardist_sample_2d(), 1, 99.8, axis=None).astype(np.float32)
    return [img[(37 * i) % (512 - size):][:size, (53 * i) % (512 - size):][:, :size] for i in range(n)]


def test_batched_2d_labels_equal_stardist(model_2d):
    planes = _planes(6) + [normalize(stardist_sample_2d(), 1, 99.8, axis=None)[:200, :180]]  # two shapes
    got = dict(pipeline.predict_units(model_2d, range(len(planes)), lambda i: planes[i], batch_size=4, budget=2**31))
    assert list(got) == list(range(len(planes)))  # in order
    for i, x in enumerate(planes):
        expected, _ = model_2d.predict_instances(x, show_tile_progress=False)
        assert expected.max() >= 3  # each crop holds nuclei
        assert np.array_equal(got[i], expected) or _same_partition(got[i], expected), f"plane {i}"


def test_tiled_2d_labels_equal_stardist(model_2d):
    x = normalize(stardist_sample_2d(), 1, 99.8, axis=None)
    got = dict(pipeline.predict_units(model_2d, [0], lambda i: x, n_tiles=(2, 2)))[0]
    expected, _ = model_2d.predict_instances(x, n_tiles=(2, 2), show_tile_progress=False)
    assert expected.max() > 100 and np.array_equal(got, expected)
    # a budget too small for the whole plane tiles it automatically, with the same result
    small = dict(pipeline.predict_units(model_2d, [0], lambda i: x, budget=2**28))[0]
    assert _same_partition(small, model_2d.predict_instances(x, n_tiles=pipeline.auto_n_tiles(x.shape, 2**28),
                                                             show_tile_progress=False)[0])


def test_3d_labels_equal_stardist(model_3d):
    x = normalize(stardist_sample_3d(), 1, 99.8, axis=None)
    got = dict(pipeline.predict_units(model_3d, [0, 1], lambda i: x))
    expected, _ = model_3d.predict_instances(x, show_tile_progress=False)
    assert expected.max() > 10
    assert np.array_equal(got[0], expected) and np.array_equal(got[1], expected)


class _OOM(Exception):
    """Stands in for tf.errors.ResourceExhaustedError."""

    def __str__(self):
        return "OOM when allocating tensor with shape[64,32,256,256]"


def test_out_of_memory_in_a_batch_falls_back_to_tiles(model_2d, monkeypatch):
    planes = _planes(3)
    calls = []

    def exhausted(self, batch):
        calls.append(len(batch))
        raise _OOM()

    monkeypatch.setattr(pipeline.BatchedPredictor, "network", exhausted)
    tiles_used = []
    original = type(model_2d).predict_instances

    def spy(self, img, **kwargs):
        tiles_used.append(kwargs.get("n_tiles"))
        return original(self, img, **kwargs)

    monkeypatch.setattr(type(model_2d), "predict_instances", spy)
    got = dict(pipeline.predict_units(model_2d, range(3), lambda i: planes[i], batch_size=4, budget=2**31))
    assert calls[0] == 3 and 1 in calls  # the batch was halved down to single planes
    assert len(got) == 3 and all(got[i].max() > 0 for i in range(3))
    assert tiles_used == [(1, 1)] * 3


def test_out_of_memory_retries_with_more_tiles(model_2d, monkeypatch):
    x = _planes(1, size=256)[0]
    tried = []
    original = type(model_2d).predict_instances

    def flaky(self, img, **kwargs):
        tried.append(kwargs["n_tiles"])
        if len(tried) == 1:
            raise _OOM()
        return original(self, img, **kwargs)

    monkeypatch.setattr(type(model_2d), "predict_instances", flaky)
    got = dict(pipeline.predict_units(model_2d, [0], lambda i: x, n_tiles=(1, 2)))[0]
    assert tried == [(1, 2), (2, 2)] and got.max() > 0


def _traced_peak(path, model):
    with TiffImageSet(path) as ims:
        tracemalloc.start()
        segment(ims, model, make_plan(Settings(current_time_point=False), ims), output_name="labels")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_memory_does_not_grow_with_the_number_of_planes(tmp_path, model_2d):
    plane = (stardist_sample_2d()[:64, :64]).astype(np.uint16)
    for n in (64, 1024):
        tifffile.imwrite(tmp_path / f"{n}.tif", np.stack([np.roll(plane, i, 1) for i in range(n)]),
                         photometric="minisblack", metadata={"axes": "TYX"})
    small, large = _traced_peak(tmp_path / "64.tif", model_2d), _traced_peak(tmp_path / "1024.tif", model_2d)
    # bounded queues: the peak depends on how many planes are in flight (thread timing), not on
    # the stack; 16 times the planes stay well under twice the memory (growth would give ~16x)
    assert large < 2 * small, (small, large)
    assert large < 1024 * plane.nbytes * 2 / 2  # under half the stack as float32 (the stack would be all of it)


@pytest.mark.parametrize(
    "line, file, content, expected",
    [
        ("0::/job.slice/task", "job.slice/task/memory.max", "2147483648\n", 2**31),  # cgroup v2
        ("0::/", "memory.max", "max\n", None),  # v2, unlimited
        ("7:memory:/docker/abc", "memory/docker/abc/memory.limit_in_bytes", "1073741824\n", 2**30),  # v1
        ("7:memory:/", "memory/memory.limit_in_bytes", "9223372036854771712\n", None),  # v1, unlimited
    ],
)
def test_cgroup_memory_limit(tmp_path, line, file, content, expected):
    proc = tmp_path / "cgroup"
    proc.write_text(f"12:pids:/x\n{line}\n")
    (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / file).write_text(content)
    assert pipeline._cgroup_limit(str(proc), str(tmp_path)) == expected
