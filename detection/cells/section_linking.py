"""Link per-section cell profiles of a serial-section stack into 3D cells.

Serial-section EM is often segmented section by section: every section gets its own 2D
labels, and the same id in two sections means nothing. This module joins those 2D
*profiles* into 3D cells by how much they overlap in adjacent sections.

Rules
-----
* Overlap is measured from profile *interiors*: the pixels farther than ``margin_nm`` from
  the nearest membrane, background or boundary with another profile (a profile too thin to
  have such pixels keeps its central half instead, so small neurites still link). The share
  of ``a``'s interior (section z) that profile ``b`` (section z + 1) covers is ``share_a``,
  and the other way round ``share_b``. Two sections' membranes rarely sit at the same place;
  a shifted membrane lets a thin rim of one cell in z + 1 lie over the neighbouring cell of
  z, and because that rim is outside every interior it never counts.
* A pair's *overlap fraction* is ``max(share_a, share_b)``, the share of the smaller
  profile. A pair below ``min_overlap`` (so small relative to both profiles) never links.
* Among the remaining pairs, mutual best matches link: ``b`` covers more of ``a``'s interior
  than any other profile of z + 1 does, and ``a`` more of ``b``'s than any other of z.
* Branches: a profile overlapping two profiles of the next section well, each of which has
  it as its best match, is a branch point, and all three join one cell. Such a one-sided
  best match links only when it is also a substantial part of the *larger* profile
  (``min(share_a, share_b) >= min_branch_overlap``). Without that condition, a small
  profile lying over a large cell in the adjacent section (a neighbouring neurite, or a
  misaligned section) would bridge two cells, and on real serial-section data a few such
  bridges join most of the volume into one cell. The price is that small side branches and
  small detached pieces of a cell stay cells of their own: a split is cheaper to correct
  than a merge. ``allow_branches=False`` keeps mutual best matches only, so every profile
  links to at most one profile per adjacent section.
* Links are joined with a union-find (the connected components of the link graph); cells
  are numbered ``1..n`` in the order of their first profile (section, then input id).
* Sections are linked only to their direct neighbours. A blank section (no profile) breaks
  every chain at that section and nowhere else.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.segmentation import find_boundaries

from detection.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["LinkReport", "link_sections"]


@dataclass(frozen=True)
class LinkReport:
    """What :func:`link_sections` did.

    Attributes
    ----------
    n_profiles : int
        2D profiles in the input (distinct non-zero ids, counted per section).
    n_links : int
        Links made between profiles of adjacent sections.
    n_cells : int
        3D cells in the output (ids ``1..n_cells``).
    n_multi_section_cells : int
        Cells present in at least two sections.
    n_branch_points : int
        Profiles linked to two or more profiles of one adjacent section (counted once per
        side: a profile branching towards both neighbours counts twice).
    mean_overlap_fraction : float
        Mean, over the links, of the overlap as a fraction of the smaller interior; NaN when
        there is no link.
    section_overlap_fraction : tuple of float
        For each pair of adjacent sections (z, z + 1), z = 0..Z-2, the mean overlap fraction
        of its links; NaN where the pair has none.
    section_links : tuple of int
        Links made between sections z and z + 1, z = 0..Z-2.
    blank_sections : tuple of int
        Sections without any profile.
    """

    n_profiles: int
    n_links: int
    n_cells: int
    n_multi_section_cells: int
    n_branch_points: int
    mean_overlap_fraction: float
    section_overlap_fraction: tuple[float, ...] = field(default=())
    section_links: tuple[int, ...] = field(default=())
    blank_sections: tuple[int, ...] = field(default=())

    def to_dict(self) -> dict:
        """JSON-friendly dictionary (NaN becomes None)."""
        def clean(value):
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, tuple):
                return [clean(v) for v in value]
            return value

        return {key: clean(value) for key, value in asdict(self).items()}


@dataclass
class _Section:
    ids: np.ndarray  # (P,) sorted input ids of the section's profiles
    first: int  # global index of the section's first profile
    profile: np.ndarray  # (Y, X) int64, profile index (0..P-1) off membrane, -1 elsewhere
    interior: np.ndarray  # (Y, X) bool, the profiles' interior pixels
    area: np.ndarray  # (P,) int64, interior pixels per profile


def _check_inputs(profiles, membrane, voxel_size, min_overlap, min_branch_overlap, margin_nm):
    profiles = np.asarray(profiles)
    if profiles.ndim != 3:
        raise InputError(
            "profiles must be a 3-D (Z, Y, X) stack of per-section labels, "
            f"got shape {profiles.shape}"
        )
    if profiles.dtype == bool or not np.issubdtype(profiles.dtype, np.integer):
        raise InputError(f"profiles must hold integer labels, got dtype {profiles.dtype}")
    if np.issubdtype(profiles.dtype, np.signedinteger) and profiles.size and profiles.min() < 0:
        raise InputError("profiles must not hold negative labels")
    if membrane is not None:
        membrane = np.asarray(membrane)
        if membrane.shape != profiles.shape:
            raise InputError(
                f"membrane has shape {membrane.shape}, "
                f"expected the profiles' shape {profiles.shape}"
            )
        membrane = membrane.astype(bool, copy=False)
    voxel_size = tuple(float(v) for v in np.ravel(voxel_size))
    if len(voxel_size) != 3 or not all(math.isfinite(v) and v > 0 for v in voxel_size):
        raise InputError(f"voxel_size must be three positive (z, y, x) nm values, got {voxel_size}")
    if not 0.0 < min_overlap <= 1.0:
        raise InputError(f"min_overlap must lie in (0, 1], got {min_overlap}")
    if not 0.0 <= min_branch_overlap <= 1.0:
        raise InputError(f"min_branch_overlap must lie in [0, 1], got {min_branch_overlap}")
    if not margin_nm >= 0.0:
        raise InputError(f"margin_nm must be non-negative, got {margin_nm}")
    return profiles, membrane, voxel_size


def _section(labels, membrane, first, pixel_nm, margin_nm) -> _Section:
    """Profiles of one section and their interiors."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    profile = np.full(labels.shape, -1, dtype=np.int64)
    if ids.size == 0:
        return _Section(ids, first, profile, np.zeros(labels.shape, bool), np.zeros(0, np.int64))
    foreground = labels != 0
    if membrane is not None:
        foreground &= ~membrane
    profile[foreground] = np.searchsorted(ids, labels[foreground])
    edge = ~foreground | find_boundaries(labels, mode="inner", connectivity=1)
    distance = ndi.distance_transform_edt(~edge, sampling=pixel_nm)
    # A profile thinner than twice the margin keeps its central half, so that it still has an
    # interior to link with.
    deepest = np.zeros(ids.size)
    np.maximum.at(deepest, profile[foreground], distance[foreground])
    depth = np.minimum(margin_nm, 0.5 * deepest)
    interior = foreground.copy()
    interior[foreground] = distance[foreground] >= depth[profile[foreground]]
    area = np.bincount(profile[interior], minlength=ids.size).astype(np.int64)
    return _Section(ids, first, profile, interior, area)


def _best(rows, weight, tie_break):
    """(K,) bool: the pair of largest weight of every row.

    Ties go to the larger ``tie_break``, then to the first pair.
    """
    order = np.lexsort((-tie_break, -weight, rows))
    starts = np.ones(rows.size, dtype=bool)
    starts[1:] = rows[order][1:] != rows[order][:-1]
    is_best = np.zeros(rows.size, dtype=bool)
    is_best[order[starts]] = True
    return is_best


def _pair_links(a: _Section, b: _Section, *, min_overlap, allow_branches, min_branch_overlap):
    """Links between two adjacent sections: (K,) global indices in a, in b, and fractions."""
    n_b = b.ids.size
    in_a = a.interior & (b.profile >= 0)
    in_b = b.interior & (a.profile >= 0)
    keys_a, cover_a = np.unique(a.profile[in_a] * n_b + b.profile[in_a], return_counts=True)
    keys_b, cover_b = np.unique(a.profile[in_b] * n_b + b.profile[in_b], return_counts=True)
    keys = np.union1d(keys_a, keys_b)
    if keys.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    over_a = np.zeros(keys.size, dtype=np.int64)
    over_a[np.searchsorted(keys, keys_a)] = cover_a
    over_b = np.zeros(keys.size, dtype=np.int64)
    over_b[np.searchsorted(keys, keys_b)] = cover_b
    ra, rb = np.divmod(keys, n_b)
    share_a = over_a / np.maximum(a.area[ra], 1)
    share_b = over_b / np.maximum(b.area[rb], 1)
    # The share of the smaller profile is the larger share.
    fraction = np.maximum(share_a, share_b)
    best_a, best_b = _best(ra, over_a, over_b), _best(rb, over_b, over_a)
    chosen = best_a & best_b
    if allow_branches:
        chosen |= (best_a | best_b) & (np.minimum(share_a, share_b) >= min_branch_overlap)
    chosen &= fraction >= min_overlap
    return ra[chosen] + a.first, rb[chosen] + b.first, fraction[chosen]


def link_sections(
    profiles,
    *,
    membrane=None,
    voxel_size,
    min_overlap: float = 0.5,
    margin_nm: float = 20.0,
    allow_branches: bool = True,
    min_branch_overlap: float = 0.25,
) -> tuple[np.ndarray, LinkReport]:
    """Join per-section 2D profiles into 3D cells by overlap between adjacent sections.

    See the module docstring for the rules.

    Parameters
    ----------
    profiles : (Z, Y, X) integer ndarray
        Per-section labels; 0 is background or membrane, every other value a profile of that
        section. Ids are only compared within a section (the same id in two sections may be
        two unrelated profiles). Pixels of one id in one section form one profile even when
        they are not connected.
    membrane : (Z, Y, X) bool or integer ndarray, optional
        Membrane mask (non-zero on membrane). Overlap is measured away from it, and from the
        profiles' own boundaries in any case. It does not change which pixels are labelled.
    voxel_size : sequence of 3 float
        (z, y, x) nm; the in-plane sizes turn ``margin_nm`` into pixels.
    min_overlap : float
        Smallest overlap, as a fraction in (0, 1] of the smaller of the two profiles'
        interiors, for a link.
    margin_nm : float
        Distance from membrane and profile boundaries within which pixels do not count for
        overlap (a profile thinner than twice this keeps its central half).
    allow_branches : bool
        Also link a pair in which only one profile is the other's best match (a branch:
        a profile can join two profiles of the next section), provided
        `min_branch_overlap` holds. False links mutual best matches only.
    min_branch_overlap : float
        For a one-sided best match, the smallest share of the *larger* profile's interior
        that the pair's overlap must reach, in [0, 1].

    Returns
    -------
    linked : (Z, Y, X) uint64 ndarray
        3D cell ids ``1..n``; 0 where ``profiles`` is 0.
    report : LinkReport
    """
    profiles, membrane, voxel_size = _check_inputs(
        profiles, membrane, voxel_size, min_overlap, min_branch_overlap, margin_nm
    )
    n_z = profiles.shape[0]
    pixel_nm = voxel_size[1:]

    section_ids: list[np.ndarray] = []
    section_first: list[int] = []
    link_a, link_b, link_fraction = [], [], []
    section_fraction, section_links = [], []
    first = 0
    previous = None  # only two sections' interiors are held at a time
    for z in range(n_z):
        current = _section(
            profiles[z], None if membrane is None else membrane[z], first, pixel_nm, margin_nm
        )
        if previous is not None:
            a, b, fraction = _pair_links(
                previous,
                current,
                min_overlap=min_overlap,
                allow_branches=allow_branches,
                min_branch_overlap=min_branch_overlap,
            )
            link_a.append(a)
            link_b.append(b)
            link_fraction.append(fraction)
            section_links.append(int(a.size))
            section_fraction.append(float(fraction.mean()) if fraction.size else math.nan)
        section_ids.append(current.ids)
        section_first.append(first)
        first += current.ids.size
        previous = current

    n_profiles = first
    a = np.concatenate(link_a) if link_a else np.zeros(0, dtype=np.int64)
    b = np.concatenate(link_b) if link_b else np.zeros(0, dtype=np.int64)
    fraction = np.concatenate(link_fraction) if link_fraction else np.zeros(0)

    graph = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n_profiles, n_profiles))
    n_cells, component = connected_components(graph, directed=False)
    # Number cells in the order of their first profile, whatever order the graph search used.
    _, first_profile = np.unique(component, return_index=True)
    rank = np.empty(n_cells, dtype=np.uint64)
    rank[np.argsort(first_profile)] = np.arange(1, n_cells + 1, dtype=np.uint64)
    cell_of_profile = rank[component]

    linked = np.zeros(profiles.shape, dtype=np.uint64)
    cell_sections = np.zeros(n_cells, dtype=np.int64)
    for z, (ids, start) in enumerate(zip(section_ids, section_first)):
        if ids.size == 0:
            continue
        cells = cell_of_profile[start : start + ids.size]
        labels = profiles[z]
        foreground = labels != 0
        linked[z][foreground] = cells[np.searchsorted(ids, labels[foreground])]
        cell_sections[np.unique(cells).astype(np.int64) - 1] += 1

    # A profile is a branch point when it links to two profiles of one neighbouring section.
    branch = 0
    if a.size:
        for ends in (a, b):
            _, counts = np.unique(ends, return_counts=True)
            branch += int(np.count_nonzero(counts >= 2))

    report = LinkReport(
        n_profiles=int(n_profiles),
        n_links=int(a.size),
        n_cells=int(n_cells),
        n_multi_section_cells=int(np.count_nonzero(cell_sections >= 2)),
        n_branch_points=branch,
        mean_overlap_fraction=float(fraction.mean()) if fraction.size else math.nan,
        section_overlap_fraction=tuple(section_fraction),
        section_links=tuple(section_links),
        blank_sections=tuple(z for z, ids in enumerate(section_ids) if ids.size == 0),
    )
    logger.info(
        "linked %d profiles in %d sections into %d cells (%d links, %d cells in >= 2 sections)",
        report.n_profiles, n_z, report.n_cells, report.n_links, report.n_multi_section_cells,
    )
    return linked, report
