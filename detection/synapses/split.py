"""Split a synapse component into instances where its probability has separate maxima.

Hysteresis components (:mod:`detection.synapses.instances`) join neighbouring synapses whenever the
probability between them stays above the low threshold, as it does for synapses of adjacent
sections; raising the threshold to part them breaks other synapses apart. The split works on
one component at a time:

1. the probability, zero outside the component, is smoothed with a Gaussian of ``smooth_nm``
   (per axis in voxels from the voxel size, so anisotropic sections are handled);
2. seeds are the local maxima of the smoothed probability inside the component, taken from the
   highest down, each kept only when it lies at least ``min_distance_nm`` (physical distance)
   from every seed kept before;
3. a seed whose basin is joined to a higher seed's basin by a pass no lower than ``min_depth``
   below its own peak is merged into it (the dynamics of the maximum must reach ``min_depth``);
4. the component is divided among the remaining seeds by a watershed of the smoothed
   probability, and pieces below ``min_piece_voxels`` join a neighbour.

Only the component's own voxels and probabilities enter, so the result depends neither on the
blocking of the volume nor on neighbouring components.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.segmentation import watershed

_FACES = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class SplitParameters:
    """How components are split (see the module docstring).

    smooth_nm : Gaussian sigma in nm; axes where it is below 0.3 voxel are not smoothed
    min_distance_nm : seeds closer than this (nm) to a higher seed are dropped
    min_depth : probability drop from a seed's peak to the pass into a higher seed's basin
        below which the two basins are one instance
    min_piece_voxels : a piece smaller than this joins the touching piece it shares the
        highest pass with, smallest first (0: pieces of any size)
    """

    smooth_nm: float = 40.0
    min_distance_nm: float = 400.0
    min_depth: float = 0.1
    min_piece_voxels: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _sigma(smooth_nm: float, voxel_size) -> tuple[float, ...]:
    sigma = [float(smooth_nm) / float(v) for v in voxel_size]
    return tuple(s if s >= 0.3 else 0.0 for s in sigma)


def split_component(mask: np.ndarray, probability: np.ndarray, *, voxel_size,
                    parameters: SplitParameters) -> np.ndarray:
    """Divide one connected component into instances.

    Parameters
    ----------
    mask : (Z, Y, X) bool ndarray
        The component (face-connected), within a box that holds it.
    probability : (Z, Y, X) float ndarray
        Synapse probability over the same box (values outside ``mask`` are not read).
    voxel_size : (3,) float, nm
    parameters : SplitParameters

    Returns
    -------
    (Z, Y, X) int32 ndarray: 1..k inside ``mask`` (k >= 1 when the mask is not empty), 0 outside.
        Pieces are numbered in the order of their seeds: highest peak first.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    smooth = smoothed(mask, probability, voxel_size=voxel_size, smooth_nm=parameters.smooth_nm)
    seeds = _seeds(mask, smooth, voxel_size, parameters.min_distance_nm)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(seeds.T)] = np.arange(1, len(seeds) + 1)
    pieces = watershed(-smooth, markers, mask=mask, connectivity=_FACES)
    if len(seeds) > 1 and (parameters.min_depth > 0 or parameters.min_piece_voxels > 0):
        pieces = _merge_basins(pieces, smooth, smooth[tuple(seeds.T)], parameters.min_depth,
                               parameters.min_piece_voxels)
    return pieces


def smoothed(mask, probability, *, voxel_size, smooth_nm) -> np.ndarray:
    """The component's probability (zero outside it) smoothed with a Gaussian in nm, float64."""
    values = np.where(mask, np.asarray(probability, dtype=np.float64), 0.0)
    sigma = _sigma(smooth_nm, voxel_size)
    if not any(sigma):
        return values
    return ndimage.gaussian_filter(values, sigma, mode="constant", truncate=4.0)


def _seeds(mask, smooth, voxel_size, min_distance_nm) -> np.ndarray:
    """(K, 3) voxel positions of the seeds, highest first (ties broken by position)."""
    inside = np.where(mask, smooth, -np.inf)
    peak = mask & (inside == ndimage.maximum_filter(inside, footprint=np.ones((3, 3, 3), bool),
                                                    mode="constant", cval=-np.inf))
    coords = np.argwhere(peak)
    values = smooth[peak]
    order = np.lexsort((*coords.T[::-1], -values))
    coords = coords[order]
    if min_distance_nm <= 0 or len(coords) == 1:
        return coords
    points = coords * np.asarray(voxel_size, dtype=float)
    tree = cKDTree(points)
    kept = np.zeros(len(coords), bool)
    suppressed = np.zeros(len(coords), bool)
    for i in range(len(coords)):
        if suppressed[i]:
            continue
        kept[i] = True
        suppressed[tree.query_ball_point(points[i], min_distance_nm)] = True
    return coords[kept]


def _merge_basins(pieces, smooth, peaks, min_depth, min_voxels) -> np.ndarray:
    """Merge each basin whose pass into a higher basin lies less than ``min_depth`` below its
    peak, lowest peaks first (the dynamics of a maximum, computed on the watershed basins);
    then each group smaller than ``min_voxels`` into the neighbour of highest pass."""
    n = len(peaks)
    # The pass between two touching basins: the highest value over their common border, where
    # a border pair is valued by the lower of its two voxels.
    keys, values = [], []
    for axis in range(3):
        a = np.moveaxis(pieces, axis, 0)
        s = np.moveaxis(smooth, axis, 0)
        la, lb = a[:-1], a[1:]
        touch = (la > 0) & (lb > 0) & (la != lb)
        i, j = la[touch].astype(np.int64), lb[touch].astype(np.int64)
        keys.append(np.minimum(i, j) * (n + 1) + np.maximum(i, j))
        values.append(np.minimum(s[:-1][touch], s[1:][touch]))
    keys, values = np.concatenate(keys), np.concatenate(values)
    unique, inverse = np.unique(keys, return_inverse=True)
    highest = np.full(len(unique), -np.inf)
    np.maximum.at(highest, inverse, values)
    passes = {divmod(int(k), n + 1): float(v) for k, v in zip(unique, highest)}
    parent = np.arange(n + 1)

    def root(k):
        while parent[k] != k:
            k = parent[k]
        return k

    # Seeds are numbered highest first, so the lowest peaks are merged first; a merged basin
    # takes the peak of its higher partner, which keeps the later comparisons valid.
    for label in range(n, 1, -1):
        r = root(label)
        best, best_pass = None, -np.inf
        for (p, q), value in passes.items():
            if root(p) == r and root(q) != r or root(q) == r and root(p) != r:
                other = root(q) if root(p) == r else root(p)
                if peaks[other - 1] >= peaks[r - 1] and value > best_pass:
                    best, best_pass = other, value
        if best is not None and peaks[r - 1] - best_pass < min_depth:
            parent[r] = best

    sizes = np.bincount(pieces.ravel(), minlength=n + 1)
    while min_voxels > 0:
        roots = np.array([root(k) for k in range(n + 1)])
        groups = np.unique(roots[1:])
        if len(groups) < 2:
            break
        group_size = {g: int(sizes[roots == g].sum()) for g in groups}
        # The smallest group first; among equals the one of the lowest peak (highest index).
        small = min(groups, key=lambda g: (group_size[g], -g))
        if group_size[small] >= min_voxels:
            break
        best, best_pass = None, -np.inf
        for (p, q), value in passes.items():
            rp, rq = roots[p], roots[q]
            if rp != rq and small in (rp, rq) and value > best_pass:
                best, best_pass = (rq if rp == small else rp), value
        parent[max(small, best)] = min(small, best)
    roots = np.array([root(k) for k in range(n + 1)])
    _, compact = np.unique(roots, return_inverse=True)
    return compact[pieces].astype(np.int32)
