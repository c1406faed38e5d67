"""TIFF axes and metadata on reading, and the output file's form, atomicity and size handling."""

import numpy as np
import pytest
import tifffile
from conftest import sha256

from stardist_host import TiffImageSet
from stardist_host.io import tiff
from stardist_host.io.tiff import TiffError, TiffReader


def _ome_axes_names_sizes(path):
    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        pixels = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]["Pixels"]
        channels = pixels["Channel"] if isinstance(pixels["Channel"], list) else [pixels["Channel"]]
        return (
            series.axes, series.shape, series.dtype, tf.is_bigtiff,
            [c["Name"] for c in channels], (pixels["PhysicalSizeZ"], pixels["PhysicalSizeY"], pixels["PhysicalSizeX"]),
        )


@pytest.mark.parametrize(
    "axes, shape, expect",  # expect: T, C, Z of the image set
    [("YX", (20, 24), (1, 1, 1)), ("ZYX", (5, 20, 24), (1, 1, 5)), ("CYX", (3, 20, 24), (1, 3, 1)),
     ("TZYX", (2, 5, 20, 24), (2, 1, 5)), ("TZCYX", (2, 5, 3, 20, 24), (2, 3, 5))],
)
def test_imagej_axes(tmp_path, axes, shape, expect):
    data = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": axes})
    with TiffImageSet(path) as ims:
        assert (ims.time_point_count, ims.channel_count, ims.plane_count) == expect
        # the last plane of the last channel of the last time point is the file's last plane
        t, c, z = (n - 1 for n in expect)
        np.testing.assert_array_equal(ims.get_channeldata(c, z, t), data.reshape(-1, 20, 24)[-1])


def test_ome_metadata_and_order(tmp_path):
    data = np.random.default_rng(0).integers(0, 500, (2, 4, 3, 16, 16), dtype=np.uint16)  # T Z C Y X
    path = tmp_path / "in.ome.tif"
    tifffile.imwrite(path, data, ome=True, photometric="minisblack", metadata={
        "axes": "TZCYX", "Channel": {"Name": ["a", "b", "c"]}, "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25,
        "PhysicalSizeZ": 1.5})
    with TiffImageSet(path) as ims:
        assert ims.channel_names == ["a", "b", "c"]
        assert ims.voxel_size == pytest.approx((1.5, 0.25, 0.25))
        np.testing.assert_array_equal(ims.get_channeldata(2, 1, 1), data[1, 1, 2])


def test_plain_multipage_needs_axes(tmp_path):
    path = tmp_path / "pages.tif"
    for i in range(3):
        tifffile.imwrite(path, np.full((8, 8), i, np.uint8), append=True, metadata=None)
    with pytest.raises(TiffError, match=r"does not say what its dimension\(s\) I of shape \(3, 8, 8\) mean.*give the axes"):
        TiffReader(path)
    with TiffImageSet(path, axes="TYX") as ims:
        assert ims.time_point_count == 3 and ims.plane_count == 1 and ims.get_channeldata(0, 0, 2)[0, 0] == 2
    with pytest.raises(TiffError, match=r"axes='ZYXC' does not fit pages.tif: its data have 3 dimensions"):
        TiffReader(path, axes="ZYXC")


def test_compressed_file_planes_are_new_arrays(tmp_path):
    data = np.arange(4 * 16 * 16, dtype=np.uint16).reshape(4, 16, 16)
    path = tmp_path / "zip.tif"
    tifffile.imwrite(path, data, compression="zlib", photometric="minisblack", metadata={"axes": "ZYX"})
    reader = TiffReader(path)
    plane = reader.plane(0, 0, 3)
    np.testing.assert_array_equal(plane, data[3])
    plane[:] = 0  # the caller owns the array: the next read is unchanged
    np.testing.assert_array_equal(reader.plane(0, 0, 3), data[3])
    reader.close()


def test_pages_that_are_not_planes_are_read_whole(tmp_path):
    data = np.arange(4 * 16 * 16, dtype=np.uint16).reshape(4, 16, 16)
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, data, compression="zlib", planarconfig="separate", photometric="minisblack",
                     metadata={"axes": "ZYX"})  # one page holding 4 planar samples
    np.testing.assert_array_equal(TiffReader(path, axes="ZYX").plane(0, 0, 2), data[2])


def test_not_a_tiff_and_missing_file(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_text("hello")
    with pytest.raises(TiffError, match="bad.tif is not a TIFF file that can be read"):
        TiffReader(bad)
    with pytest.raises(TiffError, match="does not exist"):
        TiffReader(tmp_path / "none.tif")


def test_save_round_trip_keeps_channels_sizes_and_input(tmp_path):
    data = np.random.default_rng(1).integers(0, 4000, (2, 3, 2, 16, 16), dtype=np.uint16)  # T Z C Y X
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "TZCYX", "spacing": 2.0, "unit": "micron", "Labels": ["DAPI", "GFP"] * 6})
    before = sha256(path)
    out = tmp_path / "out.ome.tif"
    with TiffImageSet(path) as ims:
        new = ims.add_channel("Stardist_DAPI", np.uint16)
        ims.set_channeldata(new, 1, 1, np.full((16, 16), 5, np.uint16))
        ims.save(out)
    assert sha256(path) == before
    axes, shape, dtype, big, names, sizes = _ome_axes_names_sizes(out)
    assert (axes, shape, dtype, big) == ("TCZYX", (2, 3, 3, 16, 16), np.uint16, False)
    assert names == ["DAPI", "GFP", "Stardist_DAPI"]
    assert sizes == pytest.approx((2.0, 0.25, 0.25))
    back = tifffile.imread(out)
    np.testing.assert_array_equal(back[:, :2], data.transpose(0, 2, 1, 3, 4))
    assert back[1, 2, 1].min() == 5 and back[:, 2].sum() == 5 * 256
    # the output itself reads back through the image set with the same layout
    with TiffImageSet(out) as again:
        assert again.channel_names == names and again.voxel_size == pytest.approx((2.0, 0.25, 0.25))


def test_save_keeps_each_type_in_its_own_image(tmp_path):
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, np.full((1, 8, 8), 200, np.uint8), photometric="minisblack", metadata={"axes": "ZYX"})
    with TiffImageSet(path) as ims:
        new = ims.add_channel("labels", np.uint32)
        ims.set_channeldata(new, 0, 0, np.full((8, 8), 100_000, np.uint32))
        ims.save(tmp_path / "out.tif")
    with tifffile.TiffFile(tmp_path / "out.tif") as tf:
        assert [(s.dtype, s.shape) for s in tf.series] == [(np.uint8, (8, 8)), (np.uint32, (8, 8))]
        assert tf.series[0].asarray()[0, 0] == 200 and tf.series[1].asarray()[0, 0] == 100_000


def test_interrupted_write_leaves_no_file(tmp_path):
    def planes():
        yield np.zeros((8, 8), np.uint16)
        raise KeyboardInterrupt

    out = tmp_path / "out.tif"
    with pytest.raises(KeyboardInterrupt):
        tiff.write_ome_tiff(out, planes(), shape=(1, 1, 2, 8, 8), dtype=np.uint16, channel_names=["a"], voxel_size=None)
    assert list(tmp_path.iterdir()) == []


def test_large_output_is_bigtiff(tmp_path, monkeypatch):
    monkeypatch.setattr(tiff, "BIGTIFF_LIMIT", 100)  # as if 100 bytes were 4 GiB
    out = tiff.write_ome_tiff(tmp_path / "big.tif", [np.zeros((8, 8), np.uint16)], shape=(1, 1, 1, 8, 8),
                              dtype=np.uint16, channel_names=["a"], voxel_size=None)
    with tifffile.TiffFile(out) as tf:
        assert tf.is_bigtiff


def test_save_refuses_to_overwrite_input(tmp_path):
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, np.ones((8, 8), np.uint8))
    before = sha256(path)
    with TiffImageSet(path) as ims, pytest.raises(ValueError, match="is the input file"):
        ims.save(path)
    assert sha256(path) == before
