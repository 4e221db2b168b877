"""How good is a synapse detection: object, point, cleft-voxel and connectome scores.

* :func:`match_by_overlap` scores instance label volumes (one-to-one matching by voxel overlap).
* :func:`match_by_distance` scores point detections against ground-truth points in nm.
* :func:`cremi_cleft_scores` scores cleft masks with the CREMI challenge distances.
* :func:`connection_scores` scores the binary connectome (which cell pairs are connected).
* :func:`synapse_partner_scores` scores synapses together with their (pre, post) partners.

Conventions
-----------
Arrays are indexed ``(z, y, x)``; points and voxel sizes are in nm, ordered ``(z, y, x)``.

Ratios with an empty denominator are defined, never nan, so that scores of volumes without
synapses can be stored and pooled:

* ``precision = tp / (tp + fp)``, and 1.0 when nothing was predicted (no false claim was made);
* ``recall = tp / (tp + fn)``, and 1.0 when nothing was expected (nothing was missed);
* ``f1 = 2 tp / (2 tp + fp + fn)``, the harmonic mean of the two where both are defined, and
  1.0 when nothing was predicted and nothing was expected. Nothing predicted against a non-empty
  ground truth thus gives precision 1.0, recall 0.0, f1 0.0.

Distance tolerances are inclusive: a pair exactly ``tolerance_nm`` apart is a match, as in the
CREMI evaluation, where a voxel is a false positive only when *farther* than the threshold.

Pooling over folds or volumes is done by summing counts (:meth:`DetectionScores.combine`),
not by averaging ratios, so that a volume with two synapses weighs less than one with two
hundred.
"""

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage, sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import (
    connected_components,
    min_weight_full_bipartite_matching,
)
from scipy.spatial import cKDTree

from detection.errors import InputError

logger = logging.getLogger(__name__)

# Above this many entries (rows x columns) a connected component of the candidate graph is
# solved with the sparse assignment solver instead of a dense cost matrix; typical detection
# components are a handful of objects, so the dense solver is the usual path.
DENSE_COMPONENT_LIMIT = 4_000_000


def _precision(tp: int, fp: int) -> float:
    return tp / (tp + fp) if tp + fp else 1.0


def _recall(tp: int, fn: int) -> float:
    return tp / (tp + fn) if tp + fn else 1.0


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


@dataclass(frozen=True)
class DetectionScores:
    """Counts and ratios of a one-to-one matching of predictions to ground truth.

    Attributes
    ----------
    tp, fp, fn : int
        Matched pairs, unmatched predictions, unmatched ground-truth objects.
    precision, recall, f1 : float
        See the module conventions for the empty cases.
    matches : list of (int, int)
        ``(prediction, ground truth)`` pairs counted as true positives, sorted by prediction:
        labels for :func:`match_by_overlap`, indices into the inputs for the point matchers.
    """

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    matches: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def from_counts(cls, tp: int, fp: int, fn: int, *, matches=()) -> "DetectionScores":
        """Scores with the ratios derived from the counts."""
        tp, fp, fn = int(tp), int(fp), int(fn)
        if min(tp, fp, fn) < 0:
            raise InputError(f"counts must be non-negative, got tp={tp}, fp={fp}, fn={fn}")
        return cls(
            tp, fp, fn, _precision(tp, fp), _recall(tp, fn), _f1(tp, fp, fn),
            [(int(p), int(g)) for p, g in matches],
        )

    def to_dict(self) -> dict:
        """Plain, JSON-serialisable dict; ``matches`` becomes a list of ``[pred, gt]`` lists."""
        out = asdict(self)
        out["matches"] = [[p, g] for p, g in self.matches]
        return out

    @staticmethod
    def combine(scores: Sequence["DetectionScores"]) -> "DetectionScores":
        """Pool scores of several folds or volumes: counts are summed, ratios recomputed.

        The pooled ``matches`` is empty: labels and indices of different volumes do not name
        the same objects, so keep the per-volume scores where the pairs are needed.
        """
        tp = sum(s.tp for s in scores)
        fp = sum(s.fp for s in scores)
        fn = sum(s.fn for s in scores)
        return DetectionScores.from_counts(tp, fp, fn)


def _max_weight_matching(rows, cols, weights, *, n_rows: int, n_cols: int):
    """One-to-one matching of maximum total weight on a sparse bipartite graph.

    Parameters
    ----------
    rows, cols : (E,) int
        Endpoints of the candidate edges, each (row, col) at most once.
    weights : (E,) float64
        Positive edge weights.
    n_rows, n_cols : int
        Sizes of the two sides.

    Returns
    -------
    matched_rows, matched_cols : (K,) int64
        The chosen edges, sorted by row.
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    if rows.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # Independent connected components are solved separately: the assignment cost grows
    # cubically, and detection graphs fall apart into many tiny components.
    n = n_rows + n_cols
    graph = sparse.coo_matrix((np.ones(rows.size), (rows, n_rows + cols)), shape=(n, n))
    _, node_component = connected_components(graph, directed=False)
    component = node_component[rows]
    edges_per_component = np.bincount(component)
    lone = edges_per_component[component] == 1
    out_rows = [rows[lone]]
    out_cols = [cols[lone]]

    rest = np.flatnonzero(~lone)
    rest = rest[np.argsort(component[rest], kind="stable")]
    boundaries = np.flatnonzero(np.diff(component[rest])) + 1
    for edge_ids in np.split(rest, boundaries) if rest.size else []:
        r_ids, r = np.unique(rows[edge_ids], return_inverse=True)
        c_ids, c = np.unique(cols[edge_ids], return_inverse=True)
        w = weights[edge_ids]
        if r_ids.size * c_ids.size <= DENSE_COMPONENT_LIMIT:
            dense = np.zeros((r_ids.size, c_ids.size))
            dense[r, c] = w
            a, b = linear_sum_assignment(dense, maximize=True)
            # Pairs that are not candidate edges fill the rectangular assignment at weight 0.
            keep = dense[a, b] > 0
            a, b = a[keep], b[keep]
        else:
            logger.info(
                "matching a group of %d x %d objects linked by %d candidate pairs with the "
                "sparse solver; this can take a while",
                r_ids.size, c_ids.size, edge_ids.size,
            )
            a, b = _sparse_max_weight_matching(r, c, w, r_ids.size, c_ids.size)
        out_rows.append(r_ids[a])
        out_cols.append(c_ids[b])

    matched_rows = np.concatenate(out_rows)
    matched_cols = np.concatenate(out_cols)
    order = np.argsort(matched_rows, kind="stable")
    return matched_rows[order], matched_cols[order]


def _sparse_max_weight_matching(r, c, w, n_r: int, n_c: int):
    """Maximum-weight matching of one large component with the sparse LAPJVsp solver.

    The solver only returns full matchings, so each row gets a private dummy column; with
    the real edge costing ``C - w`` and the dummy ``C`` the minimum-cost full matching is the
    maximum-weight matching, and all costs stay positive (the solver drops explicit zeros).
    """
    big = float(w.max()) + 1.0
    biadjacency = sparse.csr_matrix(
        (
            np.concatenate([big - w, np.full(n_r, big)]),
            (np.concatenate([r, np.arange(n_r)]), np.concatenate([c, n_c + np.arange(n_r)])),
        ),
        shape=(n_r, n_c + n_r),
    )
    a, b = min_weight_full_bipartite_matching(biadjacency)
    real = b < n_c
    return a[real], b[real]


def _as_labels(array, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3:
        raise InputError(f"{name} must be a 3-D (Z, Y, X) volume, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"{name} must be an integer instance label volume, got dtype {array.dtype} "
            "(label a binary mask into instances first)"
        )
    return array


def _as_ignore(ignore, shape) -> np.ndarray | None:
    if ignore is None:
        return None
    ignore = np.asarray(ignore, dtype=bool)
    if ignore.shape != tuple(shape):
        raise InputError(f"ignore mask has shape {ignore.shape}, expected {tuple(shape)}")
    return ignore


def _counted(ids: np.ndarray, flat: np.ndarray, ignore: np.ndarray | None) -> np.ndarray:
    """(N,) bool: which of the sorted object ``ids`` have at least one voxel outside ignore."""
    if ignore is None:
        return np.ones(ids.size, dtype=bool)
    outside = np.unique(flat[~ignore.reshape(-1)])
    return np.isin(ids, outside, assume_unique=True)


def match_by_overlap(
    pred_labels, gt_labels, *, min_overlap_voxels: int = 1, min_iou: float = 0.0, ignore=None
) -> DetectionScores:
    """Match predicted to ground-truth objects one-to-one by voxel overlap.

    Candidate pairs are the overlapping (prediction, ground truth) pairs with at least
    ``min_overlap_voxels`` common voxels and an intersection over union of at least
    ``min_iou``; among them the one-to-one matching of maximum total overlap is chosen
    (Hungarian algorithm), so a prediction spanning two ground-truth objects is matched to
    one of them and the other is a false negative.

    Parameters
    ----------
    pred_labels, gt_labels : (Z, Y, X) integer array
        Instance labels of the same shape; 0 is background, every other value one object.
    min_overlap_voxels : int
        Smallest overlap (voxels) for a pair to count; at least 1.
    min_iou : float
        Smallest intersection over union for a pair to count, in [0, 1]; inclusive.
    ignore : (Z, Y, X) bool array, optional
        Voxels excluded from scoring, e.g. the border of a spatial cross-validation fold.
        An object lying entirely in ignore is neither a false positive nor a false negative,
        and a match between two such objects is not counted either. Objects reaching outside
        ignore are scored whole: overlaps and IoU use all their voxels, ignored or not, and a
        prediction entirely in ignore may still be the true positive of a ground-truth object
        that reaches outside it.

    Returns
    -------
    DetectionScores
        ``matches`` holds ``(pred_label, gt_label)`` pairs.
    """
    pred = _as_labels(pred_labels, "pred_labels")
    gt = _as_labels(gt_labels, "gt_labels")
    if pred.shape != gt.shape:
        raise InputError(f"pred_labels {pred.shape} and gt_labels {gt.shape} differ in shape")
    if min_overlap_voxels < 1:
        raise InputError(f"min_overlap_voxels must be at least 1, got {min_overlap_voxels}")
    if not 0.0 <= min_iou <= 1.0:
        raise InputError(f"min_iou must lie in [0, 1], got {min_iou}")
    ignore = _as_ignore(ignore, pred.shape)

    p = pred.reshape(-1)
    g = gt.reshape(-1)
    pred_ids, pred_sizes = np.unique(p[p != 0], return_counts=True)
    gt_ids, gt_sizes = np.unique(g[g != 0], return_counts=True)

    # The overlap matrix is built from the label pairs that actually co-occur: one np.unique
    # over the overlapping voxels instead of a pass over the volume per object.
    both = (p != 0) & (g != 0)
    pi = np.searchsorted(pred_ids, p[both]).astype(np.int64)
    gi = np.searchsorted(gt_ids, g[both]).astype(np.int64)
    keys, overlap = np.unique(pi * gt_ids.size + gi, return_counts=True)
    rows, cols = np.divmod(keys, max(gt_ids.size, 1))
    union = pred_sizes[rows] + gt_sizes[cols] - overlap
    iou = overlap / union
    candidate = (overlap >= min_overlap_voxels) & (iou >= min_iou)
    mr, mc = _max_weight_matching(
        rows[candidate], cols[candidate], overlap[candidate].astype(np.float64),
        n_rows=pred_ids.size, n_cols=gt_ids.size,
    )

    pred_counted = _counted(pred_ids, p, ignore)
    gt_counted = _counted(gt_ids, g, ignore)
    scored = pred_counted[mr] | gt_counted[mc]
    mr, mc = mr[scored], mc[scored]
    pred_matched = np.zeros(pred_ids.size, dtype=bool)
    pred_matched[mr] = True
    gt_matched = np.zeros(gt_ids.size, dtype=bool)
    gt_matched[mc] = True
    fp = int(np.count_nonzero(pred_counted & ~pred_matched))
    fn = int(np.count_nonzero(gt_counted & ~gt_matched))
    scores = DetectionScores.from_counts(
        mr.size, fp, fn, matches=zip(pred_ids[mr].tolist(), gt_ids[mc].tolist())
    )
    logger.debug(
        "overlap matching of %d predicted and %d ground-truth objects: tp=%d fp=%d fn=%d",
        pred_ids.size, gt_ids.size, scores.tp, scores.fp, scores.fn,
    )
    return scores


def _as_points(points, name: str) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.size == 0:
        return points.reshape(0, 3)
    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError(f"{name} must have shape (N, 3) in nm (z, y, x), got {points.shape}")
    if not np.isfinite(points).all():
        raise InputError(f"{name} contains non-finite coordinates")
    return points


def _check_tolerance(tolerance_nm: float) -> float:
    tolerance_nm = float(tolerance_nm)
    if not (np.isfinite(tolerance_nm) and tolerance_nm >= 0):
        raise InputError(f"tolerance_nm must be finite and non-negative, got {tolerance_nm}")
    return tolerance_nm


def _pairs_within(pred: np.ndarray, gt: np.ndarray, tolerance_nm: float):
    """Candidate pairs ``(i, j, distance)`` with ``distance <= tolerance_nm``, each (E,)."""
    if len(pred) == 0 or len(gt) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    # The tree search runs with a little slack and the exact distances decide, so that the
    # inclusive boundary does not depend on the tree's floating-point arithmetic.
    slack = max(tolerance_nm * 1e-9, 1e-9)
    found = cKDTree(pred).sparse_distance_matrix(
        cKDTree(gt), tolerance_nm + slack, output_type="ndarray"
    )
    i = found["i"].astype(np.int64)
    j = found["j"].astype(np.int64)
    distance = np.sqrt(((pred[i] - gt[j]) ** 2).sum(axis=1))
    keep = distance <= tolerance_nm
    return i[keep], j[keep], distance[keep]


def _match_points(i, j, distance, *, n_pred: int, n_gt: int, tolerance_nm: float):
    """Most pairs first, then the smallest total distance among matchings of that size."""
    # Each match is worth more than any sum of distances a matching can reach, so the
    # maximum-weight matching is a maximum-cardinality one, and among those the closest.
    worth = tolerance_nm * (min(n_pred, n_gt) + 1) + 1.0
    return _max_weight_matching(i, j, worth - distance, n_rows=n_pred, n_cols=n_gt)


def match_by_distance(pred_points, gt_points, *, tolerance_nm: float) -> DetectionScores:
    """Match predicted to ground-truth points one-to-one within a distance tolerance.

    The matching has the largest possible number of pairs no farther apart than
    ``tolerance_nm`` (inclusive), and among those the smallest total Euclidean distance
    (Hungarian algorithm on the sparse graph of candidate pairs, solved per connected
    component). The time depends on the largest group of points linked by candidate pairs:
    with a tolerance below the typical spacing of the points the groups are small and
    10^5 points take about a second; a tolerance beyond it links most points into one group,
    which the exact solver takes tens of seconds over.

    Parameters
    ----------
    pred_points : (N, 3) float
        Predicted positions in nm (z, y, x).
    gt_points : (M, 3) float
        Ground-truth positions in nm (z, y, x).
    tolerance_nm : float
        Largest matching distance in nm, inclusive.

    Returns
    -------
    DetectionScores
        ``matches`` holds ``(pred_index, gt_index)`` pairs.
    """
    pred = _as_points(pred_points, "pred_points")
    gt = _as_points(gt_points, "gt_points")
    tolerance_nm = _check_tolerance(tolerance_nm)
    i, j, distance = _pairs_within(pred, gt, tolerance_nm)
    mi, mj = _match_points(
        i, j, distance, n_pred=len(pred), n_gt=len(gt), tolerance_nm=tolerance_nm
    )
    scores = DetectionScores.from_counts(
        mi.size, len(pred) - mi.size, len(gt) - mi.size, matches=zip(mi.tolist(), mj.tolist())
    )
    logger.debug(
        "distance matching of %d predicted and %d ground-truth points within %g nm: "
        "tp=%d fp=%d fn=%d",
        len(pred), len(gt), tolerance_nm, scores.tp, scores.fp, scores.fn,
    )
    return scores


@dataclass(frozen=True)
class CleftScores:
    """CREMI-style scores of a cleft mask.

    Attributes
    ----------
    fscore, precision, recall : float
        Voxel scores at ``tolerance_nm``; see :func:`cremi_cleft_scores`.
    adgt : float
        Mean distance (nm) of ground-truth cleft voxels to the nearest predicted cleft voxel.
    adf : float
        Mean distance (nm) of predicted cleft voxels to the nearest ground-truth cleft voxel.
    tolerance_nm : float
        Distance up to which (inclusive) a voxel is not an error.
    """

    fscore: float
    precision: float
    recall: float
    adgt: float
    adf: float
    tolerance_nm: float

    @property
    def cremi_score(self) -> float:
        """The CREMI cleft ranking score, the mean of ADGT and ADF (nm; lower is better)."""
        return (self.adgt + self.adf) / 2

    def to_dict(self) -> dict:
        return asdict(self)


def _distance_to(mask: np.ndarray, voxel_size) -> np.ndarray | None:
    """(Z, Y, X) float64 distance (nm) to the nearest voxel of ``mask``; None if it is empty."""
    if not mask.any():
        # The transform of a volume with no target voxel is not an infinite distance but
        # garbage, so the empty case is answered by the caller.
        return None
    return ndimage.distance_transform_edt(~mask, sampling=voxel_size)


def _far_fraction_and_mean(source: np.ndarray, distance: np.ndarray | None, tolerance_nm: float):
    """Fraction of ``source`` voxels farther than the tolerance, and their mean distance."""
    n = int(np.count_nonzero(source))
    if n == 0:
        return 0.0, float("nan")
    if distance is None:
        return 1.0, float("inf")
    d = distance[source]
    return np.count_nonzero(d > tolerance_nm) / n, float(d.mean())


def cremi_cleft_scores(
    pred_mask, gt_mask, *, voxel_size, tolerance_nm: float = 200.0, ignore=None
) -> CleftScores:
    """Score a synaptic cleft mask the way the CREMI challenge does.

    Distances are Euclidean in nm (distance transforms with the physical voxel size). A
    predicted voxel farther than ``tolerance_nm`` from every ground-truth cleft voxel is a
    false positive, a ground-truth voxel farther than ``tolerance_nm`` from every predicted
    voxel a false negative; a voxel exactly at the tolerance is not an error.

    * ``precision = 1 - FP / |pred|``, ``recall = 1 - FN / |gt|``, ``fscore`` their harmonic
      mean (0.0 when both are 0);
    * ``adgt`` = mean over ground-truth voxels of the distance to the prediction,
      ``adf`` = mean over predicted voxels of the distance to the ground truth
      (the CREMI ranking score is their mean, :attr:`CleftScores.cremi_score`).

    Empty cases follow the module conventions: with no predicted voxel precision is 1.0 and
    ``adf`` is nan (a mean over nothing); with no ground-truth voxel recall is 1.0 and
    ``adgt`` is nan. Predicted voxels facing an empty ground truth are all false positives
    at infinite distance (precision 0.0, ``adf`` inf), and likewise ground truth facing an
    empty prediction (recall 0.0, ``adgt`` inf).

    Parameters
    ----------
    pred_mask, gt_mask : (Z, Y, X) array
        Cleft masks of the same shape; any non-zero value is cleft, so cleft label volumes
        may be passed as they are.
    voxel_size : sequence of 3 float
        Voxel size in nm (z, y, x).
    tolerance_nm : float
        Error threshold in nm (CREMI: 200).
    ignore : (Z, Y, X) bool array, optional
        Voxels that are not scored: they count neither in FP, FN nor in the means. They stay
        cleft for the distances, so a prediction next to a ground-truth cleft that lies in an
        ignored border is not a false positive.

    Returns
    -------
    CleftScores
    """
    pred = np.asarray(pred_mask) != 0
    gt = np.asarray(gt_mask) != 0
    if pred.ndim != 3 or pred.shape != gt.shape:
        raise InputError(
            f"pred_mask {pred.shape} and gt_mask {gt.shape} must be 3-D of the same shape"
        )
    voxel_size = tuple(float(v) for v in voxel_size)
    if len(voxel_size) != 3 or min(voxel_size) <= 0:
        raise InputError(f"voxel_size must be 3 positive nm values (z, y, x), got {voxel_size}")
    tolerance_nm = _check_tolerance(tolerance_nm)
    ignore = _as_ignore(ignore, pred.shape)
    pred_scored = pred if ignore is None else pred & ~ignore
    gt_scored = gt if ignore is None else gt & ~ignore

    to_gt = _distance_to(gt, voxel_size)
    fp_fraction, adf = _far_fraction_and_mean(pred_scored, to_gt, tolerance_nm)
    del to_gt  # one full-volume float64 map at a time
    to_pred = _distance_to(pred, voxel_size)
    fn_fraction, adgt = _far_fraction_and_mean(gt_scored, to_pred, tolerance_nm)
    precision = 1.0 - fp_fraction
    recall = 1.0 - fn_fraction
    fscore = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    scores = CleftScores(float(fscore), float(precision), float(recall), adgt, adf, tolerance_nm)
    logger.debug("CREMI cleft scores: %s", scores)
    return scores


@dataclass(frozen=True)
class ConnectionScores:
    """Binary-connectome scores: which directed cell pairs are connected.

    Attributes
    ----------
    tp, fp, fn : int
        Connections in both, only in the prediction, only in the ground truth.
    precision, recall, f1 : float
        See the module conventions for the empty cases.
    min_synapses : int
        Synapses a pair needed to count as connected.
    """

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    min_synapses: int

    def to_dict(self) -> dict:
        return asdict(self)


def _synapse_counts(pairs) -> Counter:
    """Synapses per directed (pre, post) cell pair, without autapses and unassigned cells."""
    counts: Counter = Counter()
    items = pairs.items() if isinstance(pairs, Mapping) else ((pair, 1) for pair in pairs)
    for (pre, post), n in items:
        pre, post, n = int(pre), int(post), int(n)
        if n < 0:
            raise InputError(f"negative synapse count {n} for connection ({pre}, {post})")
        # Cell 0 is background (no cell assigned), and a synapse onto its own cell is a
        # partner-assignment failure rather than a connection, so neither is a connection.
        if pre == 0 or post == 0 or pre == post:
            continue
        counts[(pre, post)] += n
    return counts


def connection_scores(
    pred_pairs: Iterable | Mapping, gt_pairs: Iterable | Mapping, *, min_synapses: int = 1
) -> ConnectionScores:
    """Precision and recall of the binary connectome, as in SynEM (Staffler et al. 2017).

    A directed cell pair is connected when it has at least ``min_synapses`` synapses; the
    predicted and ground-truth connection sets are thresholded alike and compared as sets.

    Parameters
    ----------
    pred_pairs, gt_pairs : iterable of (int, int) or mapping (int, int) -> int
        Either one ``(pre_cell, post_cell)`` pair per synapse (a synapse list, e.g. an
        (N, 2) array), or the number of synapses of each pair. Pairs with a cell 0
        (unassigned) or with ``pre == post`` are ignored; repeated pairs add up.
    min_synapses : int
        Threshold for a pair to count as a connection; at least 1.

    Returns
    -------
    ConnectionScores
    """
    if int(min_synapses) != min_synapses or min_synapses < 1:
        raise InputError(f"min_synapses must be a positive integer, got {min_synapses}")
    min_synapses = int(min_synapses)
    pred = {pair for pair, n in _synapse_counts(pred_pairs).items() if n >= min_synapses}
    gt = {pair for pair, n in _synapse_counts(gt_pairs).items() if n >= min_synapses}
    tp, fp, fn = len(pred & gt), len(pred - gt), len(gt - pred)
    return ConnectionScores(
        tp, fp, fn, _precision(tp, fp), _recall(tp, fn), _f1(tp, fp, fn), min_synapses
    )


def _as_partner_synapses(synapses, name: str):
    """(N, 3) float64 points (nm) and (N,) int64 pre and post cells."""
    synapses = list(synapses)
    points = _as_points([s[0] for s in synapses], name)
    pre = np.array([int(s[1]) for s in synapses], dtype=np.int64)
    post = np.array([int(s[2]) for s in synapses], dtype=np.int64)
    return points, pre, post


def synapse_partner_scores(pred, gt, *, tolerance_nm: float) -> DetectionScores:
    """Synapse-level partner scores: right place and right (pre, post) cells.

    A predicted synapse is a true positive when it is matched one-to-one to a ground-truth
    synapse no farther than ``tolerance_nm`` (inclusive) with the same directed
    ``(pre, post)`` pair. Only such pairs are candidates for the matching, which then takes
    the most pairs and, among those, the smallest total distance: at a polyadic site, where
    several ground-truth synapses sit at one place with different partners, each predicted
    synapse is matched to the one with its partners rather than to an arbitrary neighbour.
    A synapse found at the right place with wrong (e.g. reversed) partners is therefore a
    false positive and its ground truth a false negative. Cells are compared as given;
    0 (unassigned) matches only 0.

    Parameters
    ----------
    pred, gt : sequence of (point, pre_cell, post_cell)
        ``point`` is a (3,) position in nm (z, y, x), the cells are integer ids.
    tolerance_nm : float
        Largest matching distance in nm, inclusive.

    Returns
    -------
    DetectionScores
        ``matches`` holds ``(pred_index, gt_index)`` pairs.
    """
    tolerance_nm = _check_tolerance(tolerance_nm)
    pred_points, pred_pre, pred_post = _as_partner_synapses(pred, "pred")
    gt_points, gt_pre, gt_post = _as_partner_synapses(gt, "gt")
    i, j, distance = _pairs_within(pred_points, gt_points, tolerance_nm)
    same = (pred_pre[i] == gt_pre[j]) & (pred_post[i] == gt_post[j])
    n_pred, n_gt = len(pred_points), len(gt_points)
    mi, mj = _match_points(
        i[same], j[same], distance[same], n_pred=n_pred, n_gt=n_gt, tolerance_nm=tolerance_nm
    )
    return DetectionScores.from_counts(
        mi.size, n_pred - mi.size, n_gt - mi.size, matches=zip(mi.tolist(), mj.tolist())
    )
