"""The covering indexes of migration 0004 with the synapse kind among their columns.

Partners and the wiring matrix count chemical and electrical synapses apart, so they filter
on ``kind``; without it in the index those reads would go back to the heap for every synapse.
"""

from django.db import migrations

OLD_COLUMNS = "id, run_id, confidence, contact_area_nm2, weight, flag, review_state"
COLUMNS = f"{OLD_COLUMNS}, kind"


def _create(columns: str) -> str:
    return f"""
DROP INDEX IF EXISTS synapse_pre_post_covering;
DROP INDEX IF EXISTS synapse_post_pre_covering;
CREATE INDEX synapse_pre_post_covering ON synapses_synapse
    (dataset_id, pre_id, post_id) INCLUDE ({columns});
CREATE INDEX synapse_post_pre_covering ON synapses_synapse
    (dataset_id, post_id, pre_id) INCLUDE ({columns});
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_create(COLUMNS))


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_create(OLD_COLUMNS))


class Migration(migrations.Migration):
    dependencies = [("synapses", "0008_printable_names")]
    operations = [migrations.RunPython(forwards, backwards)]
