"""Throughput and peak memory of cells from raw EM, end to end (affinity network, watershed,
agglomeration, stitching), block by block, on phantoms of growing size.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cells_throughput.py [--sizes 32 128 1024]
        [--work /tmp/cells_throughput] [--json docs/cells_throughput.json] [--device cpu|cuda]

A phantom (``detection.synthetic.phantom``, 40 x 8 x 8 nm, 32 x 256 x 256 voxels) is mirrored
tile by tile into a zarr volume of each size (in Mvoxel). Its cell model is trained once on
another phantom (pixel 16 nm, the threshold chosen on a third) and cached in ``--work``. Each
size runs :func:`detection.cells.pipeline.segment_volume` in a fresh process, which reports its
seconds per step and its peak resident memory; memory flat in the volume size is the point.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VOXEL_SIZE = (40.0, 8.0, 8.0)
TILE = (32, 256, 256)
BLOCK = (32, 256, 256)


def phantom(seed: int):
    from detection.synthetic.phantom import make_phantom

    return make_phantom(TILE, voxel_size=VOXEL_SIZE, n_cells=30, n_synapses=10, seed=seed)


def model_path(work: Path) -> Path:
    from detection.cells.boundaries import AffinityParameters, LabelVolume
    from detection.cells.training import train_cell_model

    path = work / "phantom_cells.aff"
    if path.exists():
        return path
    train, validation = phantom(11), phantom(12)
    model = train_cell_model(
        [LabelVolume("phantom 11", train.em, VOXEL_SIZE, train.segmentation)],
        [LabelVolume("phantom 12", validation.em, VOXEL_SIZE, validation.segmentation)],
        voxel_size=VOXEL_SIZE,
        parameters=AffinityParameters(pixel_nm=16, width=8, depth=2, iterations=200, batch=1,
                                      patch=(16, 96, 96)))
    model.save(path)
    return path


def tiled_volume(work: Path, mvoxels: int) -> Path:
    """A zarr array of about ``mvoxels`` Mvoxel: the phantom's EM mirrored tile by tile."""
    path = work / f"em_{mvoxels}.zarr"
    if path.exists():
        return path
    em = phantom(13).em
    tiles_yx = max(1, int(np.sqrt(mvoxels * 1e6 / (TILE[0] * 4) / (TILE[1] * TILE[2]))))
    shape = (TILE[0] * 4, TILE[1] * tiles_yx, TILE[2] * tiles_yx)
    while np.prod(shape) < mvoxels * 1e6 * 0.95:
        shape = (shape[0] + TILE[0],) + shape[1:]
    array = zarr.open(str(path), mode="w", shape=shape, chunks=BLOCK, dtype=np.uint8)
    for z in range(0, shape[0], TILE[0]):
        for y in range(0, shape[1], TILE[1]):
            for x in range(0, shape[2], TILE[2]):
                tile = em
                for axis, index in enumerate((z // TILE[0], y // TILE[1], x // TILE[2])):
                    if index % 2:
                        tile = np.flip(tile, axis)
                array[z:z + TILE[0], y:y + TILE[1], x:x + TILE[2]] = tile
    return path


def run_one(model: Path, volume: Path, out: Path, device: str) -> dict:
    """In this process: segment ``volume`` and report the time and the peak memory."""
    from detection.cells.boundaries import AffinityNet
    from detection.cells.pipeline import segment_volume

    em = zarr.open(str(volume), mode="r")
    net = AffinityNet.load(model, device=device)
    started = time.perf_counter()
    summary = segment_volume(em, net, out, block_shape=BLOCK)
    seconds = time.perf_counter() - started
    voxels = int(np.prod(em.shape))
    summary["step_seconds"] = summary.pop("seconds")
    return {"shape": list(em.shape), "voxels": voxels, "seconds": round(seconds, 1),
            "voxels_per_second": round(voxels / seconds),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            **summary}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 128],
                        help="volume sizes in Mvoxel")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cells_throughput"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(Path(args.one[0]), Path(args.one[1]), Path(args.one[2]),
                                 args.device)))
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    model = model_path(args.work)
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    results = []
    for size in args.sizes:
        volume = tiled_volume(args.work, size)
        out = args.work / f"cells_{size}.zarr"
        done = subprocess.run([sys.executable, __file__, "--device", args.device, "--one",
                               str(model), str(volume), str(out)],
                              check=True, capture_output=True, text=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        r["voxels_per_second_per_thread"] = round(r["voxels_per_second"] / threads)
        results.append(r)
        print(f"{r['voxels'] / 1e6:.0f} Mvoxel {tuple(r['shape'])}: {r['seconds']:.0f} s, "
              f"{r['voxels_per_second'] / 1e6:.3f} Mvoxel/s on {threads} threads "
              f"({r['voxels_per_second_per_thread'] / 1e6:.3f} per thread), peak "
              f"{r['peak_rss_mib']} MiB; {r['fragments']} fragments, {r['cells']} cells; "
              f"seconds per step {json.dumps(r['step_seconds'])}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"threads": threads, "device": args.device,
                                         "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
