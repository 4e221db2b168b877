"""Per-section profiles linked into 3D cells, slab by slab on any number of workers (the
``link_sections`` job; the linking is :mod:`detection.cells.section_linking`, the slabs
:mod:`detection.cells.slab_linking`).

plan (one task): check the profiles layer (a segmentation whose ids mean something only within
a section) and the optional membrane layer, make the job's folder
``datasets/<dataset>/jobs/<job>/slabs/`` and cut the stack into slabs of ``slab_sections``
sections (one block each).

block (one task per slab, any worker): read the slab's sections and the one before it, link
them, and write which cell of the slab each profile fell in to ``slabs/<first section>.npz``
(written whole, then renamed: a slab run again writes the same file). Its summary is the
slab's link report.

finish (one task): join the slabs' cells over the profiles they share (a union-find), number
the cells as linking the whole stack would, plus an offset: cell ``k`` gets segment id
``first_id + k - 1`` (``first_id`` defaults to one above the dataset's largest segment id, so
the new cells never collide with cells the dataset has, those of the profiles layer
included). Then write the 3D labels slab by slab into a group of this attempt's own, build the
pyramid, and in the transaction that marks the job done create the segmentation layer and one
cell per linked cell, with its size, bounding box and centroid. The job's result holds the
link report. A failed or cancelled job leaves no layer and no cell.
"""

from __future__ import annotations

import logging
import shutil
import uuid

from django.db import transaction
from django.db.models import Max

from connectome.cells import segmentations as seg
from connectome.cells.models import Cell
from connectome.datasets.models import Dataset, Layer
from connectome.jobs.blocks import BlockPlan, Finish
from connectome.jobs.models import Job
from connectome.jobs.services import JobParameterError, job_hold
from detection.cells.segment_stats import SegmentStatistics
from detection.cells.slab_linking import (
    SlabProfiles,
    join_slabs,
    link_slab,
    read_start,
    slab_ranges,
)
from detection.errors import InputError
from detection.io.zarr_store import (
    build_pyramid,
    create_multiscale,
    open_multiscale,
    write_block,
)

logger = logging.getLogger(__name__)

KIND = "link_sections"
METHOD = "link_sections"
LINK_OPTIONS = ("min_overlap", "margin_nm", "allow_branches", "min_branch_overlap")
MEMBRANE_KINDS = (Layer.Kind.MASK, Layer.Kind.PREDICTION)
BATCH = 5000


def profiles_layer(dataset: Dataset, parameters: dict) -> Layer:
    return seg.dataset_layer(dataset, parameters["profiles_layer"],
                             kinds=(Layer.Kind.SEGMENTATION,), what="profiles")


def membrane_layer(dataset: Dataset, parameters: dict) -> Layer | None:
    if parameters.get("membrane_layer") is None:
        return None
    return seg.dataset_layer(dataset, parameters["membrane_layer"], kinds=MEMBRANE_KINDS,
                             what="membrane")


def largest_segment_id(dataset: Dataset) -> int:
    return int(Cell.objects.filter(dataset=dataset).aggregate(m=Max("segment_id"))["m"] or 0)


def first_id(dataset: Dataset, parameters: dict) -> int:
    """The segment id of the first linked cell."""
    given = parameters.get("first_id")
    return int(given) if given is not None else largest_segment_id(dataset) + 1


def linking_writes(dataset: Dataset, parameters: dict) -> list[str]:
    """The resources a linking job locks (its layer, the cell list); refuses bad layers."""
    from connectome.imports.jobs import CELLS

    seg.refuse_existing_layer(KIND, dataset, parameters["name"])
    for field, read in (("profiles_layer", profiles_layer), ("membrane_layer", membrane_layer)):
        try:
            read(dataset, parameters)
        except InputError as exc:
            raise JobParameterError(KIND, {field: [str(exc)]}) from None
    given = parameters.get("first_id")
    if given is not None and Cell.objects.filter(dataset=dataset, segment_id__gte=given).exists():
        message = (f"dataset '{dataset.name}' has cells with segment ids from {given} up (the "
                   f"largest is {largest_segment_id(dataset)}); leave first_id out to start "
                   "above them")
        raise JobParameterError(KIND, {"first_id": [message]})
    return [f"layer '{parameters['name']}'", CELLS]


def slabs_folder(job: Job):
    return seg.data_path(seg.job_folder(job)) / "slabs"


def linking_plan(job: Job, parameters: dict) -> BlockPlan:
    dataset = job.dataset
    layer = profiles_layer(dataset, parameters)
    membrane_layer(dataset, parameters)
    n_z, n_y, n_x = layer.shape
    slabs = slab_ranges(n_z, parameters["slab_sections"])
    with transaction.atomic():
        job_hold(job)
        slabs_folder(job).mkdir(parents=True, exist_ok=True)
    boxes = [((start, 0, 0), (stop, n_y, n_x)) for start, stop in slabs]
    logger.info("job %s: linking %d sections of layer %s in %d slabs", job.pk, n_z, layer.pk,
                len(boxes))
    return BlockPlan(boxes=boxes, queue=parameters["queue"],
                     max_attempts=parameters["max_attempts"],
                     message=f"0 / {len(boxes)} slabs of {parameters['slab_sections']} sections")


def _read(layer: Layer, sections: slice, parameters: dict):
    group = open_multiscale(layer.path)[0]
    array = group["0"]
    box = (sections, slice(0, array.shape[1]), slice(0, array.shape[2]))
    if layer.kind == Layer.Kind.SEGMENTATION:
        return array[box]
    return seg.read_boundary(layer, array, box) >= parameters["membrane_threshold"]


def linking_block(job: Job, box, parameters: dict) -> dict:
    """Link one slab (and the section before it) and write its profiles' cells."""
    dataset = job.dataset
    start = read_start(box[0].start)
    sections = slice(start, box[0].stop)
    profiles = _read(profiles_layer(dataset, parameters), sections, parameters)
    membrane_source = membrane_layer(dataset, parameters)
    membrane = None if membrane_source is None else _read(membrane_source, sections, parameters)
    slab = link_slab(profiles, start=start, membrane=membrane, voxel_size=dataset.voxel_size,
                     **{k: parameters[k] for k in LINK_OPTIONS})
    seg.write_whole(slabs_folder(job) / f"{start}.npz", slab.save)
    return {"sections": [start, box[0].stop], "profiles": slab.report.n_profiles,
            "links": slab.report.n_links}


def linking_finish(job: Job, parameters: dict, say) -> Finish:
    dataset = job.dataset
    layer = profiles_layer(dataset, parameters)
    boxes = list(job.blocks.order_by("index").values_list("box", flat=True))
    slabs = [SlabProfiles.load(slabs_folder(job) / f"{read_start(box[0])}.npz")
             for box in boxes]
    say(f"joining {len(slabs)} slabs")
    cells, report = join_slabs(slabs, n_sections=layer.shape[0])
    offset = first_id(dataset, parameters) - 1
    largest = offset + report.n_cells
    if largest >= 2**64:
        raise InputError(f"first_id {offset + 1} leaves no room for {report.n_cells} cells "
                         "below 2**64")
    folder = seg.data_path(seg.job_folder(job))
    # A group of this attempt's own: a second final step running at the same time never
    # removes the labels the first is about to store; strays of lost attempts go while this
    # attempt holds the job.
    with transaction.atomic():
        job_hold(job)
        for stray in folder.glob("linked-*.zarr"):
            shutil.rmtree(stray, ignore_errors=True)
    name = f"linked-{uuid.uuid4().hex[:8]}.zarr"
    profiles = open_multiscale(layer.path)[0]["0"]
    # Written by this step alone, slab after slab: any chunks will do.
    group = create_multiscale(folder / name, shape=layer.shape,
                              dtype=seg.label_dtype(largest), voxel_size=dataset.voxel_size,
                              kind="segmentation", overwrite=True)
    stats = SegmentStatistics(background=0)
    say(f"writing the labels of {report.n_cells} cells")
    for box in boxes:
        sections = slice(box[0], box[3])
        labels = cells.relabel(profiles[sections], z=box[0], offset=offset)
        write_block(group, (sections, slice(0, box[4]), slice(0, box[5])), labels)
        stats.add(labels, offset=(box[0], 0, 0))
    say("building the pyramid")
    build_pyramid(group)
    table = stats.result()
    meta = open_multiscale(folder / name)[1]
    relative = seg.job_folder(job) / name
    membrane_source = membrane_layer(dataset, parameters)

    def store() -> dict:
        if Cell.objects.filter(dataset=dataset, segment_id__gt=offset,
                               segment_id__lte=largest).exists():
            raise InputError(f"cells with segment ids from {offset + 1} to {largest} appeared "
                             f"in dataset '{dataset.name}' meanwhile; resume the job to "
                             "number the linked cells above them")
        recorded = {k: v for k, v in parameters.items() if not k.startswith("_")}
        recorded.update(first_id=offset + 1, profiles_layer_name=layer.name,
                        membrane_layer_name=membrane_source.name if membrane_source else None)
        new = seg.layer_row(dataset=dataset, name=parameters["name"], meta=meta, path=relative,
                            job=job, method=METHOD, parameters=recorded,
                            source_path=str(layer.storage_path))
        rows = [seg.measure(Cell(dataset=dataset, segment_id=int(segment)), layer=new,
                            table=table, row=i) for i, segment in enumerate(table.ids)]
        Cell.objects.bulk_create(rows, batch_size=BATCH)
        return {"layer_id": new.pk, "layer": new.name, "cells": len(rows),
                "first_id": offset + 1}

    return Finish(result={"report": report.to_dict()}, store=store,
                  discard=lambda: shutil.rmtree(folder / name, ignore_errors=True))
