"""From a synapse probability volume to synapse instances, block by block.

probability -> hysteresis threshold (voxels >= ``low`` that are connected, by faces, to a voxel
>= ``high``) -> connected components -> size filter -> optional split of each component at
separate probability maxima (:mod:`detection.synapses.split`) -> optional filter on the instance's mean
probability -> one candidate per instance with its centre, size and score.

Blocks are labelled independently; components touching across a block face are joined with a
union-find over the face planes, so the candidates do not depend on the blocking (tested
against a single block). Memory holds one block plus the face planes and per-component sums.
The split needs a whole component: it runs once all blocks are in, on each component's
bounding box read back from the probability, and keeps the pieces of the components it divided.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from detection.errors import InputError
from detection.synapses.split import SplitParameters, split_component

Box = tuple[slice, slice, slice]
_FACES = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class Candidate:
    """One detected synapse.

    id : 1-based, ordered by bounding-box corner (z, y, x)
    center : (z, y, x) nm, probability-weighted centroid
    size_voxels, size_nm3 : component size
    score : mean probability over the component; ``max_probability`` its peak
    bbox_min, bbox_max : voxel bounding box, half-open
    """

    id: int
    center: tuple[float, float, float]
    size_voxels: int
    size_nm3: float
    score: float
    max_probability: float
    bbox_min: tuple[int, int, int]
    bbox_max: tuple[int, int, int]

    def to_dict(self) -> dict:
        return asdict(self)


class _UnionFind:
    def __init__(self):
        self.parent = np.zeros(1, dtype=np.int64)

    def grow(self, n: int) -> None:
        if n > len(self.parent):
            self.parent = np.concatenate([self.parent, np.arange(len(self.parent), n)])

    def find_all(self) -> np.ndarray:
        parent = self.parent
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                return parent
            parent = grand

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        # Repeated vectorised hooking until every pair shares a root.
        while a.size:
            roots = self.find_all()
            self.parent = roots
            ra, rb = roots[a], roots[b]
            differ = ra != rb
            if not differ.any():
                return
            ra, rb = ra[differ], rb[differ]
            lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
            self.parent[hi] = lo
            a, b = a[differ], b[differ]


class InstanceStitcher:
    """Accumulates hysteresis components over the blocks of a volume.

    Parameters
    ----------
    voxel_size : (3,) float, nm
    high, low : float
        Seed and extent thresholds on the probability (``low <= high``).
    min_size_voxels : int
        Smaller components are dropped (before any split).
    split : SplitParameters, optional
        Divide each kept component at separate maxima of its probability; then
        :meth:`candidates` needs a reader of the probability.
    min_score : float
        Instances (after the split) whose mean probability is below this are dropped.
    """

    def __init__(self, *, voxel_size, high: float = 0.8, low: float = 0.5,
                 min_size_voxels: int = 1, split: SplitParameters | None = None,
                 min_score: float = 0.0):
        if low > high:
            raise InputError(f"low threshold {low} is above the high threshold {high}")
        self.voxel_size = np.asarray(voxel_size, dtype=float)
        self.high, self.low, self.min_size = float(high), float(low), int(min_size_voxels)
        self.split, self.min_score = split, float(min_score)
        self._pieces: list[tuple[Box, np.ndarray, np.ndarray]] = []  # split components
        self._split_of = np.zeros(1, dtype=np.int64)
        self._next = 1  # provisional ids, global across blocks; 0 = background
        self._stats: list[np.ndarray] = []
        self._anchors: list[np.ndarray] = []  # first voxel of each provisional component
        self._faces: dict[tuple, np.ndarray] = {}
        self._block_ids: dict[tuple, tuple[int, int]] = {}
        self._uf = _UnionFind()
        self._final: np.ndarray | None = None
        self.boxes: list[Box] = []  # in the order added, for a relabelling pass

    def _label(self, probability):
        return ndimage.label(probability >= self.low, structure=_FACES)

    def add_block(self, box: Box, probability: np.ndarray) -> None:
        """Add the probabilities of one block (its core, no halo) at ``box``."""
        labels, n = self._label(probability)
        start = self._next
        self._next += n
        self._uf.grow(self._next)
        corner = tuple(s.start for s in box)
        self._block_ids[corner] = (start, n)
        self.boxes.append(tuple(box))
        if n:
            self._stats.append(self._block_stats(labels, n, probability, corner, start))
            self._anchors.append(self._block_anchors(labels, n, corner))
        glob = np.where(labels > 0, labels + (start - 1), 0)
        for axis in range(3):
            low_key = (axis, corner[axis]) + tuple(c for a, c in enumerate(corner) if a != axis)
            high_key = (axis, box[axis].stop) + tuple(c for a, c in enumerate(corner) if a != axis)
            first = np.take(glob, 0, axis=axis)
            last = np.take(glob, -1, axis=axis)
            self._join_face(low_key, first, side="low")
            self._join_face(high_key, last, side="high")

    def _join_face(self, key, plane, *, side):
        other = self._faces.pop((key, "high" if side == "low" else "low"), None)
        if other is None:
            self._faces[(key, side)] = plane
            return
        both = (plane > 0) & (other > 0)
        if both.any():
            self._uf.union(plane[both].astype(np.int64), other[both].astype(np.int64))

    @staticmethod
    def _block_anchors(labels, n, corner):
        """First voxel of each label in (z, y, x) order, encoded as one int64."""
        if max(c + s for c, s in zip(corner, labels.shape)) > 2**21:
            raise InputError("volumes above 2**21 voxels along an axis are not supported")
        flat = labels.ravel()
        where = np.flatnonzero(flat)
        first = np.full(n + 1, flat.size, dtype=np.int64)
        np.minimum.at(first, flat[where], where)
        coords = np.unravel_index(first[1:], labels.shape)
        return _encode(*(c.astype(np.int64) + o for c, o in zip(coords, corner)))

    @staticmethod
    def _block_stats(labels, n, probability, corner, start):
        where = np.nonzero(labels)
        index = labels[where]
        p = probability[where].astype(np.float64)
        coords = [c.astype(np.int64) + o for c, o in zip(where, corner)]
        size = np.bincount(index, minlength=n + 1)[1:]
        psum = np.bincount(index, weights=p, minlength=n + 1)[1:]
        wsum = [np.bincount(index, weights=p * c, minlength=n + 1)[1:] for c in coords]
        pmax = np.zeros(n + 1)
        np.maximum.at(pmax, index, p)
        lo = np.full((n + 1, 3), np.iinfo(np.int64).max)
        hi = np.full((n + 1, 3), -1)
        for a in range(3):
            np.minimum.at(lo[:, a], index, coords[a])
            np.maximum.at(hi[:, a], index, coords[a])
        ids = np.arange(start, start + n)
        return np.column_stack([ids, size, psum, *wsum, pmax[1:], lo[1:], hi[1:] + 1])

    def candidates(self, read_probability=None) -> list[Candidate]:
        """All instances of components that hold a seed and are large enough (split when asked),
        whose mean probability reaches ``min_score``, in a blocking-independent order.

        ``read_probability(box)`` returns the probabilities of a box (the values added); it is
        needed only with ``split``, to read each kept component's bounding box.
        """
        if self.split is not None and read_probability is None:
            raise InputError("splitting components needs read_probability")
        self._pieces = []
        self._split_of = np.zeros(self._next, dtype=np.int64)
        if not self._stats:
            self._final = np.zeros(self._next, dtype=np.int64)
            return []
        stats = np.concatenate(self._stats)
        roots = self._uf.find_all()[stats[:, 0].astype(np.int64)]
        unique, inverse = np.unique(roots, return_inverse=True)
        m = len(unique)
        size = np.bincount(inverse, weights=stats[:, 1], minlength=m)
        psum = np.bincount(inverse, weights=stats[:, 2], minlength=m)
        wsum = np.stack([np.bincount(inverse, weights=stats[:, 3 + a], minlength=m) for a in range(3)], 1)
        pmax = np.zeros(m)
        np.maximum.at(pmax, inverse, stats[:, 6])
        lo = np.full((m, 3), np.iinfo(np.int64).max)
        hi = np.zeros((m, 3), dtype=np.int64)
        for a in range(3):
            np.minimum.at(lo[:, a], inverse, stats[:, 7 + a].astype(np.int64))
            np.maximum.at(hi[:, a], inverse, stats[:, 10 + a].astype(np.int64))
        anchor = np.full(m, np.iinfo(np.int64).max)
        np.minimum.at(anchor, inverse, np.concatenate(self._anchors))
        kept = np.flatnonzero((pmax >= self.high) & (size >= self.min_size))

        # One row per instance: component, piece (0: the whole component), then the sums.
        table = [np.column_stack([kept, np.zeros(len(kept)), size[kept], psum[kept], wsum[kept],
                                  pmax[kept], lo[kept], hi[kept]])]
        if self.split is not None:
            whole = np.ones(len(kept), bool)
            for row, k in enumerate(kept):
                pieces = self._split(k, lo[k], hi[k], anchor[k], size[k], read_probability)
                if pieces is None:
                    continue
                whole[row] = False
                box, sub, piece_stats = pieces
                table.append(np.column_stack([np.full(len(piece_stats), k), piece_stats]))
                self._pieces.append((box, sub, k))
            table[0] = table[0][whole]
        table = np.concatenate(table)
        component, piece = table[:, 0].astype(np.int64), table[:, 1].astype(np.int64)
        size, psum, wsum, pmax = table[:, 2], table[:, 3], table[:, 4:7], table[:, 7]
        lo, hi = table[:, 8:11].astype(np.int64), table[:, 11:14].astype(np.int64)
        keep = np.flatnonzero(psum >= self.min_score * size)
        centre = wsum[keep] / psum[keep, None] * self.voxel_size
        order = np.lexsort((centre[:, 2], centre[:, 1], centre[:, 0],
                            lo[keep, 2], lo[keep, 1], lo[keep, 0]))
        keep, centre = keep[order], centre[order]
        final = np.zeros(len(table), dtype=np.int64)
        final[keep] = np.arange(1, len(keep) + 1)

        final_of_root = np.zeros(m, dtype=np.int64)
        whole = piece == 0
        final_of_root[component[whole]] = final[whole]
        self._final = np.zeros(self._next, dtype=np.int64)
        self._final[stats[:, 0].astype(np.int64)] = final_of_root[inverse]
        split_of_root = np.zeros(m, dtype=np.int64)
        for i, (box, sub, k) in enumerate(self._pieces):
            lookup = np.zeros(int(sub.max()) + 1, dtype=np.int64)
            mine = np.flatnonzero(component == k)
            lookup[piece[mine]] = final[mine]
            self._pieces[i] = (box, sub, lookup)
            split_of_root[k] = i + 1
        self._split_of[stats[:, 0].astype(np.int64)] = split_of_root[inverse]

        voxel_volume = float(np.prod(self.voxel_size))
        return [
            Candidate(
                id=i + 1, center=tuple(float(v) for v in centre[i]),
                size_voxels=int(size[k]), size_nm3=float(size[k] * voxel_volume),
                score=float(psum[k] / size[k]), max_probability=float(pmax[k]),
                bbox_min=tuple(int(v) for v in lo[k]), bbox_max=tuple(int(v) for v in hi[k]),
            )
            for i, k in enumerate(keep)
        ]

    def _split(self, k, lo, hi, anchor, size, read_probability):
        """(box, piece labels in the box, piece sums) of component ``k``, or None if it stays
        whole."""
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        probability = np.asarray(read_probability(box))
        labels, _ = self._label(probability)
        first = _decode(anchor) - lo
        mask = labels == labels[tuple(first)]
        if np.count_nonzero(mask) != size:
            raise InputError("the probabilities read back differ from those added")
        sub = split_component(mask, probability, voxel_size=self.voxel_size,
                              parameters=self.split)
        n = int(sub.max())
        if n < 2:
            return None
        stats = self._block_stats(sub, n, probability, tuple(int(v) for v in lo), 1)
        return box, sub, stats

    def relabel_block(self, box: Box, probability: np.ndarray) -> np.ndarray:
        """Instance labels (candidate ids, 0 elsewhere) of a block; call after candidates()."""
        if self._final is None:
            raise RuntimeError("call candidates() before relabel_block()")
        labels, n = self._label(probability)
        start, count = self._block_ids[tuple(s.start for s in box)]
        if n != count:
            raise InputError("the block's probabilities differ from those first added")
        lookup = np.concatenate([[0], self._final[start:start + n]])
        out = lookup[labels].astype(np.uint32)
        if not self._pieces:
            return out
        split = np.concatenate([[0], self._split_of[start:start + n]])[labels]
        for i in np.unique(split[split > 0]):
            piece_box, sub, piece_ids = self._pieces[i - 1]
            common = tuple(slice(max(a.start, b.start), min(a.stop, b.stop))
                           for a, b in zip(box, piece_box))
            here = tuple(slice(c.start - a.start, c.stop - a.start) for c, a in zip(common, box))
            there = tuple(slice(c.start - b.start, c.stop - b.start)
                          for c, b in zip(common, piece_box))
            mine = split[here] == i
            out[here][mine] = piece_ids[sub[there][mine]]
        return out


def _encode(z, y, x):
    # Positions below 2**21 per axis order as (z, y, x) in one int64.
    return (z << 42) | (y << 21) | x


def _decode(key) -> np.ndarray:
    key = int(key)
    return np.array([key >> 42, (key >> 21) & (2**21 - 1), key & (2**21 - 1)], dtype=np.int64)


def find_instances(probability: np.ndarray, *, voxel_size, high: float = 0.8, low: float = 0.5,
                   min_size_voxels: int = 1, split: SplitParameters | None = None,
                   min_score: float = 0.0) -> tuple[np.ndarray, list[Candidate]]:
    """Whole-array version: (instance labels (Z, Y, X) uint32, candidates)."""
    stitcher = InstanceStitcher(voxel_size=voxel_size, high=high, low=low,
                                min_size_voxels=min_size_voxels, split=split, min_score=min_score)
    box = tuple(slice(0, n) for n in probability.shape)
    stitcher.add_block(box, probability)
    candidates = stitcher.candidates(read_probability=lambda b: probability[b])
    return stitcher.relabel_block(box, probability), candidates
