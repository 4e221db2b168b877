"""Datasets, who may see them, and the volumes (layers) they hold."""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from connectome.common.validators import validate_name, voxel_size_model_validators
from detection.io.sources import VOXEL_SIZE_MAX_NM, VOXEL_SIZE_MIN_NM


def _voxel_size_in_bounds(axis: str) -> models.Q:
    # NaN compares above every number in PostgreSQL (and is stored as NULL by SQLite), so
    # the upper bound refuses NaN as well as infinity.
    field = f"voxel_size_{axis}"
    return models.Q(**{f"{field}__gte": VOXEL_SIZE_MIN_NM, f"{field}__lte": VOXEL_SIZE_MAX_NM})


class Dataset(models.Model):
    name = models.CharField(max_length=200, unique=True, validators=[validate_name])
    description = models.TextField(blank=True)
    voxel_size_z = models.FloatField(validators=voxel_size_model_validators(), help_text="nm")
    voxel_size_y = models.FloatField(validators=voxel_size_model_validators(), help_text="nm")
    voxel_size_x = models.FloatField(validators=voxel_size_model_validators(), help_text="nm")
    # Set by the first volume imported; every later volume must match it.
    shape_z = models.PositiveBigIntegerField(null=True, blank=True)
    shape_y = models.PositiveBigIntegerField(null=True, blank=True)
    shape_x = models.PositiveBigIntegerField(null=True, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="owned_datasets",
    )
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="datasets", blank=True
    )
    is_public = models.BooleanField(default=False)
    # The run the pages and the API show by default (connectome.synapses.selectors.default_run).
    current_run = models.ForeignKey(
        "synapses.SynapseRun", null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
        help_text="the synapse run shown by default; empty: the newest detection run",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=_voxel_size_in_bounds("z") & _voxel_size_in_bounds("y")
                & _voxel_size_in_bounds("x"),
                name="dataset_voxel_size_in_bounds",
                violation_error_message=(
                    f"each of z, y, x of the voxel size must be a finite number from "
                    f"{VOXEL_SIZE_MIN_NM:g} to {VOXEL_SIZE_MAX_NM:g} nm"),
            ),
        ]

    def __str__(self):
        return self.name

    def clean(self):
        super().clean()
        if self.current_run_id is not None and (
                self.pk is None or self.current_run.dataset_id != self.pk):
            raise ValidationError(
                {"current_run": f"run {self.current_run_id} is not a run of this dataset"})

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        return (self.voxel_size_z, self.voxel_size_y, self.voxel_size_x)

    @property
    def shape(self) -> tuple[int, int, int] | None:
        if self.shape_z is None:
            return None
        return (self.shape_z, self.shape_y, self.shape_x)


class Membership(models.Model):
    class Role(models.TextChoices):
        VIEWER = "viewer", "viewer (read)"
        REVIEWER = "reviewer", "reviewer (read, review)"
        ADMIN = "admin", "admin (read, review, run jobs, edit)"

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["dataset", "user"], name="unique_membership")
        ]

    def __str__(self):
        return f"{self.user} is {self.role} of {self.dataset}"


class Layer(models.Model):
    class Kind(models.TextChoices):
        EM = "em", "EM image"
        SEGMENTATION = "segmentation", "segmentation"
        PREDICTION = "prediction", "prediction"
        MASK = "mask", "mask"
        SYNAPSES = "synapses", "synapse instances"

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="layers")
    name = models.CharField(max_length=200, validators=[validate_name])
    kind = models.CharField(max_length=16, choices=Kind.choices)
    dtype = models.CharField(max_length=16)
    shape_z = models.PositiveBigIntegerField()
    shape_y = models.PositiveBigIntegerField()
    shape_x = models.PositiveBigIntegerField()
    chunk_z = models.PositiveIntegerField()
    chunk_y = models.PositiveIntegerField()
    chunk_x = models.PositiveIntegerField()
    storage_format = models.CharField(max_length=16, default="zarr")
    # Relative to DATA_ROOT, so the data root can move between machines.
    storage_path = models.CharField(max_length=500, unique=True)
    downsample_factors = models.JSONField(
        default=list, help_text="per pyramid level, (z, y, x) factor against level 0"
    )
    source_path = models.CharField(max_length=1000, blank=True)
    method = models.CharField(max_length=100, blank=True, help_text="how it was made")
    parameters = models.JSONField(default=dict, blank=True)
    job = models.ForeignKey(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="layers"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["dataset", "name"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "name"], name="unique_layer_name")
        ]

    def __str__(self):
        return f"{self.dataset.name}/{self.name}"

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.shape_z, self.shape_y, self.shape_x)

    @property
    def chunks(self) -> tuple[int, int, int]:
        return (self.chunk_z, self.chunk_y, self.chunk_x)

    @property
    def path(self):
        return settings.DATA_ROOT / self.storage_path
