"""Every plane the project reads from a TIFF equals ``tifffile.imread`` of the same file, exactly.

The files cover what microscopes and Fiji write: both byte orders, the common
compressions, tiles and strips, BigTIFF, ImageJ hyperstacks (also ImageJ's
one-directory layout of files over 4 GiB), OME-TIFF with one or several
images, plain multi-page files with the axes given, integer and float types
and RGB(A) colour, whose samples become channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import tifffile

from stardist_host import TiffImageSet
from stardist_host.io.tiff import TiffError


@dataclass
class Case:
    id: str
    axes: str  # of the data as written, S for colour samples
    shape: tuple
    dtype: str = "uint16"
    write: dict = field(default_factory=dict)
    read: dict = field(default_factory=dict)
    pages: bool = False  # written one page at a time, no metadata (plain multi-page)


def _data(case: Case, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype = np.dtype(case.dtype)
    if dtype.kind == "f":
        return (rng.normal(0, 1000, case.shape) * np.array([1, -1e-3])[rng.integers(0, 2, case.shape)]).astype(dtype)
    info = np.iinfo(dtype)
    # the whole range of the type, so that a swapped byte order or a sign error shows
    return rng.integers(info.min, info.max, case.shape, dtype=dtype, endpoint=True)


def _write(path, case: Case, data: np.ndarray) -> None:
    if case.pages:
        for plane in data.reshape(-1, *data.shape[-2:]):
            tifffile.imwrite(path, plane, append=True, metadata=None, **case.write)
        return
    kwargs = dict(case.write)
    if not kwargs.get("imagej") and "photometric" not in kwargs:
        kwargs["photometric"] = "minisblack"
    if not kwargs.get("imagej"):
        kwargs.setdefault("metadata", {"axes": case.axes})
    else:
        kwargs["metadata"] = {"axes": case.axes, **kwargs.get("metadata", {})}
    tifffile.imwrite(path, data, **kwargs)


def _tczyx(array: np.ndarray, axes: str) -> np.ndarray:
    """``array`` with ``axes`` (letters of TCZYXS) as T, C, Z, Y, X, its colour samples as channels."""
    axes = axes.replace("S", "C")
    for a in "ZCT":
        if a not in axes:
            array, axes = array[np.newaxis], a + axes
    return np.transpose(array, [axes.index(a) for a in "TCZYX"])


def _assert_reads_as_tifffile(path, case: Case, *, series: int | None = None) -> None:
    expected = tifffile.imread(path, series=series or 0)
    expected = _tczyx(expected.reshape(case.shape), case.axes)  # tifffile squeezes axes of length 1
    with TiffImageSet(path, **case.read) as ims:
        assert (ims.time_point_count, ims.channel_count, ims.plane_count, *ims.plane_shape) == expected.shape
        for t in range(ims.time_point_count):
            for c in range(ims.channel_count):
                for z in range(ims.plane_count):
                    plane = ims.get_channeldata(c, z, t)
                    assert plane.dtype == expected.dtype, (t, c, z)
                    assert plane.dtype.isnative
                    np.testing.assert_array_equal(plane, expected[t, c, z], err_msg=f"t={t} c={c} z={z}")


_COMPRESSIONS = [None, "lzw", "zlib", "deflate", "zstd", "packbits"]
CASES = [
    Case(f"{order}-{comp or 'none'}-{layout}", "ZYX", (3, 32, 48),
         write={"byteorder": order, "compression": comp, **({"tile": (16, 16)} if layout == "tiled" else {}),
                **({"rowsperstrip": 5} if layout == "stripped" else {})})
    for order in "<>" for comp in _COMPRESSIONS for layout in ("stripped", "tiled")
] + [
    Case(f"bigtiff-{order}-{comp or 'none'}", "TZYX", (2, 3, 16, 24),
         write={"bigtiff": True, "byteorder": order, "compression": comp})
    for order in "<>" for comp in (None, "zlib")
] + [
    Case(f"imagej-{axes}-{dtype}-{order}", axes, shape, dtype, write={"imagej": True, "byteorder": order})
    for axes, shape in (("TZCYX", (2, 3, 2, 16, 24)), ("ZCYX", (3, 2, 16, 24)), ("TCYX", (2, 3, 16, 24)),
                        ("TZYX", (2, 3, 16, 24)), ("CYX", (3, 16, 24)))
    for dtype in ("uint8", "uint16", "float32") for order in "<>"
] + [
    # ImageJ's layout of hyperstacks over 4 GiB: one directory, the planes contiguous after it
    Case(f"imagej-one-directory-{order}", "TZCYX", (2, 3, 2, 16, 24), write={"imagej": True, "truncate": True,
                                                                             "byteorder": order})
    for order in "<>"
] + [
    Case(f"ome-{axes}-{comp or 'none'}-{order}", axes, shape,
         write={"ome": True, "byteorder": order, "compression": comp})
    for axes, shape in (("TCZYX", (2, 3, 2, 16, 24)), ("TZCYX", (2, 2, 3, 16, 24)), ("CYX", (2, 16, 24)),
                        ("ZYX", (4, 16, 24)))
    for comp in (None, "zlib") for order in "<>"
] + [
    Case(f"pages-{axes}-{order}", axes, (3, 16, 24), pages=True, write={"byteorder": order}, read={"axes": axes})
    for axes in ("ZYX", "TYX", "CYX") for order in "<>"
] + [
    Case(f"{dtype}-{comp or 'none'}-{order}", "ZYX", (2, 16, 24), dtype, write={"byteorder": order, "compression": comp})
    for dtype in ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
    for comp in (None, "zlib") for order in "<>"
] + [
    Case(f"rgb-{planar}-{comp or 'none'}", "YXS" if planar == "contig" else "SYX",
         (16, 24, 3) if planar == "contig" else (3, 16, 24), "uint8",
         write={"photometric": "rgb", "planarconfig": planar, "compression": comp})
    for planar in ("contig", "separate") for comp in (None, "zlib")
] + [
    Case("rgba-contig", "YXS", (16, 24, 4), "uint8", write={"photometric": "rgb", "extrasamples": ["unassalpha"]}),
    Case("rgb-stack-uint16-be", "ZYXS", (3, 16, 24, 3), write={"photometric": "rgb", "byteorder": ">"}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_planes_equal_tifffile(tmp_path, case):
    path = tmp_path / "in.tif"
    data = _data(case)
    _write(path, case, data)
    np.testing.assert_array_equal(tifffile.imread(path).reshape(case.shape), data)  # the file holds what we wrote
    _assert_reads_as_tifffile(path, case)


def test_int16_negative_values_and_big_endian_read_as_written(tmp_path):
    data = np.array([[-32768, -1, 0, 1, 32767, -300]], np.int16)
    tifffile.imwrite(tmp_path / "be.tif", data, byteorder=">", photometric="minisblack")
    with TiffImageSet(tmp_path / "be.tif") as ims:
        assert ims.get_channeldata(0, 0, 0).tolist() == data.tolist()


def test_big_endian_imagej_equals_little_endian_twin(tmp_path):
    data = np.arange(2 * 3 * 2 * 8 * 8, dtype=np.uint16).reshape(2, 3, 2, 8, 8) * 97  # high bytes set
    for order, name in (("<", "le.tif"), (">", "be.tif")):
        tifffile.imwrite(tmp_path / name, data, imagej=True, byteorder=order, metadata={"axes": "TZCYX"})
    with TiffImageSet(tmp_path / "le.tif") as le, TiffImageSet(tmp_path / "be.tif") as be:
        for t, c, z in np.ndindex(2, 2, 3):
            np.testing.assert_array_equal(be.get_channeldata(c, z, t), le.get_channeldata(c, z, t))
        assert be.get_channeldata(1, 2, 1)[0, 1].item() == data[1, 2, 1, 0, 1]


def _two_images(path, second_shape, *, second_dtype=np.uint16, order="<"):
    rng = np.random.default_rng(3)
    first = rng.normal(0, 100, (2, 2, 3, 16, 24)).astype(np.float32)  # T C Z Y X
    second = rng.integers(0, 60000, second_shape).astype(second_dtype)
    with tifffile.TiffWriter(path, ome=True, byteorder=order) as tw:
        tw.write(first, photometric="minisblack",
                 metadata={"axes": "TCZYX", "Channel": {"Name": ["a", "b"]}, "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        tw.write(second, photometric="minisblack", compression="zlib",
                 metadata={"axes": "TCZYX"[-len(second_shape):], "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    return first, second


@pytest.mark.parametrize("order", "<>")
def test_ome_images_of_one_size_read_as_one_image_set(tmp_path, order):
    path = tmp_path / "two.ome.tif"
    _, second = _two_images(path, (2, 1, 3, 16, 24), order=order)
    assert np.array_equal(tifffile.imread(path, series=1).reshape(second.shape), second)
    oracle = [tifffile.imread(path, series=0), tifffile.imread(path, series=1).reshape(second.shape)]
    with TiffImageSet(path) as ims:
        assert ims.channel_names == ["a", "b", "Channel 2"]
        assert ims.voxel_size == (None, 0.5, 0.5)
        for t, z in np.ndindex(2, 3):
            a = ims.get_channeldata(1, z, t)
            assert a.dtype == np.float32 and np.array_equal(a, oracle[0][t, 1, z])
            b = ims.get_channeldata(2, z, t)
            assert b.dtype == np.uint16 and np.array_equal(b, oracle[1][t, 0, z])


def test_ome_images_of_different_sizes_need_series(tmp_path):
    path = tmp_path / "two.ome.tif"
    first, second = _two_images(path, (8, 12))
    with pytest.raises(TiffError, match=(
            r"two.ome.tif holds 2 images \(series\) that differ in size or axes \(0: TCZYX 2x2x3x16x24 float32; "
            r"1: YX 8x12 uint16\); choose one with series=0..1")):
        TiffImageSet(path)
    with TiffImageSet(path, series=1) as ims:
        assert (ims.channel_count, ims.plane_count, ims.plane_shape) == (1, 1, (8, 12))
        np.testing.assert_array_equal(ims.get_channeldata(0, 0, 0), second)
    with TiffImageSet(path, series=0) as ims:
        np.testing.assert_array_equal(ims.get_channeldata(1, 2, 1), first[1, 1, 2])
    with pytest.raises(TiffError, match=r"series=2: two.ome.tif holds images \(series\) 0..1: 0: TCZYX"):
        TiffImageSet(path, series=2)
