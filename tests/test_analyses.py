"""Analyses after segmentation, on synthetic scenes with known truth: measurements, tracking, atlas, cells, overlay."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from conftest import ROOT

from stardist_host import MemoryImageSet
from stardist_host.analyses.atlas import (
    ATLAS_COLUMNS,
    ATLAS_COLUMNS_2D,
    atlas_counts,
    read_region_names,
)
from stardist_host.analyses.cells import grow, grow_cells
from stardist_host.analyses.common import AnalysisError, write_csv
from stardist_host.analyses.measure import base_columns, cell_columns, measure
from stardist_host.analyses.overlay import overlay
from stardist_host.analyses.tracking import PROPERTY_COLUMNS, TRACK_COLUMNS, link, track
from stardist_host.cli import main
from stardist_host.errors import IndexRangeError
from stardist_host.testing import synthetic

# ----- measurements -----------------------------------------------------------------------------------------

def test_measure_3d_uses_anisotropic_voxels():
    labels = np.zeros((1, 1, 6, 20, 30), np.uint16)
    labels[0, 0, 1:5, 2:12, 4:24] = 7  # 4 x 10 x 20 voxels
    intensity = np.zeros_like(labels)
    intensity[0, 0, 1:5, 2:12, 4:24] = 10
    intensity[0, 0, 1, 2, 4] = 50
    ims = MemoryImageSet(np.concatenate([intensity, labels], axis=1), channel_names=["DAPI", "labels"],
                         voxel_size=(2.0, 0.5, 0.25))
    table = measure(ims, 1, intensity_channels=[0])
    assert list(table)[:len(base_columns(3))] == base_columns(3)
    row = {k: v[0] for k, v in table.items()}
    assert row["label"] == 7 and row["plane"] == -1
    assert row["volume_um3"] == pytest.approx(800 * 2.0 * 0.5 * 0.25)  # 200 µm³
    assert (row["centroid_z_um"], row["centroid_y_um"], row["centroid_x_um"]) == pytest.approx((2.5 * 2.0, 6.5 * 0.5, 13.5 * 0.25))
    assert row["equivalent_diameter_um"] == pytest.approx((6 * 200 / np.pi) ** (1 / 3))
    assert (row["bbox_min_z"], row["bbox_max_z"], row["bbox_max_x"]) == (1, 5, 24)
    assert (row["min_DAPI"], row["max_DAPI"], row["integrated_DAPI"]) == (10, 50, 799 * 10 + 50)


def test_measure_2d_rows_per_plane_and_time_point():
    data = np.zeros((2, 1, 3, 16, 16), np.uint16)
    data[:, 0, :, 2:6, 2:6] = 1
    data[1, 0, 2, 10:14, 10:12] = 2
    table = measure(MemoryImageSet(data, voxel_size=(1, 0.5, 0.5)), 0, ndim=2)
    assert len(table["label"]) == 2 * 3 + 1
    assert table["area_um2"][table["label"] == 2] == pytest.approx([8 * 0.25])
    assert sorted(set(zip(table["time_point"], table["plane"]))) == [(t, z) for t in (0, 1) for z in range(3)]


def test_measure_empty_label_channel_gives_empty_table(memory_imageset):
    empty = memory_imageset.add_channel("labels", np.uint16)
    table = measure(memory_imageset, empty, intensity_channels=[0])
    assert list(table) == base_columns(3) + ["mean_DAPI", "min_DAPI", "max_DAPI", "integrated_DAPI"]
    assert all(len(v) == 0 for v in table.values())


def test_measure_bad_input(memory_imageset):
    with pytest.raises(IndexRangeError, match=r"LABEL_CHANNEL=5: the image set has channels 0..1 \(DAPI, Other\)"):
        measure(memory_imageset, 5)
    no_voxels = MemoryImageSet(np.zeros((1, 1, 1, 8, 8), np.uint16))
    with pytest.raises(AnalysisError, match=r"VOXEL_SIZE=None: the image set has no voxel size.*give VOXEL_SIZE=\(z, y, x\)"):
        measure(no_voxels, 0)
    assert len(measure(no_voxels, 0, voxel_size=(1, 1, 1))["label"]) == 0


# ----- tracking ---------------------------------------------------------------------------------------------

def _found_links(result):
    by_track = {}
    for tid, t, lab in zip(result.tracks["track_id"], result.tracks["t"], result.tracks["label"]):
        by_track.setdefault(int(tid), []).append((int(t), int(lab)))
    found = set()
    for points in by_track.values():
        points.sort()
        found |= {(a[0], a[1], b[1]) for a, b in zip(points, points[1:]) if b[0] == a[0] + 1}
    parent = dict(zip(result.properties["track_id"], result.properties["parent_id"]))
    for tid, points in by_track.items():
        if parent[tid]:
            last = max(by_track[int(parent[tid])])
            found.add((last[0], last[1], points[0][1]))
    return found


def _found_divisions(result):
    """(t, mother label, daughter label, daughter label) for every track with two daughter tracks."""
    points = {}
    for tid, t, lab in zip(result.tracks["track_id"], result.tracks["t"], result.tracks["label"]):
        points.setdefault(int(tid), []).append((int(t), int(lab)))
    daughters = {}
    for tid, parent in zip(result.properties["track_id"], result.properties["parent_id"]):
        if parent:
            daughters.setdefault(int(parent), []).append(min(points[int(tid)])[1])
    return {(*max(points[m]), *sorted(d)) for m, d in daughters.items() if len(d) == 2} | {
        (m, -1, -1, -1) for m, d in daughters.items() if len(d) != 2}


def _tracking_imageset(labels):
    return MemoryImageSet(labels[:, None, None].astype(np.uint16), voxel_size=(1.0, 0.5, 0.5))


@pytest.mark.parametrize("seed", [2, 5])
def test_tracking_links_at_least_95_percent(seed):
    labels, links, _ = synthetic.moving_nuclei((160, 160), 15, 8, step=3.0, radius=5, seed=seed)
    result = track(_tracking_imageset(labels), 0, max_distance_um=3.0)
    truth, found = set(links), _found_links(result)
    assert len(truth & found) >= 0.95 * len(truth)
    assert len(found - truth) <= 0.03 * len(found)  # precision: few false links
    assert tuple(result.tracks) == TRACK_COLUMNS and tuple(result.properties) == PROPERTY_COLUMNS


def test_tracking_detects_divisions():
    labels, links, divisions = synthetic.moving_nuclei((160, 160), 15, 8, step=3.0, radius=5, division_rate=0.08, seed=2)
    assert len(divisions) >= 5
    result = track(_tracking_imageset(labels), 0, max_distance_um=3.0, divisions=True)
    truth = set(links)
    assert len(truth & _found_links(result)) >= 0.95 * len(truth)
    # a division is found when both daughters' tracks name the mother's track as parent
    track_of = {(int(t), int(lab)): int(tid) for tid, t, lab in zip(result.tracks["track_id"], result.tracks["t"], result.tracks["label"])}
    parent = dict(zip(result.properties["track_id"], result.properties["parent_id"]))
    found = sum(parent[track_of[(t + 1, a)]] == track_of[(t, m)] == parent[track_of[(t + 1, b)]] for t, m, a, b in divisions)
    assert found >= 0.8 * len(divisions)
    false_links = _found_links(result) - truth
    assert len(false_links) <= 0.03 * len(truth)
    false_divisions = _found_divisions(result) - {(t, m, a, b) for t, m, a, b in divisions}
    assert len(false_divisions) <= 0.2 * len(divisions)  # 2 of 11 here, both after a wrong link
    without = track(_tracking_imageset(labels), 0, max_distance_um=3.0, divisions=False)
    assert not without.properties["parent_id"].any()


def test_gap_closing_and_track_channel_and_properties():
    labels = np.zeros((4, 40, 60), np.uint16)
    for t in range(4):
        labels[t, 10:16, 5 + 4 * t:11 + 4 * t] = 3  # moves 4 px = 2 µm per frame along X
    labels[2] = 0  # missing in frame 2
    ims = _tracking_imageset(labels)
    result = track(ims, 0, max_distance_um=2.5, max_gap=1, output_name="Track_ids")
    assert list(result.properties["length_frames"]) == [3]
    props = {k: v[0] for k, v in result.properties.items()}
    assert (props["start"], props["end"]) == (0, 3)
    assert props["net_displacement_um"] == pytest.approx(6.0) and props["total_displacement_um"] == pytest.approx(6.0)
    assert props["mean_speed_um_per_frame"] == pytest.approx(2.0) and props["straightness"] == pytest.approx(1.0)
    painted = ims.channel(result.channel)
    assert ims.channel_names[-1] == "Track_ids" and set(np.unique(painted[:, 0])) == {0, 1}
    no_gap = track(_tracking_imageset(labels), 0, max_distance_um=2.5, max_gap=0)
    assert len(no_gap.properties["track_id"]) == 2


def test_tracking_bad_input(memory_imageset):
    with pytest.raises(AnalysisError, match="MAX_DISTANCE_UM=-1: must be a positive distance"):
        track(memory_imageset, 0, max_distance_um=-1)
    with pytest.raises(AnalysisError, match="NDIM=2 with 4 planes: tracking needs one label per nucleus"):
        track(memory_imageset, 0, max_distance_um=3, ndim=2)


# ----- atlas ------------------------------------------------------------------------------------------------

def test_atlas_counts_exact_and_densities():
    nuclei, atlas, truth = synthetic.atlas_scene()
    voxel = (2.0, 0.5, 0.5)
    ims = MemoryImageSet(np.stack([nuclei, atlas])[None].astype(np.uint16), voxel_size=voxel)
    table = atlas_counts(ims, 0, 1, region_names={1: "cortex", 2: "striatum"})
    assert tuple(table) == ATLAS_COLUMNS
    assert dict(zip(table["region_id"].tolist(), table["count"].tolist())) == truth
    assert list(table["region_name"]) == ["outside", "cortex", "striatum", "region 3"]
    total = sum(truth.values())
    for region, count in truth.items():
        volume_mm3 = np.count_nonzero(atlas == region) * np.prod(voxel) * 1e-9
        row = list(table["region_id"]).index(region)
        assert table["density_per_mm3"][row] == pytest.approx(count / volume_mm3, rel=0.01)
        assert table["fraction"][row] == pytest.approx(count / total)


def test_atlas_from_a_coarser_file(tmp_path):
    nuclei, atlas, truth = synthetic.atlas_scene()
    path = tmp_path / "atlas.tif"
    tifffile.imwrite(path, atlas[:, ::2, ::2].astype(np.uint8), photometric="minisblack", metadata={"axes": "ZYX"})
    seg = tmp_path / "seg.tif"
    tifffile.imwrite(seg, nuclei.astype(np.uint16), ome=True, photometric="minisblack", metadata={
        "axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5})
    assert main(["atlas", str(seg), str(tmp_path), "--label-channel", "0", "--atlas-file", str(path),
                 "--atlas-voxel-size", "2,1,1"]) == 0
    rows = list(csv.DictReader((tmp_path / "seg_regions.csv").open()))
    assert {int(r["region_id"]): int(r["count"]) for r in rows} == truth


def test_atlas_that_cannot_be_matched(tmp_path, caplog):
    nuclei, atlas, _ = synthetic.atlas_scene()
    ims = MemoryImageSet(nuclei[None, None].astype(np.uint16), voxel_size=(2.0, 0.5, 0.5))
    with pytest.raises(AnalysisError, match=r"the atlas has shape \(20, 40, 60\) but the image \(20, 80, 120\): give ATLAS_VOXEL_SIZE"):
        atlas_counts(ims, 0, atlas[:, ::2, ::2])
    with pytest.raises(AnalysisError, match=r"cannot be matched to the image"):
        atlas_counts(ims, 0, atlas[:, ::2, ::2], atlas_voxel_size=(2.0, 0.5, 0.5))


# ----- cells ------------------------------------------------------------------------------------------------

def test_grown_cell_volumes_within_10_percent():
    ratios = []
    for seed in (1, 2, 3):
        dapi, nuclei, membrane, cells = synthetic.cell_scene(seed=seed)
        ims = MemoryImageSet(np.stack([dapi, nuclei.astype(np.uint16), membrane])[None], voxel_size=(1.0, 0.5, 0.5))
        grown = ims.channel(grow_cells(ims, 1, 2, max_distance_um=8.0))[0]
        assert set(np.unique(grown)) == set(np.unique(nuclei))  # labels match the nuclei
        ratios += [np.count_nonzero(grown == n) / np.count_nonzero(cells == n) for n in range(1, nuclei.max() + 1)]
    assert np.mean(np.abs(np.array(ratios) - 1) <= 0.10) >= 0.9


def test_cell_measurements_and_bad_channel():
    dapi, nuclei, membrane, cells = synthetic.cell_scene(seed=4)
    ims = MemoryImageSet(np.stack([dapi, nuclei.astype(np.uint16), membrane])[None], voxel_size=(1.0, 0.5, 0.5))
    with pytest.raises(IndexRangeError, match=r"MEMBRANE_CHANNEL=3: the image set has channels 0..2"):
        grow_cells(ims, 1, 3, max_distance_um=8.0)
    assert ims.channel_count == 3  # nothing added
    ch = grow_cells(ims, 1, 2, max_distance_um=8.0)
    table = measure(ims, 1, cell_channel=ch)
    grown = ims.channel(ch)[0]
    first = int(table["label"][0])
    assert table["cell_volume_um3"][0] == pytest.approx(np.count_nonzero(grown == first) * 0.25)
    assert table["nucleus_to_cell_ratio"][0] == pytest.approx(np.count_nonzero(nuclei == first) / np.count_nonzero(grown == first))
    # a cell is a sphere cut by its neighbours: its surface-to-volume ratio is at least a sphere's of its volume
    # (3 / r) and, for these cells, at most 30% more; the sphere test below checks the surface itself
    sphere = 3 / (3 * table["cell_volume_um3"] / (4 * np.pi)) ** (1 / 3)
    ratio = table["cell_surface_to_volume_per_um"] / sphere
    assert len(ratio) == nuclei.max() and np.all((ratio > 0.95) & (ratio < 1.3)), ratio


# ----- overlay, scripts and commands ------------------------------------------------------------------------

def test_overlay_png(tmp_path, memory_imageset):
    import matplotlib.image
    from skimage.segmentation import find_boundaries

    labels = memory_imageset.add_channel("labels", np.uint16)
    plane = (memory_imageset.get_channeldata(0, 0, 0) > 0).astype(np.uint16) * 5
    memory_imageset.set_channeldata(labels, 0, 0, plane)
    path = overlay(memory_imageset, tmp_path / "qc.png", image_channel=0, label_channel=labels, time_point=0, plane=0)
    picture = matplotlib.image.imread(path)[..., :3]
    assert picture.shape[:2] == (32, 32)
    outline = find_boundaries(plane, mode="inner")
    assert np.allclose(picture[outline], (1.0, 0.9, 0.0), atol=0.01)  # every outline pixel is yellow
    assert np.allclose(picture[~outline], picture[~outline][:, :1], atol=0.01)  # the rest is grey
    tracks = memory_imageset.add_channel("tracks", np.uint16)
    memory_imageset.set_channeldata(tracks, 0, 0, (plane > 0).astype(np.uint16) * 7)
    with_ids = matplotlib.image.imread(overlay(memory_imageset, tmp_path / "ids.png", image_channel=0,
                                               label_channel=labels, track_channel=tracks))[..., :3]
    changed = np.abs(with_ids - picture).max(axis=-1) > 0.1
    assert changed.sum() >= 5  # the track id is drawn, near the object's centroid (16, 7)
    ys, xs = np.nonzero(changed)
    assert abs(ys.mean() - 16) < 6 and abs(xs.mean() - 7) < 6
    with pytest.raises(IndexRangeError, match="PLANE=9: the image set has planes 0..3"):
        overlay(memory_imageset, tmp_path / "x.png", image_channel=0, label_channel=labels, plane=9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.png", "qc.png"]


def test_overlay_leaves_the_pyplot_backend_alone(tmp_path, memory_imageset):
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.rcParams["backend"] = "svg"
    try:
        overlay(memory_imageset, tmp_path / "qc.png", image_channel=0, label_channel=0)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.rcParams["backend"] = before


def test_track_script_headless(tmp_path):
    labels, _, _ = synthetic.moving_nuclei((96, 96), 6, 4, step=3.0, radius=5, seed=1)
    stack = np.stack([labels * 0 + 100, labels * 0, labels], axis=1).astype(np.uint16)  # T, C, Y, X like segmentation output
    src = tmp_path / "seg.ome.tif"
    tifffile.imwrite(src, stack, ome=True, photometric="minisblack", metadata={
        "axes": "TCYX", "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5, "Channel": {"Name": ["DAPI", "Membrane", "Stardist_DAPI"]}})
    out = tmp_path / "results"
    out.mkdir()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "track.py"), str(src), str(out)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((out / "seg_tracks.csv").open()))
    assert tuple(rows[0]) == TRACK_COLUMNS and len({r["track_id"] for r in rows}) == 6
    with tifffile.TiffFile(out / "seg_track.ome.tif") as tf:
        names = [c["Name"] for c in tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]["Pixels"]["Channel"]]
    assert names == ["DAPI", "Membrane", "Stardist_DAPI", "Track_ids"]


def test_analysis_command_bad_input_writes_nothing(tmp_path, caplog):
    src = tmp_path / "seg.tif"
    tifffile.imwrite(src, np.zeros((2, 16, 16), np.uint16), photometric="minisblack", metadata={"axes": "TYX"})
    out = tmp_path / "out"
    out.mkdir()
    assert main(["measure", str(src), str(out), "--label-channel", "3"]) == 2
    assert "--label-channel 3: the image set has channels 0..0" in caplog.text
    assert main(["measure", str(src), str(out), "--label-channel", "0"]) == 2
    assert "--voxel-size none: the image set has no voxel size, and the results are in micrometres; give --voxel-size z,y,x in µm" in caplog.text
    assert list(out.iterdir()) == []
    assert main(["measure", str(src), str(out), "--label-channel", "0", "--voxel-size", "1,1,1"]) == 0
    assert (out / "seg_measurements.csv").read_text().startswith("label,time_point,plane,centroid_z_px")


# ----- empty label channels, label checks, voxel sizes, CSV -------------------------------------------------

def _empty_scene():
    """2 time points, 3 planes: an intensity channel, an empty label channel, a membrane channel."""
    data = np.zeros((2, 3, 3, 24, 24), np.uint16)
    data[:, 0] = 100
    data[:, 2, :, 8:16, 8:16] = 900
    return MemoryImageSet(data, channel_names=["DAPI", "labels", "Membrane"], voxel_size=(2.0, 0.5, 0.5))


def test_empty_label_channel_gives_empty_tables_in_every_analysis(tmp_path):
    ims = _empty_scene()
    result = track(ims, 1, max_distance_um=3.0, divisions=True, output_name="Track_ids")
    assert tuple(result.tracks) == TRACK_COLUMNS and all(len(v) == 0 for v in result.tracks.values())
    assert tuple(result.properties) == PROPERTY_COLUMNS and all(len(v) == 0 for v in result.properties.values())
    assert not ims.channel(result.channel).any()
    atlas = np.ones((3, 24, 24), np.uint8)
    table = atlas_counts(ims, 1, atlas)
    assert tuple(table) == ATLAS_COLUMNS
    assert table["region_id"].tolist() == [0, 1, 0, 1] and table["count"].tolist() == [0, 0, 0, 0]
    cells = grow_cells(ims, 1, 2, max_distance_um=5.0)
    assert not ims.channel(cells).any()
    table = measure(ims, 1, cell_channel=cells)
    assert list(table) == base_columns(3) + cell_columns(3) and len(table["label"]) == 0
    path = overlay(ims, tmp_path / "qc.png", image_channel=0, label_channel=1, cell_channel=cells,
                   track_channel=result.channel)
    assert path.read_bytes().startswith(b"\x89PNG")
    write_csv(result.tracks, tmp_path / "tracks.csv")
    assert (tmp_path / "tracks.csv").read_bytes() == ",".join(TRACK_COLUMNS).encode() + b"\r\n"


def test_float_label_channel_with_whole_numbers_is_accepted(memory_imageset):
    labels = memory_imageset.channel(0)[:, None].astype(np.float32) / 1000  # 0 and 1.0
    labels[..., 13:, :] *= 2  # three squares: labels 1, 2 and 2 (one object in two parts)
    as_float = MemoryImageSet(np.concatenate([memory_imageset.channel(0)[:, None].astype(np.float32), labels], axis=1),
                              channel_names=["DAPI", "labels"], voxel_size=(2.0, 0.5, 0.5))
    as_int = MemoryImageSet(labels.astype(np.uint16), voxel_size=(2.0, 0.5, 0.5))
    got, expected = measure(as_float, 1), measure(as_int, 0)
    assert got["label"].tolist() == [1, 2] * 3 and all(np.array_equal(got[c], expected[c]) for c in expected)


@pytest.mark.parametrize("value, dtype, message", [
    (0.5, np.float32, (r"LABEL_CHANNEL=1 \('labels'\) has dtype float32 with values that are not whole numbers \(e.g. "
                       r"(np.float32\()?0.5\)?\): labels are whole numbers 0 \(background\) and up")),
    (np.nan, np.float64, r"LABEL_CHANNEL=1 \('labels'\) has dtype float64 with values that are not whole numbers"),
    (-3, np.int16, r"LABEL_CHANNEL=1 \('labels'\) holds negative values \(down to (np.int16\()?-3\)?\)"),
    (1 + 1j, np.complex64, r"LABEL_CHANNEL=1 \('labels'\) has dtype complex64: labels are whole numbers"),
])
def test_label_channel_that_is_not_labels_is_refused(value, dtype, message):
    data = np.zeros((1, 2, 1, 16, 16), dtype)
    data[0, 1, 0, 4:8, 4:8] = value
    ims = MemoryImageSet(data, channel_names=["DAPI", "labels"], voxel_size=(1, 0.5, 0.5))
    with pytest.raises(AnalysisError, match=message):
        measure(ims, 1)


@pytest.fixture(scope="module")
def bundled_2d():
    image = tifffile.imread(ROOT / "data" / "nuclei_2d.tif")
    masks = tifffile.imread(ROOT / "data" / "nuclei_2d_masks.tif")
    return image, masks


@pytest.mark.parametrize("analysis", ["measure", "atlas", "cells", "overlay", "track"])
def test_intensity_channel_as_labels_is_refused(analysis, bundled_2d, tmp_path):
    image, masks = bundled_2d
    ims = MemoryImageSet(np.stack([image, masks])[None, :, None].repeat(2, axis=0), channel_names=["DAPI", "masks"],
                         voxel_size=(1.0, 0.5, 0.5))
    run = {
        "measure": lambda ch: measure(ims, ch),
        "atlas": lambda ch: atlas_counts(ims, ch, np.ones(masks.shape, np.uint8)),
        "cells": lambda ch: grow_cells(ims, ch, 0, max_distance_um=3.0),
        "overlay": lambda ch: overlay(ims, tmp_path / "qc.png", image_channel=0, label_channel=ch),
        "track": lambda ch: track(ims, ch, max_distance_um=3.0),
    }[analysis]
    channels = ims.channel_count
    with pytest.raises(AnalysisError, match=r"LABEL_CHANNEL=0 \('DAPI'\) looks like an intensity image, not labels: "
                                            r"only 19% of its 262110 non-zero pixels share their value with a neighbour"):
        run(0)
    assert ims.channel_count == channels and not (tmp_path / "qc.png").exists()  # nothing written
    run(1)  # the masks pass


def test_bundled_masks_measured_one_row_per_object(bundled_2d):
    image, masks = bundled_2d
    ims = MemoryImageSet(np.stack([image, masks])[None, :, None], channel_names=["DAPI", "masks"], voxel_size=(1, 1, 1))
    table = measure(ims, 1, intensity_channels=[0])
    assert sorted(table["label"].tolist()) == sorted(set(np.unique(masks).tolist()) - {0})


def test_unknown_z_spacing(bundled_2d):
    image, masks = bundled_2d
    flat = MemoryImageSet(np.stack([image, masks])[None, :, None], voxel_size=(1.0, 0.5, 0.5))
    flat.voxel_size = (None, 0.5, 0.5)  # the file gave the pixel size, not the Z spacing
    table = measure(flat, 1)
    assert np.all(np.isnan(table["centroid_z_um"])) and table["area_um2"].sum() == np.count_nonzero(masks) * 0.25
    assert tuple(atlas_counts(flat, 1, np.ones(masks.shape, np.uint8))) == ATLAS_COLUMNS_2D
    stack = MemoryImageSet(np.zeros((2, 1, 3, 8, 8), np.uint16), voxel_size=(1.0, 0.5, 0.5))
    stack.voxel_size = (None, 0.5, 0.5)
    message = r"VOXEL_SIZE=\(None, 0.5, 0.5\): the Z spacing is unknown, and 3D objects need it; give VOXEL_SIZE=\(z, 0.5, 0.5\)"
    for run in (lambda: measure(stack, 0), lambda: track(stack, 0, max_distance_um=2.0),
                lambda: atlas_counts(stack, 0, np.ones((3, 8, 8), np.uint8)),
                lambda: grow_cells(stack, 0, 0, max_distance_um=2.0)):
        with pytest.raises(AnalysisError, match=message):
            run()
    assert stack.channel_count == 1
    assert len(measure(stack, 0, ndim=2)["label"]) == 0  # per-plane objects need no Z spacing


def test_csv_is_utf8_and_full_precision(tmp_path):
    table = {"name": np.array(["Ammon’s horn CA1", "海马", "Ω region"]),
             "value": np.array([1234567.125, 0.1 + 0.2, np.nan]), "count": np.array([1, 2, 3])}
    path = write_csv(table, tmp_path / "t.csv")
    rows = list(csv.DictReader(path.open(encoding="utf-8", newline="")))
    assert [r["name"] for r in rows] == list(table["name"])
    assert [r["value"] for r in rows] == ["1234567.125", "0.30000000000000004", ""]
    assert float(rows[1]["value"]) == 0.1 + 0.2 and [r["count"] for r in rows] == ["1", "2", "3"]
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]  # no temporary file left


# ----- atlas: region names, planes -------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["id,name\n1,cortex\n2,Ammon’s horn Ω\n", "1\tcortex\n2\tAmmon’s horn Ω\n\n",
                                  "\ufeffid;x\n1,cortex\n2,Ammon’s horn Ω\n"])
def test_read_region_names_csv_and_tsv(tmp_path, text):
    path = tmp_path / "names.txt"
    path.write_text(text, encoding="utf-8")
    assert read_region_names(path) == {1: "cortex", 2: "Ammon’s horn Ω"}


def test_read_region_names_bad_file(tmp_path):
    with pytest.raises(AnalysisError, match=r"REGION_NAMES='.*missing.csv': the file does not exist"):
        read_region_names(tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("name,id\ncortex,1\n", encoding="utf-8")
    with pytest.raises(AnalysisError, match=r"no rows of the form 'id,name' found"):
        read_region_names(tmp_path / "bad.csv")
    (tmp_path / "empty.csv").write_bytes(b"")  # an empty file is one more file without rows, not a crash
    with pytest.raises(AnalysisError, match=r"REGION_NAMES='.*empty.csv': no rows of the form 'id,name' found"):
        read_region_names(tmp_path / "empty.csv")


def test_atlas_single_plane_areas_per_mm2():
    nuclei, atlas, _ = synthetic.atlas_scene()  # its middle plane: a 1-plane scene has no inner voxels in Z
    z = 10
    plane_labels, plane_atlas = nuclei[z], atlas[z]
    ims = MemoryImageSet(np.stack([plane_labels, plane_atlas])[None, :, None].astype(np.uint16), voxel_size=(2.0, 0.5, 0.5))
    table = atlas_counts(ims, 0, 1, region_names={1: "cortex"})
    assert tuple(table) == ATLAS_COLUMNS_2D
    # oracle: the atlas region under each object's pixels (objects never touch and lie inside one region)
    expected = {}
    for lab in set(np.unique(plane_labels).tolist()) - {0}:
        region = int(np.bincount(plane_atlas[plane_labels == lab]).argmax())
        expected[region] = expected.get(region, 0) + 1
    got = dict(zip(table["region_id"].tolist(), table["count"].tolist()))
    assert {k: v for k, v in got.items() if v} == expected
    for region, count in got.items():
        area_mm2 = np.count_nonzero(plane_atlas == region) * 0.25 * 1e-6
        row = table["region_id"].tolist().index(region)
        assert table["region_area_um2"][row] == pytest.approx(area_mm2 * 1e6)
        assert table["density_per_mm2"][row] == pytest.approx(count / area_mm2)


def test_atlas_per_plane_labels_count_in_each_plane():
    labels = np.zeros((2, 20, 40), np.uint16)
    atlas = np.zeros((2, 20, 40), np.uint8)
    atlas[:, :, :20], atlas[:, :, 20:] = 1, 2
    labels[0, 4:8, 4:8], labels[0, 12:16, 4:8] = 1, 2  # plane 0: both in region 1
    labels[1, 4:8, 24:28], labels[1, 12:16, 30:34] = 1, 2  # plane 1: the same labels, in region 2
    ims = MemoryImageSet(np.stack([labels, atlas])[None].astype(np.uint16), voxel_size=(2.0, 0.5, 0.5))
    per_plane = atlas_counts(ims, 0, 1, ndim=2)
    assert tuple(per_plane) == ATLAS_COLUMNS_2D
    assert dict(zip(per_plane["region_id"].tolist(), per_plane["count"].tolist())) == {0: 0, 1: 2, 2: 2}
    assert per_plane["region_area_um2"].tolist() == [0.0, 2 * 20 * 20 * 0.25, 2 * 20 * 20 * 0.25]
    as_volumes = atlas_counts(ims, 0, 1)  # NDIM None: several planes, labels taken as 3D objects
    assert tuple(as_volumes) == ATLAS_COLUMNS and as_volumes["count"].sum() == 2


# ----- cells: reach, threshold, 2D, surfaces ---------------------------------------------------------------

def test_cells_cut_at_max_distance():
    from scipy import ndimage

    dapi, nuclei, membrane, cells = synthetic.cell_scene(seed=1)
    voxel = (1.0, 0.5, 0.5)
    ims = MemoryImageSet(np.stack([dapi, nuclei.astype(np.uint16), membrane])[None], voxel_size=voxel)
    grown = ims.channel(grow_cells(ims, 1, 2, max_distance_um=3.0))[0]
    for n in range(1, nuclei.max() + 1):
        reach = ndimage.distance_transform_edt(nuclei != n, sampling=voxel)  # µm from nucleus n
        assert reach[grown == n].max() <= 3.0
        expected = np.count_nonzero((cells == n) & (reach <= 3.0))  # the true cell within reach
        assert np.count_nonzero(grown == n) == pytest.approx(expected, rel=0.05)


def test_cells_explicit_threshold():
    dapi, nuclei, membrane, cells = synthetic.cell_scene(seed=1)
    voxel = (1.0, 0.5, 0.5)
    grown, used = grow(nuclei, membrane, voxel=voxel, max_distance_um=8.0, threshold=550)
    assert used == 550
    ratios = [np.count_nonzero(grown == n) / np.count_nonzero(cells == n) for n in range(1, nuclei.max() + 1)]
    assert np.all(np.abs(np.array(ratios) - 1) <= 0.1)
    above_all, _ = grow(nuclei, membrane, voxel=voxel, max_distance_um=8.0, threshold=65536)
    assert np.array_equal(above_all, nuclei)  # nothing counts as cell: the cells are the nuclei
    ims = MemoryImageSet(np.stack([dapi, nuclei.astype(np.uint16), membrane])[None], voxel_size=voxel)
    with pytest.raises(AnalysisError, match=r"THRESHOLD='high': must be an intensity, or None to compute it"):
        grow_cells(ims, 1, 2, max_distance_um=8.0, threshold="high")


def test_cells_grown_in_2d():
    dapi, nuclei, membrane, cells = synthetic.cell_scene((160, 160), seed=1)
    ims = MemoryImageSet(np.stack([dapi, nuclei.astype(np.uint16), membrane])[None, :, None], voxel_size=(1.0, 0.5, 0.5))
    grown = ims.channel(grow_cells(ims, 1, 2, max_distance_um=8.0))[0, 0]
    ratios = [np.count_nonzero(grown == n) / np.count_nonzero(cells == n) for n in range(1, nuclei.max() + 1)]
    assert np.all(np.abs(np.array(ratios) - 1) <= 0.1)


def test_cell_surface_of_a_sphere_and_perimeter_of_a_disc():
    voxel, radius = (1.0, 0.5, 0.5), 6.0
    z, y, x = np.indices((20, 40, 40))
    r2 = ((z - 9.5) * voxel[0]) ** 2 + ((y - 19.5) * voxel[1]) ** 2 + ((x - 19.5) * voxel[2]) ** 2
    ims = MemoryImageSet(np.stack([(r2 <= 9), (r2 <= radius ** 2)])[None].astype(np.uint16) * 3, voxel_size=voxel)
    row = {k: v[0] for k, v in measure(ims, 0, cell_channel=1).items()}
    assert row["cell_surface_um2"] == pytest.approx(4 * np.pi * radius ** 2, rel=0.05)
    assert row["cell_surface_to_volume_per_um"] == pytest.approx(3 / radius, rel=0.05)
    y, x = np.indices((60, 60))
    r2 = ((y - 29.5) * 0.5) ** 2 + ((x - 29.5) * 0.5) ** 2
    ims = MemoryImageSet(np.stack([(r2 <= 9), (r2 <= 100)])[None, :, None].astype(np.uint16), voxel_size=(1, 0.5, 0.5))
    row = {k: v[0] for k, v in measure(ims, 0, cell_channel=1).items()}
    assert row["cell_perimeter_um"] == pytest.approx(2 * np.pi * 10, rel=0.05)
    assert row["cell_area_to_perimeter_um"] == pytest.approx(10 / 2, rel=0.05)


def test_link_minimises_the_sum_not_each_distance():
    # B's nearest is a, but linking A-a and B-b costs less in total than B-a with A and b unlinked
    cost = np.array([[4.0, np.inf], [1.0, 4.0]])
    assert link(cost, no_link=6.25) == [(0, 0), (1, 1)]
    assert link(cost, no_link=2.0) == [(1, 0)]
