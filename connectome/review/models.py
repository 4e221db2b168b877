"""Human verdicts on synapses, and the review queue's claims and skips."""

from django.conf import settings
from django.db import models

from connectome.synapses.models import Synapse

# A verdict is any review state but "unreviewed"; the synapse's review_state mirrors its
# latest verdict, so both share one list.
VERDICT_CHOICES = [
    (value, label) for value, label in Synapse.ReviewState.choices
    if value != Synapse.ReviewState.UNREVIEWED
]


class QueueOrder(models.TextChoices):
    """How the review queue orders synapses: lowest confidence first, or a seeded random sample
    (the one whose verdicts estimate precision without bias)."""

    CONFIDENCE = "confidence"
    RANDOM = "random"


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
    note = models.TextField(blank=True, max_length=2000)
    # The queue order the synapse was served in; blank when it was reviewed outside the queue.
    order = models.CharField(max_length=16, choices=QueueOrder.choices, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["synapse", "-created_at"], name="review_synapse_time")]

    def __str__(self):
        return f"{self.verdict} on synapse {self.synapse_id} by {self.reviewer}"


class ReviewClaim(models.Model):
    """A synapse handed to one reviewer by the queue, so nobody else gets it until the claim
    expires or the reviewer gives a verdict or skips it.

    One claim per synapse (the unique key is what makes claiming race-free); rows whose
    ``expires_at`` is past count as absent and are deleted when the synapse is claimed again.
    """

    synapse = models.OneToOneField(
        "synapses.Synapse", on_delete=models.CASCADE, related_name="review_claim"
    )
    dataset = models.ForeignKey("datasets.Dataset", on_delete=models.CASCADE, related_name="+")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="review_claims"
    )
    # Blank for a synapse claimed again by an undo of a verdict given outside the queue.
    order = models.CharField(max_length=16, choices=QueueOrder.choices, blank=True, default="")
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["dataset", "reviewer"], name="review_claim_reviewer")]

    def __str__(self):
        return f"synapse {self.synapse_id} claimed by {self.reviewer} until {self.expires_at}"


class ReviewSkip(models.Model):
    """A synapse a reviewer passed over: the queue does not offer it to them again."""

    synapse = models.ForeignKey(
        "synapses.Synapse", on_delete=models.CASCADE, related_name="review_skips"
    )
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="review_skips"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["synapse", "reviewer"], name="unique_review_skip")
        ]

    def __str__(self):
        return f"synapse {self.synapse_id} skipped by {self.reviewer}"


class ReviewableCount(models.Model):
    """How many synapses the review queue serves (unflagged, both partners set) per dataset,
    run and review state.

    On PostgreSQL, statement triggers on the synapse table keep the counts as synapses are
    inserted, changed, deleted or truncated (migration 0003), so the queue's progress is a
    handful of rows instead of a count over millions of synapses; on SQLite it is not kept
    and the progress counts the synapses. Plain ids, not foreign keys: the triggers update
    the rows while Django deletes runs and datasets.
    """

    dataset_id = models.BigIntegerField()
    run_id = models.BigIntegerField()
    review_state = models.CharField(max_length=16)
    synapses = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["dataset_id", "run_id", "review_state"],
                                    name="unique_reviewable_count")
        ]

    def __str__(self):
        return (f"{self.synapses} {self.review_state} synapses of run {self.run_id} "
                f"(dataset {self.dataset_id})")


class ReviewTag(models.Model):
    """A tag on a review (``"membrane"``, ``"blurry"``...): short, lowercase, one row per tag,
    so reviews and synapses filter by tag with a plain join on PostgreSQL and SQLite alike."""

    review = models.ForeignKey(Review, on_delete=models.CASCADE, related_name="tags")
    name = models.CharField(max_length=32)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["review", "name"], name="unique_review_tag")
        ]
        indexes = [models.Index(fields=["name"], name="review_tag_name")]

    def __str__(self):
        return self.name


class DatasetReviewTag(models.Model):
    """One tag of a dataset's tag set. A dataset with a tag set takes only those tags on its
    reviews; a dataset without one takes free tags (validated the same way)."""

    dataset = models.ForeignKey("datasets.Dataset", on_delete=models.CASCADE,
                                related_name="review_tags")
    name = models.CharField(max_length=32)
    description = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "name"], name="unique_dataset_review_tag")
        ]

    def __str__(self):
        return self.name


class ReviewBatch(models.Model):
    """A set of synapses a dataset admin hands to one reviewer: the reviewer's queue serves it
    before anything else (or alone, when the reviewer chooses it), and other reviewers' queues
    leave it out. Claims still keep two reviewers apart within it."""

    dataset = models.ForeignKey("datasets.Dataset", on_delete=models.CASCADE,
                                related_name="review_batches")
    name = models.CharField(max_length=200)
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="review_batches"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    # How the synapses were chosen, for the reader: "run 3, 50 lowest confidence", a box, ids.
    selection = models.CharField(max_length=200, blank=True)
    synapses = models.ManyToManyField("synapses.Synapse", through="ReviewBatchItem",
                                      related_name="review_batches")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["dataset", "reviewer"], name="review_batch_reviewer")]

    def __str__(self):
        return f"{self.name} for {self.reviewer}"


class ReviewBatchItem(models.Model):
    batch = models.ForeignKey(ReviewBatch, on_delete=models.CASCADE, related_name="items")
    synapse = models.ForeignKey("synapses.Synapse", on_delete=models.CASCADE, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["batch", "synapse"], name="unique_review_batch_item")
        ]
        indexes = [models.Index(fields=["synapse"], name="review_batch_item_synapse")]

    def __str__(self):
        return f"synapse {self.synapse_id} in batch {self.batch_id}"
