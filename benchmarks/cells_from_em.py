"""Cells from raw EM on the two real volumes with dense labels: the app's path (affinity network,
seeded watershed, waterz) beside a reference made as a careful ilastik user would (a random forest
on filter features for a boundary map, the same watershed and waterz).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cells_from_em.py [--volumes medulla cardona]
        [--folds A B] [--work /tmp/cells] [--json docs/cells_from_em.json] [--no-reference]

Splits (each fold trains on one part, chooses the merge threshold on a validation slab it did not
train on, and is scored on the other part, which neither step saw):

- medulla (``medulla_fibsem_250.h5``, 250^3 voxels of 10 nm, FIB-SEM): fold A trains on z 0-100,
  validates on z 100-125 and tests on z 125-250; fold B trains on z 150-250, validates on
  z 125-150 and tests on z 0-125.
- cardona (``cardona_l1vnc_train.h5``, 30 x 224 x 512 voxels of 50 x 4 x 4 nm, serial sections):
  fold A trains on x 0-216, validates on x 216-256 and tests on x 256-512; fold B trains on
  x 296-512, validates on x 256-296 and tests on x 0-256. Its neurite ids were rescaled to 8 bit
  by the source, so distinct neurites may share an id: each fold is scored against the ids as
  they are and against their 3D connected components (6-connected; two neurites that share an id
  but never touch become two bodies), and the latter is the figure we report.

Scores: variation of information (split = H(seg | truth), merge = H(truth | seg), bits) and the
adapted Rand error, truth 0 (membrane) left out. Trained models are cached in ``--work``
(``<volume>_<fold>.aff``), so a second run only scores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detection.cells import segmentation as seg
from detection.cells.boundaries import (
    AffinityNet,
    AffinityParameters,
    LabelVolume,
    affinities_from_boundary,
    train_affinities,
)
from detection.cells.evaluation import (
    adapted_rand_error,
    connected_ground_truth,
    overlap_report,
    variation_of_information,
)
from detection.cells.training import best_threshold, threshold_table

DATA = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

#: Per volume: file, voxel size, network parameters, and per fold (train, validation, test)
#: slices (z for medulla, x for cardona).
VOLUMES = {
    "medulla": {
        "file": "medulla_fibsem_250.h5",
        "parameters": AffinityParameters(pixel_nm=10, width=8, depth=2, iterations=600, batch=1,
                                         patch=(24, 96, 96)),
        # Training steps per fold: what the CPU time of the recorded run allowed.
        "iterations": {"A": 600, "B": 400},
        "folds": {"A": (np.s_[0:100], np.s_[100:125], np.s_[125:250]),
                  "B": (np.s_[150:250], np.s_[125:150], np.s_[0:125])},
    },
    "cardona": {
        "file": "cardona_l1vnc_train.h5",
        "parameters": AffinityParameters(pixel_nm=8, width=12, depth=2, iterations=400, batch=1,
                                         patch=(12, 96, 96)),
        "iterations": {"A": 300, "B": 300},
        "folds": {"A": (np.s_[:, :, 0:216], np.s_[:, :, 216:256], np.s_[:, :, 256:512]),
                  "B": (np.s_[:, :, 296:512], np.s_[:, :, 256:296], np.s_[:, :, 0:256])},
    },
}


#: Blocks and context of the block-wise comparison (about a third of the test part per block).
BLOCKWISE = {"block_shape": {"medulla": (64, 128, 128), "cardona": (16, 128, 128)},
             "context": {"medulla": (16, 32, 32), "cardona": (4, 32, 32)}}


def load(name: str):
    with h5py.File(DATA / VOLUMES[name]["file"], "r") as f:
        em = f["volumes/raw"][:]
        labels = f["volumes/labels/neuron_ids"][:]
        voxel_size = tuple(float(v) for v in f["volumes/raw"].attrs["resolution"])
    return em, labels, voxel_size


def scores(cells, truth, connected_truth=None) -> dict:
    voi = variation_of_information(cells, truth)
    rand = adapted_rand_error(cells, truth)
    out = {"voi_split": round(voi.split, 4), "voi_merge": round(voi.merge, 4),
           "voi": round(voi.total, 4), "arand": round(rand.error, 4),
           "cells": len(np.unique(cells[cells > 0]))}
    if connected_truth is not None:
        voi = variation_of_information(cells, connected_truth)
        rand = adapted_rand_error(cells, connected_truth)
        out["connected_truth"] = {"voi_split": round(voi.split, 4),
                                  "voi_merge": round(voi.merge, 4), "voi": round(voi.total, 4),
                                  "arand": round(rand.error, 4)}
    return out


def errors_by_axis(cells, truth) -> dict:
    """Per axis, the share of face-adjacent voxel pairs of one true body that the segmentation
    parts (split edges) and of two true bodies that it joins (merged edges); truth 0 left out.
    On serial sections, z splits are cells not followed from one section to the next."""
    out = {}
    for axis, name in enumerate("zyx"):
        a = np.moveaxis(truth, axis, 0)
        b = np.moveaxis(cells, axis, 0)
        t0, t1, c0, c1 = a[1:], a[:-1], b[1:], b[:-1]
        scored = (t0 > 0) & (t1 > 0)
        same = scored & (t0 == t1)
        other = scored & (t0 != t1)
        out[name] = {"split_edges": round(float((same & (c0 != c1)).sum() / max(same.sum(), 1)), 4),
                     "merged_edges": round(float((other & (c0 == c1)).sum() /
                                                 max(other.sum(), 1)), 4)}
    return out


def worst_errors(cells, truth, count: int = 5) -> list[dict]:
    """The largest merges and splits (overlap report rows), for the error analysis."""
    rows = overlap_report(cells, truth, min_voxels=200)
    return [{k: row[k] for k in ("kind", "bits", "cells", "truth", "bbox")}
            for row in rows[:count]]


def choose_and_score(affs_validation, truth_validation, affs_test, truth_test, voxel_size,
                     connected_test=None) -> dict:
    """Threshold chosen on the validation part, applied to the test part; plus the watershed
    alone (no agglomeration) on the test part. Returns the test part's cells and the
    figures."""
    table = threshold_table(affs_validation, truth_validation, voxel_size=voxel_size)
    threshold, summed = best_threshold([table])
    started = time.perf_counter()
    frag, _ = seg.fragments(affs_test, voxel_size=voxel_size)
    cells = next(seg.agglomerate(affs_test, frag, [threshold]))
    seconds = time.perf_counter() - started
    truth = truth_test if connected_test is None else connected_test
    return cells, {"threshold": threshold, "validation": summed,
            "test": scores(cells, truth_test, connected_test),
            "errors_by_axis": errors_by_axis(cells, truth),
            "worst": worst_errors(cells, truth),
            "watershed_only": scores(frag, truth_test, connected_test),
            "segmentation_seconds": round(seconds, 2)}


# -- the reference: a random-forest boundary map on filter features ------------------------

def filter_features(em: np.ndarray, voxel_size) -> np.ndarray:
    """ilastik's default feature set at sigmas 0.7, 1.6, 3.5 (in-plane pixels; along z scaled by
    the anisotropy): Gaussian smoothing, gradient magnitude, Laplacian of Gaussian, difference
    of Gaussians and the Hessian's eigenvalues. (V, F) float32."""
    from scipy import ndimage as ndi
    from skimage.feature import hessian_matrix, hessian_matrix_eigvals

    em = em.astype(np.float32)
    ratio = float(voxel_size[1]) / float(voxel_size[0])
    features = [em]
    for s in (0.7, 1.6, 3.5):
        sigma = (s * ratio, s, s)
        features.append(ndi.gaussian_filter(em, sigma))
        features.append(ndi.gaussian_gradient_magnitude(em, sigma))
        features.append(ndi.gaussian_laplace(em, sigma))
        features.append(features[-3] - ndi.gaussian_filter(em, tuple(1.66 * x for x in sigma)))
        h = hessian_matrix(em, sigma=sigma, order="rc", use_gaussian_derivatives=False)
        features.extend(hessian_matrix_eigvals(h))
    return np.stack([f.ravel() for f in features], axis=1).astype(np.float32)


def boundary_targets(labels: np.ndarray) -> np.ndarray:
    """1 on voxels that are membrane (0) or touch another cell face-wise, else 0."""
    edge = labels == 0
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        diff = a[1:] != a[:-1]
        e = np.moveaxis(edge, axis, 0)
        e[1:] |= diff
        e[:-1] |= diff
    return edge.astype(np.uint8)


def reference_boundaries(em_train, labels_train, ems, voxel_size, *, samples=30_000, seed=0):
    """A random forest (100 trees) trained on ``samples`` voxels of each class of the training
    part (what a careful user's brush strokes amount to), applied to each of ``ems``; the
    boundary maps and the voxels per second of the features and the forest."""
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(seed)
    x = filter_features(em_train, voxel_size)
    y = boundary_targets(labels_train).ravel()
    chosen = np.concatenate([rng.choice(np.flatnonzero(y == c), samples, replace=False)
                             for c in (0, 1)])
    forest = RandomForestClassifier(n_estimators=100, min_samples_leaf=5, n_jobs=-1,
                                    random_state=seed).fit(x[chosen], y[chosen])
    maps, voxels, seconds = [], 0, 0.0
    for em in ems:
        started = time.perf_counter()
        p = forest.predict_proba(filter_features(em, voxel_size))[:, 1]
        seconds += time.perf_counter() - started
        voxels += em.size
        maps.append(p.reshape(em.shape).astype(np.float32))
    return maps, voxels / seconds


def run_ours(name, fold, em, labels, voxel_size, work: Path) -> dict:
    config = VOLUMES[name]
    train, validation, test = config["folds"][fold]
    path = work / f"{name}_{fold}.aff"
    if path.exists():
        model = AffinityNet.load(path)
        trained = "cached"
    else:
        model = train_affinities([LabelVolume(f"{name} {fold}", em[train], voxel_size,
                                              labels[train])],
                                 voxel_size=voxel_size,
                                 parameters=replace(config["parameters"],
                                                    iterations=config["iterations"][fold]))
        model.save(path)
        trained = "now"
    connected = connected_ground_truth(labels[test]) if name == "cardona" else None
    started = time.perf_counter()
    affs_test = model.predict_region(em[test])
    network_seconds = time.perf_counter() - started
    affs_validation = model.predict_region(em[validation])
    whole, ours = choose_and_score(affs_validation, labels[validation], affs_test,
                                   labels[test], voxel_size, connected)
    # The block-wise path on the same affinities: how far it lies from the whole volume's.
    blocks = seg.segment_blockwise(affs_test, voxel_size=voxel_size, threshold=ours["threshold"],
                                   block_shape=BLOCKWISE["block_shape"][name],
                                   context=BLOCKWISE["context"][name])
    between = variation_of_information(blocks, whole)
    ours["blockwise"] = {"block_shape": BLOCKWISE["block_shape"][name],
                         "context": BLOCKWISE["context"][name],
                         "voi_to_whole": round(between.total, 4),
                         "test": scores(blocks, labels[test], connected)}
    voxels = em[test].size
    ours["network_voxels_per_second"] = round(voxels / network_seconds)
    ours["end_to_end_voxels_per_second"] = round(
        voxels / (network_seconds + ours["segmentation_seconds"]))
    ours["training"] = {**model.training, "trained": trained}
    return ours


def run_reference(name, fold, em, labels, voxel_size, work: Path) -> dict:
    """The random-forest reference of one fold (cached in ``work``: it does not change)."""
    path = work / f"{name}_{fold}.reference.json"
    if path.exists():
        return json.loads(path.read_text())
    train, validation, test = VOLUMES[name]["folds"][fold]
    connected = connected_ground_truth(labels[test]) if name == "cardona" else None
    (b_validation, b_test), rate = reference_boundaries(
        em[train], labels[train], [em[validation], em[test]], voxel_size)
    _, ref = choose_and_score(affinities_from_boundary(b_validation), labels[validation],
                              affinities_from_boundary(b_test), labels[test], voxel_size,
                              connected)
    ref["forest_voxels_per_second"] = round(rate)
    path.write_text(json.dumps(ref))
    return ref


def run_fold(name: str, fold: str, em, labels, voxel_size, work: Path, parts) -> dict:
    test = VOLUMES[name]["folds"][fold][2]
    out = {"volume": name, "fold": fold, "test_voxels": int(em[test].size)}
    if "ours" in parts:
        out["ours"] = run_ours(name, fold, em, labels, voxel_size, work)
    if "reference" in parts:
        out["reference"] = run_reference(name, fold, em, labels, voxel_size, work)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", nargs="+", default=list(VOLUMES), choices=list(VOLUMES))
    parser.add_argument("--folds", nargs="+", default=["A", "B"], choices=["A", "B"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/cells"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--parts", nargs="+", default=["ours", "reference"],
                        choices=["ours", "reference"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    results = []
    for name in args.volumes:
        em, labels, voxel_size = load(name)
        for fold in args.folds:
            r = run_fold(name, fold, em, labels, voxel_size, args.work, args.parts)
            results.append(r)
            line = []
            if "ours" in r:
                o = r["ours"]
                line.append(f"{name} fold {fold}: ours VOI {o['test']['voi']:.3f} (split "
                            f"{o['test']['voi_split']:.3f}, merge {o['test']['voi_merge']:.3f}) "
                            f"ARAND {o['test']['arand']:.3f} at threshold {o['threshold']:.2f}; "
                            f"watershed alone VOI {o['watershed_only']['voi']:.3f}")
                if "connected_truth" in o["test"]:
                    c = o["test"]["connected_truth"]
                    line.append(f"  against connected truth: VOI {c['voi']:.3f} "
                                f"ARAND {c['arand']:.3f}")
                b = o["blockwise"]
                line.append(f"  block-wise ({' x '.join(map(str, b['block_shape']))} blocks): "
                            f"VOI {b['test']['voi']:.3f}, {b['voi_to_whole']:.3f} from the "
                            "whole volume's")
                line.append(f"  end to end {o['end_to_end_voxels_per_second'] / 1e6:.3f} "
                            f"Mvoxel/s on {threads} threads")
            if "reference" in r:
                ref = r["reference"]
                line.append(f"{name} fold {fold} reference: VOI {ref['test']['voi']:.3f} (split "
                            f"{ref['test']['voi_split']:.3f}, merge {ref['test']['voi_merge']:.3f})"
                            f" ARAND {ref['test']['arand']:.3f} at {ref['threshold']:.2f}; "
                            f"watershed alone {ref['watershed_only']['voi']:.3f}; forest "
                            f"{ref['forest_voxels_per_second'] / 1e3:.0f} kvoxel/s")
                if "connected_truth" in ref["test"]:
                    c = ref["test"]["connected_truth"]
                    line.append(f"  reference against connected truth: VOI {c['voi']:.3f} "
                                f"ARAND {c['arand']:.3f}")
            print("\n".join(line), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"threads": threads, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
