"""Cells from EM: affinity targets, the affinity network's tiling, fragments, waterz
agglomeration, the block-wise steps and the agglomeration's record."""

import numpy as np
import pytest
import torch

from detection.cells import segmentation as seg
from detection.cells.boundaries import (
    AffinityNet,
    AffinityParameters,
    LabelVolume,
    affinities_from_boundary,
    affinity_targets,
    balanced_loss,
    network_labels,
    receptive_radius,
    train_affinities,
)
from detection.errors import InputError


def cubes(shape=(16, 32, 32), split_axis=2):
    """Two cells side by side, the second starting half way along ``split_axis``."""
    labels = np.ones(shape, np.uint64)
    index = [slice(None)] * 3
    index[split_axis] = slice(shape[split_axis] // 2, None)
    labels[tuple(index)] = 2
    return labels


def ideal_affinities(labels, inside=0.95, across=0.05):
    """Nearest-neighbour affinities: ``inside`` within a cell, ``across`` between cells and on
    the volume's low faces."""
    targets, valid = affinity_targets(labels, seg_offsets())
    return np.where(valid & (targets > 0), inside, across).astype(np.float32)


def seg_offsets():
    return ((1, 0, 0), (0, 1, 0), (0, 0, 1))


def test_affinity_targets_join_equal_non_zero_labels_only():
    labels = np.array([[[1, 1, 2, 0, 0]]])
    targets, valid = affinity_targets(labels, [(0, 0, 1), (0, 0, 2)])
    # x edges: (1,1) joins; (1,2) and (2,0) and (0,0) do not (0 is a boundary).
    assert targets[0, 0, 0].tolist() == [0, 1, 0, 0, 0]
    assert valid[0, 0, 0].tolist() == [False, True, True, True, True]
    assert targets[1, 0, 0].tolist() == [0, 0, 0, 0, 0]
    assert valid[1, 0, 0].tolist() == [False, False, True, True, True]
    ignore = np.array([[[False, False, True, False, False]]])
    _, valid = affinity_targets(labels, [(0, 0, 1)], ignore=ignore)
    assert valid[0, 0, 0].tolist() == [False, True, False, False, True]


def test_affinities_from_boundary_take_the_stronger_boundary():
    boundary = np.zeros((1, 1, 4), np.float32)
    boundary[0, 0, 2] = 0.8
    affs = affinities_from_boundary(boundary)
    assert affs.shape == (3, 1, 1, 4)
    np.testing.assert_allclose(affs[2, 0, 0], [0.0, 1.0, 0.2, 0.2])
    assert not affs[0].any() and not affs[1].any()  # low faces of a single section and row


def test_network_labels_sample_block_centres():
    labels = np.arange(1, 1 + 2 * 4 * 5).reshape(2, 4, 5)
    out = network_labels(labels, 2)
    assert out.shape == (2, 2, 3)
    assert out[0].tolist() == [[labels[0, 1, 1], labels[0, 1, 3], labels[0, 1, 4]],
                               [labels[0, 3, 1], labels[0, 3, 3], labels[0, 3, 4]]]


def test_receptive_radius_counts_convolutions_and_pools():
    # Two 3-wide convolutions per level: 2 + 4 + 8 going down, 2 + 4 coming up, and the pooling
    # windows 1 + 2; along z without pooling: ten convolutions of one voxel each side.
    assert receptive_radius([(2, 2, 2), (2, 2, 2)]) == (23, 23, 23)
    assert receptive_radius([(1, 2, 2), (1, 2, 2)])[0] == 10


def test_balanced_loss_weighs_both_classes_equally():
    logits = torch.zeros(1, 3, 1, 1, 10)
    targets = torch.zeros(1, 3, 1, 1, 10)
    targets[:, :, :, :, :9] = 1  # nine joins, one boundary per channel
    valid = torch.ones(1, 3, 1, 1, 10, dtype=torch.bool)
    # Logit 0 costs log 2 per voxel whatever the class, and weights sum to the voxel count.
    assert balanced_loss(logits, targets, valid).item() == pytest.approx(np.log(2), rel=1e-5)
    # Wrong on the single boundary voxel costs as much as wrong on all nine joins.
    a = torch.zeros_like(logits)
    a[:, :, :, :, 9] = 5.0
    b = torch.zeros_like(logits)
    b[:, :, :, :, :9] = -5.0
    assert balanced_loss(a, targets, valid).item() == pytest.approx(
        balanced_loss(b, targets, valid).item(), rel=1e-5)


@pytest.mark.parametrize("voxel_size,pixel_nm", [((10, 10, 10), 10), ((50, 4, 4), 8)])
def test_network_blocks_equal_the_whole_volume(voxel_size, pixel_nm):
    torch.manual_seed(0)
    model = AffinityNet(voxel_size=voxel_size,
                        parameters=AffinityParameters(pixel_nm=pixel_nm, width=4, depth=2),
                        mean=100.0, std=50.0, device="cpu")
    volume = np.random.default_rng(1).integers(0, 255, (20, 90, 100)).astype(np.uint8)
    whole = model.predict_region(volume)
    assert whole.shape == (3,) + volume.shape
    halo = model.halo_voxels()
    for core in [(slice(4, 13), slice(8, 40), slice(16, 60)),
                 (slice(10, 20), slice(0, 32), slice(64, 100))]:
        lo = [max(0, c.start - h) for c, h in zip(core, halo)]
        hi = [min(n, c.stop + h) for c, h, n in zip(core, halo, volume.shape)]
        block = volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        inner = tuple(slice(c.start - a, c.stop - a) for c, a in zip(core, lo))
        part = model.predict_region(block, core=inner, offset=lo, whole_shape=volume.shape)
        np.testing.assert_allclose(part, whole[(slice(None),) + core], atol=1e-4)
    with pytest.raises(InputError, match="halo"):
        model.predict_region(volume[:, 40:, 40:], core=(slice(0, 10), slice(0, 20), slice(0, 20)),
                             offset=(0, 40, 40), whole_shape=volume.shape)


def membrane_phantom(shape=(12, 48, 48), seed=0):
    """Cells as a Voronoi partition, dark one-voxel membranes between them on bright insides."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, 1, (12, 3)) * np.array(shape)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    labels = np.argmin(((grid[..., None, :] - points) ** 2).sum(-1), axis=-1) + 1
    boundary = np.zeros(shape, bool)
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        diff = a[1:] != a[:-1]
        np.moveaxis(boundary, axis, 0)[1:] |= diff
    labels = np.where(boundary, 0, labels).astype(np.uint64)
    em = np.where(boundary, 60, 190) + rng.normal(0, 12, shape)
    return np.clip(em, 0, 255).astype(np.uint8), labels


def test_training_learns_membranes(tmp_path):
    em, labels = membrane_phantom()
    parameters = AffinityParameters(pixel_nm=10, width=4, depth=1, iterations=60, batch=2,
                                    patch=(8, 32, 32), learning_rate=1e-2)
    model = train_affinities([LabelVolume("phantom", em, (10, 10, 10), labels)],
                             voxel_size=(10, 10, 10), parameters=parameters, device="cpu")
    affs = model.predict_region(em)
    targets, valid = affinity_targets(labels, seg_offsets())
    joined = affs[:3][valid & (targets > 0)].mean()
    cut = affs[:3][valid & (targets == 0)].mean()
    assert joined > 0.7 and cut < 0.4, (joined, cut)
    path = model.save(tmp_path / "cells.aff")
    loaded = AffinityNet.load(path, device="cpu")
    np.testing.assert_allclose(loaded.predict_region(em), affs, atol=1e-6)
    assert loaded.training["iterations"] == 60


def test_fragments_fill_each_cell_and_stop_at_its_boundary():
    labels = cubes()
    affs = ideal_affinities(labels)
    frag, n = seg.fragments(affs, voxel_size=(10, 10, 10),
                            parameters=seg.FragmentParameters(seed_distance_nm=1000))
    assert n == 2 and frag.dtype == np.uint64
    # Each fragment lies in one cell (the watershed line may fall one voxel either side).
    for f in (1, 2):
        assert len(np.unique(labels[frag == f])) == 1 or \
            np.bincount(labels[frag == f].astype(int)).max() > 0.95 * (frag == f).sum()


def test_serial_sections_get_fragments_per_section():
    labels = cubes((4, 32, 32))
    affs = ideal_affinities(labels)
    frag, n = seg.fragments(affs, voxel_size=(50, 4, 4),
                            parameters=seg.FragmentParameters(seed_distance_nm=1000))
    assert n == 8
    for z in range(4):
        assert len(np.unique(frag[z])) == 2
    assert not set(np.unique(frag[0])) & set(np.unique(frag[1]))


def test_agglomeration_joins_fragments_of_one_cell_only():
    labels = cubes()
    affs = ideal_affinities(labels)
    # Over-segment: every fragment a 4-voxel slab along z.
    frag = (np.arange(16)[:, None, None] // 4 * 2 + labels.astype(np.int64)).astype(np.uint64)
    low, high = seg.agglomerate(affs, frag, [0.01, 0.5])
    assert len(np.unique(low)) == 8
    assert len(np.unique(high)) == 2
    assert np.array_equal(high[labels == 1] == high[labels == 1][0],
                          np.ones((labels == 1).sum(), bool))
    (segmentation, merges), = seg.agglomerate(affs, frag, [0.5], history=True)
    assert merges.shape == (6, 3) and (merges[:, 2] < 0.1).all()
    # Ids of the result are fragment ids (waterz's own compact ids are mapped back).
    assert set(np.unique(segmentation)) <= set(np.unique(frag))


def test_blockwise_steps_equal_the_whole_volume_on_clear_cells():
    labels = cubes((16, 40, 40), split_axis=1)
    affs = ideal_affinities(labels)
    whole = seg.segment(affs, voxel_size=(10, 10, 10), threshold=0.5)
    blocks = seg.segment_blockwise(affs, voxel_size=(10, 10, 10), threshold=0.5,
                                   block_shape=(8, 16, 16), context=(4, 8, 8))
    assert len(np.unique(blocks)) == 2
    # The same partition (up to names).
    pairs = np.unique(np.stack([whole.ravel(), blocks.ravel()], 1), axis=0)
    assert len(pairs) == 2


def test_block_fragment_ids_are_unique_per_block_and_stitch_relabels():
    labels = cubes((4, 16, 16))
    affs = ideal_affinities(labels)
    frag = seg.block_fragments(affs, block_index=3, voxel_size=(10, 10, 10),
                               parameters=seg.FragmentParameters(seed_distance_nm=1000))
    ids = np.unique(frag)
    assert (ids >= 3 * seg.BLOCK_ID_STRIDE + 1).all() and (ids < 4 * seg.BLOCK_ID_STRIDE).all()
    fragment_ids, cells = seg.stitch([5, 7, 9, 11], np.array([[9, 5]], np.uint64))
    assert fragment_ids.tolist() == [5, 7, 9, 11] and cells.tolist() == [1, 2, 1, 3]
    out = seg.relabel(np.array([[[0, 5, 9, 11]]], np.uint64), fragment_ids, cells)
    assert out.tolist() == [[[0, 1, 1, 3]]]
    with pytest.raises(InputError, match="does not list"):
        seg.relabel(np.array([[[6]]], np.uint64), fragment_ids, cells)
    with pytest.raises(InputError, match="no block wrote"):
        seg.stitch([5, 7], np.array([[5, 8]], np.uint64))


def test_block_merges_pair_own_fragments_with_their_segment():
    labels = cubes((8, 16, 16))
    affs = ideal_affinities(labels)
    frag = (np.arange(8)[:, None, None] // 4 * 2 + labels.astype(np.int64)).astype(np.uint64) + 10
    # Core: the first four sections, whose fragments are 11 and 12.
    pairs = seg.block_merges(affs, frag, (slice(0, 4), slice(None), slice(None)), threshold=0.5)
    assert sorted(map(tuple, pairs.tolist())) == []  # 11 and 12 represent their segments
    pairs = seg.block_merges(affs, frag, (slice(4, 8), slice(None), slice(None)), threshold=0.5)
    assert sorted(map(tuple, pairs.tolist())) == [(13, 11), (14, 12)]


def test_agglomeration_record_scores_contacts_and_merges():
    labels = cubes((4, 8, 8))
    affs = ideal_affinities(labels, inside=0.9, across=0.2)
    frag = (np.arange(4)[:, None, None] // 2 * 2 + labels.astype(np.int64)).astype(np.uint64)
    cells, edges = seg.agglomeration_record(affs, frag, labels)
    assert cells["id"].tolist() == [1, 2] and cells["voxels"].tolist() == [128, 128]
    # Fragments of one cell touch across z with affinity 0.9: bottleneck score 0.1.
    np.testing.assert_allclose(cells["last_merge"], [0.1, 0.1], atol=1e-6)
    assert edges["a"].tolist() == [1] and edges["b"].tolist() == [2]
    np.testing.assert_allclose(edges["score"], [0.8], atol=1e-6)
    assert edges["contact"].tolist() == [4 * 8]


def test_bad_inputs_are_named():
    with pytest.raises(InputError, match=r"\(3, Z, Y, X\)"):
        seg.fragments(np.zeros((2, 4, 4, 4), np.float32), voxel_size=(10, 10, 10))
    with pytest.raises(InputError, match="mask"):
        seg.fragments(np.zeros((3, 4, 4, 4), np.float32), voxel_size=(10, 10, 10),
                      mask=np.ones((4, 4, 5), bool))
    with pytest.raises(InputError, match="scoring"):
        next(seg.agglomerate(np.zeros((3, 2, 2, 2), np.float32), np.ones((2, 2, 2), np.uint64),
                             [0.5], scoring="max"))
    with pytest.raises(InputError, match="same 3-D shape"):
        train_affinities([LabelVolume("v", np.zeros((4, 8, 8)), (10, 10, 10),
                                      np.zeros((4, 8, 9)))], voxel_size=(10, 10, 10))
