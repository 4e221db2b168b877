"""Counts of the synapses the review queue serves, kept by triggers on PostgreSQL.

The queue's progress (total, reviewed, per verdict) counted every reviewable synapse of the
dataset on each call: seconds at ten million synapses. Statement-level triggers with
transition tables keep one row per (dataset, run, review state) instead; a COPY or a bulk
update costs one aggregation of the rows it touched. SQLite keeps counting (no triggers).
"""

from django.db import migrations, models

# What review.services.reviewable_synapses selects.
REVIEWABLE = "flag = '' AND pre_id IS NOT NULL AND post_id IS NOT NULL"

# Sorted by key so that concurrent statements lock the count rows in one order.
UPSERT = """
    INSERT INTO review_reviewablecount AS c (dataset_id, run_id, review_state, synapses)
    SELECT dataset_id, run_id, review_state, sum(delta) FROM ({rows}) d
    GROUP BY dataset_id, run_id, review_state HAVING sum(delta) <> 0
    ORDER BY dataset_id, run_id, review_state
    ON CONFLICT (dataset_id, run_id, review_state)
    DO UPDATE SET synapses = c.synapses + EXCLUDED.synapses;
"""
NEW = f"SELECT dataset_id, run_id, review_state, 1 AS delta FROM new_rows WHERE {REVIEWABLE}"
OLD = f"SELECT dataset_id, run_id, review_state, -1 AS delta FROM old_rows WHERE {REVIEWABLE}"

FUNCTIONS = {
    "insert": UPSERT.format(rows=NEW),
    "delete": UPSERT.format(rows=OLD),
    "update": UPSERT.format(rows=f"{OLD} UNION ALL {NEW}"),
    "truncate": "DELETE FROM review_reviewablecount;",
}
TRANSITIONS = {
    "insert": "REFERENCING NEW TABLE AS new_rows",
    "delete": "REFERENCING OLD TABLE AS old_rows",
    "update": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "truncate": "",
}

FILL = f"""
    INSERT INTO review_reviewablecount (dataset_id, run_id, review_state, synapses)
    SELECT dataset_id, run_id, review_state, count(*) FROM synapses_synapse
    WHERE {REVIEWABLE} GROUP BY dataset_id, run_id, review_state;
"""


def create_triggers(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for event, body in FUNCTIONS.items():
        schema_editor.execute(f"""
            CREATE FUNCTION review_count_{event}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN {body} RETURN NULL; END $$;""")
        schema_editor.execute(f"""
            CREATE TRIGGER review_count_{event} AFTER {event.upper()} ON synapses_synapse
            {TRANSITIONS[event]} FOR EACH STATEMENT EXECUTE FUNCTION review_count_{event}();""")
    schema_editor.execute(FILL)


def drop_triggers(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for event in FUNCTIONS:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS review_count_{event} ON synapses_synapse")
        schema_editor.execute(f"DROP FUNCTION IF EXISTS review_count_{event}()")


class Migration(migrations.Migration):

    dependencies = [
        ('review', '0002_queue'),
        ('synapses', '0007_drop_redundant_indexes'),
    ]

    operations = [
        migrations.CreateModel(
            name='ReviewableCount',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('dataset_id', models.BigIntegerField()),
                ('run_id', models.BigIntegerField()),
                ('review_state', models.CharField(max_length=16)),
                ('synapses', models.BigIntegerField(default=0)),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('dataset_id', 'run_id', 'review_state'), name='unique_reviewable_count')],
            },
        ),
        migrations.RunPython(create_triggers, drop_triggers),
    ]
