"""Throughput and peak memory of the synapse network's prediction on the real VNC volume.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD .venv/bin/python benchmarks/network_throughput.py

Runs ``predict_region`` block by block (as ``connectome-detect predict`` and detection jobs do)
over two sizes of the serial-section VNC volume (50 x 4.6 x 4.6 nm, 20 x 1024 x 640 voxels;
the first half of its sections, then all of it), each in a child process pinned to one thread
(``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``), and prints Mvoxel/s per core with the
start-up (interpreter, torch import, model file read) included and without it, and the child's
peak resident memory, which must not grow with the volume. With ``--device cuda`` (or when CUDA
is present) it measures the GPU too.

The network has the default architecture (``CnnParameters()``) with random weights: its speed
does not depend on what it learnt.
"""

import time

_STARTED = time.perf_counter()

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

DATA = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
VNC = DATA / "vnc_sstem_train.h5"


def measure(args) -> None:
    import h5py
    import torch

    from detection.blockwise import iter_probability_blocks
    from detection.synapses.cnn import SynapseCnn

    torch.set_num_threads(args.threads)
    loaded = time.perf_counter()
    try:
        model = SynapseCnn.load(args.model, device=args.device)
    except TypeError:  # a library from before the device option (for before / after figures)
        model = SynapseCnn.load(args.model)
    with h5py.File(VNC, "r") as f:
        raw = f["volumes/raw"]
        roi = (slice(0, args.sections), slice(0, raw.shape[1]), slice(0, raw.shape[2]))
        voxels = args.sections * raw.shape[1] * raw.shape[2]
        began = time.perf_counter()
        total = 0.0
        for _, probability in iter_probability_blocks(raw, model, roi=roi,
                                                      block_shape=args.block_shape):
            total += float(probability.sum())
        if args.device == "cuda":
            torch.cuda.synchronize()
        ended = time.perf_counter()
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else 0.0
    print(f"{voxels} {ended - _STARTED:.3f} {ended - began:.3f} {began - loaded:.3f} "
          f"{peak_gpu:.1f} {total:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", default="all", choices=["all", "measure"])
    parser.add_argument("--model")
    parser.add_argument("--sections", type=int)
    parser.add_argument("--device", default=None, choices=[None, "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--block-shape", type=int, nargs=3, default=[5, 512, 640],
                        help="the same blocks at both sizes, so peak memory compares")
    args = parser.parse_args()
    if args.phase == "measure":
        measure(args)
        return

    if not VNC.exists():
        raise SystemExit(f"real data {VNC} is absent (set SHARED_DATA to the shared data folder)")
    import torch
    from phases import run_phase

    from detection.synapses.cnn import CnnParameters, SynapseCnn

    torch.manual_seed(0)
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available()
                                                           else [])
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "random.cnn"
        model = dict(voxel_size=(50.0, 4.6, 4.6), parameters=CnnParameters(), mean=128.0,
                     std=40.0)
        try:
            SynapseCnn(**model, device="cpu").save(path)
        except TypeError:  # a library from before the device option
            SynapseCnn(**model).save(path)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        block = ["--block-shape", *map(str, args.block_shape)]
        print(f"network {CnnParameters().width} channels, {CnnParameters().depth} poolings; "
              f"blocks of {args.block_shape} voxels; {args.threads} thread(s); "
              f"python {sys.version.split()[0]}, torch {torch.__version__}")
        print("device  voxels      Mvoxel/s/core (with start-up)  (prediction only)  "
              "start-up s  peak RSS MiB  peak GPU MiB")
        for device in devices:
            for sections in (10, 20):
                out, peak = run_phase(__file__, ["--phase", "measure", "--model", str(path),
                                                 "--sections", str(sections), "--device", device,
                                                 "--threads", str(args.threads), *block],
                                      capture=True)
                voxels, whole, predicting, loading, gpu, _ = out.split()
                voxels, whole, predicting = int(voxels), float(whole), float(predicting)
                per_core = args.threads if device == "cpu" else 1
                print(f"{device:6s}  {voxels:10d}  {voxels / whole / 1e6 / per_core:29.3f}  "
                      f"{voxels / predicting / 1e6 / per_core:17.3f}  "
                      f"{whole - predicting:10.2f}  {peak:12.0f}  {float(gpu):12.0f}")


if __name__ == "__main__":
    main()
