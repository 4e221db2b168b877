"""A cell model: the affinity network trained on dense labels, with the agglomeration threshold
chosen on labelled volumes the network did not learn from.

:func:`train_cell_model` trains :class:`~detection.cells.boundaries.AffinityNet` on the training
volumes, predicts the validation volumes, agglomerates their fragments at every threshold of a
grid (waterz yields them one after another from one region graph) and keeps the threshold of
the lowest variation of information, summed over the validation volumes. The threshold, the
fragment parameters and the whole table go into ``model.agglomeration``, so whoever segments
with the model uses what was chosen with it.
"""

from __future__ import annotations

import logging

import numpy as np

from detection.cells import segmentation as seg
from detection.cells.boundaries import (
    AffinityNet,
    AffinityParameters,
    LabelVolume,
    train_affinities,
)
from detection.cells.evaluation import adapted_rand_error, variation_of_information
from detection.errors import InputError

logger = logging.getLogger(__name__)

#: Thresholds tried by default (waterz scores, 1 - mean affinity; higher merges more).
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))


def threshold_table(affs: np.ndarray, truth: np.ndarray, *, voxel_size, thresholds=THRESHOLDS,
                    ignore=None, fragment_parameters=seg.FragmentParameters(),
                    scoring: str = "mean") -> list[dict]:
    """VOI (split, merge) and adapted Rand error of the segmentation at every threshold, scored
    against ``truth`` (0 and ``ignore`` left out)."""
    frag, n = seg.fragments(affs, voxel_size=voxel_size, parameters=fragment_parameters)
    rows = []
    for t, labels in zip(sorted(thresholds), seg.agglomerate(affs, frag, thresholds,
                                                             scoring=scoring)):
        voi = variation_of_information(labels, truth, ignore=ignore)
        rand = adapted_rand_error(labels, truth, ignore=ignore)
        rows.append({"threshold": float(t), "voi_split": float(voi.split),
                     "voi_merge": float(voi.merge), "voi": float(voi.total),
                     "arand": float(rand.error), "fragments": int(n),
                     "cells": len(np.unique(labels[labels > 0]))})
    return rows


def best_threshold(tables: list[list[dict]]) -> tuple[float, list[dict]]:
    """The threshold of the lowest VOI summed over volumes (ties: the lower threshold), and the
    summed table."""
    if not tables or not tables[0]:
        raise InputError("no threshold table to choose from")
    summed = []
    for rows in zip(*tables):
        summed.append({"threshold": rows[0]["threshold"],
                       "voi": float(sum(r["voi"] for r in rows)),
                       "voi_split": float(sum(r["voi_split"] for r in rows)),
                       "voi_merge": float(sum(r["voi_merge"] for r in rows)),
                       "arand": float(np.mean([r["arand"] for r in rows]))})
    best = min(summed, key=lambda r: (r["voi"], r["threshold"]))
    return best["threshold"], summed


def train_cell_model(training: list[LabelVolume], validation: list[LabelVolume], *, voxel_size,
                     parameters: AffinityParameters = AffinityParameters(),
                     fragment_parameters: seg.FragmentParameters = seg.FragmentParameters(),
                     thresholds=THRESHOLDS, scoring: str = "mean", progress=None,
                     device=None) -> AffinityNet:
    """Train the affinity network on ``training`` and choose the agglomeration threshold on
    ``validation`` (labelled volumes the network never saw; ignore masks respected).

    ``model.agglomeration`` then holds ``threshold``, ``scoring``, ``fragments`` (the fragment
    parameters), ``validation`` (the volumes' names) and ``table`` (per threshold, VOI summed
    over the validation volumes and mean adapted Rand error)."""
    if not validation:
        raise InputError("choosing the merge threshold needs at least one validation volume "
                         "(labelled, not trained on)")
    model = train_affinities(training, voxel_size=voxel_size, parameters=parameters,
                             progress=progress, device=device)
    tables = []
    for v in validation:
        affs = model.predict_region(np.asarray(v.em))
        tables.append(threshold_table(affs, np.asarray(v.labels), voxel_size=voxel_size,
                                      thresholds=thresholds, ignore=v.ignore,
                                      fragment_parameters=fragment_parameters, scoring=scoring))
    threshold, table = best_threshold(tables)
    logger.info("merge threshold %.2f chosen on %d validation volumes", threshold, len(validation))
    model.agglomeration = {"threshold": threshold, "scoring": scoring,
                           "fragments": fragment_parameters.to_dict(),
                           "validation": [v.name for v in validation], "table": table}
    return model


def segment_with(model: AffinityNet, em: np.ndarray, *, threshold: float | None = None,
                 mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Affinities and cells of a whole volume with a model's own agglomeration settings
    (``threshold`` overrides the stored one)."""
    settings = model.agglomeration or {}
    if threshold is None:
        if "threshold" not in settings:
            raise InputError("the model carries no merge threshold; give one")
        threshold = settings["threshold"]
    parameters = seg.FragmentParameters(**settings.get("fragments", {}))
    affs = model.predict_region(np.asarray(em))
    cells = seg.segment(affs, voxel_size=model.voxel_size, threshold=threshold, mask=mask,
                        parameters=parameters, scoring=settings.get("scoring", "mean"))
    return affs, cells
