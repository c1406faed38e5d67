"""Analysis jobs as a host runs them: progress per time point, cancel, and no half-written channel."""

import threading

import numpy as np
import pytest
from scipy import ndimage

from stardist_host import MemoryImageSet
from stardist_host.analyses.jobs import run_job
from stardist_host.errors import Cancelled
from stardist_host.segmentation.segment import percent_progress


def _moving_nuclei(t: int = 4, size: int = 48) -> MemoryImageSet:
    """Channel 0: intensity; channel 1: labels of three squares that drift 2 pixels per time point."""
    data = np.zeros((t, 2, 1, size, size), np.uint16)
    for k in range(t):
        for i in range(3):
            data[k, 0, 0, 4 + 14 * i: 12 + 14 * i, 4 + 2 * k: 12 + 2 * k] = 500
        data[k, 1, 0] = ndimage.label(data[k, 0, 0] > 0)[0]
    return MemoryImageSet(data, channel_names=["DAPI", "labels"], voxel_size=(1.0, 0.5, 0.5))


TRACK = {"label_channel": 1, "max_distance_um": 3.0}


def test_progress_follows_the_time_points_and_a_host_gets_percent(tmp_path):
    imageset = _moving_nuclei()
    calls, percents = [], []
    run_job("track", imageset, tmp_path, "run", TRACK, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 4) and calls[-1] == (4, 4)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert {d for d, _ in calls} == {0, 1, 2, 3, 4}
    run_job("track", _moving_nuclei(), tmp_path, "percent", TRACK, progress=percent_progress(percents.append))
    assert percents[-1] == 100 and percents == sorted(percents)


@pytest.mark.parametrize("stop_after", [1, 4])  # before, and after the track channel is added
def test_cancel_stops_the_job_and_removes_the_channel_it_added(tmp_path, stop_after):
    imageset = _moving_nuclei()
    before = [imageset.get_channeldata(c, 0, t).copy() for t in range(4) for c in range(2)]
    reads = []
    stop = threading.Event()

    def cancel():
        reads.append(1)
        if len(reads) > stop_after:
            stop.set()
        return stop.is_set()

    with pytest.raises(Cancelled):
        run_job("track", imageset, tmp_path, "run", TRACK, cancel=cancel)
    assert imageset.channel_count == 2 and imageset.channel_names == ["DAPI", "labels"]
    after = [imageset.get_channeldata(c, 0, t) for t in range(4) for c in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert not list(tmp_path.glob("run_*.csv"))


def test_a_failing_read_removes_the_channel_the_job_added(tmp_path):
    imageset = _moving_nuclei()
    real = imageset.get_channeldata
    count = []

    def failing(channel, plane, time_point):
        count.append(1)
        if len(count) == 5:
            raise OSError("the network drive went away")
        return real(channel, plane, time_point)

    imageset.get_channeldata = failing
    with pytest.raises(OSError, match="network drive"):
        run_job("track", imageset, tmp_path, "run", TRACK)
    assert imageset.channel_count == 2


def test_a_finished_job_keeps_its_channel(tmp_path):
    imageset = _moving_nuclei()
    run_job("track", imageset, tmp_path, "run", TRACK, cancel=lambda: False)
    assert imageset.channel_names == ["DAPI", "labels", "Track_ids"]
    assert (tmp_path / "run_tracks.csv").is_file()
