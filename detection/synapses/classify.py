"""Voxel classifier for synapses, after ccboost (Becker et al. 2013).

Boosted trees on feature channels (:mod:`detection.synapses.features`) and context cues
(:mod:`detection.synapses.context`), trained from sparse voxel labels, applied block by block to give a
synapse probability volume.

Labels
------
Training labels become *targets*: 1 synapse, 0 not a synapse, -1 ignore.

``"ccboost"``   the ccboost convention: 255 positive, 0 negative, anything else ignored.
``"binary"``    a dense mask: nonzero positive, 0 negative (e.g. a CREMI cleft mask).
``"classes"``   an explicit class volume: ``positive_values`` and ``negative_values`` (by default
                2 and 1, as an ilastik label export: 0 unlabelled), anything else ignored.

:func:`clean_targets` then erodes positives and turns a band of negatives around them into
"ignore", since annotated boundaries are the least certain voxels.

Speed
-----
Evaluating a few hundred trees at every voxel is the bottleneck of boosted voxel classifiers.
The model is therefore a two-stage cascade: a small screening ensemble scores every voxel, and
the full ensemble only re-scores the voxels the screen lets through; the screening threshold is
set on held-out training voxels to keep a chosen fraction of positives (99.5 % by default).
The screen learns at :data:`SCREEN_LEARNING_RATE`, ten times the main model's rate, so that
its dozen trees separate enough to pass only 13-17 % of the voxels of real ssTEM data.
And the classifier scores a grid of voxels, ``grid_step`` apart along each axis (aligned to the
volume origin; the spacing is the largest whole number of voxels not above ``grid_nm``, 16 nm
by default, far below the 30-60 nm thickness of a synaptic density), each grid voxel's
probability standing for the ``grid_step`` block of voxels that starts at it. The volume is
smoothed at full resolution (derivatives need it), but the channels and cues are computed only
at the grid voxels, and the smoothed intensities the cues pool only over the cues' reach
(:func:`region_features`): their values are those of a full-resolution computation.
"""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
from scipy import ndimage

from detection.errors import InputError
from detection.synapses.calibration import Calibration
from detection.synapses.context import (
    ContextSpec,
    context_features,
    core_grid_slices,
    grid_slices,
)
from detection.synapses.features import (
    FeatureSpec,
    compute_features_block,
    compute_features_with_wide_gaussians,
)

logger = logging.getLogger(__name__)

MODEL_FORMAT = "connectome-voxel-classifier"
MODEL_FORMAT_VERSION = 1


class ModelMismatchError(InputError):
    """A model applied to data it was not trained for (voxel size, feature layout)."""


# --- labels ----------------------------------------------------------------------------------

def labels_to_targets(labels: np.ndarray, *, convention: str = "ccboost",
                      positive_values=(2,), negative_values=(1,)) -> np.ndarray:
    """Training targets from a label volume.

    Parameters
    ----------
    labels : (Z, Y, X) integer ndarray
    convention : {"ccboost", "binary", "classes"}

    Returns
    -------
    (Z, Y, X) int8 ndarray: 1 positive, 0 negative, -1 ignore.
    """
    labels = np.asarray(labels)
    targets = np.full(labels.shape, -1, dtype=np.int8)
    if convention == "ccboost":
        targets[labels == 0] = 0
        targets[labels == 255] = 1
    elif convention == "binary":
        targets[:] = (labels != 0).astype(np.int8)
    elif convention == "classes":
        targets[np.isin(labels, negative_values)] = 0
        targets[np.isin(labels, positive_values)] = 1
    else:
        raise InputError(f"unknown label convention {convention!r}; use ccboost, binary or classes")
    return targets


def clean_targets(targets: np.ndarray, *, voxel_size, erode_nm: float = 0.0,
                  ignore_band_nm: float = 0.0) -> np.ndarray:
    """Erode positives and ignore negatives near positives, both in nm.

    Parameters
    ----------
    targets : (Z, Y, X) int8 ndarray, 1 / 0 / -1
    voxel_size : (3,) float, nm
    erode_nm : float
        Positive voxels closer than this to a non-positive voxel become "ignore".
    ignore_band_nm : float
        Negative voxels closer than this to a positive voxel become "ignore".
    """
    targets = targets.copy()
    positive = targets == 1
    if erode_nm > 0 and positive.any():
        inside = ndimage.distance_transform_edt(positive, sampling=voxel_size)
        targets[positive & (inside <= erode_nm)] = -1
    if ignore_band_nm > 0 and positive.any():
        outside = ndimage.distance_transform_edt(~positive, sampling=voxel_size)
        targets[(targets == 0) & (outside <= ignore_band_nm)] = -1
    return targets


# --- the model -------------------------------------------------------------------------------

@dataclass
class TrainingParameters:
    n_estimators: int = 300
    num_leaves: int = 31
    learning_rate: float = 0.05
    min_child_samples: int = 50
    subsample: float = 0.8
    colsample_bytree: float = 0.7
    screen_estimators: int = 12
    screen_num_leaves: int = 8
    screen_recall: float = 0.995
    grid_nm: float = 16.0
    negatives_per_positive: float = 4.0
    max_samples: int = 400_000
    # Hard negatives (bootstrapping): after a first fit, the negatives of a larger pool that
    # the model scores highest join the training set and the model is fitted again.
    hard_negative_rounds: int = 0
    hard_negatives_per_positive: float = 2.0
    hard_negative_pool: int = 1_000_000
    # Positives of small synapses drawn more often (see sample_training_voxels); 0: uniform.
    site_balance: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class VoxelClassifier:
    """A trained synapse voxel classifier: feature layout, voxel size and the tree cascade."""

    feature_spec: FeatureSpec
    context_spec: ContextSpec
    voxel_size: tuple[float, float, float]
    model: lgb.Booster
    screen: lgb.Booster | None = None
    screen_threshold: float = 0.0
    grid_step: tuple[int, int, int] = (1, 1, 1)
    training: dict = field(default_factory=dict)
    version: int = MODEL_FORMAT_VERSION
    #: The post-processing chosen by cross-validation when the model was trained (None for
    #: models trained without it; detection then needs thresholds given explicitly).
    calibration: Calibration | None = None

    # -- the features this model reads ---------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        return self.feature_spec.channel_names() + self.context_spec.names()

    def halo_voxels(self) -> tuple[int, int, int]:
        return total_halo(self.feature_spec, self.context_spec, self.voxel_size, self.grid_step)

    # -- scoring -------------------------------------------------------------------------
    def predict_proba(self, samples: np.ndarray) -> np.ndarray:
        """Synapse probability of (N, F) float32 samples, through the cascade."""
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        if self.screen is None:
            return self.model.predict(samples).astype(np.float32)
        probability = self.screen.predict(samples).astype(np.float32)
        keep = np.flatnonzero(probability >= self.screen_threshold)
        if keep.size:
            probability[keep] = self.model.predict(samples[keep])
        return probability

    def predict_region(self, volume: np.ndarray, *, core=None, offset=(0, 0, 0)) -> np.ndarray:
        """Probability of every voxel of ``core`` (slices into the region; all by default).

        ``offset`` is the global index of the region's first voxel, which places the grid. The
        core must start on grid voxels (block corners at multiples of ``grid_step``).
        """
        core = tuple(core) if core is not None else tuple(slice(0, n) for n in volume.shape)
        step = self.grid_step
        starts = [c.start + o for c, o in zip(core, offset)]
        if any(s % g for s, g in zip(starts, step)):
            raise InputError(f"a block must start on the {step} grid; it starts at {tuple(starts)}")
        feats = region_features(volume, voxel_size=self.voxel_size, feature_spec=self.feature_spec,
                                context_spec=self.context_spec, step=step, offset=offset,
                                core=core)
        grid_shape = feats.shape[1:]
        probability = self.predict_proba(feats.reshape(feats.shape[0], -1).T).reshape(grid_shape)
        for axis, g in enumerate(step):
            if g > 1:
                probability = np.repeat(probability, g, axis=axis)
        return probability[tuple(slice(0, c.stop - c.start) for c in core)]

    # -- files ---------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write the model: a JSON header line (readable without unpickling) then the boosters."""
        path = Path(path)
        header = {
            "format": MODEL_FORMAT, "version": self.version,
            "voxel_size": list(self.voxel_size), "feature_spec": self.feature_spec.to_dict(),
            "context_spec": self.context_spec.to_dict(), "feature_names": self.feature_names,
            "screen_threshold": self.screen_threshold, "grid_step": list(self.grid_step),
            "training": self.training,
            "calibration": self.calibration.to_dict() if self.calibration else None,
        }
        boosters = {
            "model": self.model.model_to_string(),
            "screen": self.screen.model_to_string() if self.screen is not None else None,
        }
        with open(path, "wb") as f:
            f.write(json.dumps(header).encode() + b"\n")
            pickle.dump(boosters, f, protocol=pickle.HIGHEST_PROTOCOL)
        return path

    @classmethod
    def load(cls, path, *, voxel_size=None, allow_other_voxel_size: bool = False) -> "VoxelClassifier":
        """Read a model; refuse data of another voxel size unless told otherwise.

        Model files contain pickled data: load only files you trust.
        """
        path = Path(path)
        try:
            with open(path, "rb") as f:
                header = json.loads(f.readline())
                if header.get("format") != MODEL_FORMAT:
                    raise InputError("not a voxel classifier file")
                boosters = pickle.load(f)
        except (OSError, ValueError, pickle.UnpicklingError, EOFError) as exc:
            raise ModelMismatchError(f"{path.name}: cannot read model file ({exc})") from exc
        if header["version"] > MODEL_FORMAT_VERSION:
            raise ModelMismatchError(
                f"{path.name}: model format {header['version']} is newer than this library "
                f"reads ({MODEL_FORMAT_VERSION})"
            )
        model = cls(
            feature_spec=FeatureSpec.from_dict(header["feature_spec"]),
            context_spec=ContextSpec.from_dict(header["context_spec"]),
            voxel_size=tuple(header["voxel_size"]),
            model=lgb.Booster(model_str=boosters["model"]),
            screen=lgb.Booster(model_str=boosters["screen"]) if boosters["screen"] else None,
            screen_threshold=header["screen_threshold"], grid_step=tuple(header["grid_step"]),
            training=header["training"], version=header["version"],
            calibration=Calibration.from_dict(header.get("calibration")),
        )
        if voxel_size is not None:
            model.check_voxel_size(voxel_size, allow_other=allow_other_voxel_size, source=path.name)
        return model

    def check_voxel_size(self, voxel_size, *, allow_other: bool = False, source: str = "model"):
        check_voxel_size(self.voxel_size, voxel_size, allow_other=allow_other, source=source)


def check_voxel_size(trained, voxel_size, *, allow_other: bool = False, source: str = "model"):
    """Refuse data of another voxel size than a model's, unless told otherwise."""
    given = tuple(float(v) for v in voxel_size)
    if not np.allclose(given, trained, rtol=1e-3) and not allow_other:
        raise ModelMismatchError(
            f"{source} was trained on voxels of {tuple(trained)} nm (z, y, x) but the data has "
            f"{given} nm; sizes are in nm, yet texture at another resolution differs: retrain, or "
            "allow another voxel size explicitly"
        )


def grid_step_for(voxel_size, grid_nm: float) -> tuple[int, int, int]:
    """Largest whole number of voxels per axis not above ``grid_nm`` (at least 1)."""
    return tuple(max(1, int(np.floor(grid_nm / float(v) + 1e-9))) for v in voxel_size)


def total_halo(feature_spec: FeatureSpec, context_spec: ContextSpec, voxel_size,
               step=(1, 1, 1)) -> tuple[int, int, int]:
    """Halo a block needs: the channels must be exact wherever the cues read them."""
    base = np.asarray(feature_spec.halo_voxels(voxel_size))
    return tuple(int(v) for v in base + np.asarray(context_spec.halo_voxels(voxel_size, step)))


def grow_box(box, margin, shape):
    """``box`` grown by ``margin`` voxels per axis, clipped to ``shape``."""
    return tuple(slice(max(0, b.start - m), min(n, b.stop + m)) for b, m, n in zip(box, margin, shape))


def region_features(volume: np.ndarray, *, voxel_size, feature_spec: FeatureSpec,
                    context_spec: ContextSpec, step=(1, 1, 1), offset=(0, 0, 0),
                    core=None) -> np.ndarray:
    """Feature channels then context cues at the grid voxels: (F, gz, gy, gx) float32.

    ``offset`` is the global index of the region's first voxel (see ``grid_slices``). With
    ``core`` (a box within the region) the result covers only the grid voxels of that box, the
    rest of the region serving as the halo its features and cues read.
    """
    shape = tuple(volume.shape)
    core = tuple(core) if core is not None else tuple(slice(0, n) for n in shape)
    # Channels are needed at the grid voxels of the core: from the first one, every step.
    grid = core_grid_slices(grid_slices(shape, step=step, offset=offset), core)
    grid_box = tuple(slice(g.start, g.stop) for g in grid)
    names = feature_spec.channel_names()
    kinds = dict(zip(names, (kind for kind, _, _ in feature_spec.channels())))
    pooled = list(dict.fromkeys(context_spec.channels + (context_spec.orientation_channel,)))
    pooled_box = grow_box(core, context_spec.halo_voxels(voxel_size, step), shape)
    if not context_spec.channels:
        return compute_features_block(volume, grid_box, voxel_size=voxel_size,
                                      spec=feature_spec, stride=step)
    if all(kinds.get(name) == "gaussian" for name in pooled):
        # The cues read smoothed intensities around each core voxel: only those channels
        # are needed over the cues' reach, every channel only at the core's grid voxels.
        base, pooled_channels = compute_features_with_wide_gaussians(
            volume, grid_box, pooled_box, pooled, voxel_size=voxel_size, spec=feature_spec,
            stride=step)
    else:
        pooled_channels = compute_features_block(volume, pooled_box, voxel_size=voxel_size,
                                                 spec=feature_spec)
        pooled = names
        inside = tuple(slice(b.start - p.start, b.stop - p.start, g)
                       for b, p, g in zip(grid_box, pooled_box, step))
        base = pooled_channels[(slice(None),) + inside]
    pooled_offset = tuple(o + p.start for o, p in zip(offset, pooled_box))
    within = tuple(slice(c.start - p.start, c.stop - p.start) for c, p in zip(core, pooled_box))
    context = context_features(pooled_channels, pooled, voxel_size=voxel_size,
                               spec=context_spec, step=step, offset=pooled_offset, core=within)
    return np.concatenate([base, context], axis=0)


def sampled_features(volume, flat_indices: np.ndarray, *, voxel_size, feature_spec: FeatureSpec,
                     context_spec: ContextSpec, step=(1, 1, 1), block_shape=None) -> np.ndarray:
    """Feature rows (N, F) of chosen grid voxels, computed block by block (bounded memory).

    Equal to ``region_features(volume)`` at those voxels: each block is read with the halo the
    features and cues need. Every chosen voxel must lie on the grid.
    """
    from detection.blockwise import default_block_shape, with_halo
    from detection.io.sources import iter_blocks, read_box

    shape = tuple(volume.shape)
    halo = total_halo(feature_spec, context_spec, voxel_size, step)
    coords = np.stack(np.unravel_index(flat_indices, shape), axis=1)
    if np.any(coords % np.asarray(step)):
        raise InputError(f"training voxels must lie on the {tuple(step)} grid")
    n_features = len(feature_spec.channel_names()) + context_spec.n_features
    rows = np.empty((len(flat_indices), n_features), dtype=np.float32)
    block_shape = block_shape or default_block_shape(shape, halo, step=step)
    for box in iter_blocks(shape, block_shape):
        lo = np.array([s.start for s in box])
        hi = np.array([s.stop for s in box])
        inside = np.flatnonzero(np.all((coords >= lo) & (coords < hi), axis=1))
        if inside.size == 0:
            continue
        outer, core = with_halo(box, halo, shape)
        region = read_box(volume, outer)
        origin = np.array([s.start for s in box])
        feats = region_features(region, voxel_size=voxel_size, feature_spec=feature_spec,
                                context_spec=context_spec, step=step,
                                offset=tuple(s.start for s in outer), core=core)
        first = (-origin) % np.asarray(step)
        local = (coords[inside] - origin - first) // np.asarray(step)
        rows[inside] = feats[(slice(None),) + tuple(local.T)].T
    return rows


def default_context_spec(feature_spec: FeatureSpec) -> ContextSpec:
    """Pool the smoothed intensity at the two smallest scales (PSD darkness, vesicle texture);
    orient by the Hessian of the smoothed intensity nearest 40 nm."""
    smoothed = [n for n in feature_spec.channel_names() if n.startswith("gaussian@")]
    if not smoothed:
        return ContextSpec()
    scales = [float(n.split("@")[1][:-2]) for n in smoothed]
    orientation = smoothed[int(np.argmin([abs(s - 40.0) for s in scales]))]
    return ContextSpec(channels=tuple(smoothed[:2]), orientation_channel=orientation)


# --- training --------------------------------------------------------------------------------

def _grid_targets(targets: np.ndarray, step) -> np.ndarray:
    """``targets`` flattened, with every voxel off the classification grid "ignore" (-1)."""
    on_grid = np.full(targets.shape, -1, dtype=np.int8)
    grid = tuple(slice(0, None, g) for g in step)
    on_grid[grid] = targets[grid]
    return on_grid.ravel()


def sample_training_voxels(targets: np.ndarray, *, negatives_per_positive: float,
                           max_samples: int, rng: np.random.Generator,
                           step=(1, 1, 1), site_balance: float = 0.0) -> np.ndarray:
    """Flat indices of grid voxels to train on: positives plus a random share of negatives.

    With ``site_balance`` > 0, positives of small synapses (3D components of the positive
    voxels) are drawn more often: each voxel with weight ``(median size / its synapse's
    size) ** site_balance``, between 1 and 8, so that at 1 every synapse up to 8 times below
    the median contributes as many samples as a median one (larger ones keep their share per
    voxel); positives may then repeat.
    """
    flat = _grid_targets(targets, step)
    positives = np.flatnonzero(flat == 1)
    negatives = np.flatnonzero(flat == 0)
    n_pos = min(len(positives), int(max_samples / (1 + negatives_per_positive)))
    if site_balance > 0 and len(positives):
        sites, _ = ndimage.label(targets == 1, structure=ndimage.generate_binary_structure(3, 1))
        of = sites.ravel()[positives]
        sizes = np.bincount(of)
        weight = np.clip((np.median(sizes[sizes > 0]) / sizes[of]) ** site_balance, 1.0, 8.0)
        positives = np.sort(rng.choice(positives, size=max(n_pos, len(positives)), replace=True,
                                       p=weight / weight.sum()))
        n_pos = len(positives)
    elif n_pos < len(positives):
        positives = rng.choice(positives, size=n_pos, replace=False)
    n_neg = min(len(negatives), int(max(n_pos, 1) * negatives_per_positive))
    negatives = rng.choice(negatives, size=n_neg, replace=False)
    return np.sort(np.concatenate([positives, negatives]))


def train_voxel_classifier(
    volumes, targets, *, voxel_size, feature_spec: FeatureSpec | None = None,
    context_spec: ContextSpec | None = None, parameters: TrainingParameters | None = None,
) -> VoxelClassifier:
    """Train the cascade on one or more (volume, targets) pairs.

    Parameters
    ----------
    volumes : (Z, Y, X) ndarray or list of them
        EM regions. Each region's features are computed with its own borders.
    targets : (Z, Y, X) int8 ndarray or list of them
        1 / 0 / -1 per voxel (see :func:`labels_to_targets`, :func:`clean_targets`).
    voxel_size : (3,) float, nm
    """
    if isinstance(volumes, np.ndarray):
        volumes, targets = [volumes], [targets]
    feature_spec = feature_spec or FeatureSpec()
    context_spec = context_spec if context_spec is not None else default_context_spec(feature_spec)
    parameters = parameters or TrainingParameters()
    rng = np.random.default_rng(parameters.seed)
    voxel_size = tuple(float(v) for v in voxel_size)
    step = grid_step_for(voxel_size, parameters.grid_nm)

    samples, labels, pools = [], [], []
    for volume, target in zip(volumes, targets):
        if volume.shape != target.shape:
            raise InputError(f"volume shape {volume.shape} and label shape {target.shape} differ")
        chosen = sample_training_voxels(
            target, negatives_per_positive=parameters.negatives_per_positive,
            max_samples=parameters.max_samples // len(volumes), rng=rng, step=step,
            site_balance=parameters.site_balance,
        )
        if chosen.size == 0:
            continue
        extra = np.empty(0, np.int64)
        if parameters.hard_negative_rounds > 0:
            extra = negative_pool(target, chosen, size=parameters.hard_negative_pool // len(volumes),
                                  rng=rng, step=step)
        rows = sampled_features(volume, np.concatenate([chosen, extra]), voxel_size=voxel_size,
                                feature_spec=feature_spec, context_spec=context_spec, step=step)
        samples.append(rows[:len(chosen)])
        pools.append(rows[len(chosen):])
        labels.append(target.ravel()[chosen])
    if not samples:
        raise InputError("no labelled voxels to train on")
    X = np.concatenate(samples)
    y = np.concatenate(labels)
    return train_from_samples(X, y, voxel_size=voxel_size, feature_spec=feature_spec,
                              context_spec=context_spec, parameters=parameters,
                              pool=np.concatenate(pools))


def negative_pool(targets: np.ndarray, chosen: np.ndarray, *, size: int,
                  rng: np.random.Generator, step=(1, 1, 1)) -> np.ndarray:
    """Flat indices of up to ``size`` negative grid voxels not in ``chosen``, at random: the
    candidates of hard-negative training."""
    negatives = np.flatnonzero(_grid_targets(targets, step) == 0)
    negatives = np.setdiff1d(negatives, chosen, assume_unique=True)
    if len(negatives) > size:
        negatives = np.sort(rng.choice(negatives, size=size, replace=False))
    return negatives


def train_from_samples(
    X: np.ndarray, y: np.ndarray, *, voxel_size, feature_spec: FeatureSpec,
    context_spec: ContextSpec, parameters: TrainingParameters | None = None,
    pool: np.ndarray | None = None,
) -> VoxelClassifier:
    """Train the cascade on feature rows already computed (e.g. once per volume, reused by
    every fold of a cross-validation).

    Parameters
    ----------
    X : (N, F) float32 ndarray, columns in the order of ``feature_names``
    y : (N,) 0/1 ndarray
    pool : (M, F) float32 ndarray, optional
        Feature rows of further negative voxels. With ``hard_negative_rounds`` > 0, each round
        adds the ``hard_negatives_per_positive`` x positives rows of the pool that the current
        model scores highest (those above 0.5 only) as negatives, and fits again: the random
        negatives are mostly easy background, the hard ones teach what looks like a synapse
        and is not.
    """
    parameters = parameters or TrainingParameters()
    rng = np.random.default_rng(parameters.seed)
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.asarray(y).astype(np.int32)
    names = feature_spec.channel_names() + context_spec.names()
    if X.shape[1] != len(names):
        raise InputError(f"{X.shape[1]} feature columns, but the specs name {len(names)}")
    if len(y) == 0 or y.min() == y.max():
        raise InputError(f"training needs both classes among {len(y)} labelled voxels")
    logger.info("training on %d voxels (%d positive), %d features", len(y), int(y.sum()), X.shape[1])
    main = _fit_booster(X, y, names, parameters, n_estimators=parameters.n_estimators,
                        num_leaves=parameters.num_leaves)
    n_hard = 0
    if pool is not None:
        pool = np.ascontiguousarray(pool, dtype=np.float32)
    for _ in range(parameters.hard_negative_rounds):
        if pool is None or len(pool) == 0:
            break
        scores = main.predict(pool)
        k = int(parameters.hard_negatives_per_positive * y.sum())
        hardest = np.argsort(-scores, kind="stable")[:k]
        hardest = hardest[scores[hardest] > 0.5]
        if hardest.size == 0:
            break
        X = np.concatenate([X, pool[hardest]])
        y = np.concatenate([y, np.zeros(hardest.size, y.dtype)])
        pool = np.delete(pool, hardest, axis=0)
        n_hard += int(hardest.size)
        logger.info("hard negatives: %d added (%d in all)", hardest.size, n_hard)
        main = _fit_booster(X, y, names, parameters, n_estimators=parameters.n_estimators,
                            num_leaves=parameters.num_leaves)
    screen, threshold = _fit_screen(X, y, names, parameters, rng)
    return VoxelClassifier(
        feature_spec=feature_spec, context_spec=context_spec,
        voxel_size=tuple(float(v) for v in voxel_size), model=main, screen=screen,
        screen_threshold=threshold, grid_step=grid_step_for(voxel_size, parameters.grid_nm),
        training={"parameters": parameters.to_dict(), "n_samples": int(len(y)),
                  "n_positive": int(y.sum()), "n_hard_negatives": n_hard},
    )


def _fit_booster(X, y, names, p: TrainingParameters, *, n_estimators, num_leaves,
                 learning_rate=None) -> lgb.Booster:
    params = {
        "objective": "binary", "num_leaves": num_leaves,
        "learning_rate": p.learning_rate if learning_rate is None else learning_rate,
        "min_data_in_leaf": p.min_child_samples, "bagging_fraction": p.subsample,
        "bagging_freq": 1, "feature_fraction": p.colsample_bytree, "seed": p.seed,
        "verbose": -1, "num_threads": 0, "deterministic": True, "force_row_wise": True,
    }
    data = lgb.Dataset(X, label=y, feature_name=[_safe(n) for n in names], free_raw_data=True)
    return lgb.train(params, data, num_boost_round=n_estimators)


# Learning rate of the screen. Its dozen trees at the main model's rate (0.05) move the score
# too little from the prior to separate anything: on the VNC volume the 0.5 % quantile of
# held-out positive scores was the floor value half of all voxels get, so the screen passed
# every voxel to the full ensemble. At 0.5 it passes 13-17 % of them at the same recall.
SCREEN_LEARNING_RATE = 0.5


def _fit_screen(X, y, names, p: TrainingParameters, rng) -> tuple[lgb.Booster | None, float]:
    """A small ensemble and the threshold that keeps ``screen_recall`` of held-out positives."""
    if p.screen_estimators <= 0:
        return None, 0.0
    order = rng.permutation(len(y))
    half = len(order) // 2
    fit, held = order[:half], order[half:]
    screen = _fit_booster(X[fit], y[fit], names, p, n_estimators=p.screen_estimators,
                          num_leaves=p.screen_num_leaves, learning_rate=SCREEN_LEARNING_RATE)
    held_positive = held[y[held] == 1]
    if held_positive.size == 0:
        return None, 0.0
    scores = np.sort(screen.predict(X[held_positive]))
    threshold = float(scores[int(np.floor((1 - p.screen_recall) * len(scores)))])
    return screen, threshold


def _safe(name: str) -> str:
    # LightGBM refuses some characters in feature names.
    return "".join(c if c.isalnum() or c in "_@." else "_" for c in name)
