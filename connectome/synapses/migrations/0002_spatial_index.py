"""A GiST index on synapse centres for bounding-box queries on PostgreSQL.

``cube`` (a trusted contrib extension) indexes 3-D points; ``btree_gist`` lets the dataset id
share the index. Other databases keep the B-tree on (dataset, ctr_z, ctr_y, ctr_x).
"""

from django.db import migrations

CREATE = """
CREATE EXTENSION IF NOT EXISTS cube;
CREATE EXTENSION IF NOT EXISTS btree_gist;
CREATE INDEX IF NOT EXISTS synapse_dataset_ctr_gist ON synapses_synapse
    USING gist (dataset_id, cube(ARRAY[ctr_z, ctr_y, ctr_x]))
    WHERE ctr_z IS NOT NULL;
"""
DROP = "DROP INDEX IF EXISTS synapse_dataset_ctr_gist;"


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("synapses", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
