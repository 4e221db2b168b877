"""Peak memory and speed of the streamed synapse-table downloads.

    python benchmarks/download_memory.py --rows 1000000 [--formats cnapse,cave,parquet]

Fills a scratch SQLite database with a dataset of ``--rows`` synapses between 1,000 cells
(one run), then, each in a fresh process, downloads the table through the API view
(``GET /api/datasets/{id}/synapse-table/?output=...``), reading the stream to its end the way
a client does, and prints the rows, bytes, wall time and that process's peak resident memory
(Django and all). A download that held the table would grow with ``--rows``; a streamed one
stays at one batch.
"""

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from phases import run_phase

CELLS = 1_000


def _django(scratch: Path):
    os.environ["DATABASE_URL"] = f"sqlite:///{scratch / 'bench.sqlite3'}"
    os.environ["DATA_ROOT"] = str(scratch / "data")
    os.environ["CONNECTOME_VAR_DIR"] = str(scratch / "var")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "connectome.settings")
    os.environ["LOG_LEVEL"] = "WARNING"
    import django

    django.setup()


def fill(scratch: Path, rows: int) -> None:
    _django(scratch)
    from django.core.management import call_command
    from django.db import connection, transaction

    from connectome.cells.models import Cell
    from connectome.datasets.models import Dataset
    from connectome.synapses.models import SynapseRun

    call_command("migrate", verbosity=0)
    dataset = Dataset.objects.create(name="bench", voxel_size_z=40, voxel_size_y=8,
                                     voxel_size_x=8, is_public=True)
    Cell.objects.bulk_create(Cell(dataset=dataset, segment_id=s + 1) for s in range(CELLS))
    cells = list(Cell.objects.filter(dataset=dataset).values_list("id", flat=True))
    run = SynapseRun.objects.create(dataset=dataset, name="detected", method="contact")
    sql = ("INSERT INTO synapses_synapse (dataset_id, run_id, kind, pre_id, post_id, site_id,"
           " external_id, ctr_z, ctr_y, ctr_x, size_voxels, confidence, flag, method,"
           " review_state) VALUES (%s, %s, 'chemical', %s, %s, %s, %s, %s, %s, %s, 20, 0.5,"
           " '', 'contact', 'unreviewed')")
    with transaction.atomic(), connection.cursor() as cursor:
        for start in range(0, rows, 50_000):
            cursor.executemany(sql, [
                (dataset.pk, run.pk, cells[i % CELLS], cells[(i * 7 + 1) % CELLS], i, i,
                 40.0 * (i % 50), 8.0 * (i % 997), 8.0 * (i % 991))
                for i in range(start, min(rows, start + 50_000))])
    print(json.dumps({"dataset": dataset.pk}))


def download(scratch: Path, dataset: int, table_format: str) -> None:
    _django(scratch)
    from django.test import Client

    start = time.perf_counter()
    response = Client(HTTP_HOST="localhost").get(f"/api/datasets/{dataset}/synapse-table/",
                                                  {"output": table_format})
    assert response.status_code == 200, response.content[:500]
    size = lines = 0
    for chunk in response.streaming_content:
        size += len(chunk)
        if table_format != "parquet":
            lines += chunk.count(b"\n")
    print(json.dumps({"format": table_format, "bytes": size,
                      "rows": lines - 1 if table_format != "parquet" else None,
                      "seconds": time.perf_counter() - start}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--formats", default="cnapse,cave,parquet")
    parser.add_argument("--phase", choices=["fill", "download"])
    parser.add_argument("--scratch")
    parser.add_argument("--dataset", type=int)
    parser.add_argument("--format")
    args = parser.parse_args()
    if args.phase == "fill":
        return fill(Path(args.scratch), args.rows)
    if args.phase == "download":
        return download(Path(args.scratch), args.dataset, args.format)

    scratch = Path(tempfile.mkdtemp(prefix="download-memory-"))
    try:
        started = time.perf_counter()
        out, _ = run_phase("benchmarks/download_memory.py", [
            "--phase", "fill", "--scratch", str(scratch), "--rows", str(args.rows)],
            capture=True)
        dataset = json.loads(out.strip().splitlines()[-1])["dataset"]
        print(f"filled {args.rows:,} synapses in {time.perf_counter() - started:.1f} s")
        for table_format in args.formats.split(","):
            out, peak = run_phase("benchmarks/download_memory.py", [
                "--phase", "download", "--scratch", str(scratch), "--dataset", str(dataset),
                "--format", table_format], capture=True)
            result = json.loads(out.strip().splitlines()[-1])
            rows = "" if result["rows"] is None else f"{result['rows']:,} rows, "
            print(f"{table_format:8s} {rows}{result['bytes'] / 2**20:.1f} MiB in "
                  f"{result['seconds']:.1f} s ({args.rows / result['seconds']:,.0f} rows/s); "
                  f"peak RSS {peak:.0f} MiB")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
