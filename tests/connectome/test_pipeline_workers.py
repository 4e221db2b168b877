"""A detection job on real worker processes over the configured broker and database.

One worker is killed (SIGKILL) in the middle of a block; another is started and the job
resumed. The synapse table must equal that of an uninterrupted run: nothing lost, nothing
stored twice.
"""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings

from connectome.datasets.models import Layer
from connectome.jobs.blocks import job_resume
from connectome.jobs.models import Job, JobBlock
from connectome.jobs.services import job_create, job_run_inline
from detection.io.zarr_store import open_multiscale
from tests.connectome.test_jobs import _database_url_for_worker
from tests.connectome.test_pipeline import (  # noqa: F401 - fixtures
    detect_parameters,
    em,
    model_file,
    phantom_file,
    synapse_table,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
logger = logging.getLogger(__name__)


@pytest.fixture
def start_worker(em, tmp_path):
    """Start worker processes (one block at a time each); all are stopped at the end."""
    from connectome.celery import app

    app.control.purge()
    started = []
    env = {**os.environ, "DATABASE_URL": _database_url_for_worker(),
           "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
           "DATA_ROOT": str(settings.DATA_ROOT), "OMP_NUM_THREADS": "1"}

    def start(name, **extra_env):
        log = open(tmp_path / f"{name}.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "connectome", "worker", "-Q", "cpu,gpu",
             "--concurrency", "1", "--pool", "solo", "--loglevel", "INFO", "-n", f"{name}@%h"],
            cwd=Path(settings.BASE_DIR), env={**env, **extra_env}, stdout=log, stderr=subprocess.STDOUT,
        )
        started.append((proc, log))
        return proc

    yield start
    for proc, log in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def _wait(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"waited {timeout} s for {what}")


def _kill_mid_block(worker, blocks):
    """SIGKILL the worker while it computes a block, after it finished three."""

    def stopped_mid_block():
        # Freeze the worker once a few blocks are done and one has started; keep it frozen
        # only if a block is still running (it may have finished between poll and signal).
        if not (blocks.filter(state=JobBlock.State.DONE).count() >= 3
                and blocks.filter(state=JobBlock.State.RUNNING).exists()):
            return False
        worker.send_signal(signal.SIGSTOP)
        if blocks.filter(state=JobBlock.State.RUNNING).exists():
            return True
        worker.send_signal(signal.SIGCONT)
        return False

    _wait(stopped_mid_block, 240, "the first worker to be inside a block after three blocks")
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)


def test_a_worker_killed_mid_job_then_resume_gives_the_uninterrupted_table(
        em, model_file, start_worker):
    _, path = model_file
    dataset, em_layer = em
    reference = job_run_inline(kind="detect_synapses", dataset=dataset,
                               parameters=detect_parameters(path, em_layer, "reference"))
    assert reference.state == Job.State.DONE, reference.error
    expected = synapse_table("reference")
    assert len(expected) >= 10

    first = start_worker("first")
    job = job_create(kind="detect_synapses", dataset=dataset,
                     parameters=detect_parameters(path, em_layer, "resumed"))
    blocks = JobBlock.objects.filter(job=job)

    _kill_mid_block(first, blocks)

    done_before = set(blocks.filter(state=JobBlock.State.DONE).values_list("index", flat=True))
    interrupted = set(blocks.filter(state=JobBlock.State.RUNNING).values_list("index", flat=True))
    logger.info("killed the first worker with blocks %s done and block %s running",
                sorted(done_before), sorted(interrupted))
    assert interrupted, "the worker was killed between blocks; the test needs one mid-block"
    assert 3 <= len(done_before) < 18
    job = Job.objects.get(pk=job.pk)
    assert job.state == Job.State.RUNNING and job.progress_done == len(done_before)
    assert not synapse_table("resumed")

    start_worker("second")
    assert job_resume(job=job) == 18 - len(done_before)
    job = _wait(lambda: Job.objects.filter(pk=job.pk, state__in=Job.FINISHED_STATES).first(),
                300, "the resumed job to end")
    assert job.state == Job.State.DONE, job.error

    assert synapse_table("resumed") == expected
    logger.info("resumed job: %s synapses, the same as the uninterrupted run; %s",
                len(expected), job.result)
    attempts = dict(blocks.values_list("index", "attempts"))
    assert {attempts[i] for i in done_before} == {1}      # done blocks were not run again
    assert {attempts[i] for i in interrupted} == {2}
    assert job.result["block_attempts"] == 18 + len(interrupted)
    made = Layer.objects.filter(dataset=dataset, kind__in=["prediction", "synapses"])
    layers = {layer.name: open_multiscale(layer.path)[0]["0"][...] for layer in made}
    np.testing.assert_array_equal(layers["resumed probability"], layers["reference probability"])
    np.testing.assert_array_equal(layers["resumed synapses"], layers["reference synapses"])


def test_a_new_worker_sends_again_the_block_a_dead_worker_left_running(
        em, model_file, start_worker):
    _, path = model_file
    dataset, em_layer = em
    beats = {"JOB_HEARTBEAT_S": "0.5", "JOB_STALE_S": "2"}
    first = start_worker("first", **beats)
    job = job_create(kind="detect_synapses", dataset=dataset,
                     parameters=detect_parameters(path, em_layer, "recovered"))
    blocks = JobBlock.objects.filter(job=job)
    _kill_mid_block(first, blocks)
    lost = set(blocks.filter(state=JobBlock.State.RUNNING).values_list("index", flat=True))
    assert len(lost) == 1
    time.sleep(2.5)   # the lost block's last heartbeat is now older than the limit

    # No resume: the new worker finds the lost block when it starts.
    start_worker("second", **beats)
    job = _wait(lambda: Job.objects.filter(pk=job.pk, state__in=Job.FINISHED_STATES).first(),
                300, "the job to end on the second worker")
    assert job.state == Job.State.DONE, job.error
    attempts = dict(blocks.values_list("index", "attempts"))
    assert {attempts[i] for i in lost} == {2}
    assert sum(attempts.values()) == 19
    found = synapse_table("recovered")
    assert len(found) >= 10
    logger.info("recovered job: %d synapses, block %s sent again by the new worker",
                len(found), sorted(lost))
