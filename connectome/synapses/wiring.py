"""The wiring matrix: synapses aggregated per (pre, post) cell or cell-type pair.

A read (selector): one parameterised GROUP BY over the dataset's synapses. What it counts is a
connection between two different known cells that nobody rejected; see :func:`wiring_matrix`.
"""

from dataclasses import dataclass

from django.db.models import Avg, Count, F, Q, QuerySet, Sum

from connectome.datasets.models import Dataset
from connectome.synapses.models import Synapse

GROUPINGS = ("cell", "cell_type")


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
    whose pre and post are the same cell, and synapses a reviewer rejected (``not_synapse``).
    ``runs`` (runs or their ids) and ``cells`` (cell ids, cells or a cell QuerySet; both
    partners must be among them) narrow the set; ``min_confidence`` keeps synapses with
    ``confidence >= min_confidence``, so synapses without a confidence drop out.
    """
    synapses = (
        Synapse.objects.filter(dataset=dataset, flag=Synapse.Flag.NONE,
                               pre__isnull=False, post__isnull=False)
        .filter(~Q(pre=F("post")))
        .exclude(review_state=Synapse.ReviewState.NOT_SYNAPSE)
    )
    if runs is not None:
        synapses = synapses.filter(run__in=runs)
    if cells is not None:
        synapses = synapses.filter(pre__in=cells, post__in=cells)
    if min_confidence is not None:
        synapses = synapses.filter(confidence__gte=float(min_confidence))
    return synapses


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
        raise ValueError(f"unknown grouping {group_by!r}; groupings: {', '.join(GROUPINGS)}")
    if int(min_count) < 1:
        raise ValueError(f"min_count must be at least 1; got {min_count}")
    synapses = counted_synapses(
        dataset=dataset, runs=runs, min_confidence=min_confidence, cells=cells
    )
    keys = {"pre_type": F("pre__cell_type"), "post_type": F("post__cell_type")}
    if group_by == "cell":
        keys.update(
            pre_cell_id=F("pre"), post_cell_id=F("post"),
            pre_segment_id=F("pre__segment_id"), post_segment_id=F("post__segment_id"),
            pre_name=F("pre__name"), post_name=F("post__name"),
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
