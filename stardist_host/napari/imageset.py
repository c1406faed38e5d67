"""The host contract over napari layers: an image set whose channels are an Image layer's (or several layers').

:class:`NapariImageSet` reads planes from a napari Image layer, with the axes
the user sees in the viewer (T, C, Z, Y, X from the layer's or the viewer's
axis labels), and adds each new channel as a Labels layer with the image's
shape, scale and position.  Like any host object it must be called from the
thread that owns the viewer (Qt's GUI thread); the dock widget's runs reach it
through :class:`~stardist_host.napari.calls.GuiThreadImageSet`.

Works on a ``napari.Viewer`` and on a display-less ``napari.components.ViewerModel``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..errors import ReadOnlyInputError, StardistHostError
from ..io.imagesets import ChannelChecks, fit_to_dtype

__all__ = ["NapariImageSet", "LayerError", "layer_axes", "channel_layers", "label_layers"]

# What a user may call an axis in napari (axis labels are free text), by the letter it means.
_AXIS_NAMES = {
    "T": ("t", "time", "frame", "frames", "timepoint", "time point"),
    "C": ("c", "ch", "channel", "channels"),
    "Z": ("z", "depth", "plane", "planes", "slice", "slices"),
    "Y": ("y", "row", "rows"),
    "X": ("x", "col", "column", "columns"),
}
_BY_NAME = {name: letter for letter, names in _AXIS_NAMES.items() for name in names}
# Axes without a known label are taken from the right in this order (napari shows the last two as the plane):
# a 4D layer is TZYX, a 5D one TCZYX, as bioio orders them.
_FILL, _FILL_FEWER = "XYZCT", "XYZTC"


class LayerError(StardistHostError, ValueError):
    """A napari layer that cannot be segmented as it is (RGB, a Labels layer, no Y and X axes, removed)."""


def _labels_of(viewer, layer) -> tuple[str, ...]:
    """The layer's axis labels: its own (napari >= 0.6), else the viewer's for the layer's (trailing) dims."""
    own = tuple(getattr(layer, "axis_labels", ()) or ())
    if own and any(str(label).strip().lower() in _BY_NAME for label in own):
        return tuple(map(str, own))
    labels = tuple(map(str, viewer.dims.axis_labels))
    return labels[-layer.ndim:] if len(labels) >= layer.ndim else own


def layer_axes(viewer, layer, axes: str | None = None) -> str:
    """The axes of ``layer`` as TCZYX letters, e.g. ``"TZYX"``.

    Labels the user gave (``t``, ``time``, ``c``, ``channel``, ``z``, ``y``,
    ``x`` ..., in the layer or in the viewer's dims) name their axes; axes with
    other labels (napari's default numbers) are X, Y, Z, T, C from the right
    (five such axes: TCZYX), skipping letters already named.  So a 3D layer without labels is ZYX and a
    4D one TZYX; a time series of planes needs the label ``t`` (or ``axes="TYX"``).

    Raises
    ------
    LayerError
        An axis named twice, more than five axes, or Y and X not the last two axes.
    """
    name = getattr(layer, "name", "?")
    if axes is not None:
        letters = str(axes).upper()
        if len(letters) != layer.ndim or set(letters) - set("TCZYX"):
            raise LayerError(f"axes={axes!r}: layer {name!r} has {layer.ndim} axes; give one of T, C, Z, Y, X for each")
        how = f"axes={axes!r}"
    else:
        if layer.ndim > 5:
            raise LayerError(f"layer {name!r} has {layer.ndim} axes; an image set has at most five (T, C, Z, Y, X)")
        labels = _labels_of(viewer, layer)
        named = [_BY_NAME.get(label.strip().lower()) for label in labels]
        order = _FILL if named.count(None) == 5 else _FILL_FEWER
        free = iter(letter for letter in order if letter not in named)
        letters = "".join(reversed([n or next(free) for n in reversed(named)]))
        how = f"from the axis labels {', '.join(map(repr, labels))}"
    if len(set(letters)) != len(letters):
        raise LayerError(f"layer {name!r}: an axis is named twice ({', '.join(letters)}, {how})")
    if letters[-2:] != "YX":
        raise LayerError(
            f"layer {name!r} has no spatial axes Y, X as its last two axes (its axes are {', '.join(letters)}, {how}): "
            "StarDist segments Y-X planes; label the last two axes y and x"
        )
    return letters


def _check_image_layer(layer) -> None:
    from napari.layers import Image, Labels

    name = getattr(layer, "name", repr(layer))
    if isinstance(layer, Labels):
        raise LayerError(f"layer {name!r} is a Labels layer: choose the Image layer with the nuclei")
    if not isinstance(layer, Image):
        raise LayerError(f"layer {name!r} is a {type(layer).__name__} layer, not an Image layer")
    if layer.rgb:
        raise LayerError(
            f"layer {name!r} is RGB (colour in its last axis): StarDist needs one channel of intensities; split it "
            "into one layer per colour (right-click the layer: Split RGB) and choose the nuclei's"
        )
    if layer.multiscale:
        raise LayerError(f"layer {name!r} is multiscale (a pyramid): open its full-resolution level as an image")


def channel_layers(viewer, layer, axes: str | None = None) -> list:
    """The layers that are the channels of ``layer``'s image set: ``layer`` alone, or all of its kind.

    A layer with a channel axis is one image set by itself.  Otherwise the
    Image layers with its shape and scale (in the viewer's order) are its
    channels, as napari makes them from a multi-channel file (one layer per
    channel); RGB and multiscale layers are left out.  ``axes`` as for :func:`layer_axes`.
    """
    if "C" in layer_axes(viewer, layer, axes):
        return [layer]
    from napari.layers import Image

    same = [
        other for other in viewer.layers
        if isinstance(other, Image) and not other.rgb and not other.multiscale
        and other.data.shape == layer.data.shape and np.allclose(other.scale, layer.scale)
    ]
    return same if layer in same else [layer]


def _voxel_size(layer, axes: str) -> tuple[float | None, float, float] | None:
    """(z, y, x) in µm from the layer's scale: its units where they are lengths, else the scale taken as µm.

    All-1 scales in pixels (napari's default) say nothing: None.
    """
    units = tuple(getattr(layer, "units", ()) or ())
    sizes: dict[str, float | None] = {}
    pixel_units = True
    for letter in "ZYX":
        if letter not in axes:
            continue
        i = axes.index(letter)
        value = float(layer.scale[i])
        unit = units[i] if i < len(units) else None
        if unit is not None and str(getattr(unit, "dimensionality", "")) == "[length]":
            value = float((1 * unit).to("micrometer").magnitude) * value
            pixel_units = False
        sizes[letter] = value
    if pixel_units and all(math.isclose(v, 1.0) for v in sizes.values()):
        return None
    return sizes.get("Z"), sizes["Y"], sizes["X"]


def _without_c(axes: str, values) -> tuple:
    """``values`` (one per axis of ``axes``) but the C axis's: those of a label image of the layer."""
    return tuple(value for value, letter in zip(values, axes) if letter != "C")


def label_layers(viewer, image, axes: str | None = None) -> list:
    """The Labels layers that fit ``image``: its shape without the channel axis and its scale, in the viewer's order."""
    from napari.layers import Labels

    axes = layer_axes(viewer, image, axes)
    shape, scale = _without_c(axes, image.data.shape), _without_c(axes, image.scale)
    return [other for other in viewer.layers
            if isinstance(other, Labels) and other.data.shape == shape and np.allclose(other.scale, scale)]


class NapariImageSet(ChannelChecks):
    """An image set over a napari Image layer, or over one Image layer per channel.

    Parameters
    ----------
    viewer
        ``napari.Viewer`` or ``napari.components.ViewerModel`` that holds the layer(s).
    layer
        An Image layer (its channel axis, if it has one, gives the channels), or
        a sequence of Image layers of the same shape, one per channel.
    axes
        The layer's axes as TCZYX letters where the axis labels do not say
        (see :func:`layer_axes`).
    labels
        Labels layers with the image's shape without its channel axis (see
        :func:`label_layers`): read-only channels after the image's, as the
        analyses read the labels a segmentation made.

    Notes
    -----
    Channel names are the layers' names, or for a layer with a channel axis
    ``layer.metadata["channel_names"]`` where present, else ``"NAME 0"`` ...
    The voxel size is the layer's scale (see :func:`_voxel_size`); the current
    time point the viewer's slider position on the T axis.  ``add_channel`` adds
    a Labels layer; the input layers are never modified.  ``get_channeldata``
    returns a copy.  Call it from the viewer's (GUI) thread only.

    Raises
    ------
    LayerError
        A layer that is a Labels layer, RGB, multiscale, without Y and X axes,
        or layers of different shapes.
    """

    def __init__(self, viewer, layer, *, axes: str | None = None, labels=()) -> None:
        layers = list(layer) if isinstance(layer, (list, tuple)) else [layer]
        if not layers:
            raise LayerError("no layer given: choose the Image layer with the nuclei")
        for each in layers:
            _check_image_layer(each)
        self.viewer = viewer
        self.axes = layer_axes(viewer, layers[0], axes)
        first = layers[0]
        for other in layers[1:]:
            if layer_axes(viewer, other, axes) != self.axes or other.data.shape != first.data.shape:
                raise LayerError(
                    f"layers {first.name!r} and {other.name!r} differ in shape {first.data.shape} / {other.data.shape} "
                    "or axes: the channels of an image set have one shape"
                )
            if "C" in self.axes:
                raise LayerError(f"layer {first.name!r} has a channel axis: give it alone, not with other layers")
        shape = dict(zip(self.axes, first.data.shape))
        if "C" in self.axes:
            names = list(first.metadata.get("channel_names", ()) or ())
            if len(names) != shape["C"]:
                names = [f"{first.name} {c}" for c in range(shape["C"])]
            self._inputs = [(first, c) for c in range(shape["C"])]
        else:
            names = [each.name for each in layers]
            self._inputs = [(each, None) for each in layers]
        self._names = [str(n) for n in names]  # the input channels'; added ones are named by their layers
        for each in labels:  # read-only label channels after the image's (the analyses' LABEL_CHANNEL ...)
            self._check_labels_layer(each, first)
            self._inputs.append((each, None))
            self._names.append(str(each.name))
        self._n_input = len(self._inputs)
        self._added: list[Any] = []  # Labels layers, in channel order after the inputs
        self.time_point_count = int(shape.get("T", 1))
        self.plane_count = int(shape.get("Z", 1))
        self.plane_shape = (int(shape["Y"]), int(shape["X"]))
        self.voxel_size = _voxel_size(first, self.axes)
        self._image = first

    # ----- the contract ------------------------------------------------------------------------------------------

    @property
    def channel_count(self) -> int:
        return len(self._inputs) + len(self._added)

    @property
    def channel_names(self) -> list[str]:
        return self._names + [layer.name for layer in self._added]

    @property
    def current_time_point(self) -> int:
        """The time point of the viewer's dims slider on the layer's T axis (0 without one)."""
        if "T" not in self.axes:
            return 0
        data_position = self._image.world_to_data(self.viewer.dims.point)
        t = int(round(float(data_position[self.axes.index("T")])))
        return min(max(t, 0), self.time_point_count - 1)

    def get_channeldata(self, channel: int, plane: int, time_point: int) -> NDArray:
        self._check(channel, plane, time_point)
        n = self._n_input
        layer, c = self._inputs[channel] if channel < n else (self._added[channel - n], None)
        self._present(layer)
        axes = self.axes if c is not None else self._label_axes  # the same without a channel axis
        return np.array(layer.data[self._index(axes, c, plane, time_point)], copy=True)

    def set_channeldata(self, channel: int, plane: int, time_point: int, data: NDArray) -> None:
        self._check(channel, plane, time_point)
        if channel < self._n_input:
            raise ReadOnlyInputError(
                f"channel {channel} ({self._names[channel]!r}) is the napari layer "
                f"{self._inputs[channel][0].name!r}, which is never modified; write to a channel made with add_channel"
            )
        self._check_plane(data)
        layer = self._added[channel - self._n_input]
        self._present(layer)
        where = f"channel {channel}, plane {plane}, time point {time_point}"
        layer.data[self._index(self._label_axes, None, plane, time_point)] = fit_to_dtype(data, layer.data.dtype, where)
        if self._shown(layer, plane, time_point):  # napari reads other planes from the data when it shows them
            layer.refresh()

    def add_channel(self, name: str, dtype: DTypeLike) -> int:
        """Add a Labels layer named ``name`` (napari appends `` [1]`` where the name is taken) and return its channel.

        A float channel (OUTPUT_PROBABILITY) is an Image layer, 0..1 in magma, blended over the input.
        """
        image = self._image
        options: dict[str, Any] = {"name": name}
        for attr in ("scale", "translate", "axis_labels", "units"):  # the last two: napari >= 0.6
            values = getattr(image, attr, None)
            if values is not None and len(values) == image.ndim:
                options[attr] = _without_c(self.axes, values)
        data = np.zeros(_without_c(self.axes, image.data.shape), dtype=np.dtype(dtype))
        if data.dtype.kind == "f":  # OUTPUT_PROBABILITY: an image over the input, not labels
            layer = self.viewer.add_image(data, colormap="magma", contrast_limits=(0.0, 1.0), blending="additive",
                                          **options)
        else:
            layer = self.viewer.add_labels(data, **options)
        self._added.append(layer)
        return self.channel_count - 1

    def _input_is(self) -> str:
        return "is an input layer's"

    def _drop(self, index: int) -> None:
        """Let go of an added channel: its layer leaves the viewer (see :meth:`remove_channel`)."""
        layer = self._added.pop(index - self._n_input)
        if layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    # ----- napari ------------------------------------------------------------------------------------------------

    def _check_labels_layer(self, layer, image) -> None:
        from napari.layers import Labels

        if not isinstance(layer, Labels):
            raise LayerError(f"layer {getattr(layer, 'name', layer)!r} is not a Labels layer; only Labels layers "
                             "join an image's channels as label channels")
        shape = _without_c(self.axes, image.data.shape)
        if layer.data.shape != shape:
            raise LayerError(f"Labels layer {layer.name!r} has the shape {layer.data.shape}; the channels of "
                             f"{image.name!r} have {shape}")

    def is_labels(self, channel: int) -> bool:
        """Whether ``channel`` is a Labels layer's (given as ``labels`` or made with :meth:`add_channel`)."""
        from napari.layers import Labels

        self._check_channel(channel)
        return channel >= self._n_input or isinstance(self._inputs[channel][0], Labels)

    @property
    def layers(self) -> list:
        """The input layers, one per channel (or the one layer with a channel axis)."""
        return list(dict.fromkeys(layer for layer, _ in self._inputs))

    def labels_layer(self, channel: int):
        """The Labels layer of a channel made with :meth:`add_channel`."""
        self._check_channel(channel)
        return self._added[channel - self._n_input]

    @property
    def _label_axes(self) -> str:
        return self.axes.replace("C", "")

    def _index(self, axes: str, c: int | None, plane: int, time_point: int) -> tuple:
        at = {"T": time_point, "C": c, "Z": plane, "Y": slice(None), "X": slice(None)}
        return tuple(at[letter] for letter in axes)

    def _shown(self, layer, plane: int, time_point: int) -> bool:
        """Whether the viewer shows (a part of) this plane of ``layer`` now."""
        if self.viewer.dims.ndisplay == 3:
            return True
        position = layer.world_to_data(self.viewer.dims.point)
        axes = self._label_axes
        return all(int(round(float(position[axes.index(letter)]))) == value
                   for letter, value in (("Z", plane), ("T", time_point)) if letter in axes)

    def _present(self, layer) -> None:
        if layer not in self.viewer.layers:
            raise LayerError(f"layer {layer.name!r} was removed from the viewer")

    def __repr__(self) -> str:
        return (f"NapariImageSet({', '.join(repr(layer.name) for layer in self.layers)}, axes {self.axes}, "
                f"{self.channel_count} channel(s), {self.plane_count} plane(s), {self.time_point_count} time point(s))")

