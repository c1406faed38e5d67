"""stardist-host: StarDist nucleus segmentation inside host applications and on TIFF stacks.

The host contract (:mod:`stardist_host.host`) is the seam: segmentation reads
and writes planes only through ``get_channeldata`` / ``set_channeldata``.
"""

from .host import ImageSet, active_imageset, set_active_imageset
from .io.imagesets import MemoryImageSet, TiffImageSet
from .segmentation.settings import Settings, SettingsError

__version__ = "0.1.0"

__all__ = ["ImageSet", "MemoryImageSet", "Settings", "SettingsError", "TiffImageSet", "active_imageset",
           "set_active_imageset", "__version__"]
