"""The admin form that starts a detection job on a dataset."""

from django import forms

from connectome.datasets.models import Dataset, Layer
from connectome.detectors.models import DetectorModel
from connectome.detectors.selectors import detectors_visible_to
from connectome.jobs.services import (
    JobParameterError,
    job_check_conflicts,
    job_validate_parameters,
)

KINDS = [("detect_synapses", "detect synapses"),
         ("detect_and_assign", "detect synapses, then assign their partners")]


def _numbers(text: str, count: int, field: str) -> list[int] | None:
    if not text.strip():
        return None
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise forms.ValidationError({field: f"expected {count} whole numbers"}) from None
    if len(values) != count:
        raise forms.ValidationError({field: f"expected {count} whole numbers, got {len(values)}"})
    return values


class DetectionForm(forms.Form):
    kind = forms.ChoiceField(choices=KINDS)
    method = forms.ChoiceField(choices=[("voxel_classifier", "voxel classifier")])
    model_id = forms.ModelChoiceField(
        queryset=detectors_visible_to(None).none(), required=False, label="detector",
        help_text="a trained detector (train_detector jobs); or give a model file")
    model = forms.CharField(required=False,
                            help_text="or a model file, as the workers see it")
    em_layer = forms.ModelChoiceField(queryset=Layer.objects.none(), label="EM layer")
    run_name = forms.CharField(max_length=200, help_text="synapse run of the detections")
    roi = forms.CharField(required=False, label="region of interest",
                          help_text="z0 y0 x0 z1 y1 x1 in voxels (half-open); empty: everything")
    block_shape = forms.CharField(initial="32 256 256", help_text="z y x voxels per block")
    high = forms.FloatField(required=False, min_value=0, max_value=1,
                            help_text="seed threshold; empty: the model's calibration")
    low = forms.FloatField(required=False, min_value=0, max_value=1,
                           help_text="extent threshold; empty: the model's calibration")
    min_size = forms.IntegerField(required=False, min_value=1,
                                  help_text="voxels; empty: the model's calibration")
    min_score = forms.FloatField(required=False, min_value=0, max_value=1,
                                 help_text="minimum mean probability of an instance; empty: "
                                           "the model's calibration")
    queue = forms.ChoiceField(choices=[("cpu", "cpu"), ("gpu", "gpu")],
                              help_text="queue of the block tasks")
    assign_method = forms.ChoiceField(
        required=False, choices=[("", "-"), ("vesicle", "vesicle"), ("diffusion", "diffusion"),
                                 ("contact", "contact")],
        help_text="detect then assign: the partner-assignment method")
    segmentation_layer = forms.ModelChoiceField(queryset=Layer.objects.none(), required=False)
    presynaptic_layer = forms.ModelChoiceField(
        queryset=Layer.objects.none(), required=False,
        help_text="vesicle and diffusion methods; none: the detection's own vesicle map (a "
                  "network with a vesicle head)")
    interface_model = forms.CharField(required=False, help_text="contact method")

    def __init__(self, *args, dataset: Dataset, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.dataset, self.user = dataset, user
        self.fields["model_id"].queryset = detectors_visible_to(user).filter(
            kind__in=DetectorModel.SYNAPSE_KINDS).order_by("name", "version")
        layers = Layer.objects.filter(dataset=dataset)
        self.fields["em_layer"].queryset = layers.filter(kind=Layer.Kind.EM)
        self.fields["segmentation_layer"].queryset = layers.filter(kind=Layer.Kind.SEGMENTATION)
        self.fields["presynaptic_layer"].queryset = layers.filter(
            kind__in=[Layer.Kind.PREDICTION, Layer.Kind.MASK])

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        parameters = {
            "method": data["method"], "model": data["model"] or None,
            "model_id": getattr(data["model_id"], "pk", None), "em_layer": data["em_layer"].pk,
            "run_name": data["run_name"], "roi": _numbers(data["roi"], 6, "roi"),
            "block_shape": _numbers(data["block_shape"], 3, "block_shape"),
            "high": data["high"], "low": data["low"], "min_size": data["min_size"],
            "min_score": data["min_score"], "queue": data["queue"],
        }
        if data["kind"] == "detect_and_assign":
            parameters.update({
                "assign_method": data["assign_method"],
                "segmentation_layer": getattr(data["segmentation_layer"], "pk", None),
                "presynaptic_layer": getattr(data["presynaptic_layer"], "pk", None),
                "interface_model": data["interface_model"] or None,
            })
        try:
            data["parameters"] = job_validate_parameters(kind=data["kind"], parameters=parameters,
                                                         user=self.user)
            job_check_conflicts(kind=data["kind"], parameters=data["parameters"],
                                dataset=self.dataset)
        except JobParameterError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return data
