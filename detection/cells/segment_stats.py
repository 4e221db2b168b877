"""Per-segment statistics of a label volume, accumulated block by block.

Sizes, bounding boxes and centroids of every segment of a segmentation too large for memory:
feed each block with its offset, read the totals at the end. The result is the same as on the
whole volume, whatever the blocking (tested).
"""

from dataclasses import dataclass

import numpy as np

from detection.errors import InputError


@dataclass
class SegmentTable:
    """Statistics of every segment (but the background id), sorted by id.

    ids : (N,) uint64
    sizes : (N,) int64, voxel counts
    bbox_min, bbox_max : (N, 3) int64, half-open voxel bounding box (z, y, x)
    centroid : (N, 3) float64, mean voxel index (z, y, x); multiply by the voxel size for nm
    """

    ids: np.ndarray
    sizes: np.ndarray
    bbox_min: np.ndarray
    bbox_max: np.ndarray
    centroid: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


class SegmentStatistics:
    """Accumulates :class:`SegmentTable` over blocks of a label volume.

    Examples
    --------
    >>> stats = SegmentStatistics()
    >>> for box in boxes:
    ...     stats.add(labels[box], offset=[s.start for s in box])
    >>> table = stats.result()

    Parameters
    ----------
    background : int or None
        Id that is not a segment (0 by convention); None counts every id, for dense
        segmentations where 0 is a segment like any other.
    """

    def __init__(self, *, background: int | None = 0):
        self.background = background
        self._parts: list[tuple[np.ndarray, ...]] = []

    def add(self, block: np.ndarray, *, offset=(0, 0, 0)) -> None:
        """Count the segments of one (Z, Y, X) integer block whose corner is at ``offset``."""
        if block.ndim != 3:
            raise InputError(f"expected a 3-D block, got shape {block.shape}")
        flat = block.reshape(-1)
        if self.background is None:
            nonzero = np.arange(flat.size)
        else:
            nonzero = np.flatnonzero(flat != self.background)
        if nonzero.size == 0:
            return
        labels = flat[nonzero].astype(np.uint64, copy=False)
        ids, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        coords = np.unravel_index(nonzero, block.shape)
        order = np.argsort(inverse, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        mins = np.empty((len(ids), 3), dtype=np.int64)
        maxs = np.empty((len(ids), 3), dtype=np.int64)
        sums = np.empty((len(ids), 3), dtype=np.float64)
        for axis in range(3):
            c = coords[axis].astype(np.int64) + int(offset[axis])
            sorted_c = c[order]
            mins[:, axis] = np.minimum.reduceat(sorted_c, starts)
            maxs[:, axis] = np.maximum.reduceat(sorted_c, starts) + 1
            sums[:, axis] = np.bincount(inverse, weights=c, minlength=len(ids))
        self._parts.append((ids, counts.astype(np.int64), mins, maxs, sums))

    def result(self) -> SegmentTable:
        if not self._parts:
            empty3 = np.zeros((0, 3))
            return SegmentTable(
                np.zeros(0, np.uint64), np.zeros(0, np.int64), empty3.astype(np.int64),
                empty3.astype(np.int64), empty3,
            )
        ids, counts, mins, maxs, sums = (np.concatenate(p) for p in zip(*self._parts))
        unique, inverse = np.unique(ids, return_inverse=True)
        n = len(unique)
        sizes = np.bincount(inverse, weights=counts, minlength=n).astype(np.int64)
        order = np.argsort(inverse, kind="stable")
        starts = np.searchsorted(inverse[order], np.arange(n))
        bbox_min = np.minimum.reduceat(mins[order], starts, axis=0)
        bbox_max = np.maximum.reduceat(maxs[order], starts, axis=0)
        centroid = np.stack(
            [np.bincount(inverse, weights=sums[:, a], minlength=n) for a in range(3)], axis=1
        ) / sizes[:, None]
        return SegmentTable(unique, sizes, bbox_min, bbox_max, centroid)
