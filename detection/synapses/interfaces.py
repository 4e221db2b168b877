"""Synaptic classification of the contact interfaces between segments, after SynEM.

SynEM (Staffler et al., eLife 2017) does not look for synapses voxel by voxel: it takes every
contact between two neurite segments, describes the texture of the contact and of the two
neurites near it, and asks one question per interface and direction: "is this a synapse with
this side presynaptic?".  This module does the same on any label volume.

Pipeline
--------
1. :func:`extract_interfaces` finds every contact between two different segments A < B and
   returns an :class:`InterfaceTable` (border voxels, area, centroid, bounding box).
2. :func:`interface_subvolumes` cuts, for one interface, the border and the voxels of each side
   within 40, 80 and 160 nm of it (SynEM's distances).
3. :func:`interface_features` summarises texture channels (:mod:`detection.synapses.features`) over these
   regions, plus shape measures, into one row per interface whose A and B blocks
   :func:`swap_sides` exchanges.
4. :func:`train_interface_classifier` fits gradient-boosted trees on the direction-augmented set
   (each interface once as A->B, once as B->A); :class:`InterfaceClassifier` scores both
   directions of new interfaces and is saved and loaded with its metadata.
5. :func:`label_interfaces` turns synapse label volumes into interface labels for training.

Conventions
-----------
* Arrays are (z, y, x); voxel sizes, positions and distances are in nm, (z, y, x); voxel
  (i, j, k) is at (i * vz, j * vy, k * vx) nm.
* Interface labels: 0 not synaptic, 1 synaptic with A presynaptic, 2 synaptic with B
  presynaptic, -1 synaptic with unknown direction (see :func:`train_interface_classifier`).

Contacts
--------
Two segments are in contact where they touch face to face, or where only a thin sheet of
background (membrane) separates them.  Both cases are handled the same way: every background
voxel within ``max_gap_voxels`` of a segment takes the label of the nearest segment (Euclidean
distance in voxel index units, so one section counts as one voxel whatever its thickness, as
segmentations of anisotropic data draw membranes), and a voxel face between an A voxel and a B
voxel is a *border face* when the two voxels' distances to their own segments add up to at most
``max_gap_voxels``: that sum is the width of the background gap measured across the face (0
where the segments touch).  The border faces of a gapped contact lie on the mid-line of the
membrane, so each junction of three segments is split between the pairs, and a segment lying
between two others keeps them apart.

The *border voxels* of an interface are the two voxels of every border face; each belongs to
side A or side B (its nearest segment).

Area estimator
--------------
``area_nm2`` sums the areas of the border faces: a face normal to z counts vy * vx, normal to y
vz * vx, normal to x vz * vy.  This is exact for a contact plane normal to an axis and
overestimates an oblique plane by the factor |n_z| + |n_y| + |n_x| of its unit normal n (up to
sqrt(3), about 1.5 averaged over orientations with isotropic voxels).  The per-axis sums
``area_axes_nm2`` are the plane's projections, so ``area_plane_nm2`` = their Euclidean norm is
close to exact for a large plane of any orientation and underestimates curved contacts whose
projections overlap.  Both are kept (and both are features); ``area_nm2`` is the primary figure
and the one `min_area_nm2` filters on.

Measured (``benchmarks/interfaces_real_data.py``, 2-core shared machine)
--------------------------------------------------------------------------
=========================  ========================  ==========  =======  ========
volume                     voxels (nm)               interfaces  seconds  peak MiB
=========================  ========================  ==========  =======  ========
medulla 250^3, dense       10 x 10 x 10              1,617       3        310
cortex 512^3, dense        40 x 16 x 16              38,787      24-27    2,530
vnc 20x1024x640, in-plane  50 x 4.6 x 4.6, gap 10    6,882       4        360
=========================  ========================  ==========  =======  ========

Peak memory counts numpy allocations during extraction (the label volume itself excluded).
Features cost about 6 ms per interface on vnc with the default spec (28 channels), training
(200 trees on 1,776 features, 8,400 rows) about 4 minutes.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from detection.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DISTANCES_NM",
    "InterfaceClassifier",
    "InterfaceLabels",
    "InterfaceModelMismatchError",
    "InterfaceSubvolumes",
    "InterfaceTable",
    "extract_interfaces",
    "feature_names",
    "interface_features",
    "interface_subvolumes",
    "label_interfaces",
    "swap_sides",
    "train_interface_classifier",
]

#: SynEM's subvolume distances from the border (nm).
DEFAULT_DISTANCES_NM: tuple[float, ...] = (40.0, 80.0, 160.0)

#: Quantiles computed per channel and region.
QUANTILES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
_STAT_NAMES: tuple[str, ...] = ("q0", "q25", "q50", "q75", "q100", "mean", "var", "skew", "kurt")

MODEL_FORMAT = "connectome-interface-classifier"
MODEL_FORMAT_VERSION = 1

# Faces are gathered this many sections at a time, which keeps the boolean temporaries of a
# 512^2-section volume near 100 MB.
_FACE_CHUNK_VOXELS = 1 << 24
# Tolerance of the gap test: distances are square roots of integers in float32.
_GAP_EPS = 1e-4


class InterfaceModelMismatchError(InputError):
    """An interface model applied to data it was not made for (voxel size, feature layout)."""


# --------------------------------------------------------------------------------------------
# Interface table
# --------------------------------------------------------------------------------------------


@dataclass
class InterfaceTable:
    """Every contact interface of a segmentation, sorted by (A, B).

    Attributes
    ----------
    ids : (N, 2) uint64
        Segment ids (A, B) of each interface; A < B as extracted (:meth:`swapped` exchanges them).
    area_nm2 : (N,) float64
        Sum of the border face areas (see the module notes on the estimator).
    area_axes_nm2 : (N, 3) float64
        Areas of the border faces normal to z, y and x.
    n_faces : (N,) int64
        Number of border faces.
    centroid_nm : (N, 3) float64
        Area-weighted mean of the border face centres (z, y, x) nm.
    bbox_min, bbox_max : (N, 3) int64
        Half-open voxel bounding box (z, y, x) of the border voxels.
    voxel_offsets : (N + 1,) int64
        Interface ``i`` owns rows ``voxel_offsets[i]:voxel_offsets[i + 1]`` of `voxels`.
    voxels : (M, 3) int32
        Border voxels (z, y, x), sorted by interface then by flat index.
    voxel_side : (M,) int8
        0 when the border voxel lies on side A (its nearest segment is A), 1 on side B.
    labels : (Z, Y, X) integer ndarray
        The label volume the contacts were found on: the segmentation with every background
        voxel within ``max_gap_voxels`` of a segment given the nearest segment's id (the
        segmentation itself, not a copy, when nothing was filled).  Subvolumes are cut from it,
        so the membrane half on A's side of a contact counts as A's.
    voxel_size : tuple of float
        (z, y, x) nm.
    params : dict
        Extraction parameters (JSON-serialisable).
    """

    ids: np.ndarray
    area_nm2: np.ndarray
    area_axes_nm2: np.ndarray
    n_faces: np.ndarray
    centroid_nm: np.ndarray
    bbox_min: np.ndarray
    bbox_max: np.ndarray
    voxel_offsets: np.ndarray
    voxels: np.ndarray
    voxel_side: np.ndarray
    labels: np.ndarray
    voxel_size: tuple[float, float, float]
    params: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape (Z, Y, X) of the label volume."""
        return tuple(self.labels.shape)

    @property
    def n_border_voxels(self) -> np.ndarray:
        """(N,) int64 number of border voxels of each interface."""
        return np.diff(self.voxel_offsets)

    def border_voxels(self, index: int) -> np.ndarray:
        """(n, 3) int32 border voxels (z, y, x) of interface `index`."""
        return self.voxels[self.voxel_offsets[index]:self.voxel_offsets[index + 1]]

    def border_sides(self, index: int) -> np.ndarray:
        """(n,) int8 side (0 A, 1 B) of each border voxel of interface `index`."""
        return self.voxel_side[self.voxel_offsets[index]:self.voxel_offsets[index + 1]]

    def swapped(self) -> "InterfaceTable":
        """The same interfaces with sides A and B exchanged (ids reversed, sides flipped)."""
        return InterfaceTable(
            ids=self.ids[:, ::-1].copy(), area_nm2=self.area_nm2,
            area_axes_nm2=self.area_axes_nm2, n_faces=self.n_faces,
            centroid_nm=self.centroid_nm, bbox_min=self.bbox_min, bbox_max=self.bbox_max,
            voxel_offsets=self.voxel_offsets, voxels=self.voxels,
            voxel_side=(1 - self.voxel_side).astype(np.int8), labels=self.labels,
            voxel_size=self.voxel_size, params=dict(self.params),
        )

    def select(self, index) -> "InterfaceTable":
        """A table of the interfaces picked by `index` (boolean mask or integer positions)."""
        index = np.arange(len(self))[index]
        counts = self.n_border_voxels[index]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        rows = _ranges(self.voxel_offsets[index], counts)
        return InterfaceTable(
            ids=self.ids[index], area_nm2=self.area_nm2[index],
            area_axes_nm2=self.area_axes_nm2[index], n_faces=self.n_faces[index],
            centroid_nm=self.centroid_nm[index], bbox_min=self.bbox_min[index],
            bbox_max=self.bbox_max[index], voxel_offsets=offsets, voxels=self.voxels[rows],
            voxel_side=self.voxel_side[rows], labels=self.labels, voxel_size=self.voxel_size,
            params=dict(self.params),
        )


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` over (s, c), without a Python loop."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    shift = np.repeat(np.asarray(starts, dtype=np.int64) - (ends - counts), counts)
    return np.arange(total, dtype=np.int64) + shift


def _voxel_size(voxel_size) -> tuple[float, float, float]:
    vs = tuple(float(v) for v in voxel_size)
    if len(vs) != 3 or min(vs) <= 0:
        raise InputError(
            f"voxel_size must be three positive numbers (z, y, x) nm, got {voxel_size}")
    return vs


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def _ball_offsets(radius: float, in_plane_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (K, 3) within `radius` voxels (0 excluded), nearest first, and their lengths."""
    r = int(math.floor(radius))
    rz = 0 if in_plane_only else r
    grid = np.mgrid[-rz:rz + 1, -r:r + 1, -r:r + 1].reshape(3, -1).T
    length = np.sqrt((grid.astype(np.float64) ** 2).sum(axis=1))
    keep = (length > 0) & (length <= radius + _GAP_EPS)
    grid, length = grid[keep], length[keep]
    # lexsort: the last key is primary, so ties in length go to a fixed offset order.
    order = np.lexsort((grid[:, 2], grid[:, 1], grid[:, 0], length))
    return grid[order], length[order]


def _fill_background(seg: np.ndarray, *, background, max_gap: float, in_plane_only: bool):
    """Give background voxels within `max_gap` voxels of a segment the nearest segment's id.

    Returns ``(labels, dist)``: the filled volume (`seg` itself when nothing is filled) and the
    float32 distance of every voxel to its segment (0 inside segments, inf for background left
    unfilled), or ``dist = None`` when the volume has no background at all.
    """
    fg = seg != background
    n_bg = fg.size - int(np.count_nonzero(fg))
    if n_bg == 0:
        return seg, None
    dist = np.zeros(seg.shape, dtype=np.float32)
    dist[~fg] = np.inf
    if max_gap < 1:
        return seg, dist
    r = int(math.floor(max_gap))
    # Only background within a Chebyshev distance r of a segment can be reached; the separable
    # maximum filter finds it cheaply, so far-away background (sparse segmentations) costs nothing.
    near = fg.view(np.uint8) if fg.dtype == np.bool_ else fg.astype(np.uint8)
    for axis in ((1, 2) if in_plane_only else (0, 1, 2)):
        near = ndi.maximum_filter1d(near, size=2 * r + 1, axis=axis, mode="constant", cval=0)
    cand = np.flatnonzero((near > 0) & ~fg)
    del near
    if cand.size == 0:
        return seg, dist
    # Padding by r (background) makes every neighbour a plain offset of the flat index, with no
    # bounds test: one add and one gather per offset.
    pad = ((0, 0) if in_plane_only else (r, r), (r, r), (r, r))
    padded = np.pad(seg, pad, mode="constant", constant_values=background)
    pshape = padded.shape
    coords = np.unravel_index(cand, seg.shape)
    todo_flat = np.ravel_multi_index(
        tuple(c + p[0] for c, p in zip(coords, pad)), pshape).astype(np.int64)
    del coords
    flat_pad = padded.reshape(-1)
    filled_label = np.zeros(cand.size, dtype=seg.dtype)
    filled_dist = np.full(cand.size, np.inf, dtype=np.float32)
    todo = np.arange(cand.size)
    offsets, lengths = _ball_offsets(max_gap, in_plane_only)
    flat_offsets = (offsets[:, 0] * pshape[1] + offsets[:, 1]) * pshape[2] + offsets[:, 2]
    for off, length in zip(flat_offsets, lengths):
        if todo.size == 0:
            break
        lab = flat_pad[todo_flat + off]
        hit = lab != background
        if not hit.any():
            continue
        filled_label[todo[hit]] = lab[hit]
        filled_dist[todo[hit]] = length
        miss = ~hit
        todo, todo_flat = todo[miss], todo_flat[miss]
    del padded, flat_pad
    done = np.isfinite(filled_dist)
    if not done.any():
        return seg, dist
    labels = seg.copy()
    labels.reshape(-1)[cand[done]] = filled_label[done]
    dist.reshape(-1)[cand[done]] = filled_dist[done]
    return labels, dist


def _border_faces(labels, dist, *, background, max_gap: float, in_plane_only: bool):
    """All border faces: per axis the flat index of the lower voxel and the two labels."""
    Z, Y, X = labels.shape
    step = max(1, _FACE_CHUNK_VOXELS // max(1, Y * X))
    out = []
    for axis in ((1, 2) if in_plane_only else (0, 1, 2)):
        flats, las, lbs = [], [], []
        for z0 in range(0, Z, step):
            z1 = min(Z, z0 + step)
            if axis == 0:
                z1 = min(z1, Z - 1)
                if z1 <= z0:
                    continue
                lo = np.s_[z0:z1, :, :]
                hi = np.s_[z0 + 1:z1 + 1, :, :]
            elif axis == 1:
                lo = np.s_[z0:z1, :-1, :]
                hi = np.s_[z0:z1, 1:, :]
            else:
                lo = np.s_[z0:z1, :, :-1]
                hi = np.s_[z0:z1, :, 1:]
            a, b = labels[lo], labels[hi]
            mask = (a != b) & (a != background) & (b != background)
            if dist is not None:
                mask &= (dist[lo] + dist[hi]) <= max_gap + _GAP_EPS
            idx = np.nonzero(mask)
            if idx[0].size == 0:
                continue
            las.append(a[idx])
            lbs.append(b[idx])
            flats.append(((idx[0].astype(np.int64) + z0) * Y + idx[1]) * X + idx[2])
        if flats:
            out.append((axis, np.concatenate(flats), np.concatenate(las), np.concatenate(lbs)))
    return out


def _unique(values: np.ndarray) -> np.ndarray:
    """Sorted unique values.  Sorting is used explicitly because ``np.unique`` of large integer
    arrays may take a hash path that is many times slower on tens of millions of keys."""
    s = np.sort(values, kind="quicksort")
    if s.size == 0:
        return s
    return s[np.concatenate([[True], s[1:] != s[:-1]])]


def _unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique values and the index of each value among them (see :func:`_unique`)."""
    order = np.argsort(values, kind="quicksort")
    s = values[order]
    if s.size == 0:
        return s, np.zeros(0, dtype=np.int64)
    change = s[1:] != s[:-1]
    inverse = np.empty(values.size, dtype=np.int64)
    inverse[order] = np.concatenate([[0], np.cumsum(change)])
    return s[np.concatenate([[True], change])], inverse


def _pair_keys(lo: np.ndarray, hi: np.ndarray):
    """Unique (lo, hi) pairs and the pair index of each row."""
    lo = lo.astype(np.uint64)
    hi = hi.astype(np.uint64)
    if lo.size and max(int(lo.max()), int(hi.max())) < 2**32:
        key = (lo << np.uint64(32)) | hi
        ukey, inverse = _unique_inverse(key)
        pairs = np.stack([ukey >> np.uint64(32), ukey & np.uint64(0xFFFFFFFF)], axis=1)
        return pairs, inverse
    ids, compact = _unique_inverse(np.concatenate([lo, hi]))
    k = np.int64(len(ids))
    key = compact[: lo.size] * k + compact[lo.size:]
    ukey, inverse = _unique_inverse(key)
    pairs = np.stack([ids[ukey // k], ids[ukey % k]], axis=1).astype(np.uint64)
    return pairs, inverse


def extract_interfaces(
    segmentation,
    *,
    voxel_size,
    min_area_nm2: float = 2000.0,
    background: int = 0,
    max_gap_voxels: float = 4.0,
    in_plane_only: bool = False,
) -> InterfaceTable:
    """Find every contact interface between two different segments.

    Parameters
    ----------
    segmentation : (Z, Y, X) integer array-like
        Segment ids; `background` marks membrane / unlabelled voxels.  An HDF5 or zarr dataset is
        read whole.
    voxel_size : sequence of 3 float
        (z, y, x) nm.
    min_area_nm2 : float
        Interfaces whose border face area (``area_nm2``) is smaller are dropped.  The default
        (a 45 x 45 nm patch) removes corner and single-face contacts, far below any synapse.
    background : int
        Id that is not a segment.
    max_gap_voxels : float
        Widest background gap (voxel index units, Euclidean) that still counts as a contact.
        The default 4 bridges membranes drawn 2-3 voxels wide with margin and stops at 5.
        0 allows only faces where segments touch directly.
    in_plane_only : bool
        Contacts only within sections: no faces normal to z and in-plane gap filling.  Use it
        for per-section labels that are not linked across z, where a z-neighbour with another
        id may be the same cell.

    Returns
    -------
    InterfaceTable
        Sorted by (A, B), A < B.
    """
    t0 = time.perf_counter()
    vs = _voxel_size(voxel_size)
    seg = np.asarray(segmentation)
    if seg.ndim != 3:
        raise InputError(f"expected a (Z, Y, X) segmentation, got shape {seg.shape}")
    if not np.issubdtype(seg.dtype, np.integer):
        raise InputError(f"segmentation must be integer, got {seg.dtype}")
    if max_gap_voxels < 0:
        raise InputError("max_gap_voxels must be >= 0")
    params = {
        "min_area_nm2": float(min_area_nm2), "background": int(background),
        "max_gap_voxels": float(max_gap_voxels), "in_plane_only": bool(in_plane_only),
    }

    labels, dist = _fill_background(seg, background=background, max_gap=float(max_gap_voxels),
                                    in_plane_only=in_plane_only)
    t_fill = time.perf_counter()
    per_axis = _border_faces(labels, dist, background=background, max_gap=float(max_gap_voxels),
                             in_plane_only=in_plane_only)
    del dist
    t_faces = time.perf_counter()

    face_area = np.array([vs[1] * vs[2], vs[0] * vs[2], vs[0] * vs[1]])
    if per_axis:
        axis = np.concatenate([np.full(f.size, ax, dtype=np.int8) for ax, f, _, _ in per_axis])
        flat = np.concatenate([f for _, f, _, _ in per_axis])
        la = np.concatenate([a for _, _, a, _ in per_axis])
        lb = np.concatenate([b for _, _, _, b in per_axis])
    else:
        axis = np.zeros(0, np.int8)
        flat = np.zeros(0, np.int64)
        la = lb = np.zeros(0, labels.dtype)
    del per_axis
    pairs, iface = _pair_keys(np.minimum(la, lb), np.maximum(la, lb))
    del la, lb
    n = len(pairs)
    area_axes = np.stack(
        [np.bincount(iface, weights=(axis == a) * face_area[a], minlength=n) for a in range(3)],
        axis=1)
    area = area_axes.sum(axis=1)

    keep = area >= min_area_nm2
    remap = np.full(n, -1, dtype=np.int64)
    remap[keep] = np.arange(int(keep.sum()))
    face_keep = keep[iface]
    iface, flat, axis = remap[iface[face_keep]], flat[face_keep], axis[face_keep]
    pairs, area_axes, area = pairs[keep], area_axes[keep], area[keep]
    n = len(pairs)

    # Face centres: the lower voxel plus half a voxel along the face normal.
    coords = np.stack(np.unravel_index(flat, labels.shape)).astype(np.float64)  # (3, F)
    w = face_area[axis]
    centroid = np.empty((n, 3))
    for a in range(3):
        c = (coords[a] + 0.5 * (axis == a)) * vs[a]
        centroid[:, a] = np.bincount(iface, weights=c * w, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        centroid /= area[:, None]
    n_faces = np.bincount(iface, minlength=n).astype(np.int64)
    del coords, w

    # Border voxels: both voxels of every face, once per interface.
    strides = np.array([labels.shape[1] * labels.shape[2], labels.shape[2], 1], dtype=np.int64)
    nvox = np.int64(labels.size)
    both = np.concatenate([flat, flat + strides[axis]])
    key = _unique(np.concatenate([iface, iface]) * nvox + both)
    owner, vflat = key // nvox, key % nvox
    del both, key, flat, axis, iface
    counts = np.bincount(owner, minlength=n).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    voxels = np.stack(np.unravel_index(vflat, labels.shape), axis=1).astype(np.int32)
    side = (labels.reshape(-1)[vflat] == pairs[owner, 1].astype(labels.dtype)).astype(np.int8)
    if n:
        bbox_min = np.minimum.reduceat(voxels, offsets[:-1], axis=0).astype(np.int64)
        bbox_max = np.maximum.reduceat(voxels, offsets[:-1], axis=0).astype(np.int64) + 1
    else:
        bbox_min = bbox_max = np.zeros((0, 3), dtype=np.int64)

    table = InterfaceTable(
        ids=pairs.astype(np.uint64), area_nm2=area, area_axes_nm2=area_axes, n_faces=n_faces,
        centroid_nm=centroid, bbox_min=bbox_min, bbox_max=bbox_max, voxel_offsets=offsets,
        voxels=voxels, voxel_side=side, labels=labels, voxel_size=vs, params=params,
    )
    logger.info(
        "%d interfaces (%d border voxels) in %s voxels: fill %.1f s, faces %.1f s, total %.1f s",
        n, len(voxels), "x".join(map(str, seg.shape)), t_fill - t0, t_faces - t_fill,
        time.perf_counter() - t0,
    )
    return table


# --------------------------------------------------------------------------------------------
# Subvolumes
# --------------------------------------------------------------------------------------------


@dataclass
class InterfaceSubvolumes:
    """The regions of one interface, cut out of the volume.

    Attributes
    ----------
    box : tuple of 3 slices
        The (z, y, x) box of the volume the masks cover: the border's bounding box grown by the
        largest distance, clipped to the volume and then shrunk to the voxels of A, B and the
        border.
    border : (bz, by, bx) bool
        Border voxels (both sides).
    sides : (2, D, bz, by, bx) bool
        ``sides[s, k]``: voxels of side s (0 A, 1 B; filled labels, see
        :attr:`InterfaceTable.labels`) within ``distances_nm[k]`` of the border (cumulative),
        or between ``distances_nm[k - 1]`` (exclusive) and ``distances_nm[k]`` (shells).
    distances_nm : tuple of float
    cumulative : bool
    """

    box: tuple[slice, slice, slice]
    border: np.ndarray
    sides: np.ndarray
    distances_nm: tuple[float, ...]
    cumulative: bool

    def volumes_nm3(self, voxel_size) -> np.ndarray:
        """(2, D) float64 volume of each side region in nm^3."""
        return self.sides.sum(axis=(2, 3, 4)) * float(np.prod(voxel_size))


def _check_distances(distances_nm) -> tuple[float, ...]:
    d = tuple(float(x) for x in distances_nm)
    if not d or any(x <= 0 for x in d) or any(b <= a for a, b in zip(d, d[1:])):
        raise InputError(f"distances_nm must be positive and increasing, got {distances_nm}")
    return d


def interface_subvolumes(
    interfaces: InterfaceTable,
    index: int,
    *,
    distances_nm=DEFAULT_DISTANCES_NM,
    cumulative: bool = True,
) -> InterfaceSubvolumes:
    """Border and per-side subvolumes of one interface.

    The distance to the border is the Euclidean distance in nm (``scipy.ndimage``
    distance transform with the voxel size as sampling, in 3-D also for ``in_plane_only``
    tables: per-section segments have no voxels in other sections anyway).  SynEM's
    subsegments are cumulative (each distance includes the nearer ones), which is the
    default; ``cumulative=False`` gives disjoint shells.

    Parameters
    ----------
    interfaces : InterfaceTable
    index : int
        Row of the interface.
    distances_nm : sequence of float
        Increasing distances from the border, nm.
    cumulative : bool
        Balls (True) or shells (False).

    Returns
    -------
    InterfaceSubvolumes
    """
    d = _check_distances(distances_nm)
    vs = np.asarray(interfaces.voxel_size)
    shape = np.asarray(interfaces.shape)
    margin = np.ceil(d[-1] / vs).astype(np.int64)
    lo = np.maximum(interfaces.bbox_min[index] - margin, 0)
    hi = np.minimum(interfaces.bbox_max[index] + margin, shape)
    a_id, b_id = interfaces.ids[index]
    lab = interfaces.labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    a_mask = lab == a_id
    b_mask = lab == b_id
    # Shrink to the voxels that can be in a region: distance transforms dominate the cost and
    # per-section segments occupy one section of a box several sections deep.
    occupied = a_mask | b_mask
    sub = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = np.flatnonzero(occupied.any(axis=other))
        sub.append(slice(int(nz[0]), int(nz[-1]) + 1))
    sub = tuple(sub)
    a_mask, b_mask = a_mask[sub], b_mask[sub]
    lo = lo + np.array([s.start for s in sub])
    hi = lo + np.array(a_mask.shape)
    border = np.zeros(a_mask.shape, dtype=bool)
    vox = interfaces.border_voxels(index).astype(np.int64) - lo
    border[vox[:, 0], vox[:, 1], vox[:, 2]] = True
    dist = ndi.distance_transform_edt(~border, sampling=vs)
    sides = np.zeros((2, len(d)) + border.shape, dtype=bool)
    for s, mask in enumerate((a_mask, b_mask)):
        previous = -1.0
        for k, dk in enumerate(d):
            region = mask & (dist <= dk)
            if not cumulative:
                region &= dist > previous
            sides[s, k] = region
            previous = dk
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    return InterfaceSubvolumes(box=box, border=border, sides=sides, distances_nm=d,
                               cumulative=cumulative)


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


def _region_names(distances_nm) -> tuple[list[str], list[str]]:
    a = [f"A@{_fmt(x)}nm" for x in distances_nm]
    b = [f"B@{_fmt(x)}nm" for x in distances_nm]
    return a, b


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _region_stats(values: np.ndarray) -> np.ndarray:
    """(C, 9) quantiles, mean, variance, skewness and excess kurtosis of (C, n) values."""
    c, n = values.shape
    if n == 0:
        return np.full((c, len(_STAT_NAMES)), np.nan)
    # Linear interpolation between order statistics (numpy's default quantile method); one
    # sort of the float32 values is several times faster than np.quantile on small regions.
    ordered = np.sort(values, axis=1)
    pos = np.asarray(QUANTILES) * (n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = pos - lo
    q = ordered[:, lo] * (1.0 - frac) + ordered[:, hi] * frac
    v = values.astype(np.float64)
    mean = v.mean(axis=1)
    dev = v - mean[:, None]
    dev2 = dev * dev  # products, not powers: np.power is an order of magnitude slower
    m2 = dev2.mean(axis=1)
    m3 = (dev2 * dev).mean(axis=1)
    m4 = (dev2 * dev2).mean(axis=1)
    # A flat region has no defined shape moments; 0 (symmetric, normal-tailed) keeps the
    # feature finite and is what a near-flat region tends to.
    flat = m2 <= 1e-12 * np.maximum(1.0, mean ** 2)
    safe = np.where(flat, 1.0, m2)
    skew = np.where(flat, 0.0, m3 / safe ** 1.5)
    kurt = np.where(flat, 0.0, m4 / safe ** 2 - 3.0)
    return np.column_stack([q, mean, m2, skew, kurt])


def _principal_extents(points_nm: np.ndarray) -> np.ndarray:
    """Range of the points along their principal axes, longest first (nm)."""
    if len(points_nm) < 2:
        return np.zeros(3)
    centred = points_nm - points_nm.mean(axis=0)
    _, vecs = np.linalg.eigh(centred.T @ centred)
    proj = centred @ vecs
    return np.sort(proj.max(axis=0) - proj.min(axis=0))[::-1]


def feature_names(channel_names, *, distances_nm=DEFAULT_DISTANCES_NM) -> list[str]:
    """Column names of :func:`interface_features` for these channels and distances.

    Region blocks are ``border``, ``A@<d>nm``..., ``B@<d>nm``...; a column is
    ``<region>/<channel>/<stat>`` (stats q0, q25, q50, q75, q100, mean, var, skew, kurt),
    ``<side region>/volume_nm3`` or ``shape/<measure>``.
    """
    d = _check_distances(distances_nm)
    a_regions, b_regions = _region_names(d)
    names = ["shape/area_nm2", "shape/area_plane_nm2", "shape/n_border_voxels",
             "shape/extent0_nm", "shape/extent1_nm", "shape/extent2_nm"]
    names += [f"{r}/volume_nm3" for r in a_regions + b_regions]
    for region in ["border"] + a_regions + b_regions:
        names += [f"{region}/{ch}/{st}" for ch in channel_names for st in _STAT_NAMES]
    return names


def interface_features(
    volume_or_channels,
    interfaces: InterfaceTable,
    *,
    voxel_size,
    spec=None,
    distances_nm=DEFAULT_DISTANCES_NM,
    cumulative: bool = True,
    channel_names=None,
) -> tuple[np.ndarray, list[str]]:
    """One feature row per interface, direction-aware.

    Parameters
    ----------
    volume_or_channels : (Z, Y, X) EM volume or (C, Z, Y, X) float32 channels
        A volume is turned into channels with
        ``detection.synapses.features.compute_features(volume, voxel_size=..., spec=spec)``.
    interfaces : InterfaceTable
        Found on a segmentation of the same shape.
    voxel_size : sequence of 3 float
        (z, y, x) nm; must equal the table's.
    spec : detection.synapses.features.FeatureSpec or None
        Filter bank (default ``FeatureSpec()``); also names the channels.
    distances_nm : sequence of float
        Subvolume distances (SynEM: 40, 80, 160 nm).
    cumulative : bool
        Balls (SynEM) or shells, see :func:`interface_subvolumes`.
    channel_names : list of str or None
        Names of given channels when no `spec` names them (default ``c0, c1, ...``).

    Returns
    -------
    features : (N, F) float32
        Per interface: shape measures (border face area and its plane-corrected value, border
        voxel count, principal-axis extents of the border voxel centres), the volume of each
        side region, then for the border and each side region and channel: quantiles
        (0, .25, .5, .75, 1), mean, variance, skewness, excess kurtosis.  Empty regions give
        NaN, which the classifier handles natively.
    names : list of str
        Column names, see :func:`feature_names`; ``A@``/``B@`` columns swap under
        :func:`swap_sides`, the others are symmetric.
    """
    vs = _voxel_size(voxel_size)
    if not np.allclose(vs, interfaces.voxel_size, rtol=1e-6):
        raise InputError(f"voxel_size {vs} differs from the interfaces' {interfaces.voxel_size}")
    d = _check_distances(distances_nm)
    data = volume_or_channels
    if data.ndim == 3:
        from detection.synapses.features import FeatureSpec, compute_features

        spec = spec if spec is not None else FeatureSpec()
        t0 = time.perf_counter()
        channels = compute_features(np.asarray(data), voxel_size=vs, spec=spec)
        logger.info("feature channels %s in %.1f s", channels.shape, time.perf_counter() - t0)
    elif data.ndim == 4:
        channels = data
    else:
        raise InputError(f"expected (Z, Y, X) or (C, Z, Y, X) data, got shape {data.shape}")
    if tuple(channels.shape[1:]) != interfaces.shape:
        raise InputError(f"channels {channels.shape} do not match the labels {interfaces.shape}")
    n_channels = channels.shape[0]
    if channel_names is None:
        channel_names = spec.channel_names() if spec is not None else [
            f"c{i}" for i in range(n_channels)]
    channel_names = list(channel_names)
    if len(channel_names) != n_channels:
        raise InputError(f"{len(channel_names)} channel names for {n_channels} channels")
    names = feature_names(channel_names, distances_nm=d)

    n = len(interfaces)
    n_regions = 1 + 2 * len(d)
    n_stats = len(_STAT_NAMES)
    n_shape = 6 + 2 * len(d)
    out = np.empty((n, len(names)), dtype=np.float32)
    voxel_volume = float(np.prod(vs))
    t0 = time.perf_counter()
    for i in range(n):
        sv = interface_subvolumes(interfaces, i, distances_nm=d, cumulative=cumulative)
        block = channels[(slice(None),) + sv.box]
        regions = [sv.border] + [sv.sides[0, k] for k in range(len(d))] + [
            sv.sides[1, k] for k in range(len(d))]
        row = np.empty(len(names))
        row[0] = interfaces.area_nm2[i]
        row[1] = np.linalg.norm(interfaces.area_axes_nm2[i])
        row[2] = interfaces.voxel_offsets[i + 1] - interfaces.voxel_offsets[i]
        row[3:6] = _principal_extents(interfaces.border_voxels(i) * np.asarray(vs))
        row[6:n_shape] = [r.sum() * voxel_volume for r in regions[1:]]
        for r, mask in enumerate(regions):
            start = n_shape + r * n_channels * n_stats
            row[start:start + n_channels * n_stats] = _region_stats(block[:, mask]).reshape(-1)
        out[i] = row
        if (i + 1) % 2000 == 0:
            logger.info("features of %d / %d interfaces (%.1f s)", i + 1, n,
                        time.perf_counter() - t0)
    assert n_shape + n_regions * n_channels * n_stats == len(names)
    return out, names


def _swap_permutation(names) -> np.ndarray:
    index = {name: i for i, name in enumerate(names)}
    perm = np.arange(len(names))
    for i, name in enumerate(names):
        region, sep, rest = name.partition("/")
        if region[:2] in ("A@", "B@"):
            partner = ("B@" if region[0] == "A" else "A@") + region[2:] + sep + rest
            if partner not in index:
                raise InputError(f"feature {name!r} has no counterpart {partner!r} to swap with")
            perm[i] = index[partner]
    return perm


def swap_sides(features: np.ndarray, names) -> np.ndarray:
    """The feature rows of the same interfaces seen from the other side (A <-> B).

    Parameters
    ----------
    features : (N, F) array
    names : list of str
        Column names from :func:`interface_features`.

    Returns
    -------
    (N, F) array, a copy with every ``A@...`` column exchanged with its ``B@...`` partner.
    """
    features = np.asarray(features)
    if features.shape[-1] != len(names):
        raise InputError(f"{features.shape[-1]} feature columns but {len(names)} names")
    return features[..., _swap_permutation(names)]


# --------------------------------------------------------------------------------------------
# Labels for training
# --------------------------------------------------------------------------------------------


@dataclass
class InterfaceLabels:
    """Training labels of interfaces from a synapse label volume.

    Attributes
    ----------
    labels : (N,) int8
        0 not synaptic, 1 synaptic with A presynaptic, 2 with B presynaptic, -1 synaptic with
        unknown direction.
    synapse_id : (N,) uint64
        The synapse the label comes from (largest consistent overlap), 0 for none.
    overlap_voxels : (N,) int64
        Voxels of that synapse within the dilated border.
    """

    labels: np.ndarray
    synapse_id: np.ndarray
    overlap_voxels: np.ndarray


def _dilated_border(interfaces: InterfaceTable, rows: slice, margin: np.ndarray):
    """(owner, flat index) of the border voxels of `rows` grown by `margin` voxels per axis."""
    vox = interfaces.voxels[rows].astype(np.int64)
    owner = np.repeat(np.arange(len(interfaces)), interfaces.n_border_voxels)[rows]
    shape = np.asarray(interfaces.shape, dtype=np.int64)
    nvox = np.int64(np.prod(shape))
    grid = np.mgrid[-margin[0]:margin[0] + 1, -margin[1]:margin[1] + 1,
                    -margin[2]:margin[2] + 1].reshape(3, -1).T
    keys = []
    for off in grid:
        nb = vox + off
        inside = np.all((nb >= 0) & (nb < shape), axis=1)
        flat = np.ravel_multi_index(nb[inside].T, tuple(shape))
        keys.append(owner[inside] * nvox + flat)
    key = _unique(np.concatenate(keys))
    return key // nvox, key % nvox


def label_interfaces(
    interfaces: InterfaceTable,
    synapse_labels,
    *,
    pre_side=None,
    margin_nm: float = 20.0,
    min_overlap_voxels: int = 1,
) -> InterfaceLabels:
    """Label interfaces as synaptic (and in which direction) from synapse labels.

    An interface is synaptic when its border voxels, grown by `margin_nm` (a box of
    ``round(margin_nm / voxel size)`` voxels per axis), hold at least `min_overlap_voxels`
    voxels of one synapse.  Of several synapses the one with the largest overlap that fits the
    pair wins: an interface carries one label, so of two reciprocal synapses on one contact
    (A -> B and B -> A) only the larger is learnt.

    Parameters
    ----------
    interfaces : InterfaceTable
    synapse_labels : (Z, Y, X) integer or bool array
        Synapse ids (clefts, PSDs), 0 elsewhere; a mask counts as one synapse.
    pre_side : mapping or None
        synapse id -> presynaptic segment id, or -> (pre, post) segment ids.  A synapse whose
        presynaptic segment is neither A nor B (or whose pair is not {A, B}) belongs to a
        neighbouring contact and does not label this one; a synapse missing from the mapping,
        or no mapping at all, gives -1 (synaptic, direction unknown).
    margin_nm : float
        Growth of the border before the overlap test, nm.
    min_overlap_voxels : int

    Returns
    -------
    InterfaceLabels
    """
    syn = np.asarray(synapse_labels)
    if tuple(syn.shape) != interfaces.shape:
        raise InputError(f"synapse labels {syn.shape} do not match the labels {interfaces.shape}")
    n = len(interfaces)
    margin = np.rint(float(margin_nm) / np.asarray(interfaces.voxel_size)).astype(np.int64)
    flat_syn = syn.reshape(-1)
    owners, synapses = [], []
    # Bounded chunks: each border voxel becomes (2m+1)^3 candidate voxels.
    per_chunk = max(1, (1 << 22) // int(np.prod(2 * margin + 1)))
    cuts = np.searchsorted(interfaces.voxel_offsets,
                           np.arange(0, len(interfaces.voxels), per_chunk))
    bounds = np.unique(np.clip(np.concatenate([[0], cuts, [n]]), 0, n))
    for start, stop in zip(bounds[:-1], bounds[1:]):
        rows = slice(int(interfaces.voxel_offsets[start]), int(interfaces.voxel_offsets[stop]))
        owner, flat = _dilated_border(interfaces, rows, margin)
        s = flat_syn[flat]
        hit = s != 0
        owners.append(owner[hit])
        synapses.append(s[hit].astype(np.uint64))
    owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
    sid = np.concatenate(synapses) if synapses else np.zeros(0, np.uint64)

    labels = np.zeros(n, dtype=np.int8)
    best_id = np.zeros(n, dtype=np.uint64)
    best_overlap = np.zeros(n, dtype=np.int64)
    if owner.size:
        pairs, inverse = _pair_keys(owner.astype(np.uint64), sid)
        counts = np.bincount(inverse, minlength=len(pairs))
        # Largest overlap first, so the first fitting synapse of each interface wins.
        for k in np.argsort(-counts, kind="stable"):
            i, s_id, c = int(pairs[k, 0]), int(pairs[k, 1]), int(counts[k])
            if best_id[i] or c < min_overlap_voxels:
                continue
            a_id, b_id = (int(x) for x in interfaces.ids[i])
            info = None if pre_side is None else pre_side.get(s_id)
            if info is None:
                label = -1
            elif np.ndim(info) == 0:
                pre = int(info)
                label = 1 if pre == a_id else 2 if pre == b_id else 0
            else:
                pre, post = (int(x) for x in info)
                label = 0 if {pre, post} != {a_id, b_id} else (1 if pre == a_id else 2)
            if label == 0:
                continue
            labels[i], best_id[i], best_overlap[i] = label, s_id, c
    logger.info("%d of %d interfaces synaptic (%d A->B, %d B->A, %d direction unknown)",
                int((labels != 0).sum()), n, int((labels == 1).sum()), int((labels == 2).sum()),
                int((labels == -1).sum()))
    return InterfaceLabels(labels=labels, synapse_id=best_id, overlap_voxels=best_overlap)


# --------------------------------------------------------------------------------------------
# Classifier
# --------------------------------------------------------------------------------------------


def _augment(features: np.ndarray, labels: np.ndarray, names) -> tuple[np.ndarray, np.ndarray]:
    """Each interface as (features, A presynaptic?) and (swapped, B presynaptic?).

    Direction-unknown synapses (-1) are positive both ways, which teaches synapticness without
    direction.
    """
    labels = np.asarray(labels)
    x = np.concatenate([features, swap_sides(features, names)])
    y = np.concatenate([(labels == 1) | (labels == -1), (labels == 2) | (labels == -1)])
    return x, y.astype(np.int8)


@dataclass
class InterfaceClassifier:
    """Scores both directions of interfaces with one model on direction-aware features.

    Attributes
    ----------
    model : sklearn.ensemble.HistGradientBoostingClassifier
        Binary: "the A side of this row is presynaptic at a synapse".
    feature_names : list of str
    voxel_size : tuple of float
        (z, y, x) nm of the training data.
    metadata : dict
        JSON-serialisable: feature spec (``FeatureSpec.to_dict()`` or None), distances,
        cumulative, training figures, versions.
    """

    model: object
    feature_names: list[str]
    voxel_size: tuple[float, float, float]
    metadata: dict = field(default_factory=dict)

    def _check_features(self, features, names) -> np.ndarray:
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != len(self.feature_names):
            raise InterfaceModelMismatchError(
                f"expected (N, {len(self.feature_names)}) features, got {features.shape}")
        if names is not None and list(names) != self.feature_names:
            raise InterfaceModelMismatchError("feature names differ from the model's")
        return features

    def predict_scores(self, features, *, names=None) -> np.ndarray:
        """(N, 2) float64 probabilities of "synaptic, A presynaptic" and "synaptic, B presynaptic".

        Parameters
        ----------
        features : (N, F) array from :func:`interface_features`
        names : list of str or None
            When given, checked against the model's feature names.
        """
        features = self._check_features(features, names)
        if len(features) == 0:
            return np.zeros((0, 2))
        a = self.model.predict_proba(features)[:, 1]
        b = self.model.predict_proba(swap_sides(features, self.feature_names))[:, 1]
        return np.column_stack([a, b])

    def predict_labels(self, features, *, threshold: float = 0.5, names=None) -> np.ndarray:
        """(N,) int8: 0 when neither score reaches `threshold`, else 1 or 2 (higher score)."""
        scores = self.predict_scores(features, names=names)
        out = np.where(scores[:, 0] >= scores[:, 1], 1, 2).astype(np.int8)
        out[scores.max(axis=1, initial=0.0) < threshold] = 0
        return out

    def save(self, path) -> Path:
        """Write a JSON header line (readable without unpickling) followed by the pickled model."""
        path = Path(path)
        header = {
            "format": MODEL_FORMAT, "version": MODEL_FORMAT_VERSION,
            "voxel_size": list(self.voxel_size), "feature_names": self.feature_names,
            "metadata": self.metadata,
        }
        with open(path, "wb") as f:
            f.write(json.dumps(header).encode() + b"\n")
            pickle.dump(self.model, f, protocol=pickle.HIGHEST_PROTOCOL)
        return path

    @classmethod
    def load(cls, path, *, voxel_size,
             allow_other_voxel_size: bool = False) -> "InterfaceClassifier":
        """Read a model for data of `voxel_size` (z, y, x) nm.

        Raises :class:`InterfaceModelMismatchError` when the model was trained at another voxel
        size, unless `allow_other_voxel_size`: texture and distance features are in nm but their
        values still depend on the resolution.  Model files contain pickled data: load only
        files you trust.
        """
        path = Path(path)
        try:
            with open(path, "rb") as f:
                header = json.loads(f.readline())
                if header.get("format") != MODEL_FORMAT:
                    raise InputError("not an interface classifier file")
                if header["version"] > MODEL_FORMAT_VERSION:
                    raise InterfaceModelMismatchError(
                        f"{path.name}: model format {header['version']} is newer than this "
                        f"library reads ({MODEL_FORMAT_VERSION})")
                model = pickle.load(f)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError,
                pickle.UnpicklingError) as exc:
            if isinstance(exc, InterfaceModelMismatchError):
                raise
            raise InterfaceModelMismatchError(
                f"{path.name}: cannot read model file ({exc})") from exc
        trained = tuple(float(v) for v in header["voxel_size"])
        given = _voxel_size(voxel_size)
        if not np.allclose(given, trained, rtol=1e-3) and not allow_other_voxel_size:
            raise InterfaceModelMismatchError(
                f"{path.name} was trained on voxels of {trained} nm (z, y, x) but the data has "
                f"{given} nm; texture differs between resolutions: retrain, or pass "
                "allow_other_voxel_size=True")
        return cls(model=model, feature_names=list(header["feature_names"]),
                   voxel_size=trained, metadata=header["metadata"])


def train_interface_classifier(
    features,
    labels,
    *,
    names,
    voxel_size,
    spec=None,
    distances_nm=DEFAULT_DISTANCES_NM,
    cumulative: bool = True,
    random_state: int = 0,
    **hgb_params,
) -> InterfaceClassifier:
    """Fit the interface classifier on the direction-augmented set.

    Every interface contributes two rows: its features with target "label == 1" (A
    presynaptic) and its swapped features with target "label == 2"; labels of -1 (synaptic,
    direction unknown) are positive both ways, so a set with only -1 synapses trains a
    direction-blind synapse detector.

    Parameters
    ----------
    features : (N, F) array
        From :func:`interface_features`.
    labels : (N,) int
        0, 1, 2 or -1 (see :class:`InterfaceLabels`).
    names : list of str
        Feature names (needed to swap sides).
    voxel_size : sequence of 3 float
        (z, y, x) nm of the training data, recorded in the model.
    spec : detection.synapses.features.FeatureSpec or None
        Recorded (``spec.to_dict()``) so the features can be recomputed the same way.
    distances_nm, cumulative
        As used for the features; recorded.
    random_state : int
    **hgb_params
        Passed to ``sklearn.ensemble.HistGradientBoostingClassifier`` (defaults here:
        ``max_iter=200, learning_rate=0.1, l2_regularization=1.0, early_stopping=False``).

    Returns
    -------
    InterfaceClassifier
    """
    import sklearn
    from sklearn.ensemble import HistGradientBoostingClassifier

    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels).astype(np.int64)
    names = list(names)
    if features.ndim != 2 or features.shape[1] != len(names):
        raise InputError(f"features {features.shape} do not match {len(names)} names")
    if labels.shape != (len(features),):
        raise InputError(f"{labels.shape} labels for {len(features)} interfaces")
    if not np.isin(labels, (-1, 0, 1, 2)).all():
        raise InputError("labels must be 0, 1, 2 or -1")
    x, y = _augment(features, labels, names)
    if y.min() == y.max():
        raise InputError("training needs both synaptic and non-synaptic interfaces")
    params = {"max_iter": 200, "learning_rate": 0.1, "l2_regularization": 1.0,
              "early_stopping": False}
    params.update(hgb_params)
    model = HistGradientBoostingClassifier(random_state=random_state, **params)
    t0 = time.perf_counter()
    model.fit(x, y)
    seconds = time.perf_counter() - t0
    logger.info("trained on %d rows (%d positive) x %d features in %.1f s",
                len(y), int(y.sum()), x.shape[1], seconds)
    metadata = {
        "feature_spec": spec.to_dict() if spec is not None else None,
        "distances_nm": list(_check_distances(distances_nm)),
        "cumulative": bool(cumulative),
        "hgb_params": {k: v for k, v in params.items() if _jsonable(v)},
        "training": {
            "n_interfaces": int(len(labels)),
            "n_a_pre": int((labels == 1).sum()), "n_b_pre": int((labels == 2).sum()),
            "n_direction_unknown": int((labels == -1).sum()), "seconds": round(seconds, 2),
        },
        "sklearn_version": sklearn.__version__,
        "format_version": MODEL_FORMAT_VERSION,
    }
    return InterfaceClassifier(model=model, feature_names=names,
                               voxel_size=_voxel_size(voxel_size), metadata=metadata)


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True
