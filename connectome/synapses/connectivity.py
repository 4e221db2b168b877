"""Connectivity reads: synapse filters, the partners of a cell, synapses between two cells and a
summary per cell type.

Partners and the cell-type summary count what the wiring matrix counts
(:func:`connectome.synapses.wiring.counted_synapses`): connections between two different known
cells that nobody rejected. Synapse lists (:func:`synapses_filtered`) return the rows as they
are, flagged ones included, unless a filter says otherwise.
"""

from dataclasses import dataclass

from django.db import connection
from django.db.models import Count, Q, QuerySet

from connectome.cells.models import Cell
from connectome.common.fields import int64_to_uint64
from connectome.datasets.models import Dataset
from connectome.synapses.models import Synapse
from connectome.synapses.selectors import filter_in_bbox
from connectome.synapses.wiring import DROPPED_VERDICTS, counted_synapses, oriented
from detection.errors import InputError

#: Chemical partners by direction, then the electrical ones (gap junctions have no direction).
DIRECTIONS = ("upstream", "downstream", "electrical")
CHEMICAL_DIRECTIONS = DIRECTIONS[:2]


def synapses_filtered(
    *, synapses: QuerySet[Synapse], dataset: Dataset | None = None, pre=None, post=None,
    pre_segment_ids=None, post_segment_ids=None, bbox=None, min_confidence: float | None = None,
    runs=None, methods=None, review_states=None, flags=None, kinds=None,
) -> QuerySet[Synapse]:
    """Narrow ``synapses`` by partner, place, confidence, provenance and review.

    ``pre``/``post`` are cell ids, ``pre_segment_ids``/``post_segment_ids`` segment ids of
    ``dataset`` (needed for them and for ``bbox``), ``bbox`` a ``(lo, hi)`` box in nm (z, y, x;
    inclusive) on the synapse centre, ``runs`` run ids, ``methods`` run methods,
    ``review_states``, ``flags`` and ``kinds`` values of the model's choices. Each filter given
    must hold.
    """
    if bbox is not None:
        if dataset is None:
            raise InputError("a bounding-box filter needs a dataset")
        lo, hi = bbox
        synapses = filter_in_bbox(synapses.filter(dataset=dataset), lo=lo, hi=hi)
    if pre is not None:
        synapses = synapses.filter(pre__in=pre)
    if post is not None:
        synapses = synapses.filter(post__in=post)
    for side, segment_ids in (("pre", pre_segment_ids), ("post", post_segment_ids)):
        if segment_ids is not None:
            if dataset is None:
                raise InputError("a segment-id filter needs a dataset")
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
    if kinds is not None:
        synapses = synapses.filter(kind__in=kinds)
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


# One part per direction and orientation: the chemical synapses that have the cell on ``own``
# as stored (review state not wrong_direction), and the reversed ones that have it on the other
# side; electrical synapses with the cell on either side, whatever their review says of the
# direction. The conditions are those of wiring.counted_synapses;
# test_partners_agree_with_the_matrix holds the two together.
_PARTNER_PART = """
    SELECT {code} AS direction, s.{partner}_id AS partner_id, count(*) AS n,
           sum(s.contact_area_nm2) AS area, sum(s.weight) AS weight,
           sum(s.confidence) AS confidence_sum, count(s.confidence) AS confidence_n
    FROM synapses_synapse s
    WHERE s.dataset_id = %(dataset)s AND s.{on_cell}_id = %(cell)s AND s.kind = %({kind})s
      {orientation}AND s.flag = '' AND s.pre_id IS NOT NULL AND s.post_id IS NOT NULL
      AND s.pre_id <> s.post_id AND s.review_state NOT IN ({dropped}){runs}{confidence}
    GROUP BY s.{partner}_id
"""


def partner_query(
    *, cell: Cell, directions=CHEMICAL_DIRECTIONS, runs=None, min_confidence: float | None = None,
    min_count: int = 1,
) -> tuple[str, dict]:
    """The SQL of :func:`partner_rows` and its parameters (``%(name)s`` style).

    Per direction two GROUP BY parts, the synapses as stored and the reversed
    ``wrong_direction`` ones, each an index-only scan of a covering index (migration 0004);
    ``electrical`` takes the electrical synapses with the cell on either side (two parts);
    the parts of a partner are added up (``min_count`` applies to the sum), then the partner
    cells are joined, one index lookup each. Rows: direction (its index in
    :data:`DIRECTIONS`: integers group and sort faster than text), partner id, segment id (as
    stored), name, type, synapses, summed area, summed weight, summed confidence and the
    number of confidences; per direction strongest first (synapses, then segment id as
    uint64: the stored negative ones last).
    """
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown or not directions:
        raise InputError(f"unknown directions {unknown}; directions: {', '.join(DIRECTIONS)}")
    if int(min_count) < 1:
        raise InputError(f"min_count must be at least 1; got {min_count}")
    params = {"dataset": cell.dataset_id, "cell": cell.pk, "min_count": int(min_count),
              "wrong_direction": Synapse.ReviewState.WRONG_DIRECTION.value,
              "chemical": Synapse.Kind.CHEMICAL.value,
              "electrical": Synapse.Kind.ELECTRICAL.value,
              "min_confidence": None if min_confidence is None else float(min_confidence)}
    params.update({f"dropped{i}": str(v) for i, v in enumerate(DROPPED_VERDICTS)})
    run_ids = [] if runs is None else [int(getattr(r, "pk", r)) for r in runs]
    params.update({f"run{i}": run for i, run in enumerate(run_ids)})
    # Lists as one named parameter per item: the same SQL on PostgreSQL and SQLite.
    extra = {
        "dropped": ", ".join(f"%(dropped{i})s" for i in range(len(DROPPED_VERDICTS))),
        "runs": ("" if runs is None else
                 " AND s.run_id IN ({})".format(
                     ", ".join(f"%(run{i})s" for i in range(len(run_ids))) or "NULL")),
        "confidence": "" if min_confidence is None else " AND s.confidence >= %(min_confidence)s",
    }
    parts = []
    for direction in directions:  # checked against DIRECTIONS above: safe to write in the SQL
        if direction == "electrical":
            for on_cell, partner in (("pre", "post"), ("post", "pre")):
                parts.append(_PARTNER_PART.format(code=DIRECTIONS.index(direction),
                                                  partner=partner, on_cell=on_cell,
                                                  kind="electrical", orientation="", **extra))
            continue
        own, other = ("post", "pre") if direction == "upstream" else ("pre", "post")
        for on_cell, partner, reversed_ in ((own, other, "<>"), (other, own, "=")):
            parts.append(_PARTNER_PART.format(
                code=DIRECTIONS.index(direction), partner=partner, on_cell=on_cell,
                kind="chemical", orientation=f"AND s.review_state {reversed_} "
                                             "%(wrong_direction)s\n      ", **extra))
    # A partner has at most two parts (as stored, reversed): their float sums add up exactly
    # as in any order. Counts are cast back from PostgreSQL's numeric sum of bigints.
    sql = (
        "SELECT p.direction, p.partner_id, c.segment_id, c.name, c.cell_type, p.n, p.area,"
        " p.weight, p.confidence_sum, p.confidence_n FROM ("
        " SELECT u.direction, u.partner_id, CAST(sum(u.n) AS BIGINT) AS n,"
        " sum(u.area) AS area, sum(u.weight) AS weight,"
        " sum(u.confidence_sum) AS confidence_sum,"
        " CAST(sum(u.confidence_n) AS BIGINT) AS confidence_n FROM ("
        + " UNION ALL ".join(parts)
        + ") u GROUP BY u.direction, u.partner_id HAVING sum(u.n) >= %(min_count)s"
        ") p JOIN cells_cell c ON c.id = p.partner_id"
        " ORDER BY p.direction, p.n DESC, c.segment_id < 0, c.segment_id"
    )
    return sql, params


def partner_rows(
    *, cell: Cell, directions=CHEMICAL_DIRECTIONS, runs=None, min_confidence: float | None = None,
    min_count: int = 1,
) -> dict[str, list[tuple]]:
    """:func:`cell_partners` as plain tuples, for callers that shape many of them: per
    direction ``(cell id, segment id, name, cell type, synapses, contact area, weight, mean
    confidence)``, strongest first. One query (:func:`partner_query`)."""
    sql, params = partner_query(cell=cell, directions=directions, runs=runs,
                                min_confidence=min_confidence, min_count=min_count)
    partners = {direction: [] for direction in directions}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    for code, partner_id, segment, name, cell_type, n, area, weight, c_sum, c_n in rows:
        partners[DIRECTIONS[code]].append((
            partner_id, int64_to_uint64(segment), name, cell_type, n, area, weight,
            c_sum / c_n if c_n else None))
    return partners


def cell_partners(
    *, cell: Cell, directions=CHEMICAL_DIRECTIONS, runs=None, min_confidence: float | None = None,
    min_count: int = 1,
) -> dict[str, list[Partner]]:
    """The cells upstream of ``cell`` (presynaptic to it) and downstream (postsynaptic to it)
    through chemical synapses, and, when ``directions`` has ``electrical``, the cells it shares
    electrical synapses with.

    Counted synapses (see the module docstring) that have ``cell`` on the other side, grouped
    by partner; one parameterised query (:func:`partner_query`). A ``wrong_direction`` synapse
    counts the other way round (:func:`~connectome.synapses.wiring.oriented`).
    ``min_confidence`` applies before aggregation, ``min_count`` after it. Maps each of
    ``directions`` to its partners, strongest first (synapse count, then segment id).
    """
    return {direction: [Partner(*row) for row in rows] for direction, rows in partner_rows(
        cell=cell, directions=directions, runs=runs, min_confidence=min_confidence,
        min_count=min_count).items()}


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
    electrical_synapses: int = 0
    electrical_partner_types: int = 0


def cell_type_summary(
    *, dataset: Dataset, runs=None, min_confidence: float | None = None,
) -> list[CellTypeSummary]:
    """Per cell type (``""`` for cells without one): cells, counted chemical synapses out and
    in, how many types it sends to and receives from, and its electrical synapses (each once,
    a junction between two cells of the type too) with the number of types they join it to.
    Three GROUP BY queries."""
    cells = dict(
        Cell.objects.filter(dataset=dataset).values_list("cell_type")
        .annotate(n=Count("id")).order_by().values_list("cell_type", "n")
    )
    synapses = counted_synapses(dataset=dataset, runs=runs, min_confidence=min_confidence,
                                kind=Synapse.Kind.CHEMICAL)
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
    gap_synapses: dict[str, int] = {}
    gap_types: dict[str, set] = {}
    gaps = counted_synapses(dataset=dataset, runs=runs, min_confidence=min_confidence,
                            kind=Synapse.Kind.ELECTRICAL)
    for row in gaps.values("pre__cell_type", "post__cell_type").annotate(n=Count("id")).order_by():
        a, b = row["pre__cell_type"], row["post__cell_type"]
        for cell_type in {a, b}:  # a junction between two cells of one type counts once
            gap_synapses[cell_type] = gap_synapses.get(cell_type, 0) + row["n"]
        gap_types.setdefault(a, set()).add(b)
        gap_types.setdefault(b, set()).add(a)
    return [
        CellTypeSummary(
            cell_type=cell_type, cells=n, outgoing_synapses=out_synapses.get(cell_type, 0),
            incoming_synapses=in_synapses.get(cell_type, 0),
            outgoing_partner_types=out_types.get(cell_type, 0),
            incoming_partner_types=in_types.get(cell_type, 0),
            electrical_synapses=gap_synapses.get(cell_type, 0),
            electrical_partner_types=len(gap_types.get(cell_type, ())),
        )
        for cell_type, n in sorted(cells.items())
    ]
