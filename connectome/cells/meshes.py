"""Meshes of a segmentation layer's cells, made block by block on any number of workers.

plan (one task): check the layer and the pyramid level, make the job's mesh folder
(``datasets/<dataset>/jobs/<job>/mesh`` under DATA_ROOT) and cut the level into blocks.

block (one task per block, any worker): read the block's labels grown by one voxel
(:func:`detection.cells.meshes.mesh_box`), mesh them with the level's voxel size as anisotropy,
simplify, and write one legacy fragment file per segment into the job's folder (whole files,
replaced when the block runs again); return the segment ids it wrote.

finish (one task): write every segment's manifest ``<segment>:0`` and the mesh ``info`` into
the job's folder, then, in the transaction that marks the job done, record the folder on the
layer (``layer.parameters["mesh"]``), which is what makes the viewer serve it. Until then the
layer's previous meshes stay the ones served: a failed or cancelled job changes nothing, and
its folder stays for a resume. The previous folder is removed once the new one is recorded.

A job given ``segment_ids`` remeshes those segments only; the other segments' meshes of the
previous folder are carried over (hard links) into the new one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction

from connectome.cells.selectors import MESH_FORMAT, layer_mesh_path
from connectome.datasets.models import Layer
from connectome.jobs.blocks import BlockPlan, Finish
from connectome.jobs.models import Job
from connectome.jobs.services import JobParameterError, job_hold
from detection.cells import meshes
from detection.errors import InputError
from detection.io.sources import iter_blocks
from detection.io.zarr_store import open_multiscale

logger = logging.getLogger(__name__)


def mesh_folder(job: Job) -> Path:
    """Where a mesh job writes its fragments and manifests, relative to DATA_ROOT."""
    return Path("datasets") / str(job.dataset_id) / "jobs" / str(job.pk) / "mesh"


def fragment_tag(job: Job) -> str:
    # Fragment names carry the job, so a client may cache a fragment for good.
    return f"j{job.pk}"


def segmentation_layer(dataset, layer_id: int) -> Layer:
    layer = Layer.objects.filter(dataset=dataset, pk=layer_id).first()
    if layer is None:
        raise InputError(f"dataset '{dataset.name}' has no layer {layer_id}")
    if layer.kind != Layer.Kind.SEGMENTATION:
        raise InputError(f"layer {layer_id} '{layer.name}' is a {layer.kind} layer, not a "
                         "segmentation")
    return layer


def _level(layer: Layer, level: int) -> tuple[object, tuple[float, float, float]]:
    """The label array of pyramid ``level`` and its voxel size (nm, z, y, x)."""
    group, meta = open_multiscale(layer.path)
    if not 0 <= level < meta["levels"]:
        raise InputError(f"layer '{layer.name}' has pyramid levels 0 to {meta['levels'] - 1}, "
                         f"not {level}")
    factor = meta["factors"][level]
    voxel_size = tuple(float(v) * f for v, f in zip(layer.dataset.voxel_size, factor))
    return group[meta["paths"][level]], voxel_size


def mesh_writes(dataset, parameters: dict) -> list[str]:
    """The resource a mesh job locks: the meshes of its layer (one job at a time)."""
    try:
        layer = segmentation_layer(dataset, parameters["segmentation_layer"])
        _level(layer, parameters["level"])
    except InputError as exc:
        field = "level" if "pyramid levels" in str(exc) else "segmentation_layer"
        raise JobParameterError("mesh_segmentation", {field: [str(exc)]}) from None
    return [f"meshes of layer '{layer.name}'"]


def mesh_plan(job: Job, parameters: dict) -> BlockPlan:
    layer = segmentation_layer(job.dataset, parameters["segmentation_layer"])
    labels, _ = _level(layer, parameters["level"])
    boxes = [((z.start, y.start, x.start), (z.stop, y.stop, x.stop))
             for z, y, x in iter_blocks(labels.shape, parameters["block_shape"])]
    with transaction.atomic():
        # Only while this run holds the job (a stalled earlier run must not make folders).
        job_hold(job)
        (settings.DATA_ROOT / mesh_folder(job)).mkdir(parents=True, exist_ok=True)
    logger.info("job %s: meshing layer %s level %s in %d blocks", job.pk, layer.pk,
                parameters["level"], len(boxes))
    return BlockPlan(boxes=boxes, queue=parameters["queue"],
                     max_attempts=parameters["max_attempts"],
                     message=f"0 / {len(boxes)} blocks of "
                             f"{' x '.join(map(str, parameters['block_shape']))}")


def mesh_block(job: Job, box, parameters: dict) -> dict:
    """Mesh one block and write its fragments; the segment ids written, for the final step."""
    layer = segmentation_layer(job.dataset, parameters["segmentation_layer"])
    labels, voxel_size = _level(layer, parameters["level"])
    fragments = meshes.mesh_box(
        labels, box, voxel_size=voxel_size, segment_ids=parameters.get("segment_ids"),
        reduction_factor=parameters["simplification_factor"],
        max_error_nm=parameters.get("max_simplification_error"))
    written = meshes.write_fragments(settings.DATA_ROOT / mesh_folder(job), fragments, box,
                                     tag=fragment_tag(job))
    return {
        # Strings: uint64 ids above 2**53 would not survive every JSON reader.
        "segments": [str(s) for s in written],
        "vertices": sum(len(f.vertices) for f in fragments),
        "triangles": sum(len(f.faces) for f in fragments),
        "voxels": int(np.prod([s.stop - s.start for s in box])),
    }


def mesh_finish(job: Job, parameters: dict, say) -> Finish:
    layer = segmentation_layer(job.dataset, parameters["segmentation_layer"])
    folder = settings.DATA_ROOT / mesh_folder(job)
    fragments: dict[int, list[str]] = {}
    triangles = 0
    tag = fragment_tag(job)
    for box, result in job.blocks.order_by("index").values_list("box", "result"):
        slices = tuple(slice(a, b) for a, b in zip(box[:3], box[3:]))
        triangles += int(result.get("triangles", 0))
        for segment in result.get("segments", []):
            fragments.setdefault(int(segment), []).append(
                meshes.fragment_name(int(segment), slices, tag=tag))
    kept = 0
    previous = layer_mesh_path(layer)
    if parameters.get("segment_ids") is not None and previous is not None:
        kept = _carry_over(previous, folder, fragments)
    say(f"writing the manifests of {len(fragments)} segments")
    meshes.write_manifests(folder, fragments)
    record = {
        "format": MESH_FORMAT, "path": str(mesh_folder(job)), "job": job.pk,
        "segments": len(fragments), "triangles": triangles, "level": parameters["level"],
        "simplification_factor": parameters["simplification_factor"],
    }

    def store() -> dict:
        locked = Layer.objects.select_for_update().filter(pk=layer.pk).first()
        if locked is None:
            raise InputError(f"layer {layer.pk} was deleted while its meshes were made")
        old = (locked.parameters or {}).get("mesh")
        locked.parameters = {**(locked.parameters or {}), "mesh": record}
        locked.save(update_fields=["parameters"])
        if old and old.get("path") and old["path"] != record["path"]:
            stale = settings.DATA_ROOT / old["path"]
            transaction.on_commit(lambda: shutil.rmtree(stale, ignore_errors=True))
        return {"layer_id": locked.pk, "segments": len(fragments), "carried_over": kept,
                "triangles": triangles}

    return Finish(result={"mesh_path": record["path"]}, store=store)


def _carry_over(previous: Path, folder: Path, fragments: dict[int, list[str]]) -> int:
    """Link the previous meshes of segments not remeshed into ``folder``; how many."""
    kept = 0
    for path in previous.iterdir():
        match = meshes.MANIFEST_NAME.fullmatch(path.name)
        if match is None or int(match[1]) in fragments:
            continue
        names = json.loads(path.read_text())["fragments"]
        for name in names:
            target = folder / name
            if not target.exists():
                os.link(previous / name, target)
        fragments[int(match[1])] = names
        kept += 1
    return kept

