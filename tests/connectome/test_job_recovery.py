"""Blocks left running by a lost worker, heartbeats, and resuming a job over the API."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from connectome.datasets.models import Membership
from connectome.jobs.blocks import block_execute, blocks_recover_stale, stale_blocks
from connectome.jobs.models import Job, JobBlock
from connectome.jobs.services import job_cancel, job_create, job_execute
from tests.connectome.factories import DatasetFactory, MembershipFactory, UserFactory


@pytest.fixture
def sent(monkeypatch):
    """Block tasks sent to the broker, as (job id, block index)."""
    calls = []
    monkeypatch.setattr("connectome.jobs.tasks.run_block.apply_async",
                        lambda args, queue: calls.append((args[0], args[1], queue)))
    monkeypatch.setattr("connectome.jobs.blocks.blocks_enqueue", lambda job_id: 0)
    return calls


def _planned_job(blocks=4, seconds=0.0):
    job = job_create(kind="selftest_blocks", dataset=DatasetFactory(), enqueue=False,
                     parameters={"blocks": blocks, "seconds_per_block": seconds})
    job_execute(job_id=job.pk)
    job = Job.objects.get(pk=job.pk)
    assert job.state == Job.State.RUNNING and job.progress_total == blocks
    return job


def _mark_running(job, index, *, silent_s):
    then = timezone.now() - timedelta(seconds=silent_s)
    JobBlock.objects.filter(job=job, index=index).update(
        state=JobBlock.State.RUNNING, attempts=1, worker="gone:123", started_at=then,
        heartbeat_at=then)


@pytest.mark.django_db
def test_a_finished_block_sends_again_the_blocks_silent_longer_than_the_limit(
        settings, sent, django_capture_on_commit_callbacks):
    settings.JOB_BLOCK_STALE_S = 30
    job = _planned_job()
    _mark_running(job, 1, silent_s=90)     # its worker died
    _mark_running(job, 2, silent_s=5)      # its worker is computing
    assert list(stale_blocks(job_id=job.pk).values_list("index", flat=True)) == [1]

    # Any worker finishing a block of the job looks for lost ones.
    with django_capture_on_commit_callbacks(execute=True):
        assert block_execute(job_id=job.pk, index=3).status == "done"
    assert sent == [(job.pk, 1, "cpu")]
    lost = JobBlock.objects.get(job=job, index=1)
    assert lost.state == JobBlock.State.PENDING
    assert lost.error.startswith("worker gone:123 lost: no sign of life since")
    assert JobBlock.objects.get(job=job, index=2).state == JobBlock.State.RUNNING
    assert blocks_recover_stale() == {}

    # Sent again, it runs as a second attempt.
    assert block_execute(job_id=job.pk, index=1).status == "done"
    assert JobBlock.objects.get(job=job, index=1).attempts == 2


@pytest.mark.django_db
def test_blocks_of_cancelled_jobs_are_not_recovered(settings, sent):
    settings.JOB_BLOCK_STALE_S = 30
    job = _planned_job()
    _mark_running(job, 0, silent_s=90)
    job_cancel(job=job)
    assert blocks_recover_stale() == {} and sent == []


@pytest.mark.django_db(transaction=True)
def test_a_computing_block_beats(settings, sent):
    settings.JOB_BLOCK_HEARTBEAT_S = 0.05
    job = _planned_job(blocks=2, seconds=0.6)
    assert block_execute(job_id=job.pk, index=0).status == "done"
    block = JobBlock.objects.get(job=job, index=0)
    beat_after = (block.heartbeat_at - block.started_at).total_seconds()
    assert 0.3 < beat_after < 0.7   # beats went on while the handler slept 0.6 s


@pytest.mark.django_db
def test_resume_over_the_api_needs_the_admin_role_and_sends_the_unfinished_blocks(
        sent, django_capture_on_commit_callbacks):
    job = _planned_job(blocks=5)
    assert block_execute(job_id=job.pk, index=0).status == "done"
    assert block_execute(job_id=job.pk, index=1).status == "done"
    job_cancel(job=job)
    client = APIClient()

    viewer = UserFactory()
    MembershipFactory(dataset=job.dataset, user=viewer, role=Membership.Role.VIEWER)
    client.force_authenticate(viewer)
    response = client.post(f"/api/jobs/{job.pk}/resume/")
    assert response.status_code == 403
    blocks = client.get(f"/api/jobs/{job.pk}/blocks/").json()
    assert blocks["counts"] == {"pending": 3, "running": 0, "done": 2, "failed": 0}

    admin = UserFactory()
    MembershipFactory(dataset=job.dataset, user=admin, role=Membership.Role.ADMIN)
    client.force_authenticate(admin)
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(f"/api/jobs/{job.pk}/resume/")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["blocks_sent"] == 3
    assert body["job"]["state"] == "running" and body["job"]["progress_done"] == 2

    Job.objects.filter(pk=job.pk).update(state=Job.State.DONE)
    response = client.post(f"/api/jobs/{job.pk}/resume/")
    assert response.status_code == 400
    assert response.json()["error"] == f"job: job {job.pk} is done; there is nothing to resume"
    assert client.post("/api/jobs/999999/resume/").status_code == 404


@pytest.mark.django_db
def test_resume_job_stale_command(settings, sent, django_capture_on_commit_callbacks):
    settings.JOB_BLOCK_STALE_S = 30
    job = _planned_job()
    _mark_running(job, 2, silent_s=300)
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("resume_job", "--stale", stdout=out)
    assert out.getvalue() == f"job {job.pk}: blocks [2] sent again\n"
    assert sent == [(job.pk, 2, "cpu")]
