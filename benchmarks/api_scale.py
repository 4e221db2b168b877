"""Connectivity API at the scale of a real connectome, on PostgreSQL.

Creates its own database (``connectome_bench`` by default; dropped at the end unless
``--keep``), migrates it, bulk-loads cells and synapses with COPY (binary format, built with
numpy), then times requests through the API with Django's test client (in-process, real URL
routing, authentication, permissions, serialisation):

- partners of a cell (``GET /api/cells/{id}/partners/``), random cells;
- synapses in a bounding box (``GET /api/synapses/?dataset=&bbox=``), random 4 um boxes;
- the wiring matrix among 1,000 cells (``POST /api/datasets/{id}/wiring/``);
- a page of a cell's outgoing synapses (``GET /api/synapses/?pre=``).

The synthetic connectome: cells with random uint64 segment ids (half above 2**63) and 500
types; each synapse's presynaptic cell is uniform, its postsynaptic cell within 2,000 cell
ids of it (so a run of 1,000 consecutive cells is densely wired, like a brain region), its
centre uniform in a 100 x 200 x 200 um box.

    .venv/bin/python benchmarks/api_scale.py --synapses 10000000 --cells 100000

Load timing covers the COPY of the synapses with the secondary indexes and foreign keys of
the synapse table dropped, then rebuilding them (B-trees, the GiST index on centres),
re-adding the foreign keys (validated) and VACUUM (ANALYZE).
"""

import argparse
import json
import logging
import os
import secrets
import sys
import time
from pathlib import Path

import numpy as np
import psycopg

logger = logging.getLogger("api_scale")

ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
VOLUME_NM = (100_000.0, 200_000.0, 200_000.0)  # z, y, x
N_TYPES = 500
NEIGHBOURHOOD = 2_000
BATCH = 500_000

# Synapse columns loaded, in COPY order: (name, numpy big-endian type or fixed bytes).
FLOAT_COLUMNS = ["pre_z", "pre_y", "pre_x", "post_z", "post_y", "post_x", "ctr_z", "ctr_y",
                 "ctr_x", "size_voxels", "size_nm3", "contact_area_nm2", "confidence", "weight"]
TEXT_VALUES = {"kind": b"chemical", "flag": b"", "method": b"bench",
               "review_state": b"unreviewed"}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synapses", type=int, default=10_000_000)
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--database", default="connectome_bench")
    parser.add_argument("--repeats", type=int, default=200, help="requests per query kind")
    parser.add_argument("--matrix-repeats", type=int, default=10)
    parser.add_argument("--matrix-cells", type=int, default=1_000)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--reuse", action="store_true",
                        help="measure on the database a --keep run left; no load")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def admin_execute(sql: str):
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


def setup_django(database: str):
    if not database.replace("_", "").isalnum() or "bench" not in database:
        raise SystemExit(f"refusing database name {database!r}: it must contain 'bench'")
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{database}"
    os.environ["DEBUG"] = "0"  # DEBUG keeps every query in memory
    os.environ["SECRET_KEY"] = secrets.token_urlsafe(40)
    os.environ["ALLOWED_HOSTS"] = "testserver"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "connectome.settings")
    import django

    django.setup()


def binary_rows(columns: list[tuple[str, str]], values: dict[str, np.ndarray], n: int) -> bytes:
    """PostgreSQL binary COPY tuples for ``n`` rows of fixed-width, non-null values."""
    fields = [("count", ">i2")]
    for name, kind in columns:
        fields.append((f"{name}_len", ">i4"))
        if kind != "S0":  # an empty string is its length alone
            fields.append((name, kind))
    rows = np.empty(n, dtype=fields)
    rows["count"] = len(columns)
    for name, kind in columns:
        rows[f"{name}_len"] = 0 if kind == "S0" else np.dtype(kind).itemsize
        if kind != "S0":
            rows[name] = values[name]
    return rows.tobytes()


COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)


def load_cells(conn, *, dataset_id: int, n_cells: int, rng) -> np.ndarray:
    """COPY ``n_cells`` cells with ids 1..n; returns their segment ids (int64 view)."""
    segment_ids = rng.choice(2**62, size=n_cells, replace=False).astype(np.uint64)
    segment_ids[::2] += np.uint64(2**63)  # half of them above 2**63, stored negative
    stored = segment_ids.view(np.int64)
    types = np.array([f"type-{i:03d}".encode() for i in rng.integers(0, N_TYPES, n_cells)])
    columns = [("id", ">i8"), ("dataset_id", ">i8"), ("segment_id", ">i8"),
               ("cell_type", "S8"), ("name", "S0")]
    values = {"id": np.arange(1, n_cells + 1), "dataset_id": dataset_id, "segment_id": stored,
              "cell_type": types, "name": b""}
    with conn.cursor() as cur:
        with cur.copy("COPY cells_cell (id, dataset_id, segment_id, cell_type, name) "
                      "FROM STDIN (FORMAT binary)") as copy:
            copy.write(COPY_HEADER + binary_rows(columns, values, n_cells) + COPY_TRAILER)
        cur.execute("SELECT setval(pg_get_serial_sequence('cells_cell', 'id'), %s)", [n_cells])
    return stored


def synapse_batch(rng, *, start: int, n: int, n_cells: int, dataset_id: int, run_id: int):
    pre = rng.integers(0, n_cells, n)
    offset = rng.integers(1, NEIGHBOURHOOD + 1, n) * rng.choice([-1, 1], n)
    post = (pre + offset) % n_cells
    centre = rng.random((n, 3)) * np.array(VOLUME_NM)
    size_voxels = rng.integers(10, 400, n).astype(np.float64)
    values = {
        "id": np.arange(start + 1, start + n + 1), "dataset_id": dataset_id, "run_id": run_id,
        "pre_id": pre + 1, "post_id": post + 1, "site_id": np.arange(start + 1, start + n + 1),
        "ctr_z": centre[:, 0], "ctr_y": centre[:, 1], "ctr_x": centre[:, 2],
        "pre_z": centre[:, 0], "pre_y": centre[:, 1], "pre_x": centre[:, 2] - 40.0,
        "post_z": centre[:, 0], "post_y": centre[:, 1], "post_x": centre[:, 2] + 40.0,
        "size_voxels": size_voxels, "size_nm3": size_voxels * 40.0 * 8.0 * 8.0,
        "contact_area_nm2": rng.lognormal(np.log(5e4), 0.6, n), "confidence": rng.random(n),
        "weight": np.ones(n), **TEXT_VALUES,
    }
    return values


def synapse_columns():
    columns = [(name, ">i8") for name in ("id", "dataset_id", "run_id", "pre_id", "post_id",
                                          "site_id")]
    columns += [(name, ">f8") for name in FLOAT_COLUMNS]
    columns += [(name, f"S{len(value)}" if value else "S0") for name, value in TEXT_VALUES.items()]
    return columns


def load_synapses(conn, *, n_synapses: int, n_cells: int, dataset_id: int, run_id: int,
                  rng) -> dict[str, float]:
    """Drop the synapse table's secondary indexes and foreign keys, COPY, rebuild; timed."""
    timings = {}
    with conn.cursor() as cur:
        cur.execute("SET maintenance_work_mem = '1GB'")
        cur.execute("""SELECT indexname, indexdef FROM pg_indexes WHERE tablename =
                       'synapses_synapse' AND indexname NOT LIKE '%%pkey'""")
        indexes = cur.fetchall()
        cur.execute("""SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
                       WHERE conrelid = 'synapses_synapse'::regclass AND contype = 'f'""")
        foreign_keys = cur.fetchall()
        for name, _ in foreign_keys:
            cur.execute(f'ALTER TABLE synapses_synapse DROP CONSTRAINT "{name}"')
        for name, _ in indexes:
            cur.execute(f'DROP INDEX "{name}"')
        conn.commit()

        columns = synapse_columns()
        names = ", ".join(name for name, _ in columns)
        start = time.perf_counter()
        generate = 0.0
        with cur.copy(f"COPY synapses_synapse ({names}) FROM STDIN (FORMAT binary)") as copy:
            copy.write(COPY_HEADER)
            for first in range(0, n_synapses, BATCH):
                n = min(BATCH, n_synapses - first)
                t0 = time.perf_counter()
                data = binary_rows(columns, synapse_batch(
                    rng, start=first, n=n, n_cells=n_cells, dataset_id=dataset_id,
                    run_id=run_id), n)
                generate += time.perf_counter() - t0
                copy.write(data)
                logger.info("copied %d / %d synapses", first + n, n_synapses)
            copy.write(COPY_TRAILER)
        conn.commit()
        timings["copy_s"] = time.perf_counter() - start
        timings["generate_s"] = generate
        cur.execute("SELECT setval(pg_get_serial_sequence('synapses_synapse', 'id'), %s)",
                    [n_synapses])

        start = time.perf_counter()
        for name, definition in indexes:
            t0 = time.perf_counter()
            cur.execute(definition)
            conn.commit()
            timings[f"index {name}_s"] = time.perf_counter() - t0
            logger.info("index %s: %.1f s", name, time.perf_counter() - t0)
        timings["indexes_s"] = time.perf_counter() - start
        start = time.perf_counter()
        for name, definition in foreign_keys:
            cur.execute(f'ALTER TABLE synapses_synapse ADD CONSTRAINT "{name}" {definition}')
            conn.commit()
        timings["foreign_keys_s"] = time.perf_counter() - start
        start = time.perf_counter()
        # VACUUM also sets the visibility map, without which no scan is index-only.
        conn.autocommit = True
        cur.execute("VACUUM (ANALYZE) synapses_synapse")
        cur.execute("VACUUM (ANALYZE) cells_cell")
        conn.autocommit = False
        timings["vacuum_analyze_s"] = time.perf_counter() - start
        cur.execute("SELECT pg_total_relation_size('synapses_synapse')")
        timings["table_bytes"] = cur.fetchone()[0]
    return timings


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000
    return {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "max_ms": float(ms.max())}


def timed(client, method: str, url: str, *, check, **kwargs) -> float:
    start = time.perf_counter()
    response = getattr(client, method)(url, **kwargs)
    body = b"".join(response.streaming_content) if response.streaming else response.content
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise SystemExit(f"{method.upper()} {url} gave {response.status_code}: {body[:300]!r}")
    check(json.loads(body))
    return elapsed


def measure(*, dataset_id: int, n_cells: int, repeats: int, matrix_repeats: int,
            matrix_cells: int, rng) -> dict:
    from django.contrib.auth import get_user_model
    from django.test import Client

    from connectome.datasets.models import Dataset, Membership

    user = get_user_model().objects.create_user("bench-viewer", password="bench")
    Membership.objects.create(dataset=Dataset.objects.get(pk=dataset_id), user=user,
                              role=Membership.Role.VIEWER)
    client = Client()
    client.force_login(user)
    figures = {}

    def partners(body):
        assert body["upstream"] and body["downstream"], body

    cells = rng.integers(1, n_cells + 1, repeats + 20)
    samples = [timed(client, "get", f"/api/cells/{c}/partners/", check=partners) for c in cells]
    figures["partners"] = percentiles(samples[20:])

    counts = []

    def boxed(body):
        counts.append(len(body["results"]))

    samples = []
    for _ in range(repeats + 20):
        lo = rng.random(3) * (np.array(VOLUME_NM) - 4000.0)
        box = ",".join(f"{v:.0f}" for v in [*lo, *(lo + 4000.0)])
        samples.append(timed(client, "get",
                             f"/api/synapses/?dataset={dataset_id}&bbox={box}&page_size=1000",
                             check=boxed))
    figures["bbox_4um"] = {**percentiles(samples[20:]),
                           "mean_synapses": float(np.mean(counts[20:]))}

    samples = []
    for c in cells:
        samples.append(timed(client, "get", f"/api/synapses/?pre={c}&page_size=100",
                             check=lambda body: None))
    figures["synapses_of_cell_page"] = percentiles(samples[20:])

    pairs = []

    def matrix(body):
        pairs.append((body["pairs"], body["synapses"]))

    samples = []
    for _ in range(matrix_repeats + 1):
        first = int(rng.integers(1, n_cells - matrix_cells))
        ids = list(range(first, first + matrix_cells))
        samples.append(timed(client, "post", f"/api/datasets/{dataset_id}/wiring/",
                             data={"cells": ids}, content_type="application/json",
                             check=matrix))
    figures["wiring_1000_cells"] = {**percentiles(samples[1:]),
                                    "mean_pairs": float(np.mean([p for p, _ in pairs[1:]])),
                                    "mean_synapses": float(np.mean([s for _, s in pairs[1:]]))}
    return figures


def main():
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    rng = np.random.default_rng(args.seed)
    setup_django(args.database)
    from django.core.management import call_command
    from django.db import connection

    if args.reuse:
        from connectome.datasets.models import Dataset

        dataset = Dataset.objects.get(name="bench")
        from django.contrib.auth import get_user_model

        get_user_model().objects.filter(username="bench-viewer").delete()
        try:
            figures = measure(dataset_id=dataset.pk, n_cells=dataset.cells.count(),
                              repeats=args.repeats, matrix_repeats=args.matrix_repeats,
                              matrix_cells=args.matrix_cells, rng=rng)
            result = {"synapses": dataset.synapses.count(), "cells": dataset.cells.count(),
                      "load_average": os.getloadavg(), **figures}
            print(json.dumps(result, indent=2))
            if args.json:
                args.json.write_text(json.dumps(result, indent=2) + "\n")
        finally:
            connection.close()
            if not args.keep:
                admin_execute(f'DROP DATABASE IF EXISTS "{args.database}"')
        return
    admin_execute(f'DROP DATABASE IF EXISTS "{args.database}"')
    admin_execute(f'CREATE DATABASE "{args.database}"')
    try:
        start = time.perf_counter()
        call_command("migrate", verbosity=0)
        logger.info("migrated in %.1f s", time.perf_counter() - start)
        from connectome.datasets.models import Dataset
        from connectome.synapses.models import SynapseRun

        dataset = Dataset.objects.create(name="bench", voxel_size_z=40, voxel_size_y=8,
                                         voxel_size_x=8)
        run = SynapseRun.objects.create(dataset=dataset, name="bench", method="bench")
        with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
            start = time.perf_counter()
            load_cells(conn, dataset_id=dataset.pk, n_cells=args.cells, rng=rng)
            conn.commit()
            cells_s = time.perf_counter() - start
            start = time.perf_counter()
            load = load_synapses(conn, n_synapses=args.synapses, n_cells=args.cells,
                                 dataset_id=dataset.pk, run_id=run.pk, rng=rng)
            load["total_s"] = time.perf_counter() - start
            load["cells_s"] = cells_s
        logger.info("loaded: %s", load)
        figures = measure(dataset_id=dataset.pk, n_cells=args.cells, repeats=args.repeats,
                          matrix_repeats=args.matrix_repeats, matrix_cells=args.matrix_cells,
                          rng=rng)
        result = {"synapses": args.synapses, "cells": args.cells, "load": load,
                  "load_average": os.getloadavg(), **figures}
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        connection.close()
        if not args.keep:
            admin_execute(f'DROP DATABASE IF EXISTS "{args.database}"')


if __name__ == "__main__":
    main()
