"""Section linking slab by slab, joined into the result of the whole stack.

:func:`detection.cells.section_linking.link_sections` links each section only with its
direct neighbours, from those two sections alone. A stack too large for memory (or shared out
to several workers) can therefore be linked in slabs of sections, each slab read with the
last section of the slab before it: every pair of adjacent sections then lies in exactly one
slab, and a profile of an overlap section is in two. What a slab gives is which of its cells
each profile fell in (:class:`SlabProfiles`); :func:`join_slabs` joins those cells with a
union-find over the profiles the slabs share and numbers the cells as ``link_sections``
numbers them (in the order of their first profile: section, then input id). The labels and
the report are those of ``link_sections`` on the whole stack (tested), but for the mean
overlap fraction, which is recombined from the slabs' means and may differ in its last bits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from detection.cells.section_linking import LinkReport, link_sections
from detection.errors import InputError

__all__ = [
    "SectionCells",
    "SlabProfiles",
    "join_slabs",
    "link_by_slabs",
    "link_slab",
    "slab_ranges",
]


@dataclass(frozen=True, eq=False)
class SlabProfiles:
    """The cell each profile of one slab belongs to, within that slab.

    Attributes
    ----------
    start : int
        The first section the slab read (global index).
    z : (P,) int64 ndarray
        Section of each profile (global).
    ids : (P,) uint64 ndarray
        Input id of each profile in its section.
    cell : (P,) int64 ndarray
        The slab's cell (1..n of the slab's own numbering).
    report : LinkReport
        The slab's report (its sections counted from ``start``).
    """

    start: int
    z: np.ndarray
    ids: np.ndarray
    cell: np.ndarray
    report: LinkReport

    def save(self, target) -> None:
        """Write to an ``.npz`` file (a path or a binary stream); the report goes as JSON."""
        np.savez(target, start=self.start, z=self.z, ids=self.ids, cell=self.cell,
                 report=json.dumps(self.report.to_dict()))

    @classmethod
    def load(cls, path) -> SlabProfiles:
        with np.load(path, allow_pickle=False) as data:
            report = json.loads(str(data["report"]))
            return cls(start=int(data["start"]), z=data["z"].astype(np.int64),
                       ids=data["ids"].astype(np.uint64), cell=data["cell"].astype(np.int64),
                       report=_report_from_dict(report))


def _report_from_dict(values: dict) -> LinkReport:
    def nan(value):
        return math.nan if value is None else value

    return LinkReport(
        n_profiles=values["n_profiles"], n_links=values["n_links"], n_cells=values["n_cells"],
        n_multi_section_cells=values["n_multi_section_cells"],
        n_branch_points=values["n_branch_points"],
        mean_overlap_fraction=nan(values["mean_overlap_fraction"]),
        section_overlap_fraction=tuple(nan(v) for v in values["section_overlap_fraction"]),
        section_links=tuple(values["section_links"]),
        blank_sections=tuple(values["blank_sections"]),
    )


def slab_ranges(n_sections: int, slab_sections: int) -> list[tuple[int, int]]:
    """The slabs' own sections ``[start, stop)``; each is read from ``max(0, start - 1)``."""
    if n_sections < 1 or slab_sections < 1:
        raise InputError(f"need at least one section and one section per slab, got "
                         f"{n_sections} and {slab_sections}")
    return [(z, min(z + slab_sections, n_sections)) for z in range(0, n_sections, slab_sections)]


def read_start(start: int) -> int:
    """The first section a slab whose own sections begin at ``start`` reads."""
    return max(0, start - 1)


def link_slab(profiles, *, start: int, membrane=None, voxel_size, **options) -> SlabProfiles:
    """Link the sections of one slab (as read: its own sections and the one before).

    Parameters
    ----------
    profiles : (S, Y, X) integer ndarray
        The slab's per-section labels, its first section being section ``start`` of the stack.
    start : int
        Global index of the slab's first section.
    membrane, voxel_size, **options
        As for :func:`~detection.cells.section_linking.link_sections`.
    """
    linked, report = link_sections(profiles, membrane=membrane, voxel_size=voxel_size, **options)
    z, ids, cell = [], [], []
    for index in range(linked.shape[0]):
        labels = profiles[index]
        foreground = labels != 0
        # All pixels of a profile are in one cell: its first pixel's cell is the profile's.
        section_ids, first = np.unique(labels[foreground], return_index=True)
        z.append(np.full(section_ids.size, start + index, dtype=np.int64))
        ids.append(section_ids.astype(np.uint64))
        cell.append(linked[index][foreground][first].astype(np.int64))
    return SlabProfiles(start=int(start), z=np.concatenate(z), ids=np.concatenate(ids),
                        cell=np.concatenate(cell), report=report)


@dataclass(frozen=True, eq=False)
class SectionCells:
    """The 3D cell of every profile of the stack, sorted by section then input id.

    Attributes
    ----------
    z : (P,) int64 ndarray
    ids : (P,) uint64 ndarray
    cell : (P,) uint64 ndarray
        Cell ids 1..n, as :func:`link_sections` numbers them.
    """

    z: np.ndarray
    ids: np.ndarray
    cell: np.ndarray

    def relabel(self, labels: np.ndarray, *, z: int, offset: int = 0) -> np.ndarray:
        """Section ``z``'s 2D labels as 3D cell ids (plus ``offset``); 0 stays 0.

        Parameters
        ----------
        labels : (Y, X) or (S, Y, X) integer ndarray
            Section ``z`` (or sections ``z .. z + S - 1``).
        """
        labels = np.asarray(labels)
        stack = labels[None] if labels.ndim == 2 else labels
        out = np.zeros(stack.shape, dtype=np.uint64)
        for index, section in enumerate(stack):
            lo, hi = np.searchsorted(self.z, [z + index, z + index + 1])
            ids, cells = self.ids[lo:hi], self.cell[lo:hi]
            foreground = section != 0
            values = section[foreground].astype(np.uint64)
            where = np.searchsorted(ids, values)
            known = where < ids.size
            known[known] = ids[where[known]] == values[known]
            if not known.all():
                raise InputError(f"section {z + index}: profile {int(values[~known][0])} is not "
                                 "one the slabs linked (did the labels change meanwhile?)")
            out[index][foreground] = cells[where] + np.uint64(offset)
        return out[0] if labels.ndim == 2 else out


def join_slabs(slabs: Sequence[SlabProfiles], *, n_sections: int) -> tuple[SectionCells,
                                                                             LinkReport]:
    """Join the slabs' cells over the profiles they share; the stack's cells and report.

    Parameters
    ----------
    slabs : sequence of SlabProfiles
        One per slab of :func:`slab_ranges`, in order, each read from :func:`read_start`.
    n_sections : int
        Sections of the stack.
    """
    slabs = sorted(slabs, key=lambda s: s.start)
    _check_cover(slabs, n_sections)
    z = np.concatenate([s.z for s in slabs])
    ids = np.concatenate([s.ids for s in slabs])
    keys = np.rec.fromarrays([z, ids], names="z,id")
    unique, profile = np.unique(keys, return_inverse=True)
    profile = profile.ravel()
    n_profiles = unique.size
    # Every slab cell is a node after the profiles; a profile joins the cell it fell in.
    first_cell = np.cumsum([0] + [int(s.cell.max(initial=0)) for s in slabs])
    slab_cell = np.concatenate([s.cell - 1 + first_cell[i] for i, s in enumerate(slabs)])
    n_nodes = n_profiles + int(first_cell[-1])
    graph = coo_matrix((np.ones(profile.size, dtype=np.int8), (profile, n_profiles + slab_cell)),
                       shape=(n_nodes, n_nodes))
    _, component = connected_components(graph, directed=False)
    component = component[:n_profiles]
    # Numbered in the order of their first profile (section, then id), as link_sections does.
    components, first = np.unique(component, return_index=True)
    rank = np.empty(component.max(initial=-1) + 1, dtype=np.uint64)
    rank[components[np.argsort(first)]] = np.arange(1, components.size + 1, dtype=np.uint64)
    cells = SectionCells(z=unique["z"].astype(np.int64), ids=unique["id"].astype(np.uint64),
                         cell=rank[component])
    return cells, _joined_report(slabs, cells, n_sections)


def _check_cover(slabs: Sequence[SlabProfiles], n_sections: int) -> None:
    expected = 0
    for slab in slabs:
        sections = len(slab.report.section_links) + 1
        if slab.start != read_start(expected) or slab.start + sections <= expected:
            raise InputError(f"the slab read from section {slab.start} does not continue the "
                             f"slabs before it (next section to cover: {expected})")
        expected = slab.start + sections
    if expected != n_sections:
        raise InputError(f"the slabs cover sections 0 to {expected - 1}, not all {n_sections}")


def _joined_report(slabs, cells: SectionCells, n_sections: int) -> LinkReport:
    links = sum(s.report.n_links for s in slabs)
    section_links, section_fraction, blank = [], [], set()
    for s in slabs:
        section_links.extend(s.report.section_links)
        section_fraction.extend(s.report.section_overlap_fraction)
        blank.update(s.start + b for b in s.report.blank_sections)
    weighted = sum(s.report.mean_overlap_fraction * s.report.n_links for s in slabs
                   if s.report.n_links)
    per_cell = np.unique(np.stack([cells.cell.astype(np.int64), cells.z]), axis=1)[0]
    _, sections_of_cell = np.unique(per_cell, return_counts=True)
    return LinkReport(
        n_profiles=int(cells.z.size),
        n_links=int(links),
        n_cells=int(np.unique(cells.cell).size),
        n_multi_section_cells=int(np.count_nonzero(sections_of_cell >= 2)),
        # A profile's links towards one neighbouring section all lie in one slab.
        n_branch_points=int(sum(s.report.n_branch_points for s in slabs)),
        mean_overlap_fraction=weighted / links if links else math.nan,
        section_overlap_fraction=tuple(section_fraction),
        section_links=tuple(section_links),
        blank_sections=tuple(sorted(blank)),
    )


def link_by_slabs(profiles, *, slab_sections: int, membrane=None, voxel_size,
                  **options) -> tuple[np.ndarray, LinkReport]:
    """:func:`link_sections` on a whole stack, computed slab by slab (see the module).

    Holds one slab (plus one section) at a time besides the input and the output.
    """
    profiles = np.asarray(profiles)
    if profiles.ndim != 3:
        raise InputError(f"profiles must be a 3-D (Z, Y, X) stack, got shape {profiles.shape}")
    slabs = []
    for start, stop in slab_ranges(profiles.shape[0], slab_sections):
        first = read_start(start)
        slabs.append(link_slab(
            profiles[first:stop], start=first, voxel_size=voxel_size,
            membrane=None if membrane is None else np.asarray(membrane)[first:stop], **options))
    cells, report = join_slabs(slabs, n_sections=profiles.shape[0])
    return cells.relabel(profiles, z=0), report
