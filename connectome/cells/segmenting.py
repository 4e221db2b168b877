"""Cells from a dataset's EM, block by block on any number of workers: four chained jobs.

The block framework runs one block phase per job, and each step of
:mod:`detection.cells.segmentation` needs its neighbours' output of the step before (a block's
fragments see a margin of its neighbours' affinities, its merges their fragments), so the
segmentation is four jobs, each made by the final step of the one before (as
``detect_and_assign`` makes its assignment job), which hands it the locks on what the chain
writes: the three affinity layers, the segmentation layer and the dataset's cell list.

1. ``segment_cells``: plan the blocks on the global grid of the block shape (blocks start on
   the network's grid in-plane; one zarr chunk per block, so no two blocks share one). Each
   block reads its box grown by the network's halo from the EM layer, predicts the three
   nearest-neighbour affinities of its core (:meth:`AffinityNet.predict_region`, on CUDA when
   the worker has it) and writes them as ``round(255 a)`` into three uint8 groups
   (``affinities-z``, ``-y``, ``-x``: one layer per channel, so each is an ordinary prediction
   layer the viewer shows). The final step builds their pyramids and makes:
2. ``fragment_cells``: the same blocks; each cuts its fragments from the stored affinities of
   its box grown by the context margin, keeping its own voxels
   (:func:`~detection.cells.segmentation.block_fragments`, ids offset by the block's index),
   into ``fragments.zarr``, and lists its fragment ids in ``fragment-ids/<index>.npy``. The
   final step makes:
3. ``agglomerate_cells``: the same blocks; each reads its box grown by the context margin
   (its neighbours' fragments and affinities included) and keeps the merges waterz makes there
   that involve its own fragments (:func:`~detection.cells.segmentation.block_merges`), written
   as its result file ``merges/<index>.npy``. The final step joins every block's merges by
   union-find (:func:`~detection.cells.segmentation.stitch`) into ``stitched.npz`` (fragment
   ids and their cells, numbered 1..n) and makes:
4. ``relabel_cells``: the same blocks; each writes its fragments' cells into
   ``segmentation.zarr`` (uint64). The final step builds its pyramid, measures every cell
   (size, bounding box, centroid; :class:`~detection.cells.segment_stats.SegmentStatistics`),
   lists the likely errors of the agglomeration (cells merged, and pairs kept apart, by a
   small margin: :func:`~detection.cells.evaluation.likely_errors` on
   :func:`~detection.cells.segmentation.agglomeration_record`; volumes up to
   :data:`REPORT_MAX_VOXELS`) and stores the four layers, one Cell per cell (``segment_id`` =
   cell id) and the layer's error report in the transaction that marks it done, then removes
   the fragments and merges, which nothing reads any more.

These are the functions :func:`detection.cells.segmentation.segment_blockwise` calls in
memory, in the same order with the same block numbering, so the stored segmentation equals
``segment_blockwise`` run on the stored affinities (tested).

Faults: a block run again (its worker died, the sweep or a resume sends it again) rewrites its
own chunk and its own files with the same values, files written whole then renamed. Nothing is
a layer or a cell until the last job's final step commits: a failed or cancelled job of the
chain leaves no layer and no Cell rows (its folder stays, for a resume of the job).

Files live under ``DATA_ROOT/datasets/<dataset>/jobs/<job>/``, each job's in its own folder;
the affinity layers are the first job's groups, the segmentation layer the last job's.
"""

from __future__ import annotations

import logging
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction

from connectome.cells import segmentations
from connectome.cells.reports import store_error_report
from connectome.cells.segmentations import job_folder, write_whole
from connectome.datasets.models import Dataset, Layer
from connectome.detectors.models import DetectorModel
from connectome.detectors.selectors import detectors_visible_to
from connectome.imports.jobs import CELLS
from connectome.imports.volumes import create_cells
from connectome.jobs.blocks import BlockPlan, Finish
from connectome.jobs.models import Job, JobBlock
from connectome.jobs.services import JobConflict, JobParameterError, job_create, job_hold
from detection.blockwise import with_halo
from detection.cells import segmentation as seg
from detection.cells.evaluation import likely_errors, locate_errors
from detection.errors import InputError
from detection.io.sources import format_numbers, iter_blocks, read_box
from detection.io.zarr_store import build_pyramid, create_multiscale, open_multiscale, write_block
from detection.synapses.classify import check_voxel_size

logger = logging.getLogger(__name__)

AXES = "zyx"
#: Affinities are stored as ``round(255 a)``.
SCALE = 255
METHOD = "cells from EM"
#: The likely-errors report: decisions within this score of the threshold, between cells that
#: touch over at least this many voxel faces; only for volumes of at most this many voxels.
LIKELY_MARGIN = 0.1
LIKELY_MIN_CONTACT = 20
REPORT_MAX_VOXELS = 2**26


# --- names and records ---------------------------------------------------------------------

def layer_names(parameters: dict) -> dict[str, str]:
    """The layers the chain writes: the segmentation and one affinity layer per axis."""
    name = parameters["name"]
    prefix = parameters.get("affinities_layer") or f"{name} affinities"
    return {"segmentation": name, **{axis: f"{prefix} {axis}" for axis in AXES}}


def chain_writes(kind: str, dataset: Dataset, parameters: dict) -> list[str]:
    """The resources every job of the chain locks (the first takes them, each hands them on);
    refuses names that exist and a dataset that has cells from a segmentation already."""
    for name in layer_names(parameters).values():
        segmentations.refuse_existing_layer(kind, dataset, name)
    if dataset.cells.filter(layer__isnull=False).exists():
        raise JobConflict(kind, f"dataset '{dataset.name}' already has cells from a "
                                "segmentation; delete that segmentation layer first")
    return [f"layer '{name}'" for name in layer_names(parameters).values()] + [CELLS]


def _folder(job: Job) -> Path:
    return settings.DATA_ROOT / job_folder(job)


def em_layer(dataset: Dataset, layer_id: int) -> Layer:
    return segmentations.dataset_layer(dataset, layer_id, kinds=(Layer.Kind.EM,), what="EM")


# --- the cell model ------------------------------------------------------------------------

def cell_model_record(model_id: int, *, user=None) -> DetectorModel:
    """A cell model the user can see, or InputError saying what ``model_id`` is."""
    record = detectors_visible_to(user).filter(pk=model_id).first()
    if record is None:
        raise InputError(f"there is no model {model_id} that you can see")
    if record.kind != DetectorModel.Kind.AFFINITIES:
        raise InputError(f"'{record.name}' version {record.version} (id {record.pk}) is a "
                         f"synapse detector ({record.kind}), not a cell model (affinities)")
    return record


def newest_cell_model(voxel_size, *, user=None) -> DetectorModel:
    """The newest cell model the user can see that was trained at ``voxel_size``."""
    voxel_size = tuple(float(v) for v in voxel_size)
    records = (detectors_visible_to(user).filter(kind=DetectorModel.Kind.AFFINITIES)
               .order_by("-created_at", "-pk"))
    for record in records:
        if np.allclose(record.voxel_size, voxel_size, rtol=1e-3):
            return record
    raise InputError(f"there is no cell model trained at {format_numbers(voxel_size)} nm "
                     "(z, y, x), the dataset's voxel size; train one (a train_cell_model job) "
                     "or give model_id")


def _describe(record: DetectorModel) -> str:
    return f"cell model '{record.name}' version {record.version} (id {record.pk})"


def model_settings(record: DetectorModel, threshold: float | None) -> dict:
    """The agglomeration a segmentation uses: the model's own (its calibration), with
    ``threshold`` given or, when None, the one chosen with the model."""
    settings_ = dict(record.calibration or {})
    if threshold is None:
        if settings_.get("threshold") is None:
            raise InputError(f"{_describe(record)} carries no merge threshold; give threshold")
        threshold = settings_["threshold"]
    return {"threshold": float(threshold), "scoring": settings_.get("scoring", "mean"),
            "fragments": dict(settings_.get("fragments") or {})}


@lru_cache(maxsize=2)
def _load(path: str, mtime: float, voxel_size: tuple[float, float, float]):
    from detection.cells.boundaries import AffinityNet

    return AffinityNet.load(path, voxel_size=voxel_size)


def load_cell_model(record: DetectorModel, voxel_size):
    """The record's network, checked against ``voxel_size``; loaded once per worker process
    and file (keyed by its modification time)."""
    path = record.path
    try:
        mtime = path.stat().st_mtime
    except OSError as exc:
        raise InputError(f"{_describe(record)}: its file {path.name} cannot be read "
                         f"({exc.strerror})") from None
    return _load(str(path), mtime, tuple(float(v) for v in voxel_size))


def chosen_model(dataset: Dataset, parameters: dict, *, user=None) -> DetectorModel:
    """The model a segment_cells job uses: ``model_id``, or the newest at the dataset's voxel
    size; refused when its voxel size is not the dataset's."""
    if parameters.get("model_id") is None:
        return newest_cell_model(dataset.voxel_size, user=user)
    record = cell_model_record(parameters["model_id"], user=user)
    check_voxel_size(record.voxel_size, dataset.voxel_size, source=_describe(record))
    return record


# --- 1. segment_cells: affinities and fragments ----------------------------------------------

def segment_writes(dataset: Dataset, parameters: dict) -> list[str]:
    """Checks of a segment_cells job that need the dataset; the resources it locks."""
    kind = "segment_cells"
    writes = chain_writes(kind, dataset, parameters)
    try:
        em_layer(dataset, parameters["em_layer"])
    except InputError as exc:
        raise JobParameterError(kind, {"em_layer": [str(exc)]}) from None
    try:
        record = chosen_model(dataset, parameters)
        load_cell_model(record, dataset.voxel_size)
    except InputError as exc:
        raise JobParameterError(kind, {"model_id": [str(exc)]}) from None
    try:
        model_settings(record, parameters.get("threshold"))
    except InputError as exc:
        raise JobParameterError(kind, {"threshold": [str(exc)]}) from None
    return writes


def block_shape_for(parameters: dict, model) -> tuple[int, int, int]:
    """The block shape, rounded up to whole network pixels in-plane (blocks start there)."""
    return tuple(-(-int(b) // g) * g for b, g in zip(parameters["block_shape"], model.grid_step))


def block_index(box, shape, block_shape) -> int:
    """The index of a block of the global grid (C order, z slowest), as the plan numbers it
    and :func:`~detection.cells.segmentation.segment_blockwise` does."""
    counts = [-(-int(n) // int(b)) for n, b in zip(shape, block_shape)]
    return int(np.ravel_multi_index([s.start // int(b) for s, b in zip(box, block_shape)],
                                    counts))


def stored(affs: np.ndarray) -> np.ndarray:
    """Affinities as they are stored: ``round(255 a)``, uint8."""
    return np.rint(np.clip(affs, 0.0, 1.0) * SCALE).astype(np.uint8)


def from_stored(values: np.ndarray) -> np.ndarray:
    """Stored affinities back as float32 in 0..1: what fragments and merges are made of."""
    return np.asarray(values, np.float32) / np.float32(SCALE)


def segment_plan(job: Job, parameters: dict) -> BlockPlan:
    """Pin the model and threshold, make the job's groups, cut the volume into blocks."""
    dataset = job.dataset
    em = em_layer(dataset, parameters["em_layer"])
    record = chosen_model(dataset, parameters, user=job.created_by)
    agglomeration = model_settings(record, parameters.get("threshold"))
    model = load_cell_model(record, dataset.voxel_size)
    block_shape = block_shape_for(parameters, model)
    boxes = [((z.start, y.start, x.start), (z.stop, y.stop, x.stop))
             for z, y, x in iter_blocks(em.shape, block_shape)]
    chunks = tuple(min(b, n) for b, n in zip(block_shape, em.shape))
    folder = _folder(job)
    with transaction.atomic():
        # Only while this run holds the job: a run thought lost must not wipe what the blocks
        # of the current run wrote. The model and threshold chosen are kept with the job, so
        # every block (and the jobs after) uses the same ones.
        job_hold(job)
        pinned = {**Job.objects.get(pk=job.pk).parameters, "model_id": record.pk,
                  "threshold": agglomeration["threshold"]}
        Job.objects.filter(pk=job.pk).update(parameters=pinned)
        for axis in AXES:
            create_multiscale(folder / f"affinities-{axis}.zarr", shape=em.shape,
                              dtype=np.uint8, voxel_size=dataset.voxel_size, chunks=chunks,
                              kind="prediction", overwrite=True)
    logger.info("job %s: cells of layer %s with %s, %d blocks of %s, halo %s", job.pk, em.pk,
                _describe(record), len(boxes), block_shape, model.halo_voxels())
    return BlockPlan(boxes=boxes, queue=parameters["queue"],
                     max_attempts=parameters["max_attempts"],
                     message=f"0 / {len(boxes)} blocks of {' x '.join(map(str, block_shape))}")


def _save_whole(path: Path, array: np.ndarray) -> None:
    """An array file written whole, then renamed into place (a reader never sees half)."""
    write_whole(path, lambda stream: np.save(stream, array))


def segment_block(job: Job, box, parameters: dict) -> dict:
    """The affinities of one block."""
    dataset = job.dataset
    em = em_layer(dataset, parameters["em_layer"])
    model = load_cell_model(cell_model_record(parameters["model_id"]), dataset.voxel_size)
    folder = _folder(job)
    source = open_multiscale(em.path)[0]["0"]
    outer, core = with_halo(box, model.halo_voxels(), tuple(source.shape))
    affs = stored(model.predict_region(read_box(source, outer), core=core,
                                       offset=tuple(s.start for s in outer),
                                       whole_shape=tuple(source.shape)))
    for channel, axis in enumerate(AXES):
        write_block(open_multiscale(folder / f"affinities-{axis}.zarr", mode="r+")[0], box,
                    affs[channel])
    return {"device": model.device.type}


def _follow_up(job: Job, kind: str, parameters: dict, **given) -> dict:
    """In the final step's store: the next job of the chain, handed this one's locks."""
    follow = job_create(
        kind=kind, dataset=job.dataset, user=job.created_by, enqueue=False, parent=job,
        parameters={"name": parameters["name"],
                    "affinities_layer": parameters.get("affinities_layer") or "",
                    "max_attempts": parameters["max_attempts"], **given})
    return {"then_job": follow.pk}


def segment_finish(job: Job, parameters: dict, say) -> Finish:
    """Build the affinities' pyramids; store nothing but the next job of the chain."""
    folder = _folder(job)
    for axis in AXES:
        say(f"building the pyramid of the {axis} affinities")
        build_pyramid(open_multiscale(folder / f"affinities-{axis}.zarr", mode="r+")[0])
    return Finish(
        result={"model_id": parameters["model_id"], "threshold": parameters["threshold"]},
        store=lambda: _follow_up(job, "fragment_cells", parameters, segment_job=job.pk,
                                 threshold=parameters["threshold"],
                                 context=parameters["context"]))


# --- 2. fragment_cells: fragments per block, seeing a margin ----------------------------------

def _read_affinities(folder: Path, box) -> np.ndarray:
    return from_stored(np.stack([
        open_multiscale(folder / f"affinities-{axis}.zarr")[0]["0"][box] for axis in AXES]))


def _boxes_of(job: Job) -> list[tuple[tuple, tuple]]:
    return [(tuple(box[:3]), tuple(box[3:]))
            for box in job.blocks.order_by("index").values_list("box", flat=True)]


def fragment_plan(job: Job, parameters: dict) -> BlockPlan:
    segmented = earlier_job(job.dataset, parameters["segment_job"], "segment_cells")
    affinities = open_multiscale(_folder(segmented) / "affinities-z.zarr")[0]["0"]
    boxes = _boxes_of(segmented)
    folder = _folder(job)
    with transaction.atomic():
        job_hold(job)
        create_multiscale(folder / "fragments.zarr", shape=affinities.shape, dtype=np.uint64,
                          voxel_size=job.dataset.voxel_size, chunks=affinities.chunks,
                          kind="segmentation", levels=1, overwrite=True)
        (folder / "fragment-ids").mkdir(exist_ok=True)
    return BlockPlan(boxes=boxes, queue=parameters["queue"],
                     max_attempts=parameters["max_attempts"],
                     message=f"0 / {len(boxes)} blocks, context "
                             f"{' x '.join(map(str, parameters['context']))}")


def fragment_block(job: Job, box, parameters: dict) -> dict:
    """The fragments of one block, its watershed seeing the context margin of its neighbours'
    affinities; its fragment ids listed for the stitching."""
    segmented = Job.objects.get(pk=parameters["segment_job"])
    record = cell_model_record(segmented.parameters["model_id"])
    chosen = model_settings(record, parameters["threshold"])
    folder = _folder(job)
    group = open_multiscale(folder / "fragments.zarr", mode="r+")[0]
    shape = tuple(group["0"].shape)
    index = block_index(box, shape, group["0"].chunks)
    region, core = with_halo(box, parameters["context"], shape)
    fragments = seg.block_fragments(_read_affinities(_folder(segmented), region),
                                    block_index=index, voxel_size=job.dataset.voxel_size,
                                    core=core,
                                    parameters=seg.FragmentParameters(**chosen["fragments"]))
    write_block(group, box, fragments)
    ids = np.unique(fragments)
    ids = ids[ids > 0]
    _save_whole(folder / "fragment-ids" / f"{index}.npy", ids)
    return {"fragments": len(ids)}


def fragment_finish(job: Job, parameters: dict, say) -> Finish:
    fragments = sum(int(r.get("fragments", 0)) for r in job.blocks.values_list("result",
                                                                               flat=True))
    return Finish(result={"fragments": fragments},
                  store=lambda: _follow_up(job, "agglomerate_cells", parameters,
                                           fragment_job=job.pk,
                                           threshold=parameters["threshold"],
                                           context=parameters["context"]))


# --- the jobs after the first ----------------------------------------------------------------

#: What each job of the chain leaves for the next, in its folder.
LEFT_FOR_NEXT = {"segment_cells": "affinities-z.zarr", "fragment_cells": "fragments.zarr",
                 "agglomerate_cells": "stitched.npz"}


def earlier_job(dataset: Dataset, job_id: int, kind: str) -> Job:
    """The job of the chain before this one: of ``kind``, on the dataset, with every block
    done (its final step may still be running: it is what makes the next job) and what it
    leaves for the next still there."""
    earlier = Job.objects.filter(pk=job_id, dataset=dataset).first()
    if earlier is None:
        raise InputError(f"dataset '{dataset.name}' has no job {job_id}")
    if earlier.kind != kind:
        raise InputError(f"job {job_id} is a {earlier.kind} job, not {kind}")
    if earlier.state not in (Job.State.RUNNING, Job.State.DONE) or not earlier.blocks.exists() \
            or earlier.blocks.exclude(state=JobBlock.State.DONE).exists():
        raise InputError(f"{kind} job {job_id} has not done its blocks ({earlier.state})")
    if not (_folder(earlier) / LEFT_FOR_NEXT[kind]).exists():
        raise InputError(f"{kind} job {job_id} has no {LEFT_FOR_NEXT[kind]} any more (the "
                         "segmentation it was part of was stored); start with segment_cells")
    return earlier


def _chain_writes(kind: str, field: str, earlier_kind: str):
    def writes(dataset: Dataset, parameters: dict) -> list[str]:
        try:
            earlier_job(dataset, parameters[field], earlier_kind)
        except InputError as exc:
            raise JobParameterError(kind, {field: [str(exc)]}) from None
        return chain_writes(kind, dataset, parameters)

    return writes


fragment_writes = _chain_writes("fragment_cells", "segment_job", "segment_cells")
agglomerate_writes = _chain_writes("agglomerate_cells", "fragment_job", "fragment_cells")
relabel_writes = _chain_writes("relabel_cells", "agglomerate_job", "agglomerate_cells")


def _chain(job: Job) -> list[Job]:
    """The jobs of the chain up to ``job``, first to last (each names the one before)."""
    chain = [job]
    for field in ("agglomerate_job", "fragment_job", "segment_job"):
        if field in chain[0].parameters:
            chain.insert(0, Job.objects.get(pk=chain[0].parameters[field]))
    return chain


# --- 3. agglomerate_cells: merges per block, stitched ----------------------------------------

def agglomerate_plan(job: Job, parameters: dict) -> BlockPlan:
    fragmented = earlier_job(job.dataset, parameters["fragment_job"], "fragment_cells")
    boxes = _boxes_of(fragmented)
    with transaction.atomic():
        job_hold(job)
        (_folder(job) / "merges").mkdir(parents=True, exist_ok=True)
    return BlockPlan(boxes=boxes, queue=parameters["queue"],
                     max_attempts=parameters["max_attempts"],
                     message=f"0 / {len(boxes)} blocks, context "
                             f"{' x '.join(map(str, parameters['context']))}")


def agglomerate_block(job: Job, box, parameters: dict) -> dict:
    """The merges one block makes with its context; written as the block's result file."""
    segmented, fragmented, _ = _chain(job)
    record = cell_model_record(segmented.parameters["model_id"])
    scoring = model_settings(record, parameters["threshold"])["scoring"]
    fragments = open_multiscale(_folder(fragmented) / "fragments.zarr")[0]["0"]
    shape = tuple(fragments.shape)
    region, core = with_halo(box, parameters["context"], shape)
    merges = seg.block_merges(_read_affinities(_folder(segmented), region), fragments[region],
                              core, threshold=parameters["threshold"], scoring=scoring)
    index = block_index(box, shape, fragments.chunks)
    _save_whole(_folder(job) / "merges" / f"{index}.npy", merges)
    return {"merges": len(merges)}


def agglomerate_finish(job: Job, parameters: dict, say) -> Finish:
    """Stitch every block's merges into cells; store the next job of the chain."""
    fragmented = Job.objects.get(pk=parameters["fragment_job"])
    indices = list(job.blocks.order_by("index").values_list("index", flat=True))
    say(f"stitching the merges of {len(indices)} blocks")
    ids = [np.load(_folder(fragmented) / "fragment-ids" / f"{i}.npy") for i in indices]
    merges = [np.load(_folder(job) / "merges" / f"{i}.npy") for i in indices]
    fragment_ids, cell_ids = seg.stitch(
        np.concatenate(ids) if ids else np.zeros(0, np.uint64),
        np.concatenate(merges) if merges else np.zeros((0, 2), np.uint64))
    write_whole(_folder(job) / "stitched.npz", lambda stream: np.savez(
        stream, fragment_ids=fragment_ids, cell_ids=cell_ids))
    cells = int(cell_ids.max()) if len(cell_ids) else 0
    return Finish(result={"fragments": len(fragment_ids), "cells": cells,
                          "merges": int(sum(len(m) for m in merges))},
                  store=lambda: _follow_up(job, "relabel_cells", parameters,
                                           agglomerate_job=job.pk))


# --- 4. relabel_cells: the segmentation layer and its cells ----------------------------------

def relabel_plan(job: Job, parameters: dict) -> BlockPlan:
    agglomerated = earlier_job(job.dataset, parameters["agglomerate_job"], "agglomerate_cells")
    fragmented = Job.objects.get(pk=agglomerated.parameters["fragment_job"])
    fragments = open_multiscale(_folder(fragmented) / "fragments.zarr")[0]["0"]
    boxes = _boxes_of(fragmented)
    with transaction.atomic():
        job_hold(job)
        create_multiscale(_folder(job) / "segmentation.zarr", shape=fragments.shape,
                          dtype=np.uint64, voxel_size=job.dataset.voxel_size,
                          chunks=fragments.chunks, kind="segmentation", overwrite=True)
    return BlockPlan(boxes=boxes, queue=parameters["queue"],
                     max_attempts=parameters["max_attempts"],
                     message=f"0 / {len(boxes)} blocks")


@lru_cache(maxsize=2)
def _stitched(path: str, mtime: float) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as table:
        return table["fragment_ids"], table["cell_ids"]


def stitched_table(agglomerated: Job) -> tuple[np.ndarray, np.ndarray]:
    """(fragment ids, cell ids) of an agglomerate_cells job; read once per worker process."""
    path = _folder(agglomerated) / "stitched.npz"
    return _stitched(str(path), path.stat().st_mtime)


def relabel_block(job: Job, box, parameters: dict) -> dict:
    """Write one block's cells."""
    _, fragmented, agglomerated, _ = _chain(job)
    fragments = open_multiscale(_folder(fragmented) / "fragments.zarr")[0]["0"][box]
    cells = seg.relabel(fragments, *stitched_table(agglomerated))
    write_block(open_multiscale(_folder(job) / "segmentation.zarr", mode="r+")[0], box, cells)
    return {"cells": len(np.unique(cells[cells > 0]))}


def relabel_finish(job: Job, parameters: dict, say) -> Finish:
    """Build the pyramid, measure the cells; store the four layers and the cells at once."""
    dataset = job.dataset
    segmented, fragmented, agglomerated, _ = _chain(job)
    group, _ = open_multiscale(_folder(job) / "segmentation.zarr", mode="r+")
    say("building the segmentation's pyramid")
    build_pyramid(group)
    say("measuring the cells")
    level0 = group["0"]
    table = segmentations.segment_table(level0, iter_blocks(level0.shape, level0.chunks))
    names = layer_names(parameters)
    record = cell_model_record(segmented.parameters["model_id"])
    threshold = agglomerated.parameters["threshold"]
    say("listing the likely errors")
    likely = likely_error_rows(segmented, fragmented, level0, threshold=threshold)
    recorded = {
        "em_layer": segmented.parameters["em_layer"], "model_id": record.pk,
        "model_name": record.name, "model_version": record.version,
        "threshold": threshold, "context": agglomerated.parameters["context"],
        "jobs": {"segment_cells": segmented.pk, "fragment_cells": fragmented.pk,
                 "agglomerate_cells": agglomerated.pk, "relabel_cells": job.pk}}

    def store() -> dict:
        common = {"dataset": dataset, "job": job, "source_path": str(record.file),
                  "method": METHOD, "parameters": recorded}
        affinity_layers = [
            _layer_row(name=names[axis], kind=Layer.Kind.PREDICTION,
                       path=job_folder(segmented) / f"affinities-{axis}.zarr", **common)
            for axis in AXES]
        layer = _layer_row(name=names["segmentation"], kind=Layer.Kind.SEGMENTATION,
                           path=job_folder(job) / "segmentation.zarr", **common)
        create_cells(layer, table)
        report = None
        if likely is not None:
            report = store_error_report(layer, likely, job=job, kind="likely")
        intermediate = [_folder(fragmented), _folder(agglomerated)]
        transaction.on_commit(lambda: [shutil.rmtree(p, ignore_errors=True)
                                       for p in intermediate])
        return {"segmentation_layer": layer.pk,
                "affinity_layers": [a.pk for a in affinity_layers], "cells": len(table),
                "likely_errors": None if report is None else report["rows"]}

    return Finish(result={"voxels_in_cells": int(table.sizes.sum())}, store=store)


def likely_error_rows(segmented: Job, fragmented: Job, cells, *,
                      threshold: float) -> list[dict] | None:
    """The rows of the layer's error report: cells the agglomeration merged barely and pairs
    it kept apart barely (:func:`detection.cells.evaluation.likely_errors` on the record of
    :func:`~detection.cells.segmentation.agglomeration_record`), located in ``cells``.

    The record is made over the whole volume in memory (about 28 bytes a voxel), so a volume
    of more than :data:`REPORT_MAX_VOXELS` voxels gets none (None)."""
    shape = tuple(cells.shape)
    if int(np.prod(shape)) > REPORT_MAX_VOXELS:
        logger.info("job %s: %s voxels, more than %s; no likely-errors report", segmented.pk,
                    format_numbers(shape), REPORT_MAX_VOXELS)
        return None
    everything = tuple(slice(0, n) for n in shape)
    labels = np.asarray(cells[everything])
    fragments = open_multiscale(_folder(fragmented) / "fragments.zarr")[0]["0"][everything]
    cell_table, edges = seg.agglomeration_record(
        _read_affinities(_folder(segmented), everything), fragments, labels)
    rows = likely_errors(edges, cell_table, threshold=threshold, margin=LIKELY_MARGIN,
                         min_contact=LIKELY_MIN_CONTACT)
    return locate_errors(rows, labels)


def _layer_row(*, path: Path, **fields) -> Layer:
    """The layer row of a group of the chain (its shape, chunks and pyramid read from it)."""
    _, meta = open_multiscale(settings.DATA_ROOT / path)
    return segmentations.layer_row(meta=meta, path=path, **fields)
