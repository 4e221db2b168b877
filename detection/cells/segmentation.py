"""Cells from affinities: seeded watershed into fragments, then waterz's agglomeration, whole or
block by block.

1. Fragments (:func:`fragments`): a voxel's boundary value is one minus the weakest affinity of
   its edges (:func:`boundary_map`); seeds are the maxima of the distance (in nm) to the boundary, and a seeded
   watershed on the boundary grows them until they meet. Serial sections (sections much thicker
   than pixels) get 2D fragments per section, which never cross a section: whether a profile
   continues into the next section is the agglomeration's to decide, from the z affinities.
2. Agglomeration (:func:`agglomerate`): waterz (Funke et al. 2019) builds the region graph of
   the fragments and merges, lowest score first, every pair whose score ``1 - mean affinity``
   of the edges between them stays below the threshold. The threshold is chosen on held-out
   labelled data and stored with the affinity model (``model.agglomeration``).
3. Block-wise (:func:`block_fragments`, :func:`block_merges`, :func:`stitch`,
   :func:`relabel`): fragments are made per block (ids made unique with each block's offset;
   the watershed sees a margin around the block, so that a cell clipping into it is flooded
   from its own seed, and keeps the block's voxels); each block then agglomerates its
   fragments together with
   its neighbours' within a context margin and keeps the merges that involve its own fragments;
   a union-find over all blocks' merges gives the cells. A merge any block makes is kept, so
   the block-wise result differs from the whole volume's only near block faces and through the
   limited context each decision sees; :func:`segment_blockwise` runs the same steps in memory
   so the difference is measured (see docs/cells.md).

Ids: fragment and cell ids are uint64; 0 is never used by fragments (the watershed fills the
volume, up to a ``mask``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree
from skimage.segmentation import watershed

from detection.errors import InputError
from detection.io.sources import iter_blocks

#: waterz's default scoring: one minus the mean affinity of the edges between two regions.
MEAN_AFFINITY = "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>"
#: A robust alternative, the median affinity (a histogram quantile).
MEDIAN_AFFINITY = "OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue, 256>>"
SCORING = {"mean": MEAN_AFFINITY, "median": MEDIAN_AFFINITY}


@dataclass(frozen=True)
class FragmentParameters:
    """How the watershed seeds and grows fragments."""

    boundary_threshold: float = 0.5  # voxels whose boundary exceeds this are never seeds
    seed_distance_nm: float = 20.0   # seeds at least this far apart (distance-map maxima)
    smoothing_nm: float = 10.0       # Gaussian smoothing of the distance map before the maxima
    in_plane: bool | None = None     # 2D fragments per section; None: when sections are thick
    min_size: int = 0                # fragments smaller than this join their best neighbour

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def boundary_map(affs: np.ndarray, *, in_plane: bool = False) -> np.ndarray:
    """How likely each voxel lies on a cell boundary: one minus the weakest affinity among the
    edges it shares with its face neighbours (in-plane ones only for ``in_plane``), float32.

    Both voxels of a cut edge are marked, so two cells that touch with no membrane between them
    (dense FIB-SEM labels) are parted by a boundary two voxels thick; edges leaving the volume
    do not count."""
    affs = _check_affinities(affs)
    weakest = np.ones(affs.shape[1:], np.float32)
    for c in ((1, 2) if in_plane else (0, 1, 2)):
        here = tuple(slice(1, None) if a == c else slice(None) for a in range(3))
        there = tuple(slice(None, -1) if a == c else slice(None) for a in range(3))
        edge = affs[c][here]
        np.minimum(weakest[here], edge, out=weakest[here])
        np.minimum(weakest[there], edge, out=weakest[there])
    return 1.0 - weakest


def _check_affinities(affs) -> np.ndarray:
    affs = np.asarray(affs)
    if affs.ndim != 4 or affs.shape[0] < 3:
        raise InputError(f"affinities must be (3, Z, Y, X), not {affs.shape}")
    return affs


def serial_sections(voxel_size) -> bool:
    """Whether sections are at least twice as thick as pixels (2D fragments then)."""
    return float(voxel_size[0]) >= 2.0 * min(float(v) for v in voxel_size[1:])


def _seeds(boundary: np.ndarray, mask, sampling, p: FragmentParameters):
    inside = boundary < p.boundary_threshold
    if mask is not None:
        inside &= mask
    distance = ndi.distance_transform_edt(inside, sampling=sampling).astype(np.float32)
    if p.smoothing_nm > 0:
        sigma = [p.smoothing_nm / s for s in sampling]
        distance = ndi.gaussian_filter(distance, sigma)
    size = [max(1, round(2 * p.seed_distance_nm / s) | 1) for s in sampling]
    peaks = (distance == ndi.maximum_filter(distance, size=size)) & inside & (distance > 0)
    seeds, n = ndi.label(peaks)
    return seeds, n, distance


def _watershed_one(boundary, mask, sampling, p: FragmentParameters):
    seeds, n, _ = _seeds(boundary, mask, sampling, p)
    if n == 0:
        # No voxel clear of the boundary: the least boundary-like voxel seeds one fragment.
        seeds = np.zeros(boundary.shape, np.int32)
        allowed = np.where(mask, boundary, np.inf) if mask is not None else boundary
        if np.isfinite(allowed).any():
            seeds[np.unravel_index(np.argmin(allowed), boundary.shape)] = 1
            n = 1
    labels = watershed(boundary, seeds, mask=mask)
    if p.min_size > 1 and n > 1:
        labels = _absorb_small(labels, boundary, p.min_size)
    return labels.astype(np.uint64), int(labels.max())


def _absorb_small(labels, boundary, min_size):
    """Fragments below ``min_size`` voxels are dropped and the watershed regrows their voxels
    from the remaining fragments."""
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if not small.any() or small[1:].all():
        return labels
    keep = np.where(small[labels], 0, labels)
    mask = labels > 0
    regrown = watershed(boundary, keep, mask=mask)
    return _consecutive(regrown)


def _consecutive(labels):
    ids, inverse = np.unique(labels, return_inverse=True)
    out = inverse.reshape(labels.shape)
    if ids[0] != 0:
        out = out + 1
    return out


def fragments(affs: np.ndarray, *, voxel_size, mask: np.ndarray | None = None,
              parameters: FragmentParameters = FragmentParameters()) -> tuple[np.ndarray, int]:
    """Fragments (uint64, 1..n, 0 outside ``mask``) of nearest-neighbour affinities
    (3, Z, Y, X), and their number ``n``."""
    affs = _check_affinities(affs)
    voxel_size = tuple(float(v) for v in voxel_size)
    in_plane = serial_sections(voxel_size) if parameters.in_plane is None else parameters.in_plane
    if mask is not None and np.shape(mask) != affs.shape[1:]:
        raise InputError(f"mask {np.shape(mask)} must have the affinities' shape {affs.shape[1:]}")
    boundary = boundary_map(affs, in_plane=in_plane)
    if not in_plane:
        return _watershed_one(boundary, mask, voxel_size, parameters)
    out = np.zeros(boundary.shape, np.uint64)
    total = 0
    for z in range(boundary.shape[0]):
        labels, n = _watershed_one(boundary[z], None if mask is None else mask[z],
                                   voxel_size[1:], parameters)
        out[z] = np.where(labels > 0, labels + np.uint64(total), 0)
        total += n
    return out, total


@contextlib.contextmanager
def _quiet_stdout():
    """waterz's C++ core prints its progress on the process's standard output; keep it out of
    command output and logs."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)


def agglomerate(affs: np.ndarray, fragments: np.ndarray, thresholds, *, scoring: str = "mean",
                history: bool = False):
    """Segmentations of ``fragments`` merged by waterz up to each of ``thresholds`` (ascending),
    yielded one at a time as (Z, Y, X) uint64 arrays (copies), or with ``history`` as
    ``(segmentation, merges)``, ``merges`` an (n, 3) float64 array of (a, b, score) per merge
    since the previous threshold (a and b the merged regions' ids before the merge). A
    segment's id is one of its fragments' ids."""
    import waterz

    affs = np.ascontiguousarray(_check_affinities(affs)[:3], dtype=np.float32)
    frag = np.ascontiguousarray(fragments, dtype=np.uint64).copy()
    if frag.shape != affs.shape[1:]:
        raise InputError(f"fragments {frag.shape} must have the affinities' shape "
                         f"{affs.shape[1:]}")
    if scoring not in SCORING:
        raise InputError(f"scoring {scoring!r}: expected one of {sorted(SCORING)}")
    thresholds = sorted(float(t) for t in thresholds)
    if not frag.any():
        for _ in thresholds:
            yield (frag.copy(), np.zeros((0, 3))) if history else frag.copy()
        return
    # waterz sizes its tables by the largest id: give it 1..n, and map its ids back.
    ids, inverse = np.unique(frag, return_inverse=True)
    if ids[0] != 0:
        ids = np.concatenate([[0], ids]).astype(np.uint64)
        inverse = inverse + 1
    frag = inverse.reshape(frag.shape).astype(np.uint64)
    runs = waterz.agglomerate(affs, thresholds, fragments=frag, scoring_function=SCORING[scoring],
                              return_merge_history=history)
    while True:
        with _quiet_stdout():
            try:
                out = next(runs)
            except StopIteration:
                return
        if history:
            seg, merges = out
            table = np.array([(ids[m["a"]], ids[m["b"]], m["score"]) for m in merges],
                             np.float64).reshape(-1, 3)
            yield ids[seg], table
        else:
            yield ids[out]


def segment(affs: np.ndarray, *, voxel_size, threshold: float, mask=None,
            parameters: FragmentParameters = FragmentParameters(),
            scoring: str = "mean") -> np.ndarray:
    """Cells of a whole volume: fragments, agglomerated up to ``threshold``."""
    frag, _ = fragments(affs, voxel_size=voxel_size, mask=mask, parameters=parameters)
    return next(agglomerate(affs, frag, [threshold], scoring=scoring))


# -- block-wise ---------------------------------------------------------------------------

#: Fragment ids of block ``i`` start at ``i * BLOCK_ID_STRIDE + 1``.
BLOCK_ID_STRIDE = 2**32


def block_fragments(affs: np.ndarray, *, block_index: int, voxel_size, core=None, mask=None,
                    parameters: FragmentParameters = FragmentParameters()) -> np.ndarray:
    """Fragments of one block, numbered from ``block_index * BLOCK_ID_STRIDE + 1`` so that no
    two blocks share an id.

    ``affs`` covers the block grown by a halo and ``core`` (slices into it) is the block; the
    watershed runs on the whole region and only the core is returned, so a cell that only clips
    into the block is flooded from its own seed in the halo instead of by its neighbours'
    seeds in the block (which would put voxels of two cells in one fragment). Without ``core``,
    the fragments of ``affs`` alone, ending at its faces."""
    frag, _ = fragments(affs, voxel_size=voxel_size, mask=mask, parameters=parameters)
    if core is not None:
        frag = frag[tuple(core)]
    ids, inverse = np.unique(frag, return_inverse=True)
    frag = inverse.reshape(frag.shape).astype(np.uint64)
    if ids[0] != 0:
        frag += np.uint64(1)
    n = int(frag.max())
    if n >= BLOCK_ID_STRIDE:
        raise InputError(f"block {block_index} holds {n} fragments, more than a block may "
                         f"({BLOCK_ID_STRIDE - 1}); use smaller blocks")
    offset = np.uint64(block_index) * np.uint64(BLOCK_ID_STRIDE)
    return np.where(frag > 0, frag + offset, np.uint64(0))


def block_merges(affs: np.ndarray, fragments: np.ndarray, core, *, threshold: float,
                 scoring: str = "mean") -> np.ndarray:
    """The fragment pairs one block joins: waterz agglomerates the fragments of a region (the
    block's core with a context margin, its neighbours' fragments included) up to
    ``threshold``; every fragment that has voxels in ``core`` (slices into the region) is
    paired with the smallest fragment id of its segment in the whole region.

    Returns an (n, 2) uint64 array of (fragment, representative) pairs, representative !=
    fragment."""
    seg = next(agglomerate(affs, fragments, [threshold], scoring=scoring))
    frag = np.asarray(fragments, np.uint64)
    pairs = np.unique(np.stack([seg[frag > 0], frag[frag > 0]], axis=1), axis=0)
    if not len(pairs):
        return np.zeros((0, 2), np.uint64)
    # The smallest fragment of each segment represents it (pairs sorted by segment, fragment).
    first = np.r_[True, pairs[1:, 0] != pairs[:-1, 0]]
    representative = pairs[first, 1][np.cumsum(first) - 1]
    inner = np.unique(frag[core])
    own = np.isin(pairs[:, 1], inner[inner > 0]) & (pairs[:, 1] != representative)
    return np.stack([pairs[own, 1], representative[own]], axis=1).astype(np.uint64)


def stitch(fragment_ids: np.ndarray, merges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cells of all fragments from every block's merges (a union-find, as connected
    components).

    Returns ``(fragment_ids, cell_ids)``: sorted fragment ids and their cells, numbered 1..n in
    the order of each cell's smallest fragment id."""
    ids = np.unique(np.asarray(fragment_ids, np.uint64))
    ids = ids[ids > 0]
    merges = np.asarray(merges, np.uint64).reshape(-1, 2)
    if len(merges):
        a, b = np.searchsorted(ids, merges[:, 0]), np.searchsorted(ids, merges[:, 1])
        if (a >= len(ids)).any() or (b >= len(ids)).any() or \
                (ids[np.minimum(a, len(ids) - 1)] != merges[:, 0]).any() or \
                (ids[np.minimum(b, len(ids) - 1)] != merges[:, 1]).any():
            raise InputError("a merge names a fragment that no block wrote")
    else:
        a = b = np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(len(ids), len(ids)))
    _, components = connected_components(graph, directed=False)
    # Renumber components by their first (smallest) fragment: components of sorted ids.
    _, first_index = np.unique(components, return_index=True)
    order = np.argsort(first_index)
    rank = np.empty(len(order), np.uint64)
    rank[order] = np.arange(1, len(order) + 1, dtype=np.uint64)
    return ids, rank[components]


def relabel(fragments: np.ndarray, fragment_ids: np.ndarray, cell_ids: np.ndarray) -> np.ndarray:
    """Fragments replaced by their cells (0 stays 0); every non-zero fragment must be listed."""
    fragments = np.asarray(fragments, np.uint64)
    out = np.zeros(fragments.shape, np.uint64)
    nonzero = fragments > 0
    if not nonzero.any():
        return out
    values = fragments[nonzero]
    index = np.searchsorted(fragment_ids, values)
    index = np.minimum(index, len(fragment_ids) - 1)
    if len(fragment_ids) == 0 or (fragment_ids[index] != values).any():
        raise InputError("the block holds fragments that the stitched table does not list")
    out[nonzero] = cell_ids[index]
    return out


def grow_box(box, margin, shape):
    """``box`` (3 slices) grown by ``margin`` voxels per axis, clipped to ``shape``."""
    return tuple(slice(max(0, b.start - m), min(s, b.stop + m)) for b, m, s in
                 zip(box, margin, shape))


def inner_box(box, region):
    """``box`` as slices into ``region`` (which holds it)."""
    return tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, region))


def segment_blockwise(affs: np.ndarray, *, voxel_size, threshold: float, block_shape,
                      context, fragment_context=None, mask=None,
                      parameters: FragmentParameters = FragmentParameters(),
                      scoring: str = "mean") -> np.ndarray:
    """The block-wise path in memory, with the functions the block jobs call: fragments per
    block (the watershed seeing ``fragment_context`` voxels around it, by default
    ``context``; zeros: fragments end at the block's faces), merges per block with ``context``
    voxels around it, stitched, relabelled."""
    fragment_context = context if fragment_context is None else fragment_context
    affs = _check_affinities(affs)
    shape = affs.shape[1:]
    frag = np.zeros(shape, np.uint64)
    boxes = list(iter_blocks(shape, block_shape))
    for i, box in enumerate(boxes):
        region = grow_box(box, fragment_context, shape)
        frag[box] = block_fragments(affs[(slice(None),) + region], block_index=i,
                                    voxel_size=voxel_size, core=inner_box(box, region),
                                    mask=None if mask is None else mask[region],
                                    parameters=parameters)
    merges = []
    for box in boxes:
        region = grow_box(box, context, shape)
        merges.append(block_merges(affs[(slice(None),) + region], frag[region],
                                   inner_box(box, region),
                                   threshold=threshold, scoring=scoring))
    ids, cells = stitch(frag, np.concatenate(merges) if merges else np.zeros((0, 2)))
    return relabel(frag, ids, cells)


# -- the agglomeration's record, for reports of likely errors -----------------------------

def agglomeration_record(affs: np.ndarray, fragments: np.ndarray, cells: np.ndarray, *,
                         merges: np.ndarray | None = None) -> tuple[dict, dict]:
    """What the agglomeration decided, per cell and per pair of touching cells: the input of
    :func:`detection.cells.evaluation.likely_errors`.

    Returns ``(cells, edges)``: ``cells`` {"id", "voxels", "last_merge"} (the score of the
    weakest merge inside the cell: the largest of its fragments' merge scores, nan for a cell of
    one fragment) and ``edges`` {"a", "b", "score", "contact"} (touching cells a < b, the score
    ``1 - mean affinity`` over their contact, and the contact's face count). ``merges`` is the
    (n, 3) merge history of :func:`agglomerate`; without it (the block-wise path), ``last_merge``
    is the bottleneck of the cell's fragment graph: the highest contact score its minimum
    spanning tree needs."""
    affs = _check_affinities(affs)
    cells = np.asarray(cells, np.uint64)
    fragments = np.asarray(fragments, np.uint64)
    ids, voxels = np.unique(cells[cells > 0], return_counts=True)
    # Mean affinity between touching cells, and between touching fragments of one cell.
    sums: dict = {}
    for axis in range(3):
        here = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        there = tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))
        ca, cb = cells[here].ravel(), cells[there].ravel()
        fa, fb = fragments[here].ravel(), fragments[there].ravel()
        aff = affs[axis][here].ravel()
        for key, (x, y, same) in (("cells", (ca, cb, False)), ("frags", (fa, fb, True))):
            keep = (x != y) & (x > 0) & (y > 0)
            if same:
                keep &= ca == cb
            lo, hi = np.minimum(x[keep], y[keep]), np.maximum(x[keep], y[keep])
            sums.setdefault(key, []).append((lo, hi, aff[keep], ca[keep]))
    edges = _mean_by_pair(sums["cells"])
    last = np.full(len(ids), np.nan, np.float32)
    if merges is not None and len(merges):
        # Each merge belongs to the cell that holds its fragments.
        frag_ids, frag_cells = _fragment_cells(fragments, cells)
        a = merges[:, 0].astype(np.uint64)
        where = np.searchsorted(frag_ids, a)
        ok = (where < len(frag_ids))
        ok[ok] &= frag_ids[where[ok]] == a[ok]
        cell_of = frag_cells[where[ok]]
        index = np.searchsorted(ids, cell_of)
        np.fmax.at(last, index, merges[ok, 2].astype(np.float32))
    else:
        # The bottleneck of each cell's fragment graph: the highest score its minimum spanning
        # tree needs, i.e. the weakest link the cell cannot do without.
        inner = _mean_by_pair(sums["frags"], with_owner=True)
        if len(inner["owner"]):
            nodes, index = np.unique(np.concatenate([inner["a"], inner["b"]]),
                                     return_inverse=True)
            a, b = index[:len(inner["a"])], index[len(inner["a"]):]
            # Scores shifted off zero: a zero weight is no edge to scipy.
            graph = coo_matrix((inner["score"].astype(np.float64) + 1.0, (a, b)),
                               shape=(len(nodes), len(nodes)))
            tree = minimum_spanning_tree(graph).tocoo()
            owner_of = dict(zip(zip(a.tolist(), b.tolist()), inner["owner"].tolist()))
            owners = np.array([owner_of.get((i, j), owner_of.get((j, i), 0))
                               for i, j in zip(tree.row.tolist(), tree.col.tolist())], np.uint64)
            np.fmax.at(last, np.searchsorted(ids, owners), (tree.data - 1.0).astype(np.float32))
    return ({"id": ids, "voxels": voxels.astype(np.int64), "last_merge": last}, edges)


def _fragment_cells(fragments, cells):
    pairs = np.unique(np.stack([fragments[fragments > 0], cells[fragments > 0]], 1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def _mean_by_pair(parts, *, with_owner: bool = False) -> dict:
    lo = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.uint64)
    hi = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.uint64)
    aff = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.float32)
    owner = np.concatenate([p[3] for p in parts]) if parts else np.zeros(0, np.uint64)
    if not len(lo):
        out = {"a": np.zeros(0, np.uint64), "b": np.zeros(0, np.uint64),
               "score": np.zeros(0, np.float32), "contact": np.zeros(0, np.int64)}
        if with_owner:
            out["owner"] = np.zeros(0, np.uint64)
        return out
    pairs, inverse, counts = np.unique(np.stack([lo, hi], 1), axis=0, return_inverse=True,
                                       return_counts=True)
    inverse = inverse.ravel()
    total = np.bincount(inverse, weights=aff, minlength=len(pairs))
    out = {"a": pairs[:, 0], "b": pairs[:, 1],
           "score": (1.0 - total / counts).astype(np.float32), "contact": counts.astype(np.int64)}
    if with_owner:
        first = np.zeros(len(pairs), np.int64)
        first[inverse[::-1]] = np.arange(len(inverse))[::-1]
        out["owner"] = owner[first]
    return out
