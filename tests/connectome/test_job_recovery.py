"""Work lost with a worker, found by the sweep; runs that were only stalled; resume.

The sweep's rules one by one, on jobs put in the state a lost worker leaves (real workers are
killed in test_worker_faults.py): what it sends again, what it fails and with which message,
what it removes from staging; the guards that keep a stalled run from storing or wiping
anything; heartbeats; resuming over the API; database steps that survive a terminated
connection (PostgreSQL).
"""

import os
from datetime import timedelta
from io import StringIO
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection, connections
from django.utils import timezone
from rest_framework.test import APIClient

from connectome.datasets.models import Layer, Membership
from connectome.datasets.services import staged_by_jobs, staging_path
from connectome.imports.volumes import import_volume
from connectome.jobs.blocks import (
    _claim_finish,
    _store,
    block_execute,
    blocks_finish,
    blocks_recover_stale,
    blocks_start,
    stale_blocks,
)
from connectome.jobs.liveness import db_retry
from connectome.jobs.models import Job, JobBlock, JobLock
from connectome.jobs.progress import JobSuperseded, Progress
from connectome.jobs.registry import get_job_spec
from connectome.jobs.services import (
    STORED_NOTE,
    _claim,
    job_cancel,
    job_create,
    job_execute,
    job_requeue,
)
from connectome.jobs.sweep import BROKER_MARK, jobs_sweep
from connectome.jobs.sweep import _redis_client as broker_client
from connectome.pipeline.detection import detection_finish, detection_plan
from connectome.synapses.models import Synapse, SynapseRun
from detection.io.zarr_store import open_multiscale
from tests.connectome.factories import DatasetFactory, MembershipFactory, UserFactory
from tests.connectome.test_pipeline import (  # noqa: F401 - fixtures
    detect_parameters,
    em,
    model_file,
    phantom_file,
)


@pytest.fixture(autouse=True)
def no_broker_check(monkeypatch):
    """The sweep's broker check has a test of its own; elsewhere here it never asks Redis."""
    monkeypatch.setattr("connectome.jobs.sweep._redis_client", lambda: None)


@pytest.fixture
def sent(monkeypatch):
    """Tasks sent to the broker, as (task, args) with run_block's args cut to (job, index)."""
    calls = []

    def recorder(name):
        def apply_async(args, queue=None, countdown=None, **kwargs):
            calls.append((name, tuple(args[:2]) if name == "run_block" else tuple(args)))
            return SimpleNamespace(id=f"task-{len(calls)}")
        return apply_async

    for name in ("run_job", "run_block", "run_blocks_finish"):
        monkeypatch.setattr(f"connectome.jobs.tasks.{name}.apply_async", recorder(name))
    return calls


def _planned_job(blocks=4, seconds=0.0, **extra):
    job = job_create(kind="selftest_blocks", dataset=DatasetFactory(), enqueue=False,
                     parameters={"blocks": blocks, "seconds_per_block": seconds, **extra})
    job_execute(job_id=job.pk)
    job = Job.objects.get(pk=job.pk)
    assert job.state == Job.State.RUNNING and job.progress_total == blocks
    assert (job.step, job.worker) == (Job.Step.BLOCKS, "")
    return job


def _mark_running(job, index, *, silent_s, attempts=1):
    then = timezone.now() - timedelta(seconds=silent_s)
    JobBlock.objects.filter(job=job, index=index).update(
        state=JobBlock.State.RUNNING, attempts=attempts, worker="gone:123", started_at=then,
        heartbeat_at=then)


def _silent(job, seconds=90, **fields):
    """Make the job's worker look silent for ``seconds``."""
    then = timezone.now() - timedelta(seconds=seconds)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=then, **fields)
    return then


def _sweep(capture):
    with capture(execute=True):
        return jobs_sweep()


# --- blocks --------------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_finished_block_sends_again_the_blocks_silent_longer_than_the_limit(
        settings, sent, django_capture_on_commit_callbacks):
    settings.JOB_STALE_S = 30
    job = _planned_job()
    _mark_running(job, 1, silent_s=90)     # its worker died
    _mark_running(job, 2, silent_s=5)      # its worker is computing
    assert list(stale_blocks(job_id=job.pk).values_list("index", flat=True)) == [1]

    # Any worker finishing a block of the job looks for lost ones.
    with django_capture_on_commit_callbacks(execute=True):
        assert block_execute(job_id=job.pk, index=3).status == "done"
    assert sent == [("run_block", (job.pk, 1))]
    lost = JobBlock.objects.get(job=job, index=1)
    assert lost.state == JobBlock.State.PENDING
    assert lost.error.startswith("worker gone:123 lost: no sign of life since")
    assert JobBlock.objects.get(job=job, index=2).state == JobBlock.State.RUNNING
    assert blocks_recover_stale() == {}

    # Sent again, it runs as a second attempt.
    assert block_execute(job_id=job.pk, index=1).status == "done"
    assert JobBlock.objects.get(job=job, index=1).attempts == 2


@pytest.mark.django_db
def test_a_block_whose_worker_was_lost_in_each_attempt_fails_the_job(
        settings, sent, django_capture_on_commit_callbacks):
    settings.JOB_STALE_S = 30
    job = _planned_job()
    assert job.parameters["_max_attempts"] == 3
    _mark_running(job, 1, silent_s=90, attempts=3)
    report = _sweep(django_capture_on_commit_callbacks)
    assert report.blocks == {} and sent == []
    job = Job.objects.get(pk=job.pk)
    assert job.state == Job.State.FAILED
    assert job.error.startswith(
        "block 1 (z 1:2, y 0:1, x 0:1) failed: its worker was lost in each of its 3 attempts "
        "(last: worker gone:123 lost: no sign of life since ")
    assert JobBlock.objects.get(job=job, index=1).state == JobBlock.State.FAILED
    assert not JobLock.objects.filter(job=job).exists()


@pytest.mark.django_db
def test_blocks_of_cancelled_jobs_are_not_recovered(settings, sent):
    settings.JOB_STALE_S = 30
    job = _planned_job()
    _mark_running(job, 0, silent_s=90)
    job_cancel(job=job)
    assert blocks_recover_stale() == {} and sent == []


@pytest.mark.django_db(transaction=True)
def test_a_computing_block_beats(settings, sent):
    settings.JOB_HEARTBEAT_S = 0.05
    job = _planned_job(blocks=2, seconds=0.6)
    assert block_execute(job_id=job.pk, index=0).status == "done"
    block = JobBlock.objects.get(job=job, index=0)
    # Beats went on while the handler slept 0.6 s, and stopped when it ended.
    assert (block.heartbeat_at - block.started_at).total_seconds() > 0.3
    assert block.heartbeat_at <= block.finished_at


@pytest.mark.django_db(transaction=True)
def test_a_running_handler_beats_and_records_its_worker(settings):
    settings.JOB_HEARTBEAT_S = 0.05
    job = job_create(kind="selftest", dataset=DatasetFactory(), enqueue=False,
                     parameters={"units": 3, "seconds_per_unit": 0.2})
    job = job_execute(job_id=job.pk, task_id="task-1")
    assert job.state == Job.State.DONE
    assert (job.attempts, job.retries, job.task_id, job.step) == (1, 0, "task-1", "")
    assert job.worker.endswith(f":{os.getpid()}")
    assert (job.heartbeat_at - job.started_at).total_seconds() > 0.3
    assert job.heartbeat_at <= job.finished_at


@pytest.mark.django_db
def test_the_block_tasks_of_a_worker_lost_while_sending_them_are_sent_again(
        settings, sent, django_capture_on_commit_callbacks):
    settings.JOB_STALE_S = 30
    job = _planned_job(blocks=3)
    assert block_execute(job_id=job.pk, index=0).status == "done"
    # As a worker leaves it when it dies after recording the plan, before the tasks are out.
    _silent(job, worker="gone:7")
    report = _sweep(django_capture_on_commit_callbacks)
    assert report.block_tasks == [job.pk]
    assert sent == [("run_block", (job.pk, 1)), ("run_block", (job.pk, 2))]
    assert Job.objects.get(pk=job.pk).worker == ""
    assert _sweep(django_capture_on_commit_callbacks).block_tasks == []


# --- final steps ---------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_final_step_never_taken_up_is_sent_again_without_counting(
        settings, sent, django_capture_on_commit_callbacks):
    settings.JOB_STALE_S = 30
    job = _planned_job(blocks=2)
    with django_capture_on_commit_callbacks(execute=True):
        for index in range(2):
            block_execute(job_id=job.pk, index=index)
    assert sent == [("run_blocks_finish", (job.pk,))]
    job = Job.objects.get(pk=job.pk)
    assert (job.step, job.worker) == (Job.Step.FINISH, "") and job.heartbeat_at is not None
    assert _sweep(django_capture_on_commit_callbacks).final_steps == []   # sent just now
    _silent(job)
    assert _sweep(django_capture_on_commit_callbacks).final_steps == [job.pk]
    assert sent[-1] == ("run_blocks_finish", (job.pk,))
    job = Job.objects.get(pk=job.pk)
    assert job.retries == 0 and job.heartbeat_at > timezone.now() - timedelta(seconds=5)
    assert blocks_finish(job_id=job.pk).state == Job.State.DONE


@pytest.mark.django_db
def test_a_final_step_lost_with_its_worker_is_sent_again_then_fails_the_job(
        settings, sent, django_capture_on_commit_callbacks):
    settings.JOB_STALE_S = 30
    settings.JOB_MAX_RETRIES = 2
    job = _planned_job(blocks=2)
    for index in range(2):
        block_execute(job_id=job.pk, index=index)
    for lost in (1, 2, 3):
        taken = _claim_finish(job.pk)        # a worker takes it up, then dies
        assert taken is not None and taken.attempts == 1 + lost
        since = _silent(job)
        report = _sweep(django_capture_on_commit_callbacks)
        job = Job.objects.get(pk=job.pk)
        if lost <= 2:
            assert report.final_steps == [job.pk] and job.retries == lost
            assert job.worker == "" and job.state == Job.State.RUNNING
            assert job.message == (f"final step lost with worker {taken.worker} (no sign of "
                                   f"life since {since.isoformat()}); sent again ({lost} of 2)")
    assert report.failed == [job.pk]
    assert job.state == Job.State.FAILED
    assert job.error == (f"final step: its worker was lost 3 times (last: worker "
                         f"{taken.worker}, no sign of life since {since.isoformat()}); resume "
                         "the job to try again")
    assert [name for name, _ in sent].count("run_blocks_finish") == 2


@pytest.mark.django_db
def test_a_final_step_runs_on_one_worker_at_a_time(settings, sent):
    job = _planned_job(blocks=1)
    block_execute(job_id=job.pk, index=0)
    first = _claim_finish(job.pk)
    assert first is not None
    assert _claim_finish(job.pk) is None            # a duplicate task: the first is alive
    assert blocks_finish(job_id=job.pk).state == Job.State.RUNNING
    _silent(job)
    second = _claim_finish(job.pk)                  # the first is silent: taken over
    assert second.attempts == first.attempts + 1


@pytest.mark.django_db
def test_a_stalled_final_step_stores_nothing_and_leaves_no_folder(
        em, model_file, sent, settings):
    _, path = model_file
    dataset, em_layer = em
    job = job_create(kind="detect_synapses", dataset=dataset, enqueue=False,
                     parameters=detect_parameters(path, em_layer, roi=[0, 0, 0, 16, 128, 128]))
    job = job_execute(job_id=job.pk)
    for index in range(job.progress_total):
        assert block_execute(job_id=job.pk, index=index).status == "done"
    folder = settings.DATA_ROOT / f"datasets/{dataset.pk}/jobs/{job.pk}"

    stalled = _claim_finish(job.pk)
    outcome = detection_finish(stalled, dict(stalled.parameters), lambda text: None)
    assert len(list(folder.glob("instances-*.zarr"))) == 1
    _silent(job)                                    # thought lost: taken over and stored
    job = blocks_finish(job_id=job.pk)
    assert job.state == Job.State.DONE and job.attempts == stalled.attempts + 1

    assert _store(job.pk, stalled.attempts, outcome) == (False, None)   # it wakes up
    assert SynapseRun.objects.count() == 1
    assert Synapse.objects.count() == job.result["synapses"] > 0
    instances = Layer.objects.get(pk=job.result["instances_layer"])
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["probability.zarr", instances.storage_path.rsplit("/", 1)[1]])


# --- handlers ------------------------------------------------------------------------------

def _volume(tmp_path):
    path = tmp_path / "em.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = np.arange(8 * 64 * 64, dtype=np.uint64).reshape(8, 64, 64).astype(np.uint8)
    return path


def _import_job(tmp_path, dataset=None):
    return job_create(kind="import_volume", dataset=dataset or DatasetFactory(), enqueue=False,
                      parameters={"source": str(_volume(tmp_path)), "dataset_path": "raw",
                                  "name": "em"})


def _taken_up(job, task_id="task-1"):
    """The job as a worker's run took it up, with the half-written staging it left."""
    run = _claim(job.pk, task_id)
    staged = staging_path(dataset=run.dataset, job=run)
    staged.mkdir()
    (staged / "chunk").write_bytes(b"half a volume")
    return run, staged


@pytest.mark.django_db
def test_a_handler_whose_worker_died_runs_again_from_the_start(
        data_root, tmp_path, settings, sent, django_capture_on_commit_callbacks):
    settings.JOB_STALE_S = 30
    job = _import_job(tmp_path)
    run, staged = _taken_up(job)
    assert staged.name.startswith(f"job-{job.pk}-a1-")
    assert _sweep(django_capture_on_commit_callbacks).requeued == []    # alive
    since = _silent(job)

    report = _sweep(django_capture_on_commit_callbacks)
    assert report.requeued == [job.pk] and sent == [("run_job", (job.pk,))]
    job = Job.objects.get(pk=job.pk)
    assert (job.state, job.retries, job.attempts, job.task_id) == ("queued", 1, 1, "task-1")
    assert job.message == (f"worker {run.worker} lost (no sign of life since "
                           f"{since.isoformat()}); sent again from the start (1 of 3)")
    assert not staged.exists() and staged_by_jobs() == []

    job = job_execute(job_id=job.pk, task_id="task-2")
    assert job.state == Job.State.DONE, job.error
    assert (job.attempts, job.retries) == (2, 1)
    assert Layer.objects.get(pk=job.result["layer_id"]).job_id == job.pk
    assert staged_by_jobs() == []


@pytest.mark.django_db
def test_a_handler_lost_more_often_than_the_retries_allow_fails_saying_why(
        data_root, tmp_path, settings, sent, django_capture_on_commit_callbacks):
    settings.JOB_STALE_S = 30
    job = _import_job(tmp_path)
    run, staged = _taken_up(job)
    since = _silent(job, retries=3)
    report = _sweep(django_capture_on_commit_callbacks)
    assert report.failed == [job.pk] and sent == []
    job = Job.objects.get(pk=job.pk)
    assert job.state == Job.State.FAILED
    assert job.error == (f"its worker was lost 4 times (last: worker {run.worker}, no sign "
                         f"of life since {since.isoformat()}); resume the job to try again")
    assert not staged.exists()


@pytest.mark.django_db
def test_a_job_run_by_a_command_that_died_fails_instead_of_going_to_the_workers(
        data_root, tmp_path, settings, sent, django_capture_on_commit_callbacks):
    settings.JOB_STALE_S = 30
    job = _import_job(tmp_path)
    run, staged = _taken_up(job, task_id="")
    since = _silent(job)
    assert _sweep(django_capture_on_commit_callbacks).failed == [job.pk]
    job = Job.objects.get(pk=job.pk)
    assert job.error == (f"the process running it ({run.worker}) stopped: no sign of life "
                         f"since {since.isoformat()}; resume the job to run it on the workers")
    assert sent == [] and not staged.exists()


@pytest.mark.django_db
def test_cancelling_a_job_whose_worker_died_is_immediate(
        data_root, tmp_path, settings, sent, django_capture_on_commit_callbacks):
    settings.JOB_STALE_S = 30
    job = _import_job(tmp_path)
    run, staged = _taken_up(job)
    with django_capture_on_commit_callbacks(execute=True):
        assert job_cancel(job=Job.objects.get(pk=job.pk)).state == Job.State.RUNNING  # alive
    assert staged.exists()
    # Its worker dies before it reads the request: the sweep ends the cancel.
    _silent(job)
    assert _sweep(django_capture_on_commit_callbacks).cancelled == [job.pk]
    job = Job.objects.get(pk=job.pk)
    assert job.state == Job.State.CANCELLED
    assert job.message == f"cancelled (worker {run.worker} was lost)"
    assert not staged.exists()

    other = _import_job(tmp_path, dataset=DatasetFactory())
    run, staged = _taken_up(other)
    _silent(other)
    with django_capture_on_commit_callbacks(execute=True):
        cancelled = job_cancel(job=Job.objects.get(pk=other.pk))
    assert cancelled.state == Job.State.CANCELLED and not staged.exists()


@pytest.mark.django_db
def test_an_import_whose_run_was_superseded_stores_nothing(data_root, tmp_path, sent):
    job = _import_job(tmp_path)
    stalled = _claim(job.pk, "task-1")
    # Thought lost and sent again (the sweep does this) while it still copies.
    job_requeue(job=Job.objects.select_for_update().get(pk=job.pk), message="sent again")
    with pytest.raises(JobSuperseded, match=f"job {job.pk} is no longer run by attempt 1"):
        import_volume(dataset=job.dataset, job=stalled, source=str(_volume(tmp_path)),
                      dataset_path="raw", name="em")
    assert not Layer.objects.exists() and staged_by_jobs() == []
    # Its progress reports stop it early, too.
    with pytest.raises(JobSuperseded):
        Progress(job.pk, attempt=stalled.attempts).set_total(3)
    assert job_execute(job_id=job.pk, task_id="task-2").state == Job.State.DONE
    assert Layer.objects.get().job_id == job.pk


@pytest.mark.django_db
def test_a_job_whose_output_is_stored_is_never_run_again(
        data_root, tmp_path, settings, sent, django_capture_on_commit_callbacks):
    settings.JOB_STALE_S = 30
    job = _import_job(tmp_path)
    run = _claim(job.pk, "task-1")
    layer = import_volume(dataset=job.dataset, job=run, source=str(_volume(tmp_path)),
                          dataset_path="raw", name="em")
    assert Job.objects.get(pk=job.pk).step == Job.Step.STORED
    _silent(job)                 # lost before it recorded its end
    assert _sweep(django_capture_on_commit_callbacks).stored == [job.pk]
    job = Job.objects.get(pk=job.pk)
    assert (job.state, job.message, job.retries) == (Job.State.DONE, STORED_NOTE, 0)
    assert sent == [] and Layer.objects.get().pk == layer.pk


@pytest.mark.django_db
def test_a_stalled_detection_plan_wipes_nothing(em, model_file, sent):
    _, path = model_file
    dataset, em_layer = em
    job = job_create(kind="detect_synapses", dataset=dataset, enqueue=False,
                     parameters=detect_parameters(path, em_layer, roi=[0, 0, 0, 8, 64, 128]))
    stalled = _claim(job.pk, "task-1")
    job_requeue(job=Job.objects.select_for_update().get(pk=job.pk), message="sent again")
    job_execute(job_id=job.pk, task_id="task-2")
    for index in range(2):
        assert block_execute(job_id=job.pk, index=index).status == "done"
    probability = open_multiscale(settings.DATA_ROOT / f"datasets/{dataset.pk}/jobs/{job.pk}/"
                                  "probability.zarr")[0]["0"]
    written = probability[...]
    assert written.max() > 0
    # The first run wakes up: its plan would recreate the probability over the blocks' output.
    with pytest.raises(JobSuperseded):
        detection_plan(stalled, dict(stalled.parameters))
    with pytest.raises(JobSuperseded):
        blocks_start(job=stalled, plan=SimpleNamespace(boxes=[((0, 0, 0), (1, 1, 1))]))
    np.testing.assert_array_equal(probability[...], written)
    assert JobBlock.objects.filter(job=job, state=JobBlock.State.DONE).count() == 2


# --- jobs never sent, staging --------------------------------------------------------------

@pytest.mark.django_db
def test_a_queued_job_whose_task_was_never_sent_is_sent(
        settings, sent, django_capture_on_commit_callbacks):
    settings.JOB_STALE_S = 30
    job = job_create(kind="selftest", dataset=DatasetFactory(), enqueue=False, parameters={})
    assert _sweep(django_capture_on_commit_callbacks).sent == []          # just made
    Job.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(seconds=90))
    assert _sweep(django_capture_on_commit_callbacks).sent == [job.pk]
    assert sent == [("run_job", (job.pk,))]
    assert Job.objects.get(pk=job.pk).task_id == "task-1"
    assert _sweep(django_capture_on_commit_callbacks).sent == []


@pytest.mark.django_db
def test_staging_of_runs_that_are_over_is_removed(data_root, tmp_path, sent, settings,
                                                  django_capture_on_commit_callbacks):
    dataset = DatasetFactory()
    running = _import_job(tmp_path, dataset)
    run, current = _taken_up(running)
    old = current.with_name(f"job-{running.pk}-a0-0123456789ab")      # an earlier run's
    old.mkdir()
    done = job_create(kind="selftest", dataset=dataset, enqueue=False, parameters={})
    Job.objects.filter(pk=done.pk).update(state=Job.State.DONE, attempts=1)
    finished = staging_path(dataset=dataset, job=Job.objects.get(pk=done.pk))
    finished.mkdir()
    unowned = staging_path(dataset=dataset)
    unowned.mkdir()
    report = _sweep(django_capture_on_commit_callbacks)
    assert sorted(report.staging) == sorted([str(old), str(finished)])
    assert current.exists() and unowned.exists()
    assert not old.exists() and not finished.exists()


# --- resume --------------------------------------------------------------------------------

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
    assert body["job"]["step"] == "blocks" and body["job"]["retries"] == 0

    Job.objects.filter(pk=job.pk).update(state=Job.State.DONE)
    response = client.post(f"/api/jobs/{job.pk}/resume/")
    assert response.status_code == 400
    assert response.json()["error"] == f"job: job {job.pk} is done; there is nothing to resume"
    assert client.post("/api/jobs/999999/resume/").status_code == 404


@pytest.mark.django_db
def test_resume_runs_a_job_that_is_not_block_wise_again_from_the_start(
        data_root, tmp_path, settings, sent, django_capture_on_commit_callbacks):
    settings.JOB_STALE_S = 30
    job = _import_job(tmp_path)
    run, staged = _taken_up(job)
    admin = UserFactory()
    MembershipFactory(dataset=job.dataset, user=admin, role=Membership.Role.ADMIN)
    client = APIClient()
    client.force_authenticate(admin)

    response = client.post(f"/api/jobs/{job.pk}/resume/")      # its worker is alive
    assert response.status_code == 400
    assert response.json()["error"].startswith(
        f"job: job {job.pk} is running: worker {run.worker} runs its handler (last sign of "
        "life ")
    assert response.json()["error"].endswith(" s ago); cancel it or let it end")

    _silent(job, retries=2)                                      # stuck: its worker died
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/api/jobs/{job.pk}/resume/")
    assert response.status_code == 200, response.json()
    assert response.json()["blocks_sent"] == 0
    shown = response.json()["job"]
    assert (shown["state"], shown["retries"]) == ("queued", 0)
    assert shown["message"] == "resumed: running again from the start"
    assert sent == [("run_job", (job.pk,))] and not staged.exists()

    job = job_execute(job_id=job.pk, task_id="task-2")
    assert job.state == Job.State.DONE and Layer.objects.filter(dataset=job.dataset).count() == 1

    # A failed one, from the command line.
    failed = _import_job(tmp_path, dataset=DatasetFactory())
    Job.objects.filter(pk=failed.pk).update(state=Job.State.FAILED, error="lost", attempts=1)
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("resume_job", str(failed.pk), stdout=out)
    assert out.getvalue() == f"job {failed.pk}: sent again to run from the start\n"
    failed = Job.objects.get(pk=failed.pk)
    assert (failed.state, failed.error) == (Job.State.QUEUED, "")


@pytest.mark.django_db
def test_resume_job_stale_command(settings, sent, django_capture_on_commit_callbacks):
    settings.JOB_STALE_S = 30
    job = _planned_job()
    _mark_running(job, 2, silent_s=300)
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("resume_job", "--stale", stdout=out)
    assert out.getvalue() == f"job {job.pk}: blocks [2] sent again\n"
    assert sent == [("run_block", (job.pk, 2))]
    out = StringIO()
    call_command("resume_job", "--stale", stdout=out)
    assert out.getvalue() == "nothing left by a lost worker\n"


# --- the broker ----------------------------------------------------------------------------

@pytest.mark.django_db
def test_work_queued_in_a_broker_that_lost_its_data_is_sent_again(
        monkeypatch, sent, django_capture_on_commit_callbacks):
    if not settings.CELERY_BROKER_URL.startswith("redis"):
        pytest.skip("only Redis forgets its queues when it restarts (the filesystem broker "
                    "keeps them on disk)")
    monkeypatch.setattr("connectome.jobs.sweep._redis_client", broker_client)
    queued = job_create(kind="selftest", dataset=DatasetFactory(), enqueue=False, parameters={})
    Job.objects.filter(pk=queued.pk).update(task_id="sent-long-ago")
    blocks = _planned_job(blocks=2)
    client = broker_client()
    try:
        client.delete(BROKER_MARK)                     # as after a restart
        assert _sweep(django_capture_on_commit_callbacks).broker_restarted
        assert sorted(sent) == [("run_block", (blocks.pk, 0)), ("run_block", (blocks.pk, 1)),
                                ("run_job", (queued.pk,))]
        assert client.exists(BROKER_MARK)
        assert not _sweep(django_capture_on_commit_callbacks).broker_restarted
        assert len(sent) == 3
    finally:
        client.close()


# --- lost database connections (PostgreSQL) ------------------------------------------------

def _end_my_connection():
    """Terminate this thread's database connection from another one, as an administrator or
    a restarting server would."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        other.close()


def _needs_postgresql():
    if connection.vendor != "postgresql":
        pytest.skip("pg_terminate_backend is PostgreSQL's")


@pytest.mark.django_db(transaction=True)
def test_database_steps_survive_a_terminated_connection(settings, sent, caplog, monkeypatch):
    _needs_postgresql()
    settings.JOB_DB_RETRY_BACKOFF_S = 0.01
    job = _planned_job(blocks=2)
    _end_my_connection()
    assert db_retry(lambda: Job.objects.filter(pk=job.pk).count(), "counting") == 1
    assert "counting: database connection lost (OperationalError: " in caplog.text

    # A block whose connection ends while it computes is still marked done, once.
    spec = get_job_spec("selftest_blocks")

    def computing(job_row, box, params):
        _end_my_connection()
        return {"z": box[0].start}

    monkeypatch.setattr("connectome.jobs.blocks.get_job_spec",
                        lambda kind: type(spec)(**{**spec.__dict__, "block": computing}))
    assert block_execute(job_id=job.pk, index=0).status == "done"
    assert JobBlock.objects.get(job=job, index=0).state == JobBlock.State.DONE
    assert Job.objects.get(pk=job.pk).progress_done == 1

    # A progress report skips a beat instead of failing the job.
    run = job_create(kind="selftest", dataset=DatasetFactory(), enqueue=False, parameters={})
    run = _claim(run.pk, "task-1")
    progress = Progress(run.pk, attempt=run.attempts, interval=0)
    _end_my_connection()
    progress.set_total(5, message="counting")            # lost, skipped
    progress.advance(2)
    assert Job.objects.get(pk=run.pk).progress_done == 2
