"""Writes on reviews: verdicts (mirrored in the synapse's review state) and the review queue.

The queue hands each reviewer one synapse at a time and claims it (:class:`ReviewClaim`) so no
other reviewer gets it at once. Claiming is an INSERT that relies on the claim's unique key on
the synapse, inside a savepoint: when two reviewers race for one synapse, the second INSERT
waits for the first transaction and then fails, and the second reviewer takes the next
candidate. That holds on PostgreSQL and SQLite alike and needs no row locks on synapses.
"""

from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.utils import timezone

from connectome.cells.models import Cell
from connectome.datasets.models import Dataset
from connectome.review.models import (
    VERDICT_CHOICES,
    QueueOrder,
    Review,
    ReviewClaim,
    ReviewSkip,
)
from connectome.synapses.models import Synapse, SynapseRun
from detection.errors import InputError

VERDICTS = [value for value, _ in VERDICT_CHOICES]
ORDERS = list(QueueOrder.values)

#: Candidates read per query while claiming; more are read when all of them were taken.
CANDIDATE_BATCH = 20

# The random order's hash works modulo a prime below 2**31, so every product stays below 2**62
# and fits the signed 64-bit integers of PostgreSQL and SQLite.
_PRIME = 2_147_483_647
_MULTIPLIERS = (1_103_515_245 % _PRIME, 69_069, 2_654_435_761 % _PRIME)


def claim_seconds() -> int:
    """How long a claim lives: the ``REVIEW_CLAIM_SECONDS`` setting, 10 minutes by default."""
    return int(getattr(settings, "REVIEW_CLAIM_SECONDS", 600))


@transaction.atomic
def review_create(
    *, synapse: Synapse, reviewer, verdict: str, note: str = "",
    corrected_pre: Cell | None = None, corrected_post=(),
) -> Review:
    """Record a reviewer's verdict and set ``synapse.review_state`` to it (the latest verdict).

    Corrected partners must be cells of the synapse's dataset; they are stored with the review
    and do not change the synapse's partners. The reviewer's claim on the synapse, if any, is
    released, and its queue order is stored with the review.
    """
    if verdict not in VERDICTS:
        raise InputError(f"unknown verdict {verdict!r}; verdicts: {', '.join(VERDICTS)}")
    corrected_post = list(corrected_post)
    for cell in [corrected_pre, *corrected_post]:
        if cell is not None and cell.dataset_id != synapse.dataset_id:
            raise InputError(f"cell {cell.pk} is not in the synapse's dataset")
    order = ""
    if reviewer is not None:
        order = ReviewClaim.objects.filter(synapse=synapse, reviewer=reviewer).values_list(
            "order", flat=True).first() or ""
    # The reviewer's claim, and an expired one of anybody, would only hold a reviewed synapse.
    ReviewClaim.objects.filter(
        Q(reviewer=reviewer) | Q(expires_at__lte=timezone.now()), synapse=synapse,
    ).delete()
    review = Review.objects.create(
        synapse=synapse, reviewer=reviewer, verdict=verdict, note=note,
        corrected_pre=corrected_pre, order=order,
    )
    if corrected_post:
        review.corrected_post.set(corrected_post)
    Synapse.objects.filter(pk=synapse.pk).update(review_state=verdict)
    synapse.review_state = verdict
    return review


def reviewable_synapses(*, dataset: Dataset, run: SynapseRun | int | None = None) -> QuerySet:
    """The synapses the queue serves: unflagged, with both partners set (any review state)."""
    synapses = Synapse.objects.filter(dataset=dataset, flag=Synapse.Flag.NONE,
                                      pre__isnull=False, post__isnull=False)
    if run is not None:
        synapses = synapses.filter(run=run)
    return synapses


def random_rank(seed: int):
    """An integer hash of the synapse id and ``seed``: the random queue order.

    Two rounds of an affine map and a square modulo a prime: stable for a seed, different
    between seeds, and plain integer SQL on PostgreSQL and SQLite (no ``ORDER BY random()``).
    """
    a, b, c = _MULTIPLIERS
    shift = (int(seed) * c + 12_345) % _PRIME
    x = ((F("id") % _PRIME) * a + shift) % _PRIME
    x = (x * x + shift) % _PRIME
    x = (x * b + shift) % _PRIME
    return (x * x) % _PRIME


def _live(claims: QuerySet, now) -> QuerySet:
    return claims.filter(expires_at__gt=now)


def _queue(*, dataset, reviewer, run, order: str, seed: int, now) -> QuerySet[Synapse]:
    taken = _live(ReviewClaim.objects.filter(synapse=OuterRef("pk")), now)
    skipped = ReviewSkip.objects.filter(synapse=OuterRef("pk"), reviewer=reviewer)
    synapses = (
        reviewable_synapses(dataset=dataset, run=run)
        .filter(review_state=Synapse.ReviewState.UNREVIEWED)
        .exclude(Exists(taken)).exclude(Exists(skipped))
    )
    if order == QueueOrder.CONFIDENCE:
        return synapses.order_by(F("confidence").asc(nulls_last=True), "id")
    return synapses.alias(rank=random_rank(seed)).order_by("rank", "id")


class _Reviewed(Exception):
    """The candidate got a verdict between reading the queue and claiming it."""


def _try_claim(
    *, synapse: Synapse, reviewer, order: str, now, unreviewed: bool = True,
) -> ReviewClaim | None:
    """Claim ``synapse`` for ``reviewer``, or None when someone else holds a live claim (or,
    with ``unreviewed``, when it has a verdict by now).

    An expired claim is deleted first; the INSERT relies on the unique key on the synapse, so a
    concurrent claim of the same synapse makes one of the two fail (inside a savepoint). A
    verdict releases its claim in the transaction that sets the review state, so once the
    INSERT went through, a fresh read of the state tells whether the verdict came first.
    """
    expires_at = now + timedelta(seconds=claim_seconds())
    try:
        with transaction.atomic():
            ReviewClaim.objects.filter(synapse=synapse, expires_at__lte=now).delete()
            claim = ReviewClaim.objects.create(
                synapse=synapse, dataset_id=synapse.dataset_id, reviewer=reviewer, order=order,
                expires_at=expires_at,
            )
            if unreviewed and not Synapse.objects.filter(
                    pk=synapse.pk, review_state=Synapse.ReviewState.UNREVIEWED).exists():
                raise _Reviewed
            return claim
    except (IntegrityError, _Reviewed):
        return None


def _release_other_claims(*, dataset, reviewer, keep: int | None = None):
    claims = ReviewClaim.objects.filter(dataset=dataset, reviewer=reviewer)
    if keep is not None:
        claims = claims.exclude(synapse_id=keep)
    claims.delete()


def reviewer_claim(*, dataset: Dataset, reviewer, run=None) -> ReviewClaim | None:
    """The reviewer's live claim in the dataset (in ``run`` when given), newest first."""
    claims = _live(ReviewClaim.objects.filter(dataset=dataset, reviewer=reviewer),
                   timezone.now())
    if run is not None:
        claims = claims.filter(synapse__run=run)
    return claims.select_related("synapse").order_by("-created_at", "-id").first()


@transaction.atomic
def review_next(
    *, dataset: Dataset, reviewer, run: SynapseRun | int | None = None,
    order: str = QueueOrder.CONFIDENCE, seed: int = 0,
) -> Synapse | None:
    """The synapse this reviewer should review next, claimed for them; None when none is left.

    The reviewer's live claim comes back as it is (its expiry renewed), so a reload shows the
    same synapse. Otherwise the next unreviewed, unflagged synapse with both partners that
    nobody else holds a live claim on and this reviewer did not skip, in ``order``:
    ``"confidence"`` (lowest first, synapses without one last, then by id) or ``"random"`` (a
    hash of id and ``seed``: the same sequence for the same seed). Each row of a polyadic site
    is its own item. The reviewer's other claims in the dataset are released.
    """
    if order not in ORDERS:
        raise InputError(f"unknown order {order!r}; orders: {', '.join(ORDERS)}")
    now = timezone.now()
    claim = reviewer_claim(dataset=dataset, reviewer=reviewer, run=run)
    if claim is not None:
        ReviewClaim.objects.filter(pk=claim.pk).update(
            expires_at=now + timedelta(seconds=claim_seconds()))
        _release_other_claims(dataset=dataset, reviewer=reviewer, keep=claim.synapse_id)
        return claim.synapse
    _release_other_claims(dataset=dataset, reviewer=reviewer)
    queue = _queue(dataset=dataset, reviewer=reviewer, run=run, order=order, seed=seed, now=now)
    while True:
        candidates = list(queue[:CANDIDATE_BATCH])
        if not candidates:
            return None
        for synapse in candidates:
            if _try_claim(synapse=synapse, reviewer=reviewer, order=order, now=now):
                return synapse
        # Every candidate was claimed meanwhile; the next read leaves those out.


def review_upcoming(
    *, dataset: Dataset, reviewer, run: SynapseRun | int | None = None,
    order: str = QueueOrder.CONFIDENCE, seed: int = 0, limit: int = 1,
) -> list[Synapse]:
    """The ``limit`` synapses the queue would hand this reviewer after their claim, in order;
    not claimed (another reviewer may still get one first), so a page can load them ahead."""
    if order not in ORDERS:
        raise InputError(f"unknown order {order!r}; orders: {', '.join(ORDERS)}")
    if limit <= 0:
        return []
    queue = _queue(dataset=dataset, reviewer=reviewer, run=run, order=order, seed=seed,
                   now=timezone.now())
    return list(queue[:limit])


@transaction.atomic
def review_skip(*, synapse: Synapse, reviewer) -> None:
    """Release the reviewer's claim on ``synapse`` and never offer it to them again (others
    still get it)."""
    ReviewClaim.objects.filter(synapse=synapse, reviewer=reviewer).delete()
    ReviewSkip.objects.get_or_create(synapse=synapse, reviewer=reviewer)


@transaction.atomic
def review_undo(*, dataset: Dataset, reviewer) -> Synapse | None:
    """Take back the reviewer's most recent verdict in the dataset; None when there is none.

    The review is deleted, the synapse's ``review_state`` goes back to its latest remaining
    verdict (``unreviewed`` when none is left), and the synapse is claimed for the reviewer
    again, unless someone else holds a live claim on it. Returns the synapse.
    """
    review = (
        Review.objects.filter(synapse__dataset=dataset, reviewer=reviewer)
        .select_related("synapse").order_by("-created_at", "-id").first()
    )
    if review is None:
        return None
    synapse = review.synapse
    review.delete()
    previous = (
        Review.objects.filter(synapse=synapse).order_by("-created_at", "-id")
        .values_list("verdict", flat=True).first()
    )
    synapse.review_state = previous or Synapse.ReviewState.UNREVIEWED
    Synapse.objects.filter(pk=synapse.pk).update(review_state=synapse.review_state)
    _release_other_claims(dataset=dataset, reviewer=reviewer)
    _try_claim(synapse=synapse, reviewer=reviewer, order=review.order, now=timezone.now(),
               unreviewed=False)
    return synapse
