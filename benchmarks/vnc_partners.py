"""Partners of the 33 annotated synapses of the real ssTEM stack, and their wiring matrix.

vnc_sstem_train.h5 (Drosophila larval VNC, 20 x 1024 x 640 voxels of 50 x 4.6 x 4.6 nm) has
per-section cell profiles, a membrane mask and synapse masks, but no partner annotation. This
script

1. links the per-section profiles into 3D cells (:func:`detection.cells.section_linking.link_sections`,
   guided by the membrane mask);
2. takes the annotated synapses (``synapse_ids_3d``) as sites.  In this fly tissue the
   annotated masks are the dark presynaptic densities (T-bars) and their clefts, so the mask
   itself is the presynaptic signal, as the U-Net presynaptic densities are in Cnapse;
3. assigns partners with the vesicle-side (here: density-side) and diffusion methods, the
   particles walking through the membranes (the membrane mask is free space);
4. prints the consistency of the two methods, the number of partners per site and the wiring
   matrix, and renders every site's assignment (EM section through the site, presynaptic cell
   green, postsynaptic cells magenta / orange / ..., density outlined) for a person to judge.

The contact method is not run: it needs an interface classifier trained on synapses of known
direction at this resolution, and this stack has none.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vnc_partners.py \\
        --image docs/images/vnc_partners.png --json docs/vnc_partners.json
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage as ndi

from detection.cells.section_linking import link_sections
from detection.overlay import render_assignment, save_png, tile_images
from detection.partners import assign_by_diffusion, assign_by_vesicles

SHARED = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
VOXEL = (50.0, 4.6, 4.6)


def load(path):
    with h5py.File(path, "r") as f:
        return {
            "em": f["volumes/raw"][:],
            "profiles": f["volumes/labels/neuron_ids_2d"][:],
            "membrane": f["volumes/labels/membrane_mask"][:] > 0,
            "sites": f["volumes/labels/synapse_ids_3d"][:],
        }


def wiring(rows):
    pairs = collections.Counter((r.pre_id, r.post_id) for r in rows if r.counted)
    return sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))


def render_sites(data, cells, rows, *, columns=4):
    by_site = collections.defaultdict(list)
    for r in rows:
        by_site[r.site_id].append(r)
    images = []
    for site, site_rows in sorted(by_site.items()):
        mask = data["sites"] == site
        posts = [r.post_id for r in site_rows if r.counted]
        pre = site_rows[0].pre_id
        if pre == 0:
            continue
        # Show the section of the site where its postsynaptic cells come closest (most of
        # their pixels next to the site), then the one with most site pixels.
        near = ndi.binary_dilation(mask, structure=np.ones((1, 9, 9), dtype=bool))
        score = (np.isin(cells, posts) & near).sum(axis=(1, 2)) + 1e-3 * mask.sum(axis=(1, 2))
        z = int(np.argmax(np.where(mask.any(axis=(1, 2)), score, -1)))
        yy, xx = np.nonzero(mask[z])
        title = f"site {site} z{z}: {pre} -> {', '.join(map(str, posts)) or '-'}"
        images.append(render_assignment(
            data["em"][z], cells[z], pre_id=pre, post_ids=posts,
            center_yx=(yy.mean(), xx.mean()), crop_half=70, scale=2,
            synapse_mask=mask[z], title=title))
    return tile_images(images, columns)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", default=str(SHARED / "vnc_sstem_train.h5"))
    parser.add_argument("--image", help="write the rendered assignments (PNG) here")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--min-share", type=float, default=0.25,
                        help="diffusion partner threshold (the value chosen on phantoms)")
    parser.add_argument("--also-min-share", type=float, default=0.15,
                        help="a second diffusion threshold whose partner counts are reported")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not Path(args.volume).exists():
        raise SystemExit(f"{args.volume} is absent (set SHARED_DATA to the shared data folder)")
    data = load(args.volume)

    t0 = time.perf_counter()
    cells, report = link_sections(data["profiles"], membrane=data["membrane"], voxel_size=VOXEL)
    t_link = time.perf_counter() - t0
    print(f"linking: {report.n_profiles} profiles -> {report.n_cells} cells "
          f"({report.n_multi_section_cells} spanning >= 2 sections) in {t_link:.1f} s")

    presynaptic = (data["sites"] > 0).astype(np.float32)
    results = {"linking": {**report.to_dict(), "seconds": round(t_link, 1)}, "methods": {}}
    rows_of = {}
    for name, run in (
        ("vesicle", lambda: assign_by_vesicles(data["sites"], cells, presynaptic,
                                               voxel_size=VOXEL, group_distance_nm=0)),
        ("diffusion", lambda: assign_by_diffusion(data["sites"], cells, presynaptic,
                                                  voxel_size=VOXEL, free=data["membrane"],
                                                  min_share=args.min_share, particles=2000,
                                                  group_distance_nm=0, seed=0)),
    ):
        t0 = time.perf_counter()
        rows = run()
        seconds = time.perf_counter() - t0
        rows_of[name] = rows
        counted = [r for r in rows if r.counted]
        partners = collections.Counter(
            sum(1 for r in rows if r.site_id == s and r.counted) for s in {r.site_id for r in rows})
        matrix = wiring(rows)
        results["methods"][name] = {
            "sites": len({r.site_id for r in rows}), "rows": len(rows),
            "min_share": args.min_share if name == "diffusion" else None,
            "connections": len(counted), "flagged": len(rows) - len(counted),
            "partners_per_site": dict(sorted(partners.items())), "cell_pairs": len(matrix),
            "seconds": round(seconds, 2),
            "wiring_matrix": [[int(a), int(b), n] for (a, b), n in matrix],
        }
        print(f"{name}: {len(rows)} rows at {results['methods'][name]['sites']} sites, "
              f"{len(counted)} connections between {len(matrix)} cell pairs, "
              f"{len(rows) - len(counted)} flagged; partners per site {dict(sorted(partners.items()))}; "
              f"{seconds:.1f} s")

    low = assign_by_diffusion(data["sites"], cells, presynaptic, voxel_size=VOXEL,
                              free=data["membrane"], min_share=args.also_min_share,
                              particles=2000, group_distance_nm=0, seed=0)
    low_partners = collections.Counter(
        sum(1 for r in low if r.site_id == s and r.counted) for s in {r.site_id for r in low})
    results["diffusion_at_min_share"] = {
        "min_share": args.also_min_share, "connections": sum(r.counted for r in low),
        "partners_per_site": dict(sorted(low_partners.items()))}
    print(f"diffusion at min_share {args.also_min_share}: {sum(r.counted for r in low)} "
          f"connections; partners per site {dict(sorted(low_partners.items()))}")

    pre_of = {m: {r.site_id: r.pre_id for r in rows} for m, rows in rows_of.items()}
    posts_of = {m: collections.defaultdict(set) for m in rows_of}
    for m, rows in rows_of.items():
        for r in rows:
            if r.counted:
                posts_of[m][r.site_id].add(r.post_id)
    sites = sorted(pre_of["vesicle"])
    same_pre = sum(pre_of["vesicle"][s] == pre_of["diffusion"].get(s) for s in sites)
    shared_post = sum(bool(posts_of["vesicle"][s] & posts_of["diffusion"][s]) for s in sites)
    results["agreement"] = {"sites": len(sites), "same_presynaptic_cell": same_pre,
                            "sharing_a_postsynaptic_cell": shared_post}
    print(f"agreement: same presynaptic cell at {same_pre} of {len(sites)} sites; "
          f"at least one common postsynaptic cell at {shared_post}")
    print("diffusion wiring matrix (pre cell, post cell, synapses), strongest first:")
    for (a, b), n in wiring(rows_of["diffusion"])[:10]:
        print(f"  {a} -> {b}: {n}")
    if args.image:
        save_png(args.image, render_sites(data, cells, rows_of["diffusion"]))
        print(f"wrote {args.image}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
