"""The wiring matrix: synapses aggregated per (pre, post) cell or cell-type pair.

A read (selector): one parameterised GROUP BY over the dataset's synapses. What it counts is a
connection between two different known cells that nobody rejected, in the direction the review
says; see :func:`counted_synapses` and :func:`oriented`.
"""

from dataclasses import dataclass

from django.db.models import Avg, Case, Count, F, Q, QuerySet, Sum, When

from connectome.datasets.models import Dataset
from connectome.synapses.models import Synapse
from detection.errors import InputError

GROUPINGS = ("cell", "cell_type")

#: Verdicts that take a synapse out of the counts. ``wrong_partner`` is among them: the right
#: partners are in the synapse's latest review (a cell and a many-to-many list of cells), and
#: counting them would join the latest review, its list and two more cells into the GROUP BY
#: and fan rows out; a synapse with the wrong partners is not a connection between its cells.
DROPPED_VERDICTS = (Synapse.ReviewState.NOT_SYNAPSE, Synapse.ReviewState.WRONG_PARTNER)


@dataclass(frozen=True)
class WiringPair:
    """The synapses from one cell (or cell type) onto another.

    For ``cell_type`` grouping the cell ids (database keys) and segment ids are None and the
    names empty; cells without a type have type ``""``. Sums and the mean are None when no
    synapse of the pair has a value.
    """

    pre_type: str
    post_type: str
    synapses: int
    contact_area_nm2: float | None
    weight: float | None
    mean_confidence: float | None
    pre_segment_id: int | None = None
    post_segment_id: int | None = None
    pre_name: str = ""
    post_name: str = ""
    pre_cell_id: int | None = None
    post_cell_id: int | None = None


@dataclass(frozen=True)
class WiringMatrix:
    """The non-zero entries of a wiring matrix, sorted by (pre, post)."""

    group_by: str
    pairs: list[WiringPair]

    @property
    def synapses(self) -> int:
        return sum(pair.synapses for pair in self.pairs)

    def __len__(self):
        return len(self.pairs)


def counted_synapses(
    *, dataset: Dataset, runs=None, min_confidence: float | None = None, cells=None,
) -> QuerySet[Synapse]:
    """The synapses the wiring matrix counts.

    Left out: flagged rows (self contacts, background), rows without a pre or post cell, rows
    whose pre and post are the same cell, and synapses whose review state is one of
    :data:`DROPPED_VERDICTS` (``not_synapse``, ``wrong_partner``). A ``wrong_direction`` synapse
    stays; aggregates count it from post to pre (:func:`oriented`).
    ``runs`` (runs or their ids) and ``cells`` (cell ids, cells or a cell QuerySet; both
    partners must be among them) narrow the set; ``min_confidence`` keeps synapses with
    ``confidence >= min_confidence``, so synapses without a confidence drop out.
    """
    synapses = (
        Synapse.objects.filter(dataset=dataset, flag=Synapse.Flag.NONE,
                               pre__isnull=False, post__isnull=False)
        .filter(~Q(pre=F("post")))
        .exclude(review_state__in=DROPPED_VERDICTS)
    )
    if runs is not None:
        synapses = synapses.filter(run__in=runs)
    if cells is not None:
        synapses = synapses.filter(pre__in=cells, post__in=cells)
    if min_confidence is not None:
        synapses = synapses.filter(confidence__gte=float(min_confidence))
    return synapses


def oriented(side: str, field: str = ""):
    """The ``side`` (``"pre"`` or ``"post"``) cell of a counted synapse, or its ``field``
    (``segment_id``, ``name``, ``cell_type``), as the review says: the other side's for a
    synapse whose review state is ``wrong_direction``.

    A CASE on columns the query joins anyway, so the matrix stays one GROUP BY.
    """
    if side not in ("pre", "post"):
        raise InputError(f"side is 'pre' or 'post'; got {side!r}")
    other = "post" if side == "pre" else "pre"
    path = f"__{field}" if field else ""
    return Case(When(review_state=Synapse.ReviewState.WRONG_DIRECTION,
                     then=F(f"{other}{path}")), default=F(f"{side}{path}"))


def wiring_matrix(
    *, dataset: Dataset, runs=None, min_confidence: float | None = None, min_count: int = 1,
    cells=None, group_by: str = "cell",
) -> WiringMatrix:
    """Synapse count, summed contact area (nm^2), summed weight and mean confidence per pair.

    One SQL query: ``min_confidence`` filters synapses before aggregation (WHERE), ``min_count``
    drops pairs with fewer synapses after it (HAVING). ``group_by`` is ``"cell"`` (pairs of
    cells, with their segment ids, names and types) or ``"cell_type"`` (pairs of types). See
    :func:`counted_synapses` for what is counted.
    """
    if group_by not in GROUPINGS:
        raise InputError(f"unknown grouping {group_by!r}; groupings: {', '.join(GROUPINGS)}")
    if int(min_count) < 1:
        raise InputError(f"min_count must be at least 1; got {min_count}")
    synapses = counted_synapses(
        dataset=dataset, runs=runs, min_confidence=min_confidence, cells=cells
    )
    keys = {"pre_type": oriented("pre", "cell_type"), "post_type": oriented("post", "cell_type")}
    if group_by == "cell":
        keys.update(
            pre_cell_id=oriented("pre"), post_cell_id=oriented("post"),
            pre_segment_id=oriented("pre", "segment_id"),
            post_segment_id=oriented("post", "segment_id"),
            pre_name=oriented("pre", "name"), post_name=oriented("post", "name"),
        )
    rows = synapses.values(**keys).annotate(
        n_synapses=Count("id"), area_sum=Sum("contact_area_nm2"), weight_sum=Sum("weight"),
        confidence_mean=Avg("confidence"),
    )
    if min_count > 1:
        rows = rows.filter(n_synapses__gte=int(min_count))
    pairs = [
        WiringPair(
            pre_type=row["pre_type"], post_type=row["post_type"], synapses=row["n_synapses"],
            contact_area_nm2=row["area_sum"], weight=row["weight_sum"],
            mean_confidence=row["confidence_mean"],
            pre_segment_id=row.get("pre_segment_id"), post_segment_id=row.get("post_segment_id"),
            pre_name=row.get("pre_name", ""), post_name=row.get("post_name", ""),
            pre_cell_id=row.get("pre_cell_id"), post_cell_id=row.get("post_cell_id"),
        )
        for row in rows.order_by()
    ]
    # Sorted here, not in SQL: segment ids >= 2**63 are stored negative and would sort first.
    if group_by == "cell":
        pairs.sort(key=lambda p: (p.pre_segment_id, p.post_segment_id))
    else:
        pairs.sort(key=lambda p: (p.pre_type, p.post_type))
    return WiringMatrix(group_by=group_by, pairs=pairs)
