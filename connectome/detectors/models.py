"""Trained synapse detectors: the model file, where it came from, and how well it did."""

from django.conf import settings
from django.db import models

from connectome.common.validators import validate_name, voxel_size_model_validators


class DetectorModel(models.Model):
    """One trained model: a synapse detector (a ``train_detector`` job makes it) or a cell
    model (kind ``affinities``, a ``train_cell_model`` job makes it).

    A synapse detector's ``figures`` are the cross-validated precision / recall / F1 with
    their 95 % intervals, pooled, per volume and leave-one-volume-out; its ``calibration`` the
    post-processing chosen by that cross-validation (hysteresis, size, split, score), which
    detection jobs use when given no thresholds. A cell model's ``figures`` are the validation
    table (VOI and adapted Rand error per merge threshold) and the threshold chosen on it; its
    ``calibration`` the agglomeration settings the model carries (``model.agglomeration``),
    which ``segment_cells`` jobs use when given no threshold. The file lives under DATA_ROOT
    and is never served.
    """

    class Kind(models.TextChoices):
        TREES = "trees", "voxel classifier (boosted trees)"
        NETWORK = "network", "network (2D U-Net)"
        AFFINITIES = "affinities", "cell model (3D U-Net affinities)"

    #: The kinds that detect synapses (the others segment cells).
    SYNAPSE_KINDS = (Kind.TREES, Kind.NETWORK)

    name = models.CharField(max_length=200, validators=[validate_name])
    version = models.PositiveIntegerField(help_text="1, 2, ... per name")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    voxel_size_z = models.FloatField(validators=voxel_size_model_validators(), help_text="nm")
    voxel_size_y = models.FloatField(validators=voxel_size_model_validators(), help_text="nm")
    voxel_size_x = models.FloatField(validators=voxel_size_model_validators(), help_text="nm")
    sources = models.JSONField(
        default=list, help_text="per training volume: dataset id and name, EM, label and ignore "
                                "layers, label convention, region")
    # The datasets of ``sources``, for visibility: a user sees a detector when they see one
    # of them.
    datasets = models.ManyToManyField("datasets.Dataset", related_name="detector_models",
                                      blank=True)
    parameters = models.JSONField(default=dict, blank=True)
    figures = models.JSONField(default=dict, blank=True,
                               help_text="synapse detectors: cross-validated precision / recall / "
                                         "F1; cell models: the validation table and the "
                                         "threshold chosen on it")
    calibration = models.JSONField(null=True, blank=True,
                                   help_text="synapse detectors: the post-processing chosen by "
                                             "cross-validation; cell models: the "
                                             "agglomeration settings")
    file = models.CharField(max_length=500, unique=True, help_text="relative to DATA_ROOT")
    size = models.PositiveBigIntegerField(help_text="bytes of the file")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="detector_models")
    created_at = models.DateTimeField(auto_now_add=True)
    job = models.ForeignKey("jobs.Job", null=True, blank=True, on_delete=models.SET_NULL,
                            related_name="detector_models", help_text="the training job")

    class Meta:
        ordering = ["name", "version"]
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="unique_detector_version"),
        ]

    def __str__(self):
        return f"{self.name} v{self.version}"

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        return (self.voxel_size_z, self.voxel_size_y, self.voxel_size_x)

    @property
    def path(self):
        return settings.DATA_ROOT / self.file

    def pooled(self) -> dict:
        """The pooled cross-validated figures ({} when there are none)."""
        return (self.figures or {}).get("pooled") or {}
