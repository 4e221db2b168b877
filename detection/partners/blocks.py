"""Partner assignment block by block: site boxes, block membership, crops and margins.

A volume larger than memory is assigned in three steps (``connectome`` runs them as a
block-wise job, but nothing here needs it):

1. :func:`blockwise_site_boxes` reads the site labels one block at a time and merges the
   bounding boxes of every label (memory: one block, plus one box per site);
2. :func:`sites_by_block` gives each site to the block of the grid holding its box's centre;
3. per block, :func:`block_crop` is the union of its sites' boxes grown by
   :func:`assignment_margin` and clipped to the volume.  The method runs on that crop with the
   labels of every other site erased (:func:`keep_sites`) and the crop's corner as ``offset``
   (:func:`detection.partners.partner_choices`), giving the per-candidate choices; once all
   blocks are done, :func:`detection.partners.rows.build_rows` groups them into rows.

A candidate's choice reads the arrays only within its box grown by the margin, so it is the
same whichever block computes it; grouping candidates into polyadic sites looks at all of them
together, which is why it waits for every block.

Boxes are tuples of slices (z, y, x) in volume voxels.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import numpy as np

from detection.errors import InputError
from detection.partners.sites import Box, site_boxes


def blockwise_site_boxes(read: Callable[[Box], np.ndarray], shape, block_shape
                         ) -> list[tuple[int, Box]]:
    """(site id, bounding box) of every nonzero label, reading one block at a time.

    Parameters
    ----------
    read : callable
        ``read(box) -> (z, y, x) integer ndarray``: the labels within a box of the volume.
    shape, block_shape : sequence of 3 int
        The volume's and the blocks' (z, y, x) voxels.

    Returns
    -------
    list of (int, tuple of slice)
        Ordered by id: what :func:`detection.partners.sites.site_boxes` gives on the whole
        volume.
    """
    shape = tuple(int(n) for n in shape)
    block_shape = tuple(int(b) for b in block_shape)
    if len(shape) != 3 or len(block_shape) != 3 or min(block_shape) < 1:
        raise InputError(f"shape {shape} and block_shape {block_shape} must be three sizes")
    lo: dict[int, np.ndarray] = {}
    hi: dict[int, np.ndarray] = {}
    for box in grid_boxes(shape, block_shape):
        corner = np.array([s.start for s in box], dtype=np.int64)
        for site, found in site_boxes(np.asarray(read(box))):
            start = corner + [s.start for s in found]
            stop = corner + [s.stop for s in found]
            if site in lo:
                np.minimum(lo[site], start, out=lo[site])
                np.maximum(hi[site], stop, out=hi[site])
            else:
                lo[site], hi[site] = start, stop
    return [(site, tuple(slice(int(a), int(b)) for a, b in zip(lo[site], hi[site])))
            for site in sorted(lo)]


def grid_boxes(shape, block_shape) -> list[Box]:
    """The blocks of the grid of `block_shape` over a volume of `shape`, clipped, in C order."""
    ranges = [[slice(s, min(s + b, n)) for s in range(0, n, b)]
              for n, b in zip(shape, block_shape)]
    return [(z, y, x) for z in ranges[0] for y in ranges[1] for x in ranges[2]]


def block_of(box: Box, block_shape) -> tuple[int, int, int]:
    """Grid index of the block holding the centre voxel ``(start + stop - 1) // 2`` of `box`."""
    return tuple((s.start + s.stop - 1) // 2 // int(b) for s, b in zip(box, block_shape))


def block_box(index, block_shape, shape) -> Box:
    """The box of grid block `index`, clipped to the volume."""
    return tuple(slice(i * b, min((i + 1) * b, n))
                 for i, b, n in zip(index, block_shape, shape))


def sites_by_block(boxes, block_shape) -> dict[tuple[int, int, int], list[tuple[int, Box]]]:
    """The sites of each block that holds any (by box centre), blocks in C order."""
    out: dict[tuple[int, int, int], list[tuple[int, Box]]] = {}
    for site, box in boxes:
        out.setdefault(block_of(box, block_shape), []).append((site, box))
    return dict(sorted(out.items()))


def assignment_margin(method: str, *, voxel_size, **options) -> tuple[int, int, int]:
    """Voxels (z, y, x) around a site's box that the method reads for that site.

    Every method measures the site in its box grown by ``2 * max(voxel_size)`` nm
    (:func:`detection.partners.sites.site_geometry`).  On top of that:

    ``vesicle``, ``diffusion``
        the presynaptic signal is averaged within ``radius_nm`` of that grown box;
    ``diffusion``
        particles start at most one voxel outside the site's box and walk ``n_steps`` steps
        of one voxel; they stay within :func:`~detection.partners.diffusion.walk_reach` + 1
        voxels of the box on each axis but for a chance below 1e-12 per particle and axis
        (a Chernoff bound; at 40 x 8 x 8 nm and 400 steps, 27 x 108 x 108 voxels rather than
        the 401 a particle could go at most), so a crop holding that loses a particle when the
        volume would, but for that chance;
    ``contact``
        the local interfaces and their features are computed on the site's box grown by
        ``margin_nm`` of :func:`detection.partners.contact.site_interfaces` (320 nm).

    Options not given take the method's defaults.  A grown box is at least one voxel larger
    per side, as in :func:`detection.partners.sites.grow`.
    """
    from detection.partners import partner_choices_function
    from detection.partners.contact import site_interfaces
    from detection.partners.diffusion import walk_reach

    function = partner_choices_function(method)
    defaults = {name: p.default for name, p in inspect.signature(function).parameters.items()
                if p.default is not inspect.Parameter.empty}
    value = {**defaults, **options}
    vs = tuple(float(v) for v in voxel_size)

    def voxels(nm: float) -> np.ndarray:
        return np.array([max(1, math.ceil(nm / v)) for v in vs], dtype=np.int64)

    geometry = voxels(2 * max(vs))
    if method == "contact":
        margin_nm = inspect.signature(site_interfaces).parameters["margin_nm"].default
        margin = np.maximum(geometry, voxels(margin_nm))
    else:
        margin = geometry + voxels(float(value["radius_nm"]))
        if method == "diffusion":
            reach = walk_reach(int(value["n_steps"]), voxel_size=vs)
            margin = np.maximum(margin, np.asarray(reach, dtype=np.int64) + 1)
    return tuple(int(m) for m in margin)


def block_crop(boxes, margin, shape) -> Box:
    """The union of `boxes` grown by `margin` voxels (z, y, x), clipped to `shape`."""
    lo = np.min([[s.start for s in box] for box in boxes], axis=0) - np.asarray(margin)
    hi = np.max([[s.stop for s in box] for box in boxes], axis=0) + np.asarray(margin)
    return tuple(slice(max(0, int(a)), min(int(n), int(b))) for a, b, n in zip(lo, hi, shape))


def keep_sites(labels: np.ndarray, sites) -> np.ndarray:
    """`labels` with every label not in `sites` set to 0 (a copy)."""
    keep = np.isin(labels, np.asarray(list(sites), dtype=labels.dtype))
    return np.where(keep, labels, 0).astype(labels.dtype, copy=False)


def assign_blockwise(method: str, sites, segmentation, *, voxel_size, block_shape,
                     presynaptic=None, free=None, **options):
    """Assign partners block by block in this process: the rows of the whole-volume call.

    The arrays may be anything sliceable (numpy, zarr, h5py); only a block of the site labels
    and one block's crop of every array are in memory at a time, besides the choices.  For the
    ``vesicle`` and ``diffusion`` methods; ``contact`` needs its site scores per crop, which
    the caller computes (see ``connectome.synapses.assignment``).
    """
    from detection.partners import partner_choices, partner_rows
    from detection.partners.rows import choice_from_record, choice_record

    if method == "contact":
        raise InputError("block-wise contact assignment needs site scores per crop")
    shape = tuple(int(n) for n in np.shape(segmentation))
    group = options.pop("group_distance_nm", 300.0)
    boxes = blockwise_site_boxes(lambda box: np.asarray(sites[box]), shape, block_shape)
    margin = assignment_margin(method, voxel_size=voxel_size, **options)
    records = []
    for mine in sites_by_block(boxes, block_shape).values():
        crop = block_crop([box for _, box in mine], margin, shape)
        choices = partner_choices(
            method, keep_sites(np.asarray(sites[crop]), [site for site, _ in mine]),
            np.asarray(segmentation[crop]), voxel_size=voxel_size,
            presynaptic=None if presynaptic is None else np.asarray(presynaptic[crop]),
            offset=[s.start for s in crop],
            **({} if free is None else {"free": np.asarray(free[crop])}), **options)
        # Through the records the block-wise job writes, so a test of this covers them too.
        records.extend(choice_record(c) for c in choices)
    records.sort(key=lambda r: r["site"])
    return partner_rows(method, [choice_from_record(r) for r in records],
                        voxel_size=voxel_size, group_distance_nm=group)


__all__ = ["assign_blockwise", "assignment_margin", "block_box", "block_crop", "block_of", "blockwise_site_boxes",
           "grid_boxes", "keep_sites", "sites_by_block"]
