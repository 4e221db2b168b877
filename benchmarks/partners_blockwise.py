"""Block-wise partner assignment against the whole-volume call: rows, time and memory.

A phantom's site labels, cells and vesicle clouds are written to zarr; each method then runs
(1) on the whole volume read into memory and (2) block by block from the zarr arrays
(:func:`detection.partners.blocks.assign_blockwise`, what the ``assign_partners`` job's
tasks do, in one process).  Printed: whether the rows are identical, seconds, and the peak
of memory allocated during the call (tracemalloc; numpy arrays included), the largest block
crop and the margin.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/partners_blockwise.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc

import numpy as np
import zarr
from scipy import ndimage as ndi

from detection.partners import assign_partners
from detection.partners.blocks import (
    assign_blockwise,
    assignment_margin,
    block_crop,
    blockwise_site_boxes,
    sites_by_block,
)
from detection.synthetic.phantom import make_phantom


def measured(function):
    tracemalloc.start()
    t0 = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, seconds, peak / 2**20


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 512, 512))
    parser.add_argument("--synapses", type=int, default=300)
    parser.add_argument("--cells", type=int, default=140)
    parser.add_argument("--block", type=int, nargs=3, default=(32, 256, 256))
    args = parser.parse_args(argv)

    vs = (40.0, 8.0, 8.0)
    ph = make_phantom(tuple(args.shape), voxel_size=vs, n_cells=args.cells,
                      n_synapses=args.synapses, seed=1)
    labels, n_sites = ndi.label(ph.synapse_labels > 0, structure=np.ones((3, 3, 3), bool))
    with tempfile.TemporaryDirectory() as folder:
        stored = {}
        for name, array in (("sites", labels.astype(np.uint32)), ("cells", ph.segmentation),
                            ("vesicles", ph.vesicles)):
            stored[name] = zarr.open_array(f"{folder}/{name}.zarr", mode="w", shape=array.shape,
                                           chunks=(16, 128, 128), dtype=array.dtype)
            stored[name][...] = array
        del ph, labels
        boxes = blockwise_site_boxes(lambda box: stored["sites"][box], args.shape, args.block)
        blocks = sites_by_block(boxes, args.block)
        print(f"phantom {tuple(args.shape)} at 40 x 8 x 8 nm, {n_sites} sites; blocks of "
              f"{tuple(args.block)}: {len(blocks)} with sites")
        print(f"{'method':34s} {'same rows':>9s} {'whole s':>8s} {'whole MiB':>9s} "
              f"{'blocks s':>8s} {'blocks MiB':>10s} {'largest crop':>16s} {'margin':>16s}")
        for method, options in (("vesicle", {}), ("diffusion", {}),
                                ("diffusion", {"n_steps": 60})):
            def whole():
                arrays = {name: a[...] for name, a in stored.items()}
                return assign_partners(method, arrays["sites"], arrays["cells"], voxel_size=vs,
                                       presynaptic=arrays["vesicles"], **options)

            def blockwise():
                return assign_blockwise(method, stored["sites"], stored["cells"], voxel_size=vs,
                                        block_shape=args.block, presynaptic=stored["vesicles"],
                                        **options)

            rows, whole_s, whole_mb = measured(whole)
            block_rows, block_s, block_mb = measured(blockwise)
            margin = assignment_margin(method, voxel_size=vs, **options)
            crops = [block_crop([b for _, b in mine], margin, args.shape)
                     for mine in blocks.values()]
            largest = max(crops, key=lambda c: np.prod([s.stop - s.start for s in c]))
            label = method + "".join(f", {k} {v}" for k, v in options.items())
            print(f"{label:34s} {str(rows == block_rows):>9s} {whole_s:8.1f} {whole_mb:9.0f} "
                  f"{block_s:8.1f} {block_mb:10.0f} "
                  f"{' x '.join(str(s.stop - s.start) for s in largest):>16s} "
                  f"{' x '.join(map(str, margin)):>16s}")


if __name__ == "__main__":
    main()
