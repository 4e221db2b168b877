"""Cells from EM on the demo's phantoms, whole and block by block: how far the block-wise path
(what the ``segment_cells`` jobs compute, equal to ``segment_blockwise`` on the stored
affinities) lies from the whole volume's segmentation, and both from the phantom's cells.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cells_blockwise_phantom.py \
        [--model /tmp/demo_cells.aff] [--json docs/cells_blockwise_phantom.json]

The cell model is trained as the demo trains it (``manage.py demo --from-em``: the training
phantom, seed 101, its last quarter of sections held out to choose the merge threshold), or
read from ``--model`` (written there after training, so a second run only segments). The demo
phantom (seed 7, 48 x 384 x 384 voxels of 40 x 8 x 8 nm, 40 cells) is predicted whole, its
affinities stored as the jobs store them (``round(255 a)``), then segmented whole
(``segmentation.segment``) and block by block with several block shapes and context margins.

VOI in bits: against the phantom, split = H(seg | truth), merge = H(truth | seg), membrane left
out; between the block-wise and the whole-volume segmentations, the whole one takes the place of
the truth (split: whole cells the blocks cut, merge: whole cells the blocks join).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detection.cells import segmentation as seg
from detection.cells.boundaries import AffinityNet, AffinityParameters, LabelVolume
from detection.cells.evaluation import adapted_rand_error, variation_of_information
from detection.cells.training import train_cell_model
from detection.synthetic.phantom import make_phantom

VOXEL_SIZE = (40.0, 8.0, 8.0)
#: As the demo trains its cell model (connectome/imports/management/commands/demo.py).
TRAINING = AffinityParameters(width=4, depth=2, patch=(8, 64, 64), batch=1, iterations=100,
                              learning_rate=0.006, seed=0)
VALIDATION_FRACTION = 0.25
#: (block shape, context) pairs; the first is the demo's.
BLOCKINGS = [((48, 192, 192), (8, 48, 48)), ((48, 192, 192), (0, 0, 0)),
             ((48, 192, 192), (8, 96, 96)), ((16, 128, 128), (4, 32, 32)),
             ((16, 128, 128), (8, 64, 64)), ((8, 96, 96), (4, 32, 32))]


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def model_for(path: Path | None) -> AffinityNet:
    if path is not None and path.exists():
        return AffinityNet.load(path, voxel_size=VOXEL_SIZE)
    training = make_phantom((32, 256, 256), voxel_size=VOXEL_SIZE, n_cells=30, n_synapses=40,
                            seed=101)
    cut = 32 - round(32 * VALIDATION_FRACTION)
    started, cpu = time.perf_counter(), cpu_s()
    model = train_cell_model(
        [LabelVolume("training part", training.em[:cut], VOXEL_SIZE,
                     training.segmentation[:cut])],
        [LabelVolume("validation part", training.em[cut:], VOXEL_SIZE,
                     training.segmentation[cut:])],
        voxel_size=VOXEL_SIZE, parameters=TRAINING)
    model.training["wall_s"] = round(time.perf_counter() - started, 1)
    model.training["cpu_s"] = round(cpu_s() - cpu, 1)
    if path is not None:
        model.save(path)
    return model


def scores(labels: np.ndarray, truth: np.ndarray) -> dict:
    voi = variation_of_information(labels, truth)
    return {"cells": len(np.unique(labels[labels > 0])), "voi_split": round(voi.split, 4),
            "voi_merge": round(voi.merge, 4),
            "arand": round(adapted_rand_error(labels, truth).error, 4)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="cell model file: read, or written once "
                                                   "trained")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    model = model_for(args.model)
    threshold = model.agglomeration["threshold"]
    settings = model.agglomeration
    parameters = seg.FragmentParameters(**settings.get("fragments", {}))
    phantom = make_phantom((48, 384, 384), voxel_size=VOXEL_SIZE, n_cells=40, n_synapses=80,
                           seed=7)
    truth = phantom.segmentation
    started, cpu = time.perf_counter(), cpu_s()
    affs = model.predict_region(phantom.em)
    predicted = {"wall_s": round(time.perf_counter() - started, 1),
                 "cpu_s": round(cpu_s() - cpu, 1)}
    # As the jobs store them: round(255 a), read back as float32.
    affs = np.rint(np.clip(affs, 0, 1) * 255).astype(np.uint8).astype(np.float32) / \
        np.float32(255)
    whole = seg.segment(affs, voxel_size=VOXEL_SIZE, threshold=threshold, parameters=parameters,
                        scoring=settings.get("scoring", "mean"))
    figures = {"training": model.training, "threshold": threshold, "prediction": predicted,
               "whole": scores(whole, truth), "blockwise": []}
    print(f"cell model: threshold {threshold:.2f}, training {model.training}")
    print(f"prediction of {phantom.em.shape}: {predicted}")
    print(f"whole volume: {figures['whole']}")
    for block_shape, context in BLOCKINGS:
        started = time.perf_counter()
        blocks = seg.segment_blockwise(affs, voxel_size=VOXEL_SIZE, threshold=threshold,
                                       block_shape=block_shape, context=context,
                                       parameters=parameters,
                                       scoring=settings.get("scoring", "mean"))
        between = variation_of_information(blocks, whole)
        row = {"block_shape": list(block_shape), "context": list(context),
               "seconds": round(time.perf_counter() - started, 1),
               "against_whole": {"voi_split": round(between.split, 4),
                                 "voi_merge": round(between.merge, 4),
                                 "arand": round(adapted_rand_error(blocks, whole).error, 4)},
               "against_truth": scores(blocks, truth)}
        figures["blockwise"].append(row)
        print(f"blocks {block_shape}, context {context}: against the whole volume "
              f"{row['against_whole']}; against the phantom {row['against_truth']} "
              f"({row['seconds']} s)")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return figures


if __name__ == "__main__":
    main()
