"""Faults on real worker processes, recovered without a person.

Workers are killed (SIGKILL) in the middle of a block, of the final step and of an import;
the database connections of a worker are terminated again and again mid-job; the broker loses
its queues. Nobody resumes anything: the surviving worker's sweep (every ``JOB_SWEEP_S``) and
the tasks' own retries must bring every job to its end within a bounded time, with the rows
and volumes of an uninterrupted run, no duplicate rows, nothing left in staging and no stray
folder in the job's folder.

The workers here beat every 0.5 s and count a silence of 5 s as a lost worker, so that
recovery takes seconds, not minutes.
"""

import logging
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
from django.conf import settings
from django.db import connection, transaction

from connectome.cells.models import Cell
from connectome.datasets.models import Layer
from connectome.datasets.services import staged_by_jobs
from connectome.imports.volumes import import_volume
from connectome.jobs.models import Job, JobBlock
from connectome.jobs.services import job_create, job_execute, job_run_inline
from connectome.synapses.models import Synapse
from detection.io.zarr_store import open_multiscale
from tests.connectome.factories import DatasetFactory
from tests.connectome.test_pipeline import (  # noqa: F401 - fixtures
    detect_parameters,
    em,
    model_file,
    phantom_file,
    synapse_table,
)
from tests.connectome.test_pipeline_workers import _wait, start_worker  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
logger = logging.getLogger(__name__)

FAST = {"JOB_HEARTBEAT_S": "0.5", "JOB_STALE_S": "5", "JOB_SWEEP_S": "0.5"}
#: How long any job here may take, faults and recovery included.
BOUND_S = 240


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted detection's table and volumes, computed once per module."""
    return {}


def _reference_detection(cache, dataset, em_layer, model_path):
    if "table" not in cache:
        job = job_run_inline(kind="detect_synapses", dataset=dataset,
                             parameters=detect_parameters(model_path, em_layer, "reference"))
        assert job.state == Job.State.DONE, job.error
        cache["table"] = synapse_table("reference")
        cache["probability"] = _level0(job.result["probability_layer"])
        cache["instances"] = _level0(job.result["instances_layer"])
        assert len(cache["table"]) >= 10
    return cache


def _level0(layer_id):
    return open_multiscale(Layer.objects.get(pk=layer_id).path)[0]["0"][...]


def _ended(job_id, timeout=BOUND_S):
    return _wait(lambda: Job.objects.filter(pk=job_id, state__in=Job.FINISHED_STATES).first(),
                 timeout, f"job {job_id} to end")


def _pid(worker: str) -> int:
    return int(worker.rsplit(":", 1)[1])


def _process(procs, worker: str):
    pid = _pid(worker)
    found = [p for p in procs if p.pid == pid]
    assert found, f"no started worker has pid {pid} ({worker})"
    return found[0]


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


@contextmanager
def _holding(job_id):
    """Hold the job's row: a worker writing to it (progress, heartbeat, the final commit)
    waits until the block ends. On SQLite the transaction holds the whole database's write
    lock, which does the same."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        yield job


def _assert_detection_like_reference(job, cache, run_name):
    assert job.state == Job.State.DONE, job.error
    assert synapse_table(run_name) == cache["table"]
    rows = Synapse.objects.filter(run__name=run_name)
    assert rows.count() == len(set(rows.values_list("site_id", flat=True))) == len(cache["table"])
    np.testing.assert_array_equal(_level0(job.result["probability_layer"]), cache["probability"])
    np.testing.assert_array_equal(_level0(job.result["instances_layer"]), cache["instances"])
    # The job's folder holds the probability and the instance labels it stored, nothing else.
    instances = Layer.objects.get(pk=job.result["instances_layer"])
    folder = settings.DATA_ROOT / "datasets" / str(job.dataset_id) / "jobs" / str(job.pk)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["probability.zarr", Path(instances.storage_path).name])
    assert staged_by_jobs() == []


def test_a_worker_killed_mid_block_is_replaced_by_the_sweep(
        em, model_file, start_worker, reference):
    _, path = model_file
    dataset, em_layer = em
    cache = _reference_detection(reference, dataset, em_layer, path)
    workers = [start_worker("first", **FAST), start_worker("second", **FAST)]
    started = time.monotonic()
    job = job_create(kind="detect_synapses", dataset=dataset,
                     parameters=detect_parameters(path, em_layer, "swept"))
    blocks = JobBlock.objects.filter(job=job)

    def frozen_mid_block():
        if blocks.filter(state=JobBlock.State.DONE).count() < 3:
            return None
        running = blocks.filter(state=JobBlock.State.RUNNING).first()
        if running is None:
            return None
        proc = _process(workers, running.worker)
        proc.send_signal(signal.SIGSTOP)
        still = blocks.filter(pk=running.pk, state=JobBlock.State.RUNNING,
                              worker=running.worker).exists()
        if not still:
            proc.send_signal(signal.SIGCONT)
            return None
        return running, proc

    lost, proc = _wait(frozen_mid_block, BOUND_S, "a worker inside a block after three blocks")
    _kill(proc)
    logger.info("killed %s in %s", lost.worker, lost.describe())

    job = _ended(job.pk)
    logger.info("done %.1f s after the start, no person involved: %s",
                time.monotonic() - started, job.result)
    _assert_detection_like_reference(job, cache, "swept")
    again = blocks.get(pk=lost.pk)
    assert again.attempts >= 2 and again.worker != lost.worker
    assert job.result["block_attempts"] >= 19


def test_a_worker_killed_in_the_final_step_is_replaced_by_the_sweep(
        em, model_file, start_worker, reference):
    _, path = model_file
    dataset, em_layer = em
    cache = _reference_detection(reference, dataset, em_layer, path)
    workers = [start_worker("first", **FAST), start_worker("second", **FAST)]
    job = job_create(kind="detect_synapses", dataset=dataset,
                     parameters=detect_parameters(path, em_layer, "final"))
    finishing = Job.objects.filter(pk=job.pk, state=Job.State.RUNNING, step=Job.Step.FINISH)
    _wait(lambda: finishing.exclude(worker="").exists(), BOUND_S,
          "a worker to take up the final step")
    with _holding(job.pk) as held:
        # The final step cannot store (nor report) while the row is held.
        assert (held.state, held.step) == (Job.State.RUNNING, Job.Step.FINISH), held.message
        proc = _process(workers, held.worker)
        _kill(proc)
    logger.info("killed %s in the final step (%s)", held.worker, held.message)

    job = _ended(job.pk)
    _assert_detection_like_reference(job, cache, "final")
    # The plan, the lost final step, the one that stored (more if a busy machine made a worker
    # look lost: such a run stores nothing).
    assert job.retries >= 1 and job.attempts >= 3
    assert job.worker != held.worker


def _labels_file(path: Path, depth: int = 32) -> Path:
    z, y, x = np.meshgrid(np.arange(depth), np.arange(384), np.arange(384), indexing="ij")
    labels = ((z // 4) * 10000 + (y // 24) * 100 + x // 24 + 1).astype(np.uint32)
    labels[:, :24, :24] = 0
    with h5py.File(path, "w") as f:
        f["seg"] = labels
    return path


def _import_parameters(source, name):
    return {"source": str(source), "dataset_path": "seg", "name": name, "kind": "segmentation",
            "chunks": [8, 64, 64]}


def _cells(layer):
    return list(Cell.objects.filter(layer=layer).order_by("segment_id").values_list(
        "segment_id", "size_voxels", "bbox_min_z", "bbox_min_y", "bbox_min_x", "bbox_max_z",
        "bbox_max_y", "bbox_max_x", "centroid_z", "centroid_y", "centroid_x"))


def _assert_import_like_reference(job, reference_layer):
    assert job.state == Job.State.DONE, job.error
    layer = Layer.objects.get(pk=job.result["layer_id"])
    ours, theirs = open_multiscale(layer.path)[0], open_multiscale(reference_layer.path)[0]
    assert sorted(ours) == sorted(theirs)
    for level in theirs:
        np.testing.assert_array_equal(ours[level][...], theirs[level][...])
    assert _cells(layer) == _cells(reference_layer)
    assert Layer.objects.filter(dataset=job.dataset).count() == 1
    assert staged_by_jobs() == []
    assert not any((settings.DATA_ROOT / "datasets" / str(job.dataset_id) / "staging").iterdir())


def test_a_worker_killed_mid_import_is_replaced_by_the_sweep(data_root, tmp_path, start_worker):
    source = _labels_file(tmp_path / "labels.h5")
    reference_layer = import_volume(dataset=DatasetFactory(), **_import_parameters(source, "ref"))
    small = {**FAST, "IMPORT_BLOCK_BYTES": str(256 * 2**10)}
    workers = [start_worker("first", **small), start_worker("second", **small)]
    dataset = DatasetFactory()
    job = job_create(kind="import_volume", dataset=dataset,
                     parameters=_import_parameters(source, "neurons"))
    copying = Job.objects.filter(pk=job.pk, state=Job.State.RUNNING, message__startswith="copying")
    _wait(copying.exists, BOUND_S, "the import to copy")
    with _holding(job.pk) as held:
        assert held.state == Job.State.RUNNING and held.progress_done < held.progress_total
        staged = staged_by_jobs(job_id=job.pk)
        assert [(job_id, attempt) for _, job_id, attempt in staged] == [(job.pk, 1)]
        assert any(staged[0][0].iterdir())       # half a volume in staging
        _kill(_process(workers, held.worker))
    logger.info("killed %s while it copied (%s of %s blocks)", held.worker,
                held.progress_done, held.progress_total)

    job = _ended(job.pk)
    _assert_import_like_reference(job, reference_layer)
    assert job.attempts >= 2 and job.retries >= 1
    assert job.worker != held.worker


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def _terminate_other_connections(spare: int) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                       "AND pid <> %s", [spare])
        return cursor.fetchone()[0]


@contextmanager
def _terminating(moments):
    """Terminate the workers' database connections (all but this test's) at each of
    ``moments``: conditions, polled in turn, each checked once the one before has fired.
    Yields the connections ended each time."""
    ended, stop, spare = [], threading.Event(), _backend_pid()

    def loop():
        try:
            for moment in moments:
                while not moment():
                    if stop.wait(0.02):
                        return
                # A worker between a lost connection and its next query holds none: end the
                # next one it opens.
                deadline = time.monotonic() + 10
                while not (n := _terminate_other_connections(spare)):
                    if time.monotonic() > deadline or stop.wait(0.02):
                        break
                ended.append(n)
        finally:
            connection.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield ended
    finally:
        stop.set()
        thread.join()


def _after(seconds):
    """A moment ``seconds`` after the moment before it fired."""
    state = {}

    def moment():
        state.setdefault("since", time.monotonic())
        return time.monotonic() - state["since"] >= seconds

    return moment


def _needs_postgresql():
    if connection.vendor != "postgresql":
        pytest.skip("pg_terminate_backend is PostgreSQL's; SQLite has no connections to end")


def test_terminated_database_connections_mid_detection_are_retried(
        em, model_file, start_worker, reference, tmp_path):
    _needs_postgresql()
    _, path = model_file
    dataset, em_layer = em
    cache = _reference_detection(reference, dataset, em_layer, path)
    # A sweep would find nothing lost for 10 minutes: the tasks' own retries must do it all.
    start_worker("only", JOB_HEARTBEAT_S="0.5", JOB_STALE_S="600", JOB_SWEEP_S="600")
    job = job_create(kind="detect_synapses", dataset=dataset,
                     parameters=detect_parameters(path, em_layer, "terminated"))
    rows = Job.objects.filter(pk=job.pk)
    done = JobBlock.objects.filter(job=job, state=JobBlock.State.DONE)
    moments = [lambda: rows.filter(state=Job.State.RUNNING).exists(),     # planning
               *(lambda n=n: done.count() >= n for n in (2, 6, 10, 14)),   # blocks
               lambda: rows.filter(step=Job.Step.FINISH).exclude(worker="").exists()]
    with _terminating(moments) as ended:
        job = _ended(job.pk)
    logger.info("worker connections ended %d times (%s) during the job", len(ended), ended)
    assert len(ended) == 6 and all(ended)
    _assert_detection_like_reference(job, cache, "terminated")
    log = (tmp_path / "only.log").read_text()
    assert "database connection lost" in log
    assert JobBlock.objects.filter(job=job, state=JobBlock.State.DONE).count() == 18


def test_terminated_database_connections_mid_import_are_retried(
        data_root, tmp_path, start_worker):
    _needs_postgresql()
    source = _labels_file(tmp_path / "labels.h5", depth=64)   # copies for a few seconds
    reference_layer = import_volume(dataset=DatasetFactory(), **_import_parameters(source, "ref"))
    start_worker("only", JOB_HEARTBEAT_S="0.5", JOB_STALE_S="600", JOB_SWEEP_S="600",
                 IMPORT_BLOCK_BYTES=str(256 * 2**10))
    job = job_create(kind="import_volume", dataset=DatasetFactory(),
                     parameters=_import_parameters(source, "neurons"))
    copying = Job.objects.filter(pk=job.pk, message__startswith="copying")
    with _terminating([copying.exists, _after(0.3), _after(0.3)]) as ended:
        job = _ended(job.pk)
    logger.info("worker connections ended %d times (%s) during the import; attempts %d",
                len(ended), ended, job.attempts)
    assert len(ended) == 3 and all(ended)
    _assert_import_like_reference(job, reference_layer)
    assert "database connection lost" in (tmp_path / "only.log").read_text()


def test_queued_work_lost_with_the_broker_is_sent_again(start_worker, data_root):
    if not settings.CELERY_BROKER_URL.startswith("redis"):
        pytest.skip("the filesystem broker keeps its queues on disk: there is nothing to lose")
    import redis

    dataset = DatasetFactory()
    plain = job_create(kind="selftest", dataset=dataset,
                       parameters={"units": 3, "seconds_per_unit": 0})
    blockwise = job_create(kind="selftest_blocks", dataset=dataset, enqueue=False,
                           parameters={"blocks": 6, "seconds_per_block": 0})
    job_execute(job_id=blockwise.pk, task_id="planned-here")  # its six block tasks are sent
    assert Job.objects.get(pk=plain.pk).task_id
    assert JobBlock.objects.filter(job=blockwise, state=JobBlock.State.PENDING).count() == 6
    # Redis restarts without persistence: its queues, and the sweep's mark, are gone.
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    assert client.llen("cpu") == 7
    client.flushdb()
    client.close()

    start_worker("after-restart", **FAST)
    for job_id in (plain.pk, blockwise.pk):
        job = _ended(job_id, timeout=60)
        assert job.state == Job.State.DONE, job.error
    assert Job.objects.get(pk=plain.pk).result == {"units": 3}
    assert Job.objects.get(pk=blockwise.pk).result["blocks_seen"] == 6
    assert not JobBlock.objects.exclude(state=JobBlock.State.DONE).exists()
