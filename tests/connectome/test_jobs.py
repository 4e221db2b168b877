"""The job lifecycle: create -> queue on commit -> run with progress -> done / failed / cancelled."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from connectome.jobs.models import Job, JobLock
from connectome.jobs.progress import JobCancelled, Progress
from connectome.jobs.services import (
    JobConflict,
    JobParameterError,
    job_cancel,
    job_create,
    job_execute,
    job_locks_acquire,
    job_run_inline,
)
from tests.connectome.factories import DatasetFactory

pytestmark = pytest.mark.django_db


def test_create_validates_parameters_and_names_the_field():
    with pytest.raises(JobParameterError, match="units") as info:
        job_create(kind="selftest", parameters={"units": -3})
    assert "units" in info.value.errors
    assert Job.objects.count() == 0


def test_a_parent_job_hands_its_locks_over_and_others_are_refused():
    dataset = DatasetFactory()
    parent, child, other = (job_create(kind="selftest", parameters={}, dataset=dataset,
                                       enqueue=False) for _ in range(3))
    job_locks_acquire(job=parent, resources=["synapse run 'x'"])
    with pytest.raises(JobConflict, match=f"being written by selftest job {parent.pk}"):
        job_locks_acquire(job=other, resources=["synapse run 'x'"])
    job_locks_acquire(job=child, resources=["synapse run 'x'", "layer 'y'"], parent=parent)
    assert dict(JobLock.objects.values_list("resource", "job")) == {
        "synapse run 'x'": child.pk, "layer 'y'": child.pk}


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown job kind 'nope'.*selftest"):
        job_create(kind="nope", parameters={})


def test_job_is_queued_only_when_the_transaction_commits(django_capture_on_commit_callbacks, monkeypatch):
    sent = []
    monkeypatch.setattr("connectome.jobs.services.job_enqueue", lambda job_id: sent.append(job_id))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job = job_create(kind="selftest", parameters={"units": 2})
        assert sent == []
    assert len(callbacks) == 1
    callbacks[0]()
    assert sent == [job.pk]
    assert job.state == Job.State.QUEUED
    assert job.parameters == {"units": 2, "seconds_per_unit": 0.1, "fail_at": None}


def test_run_reports_progress_and_result():
    job = job_run_inline(kind="selftest", parameters={"units": 5, "seconds_per_unit": 0})
    assert job.state == Job.State.DONE
    assert (job.progress_done, job.progress_total) == (5, 5)
    assert job.result == {"units": 5}
    assert job.started_at <= job.finished_at


def test_failure_records_the_error():
    job = job_run_inline(kind="selftest", parameters={"units": 5, "seconds_per_unit": 0, "fail_at": 3})
    assert job.state == Job.State.FAILED
    # Not an input error: users see its type only, the traceback has its text.
    assert job.error == ("internal error (RuntimeError); dataset admins find the details in the "
                         "job's traceback")
    assert "RuntimeError: selftest failed on purpose at unit 3" in job.traceback
    assert job.progress_done == 3


def test_cancel_of_a_queued_job_is_immediate_and_it_never_runs():
    job = job_create(kind="selftest", parameters={"units": 1}, enqueue=False)
    job = job_cancel(job=job)
    assert job.state == Job.State.CANCELLED
    job = job_execute(job_id=job.pk)
    assert job.state == Job.State.CANCELLED
    assert job.started_at is None


def test_cancel_of_a_running_job_stops_it_at_the_next_progress_report():
    job = job_create(kind="selftest", parameters={"units": 3}, enqueue=False)
    Job.objects.filter(pk=job.pk).update(state=Job.State.RUNNING)
    job_cancel(job=Job.objects.get(pk=job.pk))
    progress = Progress(job.pk)
    with pytest.raises(JobCancelled):
        progress.set_total(10)


def test_a_job_runs_once():
    job = job_run_inline(kind="selftest", parameters={"units": 1, "seconds_per_unit": 0})
    finished_at = job.finished_at
    again = job_execute(job_id=job.pk)
    assert again.state == Job.State.DONE and again.finished_at == finished_at


# --- a real worker process over the configured broker -----------------------------------------

def _database_url_for_worker() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    auth = user if not db.get("PASSWORD") else f"{user}:{db['PASSWORD']}"
    return f"postgres://{auth}@{host}:{port}/{db['NAME']}"


@pytest.fixture
def worker(transactional_db, tmp_path):
    from connectome.celery import app

    app.control.purge()
    env = {**os.environ, "DATABASE_URL": _database_url_for_worker(),
           "CELERY_BROKER_URL": settings.CELERY_BROKER_URL}
    log = open(tmp_path / "worker.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "connectome", "worker", "-Q", "cpu,gpu",
         "--concurrency", "1", "--pool", "solo", "--loglevel", "INFO"],
        cwd=Path(settings.BASE_DIR), env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    yield proc
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _wait_for(job_id, states, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = Job.objects.get(pk=job_id)
        if job.state in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job.state} after {timeout} s")


@pytest.mark.slow
def test_worker_runs_queued_job_and_cancel_stops_it(worker):
    dataset = DatasetFactory()
    done = job_create(kind="selftest", parameters={"units": 4, "seconds_per_unit": 0.05}, dataset=dataset)
    done = _wait_for(done.pk, Job.FINISHED_STATES)
    assert done.state == Job.State.DONE, done.error
    assert done.progress_done == 4 and done.task_id

    long = job_create(kind="selftest", parameters={"units": 600, "seconds_per_unit": 0.05}, dataset=dataset)
    running = _wait_for(long.pk, [Job.State.RUNNING])
    while Job.objects.get(pk=long.pk).progress_done == 0:
        time.sleep(0.1)
    job_cancel(job=running)
    cancelled = _wait_for(long.pk, Job.FINISHED_STATES, timeout=30)
    assert cancelled.state == Job.State.CANCELLED
    assert 0 < cancelled.progress_done < 600
