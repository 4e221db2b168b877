"""Spatial cross-validation of the synapse voxel classifier on real ssTEM data.

    .venv/bin/python benchmarks/vnc_crossval.py [--folds 3] [--json docs/vnc_crossval.json]
        [--probabilities /tmp/vnc_probabilities.npz]

Data: ../shared/data/vnc_sstem_train.h5 (Drosophila larval VNC, 20 x 1024 x 640 voxels of
50 x 4.6 x 4.6 nm, 33 annotated synapses; Gerhard et al. 2013).

Folds are slabs along x. Each annotated synapse belongs to the fold holding its centroid; its
voxels are never used for training by another fold, and in the evaluation of a fold, synapses of
other folds are "ignore" (a prediction lying only on them is neither right nor wrong). For
every outer fold, the post-processing (hysteresis high/low, minimum component size, minimum
mean probability of an instance, and whether and how components are split, from the grids
``GRID`` and ``SPLITS``) is chosen by an inner cross-validation on the training folds alone,
then a model trained on all training folds is applied to the held-out slab. Features do not
depend on labels, so they are computed once for the whole volume (at the classifier's grid
voxels, as block-wise prediction does). Synapse-level precision / recall / F1 by overlap
matching (one-to-one, at least one voxel in common), per fold and pooled.

The probabilities of all held-out slabs (inner and outer) do not depend on the
post-processing; ``--probabilities`` keeps them in a file so the post-processing can be
re-run without training again. ``--detector cnn`` trains the network of :mod:`detection.synapses.cnn`
instead of the boosted trees (features are then not computed). ``--compare`` reads the files
of finished runs and, per outer fold, takes the one whose inner cross-validation scored best,
so that the choice between detectors is nested too:

    .venv/bin/python benchmarks/vnc_crossval.py --no-split \
        --compare trees=/tmp/trees.npz cnn=/tmp/cnn.npz mean=/tmp/trees.npz+/tmp/cnn.npz
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from detection.metrics import DetectionScores, match_by_overlap
from detection.synapses.candidates import (
    COMPACT,
    CandidateClassifier,
    candidate_features,
    candidate_targets,
    filter_labels,
)
from detection.synapses.classify import (
    TrainingParameters,
    clean_targets,
    default_context_spec,
    grid_step_for,
    labels_to_targets,
    negative_pool,
    region_features,
    sample_training_voxels,
    train_from_samples,
)
from detection.synapses.cnn import CnnParameters, train_cnn
from detection.synapses.context import ContextSpec
from detection.synapses.features import FeatureSpec
from detection.synapses.instances import find_instances
from detection.synapses.split import SplitParameters

DATA = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
GRID = {
    "high": (0.5, 0.7, 0.8, 0.9, 0.95, 0.99),
    "low": (0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
    "min_size": (100, 300, 1000, 2000, 3000),
    "min_score": (0.0, 0.9, 0.92, 0.94),
}
# Split variants tried by the inner cross-validation (None: no split). Pieces below
# min_piece_voxels join a neighbour, so a split does not leave fragments as false positives.
SPLITS = (None,) + tuple(
    SplitParameters(smooth_nm=smooth, min_distance_nm=250.0, min_depth=depth,
                    min_piece_voxels=min_piece)
    for smooth, depth in ((0.0, 0.1), (25.0, 0.1), (50.0, 0.2)) for min_piece in (1000, 2000)
)

# Object-level rescoring (``--rescore``): candidates are the components of a hysteresis
# threshold of at least RESCORE_MIN_SIZE voxels; a candidate classifier (logistic regression of
# strength C, or boosted trees with that many rounds) scores them and those at or above a
# threshold are kept (features: all, or the COMPACT set). Thresholds, classifier and its threshold are chosen by the inner
# cross-validation: the classifier is trained on the candidates of one inner piece and scores
# those of the other, and the other way round.
RESCORE_HYSTERESIS = ((0.7, 0.5), (0.7, 0.7), (0.9, 0.7), (0.9, 0.9), (0.95, 0.9), (0.95, 0.95))
RESCORE_MIN_SIZE = 100
# From the fewest features up: size alone (a size filter), size and mean probability (the
# size and score filters), size and darkness, then the COMPACT set and all features.
RESCORE_MODELS = (
    ("logistic", 1.0, ("log_size",)), ("logistic", 1.0, ("log_size", "p_mean")),
    ("logistic", 1.0, ("log_size", "em_in_q10", "em_contrast")),
    ("logistic", 0.1, COMPACT), ("logistic", 1.0, COMPACT),
    ("logistic", 0.1, None), ("logistic", 1.0, None), ("trees", 100.0, None),
)
RESCORE_THRESHOLDS = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))


def fold_edges(ids: np.ndarray, n_folds: int, step: int) -> np.ndarray:
    """x cuts (on the grid) giving folds with about equal numbers of synapse centroids."""
    xs = np.sort([np.nonzero(ids == i)[2].mean() for i in np.unique(ids) if i])
    cuts = [0]
    for k in range(1, n_folds):
        i = int(round(k * len(xs) / n_folds))
        cuts.append(int((xs[i - 1] + xs[i]) / 2 / step) * step)
    cuts.append(ids.shape[2])
    return np.array(cuts)


def synapse_fold(ids: np.ndarray, edges: np.ndarray) -> dict[int, int]:
    return {int(i): int(np.searchsorted(edges, np.nonzero(ids == i)[2].mean(), side="right") - 1)
            for i in np.unique(ids) if i}


def in_folds(shape, edges, folds) -> np.ndarray:
    x = np.arange(shape[2])
    keep = np.zeros(shape[2], bool)
    for f in folds:
        keep |= (x >= edges[f]) & (x < edges[f + 1])
    return np.broadcast_to(keep, shape)


def train(features, targets, region, params, rng):
    """Train on the grid voxels of ``region`` (features hold the grid voxels only)."""
    t = np.where(region, targets, -1).astype(np.int8)[GRID_SLICES]
    chosen = sample_training_voxels(t, negatives_per_positive=params.negatives_per_positive,
                                    max_samples=params.max_samples, rng=rng)
    flat = features.reshape(features.shape[0], -1)
    pool = None
    if params.hard_negative_rounds:
        pool = flat[:, negative_pool(t, chosen, size=params.hard_negative_pool, rng=rng)].T
    return train_from_samples(flat[:, chosen].T, t.ravel()[chosen], voxel_size=VOXEL,
                              feature_spec=SPEC, context_spec=CONTEXT, parameters=params,
                              pool=pool)


def predict(model, features, x0, x1, shape):
    """Full-resolution probability of the slab x0:x1, each grid voxel standing for its cell."""
    sz, sy, sx = STEP
    block = features[:, :, :, x0 // sx: -(-x1 // sx)]
    p = model.predict_proba(block.reshape(block.shape[0], -1).T).reshape(block.shape[1:])
    for axis, g in enumerate(STEP):
        p = np.repeat(p, g, axis=axis)
    return p[: shape[0], : shape[1], : x1 - x0]


def instances(probability, choice):
    labels, _ = find_instances(probability, voxel_size=VOXEL, high=choice["high"], low=choice["low"],
                               min_size_voxels=choice["min_size"], min_score=choice["min_score"],
                               split=choice["split"])
    return labels


def score(probability, ids_region, ignore_region, choice):
    return match_by_overlap(instances(probability, choice), ids_region, ignore=ignore_region)


class _Piece:
    """One held-out slab of the inner cross-validation, scored under many post-processing
    choices: instances are found once at the smallest size and score and filtered after, and
    the matching reads only voxels that are in a prediction or a synapse (it depends on no
    others), which gives the scores of ``score`` at a fraction of the cost."""

    def __init__(self, probability, gt, ignore):
        self.probability, self.gt, self.ignore = probability, gt, ignore

    def scores(self, high, low, split):
        """{(min_size, min_score): DetectionScores} for all grid sizes and scores."""
        floor = {"high": high, "low": low, "min_size": min(GRID["min_size"]), "min_score": 0.0}
        whole = instances(self.probability, {**floor, "split": None})
        pieces = whole if split is None else instances(self.probability, {**floor, "split": split})
        # A piece's size filter is its component's size (the split runs after the size filter).
        component_size = np.bincount(whole.ravel())
        n = int(pieces.max())
        parent = np.zeros(n + 1, np.int64)
        parent[pieces.ravel()] = whole.ravel()
        sums = np.bincount(pieces.ravel(), weights=self.probability.ravel(), minlength=n + 1)
        mean = sums / np.maximum(np.bincount(pieces.ravel(), minlength=n + 1), 1)
        where = np.flatnonzero((pieces.ravel() > 0) | (self.gt.ravel() > 0))
        pred, gt = pieces.ravel()[where], self.gt.ravel()[where].astype(np.int64)
        ignore = self.ignore.ravel()[where]
        out = {}
        for min_size, min_score in itertools.product(GRID["min_size"], GRID["min_score"]):
            keep = (component_size[parent] >= min_size) & (mean >= min_score)
            keep[0] = False
            kept = np.where(keep[pred], pred, 0)
            out[min_size, min_score] = match_by_overlap(kept[None, None], gt[None, None],
                                                        ignore=ignore[None, None])
        return out


def choose_postprocessing(pieces):
    """The grid point with the best pooled F1 over the inner held-out pieces (the first in grid
    order among equals: no split before a split, lower filters before higher ones)."""
    pieces = [_Piece(*p) for p in pieces]
    best = None
    for split in SPLITS:
        for high, low in itertools.product(GRID["high"], GRID["low"]):
            if low > high:
                continue
            per_piece = [piece.scores(high, low, split) for piece in pieces]
            for key in per_piece[0]:
                pooled = DetectionScores.combine([scores[key] for scores in per_piece])
                if best is None or pooled.f1 > best[0]:
                    best = (pooled.f1, {"high": high, "low": low, "min_size": key[0],
                                        "min_score": key[1], "split": split})
    return best


class _Candidates:
    """Candidates of one held-out slab at one hysteresis (components of at least
    RESCORE_MIN_SIZE voxels): features, truth (1 true, 0 false, -1 only on ignore), and the
    voxels in a candidate or a synapse, which are all the matching reads."""

    def __init__(self, probability, gt, ignore, em, high, low):
        labels = instances(probability, {"high": high, "low": low, "min_size": RESCORE_MIN_SIZE,
                                         "min_score": 0.0, "split": None})
        self.labels = labels
        self.n = int(labels.max())
        self.X = candidate_features(labels, probability, em, voxel_size=VOXEL, n=self.n)
        self.y = candidate_targets(labels, gt, ignore, n=self.n)
        where = np.flatnonzero((labels.ravel() > 0) | (gt.ravel() > 0))
        self.pred = labels.ravel()[where].astype(np.int64)
        self.gt = gt.ravel()[where].astype(np.int64)
        self.ignore = ignore.ravel()[where]

    def scores(self, candidate_scores, threshold):
        kept = filter_labels(self.pred, candidate_scores, threshold)
        return match_by_overlap(kept[None, None], self.gt[None, None],
                                ignore=self.ignore[None, None])


def fit_candidates(candidate_sets, kind, c, use=None):
    X = np.concatenate([cd.X for cd in candidate_sets])
    y = np.concatenate([cd.y for cd in candidate_sets])
    return CandidateClassifier(kind=kind, c=c, use=use).fit(X, y)


def choose_rescoring(pieces, ems):
    """The (hysteresis, candidate classifier, threshold) with the best pooled F1 over the inner
    pieces, each piece's candidates scored by a classifier trained on the other pieces' (the
    first in grid order among equals)."""
    best = None
    for high, low in RESCORE_HYSTERESIS:
        sets = [_Candidates(*piece, em, high, low) for piece, em in zip(pieces, ems)]
        for kind, c, use in RESCORE_MODELS:
            held = [fit_candidates([o for j, o in enumerate(sets) if j != i], kind, c, use)
                    .predict_proba(target.X) for i, target in enumerate(sets)]
            for threshold in RESCORE_THRESHOLDS:
                pooled = DetectionScores.combine([cd.scores(s, threshold)
                                                  for cd, s in zip(sets, held)])
                if best is None or pooled.f1 > best[0]:
                    best = (pooled.f1, {"high": high, "low": low, "kind": kind, "c": c,
                                        "features": list(use) if use else "all",
                                        "threshold": float(threshold)}, pooled)
    return best


def rescore_fold(fold, train_folds, inner_pieces, raw, edges, outer_piece):
    """Choose the rescoring on the inner pieces, train the candidate classifier on all their
    candidates, score the held-out slab once."""
    ems = [raw[:, :, edges[f]:edges[f + 1]] for f in train_folds]
    inner_f1, choice, inner = choose_rescoring(inner_pieces, ems)
    sets = [_Candidates(*piece, em, choice["high"], choice["low"])
            for piece, em in zip(inner_pieces, ems)]
    use = None if choice["features"] == "all" else tuple(choice["features"])
    model = fit_candidates(sets, choice["kind"], choice["c"], use)
    outer = _Candidates(*outer_piece, raw[:, :, edges[fold]:edges[fold + 1]],
                        choice["high"], choice["low"])
    candidate_scores = model.predict_proba(outer.X)
    scores = outer.scores(candidate_scores, choice["threshold"])
    kept = candidate_scores >= choice["threshold"]
    print(f"fold {fold} x {edges[fold]}-{edges[fold + 1]}: precision {scores.precision:.3f} "
          f"recall {scores.recall:.3f} F1 {scores.f1:.3f} (tp {scores.tp} fp {scores.fp} "
          f"fn {scores.fn}); {choice} (inner F1 {inner_f1:.3f}, tp {inner.tp} fp {inner.fp} "
          f"fn {inner.fn}); candidates {outer.n} ({int((outer.y == 1).sum())} on a synapse), "
          f"kept {int(kept.sum())} ({int((outer.y[kept] == 1).sum())} on a synapse)", flush=True)
    return {"fold": fold, "x": [int(edges[fold]), int(edges[fold + 1])],
            "postprocessing": {**choice, "min_size_voxels": RESCORE_MIN_SIZE},
            "inner_f1": inner_f1, "candidates": outer.n,
            "candidates_on_synapse": int((outer.y == 1).sum()), "kept": int(kept.sum()),
            **{k: v for k, v in scores.to_dict().items() if k != "matches"}}


def postprocess_fold(fold, inner_pieces, outer_piece, edges):
    """Choose the post-processing on the inner pieces, score the held-out slab once."""
    inner_f1, choice = choose_postprocessing(inner_pieces)
    # The fast inner scoring must agree with the library path used on the held-out slab.
    check = DetectionScores.combine([score(*piece, choice) for piece in inner_pieces])
    assert abs(check.f1 - inner_f1) < 1e-12, (check, inner_f1)
    scores = score(*outer_piece, choice)
    split = choice["split"]
    result = {"fold": fold, "x": [int(edges[fold]), int(edges[fold + 1])],
              "postprocessing": {"high": choice["high"], "low": choice["low"],
                                 "min_size_voxels": choice["min_size"],
                                 "min_score": choice["min_score"],
                                 "split": split.to_dict() if split else None},
              "inner_f1": inner_f1,
              **{k: v for k, v in scores.to_dict().items() if k != "matches"}}
    print(f"fold {fold} x {edges[fold]}-{edges[fold + 1]}: precision {scores.precision:.3f} "
          f"recall {scores.recall:.3f} F1 {scores.f1:.3f} (tp {scores.tp} fp {scores.fp} "
          f"fn {scores.fn}); {result['postprocessing']} (inner F1 {inner_f1:.3f})", flush=True)
    return result


def probability_source(files):
    """The fold probabilities of finished runs: one file's, or the mean of several files'."""
    stored = []
    for path in files:
        with np.load(path) as f:
            stored.append(dict(f))
    return {key: np.mean([s[key] for s in stored], axis=0, dtype=np.float32) for key in stored[0]}


def fold_probabilities(fit, apply, targets, ids, edges, synapses_of, n_folds, cache):
    """Probability of every held-out slab: ``inner{outer}_{inner}`` from a model trained on the
    training folds of ``outer`` less ``inner``, ``outer{fold}`` from one trained on all of them.
    ``fit(targets, region)`` trains a model, ``apply(model, x0, x1)`` gives its probability of
    the slab x0:x1. Read from ``cache`` when it exists, else computed (and written there when
    given)."""
    if cache is not None and cache.exists():
        with np.load(cache) as stored:
            return dict(stored)
    out = {}
    for fold in range(n_folds):
        started = time.perf_counter()
        train_folds = [f for f in range(n_folds) if f != fold]
        # Synapses of the held-out fold are hidden from training wherever their voxels lie.
        hidden = np.isin(ids, synapses_of([fold]))
        fold_targets = np.where(hidden, -1, targets).astype(np.int8)
        for inner in train_folds:
            rest = [f for f in train_folds if f != inner]
            inner_hidden = np.isin(ids, synapses_of([inner]))
            model = fit(np.where(inner_hidden, -1, fold_targets), in_folds(ids.shape, edges, rest))
            out[f"inner{fold}_{inner}"] = apply(model, edges[inner], edges[inner + 1])
        model = fit(fold_targets, in_folds(ids.shape, edges, train_folds))
        out[f"outer{fold}"] = apply(model, edges[fold], edges[fold + 1])
        print(f"fold {fold}: models trained and applied in {time.perf_counter() - started:.0f} s",
              flush=True)
    if cache is not None:
        np.savez(cache, **out)
    return out


def _source(text: str):
    name, _, files = text.partition("=")
    if not name or not files:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=FILE[+FILE...]")
    return name, [Path(f) for f in files.split("+")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--n-estimators", type=int, default=200)
    parser.add_argument("--ignore-band-nm", type=float, default=80.0)
    parser.add_argument("--grid-nm", type=float, default=16.0, help="classification grid spacing")
    parser.add_argument("--negatives-per-positive", type=float, default=4.0,
                        help="random negative training voxels per positive (TrainingParameters)")
    parser.add_argument("--hard-negative-rounds", type=int, default=0,
                        help="rounds of hard-negative training (TrainingParameters)")
    parser.add_argument("--probabilities", type=Path,
                        help="npz file holding the inner and outer fold probabilities: read when it "
                             "exists, else written after training (post-processing runs on it)")
    parser.add_argument("--no-split", action="store_true",
                        help="choose among hysteresis thresholds and sizes only (no split, no "
                             "mean-probability filter), as before both existed")
    parser.add_argument("--rescore", action="store_true",
                        help="object-level rescoring: choose hysteresis, candidate classifier and "
                             "its threshold by the inner cross-validation (RESCORE_* grids) "
                             "instead of the size / score / split grid")
    parser.add_argument("--detector", choices=("trees", "cnn"), default="trees",
                        help="voxel classifier (boosted trees on features and cues) or the 2.5D "
                             "U-Net of detection.synapses.cnn")
    parser.add_argument("--cnn-iterations", type=int, default=CnnParameters.iterations)
    parser.add_argument("--compare", nargs="+", type=_source, metavar="NAME=FILE[+FILE...]",
                        help="instead of training: the --probabilities files of finished runs, "
                             "each fold's post-processing chosen for each, and per outer fold the "
                             "one with the best inner F1 taken (the first named among equals); "
                             "A+B averages the files' probabilities")
    parser.add_argument("--context-channels", nargs="*",
                        help="feature channels to pool as context (default: the model default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    global SPLITS
    if args.no_split:
        SPLITS = (None,)
        GRID["min_score"] = (0.0,)
    path = DATA / "vnc_sstem_train.h5"
    if not path.exists():
        sys.exit(f"skipped: {path} is absent (set SHARED_DATA)")

    global VOXEL, SPEC, CONTEXT, STEP, GRID_SLICES
    with h5py.File(path, "r") as f:
        raw = f["volumes/raw"][:]
        mask = f["volumes/labels/synapse_mask"][:]
        ids = f["volumes/labels/synapse_ids_3d"][:].astype(np.int64)
        VOXEL = tuple(float(v) for v in f["volumes/raw"].attrs["resolution"])
    SPEC = FeatureSpec()
    CONTEXT = default_context_spec(SPEC)
    if args.context_channels is not None:
        CONTEXT = ContextSpec(**{**CONTEXT.to_dict(), "channels": tuple(args.context_channels)})
    params = TrainingParameters(n_estimators=args.n_estimators, grid_nm=args.grid_nm,
                                negatives_per_positive=args.negatives_per_positive,
                                hard_negative_rounds=args.hard_negative_rounds)
    STEP = grid_step_for(VOXEL, params.grid_nm)
    GRID_SLICES = tuple(slice(0, None, g) for g in STEP)

    features = None
    if (args.detector == "trees" and not args.compare
            and (args.probabilities is None or not args.probabilities.exists())):
        t0 = time.perf_counter()
        features = region_features(raw, voxel_size=VOXEL, feature_spec=SPEC, context_spec=CONTEXT,
                                   step=STEP)
        print(f"features: {features.shape[0]} channels for {raw.size / 1e6:.1f} Mvoxels (grid "
              f"step {STEP}) in {time.perf_counter() - t0:.0f} s")
    targets = clean_targets(labels_to_targets(mask, convention="binary"), voxel_size=VOXEL,
                            ignore_band_nm=args.ignore_band_nm)
    edges = fold_edges(ids, args.folds, STEP[2])
    fold_of = synapse_fold(ids, edges)
    print(f"folds along x: {edges.tolist()}; synapses per fold: "
          f"{np.bincount(list(fold_of.values()), minlength=args.folds).tolist()}")

    def synapses_of(folds):
        return [s for s, f in fold_of.items() if f in folds]

    def evaluation_piece(probability, fold):
        x0, x1 = edges[fold], edges[fold + 1]
        own = np.isin(ids[:, :, x0:x1], synapses_of([fold]))
        gt = np.where(own, ids[:, :, x0:x1], 0)
        ignore = (ids[:, :, x0:x1] > 0) & ~own
        return probability, gt, ignore

    if args.detector == "trees":
        rng = np.random.default_rng(0)

        def fit(fold_targets, region):
            return train(features, fold_targets, region, params, rng)

        def apply(model, x0, x1):
            return predict(model, features, x0, x1, ids.shape)
    else:
        cnn_parameters = CnnParameters(iterations=args.cnn_iterations)

        def fit(fold_targets, region):
            return train_cnn(raw, fold_targets, voxel_size=VOXEL, parameters=cnn_parameters,
                             region=region)

        def apply(model, x0, x1):
            return model.predict_region(raw)[:, :, x0:x1]

    if args.compare:
        sources = {name: probability_source(files) for name, files in args.compare}
    else:
        sources = {args.detector: fold_probabilities(fit, apply, targets, ids, edges, synapses_of,
                                                     args.folds, args.probabilities)}
    results = []
    for fold in range(args.folds):
        train_folds = [f for f in range(args.folds) if f != fold]
        outer_piece = evaluation_piece(None, fold)[1:]
        per_source = {}
        for name, probabilities in sources.items():
            inner_pieces = [evaluation_piece(probabilities[f"inner{fold}_{inner}"], inner)
                            for inner in train_folds]
            outer = (probabilities[f"outer{fold}"], *outer_piece)
            if len(sources) > 1:
                print(f"  {name}:", end=" ")
            per_source[name] = (rescore_fold(fold, train_folds, inner_pieces, raw, edges, outer)
                                if args.rescore else postprocess_fold(fold, inner_pieces, outer, edges))
        # The source with the best inner F1 (the first named among equals).
        taken = max(per_source, key=lambda name: per_source[name]["inner_f1"])
        results.append({**per_source[taken], "detector": taken})
        if len(sources) > 1:
            results[-1]["by_detector"] = {name: {k: r[k] for k in ("inner_f1", "tp", "fp", "fn")}
                                          for name, r in per_source.items()}
            print(f"fold {fold}: taken {taken} (inner F1 "
                  + ", ".join(f"{n} {r['inner_f1']:.3f}" for n, r in per_source.items()) + ")",
                  flush=True)

    pooled = DetectionScores.from_counts(sum(r["tp"] for r in results),
                                         sum(r["fp"] for r in results),
                                         sum(r["fn"] for r in results))
    print(f"overall: precision {pooled.precision:.3f} recall {pooled.recall:.3f} F1 {pooled.f1:.3f} "
          f"(tp {pooled.tp} fp {pooled.fp} fn {pooled.fn})")
    if args.json:
        args.json.write_text(json.dumps({
            "folds": results, "overall": {k: v for k, v in pooled.to_dict().items() if k != "matches"},
            **({"compared": {name: [str(f) for f in files] for name, files in args.compare}}
               if args.compare else
               {"detector": args.detector,
                "training": (CnnParameters(iterations=args.cnn_iterations).to_dict()
                             if args.detector == "cnn" else
                             {**params.to_dict(), "feature_spec": SPEC.to_dict(),
                              "context_spec": CONTEXT.to_dict()})}),
            "ignore_band_nm": args.ignore_band_nm,
            "grid_step": list(STEP),
            "postprocessing_grid": ({"rescore": True, "hysteresis": RESCORE_HYSTERESIS,
                                     "min_size_voxels": RESCORE_MIN_SIZE,
                                     "models": RESCORE_MODELS,
                                     "thresholds": [float(t) for t in RESCORE_THRESHOLDS]}
                                    if args.rescore else
                                    {**{k: list(v) for k, v in GRID.items()},
                                     "split": [sp.to_dict() if sp else None for sp in SPLITS]}),
        }, indent=2))


if __name__ == "__main__":
    main()
