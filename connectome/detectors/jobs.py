"""The ``train_detector`` job kind: train a synapse detector on annotated layers, with
cross-validated figures and a calibrated post-processing, and store it as a DetectorModel.

Everything that can be known before training is refused at submission, naming the dataset and
layer: a layer of another dataset or of the wrong kind, a label layer whose shape is not its
EM layer's, datasets whose voxel sizes cannot be brought to one pixel, labels without a
synapse or without a non-synapse voxel, and a user who is not an admin of every source.
"""

from rest_framework import serializers

from connectome.common.validators import validate_name
from connectome.datasets.services import remove_staged, staging_path
from connectome.detectors.services import detector_store
from connectome.detectors.sources import (
    CONVENTIONS,
    check_labels,
    resolve_source,
    training_volume,
    training_voxel_size,
)
from connectome.jobs.registry import register_job
from connectome.jobs.services import JobConflict
from detection.errors import InputError


class TrainingSourceParameters(serializers.Serializer):
    dataset = serializers.IntegerField()
    em_layer = serializers.IntegerField()
    labels_layer = serializers.IntegerField()
    convention = serializers.ChoiceField(
        choices=CONVENTIONS, help_text="ccboost: 255 synapse, 0 not, other unknown; binary: "
                                       "nonzero synapse; instances: nonzero ids, one per synapse")
    ignore_layer = serializers.IntegerField(required=False, allow_null=True, default=None,
                                            help_text="nonzero voxels are neither")
    roi = serializers.ListField(
        child=serializers.IntegerField(min_value=0), min_length=6, max_length=6,
        required=False, allow_null=True, default=None,
        help_text="region z0, y0, x0, z1, y1, x1 (voxels, half-open); all by default")


class TrainDetectorParameters(serializers.Serializer):
    name = serializers.CharField(max_length=200, validators=[validate_name],
                                 help_text="detector name; each training makes its next version")
    detector = serializers.ChoiceField(choices=["trees", "network"], default="trees")
    sources = serializers.ListField(child=TrainingSourceParameters(), min_length=1,
                                    max_length=50)
    folds = serializers.IntegerField(min_value=2, max_value=10, default=3,
                                     help_text="spatial cross-validation folds per volume")
    iterations = serializers.IntegerField(min_value=1, max_value=1_000_000, required=False,
                                          allow_null=True, default=None,
                                          help_text="network: training iterations")
    n_estimators = serializers.IntegerField(min_value=1, max_value=5000, required=False,
                                            allow_null=True, default=None,
                                            help_text="trees: boosted trees per model")
    max_samples = serializers.IntegerField(min_value=1000, max_value=10_000_000, required=False,
                                           allow_null=True, default=None,
                                           help_text="trees: most training voxels per model")
    seed = serializers.IntegerField(min_value=0, max_value=2**31 - 1, default=0)

    def validate(self, attrs):
        user = self.context.get("user")
        sources = []
        for index, spec in enumerate(attrs["sources"]):
            try:
                sources.append(resolve_source(spec, user=user))
            except InputError as exc:
                raise serializers.ValidationError({"sources": {index: [str(exc)]}}) from None
        seen = set()
        for index, source in enumerate(sources):
            key = (source.labels.pk, source.roi)
            if key in seen:
                raise serializers.ValidationError({"sources": {index: [
                    f"{source.name} is given twice"]}})
            seen.add(key)
        try:
            training_voxel_size(sources)
        except InputError as exc:
            raise serializers.ValidationError({"sources": [str(exc)]}) from None
        for index, source in enumerate(sources):
            try:
                check_labels(source)
            except InputError as exc:
                raise serializers.ValidationError({"sources": {index: [str(exc)]}}) from None
        return attrs


def _train_writes(dataset, params):
    """A training locks its detector's name on the job's dataset, which must be a source."""
    if dataset.pk not in {s["dataset"] for s in params["sources"]}:
        raise JobConflict("train_detector", f"dataset '{dataset.name}' is not one of the "
                                            "training sources; submit the job on one of them")
    return [f"detector '{params['name']}'"]


def detector_options(params: dict):
    """The library's :class:`~detection.synapses.training.DetectorOptions` of the parameters."""
    from dataclasses import replace

    from detection.synapses.cnn import CnnParameters
    from detection.synapses.training import DetectorOptions

    options = DetectorOptions(detector=params["detector"], folds=params["folds"],
                              seed=params["seed"])
    trees = {k: params[k] for k in ("n_estimators", "max_samples") if params.get(k)}
    if trees:
        options.trees = replace(options.trees, **trees)
    if params.get("iterations"):
        options.network = CnnParameters(iterations=params["iterations"])
    return options


@register_job("train_detector", parameters=TrainDetectorParameters, writes=_train_writes)
def run_train_detector(job, params, progress):
    """Train a synapse detector with cross-validation; store it as a detector model."""
    from detection.synapses.training import train_detector

    if job.dataset is None:
        raise InputError(f"{job.kind} job {job.pk} has no dataset")
    # Checked again here: layers may have gone since the job was submitted.
    sources = [resolve_source(spec) for spec in params["sources"]]
    progress.update(0, 1, f"reading {len(sources)} training volume(s)")
    volumes = [training_volume(source) for source in sources]
    options = detector_options(params)

    def report(done, total, message=None):
        progress.update(done, total, message)  # raises JobCancelled on a cancel

    model = train_detector(volumes, options, progress=report)
    del volumes
    staged = staging_path(dataset=job.dataset, job=job)
    try:
        staged.mkdir()
        path = model.save(staged / "model.bin")
        record = detector_store(
            name=params["name"], kind=params["detector"], model=model, staged=path,
            sources=[s.to_json() for s in sources],
            datasets=sorted({s.dataset.pk for s in sources}),
            parameters={**params, "options": options.to_dict()}, user=job.created_by, job=job)
    finally:
        remove_staged(staged)
    pooled = record.pooled()
    return {"detector_id": record.pk, "name": record.name, "version": record.version,
            "precision": pooled.get("precision"), "recall": pooled.get("recall"),
            "f1": pooled.get("f1"), "f1_interval": pooled.get("f1_interval"),
            "calibration": (record.calibration or {}).get("description")}
