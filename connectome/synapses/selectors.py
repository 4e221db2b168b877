"""Reads on synapses."""

from django.db import connection
from django.db.models import (
    Case,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce

from connectome.synapses.models import Synapse, SynapseRun
from detection.errors import InputError


def synapses_in_bbox(*, dataset, lo, hi) -> QuerySet[Synapse]:
    """Synapses whose centre lies in the box ``lo <= (z, y, x) <= hi`` (nm, inclusive).

    On PostgreSQL the y/x part is written as a ``point`` in ``box`` containment so that the
    GiST index ``synapse_ctr_xy_gist`` answers it (migration 0006); elsewhere it is a plain
    range filter.
    """
    return filter_in_bbox(Synapse.objects.filter(dataset=dataset), lo=lo, hi=hi)


def filter_in_bbox(queryset: QuerySet[Synapse], *, lo, hi) -> QuerySet[Synapse]:
    """``queryset`` narrowed to centres in ``lo <= (z, y, x) <= hi``; see :func:`synapses_in_bbox`.

    On PostgreSQL the GiST index on the centre's (x, y) point finds the candidates; z and the
    queryset's other conditions are checked on them.
    """
    lo = [float(v) for v in lo]
    hi = [float(v) for v in hi]
    if len(lo) != 3 or len(hi) != 3 or any(a > b for a, b in zip(lo, hi)):
        raise InputError(f"a bounding box needs lo <= hi in z, y, x; got {lo} and {hi}")
    if connection.vendor == "postgresql":
        return queryset.extra(
            where=[
                "ctr_z IS NOT NULL",
                "point(ctr_x, ctr_y) <@ box(point(%s, %s), point(%s, %s))",
            ],
            params=[lo[2], lo[1], hi[2], hi[1]],
        ).filter(ctr_z__gte=lo[0], ctr_z__lte=hi[0])
    return queryset.filter(
        ctr_z__gte=lo[0], ctr_z__lte=hi[0], ctr_y__gte=lo[1], ctr_y__lte=hi[1],
        ctr_x__gte=lo[2], ctr_x__lte=hi[2],
    )


#: Methods of runs that a detection made: the detection itself (``detect:<detector>``) and the
#: partner assignments that give its sites their cells (``connectome.synapses.assignment``).
#: Anything else (``import:<format>``, ``ground_truth``, a method named at import) was imported.
DETECTION_PREFIX = "detect:"
ASSIGNMENT_METHODS = ("contact", "vesicle", "diffusion")
#: The value of a ``run`` parameter that asks for the synapses of every run, summed.
ALL_RUNS = "all"


def detection_runs(*, dataset) -> QuerySet[SynapseRun]:
    """The dataset's runs made by a detection or a partner assignment, not by an import."""
    return SynapseRun.objects.filter(dataset=dataset).filter(
        Q(method__startswith=DETECTION_PREFIX) | Q(method__in=ASSIGNMENT_METHODS))


def _rank(current):
    """Order of preference of a dataset's runs (lowest first; newest first within a rank):
    the dataset's current run (``current``: its id, or an expression giving it), partner
    assignments, detections, anything else."""
    chosen = [] if current is None else [When(pk=current, then=Value(0))]
    return Case(
        *chosen, When(method__in=ASSIGNMENT_METHODS, then=Value(1)),
        When(method__startswith=DETECTION_PREFIX, then=Value(2)),
        default=Value(3), output_field=IntegerField(),
    )


_NEWEST = ("rank", "-created_at", "-pk")


def default_run(*, dataset) -> SynapseRun | None:
    """The run the pages and the API show when no run is asked for (``dataset``: a dataset
    or its id). One query.

    The dataset's ``current_run`` when its admins chose one; else the newest partner
    assignment (a detection whose synapses have their cells); else the newest detection; else
    the newest run of any method; None for a dataset without runs. Ground truth and other
    imports are shown by default only where nothing was detected: summing them with a
    detection would count the same synapses twice.
    """
    if hasattr(dataset, "current_run_id"):
        dataset_id, current = dataset.pk, dataset.current_run_id
    else:  # an id: the dataset's choice read in the same query
        from connectome.datasets.models import Dataset

        dataset_id = int(dataset)
        current = Subquery(Dataset.objects.filter(pk=dataset_id).values("current_run_id")[:1])
    return (SynapseRun.objects.filter(dataset_id=dataset_id).alias(rank=_rank(current))
            .order_by(*_NEWEST).first())


def default_run_id() -> Coalesce:
    """:func:`default_run`'s id as an expression on a query of datasets, for lists of
    datasets: one query for them all. The dataset's current run (when it is one of its runs),
    else the best-ranked run (the outer references stay in WHERE clauses: SQLite cannot see
    them from a subquery's ORDER BY)."""
    runs = SynapseRun.objects.filter(dataset_id=OuterRef("pk"))
    return Coalesce(
        Subquery(runs.filter(pk=OuterRef("current_run_id")).values("pk")[:1]),
        Subquery(runs.alias(rank=_rank(None)).order_by(*_NEWEST).values("pk")[:1]),
    )


def selected_runs(*, dataset, run=None) -> list[SynapseRun] | None:
    """The runs a read counts for a ``run`` parameter: ``None`` (not given) is the
    :func:`default_run` alone, :data:`ALL_RUNS` is every run (None: no run filter), ids (or
    runs) are those runs; only runs of ``dataset`` are kept. A dataset without runs gives
    ``[]``."""
    if run == ALL_RUNS:
        return None
    if run is None:
        chosen = default_run(dataset=dataset)
        return [] if chosen is None else [chosen]
    ids = [int(getattr(r, "pk", r)) for r in (run if isinstance(run, (list, tuple, set)) else [run])]
    return list(SynapseRun.objects.filter(dataset=dataset, pk__in=ids).order_by("pk"))
