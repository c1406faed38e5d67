"""BioioImageSet on OME-TIFF files written by tifffile and read through bioio-ome-tiff (tifffile.imread is the oracle).

CZI, LIF and ND2 files cannot be made offline; the reading path (scenes,
dimensions, the lazy dask array) is the same bioio API for every plugin.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from stardist_host import host
from stardist_host.errors import IndexRangeError, InputFileError, StardistHostError

bioio = pytest.importorskip("bioio")
bioio_ome_tiff = pytest.importorskip("bioio_ome_tiff")

from stardist_host.errors import MissingExtraError
from stardist_host.io.bioio_reader import BioioImageSet
from stardist_host.testing.conformance import ImageSetConformance


def tczyx() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 4000, (2, 3, 4, 10, 12), dtype=np.uint16)


@pytest.fixture
def two_scenes(tmp_path) -> Path:
    """An OME-TIFF with two images: TCZYX with names and voxel size, and a 2D TYX one."""
    path = tmp_path / "two.ome.tif"
    data = tczyx()
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(data, metadata={"axes": "TCZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0,
                                  "Channel": {"Name": ["DAPI", "GFP", "RFP"]}})
        tif.write(data[:, 0, 0], metadata={"axes": "TYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_several_scenes_and_none_chosen_lists_them(two_scenes):
    with pytest.raises(InputFileError, match=r"two.ome.tif' holds 2 scenes \(series\): 0 \('Image:0'\), "
                                             r"1 \('Image:1'\); choose one with scene="):
        BioioImageSet(two_scenes)
    with pytest.raises(InputFileError, match=r"scene=5: '.*two.ome.tif' holds the scenes 0 \('Image:0'\), 1"):
        BioioImageSet(two_scenes, scene=5)


def test_every_plane_names_and_voxel_size(two_scenes):
    oracle = tifffile.imread(two_scenes, series=0)
    with BioioImageSet(two_scenes, scene=0, reader=bioio_ome_tiff.Reader) as ims:
        assert host.check_imageset(ims) is ims and isinstance(ims, host.ImageSet)
        assert (ims.channel_count, ims.plane_count, ims.time_point_count, ims.plane_shape) == (3, 4, 2, (10, 12))
        assert ims.channel_names == ["DAPI", "GFP", "RFP"]
        assert ims.voxel_size == pytest.approx((2.0, 0.5, 0.5))
        for t in range(2):
            for c in range(3):
                for z in range(4):
                    plane = ims.get_channeldata(c, z, t)
                    assert plane.dtype == np.uint16 and plane.shape == (10, 12)
                    np.testing.assert_array_equal(plane, oracle[t, c, z])


def test_scene_by_name_and_unknown_z_spacing(two_scenes):
    with BioioImageSet(two_scenes, scene="Image:1") as ims:
        assert ims.scene == 1 and ims.scenes == ["Image:0", "Image:1"]
        assert (ims.channel_count, ims.plane_count, ims.time_point_count) == (1, 1, 2)
        assert ims.voxel_size == (None, 0.25, 0.25)  # a 2D image: no Z spacing, none invented
        np.testing.assert_array_equal(ims.get_channeldata(0, 0, 1), tifffile.imread(two_scenes, series=1)[1])


def test_planes_read_lazily(two_scenes, monkeypatch):
    """Reading every plane never asks bioio for the whole image."""

    def whole(*args, **kwargs):
        raise AssertionError("the whole image was loaded")

    monkeypatch.setattr(bioio.BioImage, "get_image_data", whole)
    monkeypatch.setattr(bioio.BioImage, "data", property(whole))
    monkeypatch.setattr(bioio.BioImage, "xarray_data", property(whole))
    computed = []
    import dask.array as da

    original = da.Array.compute

    def counting(self, **kwargs):
        computed.append(self.shape)
        return original(self, **kwargs)

    monkeypatch.setattr(da.Array, "compute", counting)
    with BioioImageSet(two_scenes, scene=0) as ims:
        for z in range(4):
            ims.get_channeldata(1, z, 1)
    # our reads and bioio's own reads inside them: one (Y, X) plane each, never a Z stack
    assert len(computed) >= 4 and set(computed) == {(10, 12)}


def test_rgb_samples_are_channels(tmp_path):
    rgb = np.random.default_rng(4).integers(0, 255, (2, 10, 12, 3), dtype=np.uint8)
    path = tmp_path / "rgb.ome.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", ome=True, metadata={"axes": "ZYXS"})
    with BioioImageSet(path) as ims:
        assert ims.channel_count == 3 and [n[-3:] for n in ims.channel_names] == ["(R)", "(G)", "(B)"]
        np.testing.assert_array_equal(ims.get_channeldata(2, 1, 0), rgb[1, ..., 2])


def test_added_channels_in_scratch_input_untouched(two_scenes, tmp_path):
    before = sha(two_scenes)
    scratch_parent = tmp_path / "scratch"
    scratch_parent.mkdir()
    ims = BioioImageSet(two_scenes, scene=0, scratch_dir=scratch_parent)
    new = ims.add_channel("nuclei", np.uint32)
    assert new == 3 and ims.channel_names[-1] == "nuclei"
    assert not ims.get_channeldata(new, 3, 1).any()
    plane = np.arange(120, dtype=np.uint32).reshape(10, 12) + 70000
    ims.set_channeldata(new, 3, 1, plane)
    np.testing.assert_array_equal(ims.get_channeldata(new, 3, 1), plane)
    assert not ims.get_channeldata(new, 2, 1).any()
    (folder,) = scratch_parent.iterdir()
    assert folder.name.startswith(f".stardist-host-{os.getpid()}-")  # what remove_stale recognises
    second = ims.add_channel("cells", np.uint16)
    ims.set_channeldata(second, 0, 0, np.full((10, 12), 5, np.uint16))
    assert sorted(p.name for p in folder.iterdir()) == ["channel1.raw", "channel2.raw"]
    ims.remove_channel(new)  # the channels after it move down
    assert ims.channel_names[3:] == ["cells"] and ims.get_channeldata(3, 0, 0)[0, 0] == 5
    assert sorted(p.name for p in folder.iterdir()) == ["channel2.raw"]
    third = ims.add_channel("again", np.uint8)
    assert third == 4 and not ims.get_channeldata(third, 0, 0).any()
    ims.remove_channel(third)
    assert ims.channel_count == 4 and sorted(p.name for p in folder.iterdir()) == ["channel2.raw"]
    with pytest.raises(PermissionError, match="never modified"):
        ims.set_channeldata(0, 0, 0, np.zeros((10, 12), np.uint16))
    ims.close()
    assert list(scratch_parent.iterdir()) == [] and sha(two_scenes) == before


def test_index_and_shape_errors(two_scenes):
    with BioioImageSet(two_scenes, scene=0) as ims:
        with pytest.raises(IndexRangeError, match=r"plane=4: the image set has planes 0..3"):
            ims.get_channeldata(0, 4, 0)
        new = ims.add_channel("nuclei", np.uint16)
        with pytest.raises(ValueError, match=r"plane of shape \(8, 8\) given, but the image set's planes are"):
            ims.set_channeldata(new, 0, 0, np.zeros((8, 8), np.uint16))
        with pytest.raises(PermissionError, match=r"channel 0 \('DAPI'\) comes from the input file two.ome.tif, which "
                                                  r"is never modified; only channels made with add_channel can be removed"):
            ims.remove_channel(0)
        with pytest.raises(IndexRangeError, match=r"channel=4: the image set has channels 0..3"):
            ims.remove_channel(4)


def test_unreadable_files(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        BioioImageSet(tmp_path / "missing.czi")
    odd = tmp_path / "scan.xyz123"
    odd.write_bytes(b"not an image" * 10)
    with pytest.raises(InputFileError, match=r"scan.xyz123': no installed bioio plugin reads this file; install the "
                                             r"bioio plugin for this format"):
        BioioImageSet(odd)


def test_missing_bioio_names_the_extra(two_scenes, monkeypatch):
    monkeypatch.setitem(sys.modules, "bioio", None)
    with pytest.raises(MissingExtraError, match=r'pip install "stardist-host\[bioio\]"') as info:
        BioioImageSet(two_scenes, scene=0)
    assert isinstance(info.value, ImportError) and isinstance(info.value, StardistHostError)


class TestBioioConformance(ImageSetConformance):
    """The image-set contract on an OME-TIFF read through bioio-ome-tiff."""

    get_returns = "copy"

    @pytest.fixture
    def make_imageset(self, tmp_path):
        made = []

        def make(data, channel_names, voxel_size):
            path = tmp_path / f"ref{len(made)}.ome.tif"
            z, y, x = voxel_size
            tifffile.imwrite(path, data, ome=True, metadata={
                "axes": "TCZYX", "PhysicalSizeZ": z, "PhysicalSizeY": y, "PhysicalSizeX": x,
                "Channel": {"Name": list(channel_names)}})
            made.append(BioioImageSet(path, reader=bioio_ome_tiff.Reader))
            return made[-1]

        yield make
        for imageset in made:
            imageset.close()
