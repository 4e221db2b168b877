import json
import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from detection import metrics
from detection.metrics import (
    DetectionScores,
    connection_scores,
    cremi_cleft_scores,
    match_by_distance,
    match_by_overlap,
    synapse_partner_scores,
)


def _box(volume, label, z, y, x):
    volume[z[0] : z[1], y[0] : y[1], x[0] : x[1]] = label


# --- match_by_overlap ---------------------------------------------------------------------


def _two_tp_one_fp_one_fn():
    gt = np.zeros((6, 20, 20), dtype=np.int32)
    pred = np.zeros_like(gt)
    _box(gt, 1, (0, 2), (0, 4), (0, 4))
    _box(gt, 2, (0, 2), (10, 14), (10, 14))
    _box(gt, 3, (4, 6), (0, 4), (15, 19))  # never predicted
    _box(pred, 5, (0, 2), (1, 4), (0, 4))
    _box(pred, 6, (1, 2), (10, 14), (10, 14))
    _box(pred, 7, (4, 6), (10, 14), (0, 4))  # no ground truth there
    return pred, gt


def test_overlap_counts_and_ratios():
    pred, gt = _two_tp_one_fp_one_fn()
    scores = match_by_overlap(pred, gt)
    assert (scores.tp, scores.fp, scores.fn) == (2, 1, 1)
    assert scores.precision == pytest.approx(2 / 3)
    assert scores.recall == pytest.approx(2 / 3)
    assert scores.f1 == pytest.approx(2 / 3)
    assert scores.matches == [(5, 1), (6, 2)]


def test_prediction_spanning_two_objects_is_matched_once():
    gt = np.zeros((1, 4, 12), dtype=np.uint16)
    pred = np.zeros_like(gt)
    _box(gt, 1, (0, 1), (0, 4), (0, 4))
    _box(gt, 2, (0, 1), (0, 4), (6, 12))
    _box(pred, 9, (0, 1), (0, 4), (0, 7))  # 16 voxels on object 1, 4 on object 2
    scores = match_by_overlap(pred, gt)
    assert (scores.tp, scores.fp, scores.fn) == (1, 0, 1)
    assert scores.matches == [(9, 1)]


def test_matching_maximises_total_overlap_not_greedy():
    # Prediction 1 overlaps object 10 by 5 and object 20 by 4, prediction 2 overlaps only
    # object 10 (by 3): taking the largest overlap first would leave prediction 2 unmatched.
    gt = np.zeros((1, 1, 12), dtype=np.int64)
    pred = np.zeros_like(gt)
    gt[0, 0, 0:8] = 10
    gt[0, 0, 8:12] = 20
    pred[0, 0, 0:3] = 2
    pred[0, 0, 3:12] = 1
    scores = match_by_overlap(pred, gt)
    assert (scores.tp, scores.fp, scores.fn) == (2, 0, 0)
    assert scores.matches == [(1, 20), (2, 10)]


def test_min_iou_and_min_overlap_exclude_weak_overlaps():
    gt = np.zeros((1, 4, 4), dtype=np.int32)
    pred = np.zeros_like(gt)
    gt[:] = 1  # 16 voxels
    pred[0, 0, :2] = 3  # 2 voxels inside: IoU 2/16
    assert match_by_overlap(pred, gt, min_iou=0.125).tp == 1  # inclusive
    weak = match_by_overlap(pred, gt, min_iou=0.2)
    assert (weak.tp, weak.fp, weak.fn) == (0, 1, 1)
    assert match_by_overlap(pred, gt, min_overlap_voxels=2).tp == 1
    assert match_by_overlap(pred, gt, min_overlap_voxels=3).tp == 0


def test_min_iou_lets_a_weaker_but_valid_pair_win():
    # The larger overlap has the smaller IoU (big ground-truth object); once it is excluded,
    # the prediction goes to the small object it covers well.
    gt = np.zeros((1, 1, 30), dtype=np.int32)
    pred = np.zeros_like(gt)
    gt[0, 0, 0:24] = 1
    gt[0, 0, 24:28] = 2
    pred[0, 0, 18:28] = 7  # 6 voxels of object 1 (IoU 6/28), 4 of object 2 (IoU 4/10)
    assert match_by_overlap(pred, gt).matches == [(7, 1)]
    assert match_by_overlap(pred, gt, min_iou=0.3).matches == [(7, 2)]


def test_ignore_mask():
    gt = np.zeros((1, 10, 10), dtype=np.int32)
    pred = np.zeros_like(gt)
    ignore = np.zeros(gt.shape, dtype=bool)
    ignore[:, :, 7:] = True  # border band x >= 7
    _box(pred, 1, (0, 1), (0, 2), (8, 10))  # unmatched, inside the band: not a FP
    _box(gt, 1, (0, 1), (3, 5), (8, 10))  # unmatched, inside the band: not a FN
    _box(gt, 2, (0, 1), (6, 8), (5, 10))  # unmatched, reaches out of the band: a FN
    _box(pred, 2, (0, 1), (9, 10), (5, 8))  # unmatched, reaches out of the band: a FP
    scores = match_by_overlap(pred, gt, ignore=ignore)
    assert (scores.tp, scores.fp, scores.fn) == (0, 1, 1)
    unmasked = match_by_overlap(pred, gt)
    assert (unmasked.tp, unmasked.fp, unmasked.fn) == (0, 2, 2)


def test_ignore_mask_matched_pairs():
    gt = np.zeros((1, 6, 10), dtype=np.int32)
    pred = np.zeros_like(gt)
    ignore = np.zeros(gt.shape, dtype=bool)
    ignore[:, :, 6:] = True
    _box(gt, 1, (0, 1), (0, 2), (7, 10))  # both entirely ignored: not scored at all
    _box(pred, 1, (0, 1), (0, 2), (7, 10))
    _box(gt, 2, (0, 1), (3, 5), (4, 10))  # reaches out; found by a prediction in the band
    _box(pred, 2, (0, 1), (3, 5), (7, 10))
    scores = match_by_overlap(pred, gt, ignore=ignore)
    assert (scores.tp, scores.fp, scores.fn) == (1, 0, 0)
    assert scores.matches == [(2, 2)]


def test_large_uint64_labels_survive():
    big = 2**64 - 3
    gt = np.zeros((2, 2, 2), dtype=np.uint64)
    pred = np.zeros_like(gt)
    gt[0] = big
    pred[0] = np.uint64(big - 1)
    assert match_by_overlap(pred, gt).matches == [(big - 1, big)]


def test_overlap_empty_volumes_and_bad_input():
    empty = np.zeros((2, 3, 4), dtype=np.int32)
    scores = match_by_overlap(empty, empty)
    assert (scores.tp, scores.fp, scores.fn) == (0, 0, 0)
    assert (scores.precision, scores.recall, scores.f1) == (1.0, 1.0, 1.0)
    gt = empty.copy()
    gt[0, 0, 0] = 4
    missed = match_by_overlap(empty, gt)
    assert (missed.precision, missed.recall, missed.f1) == (1.0, 0.0, 0.0)
    with pytest.raises(TypeError):
        match_by_overlap(empty.astype(bool), gt)
    with pytest.raises(ValueError):
        match_by_overlap(empty, gt[:1])
    with pytest.raises(ValueError):
        match_by_overlap(empty, gt, ignore=np.zeros((2, 3, 3), dtype=bool))


def _random_overlap_problem(seed):
    rng = np.random.default_rng(seed)
    coarse_gt = rng.integers(0, 12, size=(3, 4, 4))
    coarse_pred = rng.integers(0, 12, size=(5, 6, 6))
    gt = np.kron(coarse_gt, np.ones((3, 3, 3), dtype=np.int64))[:9, :11, :11]
    pred = np.kron(coarse_pred, np.ones((2, 2, 2), dtype=np.int64))[:9, :11, :11]
    return pred, gt


def _brute_force_overlap(pred, gt):
    pred_ids = [i for i in np.unique(pred) if i]
    gt_ids = [i for i in np.unique(gt) if i]
    weights = np.array([[np.sum((pred == p) & (gt == g)) for g in gt_ids] for p in pred_ids])
    rows, cols = linear_sum_assignment(weights, maximize=True)
    keep = weights[rows, cols] > 0
    return int(keep.sum()), int(weights[rows, cols].sum()), len(pred_ids), len(gt_ids)


def _total_overlap(pred, gt, matches):
    return sum(int(np.sum((pred == p) & (gt == g))) for p, g in matches)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overlap_matching_agrees_with_dense_brute_force(seed, monkeypatch):
    pred, gt = _random_overlap_problem(seed)
    tp, total, n_pred, n_gt = _brute_force_overlap(pred, gt)
    scores = match_by_overlap(pred, gt)
    assert _total_overlap(pred, gt, scores.matches) == total
    assert (scores.tp, scores.fp, scores.fn) == (tp, n_pred - tp, n_gt - tp)
    # The sparse solver used for very large components must find the same optimum.
    monkeypatch.setattr(metrics, "DENSE_COMPONENT_LIMIT", 0)
    sparse_scores = match_by_overlap(pred, gt)
    assert _total_overlap(pred, gt, sparse_scores.matches) == total
    assert sparse_scores.tp == tp


# --- match_by_distance --------------------------------------------------------------------


def test_distance_tolerance_is_inclusive():
    gt = np.array([[0.0, 0.0, 0.0]])
    assert match_by_distance([[0.0, 0.0, 100.0]], gt, tolerance_nm=100.0).tp == 1
    assert match_by_distance([[0.0, 30.0, 40.0]], gt, tolerance_nm=50.0).tp == 1
    outside = match_by_distance([[0.0, 0.0, 100.0]], gt, tolerance_nm=99.999)
    assert (outside.tp, outside.fp, outside.fn) == (0, 1, 1)
    assert match_by_distance(gt, gt, tolerance_nm=0.0).tp == 1


def test_two_predictions_near_one_ground_truth_match_once():
    gt = [[1000.0, 1000.0, 1000.0]]
    pred = [[1000.0, 1000.0, 1020.0], [1000.0, 1010.0, 1000.0]]
    scores = match_by_distance(pred, gt, tolerance_nm=50.0)
    assert (scores.tp, scores.fp, scores.fn) == (1, 1, 0)
    assert scores.matches == [(1, 0)]  # the closer one
    assert scores.precision == 0.5 and scores.recall == 1.0


def test_distance_matching_prefers_more_pairs_over_closer_pairs():
    # On a line: the closest pair (p0-g1, 40 nm) would leave both others unmatched.
    gt = [[0.0, 0.0, 0.0], [100.0, 0.0, 0.0]]
    pred = [[60.0, 0.0, 0.0], [150.0, 0.0, 0.0]]
    scores = match_by_distance(pred, gt, tolerance_nm=60.0)
    assert scores.tp == 2
    assert scores.matches == [(0, 0), (1, 1)]


def _brute_force_distance(pred, gt, tolerance):
    d = cdist(pred, gt)
    big = tolerance * (min(d.shape) + 1) + 1.0
    cost = np.where(d <= tolerance, d - big, 0.0)
    rows, cols = linear_sum_assignment(cost)
    ok = d[rows, cols] <= tolerance
    return int(ok.sum()), float(d[rows[ok], cols[ok]].sum())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("dense_limit", [metrics.DENSE_COMPONENT_LIMIT, 0])
def test_distance_matching_agrees_with_dense_brute_force(seed, dense_limit, monkeypatch):
    monkeypatch.setattr(metrics, "DENSE_COMPONENT_LIMIT", dense_limit)
    rng = np.random.default_rng(seed)
    pred = rng.uniform(0, 1000, size=(60, 3))
    gt = rng.uniform(0, 1000, size=(50, 3))
    tp, total = _brute_force_distance(pred, gt, 200.0)
    scores = match_by_distance(pred, gt, tolerance_nm=200.0)
    assert scores.tp == tp
    assert (scores.fp, scores.fn) == (60 - tp, 50 - tp)
    assert len({p for p, _ in scores.matches}) == len({g for _, g in scores.matches}) == tp
    matched = sum(np.linalg.norm(pred[p] - gt[g]) for p, g in scores.matches)
    assert matched == pytest.approx(total)


def test_many_points_known_answer():
    # Ground truth on a 1 um grid; 90 % of the predictions jittered by < 87 nm, the rest
    # displaced by 500 nm, farther than the tolerance from every grid point.
    rng = np.random.default_rng(7)
    axis = np.arange(47) * 1000.0
    gt = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    n = len(gt)
    pred = gt + rng.uniform(-50, 50, size=gt.shape)
    far = rng.random(n) < 0.1
    pred[far] = gt[far] + [0.0, 500.0, 0.0]
    order = rng.permutation(n)
    scores = match_by_distance(pred[order], gt, tolerance_nm=100.0)
    n_far = int(far.sum())
    assert (scores.tp, scores.fp, scores.fn) == (n - n_far, n_far, n_far)
    matches = np.array(scores.matches)
    np.testing.assert_array_equal(order[matches[:, 0]], matches[:, 1])


def test_many_random_points_run():
    # 10^5 uniform points at a density where candidate components are non-trivial.
    rng = np.random.default_rng(3)
    pred = rng.uniform(0, 46_000, size=(100_000, 3))
    gt = rng.uniform(0, 46_000, size=(100_000, 3))
    scores = match_by_distance(pred, gt, tolerance_nm=500.0)
    assert scores.tp + scores.fp == 100_000 and scores.tp + scores.fn == 100_000
    assert 0 < scores.tp < 100_000


def test_distance_empty_and_bad_input():
    none = match_by_distance(np.zeros((0, 3)), np.zeros((0, 3)), tolerance_nm=10)
    assert (none.tp, none.fp, none.fn, none.precision, none.recall, none.f1) == (0, 0, 0, 1, 1, 1)
    spurious = match_by_distance([[0, 0, 0]], [], tolerance_nm=10)
    assert (spurious.fp, spurious.precision, spurious.recall, spurious.f1) == (1, 0.0, 1.0, 0.0)
    with pytest.raises(ValueError):
        match_by_distance([[0, 0]], [[0, 0]], tolerance_nm=10)
    with pytest.raises(ValueError):
        match_by_distance([[0, 0, 0]], [[0, 0, 0]], tolerance_nm=-1)


# --- DetectionScores ----------------------------------------------------------------------


def test_combine_pools_counts():
    a = DetectionScores.from_counts(2, 1, 1, matches=[(0, 0), (1, 1)])
    b = DetectionScores.from_counts(0, 0, 3)
    c = DetectionScores.from_counts(0, 0, 0)
    pooled = DetectionScores.combine([a, b, c])
    assert (pooled.tp, pooled.fp, pooled.fn) == (2, 1, 4)
    assert pooled.precision == pytest.approx(2 / 3)
    assert pooled.recall == pytest.approx(2 / 6)
    assert pooled.f1 == pytest.approx(4 / 9)
    assert pooled.matches == []
    # Not the mean of the per-volume recalls (2/3, 0, 1).
    assert pooled.recall != pytest.approx((a.recall + b.recall + c.recall) / 3)
    assert DetectionScores.combine([]) == c


def test_to_dict_is_json_ready():
    scores = match_by_overlap(*_two_tp_one_fp_one_fn())
    d = json.loads(json.dumps(scores.to_dict()))
    assert d["tp"] == 2 and d["fp"] == 1 and d["fn"] == 1
    assert d["precision"] == pytest.approx(2 / 3)
    assert d["matches"] == [[5, 1], [6, 2]]


# --- cremi_cleft_scores -------------------------------------------------------------------


def _plane(shape, z):
    mask = np.zeros(shape, dtype=bool)
    mask[z] = True
    return mask


@pytest.mark.parametrize("k", [1, 3])
def test_cremi_shifted_plane(k):
    shape = (12, 8, 8)
    gt = _plane(shape, 4)
    pred = _plane(shape, 4 + k)
    voxel_size = (50.0, 4.0, 4.0)
    shift = 50.0 * k
    below = cremi_cleft_scores(pred, gt, voxel_size=voxel_size, tolerance_nm=shift - 1)
    assert below.adgt == pytest.approx(shift) and below.adf == pytest.approx(shift)
    assert (below.precision, below.recall, below.fscore) == (0.0, 0.0, 0.0)
    assert below.cremi_score == pytest.approx(shift)
    at = cremi_cleft_scores(pred, gt, voxel_size=voxel_size, tolerance_nm=shift)
    assert (at.precision, at.recall, at.fscore) == (1.0, 1.0, 1.0)
    above = cremi_cleft_scores(pred, gt, voxel_size=voxel_size, tolerance_nm=shift + 1)
    assert above.fscore == 1.0 and above.tolerance_nm == shift + 1


def test_cremi_partial_prediction():
    # Prediction covers x < 5 of the ground-truth plane; the uncovered voxels are 4, 8, 12,
    # 16 and 20 nm away in x.
    gt = _plane((3, 4, 10), 1)
    pred = np.zeros_like(gt)
    pred[1, :, :5] = True
    scores = cremi_cleft_scores(pred, gt, voxel_size=(50, 4, 4), tolerance_nm=10)
    assert scores.precision == 1.0
    assert scores.recall == pytest.approx(0.7)
    assert scores.fscore == pytest.approx(2 * 0.7 / 1.7)
    assert scores.adgt == pytest.approx(6.0)
    assert scores.adf == 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_cremi_agrees_with_brute_force_distances(seed):
    rng = np.random.default_rng(seed)
    voxel_size = np.array([40.0, 4.0, 8.0])
    pred = rng.random((6, 9, 7)) < 0.05
    gt = rng.random((6, 9, 7)) < 0.05
    p = np.argwhere(pred) * voxel_size
    g = np.argwhere(gt) * voxel_size
    d = cdist(p, g)
    scores = cremi_cleft_scores(pred, gt, voxel_size=voxel_size, tolerance_nm=30.0)
    assert scores.adf == pytest.approx(d.min(axis=1).mean())
    assert scores.adgt == pytest.approx(d.min(axis=0).mean())
    assert scores.precision == pytest.approx(1 - np.mean(d.min(axis=1) > 30.0))
    assert scores.recall == pytest.approx(1 - np.mean(d.min(axis=0) > 30.0))


def test_cremi_empty_cases():
    empty = np.zeros((3, 4, 4), dtype=bool)
    some = _plane((3, 4, 4), 1)
    both = cremi_cleft_scores(empty, empty, voxel_size=(40, 4, 4))
    assert (both.precision, both.recall, both.fscore) == (1.0, 1.0, 1.0)
    assert math.isnan(both.adgt) and math.isnan(both.adf)
    missed = cremi_cleft_scores(empty, some, voxel_size=(40, 4, 4))
    assert (missed.precision, missed.recall, missed.fscore) == (1.0, 0.0, 0.0)
    assert missed.adgt == math.inf and math.isnan(missed.adf)
    spurious = cremi_cleft_scores(some, empty, voxel_size=(40, 4, 4))
    assert (spurious.precision, spurious.recall, spurious.fscore) == (0.0, 1.0, 0.0)
    assert spurious.adf == math.inf and math.isnan(spurious.adgt)


def test_cremi_ignore_and_labels():
    shape = (12, 4, 4)
    gt = _plane(shape, 2).astype(np.uint64) * 7  # cleft labels, not a boolean mask
    pred = _plane(shape, 2) | _plane(shape, 10)  # second plane 400 nm from any cleft
    plain = cremi_cleft_scores(pred, gt, voxel_size=(50, 4, 4))
    assert plain.precision == 0.5 and plain.recall == 1.0
    assert plain.adf == pytest.approx(200.0)
    ignore = np.zeros(shape, dtype=bool)
    ignore[8:] = True
    masked = cremi_cleft_scores(pred, gt, voxel_size=(50, 4, 4), ignore=ignore)
    assert (masked.precision, masked.recall, masked.adf) == (1.0, 1.0, 0.0)
    # Ground truth inside ignore is not scored but still vouches for nearby predictions.
    ignore_gt = np.zeros(shape, dtype=bool)
    ignore_gt[:4] = True
    near = cremi_cleft_scores(_plane(shape, 5), gt, voxel_size=(50, 4, 4), ignore=ignore_gt)
    assert near.precision == 1.0 and near.adf == pytest.approx(150.0)
    assert near.recall == 1.0 and math.isnan(near.adgt)


# --- connection_scores --------------------------------------------------------------------

GT_SYNAPSES = [(1, 2)] * 3 + [(2, 3)] * 2 + [(3, 4)] + [(5, 5), (0, 3), (3, 0)] * 4
PRED_SYNAPSES = [(1, 2)] + [(2, 3)] * 2 + [(3, 4)] * 3 + [(4, 5)] + [(5, 5)] * 9


@pytest.mark.parametrize(
    "min_synapses, counts",
    [(1, (3, 1, 0)), (2, (1, 1, 1)), (3, (0, 1, 1)), (4, (0, 0, 0))],
)
def test_connection_scores_thresholds(min_synapses, counts):
    scores = connection_scores(PRED_SYNAPSES, GT_SYNAPSES, min_synapses=min_synapses)
    assert (scores.tp, scores.fp, scores.fn) == counts
    assert scores.min_synapses == min_synapses


def test_connection_scores_ratios_and_mapping_input():
    from collections import Counter

    s2 = connection_scores(Counter(PRED_SYNAPSES), dict(Counter(GT_SYNAPSES)), min_synapses=2)
    assert (s2.tp, s2.fp, s2.fn) == (1, 1, 1)
    assert (s2.precision, s2.recall, s2.f1) == (0.5, 0.5, 0.5)
    s1 = connection_scores(np.array(PRED_SYNAPSES), GT_SYNAPSES)
    assert (s1.precision, s1.recall) == (0.75, 1.0)
    assert s1.f1 == pytest.approx(6 / 7)
    s3 = connection_scores(PRED_SYNAPSES, GT_SYNAPSES, min_synapses=3)
    assert (s3.precision, s3.recall, s3.f1) == (0.0, 0.0, 0.0)
    s4 = connection_scores(PRED_SYNAPSES, GT_SYNAPSES, min_synapses=4)
    assert (s4.precision, s4.recall, s4.f1) == (1.0, 1.0, 1.0)


def test_connections_are_directed():
    scores = connection_scores([(2, 1)], [(1, 2)])
    assert (scores.tp, scores.fp, scores.fn) == (0, 1, 1)
    with pytest.raises(ValueError):
        connection_scores([(1, 2)], [(1, 2)], min_synapses=0)


# --- synapse_partner_scores ---------------------------------------------------------------


def test_partner_scores_wrong_direction_is_fp_and_fn():
    gt = [((0, 0, 0), 1, 2), ((0, 0, 1000), 3, 4)]
    pred = [((0, 0, 10), 2, 1), ((0, 0, 1010), 3, 4)]
    scores = synapse_partner_scores(pred, gt, tolerance_nm=100)
    assert (scores.tp, scores.fp, scores.fn) == (1, 1, 1)
    assert scores.matches == [(1, 1)]
    located = match_by_distance([p for p, _, _ in pred], [p for p, _, _ in gt], tolerance_nm=100)
    assert located.tp == 2


def test_partner_scores_polyadic_site():
    # Two ground-truth synapses at one place share the presynaptic cell; the predictions
    # list the same partners in the other order and must still both be found.
    site = np.array([400.0, 800.0, 800.0])
    gt = [(site, 1, 2), (site, 1, 3)]
    pred = [(site + [0, 8, 0], 1, 3), (site + [0, 0, 8], 1, 2)]
    scores = synapse_partner_scores(pred, gt, tolerance_nm=50)
    assert (scores.tp, scores.fp, scores.fn) == (2, 0, 0)
    assert scores.matches == [(0, 1), (1, 0)]
    far = synapse_partner_scores(pred, gt, tolerance_nm=7.9)
    assert (far.tp, far.fp, far.fn) == (0, 2, 2)


def test_partner_scores_empty():
    scores = synapse_partner_scores([], [((0, 0, 0), 1, 2)], tolerance_nm=10)
    assert (scores.tp, scores.fp, scores.fn, scores.precision, scores.recall) == (0, 0, 1, 1.0, 0.0)
