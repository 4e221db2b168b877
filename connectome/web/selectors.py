"""Reads behind the pages: what one page shows of a dataset, a cell or a synapse."""

from dataclasses import asdict, dataclass

from django.db.models import Count, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.shortcuts import get_object_or_404

from connectome.cells.models import Cell
from connectome.datasets.models import Dataset, Layer, Membership
from connectome.datasets.selectors import dataset_role, datasets_visible_to, has_role
from connectome.imports.paths import EXPORT_KIND_PREFIX
from connectome.jobs.models import Job
from connectome.review.models import Review
from connectome.synapses.connectivity import DIRECTIONS, cell_partners
from connectome.synapses.models import Synapse, SynapseRun
from connectome.synapses.selectors import ALL_RUNS, default_run, default_run_id


def _count_of(model, **match):
    """A subquery counting ``model`` rows whose fields ``match`` the outer row's (OuterRef
    names), 0 when there are none: one count per row without joining two big tables."""
    field = next(iter(match))
    return Coalesce(Subquery(
        model.objects.filter(**{f: OuterRef(ref) for f, ref in match.items()}).order_by()
        .values(field).annotate(n=Count("id")).values("n")[:1]
    ), 0)


def datasets_with_counts(*, user) -> list[Dataset]:
    """The datasets ``user`` can see, with their layers, ``n_cells``, ``default_run_id`` and
    ``n_synapses``: the synapse rows of each dataset's default run
    (:func:`connectome.synapses.selectors.default_run`). Three queries however many datasets:
    theirs with their default runs, their layers, the synapses per default run."""
    datasets = list(
        datasets_visible_to(user)
        .annotate(n_cells=_count_of(Cell, dataset="pk"), default_run_id=default_run_id())
        .prefetch_related("layers")
    )
    runs = [d.default_run_id for d in datasets if d.default_run_id is not None]
    counts = dict(Synapse.objects.filter(run_id__in=runs).order_by().values_list("run_id")
                  .annotate(n=Count("id")).values_list("run_id", "n"))
    for dataset in datasets:
        dataset.n_synapses = counts.get(dataset.default_run_id, 0)
    return datasets


def visible_dataset(*, user, pk: int) -> Dataset:
    """The dataset with id ``pk`` if ``user`` may see it; a 404 otherwise, so that a dataset
    one cannot see looks the same as one that does not exist."""
    return get_object_or_404(datasets_visible_to(user), pk=pk)


@dataclass(frozen=True)
class Access:
    """What the user may do on a dataset (see :mod:`connectome.datasets.permissions`)."""

    role: str | None
    can_review: bool
    can_run_jobs: bool


def dataset_access(*, dataset: Dataset, user) -> Access:
    return Access(
        role=dataset_role(dataset=dataset, user=user),
        can_review=has_role(dataset=dataset, user=user, role=Membership.Role.REVIEWER),
        can_run_jobs=has_role(dataset=dataset, user=user, role=Membership.Role.ADMIN),
    )


@dataclass(frozen=True)
class RunChoice:
    """The runs a page shows: from its ``?run=`` (a run id, or ``all``), else the dataset's
    default run (:func:`connectome.synapses.selectors.default_run`)."""

    #: The runs to count: a list (one run, or none for a dataset without runs), None for all.
    runs: list[SynapseRun] | None
    #: What the page's run selector shows: a run id, or "all".
    selected: int | str | None
    #: The dataset's default run (None without runs).
    default: SynapseRun | None
    #: The dataset's runs, oldest first, for the page's selector.
    options: tuple[SynapseRun, ...] = ()

    @property
    def run(self) -> SynapseRun | None:
        """The one run shown, or None when all runs are (or there is none)."""
        return self.runs[0] if self.runs else None

    @property
    def query(self) -> str:
        """The ``run`` parameter that asks the API for the same runs."""
        return ALL_RUNS if self.runs is None else ",".join(str(r.pk) for r in self.runs)


def run_choice(*, dataset: Dataset, value: str | None) -> RunChoice:
    default = default_run(dataset=dataset)
    options = tuple(SynapseRun.objects.filter(dataset=dataset).order_by("created_at", "pk"))
    value = (value or "").strip()
    if value == ALL_RUNS:
        return RunChoice(runs=None, selected=ALL_RUNS, default=default, options=options)
    run = next((r for r in options if str(r.pk) == value), None)
    if run is not None:
        return RunChoice(runs=[run], selected=run.pk, default=default, options=options)
    return RunChoice(runs=[] if default is None else [default],
                     selected=None if default is None else default.pk, default=default,
                     options=options)


@dataclass(frozen=True)
class DatasetCounts:
    cells: int
    synapses: int
    chemical_synapses: int
    electrical_synapses: int
    reviews: int
    reviewed_synapses: int


def dataset_counts(*, dataset: Dataset, runs=None) -> DatasetCounts:
    """Cells, and the synapse rows of ``runs`` (all runs when None) by kind, their reviews and
    how many are reviewed."""
    synapses = Synapse.objects.filter(dataset=dataset)
    reviews = Review.objects.filter(synapse__dataset=dataset)
    if runs is not None:
        synapses = synapses.filter(run__in=runs)
        reviews = reviews.filter(synapse__run__in=runs)
    counts = synapses.aggregate(
        total=Count("id"),
        chemical=Count("id", filter=Q(kind=Synapse.Kind.CHEMICAL)),
        electrical=Count("id", filter=Q(kind=Synapse.Kind.ELECTRICAL)),
        reviewed=Count("id", filter=~Q(review_state=Synapse.ReviewState.UNREVIEWED)),
    )
    return DatasetCounts(
        cells=Cell.objects.filter(dataset=dataset).count(),
        synapses=counts["total"], chemical_synapses=counts["chemical"],
        electrical_synapses=counts["electrical"], reviews=reviews.count(),
        reviewed_synapses=counts["reviewed"],
    )


def dataset_layers(*, dataset: Dataset) -> QuerySet[Layer]:
    return Layer.objects.filter(dataset=dataset).order_by("pk")


def dataset_runs(*, dataset: Dataset) -> QuerySet[SynapseRun]:
    """The dataset's synapse runs, oldest first, each with ``n_synapses`` and ``n_reviewed``."""
    return (
        SynapseRun.objects.filter(dataset=dataset)
        .annotate(
            n_synapses=Count("synapses"),
            n_reviewed=Count("synapses", filter=~Q(
                synapses__review_state=Synapse.ReviewState.UNREVIEWED)),
        )
        .order_by("created_at", "pk")
    )


def dataset_jobs(*, dataset: Dataset, limit: int = 20) -> list[Job]:
    return list(Job.objects.filter(dataset=dataset).order_by("-pk")[:limit])


def dataset_downloads(*, dataset: Dataset, limit: int = 20) -> list[Job]:
    """The dataset's finished export jobs, newest first: their files are the page's downloads."""
    return list(Job.objects.filter(dataset=dataset, kind__startswith=EXPORT_KIND_PREFIX,
                                   state=Job.State.DONE).order_by("-pk")[:limit])


def _synapses_of_cell(side: str, runs, kind: str):
    """A subquery counting the synapse rows of ``runs`` (all when None) and ``kind`` that have
    the outer cell on ``side`` (``pre``, ``post``, or ``either``: each row once); 0 when there
    are none."""
    if side == "either":
        on_cell = Q(pre=OuterRef("pk")) | Q(post=OuterRef("pk"))
    else:
        on_cell = Q(**{side: OuterRef("pk")})
    synapses = Synapse.objects.filter(on_cell, kind=kind)
    if runs is not None:
        synapses = synapses.filter(run__in=runs)
    return Coalesce(Subquery(synapses.order_by().annotate(one=Value(1)).values("one")
                             .annotate(n=Count("id")).values("n")[:1]), 0)


def dataset_cells(*, dataset: Dataset, runs=None) -> QuerySet[Cell]:
    """The dataset's cells in segment-id order, each with the synapse rows of ``runs`` (all
    runs when None; any review state): chemical ``n_outgoing`` and ``n_incoming``, and
    ``n_electrical`` (electrical synapses with the cell on either side)."""
    chemical, electrical = Synapse.Kind.CHEMICAL, Synapse.Kind.ELECTRICAL
    return Cell.objects.filter(dataset=dataset).annotate(
        n_outgoing=_synapses_of_cell("pre", runs, chemical),
        n_incoming=_synapses_of_cell("post", runs, chemical),
        n_electrical=_synapses_of_cell("either", runs, electrical),
    ).order_by("segment_id")


def dataset_cell(*, dataset: Dataset, pk: int) -> Cell:
    return get_object_or_404(Cell.objects.filter(dataset=dataset), pk=pk)


def dataset_synapse(*, dataset: Dataset, pk: int) -> Synapse:
    return get_object_or_404(
        Synapse.objects.filter(dataset=dataset).select_related("pre", "post", "run"), pk=pk)


def synapse_reviews(*, synapse: Synapse) -> QuerySet[Review]:
    return (
        Review.objects.filter(synapse=synapse).select_related("reviewer", "corrected_pre")
        .prefetch_related("corrected_post").order_by("-pk")
    )


def cell_partner_tables(*, cell: Cell, runs=None) -> dict[str, list[dict]]:
    """Upstream and downstream (chemical) and electrical partners of ``cell`` (see
    :func:`connectome.synapses.connectivity.cell_partners`) as rows for a table, contact area
    in µm²."""
    partners = cell_partners(cell=cell, runs=runs, directions=DIRECTIONS)
    return {
        direction: [
            {**asdict(p), "contact_area_um2": None if p.contact_area_nm2 is None
             else p.contact_area_nm2 / 1e6}
            for p in found
        ]
        for direction, found in partners.items()
    }


#: Rows of each layer's error report that the cells page lists (the API has them all).
ERROR_ROWS_SHOWN = 50


@dataclass(frozen=True)
class LayerErrors:
    """The first rows of a segmentation layer's error report, as the cells page lists them."""

    layer: Layer
    kind: str
    rows: int
    shown: list[dict]


def error_reports(*, dataset: Dataset, base_url: str,
                  limit: int = ERROR_ROWS_SHOWN) -> list[LayerErrors]:
    """Per segmentation layer of ``dataset`` with an error report, its first ``limit`` rows
    located (:func:`connectome.cells.reports.located_rows`: cells, the voxel to look at and
    the viewer there, under ``base_url``), each with ``members``: (segment id, cell id or
    None) pairs."""
    from connectome.cells.reports import error_report, layers_with_reports, located_rows

    found = []
    for layer in layers_with_reports(dataset):
        report = error_report(layer)
        if report is None:
            continue
        ranked = list(enumerate(report.rows[:limit], 1))
        shown = located_rows(layer, ranked, base_url=base_url)
        for row in shown:
            row["members"] = list(zip(row["cells"], row["cell_ids"]))
        found.append(LayerErrors(layer=layer, kind=report.kind, rows=len(report.rows),
                                 shown=shown))
    return found
