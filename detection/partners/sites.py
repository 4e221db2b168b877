"""Geometry of synapse sites shared by the partner-assignment methods.

A *site* is one synapse candidate given as a label in a (Z, Y, X) volume: a detected cleft /
junction component, or an annotated synapse mask.  For every site this module measures, in a
crop around it:

* the cells it touches and the area of that contact (voxel faces between the site mask and the
  rest of each cell, in nm^2),
* for a presynaptic map (vesicle-cloud or presynaptic-density probability), each touching
  cell's mean signal within a radius of the site: the evidence of which side is presynaptic,
* the centre of the site's contact with each cell and a point inside each cell near it.

Sites of one presynaptic cell that lie close together are then grouped into one polyadic site
(:func:`group_sites`): they share a ``site_id`` and a ``pre_point``.

Arrays are (z, y, x); positions are nm with voxel (i, j, k) at (i * vz, j * vy, k * vx).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from detection.errors import InputError

logger = logging.getLogger(__name__)

Box = tuple[slice, slice, slice]


def check_inputs(sites, segmentation, *, voxel_size, presynaptic=None):
    """Validate the common inputs; returns (sites, segmentation, voxel_size) as arrays/tuple."""
    sites = np.asarray(sites)
    seg = np.asarray(segmentation)
    if seg.ndim != 3:
        raise InputError(f"segmentation must be a (Z, Y, X) volume, got shape {seg.shape}")
    if not np.issubdtype(seg.dtype, np.integer):
        raise InputError(f"segmentation must hold integer ids, got {seg.dtype}")
    if sites.shape != seg.shape:
        raise InputError(
            f"site labels {sites.shape} do not match the segmentation {seg.shape}")
    if not (np.issubdtype(sites.dtype, np.integer) or sites.dtype == bool):
        raise InputError(f"site labels must be integer ids, got {sites.dtype}")
    if presynaptic is not None and np.shape(presynaptic) != seg.shape:
        raise InputError(
            f"presynaptic map {np.shape(presynaptic)} does not match the segmentation {seg.shape}")
    vs = tuple(float(v) for v in voxel_size)
    if len(vs) != 3 or min(vs) <= 0:
        raise InputError(f"voxel_size must be three positive numbers (z, y, x nm), got {voxel_size}")
    return sites, seg, vs


def site_boxes(sites: np.ndarray) -> list[tuple[int, Box]]:
    """(site id, bounding box) of every nonzero label, ordered by id."""
    ids = np.unique(sites)
    ids = ids[ids != 0]
    if ids.size == 0:
        return []
    if int(ids[-1]) <= 4 * ids.size + 1024:
        boxes = ndi.find_objects(sites.astype(np.int64, copy=False))
        return [(int(i), boxes[int(i) - 1]) for i in ids]
    # Sparse ids: relabel densely for find_objects.
    dense = np.searchsorted(ids, sites) + 1
    dense[sites == 0] = 0
    boxes = ndi.find_objects(dense)
    return [(int(i), boxes[k]) for k, i in enumerate(ids)]


def grow(box: Box, margin_nm: float, voxel_size, shape) -> Box:
    """The box grown by `margin_nm` on every side (at least one voxel), clipped to `shape`."""
    out = []
    for s, v, n in zip(box, voxel_size, shape):
        m = max(1, int(np.ceil(margin_nm / v)))
        out.append(slice(max(0, s.start - m), min(n, s.stop + m)))
    return tuple(out)


def box_origin(box: Box) -> np.ndarray:
    return np.array([s.start for s in box], dtype=np.float64)


@dataclass
class SiteGeometry:
    """What one site touches, measured in a crop around it.

    Attributes
    ----------
    site : int
        Label of the site.
    box : tuple of slice
        The crop (in volume voxels).
    mask : (z, y, x) bool ndarray
        The site's voxels in the crop.
    size_voxels : int
    center : (3,) float ndarray
        Centroid of the site, nm.
    cells : (K,) int64 ndarray
        Cells touching the site (segment ids > 0), by decreasing contact area.
    area_nm2 : (K,) float ndarray
        Contact area of the site with each cell.
    contact_center : (K, 3) float ndarray
        Centre (nm) of the site voxels on each cell's contact faces.
    inner_point : (K, 3) float ndarray
        Centre (nm) of each cell's voxels on those faces: a point inside the cell at the site.
    background_area_nm2 : float
        Contact area with unlabelled background (segment 0), for the flag.
    inside_fraction : (K,) float ndarray
        Share of the site's voxels lying inside each cell (a detected PSD lies inside the
        postsynaptic cell, a T-bar inside the presynaptic one).
    offset : tuple of 3 int
        Volume voxel of the arrays' first voxel (a crop's corner): positions are in the
        volume's frame, ``box`` in the arrays'.
    """

    site: int
    box: Box
    mask: np.ndarray
    size_voxels: int
    center: np.ndarray
    cells: np.ndarray
    area_nm2: np.ndarray
    contact_center: np.ndarray
    inner_point: np.ndarray
    background_area_nm2: float = 0.0
    inside_fraction: np.ndarray | None = None
    offset: tuple[int, int, int] = (0, 0, 0)

    def index(self, cell: int) -> int | None:
        hits = np.flatnonzero(self.cells == cell)
        return int(hits[0]) if hits.size else None


def site_geometry(site: int, box: Box, sites: np.ndarray, seg: np.ndarray, voxel_size, *,
                  margin_nm: float, offset=(0, 0, 0)) -> SiteGeometry:
    """Measure one site in the crop `box` grown by `margin_nm`.

    `offset` is the volume voxel of the arrays' first voxel when they are a crop of a larger
    volume: positions come out in the volume's frame, exactly as if measured on the volume.
    """
    crop = grow(box, margin_nm, voxel_size, seg.shape)
    mask = sites[crop] == site
    labels = seg[crop]
    offset = tuple(int(v) for v in offset)
    # Integer corner plus integer offset: the same float origin as on the whole volume.
    origin = box_origin(crop) + np.asarray(offset, dtype=np.float64)
    vs = np.asarray(voxel_size)
    face_area = np.array([vs[1] * vs[2], vs[0] * vs[2], vs[0] * vs[1]])

    # Faces between a site voxel and a voxel outside the site: the site's surface.  Each face
    # is attributed to the label of the outside voxel (a PSD drawn inside the postsynaptic
    # cell meets the rest of that cell on its back face).
    keys, areas, inner_pos, outer_pos = [], [], [], []
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis] = slice(0, -1)
        hi[axis] = slice(1, None)
        lo, hi = tuple(lo), tuple(hi)
        for a_sl, b_sl, shift in ((lo, hi, 1), (hi, lo, -1)):
            surface = mask[a_sl] & ~mask[b_sl]
            idx = np.argwhere(surface)
            if idx.size == 0:
                continue
            if shift < 0:
                idx[:, axis] += 1  # indices of the site voxel in the crop
            out = idx.copy()
            out[:, axis] += shift
            keys.append(labels[tuple(out.T)].astype(np.int64))
            areas.append(np.full(len(idx), face_area[axis]))
            inner_pos.append(idx)
            outer_pos.append(out)
    size = int(mask.sum())
    center = (np.argwhere(mask).mean(axis=0) + origin) * vs if size else np.zeros(3)
    if not keys:
        empty = np.zeros((0, 3))
        return SiteGeometry(site, crop, mask, size, center, np.zeros(0, np.int64), np.zeros(0),
                            empty, empty, offset=offset)
    key = np.concatenate(keys)
    area = np.concatenate(areas)
    site_pos = (np.concatenate(inner_pos) + origin) * vs
    cell_pos = (np.concatenate(outer_pos) + origin) * vs
    cells, inverse = np.unique(key, return_inverse=True)
    total = np.bincount(inverse, weights=area)
    contact_center = np.stack(
        [np.bincount(inverse, weights=site_pos[:, a] * area) / total for a in range(3)], axis=1)
    inner_point = np.stack(
        [np.bincount(inverse, weights=cell_pos[:, a] * area) / total for a in range(3)], axis=1)
    background = float(total[cells == 0].sum()) if (cells == 0).any() else 0.0
    keep = cells != 0
    cells, total = cells[keep], total[keep]
    contact_center, inner_point = contact_center[keep], inner_point[keep]
    order = np.argsort(-total, kind="stable")
    cells = cells[order]
    inside_ids, inside_counts = np.unique(labels[mask], return_counts=True)
    inside = dict(zip(inside_ids.tolist(), inside_counts.tolist()))
    inside_fraction = np.array([inside.get(int(c), 0) for c in cells], dtype=np.float64) / size
    return SiteGeometry(site, crop, mask, size, center, cells, total[order],
                        contact_center[order], inner_point[order], background, inside_fraction,
                        offset)


def presynaptic_evidence(geometry: SiteGeometry, seg: np.ndarray, presynaptic, voxel_size, *,
                         radius_nm: float) -> tuple[np.ndarray, np.ndarray]:
    """Presynaptic signal of each touching cell within `radius_nm` of the site.

    Returns ``(signal, pre_points)``: (K,) means over the cell's voxels within the radius,
    weighted by ``exp(-d / (radius / 2))`` with d the distance to the site (0 where the cell
    has no voxel there), and (K, 3) centroids of those voxels weighted by signal and
    closeness, in nm (the contact's inner point where the signal is zero).
    """
    crop = grow(geometry.box, radius_nm, voxel_size, seg.shape)
    labels = seg[crop]
    values = np.asarray(presynaptic[crop])
    scale = 1.0 / 255.0 if np.issubdtype(values.dtype, np.integer) else 1.0
    values = values.astype(np.float32) * np.float32(scale)
    inner = tuple(slice(b.start - c.start, b.stop - c.start) for b, c in zip(geometry.box, crop))
    mask = np.zeros(labels.shape, dtype=bool)
    mask[inner] = geometry.mask
    distance = ndi.distance_transform_edt(~mask, sampling=voxel_size)
    near = distance <= radius_nm
    # Nearer signal counts more: a vesicle cloud at this contact outweighs the cloud of
    # another synapse of the neighbouring cell at the edge of the radius.
    closeness = np.exp(-distance / (0.5 * radius_nm)).astype(np.float32)
    origin = box_origin(crop) + np.asarray(geometry.offset, dtype=np.float64)
    vs = np.asarray(voxel_size)
    signal = np.zeros(len(geometry.cells))
    points = geometry.inner_point.copy()
    if len(geometry.cells) == 0:
        return signal, points
    # One pass over the voxels near the site: each voxel of a touching cell adds to its cell.
    idx = np.argwhere(near)
    lab = labels[near].astype(np.int64)
    order = np.argsort(geometry.cells)
    sorted_cells = geometry.cells[order]
    pos = np.clip(np.searchsorted(sorted_cells, lab), 0, len(sorted_cells) - 1)
    hit = sorted_cells[pos] == lab
    k = order[pos[hit]]
    v = values[near][hit]
    w = closeness[near][hit]
    n = len(geometry.cells)
    w_sum = np.bincount(k, weights=w, minlength=n)
    vw = v * w
    vw_sum = np.bincount(k, weights=vw, minlength=n)
    has = w_sum > 0
    signal[has] = vw_sum[has] / w_sum[has]
    with_signal = vw_sum > 0
    if with_signal.any():
        at = idx[hit].astype(np.float64)
        for a in range(3):
            points[with_signal, a] = (np.bincount(k, weights=at[:, a] * vw, minlength=n)
                                      [with_signal] / vw_sum[with_signal] + origin[a]) * vs[a]
    return signal, points


def pick_presynaptic(signal: np.ndarray, area: np.ndarray, *, min_area_nm2: float):
    """Index of the presynaptic cell and the confidence of that choice.

    The cell with the strongest signal among cells touching the site with at least
    `min_area_nm2` (all cells when none does).  Confidence is the contrast with the runner-up,
    ``(s1 - s2) / (s1 + s2)``: 1 when only one side has signal, 0 when two sides tie.
    """
    eligible = np.flatnonzero(area >= min_area_nm2)
    if eligible.size == 0:
        eligible = np.arange(len(signal))
    order = eligible[np.argsort(-signal[eligible], kind="stable")]
    best = int(order[0])
    s1 = float(signal[best])
    s2 = float(signal[order[1]]) if order.size > 1 else 0.0
    confidence = (s1 - s2) / (s1 + s2) if s1 + s2 > 0 else 0.0
    return best, float(np.clip(confidence, 0.0, 1.0))


def postsynaptic_indices(area: np.ndarray, pre: int, *, min_area_nm2: float,
                         min_fraction: float, inside_fraction=None,
                         min_inside: float = 0.1) -> np.ndarray:
    """Touching cells other than the presynaptic one with a large enough contact.

    A cell qualifies with at least `min_area_nm2` and either at least `min_fraction` of the
    largest non-presynaptic contact, which drops cells that only graze the edge of a cleft at
    a junction, or at least `min_inside` of the site's voxels inside it (the PSD of one
    partner of a polyadic candidate whose clefts merged into one site).  The largest contact
    always qualifies.
    """
    others = np.array([k for k in range(len(area)) if k != pre], dtype=np.int64)
    if others.size == 0:
        return others
    largest = float(area[others].max())
    strong = area[others] >= min_fraction * largest
    if inside_fraction is not None:
        strong |= np.asarray(inside_fraction)[others] >= min_inside
    keep = others[(area[others] >= min_area_nm2) & strong]
    if keep.size == 0:
        keep = others[area[others] == largest][:1]
    return keep


def group_sites(pre_cells, pre_points, *, distance_nm: float) -> np.ndarray:
    """Group candidates into presynaptic sites: same presynaptic cell, pre points close.

    Candidates of one presynaptic cell whose presynaptic points lie within `distance_nm` of
    each other (transitively) form one polyadic site.  Returns (N,) site numbers 1..S in the
    order of the first candidate of each site.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    pre_cells = np.asarray(pre_cells, dtype=np.int64)
    points = np.asarray(pre_points, dtype=np.float64).reshape(-1, 3)
    n = len(pre_cells)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    pairs = cKDTree(points).query_pairs(distance_nm, output_type="ndarray")
    if len(pairs):
        same = (pre_cells[pairs[:, 0]] == pre_cells[pairs[:, 1]]) & (pre_cells[pairs[:, 0]] != 0)
        pairs = pairs[same]
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    # Renumber by first appearance.
    _, first = np.unique(comp, return_index=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[comp] + 1
