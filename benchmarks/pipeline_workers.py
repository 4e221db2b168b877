"""Block-wise detection jobs on 1 and 2 worker processes: wall time, blocks/s, overhead.

Creates its own PostgreSQL database (``pipeline_bench``, dropped at the end), migrates it,
imports a phantom EM volume, trains a small voxel classifier on another phantom, then for each
worker count starts that many Celery workers (``--pool solo``, one block at a time each,
``OMP_NUM_THREADS=1``) over Redis, waits until they answer a ping, and runs

- a ``detect_synapses`` job over the whole volume, and
- a ``selftest_blocks`` job of empty blocks (nothing computed), which isolates what the
  scheduling costs per block, and
- a ``selftest_blocks`` job of blocks that sleep 0.25 s: work that takes time but no CPU,
  which shows how blocks spread over workers even on a machine whose cores are busy.

Figures per run:

- wall: from the job's creation to its end, split into the time until the first block
  starts (a worker takes the job, loads the model, creates the probability layer, records
  and sends the blocks), the block phase and the final step (stitch, pyramids, store);
- blocks/s: blocks over the block phase (first block start to last block end);
- overhead per block: (workers x block-phase wall - time inside the block handlers) / blocks,
  i.e. worker time not spent computing: broker round trips, the claim and done transactions,
  reading the job row, and idle time at the end of the phase. For the empty blocks this is all
  there is.

    .venv/bin/python benchmarks/pipeline_workers.py --shape 32 384 384 --block 16 128 128
"""

import argparse
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ROOT = Path(__file__).resolve().parents[1]
VOXEL = (40.0, 8.0, 8.0)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 384, 384])
    parser.add_argument("--block", type=int, nargs=3, default=[16, 128, 128])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--empty-blocks", type=int, default=200)
    parser.add_argument("--sleep-blocks", type=int, default=40,
                        help="blocks that sleep 0.25 s without using the CPU")
    parser.add_argument("--database", default="pipeline_bench")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    return parser.parse_args()


def setup(args, data_root: Path):
    if "bench" not in args.database or not args.database.replace("_", "").isalnum():
        raise SystemExit(f"refusing database name {args.database!r}: it must contain 'bench'")
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {args.database}")
        conn.execute(f"CREATE DATABASE {args.database}")
    os.environ.update({
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{args.database}",
        "CELERY_BROKER_URL": args.broker, "DATA_ROOT": str(data_root), "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(40), "OMP_NUM_THREADS": "1",
        "DJANGO_SETTINGS_MODULE": "connectome.settings",
    })
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def make_inputs(args, folder: Path):
    from connectome.datasets.services import dataset_create
    from connectome.imports.volumes import import_volume
    from detection.synapses.classify import (
        TrainingParameters,
        clean_targets,
        labels_to_targets,
        train_voxel_classifier,
    )
    from detection.synapses.features import FeatureSpec
    from detection.synthetic.phantom import make_phantom, write_phantom_h5

    training = make_phantom((16, 128, 128), voxel_size=VOXEL, n_cells=14, n_synapses=14, seed=1)
    targets = clean_targets(labels_to_targets(training.synapse_labels, convention="binary"),
                            voxel_size=VOXEL, ignore_band_nm=16.0)
    model = train_voxel_classifier(
        training.em, targets, voxel_size=VOXEL, feature_spec=FeatureSpec(scales_nm=(10.0, 20.0)),
        parameters=TrainingParameters(n_estimators=30, max_samples=30_000))
    model_path = model.save(folder / "synapses.model")
    phantom = make_phantom(tuple(args.shape), voxel_size=VOXEL, n_cells=40,
                           n_synapses=max(20, int(80 * args.shape[0] * args.shape[1] * args.shape[2]
                                                  / (48 * 384 * 384))), seed=2)
    write_phantom_h5(phantom, folder / "phantom.h5")
    dataset = dataset_create(name="pipeline-bench", voxel_size=VOXEL)
    em = import_volume(dataset=dataset, source=str(folder / "phantom.h5"), name="em", kind="em",
                       dataset_path="volumes/raw")
    return dataset, em, model_path, model.halo_voxels()


def start_workers(n: int, logs: Path) -> list[subprocess.Popen]:
    from connectome.celery import app

    app.control.purge()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "connectome", "worker", "-Q", "cpu,gpu",
             "--concurrency", "1", "--pool", "solo", "--loglevel", "WARNING",
             "-n", f"bench{i}@%h"],
            cwd=ROOT, env=dict(os.environ), stdout=open(logs / f"worker{n}-{i}.log", "w"),
            stderr=subprocess.STDOUT)
        for i in range(n)
    ]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if len(app.control.ping(timeout=1.0)) >= n:
            return procs
    raise SystemExit(f"the {n} workers did not answer a ping within 120 s; see {logs}")


def stop_workers(procs):
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_job(kind: str, dataset, parameters: dict, workers: int) -> dict:
    from connectome.jobs.models import Job
    from connectome.jobs.services import job_create

    job = job_create(kind=kind, dataset=dataset, parameters=parameters)
    while True:
        job = Job.objects.get(pk=job.pk)
        if job.is_finished:
            break
        time.sleep(0.2)
    if job.state != Job.State.DONE:
        raise SystemExit(f"{kind} job {job.pk} {job.state}: {job.error}")
    blocks, span = job.result["blocks"], job.result["blocks_wall_s"]
    compute = job.result["block_compute_s"]
    first_start = min(job.blocks.values_list("started_at", flat=True))
    last_end = max(job.blocks.values_list("finished_at", flat=True))
    return {
        "kind": kind, "workers": workers, "blocks": blocks,
        "wall_s": round((job.finished_at - job.created_at).total_seconds(), 2),
        "until_first_block_s": round((first_start - job.created_at).total_seconds(), 2),
        "blocks_wall_s": span, "blocks_per_s": round(blocks / span, 3),
        "final_step_s": round((job.finished_at - last_end).total_seconds(), 2),
        "compute_s_per_block": round(compute / blocks, 4),
        "overhead_ms_per_block": round(1000 * (workers * span - compute) / blocks, 1),
        "synapses": job.result.get("synapses"),
    }


def main():
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    setup(args, folder / "data")
    try:
        dataset, em, model_path, halo = make_inputs(args, folder)
        print(f"volume {tuple(args.shape)} at {VOXEL} nm, blocks {tuple(args.block)}, "
              f"classifier halo {halo}, {os.cpu_count()} CPUs")
        rows = []
        for n in args.workers:
            procs = start_workers(n, folder)
            try:
                rows.append(run_job("detect_synapses", dataset, {
                    "model": str(model_path), "em_layer": em.pk, "run_name": f"bench {n}",
                    "block_shape": list(args.block), "min_size": 20}, n))
                rows.append(run_job("selftest_blocks", dataset, {
                    "blocks": args.empty_blocks, "seconds_per_block": 0}, n))
                if args.sleep_blocks:
                    rows.append(run_job("selftest_blocks", dataset, {
                        "blocks": args.sleep_blocks, "seconds_per_block": 0.25}, n))
            finally:
                stop_workers(procs)
        header = ["kind", "workers", "blocks", "wall_s", "until_first_block_s", "blocks_wall_s",
                  "final_step_s", "blocks_per_s", "compute_s_per_block",
                  "overhead_ms_per_block", "synapses"]
        print(" | ".join(header))
        for row in rows:
            print(" | ".join(str(row[h]) for h in header))
        if args.json:
            args.json.write_text(json.dumps({"shape": args.shape, "block": args.block,
                                             "runs": rows}, indent=2))
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {args.database} WITH (FORCE)")
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
