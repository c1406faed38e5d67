"""RegionImageSet: the image set contract over a host that reads and writes regions."""

from __future__ import annotations

import numpy as np
import pytest

from stardist_host import MemoryImageSet, Settings
from stardist_host.errors import IndexRangeError, ReadOnlyInputError
from stardist_host.host import check_imageset
from stardist_host.io.regionhost import RegionImageSet, region
from stardist_host.testing.conformance import ImageSetConformance
from stardist_host.testing.synthetic import nuclei


class FakeRegionHost:
    """A numpy-backed host with exactly the region API, strict about every bound.

    ``data`` is (T, C, Z, Y, X); regions are ``((x, y, z), (w, h, d))`` with
    sizes as counts; arrays go in and out in ``order`` ("zyx": (d, h, w),
    "xyz": (w, h, d)).  Anything outside the data raises ValueError.
    """

    def __init__(self, data: np.ndarray, order: str = "zyx"):
        self.channels = [np.array(data[:, c]) for c in range(data.shape[1])]  # each (T, Z, Y, X)
        self.order = order
        self.reads: list[tuple] = []
        self.writes: list[tuple] = []

    def _box(self, bounds, channel, timepoint):
        (x, y, z), (w, h, d) = bounds
        for v in (x, y, z, w, h, d, channel, timepoint):
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"region values, channel and time point must be int, got {v!r}")
        if not 0 <= channel < len(self.channels):
            raise ValueError(f"channel {channel} out of range")
        t_n, z_n, y_n, x_n = self.channels[channel].shape
        if not 0 <= timepoint < t_n:
            raise ValueError(f"time point {timepoint} out of range")
        if min(w, h, d) < 1 or min(x, y, z) < 0 or x + w > x_n or y + h > y_n or z + d > z_n:
            raise ValueError(f"region {bounds} outside the image (x {x_n}, y {y_n}, z {z_n})")
        return np.s_[timepoint, z : z + d, y : y + h, x : x + w]

    def read_imagedata(self, bounds, channel, timepoint):
        box = self.channels[channel][self._box(bounds, channel, timepoint)]
        self.reads.append((bounds, channel, timepoint))
        return box.copy() if self.order == "zyx" else box.transpose(2, 1, 0).copy()

    def write_imagedata(self, data, bounds, channel, timepoint):
        index = self._box(bounds, channel, timepoint)
        (_, _, _), (w, h, d) = bounds
        expected = (d, h, w) if self.order == "zyx" else (w, h, d)
        if data.shape != expected:
            raise ValueError(f"data of shape {data.shape} for a region of shape {expected}")
        target = self.channels[channel]
        if not np.array_equal(data.astype(target.dtype), data):
            raise ValueError(f"values {data.min()}..{data.max()} do not fit the channel's type {target.dtype}")
        target[index] = data if self.order == "zyx" else data.transpose(2, 1, 0)
        self.writes.append((bounds, channel, timepoint))

    def new_channel(self, name, dtype):
        """What an integrator hands over as ``add_channel``: the host has no such call itself."""
        self.channels.append(np.zeros(self.channels[0].shape, dtype))
        return len(self.channels) - 1


def tczyx(t=2, c=2, z=3, y=5, x=7) -> np.ndarray:
    return np.arange(t * c * z * y * x, dtype=np.uint16).reshape(t, c, z, y, x)


def region_set(host, *, shape=(2, 2, 3, 5, 7), origin=(0, 0, 0), **kw) -> RegionImageSet:
    t, c, z, y, x = shape
    return RegionImageSet(
        host, plane_shape=(y, x), plane_count=z, channel_count=c, time_point_count=t, origin=origin,
        order=host.order, add_channel=kw.pop("add_channel", host.new_channel), **kw,
    )


def test_region_converts_an_inclusive_last_plane_to_a_depth():
    assert region((2, 3, 4), (5, 7), 1, 3) == ((2, 3, 5), (7, 5, 3))
    assert region((0, 0, 0), (5, 7), 2, 2) == ((0, 0, 2), (7, 5, 1))
    with pytest.raises(ValueError, match="z_last=1 is before z_first=2"):
        region((0, 0, 0), (5, 7), 2, 1)


@pytest.mark.parametrize("order", ["zyx", "xyz"])
def test_planes_read_are_the_hosts_planes(order):
    data = tczyx()
    ims = region_set(FakeRegionHost(data, order))
    assert check_imageset(ims) is ims
    assert (ims.channel_count, ims.plane_count, ims.time_point_count, ims.plane_shape) == (2, 3, 2, (5, 7))
    for t in range(2):
        for c in range(2):
            for z in range(3):
                np.testing.assert_array_equal(ims.get_channeldata(c, z, t), data[t, c, z])


@pytest.mark.parametrize("order", ["zyx", "xyz"])
def test_origin_offsets_every_region(order):
    big = tczyx(t=1, c=1, z=6, y=9, x=11)
    host = FakeRegionHost(big, order)
    ims = region_set(host, shape=(1, 1, 2, 5, 7), origin=(3, 2, 4))
    np.testing.assert_array_equal(ims.get_channeldata(0, 1, 0), big[0, 0, 5, 2:7, 3:10])
    assert host.reads[-1] == (((3, 2, 5), (7, 5, 1)), 0, 0)


@pytest.mark.parametrize("order", ["zyx", "xyz"])
def test_a_plane_written_lands_on_that_plane_only(order):
    data = tczyx()
    host = FakeRegionHost(data, order)
    ims = region_set(host)
    new = ims.add_channel("labels", np.uint16)
    assert (new, ims.channel_count, ims.channel_names) == (2, 3, ["Channel 0", "Channel 1", "labels"])
    plane = np.arange(35, dtype=np.uint16).reshape(5, 7) + 1
    ims.set_channeldata(new, 2, 1, plane)
    stored = host.channels[new]
    np.testing.assert_array_equal(stored[1, 2], plane)
    assert int(np.count_nonzero(stored)) == 35
    np.testing.assert_array_equal(ims.get_channeldata(new, 2, 1), plane)


def test_a_host_in_the_other_order_is_reported_not_transposed():
    host = FakeRegionHost(tczyx(), "xyz")
    ims = RegionImageSet(host, plane_shape=(5, 7), plane_count=3, channel_count=2, time_point_count=2)
    with pytest.raises(ValueError, match=r"returned shape \(7, 5, 1\) for plane 0 .*order='zyx'.*is order right"):
        ims.get_channeldata(0, 0, 0)


@pytest.mark.parametrize(
    "args, message",
    [
        ((2, 0, 0), "channel=2: the image set has channels 0..1 (Channel 0, Channel 1)"),
        ((0, 3, 0), "plane=3: the image set has planes 0..2"),
        ((0, 0, -1), "time_point=-1: the image set has time points 0..1"),
    ],
)
def test_indices_outside_the_image_set_are_refused_before_the_host_is_called(args, message):
    host = FakeRegionHost(tczyx())
    ims = region_set(host)
    with pytest.raises(IndexRangeError) as err:
        ims.get_channeldata(*args)
    assert str(err.value) == message
    with pytest.raises(IndexRangeError):
        ims.set_channeldata(*args, np.zeros((5, 7), np.uint16))
    assert host.reads == [] and host.writes == []


def test_a_plane_of_the_wrong_shape_is_refused_and_nothing_written():
    data = tczyx()
    host = FakeRegionHost(data)
    ims = region_set(host)
    with pytest.raises(ValueError, match=r"plane of shape \(7, 5\) given, but the image set's planes are \(5, 7\)"):
        ims.set_channeldata(0, 0, 0, np.zeros((7, 5), np.uint16))
    assert host.writes == []
    np.testing.assert_array_equal(host.channels[0], data[:, 0])


def test_add_channel_needs_a_way_to_add_one():
    host = FakeRegionHost(tczyx())
    ims = region_set(host, add_channel=None)
    message = r"offers no way to add a channel: pass RegionImageSet\(\.\.\., add_channel="
    with pytest.raises(NotImplementedError, match=message):
        ims.add_channel("labels", np.uint16)
    assert ims.channel_count == 2
    misplaced = region_set(host, add_channel=lambda name, dtype: 0)
    with pytest.raises(ValueError, match="returned index 0, but a new channel must come last, at index 2"):
        misplaced.add_channel("labels", np.uint16)
    assert misplaced.channel_count == 2 and misplaced.channel_names == ["Channel 0", "Channel 1"]


def test_remove_channel_exists_only_where_the_host_can_remove():
    host = FakeRegionHost(tczyx())
    assert not hasattr(region_set(host), "remove_channel")
    removed = []
    ims = region_set(host, remove_channel=removed.append)
    new = ims.add_channel("labels", np.uint16)
    with pytest.raises(ReadOnlyInputError, match=r"channel 0 is one of the host's own channels \(0..1\)"):
        ims.remove_channel(0)
    ims.remove_channel(new)
    assert removed == [2] and ims.channel_count == 2 and ims.channel_names == ["Channel 0", "Channel 1"]
    with pytest.raises(ReadOnlyInputError):  # with nothing added, the last channel is the host's own
        ims.remove_channel(1)
    assert removed == [2]


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"order": "yxz"}, "order='yxz': must be one of 'zyx', 'xyz'"),
        ({"plane_count": 0}, "plane_count=0: must be a whole number of at least 1"),
        ({"voxel_size": (1.0, 0.0, 0.5)}, "voxel_size=(1.0, 0.0, 0.5): must be (z, y, x) in µm"),
        ({"channel_names": ["a"]}, "1 channel names given for channel_count=2"),
        ({"current_time_point": 5}, "current_time_point=5: the image set has time points 0..0"),
    ],
)
def test_bad_constructor_arguments_name_the_value(kw, message):
    args = {"plane_shape": (5, 7), "plane_count": 3, "channel_count": 2} | kw
    with pytest.raises(ValueError) as err:
        RegionImageSet(FakeRegionHost(tczyx()), **args)
    assert str(err.value).startswith(message)


def test_voxel_size_may_lack_z():
    ims = RegionImageSet(FakeRegionHost(tczyx()), plane_shape=(5, 7), plane_count=3, channel_count=2,
                         voxel_size=(None, 0.5, 0.5))
    assert ims.voxel_size == (None, 0.5, 0.5)


@pytest.mark.parametrize("order", ["zyx", "xyz"])
def test_segmentation_through_a_region_host_writes_the_labels_of_a_memory_run(order):
    from stardist_host.runs.local import run

    image, _ = nuclei((64, 64), 4, seed=2)  # a 64x64 plane with four bright discs
    data = image[None, None, None]  # T, C, Z, Y, X
    settings = Settings(ndim=2, model_name="2D_demo", use_gpu=False)
    memory = MemoryImageSet(data.copy())
    expected = run(settings, memory)
    host = FakeRegionHost(data.copy(), order)
    result = run(settings, region_set(host, shape=data.shape))
    assert result.total == expected.total >= 3  # the demo model finds the discs, not nothing
    assert result.channel == 1 and len(host.channels) == 2
    written = [w for w in host.writes if w[1] == 1]
    assert written == [(((0, 0, 0), (64, 64, 1)), 1, 0)]
    np.testing.assert_array_equal(host.channels[1][0, 0], memory.channel(expected.channel)[0, 0])


class TestRegionImageSetConformance(ImageSetConformance):
    """The image-set contract, as every host passes it, over the fake region host in both array orders."""

    get_returns = "copy"  # each read is a fresh region read

    @pytest.fixture(params=["zyx", "xyz"])
    def make_imageset(self, request):
        def make(data, channel_names, voxel_size):
            host = FakeRegionHost(data, order=request.param)
            return region_set(host, shape=data.shape, channel_names=channel_names, voxel_size=voxel_size)

        return make
