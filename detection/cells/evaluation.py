"""How good is a cell segmentation: scores against ground truth, and likely errors without it.

Against dense ground truth (``gt``), for a predicted segmentation (``seg``) of the same shape:

* :func:`variation_of_information`: split and merge entropies in bits (CREMI);
* :func:`adapted_rand_error`: 1 - F-score of the Rand precision and recall (SNEMI3D, CREMI);
* :func:`overlap_report`: per predicted cell, the ground-truth bodies it merges, and per body,
  the cells it is split into, worst first, each with a bounding box and a voxel to look at;
* :func:`connected_ground_truth`: every ground-truth id split into its connected pieces, for
  ground truth whose ids collide (Cardona's neurite ids were rescaled to 8 bit).

Against ground-truth skeletons: :func:`skeleton_errors` counts split edges and merged skeletons;
:func:`ground_truth_skeletons` traces skeletons of dense labels to use there.

Without ground truth, :func:`likely_errors` reads the agglomeration's own record (the last
merge inside each cell, the best score between cells) and lists the merges and the missed
merges that were close to the threshold; :func:`locate_errors` gives its rows a bounding box
and a voxel from the label volume.

Conventions
-----------
Arrays are ``(z, y, x)``. Label volumes are any unsigned or non-negative signed integer type
(uint64 ids included), given as numpy arrays or as any array with ``shape``, ``dtype`` and
slicing along z (a zarr or h5py array): every function here reads them slab by slab of z
planes (:data:`SLAB_VOXELS` voxels at a time), so its extra memory is that of a slab plus
tables with one row per (cell, body) pair that overlap, never a dense label x label matrix.

Voxels where ``gt == 0`` or ``ignore`` is true (non-zero) are left out of every score against
ground truth. Label 0 of ``seg`` is *a label of its own*: its voxels inside ground truth count
as one more predicted segment (a segmentation that leaves voxels unlabelled is charged for them
as for a segment merging whatever they cover). The CREMI scripts do the same for VOI; their
adapted Rand error takes each such voxel as a segment of its own instead. The two agree for a
segmentation that labels every voxel, as CREMI and SNEMI3D ask.

Scores of nothing (no voxel scored) are perfect: VOI 0, Rand precision and recall 1.0, as the
empty cases of :mod:`detection.metrics`; ``voxels`` says how many voxels were scored.

Rows of a report (:func:`overlap_report`, :func:`likely_errors`) are plain dicts of Python
numbers and lists, ready for JSON::

    kind          "merge" or "split"
    cells         segment ids of the predicted cells concerned (one for a merge; the pieces of
                  a split)
    voxels        their sizes in voxels, in the order of ``cells``
    bbox          [[z0, y0, x0], [z1, y1, x1]] half-open voxel box to look at, or None
    point         [z, y, x] a voxel inside one of ``cells``, where the error shows (see each
                  function), or None

with, for rows against ground truth, ``truth`` (ground-truth ids: the bodies merged, or the one
body split), ``overlap`` (voxels each part shares: per body of a merge, per cell of a split),
``parts`` (how many parts there are; the lists name the largest), ``bits`` (the row's share of the VOI merge or split, which the rows of all cells sum to) and
``share`` (the fraction of the cell, or body, outside its largest part); and for rows of the
agglomeration record, ``score``, ``confidence`` and, for splits, ``contact``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from detection.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "SLAB_VOXELS",
    "Contingency",
    "RandScores",
    "SkeletonErrors",
    "SkeletonScore",
    "VoiScores",
    "adapted_rand_error",
    "connected_ground_truth",
    "contingency_table",
    "ground_truth_skeletons",
    "likely_errors",
    "locate_errors",
    "overlap_report",
    "rand_from_table",
    "skeleton_errors",
    "variation_of_information",
    "voi_from_table",
]

#: Voxels read and tabulated at a time (whole z planes, at least one).
SLAB_VOXELS = 1 << 22

_LOW32 = np.uint64(0xFFFFFFFF)


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class VoiScores:
    """Variation of information, in bits.

    Attributes
    ----------
    split : float
        H(seg | gt): what is left to know of the predicted label once the true one is known;
        0 when no body is split.
    merge : float
        H(gt | seg): 0 when no cell merges bodies.
    total : float
        split + merge.
    voxels : int
        Voxels scored.
    """

    split: float
    merge: float
    total: float
    voxels: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RandScores:
    """Adapted Rand error and the Rand precision and recall it is made of.

    Attributes
    ----------
    error : float
        1 - F-score of precision and recall.
    precision : float
        Of the voxel pairs that the segmentation puts in one cell, the fraction that are in
        one body: lowered by merges.
    recall : float
        Of the voxel pairs in one body, the fraction in one cell: lowered by splits.
    voxels : int
        Voxels scored.
    """

    error: float
    precision: float
    recall: float
    voxels: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Contingency:
    """Sparse contingency table: how many scored voxels each (cell, body) pair shares.

    Attributes
    ----------
    seg, gt : numpy.ndarray
        uint64 ids of the pairs that share voxels, sorted by ``seg`` then ``gt``.
    count : numpy.ndarray
        int64 voxels shared.
    """

    seg: np.ndarray
    gt: np.ndarray
    count: np.ndarray

    @property
    def voxels(self) -> int:
        return int(self.count.sum())


@dataclass(frozen=True)
class SkeletonScore:
    """Errors of one ground-truth skeleton.

    Attributes
    ----------
    splits : int
        Skeleton edges that cross from one predicted cell to another (see
        :func:`skeleton_errors`).
    merged_with : list
        Keys of the other skeletons that share a predicted cell with this one, in the order
        the skeletons were given.
    segments : list of int
        Predicted cells its nodes fall in (label ``ignore_label`` left out), sorted.
    background_nodes : int
        Nodes that fall in label ``ignore_label``.
    """

    splits: int
    merged_with: list = field(default_factory=list)
    segments: list = field(default_factory=list)
    background_nodes: int = 0


@dataclass(frozen=True)
class SkeletonErrors:
    """Split and merge counts of a segmentation against ground-truth skeletons.

    Attributes
    ----------
    splits : int
        Split edges, summed over the skeletons.
    merges : int
        Per predicted cell holding nodes of k >= 2 skeletons, k - 1; summed.
    per_skeleton : dict
        :class:`SkeletonScore` per skeleton key (its index in a list, or its mapping key).
    merging_cells : dict of int to list
        Predicted cells holding nodes of several skeletons, with those skeletons' keys.
    """

    splits: int
    merges: int
    per_skeleton: dict
    merging_cells: dict

    def to_dict(self) -> dict:
        return {
            "splits": self.splits,
            "merges": self.merges,
            "per_skeleton": {str(key): asdict(score) for key, score in self.per_skeleton.items()},
            "merging_cells": {str(cell): list(keys) for cell, keys in self.merging_cells.items()},
        }


# --------------------------------------------------------------------------------------------
# Reading volumes slab by slab


def _check_volume(volume, what: str, shape=None) -> tuple[int, int, int]:
    dims = tuple(int(n) for n in getattr(volume, "shape", ()))
    dtype = np.dtype(getattr(volume, "dtype", np.float64))
    if len(dims) != 3:
        raise InputError(f"{what}: expected a 3-D (z, y, x) volume, got shape {dims}")
    if shape is not None and dims != tuple(shape):
        raise InputError(f"{what}: shape {dims} differs from the segmentation's {tuple(shape)}")
    if what != "ignore" and not np.issubdtype(dtype, np.integer):
        raise InputError(f"{what}: labels must be integers, got {dtype}")
    if what == "ignore" and not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        raise InputError(f"ignore: the mask must be boolean or integer (non-zero: ignore), "
                         f"got {dtype}")
    return dims


def _slabs(shape: Sequence[int]) -> Iterator[tuple[int, int]]:
    planes = max(1, SLAB_VOXELS // max(1, int(shape[1]) * int(shape[2])))
    for z0 in range(0, int(shape[0]), planes):
        yield z0, min(z0 + planes, int(shape[0]))


def _labels(volume, z0: int, z1: int, what: str) -> np.ndarray:
    """Planes z0:z1 of a label volume as flat uint64; negative labels are an error."""
    block = np.asarray(volume[z0:z1])
    if np.issubdtype(block.dtype, np.signedinteger) and block.size:
        low = block.min()
        if low < 0:
            z = z0 + int(np.argwhere(block == low)[0][0])
            raise InputError(f"{what}: negative label {int(low)} in plane z={z}")
    return block.astype(np.uint64, copy=False).reshape(-1)


def _scored(gt: np.ndarray, ignore, z0: int, z1: int) -> np.ndarray:
    keep = gt != 0
    if ignore is not None:
        keep &= np.asarray(ignore[z0:z1]).reshape(-1) == 0
    return keep


class _PairKeys:
    """One uint64 key per voxel, equal exactly where the (seg, gt) pairs are.

    Ids below 2**32 are packed as ``seg << 32 | gt``; larger ones are first numbered in this
    slab (``np.unique``), so any uint64 ids work.
    """

    def __init__(self, seg: np.ndarray, gt: np.ndarray):
        self.packed = not seg.size or (seg.max() <= _LOW32 and gt.max() <= _LOW32)
        if self.packed:
            self.keys = (seg << np.uint64(32)) | gt
            return
        self.seg_ids, seg_index = np.unique(seg, return_inverse=True)
        self.gt_ids, gt_index = np.unique(gt, return_inverse=True)
        self.n = np.uint64(len(self.gt_ids))
        self.keys = seg_index.astype(np.uint64) * self.n + gt_index.astype(np.uint64)

    def decode(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.packed:
            return keys >> np.uint64(32), keys & _LOW32
        return self.seg_ids[keys // self.n], self.gt_ids[keys % self.n]

    def encode(self, seg: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keys of the given pairs in this slab, and which of them can occur in it at all."""
        seg, gt = seg.astype(np.uint64), gt.astype(np.uint64)
        if self.packed:
            valid = (seg <= _LOW32) & (gt <= _LOW32)
            return (seg << np.uint64(32)) | (gt & _LOW32), valid
        s = np.minimum(np.searchsorted(self.seg_ids, seg), len(self.seg_ids) - 1)
        g = np.minimum(np.searchsorted(self.gt_ids, gt), len(self.gt_ids) - 1)
        valid = (self.seg_ids[s] == seg) & (self.gt_ids[g] == gt)
        return s.astype(np.uint64) * self.n + g.astype(np.uint64), valid


def _starts(*sorted_columns: np.ndarray) -> np.ndarray:
    """Indices where a run of equal rows starts in sorted columns."""
    n = len(sorted_columns[0])
    change = np.zeros(n, dtype=bool)
    if n:
        change[0] = True
        for column in sorted_columns:
            change[1:] |= column[1:] != column[:-1]
    return np.flatnonzero(change)


def _lookup(values: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which ``values`` are in ``wanted`` (sorted, unique) and where: a binary search, much
    faster than ``np.isin`` for a few wanted ids among many voxels."""
    if not len(wanted):
        return np.zeros(len(values), dtype=bool), np.zeros(len(values), dtype=np.int64)
    at = np.minimum(np.searchsorted(wanted, values), len(wanted) - 1)
    return wanted[at] == values, at


def _regroup(seg, gt, columns: dict[str, tuple[np.ndarray, np.ufunc]]):
    """Rows of per-slab tables with equal (seg, gt) reduced to one, sorted by (seg, gt)."""
    order = np.lexsort((gt, seg))
    seg, gt = seg[order], gt[order]
    starts = _starts(seg, gt)
    reduced = {name: ufunc.reduceat(values[order], starts) if len(starts) else values[:0]
               for name, (values, ufunc) in columns.items()}
    return seg[starts], gt[starts], reduced


def _tabulate(seg, gt, ignore, *, positions: bool):
    """Per (seg, gt) pair over the scored voxels: count and, with ``positions``, the sums,
    minima and maxima of z, y and x."""
    shape = _check_volume(seg, "segmentation")
    _check_volume(gt, "ground truth", shape)
    if ignore is not None:
        _check_volume(ignore, "ignore", shape)
    plane = shape[1] * shape[2]
    parts = []
    for z0, z1 in _slabs(shape):
        g = _labels(gt, z0, z1, "ground truth")
        s = _labels(seg, z0, z1, "segmentation")
        keep = _scored(g, ignore, z0, z1)
        where = np.flatnonzero(keep)
        s, g = s[where], g[where]
        pairs = _PairKeys(s, g)
        if not positions:
            keys, count = np.unique(pairs.keys, return_counts=True)
            parts.append((*pairs.decode(keys), {"count": count.astype(np.int64)}))
            continue
        order = np.argsort(pairs.keys, kind="stable")
        keys = pairs.keys[order]
        starts = _starts(keys)
        flat = where[order] + z0 * plane
        z, rest = np.divmod(flat, plane)
        y, x = np.divmod(rest, shape[2])
        stats = {"count": np.diff(np.append(starts, len(keys))).astype(np.int64)}
        for axis, values in (("z", z), ("y", y), ("x", x)):
            stats[f"sum_{axis}"] = np.add.reduceat(values, starts) if len(starts) else values[:0]
            stats[f"min_{axis}"] = (np.minimum.reduceat(values, starts) if len(starts)
                                    else values[:0])
            stats[f"max_{axis}"] = (np.maximum.reduceat(values, starts) if len(starts)
                                    else values[:0])
        parts.append((*pairs.decode(keys[starts]), stats))
    seg_ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.uint64)
    gt_ids = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.uint64)
    names = list(parts[0][2]) if parts else ["count"]
    columns = {}
    for name in names:
        values = (np.concatenate([p[2][name] for p in parts]) if parts
                  else np.zeros(0, np.int64))
        ufunc = np.minimum if name.startswith("min_") else (
            np.maximum if name.startswith("max_") else np.add)
        columns[name] = (values, ufunc)
    return _regroup(seg_ids, gt_ids, columns)


# --------------------------------------------------------------------------------------------
# VOI and adapted Rand error


def contingency_table(seg, gt, *, ignore=None) -> Contingency:
    """The voxels each (predicted cell, ground-truth body) pair shares, as a sparse table.

    Parameters
    ----------
    seg, gt : (Z, Y, X) integer array
        Predicted and true labels (see the module conventions).
    ignore : (Z, Y, X) bool or integer array, optional
        Non-zero where voxels are not scored.

    Returns
    -------
    Contingency
        Only pairs that share voxels; ``gt`` 0 and ignored voxels left out.

    Raises
    ------
    InputError
        Volumes that are not 3-D integer arrays of one shape, or negative labels.
    """
    seg_ids, gt_ids, columns = _tabulate(seg, gt, ignore, positions=False)
    return Contingency(seg=seg_ids, gt=gt_ids, count=columns["count"])


def _sizes(ids: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Per row, the total count of the rows that share its id."""
    unique, index = np.unique(ids, return_inverse=True)
    return np.bincount(index, weights=count, minlength=len(unique))[index]


def voi_from_table(table: Contingency) -> VoiScores:
    """Variation of information of a contingency table (:func:`variation_of_information`)."""
    count = table.count.astype(np.float64)
    n = count.sum()
    if n == 0:
        return VoiScores(split=0.0, merge=0.0, total=0.0, voxels=0)
    split = float(np.sum(count * np.log2(_sizes(table.gt, count) / count)) / n)
    merge = float(np.sum(count * np.log2(_sizes(table.seg, count) / count)) / n)
    return VoiScores(split=split, merge=merge, total=split + merge, voxels=int(n))


def variation_of_information(seg, gt, *, ignore=None) -> VoiScores:
    """Split and merge parts of the variation of information, in bits, as CREMI scores them.

    ``split = H(seg | gt)`` and ``merge = H(gt | seg)``, conditional entropies (log2) of the
    joint label distribution over the scored voxels. A body split into two equal halves, when
    it holds half of the scored voxels, gives split 0.5.

    Parameters
    ----------
    seg, gt : (Z, Y, X) integer array
        Predicted and true labels. Label 0 of ``seg`` counts as a label of its own; ``gt`` 0
        is not scored.
    ignore : (Z, Y, X) bool or integer array, optional
        Non-zero where voxels are not scored.

    Returns
    -------
    VoiScores

    Notes
    -----
    ``skimage.metrics.variation_of_information(gt, seg, ignore_labels=[0])`` returns the same
    two numbers as ``[split, merge]``: its first output, H(image1 | image0), is the split part
    when the ground truth is given first.
    """
    return voi_from_table(contingency_table(seg, gt, ignore=ignore))


def rand_from_table(table: Contingency) -> RandScores:
    """Adapted Rand error of a contingency table (:func:`adapted_rand_error`)."""
    count = table.count.astype(np.float64)
    n = count.sum()
    if n == 0:
        return RandScores(error=0.0, precision=1.0, recall=1.0, voxels=0)
    both = float(np.sum(count**2))
    in_truth = float(np.sum(np.bincount(np.unique(table.gt, return_inverse=True)[1],
                                        weights=count) ** 2))
    in_seg = float(np.sum(np.bincount(np.unique(table.seg, return_inverse=True)[1],
                                      weights=count) ** 2))
    precision, recall = both / in_seg, both / in_truth
    return RandScores(error=1.0 - 2.0 * both / (in_seg + in_truth), precision=precision,
                      recall=recall, voxels=int(n))


def adapted_rand_error(seg, gt, *, ignore=None) -> RandScores:
    """Adapted Rand error as in SNEMI3D and CREMI: 1 - F-score of Rand precision and recall.

    With ``n_ij`` the voxels cell ``j`` shares with body ``i``, ``t_i`` the body sizes and
    ``s_j`` the cell sizes (over the scored voxels): precision ``= sum n_ij^2 / sum s_j^2``,
    recall ``= sum n_ij^2 / sum t_i^2``, error ``= 1 - 2 P R / (P + R)``. Sums of squares count
    ordered voxel pairs, a voxel with itself included, as the SNEMI3D and CREMI scripts do.

    Parameters
    ----------
    seg, gt : (Z, Y, X) integer array
        Predicted and true labels. Label 0 of ``seg`` counts as a label of its own; ``gt`` 0
        is not scored.
    ignore : (Z, Y, X) bool or integer array, optional
        Non-zero where voxels are not scored.

    Returns
    -------
    RandScores

    Notes
    -----
    ``skimage.metrics.adapted_rand_error(gt, seg)`` differs in two ways: it counts pairs of two
    different voxels (``sum n_ij^2 - n``, ...), and its ``prec`` divides by the pairs in the
    *true* image and its ``rec`` by those in the test image (scikit-image 0.26; its docstring
    says the reverse): its ``prec`` is a recall in the sense above, lowered by splits.
    """
    return rand_from_table(contingency_table(seg, gt, ignore=ignore))


# --------------------------------------------------------------------------------------------
# Ground truth whose ids collide


def _half_neighbourhood(connectivity: int) -> list[tuple[int, int, int]]:
    """Offsets to the neighbours after a voxel in C order, the +x one left out."""
    if connectivity not in (6, 18, 26):
        raise InputError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    offsets = []
    for dz in (0, 1):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if (dz, dy, dx) <= (0, 0, 1):
                    continue
                order = abs(dz) + abs(dy) + abs(dx)
                if order == 1 or (order == 2 and connectivity >= 18) or connectivity == 26:
                    offsets.append((dz, dy, dx))
    return offsets


def _shifted(n: int, d: int) -> tuple[slice, slice]:
    return (slice(0, n - d), slice(d, n)) if d >= 0 else (slice(-d, n), slice(0, n + d))


def connected_ground_truth(gt, *, connectivity: int = 6) -> np.ndarray:
    """Every ground-truth id split into its connected pieces, each piece a label of its own.

    Distinct objects that share an id (Cardona's TrakEM2 neurite ids were rescaled to 8 bit,
    so neurites far apart collide) become distinct labels; a segmentation that keeps them apart
    is then not charged with a split. Objects that share an id *and* touch stay one label.

    The volume is cut into runs of equal ids along x; runs that touch through a face (or, with
    ``connectivity`` 18 or 26, an edge or a corner) with the same id are joined with
    ``scipy.sparse.csgraph.connected_components``, so the work is one pass over the voxels and
    a graph of runs, whatever the number of ids.

    Parameters
    ----------
    gt : (Z, Y, X) integer ndarray
        Labels; 0 is background and stays 0.
    connectivity : {6, 18, 26}
        Neighbours that connect: faces, faces and edges, or all 26.

    Returns
    -------
    numpy.ndarray
        Labels ``1 .. n`` numbered in the order of each piece's first voxel (C order), uint32
        (uint64 beyond 2**32 - 1 pieces), 0 where ``gt`` is 0.

    Raises
    ------
    InputError
        Not a 3-D integer array, negative labels, or another connectivity.
    """
    offsets = _half_neighbourhood(connectivity)
    gt = np.asarray(gt)
    shape = _check_volume(gt, "ground truth")
    labels = _labels(gt, 0, shape[0], "ground truth").reshape(shape)
    if labels.size == 0:
        return np.zeros(shape, dtype=np.uint32)
    flat = labels.reshape(-1)
    run_start = flat != 0
    run_start[1:] &= (flat[1:] != flat[:-1])
    run_start[:: shape[2]] = flat[:: shape[2]] != 0
    index_type = np.int32 if flat.size < 2**31 else np.int64
    run = (np.cumsum(run_start, dtype=index_type) - 1).reshape(shape)
    n_runs = int(run_start.sum())
    del run_start
    edges = []
    for z0, z1 in _slabs(shape):
        for dz, dy, dx in offsets:
            if z0 + dz >= shape[0]:
                continue
            z_top = min(z1, shape[0] - dz)
            (ys, yd), (xs, xd) = _shifted(shape[1], dy), _shifted(shape[2], dx)
            source = labels[z0:z_top, ys, xs]
            same = (source != 0) & (source == labels[z0 + dz:z_top + dz, yd, xd])
            a = run[z0:z_top, ys, xs][same].astype(np.int64)
            b = run[z0 + dz:z_top + dz, yd, xd][same].astype(np.int64)
            edges.append(np.unique(a * n_runs + b))
    joined = np.concatenate(edges) if edges else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(joined), dtype=np.int8),
                        (joined // max(n_runs, 1), joined % max(n_runs, 1))),
                       shape=(n_runs, n_runs))
    n_pieces, piece = connected_components(graph, directed=False)
    out_type = np.uint32 if n_pieces < 2**32 else np.uint64
    out = np.zeros(shape, dtype=out_type)
    foreground = labels != 0
    out[foreground] = piece.astype(out_type)[run[foreground]] + 1
    logger.info("connected ground truth: %d pieces", n_pieces)
    return out


# --------------------------------------------------------------------------------------------
# Skeletons


def _skeleton_arrays(key, skeleton, shape) -> tuple[np.ndarray, np.ndarray]:
    try:
        nodes, edges = skeleton
    except (TypeError, ValueError):
        raise InputError(f"skeleton {key!r}: expected a pair (nodes, edges)") from None
    nodes, edges = np.asarray(nodes), np.asarray(edges)
    if nodes.size == 0:
        nodes = nodes.reshape(0, 3)
    if edges.size == 0:
        edges = edges.reshape(0, 2)
    if nodes.ndim != 2 or nodes.shape[1] != 3 or not np.issubdtype(nodes.dtype, np.integer):
        raise InputError(f"skeleton {key!r}: nodes must be an (n, 3) integer array of voxel "
                         f"(z, y, x), got {nodes.dtype} of shape {nodes.shape}")
    if edges.ndim != 2 or edges.shape[1] != 2 or not np.issubdtype(edges.dtype, np.integer):
        raise InputError(f"skeleton {key!r}: edges must be an (m, 2) integer array of node "
                         f"indices, got {edges.dtype} of shape {edges.shape}")
    outside = np.flatnonzero(((nodes < 0) | (nodes >= np.asarray(shape))).any(axis=1))
    if len(outside):
        i = int(outside[0])
        raise InputError(f"skeleton {key!r}: node {i} at (z, y, x) {tuple(map(int, nodes[i]))} "
                         f"lies outside the volume of shape {tuple(shape)}")
    bad = np.flatnonzero(((edges < 0) | (edges >= len(nodes))).any(axis=1))
    if len(bad):
        i = int(bad[0])
        raise InputError(f"skeleton {key!r}: edge {i} {tuple(map(int, edges[i]))} names a node "
                         f"outside 0..{len(nodes) - 1}")
    return nodes.astype(np.int64), edges.astype(np.int64)


def _split_count(labels: np.ndarray, edges: np.ndarray, background: np.ndarray) -> int:
    """Edges joining two different cells, where a stretch of background nodes counts as one
    edge that joins every cell next to it (k cells: k - 1 splits)."""
    a, b = labels[edges[:, 0]], labels[edges[:, 1]]
    in_a, in_b = background[edges[:, 0]], background[edges[:, 1]]
    splits = int(np.count_nonzero(~in_a & ~in_b & (a != b)))
    if not background.any():
        return splits
    both = in_a & in_b
    n = len(labels)
    graph = coo_matrix((np.ones(int(both.sum()), dtype=np.int8),
                        (edges[both, 0], edges[both, 1])), shape=(n, n))
    _, stretch = connected_components(graph, directed=False)
    # Each background stretch with the cells next to it.
    mixed = in_a ^ in_b
    gap = np.where(in_a[mixed], edges[mixed, 0], edges[mixed, 1])
    cell = np.where(in_a[mixed], b[mixed], a[mixed])
    if not len(gap):
        return splits
    pairs = np.unique(np.stack([stretch[gap].astype(np.uint64), cell]), axis=1)
    return splits + int(len(pairs[0]) - len(np.unique(pairs[0])))


def skeleton_errors(seg, skeletons, *, ignore_label: int = 0) -> SkeletonErrors:
    """Splits and merges of a segmentation along ground-truth skeletons.

    A split is a skeleton edge whose two nodes fall in different cells (labels other than
    ``ignore_label``). Nodes in ``ignore_label`` break no edge: a stretch of them joins the
    cells on either side as one edge would (a path A, 0, 0, B is one split; a stretch next to
    k cells, k - 1). A merge: a cell holding nodes of k >= 2 skeletons counts k - 1. Counts
    only, no path lengths.

    Parameters
    ----------
    seg : (Z, Y, X) integer ndarray
        Predicted labels.
    skeletons : sequence or mapping of (nodes, edges)
        Ground-truth cells: ``nodes`` an (n, 3) integer array of voxel (z, y, x), ``edges``
        an (m, 2) array of node index pairs. Keys of a mapping (e.g. ground-truth ids, as
        :func:`ground_truth_skeletons` gives) name the skeletons in the result; indices
        name those of a sequence.
    ignore_label : int
        The background label of ``seg``.

    Returns
    -------
    SkeletonErrors

    Raises
    ------
    InputError
        Malformed skeletons (naming the skeleton and the node or edge), nodes outside the
        volume, or a label volume that is not 3-D integers.
    """
    seg = np.asarray(seg)
    shape = _check_volume(seg, "segmentation")
    items = list(skeletons.items()) if isinstance(skeletons, Mapping) else list(
        enumerate(skeletons))
    per_skeleton, holders = {}, {}
    for key, skeleton in items:
        nodes, edges = _skeleton_arrays(key, skeleton, shape)
        labels = seg[nodes[:, 0], nodes[:, 1], nodes[:, 2]].astype(np.uint64)
        background = labels == np.uint64(ignore_label)
        cells = sorted(int(c) for c in np.unique(labels[~background]))
        for cell in cells:
            holders.setdefault(cell, []).append(key)
        per_skeleton[key] = (_split_count(labels, edges, background), cells,
                             int(background.sum()))
    merging = {cell: keys for cell, keys in sorted(holders.items()) if len(keys) > 1}
    position = {key: i for i, (key, _) in enumerate(items)}
    partners: dict = {key: set() for key, _ in items}
    for keys in merging.values():
        for key in keys:
            partners[key].update(k for k in keys if k != key)
    scores = {key: SkeletonScore(splits=splits,
                                 merged_with=sorted(partners[key], key=position.__getitem__),
                                 segments=cells, background_nodes=background)
              for key, (splits, cells, background) in per_skeleton.items()}
    return SkeletonErrors(
        splits=sum(s.splits for s in scores.values()),
        merges=sum(len(keys) - 1 for keys in merging.values()),
        per_skeleton=scores, merging_cells=merging)


def ground_truth_skeletons(gt, voxel_size: Sequence[float], **options) -> dict:
    """Skeletons of dense ground-truth labels, in the form :func:`skeleton_errors` takes.

    Traced with :func:`detection.cells.skeletonize.skeletonize_segmentation` (kimimaro's
    TEASAR); its nodes (nm) are turned back into the voxels they were traced through.

    Parameters
    ----------
    gt : (Z, Y, X) integer ndarray
        Ground-truth labels; 0 is background.
    voxel_size : sequence of 3 floats
        nm, (z, y, x).
    **options
        Passed on to ``skeletonize_segmentation`` (``dust_threshold``, ``scale``, ``const``,
        ``ids``, ...).

    Returns
    -------
    dict of int to (nodes, edges)
        Per ground-truth id that yielded a skeleton: (n, 3) int64 voxel (z, y, x) nodes and
        (m, 2) int64 edges (child, parent).
    """
    from detection.cells.skeletonize import skeletonize_segmentation

    gt = np.asarray(gt)
    voxel = np.asarray(voxel_size, dtype=np.float64)
    traced = skeletonize_segmentation(gt, voxel_size=voxel_size, **options)
    top = np.asarray(gt.shape) - 1
    skeletons = {}
    for cell, skeleton in traced.items():
        nodes = np.clip(np.rint(skeleton.zyx / voxel), 0, top).astype(np.int64)
        child = np.flatnonzero(skeleton.parent_id >= 0)
        edges = np.stack([child, skeleton.parent_id[child]], axis=1).astype(np.int64)
        skeletons[cell] = (nodes, edges)
    return skeletons


# --------------------------------------------------------------------------------------------
# Per-cell report against ground truth


def _nearest_voxels(seg, gt, ignore, want_seg, want_gt, centre) -> np.ndarray:
    """For each wanted (seg, gt) pair (no pair twice), its scored voxel nearest ``centre``
    (ties: the first in C order), as (k, 3) int64 (z, y, x); one more pass over the
    volumes."""
    shape = tuple(int(n) for n in seg.shape)
    plane = shape[1] * shape[2]
    best = np.full(len(want_seg), np.inf)
    found = np.zeros((len(want_seg), 3), dtype=np.int64)
    for z0, z1 in _slabs(shape):
        g = _labels(gt, z0, z1, "ground truth")
        s = _labels(seg, z0, z1, "segmentation")
        where = np.flatnonzero(_scored(g, ignore, z0, z1))
        if not len(where):
            continue
        pairs = _PairKeys(s[where], g[where])
        keys, valid = pairs.encode(want_seg, want_gt)
        if not valid.any():
            continue
        wanted = np.flatnonzero(valid)
        order = np.argsort(keys[wanted])
        sorted_keys, sorted_rows = keys[wanted][order], wanted[order]
        hit, at = _lookup(pairs.keys, sorted_keys)
        if not hit.any():
            continue
        row = sorted_rows[at[hit]]
        z, rest = np.divmod(where[hit] + z0 * plane, plane)
        y, x = np.divmod(rest, shape[2])
        zyx = np.stack([z, y, x], axis=1)
        distance = ((zyx - centre[row]) ** 2).sum(axis=1)
        pick = np.lexsort((distance, row))
        first = pick[_starts(row[pick])]
        better = distance[first] < best[row[first]]
        best[row[first][better]] = distance[first][better]
        found[row[first][better]] = zyx[first][better]
    return found


def _grouped(ids: np.ndarray) -> list[np.ndarray]:
    """Row indices per distinct id, ids in ascending order."""
    order = np.argsort(ids, kind="stable")
    starts = _starts(ids[order])
    return np.split(order, starts[1:]) if len(starts) else []


def overlap_report(seg, gt, *, ignore=None, min_voxels: int = 100, max_parts: int = 20,
                   max_rows: int | None = None) -> list[dict]:
    """The merges and splits of a segmentation against ground truth, worst first.

    A predicted cell is a merge when two or more ground-truth bodies each share at least
    ``min_voxels`` voxels with it; a body is split when two or more cells (label 0 left out)
    each hold at least ``min_voxels`` of it. A row's ``bits`` is the cell's part of the VOI
    merge (a merge row) or the body's part of the VOI split (a split row), so rows are
    ranked by what fixing them would gain; ties by size.

    Parameters
    ----------
    seg, gt : (Z, Y, X) integer array
        Predicted and true labels (see the module conventions).
    ignore : (Z, Y, X) bool or integer array, optional
        Non-zero where voxels are not scored.
    min_voxels : int
        The overlap that counts as a real share.
    max_parts : int
        A row lists at most this many parts (the largest): bodies of a merge, cells of a
        split; ``parts`` says how many there are.
    max_rows : int, optional
        Keep the worst rows only.

    Returns
    -------
    list of dict
        Rows as described in the module docstring. ``bbox`` is the box of the merged cell (or
        the split body) over the scored voxels; ``point`` is the voxel nearest the middle of
        the error's second-largest part (the second body inside a merged cell; the second
        cell of a split body), which lies in ``cells[0]`` for a merge and in ``cells[1]``
        for a split; ``voxels`` are the cells' scored sizes.

    Raises
    ------
    InputError
        As :func:`contingency_table`; ``min_voxels`` below 1 or ``max_parts`` below 2.
    """
    if int(min_voxels) < 1:
        raise InputError(f"min_voxels must be at least 1, got {min_voxels!r}")
    if int(max_parts) < 2:
        raise InputError(f"max_parts must be at least 2, got {max_parts!r}")
    seg_ids, gt_ids, stats = _tabulate(seg, gt, ignore, positions=True)
    count = stats["count"]
    n = float(count.sum())
    if n == 0:
        return []
    seg_size = _sizes(seg_ids, count.astype(np.float64))
    gt_size = _sizes(gt_ids, count.astype(np.float64))
    merge_bits = count * np.log2(seg_size / count) / n
    split_bits = count * np.log2(gt_size / count) / n
    cell_voxels = dict(zip(seg_ids.tolist(), seg_size.astype(np.int64).tolist()))

    def box(rows: np.ndarray) -> list[list[int]]:
        return [[int(stats[f"min_{a}"][rows].min()) for a in "zyx"],
                [int(stats[f"max_{a}"][rows].max()) + 1 for a in "zyx"]]

    rows, seeds = [], []
    for members in _grouped(seg_ids):
        if seg_ids[members[0]] == 0:
            continue
        real = members[count[members] >= min_voxels]
        if len(real) < 2:
            continue
        real = real[np.lexsort((gt_ids[real], -count[real]))]
        listed = real[:max_parts]
        cell = int(seg_ids[members[0]])
        rows.append({
            "kind": "merge", "cells": [cell], "voxels": [cell_voxels[cell]],
            "truth": gt_ids[listed].tolist(), "overlap": count[listed].tolist(),
            "parts": len(real),
            "bits": float(merge_bits[members].sum()),
            "share": 1.0 - float(count[members].max()) / cell_voxels[cell],
            "bbox": box(members), "point": None,
        })
        seeds.append(int(real[1]))
    for members in _grouped(gt_ids):
        real = members[(count[members] >= min_voxels) & (seg_ids[members] != 0)]
        if len(real) < 2:
            continue
        real = real[np.lexsort((seg_ids[real], -count[real]))]
        listed = real[:max_parts]
        cells = seg_ids[listed].tolist()
        body = float(count[members].sum())
        rows.append({
            "kind": "split", "cells": cells, "voxels": [cell_voxels[c] for c in cells],
            "truth": [int(gt_ids[members[0]])], "overlap": count[listed].tolist(),
            "parts": len(real),
            "bits": float(split_bits[members].sum()),
            "share": 1.0 - float(count[members].max()) / body,
            "bbox": box(members), "point": None,
        })
        seeds.append(int(real[1]))
    order = sorted(range(len(rows)), key=lambda i: (
        -rows[i]["bits"], -sum(rows[i]["overlap"]), rows[i]["kind"], rows[i]["cells"]))
    if max_rows is not None:
        order = order[:max(0, int(max_rows))]
    rows = [rows[i] for i in order]
    seeds = np.asarray([seeds[i] for i in order], dtype=np.int64)
    if len(rows):
        # A merge and a split can share their second part: one search per pair.
        pairs, which = np.unique(seeds, return_inverse=True)
        centre = np.stack([stats[f"sum_{a}"][pairs] / count[pairs] for a in "zyx"], axis=1)
        points = _nearest_voxels(seg, gt, ignore, seg_ids[pairs], gt_ids[pairs], centre)
        for row, point in zip(rows, points[which]):
            row["point"] = point.tolist()
    logger.info("overlap report: %d merges, %d splits of %d cells against %d bodies",
                sum(r["kind"] == "merge" for r in rows), sum(r["kind"] == "split" for r in rows),
                len(np.unique(seg_ids)), len(np.unique(gt_ids)))
    return rows


# --------------------------------------------------------------------------------------------
# Likely errors from the agglomeration's record


def _columns(table, names: dict[str, str], what: str) -> dict[str, np.ndarray]:
    """The named 1-D columns of a dict of arrays, of one length, as the given dtypes."""
    if not isinstance(table, Mapping):
        raise InputError(f"{what}: expected a dict of arrays with columns "
                         f"{', '.join(names)}, got {type(table).__name__}")
    missing = [name for name in names if name not in table]
    if missing:
        raise InputError(f"{what}: missing column{'s' * (len(missing) > 1)} "
                         f"{', '.join(missing)}")
    columns = {}
    for name, kind in names.items():
        values = np.asarray(table[name])
        if values.ndim != 1:
            raise InputError(f"{what}['{name}']: expected a 1-D array, got shape {values.shape}")
        if kind == "id":
            if values.size and (not np.issubdtype(values.dtype, np.integer)
                                or (np.issubdtype(values.dtype, np.signedinteger)
                                    and values.min() < 0)):
                raise InputError(f"{what}['{name}']: ids must be non-negative integers, got "
                                 f"{values.dtype}")
            values = values.astype(np.uint64)
        elif kind == "count":
            if values.size and not np.issubdtype(values.dtype, np.integer):
                raise InputError(f"{what}['{name}']: expected integers, got {values.dtype}")
            values = values.astype(np.int64)
            negative = np.flatnonzero(values < 0)
            if len(negative):
                raise InputError(f"{what} row {int(negative[0])}: '{name}' is negative "
                                 f"({int(values[negative[0]])})")
        else:
            values = values.astype(np.float64)
        columns[name] = values
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise InputError(f"{what}: columns differ in length "
                         f"({', '.join(f'{k} {v}' for k, v in lengths.items())})")
    return columns


def likely_errors(edges, cells, *, threshold: float, margin: float,
                  min_contact: int = 1) -> list[dict]:
    """Merges and missed merges that the agglomeration decided by a small margin.

    A cell is a likely merge when its weakest inner merge (``last_merge``) scored above
    ``threshold - margin``: it was merged, but barely. A pair of cells is a likely split when
    the best score between them is below ``threshold + margin`` and they touch over at least
    ``min_contact`` voxels: they were kept apart, but barely (or, below the threshold, although
    some fragment pair between them scores as a merge). Scores are ``1 - mean affinity``: lower
    is stronger.

    Parameters
    ----------
    edges : dict of 1-D arrays
        ``a``, ``b`` (uint64 cell ids, a < b), ``score`` (float32), ``contact`` (int64 voxels).
    cells : dict of 1-D arrays
        ``id`` (uint64), ``voxels`` (int64), ``last_merge`` (float32, nan for a cell of one
        fragment).
    threshold : float
        The agglomeration threshold.
    margin : float
        How far from the threshold a decision counts as close; > 0.
    min_contact : int
        Pairs touching over fewer voxels are left out.

    Returns
    -------
    list of dict
        Rows (module docstring) sorted by distance to the threshold, closest first (then the
        larger cell, or the larger contact). ``confidence`` is ``1 - distance / margin``, in
        (0, 1], 1 at (or across) the threshold; ``score`` the record's score. ``bbox`` and
        ``point`` are None: :func:`locate_errors` fills them from the label volume.

    Raises
    ------
    InputError
        Missing or malformed columns, edges with ``a >= b`` or naming an id absent from
        ``cells``, non-finite scores, or a threshold or margin that is not a finite number
        (margin > 0); the message names the table, the row and the column.
    """
    threshold, margin = float(threshold), float(margin)
    if not math.isfinite(threshold):
        raise InputError(f"threshold must be a finite number, got {threshold!r}")
    if not (math.isfinite(margin) and margin > 0):
        raise InputError(f"margin must be a positive number, got {margin!r}")
    cell = _columns(cells, {"id": "id", "voxels": "count", "last_merge": "float"}, "cells")
    edge = _columns(edges, {"a": "id", "b": "id", "score": "float", "contact": "count"},
                    "edges")
    order = np.argsort(cell["id"], kind="stable")
    ids, sizes = cell["id"][order], cell["voxels"][order]
    repeated = np.flatnonzero(ids[1:] == ids[:-1])
    if len(repeated):
        raise InputError(f"cells: id {int(ids[repeated[0]])} is listed twice")
    not_ordered = np.flatnonzero(edge["a"] >= edge["b"])
    if len(not_ordered):
        i = int(not_ordered[0])
        raise InputError(f"edges row {i}: a ({int(edge['a'][i])}) must be below b "
                         f"({int(edge['b'][i])})")
    bad_score = np.flatnonzero(~np.isfinite(edge["score"]))
    if len(bad_score):
        raise InputError(f"edges row {int(bad_score[0])}: score is not a finite number")

    def size_of(values: np.ndarray, name: str) -> np.ndarray:
        at = np.minimum(np.searchsorted(ids, values), max(len(ids) - 1, 0))
        absent = np.flatnonzero(ids[at] != values) if len(ids) else np.arange(len(values))
        if len(absent):
            i = int(absent[0])
            raise InputError(f"edges row {i}: {name} ({int(values[i])}) is not a cell of "
                             "cells['id']")
        return sizes[at]

    size_a, size_b = size_of(edge["a"], "a"), size_of(edge["b"], "b")
    rows = []
    last = cell["last_merge"]
    close = np.flatnonzero(np.isfinite(last) & (last > threshold - margin))
    for i in close.tolist():
        distance = max(threshold - float(last[i]), 0.0)
        rows.append(((distance, -int(cell["voxels"][i])), {
            "kind": "merge", "cells": [int(cell["id"][i])], "voxels": [int(cell["voxels"][i])],
            "score": float(last[i]), "confidence": 1.0 - distance / margin,
            "bbox": None, "point": None,
        }))
    close = np.flatnonzero((edge["score"] < threshold + margin)
                           & (edge["contact"] >= int(min_contact)))
    for i in close.tolist():
        distance = max(float(edge["score"][i]) - threshold, 0.0)
        rows.append(((distance, -int(edge["contact"][i])), {
            "kind": "split", "cells": [int(edge["a"][i]), int(edge["b"][i])],
            "voxels": [int(size_a[i]), int(size_b[i])], "score": float(edge["score"][i]),
            "contact": int(edge["contact"][i]), "confidence": 1.0 - distance / margin,
            "bbox": None, "point": None,
        }))
    rows.sort(key=lambda item: (*item[0], item[1]["kind"], item[1]["cells"]))
    return [row for _, row in rows]


def _voxels_of(hit: np.ndarray, z0: int, shape) -> np.ndarray:
    """(k, 3) int64 (z, y, x) of flat indices ``hit`` into planes from ``z0``."""
    plane = shape[1] * shape[2]
    z, rest = np.divmod(hit + z0 * plane, plane)
    return np.stack([z, *np.divmod(rest, shape[2])], axis=1)


def _cell_boxes(seg, ids: np.ndarray) -> tuple[dict, dict]:
    """Bounding boxes of the given cells (sorted uint64 ids), and each one's voxel nearest its
    centroid; two passes over the volume."""
    shape = tuple(int(n) for n in seg.shape)
    low = np.full((len(ids), 3), np.iinfo(np.int64).max)
    high = np.full((len(ids), 3), -1)
    total = np.zeros((len(ids), 3))
    count = np.zeros(len(ids))
    for z0, z1 in _slabs(shape):
        s = _labels(seg, z0, z1, "segmentation")
        member, at = _lookup(s, ids)
        hit = np.flatnonzero(member)
        if not len(hit):
            continue
        row = at[hit]
        zyx = _voxels_of(hit, z0, shape)
        order = np.argsort(row, kind="stable")
        starts = _starts(row[order])
        here = row[order][starts]
        low[here] = np.minimum(low[here], np.minimum.reduceat(zyx[order], starts))
        high[here] = np.maximum(high[here], np.maximum.reduceat(zyx[order], starts))
        total[here] += np.add.reduceat(zyx[order], starts)
        count[here] += np.diff(np.append(starts, len(order)))
    present = np.flatnonzero(count > 0)
    centre = total / np.maximum(count, 1)[:, None]
    best = np.full(len(ids), np.inf)
    nearest = np.zeros((len(ids), 3), dtype=np.int64)
    for z0, z1 in _slabs(shape):
        s = _labels(seg, z0, z1, "segmentation")
        member, at = _lookup(s, ids)
        hit = np.flatnonzero(member)
        if not len(hit):
            continue
        row = at[hit]
        zyx = _voxels_of(hit, z0, shape)
        distance = ((zyx - centre[row]) ** 2).sum(axis=1)
        pick = np.lexsort((distance, row))
        first = pick[_starts(row[pick])]
        better = first[distance[first] < best[row[first]]]
        best[row[better]] = distance[better]
        nearest[row[better]] = zyx[better]
    boxes = {int(ids[k]): [low[k].tolist(), (high[k] + 1).tolist()] for k in present}
    return boxes, {int(ids[k]): nearest[k].tolist() for k in present}


def _contacts(seg, pairs: np.ndarray) -> dict:
    """For each (a, b) pair (a < b), the voxels of ``a`` that touch ``b`` through a face, as
    a sorted (k, 3) int64 array of (z, y, x)."""
    shape = tuple(int(n) for n in seg.shape)
    wanted = np.unique(pairs.reshape(-1))
    n = len(wanted)
    wanted_keys = np.unique(np.searchsorted(wanted, pairs[:, 0]) * n
                            + np.searchsorted(wanted, pairs[:, 1]))
    keys, voxels = [], []
    for z0, z1 in _slabs(shape):
        top = min(z1 + 1, shape[0])  # one plane more: the faces to the next slab
        block = _labels(seg, z0, top, "segmentation").reshape(top - z0, *shape[1:])
        for axis in range(3):
            lo, hi = [slice(None)] * 3, [slice(None)] * 3
            lo[axis], hi[axis] = slice(0, -1), slice(1, None)
            if axis == 0:
                lo[0], hi[0] = slice(0, top - 1 - z0), slice(1, top - z0)
            else:
                lo[0] = hi[0] = slice(0, z1 - z0)
            first, second = block[tuple(lo)], block[tuple(hi)]
            touch = (first != second) & _lookup(first, wanted)[0] & _lookup(second, wanted)[0]
            if not touch.any():
                continue
            where = np.argwhere(touch)
            a, b = first[touch], second[touch]
            small = np.minimum(a, b)
            key = np.searchsorted(wanted, small) * n + np.searchsorted(wanted, np.maximum(a, b))
            keep = np.isin(key, wanted_keys)
            # The voxel on the side of the smaller id.
            where[:, axis] += (b == small).astype(np.int64)
            where[:, 0] += z0
            keys.append(key[keep])
            voxels.append(where[keep])
    if not keys:
        return {}
    key, zyx = np.concatenate(keys), np.concatenate(voxels)
    table = np.unique(np.column_stack([key, zyx]), axis=0)
    found = {}
    for members in _grouped(table[:, 0]):
        k = int(table[members[0], 0])
        found[(int(wanted[k // n]), int(wanted[k % n]))] = table[members, 1:]
    return found


def locate_errors(rows: Sequence[dict], seg) -> list[dict]:
    """Give rows without ``bbox`` or ``point`` (those of :func:`likely_errors`) both, from
    the label volume.

    A merge row gets its cell's bounding box and the cell's voxel nearest its centroid. A
    split row (cells a, b) gets the box of the voxels of ``a`` that touch ``b`` through a
    face, and the one of them nearest their middle; cells that do not touch keep None.

    Parameters
    ----------
    rows : sequence of dict
        Report rows; those that have both already are left as they are.
    seg : (Z, Y, X) integer array
        The labels the rows' cell ids refer to (a numpy, zarr or h5py array: read slab by
        slab).

    Returns
    -------
    list of dict
        New rows, in the same order.
    """
    _check_volume(seg, "segmentation")
    rows = [dict(row) for row in rows]
    todo = [row for row in rows if row.get("bbox") is None or row.get("point") is None]
    merge_ids = np.unique(np.asarray(
        [row["cells"][0] for row in todo if row["kind"] == "merge"], dtype=np.uint64))
    pairs = np.asarray([sorted(row["cells"][:2]) for row in todo if row["kind"] == "split"],
                       dtype=np.uint64).reshape(-1, 2)
    boxes, points = _cell_boxes(seg, merge_ids) if len(merge_ids) else ({}, {})
    contacts = _contacts(seg, pairs) if len(pairs) else {}
    for row in todo:
        if row["kind"] == "merge":
            cell = int(row["cells"][0])
            if cell in boxes:
                row["bbox"], row["point"] = boxes[cell], points[cell]
            continue
        a, b = (int(c) for c in row["cells"][:2])
        voxels = contacts.get((a, b))
        if voxels is None:
            continue
        centre = voxels.mean(axis=0)
        nearest = voxels[np.argmin(((voxels - centre) ** 2).sum(axis=1))]
        row["bbox"] = [voxels.min(axis=0).tolist(), (voxels.max(axis=0) + 1).tolist()]
        row["point"] = nearest.tolist()
    return rows
