"""Progress reporting from inside a running job, and the cancel check that rides on it."""

import time

from connectome.jobs.models import Job


class JobCancelled(Exception):
    """Raised inside a handler when someone asked the job to stop."""


class Progress:
    """Reports ``done/total`` for a job and stops it when a cancel was requested.

    Database writes are throttled to one per ``interval`` seconds (and always on the last
    unit), so per-block calls stay cheap on large jobs.
    """

    def __init__(self, job_id: int, *, interval: float = 0.5, echo=None):
        self.job_id = job_id
        self.interval = interval
        self.echo = echo  # optional callable(done, total, message), e.g. a terminal printer
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
        if Job.objects.filter(pk=self.job_id, cancel_requested=True).exists():
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def _write(self, message: str | None, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < self.interval:
            return
        self._last_write = now
        fields = {"progress_done": self.done, "progress_total": self.total}
        if message is not None:
            fields["message"] = message[:500]
        Job.objects.filter(pk=self.job_id).update(**fields)
        if self.echo is not None:
            self.echo(self.done, self.total, message)
        self.check_cancelled()
