"""The post-processing a synapse model is used with, chosen by spatial cross-validation.

A detector gives a probability per voxel; what a user gets are synapses, and between the two lie
numbers that decide the result as much as the model does: the hysteresis thresholds, the
minimum size, whether touching components are split, and the minimum mean probability of an
instance. :func:`calibrate` chooses them on held-out probabilities, i.e. probabilities each
scored by a model that never saw that part's labels (out-of-fold), and the chosen
:class:`Calibration` is stored in the model file, so that ``predict`` and detection jobs use it
without a person setting thresholds.

Scoring is synapse-level and one-to-one (:func:`detection.metrics.match_by_overlap`): a
predicted component covering two annotated sites finds one, and the extra pieces of a split
site are false positives.

The figures reported with a calibration are nested: for each fold, the post-processing is
chosen on the other folds' held-out probabilities alone and then counted on this fold, so no
fold's own score takes part in choosing what it is scored with. (The other folds' probabilities
come from models that did see this fold's labels; that influences which post-processing wins
only through those models, never through this fold's score.) Precision and recall carry Wilson
95 % intervals and F1 a bootstrap 95 % interval over the counted outcomes.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from detection.errors import InputError
from detection.metrics import DetectionScores, match_by_overlap
from detection.synapses.instances import find_instances
from detection.synapses.split import SplitParameters

#: (high, low) hysteresis thresholds tried, from permissive to strict.
HYSTERESIS = ((0.5, 0.3), (0.7, 0.5), (0.7, 0.7), (0.8, 0.5), (0.9, 0.5), (0.9, 0.7),
              (0.9, 0.9), (0.95, 0.8), (0.95, 0.95))
#: Minimum component sizes tried, in nm^3 (1e6 nm^3 is about 950 voxels of 50 x 4.6 x 4.6 nm).
MIN_SIZE_NM3 = (0.0, 1e5, 3e5, 1e6, 2e6, 3e6)
#: Minimum mean probabilities of an instance tried.
MIN_SCORE = (0.0, 0.8, 0.9, 0.94)
#: Splits tried (None: components stay whole). The minimum piece is in nm^3, as sizes are.
SPLITS = (None,
          {"smooth_nm": 25.0, "min_distance_nm": 250.0, "min_depth": 0.1, "min_piece_nm3": 1e6},
          {"smooth_nm": 50.0, "min_distance_nm": 250.0, "min_depth": 0.2, "min_piece_nm3": 2e6})


@dataclass(frozen=True)
class PostProcessing:
    """Hysteresis, size, split and score filter, with sizes in nm^3 (voxel-size free)."""

    high: float
    low: float
    min_size_nm3: float = 0.0
    min_score: float = 0.0
    split: dict | None = None

    def for_voxel_size(self, voxel_size) -> dict:
        """Keyword arguments of :class:`~detection.synapses.instances.InstanceStitcher` for
        data of ``voxel_size``."""
        volume = float(np.prod([float(v) for v in voxel_size]))
        split = None
        if self.split is not None:
            s = dict(self.split)
            piece = s.pop("min_piece_nm3", 0.0)
            split = SplitParameters(**s, min_piece_voxels=int(math.ceil(piece / volume)))
        return {"high": self.high, "low": self.low,
                "min_size_voxels": max(1, int(math.ceil(self.min_size_nm3 / volume))),
                "min_score": self.min_score, "split": split}

    def describe(self) -> str:
        split = "no split" if self.split is None else (
            f"split (smooth {self.split['smooth_nm']:g} nm, seeds {self.split['min_distance_nm']:g}"
            f" nm apart, depth {self.split['min_depth']:g})")
        return (f"hysteresis {self.high:g} / {self.low:g}, minimum size {self.min_size_nm3:.3g} "
                f"nm^3, minimum mean probability {self.min_score:g}, {split}")


@dataclass
class Calibration:
    """The chosen post-processing and the cross-validated figures that come with it."""

    postprocessing: PostProcessing
    figures: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"postprocessing": asdict(self.postprocessing), "figures": self.figures}

    @classmethod
    def from_dict(cls, data: dict | None) -> "Calibration | None":
        if not data:
            return None
        try:
            return cls(postprocessing=PostProcessing(**data["postprocessing"]),
                       figures=dict(data.get("figures") or {}))
        except (KeyError, TypeError) as exc:
            raise InputError(f"the model's calibration cannot be read ({exc})") from exc


def candidate_grid() -> list[PostProcessing]:
    """Every post-processing tried, in the order ties are broken (the first wins)."""
    return [PostProcessing(high=h, low=lo, min_size_nm3=s, min_score=m, split=sp)
            for (h, lo), sp, s, m in itertools.product(HYSTERESIS, SPLITS, MIN_SIZE_NM3,
                                                       MIN_SCORE)]


@dataclass
class HeldOut:
    """Held-out probability of one part of a volume with its annotation.

    probability : (Z, Y, X) float array, scored by a model that never saw this part's labels
    sites : (Z, Y, X) integer array, the annotated synapses counted here (0 none)
    ignore : (Z, Y, X) bool array, voxels that are neither right nor wrong (the ignore mask,
        other parts' synapses reaching in)
    volume, fold : which volume and fold the part is (for per-volume figures)
    """

    probability: np.ndarray
    sites: np.ndarray
    ignore: np.ndarray
    voxel_size: tuple
    volume: str
    fold: int
    em: np.ndarray | None = None  # the part's EM, for the error analysis


def count_table(parts: list[HeldOut], grid: list[PostProcessing], progress=None) -> np.ndarray:
    """(len(grid), len(parts), 3) tp / fp / fn of every post-processing on every part.

    Each hysteresis and split labels a part once; sizes and scores are filtered on the labels.
    """
    counts = np.zeros((len(grid), len(parts), 3), np.int64)
    keys = list(dict.fromkeys((g.high, g.low, _split_key(g.split)) for g in grid))
    rows = {key: [i for i, g in enumerate(grid) if (g.high, g.low, _split_key(g.split)) == key]
            for key in keys}
    done, total = 0, len(keys) * len(parts)
    for p, part in enumerate(parts):
        volume_nm3 = float(np.prod(part.voxel_size))
        wholes = {}
        for high, low, split_key in keys:
            if (high, low) not in wholes:
                wholes[high, low] = find_instances(part.probability, voxel_size=part.voxel_size,
                                                   high=high, low=low)[0]
            whole = labels = wholes[high, low]
            if split_key is not None:
                kwargs = PostProcessing(high, low, split=dict(split_key)).for_voxel_size(
                    part.voxel_size)
                labels, _ = find_instances(part.probability, voxel_size=part.voxel_size,
                                           high=high, low=low, split=kwargs["split"])
            scorer = _Scorer(labels, whole, part)
            for i in rows[high, low, split_key]:
                counts[i, p] = scorer.counts(grid[i].min_size_nm3 / volume_nm3, grid[i].min_score)
            done += 1
            if progress is not None:
                progress(done, total)
    return counts


def _split_key(split):
    return tuple(sorted(split.items())) if split else None


class _Scorer:
    """One labelling of a part, scored under any size and score filter without labelling
    again: only voxels of an instance or a site take part in the matching."""

    def __init__(self, labels, whole, part: HeldOut):
        n = int(labels.max())
        flat = labels.ravel()
        self.size = np.bincount(flat, minlength=n + 1)
        self.mean = np.bincount(flat, weights=part.probability.ravel(),
                                minlength=n + 1) / np.maximum(self.size, 1)
        # The size filter applies to the component before any split, as in the stitcher.
        component_size = np.bincount(whole.ravel())
        parent = np.zeros(n + 1, np.int64)
        parent[flat] = whole.ravel()
        self.component_size = component_size[parent]
        idx = np.flatnonzero((flat > 0) | (part.sites.ravel() > 0))
        self.labels = flat[idx]
        self.sites = part.sites.ravel()[idx]
        self.ignore = part.ignore.ravel()[idx]

    def counts(self, min_size_voxels: float, min_score: float) -> tuple[int, int, int]:
        keep = (self.component_size >= min_size_voxels) & (self.mean >= min_score - 1e-12)
        keep[0] = False
        kept = np.where(keep[self.labels], self.labels, 0)
        shape = (-1, 1, 1)
        s = match_by_overlap(kept.reshape(shape), self.sites.reshape(shape),
                             ignore=self.ignore.reshape(shape))
        return s.tp, s.fp, s.fn


def _best(counts: np.ndarray) -> int:
    """Index of the post-processing with the best pooled F1 (the first among equals)."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    f1 = np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    return int(np.argmax(np.round(f1, 12)))


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(float(max(0.0, centre - half)), 4), round(float(min(1.0, centre + half)), 4)]


def f1_interval(tp: int, fp: int, fn: int, *, n_boot: int = 4000, seed: int = 0) -> list[float]:
    """Bootstrap 95 % interval of F1: the outcomes (each hit, false positive and miss) are
    drawn again with replacement."""
    n = tp + fp + fn
    if n == 0:
        return [1.0, 1.0]  # nothing to find and nothing found: F1 1 by convention
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, np.array([tp, fp, fn]) / n, size=n_boot)
    f1 = np.where(draws[:, 0] > 0, 2 * draws[:, 0] / (2 * draws[:, 0] + draws[:, 1] + draws[:, 2]),
                  0.0)
    return [round(float(np.quantile(f1, 0.025)), 4), round(float(np.quantile(f1, 0.975)), 4)]


def figures(tp: int, fp: int, fn: int) -> dict:
    """Counts, ratios (the conventions of :class:`~detection.metrics.DetectionScores`) and
    their 95 % intervals."""
    s = DetectionScores.from_counts(tp, fp, fn)
    return {"tp": s.tp, "fp": s.fp, "fn": s.fn, "precision": round(s.precision, 4),
            "recall": round(s.recall, 4), "f1": round(s.f1, 4),
            "precision_interval": wilson(tp, tp + fp), "recall_interval": wilson(tp, tp + fn),
            "f1_interval": f1_interval(tp, fp, fn)}


def calibrate(parts: list[HeldOut], *, grid: list[PostProcessing] | None = None,
              progress=None) -> Calibration:
    """Choose the post-processing on all held-out parts, and report nested figures.

    The stored choice is the best pooled F1 over every part. The figures count each fold with
    the choice made on the other folds alone (see the module docstring); with one fold only,
    they are the choice's own score, and say so.
    """
    if not parts:
        raise InputError("no held-out probabilities to calibrate on")
    grid = grid or candidate_grid()
    counts = count_table(parts, grid, progress=progress)
    chosen = grid[_best(counts.sum(axis=1))]
    folds = sorted({p.fold for p in parts})
    volumes = sorted({p.volume for p in parts})
    nested = np.zeros((len(parts), 3), np.int64)
    per_fold = []
    for fold in folds:
        here = np.array([p.fold == fold for p in parts])
        if len(folds) > 1:
            pick = _best(counts[:, ~here].sum(axis=1))
        else:
            pick = _best(counts.sum(axis=1))
        nested[here] = counts[pick, here]
        per_fold.append({"fold": fold, "postprocessing": grid[pick].describe(),
                         "chosen": asdict(grid[pick]),
                         **figures(*counts[pick, here].sum(axis=0))})
    per_volume = {v: figures(*nested[[p.volume == v for p in parts]].sum(axis=0))
                  for v in volumes}
    report = {
        "method": ("nested spatial cross-validation: each fold counted with the post-processing "
                   "chosen on the other folds' held-out probabilities" if len(folds) > 1 else
                   "one fold: the choice's own score (not nested; optimistic)"),
        "folds": len(folds), "pooled": figures(*nested.sum(axis=0)), "per_volume": per_volume,
        "per_fold": per_fold,
        "chosen_on_all_folds": figures(*counts[grid.index(chosen)].sum(axis=0)),
        "postprocessing": chosen.describe(), "grid_size": len(grid),
    }
    return Calibration(postprocessing=chosen, figures=report)


def choose_on(parts: list[HeldOut], *, grid: list[PostProcessing] | None = None) -> PostProcessing:
    """The post-processing with the best pooled F1 on ``parts`` (no figures)."""
    grid = grid or candidate_grid()
    return grid[_best(count_table(parts, grid).sum(axis=1))]


def score(parts: list[HeldOut], postprocessing: PostProcessing) -> dict:
    """Figures of one post-processing on ``parts``."""
    counts = count_table(parts, [postprocessing])[0].sum(axis=0)
    return figures(*counts)


def error_table(parts: list[HeldOut], per_fold: list[dict]) -> list[dict]:
    """Every annotated site and every predicted instance of the held-out parts, scored with the
    post-processing its fold was counted with (``figures["per_fold"]``): what was found,
    missed or false, with size, sections spanned, peak probability and EM contrast (mean
    intensity in a 100 nm in-plane shell minus inside; synapses are dark)."""
    from scipy import ndimage

    chosen = {f["fold"]: PostProcessing(**f["chosen"]) for f in per_fold}
    rows = []
    for part in parts:
        post = chosen[part.fold]
        labels, _ = find_instances(part.probability, voxel_size=part.voxel_size,
                                   **post.for_voxel_size(part.voxel_size))
        s = match_by_overlap(labels, part.sites, ignore=part.ignore)
        matched_pred = {a for a, _ in s.matches}
        matched_gt = {b for _, b in s.matches}
        shell = max(1, int(round(100.0 / part.voxel_size[2])))
        for kind, array, matched in (("site", part.sites, matched_gt),
                                     ("prediction", labels, matched_pred)):
            objects = ndimage.find_objects(array.astype(np.int64))
            for i, box in enumerate(objects, start=1):
                if box is None:
                    continue
                mask = array[box] == i
                if part.ignore[box][mask].all():
                    continue
                row = {"volume": part.volume, "fold": part.fold, "kind": kind,
                       "outcome": ("found" if kind == "site" else "true") if i in matched else
                       ("missed" if kind == "site" else "false"),
                       "voxels": int(mask.sum()),
                       "nm3": float(mask.sum() * np.prod(part.voxel_size)),
                       "sections": int(mask.any(axis=(1, 2)).sum()),
                       "peak_probability": round(float(part.probability[box][mask].max()), 3)}
                if part.em is not None:
                    grown = tuple(slice(max(0, b.start - (0 if a == 0 else shell)),
                                        b.stop + (0 if a == 0 else shell))
                                  for a, b in enumerate(box))
                    inside = np.zeros(array.shape, bool)
                    inside[box] = mask
                    inside = inside[grown]
                    around = ndimage.binary_dilation(
                        inside, structure=np.ones((1, 3, 3), bool), iterations=shell) & ~inside
                    em = part.em[grown].astype(np.float32)
                    row["contrast"] = round(float(em[around].mean() - em[inside].mean()), 1) \
                        if around.any() else 0.0
                rows.append(row)
    return rows
