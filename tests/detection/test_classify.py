"""The voxel classifier: targets, cleaning, context cues, the cascade, block-wise prediction."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from detection.blockwise import predict_probability
from detection.synapses.classify import (
    ModelMismatchError,
    TrainingParameters,
    VoxelClassifier,
    clean_targets,
    labels_to_targets,
    region_features,
    train_from_samples,
    train_voxel_classifier,
)
from detection.synapses.context import ContextSpec, context_features, sheet_normals
from detection.synapses.features import FeatureSpec
from detection.synthetic.phantom import make_phantom

VOXEL = (40.0, 8.0, 8.0)
SMALL_SPEC = FeatureSpec(scales_nm=(10.0, 20.0, 40.0))


def test_label_conventions():
    labels = np.array([[[0, 255, 7, 1, 2]]], dtype=np.uint8)
    np.testing.assert_array_equal(labels_to_targets(labels, convention="ccboost"), [[[0, 1, -1, -1, -1]]])
    np.testing.assert_array_equal(labels_to_targets(labels, convention="binary"), [[[0, 1, 1, 1, 1]]])
    np.testing.assert_array_equal(labels_to_targets(labels, convention="classes"), [[[-1, -1, -1, 0, 1]]])
    with pytest.raises(ValueError, match="unknown label convention 'cremi'"):
        labels_to_targets(labels, convention="cremi")


def test_clean_targets_erodes_and_bands_in_nm():
    targets = np.zeros((1, 1, 21), np.int8)
    targets[0, 0, 8:13] = 1                     # 5 positives, 8 nm voxels along x
    cleaned = clean_targets(targets, voxel_size=VOXEL, erode_nm=8.0, ignore_band_nm=16.0)
    np.testing.assert_array_equal(
        cleaned[0, 0],
        [0, 0, 0, 0, 0, 0, -1, -1, -1, 1, 1, 1, -1, -1, -1, 0, 0, 0, 0, 0, 0],
    )


def test_sheet_normals_point_across_a_membrane():
    volume = np.full((9, 40, 40), 200.0)
    volume[:, :, 18:21] = 40.0                 # a dark sheet normal to x
    smoothed = ndimage.gaussian_filter(volume, (0.4, 2, 2))
    normals = sheet_normals(smoothed, voxel_size=VOXEL)
    np.testing.assert_allclose(np.abs(normals[:, 4, 20, 19]), [0, 0, 1], atol=1e-3)
    volume = np.full((30, 30, 30), 200.0)
    volume[14:16] = 40.0                       # normal to z, isotropic voxels
    normals = sheet_normals(ndimage.gaussian_filter(volume, 2), voxel_size=(8, 8, 8),
                            grid=np.s_[::2, ::2, ::2])
    assert normals.shape == (3, 15, 15, 15)
    np.testing.assert_allclose(np.abs(normals[:, 7, 7, 7]), [1, 0, 0], atol=1e-3)


def test_oriented_cues_see_both_sides_of_a_sheet():
    volume = np.full((5, 40, 60), 150.0, dtype=np.float32)
    volume[:, :, 28:31] = 30.0                 # membrane normal to x
    volume[:, :, 20:28] = 90.0                 # darker band on the left (a "PSD" side)
    channels = np.stack([volume, ndimage.gaussian_filter(volume, (0.3, 2, 2))])
    spec = ContextSpec(channels=("raw",), orientation_channel="smooth", offsets_nm=(48.0,),
                       shells_nm=(16.0,))
    cues = context_features(channels, ["raw", "smooth"], voxel_size=VOXEL, spec=spec)
    assert spec.names() == ["ctx_max(raw)@48nm", "ctx_min(raw)@48nm", "ctx_shell(raw)@16nm"]
    # 48 nm = 6 voxels either side of x = 29: x = 23 (90) and x = 35 (150).
    assert cues[0, 2, 20, 29] == 150.0 and cues[1, 2, 20, 29] == 90.0
    # On a 2-voxel grid starting at global x = 1 (offset 1), local x = 29 is grid column 14.
    on_grid = context_features(channels, ["raw", "smooth"], voxel_size=VOXEL, spec=spec,
                               step=(1, 2, 2), offset=(0, 0, 1))
    assert on_grid.shape == (3, 5, 20, 30)
    assert on_grid[0, 2, 10, 14] == 150.0 and on_grid[1, 2, 10, 14] == 90.0


def _phantom(seed, shape=(16, 128, 128)):
    return make_phantom(shape, voxel_size=VOXEL, n_cells=14, n_synapses=14, seed=seed)


@pytest.fixture(scope="module")
def trained():
    ph = _phantom(1)
    targets = clean_targets(labels_to_targets(ph.synapse_labels, convention="binary"),
                            voxel_size=VOXEL, ignore_band_nm=16.0)
    return train_voxel_classifier(ph.em, targets, voxel_size=VOXEL, feature_spec=SMALL_SPEC,
                                  parameters=TrainingParameters(n_estimators=60, max_samples=60_000))


def test_classifier_separates_synapses_on_a_new_volume(trained):
    ph = _phantom(2)
    probability = trained.predict_region(ph.em)
    auc = roc_auc_score(ph.synapse_labels.ravel() > 0, probability.ravel())
    assert auc > 0.95
    assert probability[ph.synapse_labels > 0].mean() > 0.5 > probability[ph.segmentation > 0].mean()


def test_blockwise_prediction_equals_the_whole_region(trained):
    volume = _phantom(3).em
    whole = trained.predict_region(volume)
    assert trained.grid_step == (2, 2, 2) or trained.grid_step == (1, 2, 2)
    for block in [(8, 50, 64), (16, 34, 128)]:
        blocked = predict_probability(volume, trained, block_shape=block)
        # Features agree to float32 rounding; a voxel whose feature sits exactly on a split
        # threshold may fall the other way, so allow a few such voxels.
        differ = np.abs(blocked - whole) > 1e-5
        assert differ.mean() < 1e-4, differ.sum()


def test_model_file_round_trip_and_voxel_size_check(trained, tmp_path):
    path = trained.save(tmp_path / "synapses.model")
    loaded = VoxelClassifier.load(path, voxel_size=VOXEL)
    volume = _phantom(4).em[:, :48, :48]
    np.testing.assert_array_equal(loaded.predict_region(volume), trained.predict_region(volume))
    assert loaded.feature_names == trained.feature_names
    with pytest.raises(ModelMismatchError, match=r"trained on voxels of \(40\.0, 8\.0, 8\.0\) nm .* \(50\.0, 4\.6, 4\.6\)"):
        VoxelClassifier.load(path, voxel_size=(50, 4.6, 4.6))
    VoxelClassifier.load(path, voxel_size=(50, 4.6, 4.6), allow_other_voxel_size=True)
    (tmp_path / "junk.model").write_bytes(b"\x00garbage")
    with pytest.raises(ModelMismatchError, match="junk.model: cannot read model file"):
        VoxelClassifier.load(tmp_path / "junk.model")


def test_region_features_layout(trained):
    volume = _phantom(5).em[:, :40, :40]
    feats = region_features(volume, voxel_size=VOXEL, feature_spec=trained.feature_spec,
                            context_spec=trained.context_spec, step=(1, 2, 2))
    assert feats.shape == (len(trained.feature_names), 16, 20, 20)
    assert feats.dtype == np.float32


@pytest.mark.parametrize("pooled", ["smoothed intensities", "other channels"])
def test_region_features_of_a_core_equal_the_whole_region(trained, pooled):
    volume = _phantom(6, shape=(14, 96, 100)).em
    context = trained.context_spec
    if pooled == "other channels":
        # cues of a channel that is not a smoothed intensity: every channel over the reach
        context = ContextSpec(channels=("gradient_magnitude@10nm",),
                              orientation_channel="gaussian@40nm", offsets_nm=(40.0,),
                              shells_nm=(60.0,))
    kwargs = dict(voxel_size=VOXEL, feature_spec=trained.feature_spec, context_spec=context,
                  step=(1, 2, 2), offset=(5, 3, 0))
    whole = region_features(volume, **kwargs)
    # offset (5, 3, 0): grid voxels at odd local y, even local x
    core = (slice(4, 9), slice(30, 61), slice(41, 80))
    part = region_features(volume, core=core, **kwargs)
    expected = whole[:, 4:9, 15:30, 21:40]
    assert part.shape == expected.shape
    np.testing.assert_allclose(part, expected, rtol=1e-5, atol=1e-3)


def test_context_features_of_a_core_equal_the_whole_region():
    rng = np.random.default_rng(3)
    channels = ndimage.gaussian_filter(rng.random((2, 10, 50, 60)), (0, 0.5, 2, 2)).astype(np.float32)
    spec = ContextSpec(channels=("a",), orientation_channel="b", offsets_nm=(16.0, 40.0),
                       shells_nm=(24.0, 48.0))
    kwargs = dict(voxel_size=VOXEL, spec=spec, step=(1, 2, 2), offset=(0, 1, 0))
    whole = context_features(channels, ["a", "b"], **kwargs)
    part = context_features(channels, ["a", "b"], core=(slice(2, 7), slice(10, 31), slice(6, 40)),
                            **kwargs)
    # global y = local y + 1: grid rows at odd local y, from 11 (row 5) to 29 (row 14)
    np.testing.assert_array_equal(part, whole[:, 2:7, 5:15, 3:20])


def test_hard_negatives_teach_what_random_negatives_miss():
    # Positives are bright in feature 0; random negatives are dim. Hard negatives are as bright
    # as positives but differ in feature 1, which random negatives never show the model.
    rng = np.random.default_rng(0)
    positives = np.c_[rng.normal(3, 0.5, 600), rng.normal(0, 0.5, 600)]
    negatives = np.c_[rng.normal(0, 0.5, 2400), rng.normal(0, 0.5, 2400)]
    hard = np.c_[rng.normal(3, 0.5, 1200), rng.normal(2, 0.5, 1200)]
    pool = np.r_[np.c_[rng.normal(0, 0.5, 4000), rng.normal(0, 0.5, 4000)], hard].astype(np.float32)
    X = np.r_[positives, negatives].astype(np.float32)
    y = np.r_[np.ones(600), np.zeros(2400)]
    spec = FeatureSpec(scales_nm=(10.0,), kinds=("gaussian", "gradient_magnitude"))
    kwargs = dict(voxel_size=VOXEL, feature_spec=spec, context_spec=ContextSpec())
    test_hard = np.c_[rng.normal(3, 0.5, 300), rng.normal(2, 0.5, 300)].astype(np.float32)
    test_positive = np.c_[rng.normal(3, 0.5, 300), rng.normal(0, 0.5, 300)].astype(np.float32)
    plain = train_from_samples(X, y, parameters=TrainingParameters(n_estimators=200), pool=pool,
                               **kwargs)
    assert plain.training["n_hard_negatives"] == 0
    assert np.median(plain.predict_proba(test_hard)) > 0.5
    boosted = train_from_samples(X, y, pool=pool, parameters=TrainingParameters(
        n_estimators=200, hard_negative_rounds=2), **kwargs)
    # the first round takes the 2 x 600 highest-scoring pool rows above 0.5: nearly all hard
    assert 1000 <= boosted.training["n_hard_negatives"] <= 2400
    assert np.median(boosted.predict_proba(test_hard)) < 0.1
    assert np.median(boosted.predict_proba(test_positive)) > 0.8


def test_the_screen_passes_a_minority_of_real_voxels_and_keeps_the_synapses():
    """On real ssTEM data the screen must leave most voxels to its own score (at the main
    model's learning rate its 12 trees passed every voxel of this volume to the full model),
    while passing the synapses' voxels."""
    import h5py

    from tests.conftest import shared_file

    with h5py.File(shared_file("vnc_sstem_train.h5"), "r") as f:
        em = f["volumes/raw"][:, :512, :320]
        voxel = tuple(float(v) for v in f["volumes/raw"].attrs["resolution"])
        mask = f["volumes/labels/synapse_mask"][:, :512, :320]
    targets = clean_targets(labels_to_targets(mask, convention="binary"), voxel_size=voxel,
                            ignore_band_nm=16.0)
    model = train_voxel_classifier(em, targets, voxel_size=voxel,
                                   parameters=TrainingParameters(n_estimators=20))
    feats = region_features(em, voxel_size=voxel, feature_spec=model.feature_spec,
                            context_spec=model.context_spec, step=model.grid_step)
    samples = np.ascontiguousarray(feats.reshape(feats.shape[0], -1).T)
    passed = model.screen.predict(samples) >= model.screen_threshold
    assert passed.mean() < 0.5, passed.mean()
    on_grid = targets[tuple(slice(0, None, g) for g in model.grid_step)].ravel()
    assert passed[on_grid == 1].mean() > 0.95, passed[on_grid == 1].mean()


def test_site_balance_draws_small_synapses_more_often():
    from detection.synapses.classify import sample_training_voxels

    targets = np.zeros((4, 64, 64), np.int8)
    targets[1:3, 4:36, 4:36] = 1          # a large synapse: 2048 voxels
    targets[1, 50:54, 50:54] = 1          # a small one: 16 voxels (128 times smaller)
    targets[1:3, 40:44, 4:36] = 1         # a median-sized one: 256 voxels
    small = np.zeros(targets.shape, bool)
    small[1, 50:54, 50:54] = True
    rng = np.random.default_rng(0)
    plain = sample_training_voxels(targets, negatives_per_positive=1, max_samples=100_000, rng=rng)
    balanced = sample_training_voxels(targets, negatives_per_positive=1, max_samples=100_000,
                                      rng=rng, site_balance=1.0)
    share = lambda chosen: small.ravel()[chosen].sum() / (targets.ravel()[chosen] == 1).sum()
    assert share(plain) == pytest.approx(16 / 2320)
    # Median 256 voxels: the small synapse's voxels weigh 8 (the bound), the others 1.
    assert share(balanced) == pytest.approx(16 * 8 / (16 * 8 + 2304), rel=0.25)
