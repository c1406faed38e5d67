# @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ USER SETTINGS @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
# -----------------------------------------------------------------------------
# QC overlay - Script: a PNG of one plane with the outlines drawn over it
# Works on the label channel a StarDist script made; reads the image set
# ---> imageset.get_channeldata (one plane / time point at a time)
# -----------------------------------------------------------------------------
IMAGE_CHANNEL = 0  # <---- channel shown in grey (Count start from 0)
LABEL_CHANNEL = 2  # nuclei outlines (yellow)
CELL_CHANNEL = None  # cell outlines (cyan), or None
TRACK_CHANNEL = None  # track-id channel: ids written on the nuclei, or None
TIME_POINT = 0
PLANE = 0
OUTPUT_FOLDER = None  # folder for <name>_overlay_t<T>_z<Z>.png
OVERWRITE = False  # True: replace output files that exist already
# @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ END USER SETTINGS @@@@@@@@@@@@@@@@@@@@@@@@@@@@

# Headless: python overlay.py INPUT.tif OUTPUT_FOLDER
from stardist_host.analyses.jobs import run_analysis_script

run_analysis_script(globals(), job="overlay")
