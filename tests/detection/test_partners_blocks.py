"""Block-wise partner assignment: site boxes, margins, and rows equal to the whole volume's."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from detection.partners import assign_by_diffusion, assign_partners, partner_choices
from detection.partners.blocks import (
    assign_blockwise,
    assignment_margin,
    block_crop,
    block_of,
    blockwise_site_boxes,
    keep_sites,
    sites_by_block,
)
from detection.partners.diffusion import step_probabilities, walk_reach
from detection.partners.rows import choice_from_record, choice_record
from detection.partners.sites import site_boxes
from detection.synthetic.phantom import make_phantom

VS = (40.0, 8.0, 8.0)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((24, 160, 160), voxel_size=VS, n_cells=16, n_synapses=20, seed=4)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64, np.int64])
@pytest.mark.parametrize("block_shape", [(5, 37, 41), (24, 160, 160), (1, 16, 200)])
def test_blockwise_site_boxes_equal_find_objects_on_the_whole_volume(phantom, dtype,
                                                                     block_shape):
    sites = phantom.synapse_labels.astype(dtype)
    sites[sites == 3] = 2**31 + 7  # a sparse id among dense ones
    reads = []

    def read(box):
        reads.append(box)
        return sites[box]

    found = blockwise_site_boxes(read, sites.shape, block_shape)
    assert found == site_boxes(sites) and len(found) == len(np.unique(sites)) - 1
    # One read per block of the grid, never more than a block.
    assert len(reads) == np.prod([-(-n // b) for n, b in zip(sites.shape, block_shape)])
    assert all(s.stop - s.start <= b for box in reads for s, b in zip(box, block_shape))


def test_each_site_goes_to_the_block_holding_its_box_centre():
    boxes = [(1, (slice(0, 4), slice(10, 30), slice(0, 1))),
             (2, (slice(6, 9), slice(0, 2), slice(60, 70)))]
    assert block_of(boxes[0][1], (8, 16, 16)) == (0, 1, 0)
    assert block_of(boxes[1][1], (8, 16, 16)) == (0, 0, 4)  # centre z 7: block 0
    assert sites_by_block(boxes, (8, 16, 16)) == {(0, 0, 4): [boxes[1]], (0, 1, 0): [boxes[0]]}
    crop = block_crop([b for _, b in boxes], (2, 5, 5), (8, 100, 100))
    assert crop == (slice(0, 8), slice(0, 35), slice(0, 75))


def test_walk_reach_bounds_the_walks():
    # Steps are isotropic in nm: at 40 x 8 x 8 nm a z step is 25 times rarer than a y step.
    np.testing.assert_allclose(step_probabilities(VS), [1 / 51, 25 / 51, 25 / 51])
    assert walk_reach(400, voxel_size=VS) == (26, 107, 107)
    assert walk_reach(400, voxel_size=(10.0, 10.0, 10.0)) == (88, 88, 88)
    assert walk_reach(3, voxel_size=VS) == (3, 3, 3)   # never more than the steps
    # 10,000 free walks of 400 steps: the farthest any strays per axis (12, 58, 55 voxels;
    # standard deviations 2.8 and 14) is well inside the reach.
    rng = np.random.default_rng(0)
    steps = rng.choice(6, size=(10_000, 400), p=np.repeat(step_probabilities(VS) / 2, 2))
    moves = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
                     dtype=np.int16)
    farthest = np.abs(np.cumsum(moves[steps], axis=1, dtype=np.int16)).max(axis=(0, 1))
    assert (farthest < np.array(walk_reach(400, voxel_size=VS)) * 0.6).all()
    assert (farthest > np.array([8, 40, 40])).all()


def test_margins_follow_the_method_options_and_voxel_size():
    # Geometry 2 * 40 nm (2 z, 10 y/x voxels) plus the 200 nm signal radius (5, 25, 25).
    assert assignment_margin("vesicle", voxel_size=VS) == (7, 35, 35)
    assert assignment_margin("vesicle", voxel_size=VS, radius_nm=80.0) == (4, 20, 20)
    # Diffusion: one voxel more than the walk's reach (26, 107, 107 at 400 steps), or the
    # vesicle margin where that is larger (10 steps).
    assert assignment_margin("diffusion", voxel_size=VS) == (27, 108, 108)
    assert assignment_margin("diffusion", voxel_size=VS, n_steps=10) == (9, 35, 35)
    # Contact: the 320 nm crop of the local interfaces.
    assert assignment_margin("contact", voxel_size=VS) == (8, 40, 40)
    with pytest.raises(ValueError, match="unknown partner-assignment method"):
        assignment_margin("magic", voxel_size=VS)


@pytest.mark.parametrize("method, options", [
    ("vesicle", {}),
    ("diffusion", {"min_share": 0.3, "seed": 2}),
    ("diffusion", {"particles": 150, "n_steps": 30, "seed": 5}),  # crops smaller than the volume
    ("vesicle", {"min_inside": 0.03}),
    ("diffusion", {"min_share": 0.45, "min_inside": 0.03, "seed": 2}),
])
@pytest.mark.parametrize("block_shape", [(8, 48, 48), (24, 32, 160)])
def test_blockwise_rows_equal_the_whole_volume_rows(phantom, method, options, block_shape):
    whole = assign_partners(method, phantom.synapse_labels, phantom.segmentation,
                            voxel_size=VS, presynaptic=phantom.vesicles, **options)
    blocks = assign_blockwise(method, phantom.synapse_labels, phantom.segmentation,
                              voxel_size=VS, block_shape=block_shape,
                              presynaptic=phantom.vesicles, **options)
    assert len(whole) >= 15
    # Exactly: ids, positions, confidences and weights, bit for bit.
    assert blocks == whole


def test_contact_choices_on_a_crop_equal_those_on_the_volume(phantom):
    # Site-local scores, as the contact job computes them per crop (a fixed table here).
    scores = {}
    for site, box in site_boxes(phantom.synapse_labels):
        cells = np.unique(phantom.segmentation[box])
        for a in cells:
            for b in cells:
                scores[(site, int(a), int(b))] = ((site * 7 + int(a) * 3 + int(b)) % 10) / 10
    whole = partner_choices("contact", phantom.synapse_labels, phantom.segmentation,
                            voxel_size=VS, local_scores=scores)
    margin = assignment_margin("contact", voxel_size=VS)
    got = []
    for mine in sites_by_block(site_boxes(phantom.synapse_labels), (8, 64, 64)).values():
        crop = block_crop([b for _, b in mine], margin, phantom.segmentation.shape)
        got += partner_choices("contact", keep_sites(phantom.synapse_labels[crop],
                                                     [s for s, _ in mine]),
                               phantom.segmentation[crop], voxel_size=VS,
                               local_scores=scores, offset=[s.start for s in crop])
    got.sort(key=lambda c: c.geometry.site)
    assert [choice_record(c) for c in got] == [choice_record(c) for c in whole]


def test_choice_records_round_trip_exactly(phantom):
    choices = partner_choices("vesicle", phantom.synapse_labels, phantom.segmentation,
                              voxel_size=VS, presynaptic=phantom.vesicles)
    import json

    records = json.loads(json.dumps([choice_record(c) for c in choices]))
    assert [choice_record(choice_from_record(r)) for r in records] == \
        [choice_record(c) for c in choices]


def test_a_sites_diffusion_rows_do_not_depend_on_the_other_sites(phantom):
    sites = phantom.synapse_labels
    alone = np.where(sites == 5, sites, 0)
    rows = assign_by_diffusion(sites, phantom.segmentation, phantom.vesicles, voxel_size=VS,
                               particles=200, group_distance_nm=0, seed=1)
    mine = [r for r in rows if r.site_id == 5]
    assert mine and mine == assign_by_diffusion(alone, phantom.segmentation, phantom.vesicles,
                                                voxel_size=VS, particles=200,
                                                group_distance_nm=0, seed=1)
    other = assign_by_diffusion(alone, phantom.segmentation, phantom.vesicles, voxel_size=VS,
                                particles=200, group_distance_nm=0, seed=2)
    assert [r.weight for r in other] != [r.weight for r in mine] or \
        [r.post_point for r in other] != [r.post_point for r in mine]


def test_keep_sites_erases_the_other_labels():
    labels = np.array([[[0, 3, 4, 2**40]]], dtype=np.uint64)
    assert keep_sites(labels, [4, 2**40]).tolist() == [[[0, 0, 4, 2**40]]]
    assert keep_sites(labels, []).dtype == np.uint64


def test_sites_cut_into_pieces_keep_one_box(phantom):
    # A label in two pieces far apart gets the union box, as find_objects gives.
    sites = np.zeros((4, 40, 40), np.uint32)
    sites[0, 0, 0] = sites[3, 39, 39] = 9
    (found,) = blockwise_site_boxes(lambda b: sites[b], sites.shape, (2, 10, 10))
    assert found == (9, (slice(0, 4), slice(0, 40), slice(0, 40))) == site_boxes(sites)[0]
    assert ndi.find_objects(sites)[8] == found[1]
