"""Writes on reviews: verdicts (mirrored in the synapse's review state) and the review queue.

The queue hands each reviewer one synapse at a time and claims it (:class:`ReviewClaim`) so no
other reviewer gets it at once. Claiming is an INSERT that relies on the claim's unique key on
the synapse, inside a savepoint: when two reviewers race for one synapse, the second INSERT
waits for the first transaction and then fails, and the second reviewer takes the next
candidate. That holds on PostgreSQL and SQLite alike and needs no row locks on synapses.
"""

import re
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.utils import timezone

from connectome.cells.models import Cell
from connectome.common.validators import name_problem, printable
from connectome.datasets.models import Dataset, Membership
from connectome.datasets.selectors import has_role
from connectome.review.models import (
    VERDICT_CHOICES,
    DatasetReviewTag,
    QueueOrder,
    Review,
    ReviewBatch,
    ReviewBatchItem,
    ReviewClaim,
    ReviewSkip,
    ReviewTag,
)
from connectome.synapses.models import Synapse, SynapseRun
from connectome.synapses.selectors import filter_in_bbox
from detection.errors import InputError

VERDICTS = [value for value, _ in VERDICT_CHOICES]
ORDERS = list(QueueOrder.values)

#: Candidates read per query while claiming; more are read when all of them were taken.
CANDIDATE_BATCH = 20

# The random order's hash works modulo a prime below 2**31, so every product stays below 2**62
# and fits the signed 64-bit integers of PostgreSQL and SQLite.
_PRIME = 2_147_483_647
_MULTIPLIERS = (1_103_515_245 % _PRIME, 69_069, 2_654_435_761 % _PRIME)


#: The longest note on a verdict, in characters.
NOTE_MAX_LENGTH = 2000
#: At most this many tags on one verdict.
MAX_TAGS = 8
#: A tag: lowercase letters, digits, ``-`` and ``_``, starting with a letter or digit.
TAG_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
TAG_RULE = "1 to 32 lowercase letters, digits, '-' or '_', starting with a letter or digit"
#: The most synapses one review batch holds.
MAX_BATCH_SYNAPSES = 10_000


def claim_seconds() -> int:
    """How long a claim lives: the ``REVIEW_CLAIM_SECONDS`` setting, 10 minutes by default."""
    return int(getattr(settings, "REVIEW_CLAIM_SECONDS", 600))


def review_note_clean(note: str) -> str:
    """``note`` stripped, if it is at most :data:`NOTE_MAX_LENGTH` characters of printable text
    (line breaks and tabs allowed); InputError naming the note otherwise."""
    note = str(note).strip()
    if len(note) > NOTE_MAX_LENGTH:
        raise InputError(f"note is {len(note)} characters long; at most {NOTE_MAX_LENGTH}")
    for number, line in enumerate(note.split("\n"), start=1):
        problem = name_problem(line.replace("\t", " ").removesuffix("\r"))
        if problem is not None:
            problem = problem.replace("names must be", "a note must be")
            raise InputError(f"note line {number} {problem}")
    return note


def review_tags_clean(*, dataset: Dataset, tags) -> list[str]:
    """``tags`` lowercased, without repeats, in the order given: each must match
    :data:`TAG_PATTERN` and, when the dataset has a tag set (:class:`DatasetReviewTag`), be
    one of it; at most :data:`MAX_TAGS`. InputError naming the tag otherwise."""
    cleaned = []
    for tag in tags:
        tag = str(tag).strip().lower()
        if not TAG_PATTERN.fullmatch(tag):
            raise InputError(f"tag '{printable(tag)}' is not a tag: {TAG_RULE}")
        if tag not in cleaned:
            cleaned.append(tag)
    if len(cleaned) > MAX_TAGS:
        raise InputError(f"{len(cleaned)} tags; at most {MAX_TAGS} on one verdict")
    allowed = set(DatasetReviewTag.objects.filter(dataset=dataset).values_list("name", flat=True))
    unknown = [tag for tag in cleaned if allowed and tag not in allowed]
    if unknown:
        raise InputError(f"tag '{unknown[0]}' is not in the tag set of dataset "
                         f"'{dataset.name}': {', '.join(sorted(allowed))}")
    return cleaned


@transaction.atomic
def review_create(
    *, synapse: Synapse, reviewer, verdict: str, note: str = "", tags=(),
    corrected_pre: Cell | None = None, corrected_post=(),
) -> Review:
    """Record a reviewer's verdict and set ``synapse.review_state`` to it (the latest verdict).

    Corrected partners must be cells of the synapse's dataset; they are stored with the review
    and do not change the synapse's partners. The note and tags are checked
    (:func:`review_note_clean`, :func:`review_tags_clean`) and stored with it. The reviewer's
    claim on the synapse, if any, is released, and its queue order is stored with the review.
    """
    if verdict not in VERDICTS:
        raise InputError(f"unknown verdict {verdict!r}; verdicts: {', '.join(VERDICTS)}")
    note = review_note_clean(note)
    tags = review_tags_clean(dataset=synapse.dataset, tags=tags)
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
    ReviewTag.objects.bulk_create([ReviewTag(review=review, name=tag) for tag in tags])
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


def _in_batches(batch_ids: list[int]) -> Exists:
    return Exists(ReviewBatchItem.objects.filter(synapse=OuterRef("pk"), batch_id__in=batch_ids))


def _queue(*, dataset, reviewer, run, order: str, seed: int, now,
           batch_ids: list[int] | None = None) -> QuerySet[Synapse]:
    """The reviewer's queue: in the batches ``batch_ids`` when given (any run), else of
    ``run``; synapses in another reviewer's batch are never in it. The batch conditions are
    left out where there are no batches, so a dataset without any pays nothing for them."""
    taken = _live(ReviewClaim.objects.filter(synapse=OuterRef("pk")), now)
    skipped = ReviewSkip.objects.filter(synapse=OuterRef("pk"), reviewer=reviewer)
    synapses = (
        reviewable_synapses(dataset=dataset, run=run)
        .filter(review_state=Synapse.ReviewState.UNREVIEWED)
        .exclude(Exists(taken)).exclude(Exists(skipped))
    )
    others = list(ReviewBatch.objects.filter(dataset=dataset).exclude(reviewer=reviewer)
                  .values_list("pk", flat=True))
    if others:
        synapses = synapses.exclude(_in_batches(others))
    if batch_ids is not None:
        synapses = synapses.filter(_in_batches(batch_ids))
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


def reviewer_claim(*, dataset: Dataset, reviewer, run=None,
                   batch: ReviewBatch | None = None) -> ReviewClaim | None:
    """The reviewer's live claim in the dataset (in ``batch``, else in ``run``, when given),
    newest first."""
    claims = _live(ReviewClaim.objects.filter(dataset=dataset, reviewer=reviewer),
                   timezone.now())
    if batch is not None:
        claims = claims.filter(synapse__in=batch.synapses.all())
    elif run is not None:
        claims = claims.filter(synapse__run=run)
    return claims.select_related("synapse").order_by("-created_at", "-id").first()


def _claim_first(queue: QuerySet, *, reviewer, order: str, now) -> Synapse | None:
    while True:
        candidates = list(queue[:CANDIDATE_BATCH])
        if not candidates:
            return None
        for synapse in candidates:
            if _try_claim(synapse=synapse, reviewer=reviewer, order=order, now=now):
                return synapse
        # Every candidate was claimed meanwhile; the next read leaves those out.


def _queues(*, dataset, reviewer, run, order: str, seed: int, now,
            batch: ReviewBatch | None = None) -> list[QuerySet[Synapse]]:
    """The reviewer's queue in the order it is served: only ``batch`` when given; else their
    own batches in the dataset (within ``run``) first, then the rest of ``run``."""
    common = {"dataset": dataset, "reviewer": reviewer, "order": order, "seed": seed, "now": now}
    if batch is not None:
        return [_queue(**common, run=None, batch_ids=[batch.pk])]
    own = list(ReviewBatch.objects.filter(dataset=dataset, reviewer=reviewer)
               .values_list("pk", flat=True))
    first = [_queue(**common, run=run, batch_ids=own)] if own else []
    return [*first, _queue(**common, run=run)]


def review_upcoming(
    *, dataset: Dataset, reviewer, run: SynapseRun | int | None = None,
    order: str = QueueOrder.CONFIDENCE, seed: int = 0, limit: int = 1,
    batch: ReviewBatch | None = None,
) -> list[Synapse]:
    """The ``limit`` synapses the queue would hand this reviewer after their claim, in order
    (their batches first, or only ``batch``, as :func:`review_next`); not claimed (another
    reviewer may still get one first), so a page can load them ahead."""
    if order not in ORDERS:
        raise InputError(f"unknown order {order!r}; orders: {', '.join(ORDERS)}")
    if limit <= 0:
        return []
    upcoming, seen = [], set()
    for queue in _queues(dataset=dataset, reviewer=reviewer, run=run, order=order, seed=seed,
                         now=timezone.now(), batch=batch):
        # A later queue may repeat what an earlier one listed (the rest of the run holds the
        # reviewer's own batches too): read enough to make up for it.
        for synapse in queue[:limit + len(upcoming)]:
            if synapse.pk not in seen:
                seen.add(synapse.pk)
                upcoming.append(synapse)
        if len(upcoming) >= limit:
            break
    return upcoming[:limit]


@transaction.atomic
def review_next(
    *, dataset: Dataset, reviewer, run: SynapseRun | int | None = None,
    order: str = QueueOrder.CONFIDENCE, seed: int = 0, batch: ReviewBatch | None = None,
) -> Synapse | None:
    """The synapse this reviewer should review next, claimed for them; None when none is left.

    The reviewer's live claim comes back as it is (its expiry renewed), so a reload shows the
    same synapse. Otherwise the next unreviewed, unflagged synapse with both partners that
    nobody else holds a live claim on, this reviewer did not skip and no other reviewer has in
    a batch, in ``order``: ``"confidence"`` (lowest first, synapses without one last, then by
    id) or ``"random"`` (a hash of id and ``seed``: the same sequence for the same seed).
    The reviewer's own batches in the dataset (:class:`ReviewBatch`, within ``run`` when given)
    come first; with ``batch`` (one of theirs) only that batch, whatever its runs. Each row of
    a polyadic site is its own item. The reviewer's other claims in the dataset are released.
    """
    if order not in ORDERS:
        raise InputError(f"unknown order {order!r}; orders: {', '.join(ORDERS)}")
    if batch is not None and (batch.dataset_id != dataset.pk or batch.reviewer_id != reviewer.pk):
        raise InputError(f"batch {batch.pk} is not one of your batches in dataset "
                         f"'{dataset.name}'")
    now = timezone.now()
    claim = reviewer_claim(dataset=dataset, reviewer=reviewer, run=run, batch=batch)
    if claim is not None:
        ReviewClaim.objects.filter(pk=claim.pk).update(
            expires_at=now + timedelta(seconds=claim_seconds()))
        _release_other_claims(dataset=dataset, reviewer=reviewer, keep=claim.synapse_id)
        return claim.synapse
    _release_other_claims(dataset=dataset, reviewer=reviewer)
    for queue in _queues(dataset=dataset, reviewer=reviewer, run=run, order=order, seed=seed,
                         now=now, batch=batch):
        synapse = _claim_first(queue, reviewer=reviewer, order=order, now=now)
        if synapse is not None:
            return synapse
    return None


@transaction.atomic
def review_skip(*, synapse: Synapse, reviewer) -> None:
    """Release the reviewer's claim on ``synapse`` and never offer it to them again (others
    still get it)."""
    ReviewClaim.objects.filter(synapse=synapse, reviewer=reviewer).delete()
    ReviewSkip.objects.get_or_create(synapse=synapse, reviewer=reviewer)


@dataclass(frozen=True)
class Undone:
    """What an undo took back: ``"verdict"`` or ``"skip"``, and the synapse it gave back."""

    what: str
    synapse: Synapse


@transaction.atomic
def review_undo_last(*, dataset: Dataset, reviewer) -> Undone | None:
    """Take back the reviewer's most recent verdict or skip in the dataset, whichever came
    last; None when there is neither.

    A verdict: the review is deleted and the synapse's ``review_state`` goes back to its latest
    remaining verdict (``unreviewed`` when none is left). A skip: the skip is deleted, so the
    queue offers the synapse to the reviewer again. Either way the synapse is claimed for the
    reviewer again, unless someone else holds a live claim on it, and the reviewer's other
    claims in the dataset are released: the next :func:`review_next` shows it.
    """
    review = (
        Review.objects.filter(synapse__dataset=dataset, reviewer=reviewer)
        .select_related("synapse").order_by("-created_at", "-id").first()
    )
    skip = (
        ReviewSkip.objects.filter(synapse__dataset=dataset, reviewer=reviewer)
        .select_related("synapse").order_by("-created_at", "-id").first()
    )
    if review is None and skip is None:
        return None
    if skip is not None and (review is None or skip.created_at >= review.created_at):
        synapse, order = skip.synapse, ""
        skip.delete()
        undone = Undone(what="skip", synapse=synapse)
    else:
        synapse, order = review.synapse, review.order
        review.delete()
        previous = (
            Review.objects.filter(synapse=synapse).order_by("-created_at", "-id")
            .values_list("verdict", flat=True).first()
        )
        synapse.review_state = previous or Synapse.ReviewState.UNREVIEWED
        Synapse.objects.filter(pk=synapse.pk).update(review_state=synapse.review_state)
        undone = Undone(what="verdict", synapse=synapse)
    _release_other_claims(dataset=dataset, reviewer=reviewer)
    _try_claim(synapse=synapse, reviewer=reviewer, order=order, now=timezone.now(),
               unreviewed=False)
    return undone


def review_undo(*, dataset: Dataset, reviewer) -> Synapse | None:
    """The synapse :func:`review_undo_last` gave back, or None."""
    undone = review_undo_last(dataset=dataset, reviewer=reviewer)
    return None if undone is None else undone.synapse


# --- review batches ----------------------------------------------------------------------------

class BatchInputError(InputError):
    """A bad argument of :func:`review_batch_create`; ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@transaction.atomic
def review_batch_create(
    *, dataset: Dataset, name: str, reviewer, created_by=None,
    run: SynapseRun | None = None, count: int | None = None, bbox=None, synapse_ids=None,
) -> ReviewBatch:
    """A batch of synapses for ``reviewer`` (who needs the reviewer role on the dataset).

    The synapses are given one of three ways: ``synapse_ids`` (synapses of the dataset, none
    of them in another batch); ``run`` and ``count`` (the run's ``count`` lowest-confidence
    unreviewed synapses that the queue serves and no batch holds); or ``bbox`` (``(lo, hi)``
    in nm, z y x, inclusive: the unreviewed synapses the queue serves with their centre in it
    and in no batch, ``run`` and ``count`` narrowing it when given). At most
    :data:`MAX_BATCH_SYNAPSES`. InputError naming the argument otherwise.
    """
    name = str(name).strip()
    problem = name_problem(name)
    if problem is not None or not name:
        raise BatchInputError("name", f"batch name {problem or 'is empty'}")
    if not has_role(dataset=dataset, user=reviewer, role=Membership.Role.REVIEWER):
        raise BatchInputError("reviewer", f"'{reviewer.username}' has no reviewer role on "
                                          f"dataset '{dataset.name}'")
    if run is not None and run.dataset_id != dataset.pk:
        raise BatchInputError("run", f"run {run.pk} is not a run of dataset '{dataset.name}'")
    if count is not None and not 1 <= count <= MAX_BATCH_SYNAPSES:
        raise BatchInputError("count", f"must be 1 to {MAX_BATCH_SYNAPSES}; got {count}")
    ways = [way for way, given in [("synapses", synapse_ids is not None),
                                   ("bbox", bbox is not None),
                                   ("run", run is not None and bbox is None)] if given]
    if len(ways) != 1:
        raise BatchInputError(
            "synapses", "give the synapses one way: synapse ids, a bbox, or a run and a count; "
                        f"got {' and '.join(ways) or 'none'}")
    in_a_batch = ReviewBatchItem.objects.filter(synapse=OuterRef("pk"), batch__dataset=dataset)
    if synapse_ids is not None:
        ids = list(dict.fromkeys(int(i) for i in synapse_ids))
        if not ids:
            raise BatchInputError("synapses", "no synapse id given")
        if len(ids) > MAX_BATCH_SYNAPSES:
            raise BatchInputError("synapses", f"{len(ids)} ids; at most {MAX_BATCH_SYNAPSES}")
        found = set(Synapse.objects.filter(dataset=dataset, pk__in=ids)
                    .values_list("pk", flat=True))
        missing = [i for i in ids if i not in found]
        if missing:
            raise BatchInputError("synapses", f"no synapses {missing[:10]} in dataset "
                                              f"'{dataset.name}'")
        taken = sorted(ReviewBatchItem.objects.filter(batch__dataset=dataset, synapse_id__in=ids)
                       .values_list("synapse_id", flat=True))
        if taken:
            raise BatchInputError("synapses", f"synapses {taken[:10]} are in a batch already")
        selection = f"{len(ids)} synapses by id"
    else:
        if bbox is None and count is None:
            raise BatchInputError("count", "a batch by run needs a count")
        synapses = (reviewable_synapses(dataset=dataset, run=run)
                    .filter(review_state=Synapse.ReviewState.UNREVIEWED)
                    .exclude(Exists(in_a_batch)))
        if bbox is not None:
            lo, hi = bbox
            synapses = filter_in_bbox(synapses, lo=lo, hi=hi)
        ids = list(synapses.order_by(F("confidence").asc(nulls_last=True), "id")
                   .values_list("pk", flat=True)[:count or MAX_BATCH_SYNAPSES])
        where = f"run {run.name}" if run is not None else "all runs"
        if bbox is not None:
            where += " in box " + ",".join(f"{v:g}" for v in (*bbox[0], *bbox[1])) + " nm"
        if not ids:
            raise BatchInputError(ways[0], f"no unreviewed synapse outside other batches in "
                                           f"{where}")
        selection = f"{len(ids)} lowest confidence, {where}"
    batch = ReviewBatch.objects.create(dataset=dataset, name=name, reviewer=reviewer,
                                       created_by=created_by, selection=selection[:200])
    ReviewBatchItem.objects.bulk_create(
        [ReviewBatchItem(batch=batch, synapse_id=i) for i in ids], batch_size=2000)
    return batch
