"""Covering indexes for partners and the wiring matrix on PostgreSQL.

A cell's partners and the matrix among a set of cells read synapses by (dataset, pre) or
(dataset, post) and need only the columns below. With them in the index (``INCLUDE``) these
reads are index-only scans (once VACUUM has set the visibility map) instead of one heap page
per synapse: at 10 million synapses the heap reads were most of their time
(``docs/benchmarks.md``). Other databases keep the plain (dataset, pre) and (dataset, post)
indexes.
"""

from django.db import migrations

COLUMNS = "id, run_id, confidence, contact_area_nm2, weight, flag, review_state"
CREATE = f"""
CREATE INDEX IF NOT EXISTS synapse_pre_post_covering ON synapses_synapse
    (dataset_id, pre_id, post_id) INCLUDE ({COLUMNS});
CREATE INDEX IF NOT EXISTS synapse_post_pre_covering ON synapses_synapse
    (dataset_id, post_id, pre_id) INCLUDE ({COLUMNS});
"""
DROP = """
DROP INDEX IF EXISTS synapse_pre_post_covering;
DROP INDEX IF EXISTS synapse_post_pre_covering;
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("synapses", "0003_synapse_weight_flag")]
    operations = [migrations.RunPython(forwards, backwards)]
