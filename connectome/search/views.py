"""The search page, ``/search/?q=...`` (``&dataset=<id>`` to search one dataset)."""

from django.shortcuts import render

from connectome.search.selectors import MAX_QUERY_LENGTH, search
from connectome.web import selectors

#: The kinds of result as the page heads them.
HEADINGS = {"dataset": "Datasets", "cell_type": "Cell types", "segment": "Cells by segment id",
            "synapse": "Synapses", "cell": "Cells"}


def search_page(request):
    q = request.GET.get("q", "").strip()[:MAX_QUERY_LENGTH].replace("\x00", "")
    scope = request.GET.get("dataset", "")
    # An unknown or invisible dataset is a 404, as on the dataset's own pages.
    dataset = selectors.visible_dataset(user=request.user, pk=int(scope)) \
        if scope.isdecimal() and scope.isascii() else None
    found = search(user=request.user, q=q, dataset=dataset) if q else None
    groups = [] if found is None else [
        (kind, heading, found.of_kind(kind), kind in found.more)
        for kind, heading in HEADINGS.items() if found.of_kind(kind)]
    context = {"q": q, "found": found, "groups": groups, "search_scope": dataset}
    if dataset is not None:
        # The dataset's navigation in the header, and its search box scoped to it.
        context.update(dataset=dataset,
                       access=selectors.dataset_access(dataset=dataset, user=request.user))
    return render(request, "web/search.html", context)
