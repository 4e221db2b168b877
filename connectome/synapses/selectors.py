"""Reads on synapses."""

from django.db import connection
from django.db.models import QuerySet

from connectome.synapses.models import Synapse


def synapses_in_bbox(*, dataset, lo, hi) -> QuerySet[Synapse]:
    """Synapses whose centre lies in the box ``lo <= (z, y, x) <= hi`` (nm, inclusive).

    On PostgreSQL the condition is written as a ``cube`` containment so that the GiST index
    ``synapse_dataset_ctr_gist`` answers it; elsewhere it is a plain range filter.
    """
    return filter_in_bbox(Synapse.objects.filter(dataset=dataset), lo=lo, hi=hi)


def filter_in_bbox(queryset: QuerySet[Synapse], *, lo, hi) -> QuerySet[Synapse]:
    """``queryset`` narrowed to centres in ``lo <= (z, y, x) <= hi``; see :func:`synapses_in_bbox`.

    Filter by dataset too, so that PostgreSQL can use the GiST index (dataset_id, centre).
    """
    lo = [float(v) for v in lo]
    hi = [float(v) for v in hi]
    if len(lo) != 3 or len(hi) != 3 or any(a > b for a, b in zip(lo, hi)):
        raise ValueError(f"a bounding box needs lo <= hi in z, y, x; got {lo} and {hi}")
    if connection.vendor == "postgresql":
        return queryset.extra(
            where=[
                "ctr_z IS NOT NULL",
                "cube(ARRAY[ctr_z, ctr_y, ctr_x]) <@ cube(%s::float8[], %s::float8[])",
            ],
            params=[lo, hi],
        )
    return queryset.filter(
        ctr_z__gte=lo[0], ctr_z__lte=hi[0], ctr_y__gte=lo[1], ctr_y__lte=hi[1],
        ctr_x__gte=lo[2], ctr_x__lte=hi[2],
    )
