"""How a segmentation runs: in this process or a child one, on a file, on a Dask cluster, resumed from a journal.

The layer above :mod:`stardist_host.segmentation` (the engine) and
:mod:`stardist_host.io` (inputs and outputs): each module here chooses where
and how the engine runs and never segments by itself.

- :mod:`.local`: a run on an image set, in this process or (SEPARATE_PROCESS) :mod:`.child`;
- :mod:`.files`: a run on a TIFF file or an OME-Zarr store, writing the output file;
- :mod:`.distributed`: units as Dask tasks (or in this process), with :mod:`.journal` for ``--resume``;
- :mod:`.script`: what a paste-and-edit script does after its settings.
"""
