"""Partners by Monte-Carlo neurotransmitter diffusion, after Cnapse.

Cnapse finds presynaptic densities with a U-Net and then asks where transmitter released there
would go: particles random-walk from the active zone through the extracellular space, confined
by membranes and segment borders, until they reach a neighbouring cell.  The share of arrivals
per cell is its weight as a partner; cells above a share threshold are the postsynaptic
partners, which gives polyadic synapses naturally.

Here the presynaptic cell of a site is the touching cell with the strongest presynaptic signal
(as in :mod:`detection.partners.vesicle`); particles start on the free voxels (background /
membrane) of the site next to that cell.  Each step moves a particle to one of its six
neighbours, with probabilities proportional to 1 / voxel_size**2 per axis so that the walk is
isotropic in nm on anisotropic voxels.  A step into the presynaptic cell is refused (the
particle stays), a step into a free voxel is taken, a step into any other cell ends the walk
there (an arrival), and a step out of the volume loses the particle.  All particles of all
sites move together, one array operation per step.

The random numbers are drawn per site: a site's start voxels from a generator seeded by
(seed, site id), its steps from a SplitMix64 stream keyed the same way, whose number
``step * particles + particle`` moves that particle at that step.  A site's rows therefore do
not depend on which other sites share the call (a block of a block-wise assignment, or the
whole volume), nor on when the site's other particles arrive or leave.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from detection.errors import InputError
from detection.partners.records import PartnerRow
from detection.partners.rows import Choice, Post, build_rows
from detection.partners.sites import check_inputs, site_boxes, site_geometry
from detection.partners.vesicle import presynaptic_choice

logger = logging.getLogger(__name__)

_FACES = ndi.generate_binary_structure(3, 1)
_STEPS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
                  dtype=np.int64)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def site_streams(seed: int, site_ids) -> tuple[list[np.random.Generator], np.ndarray]:
    """The random sources of each site: a start generator and a walk stream key.

    Both come from ``numpy.random.SeedSequence([seed, site id])``, so they depend on the seed
    and the site alone.
    """
    generators, keys = [], []
    for site in site_ids:
        state = np.random.SeedSequence([int(seed), int(site)]).generate_state(2, np.uint64)
        generators.append(np.random.default_rng(int(state[0])))
        keys.append(state[1])
    return generators, np.array(keys, dtype=np.uint64).reshape(-1)


def stream_uniform(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """Number ``counter`` of the SplitMix64 stream seeded by ``key``, as a float in [0, 1).

    Element-wise over (N,) uint64 arrays: a counter-based generator, so every particle and
    step has its own number whichever particles are drawn together.
    """
    z = np.asarray(keys, dtype=np.uint64) + (np.asarray(counters, dtype=np.uint64) + np.uint64(1)) \
        * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2.0 ** 53)


@dataclass
class Arrivals:
    """Where the particles went.

    walker_site : (A,) int64, index of the release group of each arrival
    cell : (A,) int64, the cell reached
    before, after : (A, 3) int64 voxel indices, the last free voxel and the cell voxel
    released : (S,) int64, particles released per group
    lost : (S,) int64, particles that left the volume or ran out of steps
    """

    walker_site: np.ndarray
    cell: np.ndarray
    before: np.ndarray
    after: np.ndarray
    released: np.ndarray
    lost: np.ndarray


#: Chance, per particle and per axis, that a walk strays beyond :func:`walk_reach`.
REACH_TOLERANCE = 1e-12


def step_probabilities(voxel_size) -> np.ndarray:
    """(3,) chance that a step goes along z, y, x: steps are isotropic in nm, so an axis with
    voxels ``k`` times larger is taken ``k**2`` times less often (either direction)."""
    inv2 = 1.0 / np.asarray(voxel_size, dtype=np.float64) ** 2
    return inv2 / inv2.sum()


def walk_reach(n_steps: int, *, voxel_size, tolerance: float = REACH_TOLERANCE
               ) -> tuple[int, int, int]:
    """Voxels (z, y, x) that a walk of ``n_steps`` strays from its start, but for a chance
    below ``tolerance`` per particle and axis.

    Along one axis the walk moves +1 or -1 with probability ``p / 2`` each per step (``p``
    from :func:`step_probabilities`). By a Chernoff bound, its end lies ``m`` or more voxels
    away with probability at most ``2 min_t exp(-t m) (1 - p + p cosh t) ** n``; the reflection
    principle doubles that for its farthest excursion. The reach is the smallest ``m`` whose
    bound is below ``tolerance`` (never more than ``n_steps``): at 40 x 8 x 8 nm and 400 steps,
    (26, 107, 107) voxels instead of 400.
    """
    n = int(n_steps)
    reach = []
    for p in step_probabilities(voxel_size):
        t = np.linspace(1e-3, 30.0, 3000)[:, None]
        m = np.arange(1, n + 1)[None, :]
        log_bound = np.log(4.0) + (-t * m + n * np.log1p(p * (np.cosh(t) - 1.0))).min(axis=0)
        below = np.flatnonzero(log_bound <= np.log(tolerance))
        reach.append(int(below[0]) + 1 if len(below) else n)
    return tuple(reach)


def random_walk(segmentation, starts, start_group, pre_cells, *, voxel_size, n_steps: int,
                keys, free=None) -> Arrivals:
    """Run all particles to arrival, loss or `n_steps`.

    Parameters
    ----------
    segmentation : (Z, Y, X) integer ndarray
        0 = free space (background / membrane).
    starts : (W, 3) int ndarray
        Start voxel of every particle.
    start_group : (W,) int ndarray
        Release group (site index 0..S-1) of every particle.
    pre_cells : (S,) int ndarray
        Presynaptic cell of each group: steps into it are refused.
    voxel_size : sequence of 3 float
    n_steps : int
    keys : (S,) uint64 ndarray
        Walk stream key of each group (:func:`site_streams`): particle ``p`` of group ``g``
        (its rank among the group's starts) draws its step ``t`` from number
        ``t * n_g + p`` of stream ``keys[g]``, with ``n_g`` the group's particles.
    free : (Z, Y, X) bool ndarray or None
        Extra free space (e.g. a membrane mask over a dense segmentation): such voxels are
        walked through whatever their label.
    """
    seg = np.asarray(segmentation)
    shape = np.array(seg.shape, dtype=np.int64)
    flat = seg.reshape(-1)
    free_flat = None if free is None else np.asarray(free, dtype=bool).reshape(-1)
    strides = np.array([seg.shape[1] * seg.shape[2], seg.shape[2], 1], dtype=np.int64)
    cum = np.cumsum(np.repeat(step_probabilities(voxel_size) / 2.0, 2))
    cum[-1] = 1.0

    pos = np.asarray(starts, dtype=np.int64).reshape(-1, 3).copy()
    group = np.asarray(start_group, dtype=np.int64).copy()
    pre_cells = np.asarray(pre_cells, dtype=np.int64)
    pre = pre_cells[group]
    n_groups = len(pre_cells)
    keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
    if len(keys) != n_groups:
        raise InputError(f"{len(keys)} stream keys for {n_groups} groups")
    released = np.bincount(group, minlength=n_groups)
    # Each particle's rank within its group: its place in the group's stream.
    order = np.argsort(group, kind="stable")
    rank = np.empty(len(group), dtype=np.int64)
    rank[order] = np.arange(len(group)) - np.repeat(np.cumsum(released) - released,
                                                    released)
    key, width = keys[group], released[group].astype(np.uint64)
    lost = np.zeros(n_groups, dtype=np.int64)
    out_group, out_cell, out_before, out_after = [], [], [], []
    for step in range(int(n_steps)):
        if len(pos) == 0:
            break
        draw = stream_uniform(key, np.uint64(step) * width + rank.astype(np.uint64))
        new = pos + _STEPS[np.searchsorted(cum, draw, side="right")]
        inside = ((new >= 0) & (new < shape)).all(axis=1)
        if not inside.all():
            lost += np.bincount(group[~inside], minlength=n_groups)
            pos, new, group, pre = pos[inside], new[inside], group[inside], pre[inside]
            key, width, rank = key[inside], width[inside], rank[inside]
        index = new @ strides
        label = flat[index].astype(np.int64)
        is_free = label == 0
        if free_flat is not None:
            is_free |= free_flat[index]
        into_pre = ~is_free & (label == pre)
        arrived = ~is_free & ~into_pre
        if arrived.any():
            out_group.append(group[arrived])
            out_cell.append(label[arrived])
            out_before.append(pos[arrived])
            out_after.append(new[arrived])
        moving = is_free
        pos = np.where(moving[:, None], new, pos)[~arrived]
        group, pre = group[~arrived], pre[~arrived]
        key, width, rank = key[~arrived], width[~arrived], rank[~arrived]
    lost += np.bincount(group, minlength=n_groups)

    def cat(parts, width=None):
        if parts:
            return np.concatenate(parts)
        return np.zeros((0, width) if width else 0, dtype=np.int64)

    return Arrivals(cat(out_group), cat(out_cell), cat(out_before, 3), cat(out_after, 3),
                    released, lost)


def _release_voxels(geometry, seg, pre_cell, free):
    """Active zone of a site: free voxels of the site next to the presynaptic cell.

    Falls back to the presynaptic cell's voxels on the site's surface when the site has no
    free voxel next to the cell (a dense segmentation without membranes).
    """
    box = geometry.box
    labels = seg[box]
    pre_mask = labels == pre_cell
    near_pre = ndi.binary_dilation(pre_mask, structure=_FACES)
    is_free = labels == 0
    if free is not None:
        is_free |= np.asarray(free[box], dtype=bool)
    zone = geometry.mask & is_free & near_pre
    if not zone.any():
        zone = pre_mask & ndi.binary_dilation(geometry.mask, structure=_FACES)
    return np.argwhere(zone) + np.array([s.start for s in box])


def assign_by_diffusion(
    sites,
    segmentation,
    presynaptic,
    *,
    voxel_size,
    free=None,
    particles: int = 400,
    n_steps: int = 400,
    min_share: float = 0.25,
    min_inside: float | None = None,
    radius_nm: float = 200.0,
    min_area_nm2: float = 1500.0,
    group_distance_nm: float = 300.0,
    seed: int = 0,
) -> list[PartnerRow]:
    """Assign partners by where particles released at the active zone arrive.

    Parameters
    ----------
    sites : (Z, Y, X) integer ndarray
        Candidate labels (cleft / junction / presynaptic density masks), 0 elsewhere.
    segmentation : (Z, Y, X) integer ndarray
        Cell ids, 0 = background / membrane (free space for the particles).
    presynaptic : (Z, Y, X) ndarray
        Vesicle-cloud or presynaptic-density probability (float 0..1 or uint8): decides the
        presynaptic cell.
    voxel_size : sequence of 3 float
        (z, y, x) nm.
    free : (Z, Y, X) bool ndarray or None
        Extra free space, e.g. a membrane mask when the segmentation has no background.
    particles : int
        Particles released per candidate.
    n_steps : int
        Longest walk, in steps of one voxel.
    min_share : float
        Smallest share of a candidate's arrivals for a cell to be a partner (the cell with the
        most arrivals always is).
    min_inside : float or None
        When given, a cell touching the candidate with at least `min_area_nm2` of contact and
        holding at least this share of its voxels (its PSD, when sites are cleft + PSD masks)
        is a partner whatever its share of the arrivals: the partners of a merged polyadic
        candidate split the particles and the smaller ones fall below `min_share`.  None
        (default): arrivals only.
    radius_nm, min_area_nm2 : float
        As in :func:`detection.partners.vesicle.assign_by_vesicles`, for the presynaptic side.
    group_distance_nm : float
        Candidates of one presynaptic cell within this distance form one polyadic site.
    seed : int
        The same seed and inputs give the same rows; a site's random numbers depend on the
        seed and its id only (:func:`site_streams`).

    Returns
    -------
    list of PartnerRow
        ``weight`` is the partner's share of its site's arrivals; ``confidence`` the
        presynaptic contrast times the partner's share relative to the site's largest share.
    """
    t0 = time.perf_counter()
    choices = diffusion_choices(
        sites, segmentation, presynaptic, voxel_size=voxel_size, free=free,
        particles=particles, n_steps=n_steps, min_share=min_share, min_inside=min_inside,
        radius_nm=radius_nm, min_area_nm2=min_area_nm2, seed=seed)
    rows = build_rows(choices, voxel_size=voxel_size, method="diffusion",
                      group_distance_nm=group_distance_nm)
    logger.info("diffusion: %d candidates -> %d rows in %.2f s", len(choices), len(rows),
                time.perf_counter() - t0)
    return rows


def diffusion_choices(
    sites, segmentation, presynaptic, *, voxel_size, free=None, particles: int = 400,
    n_steps: int = 400, min_share: float = 0.25, min_inside: float | None = None,
    radius_nm: float = 200.0, min_area_nm2: float = 1500.0, seed: int = 0, offset=(0, 0, 0),
) -> list[Choice]:
    """The per-candidate decisions of :func:`assign_by_diffusion`, before sites are grouped.

    A candidate's choice depends on its own random streams and on the arrays within its box
    grown by :func:`detection.partners.blocks.assignment_margin` (the walk's reach,
    :func:`walk_reach`, beyond the release zone), so a crop holding that gives the same choices
    as the volume but for a chance below 1e-12 per particle and axis; `offset` (the crop's corner in volume voxels) puts the positions in the
    volume's frame.
    """
    sites, seg, vs = check_inputs(sites, segmentation, voxel_size=voxel_size,
                                  presynaptic=presynaptic)
    if free is not None and np.shape(free) != seg.shape:
        raise InputError(f"free-space mask {np.shape(free)} does not match the segmentation "
                         f"{seg.shape}")
    if particles < 1 or n_steps < 1:
        raise InputError("particles and n_steps must be at least 1")
    t0 = time.perf_counter()
    offset = np.asarray([int(v) for v in offset], dtype=np.int64)
    boxes = site_boxes(sites)
    generators, site_keys = site_streams(seed, [site for site, _ in boxes])
    pending, starts, groups, pres, keys = [], [], [], [], []
    for (site, box), rng, key in zip(boxes, generators, site_keys):
        g = site_geometry(site, box, sites, seg, vs, margin_nm=2 * max(vs), offset=offset)
        k, pre_point, confidence = presynaptic_choice(
            g, seg, presynaptic, vs, radius_nm=radius_nm, min_area_nm2=min_area_nm2)
        if k is None:
            pending.append((Choice(g, 0, g.center, 0.0), None))
            continue
        pre_cell = int(g.cells[k])
        choice = Choice(g, pre_cell, np.asarray(pre_point), confidence)
        # A site touching one cell only (e.g. a piece of a PSD cut off from its cleft, lying
        # inside its cell) has no other side to release towards: flagged, not walked.
        zone = _release_voxels(g, seg, pre_cell, free) if len(g.cells) > 1 else ()
        if len(zone) == 0:
            pending.append((choice, None))
            continue
        index = len(pres)
        starts.append(zone[rng.integers(0, len(zone), size=particles)])
        groups.append(np.full(particles, index, dtype=np.int64))
        pres.append(pre_cell)
        keys.append(key)
        pending.append((choice, index))
    t_setup = time.perf_counter()
    if pres:
        arrivals = random_walk(seg, np.concatenate(starts), np.concatenate(groups),
                               np.array(pres), voxel_size=vs, n_steps=n_steps,
                               keys=np.array(keys, dtype=np.uint64), free=free)
    else:
        arrivals = Arrivals(*(np.zeros(0, np.int64),) * 2, np.zeros((0, 3), np.int64),
                            np.zeros((0, 3), np.int64), np.zeros(0, np.int64),
                            np.zeros(0, np.int64))
    t_walk = time.perf_counter()

    vsa = np.asarray(vs)
    order = np.argsort(arrivals.walker_site, kind="stable")
    bounds = np.searchsorted(arrivals.walker_site[order], np.arange(len(pres) + 1))
    choices = []
    for choice, index in pending:
        choices.append(choice)
        if index is None:
            continue
        sel = order[bounds[index]:bounds[index + 1]]
        g = choice.geometry
        holding = set()
        if min_inside is not None and g.inside_fraction is not None:
            holding = {int(g.cells[k]) for k in range(len(g.cells))
                       if int(g.cells[k]) != choice.pre and g.area_nm2[k] >= min_area_nm2
                       and g.inside_fraction[k] >= min_inside}
        if sel.size:
            cells, inverse, counts = np.unique(arrivals.cell[sel], return_inverse=True,
                                               return_counts=True)
            shares = counts / counts.sum()
            chosen = ((shares >= min_share) | (counts == counts.max())
                      | np.isin(cells, list(holding)))
        else:
            cells, chosen = np.zeros(0, np.int64), np.zeros(0, bool)
        for c in np.flatnonzero(chosen):
            mine = inverse == c
            k = g.index(int(cells[c]))
            if k is not None:
                # A partner touching the site: its contact with the site places the row.
                area, center, point = float(g.area_nm2[k]), g.contact_center[k], g.inner_point[k]
            else:
                # Reached only through the extracellular space: where the particles arrived
                # (integer voxels in the volume's frame, so a crop averages them alike).
                area = 0.0
                center = (arrivals.before[sel][mine] + offset).mean(axis=0) * vsa
                point = (arrivals.after[sel][mine] + offset).mean(axis=0) * vsa
            choice.posts.append(Post(
                int(cells[c]), area, float(counts[c]),
                choice.pre_confidence * float(shares[c] / shares.max()), center, point))
        for cell in sorted(holding - {int(c) for c in cells}):
            # Holding part of the site but reached by no particle: a partner without arrivals.
            k = g.index(cell)
            choice.posts.append(Post(cell, float(g.area_nm2[k]), 0.0, 0.0, g.contact_center[k],
                                     g.inner_point[k]))
    logger.info(
        "diffusion: %d candidates, %d particles (%d arrived, %d lost); set-up %.2f s, "
        "walk %.2f s", len(choices), int(arrivals.released.sum()), len(arrivals.cell),
        int(arrivals.lost.sum()), t_setup - t0, t_walk - t_setup)
    return choices
