"""What one pass of the job sweep costs with many running jobs and blocks.

Every worker runs the sweep (``connectome.jobs.sweep.jobs_sweep``) every ``JOB_SWEEP_S``
seconds, so its cost is paid by the database once per worker per period. This creates its own
PostgreSQL database (dropped at the end; give ``--database``), migrates it, records ``--jobs``
running block-wise jobs of ``--blocks`` blocks each, their blocks running and beating now, plus
as many finished jobs, and times passes:

- steady: nothing is lost, the common case;
- lost: ``--lost`` of the running blocks (spread over the jobs) are silent for longer than
  ``JOB_STALE_S``; the pass sends them again (to ``--broker``, purged afterwards).

Figures: wall time and number of SQL queries per pass (median of ``--passes``).

    .venv/bin/python benchmarks/job_sweep.py --jobs 200 --blocks 500 --lost 100
"""

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--blocks", type=int, default=500, help="blocks per job")
    parser.add_argument("--lost", type=int, default=100, help="silent blocks in the lost pass")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--database", default="job_sweep_bench",
                        help="created and dropped: never a database you need")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/9")
    return parser.parse_args()


def setup(args, data_root: Path):
    if not args.database.replace("_", "").isalnum():
        raise SystemExit(f"refusing database name {args.database!r}")
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {args.database}")
        conn.execute(f"CREATE DATABASE {args.database}")
    os.environ.update({
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{args.database}",
        "CELERY_BROKER_URL": args.broker, "DATA_ROOT": str(data_root),
        "DJANGO_SETTINGS_MODULE": "connectome.settings", "LOG_LEVEL": "ERROR",
    })
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def populate(args):
    from django.utils import timezone

    from connectome.datasets.models import Dataset
    from connectome.jobs.models import Job, JobBlock

    dataset = Dataset.objects.create(name="bench", voxel_size_z=40, voxel_size_y=8,
                                     voxel_size_x=8)
    now = timezone.now()
    running = Job.objects.bulk_create([
        Job(kind="selftest_blocks", dataset=dataset, state=Job.State.RUNNING,
            step=Job.Step.BLOCKS, parameters={"blocks": args.blocks, "_max_attempts": 3},
            progress_total=args.blocks, started_at=now, attempts=1, task_id="bench")
        for _ in range(args.jobs)])
    Job.objects.bulk_create([
        Job(kind="selftest", dataset=dataset, state=Job.State.DONE, started_at=now,
            finished_at=now, attempts=1, task_id="bench") for _ in range(args.jobs)])
    for job in running:
        JobBlock.objects.bulk_create([
            JobBlock(job=job, index=i, box=[i, 0, 0, i + 1, 1, 1], state=JobBlock.State.RUNNING,
                     attempts=1, worker="bench:1", started_at=now, heartbeat_at=now)
            for i in range(args.blocks)], batch_size=5000)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")      # as autovacuum would soon after
    return running


def timed_pass():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from connectome.jobs.sweep import jobs_sweep

    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        report = jobs_sweep()
        wall = time.perf_counter() - started
    if os.environ.get("SHOW_QUERIES"):
        for q in queries.captured_queries:
            print(q["time"], q["sql"][:300])
    return wall, len(queries), report


def main():
    args = parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        setup(args, Path(tmp))
        from django.conf import settings
        from django.utils import timezone

        from connectome.celery import app
        from connectome.jobs.models import JobBlock

        try:
            running = populate(args)
            timed_pass()        # the first pass also sets the broker mark
            steady = [timed_pass()[:2] for _ in range(args.passes)]
            lost = []
            stale = timezone.now() - timedelta(seconds=settings.JOB_STALE_S + 60)
            every = max(1, args.jobs * args.blocks // max(1, args.lost))
            for _ in range(args.passes):
                ids = list(JobBlock.objects.filter(job__in=running).order_by("id")
                           .values_list("id", flat=True)[::every][:args.lost])
                JobBlock.objects.filter(id__in=ids).update(
                    state=JobBlock.State.RUNNING, heartbeat_at=stale, started_at=stale)
                wall, n, report = timed_pass()
                assert sum(len(v) for v in report.blocks.values()) == len(ids), report.blocks
                lost.append((wall, n))
                JobBlock.objects.filter(id__in=ids).update(
                    state=JobBlock.State.RUNNING, heartbeat_at=timezone.now())
        finally:
            app.control.purge()
            from django.db import connections

            connections.close_all()
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {args.database}")

    blocks = args.jobs * args.blocks
    print(f"{args.jobs} running jobs with {blocks} running blocks, {args.jobs} finished jobs")
    for name, runs in (("steady (nothing lost)", steady), (f"{args.lost} blocks lost", lost)):
        print(f"{name}: {statistics.median(w for w, _ in runs) * 1000:.1f} ms per pass, "
              f"{statistics.median(n for _, n in runs):.0f} queries")


if __name__ == "__main__":
    main()
