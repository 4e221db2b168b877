"""Partners by the vesicle side, after SyConn (Dorkenwald et al., Nature Methods 2017).

SyConn finds synaptic junctions with a CNN and decides the direction of each from the maps of
vesicle clouds: the presynaptic neurite is the side of the contact that holds the vesicles.
Here a site (a detected cleft or junction) touches a few cells; each touching cell's mean
presynaptic signal (a vesicle-cloud or presynaptic-density probability map, 0..1 or 0..255)
within ``radius_nm`` of the site decides which one is presynaptic, and the other cells with a
large enough contact with the site are its postsynaptic partners.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from detection.partners.records import PartnerRow
from detection.partners.rows import Choice, Post, build_rows
from detection.partners.sites import (
    check_inputs,
    pick_presynaptic,
    postsynaptic_indices,
    presynaptic_evidence,
    site_boxes,
    site_geometry,
)

logger = logging.getLogger(__name__)


def presynaptic_choice(geometry, seg, presynaptic, voxel_size, *, radius_nm, min_area_nm2):
    """(pre index into geometry.cells or None, pre point nm, confidence) of one site."""
    if len(geometry.cells) == 0:
        return None, geometry.center, 0.0
    signal, points = presynaptic_evidence(geometry, seg, presynaptic, voxel_size,
                                          radius_nm=radius_nm)
    k, confidence = pick_presynaptic(signal, geometry.area_nm2, min_area_nm2=min_area_nm2)
    return k, points[k], confidence


def assign_by_vesicles(
    sites,
    segmentation,
    presynaptic,
    *,
    voxel_size,
    radius_nm: float = 200.0,
    min_area_nm2: float = 1500.0,
    min_fraction: float = 0.25,
    min_inside: float = 0.1,
    group_distance_nm: float = 300.0,
) -> list[PartnerRow]:
    """Assign partners from the side that holds the vesicle cloud.

    Parameters
    ----------
    sites : (Z, Y, X) integer ndarray
        Candidate labels (cleft / junction masks), 0 elsewhere.
    segmentation : (Z, Y, X) integer ndarray
        Cell ids, 0 = background / membrane.
    presynaptic : (Z, Y, X) ndarray
        Vesicle-cloud (or presynaptic density) probability, float 0..1 or uint8 0..255.
    voxel_size : sequence of 3 float
        (z, y, x) nm.
    radius_nm : float
        How far from the site the presynaptic signal is averaged.
    min_area_nm2 : float
        Smallest contact with the site for a cell to be a partner.
    min_fraction : float
        A partner's contact must be at least this fraction of the largest partner contact,
        unless the cell holds at least `min_inside` of the site's voxels.
    min_inside : float
        A touching cell holding at least this share of the site's voxels (the PSD of one
        partner of a polyadic candidate whose clefts merged) is a partner whatever its contact
        area (:func:`detection.partners.sites.postsynaptic_indices`).
    group_distance_nm : float
        Candidates of one presynaptic cell within this distance form one polyadic site.

    Returns
    -------
    list of PartnerRow
        ``confidence`` is the vesicle contrast between the presynaptic cell and the runner-up
        (see :func:`detection.partners.sites.pick_presynaptic`); ``weight`` the contact-area
        share of the partner within its site.
    """
    t0 = time.perf_counter()
    choices = vesicle_choices(sites, segmentation, presynaptic, voxel_size=voxel_size,
                              radius_nm=radius_nm, min_area_nm2=min_area_nm2,
                              min_fraction=min_fraction, min_inside=min_inside)
    rows = build_rows(choices, voxel_size=voxel_size, method="vesicle",
                      group_distance_nm=group_distance_nm)
    logger.info("vesicle side: %d candidates -> %d rows in %.1f s", len(choices), len(rows),
                time.perf_counter() - t0)
    return rows


def vesicle_choices(sites, segmentation, presynaptic, *, voxel_size, radius_nm: float = 200.0,
                    min_area_nm2: float = 1500.0, min_fraction: float = 0.25,
                    min_inside: float = 0.1, offset=(0, 0, 0)) -> list[Choice]:
    """The per-candidate decisions of :func:`assign_by_vesicles`, before sites are grouped.

    Each candidate's choice depends on the arrays within its bounding box grown by
    :func:`detection.partners.blocks.assignment_margin` only, so a crop holding that gives the
    same choices as the volume; `offset` (the crop's corner in volume voxels) puts the positions
    in the volume's frame.
    """
    sites, seg, vs = check_inputs(sites, segmentation, voxel_size=voxel_size,
                                  presynaptic=presynaptic)
    choices = []
    for site, box in site_boxes(sites):
        g = site_geometry(site, box, sites, seg, vs, margin_nm=2 * max(vs), offset=offset)
        k, pre_point, confidence = presynaptic_choice(
            g, seg, presynaptic, vs, radius_nm=radius_nm, min_area_nm2=min_area_nm2)
        if k is None:
            choices.append(Choice(g, 0, g.center, 0.0))
            continue
        posts = [
            Post(int(g.cells[j]), float(g.area_nm2[j]), float(g.area_nm2[j]), confidence,
                 g.contact_center[j], g.inner_point[j])
            for j in postsynaptic_indices(g.area_nm2, k, min_area_nm2=min_area_nm2,
                                          min_fraction=min_fraction,
                                          inside_fraction=g.inside_fraction,
                                          min_inside=min_inside)
        ]
        choices.append(Choice(g, int(g.cells[k]), np.asarray(pre_point), confidence, posts))
    return choices
