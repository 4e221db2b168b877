"""connectome-detect train / predict / evaluate on a phantom written as a CREMI-like file."""

import csv

import h5py
import numpy as np
import pytest
import zarr

from detection.cli import main
from detection.synthetic.phantom import make_phantom, write_phantom_h5


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    train = write_phantom_h5(make_phantom((16, 128, 128), n_cells=14, n_synapses=14, seed=21),
                             folder / "train.h5")
    test = write_phantom_h5(make_phantom((16, 128, 128), n_cells=14, n_synapses=14, seed=22),
                            folder / "test.h5")
    return folder, train, test


def test_train_predict_evaluate(phantom_files, capsys):
    folder, train, test = phantom_files
    model = folder / "synapses.model"
    assert main(["train", "--volume", str(train), "--dataset", "volumes/raw",
                 "--labels", str(train), "--labels-dataset", "volumes/labels/clefts",
                 "--label-convention", "binary", "--scales-nm", "10", "20", "40",
                 "--n-estimators", "60", "--out", str(model)]) == 0
    out = capsys.readouterr().out
    # Training reports the cross-validated figures of the calibration it stores.
    assert "trees at 40 x 8 x 8 nm" in out and "cross-validated precision" in out
    cv_f1 = float(out.split("F1 ")[1].split()[0])
    assert 0.5 < cv_f1 <= 1.0, out
    from detection.synapses.model_files import load_synapse_model

    stored = load_synapse_model(model)
    assert stored.calibration is not None
    assert stored.calibration.figures["pooled"]["f1"] == pytest.approx(cv_f1, abs=0.005)
    assert stored.calibration.figures["folds"] == 3

    # No threshold given: predict uses the stored calibration.
    assert main(["predict", "--volume", str(test), "--dataset", "volumes/raw", "--model", str(model),
                 "--out-probability", str(folder / "prob.zarr"), "--out-table", str(folder / "c.csv"),
                 "--out-instances", str(folder / "inst.zarr")]) == 0
    probability = zarr.open(str(folder / "prob.zarr"), "r")
    assert probability.shape == (16, 128, 128) and probability.dtype == np.uint8
    with open(folder / "c.csv") as f:
        rows = list(csv.DictReader(f))
    instances = zarr.open(str(folder / "inst.zarr"), "r")[:]
    assert len(rows) == instances.max() > 5

    assert main(["evaluate", "--gt", str(test), "--gt-dataset", "volumes/labels/clefts",
                 "--instances", str(folder / "inst.zarr"), "--table", str(folder / "c.csv"),
                 "--voxel-size", "40", "8", "8", "--json", str(folder / "scores.json")]) == 0
    out = capsys.readouterr().out
    f1 = float(out.split("overlap: ")[1].split("F1 ")[1].split()[0])
    assert f1 > 0.7, out


def test_predict_refuses_another_voxel_size(phantom_files, capsys, tmp_path):
    folder, train, test = phantom_files
    model = folder / "synapses.model"
    if not model.exists():
        pytest.skip("needs the model of test_train_predict_evaluate")
    code = main(["predict", "--volume", str(test), "--dataset", "volumes/raw", "--model", str(model),
                 "--voxel-size", "50", "4.6", "4.6", "--out-probability", str(tmp_path / "p.zarr")])
    assert code == 2
    assert ("has sections of 50 nm and the model 40 nm; sections cannot be resampled"
            in capsys.readouterr().err)


def test_a_model_without_calibration_needs_thresholds(phantom_files, capsys, tmp_path):
    from detection.synapses.classify import TrainingParameters, train_voxel_classifier
    from detection.synapses.features import FeatureSpec

    folder, train, test = phantom_files
    with h5py.File(train, "r") as f:
        em, labels = f["volumes/raw"][:], f["volumes/labels/clefts"][:]
    model = train_voxel_classifier(em, (labels > 0).astype(np.int8), voxel_size=(40, 8, 8),
                                   feature_spec=FeatureSpec(scales_nm=(10.0, 20.0)),
                                   parameters=TrainingParameters(n_estimators=10))
    path = model.save(tmp_path / "old.model")
    base = ["predict", "--volume", str(test), "--dataset", "volumes/raw", "--model", str(path),
            "--out-probability", str(tmp_path / "p.zarr")]
    assert main(base + ["--high", "0.8"]) == 2
    assert ("old.model carries no calibration (it was trained without cross-validation): give "
            "--low, --min-size, --min-score, or train it again" in capsys.readouterr().err)
    assert main(base + ["--high", "0.8", "--low", "0.5", "--min-size", "20",
                        "--min-score", "0"]) == 0


def test_missing_dataset_is_a_clear_error(phantom_files, capsys, tmp_path):
    folder, train, _ = phantom_files
    code = main(["train", "--volume", str(train), "--dataset", "volumes/nope",
                 "--labels", str(train), "--out", str(tmp_path / "m.model")])
    assert code == 2
    err = capsys.readouterr().err
    assert "train.h5" in err and "volumes/nope" in err


def _model(folder, train):
    model = folder / "synapses.model"
    if not model.exists():
        assert main(["train", "--volume", str(train), "--dataset", "volumes/raw",
                     "--labels", str(train), "--labels-dataset", "volumes/labels/clefts",
                     "--label-convention", "binary", "--scales-nm", "10", "20", "40",
                     "--n-estimators", "60", "--out", str(model)]) == 0
    return model


def test_predict_with_split_does_not_depend_on_the_blocking(phantom_files, tmp_path):
    folder, train, test = phantom_files
    model = _model(folder, train)
    results = []
    for name, extra in [("plain", ["--block-shape", "16", "64", "64"]),
                        ("split", ["--block-shape", "16", "64", "64"]),
                        ("split-blocks", ["--block-shape", "8", "48", "128"])]:
        # Settings that divide some components of this phantom (the test needs that).
        split = [] if name == "plain" else ["--split-min-distance-nm", "100", "--split-smooth-nm",
                                            "20", "--split-min-depth", "0.02"]
        assert main(["predict", "--volume", str(test), "--dataset", "volumes/raw", "--model",
                     str(model), "--out-probability", str(tmp_path / f"{name}-p.zarr"),
                     "--out-table", str(tmp_path / f"{name}.csv"),
                     "--out-instances", str(tmp_path / f"{name}-i.zarr"), "--high", "0.7",
                     "--low", "0.3", "--min-size", "20", *extra, *split]) == 0
        with open(tmp_path / f"{name}.csv") as f:
            rows = list(csv.DictReader(f))
        instances = zarr.open(str(tmp_path / f"{name}-i.zarr"), "r")[:]
        assert len(rows) == instances.max()
        results.append((rows, instances))
    (plain_rows, plain), (rows, split), (rows_b, split_b) = results
    assert len(rows) > len(plain_rows)  # the phantom has touching clefts to divide
    assert rows == rows_b
    np.testing.assert_array_equal(split, split_b)
    # Every split instance lies inside one unsplit instance.
    inside = split > 0
    pairs = np.unique(np.stack([split[inside], plain[inside]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1]


def test_train_and_predict_with_the_network(phantom_files, capsys):
    from detection.synapses.cnn import SynapseCnn

    folder, train, test = phantom_files
    model = folder / "synapses.cnn"
    assert main(["train", "--detector", "cnn", "--volume", str(train), "--dataset", "volumes/raw",
                 "--labels", str(train), "--labels-dataset", "volumes/labels/clefts",
                 "--label-convention", "binary", "--iterations", "6", "--out", str(model)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert SynapseCnn.load(model).calibration is not None
    assert main(["predict", "--volume", str(test), "--dataset", "volumes/raw", "--model", str(model),
                 "--out-probability", str(folder / "cnn-p.zarr"), "--block-shape", "8", "64", "96",
                 "--min-size", "20"]) == 0
    stored = zarr.open(str(folder / "cnn-p.zarr"), "r")[:]
    network = SynapseCnn.load(model)
    with h5py.File(test, "r") as f:
        whole = network.predict_region(f["volumes/raw"][:])
    # Blocks of the command line give the whole volume's probability (stored as uint8).
    assert np.abs(stored.astype(int) - np.rint(whole * 255)).max() <= 1
    assert stored.std() > 1  # not a constant


def test_options_of_the_other_detector_are_refused(phantom_files, capsys, tmp_path):
    folder, train, _ = phantom_files
    base = ["train", "--volume", str(train), "--dataset", "volumes/raw", "--labels", str(train),
            "--labels-dataset", "volumes/labels/clefts", "--out", str(tmp_path / "m.model")]
    assert main(base + ["--iterations", "5"]) == 2
    assert "--iterations is not used by --detector trees" in capsys.readouterr().err
    assert main(base + ["--detector", "cnn", "--n-estimators", "5", "--scales-nm", "10"]) == 2
    assert ("--n-estimators and --scales-nm are not used by --detector cnn"
            in capsys.readouterr().err)
    assert not (tmp_path / "m.model").exists()


def test_predict_writes_the_vesicle_map_of_a_network_with_a_vesicle_head(phantom_files, capsys,
                                                                          tmp_path):
    from detection.synapses.classify import clean_targets, labels_to_targets
    from detection.synapses.cnn import CnnParameters, train_cnn, train_network
    from detection.synapses.training import TrainingVolume

    folder, train, test = phantom_files
    with h5py.File(train, "r") as f:
        em, clefts = f["volumes/raw"][:], f["volumes/labels/clefts"][:]
        vesicles = f["volumes/labels/vesicles"][:].astype(np.int8)
    targets = clean_targets(labels_to_targets(clefts, convention="binary"),
                            voxel_size=(40.0, 8.0, 8.0), ignore_band_nm=30.0)
    parameters = CnnParameters(width=8, depth=2, patch=48, batch=4, iterations=40, seed=1)
    network = train_network([TrainingVolume(name="train", em=em, voxel_size=(40.0, 8.0, 8.0),
                                            targets=targets, aux={"vesicles": vesicles})],
                            voxel_size=(40.0, 8.0, 8.0), parameters=parameters)
    assert network.heads == ("synapse", "vesicles")
    path = network.save(tmp_path / "heads.cnn")
    base = ["predict", "--volume", str(test), "--dataset", "volumes/raw", "--model", str(path),
            "--block-shape", "8", "64", "96", "--high", "0.6", "--low", "0.4", "--min-size", "20",
            "--min-score", "0"]
    assert main(base + ["--out-probability", str(tmp_path / "p.zarr"),
                        "--out-vesicles", str(tmp_path / "v.zarr"),
                        "--out-table", str(tmp_path / "both.csv")]) == 0
    assert f"vesicle map in {tmp_path / 'v.zarr'}" in capsys.readouterr().out
    with h5py.File(test, "r") as f:
        maps = network.predict_maps(f["volumes/raw"][:])
    stored = zarr.open(str(tmp_path / "v.zarr"), "r")
    assert stored.dtype == np.uint8 and stored.attrs["scale"] == "probability * 255"
    # Blocks give the whole volume's vesicle map.
    assert np.abs(stored[:].astype(int) - np.rint(maps["vesicles"] * 255)).max() <= 1
    assert stored[:].std() > 1
    # The synapse probability and the candidates are those of a run without the flag.
    assert main(base + ["--out-probability", str(tmp_path / "alone.zarr"),
                        "--out-table", str(tmp_path / "alone.csv")]) == 0
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "p.zarr"), "r")[:],
                                  zarr.open(str(tmp_path / "alone.zarr"), "r")[:])
    assert (tmp_path / "both.csv").read_text() == (tmp_path / "alone.csv").read_text()
    assert len((tmp_path / "alone.csv").read_text().splitlines()) > 1  # some candidates

    plain = train_cnn(em, targets, voxel_size=(40.0, 8.0, 8.0), parameters=CnnParameters(
        width=8, depth=2, patch=48, batch=4, iterations=2, seed=1)).save(tmp_path / "plain.cnn")
    capsys.readouterr()
    assert main(["predict", "--volume", str(test), "--dataset", "volumes/raw", "--model",
                 str(plain), "--min-size", "20", "--high", "0.8", "--low", "0.5", "--min-score",
                 "0", "--out-probability", str(tmp_path / "p2.zarr"),
                 "--out-vesicles", str(tmp_path / "v2.zarr")]) == 2
    assert ("--out-vesicles: plain.cnn has no vesicle head (its heads: synapse); use a network "
            "trained with vesicle labels" in capsys.readouterr().err)
    assert not (tmp_path / "p2.zarr").exists() and not (tmp_path / "v2.zarr").exists()
