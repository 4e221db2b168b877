"""From a synapse probability volume to synapse instances, block by block.

probability -> hysteresis threshold (voxels >= ``low`` that are connected, by faces, to a voxel
>= ``high``) -> connected components -> size filter -> one candidate per component with its
centre, size and score.

Blocks are labelled independently; components touching across a block face are joined with a
union-find over the face planes, so the candidates do not depend on the blocking (tested
against a single block). Memory holds one block plus the face planes and per-component sums.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

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
        Smaller components are dropped.
    """

    def __init__(self, *, voxel_size, high: float = 0.8, low: float = 0.5,
                 min_size_voxels: int = 1):
        if low > high:
            raise ValueError(f"low threshold {low} is above the high threshold {high}")
        self.voxel_size = np.asarray(voxel_size, dtype=float)
        self.high, self.low, self.min_size = float(high), float(low), int(min_size_voxels)
        self._next = 1  # provisional ids, global across blocks; 0 = background
        self._stats: list[np.ndarray] = []
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
    def _block_stats(labels, n, probability, corner, start):
        index = labels.ravel()
        p = probability.ravel().astype(np.float64)
        keep = index > 0
        index, p = index[keep], p[keep]
        coords = [c[keep] + o for c, o in zip(np.indices(labels.shape).reshape(3, -1), corner)]
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

    def candidates(self) -> list[Candidate]:
        """All components that hold a seed and are large enough, in a blocking-independent order."""
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
        keep = np.flatnonzero((pmax >= self.high) & (size >= self.min_size))
        centre = wsum[keep] / psum[keep, None] * self.voxel_size
        order = np.lexsort((centre[:, 2], centre[:, 1], centre[:, 0],
                            lo[keep, 2], lo[keep, 1], lo[keep, 0]))
        keep, centre = keep[order], centre[order]
        final_of_root = np.zeros(m, dtype=np.int64)
        final_of_root[keep] = np.arange(1, len(keep) + 1)
        self._final = np.zeros(self._next, dtype=np.int64)
        self._final[stats[:, 0].astype(np.int64)] = final_of_root[inverse]
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

    def relabel_block(self, box: Box, probability: np.ndarray) -> np.ndarray:
        """Instance labels (candidate ids, 0 elsewhere) of a block; call after candidates()."""
        if self._final is None:
            raise RuntimeError("call candidates() before relabel_block()")
        labels, n = self._label(probability)
        start, count = self._block_ids[tuple(s.start for s in box)]
        if n != count:
            raise ValueError("the block's probabilities differ from those first added")
        lookup = np.concatenate([[0], self._final[start:start + n]])
        return lookup[labels].astype(np.uint32)


def find_instances(probability: np.ndarray, *, voxel_size, high: float = 0.8, low: float = 0.5,
                   min_size_voxels: int = 1) -> tuple[np.ndarray, list[Candidate]]:
    """Whole-array version: (instance labels (Z, Y, X) uint32, candidates)."""
    stitcher = InstanceStitcher(voxel_size=voxel_size, high=high, low=low,
                                min_size_voxels=min_size_voxels)
    box = tuple(slice(0, n) for n in probability.shape)
    stitcher.add_block(box, probability)
    candidates = stitcher.candidates()
    return stitcher.relabel_block(box, probability), candidates
