"""Detection job kinds: block-wise synapse detection, and detection followed by assignment."""

from rest_framework import serializers

from connectome.imports.parameters import SourcePathField
from connectome.jobs.registry import register_job
from connectome.pipeline.detection import (
    detection_block, detection_finish, detection_plan, detection_writes,
)
from connectome.synapses.jobs import AssignPartnersParameters


class DetectSynapsesParameters(serializers.Serializer):
    method = serializers.ChoiceField(choices=["voxel_classifier"], default="voxel_classifier")
    model = SourcePathField(help_text="voxel classifier file (connectome-detect train)")
    em_layer = serializers.IntegerField()
    run_name = serializers.CharField(max_length=200, help_text="synapse run of the detections")
    probability_layer = serializers.CharField(
        max_length=200, required=False, default="",
        help_text="name of the new probability layer; '<run name> probability' by default")
    instances_layer = serializers.CharField(
        max_length=200, required=False, default="",
        help_text="name of the new instance layer; '<run name> synapses' by default")
    roi = serializers.ListField(
        child=serializers.IntegerField(min_value=0), min_length=6, max_length=6,
        required=False, allow_null=True, default=None,
        help_text="region of interest z0, y0, x0, z1, y1, x1 (voxels, half-open); all by default")
    block_shape = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=4096), min_length=3,
        max_length=3, default=[32, 256, 256],
        help_text="z, y, x voxels per block (rounded up to the classifier grid)")
    high = serializers.FloatField(min_value=0, max_value=1, default=0.8,
                                  help_text="seed threshold of the hysteresis")
    low = serializers.FloatField(min_value=0, max_value=1, default=0.5,
                                 help_text="extent threshold of the hysteresis")
    min_size = serializers.IntegerField(min_value=1, default=1, help_text="voxels")
    min_score = serializers.FloatField(min_value=0, max_value=1, default=0.0,
                                       help_text="minimum mean probability of an instance")
    queue = serializers.ChoiceField(choices=["cpu", "gpu"], default="cpu",
                                    help_text="queue of the block tasks")
    max_attempts = serializers.IntegerField(
        min_value=1, max_value=20, default=3,
        help_text="attempts per block on transient errors before the job fails")

    def validate(self, attrs):
        if attrs["low"] > attrs["high"]:
            raise serializers.ValidationError(
                {"low": f"the low threshold {attrs['low']} is above the high one {attrs['high']}"})
        roi = attrs.get("roi")
        if roi is not None and any(a >= b for a, b in zip(roi[:3], roi[3:])):
            raise serializers.ValidationError({"roi": f"empty region {roi}"})
        return attrs


@register_job("detect_synapses", parameters=DetectSynapsesParameters, block=detection_block,
              finish=detection_finish, writes=detection_writes)
def run_detect_synapses(job, params, progress):
    """Detect synapses block-wise on the workers; store the layers and a synapse run."""
    if job.dataset is None:
        raise ValueError(f"{job.kind} job {job.pk} has no dataset")
    return detection_plan(job, params)
