"""Search (``GET /api/search/``) at the scale of a large segmentation, on PostgreSQL.

Creates its own database (``search_bench`` by default; dropped at the end unless ``--keep``),
migrates it, loads ``--cells`` cells into one public dataset by COPY (random uint64 segment
ids, half above 2**63; 500 types ``T000``..``T499``; names ``<type>_<cell number>``, so that a
type prefix matches thousands of names) and ``--synapses`` synapses between them, then times
searches through the whole API in-process (Django's test client: routing, an anonymous
user, the visibility of datasets, serialisation), each kind of query ``--repeats`` times
after 5 warm-up requests:

- a segment id, a synapse id (numbers: index probes);
- a whole cell name (exact match), a type prefix (thousands of matches, the first 20 in
  name order), a rare text inside names (a few matches), a text that matches nothing.

    .venv/bin/python benchmarks/search_scale.py --cells 1000000 --json docs/search_scale.json
"""

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import psycopg

# The scale benchmarks share their database scaffolding (run from this folder, as scripts).
from api_scale import admin_execute, percentiles, setup_django

logger = logging.getLogger("search_scale")
N_TYPES = 500


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--synapses", type=int, default=1_000_000)
    parser.add_argument("--database", default="search_bench")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--reuse", action="store_true", help="measure on a kept database")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def load(*, n_cells: int, n_synapses: int, rng) -> dict:
    """The dataset, its cells and synapses; returns what the queries need."""
    from connectome.datasets.models import Dataset
    from connectome.synapses.models import SynapseRun

    dataset = Dataset.objects.create(name="bench", voxel_size_z=40, voxel_size_y=8,
                                     voxel_size_x=8, is_public=True)
    run = SynapseRun.objects.create(dataset=dataset, name="bench", method="bench")
    segment_ids = rng.choice(2**62, size=n_cells, replace=False).astype(np.uint64)
    segment_ids[::2] += np.uint64(2**63)
    stored = segment_ids.view(np.int64)
    types = rng.integers(0, N_TYPES, n_cells)
    start = time.perf_counter()
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn, conn.cursor() as cur:
        with cur.copy("COPY cells_cell (id, dataset_id, segment_id, cell_type, name) "
                      "FROM STDIN") as copy:
            for i in range(n_cells):
                copy.write_row((i + 1, dataset.pk, int(stored[i]), f"T{types[i]:03d}",
                                f"T{types[i]:03d}_{i + 1}"))
        cur.execute("SELECT setval(pg_get_serial_sequence('cells_cell', 'id'), %s)", [n_cells])
        cur.execute("""
            INSERT INTO synapses_synapse (dataset_id, run_id, kind, pre_id, post_id, flag,
                method, review_state, ctr_z, ctr_y, ctr_x)
            SELECT %(dataset)s, %(run)s, 'chemical', 1 + (g * 7919) %% %(cells)s,
                   1 + (g * 104729) %% %(cells)s, '', 'bench', 'unreviewed', 0, 0, 0
            FROM generate_series(1::bigint, %(synapses)s) g""",
                    {"dataset": dataset.pk, "run": run.pk, "cells": n_cells,
                     "synapses": n_synapses})
        conn.commit()
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) cells_cell")
        conn.execute("VACUUM (ANALYZE) synapses_synapse")
    return {"load_s": time.perf_counter() - start}


def measure(*, repeats: int, rng) -> dict:
    from django.db import connection
    from django.test import Client

    from connectome.cells.models import Cell
    from connectome.synapses.models import Synapse

    n_cells = Cell.objects.count()
    cell_ids = Cell.objects.order_by("pk").values_list("pk", flat=True)
    synapse_max = Synapse.objects.order_by("-pk").values_list("pk", flat=True)[0]
    client = Client()

    def sample(kind: str) -> tuple[str, object]:
        """A query of ``kind`` and what its first result must be (None: no result)."""
        cell = Cell.objects.get(pk=cell_ids[int(rng.integers(0, n_cells))])
        if kind == "segment id":
            return str(cell.segment_id), ("segment", cell.pk)
        if kind == "synapse id":
            pk = int(rng.integers(1, synapse_max + 1))
            return str(pk), ("synapse", pk)
        if kind == "exact name":
            return cell.name, ("cell", cell.pk)
        if kind == "type prefix":
            return cell.cell_type[:3].lower(), ("cell_type", None)
        if kind == "rare text inside names":
            return f"_{cell.pk}", ("cell", None)
        return "no such name", None

    figures = {}
    for kind in ["segment id", "synapse id", "exact name", "type prefix",
                 "rare text inside names", "nothing"]:
        samples = []
        for i in range(repeats + 5):
            q, first = sample(kind)
            start = time.perf_counter()
            response = client.get("/api/search/", {"q": q})
            elapsed = time.perf_counter() - start
            if response.status_code != 200:
                raise SystemExit(f"search {q!r} gave {response.status_code}: "
                                 f"{response.content[:300]!r}")
            results = response.json()["results"]
            if first is None:
                assert results == [], (q, results[:2])
            else:
                assert results and results[0]["kind"] == first[0], (q, results[:2])
                assert first[1] is None or results[0].get("id") == first[1], (q, results[:2])
            if i >= 5:
                samples.append(elapsed)
        figures[kind] = percentiles(samples)
        logger.info("%s: %s", kind, figures[kind])
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'cells_cell' "
                       "ORDER BY 1")
        figures["cell_indexes"] = [row[0] for row in cursor.fetchall()]
    return figures


def main():
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    rng = np.random.default_rng(args.seed)
    if not args.reuse:
        admin_execute(f'DROP DATABASE IF EXISTS "{args.database}"')
        admin_execute(f'CREATE DATABASE "{args.database}"')
    setup_django(args.database)
    from django.core.management import call_command
    from django.db import connection

    try:
        call_command("migrate", verbosity=0)
        loaded = {} if args.reuse else load(n_cells=args.cells, n_synapses=args.synapses,
                                            rng=rng)
        from connectome.cells.models import Cell
        from connectome.synapses.models import Synapse

        result = {"cells": Cell.objects.count(), "synapses": Synapse.objects.count(),
                  **loaded, "load_average": os.getloadavg(),
                  **measure(repeats=args.repeats, rng=rng)}
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        connection.close()
        if not args.keep:
            admin_execute(f'DROP DATABASE IF EXISTS "{args.database}"')


if __name__ == "__main__":
    main()
