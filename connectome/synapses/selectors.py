"""Reads on synapses."""

from django.db import connection
from django.db.models import QuerySet

from connectome.synapses.models import Synapse
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
