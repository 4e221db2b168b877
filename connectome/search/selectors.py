"""Search: what a text or a number names among the datasets a user can see.

A whole number is an id: the cells with that segment id (kind ``segment``), the synapse and
the cell with that database id. Any other text matches dataset names, cell names and cell
types, case-insensitively, anywhere in the name; exact matches come first, then names that
start with the text, then the others, each in name order. Every kind returns at most ``limit``
results and says whether there were more.

Only datasets the user can see are searched (public ones, those of their memberships; staff
see all): a private dataset's cells and synapses never appear, nor are they counted.
"""

import re
from dataclasses import dataclass, field
from urllib.parse import urlencode

from django.db.models import Case, Count, IntegerField, QuerySet, Value, When
from django.urls import reverse

from connectome.cells.models import Cell
from connectome.common.fields import UINT64_MAX
from connectome.common.params import MAX_ID
from connectome.datasets.models import Dataset
from connectome.datasets.selectors import datasets_visible_to
from connectome.synapses.models import Synapse

#: The kinds of result.
KINDS = ("dataset", "cell_type", "cell", "segment", "synapse")
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_QUERY_LENGTH = 200

_NUMBER = re.compile(r"[0-9]+", re.ASCII)


@dataclass
class SearchResults:
    q: str
    number: int | None
    dataset: int | None
    limit: int
    results: list[dict] = field(default_factory=list)
    #: The kinds that had more than ``limit`` matches.
    more: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[dict]:
        return [result for result in self.results if result["kind"] == kind]


def search(*, user, q: str, dataset: Dataset | None = None,
           limit: int = DEFAULT_LIMIT) -> SearchResults:
    """Datasets, cell types, cells, segments and synapses that ``q`` names, among the datasets
    ``user`` can see (only ``dataset``, when given: the caller checks that it is visible)."""
    q = q.strip()
    if dataset is not None:
        names = {dataset.pk: dataset.name}
    else:
        # A short list (the datasets one can see), so that the lookups below are probes of the
        # (dataset, ...) indexes, one per dataset, instead of a join.
        names = dict(datasets_visible_to(user).order_by().values_list("pk", "name"))
    number = int(q) if _NUMBER.fullmatch(q) else None
    found = SearchResults(q=q, number=number, dataset=dataset and dataset.pk, limit=limit)
    if not names or not q:
        return found
    ids = sorted(names)
    if number is None:
        if dataset is None:
            _add(found, "dataset", _datasets(ids, q, limit), names)
        _add(found, "cell_type", _cell_types(ids, q, limit), names)
        _add(found, "cell", _cells(Cell.objects.filter(dataset_id__in=ids, name__icontains=q),
                                   q, limit), names)
    else:
        if number <= UINT64_MAX:
            _add(found, "segment", _cells(
                Cell.objects.filter(dataset_id__in=ids, segment_id=number), q, limit), names)
        if 0 < number <= MAX_ID:
            _add(found, "synapse", _synapses(ids, number), names)
            _add(found, "cell", _cells(Cell.objects.filter(dataset_id__in=ids, pk=number),
                                       q, limit), names)
    return found


def _rank(column: str, q: str) -> Case:
    """0 for an exact match of ``column`` (any case), 1 for a prefix, 2 for the others."""
    return Case(When(**{f"{column}__iexact": q}, then=Value(0)),
                When(**{f"{column}__istartswith": q}, then=Value(1)),
                default=Value(2), output_field=IntegerField())


def _add(found: SearchResults, kind: str, rows: list[dict], names: dict[int, str]):
    if len(rows) > found.limit:
        found.more.append(kind)
        rows = rows[:found.limit]
    for row in rows:
        found.results.append({"kind": kind, "dataset": row["dataset"],
                              "dataset_name": names[row["dataset"]], **_shaped(kind, row)})


def _datasets(ids: list[int], q: str, limit: int) -> list[dict]:
    rows = (Dataset.objects.filter(pk__in=ids, name__icontains=q)
            .annotate(rank=_rank("name", q)).order_by("rank", "name", "pk")
            .values("pk", "name", "description")[:limit + 1])
    return [{"dataset": row["pk"], **row} for row in rows]


def _cell_types(ids: list[int], q: str, limit: int) -> list[dict]:
    rows = (Cell.objects.filter(dataset_id__in=ids, cell_type__icontains=q)
            .values("dataset_id", "cell_type").annotate(cells=Count("pk"))
            .annotate(rank=_rank("cell_type", q))
            .order_by("rank", "cell_type", "dataset_id")[:limit + 1])
    return [{"dataset": row["dataset_id"], **row} for row in rows]


def _cells(cells: QuerySet[Cell], q: str, limit: int) -> list[dict]:
    rows = (cells.annotate(rank=_rank("name", q)).order_by("rank", "name", "pk")
            .values("pk", "dataset_id", "segment_id", "name", "cell_type")[:limit + 1])
    return [{"dataset": row["dataset_id"], **row} for row in rows]


def _synapses(ids: list[int], pk: int) -> list[dict]:
    rows = (Synapse.objects.filter(pk=pk, dataset_id__in=ids)
            .values("pk", "dataset_id", "run_id", "run__name", "kind", "pre_id", "post_id",
                    "pre__segment_id", "post__segment_id", "pre__name", "post__name",
                    "pre__cell_type", "post__cell_type", "review_state"))
    return [{"dataset": row["dataset_id"], **row} for row in rows]


def _segment_text(value) -> str | None:
    return None if value is None else str(value)


def _shaped(kind: str, row: dict) -> dict:
    """A result's own fields, with the address of its page and of its API resource."""
    dataset = row["dataset"]
    if kind == "dataset":
        return {"id": dataset, "name": row["name"], "description": row["description"],
                "url": reverse("web:dataset", args=[dataset]),
                "api": reverse("dataset-detail", args=[dataset])}
    if kind == "cell_type":
        return {"cell_type": row["cell_type"], "cells": row["cells"],
                "url": reverse("web:cells", args=[dataset]) + _type_query(row["cell_type"]),
                "api": reverse("cell-list") + f"?dataset={dataset}&"
                                              + _type_query(row["cell_type"])[1:]}
    if kind in ("cell", "segment"):
        return {"id": row["pk"], "segment_id": str(row["segment_id"]), "name": row["name"],
                "cell_type": row["cell_type"],
                "url": reverse("web:cell", args=[dataset, row["pk"]]),
                "api": reverse("cell-detail", args=[row["pk"]])}
    return {"id": row["pk"], "run": row["run_id"], "run_name": row["run__name"],
            "synapse_kind": row["kind"], "pre": row["pre_id"], "post": row["post_id"],
            "pre_segment_id": _segment_text(row["pre__segment_id"]),
            "post_segment_id": _segment_text(row["post__segment_id"]),
            "pre_name": row["pre__name"], "post_name": row["post__name"],
            "pre_type": row["pre__cell_type"], "post_type": row["post__cell_type"],
            "review_state": row["review_state"],
            "url": reverse("web:synapse", args=[dataset, row["pk"]]),
            "api": reverse("synapse-detail", args=[row["pk"]])}


def _type_query(cell_type: str) -> str:
    return "?" + urlencode({"cell_type": cell_type})
