import numpy as np
import pytest

from detection.io.sources import iter_blocks
from detection.synapses.instances import InstanceStitcher, find_instances
from detection.synapses.split import SplitParameters, split_component

VOXEL_SIZES = [(50.0, 4.6, 4.6), (8.0, 8.0, 8.0)]


def _blobs(shape, voxel_size, centres_nm, radius_nm, dtype=np.float32):
    """Sum-free union of Gaussian bumps (peak 1) at ``centres_nm``, radius in nm."""
    grid = np.indices(shape).astype(float) * np.asarray(voxel_size, float)[:, None, None, None]
    p = np.zeros(shape)
    for c in centres_nm:
        d2 = sum((g - x) ** 2 for g, x in zip(grid, c))
        p = np.maximum(p, np.exp(-d2 / (2 * radius_nm**2)))
    return p.astype(dtype)


def _shape(voxel_size, extent_nm=(400.0, 600.0, 900.0)):
    return tuple(int(e / v) for e, v in zip(extent_nm, voxel_size))


@pytest.mark.parametrize("voxel_size", VOXEL_SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_two_touching_blobs_become_two_instances(voxel_size, dtype):
    shape = _shape(voxel_size)
    p = _blobs(shape, voxel_size, [(200, 300, 250), (200, 300, 650)], 110, dtype)
    params = SplitParameters(smooth_nm=20, min_distance_nm=150, min_depth=0.05)
    whole, _ = find_instances(p, voxel_size=voxel_size, high=0.8, low=0.1)
    assert whole.max() == 1  # the hysteresis alone joins them
    labels, candidates = find_instances(p, voxel_size=voxel_size, high=0.8, low=0.1, split=params)
    assert len(candidates) == 2 and labels.max() == 2
    np.testing.assert_array_equal(labels > 0, whole > 0)
    centres = sorted(c.center[2] for c in candidates)
    assert centres[0] == pytest.approx(250, abs=30) and centres[1] == pytest.approx(650, abs=30)
    # Each half of the volume along x belongs to one instance.
    x_mid = int(450 / voxel_size[2])
    assert set(np.unique(labels[..., :x_mid - 2])) - {0} != set(np.unique(labels[..., x_mid + 2:])) - {0}


@pytest.mark.parametrize("voxel_size", VOXEL_SIZES)
def test_one_blob_stays_one_instance(voxel_size):
    shape = _shape(voxel_size)
    p = _blobs(shape, voxel_size, [(200, 300, 450)], 150)
    labels, candidates = find_instances(p, voxel_size=voxel_size, high=0.8, low=0.1,
                                        split=SplitParameters(smooth_nm=20, min_distance_nm=150,
                                                              min_depth=0.05))
    assert len(candidates) == 1 and labels.max() == 1


def test_seeds_closer_than_the_minimum_distance_are_one_instance():
    voxel_size = (50.0, 4.6, 4.6)
    p = _blobs(_shape(voxel_size), voxel_size, [(200, 300, 250), (200, 300, 650)], 110)
    near = SplitParameters(smooth_nm=20, min_distance_nm=350, min_depth=0.0)
    far = SplitParameters(smooth_nm=20, min_distance_nm=450, min_depth=0.0)
    assert find_instances(p, voxel_size=voxel_size, high=0.8, low=0.1, split=near)[0].max() == 2
    assert find_instances(p, voxel_size=voxel_size, high=0.8, low=0.1, split=far)[0].max() == 1


def test_a_shallow_pass_does_not_split():
    # Two bumps on a plateau of 0.9: the pass between them lies 0.1 below the peaks.
    voxel_size = (8.0, 8.0, 8.0)
    shape = (12, 20, 60)
    p = np.full(shape, 0.9)
    p[5:7, 9:11, 10:12] = 1.0
    p[5:7, 9:11, 48:50] = 1.0
    mask = np.ones(shape, bool)
    deep = SplitParameters(smooth_nm=0, min_distance_nm=100, min_depth=0.05)
    shallow = SplitParameters(smooth_nm=0, min_distance_nm=100, min_depth=0.2)
    two = split_component(mask, p, voxel_size=voxel_size, parameters=deep)
    assert two.max() == 2 and two[5, 9, 10] != two[5, 9, 48]
    assert (two > 0).all()
    assert split_component(mask, p, voxel_size=voxel_size, parameters=shallow).max() == 1


def test_values_outside_the_mask_are_not_read():
    voxel_size = (8.0, 8.0, 8.0)
    p = _blobs((10, 20, 60), voxel_size, [(40, 80, 160)], 60)
    mask = p > 0.3
    params = SplitParameters(smooth_nm=16, min_distance_nm=50, min_depth=0.05)
    noisy = np.where(mask, p, np.random.default_rng(0).random(p.shape))
    np.testing.assert_array_equal(split_component(mask, p, voxel_size=voxel_size, parameters=params),
                                  split_component(mask, noisy, voxel_size=voxel_size,
                                                  parameters=params))


def _blockwise(probability, block, voxel_size, **kw):
    stitcher = InstanceStitcher(voxel_size=voxel_size, **kw)
    boxes = list(iter_blocks(probability.shape, block))
    for box in boxes:
        stitcher.add_block(box, probability[box])
    candidates = stitcher.candidates(read_probability=lambda box: probability[box])
    labels = np.zeros(probability.shape, np.uint32)
    for box in boxes:
        labels[box] = stitcher.relabel_block(box, probability[box])
    return labels, candidates


@pytest.mark.parametrize("block", [(3, 40, 50), (8, 130, 70), (2, 17, 200)])
def test_split_does_not_depend_on_the_blocking(block):
    voxel_size = (50.0, 4.6, 4.6)
    shape = (8, 130, 200)
    # Two pairs of touching blobs (one along x, one along z) and one lone blob.
    centres = [(150, 100, 150), (150, 100, 500), (50, 500, 250), (350, 500, 250), (250, 300, 850)]
    p = _blobs(shape, voxel_size, centres, 90)
    kw = dict(high=0.8, low=0.1, min_size_voxels=20, min_score=0.3,
              split=SplitParameters(smooth_nm=20, min_distance_nm=150, min_depth=0.05))
    whole_labels, whole = find_instances(p, voxel_size=voxel_size, **kw)
    unsplit, _ = find_instances(p, voxel_size=voxel_size, high=0.8, low=0.1, min_size_voxels=20)
    assert unsplit.max() == 3 and len(whole) == 5
    labels, candidates = _blockwise(p, block, voxel_size, **kw)
    assert candidates == whole
    np.testing.assert_array_equal(labels, whole_labels)


def test_split_needs_a_probability_reader():
    stitcher = InstanceStitcher(voxel_size=(8, 8, 8), split=SplitParameters())
    stitcher.add_block((slice(0, 2), slice(0, 2), slice(0, 2)), np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="read_probability"):
        stitcher.candidates()


def test_small_pieces_join_a_neighbour():
    voxel_size = (8.0, 8.0, 8.0)
    shape = (12, 20, 60)
    # A large and a small bump, separated by a deep pass.
    p = np.full(shape, 0.5)
    p[:, :, :40] = 0.9
    p[5:7, 9:11, 20:22] = 1.0
    p[5:7, 9:11, 50:52] = 1.0
    mask = np.ones(shape, bool)
    params = SplitParameters(smooth_nm=0, min_distance_nm=100, min_depth=0.05)
    two = split_component(mask, p, voxel_size=voxel_size, parameters=params)
    sizes = np.bincount(two.ravel())[1:]
    assert len(sizes) == 2
    kept = SplitParameters(smooth_nm=0, min_distance_nm=100, min_depth=0.05,
                           min_piece_voxels=int(sizes.min()))
    joined = SplitParameters(smooth_nm=0, min_distance_nm=100, min_depth=0.05,
                             min_piece_voxels=int(sizes.min()) + 1)
    assert split_component(mask, p, voxel_size=voxel_size, parameters=kept).max() == 2
    one = split_component(mask, p, voxel_size=voxel_size, parameters=joined)
    assert one.max() == 1 and (one == 1).all()
