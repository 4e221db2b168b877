"""Training with spatial cross-validation, the calibration it stores, and resampling to a
model's pixel."""

import numpy as np
import pytest

from detection.blockwise import iter_probability_blocks
from detection.errors import InputError
from detection.metrics import match_by_overlap
from detection.synapses.calibration import (
    HeldOut,
    PostProcessing,
    calibrate,
    count_table,
    f1_interval,
    wilson,
)
from detection.synapses.classify import TrainingParameters, train_voxel_classifier
from detection.synapses.features import FeatureSpec
from detection.synapses.instances import find_instances
from detection.synapses.resample import (
    ResampledModel,
    common_voxel_size,
    resample_ratio,
    to_model_lattice,
)
from detection.synapses.training import (
    DetectorOptions,
    TrainingVolume,
    check_training_volumes,
    spatial_folds,
    train_detector,
)
from detection.synthetic.phantom import make_phantom

SMALL = FeatureSpec(scales_nm=(10.0, 20.0, 40.0))
QUICK = TrainingParameters(n_estimators=40, max_samples=40_000)


def _volume(seed, shape=(16, 160, 160), voxel_size=(40.0, 8.0, 8.0), name=None):
    ph = make_phantom(shape, voxel_size=voxel_size, n_cells=14, n_synapses=16, seed=seed)
    return TrainingVolume(name=name or f"phantom {seed}", em=ph.em, voxel_size=voxel_size,
                          targets=(ph.synapse_labels > 0).astype(np.int8),
                          sites=ph.synapse_labels)


# --- resampling ------------------------------------------------------------------------------

def test_voxel_sizes_that_cannot_share_a_pixel_are_refused_by_name():
    assert common_voxel_size([(50, 4.6, 4.6), (50, 4, 4)]) == (50.0, 4.6, 4.6)
    with pytest.raises(InputError, match="'b' has sections of 40 nm and 'a' of 50 nm: sections cannot be resampled"):
        common_voxel_size([(50, 4, 4), (40, 4, 4)], names=["'a'", "'b'"])
    with pytest.raises(InputError, match="x pixels of 4 nm and the model 10 nm; .* not 2.50"):
        resample_ratio((50, 4, 10), (50, 4, 4))


def test_labels_resample_to_the_nearest_voxel_and_intensities_smoothly():
    labels = np.zeros((2, 40, 40), np.uint16)
    labels[:, 10:20, 10:20] = 7
    ratio = resample_ratio((50, 5, 5), (50, 4, 4))
    out = to_model_lattice(labels, ratio, order=0)
    assert out.shape == (2, 32, 32) and out.dtype == np.uint16
    assert set(np.unique(out)) == {0, 7}
    # Model pixel u lies at data coordinate 1.25 u: the square 10..19 covers u = 8..15.
    assert np.flatnonzero(out[0, 12] == 7).tolist() == list(range(8, 16))


@pytest.fixture(scope="module")
def model8():
    v = _volume(3)
    return train_voxel_classifier(v.em, v.targets, voxel_size=v.voxel_size, feature_spec=SMALL,
                                  parameters=QUICK)


def test_a_resampled_model_gives_the_same_probability_whatever_the_blocking(model8):
    data = make_phantom((12, 150, 170), voxel_size=(40.0, 7.0, 7.0), n_cells=12, n_synapses=10,
                        seed=5)
    wrapped = ResampledModel(model8, (40.0, 7.0, 7.0))
    assert wrapped.grid_step == (1, 1, 1)
    whole = wrapped.predict_region(data.em)
    assert whole.shape == data.em.shape
    for block in [(6, 64, 64), (12, 37, 101)]:
        blocked = np.zeros_like(whole)
        for box, p in iter_probability_blocks(data.em, wrapped, block_shape=block):
            blocked[box] = p
        differ = np.abs(blocked - whole) > 1e-5
        assert differ.mean() < 1e-4, differ.sum()
    # And it still finds the synapses of data at 7 nm.
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(data.synapse_labels.ravel() > 0, whole.ravel()) > 0.9


# --- checks and folds ------------------------------------------------------------------------

def test_training_volumes_are_checked_by_name():
    good = _volume(1, shape=(8, 96, 96))
    with pytest.raises(InputError, match="'dataset 2': the labels are \\(8, 96, 90\\) voxels but "
                                         "the EM is \\(8, 96, 96\\)"):
        check_training_volumes([good, TrainingVolume(
            name="'dataset 2'", em=good.em, voxel_size=good.voxel_size,
            targets=good.targets[..., :90])])
    with pytest.raises(InputError, match="'empty': the labels hold 0 synapse and .* voxels; "
                                         "training needs both"):
        check_training_volumes([TrainingVolume(name="'empty'", em=good.em,
                                               voxel_size=good.voxel_size,
                                               targets=np.zeros_like(good.targets))])
    with pytest.raises(InputError, match="'all': the labels hold .* synapse and 0 non-synapse"):
        check_training_volumes([TrainingVolume(name="'all'", em=good.em,
                                               voxel_size=good.voxel_size,
                                               targets=np.ones_like(good.targets))])
    assert check_training_volumes([good]) == (40.0, 8.0, 8.0)


def test_folds_hold_about_equal_numbers_of_sites():
    sites = np.zeros((4, 60, 300), np.uint32)
    for i, x in enumerate([10, 30, 50, 100, 120, 140, 200, 250, 280]):
        sites[1:3, 20:25, x:x + 4] = i + 1
    folds = spatial_folds(sites, 3, step=3)
    assert folds.axis == 2
    assert all(e % 3 == 0 for e in folds.edges[:-1]) and folds.edges[-1] == 300
    counts = np.bincount(list(folds.site_fold.values()), minlength=3)
    assert counts.tolist() == [3, 3, 3]


# --- calibration -----------------------------------------------------------------------------

def test_the_table_scores_as_the_stitcher_and_overlap_matching_do():
    rng = np.random.default_rng(0)
    probability = np.zeros((6, 80, 80), np.float32)
    sites = np.zeros(probability.shape, np.uint32)
    for i, (y, x, size) in enumerate([(10, 10, 6), (40, 40, 2), (60, 20, 4), (20, 60, 8)]):
        sites[2:4, y:y + size, x:x + size] = i + 1
        probability[2:4, y:y + size, x:x + size] = 0.85 + 0.1 * rng.random()
    probability[1, 70:75, 70:75] = 0.95              # a false positive
    probability[2:4, 18:22, 40:44] = 0.6              # weak, no seed above 0.7
    part = HeldOut(probability=probability, sites=sites, ignore=np.zeros(sites.shape, bool),
                   voxel_size=(40.0, 8.0, 8.0), volume="v", fold=0)
    grid = [PostProcessing(high=h, low=lo, min_size_nm3=s, min_score=m)
            for h, lo in [(0.7, 0.5), (0.9, 0.5)] for s in [0.0, 20 * 2560.0] for m in [0.0, 0.9]]
    table = count_table([part], grid)[:, 0]
    for post, counts in zip(grid, table):
        labels, _ = find_instances(probability, voxel_size=part.voxel_size,
                                   **post.for_voxel_size(part.voxel_size))
        s = match_by_overlap(labels, sites)
        assert tuple(counts) == (s.tp, s.fp, s.fn), post


def test_calibration_chooses_on_other_folds_and_reports_intervals():
    parts = []
    for fold in range(3):
        probability = np.zeros((4, 60, 60), np.float32)
        sites = np.zeros(probability.shape, np.uint32)
        for i in range(4):
            sites[1:3, 5 + 12 * i: 10 + 12 * i, 10:15] = i + 1
            probability[1:3, 5 + 12 * i: 10 + 12 * i, 10:15] = 0.96
        probability[2, 50:52, 50:52] = 0.99  # small false positives: a size filter removes them
        parts.append(HeldOut(probability=probability, sites=sites,
                             ignore=np.zeros(sites.shape, bool), voxel_size=(40.0, 8.0, 8.0),
                             volume="v", fold=fold))
    calibration = calibrate(parts)
    pooled = calibration.figures["pooled"]
    assert (pooled["tp"], pooled["fp"], pooled["fn"]) == (12, 0, 0)
    assert calibration.postprocessing.min_size_nm3 > 4 * 2560.0
    assert pooled["f1_interval"] == [1.0, 1.0]
    assert calibration.figures["folds"] == 3 and len(calibration.figures["per_fold"]) == 3
    assert "nested" in calibration.figures["method"]


def test_intervals():
    assert wilson(0, 0) == [0.0, 1.0]
    low, high = wilson(23, 25)
    assert 0.73 < low < 0.8 and 0.97 < high < 0.99
    low, high = f1_interval(20, 5, 5)
    assert low < 0.8 < high and high - low < 0.3


# --- end to end ------------------------------------------------------------------------------

def test_train_on_two_volumes_of_different_pixels():
    a = _volume(1, voxel_size=(40.0, 8.0, 8.0), name="'a'")
    b = _volume(2, shape=(16, 180, 180), voxel_size=(40.0, 7.0, 7.0), name="'b'")
    seen = []
    model = train_detector([a, b], DetectorOptions(trees=QUICK, features=SMALL),
                           progress=lambda d, t, m: seen.append((d, t, m)))
    assert model.voxel_size == (40.0, 8.0, 8.0)
    figures = model.calibration.figures
    assert set(figures["per_volume"]) == {"'a'", "'b'"}
    assert set(figures["leave_one_volume_out"]) == {"'a'", "'b'"}
    pooled = figures["pooled"]
    assert pooled["tp"] + pooled["fn"] == 32  # every site is held out once
    assert pooled["f1"] > 0.6, pooled
    assert pooled["f1_interval"][0] <= pooled["f1"] <= pooled["f1_interval"][1]
    done = [d for d, _, _ in seen]
    assert done == sorted(done) and done[-1] == seen[-1][1] and seen[-1][2] == "done"
    assert model.training["cross_validation"] is figures


def test_a_progress_that_raises_cancels_the_training():
    class Cancelled(Exception):
        pass

    def progress(done, total, message):
        if "fold 2" in message:
            raise Cancelled

    with pytest.raises(Cancelled):
        train_detector([_volume(1, shape=(8, 128, 128))],
                       DetectorOptions(trees=QUICK, features=SMALL), progress=progress)
