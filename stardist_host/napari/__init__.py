"""stardist-host inside napari: the host contract over napari layers, and dock widgets (the ``napari`` extra).

``NapariImageSet(viewer, layer)`` is the image set of a napari Image layer;
``set_active_imageset(NapariImageSet(viewer, layer))`` lets the paste-and-edit
scripts run in napari's console.  The dock widgets come through the npe2
manifest ``napari.yaml`` (Plugins > StarDist (stardist-host)): segmentation 2D and 3D,
and the analyses measure, track, atlas and cells.  napari and Qt
are imported only when a name is used, so ``import stardist_host.napari`` costs
nothing and says which extra to install where napari is missing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NapariImageSet", "LayerError", "layer_axes", "channel_layers", "label_layers", "SegmentationWidget",
           "AnalysisWidget"]

_WHERE = {name: "widget" if name.endswith("Widget") else "imageset" for name in __all__}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    from ..errors import require

    require("napari", "napari", purpose="stardist-host inside napari")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
