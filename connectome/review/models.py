"""Human verdicts on synapses."""

from django.conf import settings
from django.db import models


class Review(models.Model):
    class Verdict(models.TextChoices):
        CONFIRMED = "confirmed"
        NOT_SYNAPSE = "not_synapse", "not a synapse"
        WRONG_PARTNER = "wrong_partner", "wrong partner"
        WRONG_DIRECTION = "wrong_direction", "wrong direction"
        UNSURE = "unsure"

    synapse = models.ForeignKey("synapses.Synapse", on_delete=models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="reviews"
    )
    verdict = models.CharField(max_length=16, choices=Verdict.choices)
    corrected_pre = models.ForeignKey(
        "cells.Cell", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    corrected_post = models.ManyToManyField("cells.Cell", blank=True, related_name="+")
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["synapse", "-created_at"], name="review_synapse_time")]

    def __str__(self):
        return f"{self.verdict} on synapse {self.synapse_id} by {self.reviewer}"
