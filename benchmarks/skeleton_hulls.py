"""Cell hulls from skeletons on real serial-section EM: how much of each cell they recover.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/skeleton_hulls.py [--data DIR] [--json FILE]

Data: ../shared/data/cardona_l1vnc_train.h5 (first-instar Drosophila VNC, Cardona et al.
2010; 30 x 224 x 512 voxels of 50 x 4 x 4 nm) with dense neurite labels linked across
sections (``volumes/labels/neuron_ids``, 0 = membrane). Skeletons are traced from those labels
with kimimaro (:func:`detection.cells.skeletonize.skeletonize_segmentation`), standing in for
the skeletons a lab traces by hand; the hulls are then painted by
:func:`detection.cells.hulls.skeleton_hulls` from two boundary maps:

* ``membrane``: the annotated membrane mask, smoothed in-plane (Gaussian, sigma 1 pixel): the
  boundary a good membrane network would give;
* ``EM``: the EM itself, smoothed (sigma 1.5 pixels), inverted and stretched between its 1st
  and 99th percentiles: membranes are dark, but so are mitochondria, vesicles and synaptic
  densities. A crude boundary, at several thresholds.

Printed per run: the time, and against the labels: the median and quartiles over cells of
the share of each cell's voxels its hull recovers, that share over all labelled voxels, and
the precision (the share of painted voxels that lie in the right cell). Also: the cells that
got a skeleton, the (cell, section) pairs with a labelled profile but no skeleton point, and
the check that block-wise painting (the job's way) equals the whole-volume result.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage as ndi

from detection.blockwise import with_halo
from detection.cells.hulls import (
    CellSkeleton,
    RayParameters,
    hull_block,
    hull_points,
    skeleton_hulls,
)
from detection.cells.skeletonize import skeletonize_segmentation
from detection.io.sources import iter_blocks

DATA = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
VOXEL = (50.0, 4.0, 4.0)


def em_boundary(raw: np.ndarray) -> np.ndarray:
    """The EM as a crude boundary map: dark is membrane."""
    smooth = ndi.gaussian_filter(raw.astype(np.float32), sigma=(0, 1.5, 1.5))
    low, high = np.percentile(smooth, [1, 99])
    return np.clip((high - smooth) / (high - low), 0, 1).astype(np.float32)


def scores(hulls: np.ndarray, ids: np.ndarray) -> dict:
    """Recovered share per labelled cell, over all labelled voxels, and precision."""
    labelled = ids > 0
    cells, sizes = np.unique(ids[labelled], return_counts=True)
    hit = labelled & (hulls == ids)
    recovered = np.bincount(np.searchsorted(cells, ids[hit]), minlength=cells.size) / sizes
    painted = hulls > 0
    q1, median, q3 = np.percentile(recovered, [25, 50, 75])
    return {
        "cells": int(cells.size),
        "recovered_median": round(float(median), 3),
        "recovered_q1": round(float(q1), 3),
        "recovered_q3": round(float(q3), 3),
        "recovered_voxels": round(float(hit.sum() / labelled.sum()), 3),
        "precision": round(float((hulls[painted] == ids[painted]).mean()), 3),
        "cells_below_half": int((recovered < 0.5).sum()),
    }


def uncovered_profiles(ids: np.ndarray, points) -> tuple[int, int]:
    """(cell, section) pairs with labelled voxels, and those without a skeleton point."""
    labelled = ids > 0
    z = np.nonzero(labelled)[0]
    profiles = np.unique(np.stack([z, ids[labelled]]), axis=1)
    with_point = set(zip(points.zyx[:, 0].tolist(), points.cell.tolist()))
    missing = sum((int(a), int(b)) not in with_point for a, b in profiles.T)
    return profiles.shape[1], missing


def blockwise(boundary, points, parameters, block_shape) -> tuple[np.ndarray, float]:
    shape = boundary.shape
    halo = parameters.halo(VOXEL)
    out = np.zeros(shape, dtype=np.uint64)
    started = time.perf_counter()
    for box in iter_blocks(shape, block_shape):
        outer, _ = with_halo(box, halo, shape)
        out[box] = hull_block(boundary[outer], points, box=box, halo=halo, shape=shape,
                              voxel_size=VOXEL, parameters=parameters)
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with h5py.File(args.data / "cardona_l1vnc_train.h5", "r") as f:
        ids = f["volumes/labels/neuron_ids"][:]
        membrane = f["volumes/labels/membrane_mask"][:]
        raw = f["volumes/raw"][:]
    print(f"volume {ids.shape}, {len(np.unique(ids)) - 1} labelled cells")

    started = time.perf_counter()
    traced = skeletonize_segmentation(ids, voxel_size=VOXEL, dust_threshold=100)
    skeletons = [CellSkeleton.from_nodes(c, n, voxel_size=VOXEL) for c, n in traced.items()]
    print(f"skeletons: {len(skeletons)} cells, {sum(len(s.nodes) for s in skeletons)} nodes, "
          f"{time.perf_counter() - started:.1f} s (kimimaro)")

    boundaries = {
        "membrane": ndi.gaussian_filter(membrane.astype(np.float32), sigma=(0, 1, 1)),
        "EM": em_boundary(raw),
    }
    runs = [("membrane", 0.5, 1000.0), ("membrane", 0.5, 500.0), ("EM", 0.5, 1000.0),
            ("EM", 0.6, 1000.0), ("EM", 0.7, 1000.0), ("EM", 0.8, 1000.0)]
    rows = []
    header = ("| boundary | threshold | max radius nm | points | s | recovered median (q1-q3) "
              "| recovered voxels | precision | cells < 50 % |")
    print("\n" + header + "\n|" + "---|" * 9)
    for name, threshold, radius in runs:
        parameters = RayParameters(threshold=threshold, max_radius_nm=radius)
        points = hull_points(skeletons, shape=ids.shape, voxel_size=VOXEL,
                             parameters=parameters)
        started = time.perf_counter()
        hulls = skeleton_hulls(boundaries[name], points, voxel_size=VOXEL,
                               parameters=parameters)
        seconds = time.perf_counter() - started
        row = {"boundary": name, "threshold": threshold, "max_radius_nm": radius,
               "points": len(points), "seconds": round(seconds, 2), **scores(hulls, ids)}
        rows.append(row)
        print(f"| {name} | {threshold} | {radius:g} | {len(points)} | {seconds:.1f} | "
              f"{row['recovered_median']:.3f} ({row['recovered_q1']:.3f}-"
              f"{row['recovered_q3']:.3f}) | {row['recovered_voxels']:.3f} | "
              f"{row['precision']:.3f} | {row['cells_below_half']} of {row['cells']} |")

    parameters = RayParameters()
    points = hull_points(skeletons, shape=ids.shape, voxel_size=VOXEL, parameters=parameters)
    profiles, missing = uncovered_profiles(ids, points)
    print(f"\n(cell, section) profiles with labelled voxels: {profiles}; without a skeleton "
          f"point: {missing} ({missing / profiles:.1%})")
    whole = skeleton_hulls(boundaries["membrane"], points, voxel_size=VOXEL,
                           parameters=parameters)
    block_shape = (8, 128, 128)
    stitched, seconds = blockwise(boundaries["membrane"], points, parameters, block_shape)
    equal = bool(np.array_equal(stitched, whole))
    print(f"block-wise ({' x '.join(map(str, block_shape))}, halo "
          f"{parameters.halo(VOXEL)}): {seconds:.1f} s, equal to the whole volume: {equal}")
    if args.json:
        args.json.write_text(json.dumps({
            "runs": rows, "profiles": profiles, "profiles_without_point": missing,
            "skeletons": len(skeletons), "blockwise_equal": equal,
            "blockwise_seconds": round(seconds, 2)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
