"""The Celery tasks: run a recorded job by id; run one block of a block-wise job; stitch."""

from celery import shared_task

from connectome.jobs.services import job_execute


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
