"""Objects from a label channel: ImageJ ROI ZIP, QuPath GeoJSON, the 3D object table."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import polygon

from stardist_host import MemoryImageSet
from stardist_host.errors import (
    AnalysisError,
    IndexRangeError,
    OutputError,
    SettingsError,
)
from stardist_host.io.objects import (
    TABLE_COLUMNS,
    export_objects,
    object_table,
    outlines,
    write_geojson,
    write_imagej_rois,
)
from stardist_host.testing.synthetic import nuclei

NAME = re.compile(r"^t(\d{3})-z(\d{3})-label(\d{5})$")


def labels_tzyx(t=2, z=2, shape=(48, 64)) -> np.ndarray:
    """Per-plane labels of synthetic nuclei, a different scene in every plane, plus a 2x3 object."""
    out = np.zeros((t, z, *shape), np.uint16)
    for i in range(t):
        for j in range(z):
            out[i, j] = nuclei(shape, 6, seed=10 * i + j)[1]
            out[i, j, 0:2, 60:63] = out[i, j].max() + 1  # a small object at the top right edge
    return out


def imageset_with_labels(labels: np.ndarray, voxel_size=(2.0, 0.5, 0.5)) -> MemoryImageSet:
    image = (labels > 0).astype(np.uint16) * 1000
    data = np.stack([image, labels], axis=1)  # T, C, Z, Y, X
    return MemoryImageSet(data, channel_names=["DAPI", "labels"], voxel_size=voxel_size)


def objects_per_plane(labels: np.ndarray) -> dict[tuple[int, int], set[int]]:
    n_t, n_z = labels.shape[:2]
    return {(t, z): set(np.unique(labels[t, z])[1:].tolist()) for t in range(n_t) for z in range(n_z)}


def iou(xy: np.ndarray, mask: np.ndarray) -> float:
    """IoU of a polygon in pixel-corner coordinates, rasterised at pixel centres, with a mask."""
    drawn = np.zeros(mask.shape, bool)
    rr, cc = polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, mask.shape)
    drawn[rr, cc] = True
    return (drawn & mask).sum() / (drawn | mask).sum()


def test_roi_zip_has_one_roi_per_object_per_plane_on_its_plane(tmp_path):
    from roifile import roiread

    labels = labels_tzyx()
    ims = imageset_with_labels(labels)
    paths = export_objects(ims, label_channel=1, out_dir=tmp_path, stem="cells", formats=("roi",))
    assert paths == {"roi": tmp_path / "cells_rois.zip"}
    rois = roiread(paths["roi"])
    expected = objects_per_plane(labels)
    assert len(rois) == sum(len(v) for v in expected.values()) == 28
    found: dict[tuple[int, int], set[int]] = {k: set() for k in expected}
    for roi in rois:
        t, z, n = (int(g) for g in NAME.match(roi.name).groups())
        assert (roi.t_position, roi.z_position, roi.c_position) == (t + 1, z + 1, 0)
        found[t, z].add(n)
        assert iou(roi.coordinates(), labels[t, z] == n) >= 0.8, roi.name
    assert found == expected


def test_geojson_has_one_closed_detection_per_object(tmp_path):
    labels = labels_tzyx()
    paths = export_objects(imageset_with_labels(labels), label_channel=1, out_dir=tmp_path, stem="cells",
                           formats=("geojson",), classification="Nucleus")
    collection = json.loads(paths["geojson"].read_text(encoding="utf-8"))
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    expected = objects_per_plane(labels)
    assert len(features) == 28
    found: dict[tuple[int, int], set[int]] = {k: set() for k in expected}
    for feature in features:
        props = feature["properties"]
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        assert set(props) == {"objectType", "label", "plane", "time_point", "classification"}
        assert props["objectType"] == "detection" and props["classification"] == {"name": "Nucleus"}
        (ring,) = feature["geometry"]["coordinates"]
        assert ring[0] == ring[-1] and len(ring) >= 4
        t, z, n = props["time_point"], props["plane"], props["label"]
        found[t, z].add(n)
        assert iou(np.array(ring[:-1]), labels[t, z] == n) >= 0.8
    assert found == expected


def test_one_pass_writes_both_files_reading_each_plane_once(tmp_path):
    labels = labels_tzyx()
    ims = imageset_with_labels(labels)
    reads = []
    get = ims.get_channeldata
    ims.get_channeldata = lambda c, z, t: reads.append((c, z, t)) or get(c, z, t)
    paths = export_objects(ims, label_channel=1, out_dir=tmp_path, stem="s")
    assert list(paths) == ["roi", "geojson"]
    # one plane read by the dtype check up front, then each plane once
    assert reads[1:] == [(1, z, t) for t in range(2) for z in range(2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.geojson", "s_rois.zip"]


def test_standalone_writers_take_planes_lazily(tmp_path):
    from roifile import roiread

    labels = labels_tzyx(t=1, z=1)[0, 0]
    planes = ((3, 4, labels) for _ in range(1))
    write_imagej_rois(tmp_path / "a.zip", planes)
    names = sorted(r.name for r in roiread(tmp_path / "a.zip"))
    assert names == [f"t003-z004-label{n:05d}" for n in range(1, 8)]
    write_geojson(tmp_path / "a.geojson", [(0, 0, labels)], classification=None)
    features = json.loads((tmp_path / "a.geojson").read_text(encoding="utf-8"))["features"]
    assert [f["properties"]["label"] for f in features] == list(range(1, 8))
    assert "classification" not in features[0]["properties"]


def test_outline_of_a_square_follows_its_pixel_edges():
    labels = np.zeros((6, 6), np.uint8)
    labels[1:4, 2:5] = 7  # rows 1..3, columns 2..4
    (xy,) = outlines(labels).values()
    # midpoints between inside and outside centres: half a pixel inside the pixel squares' edges
    assert (xy[:, 0].min(), xy[:, 0].max(), xy[:, 1].min(), xy[:, 1].max()) == (2.0, 5.0, 1.0, 4.0)


def stack_3d():
    labels = np.stack([nuclei((8, 40, 48), 5, anisotropy=2.0, seed=s)[1] for s in (1, 2)])  # T, Z, Y, X
    return labels


def test_object_table_volumes_centroids_and_boxes_match_the_oracles():
    labels = stack_3d()[0]
    table = object_table(labels, (2.0, 0.5, 0.25), time_point=1)
    assert list(table) == list(TABLE_COLUMNS)
    counts = np.bincount(labels.ravel())
    present = np.flatnonzero(counts[1:]) + 1
    np.testing.assert_array_equal(table["label"], present)
    np.testing.assert_array_equal(table["volume_voxels"], counts[present])
    np.testing.assert_allclose(table["volume_um3"], counts[present] * 0.25)
    centres = np.array(ndimage.center_of_mass(labels > 0, labels, present))
    np.testing.assert_allclose(np.column_stack([table[f"centroid_{a}"] for a in "zyx"]), centres)
    np.testing.assert_allclose(np.column_stack([table[f"centroid_{a}_um"] for a in "zyx"]), centres * [2.0, 0.5, 0.25])
    boxes = ndimage.find_objects(labels)
    for i, n in enumerate(present):
        box = boxes[n - 1]
        assert [table[f"bbox_{a}0"][i] for a in "zyx"] == [s.start for s in box]
        assert [table[f"bbox_{a}1"][i] for a in "zyx"] == [s.stop for s in box]
    assert set(table["time_point"]) == {1}


def test_object_table_csv_over_time_points_with_unknown_z_spacing(tmp_path):
    labels = stack_3d()
    ims = imageset_with_labels(labels)
    ims.voxel_size = (None, 0.5, 0.5)  # a file that states its pixel size but not its Z spacing
    paths = export_objects(ims, label_channel=1, out_dir=tmp_path, stem="vol", formats=("csv",), ndim=3)
    with open(paths["csv"], encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(TABLE_COLUMNS)
    for t in range(2):
        counts = np.bincount(labels[t].ravel())
        mine = [r for r in rows if r["time_point"] == str(t)]
        assert [int(r["volume_voxels"]) for r in mine] == counts[1:][counts[1:] > 0].tolist()
    assert all(r["centroid_z_um"] == "" and r["volume_um3"] == "" and r["centroid_y_um"] != "" for r in rows)


@pytest.mark.parametrize(
    "kw, error, message",
    [
        ({"label_channel": 2}, IndexRangeError, "LABEL_CHANNEL=2: the image set has channels 0..1 (DAPI, labels)"),
        ({"formats": ("roi", "svg")}, SettingsError,
         "FORMATS=('roi', 'svg'): must be a non-empty list of 'roi', 'geojson', 'csv'"),
        ({"formats": ("csv",)}, SettingsError, "FORMATS=('csv',): 'csv' (the 3D object table) needs NDIM=3"),
        ({"ndim": 4}, SettingsError, "NDIM=4: must be 2 (labels per plane) or 3 (labels per volume)"),
        ({"stem": "a/b"}, SettingsError, "STEM='a/b': must be a file name without folder"),
        ({"time_points": [2]}, IndexRangeError, "TIME_POINTS=2: the image set has time points 0..1"),
        ({"label_channel": 0, "float": True}, AnalysisError, "LABEL_CHANNEL=0: channel 'DAPI' holds float32 values"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, kw, error, message):
    labels = labels_tzyx()
    ims = imageset_with_labels(labels)
    if kw.pop("float", False):
        ims = MemoryImageSet(np.stack([labels.astype(np.float32), labels], axis=1), channel_names=["DAPI", "labels"])
    args = {"label_channel": 1, "out_dir": tmp_path, "stem": "cells"} | kw
    with pytest.raises(error) as err:
        export_objects(ims, **args)
    assert str(err.value).startswith(message)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_kept_unless_overwrite(tmp_path):
    ims = imageset_with_labels(labels_tzyx())
    (tmp_path / "cells.geojson").write_text("old", encoding="utf-8")
    with pytest.raises(OutputError, match="exists already"):
        export_objects(ims, label_channel=1, out_dir=tmp_path, stem="cells")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.geojson"]
    assert (tmp_path / "cells.geojson").read_text(encoding="utf-8") == "old"
    export_objects(ims, label_channel=1, out_dir=tmp_path, stem="cells", overwrite=True)
    assert len(json.loads((tmp_path / "cells.geojson").read_text(encoding="utf-8"))["features"]) == 28
