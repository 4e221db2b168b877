"""Partner assignment: contact, vesicle side and diffusion, on volumes with known partners."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from detection.metrics import connection_scores
from detection.partners import (
    FLAGS,
    assign_by_contact,
    assign_by_diffusion,
    assign_by_vesicles,
    assign_partners,
    rows_to_pairs,
)
from detection.partners.diffusion import random_walk
from detection.partners.sites import group_sites, site_boxes
from detection.synapses.interfaces import extract_interfaces

VS = (40.0, 8.0, 8.0)


def two_cells(shape=(8, 40, 40)):
    """Cell 1 (x < 19) and cell 2 (x > 20) with a two-voxel membrane; a cleft disc in it."""
    seg = np.zeros(shape, dtype=np.uint64)
    seg[:, :, :19] = 1
    seg[:, :, 21:] = 2
    sites = np.zeros(shape, dtype=np.uint32)
    sites[2:6, 12:28, 19:21] = 7
    vesicles = np.zeros(shape, dtype=np.float32)
    vesicles[:, 8:32, 8:19] = 1.0  # a cloud in cell 1 behind the cleft
    return seg, sites, vesicles


def polyadic():
    """Cell 1 on the left; cells 2 (y < 20) and 3 (y > 21) on the right; one cleft facing both."""
    seg = np.zeros((8, 48, 40), dtype=np.uint64)
    seg[:, :, :19] = 1
    seg[:, :20, 21:] = 2
    seg[:, 22:, 21:] = 3
    sites = np.zeros(seg.shape, dtype=np.uint32)
    sites[2:6, 8:40, 19:21] = 1
    vesicles = np.zeros(seg.shape, dtype=np.float32)
    vesicles[:, 4:44, 6:19] = 1.0
    return seg, sites, vesicles


def test_vesicle_side_decides_direction_and_measures_the_contact():
    seg, sites, vesicles = two_cells()
    (row,) = assign_by_vesicles(sites, seg, vesicles, voxel_size=VS)
    assert (row.site_id, row.pre_id, row.post_id, row.flag) == (7, 1, 2, "")
    # The 4 x 16 voxel cleft meets cell 2 with 64 faces of 40 x 8 nm.
    assert row.contact_area_nm2 == pytest.approx(64 * 40 * 8)
    assert row.size_voxels == 4 * 16 * 2 and row.size_nm3 == pytest.approx(128 * 40 * 8 * 8)
    assert row.weight == 1.0 and row.confidence == 1.0  # no signal on the other side
    # The row's centre is the middle of the cleft voxels facing the partner (x = 20).
    assert row.center == pytest.approx((3.5 * 40, 19.5 * 8, 20 * 8))
    assert row.pre_point[2] < 19 * 8 < 21 * 8 <= row.post_point[2]

    # Vesicles moved to cell 2: the direction flips.
    flipped = vesicles[:, :, ::-1].copy()
    (row,) = assign_by_vesicles(sites, seg, flipped, voxel_size=VS)
    assert (row.pre_id, row.post_id) == (2, 1)


def test_uint8_maps_read_as_probabilities_and_ties_give_zero_confidence():
    seg, sites, vesicles = two_cells()
    (row,) = assign_by_vesicles(sites, seg, (vesicles * 255).astype(np.uint8), voxel_size=VS)
    assert (row.pre_id, row.post_id, row.confidence) == (1, 2, 1.0)
    both = np.ones_like(vesicles)
    (row,) = assign_by_vesicles(sites, seg, both, voxel_size=VS)
    assert row.confidence == 0.0


def test_polyadic_site_gives_one_row_per_partner_sharing_the_site():
    seg, sites, vesicles = polyadic()
    rows = assign_by_vesicles(sites, seg, vesicles, voxel_size=VS)
    assert sorted((r.pre_id, r.post_id) for r in rows) == [(1, 2), (1, 3)]
    assert {r.site_id for r in rows} == {1} and len({r.pre_point for r in rows}) == 1
    # Cell 2 faces 12 rows of the cleft (y 8..19), cell 3 faces 18 (y 22..39); the two
    # membrane rows between them face neither.
    by_post = {r.post_id: r for r in rows}
    assert by_post[2].contact_area_nm2 == pytest.approx(4 * 12 * 40 * 8)
    assert by_post[3].contact_area_nm2 == pytest.approx(4 * 18 * 40 * 8)
    assert by_post[3].weight == pytest.approx(18 / 30) and by_post[2].weight == pytest.approx(12 / 30)
    assert by_post[2].center[1] < by_post[3].center[1]


def test_diffusion_splits_arrivals_between_polyadic_partners_and_is_seeded():
    seg, sites, vesicles = polyadic()
    rows = assign_by_diffusion(sites, seg, vesicles, voxel_size=VS, particles=2000, seed=3)
    weights = {r.post_id: r.weight for r in rows}
    assert set(weights) == {2, 3} and all(r.pre_id == 1 for r in rows)
    assert sum(weights.values()) == pytest.approx(1.0)
    # The larger face gets the larger share, near the area ratio 18 / 30.
    assert 0.5 < weights[3] < 0.72
    again = assign_by_diffusion(sites, seg, vesicles, voxel_size=VS, particles=2000, seed=3)
    assert again == rows
    other = assign_by_diffusion(sites, seg, vesicles, voxel_size=VS, particles=2000, seed=4)
    assert [r.weight for r in other] != [r.weight for r in rows]
    # A high share threshold keeps only the largest partner.
    (row,) = assign_by_diffusion(sites, seg, vesicles, voxel_size=VS, particles=2000,
                                 min_share=0.7, seed=3)
    assert row.post_id == 3 and row.weight == 1.0


def test_random_walk_steps_are_isotropic_in_nm_and_refuse_the_presynaptic_cell():
    # One free voxel with a different cell on each of its six faces: the first step decides
    # the arrival, so arrival shares are the step probabilities, 1 / v_a^2 normalised (the
    # variance of a step, p_a * v_a^2 nm^2, is then the same on every axis).
    seg = np.zeros((3, 3, 3), dtype=np.uint64)
    seg[0, 1, 1], seg[2, 1, 1] = 11, 12
    seg[1, 0, 1], seg[1, 2, 1] = 13, 14
    seg[1, 1, 0], seg[1, 1, 2] = 15, 16
    vs = np.array([40.0, 8.0, 8.0])
    n = 100_000
    walk = random_walk(seg, np.tile([1, 1, 1], (n, 1)), np.zeros(n, dtype=np.int64), [99],
                       voxel_size=vs, n_steps=1, keys=[1])
    shares = np.bincount(walk.cell, minlength=17)[11:] / n
    p = (1 / vs**2) / (1 / vs**2).sum() / 2
    np.testing.assert_allclose(shares, np.repeat(p, 2), atol=0.005)
    assert shares[0] == pytest.approx(0.0098, abs=0.002)  # z steps are 25x rarer
    assert (walk.before == 1).all() and walk.lost.sum() == 0

    # Cell 14 presynaptic: steps into it are refused, the walk goes on until it arrives
    # elsewhere; nobody ever arrives in 14.
    walk = random_walk(seg, np.tile([1, 1, 1], (n, 1)), np.zeros(n, dtype=np.int64), [14],
                       voxel_size=vs, n_steps=50, keys=[2])
    assert 14 not in walk.cell and len(walk.cell) == n


def test_particles_leaving_the_volume_are_lost():
    seg = np.zeros((1, 1, 5), dtype=np.uint64)
    seg[0, 0, 0] = 3  # presynaptic wall on one side, open volume face on the other
    walk = random_walk(seg, np.tile([0, 0, 2], (500, 1)), np.zeros(500, dtype=np.int64), [3],
                       voxel_size=(8, 8, 8), n_steps=10_000, keys=[0])
    assert len(walk.cell) == 0 and walk.lost.tolist() == [500] and walk.released.tolist() == [500]


def test_contact_method_takes_direction_from_interface_scores():
    seg, sites, _ = two_cells()
    table = extract_interfaces(seg, voxel_size=VS)
    assert table.ids.tolist() == [[1, 2]]
    (row,) = assign_by_contact(sites, seg, voxel_size=VS, interfaces=table,
                               scores=[[0.9, 0.2]])
    assert (row.pre_id, row.post_id, row.confidence) == (1, 2, 0.9)
    (row,) = assign_by_contact(sites, seg, voxel_size=VS, interfaces=table,
                               scores=[[0.1, 0.8]])
    assert (row.pre_id, row.post_id, row.confidence) == (2, 1, 0.8)
    with pytest.raises(ValueError, match=r"scores must be \(1, 2\)"):
        assign_by_contact(sites, seg, voxel_size=VS, interfaces=table, scores=[[0.1, 0.8]] * 2)


def test_contact_method_adds_polyadic_partners_above_min_score():
    seg, sites, _ = polyadic()
    table = extract_interfaces(seg, voxel_size=VS)
    pairs = [tuple(p) for p in table.ids.tolist()]
    assert pairs == [(1, 2), (1, 3), (2, 3)]
    scores = np.array([[0.6, 0.1], [0.9, 0.1], [0.2, 0.2]])
    rows = assign_by_contact(sites, seg, voxel_size=VS, interfaces=table, scores=scores)
    assert sorted((r.pre_id, r.post_id, r.confidence) for r in rows) == [(1, 2, 0.6), (1, 3, 0.9)]
    rows = assign_by_contact(sites, seg, voxel_size=VS, interfaces=table, scores=scores,
                             min_score=0.7)
    assert [(r.pre_id, r.post_id) for r in rows] == [(1, 3)]


def test_self_contact_and_background_are_flagged_not_counted():
    seg = np.zeros((6, 30, 30), dtype=np.uint64)
    seg[:, :, :14] = 4
    seg[:, :, 16:] = 4  # one cell on both sides of the membrane (a merge error)
    sites = np.zeros(seg.shape, dtype=np.uint32)
    sites[1:5, 8:22, 14:16] = 1
    seg2 = seg.copy()
    seg2[:, :, 16:] = 0  # the other side unlabelled
    sites[1:5, 2:5, 2:5] = 0
    ves = np.zeros(seg.shape, dtype=np.float32)
    ves[:, :, :14] = 1
    (row,) = assign_by_vesicles(sites, seg, ves, voxel_size=VS)
    assert (row.pre_id, row.post_id, row.flag, row.confidence) == (4, 4, "self_contact", 0.0)
    assert not row.counted
    (row,) = assign_by_vesicles(sites, seg2, ves, voxel_size=VS)
    assert (row.pre_id, row.post_id, row.flag) == (4, 0, "background")
    assert rows_to_pairs([row]) == [] and set(FLAGS) == {"", "self_contact", "background"}


def test_candidates_of_one_presynaptic_cell_group_into_sites():
    labels = group_sites([5, 5, 5, 6, 0, 0], [[0, 0, 0], [0, 0, 250], [0, 0, 500], [0, 0, 100],
                                              [0, 0, 0], [0, 0, 10]], distance_nm=300)
    # 5, 5, 5 chain within 300 nm; 6 is another cell; background never groups.
    assert labels.tolist() == [1, 1, 1, 2, 3, 4]


def test_same_pair_twice_at_one_site_is_two_synapses_unless_the_contacts_coincide():
    seg, sites, vesicles = two_cells(shape=(8, 120, 40))
    sites[:] = 0
    sites[2:6, 10:20, 19:21] = 1
    sites[2:6, 40:50, 19:21] = 2  # 240 nm further along the same membrane
    vesicles[:, 5:55, 8:19] = 1
    rows = assign_by_vesicles(sites, seg, vesicles, voxel_size=VS)
    assert [(r.site_id, r.pre_id, r.post_id) for r in rows] == [(1, 1, 2), (1, 1, 2)]
    merged = assign_by_vesicles(sites, seg, vesicles, voxel_size=VS, group_distance_nm=300)
    assert len(merged) == 2  # the two contacts are 240 nm apart: not one cleft
    apart = assign_by_vesicles(sites, seg, vesicles, voxel_size=VS, group_distance_nm=0)
    assert sorted(r.site_id for r in apart) == [1, 2]


def test_sparse_site_ids_are_kept():
    seg, sites, vesicles = two_cells()
    sites[sites == 7] = 2**31 + 5
    assert [i for i, _ in site_boxes(sites)] == [2**31 + 5]
    (row,) = assign_by_vesicles(sites, seg, vesicles, voxel_size=VS)
    assert row.site_id == 2**31 + 5


def test_bad_inputs_are_named():
    seg, sites, vesicles = two_cells()
    with pytest.raises(ValueError, match="do not match the segmentation"):
        assign_by_vesicles(sites[:, :-1], seg, vesicles, voxel_size=VS)
    with pytest.raises(ValueError, match="integer ids"):
        assign_by_vesicles(sites, seg.astype(np.float32), vesicles, voxel_size=VS)
    with pytest.raises(ValueError, match="presynaptic map"):
        assign_by_vesicles(sites, seg, vesicles[:-1], voxel_size=VS)
    with pytest.raises(ValueError, match="voxel_size"):
        assign_by_vesicles(sites, seg, vesicles, voxel_size=(40, 8))
    with pytest.raises(ValueError, match="unknown partner-assignment method 'magic'"):
        assign_partners("magic", sites, seg, voxel_size=VS)
    with pytest.raises(ValueError, match="needs a presynaptic"):
        assign_partners("diffusion", sites, seg, voxel_size=VS)
    with pytest.raises(ValueError, match="interface classifier"):
        assign_partners("contact", sites, seg, voxel_size=VS)
    assert assign_by_vesicles(np.zeros_like(sites), seg, vesicles, voxel_size=VS) == []
    assert assign_by_diffusion(np.zeros_like(sites), seg, vesicles, voxel_size=VS) == []


@pytest.mark.parametrize("voxel_size", [(40.0, 8.0, 8.0), (10.0, 10.0, 10.0)])
def test_phantom_partners_from_the_true_vesicle_clouds(voxel_size):
    from detection.synthetic.phantom import make_phantom

    shape = (24, 192, 192) if voxel_size[0] == 40 else (64, 160, 160)
    ph = make_phantom(shape, voxel_size=voxel_size, n_cells=20, n_synapses=30, seed=5)
    sites, _ = ndi.label(ph.synapse_labels > 0, structure=np.ones((3, 3, 3), bool))
    truth = [(s.pre_id, s.post_id) for s in ph.synapses]
    for method in ("vesicle", "diffusion"):
        rows = assign_partners(method, sites, ph.segmentation, voxel_size=voxel_size,
                               presynaptic=ph.vesicles, min_share=0.3) if method == "diffusion" \
            else assign_partners(method, sites, ph.segmentation, voxel_size=voxel_size,
                                 presynaptic=ph.vesicles)
        scores = connection_scores(rows_to_pairs(rows), truth)
        # Measured: vesicle 0.93-1.0, diffusion 0.85-0.96 on these phantoms.
        assert scores.recall >= 0.85, (method, scores)
        assert scores.precision >= 0.8, (method, scores)
        sites_of_rows = {r.site_id for r in rows}
        assert sites_of_rows <= set(np.unique(sites).tolist())


def test_site_interfaces_keep_the_contact_patch_at_the_site_and_label_it():
    from detection.partners import site_interfaces, site_scores
    from detection.synapses.features import FeatureSpec

    seg, sites, _ = two_cells(shape=(8, 80, 40))
    sites[:] = 0
    sites[2:6, 30:46, 19:21] = 7
    em = np.full(seg.shape, 160, dtype=np.uint8)
    em[:, :, 19:21] = 60
    spec = FeatureSpec(scales_nm=(10.0,), kinds=("gaussian",))
    local = site_interfaces(em, seg, sites, voxel_size=VS, spec=spec, near_nm=40,
                            synapse_labels=sites, pre_side={7: (2, 1)})
    assert local.site.tolist() == [7] and local.ids.tolist() == [[1, 2]]
    assert local.labels.tolist() == [2]  # B (cell 2) presynaptic
    assert local.features.shape == (1, len(local.names))
    # Only border voxels within 40 nm (5 pixels in y) of the site remain: y 25..50 of the
    # 80-pixel membrane; the interface's area shrinks to match.
    wide = site_interfaces(em, seg, sites, voxel_size=VS, spec=spec, near_nm=400)
    area = dict(zip(local.names, local.features[0]))
    wide_area = dict(zip(wide.names, wide.features[0]))
    key = next(n for n in local.names if "area" in n)
    assert area[key] < 0.5 * wide_area[key]

    class Fixed:
        metadata = {}

        def predict_scores(self, features, names=None):
            return np.tile([0.2, 0.9], (len(features), 1))

    assert site_scores(local, Fixed()) == {(7, 1, 2): 0.2, (7, 2, 1): 0.9}
    (row,) = assign_by_contact(sites, seg, voxel_size=VS, local_scores=site_scores(local, Fixed()))
    assert (row.pre_id, row.post_id, row.confidence) == (2, 1, 0.9)


def test_a_partner_holding_part_of_the_site_counts_despite_a_small_contact():
    seg, sites, vesicles = polyadic()
    sites[:] = 0
    sites[2:6, 4:20, 19:21] = 1  # cleft facing cell 2 over 16 rows
    sites[2:6, 22:26, 19:23] = 1  # and cell 3 over 4 rows, with a PSD inside cell 3
    rows = assign_by_vesicles(sites, seg, vesicles, voxel_size=VS, min_fraction=0.5)
    assert sorted(r.post_id for r in rows) == [2, 3]
    rows = assign_by_vesicles(sites, seg, vesicles, voxel_size=VS, min_fraction=0.5,
                              min_area_nm2=1e9)
    assert [r.post_id for r in rows] == [2]  # the largest contact always stays


def test_contact_method_counts_a_partner_holding_part_of_the_site_whatever_its_score():
    seg, sites, _ = polyadic()
    sites[:] = 0
    sites[2:6, 4:20, 19:21] = 1  # cleft facing cell 2 over 16 rows
    sites[2:6, 22:26, 19:23] = 1  # and cell 3 over 4 rows, with a PSD inside cell 3 (1/6)
    table = extract_interfaces(seg, voxel_size=VS)
    scores = np.array([[0.9, 0.1], [0.1, 0.1], [0.1, 0.1]])  # (1, 2), (1, 3), (2, 3)
    rows = assign_by_contact(sites, seg, voxel_size=VS, interfaces=table, scores=scores)
    assert sorted((r.pre_id, r.post_id, r.confidence) for r in rows) == [(1, 2, 0.9),
                                                                        (1, 3, 0.1)]
    rows = assign_by_contact(sites, seg, voxel_size=VS, interfaces=table, scores=scores,
                             min_inside=None)
    assert [(r.pre_id, r.post_id) for r in rows] == [(1, 2)]
    rows = assign_by_contact(sites, seg, voxel_size=VS, interfaces=table, scores=scores,
                             min_inside=0.2)  # cell 3 holds 32 of the 192 site voxels
    assert [(r.pre_id, r.post_id) for r in rows] == [(1, 2)]
    rows = assign_by_contact(sites, seg, voxel_size=VS, interfaces=table, scores=scores,
                             min_inside=0.16)
    assert sorted(r.post_id for r in rows) == [2, 3]


def test_vesicle_min_inside_sets_the_share_of_the_site_a_small_partner_must_hold():
    seg, sites, vesicles = polyadic()
    sites[:] = 0
    sites[2:6, 4:20, 19:21] = 1
    sites[2:6, 22:26, 19:23] = 1  # cell 3 holds 32 / 192 of the site
    rows = assign_by_vesicles(sites, seg, vesicles, voxel_size=VS, min_fraction=0.5,
                              min_inside=0.16)
    assert sorted(r.post_id for r in rows) == [2, 3]
    rows = assign_by_vesicles(sites, seg, vesicles, voxel_size=VS, min_fraction=0.5,
                              min_inside=0.2)
    assert [r.post_id for r in rows] == [2]


def test_diffusion_min_inside_adds_a_partner_holding_part_of_the_site():
    seg, sites, vesicles = polyadic()
    sites[:] = 0
    sites[2:6, 4:20, 19:21] = 1
    sites[2:6, 22:26, 19:23] = 1  # cell 3 holds 32 / 192 of the site
    rows = assign_by_diffusion(sites, seg, vesicles, voxel_size=VS, min_share=0.9, seed=3)
    assert [(r.pre_id, r.post_id) for r in rows] == [(1, 2)]
    rows = assign_by_diffusion(sites, seg, vesicles, voxel_size=VS, min_share=0.9,
                               min_inside=0.16, seed=3)
    assert sorted((r.pre_id, r.post_id) for r in rows) == [(1, 2), (1, 3)]
    assert sum(r.weight for r in rows) == pytest.approx(1.0)
    assert rows[0].post_id == 2 and rows[0].weight > rows[1].weight
    rows = assign_by_diffusion(sites, seg, vesicles, voxel_size=VS, min_share=0.9,
                               min_inside=0.2, seed=3)
    assert [(r.pre_id, r.post_id) for r in rows] == [(1, 2)]


def test_diffusion_keeps_a_partner_holding_part_of_the_site_that_no_particle_reached():
    seg, sites, vesicles = polyadic()
    sites[:] = 0
    sites[2:6, 4:20, 19:21] = 1
    sites[2:6, 22:26, 19:23] = 1
    # Two particles of two steps reach no cell: without min_inside the site is unpartnered
    # (a flagged self-contact row), with it cell 3 is a partner without arrivals.
    (row,) = assign_by_diffusion(sites, seg, vesicles, voxel_size=VS, particles=2, n_steps=2)
    assert (row.pre_id, row.post_id, row.flag) == (1, 1, "self_contact")
    (row,) = assign_by_diffusion(sites, seg, vesicles, voxel_size=VS, particles=2, n_steps=2,
                                 min_inside=0.16)
    assert (row.pre_id, row.post_id, row.flag) == (1, 3, "")
    assert (row.weight, row.confidence, row.contact_area_nm2) == (0.0, 0.0, 8704.0)
