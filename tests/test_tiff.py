"""TIFF axes and metadata on reading, and the output file's form, atomicity and size handling."""

import os

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
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"II*\x00" + bytes(12))  # a TIFF header whose first page offset is 0: no pages at all
    with pytest.raises(TiffError, match=r"^empty.tif holds no image data$"):
        TiffReader(empty)


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


def test_save_widens_uint8_input_to_hold_uint32_labels_in_one_image(tmp_path):
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, np.full((1, 8, 8), 200, np.uint8), photometric="minisblack", metadata={"axes": "ZYX"})
    with TiffImageSet(path) as ims:
        new = ims.add_channel("labels", np.uint32)
        ims.set_channeldata(new, 0, 0, np.full((8, 8), 100_000, np.uint32))
        ims.save(tmp_path / "out.tif")
    with tifffile.TiffFile(tmp_path / "out.tif") as tf:
        assert [(s.dtype, s.shape) for s in tf.series] == [(np.uint32, (2, 8, 8))]
        assert tf.series[0].asarray()[0, 0, 0] == 200 and tf.series[0].asarray()[1, 0, 0] == 100_000


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


# --- damaged input: refused when opened, one line naming the file -----------------------------------------------

def _first_part(path, out, fraction=0.5):
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


@pytest.mark.parametrize("kwargs, fraction, message", [
    ({"imagej": True, "metadata": {"axes": "TZCYX"}}, 0.5,
     r"half.tif is truncated \(8237 bytes\): the last plane that can be read whole is t=1, z=0, c=2 \(plane 14 of 24\)"),
    ({"imagej": True, "metadata": {"axes": "TZCYX"}, "truncate": True}, 0.9,
     r"half.tif is truncated \(11390 bytes\): the last plane that can be read whole is t=1, z=2, c=0 \(plane 20 of 24\)"),
    ({"photometric": "minisblack", "metadata": {"axes": "TZCYX"}, "compression": "zlib"}, 0.99,
     (r"half.tif is truncated \(12641 bytes, its data need more\): the last plane that can be read whole is "
      r"t=1, z=2, c=2 \(page 22 of 24\)")),
    ({"ome": True, "photometric": "minisblack", "metadata": {"axes": "TZCYX"}}, 0.5,
     (r"half.tif is truncated or damaged \(.*invalid value offset.*\); only 1 of its pages can be found, "
      r"the last readable plane is page 0")),
])
def test_truncated_file_is_refused_when_opened(tmp_path, kwargs, fraction, message):
    path = tmp_path / "whole.tif"
    tifffile.imwrite(path, np.arange(2 * 3 * 4 * 16 * 16, dtype=np.uint16).reshape(2, 3, 4, 16, 16), **kwargs)
    half = _first_part(path, tmp_path / "half.tif", fraction)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(TiffError, match=message) as err:
        TiffImageSet(half, scratch_dir=scratch)
    assert "\n" not in str(err.value) and list(scratch.iterdir()) == []


def test_empty_non_tiff_and_folder_are_refused(tmp_path):
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(TiffError, match=r"^empty.tif is empty \(0 bytes\); it is not a TIFF file"):
        TiffReader(tmp_path / "empty.tif")
    (tmp_path / "notes.tif").write_text("not an image\n" * 10)
    with pytest.raises(TiffError, match=r"^notes.tif is not a TIFF file that can be read: "):
        TiffReader(tmp_path / "notes.tif")
    (tmp_path / "folder.tif").mkdir()
    with pytest.raises(TiffError, match=r"^input '.*folder.tif' is a folder, not a file; give a TIFF file inside it$"):
        TiffReader(tmp_path / "folder.tif")


def test_damaged_tiff_header_is_called_damaged(tmp_path):
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, np.ones((2, 3, 4, 16, 16), np.uint16), ome=True, photometric="minisblack",
                     metadata={"axes": "TZCYX"})
    _first_part(path, tmp_path / "cut.tif", 0.9)  # tifffile raises on this one rather than logging
    with pytest.raises(TiffError, match=r"^cut.tif is a damaged or truncated TIFF file \(corrupted IFD structure\); "
                                        r"copy the file again$"):
        TiffReader(tmp_path / "cut.tif")


# --- physical sizes ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("unit, factor", [
    ("\u00b5m", 1.0), ("um", 1.0), ("\u03bcm", 1.0), ("nm", 1e-3), ("\u00c5", 1e-4), ("mm", 1e3), ("cm", 1e4),
    ("m", 1e6)])
def test_ome_units(tmp_path, unit, factor):
    path = tmp_path / "in.ome.tif"
    tifffile.imwrite(path, np.zeros((2, 8, 8), np.uint8), ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25, "PhysicalSizeZ": 3.0,
        "PhysicalSizeXUnit": unit, "PhysicalSizeYUnit": unit, "PhysicalSizeZUnit": unit})
    with TiffImageSet(path) as ims:
        assert ims.voxel_size == pytest.approx((3.0 * factor, 0.25 * factor, 0.5 * factor))


def test_unknown_ome_unit_warns_and_size_is_unknown(tmp_path, caplog):
    path = tmp_path / "in.ome.tif"
    tifffile.imwrite(path, np.zeros((2, 8, 8), np.uint8), ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 3.0, "PhysicalSizeZUnit": "furlong"})
    with TiffImageSet(path) as ims:
        assert ims.voxel_size == (None, 0.5, 0.5)
    assert "unit 'furlong' is not a length unit known here" in caplog.text


def test_unknown_z_spacing_stays_unknown(tmp_path):
    ome, ij = tmp_path / "in.ome.tif", tmp_path / "ij.tif"
    tifffile.imwrite(ome, np.zeros((3, 8, 8), np.uint8), ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    tifffile.imwrite(ij, np.zeros((3, 8, 8), np.uint8), imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "unit": "um"})
    for path in (ome, ij):
        with TiffImageSet(path) as ims:
            assert ims.voxel_size == (None, 0.5, 0.5)


def test_imagej_units(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, np.zeros((3, 8, 8), np.uint8), imagej=True, resolution=(0.5, 0.25),
                     metadata={"axes": "ZYX", "unit": "nm", "spacing": 300.0})
    with TiffImageSet(path) as ims:
        assert ims.voxel_size == pytest.approx((0.3, 4e-3, 2e-3))
    tifffile.imwrite(path, np.zeros((3, 8, 8), np.uint8), imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "unit": "\\u00B5m", "spacing": 1.5})
    with TiffImageSet(path) as ims:
        assert ims.voxel_size == pytest.approx((1.5, 0.5, 0.5))


def test_unknown_z_is_not_written(tmp_path):
    out = tiff.write_ome_tiff(tmp_path / "o.ome.tif", [np.zeros((8, 8), np.uint16)] * 2, shape=(1, 1, 2, 8, 8),
                              dtype=np.uint16, channel_names=["a"], voxel_size=(None, 0.5, 0.25))
    with tifffile.TiffFile(out) as tf:
        assert "PhysicalSizeZ" not in tf.ome_metadata and 'PhysicalSizeX="0.25"' in tf.ome_metadata
    with TiffImageSet(out) as ims:
        assert ims.voxel_size == (None, 0.5, 0.25)


# --- output fidelity ---------------------------------------------------------------------------------------------

def test_float_input_and_integer_labels_keep_their_types(tmp_path):
    data = np.random.default_rng(2).normal(0, 1, (2, 3, 16, 16)).astype(np.float32)  # Z C Y X
    path = tmp_path / "in.ome.tif"
    tifffile.imwrite(path, data, ome=True, photometric="minisblack", metadata={
        "axes": "ZCYX", "Channel": {"Name": ["a", "b", "c"]}, "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
        "PhysicalSizeZ": 2.0})
    out = tmp_path / "out.ome.tif"
    with TiffImageSet(path) as ims:
        new = ims.add_channel("labels", np.uint16)
        ims.set_channeldata(new, 1, 0, np.arange(256, dtype=np.uint16).reshape(16, 16) + 60000)
        ims.save(out)
    with tifffile.TiffFile(out) as tf:
        assert [(s.axes, s.shape, s.dtype) for s in tf.series] == [
            ("CZYX", (3, 2, 16, 16), np.float32), ("ZYX", (2, 16, 16), np.uint16)]
    with TiffImageSet(out) as back:
        assert back.channel_names == ["a", "b", "c", "labels"]
        assert back.voxel_size == pytest.approx((2.0, 0.5, 0.5))
        for c, z in np.ndindex(3, 2):
            plane = back.get_channeldata(c, z, 0)
            assert plane.dtype == np.float32 and np.array_equal(plane, data[z, c])  # exactly, no rounding
        labels = back.get_channeldata(3, 1, 0)
        assert labels.dtype == np.uint16 and labels.max() == 60255 and not back.get_channeldata(3, 0, 0).any()


def test_uint16_input_with_uint16_labels_is_one_uint16_image(tmp_path):
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, np.full((1024, 1024), 4000, np.uint16), photometric="minisblack")
    out = tmp_path / "out.ome.tif"
    with TiffImageSet(path) as ims:
        new = ims.add_channel("labels", np.uint16)
        ims.set_channeldata(new, 0, 0, np.full((1024, 1024), 65535, np.uint16))
        ims.save(out)
    with tifffile.TiffFile(out) as tf:
        assert [(s.axes, s.shape, s.dtype) for s in tf.series] == [("CYX", (2, 1024, 1024), np.uint16)]
        assert out.stat().st_size < 2 * 1024 * 1024 * 2 + 65536  # two uint16 planes, not uint32


def test_labels_only_writes_the_added_channels_with_the_same_metadata(tmp_path):
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, np.full((2, 3, 8, 8), 9, np.float32), imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "TZYX", "spacing": 2.0, "unit": "micron"})
    out = tmp_path / "labels.ome.tif"
    with TiffImageSet(path) as ims:
        with pytest.raises(ValueError, match="labels_only=True, but no channel was added to in.tif"):
            ims.save(out, labels_only=True)
        assert not out.exists()
        first, second = ims.add_channel("nuclei", np.uint16), ims.add_channel("tracks", np.uint32)
        ims.set_channeldata(first, 2, 1, np.full((8, 8), 3, np.uint16))
        ims.set_channeldata(second, 2, 1, np.full((8, 8), 70000, np.uint32))
        ims.save(out, labels_only=True)
    with tifffile.TiffFile(out) as tf:  # one image in the type that holds both
        assert [(s.shape, s.dtype) for s in tf.series] == [((2, 2, 3, 8, 8), np.uint32)]
    with TiffImageSet(out) as back:
        assert back.channel_names == ["nuclei", "tracks"] and back.voxel_size == pytest.approx((2.0, 0.25, 0.25))
        assert back.get_channeldata(0, 2, 1)[0, 0] == 3 and back.get_channeldata(1, 2, 1)[0, 0] == 70000
        assert back.channel_dtype(1) == np.uint32


@pytest.mark.parametrize("value, message", [
    (1.7, (r"channel 1, plane 0, time point 0: value 1.7 is not a whole number, but the channel's type uint16 "
           r"holds whole numbers only; round the data first")),
    (np.nan, r"channel 1, plane 0, time point 0: NaN or infinite values cannot be stored in the channel's type uint16")])
def test_floats_are_not_truncated_into_integer_channels(tmp_path, value, message):
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, np.ones((8, 8), np.uint8))
    with TiffImageSet(path) as ims:
        new = ims.add_channel("labels", np.uint16)
        data = np.full((8, 8), 2.0)
        data[3, 3] = value
        with pytest.raises(ValueError, match=message):
            ims.set_channeldata(new, 0, 0, data)
        assert not ims.get_channeldata(new, 0, 0).any()  # nothing written
        ims.set_channeldata(new, 0, 0, np.full((8, 8), 2.0))  # whole-number floats are fine
        assert ims.get_channeldata(new, 0, 0)[0, 0] == 2


def test_save_replaces_an_existing_output_atomically(tmp_path):
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, np.ones((8, 8), np.uint8))
    out = tmp_path / "out.ome.tif"
    out.write_bytes(b"old")
    with TiffImageSet(path) as ims:
        ims.save(out)
    assert tifffile.imread(out).tolist() == np.ones((8, 8), np.uint8).tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.ome.tif"]  # no partial file left


def test_scratch_folder_is_recognisable_and_removed(tmp_path):
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, np.ones((8, 8), np.uint8))
    with TiffImageSet(path, scratch_dir=tmp_path) as ims:
        ims.add_channel("labels", np.uint16)
        scratch = [p for p in tmp_path.iterdir() if p.is_dir()]
        assert len(scratch) == 1 and scratch[0].name.startswith(f".stardist-host-{os.getpid()}-")
    assert not scratch[0].exists()
