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

After a crash (a worker killed mid-block), :func:`job_resume` re-sends the blocks that are not
done (and the final step when all are); done blocks are never run again.

A worker computing a block marks it alive every ``JOB_BLOCK_HEARTBEAT_S`` seconds. A running
block without a sign of life for ``JOB_BLOCK_STALE_S`` seconds was lost with its worker:
:func:`blocks_recover_stale` sends it again. Workers call it when they start and after each
block they finish, so a job whose worker died goes on as soon as any worker is there.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback as traceback_module
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from connectome.jobs.models import Job, JobBlock
from connectome.jobs.registry import get_job_spec
from connectome.jobs.services import _error_text, _finish, job_enqueue, job_locks_acquire
from detection.errors import InputError

logger = logging.getLogger(__name__)

Box = tuple[tuple[int, int, int], tuple[int, int, int]]

#: Errors worth another attempt: the same block may well succeed on the next try.
TRANSIENT_ERRORS = (OSError, TimeoutError, ConnectionError, OperationalError, InterfaceError,
                    MemoryError)
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


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _backoff_s(attempts: int) -> float:
    base = float(getattr(settings, "JOB_BLOCK_RETRY_BACKOFF_S", 2.0))
    return min(300.0, base * 2 ** max(0, attempts - 1))


def _heartbeat_s() -> float:
    return float(getattr(settings, "JOB_BLOCK_HEARTBEAT_S", 15.0))


def _stale_s() -> float:
    return float(getattr(settings, "JOB_BLOCK_STALE_S", 4 * _heartbeat_s()))


def _box_slices(box) -> tuple[slice, slice, slice]:
    return tuple(slice(int(a), int(b)) for a, b in zip(box[:3], box[3:]))


# --- planning --------------------------------------------------------------------------------

def blocks_start(*, job: Job, plan: BlockPlan, inline: bool = False) -> None:
    """Record the plan's blocks and send their tasks when this transaction commits."""
    if not plan.boxes:
        raise InputError(f"job {job.pk}: the plan has no blocks (empty region?)")
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if locked.cancel_requested or locked.state != Job.State.RUNNING:
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
            result=_rate_fields(0, len(rows), now, 0, now),
            parameters={**locked.parameters, "_max_attempts": int(plan.max_attempts)},
        )
        if not inline:
            transaction.on_commit(lambda: blocks_enqueue(job_id=job.pk))


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
        block.worker = _worker_name()
        block.started_at = block.heartbeat_at = timezone.now()
        block.save(update_fields=["state", "attempts", "worker", "started_at", "heartbeat_at"])
        return job, block


class _Heartbeat:
    """While its ``with`` body runs, a thread marks the block alive every ``interval`` s."""

    def __init__(self, block_pk: int, interval: float):
        self.block_pk, self.interval = block_pk, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{block_pk}",
                                        daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _beat(self):
        try:
            while not self._stop.wait(self.interval):
                JobBlock.objects.filter(pk=self.block_pk, state=JobBlock.State.RUNNING).update(
                    heartbeat_at=timezone.now())
        except Exception:  # noqa: BLE001 - a missed beat must never break the block itself
            logger.warning("block %s: heartbeat failed", self.block_pk, exc_info=True)
        finally:
            connection.close()  # this thread's own connection


def block_execute(*, job_id: int, index: int, box=None) -> BlockOutcome:
    """Run one block of a job here: claim it, compute it, mark it done (or retry / fail)."""
    claimed = _claim_block(job_id, index)
    if claimed is None:
        return BlockOutcome("skipped")
    job, block = claimed
    spec = get_job_spec(job.kind)
    started = time.perf_counter()
    try:
        if box is not None and [int(v) for v in box] != list(block.box):
            raise InputError(f"the task's box {list(box)} is not the recorded {block.box}")
        with _Heartbeat(block.pk, _heartbeat_s()):
            summary = spec.block(job, _box_slices(block.box), dict(job.parameters))
    except Exception as exc:  # noqa: BLE001 - every error is recorded on the block
        return _block_failed(job, block, exc, traceback_module.format_exc())
    _block_done(job_id, index, summary or {}, time.perf_counter() - started)
    blocks_recover_stale(job_id=job_id)
    return BlockOutcome("done")


def stale_blocks(*, job_id: int | None = None):
    """Running blocks of running jobs whose worker gave no sign of life for ``JOB_BLOCK_STALE_S``."""
    cutoff = timezone.now() - timedelta(seconds=_stale_s())
    stale = JobBlock.objects.filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff),
        state=JobBlock.State.RUNNING, job__state=Job.State.RUNNING, job__cancel_requested=False,
    )
    return stale if job_id is None else stale.filter(job_id=job_id)


def blocks_recover_stale(*, job_id: int | None = None) -> dict[int, list[int]]:
    """Send again the running blocks whose worker stopped beating; ``{job id: [indexes]}``.

    Only blocks of running jobs count. A block wrongly thought lost (a worker stalled, not
    dead) is merely computed twice: block outputs are idempotent and it is marked done once.
    """
    from connectome.jobs.tasks import run_block

    stale = stale_blocks(job_id=job_id)
    recovered: dict[int, list[int]] = {}
    with transaction.atomic():
        rows = list(stale.select_for_update(of=("self",)).select_related("job")
                    .order_by("job_id", "index"))
        for block in rows:
            block.state = JobBlock.State.PENDING
            block.error = (f"worker {block.worker} lost: no sign of life since "
                           f"{(block.heartbeat_at or block.started_at).isoformat()}")
            block.save(update_fields=["state", "error"])
            recovered.setdefault(block.job_id, []).append(block.index)
            logger.warning("job %s %s: %s; sending it again", block.job_id, block.describe(),
                           block.error)

        def send():
            for block in rows:
                run_block.apply_async(args=[block.job_id, block.index, block.box[:3],
                                            block.box[3:]],
                                      queue=block.job.block_queue or block.job.queue)

        if rows:
            transaction.on_commit(send)
    return recovered


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
        Job.objects.filter(pk=job_id).update(**fields)
        if job.state == Job.State.RUNNING and done >= job.progress_total:
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
            return BlockOutcome("retry", countdown=_backoff_s(block.attempts), error=error)
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

def _say(job_id: int, text: str) -> None:
    Job.objects.filter(pk=job_id).update(message=text[:500])


def blocks_finish(*, job_id: int, inline: bool = False) -> Job:
    """Stitch the blocks of a job whose blocks are all done and mark it done, once."""
    job = Job.objects.get(pk=job_id)
    if job.state != Job.State.RUNNING or job.cancel_requested:
        return job
    if job.blocks.exclude(state=JobBlock.State.DONE).exists():
        logger.info("job %s: blocks left, not finishing yet", job_id)
        return job
    spec = get_job_spec(job.kind)
    then, outcome, stored = None, None, False
    try:
        outcome = spec.finish(job, dict(job.parameters), lambda text: _say(job_id, text))
        with transaction.atomic():
            locked = Job.objects.select_for_update().get(pk=job_id)
            if locked.state != Job.State.RUNNING or locked.cancel_requested:
                logger.info("job %s is %s; its final step stores nothing", job_id, locked.state)
                if outcome.discard is not None:
                    outcome.discard()
                return locked
            result = {**_block_statistics(locked), **outcome.result}
            if outcome.store is not None:
                result.update(outcome.store() or {})
            then = result.get("then_job")
            _finish(locked, Job.State.DONE, result=result, message="done",
                    progress_done=locked.progress_total)
            stored = True
    except Exception as exc:  # noqa: BLE001 - a failed final step fails the job
        logger.exception("job %s: final step failed", job_id)
        if outcome is not None and outcome.discard is not None and not stored:
            outcome.discard()
        with transaction.atomic():
            locked = Job.objects.select_for_update().get(pk=job_id)
            if locked.state == Job.State.RUNNING:
                _finish(locked, Job.State.FAILED, error=f"final step: {_error_text(exc)}",
                        traceback=traceback_module.format_exc())
    if then is not None:
        from connectome.jobs.services import job_execute

        if inline:
            job_execute(job_id=then, inline_blocks=True)
        else:
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
    """Run a block-wise job again from where it stopped; returns the blocks re-sent.

    Done blocks stay done; running (e.g. on a worker that died), pending and failed ones are
    sent again. A failed or cancelled job becomes running again (its layer locks permitting).
    """
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if job.state == Job.State.DONE:
            raise InputError(f"job {job.pk} is done; there is nothing to resume")
        spec = get_job_spec(job.kind)
        if spec.block is None:
            raise InputError(f"job {job.pk} ({job.kind}) is not block-wise; only block-wise "
                             "jobs can resume")
        if job.state in (Job.State.FAILED, Job.State.CANCELLED):
            if spec.writes is not None and job.dataset is not None:
                # Raises JobConflict when another job took the layers meanwhile.
                job_locks_acquire(job=job, resources=spec.writes(job.dataset, job.parameters))
        if not job.blocks.exists():
            # Stopped before its blocks were recorded: plan again.
            Job.objects.filter(pk=job.pk).update(
                state=Job.State.QUEUED, finished_at=None, error="", traceback="",
                cancel_requested=False, message="resumed: planning again")
            if enqueue:
                transaction.on_commit(lambda: job_enqueue(job_id=job.pk))
            return 0
        JobBlock.objects.filter(job=job, state=JobBlock.State.FAILED).update(
            state=JobBlock.State.PENDING, attempts=0)
        left = job.blocks.exclude(state=JobBlock.State.DONE).count()
        now = timezone.now()
        done = job.progress_total - left
        rate = _rate_fields(done, job.progress_total, now, done, now)
        Job.objects.filter(pk=job.pk).update(
            state=Job.State.RUNNING, finished_at=None, error="", traceback="",
            cancel_requested=False, progress_done=done, result=rate,
            message=f"resumed: {left} of {job.progress_total} blocks to run",
            started_at=F("started_at") if job.started_at else now,
        )
        if enqueue:
            transaction.on_commit(lambda: blocks_enqueue(job_id=job.pk))
    logger.info("job %s resumed: %d blocks to run", job.pk, left)
    return left
