import numpy as np
import pytest
from scipy import ndimage

from detection.io.sources import iter_blocks
from detection.synapses.instances import InstanceStitcher, find_instances


def _blobs(shape=(20, 60, 70), seed=0):
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.random(shape), 2.0)
    return ((noise - noise.min()) / (noise.max() - noise.min())).astype(np.float32)


def _blockwise(probability, block, **kw):
    stitcher = InstanceStitcher(voxel_size=(40, 8, 8), **kw)
    boxes = list(iter_blocks(probability.shape, block))
    for box in boxes:
        stitcher.add_block(box, probability[box])
    candidates = stitcher.candidates()
    labels = np.zeros(probability.shape, np.uint32)
    for box in boxes:
        labels[box] = stitcher.relabel_block(box, probability[box])
    return labels, candidates


@pytest.mark.parametrize("block", [(7, 13, 11), (20, 30, 70), (5, 60, 9)])
def test_blockwise_equals_whole_volume(block):
    probability = _blobs()
    kw = dict(high=0.75, low=0.6, min_size_voxels=5)
    whole_labels, whole = find_instances(probability, voxel_size=(40, 8, 8), **kw)
    labels, candidates = _blockwise(probability, block, **kw)
    assert len(whole) > 3
    assert candidates == whole
    np.testing.assert_array_equal(labels, whole_labels)


def test_hysteresis_size_filter_and_candidate_values():
    p = np.zeros((3, 10, 10), np.float32)
    p[1, 1:4, 1:4] = 0.6          # extent only, no seed: dropped
    p[1, 6:9, 6:9] = 0.6
    p[1, 7, 7] = 0.9              # seeded: kept, 9 voxels
    p[0, 0, 9] = 0.95             # seeded but one voxel: dropped by size
    labels, candidates = find_instances(p, voxel_size=(40, 8, 8), high=0.8, low=0.5,
                                        min_size_voxels=2)
    assert len(candidates) == 1
    c = candidates[0]
    assert c.size_voxels == 9 and c.size_nm3 == 9 * 40 * 8 * 8
    assert c.center == pytest.approx((40.0, 56.0, 56.0))
    assert c.max_probability == pytest.approx(0.9)
    assert c.score == pytest.approx((8 * 0.6 + 0.9) / 9)
    assert (c.bbox_min, c.bbox_max) == ((1, 6, 6), (2, 9, 9))
    assert labels.max() == 1 and (labels == 1).sum() == 9


def test_components_join_across_faces_only():
    p = np.zeros((2, 4, 4), np.float32)
    p[0, 1, 1] = 0.9
    p[1, 2, 2] = 0.9  # diagonal neighbour: separate under face connectivity
    _, candidates = _blockwise(p, (1, 4, 4), high=0.8, low=0.5)
    assert len(candidates) == 2
