"""The pages: home, dataset overview, review queue, wiring matrix, cells, a cell, a synapse.

Server-rendered; the live parts (job progress, the queue, the matrix) are plain JavaScript
under ``frontend/static/web`` that talks to the REST API with the session's cookie. Every
page of a dataset 404s for a dataset the user cannot see, as the API does.
"""

from django.db import connection
from django.http import JsonResponse
from django.shortcuts import render
from django.urls import reverse

from connectome.datasets.selectors import datasets_visible_to
from connectome.jobs.models import Job
from connectome.review.selectors import (
    precision_estimate,
    review_batches,
    review_progress,
)
from connectome.synapses.models import Synapse
from connectome.synapses.selectors import default_run
from connectome.synapses.wiring import KINDS
from connectome.viewer.state import PALETTE
from connectome.web import selectors

#: The token of the embedded viewer client (one client serves every page).
VIEWER_TOKEN = "connectome"


def home(request):
    datasets = selectors.datasets_with_counts(user=request.user)
    jobs = Job.objects.filter(dataset__in=datasets_visible_to(request.user)).select_related(
        "dataset")[:20]
    return render(request, "web/home.html", {"datasets": datasets, "jobs": jobs})


def healthz(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok", "database": connection.vendor})


def _page(request, dataset, **context):
    if "access" not in context:
        context["access"] = selectors.dataset_access(dataset=dataset, user=request.user)
    return {"dataset": dataset,
            "viewer_client": reverse("viewer:client", args=[VIEWER_TOKEN]), **context}


def _viewer_state_url(request, kind: str, pk: int, choice=None) -> str:
    """Absolute URL of a viewer-state endpoint: the client takes ``#!<url>`` and fetches it.
    With the page's run ``choice``, the state shows the synapses of the same run(s) (the
    state's own default is the dataset's default run too)."""
    url = request.build_absolute_uri(reverse(f"viewer:{kind}-state", args=[pk]))
    if choice is not None and (choice.runs is None or choice.run != choice.default):
        url += f"?run={choice.query}"
    return url


def dataset_detail(request, pk):
    dataset = selectors.visible_dataset(user=request.user, pk=pk)
    # One run by default (?run=all sums them): the counts, the review progress and the
    # precision are those of the run the review queue opens on.
    choice = selectors.run_choice(dataset=dataset, value=request.GET.get("run"))
    precision = precision_estimate(dataset=dataset, run=choice.run)
    return render(request, "web/dataset.html", _page(
        request, dataset, choice=choice,
        layers=selectors.dataset_layers(dataset=dataset),
        counts=selectors.dataset_counts(dataset=dataset, runs=choice.runs),
        runs=[(run, precision_estimate(dataset=dataset, run=run)["synapse"])
              for run in selectors.dataset_runs(dataset=dataset)],
        jobs=selectors.dataset_jobs(dataset=dataset),
        downloads=selectors.dataset_downloads(dataset=dataset),
        progress=review_progress(dataset=dataset, run=choice.run),
        batches=review_batches(dataset=dataset),
        precision=precision, precision_rows=_precision_rows(precision),
        viewer_state=_viewer_state_url(request, "dataset", dataset.pk, choice),
    ))


def _precision_rows(precision: dict) -> list[tuple[str, dict]]:
    return [("Synapses", precision["synapse"]), ("Connections", precision["connection"])]


def review_queue(request, pk):
    dataset = selectors.visible_dataset(user=request.user, pk=pk)
    access = selectors.dataset_access(dataset=dataset, user=request.user)
    runs = list(selectors.dataset_runs(dataset=dataset))
    synapse, run = request.GET.get("synapse", ""), request.GET.get("run", "")
    config = {
        "dataset": dataset.pk,
        "runs": [{"id": r.pk, "name": r.name, "synapses": r.n_synapses} for r in runs],
        # ?synapse=<id> opens that synapse first (from the wiring matrix or a synapse page).
        "synapse": int(synapse) if synapse.isdigit() else None,
        # ?run=<id> chooses the run (from the dataset page); else the browser's last choice.
        "run": int(run) if run.isdigit() and int(run) in {r.pk for r in runs} else None,
        "can_review": access.can_review,
        # The viewer states' colours, for the panel's labels and legend.
        "palette": PALETTE,
    }
    # Without a choice, the dataset's default run (the one its pages count): reviewers judge
    # what a detection found.
    default = default_run(dataset=dataset)
    selected_run = config["run"] or (default.pk if default else None)
    if config["can_review"] or config["synapse"]:
        # The client starts empty and the page restores the first synapse into it, with no
        # chunks of a whole-dataset view loading meanwhile.
        viewer_state = "{}"
    else:
        viewer_state = _viewer_state_url(request, "dataset", dataset.pk)
    return render(request, "web/review.html", _page(
        request, dataset, access=access, runs=runs, selected_run=selected_run, config=config,
        viewer_state=viewer_state, progress=review_progress(dataset=dataset, run=selected_run),
    ))


def wiring(request, pk):
    dataset = selectors.visible_dataset(user=request.user, pk=pk)
    runs = list(selectors.dataset_runs(dataset=dataset))
    choice = selectors.run_choice(dataset=dataset, value=request.GET.get("run"))
    kind = request.GET.get("kind")
    return render(request, "web/wiring.html", _page(
        request, dataset, runs=runs, choice=choice,
        config={"dataset": dataset.pk,
                "runs": [{"id": run.pk, "name": run.name} for run in runs],
                "run": choice.query, "default_run": choice.default and choice.default.pk,
                "kind": kind if kind in KINDS else Synapse.Kind.CHEMICAL.value},
    ))


def cell_list(request, pk):
    dataset = selectors.visible_dataset(user=request.user, pk=pk)
    choice = selectors.run_choice(dataset=dataset, value=request.GET.get("run"))
    cells = selectors.dataset_cells(dataset=dataset, runs=choice.runs)
    # ?cell_type=<type> (from a search) lists the cells of one type.
    cell_type = request.GET.get("cell_type")
    if cell_type is not None:
        cells = cells.filter(cell_type=cell_type.replace("\x00", ""))
    errors = selectors.error_reports(dataset=dataset,
                                     base_url=request.build_absolute_uri("/").rstrip("/"))
    return render(request, "web/cells.html", _page(
        request, dataset, choice=choice, runs=selectors.dataset_runs(dataset=dataset),
        cells=cells, cell_type=cell_type, error_reports=errors))


def cell_detail(request, pk, cell_id):
    dataset = selectors.visible_dataset(user=request.user, pk=pk)
    cell = selectors.dataset_cell(dataset=dataset, pk=cell_id)
    runs = list(selectors.dataset_runs(dataset=dataset))
    choice = selectors.run_choice(dataset=dataset, value=request.GET.get("run"))
    partners = selectors.cell_partner_tables(cell=cell, runs=choice.runs)
    return render(request, "web/cell.html", _page(
        request, dataset, cell=cell, runs=runs, choice=choice,
        skeletons=cell.skeletons.defer("nodes"), upstream=partners["upstream"],
        downstream=partners["downstream"], electrical=partners["electrical"],
        viewer_state=_viewer_state_url(request, "cell", cell.pk, choice),
    ))


def synapse_detail(request, pk, synapse_id):
    dataset = selectors.visible_dataset(user=request.user, pk=pk)
    synapse = selectors.dataset_synapse(dataset=dataset, pk=synapse_id)
    # The client starts empty; the page restores the synapse's state with its cells coloured.
    config = {
        "state": reverse("viewer:synapse-state", args=[synapse.pk]),
        "pre_segment_id": None if synapse.pre is None else str(synapse.pre.segment_id),
        "post_segment_id": None if synapse.post is None else str(synapse.post.segment_id),
    }
    return render(request, "web/synapse.html", _page(
        request, dataset, synapse=synapse, config=config, viewer_state="{}",
        reviews=selectors.synapse_reviews(synapse=synapse),
    ))
