"""Section linking slab by slab against the whole stack, on the VNC serial sections.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/slab_linking.py [--data DIR]

Data: ../shared/data/vnc_sstem_train.h5 (20 x 1024 x 640 voxels of 50 x 4.6 x 4.6 nm), its
per-section profiles ``neuron_ids_2d`` and ``membrane_mask``. Links the whole stack with
:func:`detection.cells.section_linking.link_sections`, then slab by slab
(:func:`detection.cells.slab_linking.link_by_slabs`, what the ``link_sections`` job's blocks
and final step do) for several slab sizes; prints the times and whether labels and report are
the same.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from pathlib import Path

import h5py
import numpy as np

from detection.cells.section_linking import link_sections
from detection.cells.slab_linking import link_by_slabs

DATA = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
VOXEL = (50.0, 4.6, 4.6)


def same_report(a, b) -> bool:
    one, two = a.to_dict(), b.to_dict()
    mean_one, mean_two = one.pop("mean_overlap_fraction"), two.pop("mean_overlap_fraction")
    return one == two and math.isclose(mean_one, mean_two, rel_tol=1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with h5py.File(args.data / "vnc_sstem_train.h5", "r") as f:
        profiles = f["volumes/labels/neuron_ids_2d"][:]
        membrane = f["volumes/labels/membrane_mask"][:]

    started = time.perf_counter()
    whole, report = link_sections(profiles, membrane=membrane, voxel_size=VOXEL)
    seconds = time.perf_counter() - started
    print(f"whole stack: {report.n_profiles} profiles, {report.n_links} links, "
          f"{report.n_cells} cells, {seconds:.1f} s")
    print("\n| slab sections | slabs | s | labels equal | report equal |\n|---|---|---|---|---|")
    for slab in (1, 4, 10, 20):
        started = time.perf_counter()
        labels, slabbed = link_by_slabs(profiles, slab_sections=slab, membrane=membrane,
                                        voxel_size=VOXEL)
        seconds = time.perf_counter() - started
        print(f"| {slab} | {math.ceil(profiles.shape[0] / slab)} | {seconds:.1f} | "
              f"{np.array_equal(labels, whole)} | {same_report(slabbed, report)} |")


if __name__ == "__main__":
    main()
