"""One definition per job of its settings, and everything derived from it.

A :class:`Field` holds a setting's script name (``INPUT_CHANNEL``), type,
default, allowed values or range, unit and one-line help; a :class:`Schema` is
the ordered fields of one job.  From the schema come the validation (every bad
field reported at once, as csbdeep's ``Config.is_valid`` does), the reading of
a script's USER SETTINGS block, the command-line options and their help, the
operator parameter list and the README table; tests compare the scripts'
blocks, the README and the CLI with it.  What each type means (valid values,
the "allowed" text, command-line parsing) is one entry of :data:`TYPES`; a
dataclass can declare its settings with :func:`setting` and have
:meth:`Schema.from_dataclass` read them.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import re
import types
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from .errors import SettingsError

__all__ = ["Field", "Kind", "Schema", "SettingsErrors", "REQUIRED", "TYPES", "raise_all", "setting"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The default of a setting the user must give (no default).
REQUIRED: Any = _Required()

class SettingsErrors(SettingsError):
    """Several bad settings at once; ``errors`` lists each one's :class:`SettingsError`.

    The message is the single errors' messages joined by `` | ``, so that an
    entry point still shows it as one line.
    """

    def __init__(self, errors: Sequence[SettingsError]) -> None:
        self.errors = list(errors)
        first = self.errors[0]
        ValueError.__init__(self, " | ".join(str(e) for e in self.errors))
        self.setting, self.value, self.allowed = first.setting, first.value, first.allowed

    def __reduce__(self):
        return type(self), (self.errors,)


def raise_all(errors: Sequence[SettingsError]) -> None:
    """Raise nothing, the one error, or :class:`SettingsErrors` holding them all."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise SettingsErrors(errors)


@dataclass(frozen=True)
class Kind:
    """What one field type means; :data:`TYPES` holds one per type.

    ``valid(field, value)`` says whether a value is one (range, length and
    choices included); ``allowed(field)`` is what an error message says is
    allowed, without "must be" and the None clause; ``parse(field, text)`` turns
    a command-line text into a value and raises ValueError where the text is
    none, whereupon the message says ``word`` and shows ``example``.
    """

    word: str
    valid: Callable[[Any, Any], bool]
    allowed: Callable[[Any], str]
    parse: Callable[[Any, str], Any] = lambda field, text: text
    example: str = ""


def _unit(f: Any) -> str:
    return f" in {f.unit}" if f.unit else ""


def _range(f: Any) -> str:
    if f.low is not None and f.high is not None and f.open_low == f.open_high:
        return f" between {f.low:g} and {f.high:g}" + (" (exclusive)" if f.open_low else "")
    parts = []
    if f.low is not None:
        parts.append(f"{'>' if f.open_low else '>='} {f.low:g}")
    if f.high is not None:
        parts.append(f"{'<' if f.open_high else '<='} {f.high:g}")
    return " " + " and ".join(parts) if parts else ""


def _in_range(f: Any, v: Any) -> bool:
    if f.low is not None and (v <= f.low if f.open_low else v < f.low):
        return False
    return f.high is None or (v < f.high if f.open_high else v <= f.high)


def _whole(f: Any, v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and _in_range(f, v)


def _real(f: Any, v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and _in_range(f, v)


def _named(f: Any, v: Any) -> bool:
    return isinstance(v, (str, os.PathLike)) and bool(str(v).strip())


def _chosen(f: Any, v: Any) -> bool:
    # 1 == True and 0 == False: a bool matches only a bool choice, anything else only a non-bool one
    return any(v == c and isinstance(v, bool) == isinstance(c, bool) for c in f.choices)


def _sequence(item: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def valid(f: Any, v: Any) -> bool:
        return (isinstance(v, (list, tuple)) and (not f.length or len(v) == f.length)
                and all(item(f, x) for x in v))
    return valid


def _numbers(convert: Callable[[str], Any], *, by: str = "x", one_or_more: bool = False) -> Callable[[Any, str], Any]:
    """A parser of numbers (``convert`` of each text) separated by commas or ``by``: a tuple where the field has a
    ``length``, else a list; ``one_or_more``: one number as itself, several as a tuple, none refused."""
    def parse(f: Any, text: str) -> Any:
        values = [convert(v) for v in text.replace(by, ",").split(",") if v.strip()]
        if not one_or_more:
            return tuple(values) if f.length else values
        if not values:
            raise ValueError(text)
        return values[0] if len(values) == 1 else tuple(values)
    return parse


def _listed(f: Any) -> str:
    return ", ".join(map(repr, f.choices))


def _parse_choice(f: Any, text: str) -> Any:
    for choice in f.choices:
        if text == str(choice):
            return choice
    listed = ", ".join(map(str, f.choices)) + (" or none" if f.optional else "")
    raise argparse.ArgumentTypeError(f"{text!r} is not one of {listed}")


def _parse_choices(f: Any, text: str) -> tuple:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in values if v not in f.choices]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown)} not among {', '.join(map(str, f.choices))} (give them separated by commas)")
    return values


def _number_or_numbers(f: Any, v: Any) -> bool:
    """One of the choices, a number, or (``length``) numbers, each in range: SCALE, MODEL_PIXEL_SIZE_UM."""
    return v in f.choices if isinstance(v, str) else _sequence(_real)(f, v) or _real(f, v)


def _parse_number_or_numbers(f: Any, text: str) -> Any:
    return text.strip() if text.strip() in f.choices else _numbers(float, one_or_more=True)(f, text)


def _number_or_numbers_allowed(f: Any) -> str:
    choices = f"{_listed(f)}, " if f.choices else ""
    return f"{choices}a number{_unit(f)}{_range(f)} or {f.length or 'a list of'} such numbers, one per axis"


#: Field types: what a value must be, how the command line gives it and the words for it.
TYPES: dict[str, Kind] = {
    "int": Kind("a whole number", _whole, lambda f: f"a whole number{_unit(f)}{_range(f)}", lambda f, t: int(t), "3"),
    "float": Kind("a number", _real, lambda f: f"a number{_unit(f)}{_range(f)}", lambda f, t: float(t), "2.5"),
    "bool": Kind("True or False", lambda f, v: isinstance(v, bool), lambda f: "True or False"),
    "str": Kind("a text", _named, lambda f: "a non-empty text in quotes"),
    "path": Kind("a path", _named, lambda f: "a path in quotes"),
    "choice": Kind("a choice", _chosen, lambda f: f"one of {_listed(f)}", _parse_choice),
    "choices": Kind("a list of choices",
                    lambda f, v: isinstance(v, (list, tuple)) and all(isinstance(x, str) and x in f.choices for x in v),
                    lambda f: f"a list of any of {_listed(f)}, e.g. {list(f.choices[:1])}, or []", _parse_choices),
    "ints": Kind("a list of whole numbers", _sequence(_whole),
                 lambda f: f"{f.length or 'a list of'} whole numbers{_range(f)}{'' if f.length else ', e.g. [0, 1]'}",
                 _numbers(int), "1,2"),
    "floats": Kind("a list of numbers", _sequence(_real),
                   lambda f: f"{f.length or 'a list of'} numbers{_unit(f)}{_range(f)}", _numbers(float), "2,0.5,0.5"),
    # a whole number in range, or a non-empty list of them: INPUT_CHANNEL of a model with several input channels
    "int_or_ints": Kind("a whole number or a list of them",
                        lambda f, v: _whole(f, v) or (_sequence(_whole)(f, v) and len(v) > 0),
                        lambda f: f"a whole number{_range(f)} or a list of them, e.g. [0, 1]",
                        _numbers(int, by=",", one_or_more=True), "0 or 0,1"),
    # a choice such as "auto", one number for all axes, or one number per axis
    "number_or_numbers": Kind("a number or a list of numbers", _number_or_numbers, _number_or_numbers_allowed,
                              _parse_number_or_numbers, "0.5 or 1,0.5,0.5"),
}


@dataclass(frozen=True)
class Field:
    """One setting: how it is named, typed, bounded and explained.

    Parameters
    ----------
    name
        The name a user writes in a script's USER SETTINGS block.
    type
        One of :data:`TYPES`; ``ints`` / ``floats`` are sequences of numbers.
    default
        The value when the setting is not given; :data:`REQUIRED` where it must be.
    help
        What the setting means, one line.
    unit
        Unit of the value (``"µm"``), or empty.
    allowed
        The error message's "what is allowed"; derived from the bounds where empty.
    none
        What None means where None is allowed; empty where it is not.
    low, high, open_low, open_high
        Range of a number (or of each number of a sequence); open ends exclude the bound.
    choices
        Allowed values of a ``choice``.
    length
        Required length of a sequence; None: any length.
    check
        Extra check of a valid-looking value; returns the error text, or None.
    attr
        The attribute / keyword name (default: ``name`` lower-cased).
    flag
        Command-line option (default ``--name-in-lower-case``); for a bool that
        defaults to True, the option that sets it False.  Empty: not on the command line.
    example
        The value a script block shows for a required setting.
    affects_labels
        Whether changing it can change the labels a segmentation writes; a
        resumed run must agree on these (see :func:`setting`).
    """

    name: str
    type: str
    default: Any = REQUIRED
    help: str = ""
    unit: str = ""
    allowed: str = ""
    none: str = ""
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple = ()
    length: int | None = None
    check: Callable[[Any], str | None] | None = None
    attr: str = ""
    flag: str | None = None
    example: Any = None
    affects_labels: bool = False

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"{self.name}: type {self.type!r} is not one of {tuple(TYPES)}")
        if not self.attr:
            object.__setattr__(self, "attr", self.name.lower())
        if self.flag is None:
            no = "no-" if self.type == "bool" and self.default is True else ""
            object.__setattr__(self, "flag", f"--{no}{self.attr.replace('_', '-')}")
        if not self.allowed:
            none = f", or None ({self.none})" if self.none else ""
            object.__setattr__(self, "allowed", f"must be {TYPES[self.type].allowed(self)}{none}")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def optional(self) -> bool:
        """Whether None is an allowed value."""
        return bool(self.none)

    @property
    def script_value(self) -> Any:
        """The value the script block shows: the default, or the example of a required setting."""
        return self.example if self.required else self.default

    def error(self, value: Any) -> SettingsError | None:
        """The error for ``value``, or None where it is allowed."""
        if value is None:
            if self.optional:
                return None
            if self.required:
                return SettingsError(self.name, value, f"this setting is needed; it {self.allowed}")
        if not TYPES[self.type].valid(self, value):
            return SettingsError(self.name, value, self.allowed)
        problem = self.check(value) if self.check else None
        return SettingsError(self.name, value, problem) if problem else None

    # ----- text forms: command line, parameter lists, README --------------------------------------------------

    def parse(self, text: str) -> Any:
        """A command-line text as this setting's value (argparse ``type=``)."""
        if self.optional and text.strip().lower() == "none":
            return None
        kind = TYPES[self.type]
        try:
            return kind.parse(self, text)
        except ValueError:
            none = " or none" if self.optional else ""
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind.word} such as {kind.example}{none}") from None

    def default_text(self) -> str:
        """The default as a user writes it in a script (tuples and lists alike), or "required"."""
        if self.required:
            return "required"
        if isinstance(self.default, tuple):
            return repr(list(self.default))
        if isinstance(self.default, str) and '"' not in self.default:
            return f'"{self.default}"'  # as the scripts write texts
        return repr(self.default)

    def cli_help(self) -> str:
        """The option's help: what it does, its unit, choices and default as the option takes them."""
        unit = f" [{self.unit}]" if self.unit else ""
        none = f"; none: {self.none}" if self.none else ""
        if self.type == "bool":
            # the flag sets the value that is not the default: say what that value does
            state = self.default is not True
            meanings = dict(re.findall(r"\b(True|False): ([^;]*)", self.help))
            if str(state) in meanings:
                what = meanings[str(state)]
            elif meanings:
                what = f"not: {meanings[str(not state)]}"
            else:
                what = self.help if state else f"do not {self.help}"
            return f"{what}{unit} (script setting {self.name}={state}; default {self.default})".replace("%", "%%")
        choices = ""
        if self.choices and not all(str(c) in self.help for c in self.choices):
            choices = f"; one of {', '.join(map(str, self.choices))}"
        if self.required:
            default = ""
        elif self.default is None:
            default = "; default none"
        elif isinstance(self.default, (list, tuple)):
            default = f"; default {','.join(map(str, self.default)) or 'none given'}"
        else:
            default = f"; default {self.default}"
        return f"{self.help}{unit}{none}{choices}{default} (script setting {self.name})".replace("%", "%%")

    def describe(self) -> dict[str, Any]:
        """A machine-readable description: name, type, default, allowed, unit, description."""
        if self.choices:
            allowed: Any = list(self.choices)
        elif self.low is not None or self.high is not None:
            allowed = {"min": self.low, "max": self.high, "min_exclusive": self.open_low, "max_exclusive": self.open_high}
        else:
            allowed = None
        default = list(self.default) if isinstance(self.default, tuple) else self.default
        return {
            "name": self.name, "type": self.type, "default": None if self.required else default,
            "required": self.required, "optional": self.optional, "length": self.length, "allowed": allowed,
            "unit": self.unit, "description": self.help + (f"; None: {self.none}" if self.none else ""),
            "rule": self.allowed,
        }


#: Where :func:`setting` keeps a declaration in a dataclass field's metadata.
SETTING = "stardist_host.schema.setting"


def setting(type: str, default: Any = REQUIRED, help: str = "", *, affects_labels: bool,
            vary: Callable[[Any], Mapping[str, Any]] | None = None, **keywords: Any) -> Any:
    """A dataclass field that is a setting: its default, and its :class:`Field` in the field's metadata.

    :meth:`Schema.from_dataclass` reads these declarations, so a settings class
    states each setting once (the way attrs and pydantic keep a field's
    validation beside it).  The script name is the attribute's name in upper
    case unless ``name`` is given.

    Parameters
    ----------
    type, default, help, **keywords
        As :class:`Field` takes them.
    affects_labels
        Whether changing the setting can change the labels; no default, so
        that every declaration says it.
    vary
        The keywords that depend on the variant a schema is built for (the
        segmentation's ``ndim``), as a function of the variant.  Where they
        hold the default, ``default`` stays the dataclass's (a placeholder the
        class replaces with the variant's).
    """
    declared = dict(keywords, type=type, default=default, help=help, affects_labels=affects_labels, vary=vary)
    return dataclasses.field(default=dataclasses.MISSING if default is REQUIRED else default,
                             metadata={SETTING: declared})


class Schema:
    """The ordered settings of one job."""

    def __init__(self, fields: Iterable[Field]) -> None:
        self.fields = list(fields)
        self.by_name = {f.name: f for f in self.fields}
        self.by_attr = {f.attr: f for f in self.fields}

    @classmethod
    def from_dataclass(cls, datacls: type, variant: Any = None) -> Schema:
        """The settings a dataclass declares with :func:`setting`, in its field order; other fields are left out."""
        found = []
        for f in dataclasses.fields(datacls):
            if SETTING not in f.metadata:
                continue
            declared = dict(f.metadata[SETTING])
            vary = declared.pop("vary")
            found.append(Field(**{"name": f.name.upper(), "attr": f.name, **declared,
                                  **(vary(variant) if vary else {})}))
        return cls(found)

    def __iter__(self):
        return iter(self.fields)

    def errors(self, values: Mapping[str, Any]) -> list[SettingsError]:
        """One error per bad value in ``values`` (keyed by attribute name; missing ones take the default)."""
        found = [f.error(values.get(f.attr, None if f.required else f.default)) for f in self.fields]
        return [err for err in found if err is not None]

    def from_namespace(
        self, namespace: Mapping[str, Any], *, wrong: Mapping[str, str] | None = None,
    ) -> tuple[dict[str, Any], list[SettingsError]]:
        """The settings in a script's ``globals()``, by attribute name, and the errors of unknown names.

        Upper-case names that do not start with ``_`` are candidates; modules, classes and callables among them
        are ignored (a host may inject such names), and every other unknown name is refused with the closest
        setting name suggested, so a typo (``INPUT_CHANEL``) stops the run instead of being ignored.  ``wrong``
        maps names that belong to a sibling script to the message that says what to set instead.
        """
        values: dict[str, Any] = {}
        found: list[SettingsError] = []
        for key, value in namespace.items():
            if not key.isupper() or key.startswith("_"):
                continue
            if key in self.by_name:
                values[self.by_name[key].attr] = value
            elif wrong and key in wrong:
                found.append(SettingsError(key, value, wrong[key]))
            elif not isinstance(value, types.ModuleType) and not callable(value):  # classes are callable too
                found.append(self.unknown(key, value))
        return values, found

    def unknown(self, key: str, value: Any) -> SettingsError:
        """The error of ``key``, which is no setting: it lists the settings and suggests the closest."""
        names = [f.name for f in self.fields]
        close = difflib.get_close_matches(key, names, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        listed = ", ".join(sorted(names))
        return SettingsError(key, value, f"is not a setting of this script; the settings are {listed}{hint}")

    # ----- command line ----------------------------------------------------------------------------------------

    def add_arguments(
        self, parser: argparse.ArgumentParser, *, overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Add an option per setting that has a flag, typed, explained and defaulted from the definition.

        ``overrides`` maps a setting's name to argparse keywords that replace the
        derived ones (a default that depends on another option).
        """
        for f in self.fields:
            if not f.flag:
                continue
            kwargs: dict[str, Any] = {"dest": f.attr, "help": f.cli_help()}
            if f.type == "bool":
                kwargs.update(action="store_false" if f.default is True else "store_true", default=f.default)
            else:
                kwargs.update(metavar=f.name, type=f.parse)
                if f.required:
                    kwargs["required"] = True
                else:
                    kwargs["default"] = f.default
            kwargs.update((overrides or {}).get(f.name, {}))
            parser.add_argument(f.flag, **kwargs)

    def values_from_args(self, args: argparse.Namespace) -> dict[str, Any]:
        """The settings an argparse result holds, by attribute name."""
        return {f.attr: getattr(args, f.attr) for f in self.fields if hasattr(args, f.attr)}

    # ----- documentation ---------------------------------------------------------------------------------------

    def table_rows(self) -> list[tuple[str, str, str, str]]:
        rows = []
        for f in self.fields:
            meaning = f.help + (f"; `None`: {f.none}" if f.none else "")
            default = "required" if f.required else f"`{f.default_text()}`"
            rows.append((f"`{f.name}`", meaning, f.allowed.replace("must be ", "", 1), default))
        return rows


def markdown_table(rows: Iterable[Sequence[str]]) -> str:
    """A README table: setting, meaning, allowed, default."""
    lines = ["| setting | meaning | allowed | default |", "| --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)

