"""Throughput and peak memory of the synapse voxel classifier, features to probabilities.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/detection_throughput.py --data vnc
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/detection_throughput.py --data vnc --tiles 2 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/detection_throughput.py --gvoxels 1
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/detection_throughput.py --detector cnn

``--data vnc`` measures real data: the ssTEM volume ``vnc_sstem_train.h5`` (20 x 1024 x 640
voxels of 50 x 4.6 x 4.6 nm, from ``$SHARED_DATA``, by default ``../shared/data``), tiled
``--tiles`` times in y and x with mirror flips (peak memory is compared between two tilings),
in a zarr store, with a model trained on that volume's synapse mask (training not counted).
The prediction uses the library's default blocks. Its time runs from the start of the
prediction process (imports and model load included) to the last block written, and the
figure per core is voxels over that wall time with ``OMP_NUM_THREADS=1``; the process's CPU
time (user + system) is printed too, the steadier figure on a shared machine.

To measure other code (e.g. before a change) with this script, run it with ``PYTHONPATH``
pointing at a checkout of that code: both phases, training included, import the library from
there; the first line says which was used.

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

STARTED = time.perf_counter()  # the prediction's start-up (imports, model load) counts

from pathlib import Path

import numpy as np
import zarr
from phases import run_phase

import detection
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
DATA = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
VNC = "vnc_sstem_train.h5"


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


def setup_vnc(scratch: Path, tiles) -> None:
    """Train on the VNC volume with the benchmark's parameters; write it tiled to zarr."""
    import h5py

    with h5py.File(DATA / VNC, "r") as f:
        em = f["volumes/raw"][:]
        voxel = tuple(float(v) for v in f["volumes/raw"].attrs["resolution"])
        mask = f["volumes/labels/synapse_mask"][:]
    targets = clean_targets(labels_to_targets(mask, convention="binary"), voxel_size=voxel,
                            ignore_band_nm=16.0)
    model = train_voxel_classifier(em, targets, voxel_size=voxel,
                                   parameters=TrainingParameters(n_estimators=200))
    model.save(scratch / "synapses.model")
    ty, tx = tiles
    shape = (em.shape[0], em.shape[1] * ty, em.shape[2] * tx)
    volume = zarr.open(str(scratch / "em.zarr"), mode="w", shape=shape,
                       chunks=(em.shape[0], 256, 256), dtype=np.uint8)
    for j in range(ty):
        for i in range(tx):
            volume[:, j * em.shape[1]:(j + 1) * em.shape[1], i * em.shape[2]:(i + 1) * em.shape[2]] = \
                em[:, :: (-1) ** j, :: (-1) ** i]
    volume.attrs["voxel_size"] = list(voxel)


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
    volume = zarr.open(str(scratch / "em.zarr"), mode="r")
    voxel = tuple(volume.attrs.get("voxel_size", VOXEL))
    model = load_synapse_model(scratch / "synapses.model", voxel_size=voxel)
    out = zarr.open(str(scratch / "prob.zarr"), mode="w", shape=volume.shape,
                    chunks=(32, 256, 256), dtype=np.uint8)
    loaded = time.perf_counter()
    n_blocks = 0
    block = tuple(block) if block else None
    for box, p in iter_probability_blocks(volume, model, block_shape=block):
        out[box] = np.rint(p * 255).astype(np.uint8)
        n_blocks += 1
        if block is None:
            block = tuple(s.stop - s.start for s in box)
    elapsed = time.perf_counter() - STARTED
    cpu = sum(os.times()[:2])
    what = (f"{len(model.feature_names)} features" if hasattr(model, "feature_names")
            else f"network at {model.factor} pixel(s) per network pixel")
    print(f"volume {volume.shape} = {volume.size / 1e6:.1f} Mvoxels at {voxel} nm; {what}; "
          f"{n_blocks} blocks of {block}; wall {elapsed:.1f} s (start-up and model load "
          f"{loaded - STARTED:.1f} s); CPU {cpu:.1f} s; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"throughput {volume.size / elapsed / 1e6:.2f} Mvoxel/s per core (wall, when "
          f"OMP_NUM_THREADS=1); {volume.size / cpu / 1e6:.2f} Mvoxel per CPU second")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=["phantom", "vnc"], default="phantom")
    parser.add_argument("--gvoxels", type=float, default=1.0, help="phantom volume size")
    parser.add_argument("--tiles", nargs=2, type=int, default=(1, 1),
                        help="VNC volume tiled this many times in y and x")
    parser.add_argument("--block", nargs=3, type=int,
                        help="block shape (default: 32 512 512 for the phantom, the library's "
                             "default for the VNC volume)")
    parser.add_argument("--scratch", type=Path)
    parser.add_argument("--detector", choices=["trees", "cnn"], default="trees")
    parser.add_argument("--phase", choices=["setup", "run"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "setup":
        if args.data == "vnc":
            return setup_vnc(args.scratch, args.tiles)
        return setup(args.scratch, args.gvoxels, args.detector)
    if args.phase == "run":
        return run(args.scratch, args.block)
    if args.data == "vnc" and args.detector != "trees":
        parser.error("--data vnc measures the trees detector")
    if args.data == "vnc" and not (DATA / VNC).exists():
        raise SystemExit(f"skipped: {DATA / VNC} is absent (set SHARED_DATA)")
    block = args.block or ((32, 512, 512) if args.data == "phantom" else None)
    print(f"library: {Path(detection.__file__).parent}")
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="connectome-throughput-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        run_phase(__file__, ["--phase", "setup", "--scratch", str(scratch), "--gvoxels",
                             str(args.gvoxels), "--detector", args.detector, "--data", args.data,
                             "--tiles", *map(str, args.tiles)])
        print(f"setup (train, build the volume): {time.perf_counter() - t0:.0f} s")
        _, peak = run_phase(__file__, ["--phase", "run", "--scratch", str(scratch)]
                            + (["--block", *map(str, block)] if block else []))
        print(f"peak RSS of the prediction process: {peak:.0f} MiB")
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
