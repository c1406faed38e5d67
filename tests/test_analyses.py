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
from stardist_host.analyses.atlas import ATLAS_COLUMNS, atlas_counts
from stardist_host.analyses.cells import grow_cells
from stardist_host.analyses.common import AnalysisError
from stardist_host.analyses.measure import base_columns, measure
from stardist_host.analyses.overlay import overlay
from stardist_host.analyses.tracking import PROPERTY_COLUMNS, TRACK_COLUMNS, track
from stardist_host.cli import main
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
    with pytest.raises(AnalysisError, match=r"LABEL_CHANNEL=5: the image set has channels 0..1 \(DAPI, Other\)"):
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


def _tracking_imageset(labels):
    return MemoryImageSet(labels[:, None, None].astype(np.uint16), voxel_size=(1.0, 0.5, 0.5))


@pytest.mark.parametrize("seed", [2, 5])
def test_tracking_links_at_least_95_percent(seed):
    labels, links, _ = synthetic.moving_nuclei((160, 160), 15, 8, step=3.0, radius=5, seed=seed)
    result = track(_tracking_imageset(labels), 0, max_distance_um=3.0)
    truth = set(links)
    assert len(truth & _found_links(result)) >= 0.95 * len(truth)
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
    with pytest.raises(AnalysisError, match=r"MEMBRANE_CHANNEL=3: the image set has channels 0..2"):
        grow_cells(ims, 1, 3, max_distance_um=8.0)
    assert ims.channel_count == 3  # nothing added
    ch = grow_cells(ims, 1, 2, max_distance_um=8.0)
    table = measure(ims, 1, cell_channel=ch)
    grown = ims.channel(ch)[0]
    first = int(table["label"][0])
    assert table["cell_volume_um3"][0] == pytest.approx(np.count_nonzero(grown == first) * 0.25)
    assert table["nucleus_to_cell_ratio"][0] == pytest.approx(np.count_nonzero(nuclei == first) / np.count_nonzero(grown == first))
    assert 0.1 < table["cell_surface_to_volume_per_um"][0] < 2


# ----- overlay, scripts and commands ------------------------------------------------------------------------

def test_overlay_png(tmp_path, memory_imageset):
    labels = memory_imageset.add_channel("labels", np.uint16)
    memory_imageset.set_channeldata(labels, 0, 0, (memory_imageset.get_channeldata(0, 0, 0) > 0).astype(np.uint16))
    path = overlay(memory_imageset, tmp_path / "qc.png", image_channel=0, label_channel=labels, time_point=0, plane=0)
    import matplotlib.image

    picture = matplotlib.image.imread(path)
    assert picture.shape[:2] == (32, 32)
    assert tuple(picture[4, 4, :3]) == pytest.approx((1.0, 0.9, 0.0), abs=0.01)  # outline pixel is yellow
    with pytest.raises(AnalysisError, match="PLANE=9: the image set has planes 0..3"):
        overlay(memory_imageset, tmp_path / "x.png", image_channel=0, label_channel=labels, plane=9)


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
    assert "LABEL_CHANNEL=3: the image set has channels 0..0" in caplog.text
    assert main(["measure", str(src), str(out), "--label-channel", "0"]) == 2
    assert "VOXEL_SIZE=None: the image set has no voxel size" in caplog.text
    assert list(out.iterdir()) == []
    assert main(["measure", str(src), str(out), "--label-channel", "0", "--voxel-size", "1,1,1"]) == 0
    assert (out / "seg_measurements.csv").read_text().startswith("label,time_point,plane,centroid_z_px")
