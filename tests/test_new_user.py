"""Files and runs as a new user brings them, through the stardist-host command, end to end."""

import logging

import numpy as np
import pytest
import tifffile
from conftest import ROOT, sha256

from stardist_host.cli import main


def _damaged(tmp_path, kind):
    if kind == "truncated":
        whole = (ROOT / "data" / "nuclei_2d_t.tif").read_bytes()
        path = tmp_path / "half.tif"
        path.write_bytes(whole[: len(whole) // 2])
    elif kind == "empty":
        path = tmp_path / "empty.tif"
        path.write_bytes(b"")
    elif kind == "not a TIFF":
        path = tmp_path / "notes.tif"
        path.write_text("these are my notes, not an image")
    else:
        path = tmp_path / "folder.tif"
        path.mkdir()
    return path


@pytest.mark.parametrize("kind, message", [
    ("truncated", "half.tif is truncated"),
    ("empty", "empty.tif"),
    ("not a TIFF", "notes.tif"),
    ("folder", "is a folder, not a file"),
])
def test_damaged_inputs_get_one_line_and_status_2(tmp_path, caplog, kind, message):
    path = _damaged(tmp_path, kind)
    out = tmp_path / "out.ome.tif"
    caplog.set_level(logging.ERROR, logger="stardist_host")
    assert main(["segment", str(path), str(out), "--cpu"]) == 2
    ours = [r for r in caplog.records if r.name.startswith("stardist_host") and r.levelno >= logging.ERROR]
    assert len(ours) == 1 and message in ours[0].getMessage() and "\n" not in ours[0].getMessage()
    assert "Traceback" not in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # nothing written beside it


def test_float32_input_gives_labels_every_analysis_accepts(tmp_path):
    planes = tifffile.imread(ROOT / "data" / "nuclei_2d_t.tif")[:, 0].astype(np.float32) / 7.5  # T, Y, X
    src = tmp_path / "float.tif"
    tifffile.imwrite(src, planes, imagej=True, resolution=(2.0, 2.0), metadata={"axes": "TYX", "unit": "um"})
    before = sha256(src)
    seg = tmp_path / "seg.ome.tif"
    assert main(["segment", str(src), str(seg), "--all-time-points", "--cpu"]) == 0
    assert sha256(src) == before
    with tifffile.TiffFile(seg) as tif:
        assert [s.dtype for s in tif.series] == [np.float32, np.uint16]  # each channel in its own type
        np.testing.assert_array_equal(tif.series[0].asarray(), planes)
    results = tmp_path / "results"
    results.mkdir()
    common = [str(seg), str(results), "--label-channel", "1"]
    assert main(["measure", *common, "--intensity-channels", "0"]) == 0
    assert main(["track", *common, "--max-distance-um", "6"]) == 0
    assert main(["cells", *common, "--membrane-channel", "0", "--max-distance-um", "6"]) == 0
    atlas = tmp_path / "atlas.tif"
    tifffile.imwrite(atlas, np.ones(planes.shape[1:], np.uint8), resolution=(2.0, 2.0), imagej=True,
                     metadata={"unit": "um"})
    assert main(["atlas", *common, "--atlas-file", str(atlas)]) == 0
    tracks = (results / "seg_tracks.csv").read_text(encoding="utf-8").splitlines()
    assert len(tracks) > 20 * 3  # about 29 nuclei, each over the 3 time points


def test_a_damaged_compressed_plane_stops_in_one_line_and_removes_the_channel(tmp_path, caplog):
    data = np.random.default_rng(1).integers(0, 4000, (3, 64, 64)).astype(np.uint16)
    path = tmp_path / "damaged.tif"
    tifffile.imwrite(path, data, compression="zlib", photometric="minisblack", metadata={"axes": "TYX"})
    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].pages[1]
        offset, size = page.dataoffsets[0], page.databytecounts[0]
    raw = bytearray(path.read_bytes())
    raw[offset:offset + size] = b"\xff" * size  # the same length: only decoding can tell
    path.write_bytes(bytes(raw))
    caplog.set_level(logging.ERROR, logger="stardist_host")
    out = tmp_path / "out.ome.tif"
    assert main(["segment", str(path), str(out), "--all-time-points", "--cpu"]) == 2
    assert "damaged.tif is damaged: plane t=1, c=0, z=0 cannot be decoded" in caplog.text
    assert "Traceback" not in caplog.text and not out.exists()


def test_3d_object_table_from_the_command_and_refused_in_2d(tmp_path, caplog, sample_3d, sample_2d):
    out = tmp_path / "vol.ome.tif"
    assert main(["segment", "--dim", "3", str(sample_3d), str(out), "--cpu", "--export-objects", "csv"]) == 0
    labels = tifffile.imread(out)[1]  # C, Z, Y, X: the sample's channel, then the labels
    rows = (tmp_path / "vol_objects.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) - 1 == len(np.unique(labels)) - 1 > 20  # one row per nucleus
    assert main(["segment", str(sample_2d), str(tmp_path / "flat.ome.tif"), "--export-objects", "csv"]) == 2
    assert "--export-objects csv needs --dim 3 (one row per object of a volume); with --dim 2 give roi, geojson or roi,geojson" in caplog.text


def test_malformed_ome_metadata_is_a_warning_not_a_damaged_file(tmp_path, caplog):
    data = np.random.default_rng(2).integers(0, 500, (3, 32, 32)).astype(np.uint16)
    good = tmp_path / "good.ome.tif"
    tifffile.imwrite(good, data, ome=True, metadata={"axes": "ZYX", "Channel": {"Name": ["A"]}})
    bad = tmp_path / "bad.ome.tif"
    bad.write_bytes(good.read_bytes().replace(b'Name="A"', b'Name="&"'))  # an unescaped & in the XML
    from stardist_host.io.tiff import TiffReader

    reader = TiffReader(bad, axes="ZYX")  # the pixels are intact: read with the axes given
    assert [np.array_equal(reader.plane(0, 0, z), tifffile.imread(bad)[z]) for z in range(3)] == [True] * 3
    reader.close()
    assert "some of its metadata cannot be read" in caplog.text
