"""Throughput and peak memory of the synapse voxel classifier, features to probabilities.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/detection_throughput.py --gvoxels 1
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/detection_throughput.py --detector cnn

``--detector cnn`` measures the network of :mod:`detection.synapses.cnn` instead (trained for a few
hundred steps only: its speed does not depend on how well it learnt).

Trains a model on a small phantom, then builds a phantom volume of the requested size in a
zarr store (a generated phantom block tiled with mirror flips, since generating one
gigavoxel phantom at once needs 16 GB), and runs the block-wise prediction over all of it,
writing the probability as uint8 zarr, as ``connectome-detect predict`` does. Prints voxels per
second per core (pin the process to one core with OMP_NUM_THREADS=1, or divide by the cores
used) and the process's peak resident memory, which must not grow with the volume: run it at
two sizes to see.
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from phases import run_phase

from detection.blockwise import iter_probability_blocks
from detection.synapses.classify import (
    TrainingParameters,
    clean_targets,
    labels_to_targets,
    train_voxel_classifier,
)
from detection.synapses.model_files import load_synapse_model
from detection.synthetic.phantom import make_phantom

VOXEL = (40.0, 8.0, 8.0)


def build_volume(path: Path, gvoxels: float, tile) -> zarr.Array:
    z = max(tile.shape[0], int(round(gvoxels * 1e9 / (2048 * 2048) / tile.shape[0])) * tile.shape[0])
    shape = (z, 2048, 2048)
    volume = zarr.open(str(path), mode="w", shape=shape, chunks=(32, 256, 256), dtype=np.uint8)
    tz, ty, tx = tile.shape
    for k, z0 in enumerate(range(0, shape[0], tz)):
        for j, y0 in enumerate(range(0, shape[1], ty)):
            for i, x0 in enumerate(range(0, shape[2], tx)):
                block = tile[:, :: (-1) ** j, :: (-1) ** i]
                volume[z0:z0 + tz, y0:y0 + ty, x0:x0 + tx] = block[: shape[0] - z0, : shape[1] - y0, : shape[2] - x0]
    return volume


def setup(scratch: Path, gvoxels: float, detector: str) -> None:
    train_ph = make_phantom((32, 256, 256), voxel_size=VOXEL, n_cells=30, n_synapses=40, seed=11)
    targets = clean_targets(labels_to_targets(train_ph.synapse_labels, convention="binary"),
                            voxel_size=VOXEL, ignore_band_nm=16.0)
    if detector == "cnn":
        from detection.synapses.cnn import CnnParameters, train_cnn

        model = train_cnn(train_ph.em, targets, voxel_size=VOXEL,
                          parameters=CnnParameters(iterations=200))
    else:
        model = train_voxel_classifier(train_ph.em, targets, voxel_size=VOXEL,
                                       parameters=TrainingParameters(n_estimators=200))
    model.save(scratch / "synapses.model")
    tile = make_phantom((64, 512, 512), voxel_size=VOXEL, n_cells=120, n_synapses=160, seed=12).em
    build_volume(scratch / "em.zarr", gvoxels, tile)


def run(scratch: Path, block) -> None:
    model = load_synapse_model(scratch / "synapses.model", voxel_size=VOXEL)
    volume = zarr.open(str(scratch / "em.zarr"), mode="r")
    out = zarr.open(str(scratch / "prob.zarr"), mode="w", shape=volume.shape,
                    chunks=(32, 256, 256), dtype=np.uint8)
    started = time.perf_counter()
    n_blocks = 0
    for box, p in iter_probability_blocks(volume, model, block_shape=tuple(block)):
        out[box] = np.rint(p * 255).astype(np.uint8)
        n_blocks += 1
    elapsed = time.perf_counter() - started
    what = (f"{len(model.feature_names)} features" if hasattr(model, "feature_names")
            else f"network at {model.factor} pixel(s) per network pixel")
    print(f"volume {volume.shape} = {volume.size / 1e9:.2f} Gvoxels; {what}; {n_blocks} blocks "
          f"of {tuple(block)}; wall {elapsed:.0f} s; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"throughput {volume.size / elapsed / 1e6:.2f} Mvoxel/s (per core when OMP_NUM_THREADS=1)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gvoxels", type=float, default=1.0)
    parser.add_argument("--block", nargs=3, type=int, default=(32, 512, 512))
    parser.add_argument("--scratch", type=Path)
    parser.add_argument("--detector", choices=["trees", "cnn"], default="trees")
    parser.add_argument("--phase", choices=["setup", "run"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "setup":
        return setup(args.scratch, args.gvoxels, args.detector)
    if args.phase == "run":
        return run(args.scratch, args.block)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="connectome-throughput-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        run_phase(__file__, ["--phase", "setup", "--scratch", str(scratch), "--gvoxels",
                             str(args.gvoxels), "--detector", args.detector])
        print(f"setup (train on a phantom, build the phantom volume): {time.perf_counter() - t0:.0f} s")
        _, peak = run_phase(__file__, ["--phase", "run", "--scratch", str(scratch),
                                       "--block", *map(str, args.block)])
        print(f"peak RSS of the prediction process: {peak:.0f} MiB")
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
