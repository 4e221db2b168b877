"""Partners by contact interface classification, after SynEM (Staffler et al., eLife 2017).

SynEM classifies every contact interface between two neurite segments in both directions
("synaptic, A presynaptic" / "synaptic, B presynaptic").  Here each site (a detected cleft, or
an annotated synapse) is matched to the interfaces between the cells it touches; the
interface classifier's two directed scores decide which cell is presynaptic and which touching
cells are its partners.  The cells on either side of the cleft are the pair; the classifier
gives the direction and the confidence.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from detection.interfaces import (
    InterfaceClassifier,
    InterfaceTable,
    extract_interfaces,
    interface_features,
)
from detection.partners.records import PartnerRow
from detection.partners.rows import Choice, Post, build_rows
from detection.partners.sites import check_inputs, site_boxes, site_geometry

logger = logging.getLogger(__name__)


def interface_scores(volume, segmentation, classifier: InterfaceClassifier, *, voxel_size,
                     **extract_kw) -> tuple[InterfaceTable, np.ndarray]:
    """Every interface of `segmentation` and its two directed scores from `classifier`.

    The features are computed the way the classifier was trained (its recorded feature spec,
    distances and cumulative flag).  ``extract_kw`` go to
    :func:`detection.interfaces.extract_interfaces` (e.g. ``in_plane_only``).
    """
    from detection.features import FeatureSpec

    meta = classifier.metadata
    spec = FeatureSpec.from_dict(meta["feature_spec"]) if meta.get("feature_spec") else None
    table = extract_interfaces(segmentation, voxel_size=voxel_size, **extract_kw)
    features, names = interface_features(
        volume, table, voxel_size=voxel_size, spec=spec,
        distances_nm=tuple(meta.get("distances_nm", (40.0, 80.0, 160.0))),
        cumulative=meta.get("cumulative", True))
    return table, classifier.predict_scores(features, names=names)


class _DirectedScores:
    """score(a -> b) for any pair of cells, from the interface table's two columns."""

    def __init__(self, interfaces: InterfaceTable, scores):
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(interfaces), 2):
            raise ValueError(
                f"scores must be ({len(interfaces)}, 2) for the {len(interfaces)} interfaces, "
                f"got {scores.shape}")
        self._score = {}
        for (a, b), (s_ab, s_ba) in zip(interfaces.ids.tolist(), scores.tolist()):
            self._score[(a, b)] = s_ab
            self._score[(b, a)] = s_ba

    def __call__(self, a: int, b: int) -> float | None:
        return self._score.get((int(a), int(b)))


def assign_by_contact(
    sites,
    segmentation,
    *,
    voxel_size,
    interfaces: InterfaceTable,
    scores,
    min_area_nm2: float = 1500.0,
    min_score: float = 0.5,
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
    interfaces : InterfaceTable
        From :func:`detection.interfaces.extract_interfaces` on `segmentation`.
    scores : (N, 2) array
        "Synaptic, A presynaptic" and "synaptic, B presynaptic" per interface
        (:meth:`InterfaceClassifier.predict_scores`, or :func:`interface_scores`).
    min_area_nm2 : float
        Smallest contact with the site for a cell to be a partner.
    min_score : float
        Besides the best-scoring partner, other touching cells are partners of a site only
        when their directed score from the presynaptic cell reaches this.
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
    sites, seg, vs = check_inputs(sites, segmentation, voxel_size=voxel_size)
    if tuple(interfaces.shape) != seg.shape:
        raise ValueError(f"interfaces were found on a {interfaces.shape} volume, "
                         f"the segmentation is {seg.shape}")
    directed = _DirectedScores(interfaces, scores)
    t0 = time.perf_counter()
    choices = []
    for site, box in site_boxes(sites):
        g = site_geometry(site, box, sites, seg, vs, margin_nm=2 * max(vs))
        touching = [k for k in range(len(g.cells)) if g.area_nm2[k] >= min_area_nm2]
        if len(touching) < 2:
            touching = list(range(min(2, len(g.cells))))
        best = None
        for i in touching:
            for j in touching:
                s = directed(g.cells[i], g.cells[j]) if i != j else None
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
            s = directed(pre, g.cells[j])
            if j == first or (s is not None and s >= min_score):
                posts.append(Post(int(g.cells[j]), float(g.area_nm2[j]), float(g.area_nm2[j]),
                                  float(s), g.contact_center[j], g.inner_point[j]))
        choices.append(Choice(g, pre, g.inner_point[k], float(best[0]), posts))
    rows = build_rows(choices, voxel_size=vs, method="contact",
                      group_distance_nm=group_distance_nm)
    logger.info("contact: %d candidates -> %d rows in %.1f s", len(choices), len(rows),
                time.perf_counter() - t0)
    return rows
