from collections import Counter

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from detection.synapses.interfaces import (
    InterfaceClassifier,
    InterfaceModelMismatchError,
    extract_interfaces,
    interface_features,
    interface_subvolumes,
    label_interfaces,
    swap_sides,
    train_interface_classifier,
)


def _pairs(table):
    return [tuple(int(v) for v in row) for row in table.ids]


# --- extraction ------------------------------------------------------------------------------


def test_touching_cubes_area_in_nm2_depends_on_face_orientation():
    vs = (40.0, 8.0, 4.0)
    # Contact normal to x: 6 x 5 faces of vz * vy each.
    seg = np.zeros((6, 5, 10), dtype=np.uint32)
    seg[:, :, :4] = 1
    seg[:, :, 4:] = 2
    table = extract_interfaces(seg, voxel_size=vs, min_area_nm2=0)
    assert _pairs(table) == [(1, 2)]
    assert table.area_nm2[0] == pytest.approx(6 * 5 * 40 * 8)
    np.testing.assert_allclose(table.area_axes_nm2[0], [0, 0, 6 * 5 * 40 * 8])
    np.testing.assert_allclose(table.centroid_nm[0], [2.5 * 40, 2 * 8, 3.5 * 4])
    np.testing.assert_array_equal(table.bbox_min[0], [0, 0, 3])
    np.testing.assert_array_equal(table.bbox_max[0], [6, 5, 5])
    assert table.n_border_voxels[0] == 2 * 6 * 5
    # Side of each border voxel: x = 3 is segment 1 (A), x = 4 segment 2 (B).
    vox, side = table.border_voxels(0), table.border_sides(0)
    np.testing.assert_array_equal(side, (vox[:, 2] == 4).astype(np.int8))

    # Same cubes stacked in z: faces normal to z weigh vy * vx = 32 nm^2, not 320.
    seg = np.zeros((10, 5, 6), dtype=np.uint32)
    seg[:4] = 1
    seg[4:] = 2
    table = extract_interfaces(seg, voxel_size=vs, min_area_nm2=0)
    assert table.area_nm2[0] == pytest.approx(5 * 6 * 8 * 4)
    np.testing.assert_allclose(table.centroid_nm[0], [3.5 * 40, 2 * 8, 2.5 * 4])


def test_min_area_drops_small_contacts():
    seg = np.zeros((4, 4, 8), dtype=np.uint16)
    seg[:, :, :4] = 1
    seg[:, :, 4:] = 2
    seg[0, 0, 4] = 3  # a one-voxel segment in a corner of segment 2
    table = extract_interfaces(seg, voxel_size=(10, 10, 10), min_area_nm2=350)
    assert _pairs(table) == [(1, 2)]
    table = extract_interfaces(seg, voxel_size=(10, 10, 10), min_area_nm2=0)
    assert _pairs(table) == [(1, 2), (1, 3), (2, 3)]
    # 3 touches 1 through one x face and 2 through an x, a y and a z face; 1 | 2 lost one.
    np.testing.assert_allclose(table.area_nm2, [1500, 100, 300])


def test_faces_match_brute_force_on_random_labels():
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 7, size=(4, 5, 6))
    seg = np.kron(coarse, np.ones((3, 2, 2), dtype=np.int64))[:11, :9, :11].astype(np.uint64)
    seg[seg == 6] = np.uint64(2**63 + 5)  # ids beyond 32 bits take the general path
    vs = (30.0, 6.0, 5.0)
    face = (6.0 * 5.0, 30.0 * 5.0, 30.0 * 6.0)
    table = extract_interfaces(seg, voxel_size=vs, min_area_nm2=0, max_gap_voxels=0)

    area, voxels = Counter(), {}
    for axis in range(3):
        a = np.moveaxis(seg, axis, 0)
        for i in range(a.shape[0] - 1):
            for idx in zip(*np.nonzero((a[i] != a[i + 1]) & (a[i] > 0) & (a[i + 1] > 0))):
                la, lb = int(a[i][idx]), int(a[i + 1][idx])
                key = (min(la, lb), max(la, lb))
                area[key] += face[axis]
                for k in (i, i + 1):
                    v = [k, *idx]
                    voxels.setdefault(key, set()).add(tuple(np.array(v)[np.argsort([axis, *[
                        ax for ax in range(3) if ax != axis]])]))
    assert _pairs(table) == sorted(area)
    np.testing.assert_allclose(table.area_nm2, [area[k] for k in sorted(area)])
    for i, key in enumerate(sorted(area)):
        assert {tuple(v) for v in table.border_voxels(i).tolist()} == voxels[key]
        np.testing.assert_array_equal(table.bbox_min[i], np.min(list(voxels[key]), axis=0))


@pytest.mark.parametrize("membrane", [0, 2])
def test_three_segments_in_a_row_give_two_interfaces(membrane):
    seg = np.zeros((5, 6, 3 * 6 + 2 * membrane), dtype=np.uint32)
    seg[:, :, :6] = 1
    seg[:, :, 6 + membrane:12 + membrane] = 2
    seg[:, :, 12 + 2 * membrane:] = 3
    table = extract_interfaces(seg, voxel_size=(10, 10, 10), min_area_nm2=0)
    assert _pairs(table) == [(1, 2), (2, 3)]
    np.testing.assert_allclose(table.area_nm2, [5 * 6 * 100] * 2)


@pytest.mark.parametrize("gap, found", [(1, True), (2, True), (4, True), (5, False)])
def test_membrane_gap_is_bridged_up_to_max_gap(gap, found):
    vs = (10.0, 10.0, 10.0)
    seg = np.zeros((6, 7, 8 + gap + 8), dtype=np.uint32)
    seg[:, :, :8] = 1
    seg[:, :, 8 + gap:] = 2
    table = extract_interfaces(seg, voxel_size=vs, min_area_nm2=0)  # default max_gap_voxels=4
    if not found:
        assert len(table) == 0
        return
    assert _pairs(table) == [(1, 2)]
    # One sheet of faces across the membrane: the plane's true area, whatever the gap.
    assert table.area_nm2[0] == pytest.approx(6 * 7 * 100)
    # The faces sit on the mid-line of the membrane (within half a voxel).
    midline_x = (7 + (8 + gap)) / 2 * 10
    assert abs(table.centroid_nm[0, 2] - midline_x) <= 5.0 + 1e-9
    # Filled membrane voxels carry the nearer segment's id, border voxels those two.
    assert set(np.unique(table.labels[table.border_voxels(0)[:, 0], table.border_voxels(0)[:, 1],
                                      table.border_voxels(0)[:, 2]]).tolist()) == {1, 2}
    assert len(extract_interfaces(seg, voxel_size=vs, min_area_nm2=0, max_gap_voxels=0)) == 0


def test_membrane_junction_is_split_between_pairs():
    # Three cells meeting at a T of 2-voxel membranes: three pairs, the junction shared.
    seg = np.zeros((3, 20, 22), dtype=np.uint32)
    seg[:, :9, :10] = 1
    seg[:, :9, 12:] = 2
    seg[:, 11:, :] = 3
    table = extract_interfaces(seg, voxel_size=(10, 10, 10), min_area_nm2=0)
    assert _pairs(table) == [(1, 2), (1, 3), (2, 3)]
    # Each border voxel is the border of a pair it lies next to, never of a far pair.
    for i, (a, b) in enumerate(_pairs(table)):
        labs = table.labels[tuple(table.border_voxels(i).T)]
        assert set(np.unique(labs).tolist()) == {a, b}


def test_in_plane_only_ignores_z_neighbours_of_per_section_labels():
    # Per-section labels: section z holds cells 10z+1 (x < 6) and 10z+2 (x >= 8), 2-voxel
    # membrane between; ids differ from section to section although the cells continue.
    vs = (50.0, 4.6, 4.6)
    seg = np.zeros((4, 9, 14), dtype=np.uint64)
    for z in range(4):
        seg[z, :, :6] = 10 * z + 1
        seg[z, :, 8:] = 10 * z + 2
    full = extract_interfaces(seg, voxel_size=vs, min_area_nm2=0)
    assert (1, 11) in _pairs(full)  # a z-neighbour with another id looks like a contact
    table = extract_interfaces(seg, voxel_size=vs, min_area_nm2=0, in_plane_only=True)
    assert _pairs(table) == [(10 * z + 1, 10 * z + 2) for z in range(4)]
    # In-plane faces normal to x: 9 rows of vz * vy each.
    np.testing.assert_allclose(table.area_nm2, 9 * 50 * 4.6)
    assert (table.bbox_max[:, 0] - table.bbox_min[:, 0] == 1).all()

    # Gap filling stays within sections: a cell present only in section 0 does not reach
    # across the empty section 1 when contacts are in-plane.
    seg = np.zeros((3, 6, 6), dtype=np.uint32)
    seg[0] = 1
    seg[2] = 2
    assert _pairs(extract_interfaces(seg, voxel_size=vs, min_area_nm2=0)) == [(1, 2)]
    assert len(extract_interfaces(seg, voxel_size=vs, min_area_nm2=0, in_plane_only=True)) == 0


def test_empty_and_invalid_inputs():
    table = extract_interfaces(np.zeros((3, 4, 5), np.uint8), voxel_size=(1, 1, 1))
    assert len(table) == 0 and table.voxels.shape == (0, 3)
    with pytest.raises(ValueError):
        extract_interfaces(np.zeros((4, 5), np.uint8), voxel_size=(1, 1, 1))
    with pytest.raises(ValueError):
        extract_interfaces(np.zeros((3, 4, 5), np.float32), voxel_size=(1, 1, 1))


def test_select_and_swapped_keep_border_voxels():
    seg = np.zeros((5, 6, 30), dtype=np.uint32)
    seg[:, :, :10], seg[:, :, 10:20], seg[:, :, 20:] = 1, 2, 3
    table = extract_interfaces(seg, voxel_size=(10, 10, 10), min_area_nm2=0)
    sub = table.select([1])
    assert _pairs(sub) == [(2, 3)]
    np.testing.assert_array_equal(sub.border_voxels(0), table.border_voxels(1))
    swapped = table.swapped()
    assert _pairs(swapped) == [(2, 1), (3, 2)]
    np.testing.assert_array_equal(swapped.voxel_side, 1 - table.voxel_side)


# --- subvolumes ------------------------------------------------------------------------------


def _half_spaces(shape=(24, 24, 60), split=30):
    seg = np.zeros(shape, dtype=np.uint32)
    seg[:, :, :split] = 1
    seg[:, :, split:] = 2
    return seg


@pytest.mark.parametrize("cumulative", [True, False])
def test_subvolume_sizes_at_40_80_160_nm(cumulative):
    seg = _half_spaces()
    vs = (10.0, 10.0, 10.0)
    table = extract_interfaces(seg, voxel_size=vs)
    sv = interface_subvolumes(table, 0, cumulative=cumulative)
    layer = 24 * 24
    # The border is one layer on each side (x = 29 and 30); A voxels at x = 29 - k lie k * 10 nm
    # from it, so the 40 nm ball holds 5 layers, the 80 nm one 9 and the 160 nm one 17.
    expected = [5, 9, 17] if cumulative else [5, 4, 8]
    np.testing.assert_array_equal(sv.sides.sum(axis=(2, 3, 4)), [np.multiply(expected, layer)] * 2)
    assert sv.border.sum() == 2 * layer
    np.testing.assert_allclose(sv.volumes_nm3(vs)[0], np.multiply(expected, layer) * 1000.0)
    lab = seg[sv.box]
    assert not (sv.sides[0] & (lab != 1)).any()
    assert not (sv.sides[1] & (lab != 2)).any()


def test_subvolumes_grow_monotonically_and_stay_in_their_segment():
    # Blocky random segments at anisotropic voxels: every interface's regions nest and stay
    # within the side's (filled) segment.
    rng = np.random.default_rng(5)
    seg = np.kron(rng.integers(1, 6, size=(4, 5, 5)), np.ones((3, 8, 8), dtype=np.int64))
    vs = (40.0, 8.0, 8.0)
    table = extract_interfaces(seg, voxel_size=vs)
    assert len(table) > 5
    for i in range(len(table)):
        sv = interface_subvolumes(table, i)
        sizes = sv.sides.sum(axis=(2, 3, 4))
        assert (np.diff(sizes, axis=1) > 0).all()
        assert (sv.sides[:, :-1] <= sv.sides[:, 1:]).all()
        lab = table.labels[sv.box]
        for s in range(2):
            assert (lab[sv.sides[s, -1]] == table.ids[i, s]).all()
        shells = interface_subvolumes(table, i, cumulative=False)
        np.testing.assert_array_equal(shells.sides.sum(axis=1) > 0, sv.sides[:, -1])
        assert (shells.sides.sum(axis=1) <= 1).all()


# --- features --------------------------------------------------------------------------------


def _channels_and_table(seed=0):
    rng = np.random.default_rng(seed)
    seg = np.zeros((8, 40, 40), dtype=np.uint32)
    seg[:, :, :18] = 1
    seg[:, :20, 20:] = 2
    seg[:, 22:, 20:] = 3
    vs = (40.0, 8.0, 8.0)
    table = extract_interfaces(seg, voxel_size=vs)
    channels = rng.normal(size=(3,) + seg.shape).astype(np.float32)
    channels[0] += 0.1 * np.arange(40)[None, None, :]  # a ramp, so sides differ
    return channels, table, vs


def test_swap_sides_is_an_involution_and_equals_recomputing_swapped():
    channels, table, vs = _channels_and_table()
    assert len(table) == 3
    feats, names = interface_features(channels, table, voxel_size=vs, channel_names=["a", "b", "c"])
    assert feats.shape == (3, len(names)) and feats.dtype == np.float32
    assert len(set(names)) == len(names)
    np.testing.assert_array_equal(swap_sides(swap_sides(feats, names), names), feats)
    swapped, _ = interface_features(channels, table.swapped(), voxel_size=vs,
                                    channel_names=["a", "b", "c"])
    np.testing.assert_array_equal(swap_sides(feats, names), swapped)
    # The A and B blocks really differ (the ramp), so the test above is not vacuous.
    a_mean = names.index("A@40nm/a/mean")
    b_mean = names.index("B@40nm/a/mean")
    assert abs(feats[0, a_mean] - feats[0, b_mean]) > 0.5
    # Symmetric columns do not move.
    border = [i for i, n in enumerate(names) if n.startswith(("border/", "shape/"))]
    np.testing.assert_array_equal(swapped[:, border], feats[:, border])


def test_feature_values_on_piecewise_constant_channels():
    seg = _half_spaces(shape=(6, 20, 40), split=20)
    vs = (10.0, 10.0, 10.0)
    table = extract_interfaces(seg, voxel_size=vs)
    ch = np.where(seg == 1, 1.0, 3.0).astype(np.float32)[None]
    feats, names = interface_features(ch, table, voxel_size=vs, channel_names=["i"])
    f = dict(zip(names, feats[0]))
    assert f["shape/area_nm2"] == pytest.approx(6 * 20 * 100)
    assert f["shape/area_plane_nm2"] == pytest.approx(6 * 20 * 100)
    assert f["shape/n_border_voxels"] == 2 * 6 * 20
    # Border voxel centres span 190 nm x 50 nm x 10 nm (two layers 10 nm apart).
    np.testing.assert_allclose([f["shape/extent0_nm"], f["shape/extent1_nm"],
                                f["shape/extent2_nm"]], [190, 50, 10], atol=1e-3)
    assert f["A@40nm/volume_nm3"] == pytest.approx(5 * 6 * 20 * 1000)
    assert f["A@160nm/i/mean"] == 1 and f["B@80nm/i/mean"] == 3
    assert f["A@40nm/i/var"] == 0 and f["A@40nm/i/skew"] == 0 and f["A@40nm/i/kurt"] == 0
    # Border: half ones, half threes.
    assert (f["border/i/q0"], f["border/i/q50"], f["border/i/q100"]) == (1, 2, 3)
    assert f["border/i/mean"] == 2 and f["border/i/var"] == 1
    assert f["border/i/skew"] == 0 and f["border/i/kurt"] == pytest.approx(-2)


def test_features_check_their_inputs():
    channels, table, vs = _channels_and_table()
    with pytest.raises(ValueError, match="voxel_size"):
        interface_features(channels, table, voxel_size=(40, 8, 4))
    with pytest.raises(ValueError, match="do not match"):
        interface_features(channels[:, :4], table, voxel_size=vs)
    with pytest.raises(ValueError, match="counterpart"):
        swap_sides(np.zeros((1, 2)), ["A@40nm/x/mean", "border/x/mean"])


# --- labels ----------------------------------------------------------------------------------


def test_label_interfaces_direction_from_pre_side():
    seg = np.zeros((4, 12, 30), dtype=np.uint32)
    seg[:, :, :9] = 1
    seg[:, :, 11:19] = 2
    seg[:, :, 21:] = 3
    vs = (40.0, 8.0, 8.0)
    table = extract_interfaces(seg, voxel_size=vs)
    assert _pairs(table) == [(1, 2), (2, 3)]
    syn = np.zeros(seg.shape, dtype=np.uint32)
    syn[1:3, 4:8, 9:11] = 7  # in the 1|2 membrane
    syn[1:3, 2:5, 19:21] = 9  # in the 2|3 membrane

    lab = label_interfaces(table, syn, pre_side={7: 2, 9: 2})
    np.testing.assert_array_equal(lab.labels, [2, 1])  # 2 is B of (1, 2) and A of (2, 3)
    np.testing.assert_array_equal(lab.synapse_id, [7, 9])
    assert lab.overlap_voxels[0] == 16
    lab = label_interfaces(table, syn, pre_side={7: (1, 2), 9: (3, 2)})
    np.testing.assert_array_equal(lab.labels, [1, 2])
    # A synapse of another pair does not label this interface.
    lab = label_interfaces(table, syn, pre_side={7: (1, 3), 9: 3})
    np.testing.assert_array_equal(lab.labels, [0, 2])
    lab = label_interfaces(table, syn > 0)
    np.testing.assert_array_equal(lab.labels, [-1, -1])
    # A synapse 5 voxels from the border is caught only with a wide enough margin.
    far = np.zeros(seg.shape, dtype=np.uint8)
    far[1:3, 4:8, 4] = 1
    assert label_interfaces(table, far, margin_nm=20).labels[0] == 0
    assert label_interfaces(table, far, margin_nm=40).labels[0] == -1


# --- classifier ------------------------------------------------------------------------------

SPEC_KW = {"scales_nm": (10.0, 40.0), "kinds": ("gaussian", "gradient_magnitude",
                                                "hessian_eigenvalues")}
TRAIN_KW = {"max_iter": 40, "max_leaf_nodes": 15, "max_bins": 63}


@pytest.fixture(scope="module")
def phantom_model():
    from detection.synapses.features import FeatureSpec
    from detection.synthetic.phantom import make_phantom

    spec = FeatureSpec(**SPEC_KW)
    sets = []
    for seed in (0, 1, 3):  # train on two phantoms, test on the third
        ph = make_phantom((24, 192, 192), voxel_size=(40.0, 8.0, 8.0), n_cells=30,
                          n_synapses=20, seed=seed)
        table = extract_interfaces(ph.segmentation, voxel_size=ph.voxel_size)
        pre = {s.synapse_id: (s.pre_id, s.post_id) for s in ph.synapses}
        labels = label_interfaces(table, ph.synapse_labels, pre_side=pre).labels
        feats, names = interface_features(ph.em, table, voxel_size=ph.voxel_size, spec=spec)
        sets.append((feats, labels))
    x = np.concatenate([f for f, _ in sets[:2]])
    y = np.concatenate([lab for _, lab in sets[:2]])
    # One thread: on a busy machine, OpenMP spinning costs more than it gains at this size.
    with threadpool_limits(1):
        model = train_interface_classifier(x, y, names=names, voxel_size=(40.0, 8.0, 8.0),
                                           spec=spec, **TRAIN_KW)
    return model, sets[2], names


def test_classifier_separates_synaptic_interfaces_on_a_held_out_phantom(phantom_model):
    from sklearn.metrics import roc_auc_score

    model, (feats, labels), names = phantom_model
    synaptic = labels > 0
    assert 10 <= synaptic.sum() < len(labels) // 2
    with threadpool_limits(1):
        scores = model.predict_scores(feats, names=names)
    assert scores.shape == (len(labels), 2)
    # Measured: AUC 0.980 and direction 100 % here (20 synaptic interfaces); 0.956-0.979 and
    # 89-100 % with phantom 4, 5 or 6 held out instead.
    assert roc_auc_score(synaptic, scores.max(axis=1)) > 0.9
    direction = np.argmax(scores[synaptic], axis=1) + 1
    assert np.mean(direction == labels[synaptic]) > 0.8
    # Scoring the swapped rows swaps the two scores.
    with threadpool_limits(1):
        np.testing.assert_allclose(model.predict_scores(swap_sides(feats, names)), scores[:, ::-1])
    assert model.metadata["feature_spec"]["scales_nm"] == [10.0, 40.0]


def test_save_load_round_trip_and_voxel_size_check(phantom_model, tmp_path):
    model, (feats, _), names = phantom_model
    path = model.save(tmp_path / "interfaces.model")
    loaded = InterfaceClassifier.load(path, voxel_size=(40, 8, 8))
    with threadpool_limits(1):
        np.testing.assert_array_equal(loaded.predict_scores(feats), model.predict_scores(feats))
    assert loaded.feature_names == names and loaded.metadata == model.metadata
    with pytest.raises(InterfaceModelMismatchError, match="allow_other_voxel_size"):
        InterfaceClassifier.load(path, voxel_size=(50, 4.6, 4.6))
    other = InterfaceClassifier.load(path, voxel_size=(50, 4.6, 4.6), allow_other_voxel_size=True)
    assert other.voxel_size == (40.0, 8.0, 8.0)
    with pytest.raises(InterfaceModelMismatchError):
        loaded.predict_scores(feats[:, :-1])
    (tmp_path / "junk").write_bytes(b"not a model\n")
    with pytest.raises(InterfaceModelMismatchError, match="cannot read"):
        InterfaceClassifier.load(tmp_path / "junk", voxel_size=(40, 8, 8))


def test_training_needs_both_classes_and_direction_unknown_labels_count_both_ways():
    channels, table, vs = _channels_and_table()
    feats, names = interface_features(channels, table, voxel_size=vs)
    with pytest.raises(ValueError, match="both"):
        train_interface_classifier(feats, [0, 0, 0], names=names, voxel_size=vs)
    with pytest.raises(ValueError, match="labels"):
        train_interface_classifier(feats, [0, 3, 0], names=names, voxel_size=vs)
    with threadpool_limits(1):
        model = train_interface_classifier(feats, [-1, 0, 0], names=names, voxel_size=vs,
                                           max_iter=5, min_samples_leaf=1)
    assert model.metadata["training"]["n_direction_unknown"] == 1
    scores = model.predict_scores(feats)
    assert scores[0].min() > scores[1:].max()
