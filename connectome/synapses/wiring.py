"""The wiring matrix: synapses aggregated per (pre, post) cell or cell-type pair.

A read (selector): one parameterised GROUP BY over the dataset's synapses. What it counts is a
connection between two different known cells that nobody rejected, in the direction the review
says; see :func:`counted_synapses` and :func:`oriented`. Chemical synapses are directed;
electrical ones (gap junctions) are not: they are counted apart, once per unordered pair of
cells (:func:`unordered`), whichever way the source listed them.
"""

from dataclasses import dataclass

from django.db.models import Avg, Case, Count, F, Q, QuerySet, Sum, When

from connectome.datasets.models import Dataset
from connectome.synapses.models import Synapse
from detection.errors import InputError

GROUPINGS = ("cell", "cell_type")
KINDS = tuple(Synapse.Kind.values)  # ("chemical", "electrical")
#: The ``kind`` that asks for both kinds, each counted its own way.
ALL_KINDS = "all"

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
    #: ``chemical`` (pre onto post) or ``electrical`` (between the two, listed once: the cell
    #: with the lower id, or the type first in order, as ``pre``).
    kind: str = Synapse.Kind.CHEMICAL.value


@dataclass(frozen=True)
class WiringMatrix:
    """The non-zero entries of a wiring matrix, sorted by (kind, pre, post)."""

    group_by: str
    pairs: list[WiringPair]
    kind: str = Synapse.Kind.CHEMICAL.value

    @property
    def synapses(self) -> int:
        return sum(pair.synapses for pair in self.pairs)

    def synapses_of(self, kind: str) -> int:
        return sum(pair.synapses for pair in self.pairs if pair.kind == kind)

    def __len__(self):
        return len(self.pairs)


def counted_synapses(
    *, dataset: Dataset, runs=None, min_confidence: float | None = None, cells=None,
    kind: str | None = None,
) -> QuerySet[Synapse]:
    """The synapses the wiring matrix counts.

    Left out: flagged rows (self contacts, background), rows without a pre or post cell, rows
    whose pre and post are the same cell, and synapses whose review state is one of
    :data:`DROPPED_VERDICTS` (``not_synapse``, ``wrong_partner``). A ``wrong_direction`` synapse
    stays; aggregates count it from post to pre (:func:`oriented`).
    ``runs`` (runs or their ids) and ``cells`` (cell ids, cells or a cell QuerySet; both
    partners must be among them) narrow the set; ``min_confidence`` keeps synapses with
    ``confidence >= min_confidence``, so synapses without a confidence drop out; ``kind``
    (``chemical`` or ``electrical``) keeps one kind.
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
    if kind is not None:
        synapses = synapses.filter(kind=check_kind(kind))
    return synapses


def check_kind(kind: str, *, allow_all: bool = False) -> str:
    known = (*KINDS, ALL_KINDS) if allow_all else KINDS
    if kind not in known:
        raise InputError(f"unknown synapse kind {kind!r}; kinds: {', '.join(known)}")
    return kind


def unordered(side: str, field: str = ""):
    """The first (``side="pre"``) or second (``"post"``) cell of an electrical synapse's
    unordered pair, or its ``field``: the cell with the lower id comes first, so a junction
    stored A-B and one stored B-A fall into one pair."""
    if side not in ("pre", "post"):
        raise InputError(f"side is 'pre' or 'post'; got {side!r}")
    other = "post" if side == "pre" else "pre"
    path = f"__{field}" if field else ""
    return Case(When(pre__lt=F("post"), then=F(f"{side}{path}")), default=F(f"{other}{path}"))


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
    cells=None, group_by: str = "cell", kind: str = Synapse.Kind.CHEMICAL.value,
) -> WiringMatrix:
    """Synapse count, summed contact area (nm^2), summed weight and mean confidence per pair.

    One SQL query per kind: ``min_confidence`` filters synapses before aggregation (WHERE),
    ``min_count`` drops pairs with fewer synapses after it. ``group_by`` is ``"cell"`` (pairs
    of cells, with their segment ids, names and types) or ``"cell_type"`` (pairs of types).
    ``kind`` is ``chemical`` (directed pairs, the default), ``electrical`` (unordered pairs) or
    ``all`` (both, each its own way; every pair says its kind). See :func:`counted_synapses`
    for what is counted.
    """
    if group_by not in GROUPINGS:
        raise InputError(f"unknown grouping {group_by!r}; groupings: {', '.join(GROUPINGS)}")
    if int(min_count) < 1:
        raise InputError(f"min_count must be at least 1; got {min_count}")
    check_kind(kind, allow_all=True)
    kinds = KINDS if kind == ALL_KINDS else (kind,)
    pairs = []
    for one in kinds:
        pairs.extend(_pairs(dataset=dataset, runs=runs, min_confidence=min_confidence,
                            min_count=int(min_count), cells=cells, group_by=group_by, kind=one))
    # Sorted here, not in SQL: segment ids >= 2**63 are stored negative and would sort first.
    if group_by == "cell":
        pairs.sort(key=lambda p: (KINDS.index(p.kind), p.pre_segment_id, p.post_segment_id))
    else:
        pairs.sort(key=lambda p: (KINDS.index(p.kind), p.pre_type, p.post_type))
    return WiringMatrix(group_by=group_by, pairs=pairs, kind=kind)


def _pairs(*, dataset, runs, min_confidence, min_count, cells, group_by, kind) -> list:
    synapses = counted_synapses(dataset=dataset, runs=runs, min_confidence=min_confidence,
                                cells=cells, kind=kind)
    electrical = kind == Synapse.Kind.ELECTRICAL
    side = unordered if electrical else oriented
    keys = {"pre_type": side("pre", "cell_type"), "post_type": side("post", "cell_type")}
    if group_by == "cell":
        keys.update(
            pre_cell_id=side("pre"), post_cell_id=side("post"),
            pre_segment_id=side("pre", "segment_id"),
            post_segment_id=side("post", "segment_id"),
            pre_name=side("pre", "name"), post_name=side("post", "name"),
        )
    rows = synapses.values(**keys).annotate(
        n_synapses=Count("id"), area_sum=Sum("contact_area_nm2"), weight_sum=Sum("weight"),
        confidence_mean=Avg("confidence"), confidence_sum=Sum("confidence"),
        confidence_n=Count("confidence"),
    ).order_by()
    merge = electrical and group_by == "cell_type"
    if min_count > 1 and not merge:
        rows = rows.filter(n_synapses__gte=min_count)
    rows = list(rows)
    if merge:
        # Types of an unordered cell pair come in either order: one row per unordered type pair.
        rows = _merge_unordered_types(rows)
    return [
        WiringPair(
            pre_type=row["pre_type"], post_type=row["post_type"], synapses=row["n_synapses"],
            contact_area_nm2=row["area_sum"], weight=row["weight_sum"],
            mean_confidence=row["confidence_mean"],
            pre_segment_id=row.get("pre_segment_id"), post_segment_id=row.get("post_segment_id"),
            pre_name=row.get("pre_name", ""), post_name=row.get("post_name", ""),
            pre_cell_id=row.get("pre_cell_id"), post_cell_id=row.get("post_cell_id"),
            kind=kind,
        )
        for row in rows if row["n_synapses"] >= min_count
    ]


def _merge_unordered_types(rows: list[dict]) -> list[dict]:
    def add(a, b):
        return b if a is None else a if b is None else a + b

    merged: dict[tuple, dict] = {}
    for row in rows:
        key = tuple(sorted((row["pre_type"], row["post_type"])))
        if key not in merged:
            merged[key] = {**row, "pre_type": key[0], "post_type": key[1]}
            continue
        into = merged[key]
        for field in ("n_synapses", "area_sum", "weight_sum", "confidence_sum", "confidence_n"):
            into[field] = add(into[field], row[field])
    for row in merged.values():
        row["confidence_mean"] = (row["confidence_sum"] / row["confidence_n"]
                                  if row["confidence_n"] else None)
    return list(merged.values())
