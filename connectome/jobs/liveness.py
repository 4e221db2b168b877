"""Signs of life of the workers running a job, and database steps that survive a lost connection.

A worker marks what it runs alive (a block row, or the job row while its handler or final step
runs) every ``JOB_HEARTBEAT_S`` seconds from a thread of its own; what stays silent for
``JOB_STALE_S`` seconds was lost with its worker (connectome/jobs/sweep.py sends it again).

A database connection can go away under a running task (the server restarted, a connection
pooler or an administrator ended it: ``pg_terminate_backend``). :func:`db_retry` runs one
database step, and when the connection is lost closes it, waits and tries again on a fresh
connection (``JOB_DB_RETRIES`` tries, ``JOB_DB_RETRY_BACKOFF_S`` doubled each time).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone

logger = logging.getLogger(__name__)

#: What a lost (or refused) database connection raises.
DB_ERRORS = (OperationalError, InterfaceError)

T = TypeVar("T")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def heartbeat_s() -> float:
    return float(getattr(settings, "JOB_HEARTBEAT_S", 15.0))


def stale_s() -> float:
    return float(getattr(settings, "JOB_STALE_S", 4 * heartbeat_s()))


def stale_cutoff():
    """Signs of life older than this are too old: their worker was lost."""
    return timezone.now() - timedelta(seconds=stale_s())


def max_retries() -> int:
    return int(getattr(settings, "JOB_MAX_RETRIES", 3))


def task_backoff_s(retries: int) -> float:
    """Seconds before a task runs again after its ``retries``-th lost try (2, 4, 8 ... 300)."""
    base = float(getattr(settings, "JOB_BLOCK_RETRY_BACKOFF_S", 2.0))
    return min(300.0, base * 2 ** max(0, retries - 1))


def drop_connection() -> None:
    """Drop this thread's database connection after an error, so the next query reconnects.

    Inside a transaction the connection stays (the transaction's ``atomic`` rolls back and
    closes it on the way out).
    """
    if connection.in_atomic_block:
        return
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - closing a dead connection may fail; it is gone anyway
        logger.debug("closing a broken database connection failed", exc_info=True)
        connection.connection = None


def db_retry(step: Callable[[], T], what: str, *, tries: int | None = None) -> T:
    """``step()``, tried again on a fresh connection while the database connection is lost.

    Raises the last error when ``tries`` attempts failed. Only for steps that are safe to run
    again (one transaction each, or idempotent writes), and never inside a transaction.
    """
    tries = int(getattr(settings, "JOB_DB_RETRIES", 6)) if tries is None else tries
    base = float(getattr(settings, "JOB_DB_RETRY_BACKOFF_S", 0.5))
    for attempt in range(1, max(1, tries) + 1):
        try:
            return step()
        except DB_ERRORS as exc:
            if connection.in_atomic_block:
                raise
            drop_connection()
            if attempt >= tries:
                logger.error("%s: database unreachable after %d tries: %s", what, attempt,
                             _one_line(exc))
                raise
            delay = base * 2 ** (attempt - 1)
            logger.warning("%s: database connection lost (%s); trying again in %.1f s", what,
                           _one_line(exc), delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def db_error_text(exc: BaseException) -> str:
    """A lost connection's error as one plain line."""
    return _one_line(exc)


class Heartbeat:
    """While its ``with`` body runs, a thread calls ``beat()`` every ``interval`` seconds.

    ``beat()`` returns False once what it marks is no longer this worker's (taken over or
    ended); the thread then stops and ``lost`` is set. A failed beat (the database away) is
    logged and tried again at the next interval on a fresh connection.
    """

    def __init__(self, beat: Callable[[], bool], name: str, interval: float | None = None):
        self.beat, self.interval = beat, heartbeat_s() if interval is None else interval
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat {name}", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        try:
            while not self._stop.wait(self.interval):
                try:
                    if not self.beat():
                        self.lost.set()
                        return
                except DB_ERRORS as exc:
                    logger.warning("%s: missed a beat (%s)", self._thread.name, _one_line(exc))
                    drop_connection()
                except Exception:  # noqa: BLE001 - a missed beat must never break the work
                    logger.warning("%s: missed a beat", self._thread.name, exc_info=True)
        finally:
            drop_connection()  # this thread's own connection
