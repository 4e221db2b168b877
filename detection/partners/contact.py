"""Partners by contact interface classification, after SynEM (Staffler et al., eLife 2017).

SynEM classifies every contact interface between two neurite segments in both directions
("synaptic, A presynaptic" / "synaptic, B presynaptic").  Here each site (a detected cleft, or
an annotated synapse) is matched to the interfaces between the cells it touches; the
interface classifier's two directed scores decide which cell is presynaptic and which touching
cells are its partners.  The cells on either side of the cleft are the pair; the classifier
gives the direction and the confidence.

SynEM's interfaces are local: its segments are supervoxels, so a contact between two of them
is a patch of membrane.  With whole-neuron segments, all contacts between two cells form one
interface whose features dilute a synapse in microns of plain membrane.
:func:`site_interfaces` therefore cuts each site's neighbourhood (``margin_nm`` around it) and
extracts the interfaces of the cells around the site there, keeps of each only its border
within ``near_nm`` of the site (the contact patch at the synapse), and describes that patch
and the neurites behind it at SynEM's distances; the classifier is
trained on such local interfaces (:func:`site_interfaces` with synapse labels) and scores them
(:func:`site_scores`).
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
from detection.partners.sites import check_inputs, grow, site_boxes, site_geometry
from detection.synapses.interfaces import (
    InterfaceClassifier,
    InterfaceTable,
    extract_interfaces,
    interface_features,
)

logger = logging.getLogger(__name__)


def interface_scores(volume, segmentation, classifier: InterfaceClassifier, *, voxel_size,
                     **extract_kw) -> tuple[InterfaceTable, np.ndarray]:
    """Every interface of `segmentation` and its two directed scores from `classifier`.

    The features are computed the way the classifier was trained (its recorded feature spec,
    distances and cumulative flag).  ``extract_kw`` go to
    :func:`detection.synapses.interfaces.extract_interfaces` (e.g. ``in_plane_only``).
    """
    from detection.synapses.features import FeatureSpec

    meta = classifier.metadata
    spec = FeatureSpec.from_dict(meta["feature_spec"]) if meta.get("feature_spec") else None
    table = extract_interfaces(segmentation, voxel_size=voxel_size, **extract_kw)
    features, names = interface_features(
        volume, table, voxel_size=voxel_size, spec=spec,
        distances_nm=tuple(meta.get("distances_nm", (40.0, 80.0, 160.0))),
        cumulative=meta.get("cumulative", True))
    return table, classifier.predict_scores(features, names=names)


@dataclass
class SiteInterfaces:
    """Local interfaces around sites: one row per (site, cell pair).

    site : (N,) int64; ids : (N, 2) uint64 (A < B); features : (N, F) float32; names : list
    of F str; labels : (N,) int8 or None (0 not synaptic, 1 A presynaptic, 2 B presynaptic,
    -1 synaptic with unknown direction), when synapse labels were given.
    """

    site: np.ndarray
    ids: np.ndarray
    features: np.ndarray
    names: list
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.site)


def _near_site(table: InterfaceTable, near: np.ndarray) -> InterfaceTable:
    """The interfaces cut down to their border voxels where `near` is set; empty ones dropped.

    Areas are scaled by the share of border voxels kept; centroids and boxes recomputed.
    """
    keep_voxel = near[tuple(table.voxels.T)]
    counts = np.add.reduceat(keep_voxel.astype(np.int64), table.voxel_offsets[:-1]) \
        if len(table.voxels) else np.zeros(len(table), np.int64)
    counts[table.n_border_voxels == 0] = 0
    alive = counts > 0
    owner = np.repeat(np.arange(len(table)), table.n_border_voxels)[keep_voxel]
    voxels = table.voxels[keep_voxel]
    share = counts[alive] / table.n_border_voxels[alive]
    offsets = np.concatenate([[0], np.cumsum(counts[alive])]).astype(np.int64)
    index = np.flatnonzero(alive)
    remap = np.full(len(table), -1)
    remap[index] = np.arange(len(index))
    owner = remap[owner]
    vs = np.asarray(table.voxel_size)
    centroid = np.stack([np.bincount(owner, weights=voxels[:, a] * vs[a], minlength=len(index))
                         for a in range(3)], axis=1) / counts[alive][:, None]
    starts = offsets[:-1]
    return InterfaceTable(
        ids=table.ids[alive], area_nm2=table.area_nm2[alive] * share,
        area_axes_nm2=table.area_axes_nm2[alive] * share[:, None],
        n_faces=np.maximum(1, np.rint(table.n_faces[alive] * share)).astype(np.int64),
        centroid_nm=centroid,
        bbox_min=np.minimum.reduceat(voxels, starts, axis=0).astype(np.int64),
        bbox_max=np.maximum.reduceat(voxels, starts, axis=0).astype(np.int64) + 1,
        voxel_offsets=offsets, voxels=voxels, voxel_side=table.voxel_side[keep_voxel],
        labels=table.labels, voxel_size=table.voxel_size, params=dict(table.params))


def site_interfaces(volume, segmentation, sites, *, voxel_size, spec=None,
                    margin_nm: float = 320.0, near_nm: float = 80.0,
                    min_area_nm2: float = 1000.0, channels=None,
                    synapse_labels=None, pre_side=None, **extract_kw) -> SiteInterfaces:
    """The interfaces between the cells touching each site, within `margin_nm` of it.

    Parameters
    ----------
    volume : (Z, Y, X) ndarray
        EM.
    segmentation, sites : (Z, Y, X) integer ndarrays
        Cells (0 = background) and site labels (0 elsewhere).
    voxel_size : sequence of 3 float
    spec : detection.synapses.features.FeatureSpec or None
        Filter bank of the texture channels (computed on each crop).
    margin_nm : float
        Crop around each site; it should exceed `near_nm` plus the largest subvolume distance
        (160 nm), so the subvolumes of the site's interfaces see no crop border.
    near_nm : float
        Border voxels farther than this from the site are cut off each interface.
    min_area_nm2 : float
        Smallest interface (in the crop, before the cut) kept.
    channels : (C, Z, Y, X) float32 ndarray or None
        The channels of `spec` for the whole volume, when already computed (faster than one
        filter-bank pass per crop, and free of crop-border effects); otherwise each crop's
        channels are computed from `volume`.
    synapse_labels, pre_side
        For training: synapse ids and ``{synapse id: (pre, post)}``, as in
        :func:`detection.synapses.interfaces.label_interfaces`; fills ``labels``.
    extract_kw
        More options of :func:`detection.synapses.interfaces.extract_interfaces`.
    """
    from detection.synapses.features import FeatureSpec, compute_features
    from detection.synapses.interfaces import label_interfaces

    sites, seg, vs = check_inputs(sites, segmentation, voxel_size=voxel_size)
    spec = spec or FeatureSpec()
    out_site, out_ids, out_feats, out_labels = [], [], [], []
    names = None
    for site, box in site_boxes(sites):
        g = site_geometry(site, box, sites, seg, vs, margin_nm=2 * max(vs))
        touching = set(g.cells.tolist())
        if len(touching) < 2:
            continue
        crop = grow(box, margin_nm, vs, seg.shape)
        table = extract_interfaces(seg[crop], voxel_size=vs, min_area_nm2=min_area_nm2,
                                   **extract_kw)
        keep = np.array([int(a) in touching and int(b) in touching
                         for a, b in table.ids.tolist()], dtype=bool)
        if not keep.any():
            continue
        mask = sites[crop] == site
        near = ndi.distance_transform_edt(~mask, sampling=vs) <= near_nm
        table = _near_site(table.select(keep), near)
        if len(table) == 0:
            continue
        if channels is not None:
            crop_channels = np.ascontiguousarray(channels[(slice(None),) + crop])
        else:
            crop_channels = compute_features(volume[crop], voxel_size=vs, spec=spec)
        feats, names = interface_features(crop_channels, table, voxel_size=vs, spec=spec)
        out_site.append(np.full(len(table), site, dtype=np.int64))
        out_ids.append(table.ids)
        out_feats.append(feats)
        if synapse_labels is not None:
            out_labels.append(label_interfaces(table, np.asarray(synapse_labels)[crop],
                                               pre_side=pre_side).labels)
    if not out_site:
        return SiteInterfaces(np.zeros(0, np.int64), np.zeros((0, 2), np.uint64),
                              np.zeros((0, 0), np.float32), names or [],
                              np.zeros(0, np.int8) if synapse_labels is not None else None)
    return SiteInterfaces(
        np.concatenate(out_site), np.concatenate(out_ids), np.concatenate(out_feats), names,
        np.concatenate(out_labels) if synapse_labels is not None else None)


def train_site_classifier(volumes, segmentations, synapse_labels, pre_sides, *, voxel_size,
                          spec=None, **hgb_params) -> InterfaceClassifier:
    """Train the interface classifier on the local interfaces around annotated synapses.

    Parameters
    ----------
    volumes, segmentations, synapse_labels : lists of (Z, Y, X) ndarrays
        EM, cells and synapse ids (clefts / PSDs) of each training volume; the sites are the
        connected components of the synapse masks.
    pre_sides : list of dict
        Per volume, ``{synapse id: (pre cell, post cell)}``.
    voxel_size : sequence of 3 float
    spec : detection.synapses.features.FeatureSpec or None
    hgb_params
        Passed to :func:`detection.synapses.interfaces.train_interface_classifier`.
    """
    from detection.synapses.interfaces import train_interface_classifier

    feats, labels, names = [], [], None
    for em, seg, syn, pre in zip(volumes, segmentations, synapse_labels, pre_sides):
        syn = np.asarray(syn)
        sites, _ = ndi.label(syn > 0, structure=np.ones((3, 3, 3), dtype=bool))
        local = site_interfaces(em, seg, sites, voxel_size=voxel_size, spec=spec,
                                synapse_labels=syn, pre_side=pre)
        if len(local):
            feats.append(local.features)
            labels.append(local.labels)
            names = local.names
    if not feats:
        raise InputError("no synapse site with two touching cells to train on")
    return train_interface_classifier(np.concatenate(feats), np.concatenate(labels),
                                      names=names, voxel_size=voxel_size, spec=spec,
                                      **hgb_params)


def site_scores(local: SiteInterfaces, classifier: InterfaceClassifier) -> dict:
    """``{(site, a, b): score of "synaptic, a presynaptic"}`` for every local interface."""
    if len(local) == 0:
        return {}
    scores = classifier.predict_scores(local.features, names=local.names)
    out = {}
    for site, (a, b), (s_ab, s_ba) in zip(local.site.tolist(), local.ids.tolist(),
                                          scores.tolist()):
        out[(site, a, b)] = s_ab
        out[(site, b, a)] = s_ba
    return out


class _DirectedScores:
    """score(site, a -> b): site-local scores first, else the whole-volume interface's."""

    def __init__(self, interfaces: InterfaceTable | None, scores, local: dict | None):
        self._score = {}
        self._local = local or {}
        if interfaces is None:
            return
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(interfaces), 2):
            raise InputError(
                f"scores must be ({len(interfaces)}, 2) for the {len(interfaces)} interfaces, "
                f"got {scores.shape}")
        for (a, b), (s_ab, s_ba) in zip(interfaces.ids.tolist(), scores.tolist()):
            self._score[(a, b)] = s_ab
            self._score[(b, a)] = s_ba

    def __call__(self, site: int, a: int, b: int) -> float | None:
        key = (int(site), int(a), int(b))
        if key in self._local:
            return self._local[key]
        return self._score.get(key[1:])


def assign_by_contact(
    sites,
    segmentation,
    *,
    voxel_size,
    interfaces: InterfaceTable | None = None,
    scores=None,
    local_scores: dict | None = None,
    min_area_nm2: float = 1500.0,
    min_score: float = 0.3,
    min_inside: float | None = 0.1,
    group_distance_nm: float = 300.0,
) -> list[PartnerRow]:
    """Assign partners from the directed scores of the interfaces a site lies on.

    Parameters
    ----------
    sites : (Z, Y, X) integer ndarray
        Candidate labels (cleft / junction masks), 0 elsewhere.
    segmentation : (Z, Y, X) integer ndarray
        Cell ids, 0 = background / membrane; the one `interfaces` were extracted from.
    voxel_size : sequence of 3 float
        (z, y, x) nm.
    interfaces : InterfaceTable or None
        Whole-volume interfaces, from :func:`detection.synapses.interfaces.extract_interfaces` on
        `segmentation`.
    scores : (N, 2) array or None
        "Synaptic, A presynaptic" and "synaptic, B presynaptic" per interface of `interfaces`
        (:meth:`InterfaceClassifier.predict_scores`, or :func:`interface_scores`).
    local_scores : dict or None
        ``{(site, a, b): score}`` of site-local interfaces (:func:`site_scores`); they take
        precedence over the whole-volume scores.  Give these, or `interfaces` and `scores`,
        or both.
    min_area_nm2 : float
        Smallest contact with the site for a cell to be a partner.
    min_score : float
        Besides the best-scoring partner, other touching cells are partners of a site only
        when their directed score from the presynaptic cell reaches this, or when they hold
        `min_inside` of the site.
    min_inside : float or None
        A touching cell (not the presynaptic one, with at least `min_area_nm2` of contact)
        holding at least this share of the site's voxels is a partner whatever its score: the
        PSD of one partner of a polyadic candidate whose clefts merged, whose own interface
        patch is swamped by its neighbours' (as in the ``vesicle`` method).  None: scores
        only.
    group_distance_nm : float
        Candidates of one presynaptic cell within this distance form one polyadic site.

    Returns
    -------
    list of PartnerRow
        ``confidence`` is the directed interface score of (pre -> post); ``weight`` the
        contact-area share within the site.

    Notes
    -----
    For each site, every ordered pair (a, b) of touching cells with enough contact gets the
    score of its interface; the presynaptic cell is the ``a`` of the best pair, whose ``b`` is
    always a partner; other cells are partners when ``score(pre -> b) >= min_score``.
    """
    t0 = time.perf_counter()
    choices = contact_choices(sites, segmentation, voxel_size=voxel_size, interfaces=interfaces,
                              scores=scores, local_scores=local_scores,
                              min_area_nm2=min_area_nm2, min_score=min_score,
                              min_inside=min_inside)
    rows = build_rows(choices, voxel_size=voxel_size, method="contact",
                      group_distance_nm=group_distance_nm)
    logger.info("contact: %d candidates -> %d rows in %.1f s", len(choices), len(rows),
                time.perf_counter() - t0)
    return rows


def contact_choices(sites, segmentation, *, voxel_size, interfaces: InterfaceTable | None = None,
                    scores=None, local_scores: dict | None = None,
                    min_area_nm2: float = 1500.0, min_score: float = 0.3,
                    min_inside: float | None = 0.1, offset=(0, 0, 0)) -> list[Choice]:
    """The per-candidate decisions of :func:`assign_by_contact`, before sites are grouped.

    With site-local scores only, each candidate's choice depends on the arrays within its box
    grown by :func:`detection.partners.blocks.assignment_margin`; `offset` (a crop's corner in
    volume voxels) puts the positions in the volume's frame.
    """
    sites, seg, vs = check_inputs(sites, segmentation, voxel_size=voxel_size)
    if interfaces is None and local_scores is None:
        raise InputError("the contact method needs interface scores: site-local ones, or "
                         "whole-volume interfaces and their scores")
    if interfaces is not None and tuple(interfaces.shape) != seg.shape:
        raise InputError(f"interfaces were found on a {interfaces.shape} volume, "
                         f"the segmentation is {seg.shape}")
    directed = _DirectedScores(interfaces, scores, local_scores)
    choices = []
    for site, box in site_boxes(sites):
        g = site_geometry(site, box, sites, seg, vs, margin_nm=2 * max(vs), offset=offset)
        touching = [k for k in range(len(g.cells)) if g.area_nm2[k] >= min_area_nm2]
        if len(touching) < 2:
            touching = list(range(min(2, len(g.cells))))
        best = None
        for i in touching:
            for j in touching:
                s = directed(site, g.cells[i], g.cells[j]) if i != j else None
                if s is not None and (best is None or s > best[0]):
                    best = (s, i, j)
        if best is None:
            # No interface between the touching cells (one cell, or cells only meeting
            # across background): the largest contact stands as presynaptic, unscored.
            k = 0 if len(g.cells) else None
            pre = int(g.cells[k]) if k is not None else 0
            point = g.inner_point[k] if k is not None else g.center
            choices.append(Choice(g, pre, point, 0.0))
            continue
        _, k, first = best
        pre = int(g.cells[k])
        posts = []
        for j in touching:
            if j == k:
                continue
            s = directed(site, pre, g.cells[j])
            inside = (min_inside is not None and g.inside_fraction is not None
                      and g.area_nm2[j] >= min_area_nm2
                      and g.inside_fraction[j] >= min_inside)
            if j == first or (s is not None and s >= min_score) or inside:
                posts.append(Post(int(g.cells[j]), float(g.area_nm2[j]), float(g.area_nm2[j]),
                                  float(s) if s is not None else 0.0, g.contact_center[j],
                                  g.inner_point[j]))
        choices.append(Choice(g, pre, g.inner_point[k], float(best[0]), posts))
    return choices
