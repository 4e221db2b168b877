"""Reads on reviews: how far the review of a dataset is, and the precision it measures."""

from math import sqrt
from statistics import NormalDist

from django.db import connection
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from connectome.datasets.models import Dataset
from connectome.review.models import (
    DatasetReviewTag,
    QueueOrder,
    Review,
    ReviewableCount,
    ReviewBatch,
    ReviewBatchItem,
    ReviewClaim,
    ReviewTag,
)
from connectome.review.services import VERDICTS, reviewable_synapses
from connectome.synapses.models import Synapse
from detection.errors import InputError

State = Synapse.ReviewState
#: Verdicts that say the synapse exists (its partners or direction may still be wrong).
SYNAPSE_VERDICTS = (State.CONFIRMED, State.WRONG_PARTNER, State.WRONG_DIRECTION)
#: Verdicts that decide something; ``unsure`` does not.
DECIDED_VERDICTS = (*SYNAPSE_VERDICTS, State.NOT_SYNAPSE)


def review_progress(*, dataset: Dataset, run=None) -> dict:
    """Counts over the synapses the queue serves (unflagged, both partners set; ``run`` when
    given): ``total``, ``reviewed``, ``unreviewed``, ``verdicts`` (synapses per latest verdict)
    and ``claimed`` (live claims now). Two queries: the synapses per review state, and the
    live claims (a small table) joined to their synapses.

    On PostgreSQL the synapses per state are the rows of :class:`ReviewableCount` that
    triggers keep (a few rows per run); elsewhere a GROUP BY over the synapses.
    """
    synapses = reviewable_synapses(dataset=dataset, run=run)
    states = _synapses_per_state(dataset=dataset, run=run, synapses=synapses)
    claimed = ReviewClaim.objects.filter(
        dataset=dataset, expires_at__gt=timezone.now(), synapse__in=synapses).count()
    verdicts = {verdict: states.get(verdict, 0) for verdict in VERDICTS}
    reviewed = sum(verdicts.values())
    total = reviewed + states.get(Synapse.ReviewState.UNREVIEWED, 0)
    return {"total": total, "reviewed": reviewed, "unreviewed": total - reviewed,
            "verdicts": verdicts, "claimed": claimed}


def _synapses_per_state(*, dataset: Dataset, run, synapses) -> dict[str, int]:
    if connection.vendor == "postgresql":
        counts = ReviewableCount.objects.filter(dataset_id=dataset.pk)
        if run is not None:
            counts = counts.filter(run_id=getattr(run, "pk", run))
        return {state: int(n) for state, n in counts.values_list("review_state").annotate(
            n=Sum("synapses")).order_by().values_list("review_state", "n") if n}
    return dict(synapses.values_list("review_state").annotate(n=Count("id")).order_by())


def wilson_interval(successes: int, n: int, *, confidence: float = 0.95) -> dict:
    """The proportion ``successes / n`` with its Wilson score interval at ``confidence``.

    Returns ``n``, ``estimate``, ``low``, ``high``; the last three are None when ``n`` is 0.
    """
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be between 0 and 1; got {confidence}")
    if n == 0:
        return {"n": 0, "estimate": None, "low": None, "high": None}
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return {"n": n, "estimate": p, "low": max(0.0, centre - half),
            "high": min(1.0, centre + half)}


def precision_estimate(*, dataset: Dataset, run=None, confidence: float = 0.95) -> dict:
    """Precision measured by the verdicts, with Wilson score intervals.

    Over the reviewed synapses the queue serves, by their latest verdict, ``unsure`` left out
    (``decided``): ``synapse`` precision is (confirmed + wrong_partner + wrong_direction) /
    decided (the synapse is real), ``connection`` precision is confirmed / decided (it is real
    and joins the right cells the right way). ``random_order`` counts the decided synapses
    whose latest verdict was given in the random queue order: only a random sample estimates
    precision without bias; lowest-confidence-first reviews underestimate it.
    """
    latest_order = Subquery(
        Review.objects.filter(synapse=OuterRef("pk")).order_by("-created_at", "-id")
        .values("order")[:1]
    )
    decided = reviewable_synapses(dataset=dataset, run=run).filter(
        review_state__in=DECIDED_VERDICTS)
    counts = decided.aggregate(
        decided=Count("id"), real=Count("id", filter=Q(review_state__in=SYNAPSE_VERDICTS)),
        confirmed=Count("id", filter=Q(review_state=State.CONFIRMED)),
    )
    random_order = decided.alias(order=latest_order).filter(order=QueueOrder.RANDOM).count()
    n = counts["decided"]
    return {
        "confidence": confidence, "decided": n, "random_order": random_order,
        "synapse": wilson_interval(counts["real"], n, confidence=confidence),
        "connection": wilson_interval(counts["confirmed"], n, confidence=confidence),
    }


# --- batches and tags ------------------------------------------------------------------------

def review_batches(*, dataset: Dataset | None = None, reviewer=None, datasets=None):
    """Review batches (of ``dataset``, of ``reviewer``, among ``datasets`` when given), oldest
    first, each with ``n_synapses`` and ``n_reviewed`` (its synapses with a verdict, by
    anyone): one query, the counts as subqueries over the batch's items."""
    batches = ReviewBatch.objects.all()
    if dataset is not None:
        batches = batches.filter(dataset=dataset)
    if datasets is not None:
        batches = batches.filter(dataset__in=datasets)
    if reviewer is not None:
        batches = batches.filter(reviewer=reviewer)
    items = ReviewBatchItem.objects.filter(batch=OuterRef("pk")).order_by().values("batch")
    count = items.annotate(n=Count("id")).values("n")[:1]
    reviewed = items.exclude(synapse__review_state=State.UNREVIEWED).annotate(
        n=Count("id")).values("n")[:1]
    return (batches.select_related("reviewer", "dataset")
            .annotate(n_synapses=Coalesce(Subquery(count), 0),
                      n_reviewed=Coalesce(Subquery(reviewed), 0))
            .order_by("created_at", "id"))


def batch_progress(batch: ReviewBatch) -> dict:
    """``{"id", "name", "reviewed", "total"}`` of one batch (two counts over its items)."""
    items = ReviewBatchItem.objects.filter(batch=batch)
    return {"id": batch.pk, "name": batch.name, "total": items.count(),
            "reviewed": items.exclude(synapse__review_state=State.UNREVIEWED).count()}


def reviewer_batch_of(*, synapse: Synapse, reviewer) -> ReviewBatch | None:
    """The reviewer's (oldest) batch that holds ``synapse``, or None."""
    if reviewer is None or not reviewer.is_authenticated:
        return None
    return ReviewBatch.objects.filter(reviewer=reviewer, items__synapse=synapse).order_by(
        "created_at", "id").first()


def review_tag_choices(*, dataset: Dataset, limit: int = 20) -> dict:
    """The tags a reviewer may pick on this dataset: ``{"tag_set": bool, "tags": [names]}``,
    the dataset's tag set when it has one (only those are accepted), else the free tags most
    used on its reviews (any valid tag is accepted)."""
    tag_set = list(DatasetReviewTag.objects.filter(dataset=dataset).values_list("name", flat=True))
    if tag_set:
        return {"tag_set": True, "tags": tag_set}
    used = (ReviewTag.objects.filter(review__synapse__dataset=dataset).values("name")
            .annotate(n=Count("id")).order_by("-n", "name").values_list("name", flat=True))
    return {"tag_set": False, "tags": list(used[:limit])}


def synapses_tagged(*, tags) -> QuerySet:
    """Ids of the synapses with a review that carries any of ``tags`` (lowercased): a subquery
    for ``pk__in``."""
    return (ReviewTag.objects.filter(name__in=[str(tag).lower() for tag in tags])
            .values("review__synapse_id"))
