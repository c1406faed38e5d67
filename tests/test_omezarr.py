"""OmeZarrImageSet on stores written by ome-zarr's own writer; label images read back by ome-zarr's Reader and bioio."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from stardist_host import host
from stardist_host.errors import (
    IndexRangeError,
    InputFileError,
    OutputError,
    StardistHostError,
)

zarr = pytest.importorskip("zarr")
ome_writer = pytest.importorskip("ome_zarr.writer")
ome_format = pytest.importorskip("ome_zarr.format")

from stardist_host.errors import MissingExtraError
from stardist_host.io.omezarr import OmeZarrImageSet
from stardist_host.testing.conformance import ImageSetConformance

ZARR3 = int(zarr.__version__.split(".")[0]) >= 3
VERSIONS = ["0.4", pytest.param("0.5", marks=pytest.mark.skipif(not ZARR3, reason="NGFF 0.5 needs zarr 3"))]


def _fmt(version: str):
    return ome_format.FormatV04() if version == "0.4" else ome_format.FormatV05()


def _axes(names: str, units: dict[str, str]) -> list[dict]:
    kinds = {"t": "time", "c": "channel"}
    out = []
    for n in names:
        axis = {"name": n, "type": kinds.get(n, "space")}
        if n in units:
            axis["unit"] = units[n]
        out.append(axis)
    return out


def write_store(path: Path, data: np.ndarray, axes: str, *, version: str, scale: dict[str, float],
                units: dict[str, str], channels: list[str] | None = None) -> Path:
    """An OME-Zarr image with two levels (full, and y/x halved), written by ome-zarr's writer."""
    group = zarr.open_group(str(path), mode="w", **({"zarr_format": 2 if version == "0.4" else 3} if ZARR3 else {}))
    yx = [i for i, n in enumerate(axes) if n in "yx"]
    half = data[tuple(slice(None, None, 2) if i in yx else slice(None) for i in range(data.ndim))]
    transforms = [
        [{"type": "scale", "scale": [scale.get(n, 1.0) * (f if n in "yx" else 1) for n in axes]}] for f in (1, 2)
    ]
    metadata = {}
    if channels:
        metadata["omero"] = {"channels": [{"label": c, "color": "FFFFFF", "window": {"start": 0, "end": 1000,
                                                                                    "min": 0, "max": 65535}}
                                          for c in channels]}
    ome_writer.write_multiscale([data, half], group, fmt=_fmt(version), axes=_axes(axes, units),
                                coordinate_transformations=transforms, metadata=metadata)
    return path


def tcyx() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 4000, (3, 2, 20, 28), dtype=np.uint16)


def zyx() -> np.ndarray:
    rng = np.random.default_rng(2)
    return rng.integers(0, 200, (5, 16, 12), dtype=np.uint8)


@pytest.fixture(params=VERSIONS)
def version(request):
    return request.param


@pytest.fixture
def timelapse(tmp_path, version):
    return write_store(tmp_path / "tl.zarr", tcyx(), "tcyx", version=version, scale={"y": 0.5, "x": 0.5},
                       units={"t": "second", "y": "micrometer", "x": "micrometer"}, channels=["DAPI", "GFP"])


@pytest.fixture
def stack(tmp_path, version):
    return write_store(tmp_path / "st.zarr", zyx(), "zyx", version=version, scale={"z": 2.0, "y": 250.0, "x": 250.0},
                       units={"z": "micrometer", "y": "nanometer", "x": "nanometer"})


def input_hashes(store: Path) -> dict[str, str]:
    """sha256 of every file of the store outside labels/ (the input's arrays and metadata)."""
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file() and p.relative_to(store).parts[0] != "labels"}


# ----------------------------------------------------------------------------- reading


def test_timelapse_planes_names_and_voxel_size(timelapse, version):
    data = tcyx()
    ims = OmeZarrImageSet(timelapse)
    assert isinstance(ims, host.ImageSet) and host.check_imageset(ims) is ims
    assert ims.ngff_version == version and ims.axes == "tcyx"
    assert (ims.channel_count, ims.plane_count, ims.time_point_count, ims.plane_shape) == (2, 1, 3, (20, 28))
    assert ims.channel_names == ["DAPI", "GFP"]
    assert ims.voxel_size == (None, 0.5, 0.5)  # 2D: the Z spacing is unknown, not invented
    assert ims.levels == [(3, 2, 20, 28), (3, 2, 10, 14)]
    for t in range(3):
        for c in range(2):
            plane = ims.get_channeldata(c, 0, t)
            assert plane.dtype == np.uint16
            np.testing.assert_array_equal(plane, data[t, c])


def test_stack_planes_and_voxel_size_in_nanometres(stack):
    data = zyx()
    ims = OmeZarrImageSet(stack)
    assert (ims.channel_count, ims.plane_count, ims.time_point_count, ims.plane_shape) == (1, 5, 1, (16, 12))
    assert ims.channel_names == ["Channel 0"]
    assert ims.voxel_size == pytest.approx((2.0, 0.25, 0.25))
    for z in range(5):
        np.testing.assert_array_equal(ims.get_channeldata(0, z, 0), data[z])


def test_level_option_reads_the_lower_resolution(timelapse):
    ims = OmeZarrImageSet(timelapse, level=1)
    assert ims.level == 1 and ims.plane_shape == (10, 14) and ims.voxel_size == (None, 1.0, 1.0)
    np.testing.assert_array_equal(ims.get_channeldata(1, 0, 2), tcyx()[2, 1, ::2, ::2])


def test_missing_unit_means_unknown_voxel_size(tmp_path, caplog):
    path = write_store(tmp_path / "nounit.zarr", zyx(), "zyx", version="0.4", scale={"z": 2.0, "y": 0.5, "x": 0.5},
                       units={})
    assert OmeZarrImageSet(path).voxel_size is None
    assert "axis 'y' has no unit" in caplog.text


def _hand_store(path: Path, axes: list[dict], data: np.ndarray, *, version: str = "0.4") -> Path:
    """A minimal NGFF 0.4 store written with zarr alone (for layouts ome-zarr's writer refuses)."""
    group = zarr.open_group(str(path), mode="w", **({"zarr_format": 2} if ZARR3 else {}))
    if ZARR3:
        group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=data.shape)[...] = data
    else:
        group.array("0", data)
    dataset = {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0] * data.ndim}]}
    group.attrs["multiscales"] = [{"version": version, "axes": axes, "datasets": [dataset]}]
    return path


def test_x_before_y_and_a_size_one_custom_axis(tmp_path):
    data = np.arange(1 * 2 * 6 * 4, dtype=np.uint16).reshape(1, 2, 6, 4)  # (angle, z, x, y)
    axes = [{"name": "angle", "type": "angle"}, {"name": "z", "type": "space"}, {"name": "x", "type": "space"},
            {"name": "y", "type": "space"}]
    ims = OmeZarrImageSet(_hand_store(tmp_path / "xy.zarr", axes, data))
    assert ims.plane_shape == (4, 6)
    np.testing.assert_array_equal(ims.get_channeldata(0, 1, 0), data[0, 1].T)
    new = ims.add_channel("nuclei", np.uint16)
    plane = np.arange(24, dtype=np.uint16).reshape(4, 6)
    ims.set_channeldata(new, 1, 0, plane)
    np.testing.assert_array_equal(ims.get_channeldata(new, 1, 0), plane)
    np.testing.assert_array_equal(np.asarray(zarr.open_group(str(tmp_path / "xy.zarr"))["labels/nuclei/0"])[0, 1],
                                  plane.T)


# ----------------------------------------------------------------------------- errors


def test_not_an_ome_zarr(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputFileError, match=r"is a folder but not a Zarr group \(no zarr.json or .zgroup\)"):
        OmeZarrImageSet(tmp_path / "plain")
    with pytest.raises(InputFileError, match="does not exist"):
        OmeZarrImageSet(tmp_path / "missing.zarr")
    (tmp_path / "a.tif").write_bytes(b"II*\0")
    with pytest.raises(InputFileError, match="is a file, not an OME-Zarr folder"):
        OmeZarrImageSet(tmp_path / "a.tif")
    zarr.open_group(str(tmp_path / "bare.zarr"), mode="w", **({"zarr_format": 2} if ZARR3 else {}))
    with pytest.raises(InputFileError, match="without OME-Zarr 'multiscales' metadata; it is not an OME-Zarr image"):
        OmeZarrImageSet(tmp_path / "bare.zarr")


def test_unknown_ngff_version(tmp_path):
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    path = _hand_store(tmp_path / "old.zarr", axes, np.zeros((4, 4), np.uint8), version="0.3")
    with pytest.raises(InputFileError, match=r"OME-Zarr \(NGFF\) version '0.3' is not supported; this reader knows "
                                             r"versions 0.4, 0.5"):
        OmeZarrImageSet(path)


def test_level_that_does_not_exist_names_the_levels(timelapse):
    with pytest.raises(InputFileError, match=r"level=2: '.*tl.zarr' has resolution levels 0 \('s?0', 3x2x20x28\), "
                                             r"1 \('s?1', 3x2x10x14\)$"):
        OmeZarrImageSet(timelapse, level=2)


def test_index_errors_and_read_only_input(timelapse):
    ims = OmeZarrImageSet(timelapse)
    with pytest.raises(IndexRangeError, match=r"channel=2: the image set has channels 0..1 \(DAPI, GFP\)"):
        ims.get_channeldata(2, 0, 0)
    with pytest.raises(IndexRangeError, match=r"time_point=3: the image set has time points 0..2"):
        ims.get_channeldata(0, 0, 3)
    with pytest.raises(PermissionError, match="never modified"):
        ims.set_channeldata(0, 0, 0, np.zeros((20, 28), np.uint16))


def test_missing_zarr_names_the_extra(timelapse, monkeypatch):
    monkeypatch.setitem(sys.modules, "zarr", None)  # makes "import zarr" fail
    with pytest.raises(MissingExtraError, match=r'pip install "stardist-host\[zarr\]"') as info:
        OmeZarrImageSet(timelapse)
    assert isinstance(info.value, ImportError) and isinstance(info.value, StardistHostError)


# ----------------------------------------------------------------------------- label channels


def _fill_labels(ims, channel: int, *, big: int = 70000) -> np.ndarray:
    """Write a distinct label plane everywhere; return them (T, Z, Y, X)."""
    out = np.zeros((ims.time_point_count, ims.plane_count, *ims.plane_shape), np.uint32)
    for t in range(ims.time_point_count):
        for z in range(ims.plane_count):
            out[t, z, 2:6, 3:9] = 1 + t * 10 + z
            out[t, z, 10:14, 3:5] = big + t  # 70000 needs 32 bits
            ims.set_channeldata(channel, z, t, out[t, z])
    return out


def test_label_channel_read_by_ome_zarr_reader(timelapse, version):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    before = input_hashes(timelapse)
    ims = OmeZarrImageSet(timelapse)
    new = ims.add_channel("nuclei", np.uint32)
    assert new == 2 and ims.channel_names == ["DAPI", "GFP", "nuclei"]
    assert not ims.get_channeldata(new, 0, 1).any()
    labels = _fill_labels(ims, new)
    np.testing.assert_array_equal(ims.get_channeldata(new, 0, 2), labels[2, 0])
    assert input_hashes(timelapse) == before  # every input chunk and metadata file unchanged

    nodes = {Path(str(n.zarr.path).rstrip("/")).relative_to(timelapse).as_posix(): n
             for n in Reader(parse_url(str(timelapse)))()}
    assert {"labels", "labels/nuclei"} <= set(nodes)  # found from the image, through the labels list
    label_node = nodes["labels/nuclei"]
    assert [type(s).__name__ for s in label_node.specs] == ["Label", "Multiscales"]  # image-label metadata read
    data = np.asarray(label_node.data[0])
    assert data.shape == (3, 1, 20, 28) and data.dtype == np.uint32
    np.testing.assert_array_equal(data[:, 0], labels[:, 0])
    assert label_node.metadata["name"] == "nuclei"
    group = zarr.open_group(str(timelapse), mode="r")
    attrs = dict(group["labels"].attrs)
    listed = attrs["labels"] if version == "0.4" else attrs["ome"]["labels"]
    assert listed == ["nuclei"]
    image_attrs = dict(group["labels/nuclei"].attrs)
    image_label = image_attrs["image-label"] if version == "0.4" else image_attrs["ome"]["image-label"]
    assert image_label["source"] == {"image": "../../"} and image_label["version"] == version
    assert group["labels/nuclei/0"].chunks == (1, 1, 20, 28)  # one chunk per plane


def test_label_channel_read_by_bioio(stack):
    bioio = pytest.importorskip("bioio")
    bioio_ome_zarr = pytest.importorskip("bioio_ome_zarr")
    ims = OmeZarrImageSet(stack)
    new = ims.add_channel("nuclei", np.uint16)
    labels = _fill_labels(ims, new, big=60000)
    img = bioio.BioImage(str(stack / "labels" / "nuclei"), reader=bioio_ome_zarr.Reader)
    np.testing.assert_array_equal(img.get_image_data("TZYX", C=0), labels)
    assert img.physical_pixel_sizes.Z == pytest.approx(2.0)
    assert zarr.open_group(str(stack), mode="r")["labels/nuclei/0"].chunks == (1, 16, 12)  # one chunk per plane


def test_labels_in_a_separate_store(stack, tmp_path, version):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    every_file = {p: p.read_bytes() for p in stack.rglob("*") if p.is_file()}
    ims = OmeZarrImageSet(stack, labels_store=tmp_path / "out.zarr")
    new = ims.add_channel("nuclei", np.uint16)
    labels = _fill_labels(ims, new, big=9)
    assert {p: p.read_bytes() for p in stack.rglob("*") if p.is_file()} == every_file  # input untouched, no labels/
    assert ims.label_image_path(new) == tmp_path / "out.zarr" / "labels" / "nuclei"
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    attrs = dict(group["labels/nuclei"].attrs)
    source = (attrs["image-label"] if version == "0.4" else attrs["ome"]["image-label"])["source"]["image"]
    assert (tmp_path / "out.zarr" / "labels" / "nuclei" / source).resolve() == stack.resolve()
    node = next(n for n in Reader(parse_url(str(tmp_path / "out.zarr" / "labels" / "nuclei")))()
                if str(n.zarr.path).rstrip("/").endswith("nuclei"))
    np.testing.assert_array_equal(np.asarray(node.data[0]), labels[0])


def test_a_labels_store_that_is_a_file_is_refused(stack, tmp_path):
    (tmp_path / "out.zarr").write_text("not a folder")
    every_file = {p: p.read_bytes() for p in stack.rglob("*") if p.is_file()}
    ims = OmeZarrImageSet(stack, labels_store=tmp_path / "out.zarr")
    with pytest.raises(OutputError, match=r"labels cannot be written to .*out.zarr.* \(.*\); give a writable folder "
                                          r"as labels_store="):
        ims.add_channel("nuclei", np.uint16)
    assert {p: p.read_bytes() for p in stack.rglob("*") if p.is_file()} == every_file
    assert (tmp_path / "out.zarr").read_text() == "not a folder"


def test_existing_label_refused_unless_overwrite(stack):
    first = OmeZarrImageSet(stack)
    first.set_channeldata(first.add_channel("nuclei", np.uint16), 2, 0, np.full((16, 12), 4, np.uint16))
    written = {p: p.read_bytes() for p in stack.rglob("*") if p.is_file()}
    again = OmeZarrImageSet(stack)
    with pytest.raises(OutputError, match=r"labels/nuclei' exists already; choose another name, or replace it "
                                          r"with overwrite=True"):
        again.add_channel("nuclei", np.uint16)
    assert again.channel_count == 1
    assert {p: p.read_bytes() for p in stack.rglob("*") if p.is_file()} == written
    replaced = OmeZarrImageSet(stack, overwrite=True)
    new = replaced.add_channel("nuclei", np.uint16)
    assert not replaced.get_channeldata(new, 2, 0).any()  # a fresh, zero label image


@pytest.mark.parametrize("name, dtype, message", [
    ("nuclei", np.float32, r"dtype=float32: an OME-Zarr label image holds whole numbers"),
    ("a/b", np.uint16, r"name='a/b': a label image's name must be a non-empty text without '/'"),
    ("", np.uint16, r"name='': a label image's name must be a non-empty text"),
    (".zattrs", np.uint16, r"name='.zattrs': must not start with '.'"),
])
def test_bad_label_channel_refused_before_writing(stack, name, dtype, message):
    ims = OmeZarrImageSet(stack)
    with pytest.raises(ValueError, match=message):
        ims.add_channel(name, dtype)
    assert not (stack / "labels").exists() and ims.channel_count == 1


def test_remove_channel_deletes_the_label_image(timelapse, version):
    ims = OmeZarrImageSet(timelapse)
    first = ims.add_channel("first", np.uint16)
    keep = ims.add_channel("keep", np.uint16)
    ims.set_channeldata(keep, 0, 1, np.full((20, 28), 3, np.uint16))
    with pytest.raises(PermissionError, match=r"channel 1 comes from the input tl.zarr, which is never modified; "
                                              r"only channels made with add_channel can be removed"):
        ims.remove_channel(1)
    with pytest.raises(IndexRangeError, match=r"index=4: the image set has channels 0..3"):
        ims.remove_channel(4)
    ims.remove_channel(first)  # the channels after it move down
    assert ims.channel_names == ["DAPI", "GFP", "keep"] and ims.get_channeldata(2, 0, 1)[0, 0] == 3
    assert not (timelapse / "labels" / "first").exists() and (timelapse / "labels" / "keep").is_dir()
    attrs = dict(zarr.open_group(str(timelapse), mode="r")["labels"].attrs)
    assert (attrs["labels"] if version == "0.4" else attrs["ome"]["labels"]) == ["keep"]


def test_v3_store_metadata_without_its_array(tmp_path):
    """A hand-written NGFF 0.5 group whose array is missing: zarr 2 cannot read v3, zarr 3 names the array."""
    path = tmp_path / "v5.zarr"
    path.mkdir()
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    ome = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0]}]}]}]}
    (path / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"ome": ome}}))
    message = (r"level 0 names the array '0', which is not in the store" if ZARR3
               else r"is a Zarr v3 store \(OME-Zarr 0.5\), which needs zarr 3 \(Python 3.11 or newer\)")
    with pytest.raises(InputFileError, match=message):
        OmeZarrImageSet(path)


@pytest.mark.parametrize("ngff", VERSIONS)
class TestOmeZarrConformance(ImageSetConformance):
    """The image-set contract on an OME-Zarr store (TCZYX, both NGFF versions)."""

    get_returns = "copy"

    @pytest.fixture
    def make_imageset(self, tmp_path, ngff):
        def make(data, channel_names, voxel_size):
            z, y, x = voxel_size
            path = write_store(tmp_path / f"ref{ngff}.zarr", data, "tczyx", version=ngff,
                               scale={"z": z, "y": y, "x": x},
                               units={"z": "micrometer", "y": "micrometer", "x": "micrometer"}, channels=channel_names)
            return OmeZarrImageSet(path)

        return make


@pytest.mark.parametrize("damage", ["no path", "short scale"])
def test_damaged_metadata_is_one_clear_error(tmp_path, damage):
    import json

    store = tmp_path / "img.zarr"
    write_store(store, zyx(), "zyx", version="0.4", scale={"z": 2.0, "y": 0.5, "x": 0.5},
                units={n: "micrometer" for n in "zyx"})
    meta_file = next(p for p in (store / "zarr.json", store / ".zattrs") if p.exists())
    meta = json.loads(meta_file.read_text())
    ms = (meta.get("attributes", {}).get("ome") or meta.get("attributes") or meta)["multiscales"][0]
    if damage == "no path":
        del ms["datasets"][0]["path"]
    else:
        ms["datasets"][0]["coordinateTransformations"][0]["scale"] = [1.0]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(InputFileError, match="img.zarr"):
        OmeZarrImageSet(store)


def test_removing_an_attached_label_image_keeps_the_earlier_result(stack):
    first = OmeZarrImageSet(stack)
    first.set_channeldata(first.add_channel("nuclei", np.uint16), 2, 0, np.full((16, 12), 4, np.uint16))
    resumed = OmeZarrImageSet(stack)
    index = resumed.open_label_channel("nuclei")  # as a resumed run continues an interrupted one's labels
    resumed.remove_channel(index)  # the resumed run failed: it lets go of the label image, nothing more
    assert resumed.channel_count == 1
    again = OmeZarrImageSet(stack)
    np.testing.assert_array_equal(again.get_channeldata(again.open_label_channel("nuclei"), 2, 0), 4)
