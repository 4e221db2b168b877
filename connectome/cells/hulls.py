"""Cell hulls from a dataset's skeletons and a boundary layer, block by block on any number of
workers (the ``skeleton_hulls`` job; the ray casting is :mod:`detection.cells.hulls`).

plan (one task): check the boundary layer and the ray parameters, load the chosen skeletons
(every Skeleton row of the dataset by default), turn them into the points rays are cast from
(nodes outside the volume are refused, naming the skeleton and the node), and, while this run
holds the job, write the points to ``points.npz`` and create the label group ``hulls.zarr``
(chunks that tile the blocks) in the job's folder ``datasets/<dataset>/jobs/<job>/``; cut the
volume into blocks.

block (one task per block, any worker): read the boundary over the block grown by the rays'
halo (twice the maximum radius in the axes rays run along), paint the block's core from the
points that can reach it (:func:`detection.cells.hulls.hull_block`) and write it whole (a
block run again writes the same labels).

finish (one task): build the pyramid and measure every hull (size, bounding box, centroid),
then, in the transaction that marks the job done, create the segmentation layer and link
every hull to its skeleton's cell (segment id = the cell's segment id): cells not measured in
any layer yet, or measured in an earlier hull layer, get the new layer and the hull's
measures; a cell measured in another segmentation keeps it (counted in the result). A failed
or cancelled job leaves no layer (its folder stays for a resume).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
from django.db import transaction

from connectome.cells import segmentations as seg
from connectome.cells.models import Cell, Skeleton
from connectome.datasets.models import Dataset
from connectome.jobs.blocks import BlockPlan, Finish
from connectome.jobs.models import Job
from connectome.jobs.services import JobParameterError, job_hold
from detection.blockwise import with_halo
from detection.cells.hulls import (
    CellSkeleton,
    HullPoints,
    RayParameters,
    hull_block,
    hull_points,
)
from detection.errors import InputError
from detection.io.sources import iter_blocks
from detection.io.swc import SkeletonNodes
from detection.io.zarr_store import (
    build_pyramid,
    create_multiscale,
    open_multiscale,
    write_block,
)

logger = logging.getLogger(__name__)

KIND = "skeleton_hulls"
METHOD = "skeleton_hulls"
RAY_FIELDS = ("n_rays", "threshold", "max_radius_nm", "step_nm", "node_spacing_nm", "mode")
BATCH = 5000


def ray_parameters(parameters: dict) -> RayParameters:
    return RayParameters(**{k: parameters[k] for k in RAY_FIELDS if k in parameters})


def boundary_layer(dataset: Dataset, parameters: dict):
    return seg.dataset_layer(dataset, parameters["boundary_layer"], kinds=seg.BOUNDARY_KINDS,
                             what="boundary")


def selected_skeletons(dataset: Dataset, parameters: dict):
    """The Skeleton rows the job paints: the dataset's, of one source and some cells if given."""
    rows = Skeleton.objects.filter(cell__dataset=dataset)
    if parameters.get("skeleton_source"):
        rows = rows.filter(source=parameters["skeleton_source"])
    if parameters.get("segment_ids"):
        rows = rows.filter(cell__segment_id__in=parameters["segment_ids"])
    return rows.order_by("id")


def hulls_writes(dataset: Dataset, parameters: dict) -> list[str]:
    """The resources a hull job locks (its layer, the cell list); refuses bad parameters."""
    from connectome.imports.jobs import CELLS

    seg.refuse_existing_layer(KIND, dataset, parameters["name"])
    try:
        layer = boundary_layer(dataset, parameters)
    except InputError as exc:
        raise JobParameterError(KIND, {"boundary_layer": [str(exc)]}) from None
    try:
        ray_parameters(parameters).check_tables(dataset.voxel_size)
    except InputError as exc:
        raise JobParameterError(KIND, {"max_radius_nm": [str(exc)]}) from None
    rows = selected_skeletons(dataset, parameters)
    if not rows.exists():
        which = (f" of source '{parameters['skeleton_source']}'"
                 if parameters.get("skeleton_source") else "")
        raise JobParameterError(KIND, {"skeleton_source": [
            f"dataset '{dataset.name}' has no skeletons{which}"]})
    if parameters.get("segment_ids"):
        found = set(rows.values_list("cell__segment_id", flat=True))
        missing = sorted(set(parameters["segment_ids"]) - found)
        if missing:
            raise JobParameterError(KIND, {"segment_ids": [
                f"no skeleton for segment ids {missing[:10]}"
                + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else "")]})
    logger.debug("hull job on %s reads layer %s", dataset, layer.pk)
    return [f"layer '{parameters['name']}'", CELLS]


def _cell_skeletons(dataset: Dataset, parameters: dict) -> list[CellSkeleton]:
    rows = selected_skeletons(dataset, parameters).select_related("cell")
    return [CellSkeleton.from_nodes(row.cell.segment_id, SkeletonNodes(**row.unpack()),
                                    voxel_size=dataset.voxel_size, skeleton_id=row.pk)
            for row in rows.iterator(chunk_size=100)]


def hulls_plan(job: Job, parameters: dict) -> BlockPlan:
    dataset = job.dataset
    layer = boundary_layer(dataset, parameters)
    rays = ray_parameters(parameters)
    skeletons = _cell_skeletons(dataset, parameters)
    if not skeletons:
        raise InputError(f"dataset '{dataset.name}' has no skeletons to paint (any more)")
    points = hull_points(skeletons, shape=layer.shape, voxel_size=dataset.voxel_size,
                         parameters=rays)
    largest = max(s.cell_id for s in skeletons)
    block_shape = tuple(parameters["block_shape"])
    folder = seg.data_path(seg.job_folder(job))
    folder.mkdir(parents=True, exist_ok=True)
    with transaction.atomic():
        # Only while this run holds the job: a stalled earlier run must not replace what the
        # current run's blocks read and write.
        job_hold(job)
        seg.write_whole(folder / "points.npz", points.save)
        create_multiscale(folder / "hulls.zarr", shape=layer.shape,
                          dtype=seg.label_dtype(largest), voxel_size=dataset.voxel_size,
                          chunks=seg.block_chunks(block_shape), kind="segmentation",
                          overwrite=True)
    boxes = [((z.start, y.start, x.start), (z.stop, y.stop, x.stop))
             for z, y, x in iter_blocks(layer.shape, block_shape)]
    logger.info("job %s: hulls of %d skeletons (%d points) in %d blocks, halo %s", job.pk,
                len(skeletons), len(points), len(boxes), rays.halo(dataset.voxel_size))
    return BlockPlan(boxes=boxes, queue=parameters["queue"],
                     max_attempts=parameters["max_attempts"],
                     message=f"0 / {len(boxes)} blocks of {' x '.join(map(str, block_shape))}, "
                             f"{len(skeletons)} skeletons")


@lru_cache(maxsize=4)
def _points(path: str, mtime: float) -> HullPoints:
    return HullPoints.load(path)


def points_path(job: Job) -> Path:
    return seg.data_path(seg.job_folder(job)) / "points.npz"


def load_points(job: Job) -> HullPoints:
    # Read once per worker process and plan (keyed by mtime: a new plan writes a new file).
    path = points_path(job)
    return _points(str(path), path.stat().st_mtime)


def hulls_block(job: Job, box, parameters: dict) -> dict:
    """Paint one block's core and write it; what it painted, for the job's record."""
    dataset = job.dataset
    layer = boundary_layer(dataset, parameters)
    rays = ray_parameters(parameters)
    source = open_multiscale(layer.path)[0]["0"]
    shape = tuple(source.shape)
    halo = rays.halo(dataset.voxel_size)
    outer, _ = with_halo(box, halo, shape)
    boundary = seg.read_boundary(layer, source, outer)
    labels = hull_block(boundary, load_points(job), box=box, halo=halo, shape=shape,
                        voxel_size=dataset.voxel_size, parameters=rays)
    group = open_multiscale(seg.data_path(seg.job_folder(job)) / "hulls.zarr", mode="r+")[0]
    write_block(group, box, labels)
    painted = labels[labels > 0]
    return {"voxels": int(painted.size), "cells": int(np.unique(painted).size)}


def hulls_finish(job: Job, parameters: dict, say) -> Finish:
    dataset = job.dataset
    relative = seg.job_folder(job) / "hulls.zarr"
    group, meta = open_multiscale(seg.data_path(relative), mode="r+")
    boxes = [tuple(slice(a, b) for a, b in zip(box[:3], box[3:]))
             for box in job.blocks.order_by("index").values_list("box", flat=True)]
    say(f"measuring the hulls of {len(boxes)} blocks")
    table = seg.segment_table(group["0"], boxes)
    say("building the pyramid")
    build_pyramid(group)
    meta = open_multiscale(seg.data_path(relative))[1]
    wanted = np.unique(load_points(job).cell)
    source = boundary_layer(dataset, parameters)

    def store() -> dict:
        recorded = {k: v for k, v in parameters.items() if not k.startswith("_")}
        recorded["boundary_layer_name"] = source.name
        layer = seg.layer_row(dataset=dataset, name=parameters["name"], meta=meta,
                              path=relative, job=job, method=METHOD, parameters=recorded,
                              source_path=str(source.storage_path))
        linked, elsewhere = _link_cells(dataset, layer, table)
        return {"layer_id": layer.pk, "layer": layer.name, "hulls": len(table),
                "cells_linked": linked, "cells_measured_elsewhere": elsewhere,
                "empty_hulls": len(wanted) - len(table),
                "voxels": int(table.sizes.sum())}

    return Finish(result={"skeleton_cells": len(wanted)}, store=store)


def _link_cells(dataset: Dataset, layer, table) -> tuple[int, int]:
    """Give each hull's cell the new layer and the hull's measures, unless another
    segmentation (not a hull layer) measured it; (cells linked, cells kept elsewhere)."""
    row_of = {int(s): i for i, s in enumerate(table.ids)}
    ids = sorted(row_of)
    linked, elsewhere = [], 0
    for start in range(0, len(ids), BATCH):
        cells = (Cell.objects.select_for_update(of=("self",)).select_related("layer")
                 .filter(dataset=dataset, segment_id__in=ids[start:start + BATCH]))
        for cell in cells:
            if cell.layer is not None and cell.layer.method != METHOD:
                elsewhere += 1
                continue
            linked.append(seg.measure(cell, layer=layer, table=table,
                                      row=row_of[int(cell.segment_id)]))
    Cell.objects.bulk_update(linked, seg.MEASURED_FIELDS, batch_size=BATCH)
    return len(linked), elsewhere
