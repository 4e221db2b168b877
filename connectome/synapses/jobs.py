"""Synapse job kinds: thin handlers that call the synapse services."""

from rest_framework import serializers

from connectome.common.params import IdField
from connectome.common.validators import validate_name
from connectome.imports.parameters import SourcePathField
from connectome.imports.paths import export_download, export_target
from connectome.jobs.registry import register_job
from connectome.synapses import table_exports
from connectome.synapses.assignment import (
    BLOCK_SHAPE,
    assignment_block,
    assignment_finish,
    assignment_plan,
    assignment_writes,
    check_options,
)
from detection.errors import InputError


def _layer_field(help_text, required=False):
    extra = {} if required else {"required": False, "allow_null": True, "default": None}
    return serializers.CharField(max_length=200, help_text=f"{help_text} (layer id or name)",
                                 **extra)


class AssignPartnersParameters(serializers.Serializer):
    method = serializers.ChoiceField(choices=["contact", "vesicle", "diffusion"])
    sites_layer = _layer_field("layer of kind 'synapses' (candidate labels)", required=True)
    segmentation_layer = _layer_field("segmentation", required=True)
    run_name = serializers.CharField(max_length=200, validators=[validate_name])
    presynaptic_layer = _layer_field(
        "vesicle / presynaptic density map; vesicle and diffusion methods")
    em_layer = _layer_field("EM layer; contact method")
    interface_model = SourcePathField(required=False, allow_null=True, default=None,
                                      help_text="interface classifier file; contact method")
    free_layer = _layer_field("mask of extra free space (membranes); diffusion method")
    options = serializers.DictField(required=False, default=dict,
                                    help_text="method options, e.g. {\"min_share\": 0.3}")
    replace = serializers.BooleanField(default=False,
                                       help_text="replace the run of that name atomically")
    block_shape = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=4096), min_length=3,
        max_length=3, default=list(BLOCK_SHAPE),
        help_text="z, y, x voxels per block; each site goes to the block holding its centre "
                  "(the rows do not depend on it)")

    def validate(self, attrs):
        try:
            attrs["options"] = check_options(attrs["method"], attrs.get("options") or {})
        except ValueError as exc:
            raise serializers.ValidationError({"options": str(exc)}) from None
        return attrs


@register_job("assign_partners", parameters=AssignPartnersParameters, block=assignment_block,
              finish=assignment_finish, writes=assignment_writes)
def run_assign_partners(job, params, progress):
    """Assign pre- and postsynaptic partners to synapse sites block-wise; store a synapse run."""
    if job.dataset is None:
        raise InputError(f"{job.kind} job {job.pk} has no dataset")
    return assignment_plan(job, params, progress)


class ExportSynapseTableParameters(serializers.Serializer):
    table_format = serializers.ChoiceField(choices=list(table_exports.FORMATS), default="csv")
    runs = serializers.ListField(
        child=IdField(), required=False, allow_null=True,
        default=None, help_text="synapse run ids; all runs of the dataset by default")


@register_job("export_synapse_table", parameters=ExportSynapseTableParameters)
def run_export_synapse_table(job, params, progress):
    """Write the dataset's whole synapse table as CSV or Parquet, for download over the API."""
    if job.dataset is None:
        raise InputError(f"{job.kind} job {job.pk} has no dataset")
    runs = params.get("runs")
    if runs is not None:
        unknown = sorted(set(runs) - set(job.dataset.synapse_runs.values_list("pk", flat=True)))
        if unknown:
            raise InputError(f"dataset '{job.dataset.name}' has no synapse runs {unknown}")
    name = f"synapses-{job.dataset.name}.{params['table_format']}"
    with export_target(job, name) as target:
        rows = table_exports.export_synapse_table(
            dataset=job.dataset, target=target, table_format=params["table_format"], runs=runs,
            progress=progress,
        )
    return {"rows": rows, "table_format": params["table_format"], **export_download(job)}
