"""Progress reporting from inside a running job, and the cancel check that rides on it."""

import logging
import time

from django.db import connection

from connectome.jobs.liveness import DB_ERRORS, db_error_text, drop_connection
from connectome.jobs.models import Job

logger = logging.getLogger(__name__)


class JobCancelled(Exception):
    """Raised inside a handler when someone asked the job to stop."""


class JobSuperseded(Exception):
    """Raised inside a handler whose job is no longer this attempt's.

    Its worker was thought lost (silent for ``JOB_STALE_S``) and the job was sent again,
    cancelled or failed meanwhile; this attempt must store nothing.
    """


class Progress:
    """Reports ``done/total`` for a job and stops it when a cancel was requested.

    Database writes are throttled to one per ``interval`` seconds (and always on the last
    unit), so per-block calls stay cheap on large jobs. With ``attempt`` (the job's
    ``attempts`` when this run took it up) a write also checks that the job is still this
    run's, and raises :class:`JobSuperseded` if not. A lost database connection costs a report,
    not the job: the write is skipped and the next one reconnects.
    """

    def __init__(self, job_id: int, *, interval: float = 0.5, echo=None,
                 attempt: int | None = None):
        self.job_id = job_id
        self.interval = interval
        self.echo = echo  # optional callable(done, total, message), e.g. a terminal printer
        self.attempt = attempt
        self._last_write = 0.0
        self.done = 0
        self.total = 0

    def set_total(self, total: int, message: str | None = None) -> None:
        self.total = int(total)
        self.done = 0
        self._write(message, force=True)

    def advance(self, n: int = 1, message: str | None = None) -> None:
        self.done += int(n)
        self._write(message, force=self.done >= self.total)

    def update(self, done: int, total: int | None = None, message: str | None = None) -> None:
        if total is not None:
            self.total = int(total)
        self.done = int(done)
        self._write(message, force=self.done >= self.total)

    def __call__(self, done: int, total: int) -> None:
        """So a Progress can be passed as a plain ``progress(done, total)`` callback."""
        self.update(done, total)

    def check_cancelled(self) -> None:
        row = Job.objects.filter(pk=self.job_id).values(
            "cancel_requested", "state", "attempts").first()
        if self.attempt is not None and (
                row is None or row["state"] != Job.State.RUNNING
                or row["attempts"] != self.attempt):
            state = "gone" if row is None else (
                f"{row['state']}, attempt {row['attempts']}")
            raise JobSuperseded(f"job {self.job_id} is no longer run by attempt "
                                f"{self.attempt} (now {state})")
        if row is not None and row["cancel_requested"]:
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def _write(self, message: str | None, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < self.interval:
            return
        self._last_write = now
        fields = {"progress_done": self.done, "progress_total": self.total}
        if message is not None:
            fields["message"] = message[:500]
        rows = Job.objects.filter(pk=self.job_id)
        if self.attempt is not None:
            rows = rows.filter(attempts=self.attempt)
        try:
            rows.update(**fields)
            if self.echo is not None:
                self.echo(self.done, self.total, message)
            self.check_cancelled()
        except DB_ERRORS as exc:
            if self.attempt is None or connection.in_atomic_block:
                raise
            # The work goes on; the next report (or the job's end) reconnects.
            logger.warning("job %s: progress not recorded, database connection lost (%s)",
                           self.job_id, db_error_text(exc))
            drop_connection()
