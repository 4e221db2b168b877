"""The job that writes a synapse run's annotation layer (``connectome/viewer/annotations.py``)."""

from rest_framework import serializers

from connectome.jobs.registry import register_job
from connectome.synapses.models import SynapseRun
from connectome.viewer import annotations


class BuildAnnotationLayerParameters(serializers.Serializer):
    run = serializers.IntegerField(min_value=1, help_text="synapse run id")

    def validate_run(self, value):
        if not SynapseRun.objects.filter(pk=value).exists():
            raise serializers.ValidationError(f"no synapse run {value}")
        return value


def _build_writes(dataset, params):
    return [f"annotation layer of run {params['run']}"]


@register_job("build_annotation_layer", parameters=BuildAnnotationLayerParameters,
              writes=_build_writes)
def run_build_annotation_layer(job, params, progress):
    """Write the spatial index of a synapse run's Neuroglancer annotation layer."""
    run = SynapseRun.objects.select_related("dataset").get(pk=params["run"])
    return annotations.build_layer(run, progress=progress)
