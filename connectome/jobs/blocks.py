"""Block-wise jobs: one task per box on any number of workers, then one final step.

A block-wise kind's handler returns a :class:`BlockPlan`. Its boxes become ``JobBlock`` rows
and one ``run_block`` task each (sent when the rows commit, on the plan's queue). A block task

1. claims its row (skips it when the job is no longer running, or the block is done),
2. runs the kind's ``block`` handler, which must overwrite the same output when run again
   (chunk-aligned zarr writes), and returns the small summary the final step needs,
3. marks the row done and advances the job's progress in one transaction that holds the job
   row; the transaction that completes the last block sends the final step.

The final step (``run_blocks_finish``) runs the kind's ``finish`` handler, which does its file
work and returns a :class:`Finish`; ``Finish.store`` writes the job's rows in the same
transaction that marks the job done, so a crash leaves either everything or nothing.

Errors: a transient error (I/O, a lost database or broker connection) puts the block back to
``pending`` and the task retries with exponential back-off; after ``max_attempts`` attempts,
or at once for any other error, the block and the job fail, naming the block and the error.
The task's own database steps (claim, done, failed) are tried again on a fresh connection
when the connection is lost (:func:`~connectome.jobs.liveness.db_retry`); if the database
stays away, the task itself is retried later.

Lost workers: a worker computing a block marks it alive every ``JOB_HEARTBEAT_S`` seconds, and
while it runs the final step it marks the job alive. The sweep (connectome/jobs/sweep.py, in
every worker) sends again a block or a final step silent for ``JOB_STALE_S``; a block lost
``max_attempts`` times, or a final step lost ``JOB_MAX_RETRIES`` times, fails the job.

The final step is taken up by one worker at a time (``Job.attempts`` counts them); it stores
only while the job is still its own, so a worker that was only stalled, not lost, stores
nothing when it wakes up.

:func:`job_resume` (a person) runs a job again from where it stopped: the blocks that are not
done (and the final step when all are); done blocks are never run again. A job that is not
block-wise runs again from the start.
"""

from __future__ import annotations

import logging
import time
import traceback as traceback_module
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from connectome.jobs.liveness import (
    DB_ERRORS,
    Heartbeat,
    db_error_text,
    db_retry,
    drop_connection,
    stale_cutoff,
    task_backoff_s,
    worker_name,
)
from connectome.jobs.models import Job, JobBlock
from connectome.jobs.progress import JobSuperseded
from connectome.jobs.registry import get_job_spec
from connectome.jobs.services import (
    _error_text,
    _finish,
    _job_beat,
    job_enqueue,
    job_locks_acquire,
    job_worker_lost,
)
from detection.errors import InputError

logger = logging.getLogger(__name__)

Box = tuple[tuple[int, int, int], tuple[int, int, int]]

#: Errors worth another attempt: the same block may well succeed on the next try.
TRANSIENT_ERRORS = (OSError, TimeoutError, ConnectionError, *DB_ERRORS, MemoryError)
BATCH = 2000


@dataclass(frozen=True)
class BlockPlan:
    """What a block-wise handler returns: the boxes (start, stop) and where their tasks go."""

    boxes: list[Box]
    queue: str = "cpu"
    max_attempts: int = 3
    message: str = ""


@dataclass
class Finish:
    """What a ``finish`` handler returns.

    ``store()`` runs in the transaction that marks the job done and returns more result
    fields (``then_job``: a follow-up job it created, sent after the commit); ``discard()``
    removes this attempt's files when it stores nothing (the job ended meanwhile, or failed).
    """

    result: dict = field(default_factory=dict)
    store: Callable[[], dict] | None = None
    discard: Callable[[], None] | None = None  # undo the file work when nothing is stored


def _box_slices(box) -> tuple[slice, slice, slice]:
    return tuple(slice(int(a), int(b)) for a, b in zip(box[:3], box[3:]))


# --- planning --------------------------------------------------------------------------------

def blocks_start(*, job: Job, plan: BlockPlan, inline: bool = False) -> None:
    """Record the plan's blocks and send their tasks when this transaction commits.

    ``job`` is the row as this run of its handler took it up; a run that is no longer the
    job's (sent again meanwhile) records nothing (:class:`JobSuperseded`).
    """
    if not plan.boxes:
        raise InputError(f"job {job.pk}: the plan has no blocks (empty region?)")
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if locked.state != Job.State.RUNNING or locked.attempts != job.attempts:
            raise JobSuperseded(f"job {job.pk} is no longer run by attempt {job.attempts}")
        if locked.cancel_requested:
            _finish(locked, Job.State.CANCELLED, message="cancelled")
            return
        rows = [
            JobBlock(job=job, index=i, box=[int(v) for v in (*start, *stop)])
            for i, (start, stop) in enumerate(plan.boxes)
        ]
        JobBlock.objects.filter(job=job).delete()
        for first in range(0, len(rows), BATCH):
            JobBlock.objects.bulk_create(rows[first:first + BATCH])
        now = timezone.now()
        Job.objects.filter(pk=job.pk).update(
            block_queue=plan.queue, progress_done=0, progress_total=len(rows),
            message=plan.message or f"0 / {len(rows)} blocks",
            result=_rate_fields(0, len(rows), now, 0, now), step=Job.Step.BLOCKS,
            parameters={**locked.parameters, "_max_attempts": int(plan.max_attempts)},
        )
        if not inline:
            transaction.on_commit(lambda: db_retry(lambda: blocks_enqueue(job_id=job.pk),
                                                   f"job {job.pk}: sending its blocks"))


def blocks_enqueue(*, job_id: int) -> int:
    """Send a task for each block that is not done; the final step if none is left."""
    from connectome.jobs.tasks import run_block, run_blocks_finish

    job = Job.objects.get(pk=job_id)
    blocks = JobBlock.objects.filter(job_id=job_id).exclude(state=JobBlock.State.DONE)
    sent = 0
    for index, box in blocks.order_by("index").values_list("index", "box").iterator():
        run_block.apply_async(args=[job_id, index, box[:3], box[3:]],
                              queue=job.block_queue or job.queue)
        sent += 1
    if sent == 0:
        run_blocks_finish.apply_async(args=[job_id], queue=job.queue)
    return sent


# --- one block -------------------------------------------------------------------------------

@dataclass(frozen=True)
class BlockOutcome:
    """``status``: done, skipped, retry (after ``countdown`` s) or failed."""

    status: str
    countdown: float = 0.0
    error: str = ""


def _claim_block(job_id: int, index: int) -> tuple[Job, JobBlock] | None:
    with transaction.atomic():
        block = (JobBlock.objects.select_for_update(of=("self",)).select_related("job")
                 .filter(job_id=job_id, index=index).first())
        if block is None:
            logger.info("job %s has no block %s; skipping", job_id, index)
            return None
        job = block.job
        if job.state != Job.State.RUNNING or job.cancel_requested:
            logger.info("job %s is %s; not running block %s", job_id, job.state, index)
            return None
        if block.state == JobBlock.State.DONE:
            logger.info("block %s of job %s is done already", index, job_id)
            return None
        block.state = JobBlock.State.RUNNING
        block.attempts += 1
        block.worker = worker_name()
        block.started_at = block.heartbeat_at = timezone.now()
        block.save(update_fields=["state", "attempts", "worker", "started_at", "heartbeat_at"])
        return job, block


def _block_beat(block_pk: int) -> bool:
    JobBlock.objects.filter(pk=block_pk, state=JobBlock.State.RUNNING).update(
        heartbeat_at=timezone.now())
    return True


def block_execute(*, job_id: int, index: int, box=None, task_retries: int = 0) -> BlockOutcome:
    """Run one block of a job here: claim it, compute it, mark it done (or retry / fail).

    A lost database connection is tried again on a fresh one; when the database stays away
    the outcome is ``retry`` (after ``task_retries`` earlier tries of the task) before the
    block was claimed, and the error is raised after it (the sweep sends the block again).
    """
    try:
        claimed = db_retry(lambda: _claim_block(job_id, index),
                           f"job {job_id} block {index}: taking it up")
    except DB_ERRORS as exc:
        return BlockOutcome("retry", countdown=task_backoff_s(task_retries + 1),
                            error=db_error_text(exc))
    if claimed is None:
        return BlockOutcome("skipped")
    job, block = claimed
    spec = get_job_spec(job.kind)
    started = time.perf_counter()
    try:
        if box is not None and [int(v) for v in box] != list(block.box):
            raise InputError(f"the task's box {list(box)} is not the recorded {block.box}")
        with Heartbeat(lambda: _block_beat(block.pk), f"block {index} of job {job_id}"):
            summary = spec.block(job, _box_slices(block.box), dict(job.parameters))
    except Exception as exc:  # noqa: BLE001 - every error is recorded on the block
        error, trace = exc, traceback_module.format_exc()
        if isinstance(exc, DB_ERRORS):
            drop_connection()
        return db_retry(lambda: _block_failed(job, block, error, trace),
                        f"job {job_id} block {index}: recording its error")
    compute_s = time.perf_counter() - started
    db_retry(lambda: _block_done(job_id, index, summary or {}, compute_s),
             f"job {job_id} block {index}: marking it done")
    try:
        blocks_recover_stale(job_id=job_id)
    except DB_ERRORS:  # the sweep looks again soon
        drop_connection()
    return BlockOutcome("done")


def stale_blocks(*, job_id: int | None = None):
    """Running blocks of running jobs whose worker gave no sign of life for ``JOB_STALE_S``."""
    cutoff = stale_cutoff()
    stale = JobBlock.objects.filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff),
        state=JobBlock.State.RUNNING, job__state=Job.State.RUNNING, job__cancel_requested=False,
    )
    return stale if job_id is None else stale.filter(job_id=job_id)


def blocks_recover_stale(*, job_id: int | None = None) -> dict[int, list[int]]:
    """Send again the running blocks whose worker stopped beating; ``{job id: [indexes]}``.

    Only blocks of running jobs count. A block wrongly thought lost (a worker stalled, not
    dead) is merely computed twice: block outputs are idempotent and it is marked done once.
    A block lost as many times as its job allows attempts (``max_attempts``) fails the job.
    Safe to run in many workers at once: each job is handled under its row lock (the job's
    row, then its blocks', the order every writer takes them in).
    """
    jobs = sorted(set(stale_blocks(job_id=job_id).values_list("job_id", flat=True)))
    recovered: dict[int, list[int]] = {}
    for stale_job in jobs:
        indexes = _recover_stale_blocks_of(stale_job)
        if indexes:
            recovered[stale_job] = indexes
    return recovered


def _recover_stale_blocks_of(job_id: int) -> list[int]:
    from connectome.jobs.tasks import run_block

    with transaction.atomic():
        job = (Job.objects.select_for_update(skip_locked=True)
               .filter(pk=job_id, state=Job.State.RUNNING, cancel_requested=False).first())
        if job is None:
            return []   # ended, or another sweep holds it
        rows = list(stale_blocks(job_id=job_id).select_for_update(of=("self",))
                    .order_by("index"))
        limit = int(job.parameters.get("_max_attempts", 3))
        for block in rows:
            since = (block.heartbeat_at or block.started_at).isoformat()
            block.error = f"worker {block.worker} lost: no sign of life since {since}"
            if block.attempts >= limit:
                block.state = JobBlock.State.FAILED
                block.finished_at = timezone.now()
                block.save(update_fields=["state", "error", "finished_at"])
                _finish(job, Job.State.FAILED, error=(
                    f"{block.describe()} failed: its worker was lost in each of its "
                    f"{block.attempts} attempts (last: {block.error})"))
                logger.error("job %s %s: %s; no attempt left, the job failed", job_id,
                             block.describe(), block.error)
                return []
        for block in rows:
            block.state = JobBlock.State.PENDING
            block.save(update_fields=["state", "error"])
            logger.warning("job %s %s: %s; sending it again", job_id, block.describe(),
                           block.error)
        queue = job.block_queue or job.queue

        def send():
            for block in rows:
                run_block.apply_async(args=[job_id, block.index, block.box[:3], block.box[3:]],
                                      queue=queue)

        if rows:
            transaction.on_commit(send)
    return [block.index for block in rows]


def _block_done(job_id: int, index: int, summary: dict, compute_s: float) -> None:
    from connectome.jobs.tasks import run_blocks_finish

    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        now = timezone.now()
        marked = JobBlock.objects.filter(job_id=job_id, index=index).exclude(
            state=JobBlock.State.DONE).update(state=JobBlock.State.DONE, result=summary, error="",
                                              finished_at=now, compute_s=compute_s)
        if not marked:
            return  # a duplicate run finished first; its output is the same
        done = job.progress_done + 1
        fields = {"progress_done": done}
        if job.state == Job.State.RUNNING:
            since = job.result.get("since")
            since = datetime.fromisoformat(since) if since else job.started_at or now
            rate = _rate_fields(done, job.progress_total, since,
                                job.result.get("done_at_since", 0), now)
            fields["result"] = rate
            fields["message"] = _rate_message(rate)
        last = job.state == Job.State.RUNNING and done >= job.progress_total
        if last:
            # The final step is sent now: it must show a sign of life within JOB_STALE_S.
            fields.update(step=Job.Step.FINISH, worker="", heartbeat_at=now)
        Job.objects.filter(pk=job_id).update(**fields)
        if last:
            queue = job.queue
            transaction.on_commit(lambda: run_blocks_finish.apply_async(args=[job_id],
                                                                        queue=queue))


def _block_failed(job: Job, block: JobBlock, exc: BaseException, trace: str) -> BlockOutcome:
    error = _error_text(exc)
    max_attempts = int(job.parameters.get("_max_attempts", 3))
    transient = isinstance(exc, TRANSIENT_ERRORS)
    retry = transient and block.attempts < max_attempts
    logger.warning("job %s %s, attempt %d: %s%s", job.pk, block.describe(), block.attempts,
                   error, " (will retry)" if retry else "")
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        row = JobBlock.objects.select_for_update().get(pk=block.pk)
        if row.state == JobBlock.State.DONE:
            return BlockOutcome("skipped")
        row.error = error
        row.state = JobBlock.State.PENDING if retry else JobBlock.State.FAILED
        row.finished_at = timezone.now()
        row.save(update_fields=["error", "state", "finished_at"])
        if retry:
            return BlockOutcome("retry", countdown=task_backoff_s(block.attempts), error=error)
        if locked.state == Job.State.RUNNING:
            tries = f"after {block.attempts} attempts" if transient else "not retried"
            _finish(locked, Job.State.FAILED,
                    error=f"{block.describe()} failed ({tries}): {error}", traceback=trace)
    return BlockOutcome("failed", error=error)


# --- progress --------------------------------------------------------------------------------

def _rate_fields(done: int, total: int, since, done_at_since: int, now) -> dict:
    elapsed = max((now - since).total_seconds(), 1e-6)
    rate = (done - done_at_since) / elapsed
    left = total - done
    return {
        "blocks_done": done, "blocks_total": total,
        "blocks_per_s": round(rate, 4),
        "eta_s": round(left / rate, 1) if rate > 0 and left else (0.0 if not left else None),
        "since": since.isoformat(), "done_at_since": done_at_since,
    }


def _rate_message(rate: dict) -> str:
    text = f"{rate['blocks_done']} / {rate['blocks_total']} blocks"
    if rate["blocks_per_s"]:
        text += f", {rate['blocks_per_s']:.3g} blocks/s"
    if rate["eta_s"]:
        text += f", about {timedelta(seconds=round(rate['eta_s']))} left"
    return text


# --- the final step --------------------------------------------------------------------------

def _say(job_id: int, attempt: int, text: str) -> None:
    """The final step's progress message; a lost database connection costs the message only."""
    try:
        Job.objects.filter(pk=job_id, attempts=attempt).update(message=text[:500])
    except DB_ERRORS as exc:
        logger.warning("job %s: message not recorded, database connection lost (%s)", job_id,
                       db_error_text(exc))
        drop_connection()


def _claim_finish(job_id: int) -> Job | None:
    """Take up the final step of a running job whose blocks are all done; None if it is not
    there to run (ended, blocks left, or another worker runs it and is alive)."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.state != Job.State.RUNNING or job.cancel_requested:
            return None
        if job.blocks.exclude(state=JobBlock.State.DONE).exists():
            logger.info("job %s: blocks left, not finishing yet", job_id)
            return None
        if job.step == Job.Step.FINISH and job.worker and not job_worker_lost(job):
            logger.info("job %s: its final step runs on %s already", job_id, job.worker)
            return None
        job.step, job.worker, job.heartbeat_at = Job.Step.FINISH, worker_name(), timezone.now()
        job.attempts += 1
        job.save(update_fields=["step", "worker", "heartbeat_at", "attempts"])
        return job


def _store(job_id: int, attempt: int, outcome: Finish) -> tuple[bool, int | None]:
    """Store the final step's rows and mark the job done, if it is still this attempt's;
    (stored, follow-up job id). Safe to try again: a try whose commit went through but whose
    answer was lost finds the job done by this attempt."""
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job_id)
        if locked.state == Job.State.DONE and locked.attempts == attempt:
            return True, locked.result.get("then_job")
        if (locked.state != Job.State.RUNNING or locked.cancel_requested
                or locked.attempts != attempt):
            logger.info("job %s is %s (attempt %s); final step attempt %s stores nothing",
                        job_id, locked.state, locked.attempts, attempt)
            return False, None
        result = {**_block_statistics(locked), **outcome.result}
        if outcome.store is not None:
            result.update(outcome.store() or {})
        _finish(locked, Job.State.DONE, result=result, message="done",
                progress_done=locked.progress_total)
        return True, result.get("then_job")


def blocks_finish(*, job_id: int, inline: bool = False) -> Job:
    """Stitch the blocks of a job whose blocks are all done and mark it done, once.

    One worker at a time runs the final step, marking the job alive while it does; a final
    step that is no longer the job's (its worker was thought lost and the step sent again,
    or the job was cancelled) stores nothing and removes its files. A lost database
    connection is tried again on a fresh one; if the database stays away the error is
    raised (the task retries; the sweep sends the step again once it is silent).
    """
    job = db_retry(lambda: _claim_finish(job_id), f"job {job_id}: taking up its final step")
    if job is None:
        return Job.objects.get(pk=job_id)
    attempt = job.attempts
    spec = get_job_spec(job.kind)
    then, outcome, stored = None, None, False

    def discard():
        if outcome is not None and outcome.discard is not None and not stored:
            outcome.discard()

    with Heartbeat(lambda: _job_beat(job_id, attempt), f"final step of job {job_id}"):
        try:
            outcome = db_retry(
                lambda: spec.finish(job, dict(job.parameters),
                                    lambda text: _say(job_id, attempt, text)),
                f"job {job_id}: final step")
            stored, then = db_retry(lambda: _store(job_id, attempt, outcome),
                                    f"job {job_id}: storing the final step")
            discard()
        except JobSuperseded as exc:
            logger.warning("job %s: %s; this final step stores nothing", job_id, exc)
            discard()
        except DB_ERRORS:
            logger.exception("job %s: final step lost the database", job_id)
            discard()
            raise
        except Exception as exc:  # noqa: BLE001 - a failed final step fails the job
            logger.exception("job %s: final step failed", job_id)
            discard()
            error, trace = f"final step: {_error_text(exc)}", traceback_module.format_exc()
            db_retry(lambda: _finish(job, Job.State.FAILED, attempt=attempt, error=error,
                                     traceback=trace),
                     f"job {job_id}: recording the final step's error")
    if then is not None:
        from connectome.jobs.services import job_execute

        if inline:
            job_execute(job_id=then, inline_blocks=True)
        else:
            # Lost if this fails: the sweep sends a queued job that was never sent.
            job_enqueue(job_id=then)
    return Job.objects.get(pk=job_id)


def _block_statistics(job: Job) -> dict:
    rows = list(job.blocks.values_list("compute_s", "attempts", "started_at", "finished_at"))
    compute = [c for c, *_ in rows if c is not None]
    starts = [s for _, _, s, _ in rows if s is not None]
    ends = [f for *_, f in rows if f is not None]
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    return {
        "blocks": len(rows),
        "block_attempts": sum(a for _, a, *_ in rows),
        "block_compute_s": round(sum(compute), 3),
        "blocks_wall_s": None if span is None else round(span, 3),
        "blocks_per_s": round(len(rows) / span, 4) if span else None,
    }


# --- inline, resume --------------------------------------------------------------------------

def blocks_run_inline(*, job_id: int, echo=None) -> Job:
    """Run every block and the final step in this process (management commands, tests)."""
    indices = list(JobBlock.objects.filter(job_id=job_id).exclude(state=JobBlock.State.DONE)
                   .order_by("index").values_list("index", flat=True))
    for index in indices:
        outcome = block_execute(job_id=job_id, index=index)
        while outcome.status == "retry":
            time.sleep(outcome.countdown)
            outcome = block_execute(job_id=job_id, index=index)
        if echo is not None:
            job = Job.objects.get(pk=job_id)
            echo(job.progress_done, job.progress_total, None)
        if outcome.status == "failed":
            return Job.objects.get(pk=job_id)
    return blocks_finish(job_id=job_id, inline=True)


def job_resume(*, job: Job, enqueue: bool = True) -> int:
    """Run a job again from where it stopped (a person asks); returns the blocks sent again.

    A block-wise job: done blocks stay done; running (e.g. on a worker that died), pending
    and failed ones are sent again, or the final step when all are done. A job that is not
    block-wise, or a block-wise one stopped before its blocks were recorded, runs again from
    the start (its handler's work is all or nothing; what a lost run staged is removed). A
    failed or cancelled job becomes running again (its layer locks permitting); a queued one
    is sent again (its task may have been lost with the broker). Refused while a live worker
    runs its handler or its final step, and for a done job.
    """
    from connectome.datasets.services import staging_remove

    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if job.state == Job.State.DONE:
            raise InputError(f"job {job.pk} is done; there is nothing to resume")
        if (job.state == Job.State.RUNNING and job.worker and not job_worker_lost(job)
                and job.step in (Job.Step.HANDLER, Job.Step.STORED, Job.Step.FINISH)):
            seen = round((timezone.now() - job.heartbeat_at).total_seconds())
            what = "final step" if job.step == Job.Step.FINISH else "handler"
            raise InputError(f"job {job.pk} is running: worker {job.worker} runs its {what} "
                             f"(last sign of life {seen} s ago); cancel it or let it end")
        spec = get_job_spec(job.kind)
        if job.state in (Job.State.FAILED, Job.State.CANCELLED):
            if spec.writes is not None and job.dataset is not None:
                # Raises JobConflict when another job took the layers meanwhile.
                job_locks_acquire(job=job, resources=spec.writes(job.dataset, job.parameters))
        fresh = {"finished_at": None, "error": "", "traceback": "", "cancel_requested": False,
                 "retries": 0, "worker": ""}
        if job.state == Job.State.RUNNING and job.step == Job.Step.STORED:
            raise InputError(f"job {job.pk} stored its output already; its end is recorded "
                             "soon (the sweep does it if its worker was lost)")
        if spec.block is None or not job.blocks.exists():
            Job.objects.filter(pk=job.pk).update(
                state=Job.State.QUEUED, step=Job.Step.NONE, heartbeat_at=timezone.now(),
                task_id="", message="resumed: " + (
                    "planning again" if spec.block else "running again from the start"),
                **fresh)
            job_id = job.pk
            if enqueue:
                transaction.on_commit(lambda: (staging_remove(job_id=job_id),
                                               job_enqueue(job_id=job_id)))
            logger.info("job %s resumed: running again from the start", job_id)
            return 0
        JobBlock.objects.filter(job=job, state=JobBlock.State.FAILED).update(
            state=JobBlock.State.PENDING, attempts=0)
        left = job.blocks.exclude(state=JobBlock.State.DONE).count()
        now = timezone.now()
        done = job.progress_total - left
        rate = _rate_fields(done, job.progress_total, now, done, now)
        Job.objects.filter(pk=job.pk).update(
            state=Job.State.RUNNING, progress_done=done, result=rate,
            step=Job.Step.BLOCKS if left else Job.Step.FINISH,
            heartbeat_at=None if left else now,
            message=f"resumed: {left} of {job.progress_total} blocks to run",
            started_at=F("started_at") if job.started_at else now, **fresh,
        )
        if enqueue:
            transaction.on_commit(lambda: blocks_enqueue(job_id=job.pk))
    logger.info("job %s resumed: %d blocks to run", job.pk, left)
    return left
