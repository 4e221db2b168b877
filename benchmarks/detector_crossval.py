"""Cross-validated accuracy of the app's default detector training on the two real volumes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/detector_crossval.py [--detector trees]
        [--volumes vnc cardona] [--folds 3] [--json docs/detector_crossval.json]

Runs :func:`detection.synapses.training.train_detector`, the function the ``train_detector``
job and ``connectome-detect train`` run, with the job's defaults, on

- ``vnc_sstem_train.h5``: 20 x 1024 x 640 voxels of 50 x 4.6 x 4.6 nm, 33 synapses
  (``synapse_ids_3d``, 3D components of the cleft masks), and
- ``cardona_l1vnc_train.h5``: 30 x 224 x 512 voxels of 50 x 4 x 4 nm, 48 annotated area lists in
  the 3D sites of ``synapse_ids_3d``, with ``ignore_mask`` (synapses cut by the crop),

brought to one voxel size (the coarser pixel, 4.6 nm). It prints the nested spatial
cross-validation (per volume and pooled, precision / recall / F1 with 95 % intervals; the
post-processing of each fold is chosen on the other folds only), leave one volume out, the
chosen post-processing and the time. The labels are read as the job reads a label layer of
instance ids: nonzero is synapse, each id one site. With ``--errors`` it also prints the
misses and false positives of the held-out slabs by size, sections spanned and contrast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np

from detection.synapses.training import (
    DetectorOptions,
    TrainingVolume,
    describe,
    train_detector,
)

DATA = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
FILES = {
    "vnc": ("vnc_sstem_train.h5", None),
    "cardona": ("cardona_l1vnc_train.h5", "volumes/labels/ignore_mask"),
}


def load(name: str) -> TrainingVolume:
    filename, ignore = FILES[name]
    with h5py.File(DATA / filename, "r") as f:
        em = f["volumes/raw"][:]
        voxel_size = tuple(float(v) for v in f["volumes/raw"].attrs["resolution"])
        sites = f["volumes/labels/synapse_ids_3d"][:].astype(np.uint32)
        aux = {"mitochondria": (f["volumes/labels/mitochondria_mask"][:] > 0).astype(np.int8),
               "membrane": (f["volumes/labels/membrane_mask"][:] > 0).astype(np.int8)}
        mask = f[ignore][:] > 0 if ignore else None
    targets = (sites > 0).astype(np.int8)
    if mask is not None:
        targets[mask & (sites == 0)] = -1
    return TrainingVolume(name=name, em=em, voxel_size=voxel_size, targets=targets, sites=sites,
                          ignore=mask, aux=aux)


def print_errors(rows: list[dict]) -> None:
    """Sites found / missed and predictions true / false, by volume, size, sections, contrast."""
    def table(title, key, bins):
        print(f"\n{title}")
        print("| | sites found | missed | predictions true | false |")
        print("|---|---|---|---|---|")
        for label, test in bins:
            chosen = [r for r in rows if test(r[key] if key else r)]
            count = {o: sum(1 for r in chosen if r["outcome"] == o)
                     for o in ("found", "missed", "true", "false")}
            print(f"| {label} | {count['found']} | {count['missed']} | {count['true']} | "
                  f"{count['false']} |")

    volumes = sorted({r["volume"] for r in rows})
    table("by volume", "volume", [(v, lambda x, v=v: x == v) for v in volumes])
    table("by size (nm^3)", "nm3", [("< 1e6", lambda x: x < 1e6),
                                    ("1e6 - 3e6", lambda x: 1e6 <= x < 3e6),
                                    ("3e6 - 1e7", lambda x: 3e6 <= x < 1e7),
                                    (">= 1e7", lambda x: x >= 1e7)])
    table("by sections spanned", "sections", [("1", lambda x: x == 1), ("2", lambda x: x == 2),
                                              ("3-4", lambda x: 3 <= x <= 4),
                                              (">= 5", lambda x: x >= 5)])
    if rows and "contrast" in rows[0]:
        table("by contrast (shell minus inside, grey levels)", "contrast",
              [("< 40", lambda x: x < 40), ("40 - 60", lambda x: 40 <= x < 60),
               ("60 - 80", lambda x: 60 <= x < 80), (">= 80", lambda x: x >= 80)])
    table("by peak probability", "peak_probability",
          [("< 0.7", lambda x: x < 0.7), ("0.7 - 0.9", lambda x: 0.7 <= x < 0.9),
           (">= 0.9", lambda x: x >= 0.9)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--detector", default="trees", choices=["trees", "network"])
    parser.add_argument("--volumes", nargs="+", default=["vnc", "cardona"], choices=list(FILES))
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--iterations", type=int, help="network: training steps")
    parser.add_argument("--site-balance", type=float,
                        help="trees: TrainingParameters.site_balance (small synapses' positives "
                             "drawn more often)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--errors", action="store_true",
                        help="also print the misses and false positives of the held-out slabs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    missing = [FILES[v][0] for v in args.volumes if not (DATA / FILES[v][0]).exists()]
    if missing:
        print(f"skipped: {', '.join(missing)} not in {DATA}", file=sys.stderr)
        return 0
    volumes = [load(v) for v in args.volumes]
    options = DetectorOptions(detector=args.detector, folds=args.folds)
    if args.site_balance is not None:
        options.trees = replace(options.trees, site_balance=args.site_balance)
    if args.iterations:
        from detection.synapses.cnn import CnnParameters

        options.network = CnnParameters(iterations=args.iterations)
    started = time.perf_counter()
    last = [0.0]

    def progress(done, total, message):
        if time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            print(f"  {time.perf_counter() - started:6.0f} s  {done}/{total}  {message}",
                  file=sys.stderr, flush=True)

    parts = [] if args.errors else None
    model = train_detector(volumes, options, progress=progress, held_out=parts)
    seconds = time.perf_counter() - started
    figures = model.calibration.figures
    print(f"{args.detector} on {', '.join(args.volumes)} at "
          f"{' x '.join(f'{v:g}' for v in model.voxel_size)} nm, {args.folds} folds, "
          f"{seconds:.0f} s ({os.environ.get('OMP_NUM_THREADS', 'all')} thread(s))")
    print(describe(model.calibration))
    print("| volume | precision | recall | F1 (95 % interval) | tp / fp / fn |")
    print("|---|---|---|---|---|")
    rows = list(figures["per_volume"].items()) + [("pooled", figures["pooled"])]
    for name, f in rows:
        print(f"| {name} | {f['precision']:.3f} | {f['recall']:.3f} | {f['f1']:.3f} "
              f"({f['f1_interval'][0]:.2f}-{f['f1_interval'][1]:.2f}) | "
              f"{f['tp']} / {f['fp']} / {f['fn']} |")
    for name, f in figures.get("leave_one_volume_out", {}).items():
        print(f"| {name}, trained on the others only | {f['precision']:.3f} | {f['recall']:.3f} "
              f"| {f['f1']:.3f} ({f['f1_interval'][0]:.2f}-{f['f1_interval'][1]:.2f}) | "
              f"{f['tp']} / {f['fp']} / {f['fn']} |")
    for fold in figures["per_fold"]:
        print(f"fold {fold['fold']}: {fold['postprocessing']}: F1 {fold['f1']:.3f} "
              f"({fold['tp']} / {fold['fp']} / {fold['fn']})")
    errors = None
    if args.errors:
        from detection.synapses.calibration import error_table

        errors = error_table(parts, figures["per_fold"])
        print_errors(errors)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "errors": errors,
            "command": "benchmarks/detector_crossval.py " + " ".join(argv or sys.argv[1:]),
            "seconds": round(seconds, 1), "voxel_size": list(model.voxel_size),
            "figures": figures}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
