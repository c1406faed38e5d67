"""Each setting's allowed values and range semantics, checked before anything runs."""

import dataclasses
import json
import pickle

import pytest

from stardist_host.segmentation.plan import make_plan
from stardist_host.segmentation.settings import Settings, SettingsError, schema


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_channel": -1}, "INPUT_CHANNEL=-1: must be a whole number, 0 for the first channel"),
        ({"input_channel": "1"}, "INPUT_CHANNEL='1': must be a whole number"),
        ({"input_channel": True}, "INPUT_CHANNEL=True: must be a whole number"),
        ({"first_plane": 4, "last_plane": 2}, "FIRST_PLANE=4: must not be above LAST_PLANE=2"),
        ({"last_plane": -2}, "LAST_PLANE=-2: must be a plane index (0 for the first plane) or -1"),
        ({"current_time_point": 1}, "CURRENT_TIME_POINT=1: must be True or False"),
        ({"model_path": "/no/such/folder"}, "MODEL2D_PATH='/no/such/folder': this folder does not exist"),
        ({"ndim": 3, "model_path": "/no/such"}, "MODEL3D_PATH='/no/such': this folder does not exist"),
        ({"model_name": ""}, "MODEL_NAME='': must be the name of a model folder"),
        ({"prob_thresh": 1.5}, "PROB_THRESH=1.5: must be a number between 0 and 1"),
        ({"nms_thresh": 0}, "NMS_THRESH=0: must be a number between 0 and 1"),
        ({"percentile_low": 99.9}, "PERCENTILE_LOW=99.9: must be below PERCENTILE_HIGH=99.8"),
        ({"percentile_high": 101}, "PERCENTILE_HIGH=101: must be a percentile between 0 and 100"),
        ({"n_tiles": (2, 2, 2)}, "N_TILES=(2, 2, 2): must be None (automatic) or 2 whole numbers >= 1, e.g. (2, 2)"),
        ({"ndim": 3, "n_tiles": (0, 1, 1)}, "N_TILES=(0, 1, 1): must be None (automatic) or 3 whole numbers"),
        ({"use_gpu": "yes"}, "USE_GPU='yes': must be True or False"),
        ({"label_dtype": "int8"}, "LABEL_DTYPE='int8': must be one of 'auto', 'uint16', 'uint32'"),
        ({"output_ch_name": " "}, "OUTPUT_CH_NAME=' ': must be a non-empty text"),
    ],
)
def test_bad_setting_names_setting_value_and_allowed(kwargs, message):
    with pytest.raises(SettingsError) as err:
        Settings(**kwargs)
    assert str(err.value).startswith(message)


def test_from_script_reads_the_settings_block(tmp_path):
    block = {"INPUT_CHANNEL": 1, "MODEL3D_PATH": str(tmp_path), "MODEL_NAME": "m", "CURRENT_TIME_POINT": False,
             "FIRST_PLANE": 2, "LAST_PLANE": -1, "N_TILES": [1, 2, 2], "run_script": print, "__name__": "x"}
    s = Settings.from_script(block, ndim=3)
    assert (s.ndim, s.input_channel, s.model_path, s.current_time_point, s.first_plane, s.n_tiles) == (
        3, 1, str(tmp_path), False, 2, (1, 2, 2))


def test_from_script_refuses_typos_and_the_other_scripts_path():
    with pytest.raises(SettingsError, match=r"INPUT_CHANEL=1: is not a setting of this script; the settings are .*INPUT_CHANNEL"):
        Settings.from_script({"INPUT_CHANEL": 1}, ndim=2)
    with pytest.raises(SettingsError, match=r"MODEL2D_PATH='x': this is the 3D script: set MODEL3D_PATH instead"):
        Settings.from_script({"MODEL2D_PATH": "x"}, ndim=3)


# memory_imageset: T=3, C=2, Z=4, current time point 1
@pytest.mark.parametrize(
    "first, last, planes",
    [(-1, -1, (0, 3)), (-1, 2, (0, 2)), (1, -1, (1, 3)), (2, 2, (2, 2)), (0, 3, (0, 3))],
)
def test_plane_ranges(memory_imageset, first, last, planes):
    plan = make_plan(Settings(first_plane=first, last_plane=last), memory_imageset)
    assert (plan.first_plane, plan.last_plane) == planes
    assert [u.first for u in plan.units] == list(range(planes[0], planes[1] + 1))


def test_time_points_current_or_all(memory_imageset):
    assert make_plan(Settings(current_time_point=True), memory_imageset).time_points == (1,)
    plan = make_plan(Settings(current_time_point=False), memory_imageset)
    assert plan.time_points == (0, 1, 2) and len(plan.units) == 3 * 4


def test_3d_plan_is_one_volume_per_time_point(memory_imageset):
    plan = make_plan(Settings(ndim=3, current_time_point=False, first_plane=1, last_plane=2), memory_imageset)
    assert [(u.time_point, u.first, u.last) for u in plan.units] == [(0, 1, 2), (1, 1, 2), (2, 1, 2)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_channel": 2}, "INPUT_CHANNEL=2: the image set has channels 0..1 (DAPI, Other)"),
        ({"first_plane": 4}, "FIRST_PLANE=4: the image set has planes 0..3 (or -1)"),
        ({"last_plane": 9}, "LAST_PLANE=9: the image set has planes 0..3 (or -1)"),
    ],
)
def test_settings_outside_the_image_set(memory_imageset, kwargs, message):
    with pytest.raises(SettingsError) as err:
        make_plan(Settings(**kwargs), memory_imageset)
    assert str(err.value) == message


# what the journal's hand-kept list left out of the fingerprint before the settings said it themselves
NOT_LABELS = {"overwrite", "labels_only", "export_objects", "use_gpu", "current_time_point", "gpu_memory_limit_mb",
              "separate_process", "output_probability"}  # a channel beside the labels, not the labels


@pytest.mark.parametrize("ndim", [2, 3])
def test_label_values_are_the_settings_the_labels_depend_on(tmp_path, ndim):
    s = Settings(ndim=ndim, input_channel=1, model_path=tmp_path, n_tiles=(2,) * ndim, prob_thresh=0.4,
                 precision="mixed", unique_labels=True, label_dtype="uint32", overwrite=True, export_objects=["roi"])
    values = s.label_values()
    old = {k: v for k, v in dataclasses.asdict(s).items() if k not in NOT_LABELS}  # the journal's rule until now
    assert values.keys() == old.keys()
    assert values == {**old, "model_path": str(tmp_path), "n_tiles": [2] * ndim}
    assert json.loads(json.dumps(values)) == values  # a journal written and read back matches
    assert Settings(ndim=ndim).label_values()["n_tiles"] is None
    for name in NOT_LABELS:  # changing any of these keeps a journal resumable
        field = schema(ndim).by_attr[name]
        assert not field.affects_labels
    changed = dataclasses.replace(s, percentile_high=99.0, first_plane=0)
    assert {k for k in values if values[k] != changed.label_values()[k]} == {"percentile_high", "first_plane"}


@pytest.mark.parametrize("ndim", [2, 3])
def test_each_setting_is_declared_once_on_the_dataclass(ndim):
    attrs = [f.name for f in dataclasses.fields(Settings) if f.name != "ndim"]
    definition = schema(ndim)
    assert [f.attr for f in definition] == attrs
    for f in dataclasses.fields(Settings):
        if f.name in ("ndim", "model_name"):
            continue
        assert _same_value(f.default, definition.by_attr[f.name].default), f.name
    assert (definition.by_attr["model_name"].default, definition.by_attr["n_tiles"].length) == (f"{ndim}D_demo", ndim)
    assert definition.by_attr["model_path"].name == f"MODEL{ndim}D_PATH"


def _same_value(a, b):
    return a == b and type(a) is type(b)


def test_settings_are_frozen_and_travel_to_other_processes():
    s = Settings(ndim=3, n_tiles=[1, 2, 2], export_objects=["csv", "roi", "csv"])
    assert s.n_tiles == (1, 2, 2) and s.export_objects == ("csv", "roi")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.prob_thresh = 0.5
    copy = pickle.loads(pickle.dumps(s))
    assert copy == s and copy.label_values() == s.label_values()
    assert Settings(3, 1).input_channel == 1  # positional in the declaration's order, after ndim


@pytest.mark.parametrize("value", [1, 0, "yes"])
def test_true_false_or_auto_refuses_one_and_zero(value):
    with pytest.raises(SettingsError) as err:
        Settings(separate_process=value)
    assert str(err.value) == f"SEPARATE_PROCESS={value!r}: must be one of 'auto', True, False"
