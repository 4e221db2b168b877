"""Human verdicts on synapses."""

from django.conf import settings
from django.db import models

from connectome.synapses.models import Synapse

# A verdict is any review state but "unreviewed"; the synapse's review_state mirrors its
# latest verdict, so both share one list.
VERDICT_CHOICES = [
    (value, label) for value, label in Synapse.ReviewState.choices
    if value != Synapse.ReviewState.UNREVIEWED
]


class Review(models.Model):
    synapse = models.ForeignKey("synapses.Synapse", on_delete=models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="reviews"
    )
    verdict = models.CharField(max_length=16, choices=VERDICT_CHOICES)
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
