"""What the missing-chunk check costs when a zarr volume is read block by block.

    python benchmarks/zarr_chunk_check.py [--shape 128 2048 2048] [--chunks 64 64 64]

Writes a synthetic uint8 zarr array (EM-like texture, Blosc zstd) to a scratch folder, then
reads it whole in the importer's blocks (about 64 MiB each), once through
:class:`detection.io.sources.ZarrSource` (which notes every chunk key zarr asked the store for
and did not find, and fails on a missing one) and once straight from the zarr array (which
reads a missing chunk as the fill value). The order of the two passes alternates over
``--repeats`` rounds and the best time of each is printed.
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from numcodecs import Blosc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detection.io.sources import iter_blocks, open_volume  # noqa: E402

BLOCK_BYTES = 64 * 2**20


def block_shape(chunks, itemsize=1):
    block = list(chunks)
    while np.prod(block) * itemsize * 2 <= BLOCK_BYTES:
        axis = 1 if block[1] <= block[2] else 2
        block[axis] *= 2
    return tuple(block)


def write(path: Path, shape, chunks) -> None:
    array = zarr.open_array(str(path), mode="w", shape=shape, chunks=chunks, dtype="u1",
                            fill_value=0, compressor=Blosc(cname="zstd", clevel=3))
    rng = np.random.default_rng(0)
    y = np.arange(shape[1], dtype=np.float32)[:, None]
    x = np.arange(shape[2], dtype=np.float32)[None, :]
    for z0 in range(0, shape[0], chunks[0]):
        z1 = min(z0 + chunks[0], shape[0])
        slab = np.empty((z1 - z0, shape[1], shape[2]), dtype=np.uint8)
        for i, z in enumerate(range(z0, z1)):
            base = 150 + 40 * np.sin(x / 37.0 + z / 5.0) * np.cos(y / 29.0)
            noise = rng.normal(0, 12, size=(shape[1], shape[2])).astype(np.float32)
            slab[i] = np.clip(base + noise, 0, 255).astype(np.uint8)
        array[z0:z1] = slab


def read_all(path: Path, *, checked: bool) -> tuple[float, int]:
    start = time.perf_counter()
    total = 0
    if checked:
        with open_volume(path) as source:
            for box in iter_blocks(source.shape, block_shape(source.chunks)):
                total += int(source.read(box)[0, 0, 0])
    else:
        array = zarr.open_array(str(path), mode="r")
        for box in iter_blocks(array.shape, block_shape(array.chunks)):
            total += int(array[box][0, 0, 0])
    return time.perf_counter() - start, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs=3, type=int, default=[128, 2048, 2048])
    parser.add_argument("--chunks", nargs=3, type=int, default=[64, 64, 64])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="zarr-chunk-check-"))
    try:
        path = scratch / "em.zarr"
        write(path, tuple(args.shape), tuple(args.chunks))
        voxels = int(np.prod(args.shape))
        n_chunks = int(np.prod([-(-n // c) for n, c in zip(args.shape, args.chunks)]))
        times = {True: [], False: []}
        for round_ in range(args.repeats):
            for checked in ((True, False) if round_ % 2 == 0 else (False, True)):
                seconds, _ = read_all(path, checked=checked)
                times[checked].append(seconds)
        with_check, without = min(times[True]), min(times[False])
        print(f"volume {' x '.join(map(str, args.shape))} uint8 ({voxels / 1e9:.2f} Gvoxel), "
              f"chunks {' x '.join(map(str, args.chunks))} ({n_chunks} chunks), "
              f"blocks {' x '.join(map(str, block_shape(args.chunks)))}")
        print(f"read with the missing-chunk check:    {with_check:.2f} s "
              f"({voxels / with_check / 1e6:.0f} Mvoxel/s)")
        print(f"read straight from zarr (no check):  {without:.2f} s "
              f"({voxels / without / 1e6:.0f} Mvoxel/s)")
        print(f"cost of the check: {100 * (with_check - without) / without:+.1f} % "
              f"({1e6 * (with_check - without) / n_chunks:+.1f} us per chunk)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
