# @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ USER SETTINGS @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
# -----------------------------------------------------------------------------
# Tracking - Script: links nuclei over time into tracks (CSV + track-id channel)
# Works on the label channel a StarDist script made; reads the image set
# ---> imageset.get_channeldata (one plane / time point at a time)
# -----------------------------------------------------------------------------
LABEL_CHANNEL = 2  # <---- the StarDist label channel (Count start from 0)
MAX_DISTANCE_UM = 5.0  # farthest a nucleus moves between two time points, µm
MAX_GAP = 1  # time points a nucleus may be missing and still be linked
DIVISIONS = True  # detect divisions (one track splitting into two)
TRACK_CHANNEL_NAME = "Track_ids"  # new channel with track ids; None: no channel
VOXEL_SIZE = None  # (z, y, x) in µm; None: the image set's own
NDIM = None  # 3: labels span Z (3D script); 2: single-plane images; None: auto
OUTPUT_FOLDER = None  # folder for <name>_tracks.csv, <name>_track_properties.csv
OVERWRITE = False  # True: replace output files that exist already
# @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ END USER SETTINGS @@@@@@@@@@@@@@@@@@@@@@@@@@@@

# Headless: python track.py INPUT.tif OUTPUT_FOLDER
from stardist_host.analyses.jobs import run_analysis_script

run_analysis_script(globals(), job="track")
