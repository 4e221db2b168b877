import numpy as np
import pytest
from scipy import ndimage

from detection.cells.segment_stats import SegmentStatistics


def _labels(shape, seed):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 9, size=tuple(max(1, s // 4) for s in shape))
    labels = np.kron(coarse, np.ones((4, 4, 4), dtype=np.int64))[: shape[0], : shape[1], : shape[2]]
    # A few ids near the top of the uint64 range, which must survive exactly.
    labels = labels.astype(np.uint64)
    labels[labels == 8] = np.uint64(2**64 - 2)
    return labels


def _blockwise(labels, block):
    stats = SegmentStatistics()
    for z in range(0, labels.shape[0], block[0]):
        for y in range(0, labels.shape[1], block[1]):
            for x in range(0, labels.shape[2], block[2]):
                box = np.s_[z : z + block[0], y : y + block[1], x : x + block[2]]
                stats.add(labels[box], offset=(z, y, x))
    return stats.result()


@pytest.mark.parametrize("block", [(5, 7, 9), (17, 33, 31), (100, 100, 100)])
def test_blockwise_statistics_match_whole_volume(block):
    labels = _labels((17, 33, 31), seed=1)
    table = _blockwise(labels, block)

    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    np.testing.assert_array_equal(table.ids, ids)
    np.testing.assert_array_equal(table.sizes, counts)
    for i, seg in enumerate(ids):
        zz, yy, xx = np.nonzero(labels == seg)
        np.testing.assert_array_equal(table.bbox_min[i], [zz.min(), yy.min(), xx.min()])
        np.testing.assert_array_equal(table.bbox_max[i], [zz.max() + 1, yy.max() + 1, xx.max() + 1])
        np.testing.assert_allclose(table.centroid[i], [zz.mean(), yy.mean(), xx.mean()])


def test_sizes_equal_bincount_and_ignore_background():
    labels = np.zeros((4, 5, 6), dtype=np.uint32)
    labels[0, 0, :3] = 7
    labels[3, 4, 5] = 2
    table = _blockwise(labels, (2, 2, 2))
    np.testing.assert_array_equal(table.ids, [2, 7])
    np.testing.assert_array_equal(table.sizes, np.bincount(labels.ravel())[[2, 7]])
    np.testing.assert_array_equal(table.bbox_min[1], [0, 0, 0])
    np.testing.assert_array_equal(table.bbox_max[1], [1, 1, 3])
    np.testing.assert_allclose(table.centroid[1], [0, 0, 1])
    assert ndimage.sum(labels > 0) == table.sizes.sum()


def test_empty_volume_gives_empty_table():
    table = _blockwise(np.zeros((3, 3, 3), dtype=np.uint8), (2, 2, 2))
    assert len(table) == 0


def test_without_background_every_id_is_a_segment():
    labels = np.zeros((2, 3, 4), dtype=np.uint16)
    labels[1] = 5
    stats = SegmentStatistics(background=None)
    stats.add(labels)
    table = stats.result()
    np.testing.assert_array_equal(table.ids, [0, 5])
    np.testing.assert_array_equal(table.sizes, [12, 12])
