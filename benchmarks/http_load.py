"""The API over HTTP under concurrent clients, against gunicorn started as docker/ starts it.

On the database that ``benchmarks/api_scale.py --keep`` leaves (``connectome_bench`` by
default: 10 million synapses among 100,000 cells), this script

1. starts gunicorn with the command line of the ``web`` service in ``docker/compose.yaml`` (only
   ``--bind`` changed to a local port) and that service's environment (production settings:
   ``DEBUG=0``, https redirect, HSTS, secure cookies; the database is the benchmark's); the
   client sends ``X-Forwarded-Proto: https`` as the compose file's TLS proxy does;
2. logs in a dataset viewer and one reviewer per client (sessions, as the browser; the
   dataset is private, so every request checks membership);
3. drives a fixed number of concurrent clients, each with its own keep-alive connection,
   for a fixed time per endpoint, after a warm-up:

   - ``partners``: ``GET /api/cells/{id}/partners/``, random cells;
   - ``bbox``: ``GET /api/synapses/?dataset=&bbox=`` (random 4 um boxes, one page of up to
     1,000);
   - ``synapse_list``: ``GET /api/synapses/?pre={id}&page_size=100``, random cells;
   - ``review_next``: ``POST /api/datasets/{id}/review/next/`` by each client's reviewer (the
     review page's call; after the first, the reviewer's live claim comes back renewed, with
     the queue's progress counts);

4. runs the partner SQL of ``connectivity.cell_partners`` straight through psycopg on the same
   random cells, with one connection and with as many as there are clients: the floor.

Per endpoint and client count it reports requests/s, p50/p95/p99 latency, errors and the CPU
used meanwhile by the load generator itself (this process), by gunicorn, by the PostgreSQL
backends of the benchmark's database and by everything else on the machine. The load
generator shares the machine's cores with the server and the database, so its CPU is part of
the picture. (The load average says little here: 20 concurrent requests are about 20 runnable
threads of the benchmark's own.)

    .venv/bin/python benchmarks/api_scale.py --keep          # once: loads connectome_bench
    .venv/bin/python benchmarks/http_load.py --json docs/http_load.json
"""

import argparse
import asyncio
import json
import logging
import os
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import psycopg
import yaml
from api_scale import VOLUME_NM, setup_django

logger = logging.getLogger("http_load")

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker" / "compose.yaml"
ENDPOINTS = ("partners", "bbox", "synapse_list", "review_next")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="connectome_bench",
                        help="a database that api_scale.py --keep left")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 20],
                        help="concurrent clients per phase")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured per phase")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="seconds not measured at the start of each phase")
    parser.add_argument("--prewarm", type=float, default=6.0,
                        help="seconds per endpoint with the most clients before any phase, not "
                             "measured: every server thread's database connection has then "
                             "prepared its statements")
    parser.add_argument("--rate", type=float, default=300.0,
                        help="then the largest client count again, paced to this many requests "
                             "per second in all (0: skip); latency counts from the planned send")
    parser.add_argument("--rate-endpoints", nargs="+", choices=ENDPOINTS, default=["partners"],
                        help="the endpoints of the paced phase")
    parser.add_argument("--endpoints", nargs="+", choices=ENDPOINTS, default=list(ENDPOINTS))
    parser.add_argument("--auth", choices=["token", "session"], default="token",
                        help="how the viewer's GET requests authenticate (a script's token, or "
                             "a browser's session); the review queue always uses sessions")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--server-env", nargs="*", default=[], metavar="NAME=VALUE",
                        help="more environment for the server (to compare settings)")
    parser.add_argument("--app-root", type=Path, default=ROOT,
                        help="serve the checkout at this path instead of this one (e.g. an "
                             "earlier version, extracted with git archive, to compare)")
    parser.add_argument("--gunicorn-options", default="",
                        help="replace the compose file's gunicorn options but --bind (to "
                             "compare configurations), e.g. '--workers 4 --threads 2'")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


# --- the server, as docker/ runs it ---------------------------------------------------------

def compose_service(name: str) -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"][name]


def gunicorn_command(port: int, options: str = "") -> list[str]:
    """The web service's gunicorn command line, listening on 127.0.0.1:``port``; with
    ``options``, those instead of the compose file's (the application and --bind kept)."""
    command = compose_service("web")["command"]
    if isinstance(command, str):
        command = shlex.split(command)
    if command[:2] == ["sh", "-c"]:
        # "python manage.py migrate --no-input && gunicorn ...": the server is the last part.
        command = shlex.split(command[2].split("&&")[-1])
    if command[0] != "gunicorn":
        raise SystemExit(f"{COMPOSE}: the web service does not end in gunicorn: {command}")
    args = list(command[1:])
    if options:
        args = [args[0], "--bind", "", *shlex.split(options)]
    bind = args.index("--bind")
    args[bind + 1] = f"127.0.0.1:{port}"
    return [str(Path(sys.executable).parent / "gunicorn"), *args]


def server_environment(*, database_url: str, secret_key: str, var_dir: Path) -> dict:
    """The web service's environment from the compose file, pointed at the benchmark."""
    env = {}
    for name, value in compose_service("web")["environment"].items():
        value = str(value)
        if value.startswith("${") and ":-" in value:  # ${NAME:-default}
            value = os.environ.get(value[2:value.index(":-")]) or value[value.index(":-") + 2:-1]
        env[name] = value
    env.update(DATABASE_URL=database_url, SECRET_KEY=secret_key, ALLOWED_HOSTS="127.0.0.1",
               DATA_ROOT=str(var_dir / "data"), IMPORT_ROOTS=str(var_dir),
               CONNECTOME_VAR_DIR=str(var_dir))
    # No jobs are sent: the filesystem broker under var_dir instead of the compose file's host.
    env.pop("CELERY_BROKER_URL", None)
    keep = {k: v for k, v in os.environ.items()
            if k in {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH"}}
    return {**keep, **env}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(command: list[str], env: dict, port: int, log: Path,
                 root: Path = ROOT) -> subprocess.Popen:
    logger.info("starting %s in %s", " ".join(command), root)
    server = subprocess.Popen(command, cwd=root, env={**env, "PYTHONPATH": str(root)},
                              stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"gunicorn exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            status, _ = asyncio.run(_one_request(port, _request("GET", "/healthz", port)))
            if status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise SystemExit(f"gunicorn did not answer on port {port} within 120 s:\n{log.read_text()[-3000:]}")


def stop_server(server: subprocess.Popen):
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


# --- a small HTTP/1.1 keep-alive client ------------------------------------------------------

def _request(method: str, path: str, port: int, *, cookie: str = "", headers: dict = None,
             body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
             "X-Forwarded-Proto: https", "Accept: application/json"]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection:
    """One keep-alive connection: send a request, read the whole response."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length, chunked, close = None, False, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            body = b"".join(parts)
        elif length is not None:
            body = await self.reader.readexactly(length)
        else:
            body = await self.reader.read()
            close = True
        if close:
            self.close()
        return status, body


async def _one_request(port: int, raw: bytes) -> tuple[int, bytes]:
    connection = Connection(port)
    try:
        return await connection.request(raw)
    finally:
        connection.close()


class CpuMeter:
    """CPU seconds used by this process, by gunicorn (master and workers) and by the
    PostgreSQL backends connected to the benchmark's database."""

    def __init__(self, server: subprocess.Popen, database: str, admin_url: str):
        self.server = psutil.Process(server.pid)
        self.database = database
        self.admin_url = admin_url

    def _backends(self) -> list[int]:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s "
                                "AND pid <> pg_backend_pid()", [self.database]).fetchall()
        return [pid for (pid,) in rows]

    @staticmethod
    def _cpu(processes) -> dict[int, float]:
        seconds = {}
        for process in processes:
            try:
                times = process.cpu_times()
                seconds[process.pid] = times.user + times.system
            except psutil.Error:
                continue
        return seconds

    def snapshot(self) -> dict:
        server = [self.server, *self.server.children(recursive=True)]
        backends = []
        for pid in self._backends():
            try:
                backends.append(psutil.Process(pid))
            except psutil.Error:
                continue
        machine = psutil.cpu_times()
        return {"wall": time.perf_counter(), "client": time.process_time(),
                "server": self._cpu(server), "database": self._cpu(backends),
                "machine": machine.user + machine.nice + machine.system + machine.irq
                + machine.softirq}

    @staticmethod
    def used(start: dict, end: dict) -> dict:
        wall = end["wall"] - start["wall"]

        def delta(kind):
            # Processes that started meanwhile count whole; those that ended are lost (few).
            return sum(v - start[kind].get(pid, 0.0) for pid, v in end[kind].items())

        used = {"client_cores": end["client"] - start["client"], "server_cores": delta("server"),
                "database_cores": delta("database")}
        # Everything else the machine ran meanwhile (other PostgreSQL backends, other work).
        used["other_cores"] = max(0.0, end["machine"] - start["machine"] - sum(used.values()))
        return {name: round(value / wall, 3) for name, value in used.items()}


def percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    ms = np.asarray(latencies) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "max_ms": round(float(ms.max()), 2)}


async def drive(*, port: int, clients: int, make_request, check, duration: float,
                warmup: float, meter: CpuMeter, rate: float | None = None) -> dict:
    """``clients`` connections, each sending ``make_request(client)`` after the last answer,
    for ``warmup + duration`` seconds; figures over the requests finished in the last
    ``duration`` seconds.

    With ``rate``, each client sends on a fixed schedule instead (``rate / clients`` requests
    per second, the clients staggered), or at once when it is behind; a request's latency
    counts from its planned time, so a server that falls behind shows it in full.
    """
    done: list[tuple[float, float, int, int]] = []  # (end, latency, status, bytes)
    errors: list[str] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def client(i: int):
        connection = Connection(port)
        n = 0
        interval = clients / rate if rate else 0.0
        planned = time.perf_counter() + i / rate if rate else 0.0
        try:
            while not stop.is_set():
                raw = make_request(i)
                if rate:
                    wait = planned - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    start = planned
                    planned += interval
                else:
                    start = time.perf_counter()
                try:
                    status, body = await connection.request(raw)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    connection.close()
                    status, body = 0, str(exc).encode()
                end = time.perf_counter()
                done.append((end, end - start, status, len(body)))
                if status != 200:
                    if len(errors) < 5:
                        errors.append(f"{status}: {body[:300].decode(errors='replace')}")
                elif n % 25 == 0:
                    check(json.loads(body))
                n += 1
        finally:
            connection.close()

    tasks = [loop.create_task(client(i)) for i in range(clients)]
    await asyncio.sleep(warmup)
    start = meter.snapshot()
    await asyncio.sleep(duration)
    end = meter.snapshot()
    stop.set()
    await asyncio.gather(*tasks)
    window = [d for d in done if start["wall"] <= d[0] <= end["wall"]]
    ok = [d for d in window if d[2] == 200]
    return {"clients": clients, "offered_per_s": rate, "requests": len(window),
            "requests_per_s": round(len(ok) / (end["wall"] - start["wall"]), 1),
            **percentiles([d[1] for d in ok]),
            "errors": len(window) - len(ok), "error_samples": errors,
            "mean_bytes": round(float(np.mean([d[3] for d in ok])), 0) if ok else None,
            **CpuMeter.used(start, end)}


# --- the psycopg floor -----------------------------------------------------------------------

def partner_sql_floor(*, database_url: str, queries: list[tuple[str, dict]], clients: int,
                      duration: float, warmup: float) -> dict:
    """The partner SQL through psycopg: ``clients`` threads with a connection each, running
    the queries (execute + fetchall) one after the other for ``warmup + duration`` seconds."""
    done: list[tuple[float, float]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(i: int):
        with psycopg.connect(database_url, autocommit=True) as conn:
            k = i
            while not stop.is_set():
                sql, params = queries[k % len(queries)]
                k += clients
                start = time.perf_counter()
                conn.execute(sql, params).fetchall()
                end = time.perf_counter()
                with lock:
                    done.append((end, end - start))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(warmup)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    time.sleep(duration)
    end_wall, end_cpu = time.perf_counter(), time.process_time()
    stop.set()
    for thread in threads:
        thread.join()
    window = [latency for end, latency in done if start_wall <= end <= end_wall]
    return {"clients": clients, "requests": len(window),
            "requests_per_s": round(len(window) / (end_wall - start_wall), 1),
            **percentiles(window),
            "client_cores": round((end_cpu - start_cpu) / (end_wall - start_wall), 3)}


# --- the benchmark ---------------------------------------------------------------------------

def prepare(*, dataset_id: int, reviewers: int) -> dict:
    """A viewer and ``reviewers`` reviewers of the dataset, logged in: their cookies."""
    from django.contrib.auth import get_user_model
    from django.middleware.csrf import _get_new_csrf_string
    from django.test import Client
    from rest_framework.authtoken.models import Token

    from connectome.datasets.models import Dataset, Membership
    from connectome.review.models import ReviewClaim

    users = get_user_model().objects
    users.filter(username__startswith="bench-http-").delete()
    dataset = Dataset.objects.get(pk=dataset_id)

    def session(username: str, role: str) -> str:
        user = users.create_user(username)
        Membership.objects.create(dataset=dataset, user=user, role=role)
        client = Client()
        client.force_login(user)
        return client.cookies["sessionid"].value

    viewer = f"sessionid={session('bench-http-viewer', Membership.Role.VIEWER)}"
    token = Token.objects.create(user=users.get(username="bench-http-viewer")).key
    reviewer_cookies = []
    for i in range(reviewers):
        csrf = _get_new_csrf_string()
        key = session(f"bench-http-reviewer-{i}", Membership.Role.REVIEWER)
        reviewer_cookies.append((f"sessionid={key}; csrftoken={csrf}", csrf))
    ReviewClaim.objects.filter(reviewer__username__startswith="bench-http-").delete()
    return {"viewer": viewer, "token": token, "reviewers": reviewer_cookies}


def requests_for(endpoint: str, *, port: int, dataset_id: int, cells: tuple[int, int],
                 cookies: dict, auth: str, rng: np.random.Generator):
    """``make_request(client)`` and a ``check(body)`` of an endpoint."""
    lo, hi = cells
    if endpoint == "partners":
        paths = [f"/api/cells/{c}/partners/" for c in rng.integers(lo, hi + 1, 50_000)]

        def check(body):
            assert "upstream" in body and "downstream" in body, body
    elif endpoint == "bbox":
        paths = []
        for _ in range(20_000):
            corner = rng.random(3) * (np.array(VOLUME_NM) - 4000.0)
            box = ",".join(f"{v:.0f}" for v in [*corner, *(corner + 4000.0)])
            paths.append(f"/api/synapses/?dataset={dataset_id}&bbox={box}&page_size=1000")

        def check(body):
            assert isinstance(body["results"], list), body
    elif endpoint == "synapse_list":
        paths = [f"/api/synapses/?pre={c}&page_size=100" for c in rng.integers(lo, hi + 1, 50_000)]

        def check(body):
            assert isinstance(body["results"], list), body
    else:
        path = f"/api/datasets/{dataset_id}/review/next/"
        raws = [_request("POST", path, port, cookie=cookie, body=b"{}",
                         headers={"X-CSRFToken": csrf, "Origin": f"https://127.0.0.1:{port}"})
                for cookie, csrf in cookies["reviewers"]]

        def check(body):
            assert body["synapse"] is not None and body["progress"]["total"] > 0, body

        return (lambda client: raws[client]), check
    if auth == "token":
        raws = [_request("GET", p, port, headers={"Authorization": f"Token {cookies['token']}"})
                for p in paths]
    else:
        raws = [_request("GET", p, port, cookie=cookies["viewer"]) for p in paths]
    position = [0]

    def make_request(client):
        position[0] += 1
        return raws[position[0] % len(raws)]

    return make_request, check


def main():
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    rng = np.random.default_rng(args.seed)
    random.seed(args.seed)
    setup_django(args.database)
    from django.conf import settings
    from django.db import connection

    from connectome.cells.models import Cell
    from connectome.datasets.models import Dataset
    from connectome.synapses.connectivity import partner_query

    database_url = os.environ["DATABASE_URL"]
    admin_url = database_url.rsplit("/", 1)[0] + "/postgres"
    dataset = Dataset.objects.get(name="bench")
    cells = Cell.objects.filter(dataset=dataset)
    first, last = cells.order_by("id").values_list("id", flat=True)[:1][0], cells.latest("id").id
    synapses = dataset.synapses.count()
    cookies = prepare(dataset_id=dataset.pk, reviewers=max(args.clients))
    floor_cells = cells.filter(id__in=[int(c) for c in rng.integers(first, last + 1, 2000)])
    queries = [partner_query(cell=cell) for cell in floor_cells.only("id", "dataset_id")]
    connection.close()

    port = args.port or free_port()
    result = {"synapses": synapses, "cells": last - first + 1, "database": args.database,
              "auth": args.auth, "app_root": str(args.app_root.resolve()),
              "server": " ".join(gunicorn_command(port, args.gunicorn_options)[1:]),
              "duration_s": args.duration,
              "cpu_count": os.cpu_count(), "load_average_before": os.getloadavg(), "http": {},
              "psycopg_partner_sql": []}
    with tempfile.TemporaryDirectory(prefix="http-load-") as scratch:
        env = server_environment(database_url=database_url, secret_key=settings.SECRET_KEY,
                                 var_dir=Path(scratch))
        env.update(item.split("=", 1) for item in args.server_env)
        server = start_server(gunicorn_command(port, args.gunicorn_options), env, port,
                              Path(scratch) / "gunicorn.log", root=args.app_root.resolve())
        try:
            meter = CpuMeter(server, args.database, admin_url)
            for endpoint in args.endpoints:
                make_request, check = requests_for(
                    endpoint, port=port, dataset_id=dataset.pk, cells=(first, last),
                    cookies=cookies, auth=args.auth, rng=rng)
                asyncio.run(drive(port=port, clients=max(args.clients),
                                  make_request=make_request, check=check,
                                  duration=args.prewarm, warmup=0, meter=meter))
            phases = [(clients, None) for clients in args.clients]
            if args.rate:
                phases.append((max(args.clients), args.rate))
            for clients, rate in phases:
                for endpoint in args.endpoints:
                    if rate and endpoint not in args.rate_endpoints:
                        continue
                    make_request, check = requests_for(
                        endpoint, port=port, dataset_id=dataset.pk, cells=(first, last),
                        cookies=cookies, auth=args.auth, rng=rng)
                    figures = asyncio.run(drive(
                        port=port, clients=clients, make_request=make_request, check=check,
                        duration=args.duration, warmup=args.warmup, meter=meter, rate=rate))
                    result["http"].setdefault(endpoint, []).append(figures)
                    logger.info("%s, %d clients%s: %s", endpoint, clients,
                                f" at {rate:g}/s" if rate else "", figures)
        finally:
            stop_server(server)
            log = (Path(scratch) / "gunicorn.log").read_text()
            if "Traceback" in log:
                logger.warning("gunicorn log:\n%s", log[-5000:])
    for clients in args.clients:
        figures = partner_sql_floor(database_url=database_url, queries=queries, clients=clients,
                                    duration=args.duration, warmup=args.warmup)
        result["psycopg_partner_sql"].append(figures)
        logger.info("partner SQL through psycopg, %d clients: %s", clients, figures)
    result["load_average_after"] = os.getloadavg()
    print_table(result)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def print_table(result: dict):
    rows = [("endpoint", "clients", "offered/s", "req/s", "p50 ms", "p95 ms", "p99 ms",
             "errors", "client cores", "server cores", "db cores", "other cores")]
    for endpoint, runs in result["http"].items():
        for r in runs:
            rows.append((endpoint, r["clients"], r["offered_per_s"] or "max", r["requests_per_s"],
                         r["p50_ms"], r["p95_ms"], r["p99_ms"], r["errors"], r["client_cores"],
                         r["server_cores"], r["database_cores"], r["other_cores"]))
    for r in result["psycopg_partner_sql"]:
        rows.append(("partner SQL (psycopg)", r["clients"], "max", r["requests_per_s"],
                     r["p50_ms"], r["p95_ms"], r["p99_ms"], 0, r["client_cores"], "", "", ""))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(v).rjust(w) for v, w in zip(row, widths)), file=sys.stderr)


if __name__ == "__main__":
    main()
