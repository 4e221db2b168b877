"""Synthetic electron-microscopy phantom with exact ground truth.

The phantom is a small piece of simulated neuropil: a space-filling set of
cells separated by dark membranes, mitochondria, and chemical synapses
(postsynaptic density, cleft and presynaptic vesicle cloud), rendered as an
8-bit EM-like image with texture, blur, noise and, for anisotropic serial
sections, per-section brightness jitter and misalignment.  Because every
structure is placed explicitly, the ground truth (cell segmentation, synapse
partners, synapse masks) is exact, which makes the phantom useful as demo
data, as a reference for synapse partner-assignment tests and for scale
benchmarks.

Conventions
-----------
* Arrays are indexed ``(z, y, x)``; voxel sizes and all physical coordinates
  are in nanometres, also ordered ``(z, y, x)``.
* The physical position of voxel ``(i, j, k)`` is
  ``(i * vz, j * vy, k * vx)``, i.e. voxel centres sit on integer multiples
  of the voxel size and the volume origin is the centre of voxel ``(0, 0, 0)``.
  ``np.round(point / voxel_size)`` therefore recovers the voxel of a point.
* Segment id 0 is membrane (there is no extracellular space); cells are
  ``1..n`` without gaps.

Generation outline
------------------
1. Cells: Poisson-disc seed points in physical space; each voxel takes the
   nearest seed (a Voronoi partition queried with a KD-tree in z-slabs, so the
   partition is isotropic in nm whatever the voxel anisotropy).  Query
   coordinates are displaced by a smooth random warp so boundaries are curved,
   and per-section xy offsets reproduce section misalignment.  A voxel is
   membrane when it lies within half the membrane thickness of the bisector
   to the second-nearest seed; a final pass guarantees that no two different
   cells are 6-adjacent even where the membrane is thinner than a voxel.
2. Synapses: placed at membrane voxels between exactly two cells, with a
   cleft (membrane voxels between the partners), a postsynaptic density (PSD)
   in the postsynaptic cell and a vesicle cloud in the presynaptic cell.
   Polyadic sites share one presynaptic cell, one vesicle cloud and one
   ``pre_point`` between several postsynaptic partners.
3. Mitochondria: prolate spheroids with membrane and cristae that fit inside
   a single cell with a margin and avoid synapses and other mitochondria.
4. Rendering: slab-wise blur, section jitter and signal-dependent noise on
   the clean image.

Memory stays at the output arrays (about 15 bytes per voxel) plus a few
hundred MB of slab-sized work buffers, so volumes of ~10^8-10^9 voxels are
feasible on a workstation.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from detection.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "CELL_TYPES",
    "Phantom",
    "PhantomSynapse",
    "make_phantom",
    "synapse_table",
    "write_phantom_h5",
]

#: Names of the cell types assigned (uniformly at random) to cells.
CELL_TYPES: tuple[str, ...] = ("type_a", "type_b", "type_c", "type_d", "type_e")
# Types differ slightly in cytoplasm darkness, as stained cell classes do.
_TYPE_BRIGHTNESS = np.array([0.0, -12.0, 8.0, -5.0, 14.0], dtype=np.float32)

# Grey levels of the clean image (before blur, section jitter and noise).
_CYTO = 165.0
_MEMBRANE = 55.0
_EN_FACE = 118.0  # membrane seen face-on within a section
_CLEFT = 80.0
_PSD = 30.0
_TBAR = 42.0
_CLOUD = 150.0
_VES_RING = 70.0
_VES_LUMEN = 192.0
_MITO_MEMBRANE = 55.0
_EN_FACE = 118.0  # membrane seen face-on within a section
_MITO_MATRIX = 96.0
_MITO_CRISTA = 140.0

# Work-buffer size of the slab loops; ~100 bytes per voxel are live in the
# KD-tree pass, so this keeps it near 200 MB.
_SLAB_VOXELS = 1 << 21

# Synapse geometry (nm).
_PSD_NM = 35.0  # PSD thickness behind the cleft
_PRE_DEPTH_NM = 40.0  # minimum depth of pre_point inside the presynaptic cell
_MAX_PRE_DIST_NM = 220.0  # pre_point to every contact of its site
_POLY_RADIUS_NM = 150.0  # partner contacts of a polyadic site lie this close to the first
_CROWD_NM = 30.0  # free margin around every synapse
_MONO_RADIUS_NM = (50.0, 95.0)  # contact (cleft disc) radius
_POLY_RADIUS_RANGE_NM = (45.0, 75.0)
_CLOUD_RADIUS_NM = (80.0, 125.0)
_POLY_CLOUD_RADIUS_NM = (100.0, 145.0)
_VESICLE_RADIUS_NM = (16.0, 22.0)  # ~40 nm diameter
_VESICLE_FILL = 0.22  # fraction of the cloud volume occupied by vesicles

# Attempts before giving up on one presynaptic site.
_MONO_TRIES = 300
_POLY_TRIES = 120


@dataclass(frozen=True)
class PhantomSynapse:
    """One synaptic connection (one presynaptic site -> one postsynaptic partner).

    Attributes
    ----------
    synapse_id : int
        1..N, also the label of this synapse in ``Phantom.synapse_labels``.
    site_id : int
        Presynaptic site id; the rows of a polyadic site (one per
        postsynaptic partner) share it.
    pre_id, post_id : int
        Segment ids (> 0, different) of the presynaptic cell, which holds the
        vesicle cloud, and of the postsynaptic cell, which holds the PSD.
    pre_point : tuple of float
        (z, y, x) nm, inside the presynaptic cell and its vesicle cloud, at
        least ~40 nm behind the membrane; shared by all rows of a site.
    post_point : tuple of float
        (z, y, x) nm, inside the postsynaptic cell just behind the PSD.
    center : tuple of float
        (z, y, x) nm, a cleft voxel (membrane between pre and post cell).
    size_voxels : int
        Number of voxels labelled ``synapse_id`` (cleft + PSD).
    contact_area_nm2 : float
        Approximate area of the contact face: voxel faces between cleft and
        PSD, corrected for the orientation of the face.
    """

    synapse_id: int
    site_id: int
    pre_id: int
    post_id: int
    pre_point: tuple[float, float, float]
    post_point: tuple[float, float, float]
    center: tuple[float, float, float]
    size_voxels: int
    contact_area_nm2: float


@dataclass
class Phantom:
    """A synthetic EM volume and its ground truth.

    Attributes
    ----------
    em : ndarray of uint8, shape (Z, Y, X)
        Rendered image.
    segmentation : ndarray of uint64, shape (Z, Y, X)
        Cell ids ``1..n``; 0 is membrane.
    synapse_labels : ndarray of uint32, shape (Z, Y, X)
        ``synapse_id`` on each synapse's cleft and PSD voxels, 0 elsewhere.
    mitochondria : ndarray of bool, shape (Z, Y, X)
        Mitochondrion voxels (always inside cells).
    vesicles : ndarray of bool, shape (Z, Y, X)
        Vesicle-cloud voxels (the presynaptic region holding the vesicles,
        always inside the site's presynaptic cell).
    voxel_size : tuple of float
        (z, y, x) nm.
    synapses : list of PhantomSynapse
        Ordered by ``synapse_id``.
    cell_types : dict of int to str
        Cell id -> one of `CELL_TYPES`.
    seed : int
        Seed used.
    params : dict
        Generation parameters (requested and resolved), JSON-serialisable.
    """

    em: np.ndarray
    segmentation: np.ndarray
    synapse_labels: np.ndarray
    mitochondria: np.ndarray
    vesicles: np.ndarray
    voxel_size: tuple[float, float, float]
    synapses: list[PhantomSynapse]
    cell_types: dict[int, str]
    seed: int
    params: dict

    @property
    def shape(self) -> tuple[int, int, int]:
        """Volume shape (Z, Y, X)."""
        return tuple(self.em.shape)


# --------------------------------------------------------------------------
# small helpers


def _rng(seed: int, *stream: int) -> np.random.Generator:
    # Independent streams per purpose (and per section) keep each part of the
    # phantom stable when another part's parameters or the slab size change.
    return np.random.default_rng([seed, *stream])


def _edt(mask: np.ndarray, sampling: np.ndarray) -> np.ndarray:
    """Distance (nm) from each True voxel to the nearest False voxel.

    Unlike ``ndi.distance_transform_edt`` this returns +inf when there is no
    False voxel at all (scipy returns meaningless finite values then).
    """
    if mask.all():
        return np.full(mask.shape, np.inf)
    return ndi.distance_transform_edt(mask, sampling=sampling)


def _box(center, half_nm, voxel_size, shape):
    """Slices of the box of half-width ``half_nm`` (scalar or per axis) around voxel ``center``, clipped."""
    slices, lo = [], []
    halves = np.broadcast_to(np.asarray(half_nm, dtype=float), (3,))
    for c, h_nm, v, n in zip(center, halves, voxel_size, shape):
        h = max(1, int(math.ceil(h_nm / v)))
        a, b = max(0, int(c) - h), min(n, int(c) + h + 1)
        slices.append(slice(a, b))
        lo.append(a)
    return tuple(slices), np.array(lo)


def _grid_nm(slices, voxel_size):
    """Broadcastable physical coordinates (nm) of the voxels of a box."""
    return (
        (np.arange(slices[0].start, slices[0].stop) * voxel_size[0])[:, None, None],
        (np.arange(slices[1].start, slices[1].stop) * voxel_size[1])[None, :, None],
        (np.arange(slices[2].start, slices[2].stop) * voxel_size[2])[None, None, :],
    )


def _dist(grid, point_nm):
    return np.sqrt(
        (grid[0] - point_nm[0]) ** 2 + (grid[1] - point_nm[1]) ** 2 + (grid[2] - point_nm[2]) ** 2
    )


def _nearest_true(mask, dist):
    """Index (tuple) of the True voxel of ``mask`` with the smallest ``dist``."""
    flat = np.where(mask, dist, np.inf)
    i = int(np.argmin(flat))
    return np.unravel_index(i, mask.shape)


class _SmoothField:
    """Smooth Gaussian random fields evaluated slab by slab.

    White noise on a coarse lattice (spacing ``corr_nm``) is interpolated with
    separable Gaussian weights, so a slab costs three small matrix products
    instead of a full-volume filter.  Each field has zero mean and unit
    variance at every voxel.

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : tuple of int
        Volume shape (Z, Y, X).
    voxel_size : tuple of float
        (z, y, x) nm.
    corr_nm : float
        Correlation length in nm.
    n_fields : int
        Number of independent fields evaluated together.
    """

    def __init__(self, rng, shape, voxel_size, corr_nm, n_fields=1):
        weights = []
        for n, v in zip(shape, voxel_size):
            x = np.arange(n) * v
            g = np.arange(-2.0 * corr_nm, n * v + 2.0 * corr_nm, corr_nm)
            w = np.exp(-0.5 * ((x[:, None] - g[None, :]) / corr_nm) ** 2)
            w /= np.sqrt((w**2).sum(axis=1, keepdims=True))
            weights.append(w.astype(np.float32))
        self._wz, self._wy, wx = weights
        coarse = rng.standard_normal((n_fields, self._wz.shape[1], self._wy.shape[1], wx.shape[1]))
        # contracting x once up front leaves only small products per slab
        self._cx = np.ascontiguousarray(coarse.astype(np.float32) @ wx.T)  # (f, Gz, Gy, X)

    def slab(self, z0: int, z1: int) -> np.ndarray:
        """Field values for sections ``z0:z1``, shape (nz, f, Y, X), float32."""
        t = np.tensordot(self._wz[z0:z1], self._cx, axes=([1], [1]))  # (nz, f, Gy, X)
        nz, f, gy, nx = t.shape
        # one large GEMM; a broadcast matmul would not reach BLAS
        t = np.ascontiguousarray(t.transpose(2, 0, 1, 3)).reshape(gy, -1)
        out = (self._wy @ t).reshape(-1, nz, f, nx)
        return out.transpose(1, 2, 0, 3)  # (nz, f, Y, X)


def _poisson_seeds(rng, n, extent_nm):
    """``n`` points in the box ``[0, extent)`` (nm) with a minimum spacing.

    The spacing starts at 0.6 of the mean cell diameter and shrinks when the
    box is too crowded, so the call always returns ``n`` points.
    """
    extent = np.asarray(extent_nm, dtype=float)
    dmin = 0.6 * (float(np.prod(extent)) / n) ** (1.0 / 3.0)
    pts = np.empty((n, 3))
    k, misses = 0, 0
    while k < n:
        cand = rng.random((256, 3)) * extent
        for c in cand:
            if k and np.min(np.sum((pts[:k] - c) ** 2, axis=1)) < dmin * dmin:
                misses += 1
                if misses > 300:
                    dmin *= 0.9
                    misses = 0
                continue
            pts[k] = c
            k += 1
            misses = 0
            if k == n:
                break
    return pts


def _partner_plan(n_synapses, polyadic_fraction, max_partners, rng):
    """Number of postsynaptic partners of each presynaptic site to place.

    ``polyadic_fraction`` is the fraction of synapses (rows) that belong to
    polyadic sites; when it is > 0 at least one polyadic site is planned.
    The counts sum to ``n_synapses``.
    """
    if n_synapses <= 0:
        return []
    n_poly = int(round(polyadic_fraction * n_synapses)) if max_partners >= 2 else 0
    if polyadic_fraction > 0 and max_partners >= 2 and n_synapses >= 2:
        n_poly = max(n_poly, 2)
    sites = []
    r = n_poly
    while r >= 2:
        top = min(max_partners, r)
        p = int(rng.integers(2, top + 1))
        if r - p == 1:  # a single leftover row cannot form a polyadic site
            p = p - 1 if p > 2 else (p + 1 if p + 1 <= top else p)
        sites.append(p)
        r -= p
    sites.sort(reverse=True)
    return sites + [1] * (n_synapses - sum(sites))


# --------------------------------------------------------------------------
# phase 1: cells


def _nearest_cells(tree, seeds, pts, sep_matrix=None):
    """Nearest-seed label (1-based) and distance to the cell boundary.

    Parameters
    ----------
    tree : cKDTree
        Tree over ``seeds``.
    seeds : ndarray, shape (n, 3)
    pts : ndarray, shape (m, 3)
        Query points (nm, warped).
    sep_matrix : ndarray, shape (n, n), optional
        Precomputed seed-to-seed distances (saves time for small ``n``).

    Returns
    -------
    label : ndarray of int64, shape (m,)
    boundary_nm : ndarray of float64, shape (m,)
        Distance to the nearest bisector plane among the next two seeds,
        which is the distance to the Voronoi face everywhere except very
        close to cell corners.
    """
    k = min(3, len(seeds))
    d, idx = tree.query(pts, k=k, workers=-1)
    d0sq = d[:, 0] ** 2
    bnd = np.full(len(pts), np.inf)
    for j in range(1, k):
        if sep_matrix is not None:
            sep = sep_matrix[idx[:, 0], idx[:, j]]
        else:
            sep = np.linalg.norm(seeds[idx[:, 0]] - seeds[idx[:, j]], axis=1)
        bnd = np.minimum(bnd, (d[:, j] ** 2 - d0sq) / (2.0 * sep))
    return idx[:, 0] + 1, bnd


def _coarse_nodes(n, stride):
    """Coarse node indices covering ``0..n-1`` and each index's coarse cell."""
    nodes = np.unique(np.r_[np.arange(0, n, stride), n - 1])
    cell = np.clip(np.searchsorted(nodes, np.arange(n), side="right") - 1, 0, max(0, len(nodes) - 2))
    return nodes, cell


def _build_cells(shape, voxel_size, n_cells, membrane_nm, boundary_warp, shifts_nm, seed):
    """Voronoi cells with membranes.

    Returns
    -------
    seg : ndarray of uint64, shape (Z, Y, X)
        Ids ``1..n_cells`` (some may be missing), 0 = membrane.
    counts : ndarray of int64, shape (n_cells + 1,)
        Voxel count per id.
    """
    Z, Y, X = shape
    v = np.asarray(voxel_size, dtype=float)
    extent = np.asarray(shape) * v
    seeds = _poisson_seeds(_rng(seed, 0), n_cells, extent)
    tree = cKDTree(seeds)
    sep_matrix = None
    if n_cells <= 2048:
        sep_matrix = np.sqrt(((seeds[:, None, :] - seeds[None, :, :]) ** 2).sum(-1))
    spacing = (float(np.prod(extent)) / n_cells) ** (1.0 / 3.0)
    warp = _SmoothField(_rng(seed, 2), shape, voxel_size, corr_nm=0.5 * spacing, n_fields=3)
    amp = boundary_warp * spacing
    half = 0.5 * membrane_nm
    # Cells are large next to the voxel, so most voxels can take the label
    # of a coarse in-plane grid (~24 nm) whose four corners agree and lie
    # well inside one cell; only the rest is queried exactly.  The margin
    # covers the corner distance stretched by the warp.
    stride = max(1, int(round(24.0 / min(v[1], v[2]))))
    margin = half + 1.5 * stride * max(v[1], v[2])
    yc, cy = _coarse_nodes(Y, stride)
    xc, cx = _coarse_nodes(X, stride)
    zoff = np.arange(Z) * v[0]
    yoff = np.arange(Y) * v[1]
    xoff = np.arange(X) * v[2]

    def query(w, z0, zi, yi, xi):
        # zi, yi, xi: broadcastable index arrays into the slab
        zi, yi, xi = np.broadcast_arrays(zi, yi, xi)
        pts = np.empty(zi.shape + (3,))
        pts[..., 0] = zoff[z0 + zi] + amp * w[zi, 0, yi, xi]
        pts[..., 1] = yoff[yi] + shifts_nm[z0 + zi, 0] + amp * w[zi, 1, yi, xi]
        pts[..., 2] = xoff[xi] + shifts_nm[z0 + zi, 1] + amp * w[zi, 2, yi, xi]
        lab, bnd = _nearest_cells(tree, seeds, pts.reshape(-1, 3), sep_matrix)
        return lab.reshape(zi.shape), bnd.reshape(zi.shape)

    seg = np.empty(shape, dtype=np.uint64)
    counts = np.zeros(n_cells + 1, dtype=np.int64)
    nzs = max(1, _SLAB_VOXELS // (Y * X))
    for z0 in range(0, Z, nzs):
        z1 = min(Z, z0 + nzs)
        nz = z1 - z0
        w = warp.slab(z0, z1)  # (nz, 3, Y, X)
        zi = np.arange(nz)[:, None, None]
        if len(yc) > 1 and len(xc) > 1:
            lab_c, bnd_c = query(w, z0, zi, yc[None, :, None], xc[None, None, :])
            lo_hi = (slice(None, -1), slice(1, None))
            corners = [(slice(None), a, b) for a in lo_hi for b in lo_hi]
            same = np.ones(lab_c[corners[0]].shape, dtype=bool)
            low = np.full(same.shape, np.inf)
            for c in corners:
                same &= lab_c[c] == lab_c[corners[0]]
                low = np.minimum(low, bnd_c[c])
            safe_c = same & (low >= margin)
            safe = safe_c[:, cy[:, None], cx[None, :]]
            lab = lab_c[corners[0]][:, cy[:, None], cx[None, :]]
            del lab_c, bnd_c, same, low, safe_c
        else:
            safe = np.zeros((nz, Y, X), dtype=bool)
            lab = np.zeros((nz, Y, X), dtype=np.int64)
        uz, uy, ux = np.nonzero(~safe)
        del safe
        if uz.size:
            lab_u, bnd_u = query(w, z0, uz, uy, ux)
            lab_u[bnd_u < half] = 0
            lab[uz, uy, ux] = lab_u
        del w, uz, uy, ux
        # Membranes thinner than a voxel (typical along z for serial
        # sections) can leave two cells face to face; clear the + side voxel
        # so every pair of different cells is separated by label 0.
        if z0 > 0:
            _separate(seg[z0 - 1].astype(np.int64), lab[0])
        for axis in range(3):
            a = np.moveaxis(lab, axis, 0)
            if a.shape[0] > 1:
                _separate(a[:-1], a[1:])
        seg[z0:z1] = lab
        counts += np.bincount(lab.ravel(), minlength=n_cells + 1)
    return seg, counts


def _separate(lo, hi):
    """Zero voxels of ``hi`` that face a different nonzero label in ``lo`` (in place)."""
    clash = (lo != hi) & (lo != 0) & (hi != 0)
    hi[clash] = 0


# --------------------------------------------------------------------------
# phase 2: synapses


class _SynapsePlacer:
    """Places synapses one presynaptic site at a time into shared arrays."""

    def __init__(self, seg, em, syn, ves, voxel_size, membrane_nm, rng):
        self.seg, self.em, self.syn, self.ves = seg, em, syn, ves
        self.v = np.asarray(voxel_size, dtype=float)
        self.vmax = float(self.v.max())
        self.membrane_nm = membrane_nm
        # a membrane voxel "touches" a cell within this distance; generous
        # because the membrane band is not exactly membrane_nm thick
        self.tol = membrane_nm + self.vmax
        # the PSD is at least one voxel deep even where sections are thick
        self.reach = max(_PSD_NM, self.vmax)
        self.rng = rng
        self.synapses: list[PhantomSynapse] = []
        self.n_sites = 0
        self._face = ndi.generate_binary_structure(3, 1)

    # -- sampling ---------------------------------------------------------

    def _sample_membrane_voxel(self, margin_nm):
        shape = self.seg.shape
        lo = np.array([min(int(math.ceil(margin_nm / v)), (n - 1) // 2) for v, n in zip(self.v, shape)])
        hi = np.maximum(np.array(shape) - lo, lo + 1)
        for _ in range(20):
            cand = self.rng.integers(lo, hi, size=(64, 3))
            vals = self.seg[cand[:, 0], cand[:, 1], cand[:, 2]]
            ok = np.flatnonzero(vals == 0)
            if ok.size:
                return cand[ok[0]]
        return None

    def _neighbour_cells(self, m):
        sl, _ = _box(m, self.membrane_nm, self.v, self.seg.shape)
        labs = np.unique(self.seg[sl])
        return labs[labs != 0]

    def _occupied(self, center_idx, radius_nm):
        """True if any synapse or vesicle-cloud voxel lies within ``radius_nm``."""
        sl, _ = _box(center_idx, radius_nm, self.v, self.seg.shape)
        ball = _dist(_grid_nm(sl, self.v), center_idx * self.v) <= radius_nm
        return bool(np.any(self.syn[sl][ball]) or np.any(self.ves[sl][ball]))

    # -- one site ----------------------------------------------------------

    def try_site(self, n_partners: int) -> bool:
        """One attempt at placing a site with ``n_partners`` partners; True if placed."""
        rng, v = self.rng, self.v
        poly = n_partners > 1
        radii = rng.uniform(*(_POLY_RADIUS_RANGE_NM if poly else _MONO_RADIUS_NM), size=n_partners)
        # contacts are centred within `spread` of the first one
        spread = _POLY_RADIUS_NM + radii.max() if poly else radii[0]
        # contacts may run into the volume faces (clipped), but not their centres
        m = self._sample_membrane_voxel(self.reach + _CROWD_NM)
        if m is None:
            return False
        labs = self._neighbour_cells(m)
        if labs.size != 2:  # keep synapses off junctions of three or more cells
            return False
        if self._occupied(m, spread + self.reach + _CROWD_NM):
            return False
        pre, post = (int(labs[0]), int(labs[1])) if rng.random() < 0.5 else (int(labs[1]), int(labs[0]))

        sl, lo = _box(m, spread + self.reach + 2 * v, v, self.seg.shape)
        site = {
            "lo": lo,
            "seg": self.seg[sl],
            "grid": _grid_nm(sl, v),
        }
        segb = site["seg"]
        mask_pre = segb == pre
        site["d_pre"] = _edt(~mask_pre, v)
        contacts = [(post, tuple(int(i) for i in m - lo), float(radii[0]))]

        if poly:
            dist_m = _dist(site["grid"], m * v)
            other = (segb != 0) & ~mask_pre & (segb != post)
            if not other.any():
                return False
            # one feature transform names the nearest other cell everywhere,
            # instead of one distance transform per candidate partner
            d_other, ind = ndi.distance_transform_edt(~other, sampling=v, return_indices=True)
            nearest = segb[tuple(ind)]
            free = (
                (segb == 0)
                & (site["d_pre"] <= self.tol)
                & (d_other <= self.tol)
                & (dist_m <= _POLY_RADIUS_NM)
            )
            cells = np.unique(nearest[free])
            rng.shuffle(cells)
            for c in cells:
                if len(contacts) == n_partners:
                    break
                r_new = float(radii[len(contacts)])
                cand = free & (nearest == c)
                for _, mc, rc in contacts:
                    cand &= _dist(site["grid"], (np.asarray(mc) + lo) * v) >= 0.75 * (rc + r_new)
                if cand.any():
                    contacts.append((int(c), _nearest_true(cand, dist_m), r_new))
            if len(contacts) < n_partners:
                return False

        claimed = np.zeros(segb.shape, dtype=bool)
        built = []
        for cell, mc, rc in contacts:
            c = self._contact(site, cell, mc, rc, claimed)
            if c is None:
                return False
            claimed[c["sub"]] |= c["cleft"] | c["psd"]
            built.append(c)

        # pre_point: the presynaptic voxel deep enough inside the cell that is
        # closest to all contacts of the site
        d_in = _edt(mask_pre, v)
        score = np.zeros(segb.shape)
        for c in built:
            score = np.maximum(score, _dist(site["grid"], c["center_nm"]))
        cand = mask_pre & (d_in >= _PRE_DEPTH_NM)
        if not cand.any():
            return False
        p_loc = _nearest_true(cand, score)
        if score[p_loc] > _MAX_PRE_DIST_NM:
            return False
        pre_idx = np.asarray(p_loc) + lo
        cloud_r = float(rng.uniform(*(_POLY_CLOUD_RADIUS_NM if poly else _CLOUD_RADIUS_NM)))
        if self._occupied(pre_idx, cloud_r + _CROWD_NM):
            return False

        # commit
        self.n_sites += 1
        site_id = self.n_sites
        csl, cloud = self._cloud(pre_idx, pre, cloud_r)
        self.ves[csl] |= cloud
        self._render_cloud(csl, cloud, pre_idx * v, cloud_r, pre)
        if poly:
            self._render_tbar(csl, cloud, pre_idx, [c["center_nm"] for c in built])
        synb, em_b = self.syn[sl], self.em[sl]
        pre_nm = tuple(float(x) for x in pre_idx * v)
        for c in built:
            sid = len(self.synapses) + 1
            lab = c["cleft"] | c["psd"]
            synb[c["sub"]][lab] = sid
            em_c = em_b[c["sub"]]
            em_c[c["cleft"]] = _CLEFT
            em_c[c["psd"]] = _PSD
            self.synapses.append(
                PhantomSynapse(
                    synapse_id=sid,
                    site_id=site_id,
                    pre_id=pre,
                    post_id=c["post"],
                    pre_point=pre_nm,
                    post_point=tuple(float(x) for x in c["post_nm"]),
                    center=tuple(float(x) for x in c["center_nm"]),
                    size_voxels=int(lab.sum()),
                    contact_area_nm2=float(c["area"]),
                )
            )
        return True

    def _contact(self, site, post, mc, rc, claimed):
        """Cleft, PSD and post_point of one contact, or None when unusable.

        Works in a sub-box of the site box around the contact centre ``mc``
        (site-box index); the returned masks are relative to ``sub``.
        """
        v = self.v
        segs = site["seg"]
        half = np.ceil((rc + self.reach + 2 * v) / v).astype(int)
        sub = tuple(
            slice(max(0, c - h), min(n, c + h + 1)) for c, h, n in zip(mc, half, segs.shape)
        )
        start = np.array([s.start for s in sub])
        segb = segs[sub]
        grid = (
            site["grid"][0][sub[0], :, :],
            site["grid"][1][:, sub[1], :],
            site["grid"][2][:, :, sub[2]],
        )
        m_loc = tuple(int(i) for i in np.asarray(mc) - start)
        center_nm = (np.asarray(mc) + site["lo"]) * v
        dist_c = _dist(grid, center_nm)
        mask_post = segb == post
        d_post = _edt(~mask_post, v)
        cleft = (
            (segb == 0)
            & (site["d_pre"][sub] <= self.tol)
            & (d_post <= self.tol)
            & (dist_c <= rc)
            & ~claimed[sub]
        )
        if not cleft[m_loc]:
            return None
        # a ball can cut a second, unrelated sheet of the same two membranes
        comp, _ = ndi.label(cleft, structure=np.ones((3, 3, 3), dtype=bool))
        cleft = comp == comp[m_loc]
        d_cleft = _edt(~cleft, v)
        psd = (
            mask_post
            & ((d_cleft <= _PSD_NM) | ndi.binary_dilation(cleft, structure=self._face))
            & ~claimed[sub]
        )
        if np.count_nonzero(psd) < 3:
            return None
        behind = mask_post & ~psd & (d_cleft <= self.reach + self.vmax + 1.0)
        if not behind.any():
            return None
        post_loc = _nearest_true(behind, dist_c)
        # contact area from the cleft/PSD voxel faces, divided by the L1 norm
        # of the face normal to undo the staircase overcount of oblique faces
        faces = 0.0
        for axis in range(3):
            a, b = np.moveaxis(cleft, axis, 0), np.moveaxis(psd, axis, 0)
            n = np.count_nonzero(a[:-1] & b[1:]) + np.count_nonzero(b[:-1] & a[1:])
            faces += n * float(np.prod(np.delete(v, axis)))
        normal = (np.argwhere(psd).mean(axis=0) - np.argwhere(cleft).mean(axis=0)) * v
        norm = float(np.linalg.norm(normal))
        l1 = float(np.abs(normal).sum()) / norm if norm > 0 else 1.0
        area = faces / max(1.0, l1)
        if area < 0.25 * math.pi * rc * rc:  # grazing or clipped contact
            return None
        return {
            "post": int(post),
            "sub": sub,
            "cleft": cleft,
            "psd": psd,
            "center_nm": center_nm,
            "post_nm": (np.asarray(post_loc) + start + site["lo"]) * v,
            "area": area,
        }

    def _cloud(self, pre_idx, pre, radius):
        """Vesicle-cloud mask: presynaptic voxels within ``radius`` of pre_point."""
        sl, _ = _box(pre_idx, radius, self.v, self.seg.shape)
        dist = _dist(_grid_nm(sl, self.v), pre_idx * self.v)
        return sl, (dist <= radius) & (self.seg[sl] == pre)

    def _render_cloud(self, sl, cloud, pre_nm, radius, pre):
        rng, v = self.rng, self.v
        self.em[sl][cloud] = _CLOUD
        vol = np.count_nonzero(cloud) * float(np.prod(v))
        r_mean = float(np.mean(_VESICLE_RADIUS_NM))
        n_target = int(_VESICLE_FILL * vol / (4.0 / 3.0 * math.pi * r_mean**3))
        pts = np.argwhere(cloud) + np.array([s.start for s in sl])
        centres, radii = [], []
        ring_w = max(5.0, 0.5 * min(v[1], v[2]))
        for _ in range(4 * n_target):
            if len(centres) >= n_target:
                break
            c = (pts[rng.integers(len(pts))] + rng.uniform(-0.5, 0.5, 3)) * v
            r = float(rng.uniform(*_VESICLE_RADIUS_NM))
            if centres:
                dd = np.linalg.norm(np.asarray(centres) - c, axis=1)
                if np.any(dd < np.asarray(radii) + r + 2.0):
                    continue
            vsl, _ = _box(np.rint(c / v).astype(int), r + 3.0, v, self.seg.shape)
            grid = _grid_nm(vsl, v)
            ball = _dist(grid, c) <= r + 3.0
            in_cloud = (_dist(grid, pre_nm) <= radius) & (self.seg[vsl] == pre)
            if not ball.any() or not np.all(in_cloud[ball]):
                continue
            centres.append(c)
            radii.append(r)
            # a section through a sphere shows a circle of radius sqrt(r^2 - dz^2)
            h2 = r * r - (grid[0] - c[0]) ** 2
            rc = np.sqrt(np.maximum(h2, 0.0))
            rr = np.sqrt((grid[1] - c[1]) ** 2 + (grid[2] - c[2]) ** 2)
            em_v = self.em[vsl]
            em_v[(h2 > 0) & (np.abs(rr - rc) <= ring_w) & in_cloud] = _VES_RING
            em_v[(h2 > 0) & (rr < rc - ring_w) & in_cloud] = _VES_LUMEN

    def _render_tbar(self, sl, cloud, pre_idx, centres_nm):
        # fly-like T-bar: a dense rod from pre_point towards the contacts
        grid = _grid_nm(sl, self.v)
        a = pre_idx * self.v
        ab = np.mean(centres_nm, axis=0) - a
        L2 = float(ab @ ab)
        if L2 == 0:
            return
        t = ((grid[0] - a[0]) * ab[0] + (grid[1] - a[1]) * ab[1] + (grid[2] - a[2]) * ab[2]) / L2
        t = np.clip(t, 0.0, 1.0)
        d = np.sqrt(
            (grid[0] - a[0] - t * ab[0]) ** 2
            + (grid[1] - a[1] - t * ab[1]) ** 2
            + (grid[2] - a[2] - t * ab[2]) ** 2
        )
        self.em[sl][cloud & (d <= 28.0)] = _TBAR


# --------------------------------------------------------------------------
# phase 3: mitochondria


def _place_mitochondria(seg, em, syn, ves, mito, voxel_size, n_target, rng):
    """Place up to ``n_target`` spheroidal mitochondria; returns the number placed."""
    v = np.asarray(voxel_size, dtype=float)
    shape = seg.shape
    margin = 15.0  # nm of cytoplasm kept between mitochondrion and membrane
    band = max(10.0, min(v[1], v[2]))  # outer membrane thickness
    placed, tries = 0, 0
    while placed < n_target and tries < 40 * n_target:
        tries += 1
        c_idx = rng.integers(0, shape)
        cell = seg[tuple(c_idx)]
        if cell == 0 or ves[tuple(c_idx)] or syn[tuple(c_idx)] or mito[tuple(c_idx)]:
            continue
        r = float(rng.uniform(50.0, 90.0))
        length = r * float(rng.uniform(1.5, 4.0))
        u = rng.standard_normal(3)
        u /= np.linalg.norm(u)
        c_nm = (c_idx + rng.uniform(-0.5, 0.5, 3)) * v
        for _shrink in range(3):
            ro, lo_ = r + margin, length + margin
            half = np.sqrt(lo_**2 * u**2 + ro**2 * (1 - u**2))
            sl = tuple(
                slice(max(0, int(math.floor((c - h) / s))), min(n, int(math.ceil((c + h) / s)) + 1))
                for c, h, s, n in zip(c_nm, half, v, shape)
            )
            grid = _grid_nm(sl, v)
            q = [g - c for g, c in zip(grid, c_nm)]
            a = q[0] * u[0] + q[1] * u[1] + q[2] * u[2]
            b2 = np.maximum(q[0] ** 2 + q[1] ** 2 + q[2] ** 2 - a**2, 0.0)
            outer = a**2 / lo_**2 + b2 / ro**2 <= 1.0
            if (
                np.all(seg[sl][outer] == cell)
                and not np.any(ves[sl][outer])
                and not np.any(syn[sl][outer])
                and not np.any(mito[sl][outer])
            ):
                break
            r, length = 0.8 * r, 0.8 * length
        else:
            continue
        f = a**2 / length**2 + b2 / r**2
        body = f <= 1.0
        if not body.any():
            continue
        mito[sl] |= body
        # first-order distance to the surface: (1 - rho) / |grad rho|
        rho = np.sqrt(f)
        gx = [2 * a * u[k] / length**2 + 2 * (q[k] - a * u[k]) / r**2 for k in range(3)]
        gnorm = np.sqrt(gx[0] ** 2 + gx[1] ** 2 + gx[2] ** 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = np.where(rho > 0.2, 2 * rho * (1 - rho) / gnorm, np.inf)
        period = float(rng.uniform(35.0, 50.0))
        stripes = np.cos(2 * math.pi * a / period + rng.uniform(0, 2 * math.pi)) > 0.55
        em_b = em[sl]
        em_b[body] = _MITO_MATRIX
        em_b[body & stripes & (depth > band)] = _MITO_CRISTA
        em_b[body & (depth <= band)] = _MITO_MEMBRANE
        placed += 1
    return placed


# --------------------------------------------------------------------------
# rendering


def _render_base(seg, em, voxel_size, cell_type_idx, membrane_nm, seed):
    """Write the clean cytoplasm/membrane image into ``em`` slab by slab."""
    Z, Y, X = seg.shape
    v = np.asarray(voxel_size, dtype=float)
    lut = np.full(len(cell_type_idx) + 1, _CYTO, dtype=np.float32)
    lut[1:] += _TYPE_BRIGHTNESS[cell_type_idx]
    lut[0] = _MEMBRANE
    texture = _SmoothField(_rng(seed, 9), seg.shape, voxel_size, corr_nm=150.0)
    # fine granular texture per section, ~12 nm grain
    sig = (12.0 / v[1], 12.0 / v[2])
    gain = math.sqrt(4.0 * math.pi * sig[0] * sig[1])  # restores unit variance after filtering
    # A membrane cut almost parallel to the section shows as a wide, washed-out
    # grey smear rather than a dark line; the fraction of membrane pixels in
    # a window a few membranes wide tells the two apart.
    win = 2 * int(math.ceil(membrane_nm / min(v[1], v[2]))) + 3
    nzs = max(1, _SLAB_VOXELS // (Y * X))
    for z0 in range(0, Z, nzs):
        z1 = min(Z, z0 + nzs)
        lab = seg[z0:z1]
        img = lut[lab]
        cell = lab != 0
        wide = ndi.uniform_filter((~cell).astype(np.float32), size=(1, win, win), mode="nearest")
        img += (_EN_FACE - _MEMBRANE) * np.clip((wide - 0.55) / 0.35, 0.0, 1.0) * ~cell
        del wide
        img += 8.0 * texture.slab(z0, z1)[:, 0] * np.where(cell, 1.0, 0.4).astype(np.float32)
        for k, z in enumerate(range(z0, z1)):
            g = _rng(seed, 10, z).standard_normal((Y, X), dtype=np.float32)
            g = ndi.gaussian_filter(g, sig, mode="wrap") * gain
            img[k] += 5.0 * g * cell[k]
        em[z0:z1] = np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _finish_em(em, voxel_size, noise_sigma, blur_nm, gains, offsets, seed):
    """Blur, per-section brightness/contrast and noise, in place, slab by slab."""
    Z, Y, X = em.shape
    sigma = [blur_nm / s for s in voxel_size]
    sigma = [s if s >= 0.3 else 0.0 for s in sigma]  # sub-voxel blur along z is invisible
    halo = int(math.ceil(3 * sigma[0])) if sigma[0] > 0 else 0
    nzs = max(1, halo, _SLAB_VOXELS // (Y * X))
    prev = None  # clean planes preceding the current slab (already overwritten in em)
    for z0 in range(0, Z, nzs):
        z1 = min(Z, z0 + nzs)
        top = min(Z, z1 + halo)
        parts = [em[z0:top].astype(np.float32)]
        if prev is not None:
            parts.insert(0, prev)
        img = np.concatenate(parts) if len(parts) > 1 else parts[0]
        lo = 0 if prev is None else prev.shape[0]
        if halo:
            prev = em[max(0, z1 - halo) : z1].astype(np.float32)
        if any(sigma):
            img = ndi.gaussian_filter(img, sigma, mode="nearest", truncate=3.0)
        img = img[lo : lo + (z1 - z0)]
        img = (img - 128.0) * gains[z0:z1, None, None] + 128.0 + offsets[z0:z1, None, None]
        if noise_sigma > 0:
            for k, z in enumerate(range(z0, z1)):
                # shot-noise-like: the spread grows with the signal
                scale = noise_sigma * np.sqrt(np.clip(img[k], 16.0, 255.0) / 160.0)
                img[k] += scale * _rng(seed, 11, z).standard_normal((Y, X), dtype=np.float32)
        em[z0:z1] = np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------
# public API


def make_phantom(
    shape=(64, 256, 256),
    *,
    voxel_size=(40.0, 8.0, 8.0),
    n_cells=30,
    n_synapses=40,
    polyadic_fraction=0.25,
    max_partners=3,
    noise_sigma=12.0,
    section_jitter=None,
    seed=0,
    membrane_nm=24.0,
    n_mitochondria=None,
    boundary_warp=0.12,
    blur_nm=5.0,
) -> Phantom:
    """Generate a synthetic EM volume with cells, synapses and mitochondria.

    Parameters
    ----------
    shape : tuple of int
        Volume shape (Z, Y, X).
    voxel_size : tuple of float
        Voxel size (z, y, x) in nm.
    n_cells : int
        Number of cells (>= 2).  Cells are physically isotropic (in nm).  A
        cell that ends up with no voxel (possible only when cells are about
        as small as the membrane) is dropped, the others are renumbered
        ``1..n`` in seed order, a warning is logged and
        ``params["n_cells_generated"]`` holds ``n``.
    n_synapses : int
        Number of synapses (rows, i.e. pre/post pairs) to place.  When fewer
        fit, a warning is logged and those placed are returned.
    polyadic_fraction : float
        Fraction (0..1) of synapses that belong to polyadic sites (one
        presynaptic site with 2..`max_partners` postsynaptic partners).  Any
        value > 0 plans at least one polyadic site.  A polyadic site that
        cannot be placed is replaced by monadic synapses, keeping the total.
    max_partners : int
        Largest number of partners of a polyadic site.
    noise_sigma : float
        Standard deviation of the noise (grey levels) at cytoplasm
        brightness; it scales with the square root of the signal.
    section_jitter : float or None
        Strength of per-section artefacts: brightness offset
        (6 grey levels std per unit), contrast (6 % std) and xy
        misalignment (1 voxel std, applied to the geometry so the labels
        stay aligned with the image).  ``None`` means 1.0 when the voxel is
        at least twice as long in z as in xy (serial sections) and 0.0
        otherwise; 0 disables it.
    seed : int
        Non-negative random seed; the same arguments give identical output.
    membrane_nm : float
        Membrane thickness in nm; at least one voxel wide in any case.
    n_mitochondria : int or None
        Number of mitochondria to attempt; ``None`` means 6 per um^3.
    boundary_warp : float
        Amplitude of the smooth displacement that bends cell boundaries, as a
        fraction of the mean cell diameter; 0 gives flat Voronoi faces.
    blur_nm : float
        Gaussian blur sigma in nm (per axis; ignored along axes where it is
        below 0.3 voxel).

    Returns
    -------
    Phantom
    """
    t_start = time.perf_counter()
    shape = tuple(int(s) for s in shape)
    voxel_size = tuple(float(s) for s in voxel_size)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"shape must be three positive ints, got {shape}")
    if len(voxel_size) != 3 or min(voxel_size) <= 0:
        raise InputError(f"voxel_size must be three positive floats, got {voxel_size}")
    if int(n_cells) < 2:
        raise InputError("n_cells must be at least 2")
    if int(n_synapses) < 0:
        raise InputError("n_synapses must be >= 0")
    if not 0.0 <= polyadic_fraction <= 1.0:
        raise InputError("polyadic_fraction must be in [0, 1]")
    if int(max_partners) < 1:
        raise InputError("max_partners must be >= 1")
    if noise_sigma < 0 or membrane_nm <= 0 or blur_nm < 0 or boundary_warp < 0:
        raise InputError("noise_sigma, blur_nm, boundary_warp must be >= 0 and membrane_nm > 0")
    seed = int(seed)
    if seed < 0:
        raise InputError("seed must be non-negative")
    n_cells, n_synapses, max_partners = int(n_cells), int(n_synapses), int(max_partners)
    anisotropic = voxel_size[0] >= 2.0 * max(voxel_size[1], voxel_size[2])
    if section_jitter is None:
        section_jitter = 1.0 if anisotropic else 0.0
    section_jitter = float(section_jitter)
    if section_jitter < 0:
        raise InputError("section_jitter must be >= 0")
    Z, Y, X = shape
    volume_um3 = float(np.prod(np.asarray(shape) * np.asarray(voxel_size))) * 1e-9
    if n_mitochondria is None:
        n_mitochondria = int(round(6.0 * volume_um3))
    n_mitochondria = int(n_mitochondria)

    jr = _rng(seed, 5)
    shifts_nm = jr.standard_normal((Z, 2)) * section_jitter * np.array(voxel_size[1:])
    gains = (1.0 + 0.06 * section_jitter * jr.standard_normal(Z)).astype(np.float32)
    offsets = (6.0 * section_jitter * jr.standard_normal(Z)).astype(np.float32)

    # cells
    seg, counts = _build_cells(shape, voxel_size, n_cells, membrane_nm, boundary_warp, shifts_nm, seed)
    type_idx = _rng(seed, 3).integers(0, len(CELL_TYPES), size=n_cells)
    present = np.flatnonzero(counts[1:]) + 1
    if present.size < n_cells:
        logger.warning(
            "phantom: %d of %d cells have no voxel (cells too small for the membrane); renumbered to 1..%d",
            n_cells - present.size,
            n_cells,
            present.size,
        )
        lut = np.zeros(n_cells + 1, dtype=np.uint64)
        lut[present] = np.arange(1, present.size + 1, dtype=np.uint64)
        nzs = max(1, _SLAB_VOXELS // (Y * X))
        for z0 in range(0, Z, nzs):
            seg[z0 : z0 + nzs] = lut[seg[z0 : z0 + nzs]]
        type_idx = type_idx[present - 1]
    n_final = int(present.size)
    cell_types = {i + 1: CELL_TYPES[int(t)] for i, t in enumerate(type_idx)}
    t_cells = time.perf_counter()

    em = np.empty(shape, dtype=np.uint8)
    _render_base(seg, em, voxel_size, type_idx, membrane_nm, seed)

    # synapses
    syn = np.zeros(shape, dtype=np.uint32)
    ves = np.zeros(shape, dtype=bool)
    placer = _SynapsePlacer(seg, em, syn, ves, voxel_size, membrane_nm, _rng(seed, 6))
    queue = _partner_plan(n_synapses, polyadic_fraction, max_partners, _rng(seed, 7))
    full = False
    while queue and not full:
        p = queue.pop(0)
        tries = _POLY_TRIES if p > 1 else _MONO_TRIES
        for _ in range(tries):
            if placer.try_site(p):
                break
        else:
            if p > 1:
                logger.debug("phantom: polyadic site with %d partners did not fit; placing monadic ones", p)
                queue.extend([1] * p)
            else:
                full = True
    if len(placer.synapses) < n_synapses:
        logger.warning(
            "phantom: placed %d of %d requested synapses; the volume is too small or crowded",
            len(placer.synapses),
            n_synapses,
        )
    t_syn = time.perf_counter()

    mito = np.zeros(shape, dtype=bool)
    n_mito = _place_mitochondria(seg, em, syn, ves, mito, voxel_size, n_mitochondria, _rng(seed, 8))
    if n_mito < n_mitochondria:
        logger.info("phantom: placed %d of %d mitochondria", n_mito, n_mitochondria)

    _finish_em(em, voxel_size, float(noise_sigma), float(blur_nm), gains, offsets, seed)
    t_end = time.perf_counter()
    logger.debug(
        "phantom %s: cells %.2fs, synapses %.2fs, total %.2fs",
        shape,
        t_cells - t_start,
        t_syn - t_cells,
        t_end - t_start,
    )

    params = {
        "shape": list(shape),
        "voxel_size": list(voxel_size),
        "n_cells": n_cells,
        "n_cells_generated": n_final,
        "n_synapses": n_synapses,
        "n_synapses_placed": len(placer.synapses),
        "n_sites_placed": placer.n_sites,
        "polyadic_fraction": float(polyadic_fraction),
        "max_partners": max_partners,
        "noise_sigma": float(noise_sigma),
        "section_jitter": section_jitter,
        "seed": seed,
        "membrane_nm": float(membrane_nm),
        "n_mitochondria": n_mitochondria,
        "n_mitochondria_placed": n_mito,
        "boundary_warp": float(boundary_warp),
        "blur_nm": float(blur_nm),
    }
    return Phantom(
        em=em,
        segmentation=seg,
        synapse_labels=syn,
        mitochondria=mito,
        vesicles=ves,
        voxel_size=voxel_size,
        synapses=list(placer.synapses),
        cell_types=cell_types,
        seed=seed,
        params=params,
    )


def synapse_table(phantom: Phantom) -> list[dict]:
    """Synapse rows in the Cnapse table convention.

    Parameters
    ----------
    phantom : Phantom

    Returns
    -------
    list of dict
        One row per synapse with keys ``syn_id`` (= ``synapse_id``), ``pre``
        and ``post`` (presynaptic / postsynaptic cell ids), ``pre_id`` (the
        presynaptic *site* id, ``site_id``: shared by the partners of a
        polyadic site), ``post_id`` (the postsynaptic site id, which is the
        ``synapse_id`` since every row has its own PSD), ``z_pos``, ``y_pos``,
        ``x_pos`` (nm, the synapse ``center`` on the cleft) and ``size``
        (``size_voxels``).  Values are plain Python ints/floats.
    """
    rows = []
    for s in phantom.synapses:
        rows.append(
            {
                "syn_id": int(s.synapse_id),
                "pre": int(s.pre_id),
                "pre_id": int(s.site_id),
                "post": int(s.post_id),
                "post_id": int(s.synapse_id),
                "x_pos": float(s.center[2]),
                "y_pos": float(s.center[1]),
                "z_pos": float(s.center[0]),
                "size": int(s.size_voxels),
            }
        )
    return rows


_SYNAPSE_DTYPE = np.dtype(
    [
        ("synapse_id", "<u8"),
        ("site_id", "<u8"),
        ("pre_id", "<u8"),
        ("post_id", "<u8"),
        ("pre_point", "<f8", (3,)),
        ("post_point", "<f8", (3,)),
        ("center", "<f8", (3,)),
        ("size_voxels", "<u8"),
        ("contact_area_nm2", "<f8"),
    ]
)


def write_phantom_h5(phantom: Phantom, path, *, compression: str | None = "gzip") -> Path:
    """Write a phantom as a CREMI-like HDF5 file.

    Layout (all coordinates nm, ordered z, y, x):

    * ``volumes/raw`` uint8 (Z, Y, X); every volume carries the attributes
      ``resolution`` (voxel size list) and ``offset`` ([0, 0, 0]).
    * ``volumes/labels/neuron_ids`` uint64, 0 = membrane.
    * ``volumes/labels/clefts`` uint64, ``synapse_id`` on cleft + PSD voxels,
      0 = background (CREMI itself uses 2**64-1 for background).
    * ``volumes/labels/mitochondria`` uint8 (0/1), ``volumes/labels/vesicles``
      uint8 (0/1).
    * ``annotations/`` in the CREMI convention: ``ids`` (uint64),
      ``locations`` (float64, (n, 3)), ``types`` (``presynaptic_site`` /
      ``postsynaptic_site``) and ``presynaptic_site/partners`` (uint64,
      (n_synapses, 2): pre annotation id, post annotation id).  Presynaptic
      annotations have id ``site_id`` and location ``pre_point`` (one per
      site); postsynaptic ones have id ``max(site_id) + synapse_id`` and
      location ``post_point``.
    * ``annotations/synapses``: the full synapse list as a compound dataset
      with the fields of `PhantomSynapse` (points as 3-vectors).
    * Root attributes: ``description``, ``params`` (JSON) and
      ``cell_types`` (JSON object, cell id -> type).

    Parameters
    ----------
    phantom : Phantom
    path : str or path-like
        Output file (overwritten).
    compression : str or None
        h5py compression filter for the volumes.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    import h5py

    path = Path(path)
    res = [float(x) for x in phantom.voxel_size]
    syns = phantom.synapses
    n_sites = max((s.site_id for s in syns), default=0)
    kw = {"compression": compression} if compression else {}
    with h5py.File(path, "w") as f:
        f.attrs["description"] = (
            "Synthetic EM phantom with exact ground truth "
            f"(shape {list(phantom.em.shape)}, voxel size {res} nm z/y/x, seed {phantom.seed}, "
            f"{int(phantom.segmentation.max())} cells, {len(syns)} synapses)"
        )
        f.attrs["params"] = json.dumps(phantom.params)
        f.attrs["cell_types"] = json.dumps({str(k): v for k, v in phantom.cell_types.items()})
        vols = {
            "volumes/raw": phantom.em.astype(np.uint8, copy=False),
            "volumes/labels/neuron_ids": phantom.segmentation.astype(np.uint64, copy=False),
            "volumes/labels/clefts": phantom.synapse_labels.astype(np.uint64),
            "volumes/labels/mitochondria": phantom.mitochondria.astype(np.uint8),
            "volumes/labels/vesicles": phantom.vesicles.astype(np.uint8),
        }
        for name, data in vols.items():
            ds = f.create_dataset(name, data=data, **kw)
            ds.attrs["resolution"] = res
            ds.attrs["offset"] = [0.0, 0.0, 0.0]

        sites = {}
        for s in syns:
            sites.setdefault(s.site_id, s.pre_point)
        ids = [int(k) for k in sorted(sites)] + [n_sites + s.synapse_id for s in syns]
        locs = [sites[k] for k in sorted(sites)] + [s.post_point for s in syns]
        types = ["presynaptic_site"] * len(sites) + ["postsynaptic_site"] * len(syns)
        g = f.create_group("annotations")
        g.create_dataset("ids", data=np.asarray(ids, dtype=np.uint64))
        g.create_dataset("locations", data=np.asarray(locs, dtype=np.float64).reshape(-1, 3))
        g.create_dataset("types", data=np.asarray(types, dtype=object), dtype=h5py.string_dtype())
        partners = np.asarray([[s.site_id, n_sites + s.synapse_id] for s in syns], dtype=np.uint64)
        g.create_dataset("presynaptic_site/partners", data=partners.reshape(-1, 2))
        table = np.zeros(len(syns), dtype=_SYNAPSE_DTYPE)
        for i, s in enumerate(syns):
            row = asdict(s)
            for k in _SYNAPSE_DTYPE.names:
                table[i][k] = row[k]
        g.create_dataset("synapses", data=table)
    return path
