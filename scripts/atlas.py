# @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ USER SETTINGS @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
# -----------------------------------------------------------------------------
# Atlas - Script: nuclei counts and densities per atlas region (CSV)
# Works on the label channel a StarDist script made; reads the image set
# ---> imageset.get_channeldata (one plane / time point at a time)
# -----------------------------------------------------------------------------
LABEL_CHANNEL = 2  # <---- the StarDist label channel (Count start from 0)
ATLAS_CHANNEL = None  # the atlas as a channel of this image set, or None ...
ATLAS_FILE = None  # ... the atlas as a separate label TIFF file
ATLAS_AXES = None  # axes of ATLAS_FILE where the file does not say, e.g. "ZYX"
ATLAS_VOXEL_SIZE = None  # (z, y, x) µm of the atlas where it has another grid
REGION_NAMES = None  # CSV/TSV file with columns id,name; None: "region <id>"
VOXEL_SIZE = None  # (z, y, x) in µm; None: the image set's own
NDIM = None  # 3: labels span Z (3D script); 2: labels per plane; None: 3 if Z > 1
CURRENT_TIME_POINT = False  # True: current time point only; False: all
OUTPUT_FOLDER = None  # folder for <name>_regions.csv
OVERWRITE = False  # True: replace output files that exist already
# @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ END USER SETTINGS @@@@@@@@@@@@@@@@@@@@@@@@@@@@

# Headless: python atlas.py INPUT.tif OUTPUT_FOLDER
from stardist_host.analyses.jobs import run_analysis_script

run_analysis_script(globals(), job="atlas")
