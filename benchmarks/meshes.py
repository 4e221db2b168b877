"""Speed of block-wise meshing (zmesh): voxels per second on one core, on the demo phantom.

The demo's phantom (48 x 384 x 384 voxels at 40 x 8 x 8 nm, 40 cells, seed 7) is meshed block
by block as a mesh_segmentation job's blocks do it (read the block grown by one voxel, mesh,
simplify, encode and write one fragment per segment), at a few block shapes and
simplification factors. The figure is the level's voxels over the wall time of all blocks.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/meshes.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from detection.cells.meshes import mesh_box, write_fragments
from detection.io.sources import iter_blocks
from detection.synthetic.phantom import make_phantom

VOXEL_SIZE = (40.0, 8.0, 8.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 384, 384))
    parser.add_argument("--cells", type=int, default=40)
    parser.add_argument("--blocks", type=int, nargs="+", default=(64, 256, 256),
                        help="z y x of a block; several triples allowed")
    parser.add_argument("--factors", type=int, nargs="+", default=(0, 10, 100))
    args = parser.parse_args(argv)
    if len(args.blocks) % 3:
        parser.error("--blocks takes z y x triples")
    blocks = [tuple(args.blocks[i:i + 3]) for i in range(0, len(args.blocks), 3)]
    if tuple(args.blocks) == (64, 256, 256):
        blocks = [(64, 256, 256), (32, 128, 128), (16, 64, 64)]

    t0 = time.perf_counter()
    phantom = make_phantom(tuple(args.shape), voxel_size=VOXEL_SIZE, n_cells=args.cells,
                           n_synapses=80, seed=7)
    labels = phantom.segmentation
    voxels = labels.size
    print(f"phantom {labels.shape} at 40 x 8 x 8 nm, {len(np.unique(labels)) - 1} cells "
          f"({time.perf_counter() - t0:.0f} s to generate)")
    print(f"{'block z y x':>14s} {'blocks':>6s} {'factor':>6s} {'seconds':>8s} "
          f"{'Mvoxels/s':>9s} {'triangles':>9s} {'fragments':>9s} {'MB':>6s}")
    for block in blocks:
        boxes = list(iter_blocks(labels.shape, block))
        for factor in args.factors:
            with tempfile.TemporaryDirectory() as folder:
                t0 = time.perf_counter()
                triangles = fragments = 0
                for box in boxes:
                    meshed = mesh_box(labels, box, voxel_size=VOXEL_SIZE,
                                      reduction_factor=factor)
                    write_fragments(folder, meshed, box, tag="b")
                    triangles += sum(len(f.faces) for f in meshed)
                    fragments += len(meshed)
                seconds = time.perf_counter() - t0
                size = sum(p.stat().st_size for p in Path(folder).iterdir())
            print(f"{' x '.join(map(str, block)):>14s} {len(boxes):6d} {factor:6d} "
                  f"{seconds:8.2f} {voxels / seconds / 1e6:9.2f} {triangles:9d} {fragments:9d} "
                  f"{size / 1e6:6.2f}")


if __name__ == "__main__":
    main()
