"""The host contract, on both image sets, and the active image set.

The contract itself is :class:`stardist_host.testing.conformance.ImageSetConformance`,
run here on the in-memory and the TIFF-backed image set (from an OME-TIFF and
from an ImageJ hyperstack); the tests below add this package's exact messages.
"""

import numpy as np
import pytest
import tifffile
from conftest import blobs_tczyx

from stardist_host import (
    MemoryImageSet,
    TiffImageSet,
    active_imageset,
    host,
    set_active_imageset,
)
from stardist_host.testing.conformance import ImageSetConformance


class TestMemoryImageSet(ImageSetConformance):
    get_returns = "view"  # the array given is used as is

    @pytest.fixture
    def make_imageset(self):
        def make(data, channel_names, voxel_size):
            return MemoryImageSet(data, channel_names=channel_names, voxel_size=voxel_size)

        return make


class TestTiffImageSet(ImageSetConformance):
    get_returns = "copy"  # planes are read from the file or the scratch channel each time

    @pytest.fixture(params=["ome", "imagej"])
    def make_imageset(self, request, tmp_path):
        opened = []

        def make(data, channel_names, voxel_size):
            path = tmp_path / f"in{len(opened)}.tif"
            z, y, x = voxel_size
            if request.param == "ome":
                tifffile.imwrite(path, data, ome=True, photometric="minisblack", metadata={
                    "axes": "TCZYX", "Channel": {"Name": list(channel_names)},
                    "PhysicalSizeZ": z, "PhysicalSizeY": y, "PhysicalSizeX": x})
            else:
                tifffile.imwrite(path, data.transpose(0, 2, 1, 3, 4), imagej=True, resolution=(1 / x, 1 / y),
                                 metadata={"axes": "TZCYX", "spacing": z, "unit": "micron",
                                           "Labels": list(channel_names) * (data.shape[0] * data.shape[2])})
            opened.append(TiffImageSet(path, scratch_dir=tmp_path))
            return opened[-1]

        yield make
        for imageset in opened:
            imageset.close()


@pytest.fixture(params=["memory", "tiff"])
def imageset(request, tmp_path):
    data = blobs_tczyx()
    if request.param == "memory":
        yield MemoryImageSet(data, channel_names=["DAPI", "Other"], voxel_size=(2.0, 0.5, 0.5))
        return
    path = tmp_path / "in.tif"
    tifffile.imwrite(
        path, data.transpose(0, 2, 1, 3, 4), imagej=True, resolution=(2.0, 2.0),
        metadata={"axes": "TZCYX", "spacing": 2.0, "unit": "micron", "Labels": ["DAPI", "Other"] * 12},
    )
    with TiffImageSet(path) as ims:
        yield ims


def test_default_current_time_point_and_isinstance(imageset):
    assert isinstance(imageset, host.ImageSet) and imageset.current_time_point == 0


@pytest.mark.parametrize(
    "args, message",
    [((5, 0, 0), "channel=5: the image set has channels 0..1"),
     ((0, 4, 0), "plane=4: the image set has planes 0..3"),
     ((0, 0, -1), "time_point=-1: the image set has time points 0..2")],
)
def test_contract_index_errors(imageset, args, message):
    with pytest.raises(IndexError, match=message):
        imageset.get_channeldata(*args)


def test_set_refuses_wrong_shape_and_overflow(imageset):
    new = imageset.add_channel("labels", np.uint16)
    with pytest.raises(ValueError, match=r"plane of shape \(8, 8\) given, but the image set's planes are \(32, 32\)"):
        imageset.set_channeldata(new, 0, 0, np.zeros((8, 8), np.uint16))
    with pytest.raises(OverflowError, match=r"values 0\.\.70000 do not fit the channel's type uint16"):
        imageset.set_channeldata(new, 0, 0, np.full((32, 32), 70000, np.uint32) * (np.arange(32) > 0))


def test_tiff_input_channels_are_read_only(tmp_path):
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, np.ones((2, 16, 16), np.uint8), photometric="minisblack", metadata={"axes": "ZYX"})
    with TiffImageSet(path) as ims:
        with pytest.raises(PermissionError, match="never modified"):
            ims.set_channeldata(0, 0, 0, np.zeros((16, 16), np.uint8))


def test_active_imageset_roundtrip(memory_imageset):
    set_active_imageset(memory_imageset)
    try:
        assert active_imageset() is memory_imageset
    finally:
        set_active_imageset(None)
    with pytest.raises(host.NoImageSetError, match="set_active_imageset"):
        active_imageset()


def test_foreign_object_is_refused_with_missing_members():
    class Half:
        channel_count = 1

        def get_channeldata(self, c, p, t):
            return None

    with pytest.raises(TypeError, match="Half is not an image set: it lacks plane_count, time_point_count"):
        set_active_imageset(Half())


def test_remove_added_channel(imageset):
    first = imageset.add_channel("a", np.uint16)
    second = imageset.add_channel("b", np.uint32)
    imageset.set_channeldata(second, 0, 0, np.full((32, 32), 3, np.uint32))
    imageset.remove_channel(first)
    assert imageset.channel_count == 3 and imageset.channel_names == ["DAPI", "Other", "b"]
    assert imageset.get_channeldata(2, 0, 0)[0, 0] == 3  # the later channel moved down by one
    imageset.remove_channel(2)
    assert imageset.channel_count == 2 and imageset.channel_names == ["DAPI", "Other"]
    with pytest.raises(IndexError, match="channel=2: the image set has channels 0..1"):
        imageset.remove_channel(2)
    with pytest.raises(PermissionError, match=r"channel 1 \('Other'\) .*only channels made with add_channel"):
        imageset.remove_channel(1)


def test_tiff_input_channel_cannot_be_removed_and_scratch_goes(tmp_path):
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, np.ones((2, 16, 16), np.uint8), photometric="minisblack", metadata={"axes": "ZYX"})
    with TiffImageSet(path, scratch_dir=tmp_path) as ims:
        with pytest.raises(PermissionError, match="channel 0 .* comes from the input file in.tif, which is never"):
            ims.remove_channel(0)
        new = ims.add_channel("labels", np.uint16)
        scratch = [p for p in tmp_path.rglob("*.raw")]
        assert len(scratch) == 1
        ims.remove_channel(new)
        assert not scratch[0].exists() and ims.channel_count == 1


def test_memory_imageset_voxel_size_may_lack_z():
    ims = MemoryImageSet(blobs_tczyx(), voxel_size=(None, 0.5, 0.5))  # as TiffImageSet gives for a file without Z
    assert ims.voxel_size == (None, 0.5, 0.5)
    with pytest.raises(ValueError, match=r"voxel_size=\(1.0, 0.0, 0.5\): must be \(z, y, x\) in µm"):
        MemoryImageSet(blobs_tczyx(), voxel_size=(1.0, 0.0, 0.5))
