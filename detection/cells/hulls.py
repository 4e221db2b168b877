"""Cell hulls from traced skeletons and a boundary map, by ray casting.

SyConn's path from skeletons to cell volumes (Dorkenwald et al. 2017, Nat Methods 14:435):
rays are cast from the skeleton's nodes into a boundary probability map and stop at the
membrane; their end points bound the cell. Labs with raw EM and traced skeletons (CATMAID,
webKnossos, SWC files) but no dense segmentation get cell volumes this way.

Rules
-----
* **Points.** A skeleton's nodes, plus points along its edges so that consecutive points are
  at most ``node_spacing_nm`` apart (in ``"plane"`` mode also at most one section apart, so
  every section an edge crosses gets a point). Every point is moved to the centre of its voxel,
  then thinned: of the points of one cell in one cell of a grid of ``node_spacing_nm`` (in
  ``"plane"`` mode a 2D grid in each section), the first is kept.
* **Rays.** From each point, ``n_rays`` directions in nm: in ``"plane"`` mode evenly spaced
  angles within the point's section (anisotropic serial sections: a membrane seen in one
  section says little about the next), in ``"3d"`` mode evenly spread over the sphere (a
  Fibonacci lattice; isotropic data). A ray is sampled every ``step_nm`` (the boundary
  interpolated linearly between voxel centres) and stops at the first sample where the boundary
  reaches ``threshold`` or that lies outside the volume; its length is that sample's distance
  from the point, or ``max_radius_nm`` when there is none.
* **Star-shaped regions.** A voxel lies in a point's region when its distance ``d`` (nm) from
  the point is below the ray length interpolated at its direction: linearly in angle between
  the two neighbouring rays (``"plane"``; the voxel must also lie in the point's section), or
  weighted by inverse distance between the three nearest rays on the sphere (``"3d"``).
* **Painting.** A voxel inside regions of several cells goes to the cell whose point is nearest
  in nm; on an exact tie, to the smaller cell id. Voxels whose boundary value reaches
  ``threshold`` stay 0 (membrane), whatever region they lie in.

Blocks
------
:func:`hull_block` paints only the core of a box, from the boundary read around it with a
halo (:meth:`RayParameters.halo`). A point up to ``max_radius_nm`` outside the core can paint
into it, and its rays reach ``max_radius_nm`` beyond the point, so the halo is twice the
maximum radius (plus one voxel for the interpolation; in ``"plane"`` mode none in z). With that
halo a block's result equals the whole volume's (tested): the rays of every point that can
reach the core see the same boundary values, and the winner of every voxel does not depend
on the order in which points are painted.

Geometry is precomputed once per parameter set and voxel size (distance and ray-weight tables
of the voxel offsets within ``max_radius_nm``), so painting a point is a few array operations
on its window.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy.spatial import cKDTree

from detection.errors import InputError
from detection.io.swc import SkeletonNodes

logger = logging.getLogger(__name__)

__all__ = [
    "CellSkeleton",
    "HullPoints",
    "RayParameters",
    "hull_block",
    "hull_points",
    "skeleton_hulls",
]

MODES = ("plane", "3d")
#: Largest number of voxel offsets a geometry table may hold (about 30 bytes each in 3D mode).
MAX_TABLE_ENTRIES = 10_000_000
#: Rays sampled at once while casting (bounds the memory of the ray march).
_RAY_BATCH_SAMPLES = 2_000_000


# --------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True, eq=False)
class CellSkeleton:
    """One traced skeleton of a cell, in voxel coordinates.

    Attributes
    ----------
    cell_id : int
        Id painted into the hull volume (> 0, up to 2**64 - 1).
    nodes : (N, 3) float64 ndarray
        Node positions in voxels ``(z, y, x)``; voxel ``(i, j, k)`` has its centre at
        ``(i, j, k)``. Fractional positions are fine.
    edges : (E, 2) int64 ndarray
        Pairs of node indices (rows of ``nodes``).
    radius : (N,) float ndarray, optional
        Node radii in nm (distance to the cell's boundary, as tracing tools record it);
        0 or missing where unknown. Used only for the default node spacing.
    skeleton_id : int, optional
        The skeleton's own id (a database row), named in error messages.
    """

    cell_id: int
    nodes: np.ndarray
    edges: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    radius: np.ndarray | None = None
    skeleton_id: int | None = None

    def __post_init__(self) -> None:
        label = self.label()
        if not 0 < int(self.cell_id) < 2**64:
            raise InputError(f"{label}: the cell id must be from 1 to 2**64 - 1 (0 is "
                             "background)")
        nodes = np.asarray(self.nodes, dtype=np.float64)
        if nodes.size == 0:
            nodes = nodes.reshape(0, 3)
        if nodes.ndim != 2 or nodes.shape[1] != 3:
            raise InputError(f"{label}: nodes must be an (N, 3) array of z, y, x voxel "
                             f"positions, got shape {nodes.shape}")
        edges = np.asarray(self.edges)
        if edges.size == 0:
            edges = np.zeros((0, 2), dtype=np.int64)
        if edges.ndim != 2 or edges.shape[1] != 2 or not np.issubdtype(edges.dtype, np.integer):
            raise InputError(f"{label}: edges must be an (E, 2) integer array of node indices, "
                             f"got {edges.dtype} of shape {edges.shape}")
        edges = edges.astype(np.int64)
        bad = np.flatnonzero(((edges < 0) | (edges >= len(nodes))).any(axis=1))
        if bad.size:
            raise InputError(f"{label}: edge {int(bad[0])} {edges[bad[0]].tolist()} names a node "
                             f"that does not exist (the skeleton has {len(nodes)} nodes)")
        radius = None
        if self.radius is not None:
            radius = np.asarray(self.radius, dtype=np.float64).reshape(-1)
            if radius.shape != (len(nodes),):
                raise InputError(f"{label}: radius must have one value per node "
                                 f"({len(nodes)}), got {radius.shape[0]}")
        object.__setattr__(self, "cell_id", int(self.cell_id))
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "edges", edges)
        object.__setattr__(self, "radius", radius)

    def label(self) -> str:
        """How error messages name this skeleton."""
        if self.skeleton_id is not None:
            return f"skeleton {self.skeleton_id} (cell {self.cell_id})"
        return f"skeleton of cell {self.cell_id}"

    @classmethod
    def from_nodes(cls, cell_id: int, nodes: SkeletonNodes, *, voxel_size: Sequence[float],
                   skeleton_id: int | None = None) -> CellSkeleton:
        """A skeleton stored as nm positions with parent ids (SWC, the database).

        Positions ``(z, y, x)`` nm become voxels by dividing by ``voxel_size`` (voxel centres
        at ``i * voxel_size``, as :mod:`detection.cells.skeletonize` writes them); each node
        with a parent gives the edge (parent, node).
        """
        voxel = _voxel_size(voxel_size)
        index = {int(n): i for i, n in enumerate(nodes.node_id)}
        children = np.flatnonzero(nodes.parent_id >= 0)
        edges = np.empty((children.size, 2), dtype=np.int64)
        for row, child in enumerate(children):
            parent = index.get(int(nodes.parent_id[child]))
            if parent is None:
                name = f"skeleton {skeleton_id}" if skeleton_id is not None else "skeleton"
                raise InputError(f"{name} (cell {cell_id}), node {int(child)} (id "
                                 f"{int(nodes.node_id[child])}): parent "
                                 f"{int(nodes.parent_id[child])} is not a node")
            edges[row] = (parent, child)
        return cls(cell_id=cell_id, nodes=np.asarray(nodes.zyx, np.float64) / np.asarray(voxel),
                   edges=edges, radius=nodes.radius, skeleton_id=skeleton_id)


@dataclass(frozen=True)
class RayParameters:
    """How rays are cast and regions painted.

    Attributes
    ----------
    n_rays : int
        Rays per point (``"plane"``: evenly spaced angles; ``"3d"``: directions on the sphere).
    threshold : float
        A ray stops where the boundary reaches this value; voxels at or above it stay 0.
    max_radius_nm : float
        Longest ray. Also sets the block halo (twice this) and the default node spacing.
    step_nm : float, optional
        Distance between samples along a ray; default half the smallest voxel size of the
        axes rays run along (in-plane in ``"plane"`` mode).
    node_spacing_nm : float, optional
        Largest distance between consecutive points along an edge, and the thinning grid.
        Default, per skeleton: the median of its positive node radii, clipped to
        [2 voxels, ``max_radius_nm`` / 2]; ``max_radius_nm`` / 2 without radii.
    mode : {"plane", "3d"}
        ``"plane"`` casts rays within each section (serial sections); ``"3d"`` in all
        directions (isotropic data).
    """

    n_rays: int = 32
    threshold: float = 0.5
    max_radius_nm: float = 1000.0
    step_nm: float | None = None
    node_spacing_nm: float | None = None
    mode: str = "plane"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        smallest = 3 if self.mode == "plane" else 4
        if not (isinstance(self.n_rays, (int, np.integer)) and smallest <= self.n_rays <= 4096):
            raise InputError(f"n_rays must be an integer from {smallest} to 4096 in "
                             f"{self.mode} mode, got {self.n_rays!r}")
        if not 0.0 < self.threshold <= 1.0:
            raise InputError(f"threshold must lie in (0, 1], got {self.threshold!r}")
        for name in ("max_radius_nm", "step_nm", "node_spacing_nm"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InputError(f"{name} must be a positive number of nm, got {value!r}")

    def axes(self) -> tuple[int, ...]:
        """The axes rays run along: y, x in ``"plane"`` mode, all three in ``"3d"``."""
        return (1, 2) if self.mode == "plane" else (0, 1, 2)

    def step(self, voxel_size) -> float:
        """The sampling step along rays, nm."""
        if self.step_nm is not None:
            return float(self.step_nm)
        voxel = _voxel_size(voxel_size)
        return 0.5 * min(voxel[a] for a in self.axes())

    def reach(self, voxel_size) -> tuple[int, int, int]:
        """Voxels within ``max_radius_nm`` of a point along each axis (0 in z for planes)."""
        voxel = _voxel_size(voxel_size)
        return tuple(math.floor(self.max_radius_nm / voxel[a]) if a in self.axes() else 0
                     for a in range(3))

    def check_tables(self, voxel_size) -> None:
        """Raise InputError if the ray tables at this voxel size would be too large."""
        voxel = _voxel_size(voxel_size)
        reach = self.reach(voxel)
        if math.prod(2 * r + 1 for r in reach) > MAX_TABLE_ENTRIES:
            span = " x ".join(str(2 * r + 1) for r in reach)
            raise InputError(
                f"max_radius_nm {self.max_radius_nm:g} spans {span} voxels of "
                f"{' x '.join(f'{v:g}' for v in voxel)} nm, more than the "
                f"{MAX_TABLE_ENTRIES:,} the ray tables hold: use a smaller radius (or plane "
                "mode)")

    def halo(self, voxel_size) -> tuple[int, int, int]:
        """The halo (z, y, x voxels) a block must be read with to equal the whole volume."""
        voxel = _voxel_size(voxel_size)
        return tuple(math.ceil(2 * self.max_radius_nm / voxel[a]) + 1
                     if a in self.axes() else 0 for a in range(3))


@dataclass(frozen=True, eq=False)
class HullPoints:
    """The points rays are cast from: voxel centres, one cell id each.

    Attributes
    ----------
    zyx : (M, 3) int64 ndarray
        Voxel positions.
    cell : (M,) uint64 ndarray
        Cell id of each point.
    """

    zyx: np.ndarray
    cell: np.ndarray

    def __len__(self) -> int:
        return int(self.cell.shape[0])

    def save(self, target) -> None:
        """Write to an ``.npz`` file (a path or a binary stream)."""
        np.savez(target, zyx=self.zyx, cell=self.cell)

    @classmethod
    def load(cls, path) -> HullPoints:
        with np.load(path, allow_pickle=False) as data:
            return cls(zyx=data["zyx"].astype(np.int64), cell=data["cell"].astype(np.uint64))


def _voxel_size(voxel_size) -> tuple[float, float, float]:
    try:
        voxel = tuple(float(v) for v in np.ravel(voxel_size))
    except (TypeError, ValueError):
        voxel = ()
    if len(voxel) != 3 or not all(math.isfinite(v) and v > 0 for v in voxel):
        raise InputError(f"voxel_size must be three positive (z, y, x) nm values, "
                         f"got {voxel_size!r}")
    return voxel


def _shape(shape) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"the volume shape must be three positive extents, got {shape}")
    return shape


# --------------------------------------------------------------------------------------------
# Points


def _check_inside(skeleton: CellSkeleton, shape) -> None:
    nodes = skeleton.nodes
    if not np.isfinite(nodes).all():
        bad = int(np.flatnonzero(~np.isfinite(nodes).all(axis=1))[0])
        raise InputError(f"{skeleton.label()}, node {bad}: position {nodes[bad].tolist()} is "
                         "not finite")
    voxel = np.floor(nodes + 0.5)
    outside = ((voxel < 0) | (voxel >= np.asarray(shape))).any(axis=1)
    if outside.any():
        bad = int(np.flatnonzero(outside)[0])
        where = ", ".join(f"{v:.6g}" for v in nodes[bad])
        raise InputError(
            f"{skeleton.label()}, node {bad} at (z, y, x) ({where}) voxels lies outside the "
            f"volume of shape {tuple(shape)} ({int(outside.sum())} of its {len(nodes)} nodes "
            "do; are the positions in nm of this dataset's voxel size?)")


def _node_spacing(skeleton: CellSkeleton, parameters: RayParameters, voxel) -> float:
    if parameters.node_spacing_nm is not None:
        return float(parameters.node_spacing_nm)
    upper = parameters.max_radius_nm / 2
    radius = skeleton.radius
    if radius is None or not np.any(radius > 0):
        return upper
    lower = 2 * min(voxel[a] for a in parameters.axes())
    return float(np.clip(np.median(radius[radius > 0]), min(lower, upper), upper))


def _densify(skeleton: CellSkeleton, spacing: float, voxel, plane: bool) -> np.ndarray:
    """The nodes, then points along every edge at most ``spacing`` nm (and, for planes, one
    section) apart."""
    nodes = skeleton.nodes
    if len(skeleton.edges) == 0:
        return nodes
    a, b = nodes[skeleton.edges[:, 0]], nodes[skeleton.edges[:, 1]]
    length = np.linalg.norm((b - a) * np.asarray(voxel), axis=1)
    pieces = np.maximum(np.ceil(length / spacing), 1).astype(np.int64)
    if plane:
        pieces = np.maximum(pieces, np.ceil(np.abs(b[:, 0] - a[:, 0])).astype(np.int64))
    inner = pieces - 1
    edge = np.repeat(np.arange(len(pieces)), inner)
    # The i-th inner point of an edge cut into n pieces lies at i / n of it.
    first = np.cumsum(inner) - inner
    step = np.arange(edge.size) - np.repeat(first, inner) + 1
    fraction = (step / pieces[edge])[:, None]
    return np.concatenate([nodes, a[edge] + fraction * (b[edge] - a[edge])])


def hull_points(
    skeletons: Sequence[CellSkeleton],
    *,
    shape: Sequence[int],
    voxel_size: Sequence[float],
    parameters: RayParameters | None = None,
) -> HullPoints:
    """The points rays are cast from: densified, moved to voxel centres and thinned.

    Parameters
    ----------
    skeletons : sequence of CellSkeleton
        Several skeletons may share a cell id (they paint the same cell).
    shape : (3,) ints
        The volume's shape (z, y, x); every node must lie inside it.
    voxel_size : (3,) floats
        nm, (z, y, x).
    parameters : RayParameters, optional

    Returns
    -------
    HullPoints

    Raises
    ------
    InputError
        A node outside the volume (naming the skeleton and the node's index), a position
        that is not finite.
    """
    parameters = parameters or RayParameters()
    shape, voxel = _shape(shape), _voxel_size(voxel_size)
    plane = parameters.mode == "plane"
    positions, cells = [], []
    for skeleton in skeletons:
        if not isinstance(skeleton, CellSkeleton):
            raise InputError(f"skeletons must be CellSkeleton objects, got {type(skeleton)}")
        _check_inside(skeleton, shape)
        if len(skeleton.nodes) == 0:
            continue
        spacing = _node_spacing(skeleton, parameters, voxel)
        points = np.floor(_densify(skeleton, spacing, voxel, plane) + 0.5).astype(np.int64)
        np.clip(points, 0, np.asarray(shape) - 1, out=points)
        positions.append(_thin(points, spacing, voxel, plane))
        cells.append(np.full(len(positions[-1]), skeleton.cell_id, dtype=np.uint64))
    if not positions:
        return HullPoints(np.zeros((0, 3), np.int64), np.zeros(0, np.uint64))
    return HullPoints(np.concatenate(positions), np.concatenate(cells))


def _thin(points: np.ndarray, spacing: float, voxel, plane: bool) -> np.ndarray:
    """The first point of every grid cell of ``spacing`` nm (per section for planes)."""
    cell = np.floor(points * np.asarray(voxel) / spacing).astype(np.int64)
    if plane:
        cell[:, 0] = points[:, 0]
    _, first = np.unique(cell, axis=0, return_index=True)
    return points[np.sort(first)]


# --------------------------------------------------------------------------------------------
# Geometry tables


@dataclass(frozen=True, eq=False)
class _Geometry:
    directions: np.ndarray  # (K, 3) unit vectors in nm space
    reach: tuple[int, int, int]  # table half-extent per axis, voxels
    distance: np.ndarray  # (2rz+1, 2ry+1, 2rx+1) float64, nm from the centre
    ray: np.ndarray  # (J, ...) int32, the rays a voxel's length is interpolated from
    weight: np.ndarray  # (J, ...) float32, their weights (summing to 1)


def _directions(parameters: RayParameters) -> np.ndarray:
    k = parameters.n_rays
    if parameters.mode == "plane":
        angle = 2 * np.pi * np.arange(k) / k
        return np.stack([np.zeros(k), np.sin(angle), np.cos(angle)], axis=1)
    # Fibonacci lattice: nearly even directions for any count.
    i = np.arange(k) + 0.5
    z = 1 - 2 * i / k
    r = np.sqrt(1 - z * z)
    phi = np.pi * (3 - np.sqrt(5)) * np.arange(k)
    return np.stack([z, r * np.sin(phi), r * np.cos(phi)], axis=1)


@lru_cache(maxsize=2)
def _geometry(parameters: RayParameters, voxel: tuple[float, float, float]) -> _Geometry:
    parameters.check_tables(voxel)
    reach = parameters.reach(voxel)
    grids = np.meshgrid(*[np.arange(-r, r + 1) * v for r, v in zip(reach, voxel)],
                        indexing="ij")
    offset = np.stack(grids, axis=-1)
    distance = np.sqrt((offset ** 2).sum(axis=-1))
    directions = _directions(parameters)
    k = parameters.n_rays
    if parameters.mode == "plane":
        angle = np.mod(np.arctan2(offset[..., 1], offset[..., 2]), 2 * np.pi)
        position = angle / (2 * np.pi / k)
        below = np.floor(position)
        t = position - below
        first = below.astype(np.int64) % k
        ray = np.stack([first, (first + 1) % k]).astype(np.int32)
        weight = np.stack([1 - t, t]).astype(np.float32)
    else:
        unit = offset.reshape(-1, 3) / np.maximum(distance.reshape(-1, 1), 1e-300)
        unit[distance.reshape(-1) == 0] = directions[0]
        chord, nearest = cKDTree(directions).query(unit, k=3)
        inverse = 1.0 / np.maximum(chord, 1e-9)
        weight = (inverse / inverse.sum(axis=1, keepdims=True)).T.reshape(3, *distance.shape)
        weight = weight.astype(np.float32)
        ray = nearest.T.reshape(3, *distance.shape).astype(np.int32)
    return _Geometry(directions=directions, reach=reach, distance=distance, ray=ray,
                     weight=weight)


# --------------------------------------------------------------------------------------------
# Rays


class _Sampler:
    """The boundary at real-valued global voxel positions, from a block read at ``origin``."""

    def __init__(self, boundary: np.ndarray, origin, shape, plane: bool):
        self.boundary = boundary
        self.origin = np.asarray(origin, dtype=np.int64)
        self.shape = np.asarray(shape, dtype=np.int64)
        self.axes = (1, 2) if plane else (0, 1, 2)

    def __call__(self, position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values, outside) at (P, 3) positions; z is a whole section in plane mode."""
        outside = np.zeros(len(position), dtype=bool)
        low, frac = [], []
        for axis in range(3):
            p = position[:, axis]
            if axis not in self.axes:
                low.append(p.astype(np.int64) - self.origin[axis])
                frac.append(None)
                continue
            n = self.shape[axis]
            outside |= (p < -0.5) | (p >= n - 0.5)
            below = np.floor(p)
            i0 = np.clip(below.astype(np.int64), 0, n - 1)
            i1 = np.clip(below.astype(np.int64) + 1, 0, n - 1)
            low.append((i0 - self.origin[axis], i1 - self.origin[axis]))
            frac.append(p - below)
        values = np.zeros(len(position))
        corners = [(0,), (0,), (0,)]
        for axis in self.axes:
            corners[axis] = (0, 1)
        # Interpolate linearly: the sum over the corners of the neighbouring voxel centres.
        for cz in corners[0]:
            for cy in corners[1]:
                for cx in corners[2]:
                    index, w = [], np.ones(len(position))
                    for axis, c in zip(range(3), (cz, cy, cx)):
                        if frac[axis] is None:
                            index.append(low[axis])
                            continue
                        index.append(low[axis][c])
                        w = w * (frac[axis] if c else 1 - frac[axis])
                    values += w * self.boundary[index[0], index[1], index[2]]
        return values, outside


def _ray_lengths(sampler: _Sampler, points: np.ndarray, geometry: _Geometry, voxel,
                 parameters: RayParameters, step: float) -> np.ndarray:
    """(M, K) ray lengths (nm) of points (M, 3)."""
    k = parameters.n_rays
    radius = parameters.max_radius_nm
    n_steps = math.floor(radius / step + 1e-9)
    lengths = np.full((len(points), k), radius)
    if len(points) == 0 or n_steps == 0:
        return lengths
    per_voxel = geometry.directions / np.asarray(voxel)  # voxels per nm along each ray
    chunk = max(1, min(n_steps, 64))
    rays_per_batch = max(1, _RAY_BATCH_SAMPLES // chunk)
    origin = np.repeat(points.astype(np.float64), k, axis=0)
    direction = np.tile(per_voxel, (len(points), 1))
    flat = lengths.reshape(-1)
    for start in range(0, len(origin), rays_per_batch):
        active = np.arange(start, min(start + rays_per_batch, len(origin)))
        for j0 in range(1, n_steps + 1, chunk):
            s = np.arange(j0, min(j0 + chunk, n_steps + 1)) * step
            position = origin[active, None, :] + s[None, :, None] * direction[active, None, :]
            values, outside = sampler(position.reshape(-1, 3))
            hit = (outside | (values >= parameters.threshold)).reshape(len(active), len(s))
            stopped = hit.any(axis=1)
            flat[active[stopped]] = s[hit[stopped].argmax(axis=1)]
            active = active[~stopped]
            if active.size == 0:
                break
    return lengths


# --------------------------------------------------------------------------------------------
# Painting


def _paint(labels, best, free, core_origin, points, cells, lengths, geometry, voxel) -> None:
    """Paint every point's region into the core arrays (nearest point wins)."""
    core_origin = np.asarray(core_origin)
    core_shape = np.asarray(labels.shape)
    reach = np.asarray(geometry.reach)
    for point, cell, length in zip(points, cells, lengths):
        longest = float(length.max())
        if longest <= 0:
            continue
        half = np.minimum(np.floor(longest / np.asarray(voxel)).astype(np.int64), reach)
        lo = np.maximum(point - half, core_origin)
        hi = np.minimum(point + half + 1, core_origin + core_shape)
        if np.any(lo >= hi):
            continue
        window = tuple(slice(a, b) for a, b in zip(lo - core_origin, hi - core_origin))
        table = tuple(slice(a, b) for a, b in zip(lo - point + reach, hi - point + reach))
        distance = geometry.distance[table]
        interpolated = geometry.weight[0][table] * length[geometry.ray[0][table]]
        for j in range(1, len(geometry.ray)):
            interpolated += geometry.weight[j][table] * length[geometry.ray[j][table]]
        current, owner = best[window], labels[window]
        claim = (distance < interpolated) & free[window]
        claim &= (distance < current) | ((distance == current) & (cell < owner))
        current[claim] = distance[claim]
        owner[claim] = cell


def _check_boundary(boundary: np.ndarray, what: str) -> np.ndarray:
    boundary = np.asarray(boundary)
    if boundary.ndim != 3:
        raise InputError(f"{what} must be a (Z, Y, X) array, got shape {boundary.shape}")
    if boundary.dtype == bool:
        return boundary.astype(np.float32)
    if not np.issubdtype(boundary.dtype, np.floating):
        raise InputError(f"{what} must hold float probabilities in [0, 1] (1 = membrane), "
                         f"got dtype {boundary.dtype}")
    if boundary.size:
        low, high = float(np.min(boundary)), float(np.max(boundary))
        if not (math.isfinite(low) and math.isfinite(high)) or low < 0 or high > 1:
            raise InputError(f"{what} must hold values in [0, 1] (1 = membrane), found "
                             f"{low:g} to {high:g}")
    return boundary


def _near_box(points: np.ndarray, lo, hi, voxel, parameters: RayParameters) -> np.ndarray:
    """(M,) bool: points that may paint a voxel of the box [lo, hi)."""
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    lo, hi = np.asarray(lo), np.asarray(hi) - 1
    gap = (np.maximum(lo - points, 0) + np.maximum(points - hi, 0)) * np.asarray(voxel)
    if parameters.mode == "plane":
        inside_z = (points[:, 0] >= lo[0]) & (points[:, 0] <= hi[0])
        return inside_z & (np.hypot(gap[:, 1], gap[:, 2]) <= parameters.max_radius_nm)
    return np.sqrt((gap ** 2).sum(axis=1)) <= parameters.max_radius_nm


def hull_block(
    boundary_block: np.ndarray,
    skeletons: Sequence[CellSkeleton] | HullPoints,
    *,
    box,
    halo: Sequence[int],
    shape: Sequence[int],
    voxel_size: Sequence[float],
    parameters: RayParameters | None = None,
) -> np.ndarray:
    """Paint the hulls in the core ``box`` of a volume, from its boundary read with a halo.

    Parameters
    ----------
    boundary_block : (Z, Y, X) float ndarray
        The boundary map (1 = membrane, values in [0, 1]) over ``box`` grown by ``halo`` and
        clipped to the volume (:func:`detection.blockwise.with_halo`).
    skeletons : sequence of CellSkeleton, or HullPoints
        Skeletons of the whole volume (only the points that can reach the box are used), or
        their points from :func:`hull_points` (computed once for many blocks).
    box : tuple of 3 slices
        The core (z, y, x) to paint, inside the volume.
    halo : (3,) ints
        Voxels read around the box; at least :meth:`RayParameters.halo`.
    shape : (3,) ints
        The whole volume's shape.
    voxel_size : (3,) floats
        nm, (z, y, x).
    parameters : RayParameters, optional

    Returns
    -------
    (z, y, x) uint64 ndarray
        The box's hull labels: cell ids, 0 outside every hull and on the membrane.

    Raises
    ------
    InputError
        A halo smaller than the rays need, a block of the wrong shape, a boundary that is not
        a float map in [0, 1], a skeleton node outside the volume.
    """
    parameters = parameters or RayParameters()
    shape, voxel = _shape(shape), _voxel_size(voxel_size)
    box = tuple(slice(int(s.start), int(s.stop)) for s in box)
    if len(box) != 3 or any(not 0 <= s.start < s.stop <= n for s, n in zip(box, shape)):
        raise InputError(f"box {box} is empty or does not fit in the volume {shape}")
    halo = tuple(int(h) for h in halo)
    needed = parameters.halo(voxel)
    if len(halo) != 3 or any(h < n for h, n in zip(halo, needed)):
        raise InputError(f"a halo of {halo} voxels is less than the {needed} that rays of "
                         f"up to {parameters.max_radius_nm:g} nm need (twice the radius)")
    outer = tuple(slice(max(0, s.start - h), min(n, s.stop + h))
                  for s, h, n in zip(box, halo, shape))
    expected = tuple(s.stop - s.start for s in outer)
    boundary = _check_boundary(boundary_block, "the boundary block")
    if boundary.shape != expected:
        raise InputError(f"the boundary block has shape {boundary.shape}; the box {box} with "
                         f"a halo of {halo} in a volume of {shape} needs {expected}")
    points = (skeletons if isinstance(skeletons, HullPoints)
              else hull_points(skeletons, shape=shape, voxel_size=voxel, parameters=parameters))
    return _hull_core(boundary, points, outer=outer, box=box, shape=shape, voxel=voxel,
                      parameters=parameters)


def _hull_core(boundary, points: HullPoints, *, outer, box, shape, voxel, parameters):
    started = time.perf_counter()
    core_lo = np.array([s.start for s in box])
    core_hi = np.array([s.stop for s in box])
    labels = np.zeros(tuple(core_hi - core_lo), dtype=np.uint64)
    near = _near_box(points.zyx, core_lo, core_hi, voxel, parameters)
    if not near.any():
        return labels
    zyx, cells = points.zyx[near], points.cell[near]
    geometry = _geometry(parameters, voxel)
    origin = [s.start for s in outer]
    sampler = _Sampler(boundary, origin, shape, parameters.mode == "plane")
    lengths = _ray_lengths(sampler, zyx, geometry, voxel, parameters,
                           parameters.step(voxel))
    inner = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(box, outer))
    free = boundary[inner] < parameters.threshold
    best = np.full(labels.shape, np.inf)
    _paint(labels, best, free, core_lo, zyx, cells, lengths, geometry, voxel)
    logger.debug("painted %d points into a %s box in %.2f s", len(zyx),
                 "x".join(map(str, labels.shape)), time.perf_counter() - started)
    return labels


def skeleton_hulls(
    boundary: np.ndarray,
    skeletons: Sequence[CellSkeleton] | HullPoints,
    *,
    voxel_size: Sequence[float],
    parameters: RayParameters | None = None,
) -> np.ndarray:
    """Hulls of every skeleton's cell in a whole volume; see the module docstring.

    Parameters
    ----------
    boundary : (Z, Y, X) float ndarray
        Boundary probability, 1 = membrane, values in [0, 1].
    skeletons : sequence of CellSkeleton, or HullPoints
    voxel_size : (3,) floats
        nm, (z, y, x).
    parameters : RayParameters, optional

    Returns
    -------
    (Z, Y, X) uint64 ndarray
        Cell ids; 0 outside every hull and on the membrane. An empty skeleton list gives
        zeros.
    """
    parameters = parameters or RayParameters()
    boundary = _check_boundary(boundary, "boundary")
    shape, voxel = boundary.shape, _voxel_size(voxel_size)
    whole = tuple(slice(0, n) for n in shape)
    points = (skeletons if isinstance(skeletons, HullPoints)
              else hull_points(skeletons, shape=shape, voxel_size=voxel, parameters=parameters))
    started = time.perf_counter()
    labels = _hull_core(boundary, points, outer=whole, box=whole, shape=shape, voxel=voxel,
                        parameters=parameters)
    logger.info("hulls of %d points (%d cells) in a %s volume in %.1f s", len(points),
                len(np.unique(points.cell)), "x".join(map(str, shape)),
                time.perf_counter() - started)
    return labels
