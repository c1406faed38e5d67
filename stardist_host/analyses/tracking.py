"""Linking nuclei over time into tracks: linear assignment with gap closing and division detection.

The tracker follows Jaqaman et al. (2008), as laptrack and TrackMate do, with
scipy's ``linear_sum_assignment`` on augmented cost matrices.  Costs exist only
for candidate pairs within reach (found with ``scipy.spatial.cKDTree``), and each
connected group of candidates is solved alone, so memory and time grow with
the number of nearby pairs, not with the square of the number of nuclei:

1. frame to frame: objects at t and t + 1 within MAX_DISTANCE are linked,
   minimising the sum of squared distances;
2. gap closing: a track that ends is joined to one that starts up to MAX_GAP
   frames later, within MAX_DISTANCE per elapsed frame;
3. divisions (optional): a track that starts next to an object of the frame
   before splits that object's track: the mother track ends, and both
   continuations become daughter tracks with the mother as parent.

Only centroids are kept in memory, one time point's labels are read at a time.
:func:`track_positions` is the pure part (centroids in, tables out);
:func:`track` reads the image set and writes the optional track-id channel.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ..host import ImageSet
from .common import (AnalysisError, Table, check_channel, check_positive, objects_ndim, read_labels, resolve_voxel_size,
                     write_stack)

__all__ = ["track", "track_positions", "TrackResult", "TRACK_COLUMNS", "PROPERTY_COLUMNS", "link", "link_sparse"]

log = logging.getLogger(__name__)

TRACK_COLUMNS = ("track_id", "parent_id", "t", "label", "z_um", "y_um", "x_um")
PROPERTY_COLUMNS = ("track_id", "parent_id", "start", "end", "length_frames", "total_displacement_um",
                    "net_displacement_um", "mean_speed_um_per_frame", "straightness")
_FORBIDDEN = 1e18


def link(cost: NDArray, no_link: float) -> list[tuple[int, int]]:
    """Solve a linking problem: pairs (i, j) with finite ``cost[i, j]``, or no link at ``no_link`` each side."""
    rows, cols = np.nonzero(np.isfinite(cost))
    return link_sparse(rows, cols, cost[rows, cols], cost.shape, no_link)


def link_sparse(rows: NDArray, cols: NDArray, costs: NDArray, shape: tuple[int, int],
                no_link: float) -> list[tuple[int, int]]:
    """Solve a linking problem given as candidate pairs ``(rows[k], cols[k])`` with ``costs[k]``.

    Every row and column may also stay unlinked at ``no_link``.  Groups of
    rows and columns joined by candidates are independent problems; each is
    solved exactly on its own small augmented matrix.

    Returns
    -------
    list of (row, column)
        The links, sorted by row.
    """
    n, m = shape
    rows, cols, costs = np.asarray(rows, int), np.asarray(cols, int), np.asarray(costs, float)
    if n == 0 or m == 0 or len(rows) == 0:
        return []
    graph = coo_matrix((np.ones(len(rows)), (rows, cols + n)), shape=(n + m, n + m))
    _, group = connected_components(graph, directed=False)
    order = np.argsort(group[rows], kind="stable")
    links = []
    for edges in np.split(order, np.flatnonzero(np.diff(group[rows][order])) + 1):
        r, ri = np.unique(rows[edges], return_inverse=True)
        c, ci = np.unique(cols[edges], return_inverse=True)
        block = np.full((len(r), len(c)), np.inf)
        block[ri, ci] = costs[edges]
        links += [(int(r[i]), int(c[j])) for i, j in _solve_dense(block, no_link)]
    return sorted(links)


def _solve_dense(cost: NDArray, no_link: float) -> list[tuple[int, int]]:
    """The (n + m) x (m + n) augmented matrix lets every row and column stay unlinked."""
    n, m = cost.shape
    allowed = np.isfinite(cost)
    big = np.full((n + m, m + n), _FORBIDDEN)
    big[:n, :m] = np.where(allowed, cost, _FORBIDDEN)
    big[:n, m:][np.diag_indices(n)] = no_link
    big[n:, :m][np.diag_indices(m)] = no_link
    big[n:, m:] = np.where(allowed.T, 0.0, _FORBIDDEN)
    rows, cols = linear_sum_assignment(big)
    return [(int(i), int(j)) for i, j in zip(rows, cols) if i < n and j < m and allowed[i, j]]


def _near_pairs(a: NDArray, b: NDArray, reach: float) -> tuple[NDArray, NDArray, NDArray]:
    """Index pairs (i, j) with ``|a[i] - b[j]| <= reach`` and their squared distances."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    # the tree's radius is widened a hair; the exact test below decides, as a dense matrix would
    pairs = cKDTree(a).sparse_distance_matrix(cKDTree(b), reach * (1 + 1e-9) + 1e-12, output_type="ndarray")
    i, j = pairs["i"].astype(int), pairs["j"].astype(int)
    d2 = ((a[i] - b[j]) ** 2).sum(-1)
    keep = d2 <= reach * reach
    return i[keep], j[keep], d2[keep]


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


Frames = list  # per time point: (labels (N,), centroids (N, 3) in µm)


def link_frames(frames: Frames, max_distance_um: float) -> tuple[list[_Segment], list[dict[int, _Segment]]]:
    """Step 1: link each frame's objects to the next frame's; return the segments and, per frame, label -> segment."""
    segments: list[_Segment] = []
    points_at: list[dict[int, _Segment]] = []
    for t, (labels, pos) in enumerate(frames):
        prev_labels, prev_pos = frames[t - 1] if t else (np.zeros(0, int), np.zeros((0, 3)))
        i, j, d2 = _near_pairs(prev_pos, pos, max_distance_um)
        linked = {b: a for a, b in link_sparse(i, j, d2, (len(prev_pos), len(pos)), no_link=max_distance_um ** 2)}
        now: dict[int, _Segment] = {}
        for k, (lab, p) in enumerate(zip(labels, pos)):
            seg = points_at[-1].get(int(prev_labels[linked[k]])) if k in linked else None  # links exist from t = 1
            if seg is None:
                seg = _Segment()
                segments.append(seg)
            seg.points.append((t, int(lab), p))
            now[int(lab)] = seg
        points_at.append(now)
    return segments, points_at


def close_gaps(segments: list[_Segment], n_frames: int, max_distance_um: float, max_gap: int) -> set[int]:
    """Step 2: join segment ends to starts 2..max_gap + 1 frames later; return the ids of the continued segments."""
    ends = [s for s in segments if s.end < n_frames - 1]
    starts = [s for s in segments if s.start > 0]
    if max_gap > 0 and ends and starts:
        end_pos = np.array([s.points[-1][2] for s in ends])
        start_pos = np.array([s.points[0][2] for s in starts])
        i, j, d2 = _near_pairs(end_pos, start_pos, max_distance_um * (max_gap + 1))
        dt = np.array([s.start for s in starts])[j] - np.array([s.end for s in ends])[i]
        keep = (dt >= 2) & (dt <= max_gap + 1) & (d2 <= max_distance_um ** 2 * dt * dt)
        for a, b in link_sparse(i[keep], j[keep], d2[keep] / dt[keep], (len(ends), len(starts)),
                                no_link=max_distance_um ** 2):
            ends[a].after = starts[b]
    return {id(s.after) for s in segments if s.after is not None}


def find_divisions(segments: list[_Segment], frames: Frames, points_at: list[dict[int, _Segment]],
                   continued: set[int], max_distance_um: float) -> None:
    """Step 3: a start next to an object of the frame before splits that object's segment (in place)."""
    starts = [s for s in segments if s.start > 0 and id(s) not in continued]
    offsets = np.cumsum([0] + [len(labels) for labels, _ in frames])
    rows, cols, costs = [], [], []
    for t in sorted({s.start for s in starts}):
        here = [k for k, s in enumerate(starts) if s.start == t]
        i, j, d2 = _near_pairs(np.array([starts[k].points[0][2] for k in here]), frames[t - 1][1], max_distance_um)
        rows.append(np.asarray(here, int)[i])
        cols.append(j + offsets[t - 1])
        costs.append(d2)
    if not rows:
        return
    mothers = [(t, int(lab)) for t, (labels, _) in enumerate(frames) for lab in labels]
    for i, k in link_sparse(np.concatenate(rows), np.concatenate(cols), np.concatenate(costs),
                            (len(starts), len(mothers)), no_link=max_distance_um ** 2):
        t, lab = mothers[k]
        _split(segments, points_at, points_at[t][lab], t, starts[i])


def _split(segments, points_at, mother: _Segment, t: int, daughter: _Segment) -> None:
    """End ``mother`` (the current owner of the point: an earlier split may have moved it) at ``t``."""
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


def track_positions(frames: Frames, *, max_distance_um: float, max_gap: int = 1,
                    divisions: bool = False) -> tuple[Table, Table]:
    """Link centroids over time into tracks; the pure part of :func:`track`.

    Parameters
    ----------
    frames
        Per time point, (labels (N,), centroids (N, 3) as z, y, x in µm).
    max_distance_um, max_gap, divisions
        As for :func:`track`.

    Returns
    -------
    tracks, properties
        Tables with :data:`TRACK_COLUMNS` and :data:`PROPERTY_COLUMNS`.
    """
    segments, points_at = link_frames(frames, max_distance_um)
    continued = close_gaps(segments, len(frames), max_distance_um, max_gap)
    if divisions:
        find_divisions(segments, frames, points_at, continued, max_distance_um)
    return _tables(segments, continued)


def _tables(segments: list[_Segment], continued: set[int]) -> tuple[Table, Table]:
    # tracks are chains of segments joined by gap closing; track_id: segment id -> track number
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
    rows, props = [], []
    for number, chain in enumerate(chains, start=1):
        parent_id = track_id.get(id(chain[0].parent), 0)  # 0 without a parent: id(None) is no segment's
        points = [p for s in chain for p in s.points]
        rows += [(number, parent_id, t, lab, *p) for t, lab, p in points]
        pos = np.array([p for _, _, p in points])
        steps = np.linalg.norm(np.diff(pos, axis=0), axis=1) if len(pos) > 1 else np.zeros(0)
        total, net = float(steps.sum()), float(np.linalg.norm(pos[-1] - pos[0]))
        frames = points[-1][0] - points[0][0]
        props.append((number, parent_id, points[0][0], points[-1][0], len(points), total, net,
                      total / frames if frames else math.nan, net / total if total else math.nan))
    return _table(TRACK_COLUMNS, rows, 4), _table(PROPERTY_COLUMNS, props, 5)


def _table(columns, rows, n_int: int) -> Table:
    """Columns from row tuples; the first ``n_int`` columns integers (also when there are no rows)."""
    values = list(zip(*rows)) if rows else [()] * len(columns)
    return {c: np.asarray(v, dtype=np.int64 if k < n_int else np.float64) for k, (c, v) in enumerate(zip(columns, values))}


def _centroids(imageset: ImageSet, channel: int, t: int, voxel) -> tuple[NDArray, NDArray]:
    from skimage.measure import regionprops

    props = regionprops(read_labels(imageset, channel, t))
    return np.array([p.label for p in props], int), np.array([p.centroid for p in props]).reshape(-1, 3) * voxel


def track(
    imageset: ImageSet,
    label_channel: int,
    *,
    max_distance_um: float,
    max_gap: int = 1,
    divisions: bool = False,
    voxel_size: tuple[float | None, float, float] | None = None,
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
        VOXEL_SIZE (z, y, x) in µm; None uses the image set's.  z may be None
        for a single plane.
    ndim
        NDIM: 3 for labels spanning Z (3D segmentation); 2 needs a single plane.
    output_name
        TRACK_CHANNEL_NAME: where given, a new channel in which each nucleus
        carries its track id at every time point.

    Returns
    -------
    TrackResult
        Without objects, tables with the columns and no rows.

    Raises
    ------
    AnalysisError
        A bad setting, a label channel that holds no labels, fewer than two time points.
    """
    label_channel = check_channel(imageset, label_channel, "LABEL_CHANNEL")
    max_distance_um = check_positive(max_distance_um, "MAX_DISTANCE_UM")
    if isinstance(max_gap, bool) or not isinstance(max_gap, (int, np.integer)) or max_gap < 0:
        raise AnalysisError(f"MAX_GAP={max_gap!r}: must be a whole number of frames, 0 or more")
    if objects_ndim(imageset, ndim) == 2 and imageset.plane_count > 1:
        raise AnalysisError(
            f"NDIM=2 with {imageset.plane_count} planes: tracking needs one label per nucleus and time point; "
            "use the labels of the 3D script (NDIM=3) or a single-plane image set"
        )
    voxel = resolve_voxel_size(imageset, voxel_size, need_z=imageset.plane_count > 1)
    if imageset.time_point_count < 2:
        raise AnalysisError(f"the image set has {imageset.time_point_count} time point; tracking needs two or more")
    # a single plane: every centroid lies at z = 0, whatever the (unknown) Z spacing
    voxel = (voxel[0] or 0.0, voxel[1], voxel[2])
    frames = [_centroids(imageset, label_channel, t, voxel) for t in range(imageset.time_point_count)]
    tracks, properties = track_positions(frames, max_distance_um=max_distance_um, max_gap=int(max_gap),
                                         divisions=divisions)
    channel = _paint(imageset, label_channel, tracks, output_name) if output_name else None
    result = TrackResult(tracks, properties, channel)
    log.info("%s", result.summary())
    return result


def _paint(imageset: ImageSet, label_channel: int, tracks: Table, name: str) -> int:
    """A new channel where each nucleus carries its track id."""
    dtype = np.uint16 if tracks["track_id"].max(initial=0) <= np.iinfo(np.uint16).max else np.uint32
    channel = imageset.add_channel(name, dtype)
    for t in range(imageset.time_point_count):
        labels = read_labels(imageset, label_channel, t)
        here = tracks["t"] == t
        lut = np.zeros(int(labels.max(initial=0)) + 1, dtype)
        lut[tracks["label"][here]] = tracks["track_id"][here]
        write_stack(imageset, channel, t, lut[labels])
    return channel
