"""Scores of cell segmentations: known answers on hand-made volumes, scikit-image's figures on
random labels, the Cardona id collisions, skeleton counts, reports with and without truth."""

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import adapted_rand_error as skimage_rand
from skimage.metrics import variation_of_information as skimage_voi

from detection.cells import evaluation
from detection.cells.evaluation import (
    adapted_rand_error,
    connected_ground_truth,
    contingency_table,
    ground_truth_skeletons,
    likely_errors,
    locate_errors,
    overlap_report,
    skeleton_errors,
    variation_of_information,
)
from detection.errors import InputError
from tests.conftest import shared_file


def two_bodies(dtype=np.uint32):
    """Bodies 1 (x < 4) and 2 (x >= 4) of 2 x 2 x 4 voxels each."""
    gt = np.ones((2, 2, 8), dtype=dtype)
    gt[..., 4:] = 2
    return gt


# --------------------------------------------------------------------------------------------
# VOI and adapted Rand error by hand


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.uint64])
def test_splitting_one_of_two_equal_bodies_in_half_costs_half_a_bit(dtype):
    gt = two_bodies(dtype)
    seg = gt.copy()
    seg[..., 2:4] = 3  # body 1 in two equal halves
    voi = variation_of_information(seg, gt)
    assert voi.split == pytest.approx(0.5, abs=1e-12)
    assert voi.merge == pytest.approx(0.0, abs=1e-12)
    assert voi.total == pytest.approx(0.5, abs=1e-12)
    assert voi.voxels == 32
    # Ordered voxel pairs, self pairs included: sum n_ij^2 = 64 + 64 + 256 = 384,
    # sum t_i^2 = 2 * 256 = 512, sum s_j^2 = 384: precision 1, recall 3/4, error 1/7.
    rand = adapted_rand_error(seg, gt)
    assert rand.precision == pytest.approx(1.0)
    assert rand.recall == pytest.approx(0.75)
    assert rand.error == pytest.approx(1 / 7)


def test_merging_two_bodies_costs_their_entropy():
    gt = two_bodies()
    voi = variation_of_information(np.full_like(gt, 9), gt)
    assert (voi.split, voi.merge) == (pytest.approx(0.0), pytest.approx(1.0))
    rand = adapted_rand_error(np.full_like(gt, 9), gt)
    assert (rand.precision, rand.recall, rand.error) == (
        pytest.approx(0.5), pytest.approx(1.0), pytest.approx(1 / 3))
    # Bodies of 24 and 8 voxels merged: H(3/4, 1/4).
    gt[..., 2:4] = 2
    gt[..., 4:] = 1
    gt[:, :, 2:4] = 2
    merged = variation_of_information(np.full_like(gt, 9), gt)
    assert merged.merge == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))


def test_ground_truth_zero_and_ignored_voxels_are_not_scored_but_seg_zero_is_a_label():
    gt = two_bodies()
    seg = gt.copy()
    # Half of body 2 is ignored, and so is a wrong label there: still perfect.
    ignore = np.zeros(gt.shape, dtype=bool)
    ignore[..., 6:] = True
    seg[..., 6:] = 5
    gt[0, 0, 0] = 0
    seg[0, 0, 0] = 7  # ground truth 0: not scored
    voi = variation_of_information(seg, gt, ignore=ignore)
    assert (voi.split, voi.merge, voi.voxels) == (0.0, 0.0, 23)
    assert adapted_rand_error(seg, gt, ignore=ignore.astype(np.uint8)).error == 0.0
    # Label 0 of the segmentation is a segment like any other: half of body 1 unlabelled
    # is a split of body 1 (as labelling it 3 would be).
    seg = gt.copy()
    seg[..., :2] = 0
    gt[0, 0, 0] = 1
    zero = variation_of_information(seg, gt)
    seg[..., :2] = 3
    assert zero == variation_of_information(seg, gt)
    assert zero.split == pytest.approx(0.5)


def test_nothing_scored_is_perfect_and_says_so():
    gt = np.zeros((2, 3, 4), np.uint8)
    assert variation_of_information(gt + 1, gt).to_dict() == {
        "split": 0.0, "merge": 0.0, "total": 0.0, "voxels": 0}
    rand = adapted_rand_error(gt + 1, gt)
    assert (rand.error, rand.precision, rand.recall, rand.voxels) == (0.0, 1.0, 1.0, 0)


# --------------------------------------------------------------------------------------------
# Against scikit-image


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_labels_agree_with_scikit_image(seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 7, size=(9, 13, 11)).astype(np.uint16)
    seg = rng.integers(0, 5, size=gt.shape).astype(np.uint16)
    ignore = rng.random(gt.shape) < 0.1
    voi = variation_of_information(seg, gt, ignore=ignore)
    # scikit-image has no mask: ignored voxels become ground truth 0, which it leaves out
    # with ignore_labels=[0]. Its first output, H(image1 | image0), is the split.
    masked = np.where(ignore, 0, gt)
    split, merge = skimage_voi(masked, seg, ignore_labels=[0])
    assert voi.split == pytest.approx(split, rel=1e-12)
    assert voi.merge == pytest.approx(merge, rel=1e-12)

    # scikit-image counts pairs of two different voxels (sum n^2 - n), and its `prec`
    # divides by the pairs of the *true* image: a recall in SNEMI3D's and CREMI's sense.
    rand = adapted_rand_error(seg, gt, ignore=ignore)
    _, sk_prec, sk_rec = skimage_rand(masked, seg, ignore_labels=(0,))
    scored = masked != 0
    n = int(scored.sum())
    in_truth = float((np.unique(masked[scored], return_counts=True)[1].astype(float) ** 2).sum())
    in_seg = float((np.unique(seg[scored], return_counts=True)[1].astype(float) ** 2).sum())
    both = sk_prec * (in_truth - n) + n
    assert rand.recall == pytest.approx(both / in_truth, rel=1e-12)
    assert rand.precision == pytest.approx(both / in_seg, rel=1e-12)
    assert sk_rec * (in_seg - n) + n == pytest.approx(both, rel=1e-12)
    assert rand.voxels == voi.voxels == n


def test_large_ids_and_small_slabs_give_the_same_table(monkeypatch):
    rng = np.random.default_rng(5)
    gt = rng.integers(0, 6, size=(8, 7, 9)).astype(np.uint64)
    seg = rng.integers(0, 6, size=gt.shape).astype(np.uint64)
    expected = contingency_table(seg, gt)
    # Ids beyond 32 bits take the other path; slabs of one plane are merged.
    big = seg + np.uint64(2**63)
    monkeypatch.setattr(evaluation, "SLAB_VOXELS", 1)
    table = contingency_table(big, gt)
    assert np.array_equal(table.seg, expected.seg + np.uint64(2**63))
    assert np.array_equal(table.gt, expected.gt)
    assert np.array_equal(table.count, expected.count)
    # The table is sparse: only pairs that share voxels, each once.
    pairs = {(int(s), int(g)) for s, g in zip(seg[gt != 0], gt[gt != 0])}
    assert len(table.count) == len(pairs) and table.voxels == int((gt != 0).sum())
    monkeypatch.undo()
    assert variation_of_information(big, gt) == variation_of_information(seg, gt)


def test_bad_volumes_are_named():
    gt = two_bodies()
    with pytest.raises(InputError, match=r"ground truth: shape \(2, 2, 7\) differs"):
        variation_of_information(gt, gt[..., :7])
    with pytest.raises(InputError, match="segmentation: labels must be integers, got float32"):
        adapted_rand_error(gt.astype(np.float32), gt)
    seg = gt.astype(np.int16)
    seg[1, 0, 3] = -3
    with pytest.raises(InputError, match="segmentation: negative label -3 in plane z=1"):
        variation_of_information(seg, gt)
    with pytest.raises(InputError, match="ignore: the mask must be boolean or integer"):
        variation_of_information(gt, gt, ignore=np.zeros(gt.shape, np.float64))
    with pytest.raises(InputError, match="expected a 3-D"):
        variation_of_information(gt[0], gt[0])


# --------------------------------------------------------------------------------------------
# Ground truth with colliding ids (Cardona)


def test_colliding_ids_become_separate_bodies():
    # Two neurites far apart that share id 7, a neurite 3 with a gap in it, a neurite 5.
    gt = np.zeros((3, 4, 8), dtype=np.uint8)
    gt[0, 0, 0:3] = 7
    gt[2, 3, 4:8] = 7
    gt[1, 1, :] = 3
    gt[1, 1, 4] = 0
    gt[0, 3, 5:7] = 5
    gt[1, 2, 7] = 5  # touches gt[1, 1, 7] (id 3) by a face but is another id
    pieces = connected_ground_truth(gt)
    expected = np.zeros_like(pieces)
    expected[0, 0, 0:3] = 1
    expected[0, 3, 5:7] = 2
    expected[1, 1, 0:4] = 3
    expected[1, 1, 5:8] = 4
    expected[1, 2, 7] = 5
    expected[2, 3, 4:8] = 6
    assert pieces.dtype == np.uint32
    assert np.array_equal(pieces, expected)

    # A segmentation that keeps the two 7s apart (and the 3s, and both 5s together)
    # is charged for splits against the raw ids, not against the pieces.
    seg = expected.astype(np.uint64) * 10
    seg[1, 2, 7] = 20
    assert variation_of_information(seg, gt).split > 0.3
    voi = variation_of_information(seg, pieces)
    assert voi.split == 0.0
    # ... but it merges the two pieces of 5 (which do not touch: a merge against pieces).
    assert voi.merge > 0


def test_diagonal_neighbours_join_with_18_and_26_connectivity():
    gt = np.zeros((2, 3, 3), dtype=np.uint16)
    gt[0, 0, 0] = gt[0, 1, 1] = 4  # an edge apart
    gt[1, 2, 2] = 4  # a corner away from (0, 1, 1)
    assert connected_ground_truth(gt).max() == 3
    assert connected_ground_truth(gt, connectivity=18).max() == 2
    assert np.unique(connected_ground_truth(gt, connectivity=26)[gt != 0]).tolist() == [1]
    with pytest.raises(InputError, match="connectivity must be 6, 18 or 26"):
        connected_ground_truth(gt, connectivity=8)


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_connected_pieces_match_labelling_each_id(connectivity, monkeypatch):
    monkeypatch.setattr(evaluation, "SLAB_VOXELS", 40)  # slabs of one plane
    rng = np.random.default_rng(connectivity)
    gt = rng.integers(0, 4, size=(6, 7, 8)).astype(np.uint64)
    pieces = connected_ground_truth(gt, connectivity=connectivity)
    structure = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    expected = np.zeros(gt.shape, dtype=np.int64)
    for label in range(1, 4):
        found, _ = ndimage.label(gt == label, structure=structure)
        expected[found > 0] = found[found > 0] + expected.max()
    # The same partition: one piece per expected piece and the other way round.
    pairs = np.unique(np.stack([pieces[gt > 0], expected[gt > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    # Numbered in the order of their first voxel.
    firsts = [np.flatnonzero(pieces.ravel() == k)[0] for k in range(1, pieces.max() + 1)]
    assert firsts == sorted(firsts)


def test_cardona_neurite_ids_collide_and_their_pieces_do_not():
    import h5py

    with h5py.File(shared_file("cardona_l1vnc_train.h5"), "r") as f:
        gt = f["volumes/labels/neuron_ids"][:]
    pieces = connected_ground_truth(gt)
    ids = np.unique(gt[gt > 0])
    assert pieces.max() > len(ids)
    # Every piece lies in one id, and is one connected piece of it.
    pairs = np.unique(np.stack([pieces[gt > 0].astype(np.uint64), gt[gt > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1] == pieces.max()
    for label in ids[:: max(1, len(ids) // 12)]:
        _, n = ndimage.label(gt == label)
        assert len(np.unique(pieces[gt == label])) == n
    # The raw ids charge the pieces (a perfect segmentation of the neurites) with merges.
    voi = variation_of_information(pieces, gt)
    assert voi.merge == 0.0 and voi.split > 0.0


# --------------------------------------------------------------------------------------------
# Skeletons


def three_cells():
    """Three rods along x in a 12 x 12 x 40 volume; the segmentation cuts rod 1 at x = 20
    and merges rods 2 and 3."""
    gt = np.zeros((12, 12, 40), dtype=np.uint32)
    gt[1:4, 1:4, 2:38] = 1
    gt[1:4, 7:10, 2:38] = 2
    gt[7:10, 4:7, 2:38] = 3
    seg = gt.copy()
    seg[(gt == 1) & (np.arange(40) >= 20)] = 4
    seg[gt == 3] = 2
    return gt, seg


def rod(y, z=2, x0=2, x1=38):
    nodes = np.array([[z, y, x] for x in range(x0, x1, 2)])
    return nodes, np.array([[i, i + 1] for i in range(len(nodes) - 1)])


def test_skeleton_splits_and_merges_of_three_cells():
    _, seg = three_cells()
    skeletons = [rod(2), rod(8), rod(5, z=8)]
    errors = skeleton_errors(seg, skeletons)
    assert (errors.splits, errors.merges) == (1, 1)
    assert errors.per_skeleton[0].splits == 1
    assert errors.per_skeleton[0].segments == [1, 4]
    assert errors.per_skeleton[1].merged_with == [2]
    assert errors.per_skeleton[2].merged_with == [1]
    assert errors.per_skeleton[0].merged_with == []
    assert errors.merging_cells == {2: [1, 2]}
    # Unlabelled voxels (x 19..23: nodes at x 20 and 22) break no edge: rod 1 still counts
    # one split (1 -> 0 -> 0 -> 4), rods 2 and 3 none (2 -> 0 -> 0 -> 2); nor does a
    # skeleton that runs into background at its end (x >= 34).
    seg[:, :, 19:24] = 0
    seg[:, :, 34:] = 0
    errors = skeleton_errors(seg, {"a": rod(2), "b": rod(8), "c": rod(5, z=8)})
    assert (errors.splits, errors.merges) == (1, 1)
    assert errors.per_skeleton["a"].splits == 1
    assert errors.per_skeleton["a"].background_nodes == 4
    assert errors.per_skeleton["b"].splits == errors.per_skeleton["c"].splits == 0
    assert errors.per_skeleton["b"].merged_with == ["c"]


def test_a_background_stretch_between_three_cells_counts_two_splits():
    seg = np.zeros((1, 1, 9), dtype=np.uint8)
    seg[0, 0, :3], seg[0, 0, 6:] = 1, 2
    seg[0, 0, 8] = 3
    # A star: node 4 (background) joined to 3 (background), 1 (cell 1), 7 (cell 2), 8 (cell 3).
    nodes = np.array([[0, 0, x] for x in range(9)])
    edges = np.array([[4, 3], [3, 1], [4, 7], [4, 8], [0, 1]])
    assert skeleton_errors(seg, [(nodes, edges)]).splits == 2


def test_bad_skeletons_are_named():
    seg = np.zeros((2, 2, 2), dtype=np.uint8)
    with pytest.raises(InputError, match=r"skeleton 0: node 1 at \(z, y, x\) \(0, 2, 0\) lies "
                                         "outside the volume"):
        skeleton_errors(seg, [(np.array([[0, 0, 0], [0, 2, 0]]), np.array([[0, 1]]))])
    with pytest.raises(InputError, match=r"skeleton 'x': edge 0 \(0, 5\) names a node"):
        skeleton_errors(seg, {"x": (np.array([[0, 0, 0]]), np.array([[0, 5]]))})
    with pytest.raises(InputError, match="nodes must be an"):
        skeleton_errors(seg, [(np.zeros((2, 3)), np.zeros((0, 2), int))])


def test_traced_ground_truth_skeletons_count_the_cut_and_the_merge():
    gt, seg = three_cells()
    skeletons = ground_truth_skeletons(gt, (40.0, 8.0, 8.0), dust_threshold=10)
    assert sorted(skeletons) == [1, 2, 3]
    for cell, (nodes, edges) in skeletons.items():
        # Nodes are voxels of their own cell; edges make one tree.
        assert (gt[tuple(nodes.T)] == cell).all()
        assert len(edges) == len(nodes) - 1
    errors = skeleton_errors(seg, skeletons)
    assert (errors.splits, errors.merges) == (1, 1)
    assert errors.per_skeleton[1].segments == [1, 4]
    assert errors.merging_cells == {2: [2, 3]}


# --------------------------------------------------------------------------------------------
# Report against ground truth


def merge_and_split():
    """Bodies 1 (8 x 10 x 10), 2 (8 x 10 x 6) and 3 (8 x 10 x 12); cell 10 holds bodies 1 and
    2, body 3 is in cells 20 (x < 34) and 21, and cell 22 takes 4 voxels of body 1."""
    gt = np.zeros((8, 10, 40), dtype=np.uint64)
    gt[..., 0:10], gt[..., 12:18], gt[..., 20:32] = 1, 2, 3
    seg = np.zeros_like(gt)
    seg[..., 0:18] = 10
    seg[..., 18:26] = 20
    seg[..., 26:40] = 21
    seg[0, 0, 0:4] = 22
    return seg, gt


def test_overlap_report_lists_the_merge_and_the_split_worst_first():
    seg, gt = merge_and_split()
    rows = overlap_report(seg, gt, min_voxels=50)
    assert [row["kind"] for row in rows] == ["merge", "split"]
    merge, split = rows
    n = 8 * 10 * 28  # scored voxels
    # Cell 10: 796 voxels of body 1 (800 less cell 22's 4) and the 480 of body 2.
    assert merge["cells"] == [10] and merge["voxels"] == [1276]
    assert merge["truth"] == [1, 2] and merge["overlap"] == [796, 480]
    assert merge["parts"] == 2
    # The cell's part of the VOI merge: sum over its bodies of n_ij/n * log2(s_j / n_ij).
    bits = (796 * math.log2(1276 / 796) + 480 * math.log2(1276 / 480)) / n
    assert merge["bits"] == pytest.approx(bits)
    assert merge["share"] == pytest.approx(480 / 1276)
    assert merge["bbox"] == [[0, 0, 0], [8, 10, 18]]
    # The point: in the cell, in its second body, nearest that part's middle.
    z, y, x = merge["point"]
    assert (seg[z, y, x], gt[z, y, x]) == (10, 2)
    assert abs(x - 14.5) <= 1 and abs(y - 4.5) <= 1 and abs(z - 3.5) <= 1

    assert split["cells"] == [20, 21] and split["truth"] == [3]
    assert split["overlap"] == [480, 480] and split["voxels"] == [480, 480]
    assert split["bits"] == pytest.approx(960 * math.log2(2) / n)
    assert split["bbox"] == [[0, 0, 20], [8, 10, 32]]
    z, y, x = split["point"]
    assert (seg[z, y, x], gt[z, y, x]) == (21, 3)

    # Rows sum to the VOI parts when every error is a row (cell 22 is one: 4 voxels).
    everything = overlap_report(seg, gt, min_voxels=1)
    voi = variation_of_information(seg, gt)
    assert sum(r["bits"] for r in everything if r["kind"] == "merge") == pytest.approx(
        voi.merge)
    assert sum(r["bits"] for r in everything if r["kind"] == "split") == pytest.approx(
        voi.split)
    assert [r["cells"] for r in everything if r["kind"] == "split"] == [[20, 21], [10, 22]]
    assert overlap_report(seg, gt, min_voxels=50, max_rows=1) == [merge]
    values = [v for row in rows for v in row.values()]
    values += [x for v in values if isinstance(v, list) for x in v]
    assert {type(v) for v in values} == {str, int, float, list}
    assert overlap_report(seg, gt, min_voxels=50, max_parts=2) == rows


def test_overlap_report_reads_slabs_and_large_ids(monkeypatch):
    seg, gt = merge_and_split()
    expected = overlap_report(seg, gt, min_voxels=50)
    monkeypatch.setattr(evaluation, "SLAB_VOXELS", 100)
    rows = overlap_report(seg + np.uint64(2**40), gt, min_voxels=50)
    for row, want in zip(rows, expected, strict=True):
        assert row["cells"] == [c + 2**40 for c in want["cells"]]
        assert {k: v for k, v in row.items() if k != "cells"} == {
            k: v for k, v in want.items() if k != "cells"}


def test_overlap_report_of_a_real_oversegmentation():
    import h5py

    with h5py.File(shared_file("fibsem_mini.h5"), "r") as f:
        gt = f["train/volumes/labels/neuron_ids"][:]
        seg = f["train/volumes/labels/watershed"][:]
    rows = overlap_report(seg, gt, min_voxels=100)
    voi = variation_of_information(seg, gt)
    # An oversegmentation: splits are most of the score, and the worst rows are splits.
    assert voi.split > 3 * voi.merge
    assert rows[0]["kind"] == "split"
    assert [r["bits"] for r in rows] == sorted((r["bits"] for r in rows), reverse=True)
    assert sum(r["bits"] for r in rows if r["kind"] == "split") <= voi.split + 1e-12
    for row in rows:
        z, y, x = row["point"]
        (z0, y0, x0), (z1, y1, x1) = row["bbox"]
        assert z0 <= z < z1 and y0 <= y < y1 and x0 <= x < x1
        assert int(seg[z, y, x]) in row["cells"]
        assert int(gt[z, y, x]) in row["truth"]
        assert row["parts"] >= len(row["overlap"]) >= 2
        assert min(row["overlap"]) >= 100


# --------------------------------------------------------------------------------------------
# Likely errors from the agglomeration's record


def record():
    cells = {
        "id": np.array([1, 2, 3, 4, 5], dtype=np.uint64),
        "voxels": np.array([1000, 500, 40, 3000, 10], dtype=np.int64),
        "last_merge": np.array([0.45, 0.30, np.nan, 0.50, 0.48], dtype=np.float32),
    }
    edges = {
        "a": np.array([1, 2, 3, 1, 4], dtype=np.uint64),
        "b": np.array([2, 3, 4, 4, 5], dtype=np.uint64),
        "score": np.array([0.55, 0.65, 0.52, 0.40, 0.55], dtype=np.float32),
        "contact": np.array([100, 80, 2, 30, 100], dtype=np.int64),
    }
    return edges, cells


def test_likely_errors_are_the_decisions_close_to_the_threshold():
    edges, cells = record()
    rows = likely_errors(edges, cells, threshold=0.5, margin=0.1, min_contact=10)
    listed = [(row["kind"], row["cells"]) for row in rows]
    # Distance to the threshold first (cell 4's last merge and pair 1-4, below it, are at
    # 0), then the larger cell or contact.
    assert listed == [("merge", [4]), ("split", [1, 4]), ("merge", [5]), ("merge", [1]),
                      ("split", [1, 2]), ("split", [4, 5])]
    confidence = {(row["kind"], tuple(row["cells"])): row["confidence"] for row in rows}
    # Plain Python numbers, ready for JSON.
    assert {type(v) for row in rows for v in row.values() if not isinstance(v, list)} <= {
        str, int, float, type(None)}
    assert confidence[("merge", (4,))] == 1.0
    assert confidence[("split", (1, 4))] == 1.0
    assert confidence[("merge", (1,))] == pytest.approx(0.5, abs=1e-6)
    assert confidence[("merge", (5,))] == pytest.approx(0.8, abs=1e-6)
    assert confidence[("split", (1, 2))] == pytest.approx(0.5, abs=1e-6)
    split = rows[1]
    assert split == {"kind": "split", "cells": [1, 4], "voxels": [1000, 3000],
                     "score": pytest.approx(0.4), "contact": 30, "confidence": 1.0,
                     "bbox": None, "point": None}
    # Cell 3 (one fragment) is no merge; pair 3-4 touches over 2 voxels only; pair 2-3 is
    # farther than the margin.
    assert ("split", [3, 4]) in [(r["kind"], r["cells"]) for r in likely_errors(
        edges, cells, threshold=0.5, margin=0.1)]
    # A narrower margin keeps only the decisions at the threshold.
    narrow = likely_errors(edges, cells, threshold=0.5, margin=0.01)
    assert [(r["kind"], r["cells"], r["confidence"]) for r in narrow] == [
        ("merge", [4], 1.0), ("split", [1, 4], 1.0)]


@pytest.mark.parametrize(("change", "message"), [
    (lambda e, c: c.pop("last_merge"), "cells: missing column last_merge"),
    (lambda e, c: e.update(a=np.array([1, 3, 3, 1, 4])),
     r"edges row 1: a \(3\) must be below b \(3\)"),
    (lambda e, c: e.update(b=np.array([2, 3, 4, 9, 5])), r"edges row 3: b \(9\) is not a cell"),
    (lambda e, c: e.update(score=np.array([0.5, np.nan, 0.5, 0.5, 0.5])),
     "edges row 1: score is not a finite number"),
    (lambda e, c: e.update(contact=np.array([1, 2])), "edges: columns differ in length"),
    (lambda e, c: c.update(voxels=np.array([1, 2, -3, 4, 5])),
     "cells row 2: 'voxels' is negative"),
    (lambda e, c: c.update(id=np.array([1, 2, 2, 4, 5])), "cells: id 2 is listed twice"),
])
def test_a_bad_record_is_named(change, message):
    edges, cells = record()
    change(edges, cells)
    with pytest.raises(InputError, match=message):
        likely_errors(edges, cells, threshold=0.5, margin=0.1)


def test_threshold_and_margin_are_checked():
    edges, cells = record()
    with pytest.raises(InputError, match="margin must be a positive number"):
        likely_errors(edges, cells, threshold=0.5, margin=0)
    with pytest.raises(InputError, match="threshold must be a finite number"):
        likely_errors(edges, cells, threshold=float("nan"), margin=0.1)


def test_locate_errors_finds_the_cell_and_the_contact(monkeypatch):
    monkeypatch.setattr(evaluation, "SLAB_VOXELS", 60)  # slabs of one plane: contacts across
    seg = np.zeros((6, 6, 10), dtype=np.uint64)
    seg[1:5, 1:5, 1:5] = 7
    seg[1:5, 1:5, 5:9] = 2**40  # touches 7 across the plane x = 4 | 5
    seg[0, 0, 0] = 9  # touches neither
    rows = [
        {"kind": "merge", "cells": [7], "bbox": None, "point": None},
        {"kind": "split", "cells": [7, 2**40], "bbox": None, "point": None},
        {"kind": "split", "cells": [9, 2**40], "bbox": None, "point": None},
        {"kind": "merge", "cells": [11], "bbox": None, "point": None},
        {"kind": "merge", "cells": [7], "bbox": [[0, 0, 0], [1, 1, 1]], "point": [0, 0, 0]},
    ]
    located = locate_errors(rows, seg)
    assert located[0]["bbox"] == [[1, 1, 1], [5, 5, 5]]
    z, y, x = located[0]["point"]
    assert seg[z, y, x] == 7 and {z, y} <= {2, 3} and x in (2, 3)
    assert located[1]["bbox"] == [[1, 1, 4], [5, 5, 5]]
    z, y, x = located[1]["point"]
    assert seg[z, y, x] == 7 and x == 4 and {z, y} <= {2, 3}
    assert located[2]["point"] is None and located[3]["point"] is None
    assert located[4] == rows[4]
    assert rows[0]["point"] is None  # the rows given are left alone
