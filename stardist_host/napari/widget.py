"""The dock widgets: StarDist 2D and 3D, and the analyses, generated from each job's one settings definition.

Each setting of a job's :class:`~stardist_host.schema.Schema` (the
segmentation's :func:`stardist_host.segmentation.settings.schema`, an
analysis's ``JOBS[job].schema``) becomes a magicgui widget with the setting's
name as label, its help, what is allowed and its default as tooltip
(:func:`schema_widgets`): a check box for True/False, a spin box with the
setting's range for a whole number or a number, a drop-down for a choice
(with None where None is allowed), a text field for the rest (texts, folders,
lists, and numbers where None is allowed: typed as in a script, read by the
same parser as the command line's options).  The settings that concern output
files of headless segmentation runs are left out.  An image-layer drop-down
replaces the channel setting where the layers are the channels (one layer per
channel, as napari opens multi-channel files).

Run starts a :class:`~stardist_host.napari.running.SegmentationRun` or
:class:`~stardist_host.napari.running.AnalysisRun`; Cancel stops it within a
plane (volume, time point) and what it added goes.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, LineEdit, ProgressBar, PushButton, SpinBox

from ..analyses.jobs import JOBS
from ..errors import SettingsError
from ..io.files import file_stem
from ..schema import Field, Schema, raise_all
from ..segmentation.settings import Settings, schema
from .imageset import LayerError, NapariImageSet, channel_layers, label_layers, layer_axes
from .running import AnalysisRun, SegmentationRun, one_line

__all__ = ["SegmentationWidget", "AnalysisWidget", "segmentation_2d", "segmentation_3d", "measure", "track", "atlas",
           "cells", "field_widget", "schema_widgets", "read_settings", "read_tracks", "tracks_layer", "HEADLESS_ONLY",
           "LABEL_SETTINGS"]

log = logging.getLogger(__name__)

#: Settings of headless runs (output files) that a viewer has no use for.
HEADLESS_ONLY = ("OVERWRITE", "LABELS_ONLY", "EXPORT_OBJECTS")
#: The analyses' settings whose channel must be a Labels layer.
LABEL_SETTINGS = ("LABEL_CHANNEL", "CELL_CHANNEL", "ATLAS_CHANNEL")
_BIG = 2**31 - 1


def _tooltip(field: Field) -> str:
    none = f"; None: {field.none}" if field.none else ""
    return f"{field.name}: {field.help}{none}.\nAllowed: {field.allowed.replace('must be ', '', 1)}.\n" \
           f"Default: {field.default_text()}"


def _text(value: Any) -> str:
    """A value as the text field shows it: None, a text as is, numbers separated by commas."""
    return ", ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def field_widget(field: Field):
    """The magicgui widget for one setting, and a function that reads its value.

    A setting without a default starts at the example its script shows.
    """
    common = {"name": field.name, "label": field.name, "tooltip": _tooltip(field)}
    start = field.script_value
    low = field.low if field.low is not None else -_BIG
    high = field.high if field.high is not None else _BIG
    if field.type == "bool" and not field.optional:
        widget = CheckBox(value=start, text=field.name, **common)
    elif field.type in ("choice", "bool"):  # an optional bool: None, True or False
        options = field.choices if field.type == "choice" else (True, False)
        choices = ([("None", None)] if field.optional else []) + [(str(c), c) for c in options]
        widget = ComboBox(choices=choices, value=start, **common)
    elif field.type == "int" and not field.optional:
        widget = SpinBox(value=start, min=int(low), max=int(high), **common)
    elif field.type == "float" and not field.optional:
        widget = FloatSpinBox(value=start, min=low, max=high, step=0.1, **common)
    else:  # a text, read as the command line's parser reads it
        widget = LineEdit(value=_text(start), **common)

        def read_text() -> Any:
            text = widget.value.strip()
            if field.optional and text.lower() in ("", "none"):
                return None
            if field.type in ("str", "path"):
                return text
            try:
                return field.parse(text)
            except Exception:
                raise SettingsError(field.name, text, field.allowed) from None

        return widget, read_text
    return widget, lambda: widget.value


def schema_widgets(fields: Schema | Iterable[Field], *, skip: Iterable[str] = ()) -> tuple[dict, dict]:
    """The widgets of a job's settings (:func:`field_widget`), by script name, and their readers, by attribute name."""
    skip = set(skip)
    widgets: dict[str, Any] = {}
    readers: dict[str, Callable[[], Any]] = {}
    for field in fields:
        if field.name not in skip:
            widgets[field.name], readers[field.attr] = field_widget(field)
    return widgets, readers


def read_settings(readers: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """The values the widgets show, by attribute name; every one that cannot be read in one error."""
    values, errors = {}, []
    for attr, read in readers.items():
        try:
            values[attr] = read()
        except SettingsError as err:
            errors.append(err)
    raise_all(errors)
    return values


class _RunWidget(Container):
    """An image-layer choice, its axes, the settings of one job (generated from its schema), Run, Cancel, progress."""

    unit = "planes"
    #: The status line as a run starts.
    starting = "starting"
    layer_tooltip = ("the Image layer with the nuclei; where it has no channel axis, the Image layers of its shape "
                     "are the channels (INPUT_CHANNEL follows the choice)")

    def __init__(self, napari_viewer, fields: Schema | Iterable[Field], *, skip: Iterable[str] = ()) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.current_run: Any = None
        self.layer = ComboBox(name="layer", label="image layer", choices=self._layer_choices,
                              tooltip=self.layer_tooltip)
        self.axes = LineEdit(name="axes", label="axes", tooltip="the layer's axes as letters T, C, Z, Y, X, read from "
                             "the axis labels (t, c, z, y, x) or guessed from the number of axes: correct them where "
                             "they are wrong, e.g. TCYX for a time series of two channels")
        self.extend([self.layer, self.axes])
        self._add_before_settings()
        self.settings_widgets, self._readers = schema_widgets(fields, skip=skip)
        self.extend(list(self.settings_widgets.values()))
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

    def _add_before_settings(self) -> None:
        """Widgets between the axes and the settings (subclasses)."""

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
        """What follows the layer and its axes (subclasses)."""

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

    # ----- runs: subclasses make them (``_make_run()``: the run of the settings shown, not started) ---------------

    def start(self, _value=None) -> Any:
        """Start a run with the settings shown; a bad setting or layer is one notification and no run."""
        from napari.utils.notifications import show_error

        if self.current_run is not None and self.current_run.running:
            return None
        try:
            self._axes_changed()
            self.current_run = self._make_run()
        except Exception as err:
            show_error(f"StarDist: {one_line(err)}")
            return None
        self.progress_bar.value = 0
        self.status.value = self.starting
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
        self.status.value = f"{done} of {total} {self.unit}"

    def _finished(self, outcome) -> None:
        try:
            self.run_button.enabled, self.cancel_button.enabled = True, False
            self.status.value = "done" if not isinstance(outcome, BaseException) else one_line(outcome)[:80]
        except RuntimeError:  # the viewer closed during the run and took the widget's Qt objects with it
            pass


class SegmentationWidget(_RunWidget):
    """StarDist 2D (per plane) or 3D (per volume) as a napari dock widget.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it by this name).
    ndim
        2 or 3.
    """

    starting = "starting (loading the model in its own process)"

    def __init__(self, napari_viewer, ndim: int = 2) -> None:
        self.ndim = ndim
        self.unit = "planes" if ndim == 2 else "volumes"
        super().__init__(napari_viewer, schema(ndim), skip=HEADLESS_ONLY)

    def _axes_changed(self, _value=None) -> None:
        """Where the layers are the channels, INPUT_CHANNEL is the chosen layer's place among them."""
        channel = self.settings_widgets["INPUT_CHANNEL"]
        channel.enabled = own_axis = "C" in self.axes.value.upper()
        if own_axis:
            return
        try:
            layers = self.input_layers()
        except Exception:  # no layer, or a wrong one: Run says what is wrong
            return
        if self.layer.value in layers:
            channel.value = _text(layers.index(self.layer.value))  # a text field: a list of channels is for several

    def settings(self) -> Settings:
        """The settings the widgets show, validated; every bad one in one error."""
        return Settings(ndim=self.ndim, **read_settings(self._readers))

    def _make_run(self) -> SegmentationRun:
        return SegmentationRun(self.viewer, self.input_layers(), self.settings(), axes=self._axes(),
                               on_progress=self._progress, on_finished=self._finished)


def _safe_stem(name: str) -> str:
    """A layer's name as the start of file names: letters, digits, ``.``, ``-`` and ``_`` kept, the rest ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "layer"


class AnalysisWidget(_RunWidget):
    """One analysis (measure, track, atlas, cells) as a napari dock widget, generated from the job's schema.

    The image set is the chosen Image layer's channels (its channel axis, or the
    Image layers of its shape) followed by the Labels layers of its shape (a
    segmentation's ``Stardist_DAPI`` ...), in the viewer's order; the
    *channels* line shows which number is which.  LABEL_CHANNEL, CELL_CHANNEL
    and ATLAS_CHANNEL must be Labels layers' channels.

    Files go to ``OUTPUT_FOLDER/<stem>_<table>.csv``, where the stem is the
    name of the layer's file (the layer's name where it has no file); with
    OUTPUT_FOLDER None, the folder of the layer's file, else the home folder.
    ``track`` adds a Tracks layer from the track table.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it by this name).
    job
        ``"measure"``, ``"track"``, ``"atlas"`` or ``"cells"``.
    """

    unit = "time points"
    layer_tooltip = ("the Image layer the analysis reads; its channels (its channel axis, or the Image layers of its "
                     "shape) come first, then the Labels layers of its shape: see 'channels'")

    def __init__(self, napari_viewer, job: str) -> None:
        self.job = job
        super().__init__(napari_viewer, JOBS[job].schema)
        self.settings_widgets["OUTPUT_FOLDER"].tooltip += (
            "\nIn napari, None: the folder of the image layer's file, else your home folder")

    def _add_before_settings(self) -> None:
        self.channels = Label(name="channels", label="channels", value="")
        self.append(self.channels)

    def _axes_changed(self, _value=None) -> None:
        """The channels line: each channel's number and layer."""
        try:
            names = self.imageset().channel_names
        except Exception:  # Run says what is wrong
            names = []
        self.channels.value = ", ".join(f"{i} {name}" for i, name in enumerate(names))

    def imageset(self) -> NapariImageSet:
        """The image set of the chosen layer, its label channels after its own."""
        layers = self.input_layers()
        labels = label_layers(self.viewer, layers[0], self._axes())
        return NapariImageSet(self.viewer, layers, axes=self._axes(), labels=labels)

    def settings(self) -> dict[str, Any]:
        """The job's settings the widgets show, by attribute name, validated; every bad one in one error."""
        values = read_settings(self._readers)
        raise_all(JOBS[self.job].schema.errors(values))
        return values

    def output(self) -> tuple[Path, str]:
        """The output folder and the files' stem for the chosen layer."""
        layer = self.layer.value
        source = getattr(getattr(layer, "source", None), "path", None)
        stem = file_stem(source) if source else _safe_stem(layer.name)
        folder = self.settings_widgets["OUTPUT_FOLDER"].value.strip()
        if folder.lower() in ("", "none"):
            folder = str(Path(source).parent) if source else str(Path.home())
        return Path(folder), stem

    def _check_label_channels(self, imageset: NapariImageSet, values: dict[str, Any]) -> None:
        """The label settings name channels of Labels layers; every wrong one in one error."""
        errors = []
        listed = ", ".join(f"{i} {name!r}" for i, name in enumerate(imageset.channel_names))
        for name in LABEL_SETTINGS:
            value = values.get(name.lower())
            if value is None:  # also where the job has no such setting; else a whole number >= 0 (settings())
                continue
            if value >= imageset.channel_count:
                errors.append(SettingsError(name, value, f"must be a channel of the image set: {listed}"))
            elif not imageset.is_labels(value):
                labels = [f"{i} {n!r}" for i, n in enumerate(imageset.channel_names) if imageset.is_labels(i)]
                errors.append(SettingsError(
                    name, value, f"channel {value} ({imageset.channel_names[value]!r}) is an Image layer; it must "
                    f"be a Labels layer's channel: {', '.join(labels) or 'there is none (segment first)'}"))
        raise_all(errors)

    def _make_run(self) -> AnalysisRun:
        imageset = self.imageset()
        values = self.settings()
        self._check_label_channels(imageset, values)
        folder, stem = self.output()
        values["output_folder"] = str(folder)
        return AnalysisRun(self.viewer, imageset, self.job, folder, stem, values,
                           after=self._add_tracks if self.job == "track" else None,
                           on_progress=self._progress, on_finished=self._finished)

    def _add_tracks(self, written: list) -> str:
        """A Tracks layer from the track table (track_id, t, (z), y, x; in µm, scaled onto the image)."""
        run = self.current_run
        table = next(Path(p) for p in written if Path(p).name.endswith("_tracks.csv"))
        layer = tracks_layer(self.viewer, run.imageset, table, run.settings.get("voxel_size"), name=table.stem)
        return f"added the Tracks layer {layer.name!r}" if layer is not None else "no tracks to show"


def read_tracks(path: str | Path, *, with_z: bool) -> tuple[Any, dict]:
    """The rows (track_id, t, (z_um), y_um, x_um) of a track table, and its divisions as napari's graph."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    columns = ["track_id", "t"] + (["z_um"] if with_z else []) + ["y_um", "x_um"]
    data = np.array([[float(row[c]) for c in columns] for row in rows], dtype=float).reshape(-1, len(columns))
    # every row of a track has its parent (0: none)
    graph = {int(row["track_id"]): [int(row["parent_id"])] for row in rows if int(row["parent_id"])}
    return data, graph


def tracks_layer(viewer, imageset: NapariImageSet, table: str | Path, voxel_size=None, *, name: str = "tracks"):
    """Add the track table as a napari Tracks layer over the image: data in µm as the table has them.

    The layer's scale maps µm onto the image's world coordinates (the image's
    scale divided by the voxel size the tracking used) and its translate is
    the image's.  None where the table has no rows.
    """
    axes = imageset.axes
    with_z = imageset.plane_count > 1
    data, graph = read_tracks(table, with_z=with_z)
    if not len(data):
        return None
    voxel = voxel_size or imageset.voxel_size or (1.0, 1.0, 1.0)
    image = imageset.layers[0]
    letters = ["T"] + (["Z"] if with_z else []) + ["Y", "X"]
    by_letter = {"Z": voxel[0] or 1.0, "Y": voxel[1], "X": voxel[2], "T": 1.0}
    scale = [image.scale[axes.index(a)] / by_letter[a] if a in axes else 1.0 for a in letters]
    translate = [image.translate[axes.index(a)] if a in axes else 0.0 for a in letters]
    return viewer.add_tracks(data, graph=graph, name=name, scale=scale, translate=translate)


def segmentation_2d(napari_viewer) -> SegmentationWidget:
    """The StarDist 2D dock widget (npe2 command)."""
    return SegmentationWidget(napari_viewer, ndim=2)


def segmentation_3d(napari_viewer) -> SegmentationWidget:
    """The StarDist 3D dock widget (npe2 command)."""
    return SegmentationWidget(napari_viewer, ndim=3)


def measure(napari_viewer) -> AnalysisWidget:
    """The measure dock widget (npe2 command)."""
    return AnalysisWidget(napari_viewer, "measure")


def track(napari_viewer) -> AnalysisWidget:
    """The track dock widget (npe2 command): tracks to CSV, a track-id Labels layer and a Tracks layer."""
    return AnalysisWidget(napari_viewer, "track")


def atlas(napari_viewer) -> AnalysisWidget:
    """The atlas dock widget (npe2 command)."""
    return AnalysisWidget(napari_viewer, "atlas")


def cells(napari_viewer) -> AnalysisWidget:
    """The cells dock widget (npe2 command)."""
    return AnalysisWidget(napari_viewer, "cells")
