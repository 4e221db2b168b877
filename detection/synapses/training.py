"""Training a synapse detector from annotated volumes, with the calibration that comes with it.

:func:`train_detector` is what ``connectome-detect train`` and the ``train_detector`` job run:

1. The volumes are checked (:func:`check_training_volumes`) and brought to one voxel size: the
   common section thickness and the coarsest pixel (:mod:`detection.synapses.resample`).
2. Each volume is cut into ``folds`` slabs along its longer in-plane axis, with about equal
   numbers of annotated sites (a site is one annotated synapse: an id of ``sites``, or a 3D
   connected component of the positive targets). Fold k of every volume together is held out
   once: a model trained on the other slabs of all volumes scores it. A site belongs to the
   slab of its centroid; its voxels are never trained on by the fold that holds it out, and
   other folds' sites reaching into a held-out slab are "ignore" there.
3. The post-processing (hysteresis, minimum size, split, score filter) is chosen on these
   held-out probabilities (:func:`detection.synapses.calibration.calibrate`), with nested
   figures: per volume, pooled, with 95 % intervals.
4. With more than one volume, each volume is also held out whole (leave one volume out): a
   model trained on the others scores it with the post-processing chosen on the others' held-out
   probabilities.
5. The final model is trained on every label and carries the calibration.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from detection.errors import InputError
from detection.io.sources import validate_voxel_size
from detection.synapses.calibration import (
    Calibration,
    HeldOut,
    calibrate,
    choose_on,
    score,
)
from detection.synapses.classify import TrainingParameters, clean_targets
from detection.synapses.resample import (
    common_voxel_size,
    resample_ratio,
    to_model_lattice,
)

logger = logging.getLogger(__name__)

DETECTORS = ("trees", "network")
_FACES = ndimage.generate_binary_structure(3, 1)


@dataclass
class TrainingVolume:
    """One annotated volume (or region) to train on.

    name : says which volume in messages, e.g. ``"dataset 'vnc' layer 'synapse labels'"``
    em : (Z, Y, X) EM intensities
    voxel_size : (z, y, x) nm
    targets : (Z, Y, X) int8, 1 synapse, 0 not, -1 ignore
    sites : (Z, Y, X) integer ids of the annotated synapses (0 none); None: the 3D face-connected
        components of ``targets == 1``
    ignore : (Z, Y, X) bool, neither positive nor negative (e.g. synapses cut by the crop)
    aux : other heads' targets for the network, int8 1 / 0 / -1 ("mitochondria", "membrane",
        "vesicles")
    """

    name: str
    em: np.ndarray
    voxel_size: tuple
    targets: np.ndarray
    sites: np.ndarray | None = None
    ignore: np.ndarray | None = None
    aux: dict = field(default_factory=dict)

    def site_labels(self) -> np.ndarray:
        if self.sites is not None:
            return np.asarray(self.sites)
        labels, _ = ndimage.label(self.targets == 1, structure=_FACES)
        return labels


@dataclass
class DetectorOptions:
    detector: str = "trees"
    folds: int = 3
    seed: int = 0
    trees: TrainingParameters = field(default_factory=TrainingParameters)
    features: object = None  # FeatureSpec of the trees; None: its defaults
    network: object = None  # CnnParameters; None: its defaults
    leave_one_volume_out: bool = True
    # Negative voxels within this distance of an annotated synapse are not trained on:
    # annotation boundaries are uncertain.
    ignore_band_nm: float = 80.0

    def to_dict(self) -> dict:
        network = self.network
        if network is None:
            from detection.synapses.cnn import CnnParameters
            network = CnnParameters()
        return {"detector": self.detector, "folds": self.folds, "seed": self.seed,
                "trees": self.trees.to_dict(), "network": network.to_dict(),
                "features": self.features.to_dict() if self.features is not None else None,
                "leave_one_volume_out": self.leave_one_volume_out,
                "ignore_band_nm": self.ignore_band_nm}


def check_training_volumes(volumes) -> tuple[float, float, float]:
    """Refuse volumes that cannot be trained on, naming them; returns the common voxel size."""
    volumes = list(volumes)
    if not volumes:
        raise InputError("no volumes to train on")
    for v in volumes:
        em = np.asarray(v.em)
        if em.ndim != 3:
            raise InputError(f"{v.name}: the EM must be 3-D (z, y, x), not {em.ndim}-D")
        for what, array in (("labels", v.targets), ("sites", v.sites), ("ignore mask", v.ignore),
                            *((f"{k} labels", a) for k, a in v.aux.items())):
            if array is not None and np.shape(array) != em.shape:
                raise InputError(f"{v.name}: the {what} are {tuple(np.shape(array))} voxels but "
                                 f"the EM is {em.shape}")
        validate_voxel_size(v.voxel_size, what=f"{v.name}: voxel size")
        targets = np.asarray(v.targets)
        if v.ignore is not None:
            targets = np.where(v.ignore, -1, targets)
        positives, negatives = int((targets == 1).sum()), int((targets == 0).sum())
        if not positives or not negatives:
            raise InputError(f"{v.name}: the labels hold {positives} synapse and {negatives} "
                             "non-synapse voxels; training needs both")
    return common_voxel_size([v.voxel_size for v in volumes], names=[v.name for v in volumes])


def to_voxel_size(volume: TrainingVolume, voxel_size) -> TrainingVolume:
    """The volume on the lattice of ``voxel_size`` (in-plane resampling; labels by nearest)."""
    ratio = resample_ratio(voxel_size, volume.voxel_size, source=volume.name)
    if all(r == 1.0 for r in ratio):
        return replace(volume, voxel_size=tuple(float(v) for v in voxel_size))

    def labels(array):
        return None if array is None else to_model_lattice(np.asarray(array), ratio, order=0)

    return TrainingVolume(
        name=volume.name, em=to_model_lattice(np.asarray(volume.em), ratio),
        voxel_size=tuple(float(v) for v in voxel_size), targets=labels(volume.targets),
        sites=labels(volume.site_labels()),
        ignore=None if volume.ignore is None else labels(
            np.asarray(volume.ignore, np.uint8)).astype(bool),
        aux={k: labels(a) for k, a in volume.aux.items()},
    )


# --- spatial folds ---------------------------------------------------------------------------

@dataclass
class Folds:
    """Slabs of one volume along ``axis`` (1: y, 2: x): slab k is ``edges[k]:edges[k + 1]``,
    and ``site_fold`` says which slab holds each site."""

    axis: int
    edges: np.ndarray
    site_fold: dict

    def slab(self, k, shape) -> tuple[slice, ...]:
        box = [slice(0, n) for n in shape]
        box[self.axis] = slice(int(self.edges[k]), int(self.edges[k + 1]))
        return tuple(box)


def spatial_folds(sites: np.ndarray, n_folds: int, *, step: int = 1) -> Folds:
    """Cut the longer in-plane axis so each slab holds about as many site centroids; cuts lie
    on multiples of ``step`` (the detector's grid), halfway between neighbouring centroids."""
    axis = 1 if sites.shape[1] >= sites.shape[2] else 2
    ids = np.unique(sites)
    ids = ids[ids != 0]
    centres = ndimage.center_of_mass(np.ones(sites.shape, bool), sites, ids) if len(ids) else []
    position = np.array([c[axis] for c in centres], float)
    order = np.sort(position)
    n = sites.shape[axis]
    edges = [0]
    for k in range(1, n_folds):
        if len(order) >= n_folds:
            i = int(round(k * len(order) / n_folds))
            cut = (order[i - 1] + order[i]) / 2
        else:
            cut = k * n / n_folds
        edges.append(int(cut / step) * step)
    edges.append(n)
    edges = np.maximum.accumulate(np.array(edges))
    fold = {int(i): int(np.searchsorted(edges, p, side="right") - 1)
            for i, p in zip(ids, position)}
    return Folds(axis=axis, edges=edges, site_fold={i: min(f, n_folds - 1) for i, f in fold.items()})


def _fold_masks(volume: TrainingVolume, sites: np.ndarray, folds: Folds, k: int):
    """(trainable targets with fold k held out, held-out part of fold k)."""
    of_fold = np.zeros(int(sites.max()) + 1, bool)
    for i, f in folds.site_fold.items():
        of_fold[i] = f == k
    held_sites = of_fold[sites]
    slab = folds.slab(k, sites.shape)
    train = volume.targets.copy()
    train[slab] = -1
    train[held_sites] = -1
    # Scoring fold k: its own sites count; other folds' sites reaching in are neither.
    part_sites = np.where(held_sites, sites, 0)[slab]
    ignore = ((sites > 0) & ~held_sites)[slab]
    if volume.ignore is not None:
        ignore |= np.asarray(volume.ignore, bool)[slab]
    return train, slab, part_sites, ignore


def _held_out(targets: np.ndarray, slab) -> np.ndarray:
    out = np.array(targets, dtype=np.int8, copy=True)
    out[slab] = -1
    return out


# --- training ----------------------------------------------------------------------------------

def _fit(detector: str, volumes: list[TrainingVolume], targets: list[np.ndarray], voxel_size,
         options: DetectorOptions, progress=None):
    targets = [clean_targets(t, voxel_size=voxel_size, ignore_band_nm=options.ignore_band_nm)
               for t in targets]
    if detector == "trees":
        from detection.synapses.classify import train_voxel_classifier

        usable = [(v.em, t) for v, t in zip(volumes, targets) if (t == 1).any()]
        return train_voxel_classifier([u[0] for u in usable], [u[1] for u in usable],
                                      voxel_size=voxel_size, feature_spec=options.features,
                                      parameters=replace(options.trees, seed=options.seed))
    from detection.synapses import cnn

    parameters = options.network or cnn.CnnParameters()
    parameters = replace(parameters, seed=options.seed)
    if hasattr(cnn, "train_network"):
        masked = [replace(v, targets=t) for v, t in zip(volumes, targets)]
        return cnn.train_network(masked, voxel_size=voxel_size, parameters=parameters,
                                 progress=progress)
    usable = [(v, t) for v, t in zip(volumes, targets) if (t == 1).any()]
    if len(usable) != 1:
        raise InputError("this network trains on one volume at a time")
    return cnn.train_cnn(usable[0][0].em, usable[0][1], voxel_size=voxel_size,
                         parameters=parameters, progress=progress)


def _grid_step(detector: str, voxel_size, options: DetectorOptions) -> int:
    if detector == "trees":
        from detection.synapses.classify import grid_step_for

        step = grid_step_for(voxel_size, options.trees.grid_nm)
    else:
        from detection.synapses.cnn import CnnParameters, downsample_factor

        parameters = options.network or CnnParameters()
        f = downsample_factor(voxel_size, parameters.pixel_nm)
        step = (1, f * 2 ** parameters.depth, f * 2 ** parameters.depth)
    return int(np.lcm(step[1], step[2]))


def _predict(model, em: np.ndarray, box) -> np.ndarray:
    """The model's probability over ``box`` of ``em``, read with the model's halo."""
    from detection.blockwise import with_halo

    outer, core = with_halo(tuple(box), model.halo_voxels(), em.shape)
    return model.predict_region(np.asarray(em[outer]), core=core,
                                offset=tuple(s.start for s in outer))


def train_detector(volumes, options: DetectorOptions | None = None, progress=None,
                   held_out: list | None = None):
    """Train a detector on ``volumes`` with spatial cross-validation and calibration (see the
    module docstring); returns the model, which carries its :class:`Calibration` and figures.

    ``progress(done, total, message)`` is called between and within steps; it may raise to
    cancel. A list given as ``held_out`` receives the held-out parts (:class:`HeldOut`, with
    their EM) for an error analysis.
    """
    options = options or DetectorOptions()
    if options.detector not in DETECTORS:
        raise InputError(f"unknown detector {options.detector!r}; use trees or network")
    if not 2 <= options.folds <= 10:
        raise InputError(f"folds must be 2 to 10, not {options.folds}")
    volumes = list(volumes)
    voxel_size = check_training_volumes(volumes)
    started = time.perf_counter()
    volumes = [to_voxel_size(v, voxel_size) for v in volumes]
    step = _grid_step(options.detector, voxel_size, options)
    sites = [v.site_labels() for v in volumes]
    folds = [spatial_folds(s, options.folds, step=step) for s in sites]
    lovo = options.leave_one_volume_out and len(volumes) > 1
    k_all = options.folds
    fit_weight = 10.0
    total = fit_weight * (k_all + 1 + (len(volumes) if lovo else 0)) + 3.0
    done = 0.0

    def say(amount, message):
        nonlocal done
        if progress is not None:
            progress(round(done), round(total), message)
        done += amount

    def inner(amount, message):
        start = done
        if progress is None:
            return None
        return lambda d, t: progress(round(start + amount * d / max(t, 1)), round(total), message)

    # 1. Held-out probabilities of every fold.
    parts: list[HeldOut] = []
    for k in range(k_all):
        masks = [_fold_masks(v, s, f, k) for v, s, f in zip(volumes, sites, folds)]
        message = f"cross-validation: training fold {k + 1} of {k_all}"
        callback = inner(fit_weight * 0.8, message)
        say(0, message)
        if not any((m[0] == 1).any() for m in masks):
            raise InputError(f"fold {k + 1} leaves no synapse to train on; use fewer folds")
        # The other heads' labels of the held-out slab are not trained on either.
        without = [replace(v, aux={name: _held_out(a, m[1]) for name, a in v.aux.items()})
                   for v, m in zip(volumes, masks)]
        model = _fit(options.detector, without, [m[0] for m in masks], voxel_size, options,
                     progress=callback)
        done += fit_weight * 0.8
        say(0, f"cross-validation: scoring fold {k + 1} of {k_all}")
        for v, (_, slab, part_sites, ignore) in zip(volumes, masks):
            if part_sites.size == 0:
                continue
            parts.append(HeldOut(probability=_predict(model, v.em, slab), sites=part_sites,
                                 ignore=ignore, voxel_size=voxel_size, volume=v.name, fold=k,
                                 em=v.em[slab] if held_out is not None else None))
        done += fit_weight * 0.2

    # 2. The post-processing, chosen on them.
    calibration = calibrate(parts, progress=inner(3.0, "calibration: choosing the "
                                                       "post-processing"))
    done += 3.0

    # 3. Each volume held out whole.
    lovo_figures = {}
    if lovo:
        for i, v in enumerate(volumes):
            others = [u for j, u in enumerate(volumes) if j != i]
            say(0, f"leave one volume out: training without {v.name}")
            model = _fit(options.detector, others, [u.targets for u in others], voxel_size,
                         options, progress=inner(fit_weight * 0.8, "leave one volume out"))
            done += fit_weight * 0.8
            chosen = choose_on([p for p in parts if p.volume != v.name])
            whole = tuple(slice(0, n) for n in v.em.shape)
            ignore = np.zeros(v.em.shape, bool) if v.ignore is None else np.asarray(v.ignore, bool)
            held = HeldOut(probability=_predict(model, v.em, whole), sites=sites[i],
                           ignore=ignore, voxel_size=voxel_size, volume=v.name, fold=-1)
            lovo_figures[v.name] = {"postprocessing": chosen.describe(), **score([held], chosen)}
            done += fit_weight * 0.2

    # 4. The model on every label.
    say(0, "training the final model on every label")
    model = _fit(options.detector, volumes, [v.targets for v in volumes], voxel_size, options,
                 progress=inner(fit_weight, "training the final model"))
    done += fit_weight
    calibration.figures["leave_one_volume_out"] = lovo_figures
    calibration.figures["volumes"] = [
        {"name": v.name, "shape": list(v.em.shape), "sites": int(len(f.site_fold)),
         "fold_axis": "yx"[f.axis - 1], "fold_edges": [int(e) for e in f.edges]}
        for v, f in zip(volumes, folds)]
    model.calibration = calibration
    if held_out is not None:
        held_out.extend(parts)
    model.training = {**model.training, "options": options.to_dict(),
                      "cross_validation": calibration.figures,
                      "seconds": round(time.perf_counter() - started, 1)}
    if progress is not None:
        progress(round(total), round(total), "done")
    return model


def describe(calibration: Calibration | None) -> str:
    """One paragraph for people: the chosen post-processing and the cross-validated figures."""
    if calibration is None:
        return "no calibration (trained without cross-validation)"
    pooled = calibration.figures.get("pooled", {})
    text = (f"{calibration.postprocessing.describe()}; cross-validated precision "
            f"{pooled.get('precision', 0):.2f}, recall {pooled.get('recall', 0):.2f}, F1 "
            f"{pooled.get('f1', 0):.2f} (95 % interval {pooled.get('f1_interval', [0, 0])[0]:.2f}"
            f"-{pooled.get('f1_interval', [0, 0])[1]:.2f}; {pooled.get('tp', 0)} found, "
            f"{pooled.get('fp', 0)} false, {pooled.get('fn', 0)} missed)")
    return text
