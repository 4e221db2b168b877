"""The one Celery task: it runs a recorded job by id."""

from celery import shared_task

from connectome.jobs.services import job_execute


@shared_task(name="connectome.jobs.tasks.run_job", acks_late=True)
def run_job(job_id: int) -> str:
    return job_execute(job_id=job_id).state
