"""The package's errors: one family, each member also the built-in it behaves like.

Every error that is the user's to fix (a setting, a file, a model, an output
path) derives from :class:`StardistHostError`, so an entry point catches that one
class and shows its message as one line; each subclass also derives from the
matching built-in (``ValueError``, ``OSError`` ...), as tifffile's
``TiffFileError(ValueError)`` does, so ``except ValueError`` keeps working.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

__all__ = ["StardistHostError", "SettingsError", "IndexRangeError", "PlanError", "InputFileError", "TiffError",
           "ReadOnlyInputError", "OutputError", "OutputBusyError", "MissingExtraError", "ModelError",
           "LabelOverflowError", "NoImageSetError", "AnalysisError", "PairError", "TrainError", "Cancelled",
           "UnitFailedError", "SegmentationProcessError", "check_index", "require", "Option", "EXIT_USER_ERROR",
           "EXIT_CANCELLED", "EXIT_BROKEN_PIPE"]

#: Exit status of a headless run stopped by a user error (argparse uses 2 too).
EXIT_USER_ERROR = 2
#: Exit status of a run cancelled by the user (Ctrl-C or a host's Stop), as shells report SIGINT.
EXIT_CANCELLED = 130
#: Exit status when the reader of the standard output went away (``| head``), as shells report SIGPIPE.
EXIT_BROKEN_PIPE = 141


class StardistHostError(Exception):
    """Base of every error that is the user's to fix; its message says what to change.

    The message names script settings; ``command_line``, where set, is the
    same message naming command-line options instead (``--dim 2``), which
    the ``stardist-host`` command shows.
    """

    command_line: str | None = None  # also where a subclass's __init__ bypasses this one (schema.SettingsErrors)

    def __init__(self, *args: Any, command_line: str | None = None) -> None:
        super().__init__(*args)
        self.command_line = command_line

    def in_words_of(self, options: Mapping[str, Option] | None = None) -> str:
        """The message as the ``stardist-host`` command shows it.

        ``command_line`` where the error sets it; otherwise the message with each
        setting of ``options`` (its name, or lower-case name, as a script writes
        it) written as the command-line option that gives it:
        ``MODEL2D_PATH='/x'`` becomes ``--model-path /x``, ``USE_GPU=False``
        ``--cpu``, ``set MODEL2D_PATH to`` ``give --model-path``; a name alone is
        left as it is (a message may name the script setting on purpose).
        """
        import ast
        import re
        import shlex

        if self.command_line:
            return self.command_line
        if not options:
            return str(self)

        def assignment(match: re.Match) -> str:
            flag, sets = options[match["name"]]
            text = match["value"]
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):  # a pattern such as (z, y, x): the option takes it comma-separated
                value = re.sub(r"\s+", "", text[1:-1]).split(",") if text[:1] in "([" and text[-1:] in ")]" else text
            if sets is not None:
                return flag if value == sets else f"without {flag}"
            if value is None:
                return f"{flag} none"
            if isinstance(value, (list, tuple)):
                return f"{flag} {','.join(map(str, value)) or chr(34) * 2}"
            return f"{flag} {shlex.quote(str(value))}"

        names = "|".join(re.escape(n) for n in sorted(options, key=len, reverse=True))
        message = re.sub(rf"\b(?P<name>{names})=(?P<value>{_LITERAL})", assignment, str(self))
        return re.sub(rf"\bset (?P<name>{names}) to\b", lambda m: f"give {options[m['name']].flag}", message)


class Option(NamedTuple):
    """How the command line gives a setting: ``flag`` (``--model-path``, or a positional's name), and for
    an on/off flag the value it ``sets``."""

    flag: str
    sets: Any = None


_LITERAL = r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\([^()]*\)|\[[^\[\]]*\]|[-+\w.]+"""


class SettingsError(StardistHostError, ValueError):
    """A setting with a value that is not allowed: names the setting, the value and what is allowed."""

    def __init__(self, setting: str, value: Any, allowed: str) -> None:
        self.setting, self.value, self.allowed = setting, value, allowed
        super().__init__(f"{setting}={value!r}: {allowed}")

    def __reduce__(self):  # keep the three fields across processes (pickling)
        return type(self), (self.setting, self.value, self.allowed)


class IndexRangeError(SettingsError, IndexError):
    """A channel, plane or time point index outside the image set."""


class PlanError(StardistHostError, ValueError):
    """Settings that do not fit the image set as a whole (a 3D run on single planes).

    Worded for a script; ``command_line`` words it for the ``stardist-host`` command.
    """


class InputFileError(StardistHostError, ValueError):
    """An input file that cannot be read as asked (missing, damaged, truncated, not a TIFF)."""


class ReadOnlyInputError(StardistHostError, PermissionError):
    """A write to, or removal of, a channel that comes from an input file, which is never modified."""


class TiffError(InputFileError):
    """A TIFF file that cannot be read as asked, with the reason and the fix."""


class OutputError(StardistHostError, OSError):
    """An output that cannot or may not be written (exists, read-only folder, a directory)."""


class OutputBusyError(OutputError):
    """The output is in use: another run writes it, or another program holds it open."""


class MissingExtraError(StardistHostError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


class ModelError(StardistHostError, ValueError):
    """A model that cannot be found or loaded, or does not fit the job."""


class LabelOverflowError(StardistHostError, OverflowError):
    """More labels than the label channel's type can hold."""


class NoImageSetError(StardistHostError, RuntimeError):
    """No image set was handed over by a host, and none was opened from a file."""


class AnalysisError(StardistHostError, ValueError):
    """An analysis setting or input that does not fit the image set."""


class PairError(StardistHostError, ValueError):
    """Training or evaluation images and masks that do not fit together."""


class TrainError(PairError):
    """Training settings that do not fit the data or the output folder."""


class UnitFailedError(StardistHostError, RuntimeError):
    """A unit (plane or volume) failed on a worker; the message names the unit and the cause."""


class SegmentationProcessError(StardistHostError, RuntimeError):
    """The child process of a SEPARATE_PROCESS run ended without finishing (crashed, or killed by the system)."""


class Cancelled(StardistHostError):
    """The run was stopped by the user (a host's Stop button, ``cancel()`` or Ctrl-C)."""


def require(module: str, extra: str, *, purpose: str) -> Any:
    """Import ``module``, or raise :class:`MissingExtraError` naming ``pip install "stardist-host[extra]"``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{purpose} needs the Python package {module.split('.')[0]!r}, which is not installed ({err}); "
            f'install it with: pip install "stardist-host[{extra}]"'
        ) from err


def check_index(
    name: str, value: Any, count: int, *, what: str = "the image set", noun: str | None = None,
    names: Sequence[str] | None = None,
) -> int:
    """Return ``value`` if it indexes one of ``count`` items, else raise :class:`IndexRangeError`.

    Parameters
    ----------
    name
        The setting or argument, as the user wrote it (``INPUT_CHANNEL``, ``channel``).
    value
        The index given; it must be a whole number in ``0..count-1``.
    count
        How many there are.
    what
        What holds them, for the message (``"the image set"``, ``"seg.ome.tif"``).
    noun
        Plural of what is indexed (``"channels"``); default: ``name`` lower-cased plus "s".
    names
        Names of the items (channel names), listed in the message.
    """
    noun = noun or f"{name.lower().rsplit('_', 1)[-1]}s"
    if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
        raise IndexRangeError(name, value, f"must be a whole number, 0 for the first of {what}'s {noun}")
    if not 0 <= int(value) < count:
        listed = f" ({', '.join(names)})" if names else ""
        allowed = f"{what} has {noun} 0..{count - 1}{listed}" if count else f"{what} has no {noun}"
        raise IndexRangeError(name, value, allowed)
    return int(value)
