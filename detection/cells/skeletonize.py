"""Skeletons of segmented cells, traced with kimimaro's TEASAR implementation.

kimimaro works on arrays indexed ``(x, y, z)`` with the anisotropy given in
the same order, and returns vertices in physical units in that order. This
module takes the project's ``(z, y, x)`` label volumes and ``(z, y, x)``
voxel sizes, hands kimimaro the transposed view (no data copy beyond the one
kimimaro makes anyway) with the anisotropy reversed, and turns the vertices
back into nm ``(z, y, x)``. Voxel ``(i, j, k)`` lies at
``(i * vz, j * vy, k * vx)`` nm: voxel centres, with the first voxel's
centre at the origin.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence

import kimimaro
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components

from detection.errors import InputError
from detection.io.swc import SkeletonNodes

logger = logging.getLogger(__name__)

__all__ = ["skeletonize_segmentation"]

# kimimaro's defaults, in nm where they are lengths.
_BASE_TEASAR_PARAMS = {
    "pdrf_scale": 100000,
    "pdrf_exponent": 4,
    "soma_acceptance_threshold": 3500,
    "soma_detection_threshold": 750,
    "soma_invalidation_const": 300,
    "soma_invalidation_scale": 2,
}


def skeletonize_segmentation(
    labels: np.ndarray,
    *,
    voxel_size: Sequence[float],
    ids: Iterable[int] | None = None,
    scale: float = 1.5,
    const: float = 300.0,
    dust_threshold: int = 1000,
    parallel: int = 1,
    teasar_params: Mapping[str, float] | None = None,
) -> dict[int, SkeletonNodes]:
    """Skeletonize every cell (or the chosen cells) of a label volume.

    Parameters
    ----------
    labels : numpy.ndarray
        (Z, Y, X) integer label volume; 0 is background. Any unsigned or
        non-negative signed integer type, uint64 ids included.
    voxel_size : sequence of 3 floats
        Voxel size in nm, ``(z, y, x)``.
    ids : iterable of int, optional
        Cells to skeletonize; all non-zero labels if None. Ids absent from
        the volume are left out of the result.
    scale, const : float
        TEASAR invalidation: around each traced path, voxels within
        ``scale * radius + const`` nm are considered covered. Larger values
        give fewer, coarser branches.
    dust_threshold : int
        Connected pieces of a cell with at most this many voxels are not
        skeletonized.
    parallel : int
        Worker processes for kimimaro (1: this process; <= 0: one per CPU).
        More than one makes kimimaro switch multiprocessing to "spawn"
        process-wide (so the calling script needs an ``if __name__ ==
        "__main__"`` guard) and install its own SIGINT/SIGTERM handlers
        while it runs.
    teasar_params : mapping, optional
        Further kimimaro TEASAR parameters (``pdrf_scale``,
        ``soma_detection_threshold``, ...), lengths in nm; they override the
        kimimaro defaults used otherwise.

    Returns
    -------
    dict of int to SkeletonNodes
        One skeleton per cell id that yielded one. Positions are nm
        ``(z, y, x)`` in the volume's frame, radii (distance to the cell
        boundary) in nm, compartment 0 (undefined). Node ids are
        ``0 .. N-1`` in breadth-first order; each connected piece of a cell
        is rooted at its node of largest radius (the thickest point, which
        is the soma where there is one), its root has parent -1, and
        pieces are listed thickest root first. Where kimimaro's edges form
        a loop, the breadth-first tree drops the closing edge.

    Raises
    ------
    ValueError
        If ``labels`` is not a 3-D integer array, holds negative labels, or
        ``voxel_size`` is not three positive numbers.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be a 3-D integer array, got {labels.dtype} "
                         f"of shape {labels.shape}")
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise InputError("labels must not be negative")
    voxel = tuple(float(v) for v in voxel_size)
    if len(voxel) != 3 or not all(math.isfinite(v) and v > 0 for v in voxel):
        raise InputError(f"voxel_size must be three positive numbers (z, y, x) in nm, "
                         f"got {voxel_size!r}")
    object_ids = None
    if ids is not None:
        object_ids = sorted({int(i) for i in ids})
        if not object_ids:
            return {}

    params = {**_BASE_TEASAR_PARAMS, **(teasar_params or {}), "scale": scale, "const": const}
    started = time.perf_counter()
    # The transpose is an (x, y, z) view of the same memory, which is what
    # kimimaro indexes; its anisotropy and vertices follow that order.
    traced = kimimaro.skeletonize(
        labels.T,
        teasar_params=params,
        anisotropy=voxel[::-1],
        object_ids=object_ids,
        dust_threshold=dust_threshold,
        progress=False,
        parallel=parallel,
    )
    skeletons = {int(cell): _to_nodes(skeleton) for cell, skeleton in traced.items()}
    logger.info("skeletonized %d cells of a %s volume in %.1f s", len(skeletons),
                "x".join(map(str, labels.shape)), time.perf_counter() - started)
    return skeletons


def _to_nodes(skeleton) -> SkeletonNodes:
    """Turn a kimimaro skeleton (x, y, z vertices, edge list) into rooted nodes."""
    zyx = np.asarray(skeleton.vertices, dtype=np.float64)[:, ::-1]
    radius = np.asarray(skeleton.radius, dtype=np.float32)
    edges = np.asarray(skeleton.edges, dtype=np.int64).reshape(-1, 2)
    n = zyx.shape[0]

    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])),
                       shape=(n, n)).tocsr()
    pieces, piece = connected_components(graph, directed=False)

    # Root of each piece: its largest radius, the lowest vertex index on ties.
    by_radius = np.lexsort((np.arange(n), -radius.astype(np.float64), piece))
    is_first = np.ones(n, dtype=bool)
    is_first[1:] = piece[by_radius[1:]] != piece[by_radius[:-1]]
    roots = by_radius[is_first]  # one per piece, in piece order
    rank = np.empty(pieces, dtype=np.int64)
    rank[np.lexsort((roots, -radius[roots].astype(np.float64)))] = np.arange(pieces)

    # One breadth-first pass from a virtual node joined to every root; a
    # stable sort by piece rank then groups the pieces without changing the
    # breadth-first order inside each.
    hub = n
    rows = np.concatenate([edges[:, 0], np.full(pieces, hub)])
    cols = np.concatenate([edges[:, 1], roots])
    linked = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)),
                        shape=(n + 1, n + 1)).tocsr()
    order, predecessor = breadth_first_order(linked, hub, directed=False,
                                             return_predecessors=True)
    order = order[1:]
    order = order[np.argsort(rank[piece[order]], kind="stable")]

    new_id = np.empty(n, dtype=np.int64)
    new_id[order] = np.arange(n)
    parent = predecessor[order]
    parent_id = np.where(parent == hub, -1, new_id[np.minimum(parent, n - 1)])

    undirected = np.sort(edges, axis=1)
    undirected = undirected[undirected[:, 0] != undirected[:, 1]]
    dropped = len(np.unique(undirected, axis=0)) - (n - pieces)
    if dropped > 0:
        logger.debug("skeleton %s: dropped %d loop-closing edges", skeleton.id, dropped)
    return SkeletonNodes(
        node_id=np.arange(n, dtype=np.int64),
        parent_id=parent_id,
        zyx=zyx[order],
        radius=radius[order],
        compartment=np.zeros(n, dtype=np.int16),
    )
