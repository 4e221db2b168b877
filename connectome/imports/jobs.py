"""Import and export job kinds: thin handlers that call the import services."""

from connectome.datasets.models import Layer
from connectome.imports import parameters as p
from connectome.imports.paths import export_download, export_target
from connectome.imports.skeletons import export_skeletons, import_skeletons, skeletonize_layer
from connectome.imports.synapse_tables import export_synapses, import_synapses
from connectome.imports.volumes import import_volume
from connectome.jobs.registry import register_job


def _dataset(job):
    if job.dataset is None:
        raise ValueError(f"{job.kind} job {job.pk} has no dataset")
    return job.dataset


@register_job("import_volume", parameters=p.ImportVolumeParameters)
def run_import_volume(job, params, progress):
    """Import an EM volume, segmentation, prediction or mask into chunked storage."""
    layer = import_volume(dataset=_dataset(job), job=job, progress=progress, **params)
    result = {"layer_id": layer.pk, "layer": layer.name, "shape": list(layer.shape)}
    if layer.kind == Layer.Kind.SEGMENTATION:
        result["cells"] = layer.cells.count()
    return result


@register_job("import_skeletons", parameters=p.ImportSkeletonsParameters)
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


@register_job("skeletonize", parameters=p.SkeletonizeParameters)
def run_skeletonize(job, params, progress):
    """Skeletonize the cells of a segmentation layer (kimimaro TEASAR)."""
    layer = _dataset(job).layers.get(pk=params.pop("layer"), kind=Layer.Kind.SEGMENTATION)
    skeletons = skeletonize_layer(layer=layer, progress=progress, **params)
    return {"skeletons": len(skeletons)}


@register_job("import_synapses", parameters=p.ImportSynapsesParameters)
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
