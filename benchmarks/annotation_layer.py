"""A synapse run of 10 million synapses as a Neuroglancer annotation layer: build and first draw.

Creates its own PostgreSQL database (``connectome_annot_bench``; dropped at the end unless
``--keep``; ``--reuse`` measures a kept one again), loads cells and synapses with COPY the way
``api_scale.py`` does (centres uniform in a 100 x 200 x 200 um volume at 40 x 8 x 8 nm, pre and
post points 40 nm either side in x), then:

- builds the run's layer with the ``build_annotation_layer`` job (run inline): seconds, levels,
  annotations per level, bytes written, the process's peak memory;
- times the server per request through Django's test client (in-process, real routing,
  permissions, gzip): spatial chunks of every level (random non-empty cells), ``info``,
  ``by_id`` and the relationship index of a cell;
- serves the app on a local port (threaded WSGI server in this process) and opens the
  Neuroglancer client in headless Chromium (``/usr/bin/chromium``, SwiftShader, as the browser
  tests do) on the dataset state (zoomed out to the whole volume, the layer visible) and on a
  state zoomed in to a 2 um field at the volume's centre, in a fresh browser each time: the
  time from navigation start until the client has fetched the layer's spatial chunks and
  ``viewer.isReady()`` is true (everything visible drawn), with the number and bytes of the
  spatial chunks it fetched. The bundled client (neuroglancer 2.41) sometimes asks for no
  spatial chunk at all and stays "ready" with nothing drawn until the view changes; such a
  draw (nothing asked for in 15 s) is counted as ``stalled`` and tried again in a new browser.

    .venv/bin/python benchmarks/annotation_layer.py --synapses 10000000 --json docs/annotation_layer.json
"""

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
from api_scale import (
    VOLUME_NM,
    admin_execute,
    load_cells,
    load_synapses,
    percentiles,
    setup_django,
)

logger = logging.getLogger("annotation_layer")

VOXEL_NM = (40.0, 8.0, 8.0)
CHROMIUM = Path(os.environ.get("CONNECTOME_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-gpu",
    "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}
#: A fresh client that has asked for no spatial chunk this long after navigation has stalled.
STALL_S = 15.0


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synapses", type=int, default=10_000_000)
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--database", default="connectome_annot_bench")
    parser.add_argument("--chunks", type=int, default=40, help="chunk requests per level")
    parser.add_argument("--draws", type=int, default=3, help="fresh browsers per view")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--reuse", action="store_true", help="measure a kept database again")
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--data-root", type=Path,
                        help="keep the layer files here (default: a temporary folder, removed); "
                             "a layer already built there is measured without building again")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def load(args, rng) -> tuple[object, dict]:
    from django.core.management import call_command

    from connectome.datasets.models import Dataset
    from connectome.synapses.models import SynapseRun

    admin_execute(f'DROP DATABASE IF EXISTS "{args.database}"')
    admin_execute(f'CREATE DATABASE "{args.database}"')
    call_command("migrate", verbosity=0)
    shape = [round(e / v) for e, v in zip(VOLUME_NM, VOXEL_NM)]
    dataset = Dataset.objects.create(
        name="bench", voxel_size_z=VOXEL_NM[0], voxel_size_y=VOXEL_NM[1],
        voxel_size_x=VOXEL_NM[2], shape_z=shape[0], shape_y=shape[1], shape_x=shape[2],
        is_public=True)
    run = SynapseRun.objects.create(dataset=dataset, name="bench", method="bench")
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        start = time.perf_counter()
        load_cells(conn, dataset_id=dataset.pk, n_cells=args.cells, rng=rng)
        conn.commit()
        timings = load_synapses(conn, n_synapses=args.synapses, n_cells=args.cells,
                                dataset_id=dataset.pk, run_id=run.pk, rng=rng)
        timings["total_s"] = time.perf_counter() - start
    return run, timings


def build(run) -> dict:
    from connectome.jobs.models import Job
    from connectome.jobs.services import job_run_inline
    from connectome.viewer.annotations import layer_folder

    start = time.perf_counter()
    job = job_run_inline(kind="build_annotation_layer", parameters={"run": run.pk},
                         dataset=run.dataset)
    seconds = time.perf_counter() - start
    if job.state != Job.State.DONE:
        raise SystemExit(f"the build failed: {job.error}")
    folder = layer_folder(run.pk)
    return {"seconds": round(seconds, 1), **job.result,
            "bytes": sum(f.stat().st_size for f in folder.iterdir()),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def timed_get(client, url: str) -> tuple[float, int]:
    """Seconds and gzip bytes of one GET."""
    start = time.perf_counter()
    response = client.get(url, HTTP_ACCEPT_ENCODING="gzip")
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise SystemExit(f"{url}: {response.status_code} {response.content[:200]!r}")
    return elapsed, len(response.content)


def server_times(run, *, per_level: int, rng) -> dict:
    from django.test import Client

    from connectome.cells.models import Cell
    from connectome.viewer.annotations import layer_folder, read_info

    client = Client()
    base = f"/viewer/annotations/runs/{run.pk}"
    figures = {"info_ms": percentiles([timed_get(client, f"{base}/info")[0]
                                       for _ in range(10)])}
    levels = []
    for level in read_info(run.pk)["spatial"]:
        cells = np.load(layer_folder(run.pk) / f"{level['key']}.index.npy")[:-1, 0]
        grid = level["grid_shape"]
        chosen = rng.choice(cells, size=min(per_level, len(cells)), replace=False)
        times, sizes = [], []
        for flat in chosen:
            x, rest = divmod(int(flat), grid[1] * grid[2])
            y, z = divmod(rest, grid[2])
            ms, size = timed_get(client, f"{base}/{level['key']}/{x}_{y}_{z}")
            times.append(ms)
            sizes.append(size)
        levels.append({"key": level["key"], "grid_shape": grid, "limit": level["limit"],
                       "chunk_ms": percentiles(times),
                       "gzip_kb_median": round(statistics.median(sizes) / 1024, 1)})
    figures["spatial"] = levels
    ids = rng.choice(run.synapses.values_list("id", flat=True)[:100_000], size=50)
    figures["by_id_ms"] = percentiles([timed_get(client, f"{base}/by_id/{i}")[0] for i in ids])
    segments = Cell.objects.filter(dataset=run.dataset).values_list("segment_id", flat=True)[:20]
    rel = [timed_get(client, f"{base}/rel_pre_segment/{s}") for s in segments]
    figures["rel_pre_segment_ms"] = percentiles([t for t, _ in rel])
    figures["rel_pre_segment_gzip_kb_median"] = round(
        statistics.median(s for _, s in rel) / 1024, 1)
    return figures


class Server:
    """The app on 127.0.0.1:<free port>, threaded, in this process."""

    def __enter__(self):
        from django.conf import settings
        from django.core.handlers.wsgi import WSGIHandler
        from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args):
                pass

        settings.ALLOWED_HOSTS = ["127.0.0.1", "testserver"]
        self.httpd = ThreadedWSGIServer(("127.0.0.1", 0), Quiet)
        self.httpd.set_app(WSGIHandler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


# The chunk requests run in the client's web worker, out of the page's resource timing: the
# page records when the viewer becomes ready (each false -> true of isReady(), in ms since
# navigation start) and Playwright gives each spatial request's times.
READY_SCRIPT = """
window.__readyAt = [];
(function poll() {
  const viewer = window.viewer;
  if (viewer) {
    const ready = viewer.isReady();
    if (ready && !window.__wasReady) window.__readyAt.push(performance.now());
    window.__wasReady = ready;
  }
  requestAnimationFrame(poll);
})();
"""


def _draw(playwright, url: str) -> dict:
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                         headless=True)
    try:
        page = browser.new_page(viewport=VIEWPORT)
        page.add_init_script(READY_SCRIPT)
        finished = []
        page.on("requestfinished",
                lambda request: finished.append(request) if "/spatial" in request.url else None)
        page.goto(url)
        start = time.monotonic()
        deadline = start + 180
        quiet_since, count = time.monotonic(), 0
        while time.monotonic() < deadline:
            page.wait_for_timeout(200)
            if len(finished) != count:
                quiet_since, count = time.monotonic(), len(finished)
            if not count and time.monotonic() - start > STALL_S:
                return None  # the client asked for no chunk at all (see the module docstring)
            ready = page.evaluate("() => Boolean(window.viewer && window.viewer.isReady())")
            if count and ready and time.monotonic() - quiet_since > 2.0:
                break
        else:
            raise SystemExit(f"the viewer was not ready with the layer drawn in 180 s "
                             f"({count} spatial chunks): {url[:200]}")
        origin = page.evaluate("performance.timeOrigin")
        ends = [r.timing["startTime"] + r.timing["responseEnd"] - origin for r in finished]
        last = max(ends)
        ready_at = [t for t in page.evaluate("window.__readyAt") if t >= last]
        return {"ready_ms": round(ready_at[0] if ready_at else last, 1),
                "first_chunk_ms": round(min(ends), 1), "last_chunk_ms": round(last, 1),
                "chunks": len(finished),
                "chunk_kb": round(sum(r.sizes()["responseBodySize"] for r in finished) / 1024),
                "levels": sorted({r.url.split("/")[-2] for r in finished})}
    finally:
        browser.close()


def first_draws(run, *, draws: int) -> dict:
    from playwright.sync_api import sync_playwright

    from connectome.viewer.state import client_url, dataset_state

    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    dataset = run.dataset
    centre = [s * v / 2 for s, v in zip(dataset.shape, dataset.voxel_size)]
    figures = {}
    with Server() as server, sync_playwright() as playwright:
        views = {
            "zoomed_out": client_url(f"{server.url}/viewer/state/datasets/{dataset.pk}/"),
            "zoomed_in_2um": client_url(dataset_state(
                dataset, base_url=server.url, position_nm=centre, field_nm=2000.0,
                synapse_run=run)),
        }
        for name, path in views.items():
            samples, stalled = [], 0
            while len(samples) < draws and stalled < 3 * draws:
                sample = _draw(playwright, server.url + path)
                if sample is None:
                    stalled += 1
                else:
                    samples.append(sample)
            logger.info("%s: %s, %d stalled", name, samples, stalled)
            if not samples:
                figures[name] = {"stalled": stalled}
                continue
            figures[name] = {
                "stalled": stalled,
                "ready_ms_median": round(statistics.median(s["ready_ms"] for s in samples)),
                "first_chunk_ms_median": round(statistics.median(
                    s["first_chunk_ms"] for s in samples)),
                "samples": samples,
            }
    return figures


def main():
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    rng = np.random.default_rng(args.seed)
    data_root = args.data_root or Path(tempfile.mkdtemp(prefix="annot-bench-"))
    os.environ["DATA_ROOT"] = str(data_root)
    setup_django(args.database)
    from django.db import connection

    result = {"synapses": args.synapses, "cells": args.cells}
    try:
        if args.reuse:
            from connectome.synapses.models import SynapseRun

            run = SynapseRun.objects.select_related("dataset").get(name="bench")
        else:
            run, result["load"] = load(args, rng)
            logger.info("loaded: %s", result["load"])
        run = type(run).objects.select_related("dataset").get(pk=run.pk)
        from connectome.viewer.annotations import is_built

        if not (args.data_root and is_built(run.pk)):
            result["build"] = build(run)
            logger.info("built: %s", result["build"])
        result["server"] = server_times(run, per_level=args.chunks, rng=rng)
        logger.info("server: %s", json.dumps(result["server"]))
        if not args.no_browser:
            result["first_draw"] = first_draws(run, draws=args.draws)
        result["load_average"] = os.getloadavg()
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        connection.close()
        import shutil

        if args.data_root is None:
            shutil.rmtree(data_root, ignore_errors=True)
        if not args.keep:
            # WITH (FORCE): the local server's request threads may still hold connections.
            admin_execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')


if __name__ == "__main__":
    main()
