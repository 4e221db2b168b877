"""Link the VNC serial sections' per-section cell profiles into 3D cells.

    .venv/bin/python benchmarks/vnc_linking.py [--data DIR] [--image docs/images/vnc_linking.png]
                                               [--sections 8 12] [--crop 300 160 320]

Data: ../shared/data/vnc_sstem_train.h5 (Drosophila larval VNC, 20 x 1024 x 640 voxels of
50 x 4.6 x 4.6 nm; Gerhard et al. 2013). Its ``neuron_ids_2d`` are per-section connected
components of the annotated intracellular space, not linked across z; they are linked with
:func:`detection.cells.section_linking.link_sections` guided by ``membrane_mask``, with the default
parameters, then again with mutual best matches only (no branches) for comparison.

Printed: the link report, the time, how many sections the cells span, and the share of the
labelled pixels held by the largest cells. Written for a person to judge: a PNG of a few
adjacent sections side by side (a crop), every 3D cell tinted in the same colour in every
section, membrane and background left grey.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage.color import hsv2rgb

from detection.cells.section_linking import link_sections
from detection.overlay import tile_images

DATA = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
IMAGE = Path(__file__).resolve().parents[1] / "docs" / "images" / "vnc_linking.png"


def cell_colours(ids: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 saturated colours that depend only on the cell id (golden-ratio hues)."""
    hue = (ids.astype(np.float64) * 0.618033988749895) % 1.0
    # Alternate the brightness a little so that cells of close hues are told apart.
    value = np.where(ids % 2 == 0, 1.0, 0.7)
    hsv = np.stack([hue, np.ones_like(hue), value], axis=1)[None]
    return np.round(255 * hsv2rgb(hsv)[0]).astype(np.uint8)


def panel(raw: np.ndarray, linked: np.ndarray, label: str, *, alpha: float = 0.45) -> np.ndarray:
    """One section: EM with every linked cell tinted in its colour, a label band on top."""
    rgb = np.repeat(raw[..., None].astype(np.float64), 3, axis=2)
    cells = linked > 0
    ids, inverse = np.unique(linked[cells], return_inverse=True)
    colours = cell_colours(ids).astype(np.float64)
    rgb[cells] = (1 - alpha) * rgb[cells] + alpha * colours[inverse.ravel()]
    band = Image.new("RGB", (rgb.shape[1], 16), (0, 0, 0))
    ImageDraw.Draw(band).text((4, 2), label, fill=(255, 255, 255), font=ImageFont.load_default())
    return np.concatenate([np.asarray(band), np.round(rgb).astype(np.uint8)], axis=0)


def summary(linked: np.ndarray) -> dict:
    fg = linked > 0
    n_z = linked.shape[0]
    z = np.broadcast_to(np.arange(n_z)[:, None, None], linked.shape)[fg]
    cell = linked[fg].astype(np.int64)
    spans = np.bincount(np.unique(cell * n_z + z) // n_z)[1:]
    sizes = np.sort(np.bincount(cell)[1:])[::-1]
    return {
        "cells_in_>=2_sections": int(np.count_nonzero(spans >= 2)),
        "cells_in_>=10_sections": int(np.count_nonzero(spans >= 10)),
        "cells_in_all_sections": int(np.count_nonzero(spans == n_z)),
        "largest_cells_share_of_pixels": [round(float(s) / cell.size, 4) for s in sizes[:3]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--image", type=Path, default=IMAGE)
    parser.add_argument("--sections", type=int, nargs=2, default=(8, 12), metavar=("FIRST", "STOP"),
                        help="sections shown in the image, half-open")
    parser.add_argument("--crop", type=int, nargs=3, default=(300, 160, 320),
                        metavar=("Y", "X", "SIZE"), help="crop of the image, in pixels")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    path = args.data / "vnc_sstem_train.h5"
    if not path.exists():
        raise SystemExit(f"{path} is absent (set SHARED_DATA or --data to the shared data folder)")
    with h5py.File(path, "r") as f:
        raw = f["volumes/raw"][:]
        profiles = f["volumes/labels/neuron_ids_2d"][:]
        membrane = f["volumes/labels/membrane_mask"][:]
        voxel_size = tuple(float(v) for v in f["volumes/raw"].attrs["resolution"])

    results = {}
    for name, kwargs in (("default", {}), ("mutual_only", {"allow_branches": False})):
        start = time.perf_counter()
        linked, report = link_sections(profiles, membrane=membrane, voxel_size=voxel_size, **kwargs)
        seconds = time.perf_counter() - start
        results[name] = linked, report
        figures = {k: v for k, v in report.to_dict().items()
                   if k not in ("section_overlap_fraction", "section_links")}
        figures["mean_overlap_fraction"] = round(figures["mean_overlap_fraction"], 3)
        figures.update(summary(linked), seconds=round(seconds, 2))
        print(f"{name}: {json.dumps(figures)}")
    linked, report = results["default"]
    print("default, links per section pair:", list(report.section_links))
    print("default, mean overlap fraction per section pair:",
          [round(v, 3) for v in report.section_overlap_fraction])

    y, x, size = args.crop
    first, stop = args.sections
    panels = [
        panel(raw[z, y : y + size, x : x + size], linked[z, y : y + size, x : x + size], f"z = {z}")
        for z in range(first, stop)
    ]
    rgb = tile_images(panels, len(panels), gap=4)
    # A palette keeps the file small; 256 adaptive colours are plenty for a tinted grey image.
    image = Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    args.image.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.image, format="PNG", optimize=True)
    print(f"wrote {args.image} ({rgb.shape[1]} x {rgb.shape[0]}, "
          f"{args.image.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
