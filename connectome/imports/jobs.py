"""Import and export job kinds: thin handlers that call the import services.

Every kind that writes a named thing of a dataset declares it (``writes``), so that the job
takes a lock on it when it is submitted: a second job that would write the same layer,
synapse run, skeleton source or new cells is refused at once, naming the job that holds it,
and so is a job whose layer or run exists already. ``import_volume`` also opens the file's
header at submission, so a volume that is too large, of the wrong type or shape, or with an
unusable voxel size is refused before it is queued.
"""

from connectome.datasets.models import Layer
from connectome.datasets.services import DatasetMismatchError
from connectome.imports import parameters as p
from connectome.imports.paths import export_download, export_target
from connectome.imports.skeletons import (
    export_skeletons,
    import_skeletons,
    skeletonize_layer,
)
from connectome.imports.synapse_tables import export_synapses, import_synapses
from connectome.imports.volumes import import_volume, preflight_import_volume
from connectome.jobs.registry import register_job
from connectome.jobs.services import JobConflict, JobParameterError
from connectome.synapses.models import SynapseRun
from detection.errors import InputError
from detection.io.sources import VolumeFormatError

#: The lock of jobs that create cells (a segmentation import, a synapse table with
#: ``create_missing_cells``): two at once would create the same segment twice.
CELLS = "cell list"


def _dataset(job):
    if job.dataset is None:
        raise InputError(f"{job.kind} job {job.pk} has no dataset")
    return job.dataset


def segmentation_layer(dataset, layer_id) -> Layer:
    """The segmentation layer ``layer_id`` of ``dataset``, or ValueError saying what is there."""
    layer = Layer.objects.filter(dataset=dataset, pk=layer_id).first()
    if layer is None:
        raise InputError(f"dataset '{dataset.name}' has no segmentation layer {layer_id}")
    if layer.kind != Layer.Kind.SEGMENTATION:
        raise InputError(f"layer {layer_id} '{layer.name}' of dataset '{dataset.name}' is a "
                         f"{layer.kind} layer, not a segmentation")
    return layer


def _import_volume_writes(dataset, params):
    name = params["name"]
    if Layer.objects.filter(dataset=dataset, name=name).exists():
        raise JobConflict("import_volume",
                          f"dataset '{dataset.name}' already has a layer named '{name}'")
    resources = [f"layer '{name}'"]
    if params.get("kind") == Layer.Kind.SEGMENTATION:
        if dataset.cells.filter(layer__isnull=False).exists():
            raise JobConflict(
                "import_volume", f"dataset '{dataset.name}' already has cells from a "
                "segmentation; delete that segmentation layer before importing another")
        resources.append(CELLS)
    try:
        preflight_import_volume(dataset=dataset, **params)
    except (VolumeFormatError, DatasetMismatchError, ValueError, OSError) as exc:
        raise JobParameterError("import_volume", {"source": [str(exc)]}) from None
    return resources


@register_job("import_volume", parameters=p.ImportVolumeParameters, writes=_import_volume_writes)
def run_import_volume(job, params, progress):
    """Import an EM volume, segmentation, prediction or mask into chunked storage."""
    layer = import_volume(dataset=_dataset(job), job=job, progress=progress, **params)
    result = {"layer_id": layer.pk, "layer": layer.name, "shape": list(layer.shape)}
    if layer.kind == Layer.Kind.SEGMENTATION:
        result["cells"] = layer.cells.count()
    return result


def _skeleton_writes(source_name):
    return [f"skeletons '{source_name}'"]


@register_job("import_skeletons", parameters=p.ImportSkeletonsParameters,
              writes=lambda dataset, params: _skeleton_writes(params["source_name"]))
def run_import_skeletons(job, params, progress):
    """Import SWC skeletons of the dataset's cells."""
    skeletons = import_skeletons(dataset=_dataset(job), progress=progress, **params)
    return {"skeletons": len(skeletons)}


@register_job("export_skeletons", parameters=p.ExportSkeletonsParameters)
def run_export_skeletons(job, params, progress):
    """Write the dataset's skeletons as a zip of SWC files, one per cell, for download."""
    dataset = _dataset(job)
    name = f"skeletons-{dataset.name}{'-' + params['source'] if params['source'] else ''}.zip"
    with export_target(job, name) as target:
        count = export_skeletons(dataset=dataset, target=target, progress=progress, **params)
    return {"skeletons": count, **export_download(job)}


def _skeletonize_writes(dataset, params):
    try:
        segmentation_layer(dataset, params["layer"])
    except ValueError as exc:
        raise JobParameterError("skeletonize", {"layer": [str(exc)]}) from None
    return _skeleton_writes("kimimaro")


@register_job("skeletonize", parameters=p.SkeletonizeParameters, writes=_skeletonize_writes)
def run_skeletonize(job, params, progress):
    """Skeletonize the cells of a segmentation layer (kimimaro TEASAR)."""
    layer = segmentation_layer(_dataset(job), params.pop("layer"))
    skeletons = skeletonize_layer(layer=layer, progress=progress, **params)
    return {"skeletons": len(skeletons)}


def _import_synapses_writes(dataset, params):
    name = params["run_name"]
    if not params.get("replace") and SynapseRun.objects.filter(dataset=dataset, name=name).exists():
        raise JobConflict("import_synapses",
                          f"dataset '{dataset.name}' already has a synapse run named '{name}' "
                          "(replace it to import it again)")
    resources = [f"synapse run '{name}'"]
    if params.get("create_missing_cells"):
        resources.append(CELLS)
    return resources


@register_job("import_synapses", parameters=p.ImportSynapsesParameters,
              writes=_import_synapses_writes)
def run_import_synapses(job, params, progress):
    """Import a synapse table (Cnapse, CAVE-style or edge table) as one synapse run."""
    run = import_synapses(dataset=_dataset(job), job=job, progress=progress, **params)
    return {"run_id": run.pk, "run": run.name, "synapses": run.synapses.count()}


@register_job("export_synapses", parameters=p.ExportSynapsesParameters)
def run_export_synapses(job, params, progress):
    """Write the dataset's synapses as a Cnapse, CAVE-style or edge table, for download."""
    dataset = _dataset(job)
    name = (f"synapses-{dataset.name}-{params['run_name'] or 'all runs'}-"
            f"{params['table_format']}.csv")
    with export_target(job, name) as target:
        rows = export_synapses(dataset=dataset, target=str(target), progress=progress, **params)
    return {"rows": rows, **export_download(job)}
