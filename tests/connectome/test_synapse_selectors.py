import pytest
from django.db import connection

from connectome.synapses.selectors import synapses_in_bbox
from tests.connectome.factories import DatasetFactory, SynapseFactory, SynapseRunFactory

pytestmark = pytest.mark.django_db


def _grid(run):
    return {
        (z, y, x): SynapseFactory(run=run, ctr_z=z, ctr_y=y, ctr_x=x).pk
        for z in (0.0, 40.0, 80.0) for y in (0.0, 100.0, 200.0) for x in (0.0, 100.0, 200.0)
    }


def test_bbox_query_is_inclusive_and_per_dataset():
    run = SynapseRunFactory()
    synapses = _grid(run)
    _grid(SynapseRunFactory(dataset=DatasetFactory()))  # another dataset, same points
    got = set(synapses_in_bbox(dataset=run.dataset, lo=(40, 50, 100), hi=(80, 200, 150))
              .values_list("pk", flat=True))
    expected = {pk for (z, y, x), pk in synapses.items()
                if 40 <= z <= 80 and 50 <= y <= 200 and 100 <= x <= 150}
    assert got == expected and len(expected) == 4


def test_inverted_bbox_is_an_error():
    with pytest.raises(ValueError, match="lo <= hi"):
        synapses_in_bbox(dataset=DatasetFactory(), lo=(10, 0, 0), hi=(0, 5, 5))


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the GiST index is PostgreSQL's")
def test_bbox_query_can_use_the_gist_index():
    run = SynapseRunFactory()
    _grid(run)
    queryset = synapses_in_bbox(dataset=run.dataset, lo=(0, 0, 0), hi=(50, 50, 50))
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        # On a few rows the planner may as well take the B-tree on (dataset, z, y, x) for the
        # z range; without it (this transaction only), the query must reach the GiST index.
        cursor.execute("DROP INDEX synapse_dataset_ctr")
        sql, params = queryset.query.sql_with_params()
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "synapse_ctr_xy_gist" in plan, plan
