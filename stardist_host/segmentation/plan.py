"""Turn validated settings and an image set into the list of planes or volumes to segment."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PlanError, SettingsError, check_index
from ..host import ImageSet
from .settings import Settings

__all__ = ["Plan", "Unit", "make_plan"]


@dataclass(frozen=True)
class Unit:
    """One prediction: a plane (2D, ``first == last``) or a Z range (3D) of one time point."""

    time_point: int
    first: int
    last: int

    @property
    def planes(self) -> range:
        return range(self.first, self.last + 1)


@dataclass(frozen=True)
class Plan:
    """Which channel, time points and planes a run segments, and how."""

    ndim: int
    channel: int | tuple[int, ...]  # a tuple: the input channels of a model with several, in its order
    time_points: tuple[int, ...]
    first_plane: int
    last_plane: int

    @property
    def channels(self) -> tuple[int, ...]:
        return self.channel if isinstance(self.channel, tuple) else (self.channel,)

    def output_name(self, prefix: str, channel_names) -> str:
        """The label channel's name: ``prefix`` and the input channel's name (names joined by "+" for several)."""
        return prefix + "+".join(channel_names[c] for c in self.channels)

    @property
    def units(self) -> list[Unit]:
        """Planes (2D) or volumes (3D) in the order they are processed."""
        if self.ndim == 2:
            return [Unit(t, z, z) for t in self.time_points for z in range(self.first_plane, self.last_plane + 1)]
        return [Unit(t, self.first_plane, self.last_plane) for t in self.time_points]


def make_plan(settings: Settings, imageset: ImageSet) -> Plan:
    """Check the settings against the image set and list the work.

    Plane semantics follow the original script: FIRST_PLANE and LAST_PLANE are
    inclusive; -1 for both is the whole stack; LAST_PLANE=-1 is the top plane;
    FIRST_PLANE=-1 is the bottom plane (0).

    Raises
    ------
    PlanError
        A 3D run on an image set of single planes (before the model loads).
    SettingsError
        When the channel or a plane is outside the image set.
    """
    n_channels, n_planes = imageset.channel_count, imageset.plane_count
    if settings.ndim == 3 and n_planes == 1:
        single = "needs Z planes, but the image set has one plane per time point"
        raise PlanError(f"the 3D script {single}: use the 2D script (stardist_2d.py)",
                        command_line=f"--dim 3 {single}: use --dim 2")
    for channel in settings.channels:
        check_index("INPUT_CHANNEL", channel, n_channels, names=imageset.channel_names)
    first = 0 if settings.first_plane == -1 else settings.first_plane
    last = n_planes - 1 if settings.last_plane == -1 else settings.last_plane
    for name, value in (("FIRST_PLANE", settings.first_plane), ("LAST_PLANE", settings.last_plane)):
        if value >= n_planes:
            raise SettingsError(name, value, f"the image set has planes 0..{n_planes - 1} (or -1)")
    if first > last:
        raise SettingsError("FIRST_PLANE", settings.first_plane,
                            f"must not be above LAST_PLANE={settings.last_plane} (plane {last})")
    if settings.current_time_point:
        t = imageset.current_time_point
        if not 0 <= t < imageset.time_point_count:
            raise SettingsError("CURRENT_TIME_POINT", True, f"the image set's current time point {t} is not one "
                                f"of 0..{imageset.time_point_count - 1}")
        time_points: tuple[int, ...] = (t,)
    else:
        time_points = tuple(range(imageset.time_point_count))
    return Plan(settings.ndim, settings.input_channel, time_points, first, last)
