"""Unit-by-unit runs: OME-Zarr in and out, a real local Dask cluster (2 processes), resume after a kill.

The oracle for labels is the single-process path (``segment.run`` on the same
image set, batched pipeline); what we write is read back with ome-zarr's
Reader and with bioio + bioio-ome-zarr.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
pytest.importorskip("ome_zarr.writer")

from conftest import ROOT, sample_planes_tczyx  # noqa: E402
from test_omezarr import input_hashes, write_store  # noqa: E402

from stardist_host.runs import distributed  # noqa: E402
from stardist_host.errors import (  # noqa: E402
    LabelOverflowError,
    MissingExtraError,
    OutputError,
    SettingsError,
    UnitFailedError,
)
from stardist_host.io.outputs import scratch_labels_store  # noqa: E402
from stardist_host.runs.files import segment_file  # noqa: E402
from stardist_host.io.omezarr import OmeZarrImageSet  # noqa: E402
from stardist_host.runs.local import run  # noqa: E402
from stardist_host.segmentation.settings import Settings  # noqa: E402

LABEL = "Stardist_Channel 0"


def timelapse_store(path: Path) -> Path:
    """2D+t: 2 time points x 2 planes of 64 x 64 from stardist's 2D sample (NGFF 0.4: zarr 2 and 3 read it)."""
    return write_store(path, sample_planes_tczyx(t=2, z=2)[:, 0], "tzyx", version="0.4",
                       scale={"z": 1.0, "y": 0.5, "x": 0.5}, units={"y": "micrometer", "x": "micrometer"})


def stack_store(path: Path) -> Path:
    """3D: a 12 x 48 x 48 crop of stardist's 3D sample."""
    from stardist.data import test_image_nuclei_3d

    return write_store(path, test_image_nuclei_3d()[8:20, 6:54, 4:52], "zyx", version="0.4",
                       scale={"z": 1.0, "y": 1.0, "x": 1.0}, units={})


def labels_of(store: Path, name: str = LABEL) -> np.ndarray:
    return np.asarray(zarr.open_array(str(store / "labels" / name / "0"), mode="r")[:])


def reference(store: Path, settings: Settings) -> np.ndarray:
    """The single-process path (segment.run, batched pipeline) on the same image set."""
    with OmeZarrImageSet(store) as imageset:
        result = run(settings, imageset)
    return labels_of(store, result.channel_name)


@pytest.fixture(scope="module")
def cluster():
    distributed_ = pytest.importorskip("distributed")
    with distributed_.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                   dashboard_address=":0") as local:
        yield local.scheduler_address


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stardist_host.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=300)


# ----------------------------------------------------------------------------- Dask workers


def test_timelapse_on_two_workers_equals_single_process_and_reads_as_ngff(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    pytest.importorskip("distributed")
    store = timelapse_store(tmp_path / "tl.zarr")
    before = input_hashes(store)
    settings = Settings(ndim=2, current_time_point=False, use_gpu=False)
    expected = reference(timelapse_store(tmp_path / "ref.zarr"), settings)
    assert expected.shape == (2, 2, 64, 64) and all(expected[t, z].max() >= 2 for t in range(2) for z in range(2))

    result = segment_file(settings, store, None, workers=2)
    got = labels_of(store)
    np.testing.assert_array_equal(got, expected)
    assert input_hashes(store) == before  # the input's arrays and metadata untouched
    assert result.channel_name == LABEL and len(result.units) == 4 and result.computed == 4
    assert result.total == sum(len(np.unique(expected[t, z])) - 1 for t in range(2) for z in range(2))
    assert not (store / "labels" / LABEL / distributed.JOURNAL).exists()  # complete: the journal is gone

    nodes = {Path(str(n.zarr.path).rstrip("/")).relative_to(store).as_posix(): n
             for n in Reader(parse_url(str(store)))()}
    node = nodes[f"labels/{LABEL}"]
    assert [type(s).__name__ for s in node.specs] == ["Label", "Multiscales"]
    np.testing.assert_array_equal(np.asarray(node.data[0]), expected)


def test_stack_3d_on_a_cluster_equals_single_process_and_reads_with_bioio(tmp_path, cluster):
    store = stack_store(tmp_path / "st.zarr")
    settings = Settings(ndim=3, use_gpu=False)
    expected = reference(stack_store(tmp_path / "ref.zarr"), settings)
    assert expected.max() >= 3

    out = tmp_path / "labels.zarr"  # a separate store: the input store gets no labels/
    segment_file(settings, store, out, scheduler=cluster)
    assert not (store / "labels").exists()
    np.testing.assert_array_equal(labels_of(out), expected)
    bioio = pytest.importorskip("bioio")
    bioio_ome_zarr = pytest.importorskip("bioio_ome_zarr")
    img = bioio.BioImage(str(out / "labels" / LABEL), reader=bioio_ome_zarr.Reader)
    np.testing.assert_array_equal(img.get_image_data("ZYX", T=0, C=0), expected)


def test_a_failing_unit_is_named_and_the_others_are_kept(tmp_path, cluster):
    from stardist_host.io.omezarr import _create_plane_array

    store = timelapse_store(tmp_path / "tl.zarr")
    group = zarr.open_group(str(store), mode="a")
    level = group.attrs["multiscales"][0]["datasets"][0]["path"]
    data = np.asarray(group[level][:])
    del group[level]  # written again with one chunk per plane, so that one plane can be damaged
    array = _create_plane_array(group, level, shape=data.shape, chunks=(1, 1, 64, 64), dtype=data.dtype,
                                dim_names="tzyx", zarr_format=2)
    array[:] = data
    chunk = store / level / "1" / "0" / "0" / "0"  # time point 1, plane 0
    assert chunk.is_file()
    chunk.write_bytes(b"not a compressed chunk")
    settings = Settings(ndim=2, current_time_point=False, use_gpu=False)
    with pytest.raises(UnitFailedError, match=r"time point 1, plane 0 failed.*run again with --resume"):
        segment_file(settings, store, None, scheduler=cluster)
    journal = store / "labels" / LABEL / distributed.JOURNAL
    assert "t1_z0-0.json" not in {p.name for p in journal.iterdir()}
    with pytest.raises(OutputError, match=r"an interrupted run left .* add --resume to continue it or --overwrite"):
        segment_file(settings, store, None)


# ----------------------------------------------------------------------------- one engine, every way of running


@pytest.mark.parametrize("ndim", [2, 3])
def test_every_way_of_running_gives_the_same_labels(tmp_path, cluster, ndim):
    """In this process, in a child process, resumable (journalled) and as Dask tasks: the same engine, the same labels."""
    import tifffile
    from stardist.data import test_image_nuclei_3d

    from stardist_host.io.imagesets import TiffImageSet

    src = tmp_path / "in.tif"
    if ndim == 2:  # 2 time points x 3 planes, numbered across all six
        tifffile.imwrite(src, sample_planes_tczyx(t=2, z=3)[:, 0], imagej=True, metadata={"axes": "TZYX"})
    else:  # 2 time points of a 12 x 48 x 48 volume
        volume = test_image_nuclei_3d()[8:20, 6:54, 4:52]
        tifffile.imwrite(src, np.stack([volume, volume[:, ::-1]]), imagej=True, metadata={"axes": "TZYX"})
    settings = Settings(ndim=ndim, current_time_point=False, unique_labels=True, use_gpu=False)
    got = {}
    with TiffImageSet(src) as ims:
        result = run(dataclasses.replace(settings, separate_process=True), ims)
        got["child process"] = np.stack([[ims.get_channeldata(result.channel, z, t) for z in range(ims.plane_count)]
                                         for t in range(ims.time_point_count)])
    for way, options in {"in process": {}, "resumable": {"resume": True}, "Dask": {"scheduler": cluster}}.items():
        out = tmp_path / f"{way}.ome.tif"
        segment_file(settings, src, out, **options)
        got[way] = tifffile.imread(out)[:, -1]  # T, (Z,) Y, X of the label channel
    expected = got.pop("in process").reshape(got["child process"].shape)
    assert len(np.unique(expected)) - 1 == expected.max() >= 10  # unique across units, consecutive
    for way, labels in got.items():
        np.testing.assert_array_equal(labels.reshape(expected.shape), expected, err_msg=way)


# ----------------------------------------------------------------------------- resume after a kill


def test_killed_run_resumes_only_the_missing_units(tmp_path):
    store = timelapse_store(tmp_path / "tl.zarr")
    command = [str(store), "--all-time-points", "--unique-labels", "--cpu"]
    killed = _cli("-q", "segment", *command, env={distributed.EXIT_AFTER_ENV: "2"})
    assert killed.returncode == 137, killed.stderr[-2000:]
    journal = store / "labels" / LABEL / distributed.JOURNAL
    assert sorted(p.name for p in journal.glob("t*.json")) == ["t0_z0-0.json", "t0_z1-1.json"]

    refused = _cli("-q", "segment", *command)
    assert refused.returncode == 2 and "an interrupted run left" in refused.stderr
    # the hook again at 3: a resume that redid all 4 units would be killed once more
    resumed = _cli("-q", "segment", *command, "--resume", env={distributed.EXIT_AFTER_ENV: "3"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed: 2 of 4 units were done before; 2 segmented now" in resumed.stdout
    assert not journal.exists()

    settings = Settings(ndim=2, current_time_point=False, unique_labels=True, use_gpu=False)
    expected = reference(timelapse_store(tmp_path / "ref.zarr"), settings)
    np.testing.assert_array_equal(labels_of(store), expected)
    assert len(np.unique(expected)) - 1 == expected.max()  # unique across planes, as the single-process path numbers


_FINISH = distributed._finish


def _finishing(monkeypatch, stop_after: int | None = None) -> list:
    """The units whose labels are recorded, as they are; with ``stop_after``, the run stops there as Ctrl-C would."""
    calls = []

    def finish(task, result):
        if len(calls) == stop_after:
            raise KeyboardInterrupt
        calls.append(result.unit)
        return _FINISH(task, result)

    monkeypatch.setattr(distributed, "_finish", finish)
    return calls


def test_tiff_output_resumes_from_its_scratch_store(tmp_path, monkeypatch):
    import tifffile

    src = _timelapse_tiff(tmp_path / "in.tif")
    settings = Settings(ndim=2, current_time_point=False, unique_labels=True, use_gpu=False)
    segment_file(settings, src, tmp_path / "plain.ome.tif")  # the single-process path
    expected = tifffile.imread(tmp_path / "plain.ome.tif")

    calls = _finishing(monkeypatch, stop_after=2)
    out = tmp_path / "out.ome.tif"
    with pytest.raises(KeyboardInterrupt):
        segment_file(settings, src, out, resume=True)
    assert not out.exists() and scratch_labels_store(out).is_dir()
    with pytest.raises(OutputError, match="an interrupted run left"):
        segment_file(settings, src, out)  # the single-process path does not overwrite it either

    calls = _finishing(monkeypatch)
    result = segment_file(settings, src, out, resume=True)
    assert [(u.time_point, u.first) for u in calls] == [(1, 0), (1, 1)] and result.computed == 2
    np.testing.assert_array_equal(tifffile.imread(out), expected)
    assert not scratch_labels_store(out).exists()


# ----------------------------------------------------------------------------- refusals


def test_resume_with_other_settings_is_refused(tmp_path, monkeypatch):
    store = timelapse_store(tmp_path / "tl.zarr")
    real = distributed._finish

    def once(task, result):
        real(task, result)
        raise RuntimeError("stop here")

    monkeypatch.setattr(distributed, "_finish", once)
    with pytest.raises(UnitFailedError, match="time point 0, plane 0 failed: RuntimeError: stop here"):
        segment_file(Settings(ndim=2, current_time_point=False, use_gpu=False), store, None)
    before = {p: p.read_bytes() for p in (store / "labels").rglob("*") if p.is_file()}
    with pytest.raises(OutputError, match=r"had other settings \(prob_thresh: None then, 0.7 now\)"):
        segment_file(Settings(ndim=2, current_time_point=False, use_gpu=False, prob_thresh=0.7), store, None,
                     resume=True)
    assert {p: p.read_bytes() for p in (store / "labels").rglob("*") if p.is_file()} == before


def test_existing_labels_and_bad_outputs_are_refused_before_the_model_loads(tmp_path, monkeypatch):
    store = timelapse_store(tmp_path / "tl.zarr")
    OmeZarrImageSet(store).add_channel(LABEL, np.uint16)
    monkeypatch.setattr(distributed, "_load", lambda settings: pytest.fail("the model was loaded"))
    settings = Settings(ndim=2, use_gpu=False)
    with pytest.raises(OutputError, match=r"labels/Stardist_Channel 0' exists already; .* --overwrite"):
        segment_file(settings, store, None)
    with pytest.raises(OutputError, match=r"x.zarr' must end in .tif or .tiff"):
        segment_file(settings, tmp_path / "in.tif", tmp_path / "x.zarr")
    with pytest.raises(OutputError, match=r"a TIFF input is written to an OME-TIFF"):
        segment_file(settings, tmp_path / "in.tif", tmp_path / "x.zarr", resume=True)
    with pytest.raises(OutputError, match=r"an OME-Zarr input's labels go to an OME-Zarr store"):
        segment_file(settings, store, tmp_path / "x.ome.tif")
    with pytest.raises(SettingsError, match=r"--workers=0: must be a whole number >= 1"):
        segment_file(settings, store, tmp_path / "sep.zarr", workers=0)


def test_a_local_cluster_worker_gets_its_share_of_the_cores_and_glibcs_own_malloc(monkeypatch):
    """Dask's nanny sets OMP_NUM_THREADS=1 in its workers (the model and NMS ran at half speed on 2 cores) and
    MALLOC_TRIM_THRESHOLD_ (a 3D volume took 1.3x as long), and both in the process that starts them."""
    pytest.importorskip("distributed")
    from stardist_host.segmentation.nms_workers import available_cores

    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")
    for name in names:  # as in a new process (the module's cluster, a plain LocalCluster, set them in this one)
        monkeypatch.delenv(name, raising=False)
    here = {name: os.environ.get(name) for name in names}
    with distributed.dask_client(workers=1) as client:
        seen = client.run(lambda: {name: os.environ.get(name) for name in names})
    cores = str(available_cores())
    assert list(seen.values()) == [{"OMP_NUM_THREADS": cores, "MKL_NUM_THREADS": cores, "MALLOC_TRIM_THRESHOLD_": None}]
    assert {name: os.environ.get(name) for name in names} == here


def test_missing_dask_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(MissingExtraError, match=r'pip install "stardist-host\[dask\]"'):
        with distributed.dask_client(workers=2):
            pass


def _timelapse_tiff(path: Path) -> Path:
    import tifffile

    tifffile.imwrite(path, sample_planes_tczyx(t=2, z=2)[:, 0], imagej=True, metadata={"axes": "TZYX"})
    return path


def test_a_resumable_tiff_run_keeps_its_labels_without_zarr(tmp_path, monkeypatch):
    import tifffile

    src = _timelapse_tiff(tmp_path / "in.tif")
    settings = Settings(ndim=2, current_time_point=False, unique_labels=True, use_gpu=False)
    segment_file(settings, src, tmp_path / "plain.ome.tif")
    monkeypatch.setitem(sys.modules, "zarr", None)  # the scratch folder is one .npy file per unit
    real, kept = distributed._finish, []

    def look(task, result):
        kept.append(sorted(p.name for p in scratch_labels_store(tmp_path / "out.ome.tif").glob("*.npy")))
        return real(task, result)

    monkeypatch.setattr(distributed, "_finish", look)
    segment_file(settings, src, tmp_path / "out.ome.tif", resume=True)
    assert kept[-1] == ["t0_z0-0.npy", "t0_z1-1.npy", "t1_z0-0.npy", "t1_z1-1.npy"]
    expected = tifffile.imread(tmp_path / "plain.ome.tif")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.ome.tif"), expected)


def test_a_recorded_unit_whose_labels_file_is_not_whole_is_redone(tmp_path, monkeypatch):
    import tifffile

    src = _timelapse_tiff(tmp_path / "in.tif")
    settings = Settings(ndim=2, current_time_point=False, use_gpu=False)
    segment_file(settings, src, tmp_path / "plain.ome.tif")
    _finishing(monkeypatch, stop_after=2)
    out = tmp_path / "out.ome.tif"
    with pytest.raises(KeyboardInterrupt):
        segment_file(settings, src, out, resume=True)
    unit_file = scratch_labels_store(out) / "t0_z1-1.npy"
    unit_file.write_bytes(unit_file.read_bytes()[:-100])  # recorded, but its data did not all reach the disk
    calls = _finishing(monkeypatch)
    segment_file(settings, src, out, resume=True)
    assert [(u.time_point, u.first) for u in calls] == [(0, 1), (1, 0), (1, 1)]
    np.testing.assert_array_equal(tifffile.imread(out), tifffile.imread(tmp_path / "plain.ome.tif"))


@pytest.mark.parametrize("kind", ["zarr", "tiff"])
def test_unique_labels_past_the_type_are_refused(tmp_path, monkeypatch, kind):
    store, out = timelapse_store(tmp_path / "tl.zarr"), None
    if kind == "tiff":
        store, out = _timelapse_tiff(tmp_path / "in.tif"), tmp_path / "out.ome.tif"
    real = distributed._finish

    def big(task, result):
        record = real(task, result)
        return {**record, "highest": 40000}  # two such units pass uint16

    monkeypatch.setattr(distributed, "_finish", big)
    settings = Settings(ndim=2, current_time_point=False, unique_labels=True, label_dtype="uint16", use_gpu=False)
    with pytest.raises(LabelOverflowError, match=r"time point 0, plane 1: label 80000 does not fit .* LABEL_DTYPE='uint32'"):
        segment_file(settings, store, out, resume=kind == "tiff")  # TIFF: through the scratch folder
    assert out is None or not out.exists()


def test_renumbering_killed_halfway_through_a_volume_adds_the_offset_once(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from stardist_host.runs.journal import Journal
    from stardist_host.segmentation.plan import Unit

    class Planes(dict):
        def read(self, t, z):
            return self[(t, z)].copy()

        def write(self, t, z, plane):
            self[(t, z)] = plane

    planes = Planes({(0, z): np.array([[0, z + 1]], np.uint16) for z in range(4)})
    monkeypatch.setattr(distributed, "_store", lambda target: planes)
    task = SimpleNamespace(target=SimpleNamespace(journal=Journal(tmp_path)), dtype="uint16")
    real = Journal.record

    def killed_after_plane_1(journal, name, record):
        real(journal, name, record)
        if name.endswith(".z1.offset.json"):
            raise KeyboardInterrupt  # stopped after planes 0 and 1 were rewritten and recorded

    monkeypatch.setattr(Journal, "record", killed_after_plane_1)
    with pytest.raises(KeyboardInterrupt):
        distributed.renumber_unit(task, Unit(0, 0, 3), 10)
    monkeypatch.setattr(Journal, "record", real)
    distributed.renumber_unit(task, Unit(0, 0, 3), 10)  # the resumed run
    assert [int(planes[(0, z)][0, 1]) for z in range(4)] == [11, 12, 13, 14]
    assert all(int(planes[(0, z)][0, 0]) == 0 for z in range(4))  # background stays 0
