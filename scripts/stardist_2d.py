# @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ USER SETTINGS @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
# -----------------------------------------------------------------------------
# Stardist 2D - Script
# Segments nuclei plane by plane and stores the labels in a new channel.
# INPUT_CHANNEL channel with the target objects
# is only used to read/write the voxels
# ---> imageset.get_channeldata / imageset.set_channeldata
# -----------------------------------------------------------------------------
INPUT_CHANNEL = 0  # <---- Count start from 0 (Ch#1 == 0); a list such as [0, 1] for a model with several
# name of the new channel: this prefix + the input channel's name
OUTPUT_CH_NAME = "Stardist_"
# folder that holds your model folders; None = the bundled models
# MODEL2D_PATH = "D:/Stardist/2D/models"
MODEL2D_PATH = None
MODEL_NAME = "2D_demo"  # a folder in MODEL2D_PATH, or e.g. "2D_versatile_fluo"
CURRENT_TIME_POINT = True  # True: current time point only; False: all
FIRST_PLANE = -1  # -1 BOTTOM (first and last -1: the full stack)
LAST_PLANE = -1  # -1 TOP
# ----- advanced ---------------------------------------------------------------
PROB_THRESH = None  # None: the model's own threshold
NMS_THRESH = None  # None: the model's own threshold
PERCENTILE_LOW = 1.0  # normalisation percentiles
PERCENTILE_HIGH = 99.8
NORMALIZE = "unit"  # percentiles of: "unit" each plane (volume), "time series" all together; or "fixed", "none"
NORMALIZE_MIN = None  # with NORMALIZE = "fixed": the intensity mapped to 0, e.g. 100
NORMALIZE_MAX = None  # with NORMALIZE = "fixed": the intensity mapped to 1, e.g. 4000
NORMALIZE_CHANNELS_JOINTLY = None  # several input channels: True together, False each; None: as trained
N_TILES = None  # None: automatic; e.g. (2, 2) for large planes
SCALE = "auto"  # "auto": image pixel size over the model's; "estimate": measure the nuclei; or e.g. 0.5, or [0.5, 0.5] per axis
MODEL_PIXEL_SIZE_UM = None  # µm, e.g. [0.5, 0.5]: the model's training pixel size where it records none
OBJECT_DIAMETER_UM = None  # µm, e.g. 8.0: scale to the model's training nucleus size instead
USE_GPU = True  # False: run on the CPU
PRECISION = "auto"  # "mixed": faster network in 16-bit where the CPU/GPU has it natively; "float32"; "auto": mixed where native
SEPARATE_PROCESS = "auto"  # True: TensorFlow in its own process, ended with the run; "auto": in a host
GPU_MEMORY_LIMIT_MB = None  # e.g. 4096: most GPU memory TensorFlow takes; None: as it needs
UNIQUE_LABELS = False  # True: labels unique across all planes, not per plane
LABEL_DTYPE = "auto"  # "uint16" or "uint32" to choose the label channel's type
# ----- headless (python stardist_2d.py INPUT.tif OUTPUT.tif) ------------------
OUTPUT_PROBABILITY = False  # True: also a channel of the object probability, to choose PROB_THRESH by
OVERWRITE = False  # True: replace an output file that exists already
LABELS_ONLY = False  # True: write only the label channel, not the input channels
EXPORT_OBJECTS = []  # e.g. ["roi", "geojson"]: the objects for Fiji's ROI Manager and QuPath too
# @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@ END USER SETTINGS @@@@@@@@@@@@@@@@@@@@@@@@@@@@

# Headless: python stardist_2d.py INPUT.tif OUTPUT.tif [--axes TZYX]
from stardist_host.runs.script import run_script

run_script(globals(), ndim=2)
