"""Object-level rescoring of synapse candidates.

The voxel classifier's probability, thresholded and cut into connected components
(:mod:`detection.synapses.instances`), gives candidates. Many are small false components that no size or
mean-probability threshold tells from small true synapses. This module describes each candidate
by a few numbers (size and shape, the distribution of the probability inside it and in a shell
around it, the EM intensity inside and around it: a synapse's cleft and T-bar are dark and sit
in a vesicle-rich neighbourhood) and scores it with a small model trained on candidates whose
truth is known (overlap with annotations), as in the object stage of ccboost-like pipelines.

* :func:`candidate_features` -> (n, k) features of the instances of a label volume.
* :func:`candidate_targets` -> 1 / 0 / -1 (true, false, unknown) per instance from annotations.
* :class:`CandidateClassifier` -> standardised logistic regression or small boosted trees;
  ``save`` / ``load`` as JSON.
* :func:`filter_labels` keeps the instances whose score reaches a threshold.

Everything is per section in the shell (ssTEM: sections are thick, the neighbourhood that
matters is in-plane).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from detection.errors import InputError

FORMAT = "connectome-candidate-classifier/1"
QUANTILES = (0.1, 0.5, 0.9)
# A small set for few training candidates: size and shape, the probability, and the EM's
# darkness inside (cleft, T-bar) and in the shell (membranes, vesicles) and their contrast.
COMPACT = ("log_size", "sections", "log_max_area", "p_mean", "p_max", "p_q50", "em_in_mean",
           "em_in_q10", "em_shell_q10", "em_contrast")


@dataclass(frozen=True)
class CandidateFeatureSpec:
    """shell_nm: in-plane width of the shell around a candidate; smooth_nm: in-plane Gaussian
    sigma applied to the EM before its statistics are taken."""

    shell_nm: float = 100.0
    smooth_nm: float = 10.0

    def to_dict(self) -> dict:
        return {"shell_nm": self.shell_nm, "smooth_nm": self.smooth_nm}


def feature_names() -> list[str]:
    names = ["log_size", "sections", "log_max_area", "extent_nm",
             "p_mean", "p_max", *[f"p_q{int(q * 100)}" for q in QUANTILES], "p_frac_0.9",
             "p_shell_mean", "p_shell_max"]
    for where in ("in", "shell"):
        names += [f"em_{where}_mean", *[f"em_{where}_q{int(q * 100)}" for q in QUANTILES],
                  f"em_{where}_std"]
    names += ["em_contrast"]
    return names


def _quantiles(values: np.ndarray, index: np.ndarray, n: int, qs) -> np.ndarray:
    """(n, len(qs)) quantiles (lower value) of ``values`` per label 1..n given per voxel in
    ``index``; labels without voxels get nan."""
    out = np.full((n, len(qs)), np.nan)
    if index.size == 0:
        return out
    order = np.lexsort((values, index))
    v, i = values[order], index[order]
    counts = np.bincount(i, minlength=n + 1)[1:]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    has = counts > 0
    for j, q in enumerate(qs):
        pos = starts + np.floor(q * (counts - 1)).astype(np.int64)
        out[has, j] = v[pos[has]]
    return out


def _stats(values: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
    """(n, 2 + len(QUANTILES) + 1): mean, max, quantiles, std per label (nan when empty)."""
    count = np.bincount(index, minlength=n + 1)[1:].astype(float)
    s1 = np.bincount(index, weights=values, minlength=n + 1)[1:]
    s2 = np.bincount(index, weights=values * values, minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / count
        std = np.sqrt(np.maximum(s2 / count - mean * mean, 0.0))
    peak = np.full(n + 1, -np.inf)
    np.maximum.at(peak, index, values)
    peak = np.where(count > 0, peak[1:], np.nan)
    return np.column_stack([mean, peak, _quantiles(values, index, n, QUANTILES), std])


def _shell(labels: np.ndarray, voxel_size, width_nm: float) -> np.ndarray:
    """Label of the nearest instance in the same section for background voxels within
    ``width_nm`` (in-plane) of an instance, 0 elsewhere and on the instances themselves."""
    out = np.zeros_like(labels)
    sampling = (float(voxel_size[1]), float(voxel_size[2]))
    for z in range(labels.shape[0]):
        section = labels[z]
        if not section.any():
            continue
        distance, (iy, ix) = ndimage.distance_transform_edt(section == 0, sampling=sampling,
                                                            return_indices=True)
        near = (distance > 0) & (distance <= width_nm)
        out[z][near] = section[iy[near], ix[near]]
    return out


def candidate_features(labels: np.ndarray, probability: np.ndarray, em: np.ndarray, *,
                       voxel_size, spec: CandidateFeatureSpec = CandidateFeatureSpec(),
                       n: int | None = None) -> np.ndarray:
    """(n, len(feature_names())) float features of instances 1..n of ``labels`` (Z, Y, X).

    ``probability`` is the voxel classifier's output in [0, 1], ``em`` the raw EM (any scale;
    its statistics are taken after an in-plane Gaussian of ``spec.smooth_nm``). ``n`` defaults
    to ``labels.max()``; labels without voxels get nan rows.
    """
    labels = np.asarray(labels).astype(np.int64, copy=False)
    if labels.shape != probability.shape or labels.shape != em.shape:
        raise InputError(f"labels {labels.shape}, probability {probability.shape} and em "
                         f"{em.shape} differ in shape")
    n = int(labels.max()) if n is None else int(n)
    if n == 0:
        return np.zeros((0, len(feature_names())))
    vz, vy, vx = (float(v) for v in voxel_size)
    sigma = (0.0, spec.smooth_nm / vy, spec.smooth_nm / vx)
    smooth = ndimage.gaussian_filter(np.asarray(em, dtype=np.float32), sigma)

    inside = np.flatnonzero(labels.ravel())
    index = labels.ravel()[inside]
    p = np.asarray(probability, dtype=np.float64).ravel()[inside]
    size = np.bincount(index, minlength=n + 1)[1:].astype(float)
    z = inside // (labels.shape[1] * labels.shape[2])
    # Area per (instance, section), its maximum, and the number of sections.
    pair = index * labels.shape[0] + z
    area = np.bincount(pair, minlength=(n + 1) * labels.shape[0]).reshape(n + 1, -1)[1:]
    sections = np.count_nonzero(area, axis=1).astype(float)
    max_area = area.max(axis=1).astype(float)
    objects = ndimage.find_objects(labels, max_label=n)
    extent = np.array([0.0 if box is None else
                       np.hypot((box[1].stop - box[1].start) * vy, (box[2].stop - box[2].start) * vx)
                       for box in objects])
    pstats = _stats(p, index, n)
    frac = np.bincount(index, weights=(p >= 0.9).astype(float), minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = frac / size

    shell = _shell(labels, voxel_size, spec.shell_nm).ravel()
    around = np.flatnonzero(shell)
    sindex = shell[around]
    ps = np.asarray(probability, dtype=np.float64).ravel()[around]
    pshell = _stats(ps, sindex, n)
    em_in = _stats(smooth.ravel()[inside].astype(np.float64), index, n)
    em_shell = _stats(smooth.ravel()[around].astype(np.float64), sindex, n)
    em_cols = [0, 2, 3, 4, 5]  # mean, quantiles, std (not the max)
    with np.errstate(invalid="ignore", divide="ignore"):
        log_size = np.log10(size)
        log_area = np.log10(max_area)
    return np.column_stack([
        log_size, sections, log_area, extent,
        pstats[:, 0], pstats[:, 1], pstats[:, 2:5], frac,
        pshell[:, 0], pshell[:, 1],
        em_in[:, em_cols], em_shell[:, em_cols],
        em_shell[:, 0] - em_in[:, 0],
    ])


def candidate_targets(labels: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None, *,
                      n: int | None = None) -> np.ndarray:
    """Per instance 1..n of ``labels``: 1 if it overlaps an annotated object of ``gt`` (non-zero),
    -1 if it lies entirely in ``ignore`` (unknown), else 0."""
    labels = np.asarray(labels).astype(np.int64, copy=False)
    n = int(labels.max()) if n is None else int(n)
    flat = labels.ravel()
    hit = np.bincount(flat, weights=(np.asarray(gt).ravel() > 0), minlength=n + 1)[1:]
    out = (hit > 0).astype(np.int8)
    if ignore is not None:
        outside = np.bincount(flat, weights=~np.asarray(ignore, bool).ravel(), minlength=n + 1)[1:]
        out[(hit == 0) & (outside == 0)] = -1
    return out


def filter_labels(labels: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Labels with the instances whose score is below ``threshold`` set to 0 (ids kept)."""
    keep = np.concatenate([[False], np.asarray(scores) >= threshold])
    return np.where(keep[labels], labels, 0)


@dataclass
class CandidateClassifier:
    """Scores candidates from their features: ``kind`` "logistic" (standardised features,
    L2-penalised logistic regression of strength ``c``) or "trees" (gradient-boosted trees,
    ``c`` rounds). ``use``: the names of the features the model reads (all when None); its
    inputs are always all :func:`feature_names` columns. nan features are replaced by the
    training median."""

    kind: str = "logistic"
    c: float = 1.0
    use: tuple[str, ...] | None = None
    spec: CandidateFeatureSpec = field(default_factory=CandidateFeatureSpec)
    names: list[str] = field(default_factory=feature_names)
    fill: np.ndarray | None = None
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    coef: np.ndarray | None = None
    intercept: float = 0.0
    booster: str | None = None  # LightGBM model text

    def _columns(self, X):
        X = np.asarray(X, float)
        if X.ndim != 2 or X.shape[1] != len(self.names):
            raise InputError(f"candidate features must be (n, {len(self.names)}), got {X.shape}")
        if self.use is None:
            return X
        return X[:, [self.names.index(name) for name in self.use]]

    def _prepare(self, X):
        X = np.where(np.isnan(X), self.fill, X)
        return (X - self.mean) / self.scale

    def fit(self, X: np.ndarray, y: np.ndarray) -> "CandidateClassifier":
        X = self._columns(X)
        y = np.asarray(y)
        use = y >= 0
        X, y = X[use], y[use].astype(int)
        if len(np.unique(y)) < 2:
            raise InputError("candidate training needs both true and false candidates")
        self.fill = np.nanmedian(X, axis=0)
        self.fill = np.where(np.isnan(self.fill), 0.0, self.fill)
        X = np.where(np.isnan(X), self.fill, X)
        self.mean = X.mean(axis=0)
        self.scale = np.where(X.std(axis=0) > 0, X.std(axis=0), 1.0)
        Z = (X - self.mean) / self.scale
        if self.kind == "logistic":
            from sklearn.linear_model import LogisticRegression

            model = LogisticRegression(C=self.c, class_weight="balanced", max_iter=2000)
            model.fit(Z, y)
            self.coef, self.intercept = model.coef_[0].copy(), float(model.intercept_[0])
        elif self.kind == "trees":
            import lightgbm as lgb

            weight = np.where(y == 1, (y == 0).sum() / max((y == 1).sum(), 1), 1.0)
            booster = lgb.train(
                {"objective": "binary", "learning_rate": 0.05, "num_leaves": 4,
                 "min_data_in_leaf": 3, "feature_fraction": 0.7, "bagging_fraction": 0.8,
                 "bagging_freq": 1, "lambda_l2": 1.0, "verbose": -1, "seed": 0,
                 "num_threads": 1, "deterministic": True},
                lgb.Dataset(Z, y, weight=weight), num_boost_round=int(self.c))
            self.booster = booster.model_to_string()
        else:
            raise InputError(f"unknown candidate classifier kind {self.kind!r}")
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = self._columns(X)
        if X.shape[0] == 0:
            return np.zeros(0)
        Z = self._prepare(X)
        if self.kind == "logistic":
            return 1.0 / (1.0 + np.exp(-(Z @ self.coef + self.intercept)))
        import lightgbm as lgb

        return lgb.Booster(model_str=self.booster).predict(Z)

    def to_dict(self) -> dict:
        arr = lambda a: None if a is None else [float(v) for v in a]  # noqa: E731
        return {"format": FORMAT, "kind": self.kind, "c": self.c,
                "use": None if self.use is None else list(self.use), "spec": self.spec.to_dict(),
                "names": list(self.names), "fill": arr(self.fill), "mean": arr(self.mean),
                "scale": arr(self.scale), "coef": arr(self.coef), "intercept": self.intercept,
                "booster": self.booster}

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path) -> "CandidateClassifier":
        d = json.loads(Path(path).read_text())
        if d.get("format") != FORMAT:
            raise InputError(f"{path} is not a candidate classifier ({d.get('format')!r})")
        arr = lambda a: None if a is None else np.asarray(a, float)  # noqa: E731
        use = None if d.get("use") is None else tuple(d["use"])
        return cls(kind=d["kind"], c=d["c"], use=use, spec=CandidateFeatureSpec(**d["spec"]),
                   names=list(d["names"]), fill=arr(d["fill"]), mean=arr(d["mean"]),
                   scale=arr(d["scale"]), coef=arr(d["coef"]), intercept=d["intercept"],
                   booster=d["booster"])
