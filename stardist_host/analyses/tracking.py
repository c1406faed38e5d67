"""Linking nuclei over time into tracks: linear assignment with gap closing and division detection.

The tracker follows Jaqaman et al. (2008), as laptrack and TrackMate do, with
scipy's ``linear_sum_assignment`` on augmented cost matrices:

1. frame to frame: objects at t and t + 1 within MAX_DISTANCE are linked,
   minimising the sum of squared distances;
2. gap closing: a track that ends is joined to one that starts up to MAX_GAP
   frames later, within MAX_DISTANCE per elapsed frame;
3. divisions (optional): a track that starts next to an object of the frame
   before splits that object's track: the mother track ends, and both
   continuations become daughter tracks with the mother as parent.

Only centroids are kept in memory, one time point's labels are read at a time.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

from ..host import ImageSet
from .common import (
    AnalysisError,
    Table,
    check_channel,
    check_positive,
    objects_ndim,
    read_stack,
    resolve_voxel_size,
    write_stack,
)

__all__ = ["track", "TrackResult", "TRACK_COLUMNS", "PROPERTY_COLUMNS", "link"]

log = logging.getLogger(__name__)

TRACK_COLUMNS = ("track_id", "parent_id", "t", "label", "z_um", "y_um", "x_um")
PROPERTY_COLUMNS = ("track_id", "parent_id", "start", "end", "length_frames", "total_displacement_um",
                    "net_displacement_um", "mean_speed_um_per_frame", "straightness")
_FORBIDDEN = 1e18


def link(cost: NDArray, no_link: float) -> list[tuple[int, int]]:
    """Solve a linking problem: pairs (i, j) with finite ``cost[i, j]``, or no link at ``no_link`` each side.

    The (n + m) x (m + n) augmented matrix lets every row and column stay
    unlinked, so only pairs worth linking are linked.
    """
    n, m = cost.shape
    if n == 0 or m == 0:
        return []
    allowed = np.isfinite(cost)
    big = np.full((n + m, m + n), _FORBIDDEN)
    big[:n, :m] = np.where(allowed, cost, _FORBIDDEN)
    big[:n, m:][np.diag_indices(n)] = no_link
    big[n:, :m][np.diag_indices(m)] = no_link
    big[n:, m:] = np.where(allowed.T, 0.0, _FORBIDDEN)
    rows, cols = linear_sum_assignment(big)
    return [(int(i), int(j)) for i, j in zip(rows, cols) if i < n and j < m and allowed[i, j]]


def _sq_dist(a: NDArray, b: NDArray) -> NDArray:
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


@dataclass
class _Segment:
    points: list[tuple[int, int, NDArray]] = field(default_factory=list)  # (t, label, centroid um)
    parent: "_Segment | None" = None
    after: "_Segment | None" = None  # gap-closed continuation

    @property
    def start(self) -> int:
        return self.points[0][0]

    @property
    def end(self) -> int:
        return self.points[-1][0]


@dataclass
class TrackResult:
    """Tracks (one row per nucleus and time point), per-track properties, and the track-id channel if written."""

    tracks: Table
    properties: Table
    channel: int | None = None

    def summary(self) -> str:
        n = len(self.properties["track_id"])
        divisions = int(np.count_nonzero(self.properties["parent_id"])) // 2
        return f"{n} tracks, {len(self.tracks['track_id'])} points, {divisions} division(s)"


def _centroids(imageset: ImageSet, channel: int, t: int, ndim: int, voxel) -> tuple[NDArray, NDArray]:
    from skimage.measure import regionprops

    labels = read_stack(imageset, channel, t)
    props = regionprops(labels)
    if not props:
        return np.zeros(0, int), np.zeros((0, 3))
    return np.array([p.label for p in props]), np.array([p.centroid for p in props]) * np.asarray(voxel)


def track(
    imageset: ImageSet,
    label_channel: int,
    *,
    max_distance_um: float,
    max_gap: int = 1,
    divisions: bool = False,
    voxel_size: tuple[float, float, float] | None = None,
    ndim: int | None = None,
    output_name: str | None = None,
) -> TrackResult:
    """Link the labelled nuclei of every time point into tracks.

    Parameters
    ----------
    imageset
        The image set (host contract), with at least two time points.
    label_channel
        LABEL_CHANNEL: the channel segmentation wrote.
    max_distance_um
        MAX_DISTANCE_UM: the farthest a nucleus moves between two frames.
    max_gap
        MAX_GAP: frames a nucleus may be missing and still be linked (0: none).
    divisions
        DIVISIONS: detect divisions (one track splitting into two).
    voxel_size
        VOXEL_SIZE (z, y, x) in µm; None uses the image set's.
    ndim
        NDIM: 3 for labels spanning Z (3D segmentation); 2 needs a single plane.
    output_name
        TRACK_CHANNEL_NAME: where given, a new channel in which each nucleus
        carries its track id at every time point.
    """
    label_channel = check_channel(imageset, label_channel, "LABEL_CHANNEL")
    max_distance_um = check_positive(max_distance_um, "MAX_DISTANCE_UM")
    if isinstance(max_gap, bool) or not isinstance(max_gap, int) or max_gap < 0:
        raise AnalysisError(f"MAX_GAP={max_gap!r}: must be a whole number of frames, 0 or more")
    if objects_ndim(imageset, ndim) == 2 and imageset.plane_count > 1:
        raise AnalysisError(
            f"NDIM=2 with {imageset.plane_count} planes: tracking needs one label per nucleus and time point; "
            "use the labels of the 3D script (NDIM=3) or a single-plane image set"
        )
    voxel = resolve_voxel_size(imageset, voxel_size)
    if imageset.time_point_count < 2:
        raise AnalysisError(f"the image set has {imageset.time_point_count} time point; tracking needs two or more")

    # 1. frame-to-frame linking, building segments as we go (one time point in memory)
    segments: list[_Segment] = []
    open_segments: dict[int, _Segment] = {}
    prev_labels, prev_pos = np.zeros(0, int), np.zeros((0, 3))
    points_at: dict[int, dict[int, _Segment]] = {}  # t -> label -> segment holding it
    max_sq = float(max_distance_um) ** 2
    for t in range(imageset.time_point_count):
        labels, pos = _centroids(imageset, label_channel, t, 3, voxel)
        d2 = _sq_dist(prev_pos, pos)
        links = link(np.where(d2 <= max_sq, d2, np.inf), no_link=max_sq)
        linked = {j: i for i, j in links}
        now: dict[int, _Segment] = {}
        for j, (lab, p) in enumerate(zip(labels, pos)):
            seg = open_segments.get(int(prev_labels[linked[j]])) if j in linked else None
            if seg is None:
                seg = _Segment()
                segments.append(seg)
            seg.points.append((t, int(lab), p))
            now[int(lab)] = seg
        open_segments, prev_labels, prev_pos = now, labels, pos
        points_at[t] = now

    # 2. gap closing: ends to later starts
    if max_gap > 0:
        ends = [s for s in segments if s.end < imageset.time_point_count - 1]
        starts = [s for s in segments if s.start > 0]
        cost = np.full((len(ends), len(starts)), np.inf)
        for i, e in enumerate(ends):
            for j, s in enumerate(starts):
                dt = s.start - e.end
                if 2 <= dt <= max_gap + 1:
                    d2 = float(((e.points[-1][2] - s.points[0][2]) ** 2).sum())
                    if d2 <= max_sq * dt * dt:
                        cost[i, j] = d2 / dt
        for i, j in link(cost, no_link=max_sq):
            ends[i].after = starts[j]
    continued = {id(s.after) for s in segments if s.after is not None}

    # 3. divisions: unexplained starts next to an object of the frame before
    if divisions:
        starts = [s for s in segments if s.start > 0 and id(s) not in continued]
        mothers = [(t, lab, seg) for t in range(imageset.time_point_count - 1) for lab, seg in points_at[t].items()]
        index = {(t, lab): k for k, (t, lab, _) in enumerate(mothers)}
        cost = np.full((len(starts), len(mothers)), np.inf)
        for i, s in enumerate(starts):
            for lab, seg in points_at[s.start - 1].items():
                point = next(p for p in seg.points if p[0] == s.start - 1)
                d2 = float(((point[2] - s.points[0][2]) ** 2).sum())
                if d2 <= max_sq:
                    cost[i, index[(s.start - 1, lab)]] = d2
        for i, k in link(cost, no_link=max_sq):
            t, lab, _ = mothers[k]
            mother = points_at[t][lab]  # current owner: an earlier split may have moved the point
            daughter = starts[i]
            cut = next(n for n, p in enumerate(mother.points) if p[0] == t) + 1
            if cut < len(mother.points):  # the mother's own continuation becomes a daughter
                sister = _Segment(mother.points[cut:], parent=mother, after=mother.after)
                mother.points, mother.after = mother.points[:cut], None
                segments.append(sister)
                for p in sister.points:
                    points_at[p[0]][p[1]] = sister
            elif mother.after is not None:
                mother.after.parent, mother.after = mother, None
            daughter.parent = mother

    return _tables(imageset, label_channel, segments, continued, output_name)


def _tables(imageset, label_channel, segments, continued, output_name) -> TrackResult:
    # a track is a chain of segments joined by gap closing
    track_id: dict[int, int] = {}
    chains = []
    for seg in segments:
        if id(seg) in continued and seg.parent is None:
            continue
        chain, s = [], seg
        while s is not None:
            chain.append(s)
            s = s.after
        chains.append(chain)
        for s in chain:
            track_id[id(s)] = len(chains)
    rows = {c: [] for c in TRACK_COLUMNS}
    props = {c: [] for c in PROPERTY_COLUMNS}
    for number, chain in enumerate(chains, start=1):
        parent = chain[0].parent
        parent_id = track_id.get(id(parent), 0) if parent is not None else 0
        points = [p for s in chain for p in s.points]
        for t, lab, p in points:
            for c, v in zip(TRACK_COLUMNS, (number, parent_id, t, lab, *p)):
                rows[c].append(v)
        pos = np.array([p for _, _, p in points])
        steps = np.linalg.norm(np.diff(pos, axis=0), axis=1) if len(pos) > 1 else np.zeros(0)
        total, net = float(steps.sum()), float(np.linalg.norm(pos[-1] - pos[0]))
        frames = points[-1][0] - points[0][0]
        for c, v in zip(PROPERTY_COLUMNS, (number, parent_id, points[0][0], points[-1][0], len(points), total, net,
                                           total / frames if frames else math.nan, net / total if total else math.nan)):
            props[c].append(v)
    result = TrackResult({c: np.asarray(v) for c, v in rows.items()}, {c: np.asarray(v) for c, v in props.items()})
    if output_name:
        result.channel = _paint(imageset, label_channel, result.tracks, output_name)
    log.info("%s", result.summary())
    return result


def _paint(imageset, label_channel: int, tracks: Table, name: str) -> int:
    """A new channel where each nucleus carries its track id."""
    n = int(tracks["track_id"].max()) if len(tracks["track_id"]) else 0
    dtype = np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32
    channel = imageset.add_channel(name, dtype)
    for t in range(imageset.time_point_count):
        labels = read_stack(imageset, label_channel, t)
        here = tracks["t"] == t
        lut = np.zeros(int(labels.max()) + 1, dtype)
        lut[tracks["label"][here]] = tracks["track_id"][here]
        write_stack(imageset, channel, t, lut[labels])
    return channel
