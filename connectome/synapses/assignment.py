"""Partner assignment over a dataset's layers, block by block, stored as one synapse run.

The ``assign_partners`` job reads the sites (a synapse-instance layer), the segmentation and
what the method needs (a presynaptic map for ``vesicle`` and ``diffusion``; the EM and an
interface classifier for ``contact``; a free-space mask for ``diffusion``), runs
:mod:`detection.partners` on crops and stores the rows with
:func:`~connectome.synapses.services.synapse_run_store` (one run, replaced atomically when
asked).  No volume is ever read whole:

plan (the job's main task): check the layers, then read the site labels one block of
``block_shape`` at a time and merge each label's bounding box
(:func:`detection.partners.blocks.blockwise_site_boxes`).  A site belongs to the block of
the grid holding its box's centre; only blocks with sites are planned (one empty block when
there is no site, so an empty run is still stored).  Each planned block's sites and boxes
go to ``sites/<z>_<y>_<x>.json`` in the job's folder (``datasets/<id>/jobs/<job id>/``).

block (one task per block, any worker): read the union of its sites' boxes grown by the
method's margin (:func:`detection.partners.blocks.assignment_margin`: the site geometry,
the presynaptic radius, the diffusion walk's reach of ``n_steps + 1`` voxels, the contact
interfaces' 320 nm crop), clipped to the volume, from every layer; erase the other sites'
labels; compute the per-candidate choices with the crop's corner as offset (positions in the
volume's frame) and write them to ``choices/<z>_<y>_<x>.json``, replacing the file (a
repeat writes the same file).

finish (one task): read every block's choices, order them by site id, group candidates into
polyadic sites (which needs all of them) and store the rows in the transaction that marks
the job done.  A candidate's choice reads nothing beyond its margin and diffusion draws per
site, so the stored rows are those of the whole-volume call whatever the blocks.

Memory: the plan holds one block of labels and one box per site; a block task its crop of
every layer; the final step every candidate's choice and row.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import uuid
from functools import lru_cache
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction

from connectome.datasets.models import Dataset, Layer
from connectome.jobs.blocks import BlockPlan, Finish
from connectome.jobs.services import job_hold
from connectome.synapses.models import SynapseRun
from connectome.synapses.services import synapse_run_store
from detection import partners
from detection.errors import InputError
from detection.io.sources import read_box
from detection.io.zarr_store import open_multiscale
from detection.partners.blocks import (
    assignment_margin,
    block_box,
    block_crop,
    blockwise_site_boxes,
    grid_boxes,
    keep_sites,
    sites_by_block,
)
from detection.partners.rows import choice_from_record, choice_record

logger = logging.getLogger(__name__)

#: Default block (z, y, x voxels): the grid that sites are given to by their box's centre.
BLOCK_SHAPE = (32, 256, 256)

_FUNCTIONS = {
    "contact": partners.assign_by_contact,
    "vesicle": partners.assign_by_vesicles,
    "diffusion": partners.assign_by_diffusion,
}
# Inputs the service itself provides; the rest of a method's keyword arguments are options.
_PROVIDED = {"voxel_size", "interfaces", "scores", "local_scores", "free"}


def method_options(method: str) -> dict[str, object]:
    """The tunable options of a method with their defaults."""
    signature = inspect.signature(_FUNCTIONS[method])
    return {name: p.default for name, p in signature.parameters.items()
            if p.kind is p.KEYWORD_ONLY and name not in _PROVIDED}


def check_options(method: str, options: dict) -> dict:
    """`options` with unknown names refused and values cast to the defaults' types."""
    if method not in _FUNCTIONS:
        raise InputError(f"unknown partner-assignment method {method!r}; methods: "
                         + ", ".join(_FUNCTIONS))
    known = method_options(method)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InputError(f"the {method} method has no option {', '.join(unknown)}; "
                         f"options: {', '.join(sorted(known))}")
    parameters = inspect.signature(_FUNCTIONS[method]).parameters
    checked = {}
    for name, value in options.items():
        # Annotations are strings ("float", "float | None"): the library modules postpone
        # their evaluation.
        types = {part.strip() for part in str(parameters[name].annotation).split("|")}
        nullable = "None" in types
        if value is None and nullable:
            checked[name] = None
            continue
        kind = int if "int" in types else float if "float" in types else type(known[name])
        try:
            if isinstance(value, bool) or (kind is int and float(value) != int(float(value))):
                raise InputError(value)
            checked[name] = kind(value)
        except (TypeError, ValueError):
            expected = {int: "an integer", float: "a number"}.get(kind, f"a {kind.__name__}")
            expected += " or null" if nullable else ""
            raise InputError(f"option {name}: expected {expected}, got {value!r}") from None
    return checked


def _layer(dataset: Dataset, layer_ref, role: str, kinds) -> Layer:
    """A layer of `dataset` by id or by name."""
    layers = Layer.objects.filter(dataset=dataset)
    ref = str(layer_ref)
    layer = (layers.filter(pk=int(ref)).first() if ref.isdigit() else None) \
        or layers.filter(name=ref).first()
    if layer is None:
        raise InputError(f"dataset '{dataset.name}' has no layer {ref!r} (the {role}); "
                         f"layers: {', '.join(layers.values_list('name', flat=True)) or 'none'}")
    if layer.kind not in kinds:
        raise InputError(f"layer '{layer.name}' is a {layer.kind} layer; the {role} must be "
                         + " or ".join(kinds))
    return layer


def job_folder(job) -> Path:
    """Where an assignment job's files live, relative to DATA_ROOT."""
    return Path("datasets") / str(job.dataset_id) / "jobs" / str(job.pk)


def _key(index) -> str:
    return "_".join(str(int(i)) for i in index)


def _block_shape(parameters: dict) -> tuple[int, int, int]:
    return tuple(int(b) for b in (parameters.get("block_shape") or BLOCK_SHAPE))


def assignment_layers(dataset: Dataset, parameters: dict) -> dict[str, Layer]:
    """The layers the assignment reads by role, checked; refuses what cannot run."""
    method = parameters["method"]
    sites = _layer(dataset, parameters["sites_layer"], "sites", [Layer.Kind.SYNAPSES])
    seg = _layer(dataset, parameters["segmentation_layer"], "segmentation",
                 [Layer.Kind.SEGMENTATION])
    needed = {"sites": sites, "segmentation": seg}
    if method in ("vesicle", "diffusion"):
        if parameters.get("presynaptic_layer") is None:
            raise InputError(f"the {method} method needs a presynaptic (vesicle cloud) layer")
        needed["presynaptic map"] = _layer(dataset, parameters["presynaptic_layer"],
                                           "presynaptic map",
                                           [Layer.Kind.PREDICTION, Layer.Kind.MASK])
    if method == "contact":
        if parameters.get("em_layer") is None or not parameters.get("interface_model"):
            raise InputError("the contact method needs the EM layer and an interface "
                             "classifier file")
        needed["EM"] = _layer(dataset, parameters["em_layer"], "EM", [Layer.Kind.EM])
    if parameters.get("free_layer") is not None:
        if method != "diffusion":
            raise InputError("a free-space layer is used by the diffusion method only")
        needed["free space"] = _layer(dataset, parameters["free_layer"], "free space",
                                      [Layer.Kind.MASK])
    shapes = {role: layer.shape for role, layer in needed.items()}
    if len(set(shapes.values())) > 1:
        raise InputError("layers differ in shape: " + ", ".join(
            f"{role} '{needed[role].name}' {shape}" for role, shape in shapes.items()))
    return needed


def assignment_writes(dataset: Dataset, parameters: dict) -> list[str]:
    """The run an assignment job writes (locked, so two jobs never write it at once).

    ``detect_and_assign`` locks its assignment run from the start and hands the lock to the
    assignment job it creates (``job_create(parent=...)``).
    """
    return [f"synapse run '{parameters['run_name']}'"]


@lru_cache(maxsize=4)
def _classifier(path: str, mtime: float, voxel_size: tuple[float, float, float]):
    from detection.synapses.interfaces import InterfaceClassifier

    return InterfaceClassifier.load(path, voxel_size=voxel_size)


def load_classifier(path, voxel_size):
    # One load per worker process and file (keyed by mtime, so a new file is reloaded).
    return _classifier(str(path), Path(path).stat().st_mtime,
                       tuple(float(v) for v in voxel_size))


def _source(layer: Layer):
    return open_multiscale(layer.path)[0]["0"]


def _write_json(path: Path, content) -> None:
    # Whole or not at all: a block task killed while writing leaves the old file.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    partial.write_text(json.dumps(content))
    os.replace(partial, path)


def assignment_plan(job, parameters: dict, progress) -> BlockPlan:
    """Check the layers, find every site's box block by block, give each site its block."""
    dataset = job.dataset
    method, run_name = parameters["method"], parameters["run_name"]
    check_options(method, parameters.get("options") or {})
    if (SynapseRun.objects.filter(dataset=dataset, name=run_name).exists()
            and not parameters.get("replace")):
        raise InputError(f"dataset '{dataset.name}' already has a synapse run named "
                         f"'{run_name}'; choose another name or replace it")
    needed = assignment_layers(dataset, parameters)
    if method == "contact":
        load_classifier(parameters["interface_model"], dataset.voxel_size)
    sites = needed["sites"]
    shape, block_shape = sites.shape, _block_shape(parameters)
    source = _source(sites)
    n_grid = len(grid_boxes(shape, block_shape))
    progress.set_total(n_grid, message=f"finding the sites of '{sites.name}' in {n_grid} blocks")

    def read(box):
        progress.advance()
        return read_box(source, box)

    blocks = sites_by_block(blockwise_site_boxes(read, shape, block_shape), block_shape)
    if not blocks:
        blocks = {(0, 0, 0): []}  # nothing to assign: one empty block, and an empty run
    folder = settings.DATA_ROOT / job_folder(job)
    with transaction.atomic():
        # Only while this run holds the job: a run whose worker was thought lost (stalled,
        # and the job sent again) must not replace what the current run's blocks read.
        job_hold(job)
        for name in ("sites", "choices"):
            shutil.rmtree(folder / name, ignore_errors=True)  # left by an earlier plan
        for index, mine in blocks.items():
            _write_json(folder / "sites" / f"{_key(index)}.json", [
                [site, *(s.start for s in box), *(s.stop for s in box)] for site, box in mine])
    boxes = []
    for index in blocks:
        box = block_box(index, block_shape, shape)
        boxes.append((tuple(s.start for s in box), tuple(s.stop for s in box)))
    n_sites = sum(len(mine) for mine in blocks.values())
    logger.info("job %s: %d sites in %d of %d blocks of %s", job.pk, n_sites, len(boxes),
                n_grid, block_shape)
    return BlockPlan(boxes=boxes, message=f"0 / {len(boxes)} blocks ({n_sites} sites)")


def assignment_block(job, box, parameters: dict) -> dict:
    """Choose the partners of one block's sites on its crop; write them to the block's file."""
    dataset = job.dataset
    method = parameters["method"]
    block_shape = _block_shape(parameters)
    key = _key(s.start // b for s, b in zip(box, block_shape))
    folder = settings.DATA_ROOT / job_folder(job)
    mine = json.loads((folder / "sites" / f"{key}.json").read_text())
    if not mine:
        _write_json(folder / "choices" / f"{key}.json", [])
        return {"sites": 0, "candidates": 0}
    options = check_options(method, parameters.get("options") or {})
    options.pop("group_distance_nm", None)  # the final step's
    needed = assignment_layers(dataset, parameters)
    voxel_size = dataset.voxel_size
    shape = needed["sites"].shape
    margin = assignment_margin(method, voxel_size=voxel_size, **options)
    crop = block_crop([tuple(slice(a, b) for a, b in zip(r[1:4], r[4:7])) for r in mine],
                      margin, shape)
    arrays = {role: read_box(_source(layer), crop) for role, layer in needed.items()}
    sites = keep_sites(arrays["sites"], [r[0] for r in mine])
    kwargs = dict(options)
    if method == "contact":
        from detection.synapses.features import FeatureSpec

        classifier = load_classifier(parameters["interface_model"], voxel_size)
        spec = classifier.metadata.get("feature_spec")
        local = partners.site_interfaces(
            arrays["EM"], arrays["segmentation"], sites, voxel_size=voxel_size,
            spec=FeatureSpec.from_dict(spec) if spec else None)
        kwargs["local_scores"] = partners.site_scores(local, classifier)
    if "free space" in arrays:
        kwargs["free"] = arrays["free space"].astype(bool)
    choices = partners.partner_choices(
        method, sites, arrays["segmentation"], voxel_size=voxel_size,
        presynaptic=arrays.get("presynaptic map"), offset=[s.start for s in crop], **kwargs)
    _write_json(folder / "choices" / f"{key}.json", [choice_record(c) for c in choices])
    return {"sites": len(mine), "candidates": len(choices),
            "crop": [*(s.start for s in crop), *(s.stop for s in crop)],
            "crop_voxels": int(np.prod([s.stop - s.start for s in crop]))}


def assignment_finish(job, parameters: dict, say) -> Finish:
    """Group the blocks' choices into rows; store them as the run when the job ends."""
    dataset = job.dataset
    method = parameters["method"]
    options = check_options(method, parameters.get("options") or {})
    block_shape = _block_shape(parameters)
    folder = settings.DATA_ROOT / job_folder(job)
    records = []
    for box in job.blocks.order_by("index").values_list("box", flat=True):
        key = _key(int(a) // b for a, b in zip(box[:3], block_shape))
        records.extend(json.loads((folder / "choices" / f"{key}.json").read_text()))
    records.sort(key=lambda r: r["site"])
    say(f"grouping the choices of {len(records)} candidates into sites")
    group = options.get("group_distance_nm", method_options(method)["group_distance_nm"])
    rows = partners.partner_rows(method, [choice_from_record(r) for r in records],
                                 voxel_size=dataset.voxel_size, group_distance_nm=group)
    say(f"storing {len(rows)} rows")
    needed = assignment_layers(dataset, parameters)
    stored_parameters = {
        "method": method, "options": options,
        "layers": {role: layer.name for role, layer in needed.items()},
        "interface_model": parameters.get("interface_model") or None,
        "block_shape": list(block_shape),
    }

    def store() -> dict:
        run = synapse_run_store(dataset=dataset, run_name=parameters["run_name"], method=method,
                                rows=rows, parameters=stored_parameters,
                                replace=bool(parameters.get("replace")), job=job)
        logger.info("%s: %d rows from %d candidates stored as run %s", method, len(rows),
                    len(records), run)
        return {"run_id": run.pk, "run": run.name, "synapses": len(rows),
                "connections": sum(1 for r in rows if r.counted)}

    return Finish(result={"candidates": len(records)}, store=store)
