"""From per-candidate choices (presynaptic cell, postsynaptic cells) to partner rows.

Every method decides, per candidate, a presynaptic cell and a list of postsynaptic cells with
their evidence (contact area, or diffusion arrivals).  This module groups candidates of one
presynaptic cell that lie close together into one polyadic site, merges partners that appear
twice in a site, turns evidence into weights (shares within the site), and flags rows that are
not connections.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from detection.partners.records import (
    FLAG_BACKGROUND,
    FLAG_SELF_CONTACT,
    PartnerRow,
    partner_flag,
)
from detection.partners.sites import SiteGeometry, group_sites


@dataclass
class Post:
    """One postsynaptic cell of a candidate."""

    cell: int
    area_nm2: float
    evidence: float  # contact area or arrivals: the weight is its share within the site
    confidence: float
    center: np.ndarray  # nm, on the contact
    point: np.ndarray  # nm, inside the postsynaptic cell


@dataclass
class Choice:
    """A method's decision for one candidate."""

    geometry: SiteGeometry
    pre: int
    pre_point: np.ndarray
    pre_confidence: float
    posts: list[Post] = field(default_factory=list)


def _point(p) -> tuple[float, float, float]:
    return tuple(float(x) for x in p)


def _unpartnered(choice: Choice) -> Post:
    """The flagged row of a candidate with no partner besides its presynaptic cell.

    When the site touches background more than any other cell, the missing partner is
    background; otherwise the presynaptic cell lies on both sides (a self-contact).
    """
    g = choice.geometry
    k = g.index(choice.pre)
    pre_area = float(g.area_nm2[k]) if k is not None else 0.0
    if choice.pre == 0 or g.background_area_nm2 >= pre_area:
        return Post(0, g.background_area_nm2, 0.0, 0.0, g.center, g.center)
    return Post(choice.pre, pre_area, 0.0, 0.0, g.center, choice.pre_point)


def build_rows(choices: list[Choice], *, voxel_size, method: str,
               group_distance_nm: float = 300.0,
               merge_distance_nm: float = 100.0) -> list[PartnerRow]:
    """Partner rows of all candidates, polyadic sites grouped.

    Parameters
    ----------
    choices : list of Choice
    voxel_size : sequence of 3 float
        (z, y, x) nm.
    method : str
        Recorded on every row.
    group_distance_nm : float
        Candidates of one presynaptic cell whose presynaptic points lie this close
        (transitively) form one site; 0 keeps every candidate a site of its own.
    merge_distance_nm : float
        Within a site, two contacts with the same postsynaptic cell whose centres lie this
        close are one partner (a cleft split into two candidates); farther apart they are two
        synapses between the same cells.

    Returns
    -------
    list of PartnerRow
        Ordered by site id, then by decreasing weight.  ``site_id`` is the smallest candidate
        label of the site.
    """
    voxel_volume = float(np.prod(voxel_size))
    if not choices:
        return []
    if group_distance_nm > 0:
        groups = group_sites([c.pre for c in choices], [c.pre_point for c in choices],
                             distance_nm=group_distance_nm)
    else:
        groups = np.arange(1, len(choices) + 1)
    rows: list[PartnerRow] = []
    for g in np.unique(groups):
        members = [choices[i] for i in np.flatnonzero(groups == g)]
        site_id = min(c.geometry.site for c in members)
        pre = members[0].pre
        size = sum(c.geometry.size_voxels for c in members)
        pre_point = np.mean([c.pre_point for c in members], axis=0)

        # A cell reached from two candidates of one site is one partner when the two contacts
        # nearly coincide (one cleft cut in two by detection), two synapses otherwise.
        merged: list[list[Post]] = []
        for c in members:
            for post in c.posts:
                for entry in merged:
                    if (entry[0].cell == post.cell and np.linalg.norm(
                            entry[0].center - post.center) <= merge_distance_nm):
                        entry.append(post)
                        break
                else:
                    merged.append([post])
        if not merged:
            merged.append([_unpartnered(members[0])])
        total = sum(p.evidence for posts in merged for p in posts)

        site_rows = []
        for posts in merged:
            cell = posts[0].cell
            area = sum(p.area_nm2 for p in posts)
            wts = np.array([max(p.area_nm2, 1e-9) for p in posts])
            center = np.average([p.center for p in posts], axis=0, weights=wts)
            point = np.average([p.point for p in posts], axis=0, weights=wts)
            evidence = sum(p.evidence for p in posts)
            flag = partner_flag(pre, cell)
            weight = evidence / total if total > 0 else 0.0
            confidence = 0.0 if flag else max(p.confidence for p in posts)
            site_rows.append(PartnerRow(
                site_id=int(site_id), pre_id=int(pre), post_id=int(cell),
                pre_point=_point(pre_point), post_point=_point(point), center=_point(center),
                size_voxels=int(size), size_nm3=float(size * voxel_volume),
                contact_area_nm2=float(area), confidence=float(np.clip(confidence, 0, 1)),
                weight=float(weight), flag=flag, method=method,
            ))
        site_rows.sort(key=lambda r: -r.weight)
        rows.extend(site_rows)
    return rows


def _floats(values) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def choice_record(choice: Choice) -> dict:
    """A JSON-able record of what :func:`build_rows` reads of a choice (floats exact)."""
    g = choice.geometry
    return {
        "site": int(g.site), "size_voxels": int(g.size_voxels), "center": _floats(g.center),
        "cells": [int(c) for c in g.cells], "area_nm2": _floats(g.area_nm2),
        "background_area_nm2": float(g.background_area_nm2),
        "pre": int(choice.pre), "pre_point": _floats(choice.pre_point),
        "pre_confidence": float(choice.pre_confidence),
        "posts": [[int(p.cell), float(p.area_nm2), float(p.evidence), float(p.confidence),
                   _floats(p.center), _floats(p.point)] for p in choice.posts],
    }


def choice_from_record(record: dict) -> Choice:
    """The choice of :func:`choice_record`.

    Its geometry holds what :func:`build_rows` reads (site, size, centre, touching cells,
    their contact areas, background area); the crop, mask and per-cell points are not kept
    (``None``).
    """
    geometry = SiteGeometry(
        site=int(record["site"]), box=None, mask=None, size_voxels=int(record["size_voxels"]),
        center=np.array(record["center"], dtype=np.float64),
        cells=np.array(record["cells"], dtype=np.int64),
        area_nm2=np.array(record["area_nm2"], dtype=np.float64),
        contact_center=None, inner_point=None,
        background_area_nm2=float(record["background_area_nm2"]))
    posts = [Post(int(cell), float(area), float(evidence), float(confidence),
                  np.array(center, dtype=np.float64), np.array(point, dtype=np.float64))
             for cell, area, evidence, confidence, center, point in record["posts"]]
    return Choice(geometry, int(record["pre"]), np.array(record["pre_point"], dtype=np.float64),
                  float(record["pre_confidence"]), posts)


__all__ = ["Choice", "Post", "build_rows", "choice_from_record", "choice_record",
           "FLAG_BACKGROUND", "FLAG_SELF_CONTACT"]
