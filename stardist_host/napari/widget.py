"""The dock widgets: StarDist 2D and 3D, generated from the one settings definition.

Each setting of :func:`stardist_host.segmentation.settings.schema` becomes a
magicgui widget with the setting's name as label, its help, what is allowed
and its default as tooltip: a check box for True/False, a spin box with the
setting's range for a whole number or a number, a drop-down for a choice, a
text field for the rest (texts, folders, and settings where None is allowed:
typed as in a script, read by the same parser as the command line's options).
The settings that concern output files of headless runs are left out.  An
image-layer drop-down replaces the channel setting where the layers are the
channels (one layer per channel, as napari opens multi-channel files).

Run starts a :class:`~stardist_host.napari.running.SegmentationRun`; Cancel
stops it within a plane (volume) and the unfinished Labels layer goes.
"""

from __future__ import annotations

import logging
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, LineEdit, ProgressBar, PushButton, SpinBox

from ..errors import SettingsError
from ..schema import Field, raise_all
from ..segmentation.settings import Settings, schema
from .imageset import LayerError, channel_layers, layer_axes
from .running import SegmentationRun, one_line

__all__ = ["SegmentationWidget", "segmentation_2d", "segmentation_3d", "field_widget", "HEADLESS_ONLY"]

log = logging.getLogger(__name__)

#: Settings of headless runs (output files) that a viewer has no use for.
HEADLESS_ONLY = ("OVERWRITE", "LABELS_ONLY", "EXPORT_OBJECTS")
_BIG = 2**31 - 1


def _tooltip(field: Field) -> str:
    none = f"; None: {field.none}" if field.none else ""
    return f"{field.name}: {field.help}{none}.\nAllowed: {field.allowed.replace('must be ', '', 1)}.\n" \
           f"Default: {field.default_text()}"


def _text(value: Any) -> str:
    """A value as the text field shows it: None, a text as is, numbers separated by commas."""
    if value is None:
        return "None"
    if isinstance(value, (tuple, list)):
        return ", ".join(map(str, value))
    return str(value)


class _TextValue:
    """Reads a text field as the setting's value, with the command line's parser."""

    def __init__(self, field: Field, widget: LineEdit) -> None:
        self.field, self.widget = field, widget

    def __call__(self) -> Any:
        text = self.widget.value.strip()
        if self.field.optional and text.lower() in ("", "none"):
            return None
        if self.field.type in ("str", "path"):
            return text
        try:
            return self.field.parse(text)
        except Exception:
            raise SettingsError(self.field.name, text, self.field.allowed) from None


def field_widget(field: Field):
    """The magicgui widget for one setting, and a function that reads its value."""
    common = {"name": field.name, "label": field.name, "tooltip": _tooltip(field)}
    if field.type == "bool":
        widget = CheckBox(value=field.default, text=field.name, **common)
        return widget, lambda: widget.value
    if field.type == "choice":
        widget = ComboBox(choices=[(str(c), c) for c in field.choices], value=field.default, **common)
        return widget, lambda: widget.value
    if field.type in ("int", "float") and not field.optional:
        low = field.low if field.low is not None else -_BIG
        high = field.high if field.high is not None else _BIG
        if field.type == "int":
            widget = SpinBox(value=field.default, min=int(low), max=int(high), **common)
        else:
            widget = FloatSpinBox(value=field.default, min=low, max=high, step=0.1, **common)
        return widget, lambda: widget.value
    widget = LineEdit(value=_text(field.default), **common)
    return widget, _TextValue(field, widget)


class SegmentationWidget(Container):
    """StarDist 2D (per plane) or 3D (per volume) as a napari dock widget.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it by this name).
    ndim
        2 or 3.
    """

    def __init__(self, napari_viewer, ndim: int = 2) -> None:
        super().__init__(labels=True)
        self.viewer, self.ndim = napari_viewer, ndim
        self.current_run: SegmentationRun | None = None
        self.layer = ComboBox(name="layer", label="image layer", choices=self._layer_choices,
                              tooltip="the Image layer with the nuclei; where it has no channel axis, the Image "
                                      "layers of its shape are the channels (INPUT_CHANNEL follows the choice)")
        self.axes = LineEdit(name="axes", label="axes", tooltip="the layer's axes as letters T, C, Z, Y, X, read from "
                             "the axis labels (t, c, z, y, x) or guessed from the number of axes: correct them where "
                             "they are wrong, e.g. TCYX for a time series of two channels")
        self.extend([self.layer, self.axes])
        self.settings_widgets: dict[str, Any] = {}
        self._readers = {}
        for field in schema(ndim):
            if field.name in HEADLESS_ONLY:
                continue
            widget, read = field_widget(field)
            self.settings_widgets[field.name] = widget
            self._readers[field.attr] = read
            self.append(widget)
        self.run_button = PushButton(name="run_button", text="Run")
        self.cancel_button = PushButton(name="cancel_button", text="Cancel", enabled=False)
        self.progress_bar = ProgressBar(name="progress_bar", label="progress", value=0, min=0, max=1)
        self.status = Label(name="status", label="", value="")
        self.extend([self.run_button, self.cancel_button, self.progress_bar, self.status])
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.layer.changed.connect(self._layer_changed)
        self.axes.changed.connect(self._axes_changed)
        events = napari_viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._reset_layers)
        self._reset_layers()

    # ----- layers ------------------------------------------------------------------------------------------------

    def _layer_choices(self, _widget=None) -> list:
        from napari.layers import Image, Labels

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, (Image, Labels))]

    def _reset_layers(self, _event=None) -> None:
        """The layers to choose from; the choice stays, or where there is none, the active Image layer."""
        from napari.layers import Image

        chosen = self.layer.value
        self.layer.reset_choices()
        choices = [value for _, value in self._layer_choices()]
        active = self.viewer.layers.selection.active
        if chosen is not None and any(chosen is value for value in choices):
            self.layer.value = chosen
        elif isinstance(active, Image) and any(active is value for value in choices):
            self.layer.value = active
        self._layer_changed()

    def _layer_changed(self, _value=None) -> None:
        """The chosen layer's axes as its labels say, then the channel that goes with them."""
        layer = self.layer.value
        try:
            axes = layer_axes(self.viewer, layer) if layer is not None else ""
        except LayerError:  # a layer that cannot be segmented as it is: Run says why
            axes = ""
        with self.axes.changed.blocked():
            self.axes.value = axes
        self._axes_changed()

    def _axes_changed(self, _value=None) -> None:
        """Where the layers are the channels, INPUT_CHANNEL is the chosen layer's place among them."""
        channel = self.settings_widgets["INPUT_CHANNEL"]
        own_axis = "C" in self.axes.value.upper()
        channel.enabled = own_axis
        layer = self.layer.value
        if layer is None or own_axis:
            return
        try:
            layers = self.input_layers()
        except Exception:  # Run says what is wrong
            return
        if layer in layers:
            channel.value = layers.index(layer)

    def input_layers(self) -> list:
        """The layers of the image set: the chosen layer with its channel axis, or the layers of its shape."""
        layer = self.layer.value
        if layer is None:
            raise LayerError("no image layer: open an image (File > Open) and choose it as 'image layer'")
        from napari.layers import Image

        if not isinstance(layer, Image) or layer.rgb or layer.multiscale:
            return [layer]  # NapariImageSet says what is wrong with it
        return channel_layers(self.viewer, layer, self._axes())

    def _axes(self) -> str | None:
        return self.axes.value.strip().upper() or None

    # ----- settings and runs -------------------------------------------------------------------------------------

    def settings(self) -> Settings:
        """The settings the widgets show, validated; every bad one in one error."""
        values, errors = {}, []
        for attr, read in self._readers.items():
            try:
                values[attr] = read()
            except SettingsError as err:
                errors.append(err)
        raise_all(errors)
        return Settings(ndim=self.ndim, **values)

    def start(self, _value=None) -> SegmentationRun | None:
        """Start a run with the settings shown; a bad setting or layer is one notification and no run."""
        from napari.utils.notifications import show_error

        if self.current_run is not None and self.current_run.running:
            return None
        try:
            self._axes_changed()
            settings = self.settings()
            self.current_run = SegmentationRun(self.viewer, self.input_layers(), settings, axes=self._axes(),
                                               on_progress=self._progress, on_finished=self._finished)
        except Exception as err:
            show_error(f"StarDist: {one_line(err)}")
            return None
        self.progress_bar.value = 0
        self.status.value = "starting (loading the model in its own process)"
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.current_run.start()
        return self.current_run

    def cancel(self, _value=None) -> None:
        if self.current_run is not None and self.current_run.running:
            self.status.value = "cancelling"
            self.current_run.cancel()

    def _progress(self, done: int, total: int) -> None:
        self.progress_bar.max = total
        self.progress_bar.value = done
        self.status.value = f"{done} of {total} {'planes' if self.ndim == 2 else 'volumes'}"

    def _finished(self, outcome) -> None:
        try:
            self.run_button.enabled, self.cancel_button.enabled = True, False
            self.status.value = "done" if not isinstance(outcome, BaseException) else one_line(outcome)[:80]
        except RuntimeError:  # the viewer closed during the run and took the widget's Qt objects with it
            pass


def segmentation_2d(napari_viewer) -> SegmentationWidget:
    """The StarDist 2D dock widget (npe2 command)."""
    return SegmentationWidget(napari_viewer, ndim=2)


def segmentation_3d(napari_viewer) -> SegmentationWidget:
    """The StarDist 3D dock widget (npe2 command)."""
    return SegmentationWidget(napari_viewer, ndim=3)
