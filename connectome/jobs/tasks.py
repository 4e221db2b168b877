"""The Celery tasks: run a recorded job by id; run one block of a block-wise job; stitch.

Each task retries with a growing pause (2, 4, 8 ... s, at most 5 min) while the database is
unreachable; the job's state lives in the database, so a task tried again carries on from it.
Every worker also runs the job sweep (connectome/jobs/sweep.py) from a thread of its own.
"""

import logging

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown

from connectome.jobs.liveness import DB_ERRORS, db_error_text, task_backoff_s
from connectome.jobs.services import job_execute

logger = logging.getLogger(__name__)


def _retry_later(task, exc: BaseException):
    countdown = task_backoff_s(task.request.retries + 1)
    logger.warning("%s%s: database unreachable (%s); trying again in %g s", task.name,
                   task.request.args, db_error_text(exc), countdown)
    return task.retry(countdown=countdown, max_retries=None, exc=exc)


@shared_task(bind=True, name="connectome.jobs.tasks.run_job", acks_late=True, max_retries=None)
def run_job(self, job_id: int) -> str:
    try:
        return job_execute(job_id=job_id, task_id=self.request.id or "").state
    except DB_ERRORS as exc:
        raise _retry_later(self, exc) from exc


@shared_task(bind=True, name="connectome.jobs.tasks.run_block", acks_late=True,
             max_retries=None)
def run_block(self, job_id: int, index: int, start, stop) -> str:
    """One block (its core box ``start``..``stop``); idempotent, so a repeat is harmless."""
    from connectome.jobs.blocks import block_execute

    try:
        outcome = block_execute(job_id=job_id, index=index, box=[*start, *stop],
                                task_retries=self.request.retries)
    except DB_ERRORS as exc:
        raise _retry_later(self, exc) from exc
    if outcome.status == "retry":
        # The attempt count lives on the block row, so it survives worker crashes.
        raise self.retry(countdown=outcome.countdown, max_retries=None)
    return outcome.status


@shared_task(bind=True, name="connectome.jobs.tasks.run_blocks_finish", acks_late=True,
             max_retries=None)
def run_blocks_finish(self, job_id: int) -> str:
    """The final step of a block-wise job, once all its blocks are done."""
    from connectome.jobs.blocks import blocks_finish

    try:
        return blocks_finish(job_id=job_id).state
    except DB_ERRORS as exc:
        raise _retry_later(self, exc) from exc


_sweeper = None


@worker_ready.connect
def start_sweeping(**kwargs) -> None:
    """A starting worker sweeps at once (work that lost workers left) and then every
    ``JOB_SWEEP_S`` seconds, whatever its tasks do meanwhile."""
    global _sweeper
    from connectome.jobs.sweep import Sweeper

    if _sweeper is None:
        _sweeper = Sweeper().start()


@worker_shutdown.connect
def stop_sweeping(**kwargs) -> None:
    global _sweeper
    if _sweeper is not None:
        _sweeper.stop()
        _sweeper = None
