"""NapariImageSet on napari's ViewerModel (no display): the conformance kit, axes, voxel size, bad layers, the scripts."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari", reason="napari is not installed (pip install -e '.[napari]')")

from napari.components import ViewerModel  # noqa: E402

from stardist_host.errors import ReadOnlyInputError  # noqa: E402
from stardist_host.host import set_active_imageset  # noqa: E402
from stardist_host.napari.imageset import LayerError, NapariImageSet, channel_layers, layer_axes  # noqa: E402
from stardist_host.testing.conformance import ImageSetConformance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NEW_NAPARI = hasattr(napari.layers.Image(np.zeros((2, 2))), "axis_labels")  # layers have axis labels from 0.6


def add_image(viewer, data, *, labels=None, **kwargs):
    """An Image layer with axis labels, set on the layer (napari >= 0.6) or on the viewer's dims (0.5)."""
    if labels is not None and NEW_NAPARI:
        kwargs["axis_labels"] = labels
    layer = viewer.add_image(data, **kwargs)
    if labels is not None and not NEW_NAPARI:
        viewer.dims.axis_labels = labels
    return layer


class TestOneLayerPerChannel(ImageSetConformance):
    """As napari opens a multi-channel file: one layer per channel, axes T, Z, Y, X from napari's default labels."""

    get_returns = "copy"

    @pytest.fixture
    def make_imageset(self):
        def make(data, channel_names, voxel_size):
            viewer = ViewerModel()
            layers = [viewer.add_image(data[:, c], name=name, scale=(1.0, *voxel_size))
                      for c, name in enumerate(channel_names)]
            return NapariImageSet(viewer, layers)

        return make


class TestChannelAxis(ImageSetConformance):
    """One layer whose axis labels name a channel axis; channel names from its metadata."""

    get_returns = "copy"

    @pytest.fixture
    def make_imageset(self):
        def make(data, channel_names, voxel_size):
            viewer = ViewerModel()
            layer = add_image(viewer, data, labels=("t", "c", "z", "y", "x"), scale=(1.0, 1.0, *voxel_size),
                              metadata={"channel_names": list(channel_names)})
            return NapariImageSet(viewer, layer)

        return make


@pytest.mark.parametrize("shape, labels, axes", [
    ((8, 8), None, "YX"),
    ((3, 8, 8), None, "ZYX"),
    ((2, 3, 8, 8), None, "TZYX"),
    ((2, 2, 3, 8, 8), None, "TCZYX"),
    ((3, 8, 8), ("t", "y", "x"), "TYX"),
    ((3, 8, 8), ("Time", "-2", "-1"), "TYX"),
    ((2, 3, 8, 8), ("c", "-3", "-2", "-1"), "CZYX"),
])
def test_axes_from_labels(shape, labels, axes):
    viewer = ViewerModel()
    layer = add_image(viewer, np.zeros(shape, np.uint8), labels=labels)
    assert layer_axes(viewer, layer) == axes
    imageset = NapariImageSet(viewer, layer)
    sizes = dict(zip(axes, shape))
    assert (imageset.time_point_count, imageset.plane_count, imageset.channel_count) == (
        sizes.get("T", 1), sizes.get("Z", 1), sizes.get("C", 1))


def test_axes_given_override_the_labels():
    viewer = ViewerModel()
    layer = viewer.add_image(np.zeros((3, 8, 8), np.uint8))
    assert NapariImageSet(viewer, layer, axes="TYX").time_point_count == 3


def test_current_time_point_follows_the_slider_and_scale():
    viewer = ViewerModel()
    layer = add_image(viewer, np.zeros((5, 8, 8), np.uint8), labels=("t", "y", "x"), scale=(2.0, 1.0, 1.0))
    imageset = NapariImageSet(viewer, layer)
    viewer.dims.set_current_step(0, 3)
    assert imageset.current_time_point == 3
    viewer.dims.set_current_step(0, 1)
    assert imageset.current_time_point == 1


@pytest.mark.parametrize("scale, units, expected", [
    ((1, 1, 1), None, None),  # napari's default: nothing known
    ((2.0, 0.5, 0.5), None, (2.0, 0.5, 0.5)),  # a scale without units is taken as µm
    ((2.0, 0.5, 0.5), ("nm", "nm", "nm"), (0.002, 0.0005, 0.0005)),
])
def test_voxel_size_from_scale(scale, units, expected):
    if units is not None and not NEW_NAPARI:
        pytest.skip("layers have units from napari 0.6")
    viewer = ViewerModel()
    layer = viewer.add_image(np.zeros((3, 8, 8), np.uint8), scale=scale, **({"units": units} if units else {}))
    voxel = NapariImageSet(viewer, layer).voxel_size
    assert voxel == (None if expected is None else pytest.approx(expected))


def test_planes_without_z_have_no_z_spacing():
    viewer = ViewerModel()
    layer = viewer.add_image(np.zeros((8, 8), np.uint8), scale=(0.5, 0.5))
    assert NapariImageSet(viewer, layer).voxel_size == (None, 0.5, 0.5)


def test_add_channel_is_a_labels_layer_over_the_image():
    viewer = ViewerModel()
    layer = add_image(viewer, np.zeros((2, 3, 4, 16, 16), np.uint16), labels=("t", "c", "z", "y", "x"),
                      scale=(1, 1, 2.0, 0.5, 0.5), translate=(0, 0, 10, 5, 5), name="cells")
    imageset = NapariImageSet(viewer, layer)
    assert imageset.channel_names == ["cells 0", "cells 1", "cells 2"]
    new = imageset.add_channel("Stardist_cells 0", np.uint32)
    labels = viewer.layers["Stardist_cells 0"]
    assert isinstance(labels, napari.layers.Labels) and imageset.labels_layer(new) is labels
    assert labels.data.shape == (2, 4, 16, 16) and labels.data.dtype == np.uint32
    np.testing.assert_allclose(labels.scale, (1, 2.0, 0.5, 0.5))
    np.testing.assert_allclose(labels.translate, (0, 10, 5, 5))
    imageset.set_channeldata(new, 2, 1, np.full((16, 16), 7, np.uint32))
    assert labels.data[1, 2].min() == 7 and labels.data.sum() == 7 * 256


def test_input_layers_are_never_written():
    viewer = ViewerModel()
    layer = viewer.add_image(np.ones((8, 8), np.uint16), name="DAPI")
    imageset = NapariImageSet(viewer, layer)
    with pytest.raises(ReadOnlyInputError, match="'DAPI'.*never modified"):
        imageset.set_channeldata(0, 0, 0, np.zeros((8, 8), np.uint16))
    assert layer.data.min() == 1


def test_channel_layers_are_the_image_layers_of_the_same_shape():
    viewer = ViewerModel()
    dapi = viewer.add_image(np.zeros((3, 8, 8), np.uint16), name="DAPI")
    viewer.add_image(np.zeros((3, 9, 8), np.uint16), name="other size")
    membrane = viewer.add_image(np.zeros((3, 8, 8), np.uint16), name="Membrane")
    viewer.add_labels(np.zeros((3, 8, 8), np.uint16), name="masks")
    assert channel_layers(viewer, membrane) == [dapi, membrane]
    assert NapariImageSet(viewer, channel_layers(viewer, dapi)).channel_names == ["DAPI", "Membrane"]


@pytest.mark.parametrize("make, message", [
    (lambda v: v.add_image(np.zeros((8, 8, 3), np.uint8), name="photo", rgb=True), r"'photo' is RGB"),
    (lambda v: v.add_labels(np.zeros((8, 8), np.uint16), name="masks"), r"'masks' is a Labels layer"),
    (lambda v: v.add_points(np.zeros((2, 2)), name="spots"), r"'spots' is a Points layer"),
    (lambda v: add_image(v, np.zeros((3, 8), np.uint8), name="table", labels=("t", "c")),
     r"'table' has no spatial axes Y, X .*axes are T, C"),
    (lambda v: add_image(v, np.zeros((3, 8, 8), np.uint8), name="yxt", labels=("y", "x", "t")),
     r"'yxt' has no spatial axes Y, X as its last two"),
])
def test_bad_layers_are_refused_with_one_line(make, message):
    viewer = ViewerModel()
    layer = make(viewer)
    with pytest.raises(LayerError, match=message) as info:
        NapariImageSet(viewer, layer)
    assert "\n" not in str(info.value)
    assert len(viewer.layers) == 1  # nothing added


def test_a_removed_layer_is_named():
    viewer = ViewerModel()
    layer = viewer.add_image(np.zeros((8, 8), np.uint16), name="DAPI")
    imageset = NapariImageSet(viewer, layer)
    viewer.layers.remove(layer)
    with pytest.raises(LayerError, match="'DAPI' was removed"):
        imageset.get_channeldata(0, 0, 0)


@pytest.mark.parametrize("script, crop", [("stardist_2d.py", None), ("stardist_3d.py", slice(8, 23))])
def test_scripts_run_unchanged_on_the_active_napari_imageset(monkeypatch, script, crop):
    """As pasted into napari's console: the script segments the active image set, in a child process, into a Labels layer."""
    import tifffile

    viewer = ViewerModel()
    if script == "stardist_2d.py":
        data = tifffile.imread(ROOT / "data" / "nuclei_2d_t.tif")  # T, C, Y, X
        layers = [add_image(viewer, data[:, c], name=name, labels=("t", "y", "x"))
                  for c, name in enumerate(("DAPI", "Membrane"))]
        viewer.dims.set_current_step(0, 2)
    else:
        layers = [add_image(viewer, tifffile.imread(ROOT / "data" / "nuclei_3d.tif")[crop], name="DAPI",
                            scale=(2.0, 0.5, 0.5))]
    imageset = NapariImageSet(viewer, layers)
    monkeypatch.setattr(sys, "argv", ["napari"])  # the console's: no file arguments
    set_active_imageset(imageset)
    try:
        namespace = runpy.run_path(str(ROOT / "scripts" / script), run_name="__main__")
    finally:
        set_active_imageset(None)
    labels = viewer.layers["Stardist_DAPI"]
    assert isinstance(labels, napari.layers.Labels) and labels.data.shape == layers[0].data.shape
    assert namespace["SEPARATE_PROCESS"] == "auto"
    if script == "stardist_2d.py":
        assert not labels.data[:2].any() and len(np.unique(labels.data[2])) > 10  # the slider's time point only
    else:
        assert len(np.unique(labels.data)) > 10
        np.testing.assert_allclose(labels.scale, (2.0, 0.5, 0.5))


def test_axes_given_for_a_layer_napari_opened_without_labels():
    """napari opens the 2D+t sample as one layer (T, C, Y, X) without axis labels: axes="TCYX" says what they are."""
    import tifffile

    viewer = ViewerModel()
    layer = viewer.add_image(tifffile.imread(ROOT / "data" / "nuclei_2d_t.tif"), name="nuclei_2d_t")
    assert layer_axes(viewer, layer) == "TZYX"  # the guess from four axes
    imageset = NapariImageSet(viewer, layer, axes="TCYX")
    assert (imageset.time_point_count, imageset.channel_count, imageset.plane_count) == (3, 2, 1)
    assert imageset.channel_names == ["nuclei_2d_t 0", "nuclei_2d_t 1"]
    np.testing.assert_array_equal(imageset.get_channeldata(1, 0, 2), layer.data[2, 1])
    new = imageset.add_channel("Stardist_nuclei_2d_t 0", np.uint16)
    assert viewer.layers["Stardist_nuclei_2d_t 0"].data.shape == (3, 256, 256) and new == 2


def test_labels_layers_are_read_only_label_channels_after_the_images():
    """As the analyses read a segmentation's labels: Labels layers of the image's shape (without C) as channels."""
    from stardist_host.napari.imageset import label_layers

    viewer = ViewerModel()
    image = add_image(viewer, np.arange(2 * 2 * 3 * 4, dtype=np.uint16).reshape(2, 2, 3, 4),
                      labels=("t", "c", "y", "x"))
    nuclei = viewer.add_labels(np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4), name="nuclei")
    viewer.add_labels(np.zeros((3, 4), np.int32), name="other shape")
    assert label_layers(viewer, image) == [nuclei]
    imageset = NapariImageSet(viewer, image, labels=[nuclei])
    assert imageset.channel_names == [f"{image.name} 0", f"{image.name} 1", "nuclei"]
    np.testing.assert_array_equal(imageset.get_channeldata(2, 0, 1), nuclei.data[1])
    assert [imageset.is_labels(c) for c in range(3)] == [False, False, True]
    with pytest.raises(ReadOnlyInputError):
        imageset.set_channeldata(2, 0, 0, np.zeros((3, 4), np.int32))
    added = imageset.add_channel("cells", np.uint16)
    assert added == 3 and imageset.is_labels(3)
    with pytest.raises(LayerError, match="'other shape' has the shape"):
        NapariImageSet(viewer, image, labels=[viewer.layers["other shape"]])
    with pytest.raises(LayerError, match="is not a Labels layer"):
        NapariImageSet(viewer, image, labels=[image])
