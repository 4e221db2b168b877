"""Command line: ``connectome-detect train | predict | evaluate``.

    connectome-detect train --volume vnc.h5 --dataset volumes/raw \\
        --labels vnc.h5 --labels-dataset volumes/labels/synapse_mask --label-convention binary \\
        [--detector cnn] --out synapses.model
    connectome-detect predict --volume vnc.h5 --dataset volumes/raw --model synapses.model \\
        --out-probability prob.zarr --out-table candidates.csv
    connectome-detect evaluate --table candidates.csv --instances instances.zarr \\
        --gt vnc.h5 --gt-dataset volumes/labels/synapse_ids_3d
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

logger = logging.getLogger("detection.cli")


class CliError(Exception):
    pass


def _roi(text: str | None):
    if not text:
        return None
    try:
        parts = [p.split(":") for p in text.split(",")]
        return tuple(slice(int(a), int(b)) for a, b in parts)
    except ValueError:
        raise CliError(f"--roi '{text}' is not of the form z0:z1,y0:y1,x0:x1") from None


def _open(path, dataset, args=None):
    """Open a volume; ``--voxel-size`` overrides what it states (also a statement that is not
    a usable voxel size) and ``--fill-missing`` reads missing chunks as the fill value."""
    from detection.io.sources import open_volume

    return open_volume(path, dataset=dataset,
                       voxel_size=getattr(args, "voxel_size", None) or None,
                       fill_missing=bool(getattr(args, "fill_missing", False)))


def _voxel_size(args, source) -> tuple[float, float, float]:
    if source.voxel_size is None:
        raise CliError(f"{Path(source.path).name} states no voxel size; pass --voxel-size Z Y X (nm)")
    if source.voxel_size_note:
        logger.warning("%s", source.voxel_size_note)
    return tuple(source.voxel_size)


def _progress(description: str, unit: str = "block"):
    bar = tqdm(desc=description, unit=unit, leave=False)

    def update(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


# --- train -----------------------------------------------------------------------------------

def cmd_train(args) -> None:
    from detection.synapses.classify import (
        TrainingParameters,
        clean_targets,
        labels_to_targets,
        train_voxel_classifier,
    )
    from detection.synapses.features import FeatureSpec

    other = (("--n-estimators", args.n_estimators), ("--scales-nm", args.scales_nm))
    if args.detector == "trees":
        other = (("--iterations", args.iterations), ("--pixel-nm", args.pixel_nm))
    given = [name for name, value in other if value is not None]
    if given:
        raise CliError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} not used by "
                       f"--detector {args.detector}")
    roi = _roi(args.roi) or (slice(None),) * 3
    with _open(args.volume, args.dataset, args) as source, \
            _open(args.labels, args.labels_dataset, args) as labels:
        if source.shape != labels.shape:
            raise CliError(f"volume shape {source.shape} and label shape {labels.shape} differ")
        voxel_size = _voxel_size(args, source)
        box = tuple(slice(*r.indices(n)[:2]) for r, n in zip(roi, source.shape))
        volume = source.read(box)
        targets = labels_to_targets(labels.read(box), convention=args.label_convention)
    targets = clean_targets(targets, voxel_size=voxel_size, erode_nm=args.erode_nm,
                            ignore_band_nm=args.ignore_band_nm)
    logger.info("training on %s voxels: %d positive, %d negative", volume.shape,
                int((targets == 1).sum()), int((targets == 0).sum()))
    source = {"volume": str(args.volume), "labels": str(args.labels), "roi": args.roi,
              "label_convention": args.label_convention}
    if args.detector == "cnn":
        from detection.synapses.cnn import CnnParameters, train_cnn

        given = {"iterations": args.iterations, "pixel_nm": args.pixel_nm, "seed": args.seed}
        parameters = CnnParameters(**{k: v for k, v in given.items() if v is not None})
        try:
            model = train_cnn(volume, targets, voxel_size=voxel_size, parameters=parameters,
                              progress=_progress("train", unit="step"))
        except ValueError as exc:
            raise CliError(str(exc)) from None
        model.training["source"] = source
        model.save(args.out)
        print(f"wrote {args.out}: network of {parameters.iterations} steps at {model.factor} pixel(s) "
              f"per network pixel, {model.training['positive_pixels']} synapse pixels")
        return
    spec = FeatureSpec(scales_nm=tuple(args.scales_nm)) if args.scales_nm else FeatureSpec()
    rounds = {"n_estimators": args.n_estimators} if args.n_estimators else {}
    parameters = TrainingParameters(**rounds, seed=args.seed)
    model = train_voxel_classifier(volume, targets, voxel_size=voxel_size, feature_spec=spec,
                                   parameters=parameters)
    model.training["source"] = source
    model.save(args.out)
    print(f"wrote {args.out}: {len(model.feature_names)} features, trained on "
          f"{model.training['n_samples']} voxels ({model.training['n_positive']} positive)")


# --- predict ---------------------------------------------------------------------------------

CANDIDATE_FIELDS = ["id", "z_nm", "y_nm", "x_nm", "size_voxels", "size_nm3", "score",
                    "max_probability", "bbox_min", "bbox_max"]


def write_candidates(path, candidates) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CANDIDATE_FIELDS)
        for c in candidates:
            writer.writerow([c.id, *(f"{v:.6g}" for v in c.center), c.size_voxels,
                             f"{c.size_nm3:.6g}", f"{c.score:.6g}", f"{c.max_probability:.6g}",
                             " ".join(map(str, c.bbox_min)), " ".join(map(str, c.bbox_max))])


def read_candidate_points(path) -> np.ndarray:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"z_nm", "y_nm", "x_nm"} - set(rows[0] if rows else {"z_nm", "y_nm", "x_nm"})
    if missing:
        raise CliError(f"{Path(path).name}: columns {sorted(missing)} missing")
    return np.array([[float(r["z_nm"]), float(r["y_nm"]), float(r["x_nm"])] for r in rows]).reshape(-1, 3)


def cmd_predict(args) -> None:
    from detection.blockwise import iter_probability_blocks
    from detection.synapses.instances import InstanceStitcher
    from detection.synapses.model_files import load_synapse_model
    from detection.synapses.split import SplitParameters

    split = None
    if args.split_min_distance_nm > 0:
        split = SplitParameters(smooth_nm=args.split_smooth_nm,
                                min_distance_nm=args.split_min_distance_nm,
                                min_depth=args.split_min_depth,
                                min_piece_voxels=args.split_min_piece)
    with _open(args.volume, args.dataset, args) as source:
        voxel_size = _voxel_size(args, source)
        model = load_synapse_model(args.model, voxel_size=voxel_size,
                                   allow_other_voxel_size=args.allow_other_voxel_size)
        shape = tuple(source.shape)
        probability = zarr.open(str(args.out_probability), mode="w", shape=shape,
                                chunks=(min(shape[0], 16), 256, 256), dtype=np.uint8)
        probability.attrs.update({"voxel_size": list(voxel_size), "scale": "probability * 255",
                                  "model": str(args.model)})
        stitcher = InstanceStitcher(voxel_size=voxel_size, high=args.high, low=args.low,
                                    min_size_voxels=args.min_size, split=split,
                                    min_score=args.min_score)
        for box, p in iter_probability_blocks(source, model, block_shape=args.block_shape,
                                              roi=_roi(args.roi), progress=_progress("predict")):
            stored = np.rint(p * 255).astype(np.uint8)
            probability[box] = stored
            stitcher.add_block(box, stored / 255.0)
        # The split reads each component's bounding box back from the stored probability.
        candidates = stitcher.candidates(read_probability=lambda box: probability[box] / 255.0)
    if args.out_table:
        write_candidates(args.out_table, candidates)
    if args.out_instances:
        instances = zarr.open(str(args.out_instances), mode="w", shape=shape,
                              chunks=probability.chunks, dtype=np.uint32)
        instances.attrs["voxel_size"] = list(voxel_size)
        for box in stitcher.boxes:
            instances[box] = stitcher.relabel_block(box, probability[box] / 255.0)
        # Chunks without synapses are written as zeros too: a missing chunk reads as an
        # error (it could be a deleted one), so the array is stored whole.
        from detection.io.sources import iter_blocks

        for box in iter_blocks(shape, instances.chunks):
            index = tuple(s.start // c for s, c in zip(box, instances.chunks))
            if instances._chunk_key(index) not in instances.store:
                instances[box] = 0
    print(f"{len(candidates)} synapse candidates; probability in {args.out_probability}"
          + (f", table in {args.out_table}" if args.out_table else ""))


# --- evaluate --------------------------------------------------------------------------------

def cmd_evaluate(args) -> None:
    from detection.metrics import match_by_distance, match_by_overlap

    results = {}
    with _open(args.gt, args.gt_dataset, args) as gt_source:
        voxel_size = _voxel_size(args, gt_source)
        gt = gt_source.read(tuple(slice(0, n) for n in gt_source.shape))
    if args.instances:
        with _open(args.instances, None, args) as pred_source:
            if pred_source.shape != gt.shape:
                raise CliError(f"instances {pred_source.shape} and ground truth {gt.shape} differ in shape")
            pred = pred_source.read(tuple(slice(0, n) for n in pred_source.shape))
        results["overlap"] = match_by_overlap(pred, gt, min_overlap_voxels=args.min_overlap).to_dict()
    if args.table:
        from detection.cells.segment_stats import SegmentStatistics

        stats = SegmentStatistics()
        stats.add(gt)
        table = stats.result()
        gt_points = table.centroid * np.asarray(voxel_size)
        scores = match_by_distance(read_candidate_points(args.table), gt_points,
                                   tolerance_nm=args.tolerance_nm)
        results[f"distance@{args.tolerance_nm:g}nm"] = scores.to_dict()
    if not results:
        raise CliError("give --instances (overlap matching) and/or --table (distance matching)")
    for name, scores in results.items():
        scores.pop("matches", None)
        print(f"{name}: precision {scores['precision']:.3f} recall {scores['recall']:.3f} "
              f"F1 {scores['f1']:.3f} (tp {scores['tp']}, fp {scores['fp']}, fn {scores['fn']})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


# --- entry point -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from detection.io.sources import voxel_size_argument

    parser = argparse.ArgumentParser(prog="connectome-detect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def voxel_args(p):
        p.add_argument("--voxel-size", nargs=3, type=voxel_size_argument, metavar=("Z", "Y", "X"),
                       help="nm; when the file does not state it (or states it wrongly)")
        p.add_argument("--fill-missing", action="store_true",
                       help="zarr/precomputed: read missing chunks as the fill value instead "
                            "of failing")

    def volume_args(p, *, required=True):
        p.add_argument("--volume", required=required, help="TIFF, HDF5, zarr or precomputed")
        p.add_argument("--dataset", help="dataset inside an HDF5/zarr file")
        voxel_args(p)
        p.add_argument("--roi", help="z0:z1,y0:y1,x0:x1 voxels")

    train = sub.add_parser("train", help="train a synapse detector from labels")
    volume_args(train)
    train.add_argument("--detector", choices=["trees", "cnn"], default="trees",
                       help="boosted trees on feature channels and context cues (default), or "
                            "the 2.5D U-Net")
    train.add_argument("--labels", required=True)
    train.add_argument("--labels-dataset")
    train.add_argument("--label-convention", choices=["ccboost", "binary", "classes"], default="ccboost")
    train.add_argument("--erode-nm", type=float, default=0.0)
    train.add_argument("--ignore-band-nm", type=float, default=50.0)
    train.add_argument("--scales-nm", nargs="+", type=float, help="trees: feature scales (nm)")
    train.add_argument("--n-estimators", type=int, help="trees: boosting rounds (default 300)")
    train.add_argument("--iterations", type=int, help="cnn: training steps (default 1200)")
    train.add_argument("--pixel-nm", type=float,
                       help="cnn: in-plane pixel the network works at (nm, default 10)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", required=True, help="model file to write")
    train.set_defaults(func=cmd_train)

    predict = sub.add_parser("predict", help="probability volume and synapse candidates")
    volume_args(predict)
    predict.add_argument("--model", required=True)
    predict.add_argument("--allow-other-voxel-size", action="store_true")
    predict.add_argument("--out-probability", required=True, help="zarr array to write (uint8)")
    predict.add_argument("--out-table", help="CSV of candidates")
    predict.add_argument("--out-instances", help="zarr array of instance labels")
    predict.add_argument("--high", type=float, default=0.8)
    predict.add_argument("--low", type=float, default=0.5)
    predict.add_argument("--min-size", type=int, default=100, help="voxels")
    predict.add_argument("--min-score", type=float, default=0.0,
                         help="drop instances whose mean probability is lower")
    predict.add_argument("--split-min-distance-nm", type=float, default=0.0,
                         help="split components at probability maxima at least this far apart "
                              "(nm); 0: no split")
    predict.add_argument("--split-smooth-nm", type=float, default=50.0,
                         help="Gaussian smoothing (nm) of the probability before the split")
    predict.add_argument("--split-min-depth", type=float, default=0.2,
                         help="a maximum must rise this much above the pass to a higher one")
    predict.add_argument("--split-min-piece", type=int, default=0,
                         help="pieces smaller than this (voxels) join a neighbour")
    predict.add_argument("--block-shape", nargs=3, type=int)
    predict.set_defaults(func=cmd_predict)

    evaluate = sub.add_parser("evaluate", help="precision, recall, F1 against ground truth")
    evaluate.add_argument("--gt", required=True, help="ground-truth instance labels")
    evaluate.add_argument("--gt-dataset")
    voxel_args(evaluate)
    evaluate.add_argument("--instances", help="predicted instance labels (overlap matching)")
    evaluate.add_argument("--table", help="candidate CSV (distance matching of centres)")
    evaluate.add_argument("--min-overlap", type=int, default=1)
    evaluate.add_argument("--tolerance-nm", type=float, default=300.0)
    evaluate.add_argument("--json", help="also write the scores here")
    evaluate.set_defaults(func=cmd_evaluate)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from detection.io.sources import VolumeFormatError
    from detection.synapses.classify import ModelMismatchError

    try:
        args.func(args)
    except (CliError, VolumeFormatError, ModelMismatchError, FileNotFoundError) as exc:
        print(f"connectome-detect {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
