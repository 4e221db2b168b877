"""The sweep: work lost with a worker (or with the broker) is noticed and sent again, no person needed.

Every worker runs :func:`jobs_sweep` when it starts and then every ``JOB_SWEEP_S`` seconds
from a thread of its own (:class:`Sweeper`, started by connectome/jobs/tasks.py);
``manage.py resume_job --stale`` runs it once by hand. One pass:

1. **blocks**: a running block silent for ``JOB_STALE_S`` goes back to pending and is sent
   again; one lost in each of its job's ``max_attempts`` attempts fails the job.
2. **block tasks not all sent**: the worker sending a plan's block tasks died while sending
   (the job still names it and it is silent): the blocks that are not done are sent again.
3. **final steps**: a final step that was sent but not taken up within ``JOB_STALE_S`` is sent
   again; one whose worker stopped beating is sent again, at most ``JOB_MAX_RETRIES`` times,
   then the job fails.
4. **handlers**: a running job whose handler's worker stopped beating is sent again from the
   start (handlers are all or nothing), at most ``JOB_MAX_RETRIES`` times, then it fails; a
   job with a cancel request is cancelled; one that ran in a process of its own (a management
   command) fails, saying so. The lost run's staging is removed first. A job whose handler
   had stored its output (``stored``) ends done instead: it is never run twice.
5. **jobs never sent**: a queued job whose task was never sent (the sender died between the
   commit and the send) is sent.
6. **staging**: staging folders of job runs that are over are removed.
7. **the broker**: with Redis, a key that the first sweep sets tells whether Redis lost its
   data since (restarted without persistence, ``--save ""``); if so every queued job, pending
   block and final step waiting to be taken up is sent again (a duplicate finds its work
   done, or taken, and returns).

Concurrent sweeps in many workers are safe: each job is handled in a transaction that holds
its row (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite runs one writing
transaction at a time) and checks its state again under the lock.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from connectome.jobs.liveness import (
    DB_ERRORS,
    db_error_text,
    db_retry,
    drop_connection,
    max_retries,
    stale_cutoff,
)
from connectome.jobs.models import Job, JobBlock
from connectome.jobs.registry import UnknownJobKind, get_job_spec

logger = logging.getLogger(__name__)

#: Set by the first sweep in Redis; its absence later means Redis lost what it held.
BROKER_MARK = "connectome:jobs:broker-mark"


@dataclass
class SweepReport:
    """What one pass did, by job id."""

    blocks: dict[int, list[int]] = field(default_factory=dict)   # job -> block indexes sent
    block_tasks: list[int] = field(default_factory=list)          # jobs whose blocks were sent
    final_steps: list[int] = field(default_factory=list)          # final steps sent again
    requeued: list[int] = field(default_factory=list)             # handlers sent again
    failed: list[int] = field(default_factory=list)
    stored: list[int] = field(default_factory=list)               # ended done (output in)
    cancelled: list[int] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)                 # queued jobs never sent
    staging: list[str] = field(default_factory=list)              # folders removed
    broker_restarted: bool = False

    def __bool__(self) -> bool:
        return any([self.blocks, self.block_tasks, self.final_steps, self.requeued, self.failed,
                    self.stored, self.cancelled, self.sent, self.staging,
                    self.broker_restarted])

    def lines(self) -> list[str]:
        out = [f"job {job}: blocks {indexes} sent again" for job, indexes in self.blocks.items()]
        out += [f"job {job}: block tasks sent again (their sender was lost)"
                for job in self.block_tasks]
        out += [f"job {job}: final step sent again" for job in self.final_steps]
        out += [f"job {job}: sent again from the start (its worker was lost)"
                for job in self.requeued]
        out += [f"job {job}: failed (its worker was lost)" for job in self.failed]
        out += [f"job {job}: done (its worker was lost after it stored its output)"
                for job in self.stored]
        out += [f"job {job}: cancelled (its worker was lost)" for job in self.cancelled]
        out += [f"job {job}: sent (its task had never been sent)" for job in self.sent]
        out += [f"removed staging {path}" for path in self.staging]
        if self.broker_restarted:
            out.insert(0, "the broker lost its queues: queued work sent again")
        return out


def jobs_sweep() -> SweepReport:
    """One pass over running and queued jobs; see the module's docstring."""
    from connectome.jobs.blocks import blocks_recover_stale

    report = SweepReport()
    report.broker_restarted = _broker_restarted(report)
    report.blocks = blocks_recover_stale()
    _block_tasks_of_lost_senders(report)
    _final_steps(report)
    _handlers(report)
    _never_sent(report)
    _stray_staging(report)
    for line in report.lines():
        logger.warning("sweep: %s", line)
    return report


def _since(job: Job) -> str:
    return job.heartbeat_at.isoformat() if job.heartbeat_at else "its start"


def _locked(job_id: int, **conditions) -> Job | None:
    """The job's row, locked, if it still meets ``conditions``; None if not, or if another
    sweep holds it."""
    return (Job.objects.select_for_update(skip_locked=True)
            .filter(pk=job_id, **conditions).first())


def _silent(conditions: dict, *, with_worker: bool = False) -> list[int]:
    cutoff = stale_cutoff()
    jobs = Job.objects.filter(Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True),
                              **conditions)
    if with_worker:
        jobs = jobs.exclude(worker="")
    return list(jobs.order_by("pk").values_list("pk", flat=True))


def _fresh(job: Job) -> bool:
    return job.heartbeat_at is not None and job.heartbeat_at >= stale_cutoff()


def _block_tasks_of_lost_senders(report: SweepReport) -> None:
    from connectome.jobs.blocks import blocks_enqueue

    conditions = {"state": Job.State.RUNNING, "step": Job.Step.BLOCKS,
                  "cancel_requested": False}
    for job_id in _silent(conditions, with_worker=True):
        with transaction.atomic():
            job = _locked(job_id, **conditions)
            if job is None or not job.worker or _fresh(job):
                continue
            logger.warning("job %s: worker %s was lost while sending its block tasks",
                           job_id, job.worker)
            Job.objects.filter(pk=job_id).update(worker="", heartbeat_at=None)
            transaction.on_commit(lambda job_id=job_id: db_retry(
                lambda: blocks_enqueue(job_id=job_id), f"job {job_id}: sending its blocks"))
            report.block_tasks.append(job_id)


def _final_steps(report: SweepReport) -> None:
    from connectome.jobs.services import _finish

    conditions = {"state": Job.State.RUNNING, "step": Job.Step.FINISH, "cancel_requested": False}
    for job_id in _silent(conditions):
        with transaction.atomic():
            job = _locked(job_id, **conditions)
            if job is None or _fresh(job):
                continue
            now = timezone.now()
            if not job.worker:
                # Sent but never taken up (lost with the broker or the sender, or waiting
                # behind other work: then the copy is a no-op). Not counted.
                message = job.message
            elif job.retries >= max_retries():
                _finish(job, Job.State.FAILED, error=(
                    f"final step: its worker was lost {job.retries + 1} times (last: worker "
                    f"{job.worker}, no sign of life since {_since(job)}); resume the job to "
                    "try again"))
                report.failed.append(job_id)
                continue
            else:
                message = (f"final step lost with worker {job.worker} (no sign of life since "
                           f"{_since(job)}); sent again ({job.retries + 1} of {max_retries()})")
                job.retries += 1
            Job.objects.filter(pk=job_id).update(worker="", heartbeat_at=now,
                                                 retries=job.retries, message=message[:500])
            transaction.on_commit(lambda job=job: _send_final_step(job))
            report.final_steps.append(job_id)


def _send_final_step(job: Job) -> None:
    from connectome.jobs.tasks import run_blocks_finish

    run_blocks_finish.apply_async(args=[job.pk], queue=job.queue)


def _rerun_allowed(job: Job) -> str:
    """Why a job whose handler's worker was lost cannot simply run again ('' if it can)."""
    if not job.task_id:
        return (f"the process running it ({job.worker}) stopped: no sign of life since "
                f"{_since(job)}; resume the job to run it on the workers")
    try:
        spec = get_job_spec(job.kind)
    except UnknownJobKind as exc:
        return str(exc)
    if not spec.rerun:
        return (f"its worker {job.worker} was lost (no sign of life since {_since(job)}) and "
                f"a {job.kind} job does not run again by itself; resume it to run it again")
    if job.retries >= max_retries():
        return (f"its worker was lost {job.retries + 1} times (last: worker {job.worker}, no "
                f"sign of life since {_since(job)}); resume the job to try again")
    return ""


def _handlers(report: SweepReport) -> None:
    from connectome.datasets.services import staging_remove
    from connectome.jobs.services import STORED_NOTE, _finish, job_requeue

    conditions = {"state": Job.State.RUNNING,
                  "step__in": [Job.Step.HANDLER, Job.Step.STORED]}
    for job_id in _silent(conditions):
        with transaction.atomic():
            job = _locked(job_id, **conditions)
            if job is None or _fresh(job):
                continue
            if job.step == Job.Step.STORED:
                _finish(job, Job.State.DONE, message=STORED_NOTE[:500])
                report.stored.append(job_id)
            elif job.cancel_requested:
                _finish(job, Job.State.CANCELLED,
                        message=f"cancelled (worker {job.worker} was lost)")
                report.cancelled.append(job_id)
            elif reason := _rerun_allowed(job):
                _finish(job, Job.State.FAILED, error=reason)
                report.failed.append(job_id)
            else:
                job_requeue(job=job, message=(
                    f"worker {job.worker} lost (no sign of life since {_since(job)}); sent "
                    f"again from the start ({job.retries + 1} of {max_retries()})"))
                report.requeued.append(job_id)
                continue   # its staging goes when the requeue commits
            transaction.on_commit(lambda job_id=job_id: staging_remove(job_id=job_id))


def _never_sent(report: SweepReport) -> None:
    from connectome.jobs.services import job_enqueue

    cutoff = stale_cutoff()
    waiting = Job.objects.filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, created_at__lt=cutoff),
        state=Job.State.QUEUED, task_id="", cancel_requested=False)
    for job_id in waiting.order_by("pk").values_list("pk", flat=True):
        with transaction.atomic():
            job = _locked(job_id, state=Job.State.QUEUED, task_id="")
            if job is None:
                continue
            # Stamped, so that another sweep does not send it too before the task id is in.
            Job.objects.filter(pk=job_id).update(heartbeat_at=timezone.now())
            transaction.on_commit(lambda job_id=job_id: db_retry(
                lambda: job_enqueue(job_id=job_id), f"job {job_id}: sending it"))
            report.sent.append(job_id)


def _stray_staging(report: SweepReport) -> None:
    from connectome.datasets.services import remove_staged, staged_by_jobs

    # The folders first, then the jobs: a run's folder is made after its job row says it
    # runs, so a folder listed here whose run is not current afterwards is really stray.
    found = staged_by_jobs()
    if not found:
        return
    current = set(Job.objects.filter(
        pk__in={job_id for _, job_id, _ in found}, state=Job.State.RUNNING,
        step__in=[Job.Step.HANDLER, Job.Step.STORED]).values_list("pk", "attempts"))
    for path, job_id, attempt in found:
        if (job_id, attempt) not in current:
            remove_staged(path)
            report.staging.append(str(path))


# --- the broker ------------------------------------------------------------------------------

def _redis_client():
    url = str(getattr(settings, "CELERY_BROKER_URL", ""))
    if not url.startswith(("redis://", "rediss://")):
        return None
    import redis

    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)


def _broker_restarted(report: SweepReport) -> bool:
    """With Redis: whether it lost its data since the last sweep; then send again what waited
    in its queues. (Redis started without persistence forgets its queues when it restarts.)"""
    try:
        client = _redis_client()
        if client is None:
            return False
        try:
            if not client.set(BROKER_MARK, timezone.now().isoformat(), nx=True):
                return False
            try:
                resent = _resend_queued_work()
            except BaseException:
                client.delete(BROKER_MARK)  # the next sweep tries again
                raise
        finally:
            client.close()
    except DB_ERRORS:
        raise
    except Exception as exc:  # noqa: BLE001 - the other rules must run without the broker
        logger.warning("sweep: could not check the broker: %s", exc)
        return False
    logger.warning("the broker holds no mark of an earlier sweep (new, or restarted without "
                   "its data): sent again %d queued jobs, %d pending blocks and %d final steps",
                   *resent)
    return True


def _resend_queued_work() -> tuple[int, int, int]:
    from connectome.jobs.services import job_enqueue
    from connectome.jobs.tasks import run_block

    queued = list(Job.objects.filter(state=Job.State.QUEUED, cancel_requested=False)
                  .values_list("pk", flat=True))
    for job_id in queued:
        job_enqueue(job_id=job_id)
    blocks = (JobBlock.objects.filter(state=JobBlock.State.PENDING, job__state=Job.State.RUNNING,
                                      job__cancel_requested=False)
              .select_related("job").order_by("job_id", "index"))
    n_blocks = 0
    for block in blocks.iterator():
        run_block.apply_async(args=[block.job_id, block.index, block.box[:3], block.box[3:]],
                              queue=block.job.block_queue or block.job.queue)
        n_blocks += 1
    finals = list(Job.objects.filter(state=Job.State.RUNNING, step=Job.Step.FINISH, worker="",
                                     cancel_requested=False))
    for job in finals:
        _send_final_step(job)
    return len(queued), n_blocks, len(finals)


# --- in every worker -------------------------------------------------------------------------

def sweep_s() -> float:
    return float(getattr(settings, "JOB_SWEEP_S", 30.0))


class Sweeper:
    """A thread that sweeps at once and then every ``JOB_SWEEP_S`` seconds (give or take a
    tenth, so that workers started together do not sweep together) until stopped."""

    def __init__(self, interval: float | None = None):
        self.interval = sweep_s() if interval is None else interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job sweep", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            try:
                jobs_sweep()
            except DB_ERRORS as exc:
                logger.warning("sweep: database unreachable (%s); trying again later",
                               db_error_text(exc))
            except Exception:  # noqa: BLE001 - the sweep must outlive any one failure
                logger.exception("sweep failed; trying again later")
            finally:
                drop_connection()
            if self.interval <= 0 or self._stop.wait(self.interval * random.uniform(0.9, 1.1)):
                return
