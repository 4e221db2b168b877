"""The review queue at scale, on PostgreSQL: how long a reviewer waits for the next synapse.

Creates its own database (``connectome_review_bench``; dropped at the end unless ``--keep``),
migrates it, bulk-loads cells and unreviewed synapses the way ``api_scale.py`` does (COPY,
indexes rebuilt, VACUUM ANALYZE), gives a share of them verdicts, then times the services the
review page calls for every synapse:

- ``review_next`` in lowest-confidence-first and in random order (claims included; each
  measured call first releases the previous claim with a verdict, as a reviewer does);
- ``review_progress`` and ``precision_estimate`` (the counts and the interval on the page).

    .venv/bin/python benchmarks/review_queue.py --synapses 1000000 --cells 20000
"""

import argparse
import json
import logging
import os
import sys
import time

import numpy as np
import psycopg
from api_scale import (
    admin_execute,
    load_cells,
    load_synapses,
    percentiles,
    setup_django,
)

logger = logging.getLogger("review_queue")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synapses", type=int, default=1_000_000)
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--reviewed", type=float, default=0.01,
                        help="share of synapses given a verdict before measuring")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--database", default="connectome_review_bench")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def measure(*, dataset, repeats: int) -> dict:
    from django.contrib.auth import get_user_model

    from connectome.review.selectors import precision_estimate, review_progress
    from connectome.review.services import review_create, review_next

    reviewer = get_user_model().objects.create_user("bench-reviewer")
    figures = {}
    for order in ("confidence", "random"):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            synapse = review_next(dataset=dataset, reviewer=reviewer, order=order, seed=3)
            times.append(time.perf_counter() - t0)
            review_create(synapse=synapse, reviewer=reviewer, verdict="confirmed")
        figures[f"review_next_{order}"] = percentiles(times)
    figures.update(measure_batches(dataset=dataset, reviewer=reviewer, repeats=repeats))
    for name, call in (("review_progress", review_progress),
                       ("precision_estimate", precision_estimate)):
        times = []
        for _ in range(max(5, repeats // 5)):
            t0 = time.perf_counter()
            call(dataset=dataset)
            times.append(time.perf_counter() - t0)
        figures[name] = percentiles(times)
    return figures


def measure_batches(*, dataset, reviewer, repeats: int) -> dict:
    """``review_next`` (lowest confidence first) with review batches: another reviewer's batch
    of 5,000 synapses that the queue leaves out, and the reviewer's own of 1,000 that it serves
    first (``batches_first``) or alone (``one_batch``)."""
    from django.contrib.auth import get_user_model

    from connectome.datasets.models import Membership
    from connectome.review.services import (
        review_batch_create,
        review_create,
        review_next,
    )
    from connectome.synapses.models import SynapseRun

    other = get_user_model().objects.create_user("bench-other")
    for user in (reviewer, other):
        Membership.objects.get_or_create(dataset=dataset, user=user,
                                         defaults={"role": Membership.Role.REVIEWER})
    run = SynapseRun.objects.get(dataset=dataset)
    t0 = time.perf_counter()
    review_batch_create(dataset=dataset, name="others", reviewer=other, run=run, count=5_000)
    mine = review_batch_create(dataset=dataset, name="mine", reviewer=reviewer, run=run,
                               count=1_000)
    figures = {"review_batch_create_6000_s": round(time.perf_counter() - t0, 3)}
    for name, batch in (("batches_first", None), ("one_batch", mine)):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            synapse = review_next(dataset=dataset, reviewer=reviewer, batch=batch)
            times.append(time.perf_counter() - t0)
            review_create(synapse=synapse, reviewer=reviewer, verdict="confirmed")
        figures[f"review_next_confidence_{name}"] = percentiles(times)
    return figures


def main():
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    rng = np.random.default_rng(args.seed)
    setup_django(args.database)
    from django.core.management import call_command
    from django.db import connection

    admin_execute(f'DROP DATABASE IF EXISTS "{args.database}"')
    admin_execute(f'CREATE DATABASE "{args.database}"')
    try:
        call_command("migrate", verbosity=0)
        from connectome.datasets.models import Dataset
        from connectome.synapses.models import Synapse, SynapseRun

        dataset = Dataset.objects.create(name="bench", voxel_size_z=40, voxel_size_y=8,
                                         voxel_size_x=8)
        run = SynapseRun.objects.create(dataset=dataset, name="bench", method="bench")
        with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
            load_cells(conn, dataset_id=dataset.pk, n_cells=args.cells, rng=rng)
            conn.commit()
            load = load_synapses(conn, n_synapses=args.synapses, n_cells=args.cells,
                                 dataset_id=dataset.pk, run_id=run.pk, rng=rng)
        reviewed = int(args.synapses * args.reviewed)
        verdicts = np.array(["confirmed", "not_synapse", "wrong_direction", "unsure"])
        ids = rng.choice(args.synapses, size=reviewed, replace=False) + 1
        for verdict in verdicts:
            chosen = ids[verdicts[rng.integers(0, len(verdicts), reviewed)] == verdict]
            Synapse.objects.filter(pk__in=chosen.tolist()).update(review_state=verdict)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE synapses_synapse")
        figures = measure(dataset=dataset, repeats=args.repeats)
        result = {"synapses": args.synapses, "cells": args.cells, "reviewed": reviewed,
                  "load_s": round(sum(v for k, v in load.items() if k.endswith("_s")
                                      and not k.startswith("index ")), 1),
                  "load_average": os.getloadavg(), **figures}
        print(json.dumps(result, indent=2))
        if args.json:
            with open(args.json, "w") as out:
                out.write(json.dumps(result, indent=2) + "\n")
    finally:
        connection.close()
        if not args.keep:
            admin_execute(f'DROP DATABASE IF EXISTS "{args.database}"')


if __name__ == "__main__":
    main()
