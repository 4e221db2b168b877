"""Writes on reviews: a verdict on a synapse, mirrored in the synapse's review state."""

from django.db import transaction

from connectome.cells.models import Cell
from connectome.review.models import VERDICT_CHOICES, Review
from connectome.synapses.models import Synapse

VERDICTS = [value for value, _ in VERDICT_CHOICES]


@transaction.atomic
def review_create(
    *, synapse: Synapse, reviewer, verdict: str, note: str = "",
    corrected_pre: Cell | None = None, corrected_post=(),
) -> Review:
    """Record a reviewer's verdict and set ``synapse.review_state`` to it (the latest verdict).

    Corrected partners must be cells of the synapse's dataset; they are stored with the review
    and do not change the synapse's partners.
    """
    if verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r}; verdicts: {', '.join(VERDICTS)}")
    corrected_post = list(corrected_post)
    for cell in [corrected_pre, *corrected_post]:
        if cell is not None and cell.dataset_id != synapse.dataset_id:
            raise ValueError(f"cell {cell.pk} is not in the synapse's dataset")
    review = Review.objects.create(
        synapse=synapse, reviewer=reviewer, verdict=verdict, note=note,
        corrected_pre=corrected_pre,
    )
    if corrected_post:
        review.corrected_post.set(corrected_post)
    Synapse.objects.filter(pk=synapse.pk).update(review_state=verdict)
    synapse.review_state = verdict
    return review
