import numpy as np
import pytest

from detection.synapses.candidates import (
    CandidateClassifier,
    CandidateFeatureSpec,
    candidate_features,
    candidate_targets,
    feature_names,
    filter_labels,
)

VOXEL = (50.0, 5.0, 5.0)


def _two_instances():
    labels = np.zeros((3, 40, 40), np.int64)
    labels[0:2, 5:7, 5:7] = 1          # 2 sections x 2 x 2 = 8 voxels
    labels[1, 25:30, 20:30] = 2        # 1 section x 5 x 10 = 50 voxels
    probability = np.zeros(labels.shape)
    probability[labels == 1] = 0.8
    probability[0, 5, 5] = 1.0         # instance 1: seven at 0.8, one at 1.0
    probability[labels == 2] = np.linspace(0.0, 0.98, 50)
    em = np.full(labels.shape, 50.0)
    em[labels == 1] = 10.0
    em[labels == 2] = 30.0
    return labels, probability, em


def test_features_known_values():
    labels, probability, em = _two_instances()
    spec = CandidateFeatureSpec(shell_nm=20.0, smooth_nm=0.0)
    X = candidate_features(labels, probability, em, voxel_size=VOXEL, spec=spec)
    f = dict(zip(feature_names(), X.T))
    assert X.shape == (2, len(feature_names()))
    np.testing.assert_allclose(f["log_size"], np.log10([8, 50]))
    np.testing.assert_array_equal(f["sections"], [2, 1])
    np.testing.assert_allclose(f["log_max_area"], np.log10([4, 50]))
    np.testing.assert_allclose(f["extent_nm"], [np.hypot(10, 10), np.hypot(25, 50)])
    np.testing.assert_allclose(f["p_mean"], [(7 * 0.8 + 1.0) / 8, 0.49])
    np.testing.assert_allclose(f["p_max"], [1.0, 0.98])
    # Lower quantiles: index floor(q * (n - 1)) of the sorted values.
    np.testing.assert_allclose(f["p_q50"], [0.8, 0.98 * 24 / 49])
    np.testing.assert_allclose(f["p_q90"], [0.8, 0.98 * 44 / 49])
    np.testing.assert_allclose(f["p_frac_0.9"], [1 / 8, 5 / 50])
    np.testing.assert_allclose(f["p_shell_mean"], [0.0, 0.0])
    np.testing.assert_allclose(f["em_in_mean"], [10.0, 30.0])
    np.testing.assert_allclose(f["em_shell_mean"], [50.0, 50.0])
    np.testing.assert_allclose(f["em_contrast"], [40.0, 20.0])
    np.testing.assert_allclose(f["em_in_std"], [0.0, 0.0], atol=1e-9)


def test_shell_is_in_plane_and_of_the_nearest_instance():
    labels, probability, em = _two_instances()
    # Probability 0.5 on the background right next to instance 1 in section 0, two voxels off.
    probability[0, 5, 8] = 0.5
    spec = CandidateFeatureSpec(shell_nm=10.0, smooth_nm=0.0)
    X = candidate_features(labels, probability, em, voxel_size=VOXEL, spec=spec)
    f = dict(zip(feature_names(), X.T))
    assert f["p_shell_max"][0] == 0.5
    # Shell of instance 1 within 10 nm (2 voxels, Euclidean) in each of its two sections: the
    # 6 x 6 box less the 2 x 2 square and the 3 voxels beyond 2 in each corner, 20 voxels; the
    # 0.5 voxel is one of 40.
    np.testing.assert_allclose(f["p_shell_mean"][0], 0.5 / 40)
    assert f["p_shell_max"][1] == 0.0


def test_targets_and_filter():
    labels, _, _ = _two_instances()
    labels[2, 35:38, 35:38] = 3
    labels[2, 0:2, 30:32] = 4
    gt = np.zeros_like(labels)
    gt[1, 6, 6] = 7                    # touches instance 1
    ignore = np.zeros(labels.shape, bool)
    ignore[2, 34:39, 34:39] = True     # holds instance 3 whole
    ignore[2, 0, 30:32] = True         # holds half of instance 4
    np.testing.assert_array_equal(candidate_targets(labels, gt, ignore), [1, 0, -1, 0])
    np.testing.assert_array_equal(candidate_targets(labels, gt), [1, 0, 0, 0])
    kept = filter_labels(labels, np.array([0.9, 0.2, 0.5, 0.49]), 0.5)
    assert set(np.unique(kept)) == {0, 1, 3}
    np.testing.assert_array_equal(kept == 1, labels == 1)


@pytest.mark.parametrize("kind, c", [("logistic", 1.0), ("trees", 50.0)])
def test_classifier_separates_and_round_trips(tmp_path, kind, c):
    rng = np.random.default_rng(0)
    n = len(feature_names())
    X = rng.normal(size=(200, n))
    y = (X[:, 4] > 0.5).astype(int)    # the truth depends on one feature only
    y[:5] = -1                          # unknown candidates are not used
    X[10, 3] = np.nan                   # nan features are filled
    model = CandidateClassifier(kind=kind, c=c).fit(X, y)
    test = rng.normal(size=(100, n))
    truth = test[:, 4] > 0.5
    p = model.predict_proba(test)
    assert ((p >= 0.5) == truth).mean() > 0.9
    loaded = CandidateClassifier.load(model.save(tmp_path / "c.json"))
    np.testing.assert_allclose(loaded.predict_proba(test), p)
    assert model.predict_proba(np.zeros((0, n))).shape == (0,)


def test_classifier_needs_both_classes():
    with pytest.raises(ValueError):
        CandidateClassifier().fit(np.zeros((4, len(feature_names()))), np.array([0, 0, -1, 0]))


def test_classifier_reads_only_the_features_it_uses(tmp_path):
    rng = np.random.default_rng(1)
    names = feature_names()
    X = rng.normal(size=(100, len(names)))
    y = (X[:, names.index("log_size")] > 0).astype(int)
    model = CandidateClassifier(use=("log_size",)).fit(X, y)
    other = X.copy()
    other[:, names.index("p_mean")] += 100.0   # a feature it does not read
    np.testing.assert_allclose(model.predict_proba(other), model.predict_proba(X))
    assert model.coef.shape == (1,) and model.coef[0] > 0
    assert CandidateClassifier.load(model.save(tmp_path / "m.json")).use == ("log_size",)
    with pytest.raises(ValueError):
        model.predict_proba(X[:, :3])
