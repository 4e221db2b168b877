"""Synapse detection over a dataset's EM layer, block by block on any number of workers.

plan (one task): check the layers and the model, create the probability layer's zarr group
under the job's folder with one chunk per block, and cut the region of interest into blocks
on the global grid of the block shape (so no two blocks share a chunk, and each block starts
on the classifier's grid).

block (one task per block, any worker): read the block's box grown by the classifier's halo
from the EM layer, score its core, write it as ``round(255 * p)`` into the probability group
(a repeat overwrites the same chunk with the same values) and return how many of its voxels
reach the low threshold.

A network with a vesicle head (``model.heads``) gives a second map from the same pass: each
block writes it, also as ``round(255 * p)``, into a vesicle group with the probability's chunks,
the final step builds its pyramid and stores it as a third layer (kind prediction) with the
others; the low-threshold count still comes from the synapse map. Like the probability it stays
in the job's folder when the job fails or is cancelled (a resume reuses the blocks written),
and no layer row is stored for it.

finish (one task): feed the blocks that hold any voxel above the low threshold, read back from
the probability, to :class:`~detection.synapses.instances.InstanceStitcher` (empty blocks add no
components and no face contacts), write the instance labels, build both pyramids, then store
the two layers, the synapse run and its rows in the transaction that marks the job done.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction

from connectome.cells.segmentations import layer_row
from connectome.datasets.models import Dataset, Layer
from connectome.jobs.blocks import BlockPlan, Finish
from connectome.jobs.models import Job, JobBlock
from connectome.jobs.services import JobConflict, JobParameterError, job_hold
from connectome.synapses.models import Synapse, SynapseRun
from detection.blockwise import block_maps, with_halo
from detection.errors import InputError
from detection.io.sources import read_box
from detection.io.zarr_store import (
    build_pyramid,
    create_multiscale,
    open_multiscale,
    write_block,
)
from detection.synapses.instances import InstanceStitcher

logger = logging.getLogger(__name__)

BATCH = 5000
METHOD = "voxel_classifier"
#: The post-processing parameters of a detection job; None takes the model's calibration.
THRESHOLDS = ("high", "low", "min_size", "min_score")
#: What thresholds left out mean for a model without a calibration, when others are given.
LEGACY_THRESHOLDS = {"high": 0.8, "low": 0.5, "min_size_voxels": 1, "min_score": 0.0}
NO_CALIBRATION = "carries no calibration; give high, low, min_size and min_score or retrain it"


def layer_names(parameters: dict) -> tuple[str, str]:
    """Names of the probability and instance layers a detection writes."""
    run = parameters["run_name"]
    return (parameters.get("probability_layer") or f"{run} probability",
            parameters.get("instances_layer") or f"{run} synapses")


def vesicles_layer_name(parameters: dict) -> str:
    """Name of the vesicle map layer a detection writes when its model has a vesicle head."""
    return parameters.get("vesicles_layer") or f"{parameters['run_name']} vesicles"


def has_vesicle_head(model) -> bool:
    """Whether ``model`` (a network, a voxel classifier, or either resampled) maps vesicles."""
    return "vesicles" in tuple(getattr(model, "heads", ("synapse",)))


def _refuse_existing_layer(dataset: Dataset, name: str) -> None:
    if Layer.objects.filter(dataset=dataset, name=name).exists():
        raise JobConflict("detect_synapses",
                          f"dataset '{dataset.name}' already has a layer named '{name}'")


def detection_writes(dataset: Dataset, parameters: dict) -> list[str]:
    """The resources a detection job locks; refuses names that exist already.

    A model with a vesicle head adds the vesicle map layer to them.
    """
    probability, instances = layer_names(parameters)
    for name in (probability, instances):
        _refuse_existing_layer(dataset, name)
    run = parameters["run_name"]
    if SynapseRun.objects.filter(dataset=dataset, name=run).exists():
        raise JobConflict("detect_synapses",
                          f"dataset '{dataset.name}' already has a synapse run named '{run}'")
    # The model, read now: a corrupt or foreign file, a voxel size it cannot be brought to, or
    # no calibration while thresholds are missing is refused before the job is queued.
    field = "model_id" if parameters.get("model_id") is not None else "model"
    try:
        model = load_model(model_path(parameters), dataset.voxel_size)
        postprocessing(parameters, model, dataset.voxel_size)
    except (InputError, OSError) as exc:
        raise JobParameterError("detect_synapses", {field: [str(exc)]}) from None
    writes = [f"layer '{probability}'", f"layer '{instances}'", f"synapse run '{run}'"]
    if has_vesicle_head(model):
        vesicles = vesicles_layer_name(parameters)
        if vesicles in (probability, instances):
            raise JobParameterError("detect_synapses", {"vesicles_layer": [
                f"'{vesicles}' is also the name of the probability or instance layer"]})
        _refuse_existing_layer(dataset, vesicles)
        writes.insert(2, f"layer '{vesicles}'")
    return writes


def model_vesicle_refusal(parameters: dict, voxel_size) -> str | None:
    """Why the detection's own vesicle map cannot stand in for a presynaptic layer (the
    model named has no vesicle head), or None when it can."""
    if has_vesicle_head(load_model(model_path(parameters), voxel_size)):
        return None
    return f"{_model_label(parameters)} has no vesicle head; give presynaptic_layer"


def model_path(parameters: dict) -> str:
    """The model file a detection reads: a detector record's file, or the path given."""
    if parameters.get("model_id") is None:
        return parameters["model"]
    from connectome.detectors.models import DetectorModel

    detector = DetectorModel.objects.filter(pk=parameters["model_id"]).first()
    if detector is None:
        raise InputError(f"detector {parameters['model_id']} does not exist (any more)")
    return str(detector.path)


def _model_label(parameters: dict) -> str:
    if parameters.get("model_id") is None:
        return f"model file {Path(parameters['model']).name}"
    from connectome.detectors.models import DetectorModel

    detector = DetectorModel.objects.filter(pk=parameters["model_id"]).first()
    if detector is None:
        return f"detector {parameters['model_id']}"
    return f"detector '{detector.name}' version {detector.version} (id {detector.pk})"


def postprocessing(parameters: dict, model, voxel_size) -> dict:
    """Keyword arguments of the :class:`InstanceStitcher` a detection uses.

    All four thresholds given: those, no split (as before models carried a calibration).
    Some left out (None): those come from the model's calibration at this voxel size, whose
    split applies too; a model without a calibration is refused when none is given, and
    otherwise fills the gaps with the defaults of old (high 0.8, low 0.5, 1 voxel, score 0).
    """
    given = {k: parameters.get(k) for k in THRESHOLDS}
    calibration = getattr(model, "calibration", None)
    if all(v is not None for v in given.values()) or calibration is None:
        if all(v is None for v in given.values()):
            raise InputError(f"{_model_label(parameters)} {NO_CALIBRATION}")
        chosen = {**LEGACY_THRESHOLDS, "split": None}
    else:
        chosen = calibration.postprocessing.for_voxel_size(voxel_size)
    for key, name in (("high", "high"), ("low", "low"), ("min_size", "min_size_voxels"),
                      ("min_score", "min_score")):
        if given[key] is not None:
            chosen[name] = given[key]
    if chosen["low"] > chosen["high"]:
        raise InputError(f"the low threshold {chosen['low']} is above the high one "
                         f"{chosen['high']}")
    return chosen


def postprocessing_record(chosen: dict) -> dict:
    """The post-processing as the synapse run's parameters keep it (JSON)."""
    split = chosen["split"]
    return {"high": chosen["high"], "low": chosen["low"], "min_size": chosen["min_size_voxels"],
            "min_score": chosen["min_score"], "split": None if split is None else asdict(split)}


def job_folder(job: Job) -> Path:
    """Where a detection job's volumes live, relative to DATA_ROOT."""
    return Path("datasets") / str(job.dataset_id) / "jobs" / str(job.pk)


@lru_cache(maxsize=4)
def _load_model(path: str, mtime: float, voxel_size: tuple[float, float, float]):
    from detection.synapses.model_files import load_synapse_model

    return load_synapse_model(path, voxel_size=voxel_size)


def load_model(path: str, voxel_size):
    # One load per worker process and model file (keyed by mtime, so a new file is reloaded).
    return _load_model(str(path), Path(path).stat().st_mtime, tuple(float(v) for v in voxel_size))


def _em_layer(dataset: Dataset, layer_id: int) -> Layer:
    layer = Layer.objects.filter(dataset=dataset, pk=layer_id).first()
    if layer is None:
        raise InputError(f"dataset '{dataset.name}' has no layer {layer_id} (the EM)")
    if layer.kind != Layer.Kind.EM:
        raise InputError(f"layer '{layer.name}' is a {layer.kind} layer; detection reads EM")
    return layer


def plan_blocks(shape, roi, block_shape, step) -> list[tuple[tuple, tuple]]:
    """Boxes (start, stop) of the region ``roi`` (z0, y0, x0, z1, y1, x1) cut on the global
    grid of ``block_shape``; the region starts on the classifier grid ``step``."""
    if roi is None:
        roi = (0, 0, 0, *shape)
    lo = [(int(a) // g) * g for a, g in zip(roi[:3], step)]
    hi = [min(int(b), n) for b, n in zip(roi[3:], shape)]
    if any(a >= b for a, b in zip(lo, hi)):
        raise InputError(f"region of interest {list(roi)} is empty inside the volume {shape}")
    ranges = []
    for a, b, size in zip(lo, hi, block_shape):
        first = (a // size) * size
        ranges.append([(max(a, s), min(b, s + size)) for s in range(first, b, size)])
    return [
        ((z0, y0, x0), (z1, y1, x1))
        for z0, z1 in ranges[0] for y0, y1 in ranges[1] for x0, x1 in ranges[2]
    ]


def detection_plan(job: Job, parameters: dict) -> BlockPlan:
    dataset = job.dataset
    em = _em_layer(dataset, parameters["em_layer"])
    model = load_model(model_path(parameters), dataset.voxel_size)
    step = model.grid_step
    block_shape = tuple(-(-int(b) // g) * g for b, g in zip(parameters["block_shape"], step))
    boxes = plan_blocks(em.shape, parameters.get("roi"), block_shape, step)
    folder = settings.DATA_ROOT / job_folder(job)
    folder.mkdir(parents=True, exist_ok=True)
    chunks = tuple(min(b, n) for b, n in zip(block_shape, em.shape))
    groups = ["probability.zarr"] + (["vesicles.zarr"] if has_vesicle_head(model) else [])
    with transaction.atomic():
        # Only while this run holds the job: a run whose worker was thought lost (stalled,
        # and the job sent again) must not wipe what the blocks of the current run wrote.
        job_hold(job)
        for group in groups:
            create_multiscale(folder / group, shape=em.shape, dtype=np.uint8,
                              voxel_size=dataset.voxel_size, chunks=chunks, kind="prediction",
                              overwrite=True)
    logger.info("job %s: %d blocks of %s over %s, halo %s", job.pk, len(boxes), block_shape,
                em.shape, model.halo_voxels())
    return BlockPlan(boxes=boxes, queue=parameters["queue"],
                     max_attempts=parameters["max_attempts"],
                     message=f"0 / {len(boxes)} blocks of {' x '.join(map(str, block_shape))}")


def detection_block(job: Job, box, parameters: dict) -> dict:
    """Score one block and write it; returns the block's summary for the final step."""
    dataset = job.dataset
    em = _em_layer(dataset, parameters["em_layer"])
    model = load_model(model_path(parameters), dataset.voxel_size)
    low = postprocessing(parameters, model, dataset.voxel_size)["low"]
    source = open_multiscale(em.path)[0]["0"]
    folder = settings.DATA_ROOT / job_folder(job)
    if has_vesicle_head(model):
        # One pass of the network gives both maps (the synapse one bit for bit as alone).
        maps = block_maps(source, model, box, heads=("synapse", "vesicles"))
        stored = maps["synapse"]
        write_block(open_multiscale(folder / "vesicles.zarr", mode="r+")[0], box,
                    maps["vesicles"])
    else:
        outer, core = with_halo(box, model.halo_voxels(), tuple(source.shape))
        region = read_box(source, outer)
        probability = model.predict_region(region, core=core,
                                           offset=tuple(s.start for s in outer))
        stored = np.rint(probability * 255).astype(np.uint8)
    write_block(open_multiscale(folder / "probability.zarr", mode="r+")[0], box, stored)
    # The same test the stitcher applies to the values it will read back.
    above = int(np.count_nonzero(stored / 255.0 >= low))
    return {"above_low": above, "max": round(float(stored.max()) / 255.0, 4)}


def detection_finish(job: Job, parameters: dict, say) -> Finish:
    dataset = job.dataset
    folder = settings.DATA_ROOT / job_folder(job)
    probability, meta = open_multiscale(folder / "probability.zarr", mode="r+")
    level0 = probability["0"]
    path = model_path(parameters)
    model = load_model(path, dataset.voxel_size)
    chosen = postprocessing(parameters, model, dataset.voxel_size)
    # The plan made the vesicle group when the model has the head (the same file since).
    vesicles = (open_multiscale(folder / "vesicles.zarr", mode="r+")
                if has_vesicle_head(model) else None)
    stitcher = InstanceStitcher(voxel_size=dataset.voxel_size, **chosen)
    blocks = [JobBlock(index=i, box=b) for i, b, r in job.blocks.order_by("index").values_list(
        "index", "box", "result") if r.get("above_low")]
    say(f"stitching {len(blocks)} blocks with synapse voxels")
    for block in blocks:
        stitcher.add_block(block.slices, level0[block.slices] / 255.0)
    # A split reads each kept component's box back, as the blocks gave it.
    candidates = stitcher.candidates(read_probability=lambda box: level0[box] / 255.0)
    say(f"writing the instance labels of {len(candidates)} synapses")
    # A folder of its own per attempt: a second final step running at the same time (resumed
    # meanwhile) never deletes the labels the first one is about to store. Folders left by
    # earlier attempts whose worker was lost go, while this attempt holds the job (so never
    # those of a later attempt, nor the stored one: that attempt ends the job).
    with transaction.atomic():
        job_hold(job)
        for stray in folder.glob("instances-*.zarr"):
            shutil.rmtree(stray, ignore_errors=True)
    name = f"instances-{uuid.uuid4().hex[:8]}.zarr"
    instances = create_multiscale(folder / name, shape=meta["shape"],
                                  dtype=np.uint32, voxel_size=dataset.voxel_size,
                                  chunks=meta["chunks"], kind="synapses", overwrite=True)
    for block in blocks:
        write_block(instances, block.slices,
                    stitcher.relabel_block(block.slices, level0[block.slices] / 255.0))
    say("building pyramids")
    build_pyramid(probability)
    build_pyramid(instances)
    if vesicles is not None:
        build_pyramid(vesicles[0])
    instance_meta = open_multiscale(folder / name)[1]

    def store() -> dict:
        names = layer_names(parameters)
        recorded = {k: v for k, v in parameters.items() if not k.startswith("_")}
        recorded.update(postprocessing_record(chosen))
        recorded["postprocessing"] = postprocessing_record(chosen)
        if parameters.get("model_id") is not None:
            from connectome.detectors.models import DetectorModel

            detector = DetectorModel.objects.filter(pk=parameters["model_id"]).first()
            recorded["model_name"] = detector.name if detector else None
            recorded["model_version"] = detector.version if detector else None
        common = {"dataset": dataset, "job": job, "method": METHOD, "source_path": path,
                  "parameters": recorded}
        layers = [
            layer_row(name=names[0], kind=Layer.Kind.PREDICTION, meta=meta,
                       path=job_folder(job) / "probability.zarr", **common),
            layer_row(name=names[1], kind=Layer.Kind.SYNAPSES, meta=instance_meta,
                       path=job_folder(job) / name, **common),
        ]
        if vesicles is not None:
            layers.append(layer_row(name=vesicles_layer_name(parameters),
                                     kind=Layer.Kind.PREDICTION, meta=vesicles[1],
                                     path=job_folder(job) / "vesicles.zarr", **common))
        run = SynapseRun.objects.create(
            dataset=dataset, name=parameters["run_name"], method=f"detect:{METHOD}",
            parameters=common["parameters"], source_path=path, job=job)
        rows = [_synapse_row(c, run) for c in candidates]
        for first in range(0, len(rows), BATCH):
            Synapse.objects.bulk_create(rows[first:first + BATCH])
        stored = {"probability_layer": layers[0].pk, "instances_layer": layers[1].pk,
                  "run_id": run.pk, "synapses": len(rows)}
        if vesicles is not None:
            stored["vesicles_layer"] = layers[2].pk
        return stored

    return Finish(result={"blocks_with_synapse_voxels": len(blocks)}, store=store,
                  discard=lambda: shutil.rmtree(folder / name, ignore_errors=True))


def _synapse_row(candidate, run: SynapseRun) -> Synapse:
    # A detected site without partners yet: partner assignment adds the pre and post cells.
    z, y, x = candidate.center
    return Synapse(
        dataset_id=run.dataset_id, run=run, method=METHOD, site_id=candidate.id,
        ctr_z=z, ctr_y=y, ctr_x=x, size_voxels=float(candidate.size_voxels),
        size_nm3=candidate.size_nm3, confidence=candidate.score,
    )
