"""The Celery tasks: run a recorded job by id; run one block of a block-wise job; stitch."""

import logging

from celery import shared_task
from celery.signals import worker_ready

from connectome.jobs.services import job_execute

logger = logging.getLogger(__name__)


@shared_task(name="connectome.jobs.tasks.run_job", acks_late=True)
def run_job(job_id: int) -> str:
    return job_execute(job_id=job_id).state


@shared_task(bind=True, name="connectome.jobs.tasks.run_block", acks_late=True,
             max_retries=None)
def run_block(self, job_id: int, index: int, start, stop) -> str:
    """One block (its core box ``start``..``stop``); idempotent, so a repeat is harmless."""
    from connectome.jobs.blocks import block_execute

    outcome = block_execute(job_id=job_id, index=index, box=[*start, *stop])
    if outcome.status == "retry":
        # The attempt count lives on the block row, so it survives worker crashes.
        raise self.retry(countdown=outcome.countdown, max_retries=None)
    return outcome.status


@shared_task(name="connectome.jobs.tasks.run_blocks_finish", acks_late=True)
def run_blocks_finish(job_id: int) -> str:
    """The final step of a block-wise job, once all its blocks are done."""
    from connectome.jobs.blocks import blocks_finish

    return blocks_finish(job_id=job_id).state


@worker_ready.connect
def recover_lost_blocks(**kwargs) -> None:
    """A starting worker sends again the blocks that workers which died left running."""
    from connectome.jobs.blocks import blocks_recover_stale

    try:
        recovered = blocks_recover_stale()
    except Exception:  # noqa: BLE001 - a worker must start even if the database is away
        logger.exception("could not look for blocks left by lost workers")
        return
    for job_id, indexes in recovered.items():
        logger.warning("job %s: sent again %d block(s) left by a lost worker: %s",
                       job_id, len(indexes), indexes)
