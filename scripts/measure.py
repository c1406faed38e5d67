# @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ USER SETTINGS @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
# -----------------------------------------------------------------------------
# Measurements - Script: one row per nucleus and time point (CSV)
# Works on the label channel a StarDist script made; reads the image set
# ---> imageset.get_channeldata (one plane / time point at a time)
# -----------------------------------------------------------------------------
LABEL_CHANNEL = 2  # <---- the StarDist label channel (Count start from 0)
INTENSITY_CHANNELS = [0]  # channels whose intensities are measured in each nucleus
CELL_CHANNEL = None  # a channel of grown cells (cell_volumes.py), or None
VOXEL_SIZE = None  # (z, y, x) in µm; None: the image set's own
NDIM = None  # 3: labels span Z (3D script); 2: labels per plane; None: 3 if Z > 1
CURRENT_TIME_POINT = False  # True: current time point only; False: all
OUTPUT_FOLDER = None  # folder for <name>_measurements.csv (in a host)
OVERWRITE = False  # True: replace output files that exist already
# @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ END USER SETTINGS @@@@@@@@@@@@@@@@@@@@@@@@@@@@

# Headless: python measure.py INPUT.tif OUTPUT_FOLDER
from stardist_host.analyses.jobs import run_analysis_script

run_analysis_script(globals(), job="measure")
