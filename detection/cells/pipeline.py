"""Cells of a volume of any size, block by block, from raw EM to a segmentation on disk.

The three steps of :mod:`detection.cells.segmentation` over a whole volume, in bounded memory
(what the ``segment_cells`` jobs do across workers, here in one process, for the command line
and the benchmarks):

1. per block: the affinities of the block (read with the network's halo), stored as uint8;
2. per block: its fragments (ids offset by the block's index; the watershed sees a context
   margin of the neighbours' affinities), stored as uint64;
3. per block: the merges of its fragments, read with a context margin of its neighbours'
   fragments and affinities;
4. the merges of all blocks stitched (a union-find over fragment ids), then every block's
   fragments relabelled to cells.

Memory holds one block with its halo or context, plus the tables of fragment ids and merges (16
bytes per fragment), so it stays flat in the volume size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr
from numcodecs import Blosc

from detection.cells import segmentation as seg
from detection.cells.boundaries import AffinityNet
from detection.errors import InputError
from detection.io.sources import iter_blocks

logger = logging.getLogger(__name__)


def segment_volume(em, model: AffinityNet, out, *, block_shape=(64, 256, 256), context=None,
                   threshold: float | None = None, progress: Callable | None = None) -> dict:
    """Segment ``em`` (a (Z, Y, X) array-like read by slices: zarr, h5py or numpy) into the zarr
    group ``out`` (a path): ``affinities`` (3, Z, Y, X) uint8 (x 1/255), ``fragments`` and
    ``cells`` (Z, Y, X) uint64. Returns the counts and the seconds of each step.

    ``block_shape`` must be whole network pixels in-plane (multiples of ``model.factor``);
    ``context`` (voxels around a block that its agglomeration sees) defaults to a quarter of
    the block. ``threshold`` defaults to the model's."""
    shape = tuple(int(s) for s in em.shape)
    if len(shape) != 3:
        raise InputError(f"the EM volume must be (Z, Y, X), not {shape}")
    block_shape = tuple(int(b) for b in block_shape)
    if any(b % s for b, s in zip(block_shape, model.grid_step)):
        raise InputError(f"block_shape {block_shape} must be multiples of {model.grid_step}, the "
                         "voxels of one network pixel")
    settings = model.agglomeration or {}
    threshold = settings.get("threshold") if threshold is None else threshold
    if threshold is None:
        raise InputError("the model carries no merge threshold; give one")
    context = tuple(context or (max(1, b // 4) for b in block_shape))
    parameters = seg.FragmentParameters(**settings.get("fragments", {}))
    scoring = settings.get("scoring", "mean")
    root = zarr.open_group(str(Path(out)), mode="w")
    compressor = Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE)
    affs_out = root.create_dataset("affinities", shape=(3,) + shape, chunks=(3,) + block_shape,
                                   dtype=np.uint8, compressor=compressor)
    frag_out = root.create_dataset("fragments", shape=shape, chunks=block_shape, dtype=np.uint64,
                                   compressor=compressor)
    cells_out = root.create_dataset("cells", shape=shape, chunks=block_shape, dtype=np.uint64,
                                    compressor=compressor)
    boxes = list(iter_blocks(shape, block_shape))
    halo = model.halo_voxels()
    seconds = {"affinities": 0.0, "fragments": 0.0, "merges": 0.0, "stitch": 0.0,
               "relabel": 0.0}
    total = 4 * len(boxes)
    done = 0
    for box in boxes:
        started = time.perf_counter()
        region = seg.grow_box(box, halo, shape)
        affs = model.predict_region(np.asarray(em[region]), core=seg.inner_box(box, region),
                                    offset=[r.start for r in region], whole_shape=shape)
        affs_out[(slice(None),) + box] = np.round(affs * 255).astype(np.uint8)
        seconds["affinities"] += time.perf_counter() - started
        done += 1
        if progress:
            progress(done, total)
    fragment_ids = []
    for i, box in enumerate(boxes):
        started = time.perf_counter()
        region = seg.grow_box(box, context, shape)
        affs = affs_out[(slice(None),) + region].astype(np.float32) / 255
        frag = seg.block_fragments(affs, block_index=i, voxel_size=model.voxel_size,
                                   core=seg.inner_box(box, region), parameters=parameters)
        frag_out[box] = frag
        fragment_ids.append(np.unique(frag[frag > 0]))
        seconds["fragments"] += time.perf_counter() - started
        done += 1
        if progress:
            progress(done, total)
    merges = []
    for box in boxes:
        started = time.perf_counter()
        region = seg.grow_box(box, context, shape)
        affs = affs_out[(slice(None),) + region].astype(np.float32) / 255
        merges.append(seg.block_merges(affs, frag_out[region], seg.inner_box(box, region),
                                       threshold=threshold, scoring=scoring))
        seconds["merges"] += time.perf_counter() - started
        done += 1
        if progress:
            progress(done, total)
    started = time.perf_counter()
    ids, cells = seg.stitch(np.concatenate(fragment_ids) if fragment_ids else np.zeros(0),
                            np.concatenate(merges) if merges else np.zeros((0, 2)))
    seconds["stitch"] = time.perf_counter() - started
    for box in boxes:
        started = time.perf_counter()
        cells_out[box] = seg.relabel(frag_out[box], ids, cells)
        seconds["relabel"] += time.perf_counter() - started
        done += 1
        if progress:
            progress(done, total)
    root.attrs.update({"voxel_size": list(model.voxel_size), "threshold": threshold,
                       "block_shape": list(block_shape), "context": list(context)})
    return {"blocks": len(boxes), "fragments": len(ids),
            "cells": int(cells.max()) if len(cells) else 0,
            "merges": int(sum(len(m) for m in merges)),
            "seconds": {k: round(v, 2) for k, v in seconds.items()}}
