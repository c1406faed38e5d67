"""The batched pipeline gives stardist's own labels; tiling, big units, out-of-memory retries and bounded memory."""

import inspect

import numpy as np
import pytest
from csbdeep.utils import normalize
from stardist.big import BlockND
from stardist.data import test_image_nuclei_2d as stardist_sample_2d
from stardist.data import test_image_nuclei_3d as stardist_sample_3d
from stardist.matching import matching

from stardist_host.segmentation import device, pipeline, stardist_compat
from stardist_host.segmentation.pipeline import BlockPlan, plan_blocks


def _assert_same_objects(got, expected, *, iou=0.95):
    """Same number of objects, each matched at IoU >= ``iou``: batched float32 differs from stardist's
    ``predict`` only in the last bits, which can move a boundary pixel, never an object."""
    assert got.shape == expected.shape
    m = matching(expected, got, thresh=iou)
    assert m.n_true == m.n_pred == m.tp, (m.n_true, m.n_pred, m.tp)


def _planes(n, size=128):
    img = normalize(stardist_sample_2d(), 1, 99.8, axis=None).astype(np.float32)
    return [img[(37 * i) % (512 - size):][:size, (53 * i) % (512 - size):][:, :size] for i in range(n)]


def test_private_api_is_what_the_wrappers_expect(model_2d):
    assert stardist_compat.check_private_api() == []
    x, resizer = stardist_compat.pad_for_network(model_2d, np.zeros((50, 70), np.float32))
    assert x.shape == (64, 80, 1) and hasattr(resizer, "filter_points")  # padded to multiples of 16


def test_private_api_check_names_what_changed(monkeypatch):
    from stardist import nms

    def renamed(prob, threshold, b=2):
        return prob > threshold

    monkeypatch.setattr(nms, "_ind_prob_thresh", renamed)
    assert stardist_compat.check_private_api() == [
        "stardist.nms._ind_prob_thresh takes ('prob', 'threshold', 'b'), expected ('prob', 'prob_thresh', 'b')"]
    monkeypatch.delattr(nms, "_ind_prob_thresh")
    assert stardist_compat.check_private_api() == ["stardist.nms._ind_prob_thresh is missing"]


def test_batched_2d_labels_match_stardist(model_2d):
    planes = _planes(6) + [normalize(stardist_sample_2d(), 1, 99.8, axis=None)[:200, :180]]  # two shapes
    got = list(pipeline.predict_units(model_2d, range(len(planes)), lambda i: planes[i], batch_size=4, budget=2**31))
    assert [unit for unit, _ in got] == list(range(len(planes)))  # in order
    for i, x in enumerate(planes):
        expected, _ = model_2d.predict_instances(x, show_tile_progress=False)
        assert expected.max() >= 3  # each crop holds nuclei
        _assert_same_objects(got[i][1], expected)


def test_tiled_2d_labels_match_untiled_stardist(model_2d):
    x = normalize(stardist_sample_2d(), 1, 99.8, axis=None)
    whole, _ = model_2d.predict_instances(x, show_tile_progress=False)  # one piece: the reference
    assert whole.max() > 100
    got = dict(pipeline.predict_units(model_2d, [0], lambda i: x, n_tiles=(2, 2)))[0]
    _assert_same_objects(got, whole, iou=0.9)


def test_small_budget_tiles_as_stardist_would(model_2d, monkeypatch):
    x = normalize(stardist_sample_2d(), 1, 99.8, axis=None)
    tiles = []
    original = type(model_2d).predict_instances

    def spy(self, img, **kwargs):
        tiles.append(kwargs["n_tiles"])
        return original(self, img, **kwargs)

    monkeypatch.setattr(type(model_2d), "predict_instances", spy)
    got = dict(pipeline.predict_units(model_2d, [0], lambda i: x, budget=2**28))[0]
    # 2**28 bytes / 1200 per pixel = 223696 pixels per tile: 512 x 512 splits once along Y
    assert tiles == [(2, 1)]
    expected, _ = original(model_2d, x, n_tiles=(2, 1), show_tile_progress=False)
    assert np.array_equal(got, expected)


def test_3d_labels_match_stardist(model_3d):
    x = normalize(stardist_sample_3d(), 1, 99.8, axis=None)
    got = dict(pipeline.predict_units(model_3d, [0, 1], lambda i: x))
    expected, _ = model_3d.predict_instances(x, show_tile_progress=False)
    assert expected.max() > 10
    _assert_same_objects(got[0], expected)
    _assert_same_objects(got[1], expected)


def test_none_from_read_is_no_signal_and_skips_the_model(model_2d, monkeypatch):
    planes = _planes(3)
    seen = []
    original = pipeline.BatchedPredictor.network
    monkeypatch.setattr(pipeline.BatchedPredictor, "network", lambda self, b: seen.append(len(b)) or original(self, b))
    got = list(pipeline.predict_units(model_2d, range(3), lambda i: None if i == 1 else planes[i], batch_size=4))
    assert [u for u, _ in got] == [0, 1, 2] and got[1][1] is None and got[0][1].max() > 0
    assert seen == [2]


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
    assert calls == [3, 1, 2, 1, 1]  # the batch was halved down to single planes
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


@pytest.mark.parametrize("ndim", [2, 3])
def test_units_in_flight_are_bounded_in_bytes(request, ndim):
    model = request.getfixturevalue(f"model_{ndim}d")
    shape = (64, 64) if ndim == 2 else (8, 48, 48)
    image = np.random.default_rng(0).random(shape, np.float32)
    per_unit = pipeline.UnitPredictor(model).unit_bytes(image)
    state = {"read": 0, "handed": 0, "most": 0}

    def read(unit):
        state["read"] += 1
        state["most"] = max(state["most"], state["read"] - state["handed"])
        return image

    memory = 3 * per_unit + 1
    for _ in pipeline.predict_units(model, range(12), read, memory=memory, batch_size=2):
        state["handed"] += 1
    assert state["handed"] == 12
    assert state["most"] == 3  # three fit the budget; the fourth is read once the first is handed back
    state.update(read=0, handed=0, most=0)
    for _ in pipeline.predict_units(model, range(12), read, memory=per_unit // 2, batch_size=2):
        state["handed"] += 1
    assert state["most"] == 1  # a budget below one unit: one at a time, never none


def test_a_failing_read_stops_the_threads(model_2d):
    import threading

    planes = _planes(4)

    def read(i):
        if i == 3:
            raise OSError("plane 3 unreadable")
        return planes[i]

    with pytest.raises(OSError, match="plane 3 unreadable"):
        list(pipeline.predict_units(model_2d, range(4), read, batch_size=2))
    assert not [t for t in threading.enumerate() if t.name.startswith("stardist-host")]


# --- big units: block plans stardist accepts -------------------------------------------------


def _assert_stardist_accepts(shape, plan: BlockPlan, grid):
    """stardist's own cover: it asserts its conditions on every axis; the blocks must cover the shape."""
    axes = "ZYX"[-len(shape):]
    for s, b, o, c, g in zip(shape, plan.block_size, plan.min_overlap, plan.context, grid):
        assert 0 <= o + 2 * c < b <= s and b % g == o % g == c % g == 0
    blocks = BlockND.cover(shape, axes, plan.block_size, plan.min_overlap, plan.context, grid)
    covered = np.zeros(shape, bool)
    for block in blocks:
        covered[block.slice_write(axes)] = True  # the write regions tile the image
    assert covered.all()


def test_100_plane_volume_plans_valid_blocks():
    shape, grid = (100, 1024, 1024), (4, 8, 8)  # 3D_demo's block grid
    plan = plan_blocks(shape, grid, block=(256, 256, 256), min_overlap=(96,) * 3, context=(26, 46, 46))
    # Z thin: one block, no overlap; YX at least 3 * 96 + 2 * 48 + 8
    assert plan == BlockPlan((100, 392, 392), (0, 96, 96), (0, 48, 48))
    _assert_stardist_accepts(shape, plan, grid)
    # the old fixed plan (512, overlap 96, context 64) failed stardist's assertion on Z
    with pytest.raises(AssertionError):
        BlockND.cover(shape, "ZYX", (100, 512, 512), (96,) * 3, (64,) * 3, grid)


@pytest.mark.parametrize("size, expected", [
    (495, (480, 464, 0)),  # not a grid multiple, too thin: the largest multiple, twice, no context
    (496, (496, 0, 0)),  # 3 overlap + 2 context + grid == size: one block, the whole axis
    (497, (496, 96, 96)),  # one more pixel: blocks of 496 with the asked overlap and context
    (2000, (496, 96, 96)),
    (16, (16, 0, 0)),
    (33, (32, 16, 0)),  # two blocks of 32 at 0 and 1
])
def test_block_plan_at_the_limit(size, expected):
    plan = plan_blocks((size,), (16,), block=(256,), min_overlap=(96,), context=(94,))
    assert (plan.block_size[0], plan.min_overlap[0], plan.context[0]) == expected
    _assert_stardist_accepts((size,), plan, (16,))


def test_block_plan_none_where_an_axis_is_shorter_than_two_grid_steps():
    assert plan_blocks((10, 4096), (16, 16), block=(256, 256), min_overlap=(96, 96), context=(94, 94)) is None
    assert plan_blocks((31,), (16,), block=(256,), min_overlap=(96,), context=(94,)) is None


def test_big_plane_goes_through_predict_instances_big(model_2d, monkeypatch):
    x = normalize(stardist_sample_2d(), 1, 99.8, axis=None)
    whole, _ = model_2d.predict_instances(x, show_tile_progress=False)
    monkeypatch.setattr(pipeline, "BIG_PIXELS", 256 * 256)
    monkeypatch.setattr(pipeline, "BIG_BLOCK", {2: 320, 3: 64})
    calls = []
    original = type(model_2d).predict_instances_big

    def spy(self, img, **kwargs):
        calls.append({k: kwargs[k] for k in ("block_size", "min_overlap", "context", "scale")})
        return original(self, img, **kwargs)

    monkeypatch.setattr(type(model_2d), "predict_instances_big", spy)
    got = dict(pipeline.predict_units(model_2d, [0], lambda i: x))[0]
    assert calls == [{"block_size": (496, 496), "min_overlap": (96, 96), "context": (96, 96), "scale": None}]
    m = matching(whole, got, thresh=0.5)  # blocks see less context than the whole plane at their edges
    assert got.shape == x.shape and m.f1 >= 0.97, m


def test_big_volume_keeps_the_anisotropy_scale(model_3d, monkeypatch):
    x = normalize(stardist_sample_3d()[8:20, :56, :56], 1, 99.8, axis=None)
    monkeypatch.setattr(pipeline, "BIG_PIXELS", 1000)
    calls = []
    original = type(model_3d).predict_instances_big

    def spy(self, img, **kwargs):
        calls.append({k: kwargs[k] for k in ("block_size", "min_overlap", "context", "scale")})
        return original(self, img, **kwargs)

    monkeypatch.setattr(type(model_3d), "predict_instances_big", spy)
    got = dict(pipeline.predict_units(model_3d, [0], lambda i: x, scale=(2.0, 1.0, 1.0)))[0]
    # every axis thinner than 3 overlaps + 2 contexts: one whole block each, the scale passed on
    assert calls == [{"block_size": (12, 56, 56), "min_overlap": (0, 0, 0), "context": (0, 0, 0),
                      "scale": (2.0, 1.0, 1.0)}]
    assert got.shape == x.shape and got.max() > 0


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
    assert device._cgroup_limit(str(proc), str(tmp_path)) == expected


def test_memory_budgets_follow_available_memory(monkeypatch):
    import psutil

    monkeypatch.delenv("STARDIST_HOST_MEMORY", raising=False)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("VM", (), {"available": 8 * 2**30})())
    monkeypatch.setattr(device, "_cgroup_limit", lambda: None)
    assert device.host_memory_budget() == 2 * 2**30
    monkeypatch.setattr(device, "_cgroup_limit", lambda: 2**30)  # a container allows less
    assert device.host_memory_budget() == 2**28
    monkeypatch.setenv("STARDIST_HOST_MEMORY", "5e8")
    assert device.host_memory_budget() == device.memory_budget() == 500_000_000
    for bad in ("lots", "inf", "-1"):
        monkeypatch.setenv("STARDIST_HOST_MEMORY", bad)
        with pytest.raises(ValueError, match=rf"STARDIST_HOST_MEMORY='{bad}': must be a positive number of bytes"):
            device.memory_budget()


def test_no_code_outside_the_compat_module_uses_private_stardist_names():
    for module in (pipeline, device):
        source = inspect.getsource(module)
        for (_, path), _ in stardist_compat.PRIVATE_API.items():
            assert path.rsplit(".", 1)[-1] not in source, (module.__name__, path)
