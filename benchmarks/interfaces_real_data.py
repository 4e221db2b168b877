"""Interface extraction and synaptic interface classification on the real volumes.

    python benchmarks/interfaces_real_data.py [--skip-extraction] [--skip-classification]
                                              [--data DIR] [--spec default|small]

1. Extraction (:func:`detection.synapses.interfaces.extract_interfaces`) on
   * medulla_fibsem_250.h5 ``neuron_ids``: 250^3 at 10 nm isotropic, dense (segments touch);
   * cortex_seg512.h5 ``neuron_ids``: 512^3 stored (x, y, z), transposed here to (z, y, x) with
     voxels of (40, 16, 16) nm (axis 2 of the file is the 40 nm axis; the in-plane size is 16 nm
     by the kimimaro README, 32 nm by the cc3d README: with 32 nm every area is 4 x larger);
   * vnc_sstem_train.h5 ``neuron_ids_2d``: 20 x 1024 x 640 at (50, 4.6, 4.6) nm, per-section
     labels separated by membranes, not linked across z: ``in_plane_only=True`` and
     ``max_gap_voxels=10`` (its membranes are drawn 5 px wide at the median, 9 px at the 90th
     percentile; at 8 px every one of the 33 synapses already lies on an interface).
   Printed: interface count, border voxels, time, peak memory of numpy allocations.
2. Classification on vnc: interfaces labelled synaptic where their border, grown by 20 nm,
   overlaps ``synapse_mask`` (direction unknown there, so labels are -1 and the classifier
   learns synapticness); features from :mod:`detection.synapses.features`; spatial split by the interface
   centroid, x < 320 voxels for training and x >= 320 for testing, then the reverse.  Printed:
   interface-level ROC AUC, average precision, precision and recall at score 0.5, and how many
   of the test half's 3-D synapses (``synapse_ids_3d``) have at least one interface detected.

Skips with a message when the shared data folder is absent.
"""

import argparse
import logging
import os
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detection.synapses.interfaces import (  # noqa: E402
    extract_interfaces,
    interface_features,
    label_interfaces,
    train_interface_classifier,
)

VNC_VOXEL = (50.0, 4.6, 4.6)
VNC_GAP = 10.0
SPLIT_X = 320


def _data_dir(arg) -> Path:
    if arg:
        return Path(arg)
    return Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data"))


def _read(path: Path, name: str) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        return f[name][:]


def _measure(fn, *args, **kwargs):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, seconds, peak / 2**20


def extraction(data: Path) -> None:
    cases = [
        ("medulla", "medulla_fibsem_250.h5", (10.0, 10.0, 10.0), False, {}),
        ("cortex", "cortex_seg512.h5", (40.0, 16.0, 16.0), True, {}),
        ("vnc", "vnc_sstem_train.h5", VNC_VOXEL, False,
         {"in_plane_only": True, "max_gap_voxels": VNC_GAP}),
    ]
    print("extraction: volume, shape, voxel nm, segments, interfaces, border voxels, "
          "median area um^2, seconds, peak MiB (numpy allocations during extraction)")
    for name, fname, vs, transpose, kwargs in cases:
        dataset = "volumes/labels/neuron_ids_2d" if name == "vnc" else "volumes/labels/neuron_ids"
        seg = _read(data / fname, dataset)
        if transpose:
            seg = np.ascontiguousarray(seg.transpose(2, 1, 0))
        n_segments = len(np.unique(seg)) - int((seg == 0).any())
        table, seconds, peak = _measure(extract_interfaces, seg, voxel_size=vs, **kwargs)
        print(f"  {name:8s} {'x'.join(map(str, seg.shape)):12s} {vs} {n_segments:6d} "
              f"{len(table):7d} {len(table.voxels):10d} "
              f"{np.median(table.area_nm2) / 1e6 if len(table) else 0:8.4f} "
              f"{seconds:7.1f} {peak:8.0f}")


def _spec(kind: str):
    from detection.synapses.features import FeatureSpec

    if kind == "small":
        return FeatureSpec(scales_nm=(10.0, 20.0, 40.0),
                           kinds=("gaussian", "gradient_magnitude", "hessian_eigenvalues"))
    return FeatureSpec()


def classification(data: Path, spec_kind: str) -> None:
    from sklearn.metrics import (
        average_precision_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    from detection.synapses.features import compute_features

    path = data / "vnc_sstem_train.h5"
    raw = _read(path, "volumes/raw")
    seg = _read(path, "volumes/labels/neuron_ids_2d")
    mask = _read(path, "volumes/labels/synapse_mask")
    syn3d = _read(path, "volumes/labels/synapse_ids_3d")
    table = extract_interfaces(seg, voxel_size=VNC_VOXEL, in_plane_only=True,
                               max_gap_voxels=VNC_GAP)
    labels = label_interfaces(table, mask).labels
    synaptic = labels != 0
    ids3d = label_interfaces(table, syn3d).synapse_id
    spec = _spec(spec_kind)
    t0 = time.perf_counter()
    channels = compute_features(raw, voxel_size=VNC_VOXEL, spec=spec)
    t1 = time.perf_counter()
    feats, names = interface_features(channels, table, voxel_size=VNC_VOXEL, spec=spec)
    t2 = time.perf_counter()
    del channels
    print(f"classification (vnc): {len(table)} interfaces, {int(synaptic.sum())} synaptic "
          f"({len(np.unique(ids3d[ids3d > 0]))} 3-D synapses); {spec.n_channels} channels in "
          f"{t1 - t0:.1f} s, {feats.shape[1]} features in {t2 - t1:.1f} s")
    x_vox = table.centroid_nm[:, 2] / VNC_VOXEL[2]
    for train_side in ("x<320", "x>=320"):
        train = x_vox < SPLIT_X if train_side == "x<320" else x_vox >= SPLIT_X
        test = ~train
        t0 = time.perf_counter()
        model = train_interface_classifier(feats[train], labels[train], names=names,
                                           voxel_size=VNC_VOXEL, spec=spec)
        seconds = time.perf_counter() - t0
        score = model.predict_scores(feats[test]).max(axis=1)
        truth = synaptic[test]
        pred = score >= 0.5
        test_syn = set(np.unique(ids3d[test][ids3d[test] > 0]).tolist())
        found = set(np.unique(ids3d[test][pred & (ids3d[test] > 0)]).tolist())
        print(f"  train {train_side} ({int(train.sum())} interfaces, "
              f"{int(synaptic[train].sum())} synaptic, {seconds:.1f} s) -> test "
              f"{int(test.sum())} interfaces, {int(truth.sum())} synaptic: "
              f"ROC AUC {roc_auc_score(truth, score):.3f}, "
              f"AP {average_precision_score(truth, score):.3f}, "
              f"precision@0.5 {precision_score(truth, pred, zero_division=0):.3f}, "
              f"recall@0.5 {recall_score(truth, pred, zero_division=0):.3f}, "
              f"3-D synapses with a detected interface {len(found)}/{len(test_syn)}")
        shape_cols = [i for i, n in enumerate(names)
                      if n.startswith("shape/") or n.endswith("/volume_nm3")]
        baseline = train_interface_classifier(
            feats[train][:, shape_cols], labels[train],
            names=[names[i] for i in shape_cols], voxel_size=VNC_VOXEL)
        base_score = baseline.predict_scores(feats[test][:, shape_cols]).max(axis=1)
        print(f"    baseline on the {len(shape_cols)} shape/volume features alone: ROC AUC "
              f"{roc_auc_score(truth, base_score):.3f}, "
              f"AP {average_precision_score(truth, base_score):.3f}")
        for target in (0.5, 0.8):
            order = np.argsort(-score)
            hits = np.cumsum(truth[order])
            k = int(np.searchsorted(hits, target * truth.sum())) + 1
            print(f"    recall {target:.0%}: precision {hits[k - 1] / k:.3f} "
                  f"(score >= {score[order][k - 1]:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="shared data folder (default ../shared/data)")
    parser.add_argument("--skip-extraction", action="store_true")
    parser.add_argument("--skip-classification", action="store_true")
    parser.add_argument("--spec", choices=("default", "small"), default="default")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = _data_dir(args.data)
    if not (data / "vnc_sstem_train.h5").exists():
        print(f"skipped: real data not found in {data} (pass --data or set SHARED_DATA)")
        return
    if not args.skip_extraction:
        extraction(data)
    if not args.skip_classification:
        classification(data, args.spec)


if __name__ == "__main__":
    main()
