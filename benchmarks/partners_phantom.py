"""Partner-assignment accuracy of the three methods on phantoms with known partners.

For each geometry (anisotropic serial sections 40 x 8 x 8 nm, isotropic 10 nm):

1. two *training* phantoms (their own seeds) train what the methods learn: the interface
   classifier of the contact method (on the local interfaces around its synapses), and a
   voxel classifier of vesicle clouds whose probability map is the presynaptic signal of the
   vesicle and diffusion methods (on a wider filter bank, ``VESICLE_SPEC``);
2. the methods' thresholds are chosen on a *validation* phantom (another seed; best
   synapse-level partner F1 over a small grid);
3. *test* phantoms (other seeds, together at least 500 synapses with polyadic sites) are then
   scored once: synapse-level partner precision / recall (right place within the tolerance
   and right directed pair) and connection-level (binary connectome) precision / recall.

Sites are the connected components of the phantom's cleft + PSD masks with their identities
dropped (touching clefts of a polyadic site become one candidate), i.e. a perfect detector;
partner assignment alone is measured.  Reference rows use the true vesicle mask instead of
the learned map, or let diffusion decide by the arrivals alone (no ``min_inside``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/partners_phantom.py --json docs/partners_phantom.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time

import numpy as np
from scipy import ndimage as ndi

from detection.metrics import connection_scores, synapse_partner_scores
from detection.partners import (
    assign_partners,
    rows_to_pairs,
    site_interfaces,
    site_scores,
)
from detection.partners.contact import train_site_classifier
from detection.synapses.classify import TrainingParameters, train_voxel_classifier
from detection.synapses.features import FeatureSpec, compute_features
from detection.synthetic.phantom import make_phantom

logger = logging.getLogger("partners_phantom")

GEOMETRIES = {
    "anisotropic": {"voxel_size": (40.0, 8.0, 8.0), "train": (32, 384, 384),
                    "test": (48, 512, 512), "cells": (70, 140), "synapses": (150, 300)},
    "isotropic": {"voxel_size": (10.0, 10.0, 10.0), "train": (96, 288, 288),
                  "test": (128, 384, 384), "cells": (50, 100), "synapses": (150, 300)},
}
TEST_SEEDS = (1, 2)
TRAIN_SEEDS = (100, 102)
VALIDATION_SEED = 101
TOLERANCE_NM = 200.0
SPEC = FeatureSpec(scales_nm=(10.0, 40.0),
                   kinds=("gaussian", "gradient_magnitude", "hessian_eigenvalues"))
# The vesicle-cloud voxel classifier also sees 80 and 160 nm: a cloud is a region of small
# vesicles, wider than the 40 nm sections; with SPEC alone it missed clouds between sections
# and flipped the direction of some synapses.
VESICLE_SPEC = FeatureSpec(scales_nm=(10.0, 40.0, 80.0, 160.0),
                           kinds=("gaussian", "gradient_magnitude", "hessian_eigenvalues"))
GRIDS = {
    "contact": {"min_score": (0.3, 0.5, 0.7, 0.9), "min_inside": (None, 0.03, 0.05, 0.1)},
    "vesicle": {"min_fraction": (0.25, 0.4, 0.55, 0.7), "min_inside": (0.03, 0.05, 0.1)},
    "diffusion": {"min_share": (0.15, 0.25, 0.35, 0.45),
                  "min_inside": (None, 0.03, 0.05, 0.1)},
    # A reference row: diffusion deciding partners by the arrivals alone.
    "diffusion (arrivals only)": {"min_share": (0.15, 0.25, 0.35, 0.45), "min_inside": (None,)},
}


def method_of(row: str) -> str:
    """The method a row of GRIDS runs ("diffusion (arrivals only)" -> "diffusion")."""
    return row.split(" (")[0]


def sites_of(phantom) -> np.ndarray:
    sites, _ = ndi.label(phantom.synapse_labels > 0, structure=np.ones((3, 3, 3), bool))
    return sites


def truth(phantom):
    return [(s.center, s.pre_id, s.post_id) for s in phantom.synapses]


def score(rows, phantom) -> dict:
    pred = [(r.center, r.pre_id, r.post_id) for r in rows if r.counted]
    syn = synapse_partner_scores(pred, truth(phantom), tolerance_nm=TOLERANCE_NM)
    conn = connection_scores(rows_to_pairs(rows), [(s.pre_id, s.post_id) for s in phantom.synapses])
    return {"tp": syn.tp, "fp": syn.fp, "fn": syn.fn,
            "conn_tp": conn.tp, "conn_fp": conn.fp, "conn_fn": conn.fn,
            "flagged": sum(not r.counted for r in rows), "rows": len(rows)}


def summary(counts: dict) -> dict:
    def ratio(a, b):
        return a / b if b else 1.0

    p = ratio(counts["tp"], counts["tp"] + counts["fp"])
    r = ratio(counts["tp"], counts["tp"] + counts["fn"])
    cp = ratio(counts["conn_tp"], counts["conn_tp"] + counts["conn_fp"])
    cr = ratio(counts["conn_tp"], counts["conn_tp"] + counts["conn_fn"])
    return {**counts, "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "conn_precision": cp, "conn_recall": cr}


def add(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) + b[k] for k in b}


class Inputs:
    """What the methods read for one phantom."""

    def __init__(self, phantom, vesicle_model, interface_model):
        self.phantom = phantom
        self.sites = sites_of(phantom)
        t0 = time.perf_counter()
        self.learned = vesicle_model.predict_region(phantom.em)
        self.t_map = time.perf_counter() - t0
        t0 = time.perf_counter()
        channels = compute_features(phantom.em, voxel_size=phantom.voxel_size, spec=SPEC)
        local = site_interfaces(phantom.em, phantom.segmentation, self.sites,
                                voxel_size=phantom.voxel_size, spec=SPEC, channels=channels)
        del channels
        self.local_scores = site_scores(local, interface_model)
        self.t_interfaces = time.perf_counter() - t0

    def run(self, method, *, true_vesicles=False, **options):
        ph = self.phantom
        presynaptic = ph.vesicles.astype(np.float32) if true_vesicles else self.learned
        t0 = time.perf_counter()
        rows = assign_partners(method, self.sites, ph.segmentation, voxel_size=ph.voxel_size,
                               presynaptic=presynaptic, local_scores=self.local_scores,
                               **options)
        seconds = time.perf_counter() - t0
        if method == "contact":
            seconds += self.t_interfaces  # the local interface features are part of the method
        return rows, seconds


def train(phantoms):
    vs = phantoms[0].voxel_size
    params = TrainingParameters(n_estimators=100, max_samples=200_000)
    vesicle_model = train_voxel_classifier(
        [p.em for p in phantoms], [p.vesicles.astype(np.int8) for p in phantoms],
        voxel_size=vs, feature_spec=VESICLE_SPEC, parameters=params)
    interface_model = train_site_classifier(
        [p.em for p in phantoms], [p.segmentation for p in phantoms],
        [p.synapse_labels for p in phantoms],
        [{s.synapse_id: (s.pre_id, s.post_id) for s in p.synapses} for p in phantoms],
        voxel_size=vs, spec=SPEC, max_iter=150, max_leaf_nodes=15)
    return vesicle_model, interface_model


def tune(inputs: Inputs) -> dict:
    chosen = {}
    for method, grid in GRIDS.items():
        best = None
        for values in itertools.product(*grid.values()):
            options = dict(zip(grid, values))
            rows, _ = inputs.run(method_of(method), **options)
            f1 = summary(score(rows, inputs.phantom))["f1"]
            logger.info("tune %s %s: F1 %.3f", method, options, f1)
            if best is None or f1 > best[0]:
                best = (f1, options)
        chosen[method] = best[1]
    return chosen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--geometry", choices=sorted(GEOMETRIES), action="append")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("detection").setLevel(logging.WARNING)
    results = {"tolerance_nm": TOLERANCE_NM, "geometries": {}}
    for name in args.geometry or list(GEOMETRIES):
        geo = GEOMETRIES[name]
        vs = geo["voxel_size"]
        t0 = time.perf_counter()
        training = [make_phantom(geo["train"], voxel_size=vs, n_cells=geo["cells"][0],
                                 n_synapses=geo["synapses"][0], seed=seed)
                    for seed in TRAIN_SEEDS]
        vesicle_model, interface_model = train(training)
        del training
        validation = make_phantom(geo["train"], voxel_size=vs, n_cells=geo["cells"][0],
                                  n_synapses=geo["synapses"][0], seed=VALIDATION_SEED)
        chosen = tune(Inputs(validation, vesicle_model, interface_model))
        logger.info("%s: trained and tuned in %.0f s: %s", name, time.perf_counter() - t0, chosen)

        totals = {m: {} for m in GRIDS}
        totals["vesicle (true vesicle mask)"] = {}
        totals["diffusion (true vesicle mask)"] = {}
        seconds = {m: 0.0 for m in totals}
        n_syn = n_poly = n_sites = 0
        for seed in TEST_SEEDS:
            ph = make_phantom(geo["test"], voxel_size=vs, n_cells=geo["cells"][1],
                              n_synapses=geo["synapses"][1], seed=seed)
            n_syn += len(ph.synapses)
            sites = {}
            for s in ph.synapses:
                sites.setdefault(s.site_id, []).append(s)
            n_sites += len(sites)
            n_poly += sum(len(v) for v in sites.values() if len(v) > 1)
            inputs = Inputs(ph, vesicle_model, interface_model)
            for method in GRIDS:
                rows, dt = inputs.run(method_of(method), **chosen[method])
                totals[method] = add(totals[method], score(rows, ph))
                seconds[method] += dt
            for method in ("vesicle", "diffusion"):
                key = f"{method} (true vesicle mask)"
                rows, dt = inputs.run(method, true_vesicles=True, **chosen[method])
                totals[key] = add(totals[key], score(rows, ph))
                seconds[key] += dt
        out = {
            "voxel_size": vs, "test_shape": geo["test"], "test_seeds": TEST_SEEDS,
            "train_seeds": TRAIN_SEEDS, "validation_seed": VALIDATION_SEED, "synapses": n_syn, "sites": n_sites,
            "synapses_in_polyadic_sites": n_poly, "chosen_thresholds": chosen,
            "methods": {m: {**summary(c), "seconds": round(seconds[m], 2)}
                        for m, c in totals.items()},
        }
        results["geometries"][name] = out
        print(f"\n{name} {vs} nm: {n_syn} synapses at {n_sites} sites "
              f"({n_poly} in polyadic sites), thresholds {chosen}")
        print(f"{'method':32s} {'syn P':>6s} {'syn R':>6s} {'F1':>6s} {'conn P':>7s} "
              f"{'conn R':>7s} {'flagged':>8s} {'seconds':>8s}")
        for m, s in out["methods"].items():
            print(f"{m:32s} {s['precision']:6.3f} {s['recall']:6.3f} {s['f1']:6.3f} "
                  f"{s['conn_precision']:7.3f} {s['conn_recall']:7.3f} {s['flagged']:8d} "
                  f"{s['seconds']:8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
