"""Trigram indexes for searching cells by name and type on PostgreSQL.

The search (``connectome.search``) matches names case-insensitively anywhere in the name
(``UPPER(name) LIKE UPPER('%text%')``); without these indexes that is a scan of every cell,
0.6-0.75 s at a million cells (``docs/api.md``, *Search*). GIN indexes of the trigrams of the
upper-cased name and type (``pg_trgm``) find the matching rows directly. ``pg_trgm`` ships with
PostgreSQL and is a trusted extension (any user who may create objects in the database may
create it); where it cannot be created the migration leaves the indexes out, logging why, and
search still works, by scanning. Other databases scan.
"""

import logging

from django.db import DatabaseError, migrations, transaction

logger = logging.getLogger(__name__)

CREATE = """
CREATE INDEX IF NOT EXISTS cell_name_trgm ON cells_cell
    USING gin (UPPER(name::text) gin_trgm_ops);
CREATE INDEX IF NOT EXISTS cell_type_trgm ON cells_cell
    USING gin (UPPER(cell_type::text) gin_trgm_ops);
"""
DROP = """
DROP INDEX IF EXISTS cell_name_trgm;
DROP INDEX IF EXISTS cell_type_trgm;
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    try:
        with transaction.atomic(using=schema_editor.connection.alias):
            schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except DatabaseError as exc:
        logger.warning("search: no trigram indexes on cells (pg_trgm: %s); searching names "
                       "scans the cells", exc)
        return
    schema_editor.execute(CREATE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("cells", "0003_printable_names")]
    operations = [migrations.RunPython(forwards, backwards)]
