"""The image-set contract as a pytest class that any implementation subclasses (as zarr-python does for stores).

A host adapter's author points it at the host's own image set::

    import pytest
    from stardist_host.testing.conformance import ImageSetConformance

    class TestMyHost(ImageSetConformance):
        get_returns = "copy"  # or "view", or "either" where the host does not say

        @pytest.fixture
        def make_imageset(self, tmp_path):
            made = []

            def make(data, channel_names, voxel_size):
                imageset = my_host.open_array(data, channel_names, voxel_size)  # data: (T, C, Z, Y, X)
                made.append(imageset)
                return imageset

            yield make
            for imageset in made:
                imageset.close()

and runs ``pytest``.  The tests check what segmentation and the analyses rely
on: the shape properties, channel names and voxel size, the get/set round
trip of a plane in every channel, that ``add_channel`` accepts uint16 and
uint32 (label channels) and keeps their full range, the index errors, whether
``get_channeldata`` hands out a copy or a view, and ``remove_channel`` where
the image set offers it.

This module imports pytest; nothing in the package imports it.
"""

from __future__ import annotations

import numpy as np
import pytest

from ..host import ImageSet, check_imageset

__all__ = ["REFERENCE_NAMES", "REFERENCE_VOXEL_SIZE", "ImageSetConformance", "reference_data"]

#: Channel names and (z, y, x) voxel size in µm that the tests give ``make_imageset``.
REFERENCE_NAMES = ("DAPI", "Other")
REFERENCE_VOXEL_SIZE = (2.0, 0.5, 0.5)


def reference_data(t: int = 3, c: int = 2, z: int = 4, size: int = 32) -> np.ndarray:
    """A uint16 (T, C, Z, Y, X) stack: three bright squares (1000) in every plane of channel 0, channel 1 all 7."""
    data = np.zeros((t, c, z, size, size), np.uint16)
    for i in range(3):
        data[:, 0, :, 4 + 9 * i : 10 + 9 * i, 4:10] = 1000
    data[:, 1] = 7
    return data


class ImageSetConformance:
    """Tests that every image set must pass; subclass it and provide the fixture ``make_imageset``.

    ``make_imageset(data, channel_names, voxel_size)`` returns an image set
    holding ``data`` (uint16, axes T, C, Z, Y, X) with those channel names and
    (z, y, x) voxel size in micrometres; the fixture closes what it made.

    Attributes
    ----------
    get_returns
        What ``get_channeldata`` hands out: ``"copy"`` (a new array each call;
        changing it changes nothing), ``"view"`` (the image set's own memory;
        callers must not change it), or ``"either"`` (the implementation does
        not say; then callers must treat it as a view they may not change).
    label_dtypes
        The types that ``add_channel`` must accept, each with its full range.
    """

    get_returns: str = "either"
    label_dtypes: tuple = (np.uint16, np.uint32)

    @pytest.fixture
    def make_imageset(self):
        raise NotImplementedError("a subclass of ImageSetConformance provides the fixture make_imageset")

    @pytest.fixture
    def imageset(self, make_imageset) -> ImageSet:
        return make_imageset(reference_data(), list(REFERENCE_NAMES), REFERENCE_VOXEL_SIZE)

    def test_is_an_image_set(self, imageset):
        assert isinstance(imageset, ImageSet)
        assert check_imageset(imageset) is imageset

    def test_shape_properties(self, imageset):
        assert (imageset.channel_count, imageset.plane_count, imageset.time_point_count) == (2, 4, 3)
        assert tuple(imageset.plane_shape) == (32, 32)
        assert list(imageset.channel_names) == list(REFERENCE_NAMES)
        assert imageset.voxel_size == pytest.approx(REFERENCE_VOXEL_SIZE)
        assert 0 <= imageset.current_time_point < 3

    def test_get_returns_the_data(self, imageset):
        data = reference_data()
        for t, c, z in np.ndindex(3, 2, 4):
            plane = imageset.get_channeldata(c, z, t)
            assert plane.shape == (32, 32) and plane.dtype == np.uint16
            np.testing.assert_array_equal(plane, data[t, c, z], err_msg=f"channel {c}, plane {z}, time point {t}")

    def test_add_set_get_round_trip(self, imageset):
        new = imageset.add_channel("labels", np.uint16)
        assert new == 2 and imageset.channel_count == 3 and imageset.channel_names[-1] == "labels"
        assert not imageset.get_channeldata(new, 3, 2).any()  # a new channel starts at zero
        imageset.set_channeldata(new, 3, 2, np.full((32, 32), 9, np.int32))
        assert imageset.get_channeldata(new, 3, 2)[0, 0] == 9
        assert not imageset.get_channeldata(new, 2, 2).any()  # other planes untouched
        assert not imageset.get_channeldata(new, 3, 1).any()
        np.testing.assert_array_equal(imageset.get_channeldata(0, 3, 2), reference_data()[2, 0, 3])

    @pytest.mark.parametrize("index", [0, 1])
    def test_add_channel_accepts_label_types(self, imageset, index):
        dtype = np.dtype(self.label_dtypes[index])
        new = imageset.add_channel(f"labels {dtype}", dtype)
        plane = np.arange(32 * 32, dtype=np.int64).reshape(32, 32) % 5
        plane[0, 0] = np.iinfo(dtype).max  # the whole range, so that a narrower type would show
        imageset.set_channeldata(new, 1, 0, plane.astype(dtype))
        back = imageset.get_channeldata(new, 1, 0)
        assert np.issubdtype(back.dtype, np.integer)
        np.testing.assert_array_equal(back.astype(np.int64), plane)

    @pytest.mark.parametrize("args, name, allowed", [
        ((5, 0, 0), "channel=5", "channels 0..1"),
        ((0, 4, 0), "plane=4", "planes 0..3"),
        ((0, 0, -1), "time_point=-1", "time.points 0..2"),
        ((0, 0, 3), "time_point=3", "time.points 0..2"),
    ])
    def test_index_errors_name_the_index_and_the_range(self, imageset, args, name, allowed):
        with pytest.raises(IndexError, match=rf"{name}\b.*{allowed}"):
            imageset.get_channeldata(*args)

    def test_set_index_errors(self, imageset):
        new = imageset.add_channel("labels", np.uint16)
        zeros = np.zeros((32, 32), np.uint16)
        for args in ((new + 1, 0, 0), (new, 4, 0), (new, 0, 3), (new, 0, -1)):
            with pytest.raises(IndexError):
                imageset.set_channeldata(*args, zeros)

    def test_set_refuses_a_plane_of_another_shape(self, imageset):
        new = imageset.add_channel("labels", np.uint16)
        with pytest.raises(ValueError, match=r"\(8, 8\)"):
            imageset.set_channeldata(new, 0, 0, np.zeros((8, 8), np.uint16))
        assert not imageset.get_channeldata(new, 0, 0).any()

    def test_set_refuses_values_the_channel_cannot_hold(self, imageset):
        new = imageset.add_channel("labels", np.uint16)
        with pytest.raises((OverflowError, ValueError), match="70000"):
            imageset.set_channeldata(new, 0, 0, np.full((32, 32), 70000, np.uint32))
        assert not imageset.get_channeldata(new, 0, 0).any()

    def test_copy_or_view_as_stated(self, imageset):
        assert self.get_returns in ("copy", "view", "either"), f"get_returns={self.get_returns!r}"
        new = imageset.add_channel("labels", np.uint16)
        imageset.set_channeldata(new, 0, 0, np.full((32, 32), 4, np.uint16))
        plane = imageset.get_channeldata(new, 0, 0)
        if self.get_returns == "either":
            pytest.skip("the image set does not say whether get_channeldata returns a copy or a view")
        plane[0, 0] = 5
        expected = 5 if self.get_returns == "view" else 4
        assert imageset.get_channeldata(new, 0, 0)[0, 0] == expected

    def test_remove_channel_if_offered(self, imageset):
        if not hasattr(imageset, "remove_channel"):
            pytest.skip("the image set offers no remove_channel (it is optional)")
        first = imageset.add_channel("a", np.uint16)
        second = imageset.add_channel("b", np.uint32)
        imageset.set_channeldata(second, 0, 0, np.full((32, 32), 3, np.uint32))
        imageset.remove_channel(second)
        assert imageset.channel_count == 3 and list(imageset.channel_names) == [*REFERENCE_NAMES, "a"]
        imageset.remove_channel(first)
        assert imageset.channel_count == 2 and list(imageset.channel_names) == list(REFERENCE_NAMES)
        np.testing.assert_array_equal(imageset.get_channeldata(1, 0, 0), reference_data()[0, 1, 0])
        again = imageset.add_channel("c", np.uint16)
        assert again == 2 and not imageset.get_channeldata(again, 0, 0).any()  # no leftovers of "a"
        with pytest.raises((ValueError, IndexError, PermissionError)):
            imageset.remove_channel(0)  # an input channel
        assert imageset.channel_count == 3
