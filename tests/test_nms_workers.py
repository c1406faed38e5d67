"""NMS in worker processes: the model-free stand-in gives stardist's labels, workers never import TensorFlow,
shared memory and processes are released on success, error and cancel; worker counts and the switch rule."""

import sys
import time

import numpy as np
import psutil
import pytest
from csbdeep.utils import normalize
from stardist.data import test_image_nuclei_2d as stardist_sample_2d
from stardist.data import test_image_nuclei_3d as stardist_sample_3d

from stardist_host.errors import Cancelled, SettingsError
from stardist_host.segmentation import nms_workers, pipeline
from stardist_host.segmentation import stardist_compat as compat


def _sample(ndim):
    x = stardist_sample_2d()[:256, :200] if ndim == 2 else stardist_sample_3d()
    return normalize(x, 1, 99.8, axis=None).astype(np.float32)


def _network_output(model, image):
    predictor = pipeline.BatchedPredictor(model)
    prepared = predictor.prepare(0, image)
    (prob, dist), = predictor.network([prepared])
    return predictor, prepared, prob, dist


@pytest.fixture(scope="module")
def pools():
    made = {}

    def get(model):
        ndim = model.config.n_dim
        if ndim not in made:
            made[ndim] = nms_workers.NmsPool(compat.nms_config(model), workers=2)
        return made[ndim]

    yield get
    for pool in made.values():
        pool.close()


def _children():
    """Live child processes (the module's pools and multiprocessing's resource tracker among them)."""
    return {c.pid for c in psutil.Process().children(recursive=True) if c.is_running()
            and c.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(c.cmdline())}


@pytest.mark.parametrize("ndim", [2, 3])
def test_stand_in_gives_the_models_own_labels(request, ndim):
    model = request.getfixturevalue(f"model_{ndim}d")
    image = _sample(ndim)
    predictor, prepared, prob, dist = _network_output(model, image)
    points, probs, dists = compat.candidates(model, prepared.x, prepared.resizer, prob, dist, predictor.prob_thresh)
    expected = compat.instances(model, image.shape, points, probs, dists, prob_thresh=predictor.prob_thresh,
                                nms_thresh=predictor.nms_thresh)  # the model's _instances_from_prediction
    assert expected.max() > 10
    got = compat.instances_from_config(compat.nms_config(model), image.shape, points, probs, dists,
                                       nms_thresh=predictor.nms_thresh)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)


@pytest.mark.parametrize("ndim", [2, 3])
def test_worker_labels_equal_the_in_process_ones(request, pools, ndim):
    model = request.getfixturevalue(f"model_{ndim}d")
    image = _sample(ndim)
    predictor, prepared, prob, dist = _network_output(model, image)
    expected = predictor.instances(prepared, prob, dist)
    pool = pools(model)
    got = predictor.submit_to(pool, prepared, prob, dist).result()
    assert expected.max() > 10 and np.array_equal(got, expected)
    assert pool.blocks_held == 0  # the shared memory block was released with the result


def test_workers_never_import_tensorflow(model_2d, pools):
    pool = pools(model_2d)
    image = _sample(2)
    predictor, prepared, prob, dist = _network_output(model_2d, image)
    assert predictor.submit_to(pool, prepared, prob, dist).result().max() > 0
    assert "tensorflow" in sys.modules  # here it is: the check below means something
    for _ in range(pool.workers):
        assert pool.imported(("tensorflow", "keras", "csbdeep.models", "stardist.models")) == []
    assert pool.imported(("stardist.nms",)) == ["stardist.nms"]


def test_workers_get_their_share_of_the_cores_and_sleeping_openmp_threads(model_2d, monkeypatch):
    import os

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with nms_workers.NmsPool(compat.nms_config(model_2d), workers=1, threads=3) as pool:
        assert pool.call(os.getenv, "OMP_NUM_THREADS") == "3"
        assert pool.call(os.getenv, "OMP_WAIT_POLICY") == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice is kept
    with nms_workers.NmsPool(compat.nms_config(model_2d), workers=1, threads=1) as pool:
        assert pool.call(os.getenv, "OMP_WAIT_POLICY") == "ACTIVE"
        assert pool.call(os.getenv, "OMP_NUM_THREADS") == "1"


def test_pipeline_with_worker_processes_gives_the_thread_labels(model_2d, model_3d):
    before = _children()
    planes = [_sample(2)[i * 40:i * 40 + 128, :128] for i in range(4)]
    threads = dict(pipeline.predict_units(model_2d, range(4), lambda i: planes[i], nms_processes=False))
    with pipeline.UnitPredictor(model_2d, nms_workers=2, nms_processes=True, batch_size=2) as predictor:
        procs = dict(predictor.predict(range(4), lambda i: planes[i]))
        assert predictor.pool is not None and predictor.pool.workers == 2
    for i in range(4):
        assert threads[i].max() >= 3 and np.array_equal(procs[i], threads[i])
    volume = _sample(3)
    threads = dict(pipeline.predict_units(model_3d, [0], lambda i: volume, nms_processes=False))
    procs = dict(pipeline.predict_units(model_3d, [0], lambda i: volume, nms_workers=2, nms_processes=True))
    assert np.array_equal(procs[0], threads[0])
    assert _children() <= before  # the workers ended


def test_a_failing_read_stops_workers_and_releases_shared_memory(model_2d):
    before = _children()
    planes = [_sample(2)[:128, :128]] * 6
    seen = {}

    def read(i):
        if i == 5:
            seen["blocks"] = predictor.pool.blocks_held
            raise OSError("plane 5 unreadable")
        return planes[i]

    predictor = pipeline.UnitPredictor(model_2d, nms_workers=2, nms_processes=True, batch_size=1)
    with predictor, pytest.raises(OSError, match="plane 5 unreadable"):
        list(predictor.predict(range(6), read))
    assert predictor.pool.blocks_held == 0
    assert _children() <= before  # the workers ended


def test_a_dying_worker_process_costs_no_unit(model_3d, caplog):
    volume = _sample(3)
    expected = dict(pipeline.predict_units(model_3d, [0], lambda i: volume, nms_processes=False))[0]

    def read(i):
        if i == 1:  # volume 0's NMS (about a second) is running in a worker now: kill the workers
            time.sleep(0.3)
            for pid in workers:
                psutil.Process(pid).kill()
        return volume

    before = _children()
    with pipeline.UnitPredictor(model_3d, nms_workers=2, nms_processes=True, batch_size=1) as predictor:
        [f.result() for f in predictor.pool.warm_up()]
        workers = _children() - before
        assert len(workers) == 2
        got = dict(predictor.predict(range(3), read))
        assert predictor.pool is None  # given up: the later units ran on threads
    assert all(np.array_equal(got[i], expected) for i in range(3))
    assert "an NMS worker process died" in caplog.text


def test_cancel_stops_the_worker_processes(model_2d):
    before = _children()
    planes = [_sample(2)[:128, :128]] * 8
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 4

    with pytest.raises(Cancelled):
        list(pipeline.predict_units(model_2d, range(8), lambda i: planes[i], nms_workers=2, nms_processes=True,
                                    batch_size=1, cancel=cancel))
    assert _children() <= before  # the workers ended


def test_worker_count_from_cores_memory_and_environment(monkeypatch):
    monkeypatch.delenv(nms_workers.ENV_WORKERS, raising=False)
    per = nms_workers.WORKER_BYTES
    assert nms_workers.auto_workers(cores=16, memory=64 * per) == 8  # at most 8
    assert nms_workers.auto_workers(cores=4, memory=64 * per) == 4  # one per core
    assert nms_workers.auto_workers(cores=16, memory=6 * per) == 3  # half the budget, one worker's share each
    assert nms_workers.auto_workers(cores=16, memory=per) == 1
    assert nms_workers.resolve_workers(3) == 3
    monkeypatch.setenv(nms_workers.ENV_WORKERS, "5")
    assert nms_workers.resolve_workers(3) == 5  # the environment wins
    monkeypatch.setenv(nms_workers.ENV_WORKERS, "two")
    with pytest.raises(SettingsError, match=r"^STARDIST_HOST_NMS_WORKERS='two': must be a whole number of worker "
                                            r"processes, 1 or more$"):
        nms_workers.resolve_workers(None)
    monkeypatch.delenv(nms_workers.ENV_WORKERS)
    with pytest.raises(SettingsError, match=r"^nms_workers=0: must be a whole number"):
        nms_workers.resolve_workers(0)


def test_on_a_cpu_nms_stays_on_threads_unless_workers_are_chosen(model_2d, monkeypatch):
    monkeypatch.delenv(nms_workers.ENV_WORKERS, raising=False)
    assert not pipeline.network_on_gpu()  # the tests run on the CPU
    with pipeline.UnitPredictor(model_2d) as predictor:
        assert predictor.nms_processes is False  # the network's threads fill the cores
    with pipeline.UnitPredictor(model_2d, nms_workers=2) as predictor:
        assert predictor.nms_processes is None  # chosen: started when the first units show they pay
    monkeypatch.setenv(nms_workers.ENV_WORKERS, "2")
    with pipeline.UnitPredictor(model_2d) as predictor:
        assert predictor.nms_processes is None and predictor.nms_workers == 2
    monkeypatch.delenv(nms_workers.ENV_WORKERS)
    monkeypatch.setattr(pipeline, "network_on_gpu", lambda: True)
    with pipeline.UnitPredictor(model_2d) as predictor:
        assert predictor.nms_processes is None  # a GPU leaves the cores to NMS


def test_environment_forces_threads(model_2d, monkeypatch):
    monkeypatch.setenv(nms_workers.ENV_WORKERS, "1")
    with pipeline.UnitPredictor(model_2d, nms_workers=4, nms_processes=True) as predictor:
        assert predictor.nms_workers == 1 and predictor.pool is None


@pytest.mark.parametrize("nms_seconds, remaining, workers, expected", [
    (0.012, 200, 2, False),  # 256² planes: 1.2 s saved, less than the start-up
    (0.012, 400, 2, False),  # 2.4 s saved: half the NMS goes to the second worker, not all of it
    (0.012, 1000, 2, True),
    (1.3, 2, 2, False),  # 3D: two volumes left save 1.3 s
    (1.3, 10, 2, True),
    (0.001, float("inf"), 2, True),  # a stream of unknown length
    (5.0, 100, 1, False),  # one worker: threads
])
def test_processes_start_when_they_pay(nms_seconds, remaining, workers, expected):
    assert nms_workers.worth_processes(nms_seconds, remaining, workers) is expected


def test_measured_rule_switches_to_processes(model_2d, monkeypatch):
    monkeypatch.setattr(nms_workers, "STARTUP_SECONDS", 0.0)  # any NMS time pays
    planes = [_sample(2)[:128, :128]] * 8
    with pipeline.UnitPredictor(model_2d, nms_workers=2, batch_size=1) as predictor:
        got = dict(predictor.predict(range(8), lambda i: planes[i]))
        assert len(predictor._thread_nms) >= 1 and predictor.pool is not None  # began on threads, then processes
    assert all(np.array_equal(got[i], got[0]) for i in range(8))


def test_no_room_in_shared_memory_keeps_nms_on_threads(model_2d, monkeypatch, caplog):
    import shutil

    monkeypatch.setattr(nms_workers, "STARTUP_SECONDS", 0.0)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000) if p == "/dev/shm" else real(p))
    planes = [_sample(2)[:128, :128]] * 4
    expected = dict(pipeline.predict_units(model_2d, range(4), lambda i: planes[i], nms_processes=False))
    with pipeline.UnitPredictor(model_2d, nms_workers=2, nms_processes=True, batch_size=1) as predictor:
        got = dict(predictor.predict(range(4), lambda i: planes[i]))
        assert predictor.pool is None  # given up after the first block did not fit
    assert all(np.array_equal(got[i], expected[i]) for i in range(4))
    assert "NMS continues on threads" in caplog.text and "/dev/shm" in caplog.text


def _report_can_spawn(queue):
    queue.put(nms_workers.can_spawn())


def test_a_daemon_process_does_not_start_workers():
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_report_can_spawn, args=(queue,), daemon=True)
    child.start()
    assert queue.get(timeout=60) is False  # as in a SEPARATE_PROCESS child: daemons may not have children
    child.join()
    assert nms_workers.can_spawn() is True
