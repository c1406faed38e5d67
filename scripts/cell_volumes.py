# @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ USER SETTINGS @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
# -----------------------------------------------------------------------------
# Cell volumes - Script: grows cells from the nuclei over a membrane channel
# Works on the label channel a StarDist script made; reads the image set
# ---> imageset.get_channeldata (one plane / time point at a time)
# -----------------------------------------------------------------------------
LABEL_CHANNEL = 2  # <---- the StarDist label channel (Count start from 0)
MEMBRANE_CHANNEL = 1  # the membrane stain
MAX_DISTANCE_UM = 10.0  # farthest a cell reaches from its nucleus, µm
THRESHOLD = None  # membrane intensity separating cells from background; None: auto (Otsu)
SMOOTH_UM = 1.0  # smoothing of the membrane channel, µm
OUTPUT_CH_NAME = "Cells"  # name of the new channel (labels = the nuclei's)
INTENSITY_CHANNELS = []  # channels measured in each nucleus, too
VOXEL_SIZE = None  # (z, y, x) in µm; None: the image set's own
NDIM = None  # 3: grow through the stack; 2: each plane alone; None: auto
CURRENT_TIME_POINT = False  # True: current time point only; False: all
OUTPUT_FOLDER = None  # folder for <name>_cells.csv
OVERWRITE = False  # True: replace output files that exist already
# @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ END USER SETTINGS @@@@@@@@@@@@@@@@@@@@@@@@@@@@

# Headless: python cell_volumes.py INPUT.tif OUTPUT_FOLDER
from stardist_host.analyses.jobs import run_analysis_script

run_analysis_script(globals(), job="cells")
