"""The settings definitions against everything derived from them: scripts, README, CLI, operator, validation."""

import argparse
import ast
import dataclasses
import os

import numpy as np
import pytest
from conftest import ROOT

from stardist_host import MemoryImageSet
from stardist_host.analyses.jobs import JOBS, run_job
from stardist_host.cli import SEGMENT_DIM_DEFAULTS, build_parser
from stardist_host.errors import SettingsError
from stardist_host.operator import parameters
from stardist_host.schema import TYPES, Field, Schema, SettingsErrors, markdown_table, setting
from stardist_host.segmentation.settings import Settings, readme_table, schema

SCRIPTS = {"stardist_2d.py": schema(2), "stardist_3d.py": schema(3), **{j.script: j.schema for j in JOBS.values()}}


def _block(path):
    """The USER SETTINGS block of a script as {NAME: value}, in order."""
    text = path.read_text(encoding="utf-8")
    start, end = text.index("USER SETTINGS @"), text.index("END USER SETTINGS")
    tree = ast.parse(text[text.index("\n", start):end].rsplit("\n", 1)[0])
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body}


def _same(a, b):
    return list(a) == list(b) if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) else a == b and type(a) is type(b)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_block_is_the_definition(script):
    block, definition = _block(ROOT / "scripts" / script), SCRIPTS[script]
    assert list(block) == [f.name for f in definition]  # every setting, in the definition's order
    for field in definition:
        assert _same(block[field.name], field.script_value), (field.name, block[field.name], field.script_value)
        assert field.error(block[field.name]) is None or field.name.endswith("_PATH")


def test_readme_tables_are_the_definitions():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_table() in readme
    for job in JOBS.values():
        assert f"`{job.name}` (`scripts/{job.script}`):\n\n" + markdown_table(job.schema.table_rows()) in readme


def _options(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {s: a for a in sub._actions for s in a.option_strings}


@pytest.mark.parametrize("command", ["segment", *JOBS])
def test_cli_options_are_the_definition(command):
    definition = schema(2) if command == "segment" else JOBS[command].schema
    options = _options(command)
    extra = {"-h", "--help", "-q", "--quiet", "-v", "--verbose", "--axes", "--series"} | (
        {"--dim", "--time-point", "--level", "--workers", "--scheduler", "--resume"} if command == "segment" else set())
    assert set(options) - extra == {f.flag for f in definition if f.flag}
    for field in definition:
        if not field.flag:
            assert field.name == "OUTPUT_FOLDER"  # the positional argument
            continue
        action = options[field.flag]
        assert action.dest == field.attr
        if field.type == "bool":  # the help says what the flag does: the meaning of the value it sets
            meanings = dict(part.split(": ", 1) for part in field.help.split("; ") if part[:5] in ("True:", "False"))
            assert meanings.get(str(not field.default), "").split(";")[0] in action.help
            assert "True:" not in action.help and "False:" not in action.help
        else:
            assert field.help in action.help and action.help.strip() != field.name
        assert (field.unit in action.help) if field.unit else True
        if field.name in SEGMENT_DIM_DEFAULTS and command == "segment":
            assert action.default is None  # Settings fills in the definition's default for --dim
        elif field.name == "EXPORT_OBJECTS" and command == "segment":
            assert action.type == schema(3).by_name[field.name].parse  # every --dim's choices; Settings checks
        elif field.type == "bool":
            assert action.default is field.default and action.const is (not field.default)
        else:
            assert _same(action.default, field.default) if not field.required else action.required
            assert action.type == field.parse
    if command == "segment":
        assert options["--all-time-points"].dest == "current_time_point"


def test_cli_time_points_default_as_the_scripts():
    args = build_parser().parse_args(["segment", "in.tif", "out.tif"])
    assert args.current_time_point is True and args.time_point == 0  # the current (first) time point only
    args = build_parser().parse_args(["segment", "in.tif", "out.tif", "--all-time-points", "--dim", "3",
                                      "--n-tiles", "1,2,2", "--prob-thresh", "none"])
    settings = Settings(ndim=args.dim, **schema(3).values_from_args(args))
    assert (settings.current_time_point, settings.model_name, settings.n_tiles, settings.prob_thresh) == (
        False, "3D_demo", (1, 2, 2), None)
    args = build_parser().parse_args(["track", "in.tif", "out", "--label-channel", "2", "--max-distance-um", "5",
                                      "--track-channel-name", "none", "--ndim", "2"])
    assert (args.track_channel_name, args.ndim, args.divisions) == (None, 2, True)


@pytest.mark.parametrize("ndim", [2, 3])
def test_operator_parameters_cover_every_setting(ndim):
    params = parameters(ndim)
    names = [p["name"] for p in params]
    attrs = [f.name for f in dataclasses.fields(Settings) if f.name != "ndim"]
    assert names == [Settings().name(a) if ndim == 2 else Settings(ndim=3).name(a) for a in attrs]
    assert names == list(_block(ROOT / "scripts" / f"stardist_{ndim}d.py"))
    defaults = Settings(ndim=ndim)
    for p, attr in zip(params, attrs):
        assert p["type"] and p["description"] and not p["required"]
        assert _same(p["default"], getattr(defaults, attr)) or p["default"] == getattr(defaults, attr)
    by_name = {p["name"]: p for p in params}
    assert by_name["PROB_THRESH"]["allowed"] == {"min": 0, "max": 1, "min_exclusive": True, "max_exclusive": True}
    assert by_name["LABEL_DTYPE"]["allowed"] == ["auto", "uint16", "uint32"]
    assert by_name["N_TILES"]["length"] == ndim and by_name["N_TILES"]["optional"]
    assert by_name["PERCENTILE_LOW"]["unit"] == "percentile"
    assert by_name["MODEL_NAME"]["default"] == f"{ndim}D_demo"


def test_every_bad_setting_is_reported_at_once():
    with pytest.raises(SettingsErrors) as err:
        Settings(input_channel=-1, use_gpu="yes", percentile_high=101, first_plane=3, last_plane=1)
    assert [e.setting for e in err.value.errors] == ["INPUT_CHANNEL", "PERCENTILE_HIGH", "USE_GPU", "FIRST_PLANE"]
    assert str(err.value) == (
        "INPUT_CHANNEL=-1: must be a whole number, 0 for the first channel, or a list such as [0, 1] for a model "
        "with several input channels | "
        "PERCENTILE_HIGH=101: must be a percentile between 0 and 100 | USE_GPU='yes': must be True or False | "
        "FIRST_PLANE=3: must not be above LAST_PLANE=1")
    assert isinstance(err.value, SettingsError) and isinstance(err.value, ValueError)


def test_ndim_3_defaults_to_the_3d_model():
    assert Settings(ndim=3).model_name == "3D_demo" and Settings().model_name == "2D_demo"


def test_from_script_ignores_what_a_host_injects_and_suggests_the_closest_name():
    class HostImageSet:
        pass

    block = {"INPUT_CHANNEL": 1, "NP": np, "OS": os, "HOST_IMAGESET": HostImageSet, "GET_IMAGESET": print}
    assert Settings.from_script(block, ndim=2).input_channel == 1
    with pytest.raises(SettingsErrors) as err:
        Settings.from_script({"INPUT_CHANEL": 1, "USE_GPU": "no", "HOST_VERSION": "4.1"}, ndim=2)
    text = str(err.value)
    assert "INPUT_CHANEL=1: is not a setting of this script; the settings are " in text
    assert "; did you mean INPUT_CHANNEL?" in text
    assert "HOST_VERSION='4.1': is not a setting of this script" in text
    assert "USE_GPU='no': must be True or False" in text


def test_analysis_settings_all_reported_before_anything_is_written(tmp_path):
    ims = MemoryImageSet(np.zeros((1, 1, 1, 8, 8), np.uint16))
    with pytest.raises(SettingsErrors) as err:
        run_job("track", ims, tmp_path, "x", {"label_channel": -1, "max_distance_um": 0, "max_gaps": 2})
    text = str(err.value)
    assert "MAX_GAPS=2: is not a setting of this script" in text and "did you mean MAX_GAP?" in text
    assert "LABEL_CHANNEL=-1: must be a whole number >= 0" in text
    assert "MAX_DISTANCE_UM=0: must be a number in µm > 0" in text
    with pytest.raises(SettingsError, match=r"MAX_DISTANCE_UM=None: this setting is needed; it must be a number in µm > 0"):
        run_job("track", ims, tmp_path, "x", {"label_channel": 0})
    assert list(tmp_path.iterdir()) == [] and ims.channel_count == 1


def test_operator_main_validates_and_segments_the_active_imageset(monkeypatch, memory_imageset):
    from conftest import FakeModel

    from stardist_host import set_active_imageset
    from stardist_host.operator import main
    from stardist_host.segmentation import models, segment

    calls = []
    monkeypatch.setattr(models, "load_model", lambda name, *, ndim, path=None, channels=None: FakeModel(ndim))
    monkeypatch.setattr(segment, "segment", lambda imageset, model, plan, **kw: calls.append((imageset, model, plan, kw))
                        or "result")
    set_active_imageset(memory_imageset)
    try:
        with pytest.raises(SettingsErrors, match=r"INPUT_CHANNEL=-1: .* \| PROB_THRESH=2: "):
            main(INPUT_CHANNEL=-1, PROB_THRESH=2)
        with pytest.raises(SettingsErrors, match=r"model_name='x': is not a setting.*\| prob_thresh=5: "):
            main(model_name="x", prob_thresh=5)  # lower case: refused, not passed over as a script's globals are
        assert calls == []
        progress = print
        assert main(ndim=3, INPUT_CHANNEL=1, PROB_THRESH=0.6, USE_GPU=False, SEPARATE_PROCESS=False,
                    progress=progress) == "result"  # in this process, where the stand-ins are
    finally:
        set_active_imageset(None)
    (imageset, model, plan, kw), = calls
    assert imageset is memory_imageset and model.config.n_dim == 3
    assert (plan.channel, plan.time_points, len(plan.units)) == (1, (1,), 1)
    assert (kw["output_name"], kw["prob_thresh"], kw["progress"]) == ("Stardist_Other", 0.6, progress)


PARSED = [  # one per type the command line gives as text (a bool is a flag)
    ("int", {}, "3", 3), ("float", {}, "2.5", 2.5), ("str", {}, "x", "x"), ("path", {}, "a/b", "a/b"),
    ("choice", {"choices": (2, 3)}, "3", 3), ("choices", {"choices": ("roi", "csv")}, "roi, csv", ("roi", "csv")),
    ("ints", {}, "1,2", [1, 2]), ("ints", {"length": 2}, "1x2", (1, 2)),
    ("floats", {"length": 3}, "2,0.5,0.5", (2.0, 0.5, 0.5)),
    ("number_or_numbers", {"choices": ("auto",), "length": 3}, "auto", "auto"),
    ("number_or_numbers", {"choices": ("auto",), "length": 3}, "0.5", 0.5),
    ("number_or_numbers", {"choices": ("auto",), "length": 3}, "1,0.5,0.5", (1.0, 0.5, 0.5)),
    ("int_or_ints", {}, "2", 2), ("int_or_ints", {}, "0,1", (0, 1)),
]


def test_every_type_has_a_parse_case():
    assert {case[0] for case in PARSED} == set(TYPES) - {"bool"}


@pytest.mark.parametrize("kind, keywords, text, value", PARSED)
def test_each_type_parses_its_command_line_text(kind, keywords, text, value):
    field = Field("X", kind, **keywords)
    parsed = field.parse(text)
    assert parsed == value and type(parsed) is type(value) and field.error(parsed) is None


@pytest.mark.parametrize("kind, keywords, text, message", [
    ("int", {"none": "automatic"}, "2.5", "'2.5' is not a whole number such as 3 or none"),
    ("float", {}, "x", "'x' is not a number such as 2.5"),
    ("ints", {}, "1,a", "'1,a' is not a list of whole numbers such as 1,2"),
    ("floats", {}, "a", "'a' is not a list of numbers such as 2,0.5,0.5"),
    ("choice", {"choices": (2, 3)}, "4", "'4' is not one of 2, 3"),
    ("number_or_numbers", {"choices": ("auto",)}, "big", "'big' is not a number or a list of numbers such as "
                                                         "0.5 or 1,0.5,0.5"),
    ("choices", {"choices": ("roi",)}, "roi,svg", "svg not among roi (give them separated by commas)"),
])
def test_a_bad_command_line_text_says_what_is_expected(kind, keywords, text, message):
    with pytest.raises(argparse.ArgumentTypeError) as err:
        Field("X", kind, **keywords).parse(text)
    assert str(err.value) == message


@pytest.mark.parametrize("keywords, allowed", [
    ({"type": "float", "low": 0, "high": 1, "open_low": True, "open_high": True, "none": "the model's own"},
     "must be a number between 0 and 1 (exclusive), or None (the model's own)"),
    ({"type": "float", "low": 0, "high": 100}, "must be a number between 0 and 100"),
    ({"type": "float", "low": 0, "high": 1, "open_low": True, "unit": "µm"}, "must be a number in µm > 0 and <= 1"),
    ({"type": "int", "low": 1, "unit": "MB"}, "must be a whole number in MB >= 1"),
    ({"type": "ints", "length": 3, "low": 1}, "must be 3 whole numbers >= 1"),
    ({"type": "ints", "low": 0}, "must be a list of whole numbers >= 0, e.g. [0, 1]"),
    ({"type": "choice", "choices": ("auto", True, False)}, "must be one of 'auto', True, False"),
    ({"type": "choices", "choices": ("roi", "csv")}, "must be a list of any of 'roi', 'csv', e.g. ['roi'], or []"),
    ({"type": "number_or_numbers", "choices": ("auto",), "low": 0, "open_low": True, "length": 2},
     "must be 'auto', a number > 0 or 2 such numbers, one per axis"),
    ({"type": "path", "none": "the bundled models"}, "must be a path in quotes, or None (the bundled models)"),
    ({"type": "bool", "allowed": "must be on or off"}, "must be on or off"),  # a declaration's own text wins
])
def test_allowed_text_comes_from_type_range_unit_and_choices(keywords, allowed):
    assert Field("X", **keywords).allowed == allowed


def test_a_dataclass_declares_its_settings_once():
    @dataclasses.dataclass(frozen=True)
    class Toy:
        size: int = setting("int", help="edge", low=1, example=4, affects_labels=True)
        variant: int = 2  # not a setting
        name: str = setting("str", "a", "what", affects_labels=False, vary=lambda v: {"name": f"NAME{v}D"})

    toy = Schema.from_dataclass(Toy, 3)
    assert [(f.name, f.attr, f.required, f.affects_labels) for f in toy] == [
        ("SIZE", "size", True, True), ("NAME3D", "name", False, False)]
    assert Toy(size=2).name == "a" and toy.by_attr["size"].allowed == "must be a whole number >= 1"
    with pytest.raises(TypeError):
        setting("int", 0, "no affects_labels")
