"""Detection job kinds: block-wise synapse detection, and detection followed by assignment."""

from rest_framework import serializers

from connectome.common.validators import validate_name
from connectome.detectors.models import DetectorModel
from connectome.detectors.selectors import detectors_visible_to
from connectome.imports.parameters import SourcePathField
from connectome.jobs.blocks import Finish
from connectome.jobs.registry import BlockJobParameters, register_job
from connectome.jobs.services import JobConflict, JobParameterError, job_create
from connectome.pipeline.detection import (
    NO_CALIBRATION,
    THRESHOLDS,
    detection_block,
    detection_finish,
    detection_plan,
    detection_writes,
    model_vesicle_refusal,
)
from connectome.synapses.jobs import AssignPartnersParameters
from connectome.synapses.models import SynapseRun
from detection.errors import InputError


class DetectSynapsesParameters(BlockJobParameters):
    method = serializers.ChoiceField(choices=["voxel_classifier"], default="voxel_classifier")
    model_id = serializers.IntegerField(
        required=False, allow_null=True, default=None,
        help_text="a trained detector (/api/detectors/); or give model")
    model = SourcePathField(required=False, allow_null=True, default=None,
                            help_text="a model file on the server (connectome-detect train); "
                                      "or give model_id")
    em_layer = serializers.IntegerField()
    run_name = serializers.CharField(max_length=200, help_text="synapse run of the detections",
                                     validators=[validate_name])
    probability_layer = serializers.CharField(
        max_length=200, required=False, default="", allow_blank=True, validators=[validate_name],
        help_text="name of the new probability layer; '<run name> probability' by default")
    instances_layer = serializers.CharField(
        max_length=200, required=False, default="", allow_blank=True, validators=[validate_name],
        help_text="name of the new instance layer; '<run name> synapses' by default")
    vesicles_layer = serializers.CharField(
        max_length=200, required=False, default="", allow_blank=True, validators=[validate_name],
        help_text="name of the new vesicle map layer, written when the model has a vesicle "
                  "head; '<run name> vesicles' by default")
    roi = serializers.ListField(
        child=serializers.IntegerField(min_value=0), min_length=6, max_length=6,
        required=False, allow_null=True, default=None,
        help_text="region of interest z0, y0, x0, z1, y1, x1 (voxels, half-open); all by default")
    block_shape = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=4096), min_length=3,
        max_length=3, default=[32, 256, 256],
        help_text="z, y, x voxels per block (rounded up to the classifier grid)")
    high = serializers.FloatField(min_value=0, max_value=1, required=False, allow_null=True,
                                  default=None, help_text="seed threshold of the hysteresis; "
                                  "none: the model's calibration")
    low = serializers.FloatField(min_value=0, max_value=1, required=False, allow_null=True,
                                 default=None, help_text="extent threshold of the hysteresis; "
                                 "none: the model's calibration")
    min_size = serializers.IntegerField(min_value=1, required=False, allow_null=True,
                                        default=None,
                                        help_text="voxels; none: the model's calibration")
    min_score = serializers.FloatField(min_value=0, max_value=1, required=False,
                                       allow_null=True, default=None,
                                       help_text="minimum mean probability of an instance; "
                                                 "none: the model's calibration")

    def validate(self, attrs):
        if (attrs.get("model") is None) == (attrs.get("model_id") is None):
            raise serializers.ValidationError(
                {"model_id": ["give exactly one of model_id (a trained detector) and model "
                              "(a model file)"]})
        if attrs.get("model_id") is not None:
            detector = detectors_visible_to(self.context.get("user")).filter(
                pk=attrs["model_id"]).first()
            if detector is None:
                raise serializers.ValidationError(
                    {"model_id": [f"there is no detector {attrs['model_id']} that you can see"]})
            if detector.kind not in DetectorModel.SYNAPSE_KINDS:
                raise serializers.ValidationError({"model_id": [
                    f"'{detector.name}' version {detector.version} (id {detector.pk}) is a "
                    f"cell model ({detector.kind}), not a synapse detector"]})
            if detector.calibration is None and all(attrs.get(k) is None for k in THRESHOLDS):
                raise serializers.ValidationError({"model_id": [
                    f"detector '{detector.name}' version {detector.version} (id {detector.pk}) "
                    f"{NO_CALIBRATION}"]})
        if attrs.get("low") is not None and attrs.get("high") is not None \
                and attrs["low"] > attrs["high"]:
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
        raise InputError(f"{job.kind} job {job.pk} has no dataset")
    return detection_plan(job, params)


class DetectAndAssignParameters(DetectSynapsesParameters):
    assign_method = serializers.ChoiceField(choices=["contact", "vesicle", "diffusion"])
    segmentation_layer = serializers.IntegerField()
    presynaptic_layer = serializers.IntegerField(
        required=False, allow_null=True, default=None,
        help_text="vesicle / presynaptic density map; vesicle and diffusion methods (none: the "
                  "vesicle map of the detection, from a model with a vesicle head)")
    interface_model = SourcePathField(required=False, allow_null=True, default=None,
                                      help_text="interface classifier file; contact method")
    free_layer = serializers.IntegerField(required=False, allow_null=True, default=None)
    assign_options = serializers.DictField(required=False, default=dict)
    assignment_run_name = serializers.CharField(
        max_length=200, required=False, default="", allow_blank=True, validators=[validate_name],
        help_text="synapse run of the partners; '<run name> partners' by default")

    def validate(self, attrs):
        attrs = super().validate(attrs)
        # The assignment step is an assign_partners job: check its parameters now.
        check = AssignPartnersParameters(data=assign_parameters(attrs, sites_layer=0),
                                         context=self.context)
        if not check.is_valid():
            raise serializers.ValidationError(check.errors)
        return attrs


def assign_parameters(params: dict, *, sites_layer: int, vesicles_layer: int | None = None) -> dict:
    """The parameters of the assign_partners job that follows a detection.

    The vesicle and diffusion methods read ``presynaptic_layer`` when one is given, else the
    detection's own vesicle map (``vesicles_layer``, from a model with a vesicle head).
    """
    presynaptic = params.get("presynaptic_layer")
    if presynaptic is None and needs_presynaptic(params):
        presynaptic = vesicles_layer
    return {
        "method": params["assign_method"], "sites_layer": sites_layer,
        "segmentation_layer": params["segmentation_layer"],
        "run_name": assignment_run_name(params),
        "presynaptic_layer": presynaptic, "em_layer": params["em_layer"],
        "interface_model": params.get("interface_model"), "free_layer": params.get("free_layer"),
        "options": params.get("assign_options") or {},
    }


def needs_presynaptic(params: dict) -> bool:
    return params["assign_method"] in ("vesicle", "diffusion")


def assignment_run_name(params: dict) -> str:
    return params.get("assignment_run_name") or f"{params['run_name']} partners"


def _detect_and_assign_writes(dataset, params):
    name = assignment_run_name(params)
    if SynapseRun.objects.filter(dataset=dataset, name=name).exists():
        raise JobConflict("detect_and_assign",
                          f"dataset '{dataset.name}' already has a synapse run named '{name}'")
    writes = detection_writes(dataset, params)
    if needs_presynaptic(params) and params.get("presynaptic_layer") is None:
        # detection_writes has read the model (refusing one that cannot be read).
        refusal = model_vesicle_refusal(params, dataset.voxel_size)
        if refusal is not None:
            raise JobParameterError("detect_and_assign", {"presynaptic_layer": [refusal]})
    return writes + [f"synapse run '{name}'"]


def _detect_and_assign_finish(job, params, say):
    detected = detection_finish(job, params, say)

    def store():
        result = detected.store()
        follow = job_create(kind="assign_partners", dataset=job.dataset, user=job.created_by,
                            parameters=assign_parameters(
                                params, sites_layer=result["instances_layer"],
                                vesicles_layer=result.get("vesicles_layer")),
                            enqueue=False, parent=job)
        return {**result, "then_job": follow.pk}

    return Finish(result=detected.result, store=store, discard=detected.discard)


@register_job("detect_and_assign", parameters=DetectAndAssignParameters,
              block=detection_block, finish=_detect_and_assign_finish,
              writes=_detect_and_assign_writes)
def run_detect_and_assign(job, params, progress):
    """Detect synapses block-wise, then assign their partners in an assign_partners job."""
    if job.dataset is None:
        raise InputError(f"{job.kind} job {job.pk} has no dataset")
    return detection_plan(job, params)
