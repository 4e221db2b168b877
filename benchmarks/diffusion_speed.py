"""Speed of the diffusion (Cnapse-like) partner assignment: synapses per second on one core.

A phantom with a few hundred synapses; sites are its cleft components, the presynaptic map its
vesicle mask.  The diffusion method is timed at several particle counts.  The vesicle method
runs on the same sites: it does the same per-site geometry and presynaptic choice, so the
difference between the two is what the particles cost.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diffusion_speed.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage as ndi

from detection.partners import assign_by_diffusion, assign_by_vesicles
from detection.synthetic.phantom import make_phantom


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 640, 640))
    parser.add_argument("--synapses", type=int, default=400)
    parser.add_argument("--cells", type=int, default=160)
    parser.add_argument("--particles", type=int, nargs="+", default=(100, 400, 1000, 2000))
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    ph = make_phantom(tuple(args.shape), voxel_size=(40.0, 8.0, 8.0), n_cells=args.cells,
                      n_synapses=args.synapses, seed=7)
    sites, n_sites = ndi.label(ph.synapse_labels > 0, structure=np.ones((3, 3, 3), bool))
    print(f"phantom {tuple(args.shape)} at 40 x 8 x 8 nm: {len(ph.synapses)} synapses, "
          f"{n_sites} site candidates ({time.perf_counter() - t0:.0f} s to generate)")

    t0 = time.perf_counter()
    assign_by_vesicles(sites, ph.segmentation, ph.vesicles, voxel_size=ph.voxel_size)
    base = time.perf_counter() - t0
    print(f"{'method':24s} {'seconds':>8s} {'sites/s':>8s} {'particle cost s':>16s}")
    print(f"{'vesicle side':24s} {base:8.2f} {n_sites / base:8.1f} {'-':>16s}")
    for particles in args.particles:
        t0 = time.perf_counter()
        assign_by_diffusion(sites, ph.segmentation, ph.vesicles, voxel_size=ph.voxel_size,
                            particles=particles, min_share=0.35, seed=0)
        seconds = time.perf_counter() - t0
        print(f"{f'diffusion, {particles} particles':24s} {seconds:8.2f} "
              f"{n_sites / seconds:8.1f} {seconds - base:16.2f}")


if __name__ == "__main__":
    main()
