"""connectome-detect train / predict / evaluate on a phantom written as a CREMI-like file."""

import csv
import json
import re

import h5py
import numpy as np
import pytest
import zarr

from detection.cli import main
from detection.synthetic.phantom import make_phantom, write_phantom_h5
from tests.conftest import shared_file


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


# --- score-cells -----------------------------------------------------------------------------

def _scores_printed(out: str) -> dict:
    """The figures of score-cells' text: VOI split, merge, total and ARAND, precision, recall."""
    voi = re.search(r"VOI split (\S+) merge (\S+) total (\S+) bits", out)
    rand = re.search(r"ARAND (\S+) \(precision (\S+), recall (\S+)\)", out)
    assert voi and rand, out
    return {"split": float(voi[1]), "merge": float(voi[2]), "total": float(voi[3]),
            "error": float(rand[1]), "precision": float(rand[2]), "recall": float(rand[3])}


def _cell_volumes(*, wrong_at_the_end=True):
    """Bodies 1, 2 and 3 (rods along x); cell 10 merges bodies 1 and 2, body 3 is split into
    cells 20 and 21; voxels with x >= 36 are to be ignored (and wrongly labelled)."""
    gt = np.zeros((8, 16, 40), dtype=np.uint64)
    gt[:, 1:5, 2:38], gt[:, 7:11, 2:38], gt[2:6, 5:7, 2:38] = 1, 2, 3
    seg = gt.copy()
    seg[(gt == 1) | (gt == 2)] = 10
    seg[gt == 3] = 20
    seg[(gt == 3) & (np.arange(40) >= 20)] = 21
    ignore = np.zeros(gt.shape, dtype=np.uint8)
    ignore[..., 36:] = 1
    if wrong_at_the_end:
        seg[..., 36:] = 99
    return seg, gt, ignore


def test_score_cells_prints_the_library_figures(tmp_path, capsys):
    from detection.cells import evaluation

    seg, gt, ignore = _cell_volumes()
    path = tmp_path / "cells.h5"
    with h5py.File(path, "w") as f:
        f["volumes/labels/cells"] = seg
        f["volumes/labels/neuron_ids"] = gt
        f["volumes/labels/ignore"] = ignore
    args = ["score-cells", "--segmentation", f"{path}:volumes/labels/cells",
            "--truth", f"{path}:volumes/labels/neuron_ids",
            "--ignore", f"{path}:volumes/labels/ignore", "--min-voxels", "50"]
    assert main(args) == 0
    out = capsys.readouterr().out
    mask = ignore != 0
    voi = evaluation.variation_of_information(seg, gt, ignore=mask)
    rand = evaluation.adapted_rand_error(seg, gt, ignore=mask)
    printed = _scores_printed(out)
    for name, value in [*voi.to_dict().items(), *rand.to_dict().items()]:
        if name != "voxels":
            assert printed[name] == pytest.approx(value, abs=5e-5), name
    assert voi.merge == pytest.approx(1.0 * (2 * 8 * 4 * 34) / voi.voxels)  # two equal bodies
    assert f"{voi.voxels} voxels scored" in out
    assert "1 merged cells and 1 split bodies (parts of at least 50 voxels); the 2 worst:" in out
    rows = evaluation.overlap_report(seg, gt, ignore=mask, min_voxels=50)
    assert f"1. merge {rows[0]['bits']:.4f} bits  cell 10 holds bodies 1, 2; box z 0:8, " \
           "y 1:11, x 2:36" in out
    assert "2. split" in out and "body 3 is in cells 20, 21" in out

    # As JSON on stdout: exactly the library's numbers and rows.
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["voi"] == voi.to_dict() and report["rand"] == rand.to_dict()
    assert report["report"]["worst"] == rows
    assert (report["report"]["merges"], report["report"]["splits"]) == (1, 1)
    assert report["skeletons"] is None
    # To a file, beside the text.
    assert main([*args, "--json", str(tmp_path / "scores.json"), "--worst", "1"]) == 0
    out = capsys.readouterr().out
    assert "the 1 worst:" in out and "2. split" not in out
    assert json.loads((tmp_path / "scores.json").read_text())["voi"] == voi.to_dict()


def test_score_cells_counts_skeleton_errors_and_splits_colliding_ids(tmp_path, capsys):
    seg, gt, _ = _cell_volumes(wrong_at_the_end=False)
    # Body 1 and a far-away rod share id 1, and the segmentation keeps them apart (cell 30).
    gt[2:6, 12:15, 2:38] = 1
    seg[2:6, 12:15, 2:38] = 30
    path = tmp_path / "cells.h5"
    with h5py.File(path, "w") as f:
        f["seg"], f["gt"] = seg, gt
    base = ["score-cells", "--segmentation", f"{path}:seg", "--truth", f"{path}:gt"]
    assert main([*base, "--skeletons"]) == 2
    assert ("--skeletons: neither file states a voxel size; pass --voxel-size Z Y X (nm)"
            in capsys.readouterr().err)
    assert main([*base, "--skeletons", "--voxel-size", "40", "8", "8",
                 "--skeleton-min-voxels", "10", "--json"]) == 0
    raw = json.loads(capsys.readouterr().out)
    # Rods 1 (with its far piece, traced as one id) and 2 merged in cell 10; rod 3 cut once.
    assert raw["skeletons"]["traced"] == 3
    assert raw["skeletons"]["merges"] == 1
    assert raw["skeletons"]["splits"] == 1
    assert raw["voi"]["split"] > 0
    assert main([*base, "--connected-truth", "--json"]) == 0
    pieces = json.loads(capsys.readouterr().out)
    assert pieces["connected_truth"] is True
    # The far piece of id 1 is a body of its own: no longer a split; rod 3's cut still is.
    assert 0 < pieces["voi"]["split"] < raw["voi"]["split"]
    assert pieces["report"]["splits"] == 1


def test_score_cells_names_what_is_wrong(tmp_path, capsys):
    path = tmp_path / "cells.h5"
    with h5py.File(path, "w") as f:
        f["a"] = np.ones((2, 3, 4), np.uint8)
        f["b"] = np.ones((2, 3, 5), np.uint8)
    assert main(["score-cells", "--segmentation", f"{path}:a", "--truth", f"{path}:b"]) == 2
    assert ("--segmentation has shape (2, 3, 4) and --truth (2, 3, 5); they must cover the "
            "same voxels" in capsys.readouterr().err)
    missing = tmp_path / "nothing.h5"
    assert main(["score-cells", "--segmentation", f"{missing}:a", "--truth", f"{path}:b"]) == 2
    assert (f"--segmentation {missing}:a: no such file (give FILE or FILE:DATASET)"
            in capsys.readouterr().err)
    assert main(["score-cells", "--segmentation", f"{path}:c", "--truth", f"{path}:b"]) == 2
    assert "connectome-detect score-cells:" in capsys.readouterr().err


def test_score_cells_on_a_real_watershed(capsys):
    from detection.cells import evaluation

    path = shared_file("fibsem_mini.h5")
    assert main(["score-cells", "--segmentation", f"{path}:train/volumes/labels/watershed",
                 "--truth", f"{path}:train/volumes/labels/neuron_ids"]) == 0
    out = capsys.readouterr().out
    with h5py.File(path, "r") as f:
        seg = f["train/volumes/labels/watershed"][:]
        gt = f["train/volumes/labels/neuron_ids"][:]
    voi = evaluation.variation_of_information(seg, gt)
    rand = evaluation.adapted_rand_error(seg, gt)
    printed = _scores_printed(out)
    for name, value in [*voi.to_dict().items(), *rand.to_dict().items()]:
        if name != "voxels":
            assert printed[name] == pytest.approx(value, abs=5e-5), name
    # A watershed over-segments: splits dominate, and the ten worst cells are listed.
    assert voi.split > voi.merge
    listed = re.findall(r"^\s+(\d+)\. (merge|split) ", out, flags=re.MULTILINE)
    assert [int(rank) for rank, _ in listed] == list(range(1, 11))
    worst = evaluation.overlap_report(seg, gt)[:10]
    assert [kind for _, kind in listed] == [row["kind"] for row in worst]
