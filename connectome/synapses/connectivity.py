"""Connectivity reads: synapse filters, the partners of a cell, synapses between two cells and a
summary per cell type.

Partners and the cell-type summary count what the wiring matrix counts
(:func:`connectome.synapses.wiring.counted_synapses`): connections between two different known
cells that nobody rejected. Synapse lists (:func:`synapses_filtered`) return the rows as they
are, flagged ones included, unless a filter says otherwise.
"""

from dataclasses import dataclass

from django.db.models import Avg, Count, Q, QuerySet, Sum, Value

from connectome.cells.models import Cell
from connectome.datasets.models import Dataset
from connectome.synapses.models import Synapse
from connectome.synapses.selectors import filter_in_bbox
from connectome.synapses.wiring import counted_synapses, oriented

DIRECTIONS = ("upstream", "downstream")


def synapses_filtered(
    *, synapses: QuerySet[Synapse], dataset: Dataset | None = None, pre=None, post=None,
    pre_segment_ids=None, post_segment_ids=None, bbox=None, min_confidence: float | None = None,
    runs=None, methods=None, review_states=None, flags=None,
) -> QuerySet[Synapse]:
    """Narrow ``synapses`` by partner, place, confidence, provenance and review.

    ``pre``/``post`` are cell ids, ``pre_segment_ids``/``post_segment_ids`` segment ids of
    ``dataset`` (needed for them and for ``bbox``), ``bbox`` a ``(lo, hi)`` box in nm (z, y, x;
    inclusive) on the synapse centre, ``runs`` run ids, ``methods`` run methods,
    ``review_states`` and ``flags`` values of the model's choices. Each filter given must hold.
    """
    if bbox is not None:
        if dataset is None:
            raise ValueError("a bounding-box filter needs a dataset")
        lo, hi = bbox
        synapses = filter_in_bbox(synapses.filter(dataset=dataset), lo=lo, hi=hi)
    if pre is not None:
        synapses = synapses.filter(pre__in=pre)
    if post is not None:
        synapses = synapses.filter(post__in=post)
    for side, segment_ids in (("pre", pre_segment_ids), ("post", post_segment_ids)):
        if segment_ids is not None:
            if dataset is None:
                raise ValueError("a segment-id filter needs a dataset")
            cells = Cell.objects.filter(dataset=dataset, segment_id__in=segment_ids)
            synapses = synapses.filter(**{f"{side}__in": cells.values("id")})
    if min_confidence is not None:
        synapses = synapses.filter(confidence__gte=float(min_confidence))
    if runs is not None:
        synapses = synapses.filter(run__in=runs)
    if methods is not None:
        synapses = synapses.filter(run__method__in=methods)
    if review_states is not None:
        synapses = synapses.filter(review_state__in=review_states)
    if flags is not None:
        synapses = synapses.filter(flag__in=flags)
    return synapses


@dataclass(frozen=True)
class Partner:
    """The synapses between a cell and one partner cell in one direction."""

    cell_id: int
    segment_id: int
    name: str
    cell_type: str
    synapses: int
    contact_area_nm2: float | None
    weight: float | None
    mean_confidence: float | None


def cell_partners(
    *, cell: Cell, directions=DIRECTIONS, runs=None, min_confidence: float | None = None,
    min_count: int = 1,
) -> dict[str, list[Partner]]:
    """The cells upstream of ``cell`` (presynaptic to it) and downstream (postsynaptic to it).

    A GROUP BY per direction over the counted synapses (see the module docstring) that have
    ``cell`` on the other side, all directions in one query (UNION ALL); ``min_confidence``
    applies before aggregation, ``min_count`` after it. Maps each of ``directions`` to its
    partners, strongest first (synapse count, then segment id).
    """
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown or not directions:
        raise ValueError(f"unknown directions {unknown}; directions: {', '.join(DIRECTIONS)}")
    if int(min_count) < 1:
        raise ValueError(f"min_count must be at least 1; got {min_count}")
    synapses = counted_synapses(dataset=cell.dataset, runs=runs, min_confidence=min_confidence)
    parts = []
    for direction in directions:
        own, other = ("post", "pre") if direction == "upstream" else ("pre", "post")
        # A wrong_direction synapse counts the other way round (wiring.oriented); written as
        # an OR of plain column conditions so that both halves use the partner indexes.
        reversed_ = Q(review_state=Synapse.ReviewState.WRONG_DIRECTION)
        rows = (
            synapses.filter((Q(**{own: cell.pk}) & ~reversed_)
                            | (Q(**{other: cell.pk}) & reversed_))
            .values(
                direction=Value(direction), partner_id=oriented(other),
                partner_segment=oriented(other, "segment_id"),
                partner_name=oriented(other, "name"), partner_type=oriented(other, "cell_type"),
            )
            .annotate(
                n_synapses=Count("id"), area_sum=Sum("contact_area_nm2"),
                weight_sum=Sum("weight"), confidence_mean=Avg("confidence"),
            )
            .order_by()
        )
        if min_count > 1:
            rows = rows.filter(n_synapses__gte=int(min_count))
        parts.append(rows)
    rows = parts[0].union(*parts[1:], all=True) if len(parts) > 1 else parts[0]
    partners = {direction: [] for direction in directions}
    for row in rows:
        partners[row["direction"]].append(Partner(
            cell_id=row["partner_id"], segment_id=row["partner_segment"],
            name=row["partner_name"], cell_type=row["partner_type"], synapses=row["n_synapses"],
            contact_area_nm2=row["area_sum"], weight=row["weight_sum"],
            mean_confidence=row["confidence_mean"],
        ))
    for found in partners.values():
        found.sort(key=lambda p: (-p.synapses, p.segment_id))
    return partners


def synapses_between(*, a: Cell, b: Cell, both_directions: bool = True) -> QuerySet[Synapse]:
    """The synapses from ``a`` onto ``b`` (and, by default, from ``b`` onto ``a``), any state."""
    condition = Q(pre=a, post=b)
    if both_directions:
        condition |= Q(pre=b, post=a)
    return Synapse.objects.filter(dataset=a.dataset_id).filter(condition)


@dataclass(frozen=True)
class CellTypeSummary:
    """One cell type of a dataset: its cells and the synapses they make and receive."""

    cell_type: str
    cells: int
    outgoing_synapses: int
    incoming_synapses: int
    outgoing_partner_types: int
    incoming_partner_types: int


def cell_type_summary(
    *, dataset: Dataset, runs=None, min_confidence: float | None = None,
) -> list[CellTypeSummary]:
    """Per cell type (``""`` for cells without one): cells, counted synapses out and in, and how
    many types it sends to and receives from. Two GROUP BY queries."""
    cells = dict(
        Cell.objects.filter(dataset=dataset).values_list("cell_type")
        .annotate(n=Count("id")).order_by().values_list("cell_type", "n")
    )
    synapses = counted_synapses(dataset=dataset, runs=runs, min_confidence=min_confidence)
    pairs = (
        synapses.values(pre_type=oriented("pre", "cell_type"),
                        post_type=oriented("post", "cell_type"))
        .annotate(n=Count("id")).order_by()
    )
    out_synapses: dict[str, int] = {}
    in_synapses: dict[str, int] = {}
    out_types: dict[str, int] = {}
    in_types: dict[str, int] = {}
    for row in pairs:
        out_synapses[row["pre_type"]] = out_synapses.get(row["pre_type"], 0) + row["n"]
        in_synapses[row["post_type"]] = in_synapses.get(row["post_type"], 0) + row["n"]
        out_types[row["pre_type"]] = out_types.get(row["pre_type"], 0) + 1
        in_types[row["post_type"]] = in_types.get(row["post_type"], 0) + 1
    return [
        CellTypeSummary(
            cell_type=cell_type, cells=n, outgoing_synapses=out_synapses.get(cell_type, 0),
            incoming_synapses=in_synapses.get(cell_type, 0),
            outgoing_partner_types=out_types.get(cell_type, 0),
            incoming_partner_types=in_types.get(cell_type, 0),
        )
        for cell_type, n in sorted(cells.items())
    ]
