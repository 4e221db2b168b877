"""Command line: ``connectome-detect train | predict | evaluate | score-cells | train-cells |
segment-cells``.

    connectome-detect train --volume vnc.h5 --dataset volumes/raw \\
        --labels vnc.h5 --labels-dataset volumes/labels/synapse_mask --label-convention binary \\
        [--detector cnn] --out synapses.model
    connectome-detect predict --volume vnc.h5 --dataset volumes/raw --model synapses.model \\
        --out-probability prob.zarr --out-table candidates.csv [--out-vesicles vesicles.zarr]
    connectome-detect evaluate --table candidates.csv --instances instances.zarr \\
        --gt vnc.h5 --gt-dataset volumes/labels/synapse_ids_3d
    connectome-detect score-cells --segmentation cells.h5:volumes/labels/cells \\
        --truth vnc.h5:volumes/labels/neuron_ids [--ignore FILE[:DATASET]] [--connected-truth] \\
        [--skeletons] [--json [FILE]]
    connectome-detect train-cells --volume medulla.h5:volumes/raw \
        --labels medulla.h5:volumes/labels/neuron_ids [--validation-fraction 0.2] --out cells.aff
    connectome-detect segment-cells --volume medulla.h5:volumes/raw --model cells.aff \
        --out cells.zarr [--truth medulla.h5:volumes/labels/neuron_ids]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
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

def _training_volume(args, i: int, roi):
    """The i-th ``--volume`` / ``--labels`` pair as a TrainingVolume."""
    from detection.synapses.classify import labels_to_targets
    from detection.synapses.training import TrainingVolume

    def nth(values, what):
        values = values or [None]
        if len(values) not in (1, len(args.volume)):
            raise CliError(f"give {what} once, or once per --volume ({len(args.volume)})")
        return values[i] if len(values) > 1 else values[0]

    volume_path, labels_path = args.volume[i], nth(args.labels, "--labels")
    name = f"{Path(volume_path).name}"
    with _open(volume_path, nth(args.dataset, "--dataset"), args) as source, \
            _open(labels_path, nth(args.labels_dataset, "--labels-dataset"), args) as labels:
        if source.shape != labels.shape:
            raise CliError(f"{name}: volume shape {source.shape} and label shape {labels.shape} "
                           "differ")
        voxel_size = _voxel_size(args, source)
        box = tuple(slice(*r.indices(n)[:2]) for r, n in zip(roi, source.shape))
        em = source.read(box)
        raw = labels.read(box)
        convention = args.label_convention
        sites = None
        if convention == "instances":
            sites, convention = raw.astype(np.uint32), "binary"
        targets = labels_to_targets(raw, convention=convention)
        ignore = None
        ignore_dataset = nth(args.ignore_dataset, "--ignore-dataset")
        if ignore_dataset:
            with _open(labels_path, ignore_dataset, args) as mask:
                ignore = mask.read(box) != 0
    if args.erode_nm:
        from detection.synapses.classify import clean_targets

        targets = clean_targets(targets, voxel_size=voxel_size, erode_nm=args.erode_nm)
    return TrainingVolume(name=name, em=em, voxel_size=voxel_size, targets=targets, sites=sites,
                          ignore=ignore)


def cmd_train(args) -> None:
    from detection.synapses.classify import TrainingParameters
    from detection.synapses.training import DetectorOptions, describe, train_detector

    other = (("--n-estimators", args.n_estimators), ("--scales-nm", args.scales_nm))
    if args.detector == "trees":
        other = (("--iterations", args.iterations), ("--pixel-nm", args.pixel_nm))
    given = [name for name, value in other if value is not None]
    if given:
        raise CliError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} not used by "
                       f"--detector {args.detector}")
    roi = _roi(args.roi) or (slice(None),) * 3
    volumes = [_training_volume(args, i, roi) for i in range(len(args.volume))]
    trees = TrainingParameters(**({"n_estimators": args.n_estimators} if args.n_estimators
                                  else {}))
    from detection.synapses.features import FeatureSpec

    features = FeatureSpec(scales_nm=tuple(args.scales_nm)) if args.scales_nm else None
    network = None
    if args.detector != "trees":
        from detection.synapses.cnn import CnnParameters

        given = {"iterations": args.iterations, "pixel_nm": args.pixel_nm}
        network = CnnParameters(**{k: v for k, v in given.items() if v is not None})
    options = DetectorOptions(detector="network" if args.detector == "cnn" else args.detector,
                              folds=args.folds, seed=args.seed, trees=trees, features=features,
                              network=network,
                              leave_one_volume_out=not args.no_leave_one_volume_out,
                              ignore_band_nm=args.ignore_band_nm)
    progress = _progress("train", unit="step")
    model = train_detector(volumes, options, progress=lambda done, total, message: progress(
        done, total))
    model.training["source"] = [{"volume": str(v), "roi": args.roi,
                                 "label_convention": args.label_convention}
                                for v in args.volume]
    model.save(args.out)
    print(f"wrote {args.out}: {options.detector} at {' x '.join(f'{v:g}' for v in model.voxel_size)}"
          f" nm; {describe(model.calibration)}")
    for name, figures in model.calibration.figures.get("per_volume", {}).items():
        print(f"  {name}: precision {figures['precision']:.2f}, recall {figures['recall']:.2f}, "
              f"F1 {figures['f1']:.2f} ({figures['tp']} / {figures['fp']} / {figures['fn']})")
    for name, figures in model.calibration.figures.get("leave_one_volume_out", {}).items():
        print(f"  {name}, trained on the other volumes only: F1 {figures['f1']:.2f} "
              f"({figures['tp']} / {figures['fp']} / {figures['fn']})")


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


POSTPROCESSING_FLAGS = (("high", "--high"), ("low", "--low"), ("min_size", "--min-size"),
                        ("min_score", "--min-score"))


def postprocessing(args, model, voxel_size) -> dict:
    """The stitcher's arguments: the model's calibration, with what the user gave instead."""
    from detection.synapses.split import SplitParameters

    given = {name: getattr(args, name) for name, _ in POSTPROCESSING_FLAGS
             if getattr(args, name) is not None}
    split = None
    if args.split_min_distance_nm is not None and args.split_min_distance_nm > 0:
        split = SplitParameters(smooth_nm=args.split_smooth_nm,
                                min_distance_nm=args.split_min_distance_nm,
                                min_depth=args.split_min_depth,
                                min_piece_voxels=args.split_min_piece)
    calibration = getattr(model, "calibration", None)
    if calibration is None:
        missing = [flag for name, flag in POSTPROCESSING_FLAGS if name not in given]
        if missing:
            raise CliError(f"{Path(args.model).name} carries no calibration (it was trained "
                           "without cross-validation): give " + ", ".join(missing) +
                           ", or train it again with connectome-detect train")
        return {"high": given["high"], "low": given["low"], "min_size_voxels": given["min_size"],
                "min_score": given["min_score"], "split": split}
    post = calibration.postprocessing.for_voxel_size(voxel_size)
    if given:
        logger.info("post-processing: %s given instead of the model's calibration",
                    ", ".join(sorted(given)))
    post.update({k: v for k, v in given.items() if k != "min_size"})
    if "min_size" in given:
        post["min_size_voxels"] = given["min_size"]
    if args.split_min_distance_nm is not None:
        post["split"] = split
    if post["low"] > post["high"]:
        raise CliError(f"the low threshold {post['low']} is above the high one {post['high']}")
    return post


class _Tee:
    """A uint8 output of :func:`~detection.blockwise.predict_map_layers` that stores each block
    and hands it on (to the stitcher) as it comes."""

    dtype = np.uint8

    def __init__(self, array, on_block=None):
        self.array, self.on_block = array, on_block

    def __setitem__(self, box, values):
        self.array[box] = values
        if self.on_block is not None:
            self.on_block(box, values)


def _map_array(path, shape, voxel_size, model_path, chunks=None):
    array = zarr.open(str(path), mode="w", shape=shape,
                      chunks=chunks or (min(shape[0], 16), 256, 256), dtype=np.uint8)
    array.attrs.update({"voxel_size": list(voxel_size), "scale": "probability * 255",
                        "model": str(model_path)})
    return array


def cmd_predict(args) -> None:
    from detection.blockwise import iter_probability_blocks, predict_map_layers
    from detection.synapses.instances import InstanceStitcher
    from detection.synapses.model_files import load_synapse_model

    with _open(args.volume, args.dataset, args) as source:
        voxel_size = _voxel_size(args, source)
        model = load_synapse_model(args.model, voxel_size=voxel_size,
                                   allow_other_voxel_size=args.allow_other_voxel_size)
        heads = tuple(getattr(model, "heads", ("synapse",)))
        if args.out_vesicles and "vesicles" not in heads:
            raise CliError(f"--out-vesicles: {Path(args.model).name} has no vesicle head (its "
                           f"heads: {', '.join(heads)}); use a network trained with vesicle "
                           "labels")
        post = postprocessing(args, model, voxel_size)
        shape = tuple(source.shape)
        probability = _map_array(args.out_probability, shape, voxel_size, args.model)
        stitcher = InstanceStitcher(voxel_size=voxel_size, **post)
        if args.out_vesicles:
            # One pass of the network per block gives both maps (the synapse one as alone).
            vesicles = _map_array(args.out_vesicles, shape, voxel_size, args.model,
                                  chunks=probability.chunks)
            predict_map_layers(
                source, model, block_shape=args.block_shape, roi=_roi(args.roi),
                progress=_progress("predict"),
                outputs={"synapse": _Tee(probability, lambda box, stored: stitcher.add_block(
                    box, stored / 255.0)), "vesicles": _Tee(vesicles)})
        else:
            for box, p in iter_probability_blocks(source, model, block_shape=args.block_shape,
                                                  roi=_roi(args.roi),
                                                  progress=_progress("predict")):
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
          + (f", vesicle map in {args.out_vesicles}" if args.out_vesicles else "")
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


# --- score-cells -----------------------------------------------------------------------------

def file_and_dataset(text: str, flag: str) -> tuple[str, str | None]:
    """``FILE`` or ``FILE:DATASET``: the file is the longest part before a colon that exists
    (so that a dataset path may hold colons, and a file name too)."""
    if os.path.exists(text):
        return text, None
    cuts = [i for i, c in enumerate(text) if c == ":"]
    for cut in reversed(cuts):
        if os.path.exists(text[:cut]):
            return text[:cut], text[cut + 1:] or None
    raise CliError(f"{flag} {text}: no such file (give FILE or FILE:DATASET)")


def _read_whole(text: str, flag: str, args, roi):
    path, dataset = file_and_dataset(text, flag)
    with _open(path, dataset, args) as source:
        box = tuple(slice(*r.indices(n)[:2]) for r, n in zip(roi, source.shape))
        return source.read(box), source.shape, source.voxel_size


def _score_inputs(args):
    """The segmentation, the ground truth, the ignore mask (or None) and the voxel size (or
    None), read whole (inside ``--roi``)."""
    roi = _roi(args.roi) or (slice(None),) * 3
    seg, seg_shape, seg_voxel = _read_whole(args.segmentation, "--segmentation", args, roi)
    gt, gt_shape, gt_voxel = _read_whole(args.truth, "--truth", args, roi)
    if seg_shape != gt_shape:
        raise CliError(f"--segmentation has shape {seg_shape} and --truth {gt_shape}; they "
                       "must cover the same voxels")
    ignore = None
    if args.ignore:
        mask, mask_shape, _ = _read_whole(args.ignore, "--ignore", args, roi)
        if mask_shape != gt_shape:
            raise CliError(f"--ignore has shape {mask_shape} and --truth {gt_shape}")
        ignore = mask != 0
    return seg, gt, ignore, gt_voxel or seg_voxel


def _part_text(row: dict, shown: int = 5) -> str:
    parts = row["truth"] if row["kind"] == "merge" else row["cells"]
    listed = ", ".join(map(str, parts[:shown]))
    more = row["parts"] - min(len(parts), shown)
    listed += f" and {more} more" if more > 0 else ""
    if row["kind"] == "merge":
        return f"cell {row['cells'][0]} holds bodies {listed}"
    return f"body {row['truth'][0]} is in cells {listed}"


def score_cells_report(args) -> dict:
    """Every figure ``score-cells`` prints, as one JSON-ready dict."""
    from detection.cells import evaluation

    seg, gt, ignore, voxel_size = _score_inputs(args)
    if args.connected_truth:
        gt = evaluation.connected_ground_truth(gt, connectivity=args.connectivity)
    table = evaluation.contingency_table(seg, gt, ignore=ignore)
    rows = evaluation.overlap_report(seg, gt, ignore=ignore, min_voxels=args.min_voxels)
    report = {
        "segmentation": args.segmentation, "truth": args.truth, "ignore": args.ignore,
        "connected_truth": bool(args.connected_truth), "voxels": table.voxels,
        "voi": evaluation.voi_from_table(table).to_dict(),
        "rand": evaluation.rand_from_table(table).to_dict(),
        "skeletons": None,
        "report": {"min_voxels": args.min_voxels,
                   "merges": sum(row["kind"] == "merge" for row in rows),
                   "splits": sum(row["kind"] == "split" for row in rows),
                   "worst": rows[:args.worst]},
    }
    if args.skeletons:
        if voxel_size is None:
            raise CliError("--skeletons: neither file states a voxel size; pass --voxel-size "
                           "Z Y X (nm)")
        truth = gt if ignore is None else np.where(ignore, 0, gt)
        skeletons = evaluation.ground_truth_skeletons(
            truth, voxel_size, dust_threshold=args.skeleton_min_voxels)
        errors = evaluation.skeleton_errors(seg, skeletons)
        report["skeletons"] = {"voxel_size": list(voxel_size), "traced": len(skeletons),
                               "splits": errors.splits, "merges": errors.merges}
    return report


def print_score_cells(report: dict, worst: int) -> None:
    voi, rand = report["voi"], report["rand"]
    print(f"{report['voxels']} voxels scored (ground truth 0 and ignored voxels left out"
          + ("; ground-truth ids split into connected pieces" if report["connected_truth"]
             else "") + ")")
    print(f"VOI split {voi['split']:.4f} merge {voi['merge']:.4f} total {voi['total']:.4f} "
          "bits")
    print(f"ARAND {rand['error']:.4f} (precision {rand['precision']:.4f}, recall "
          f"{rand['recall']:.4f})")
    if report["skeletons"] is not None:
        skeletons = report["skeletons"]
        print(f"skeletons: {skeletons['traced']} traced, {skeletons['splits']} split edges, "
              f"{skeletons['merges']} merges")
    found = report["report"]
    rows = found["worst"]
    print(f"{found['merges']} merged cells and {found['splits']} split bodies (parts of at "
          f"least {found['min_voxels']} voxels)" + (f"; the {len(rows)} worst:" if rows else ""))
    for rank, row in enumerate(rows[:worst], 1):
        (z0, y0, x0), (z1, y1, x1) = row["bbox"]
        print(f"  {rank:2d}. {row['kind']:5s} {row['bits']:.4f} bits  {_part_text(row)}; "
              f"box z {z0}:{z1}, y {y0}:{y1}, x {x0}:{x1}; look at (z, y, x) "
              f"{tuple(row['point'])}")


def cmd_score_cells(args) -> None:
    if args.worst < 0 or args.min_voxels < 1:
        raise CliError("--worst must be 0 or more and --min-voxels 1 or more")
    report = score_cells_report(args)
    if args.json == "-":
        print(json.dumps(report, indent=2))
        return
    print_score_cells(report, args.worst)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


# --- train-cells / segment-cells -----------------------------------------------------------

def _cell_volume(args, text: str, flag: str, roi):
    data, _, voxel_size = _read_whole(text, flag, args, roi)
    if voxel_size is None:
        raise CliError(f"{flag} {text}: the file states no voxel size; pass --voxel-size Z Y X "
                       "(nm)")
    return data, tuple(float(v) for v in voxel_size)


def cmd_train_cells(args) -> None:
    """Train a cell model on dense labels; the last ``--validation-fraction`` of the sections
    (or ``--validation-volume``) chooses the merge threshold and is never trained on."""
    from detection.cells.boundaries import AffinityParameters, LabelVolume
    from detection.cells.training import train_cell_model

    roi = _roi(args.roi) or (slice(None),) * 3
    em, voxel_size = _cell_volume(args, args.volume, "--volume", roi)
    labels, _ = _cell_volume(args, args.labels, "--labels", roi)
    if labels.shape != em.shape:
        raise CliError(f"--labels has shape {labels.shape} and --volume {em.shape}")
    if args.validation_volume:
        if not args.validation_labels:
            raise CliError("--validation-volume needs --validation-labels")
        v_em, _ = _cell_volume(args, args.validation_volume, "--validation-volume", roi)
        v_labels, _ = _cell_volume(args, args.validation_labels, "--validation-labels", roi)
        training = [LabelVolume(args.volume, em, voxel_size, labels)]
        validation = [LabelVolume(args.validation_volume, v_em, voxel_size, v_labels)]
    else:
        if not 0 < args.validation_fraction < 1:
            raise CliError("--validation-fraction must lie between 0 and 1")
        cut = round(em.shape[0] * (1 - args.validation_fraction))
        if cut < 1 or cut >= em.shape[0]:
            raise CliError(f"--validation-fraction {args.validation_fraction} leaves no sections "
                           f"to train or to validate on among {em.shape[0]}")
        training = [LabelVolume(f"{args.volume} z 0-{cut}", em[:cut], voxel_size, labels[:cut])]
        validation = [LabelVolume(f"{args.volume} z {cut}-{em.shape[0]}", em[cut:], voxel_size,
                                  labels[cut:])]
    defaults = AffinityParameters()
    parameters = AffinityParameters(
        pixel_nm=args.pixel_nm or defaults.pixel_nm, width=args.width or defaults.width,
        iterations=args.iterations or defaults.iterations, seed=args.seed)
    progress = _Progress("step")
    model = train_cell_model(training, validation, voxel_size=voxel_size, parameters=parameters,
                             progress=progress)
    progress.close()
    model.save(args.out)
    chosen = model.agglomeration
    best = min(chosen["table"], key=lambda r: r["voi"])
    print(f"wrote {args.out}: merge threshold {chosen['threshold']:.2f} (validation VOI "
          f"{best['voi']:.3f}: split {best['voi_split']:.3f}, merge {best['voi_merge']:.3f}; "
          f"ARAND {best['arand']:.3f}); {model.training['seconds']:.0f} s of training")


def cmd_segment_cells(args) -> None:
    """Cells of a volume, block by block, with a cell model; scored when ``--truth`` is given."""
    from detection.cells.boundaries import AffinityNet
    from detection.cells.pipeline import segment_volume

    path, dataset = file_and_dataset(args.volume, "--volume")
    with _open(path, dataset, args) as source:
        voxel_size = _voxel_size(args, source)
        model = AffinityNet.load(args.model, voxel_size=voxel_size,
                                 allow_other_voxel_size=args.allow_other_voxel_size)
        block = tuple(args.block_shape) if args.block_shape else (64, 256, 256)
        block = tuple(max(s, b // s * s) for b, s in zip(block, model.grid_step))
        progress = _Progress("block")
        # Read block by block (with the network's halo), never whole.
        summary = segment_volume(_Boxes(source), model, args.out, block_shape=block,
                                 threshold=args.threshold, progress=progress)
        progress.close()
    print(f"wrote {args.out} (cells, fragments, affinities): {summary['cells']} cells from "
          f"{summary['fragments']} fragments in {summary['blocks']} blocks")
    if args.truth:
        from detection.cells.evaluation import (
            adapted_rand_error,
            variation_of_information,
        )

        truth, _, _ = _read_whole(args.truth, "--truth", args, (slice(None),) * 3)
        cells = zarr.open_group(args.out, mode="r")["cells"][:]
        if truth.shape != cells.shape:
            raise CliError(f"--truth has shape {truth.shape} and the volume {cells.shape}")
        voi = variation_of_information(cells, truth)
        rand = adapted_rand_error(cells, truth)
        print(f"VOI split {voi.split:.4f} merge {voi.merge:.4f} total {voi.total:.4f} bits; "
              f"ARAND {rand.error:.4f}")


class _Boxes:
    """A volume source read by slicing (``source[box]``), as the cell pipeline reads arrays."""

    def __init__(self, source):
        self.source, self.shape = source, tuple(source.shape)

    def __getitem__(self, box):
        return self.source.read(tuple(box))


class _Progress:
    """A ``progress(done, total)`` callback drawing a bar on a terminal."""

    def __init__(self, unit: str):
        self.bar = tqdm(total=1, unit=unit, disable=not sys.stderr.isatty(), leave=False)

    def __call__(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


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

    train = sub.add_parser(
        "train", help="train a synapse detector from labels, with its calibration chosen by "
                      "spatial cross-validation")
    train.add_argument("--volume", required=True, action="append",
                       help="TIFF, HDF5, zarr or precomputed; repeat for several volumes (each "
                            "with its own --labels, --dataset, ... or one for all)")
    train.add_argument("--dataset", action="append", help="dataset inside an HDF5/zarr file")
    voxel_args(train)
    train.add_argument("--roi", help="z0:z1,y0:y1,x0:x1 voxels")
    train.add_argument("--detector", choices=["trees", "cnn"], default="trees",
                       help="boosted trees on feature channels and context cues (default), or "
                            "the 2.5D U-Net")
    train.add_argument("--labels", required=True, action="append")
    train.add_argument("--labels-dataset", action="append")
    train.add_argument("--ignore-dataset", action="append",
                       help="mask in the labels file of voxels that are neither synapse nor not")
    train.add_argument("--label-convention", choices=["ccboost", "binary", "instances"],
                       default="ccboost",
                       help="ccboost: 255 synapse, 0 not, else ignore; binary: nonzero synapse; "
                            "instances: nonzero ids, one per synapse (split apart when touching)")
    train.add_argument("--erode-nm", type=float, default=0.0)
    train.add_argument("--ignore-band-nm", type=float, default=80.0)
    train.add_argument("--folds", type=int, default=3,
                       help="spatial cross-validation folds (slabs per volume), 2-10")
    train.add_argument("--no-leave-one-volume-out", action="store_true",
                       help="with several volumes, skip holding out each volume whole")
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
    predict.add_argument("--out-vesicles",
                         help="zarr array to write the vesicle map to (uint8, 255 * p, as the "
                              "probability); needs a network with a vesicle head")
    predict.add_argument("--out-table", help="CSV of candidates")
    predict.add_argument("--out-instances", help="zarr array of instance labels")
    predict.add_argument("--high", type=float,
                         help="seed threshold; the model's calibration by default")
    predict.add_argument("--low", type=float,
                         help="extent threshold; the model's calibration by default")
    predict.add_argument("--min-size", type=int,
                         help="voxels; the model's calibration by default")
    predict.add_argument("--min-score", type=float,
                         help="drop instances whose mean probability is lower; the model's "
                              "calibration by default")
    predict.add_argument("--split-min-distance-nm", type=float,
                         help="split components at probability maxima at least this far apart "
                              "(nm); 0: no split; the model's calibration by default")
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

    score = sub.add_parser(
        "score-cells",
        help="VOI, adapted Rand error, skeleton splits and merges, and the worst cells of a "
             "cell segmentation against ground truth")
    score.add_argument("--segmentation", required=True, metavar="FILE[:DATASET]",
                       help="predicted cell labels (TIFF, HDF5, zarr or precomputed)")
    score.add_argument("--truth", required=True, metavar="FILE[:DATASET]",
                       help="ground-truth labels; 0 is not scored")
    score.add_argument("--ignore", metavar="FILE[:DATASET]",
                       help="mask whose non-zero voxels are not scored")
    score.add_argument("--connected-truth", action="store_true",
                       help="split every ground-truth id into its connected pieces first (ids "
                            "that collide, as Cardona's 8-bit neurite ids)")
    score.add_argument("--connectivity", type=int, choices=[6, 18, 26], default=6,
                       help="of --connected-truth (default 6: faces)")
    score.add_argument("--skeletons", action="store_true",
                       help="also trace skeletons of the ground truth (kimimaro) and count the "
                            "split edges and merged skeletons; needs a voxel size")
    score.add_argument("--skeleton-min-voxels", type=int, default=1000,
                       help="ground-truth pieces of at most this many voxels get no skeleton")
    score.add_argument("--min-voxels", type=int, default=100,
                       help="the overlap that makes a body part of a merge, or a cell part of "
                            "a split (default 100)")
    score.add_argument("--worst", type=int, default=10, help="cells listed (default 10)")
    voxel_args(score)
    score.add_argument("--roi", help="z0:z1,y0:y1,x0:x1 voxels")
    score.add_argument("--json", nargs="?", const="-", metavar="FILE",
                       help="also write the scores as JSON to FILE; without FILE, print them "
                            "as JSON instead of the text")
    score.set_defaults(func=cmd_score_cells)

    train_cells = sub.add_parser(
        "train-cells", help="train a cell model (affinity network) on dense labels, with its "
                            "merge threshold chosen on validation sections")
    train_cells.add_argument("--volume", required=True, metavar="FILE[:DATASET]")
    train_cells.add_argument("--labels", required=True, metavar="FILE[:DATASET]",
                             help="dense cell ids; 0 is a boundary")
    train_cells.add_argument("--validation-fraction", type=float, default=0.2,
                             help="last share of the sections kept to choose the threshold")
    train_cells.add_argument("--validation-volume", metavar="FILE[:DATASET]")
    train_cells.add_argument("--validation-labels", metavar="FILE[:DATASET]")
    train_cells.add_argument("--iterations", type=int, help="training steps (default 1500)")
    train_cells.add_argument("--pixel-nm", type=float, help="in-plane network pixel (default 8)")
    train_cells.add_argument("--width", type=int, help="channels of the first level (default 12)")
    train_cells.add_argument("--seed", type=int, default=0)
    voxel_args(train_cells)
    train_cells.add_argument("--roi", help="z0:z1,y0:y1,x0:x1 voxels")
    train_cells.add_argument("--out", required=True, help="model file to write")
    train_cells.set_defaults(func=cmd_train_cells)

    segment_cells = sub.add_parser("segment-cells",
                                   help="cells of a volume from its EM, block by block")
    segment_cells.add_argument("--volume", required=True, metavar="FILE[:DATASET]")
    segment_cells.add_argument("--model", required=True, help="a train-cells model file")
    segment_cells.add_argument("--allow-other-voxel-size", action="store_true")
    segment_cells.add_argument("--out", required=True,
                               help="zarr group to write (cells, fragments, affinities)")
    segment_cells.add_argument("--threshold", type=float, help="merge threshold; the model's "
                                                               "by default")
    segment_cells.add_argument("--block-shape", nargs=3, type=int, metavar=("Z", "Y", "X"))
    segment_cells.add_argument("--truth", metavar="FILE[:DATASET]",
                               help="ground-truth cells to score against (0 not scored)")
    voxel_args(segment_cells)
    segment_cells.set_defaults(func=cmd_segment_cells)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from detection.errors import InputError

    try:
        args.func(args)
    except (CliError, InputError, FileNotFoundError) as exc:
        print(f"connectome-detect {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
