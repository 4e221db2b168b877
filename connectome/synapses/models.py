"""Synapses and the runs (imports, detections) that produced them."""

from django.db import models

from connectome.common.validators import validate_name


class SynapseRun(models.Model):
    """One batch of synapses: an import of a table or one detection/assignment run.

    Re-running replaces the synapses of a run atomically; queries can select runs.
    """

    dataset = models.ForeignKey(
        "datasets.Dataset", on_delete=models.CASCADE, related_name="synapse_runs"
    )
    name = models.CharField(max_length=200, validators=[validate_name])
    method = models.CharField(max_length=100, help_text="e.g. import:cnapse, ground_truth")
    parameters = models.JSONField(default=dict, blank=True)
    source_path = models.CharField(max_length=1000, blank=True)
    job = models.ForeignKey(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="synapse_runs"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["dataset", "-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "name"], name="unique_run_name")
        ]

    def __str__(self):
        return f"{self.dataset.name}/{self.name}"


class Synapse(models.Model):
    class Kind(models.TextChoices):
        CHEMICAL = "chemical"
        ELECTRICAL = "electrical"

    class ReviewState(models.TextChoices):
        UNREVIEWED = "unreviewed"
        CONFIRMED = "confirmed"
        NOT_SYNAPSE = "not_synapse", "not a synapse"
        WRONG_PARTNER = "wrong_partner", "wrong partner"
        WRONG_DIRECTION = "wrong_direction", "wrong direction"
        UNSURE = "unsure"

    class Flag(models.TextChoices):
        # The values of detection.partners.records.FLAGS.
        NONE = "", "none"
        SELF_CONTACT = "self_contact", "self contact"
        BACKGROUND = "background", "background"

    # No index of its own: the table's composite indexes all start with the dataset.
    dataset = models.ForeignKey("datasets.Dataset", on_delete=models.CASCADE,
                                related_name="synapses", db_index=False)
    run = models.ForeignKey(SynapseRun, on_delete=models.CASCADE, related_name="synapses")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.CHEMICAL)
    # Null partner = unassigned (or background in the source table).
    pre = models.ForeignKey(
        "cells.Cell", null=True, blank=True, on_delete=models.PROTECT, related_name="outgoing"
    )
    post = models.ForeignKey(
        "cells.Cell", null=True, blank=True, on_delete=models.PROTECT, related_name="incoming"
    )
    # Polyadic synapses: one presynaptic site with several partners are rows sharing site_id.
    site_id = models.BigIntegerField(null=True, blank=True)
    post_site_id = models.BigIntegerField(null=True, blank=True)
    external_id = models.BigIntegerField(null=True, blank=True, help_text="id in the source table")
    # Points in nm, (z, y, x); null for connectomes imported without geometry.
    pre_z = models.FloatField(null=True, blank=True)
    pre_y = models.FloatField(null=True, blank=True)
    pre_x = models.FloatField(null=True, blank=True)
    post_z = models.FloatField(null=True, blank=True)
    post_y = models.FloatField(null=True, blank=True)
    post_x = models.FloatField(null=True, blank=True)
    ctr_z = models.FloatField(null=True, blank=True)
    ctr_y = models.FloatField(null=True, blank=True)
    ctr_x = models.FloatField(null=True, blank=True)
    size_voxels = models.FloatField(null=True, blank=True)
    size_nm3 = models.FloatField(null=True, blank=True)
    contact_area_nm2 = models.FloatField(null=True, blank=True)
    confidence = models.FloatField(null=True, blank=True)
    weight = models.FloatField(
        null=True, blank=True,
        help_text="partner share of the site, e.g. diffusion arrival share",
    )
    # Flagged rows are kept as evidence about the segmentation but are not connections.
    flag = models.CharField(max_length=16, choices=Flag.choices, default=Flag.NONE, blank=True)
    method = models.CharField(max_length=100, blank=True)
    review_state = models.CharField(
        max_length=16, choices=ReviewState.choices, default=ReviewState.UNREVIEWED
    )

    class Meta:
        indexes = [
            models.Index(fields=["dataset", "pre"], name="synapse_dataset_pre"),
            models.Index(fields=["dataset", "post"], name="synapse_dataset_post"),
            models.Index(fields=["dataset", "site_id"], name="synapse_dataset_site"),
            # Portable bounding-box index; PostgreSQL also gets a GiST index on the centre's
            # (x, y) point (migration 0006).
            models.Index(fields=["dataset", "ctr_z", "ctr_y", "ctr_x"], name="synapse_dataset_ctr"),
            # The review queue's lowest-confidence-first walk over what is left to review.
            models.Index(fields=["dataset", "confidence", "id"], name="synapse_unreviewed_queue",
                         condition=models.Q(review_state="unreviewed")),
            # Reviewed synapses are few: the precision estimate reads them alone.
            models.Index(fields=["dataset", "review_state"], name="synapse_reviewed",
                         condition=~models.Q(review_state="unreviewed")),
        ]

    def __str__(self):
        return f"synapse {self.pk}: {self.pre_id} -> {self.post_id}"
