"""What readers see in the OME-TIFF a run writes: one image where an integer type holds every channel.

The oracles are the readers users open the file with: tifffile.imread (napari's built-in TIFF reader reads the
same first series), bioio's default scene, and the OME-XML's image count, which is what Bio-Formats (Fiji) offers
as series, read by ome-types.
"""

import bioio
import bioio_ome_tiff
import numpy as np
import ome_types
import pytest
import tifffile
from hypothesis import given
from hypothesis import strategies as st

from stardist_host.io.imagesets import TiffImageSet
from stardist_host.io.tiff import ome_layout

INTEGERS = ["uint8", "uint16", "uint32", "int8", "int16", "int32"]


def _segmented(tmp_path, data, label_dtype):
    """Input ``data`` (C, Z, Y, X) with a label channel of ``label_dtype`` added and saved; (output, labels, layout)."""
    path, out = tmp_path / "in.ome.tif", tmp_path / "out.ome.tif"
    tifffile.imwrite(path, data, ome=True, photometric="minisblack", metadata={
        "axes": "CZYX", "Channel": {"Name": ["DAPI", "Membrane"]}, "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
        "PhysicalSizeZ": 2.0})
    labels = np.zeros(data.shape[1:], label_dtype)
    labels[:, 2:6, 3:7] = np.iinfo(label_dtype).max  # the largest label the type holds: no value may wrap
    labels[1, 8:, 8:] = 1
    with TiffImageSet(path) as ims:
        new = ims.add_channel("Stardist_DAPI", label_dtype)
        for z in range(data.shape[1]):
            ims.set_channeldata(new, z, 0, labels[z])
        ims.save(out)
        layout = ims.saved_layout()
    return out, labels, layout


@pytest.mark.parametrize("input_dtype, label_dtype, written", [
    ("uint8", "uint16", "uint16"), ("uint8", "uint32", "uint32"), ("uint16", "uint32", "uint32"),
    ("int8", "uint16", "int32"), ("uint16", "uint16", "uint16")])
def test_integer_input_and_labels_are_one_image_that_every_reader_opens(tmp_path, input_dtype, label_dtype, written):
    info = np.iinfo(input_dtype)
    data = np.random.default_rng(0).integers(info.min, info.max, (2, 3, 12, 10), dtype=input_dtype, endpoint=True)
    data[0, 0, 0, :2] = info.min, info.max  # both ends of the input's range survive the wider type
    out, labels, layout = _segmented(tmp_path, data, label_dtype)
    assert layout.one_image and layout.images == ((np.dtype(written), (0, 1, 2)),)
    assert layout.locate(2) == (0, 2)

    first = tifffile.imread(out)  # the first image, as napari's built-in reader and most scripts take it
    assert first.shape == (3, 3, 12, 10) and first.dtype == written
    np.testing.assert_array_equal(first[:2], data)  # input values unchanged
    np.testing.assert_array_equal(first[2], labels)

    scene = bioio.BioImage(out)  # as a user opens it: the plugin bioio picks, its default scene
    assert isinstance(scene.reader, bioio_ome_tiff.Reader) and scene.scenes == (scene.current_scene,)
    assert scene.dims.C == 3
    assert scene.channel_names == ["DAPI", "Membrane", "Stardist_DAPI"]
    np.testing.assert_array_equal(scene.get_image_data("CZYX", T=0), first)
    assert tuple(scene.physical_pixel_sizes) == pytest.approx((2.0, 0.5, 0.5))

    ome = ome_types.from_xml(tifffile.TiffFile(out).ome_metadata)
    assert len(ome.images) == 1  # Bio-Formats' series count: Fiji opens it without asking which
    pixels = ome.images[0].pixels
    assert (pixels.type.value, pixels.size_c) == (written, 3)
    assert [c.name for c in pixels.channels] == ["DAPI", "Membrane", "Stardist_DAPI"]

    with TiffImageSet(out) as back:  # and our own reader gives the same channels back
        assert back.channel_names == ["DAPI", "Membrane", "Stardist_DAPI"]
        np.testing.assert_array_equal(back.get_channeldata(2, 0, 0), labels[0])


def test_float_input_keeps_two_images_and_says_so(tmp_path):
    data = np.random.default_rng(1).normal(0, 1, (2, 3, 12, 10)).astype(np.float32)
    out, labels, layout = _segmented(tmp_path, data, "uint16")
    assert not layout.one_image and layout.locate(2) == (1, 0)
    assert layout.images == ((np.dtype("float32"), (0, 1)), (np.dtype("uint16"), (2,)))
    assert layout.describe() == (
        "2 OME images (series) as no integer type holds every channel exactly (image 0: channels 0, 1 float32, "
        "image 1: channel 2 uint16); readers that open only the first image show only channel(s) 0, 1")

    ome = ome_types.from_xml(tifffile.TiffFile(out).ome_metadata)
    assert [(i.pixels.type.value, i.pixels.size_c) for i in ome.images] == [("float", 2), ("uint16", 1)]
    np.testing.assert_array_equal(tifffile.imread(out), data)  # exactly, no rounding
    np.testing.assert_array_equal(tifffile.imread(out, series=1), labels)


def test_labels_only_of_two_types_are_one_image_of_the_wider(tmp_path):
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, np.full((2, 8, 8), 0.5, np.float32), photometric="minisblack", metadata={"axes": "ZYX"})
    with TiffImageSet(path) as ims:
        nuclei, tracks = ims.add_channel("nuclei", np.uint16), ims.add_channel("tracks", np.uint32)
        ims.set_channeldata(nuclei, 1, 0, np.full((8, 8), 65535, np.uint16))
        ims.set_channeldata(tracks, 1, 0, np.full((8, 8), 70000, np.uint32))
        assert not ims.saved_layout().one_image and ims.saved_layout(labels_only=True).one_image
        ims.save(tmp_path / "labels.ome.tif", labels_only=True)
    back = tifffile.imread(tmp_path / "labels.ome.tif")
    assert back.dtype == np.uint32 and back.shape == (2, 2, 8, 8)
    assert back[0, 1].min() == 65535 and back[1, 1].min() == 70000 and not back[:, 0].any()


def test_layout_describes_a_widened_image():
    assert ome_layout(["uint8", "uint8", "uint16"]).describe() == (
        "one OME image, uint16 (uint8 channels widened, values unchanged)")
    assert ome_layout(["uint16", "uint16"]).describe() == "one OME image, uint16"


@given(st.lists(st.sampled_from(INTEGERS + ["float32", "float64"]), min_size=1, max_size=5))
def test_one_image_exactly_where_an_integer_type_holds_every_channel(dtypes):
    layout = ome_layout(dtypes)
    assert [c for _, channels in layout.images for c in channels] == list(range(len(dtypes)))  # order kept
    if all(np.dtype(d).kind in "ui" for d in dtypes):
        (written, _), = layout.images

        def holds(wide):
            return all(np.iinfo(wide).min <= np.iinfo(d).min and np.iinfo(d).max <= np.iinfo(wide).max for d in dtypes)

        assert holds(written)
        assert not any(holds(t) for t in INTEGERS if np.dtype(t).itemsize < written.itemsize)  # and the smallest
    else:
        for dtype, channels in layout.images:  # each image holds its channels exactly: floats in their own type,
            for c in channels:                 # consecutive integers (input, labels) in one that holds them all
                d = np.dtype(dtypes[c])
                assert d == dtype if d.kind == "f" else (dtype.kind in "ui" and np.iinfo(dtype).min <= np.iinfo(d).min
                                                         and np.iinfo(d).max <= np.iinfo(dtype).max)
        for (first, _), (second, _) in zip(layout.images, layout.images[1:]):  # and as few images as that allows
            assert first != second and np.result_type(first, second).kind not in "ui"
