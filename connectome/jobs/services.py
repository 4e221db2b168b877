"""The job lifecycle every kind of work goes through.

create (validated, ``queued``) -> sent to a worker when the creating transaction commits ->
``running`` with progress -> ``done`` with a result, ``failed`` with the error, or
``cancelled``. A job can also be executed in the calling process (management commands do,
so that a long import on a workstation needs no worker).
"""

import logging
import traceback as traceback_module

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from connectome.jobs.liveness import (
    DB_ERRORS,
    Heartbeat,
    db_error_text,
    db_retry,
    max_retries,
    stale_cutoff,
    task_backoff_s,
    worker_name,
)
from connectome.jobs.models import Job, JobLock
from connectome.jobs.progress import JobCancelled, JobSuperseded, Progress
from connectome.jobs.registry import get_job_spec
from detection.errors import InputError

logger = logging.getLogger(__name__)


class JobParameterError(InputError):
    """Parameters that the job kind's validator refused; ``errors`` maps field -> messages."""

    def __init__(self, kind: str, errors):
        from connectome.common.validators import error_text

        self.errors = errors
        # Plain sentences, nested fields as ``voxel_size[0]``: never ErrorDetail(...) reprs.
        super().__init__(f"invalid parameters for {kind} job: {error_text(errors)}")


class JobConflict(JobParameterError):
    """The job would write a layer or run that another unfinished job writes, or that exists."""

    def __init__(self, kind: str, message: str):
        super().__init__(kind, {"dataset": [message]})
        self.args = (message,)


def may_read_any_path(user) -> bool:
    """Superusers and the shell (no user) may name any server path; others only paths under
    ``IMPORT_ROOTS`` (``connectome/imports/paths.py``)."""
    return user is None or bool(getattr(user, "is_superuser", False))


def job_validate_parameters(*, kind: str, parameters: dict, user=None) -> dict:
    """The validated parameters of a ``kind`` job that ``user`` (None: the shell) asks for."""
    spec = get_job_spec(kind)
    if not isinstance(parameters, dict):
        raise JobParameterError(kind, {"parameters": ["expected an object of named values"]})
    serializer = spec.parameters(data=parameters,
                                 context={"any_path": may_read_any_path(user), "user": user})
    if not serializer.is_valid():
        raise JobParameterError(kind, serializer.errors)
    unknown = sorted(set(parameters) - set(serializer.fields))
    if unknown:
        raise JobParameterError(kind, {name: [
            f"not a parameter of {kind} jobs; they take {', '.join(serializer.fields)}"]
            for name in unknown})
    # Stored as JSON: keep the validated values in their JSON form.
    return {key: _jsonable(value) for key, value in serializer.validated_data.items()}


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if hasattr(value, "pk"):
        return value.pk
    return value


@transaction.atomic
def job_create(*, kind: str, parameters: dict, dataset=None, user=None, enqueue: bool = True,
               parent: Job | None = None) -> Job:
    """Validate and record a job; it is sent to a worker once the transaction commits.

    ``parent``: a job that holds locks on what this one writes and hands them over (a job
    whose final step creates the job that continues its work).
    """
    spec = get_job_spec(kind)
    validated = job_validate_parameters(kind=kind, parameters=parameters, user=user)
    job = Job.objects.create(
        kind=kind, dataset=dataset, parameters=validated, created_by=user, queue=spec.queue,
        reads_any_path=may_read_any_path(user),
    )
    if spec.writes is not None:
        if dataset is None:
            raise JobParameterError(kind, {"dataset": ["this job kind needs a dataset"]})
        job_locks_acquire(job=job, resources=spec.writes(dataset, validated), parent=parent)
    if enqueue:
        transaction.on_commit(lambda: job_enqueue(job_id=job.pk))
    return job


def job_check_conflicts(*, kind: str, parameters: dict, dataset) -> None:
    """Raise JobConflict if a job of ``kind`` could not start now (forms call this)."""
    spec = get_job_spec(kind)
    if spec.writes is None or dataset is None:
        return
    for resource in spec.writes(dataset, parameters):
        holder = JobLock.objects.filter(dataset=dataset, resource=resource).first()
        if holder is not None:
            raise JobConflict(kind, _held_message(dataset, resource, holder.job))


def _held_message(dataset, resource: str, job: Job) -> str:
    return (f"{resource} of dataset '{dataset.name}' is being written by {job.kind} job "
            f"{job.pk} ({job.state}); wait for it to end or cancel it")


def job_locks_acquire(*, job: Job, resources, parent: Job | None = None) -> None:
    """Take the dataset resources ``job`` writes, or raise JobConflict naming the holder.

    A lock held by ``parent`` passes to ``job``. ``writes`` callables may raise JobConflict
    themselves (e.g. the layer exists already).
    """
    for resource in resources:
        try:
            with transaction.atomic():
                JobLock.objects.create(dataset=job.dataset, resource=resource, job=job)
        except IntegrityError:
            holder = JobLock.objects.filter(dataset=job.dataset, resource=resource).first()
            if holder is None or holder.job_id == job.pk:
                continue
            if parent is not None and holder.job_id == parent.pk:
                JobLock.objects.filter(pk=holder.pk).update(job=job)
                continue
            raise JobConflict(job.kind, _held_message(job.dataset, resource, holder.job)) from None


def job_locks_release(*, job_id: int) -> None:
    JobLock.objects.filter(job_id=job_id).delete()


def job_enqueue(*, job_id: int, countdown: float | None = None) -> None:
    from connectome.jobs.tasks import run_job

    job = Job.objects.get(pk=job_id)
    result = run_job.apply_async(args=[job.pk], queue=job.queue, countdown=countdown)
    Job.objects.filter(pk=job.pk).update(task_id=result.id or "")


def _claim(job_id: int, task_id: str = "") -> Job | None:
    """Move a queued job to running here; None if it is not there to run (cancelled, already run).

    ``task_id``: the worker task taking it up; blank when the job runs in this process.
    """
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.state != Job.State.QUEUED:
            logger.info("job %s is %s, not running it", job_id, job.state)
            return None
        if job.cancel_requested:
            _finish(job, Job.State.CANCELLED, message="cancelled")
            return None
        now = timezone.now()
        job.state = Job.State.RUNNING
        job.started_at = job.started_at or now
        job.step, job.worker, job.heartbeat_at = Job.Step.HANDLER, worker_name(), now
        job.attempts += 1
        job.task_id = task_id
        job.save(update_fields=["state", "started_at", "step", "worker", "heartbeat_at",
                                "attempts", "task_id"])
        return job


def _job_beat(job_id: int, attempt: int) -> bool:
    """Mark a job's handler or final step alive; False once it is not this attempt's."""
    return bool(Job.objects.filter(pk=job_id, state=Job.State.RUNNING, attempts=attempt)
                .update(heartbeat_at=timezone.now()))


def job_execute(*, job_id: int, echo=None, inline_blocks: bool = False,
                task_id: str = "") -> Job:
    """Run a queued job to its end in this process; the worker task and commands call this.

    A block-wise job's handler returns a plan: its blocks are sent to the workers (the job
    stays running until the last one is stitched), or with ``inline_blocks`` run here.
    While the handler runs, a thread marks the job alive (``heartbeat_at``).

    On a worker (``task_id`` given) a lost database connection sends the job again after a
    pause (``retries``, at most ``JOB_MAX_RETRIES``); the handler's work is all or nothing.
    """
    from connectome.jobs.blocks import BlockPlan, blocks_run_inline, blocks_start

    job = db_retry(lambda: _claim(job_id, task_id), f"job {job_id}: taking it up")
    if job is None:
        return Job.objects.get(pk=job_id)
    attempt = job.attempts
    spec = get_job_spec(job.kind)
    progress = Progress(job.pk, echo=echo, attempt=attempt)
    planned = False
    with Heartbeat(lambda: _job_beat(job.pk, attempt), f"job {job.pk}"):
        try:
            _check_sources(job, spec)
            result = spec.handler(job, dict(job.parameters), progress)
            if isinstance(result, BlockPlan):
                # Sends the block tasks when it commits, still marked alive: a worker lost
                # while sending leaves the job to the sweep, which sends them again.
                blocks_start(job=job, plan=result, inline=inline_blocks)
                db_retry(lambda: Job.objects.filter(
                    pk=job.pk, attempts=attempt, step=Job.Step.BLOCKS).update(
                        worker="", heartbeat_at=None), f"job {job.pk}: blocks sent")
                planned = True
        except JobSuperseded as exc:
            logger.warning("job %s: %s; this attempt stores nothing", job.pk, exc)
        except JobCancelled:
            _end(job, attempt, Job.State.CANCELLED, progress_done=progress.done,
                 message="cancelled")
        except DB_ERRORS as exc:
            if task_id:
                _lost_database(job, attempt, exc)
            else:
                _end(job, attempt, Job.State.FAILED, progress_done=progress.done,
                     error=f"lost the database connection: {db_error_text(exc)}",
                     traceback=traceback_module.format_exc())
        except Exception as exc:  # noqa: BLE001 - a failed job records any error
            logger.exception("job %s (%s) failed", job.pk, job.kind)
            _end(job, attempt, Job.State.FAILED, progress_done=progress.done,
                 error=_error_text(exc), traceback=traceback_module.format_exc())
        else:
            if not planned:
                _end(job, attempt, Job.State.DONE, progress_done=progress.total,
                     progress_total=progress.total, result=result or {}, message="done")
    if planned and inline_blocks:
        return blocks_run_inline(job_id=job.pk, echo=echo)
    return Job.objects.get(pk=job.pk)


def _check_sources(job: Job, spec) -> None:
    """Check again, in the worker, the server paths the job reads (a link may have been put in
    place of a file since the job was submitted, or inside a folder it reads)."""
    for name, field in spec.parameters().fields.items():
        value = job.parameters.get(name)
        if value is not None and hasattr(field, "check_before_reading"):
            field.check_before_reading(value, any_path=job.reads_any_path)


def _error_text(exc: BaseException) -> str:
    """The error as the job's users see it: our own messages about bad input as they are, an
    operating-system error by its description and file, anything else by its type only (its
    text, which may quote data or internals, is in the traceback that dataset admins see)."""
    if isinstance(exc, InputError) and str(exc):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    if isinstance(exc, MemoryError):
        return "out of memory"
    return (f"internal error ({type(exc).__name__}); dataset admins find the details in the "
            "job's traceback")


def _finish(job: Job, state: str, *, attempt: int | None = None, **fields) -> bool:
    """End a job and release its locks; with ``attempt``, only if that run still holds it.

    Returns whether the job was ended here. Progress writes are throttled; the final counts
    are written here.
    """
    with transaction.atomic():
        rows = Job.objects.filter(pk=job.pk)
        if attempt is not None:
            rows = rows.filter(state=Job.State.RUNNING, attempts=attempt)
        if not rows.update(state=state, finished_at=timezone.now(), step=Job.Step.NONE,
                           **fields):
            logger.warning("job %s is no longer run by attempt %s; not marking it %s",
                           job.pk, attempt, state)
            return False
        job_locks_release(job_id=job.pk)
    return True


def _end(job: Job, attempt: int, state: str, **fields) -> bool:
    """:func:`_finish` for this attempt, tried again while the database connection is lost."""
    return db_retry(lambda: _finish(job, state, attempt=attempt, **fields),
                    f"job {job.pk}: marking it {state}")


def _lost_database(job: Job, attempt: int, exc: BaseException) -> None:
    """The handler lost its database connection: send the job again after a pause, or fail it
    once it has been sent again ``JOB_MAX_RETRIES`` times. Its work was all or nothing."""
    text, trace = db_error_text(exc), traceback_module.format_exc()

    def requeue():
        with transaction.atomic():
            locked = (Job.objects.select_for_update()
                      .filter(pk=job.pk, state=Job.State.RUNNING, attempts=attempt).first())
            if locked is None:
                return
            if locked.step == Job.Step.STORED:
                _finish(locked, Job.State.DONE, message=STORED_NOTE[:500])
                return
            if locked.step == Job.Step.BLOCKS:
                # The plan is recorded and some block tasks may be out: never plan again
                # (that would replace what they write); send the blocks that are not done.
                from connectome.jobs.blocks import blocks_enqueue

                Job.objects.filter(pk=job.pk).update(worker="", heartbeat_at=None)
                transaction.on_commit(lambda: db_retry(lambda: blocks_enqueue(job_id=job.pk),
                                                       f"job {job.pk}: sending its blocks"))
                return
            if locked.retries >= max_retries():
                _finish(locked, Job.State.FAILED,
                        error=f"lost the database connection, {locked.retries + 1} times: "
                              f"{text}", traceback=trace)
                return
            countdown = task_backoff_s(locked.retries + 1)
            job_requeue(job=locked, message=(
                f"database connection lost ({text}); running again in {countdown:g} s "
                f"(retry {locked.retries + 1} of {max_retries()})"), countdown=countdown)

    logger.warning("job %s: database connection lost in its handler: %s", job.pk, text,
                   exc_info=exc)
    db_retry(requeue, f"job {job.pk}: sending it again")


def job_requeue(*, job: Job, message: str, countdown: float | None = None) -> None:
    """Put a running job whose run was lost back in the queue; in the caller's transaction,
    which holds its row. The lost run's staging is removed before the job is sent again."""
    from connectome.datasets.services import staging_remove

    Job.objects.filter(pk=job.pk).update(
        state=Job.State.QUEUED, step=Job.Step.NONE, worker="", heartbeat_at=timezone.now(),
        task_id="", retries=F("retries") + 1, message=message[:500])

    def send():
        staging_remove(job_id=job.pk)
        db_retry(lambda: job_enqueue(job_id=job.pk, countdown=countdown),
                 f"job {job.pk}: sending it again")

    transaction.on_commit(send)


def job_hold(job: Job, *, stores: bool = False) -> None:
    """In a transaction that stores a job's output, or replaces files the job's blocks write:
    go on only if this run still holds the job.

    ``job`` is the row as its run took it up. Marks the job alive and holds its row until the
    commit, so a sweep cannot send it again in between; raises :class:`JobSuperseded` when
    the job was sent again, cancelled or failed meanwhile (the caller's transaction then
    stores nothing). ``stores``: the transaction stores the handler's output; once it commits
    the job is ``stored`` and is never run again (a lost connection or worker after that
    ends it done).
    """
    if job is None or job.pk is None:
        return
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("job_hold belongs inside a transaction")
    if not _job_beat(job.pk, job.attempts):
        raise JobSuperseded(f"job {job.pk} is no longer run by attempt {job.attempts}")
    if stores:
        Job.objects.filter(pk=job.pk, step=Job.Step.HANDLER).update(step=Job.Step.STORED)


#: What a job whose output was stored, but whose end was not recorded, says.
STORED_NOTE = ("done: its output was stored, then its worker or database connection was lost "
               "before the result was recorded (the layer or run it made names this job)")


def job_worker_lost(job: Job) -> bool:
    """Whether a running job's handler or final step has a worker that stopped beating."""
    return (job.state == Job.State.RUNNING and bool(job.worker)
            and job.step in (Job.Step.HANDLER, Job.Step.STORED, Job.Step.FINISH)
            and (job.heartbeat_at is None or job.heartbeat_at < stale_cutoff()))


def job_cancel(*, job: Job) -> Job:
    """Stop a job: a queued one is cancelled at once, a running one at its next progress report.

    A block-wise job whose blocks are out is cancelled at once: no block starts after that
    (their tasks find the job cancelled and skip) and the final step stores nothing. So is a
    job whose worker was lost (silent for ``JOB_STALE_S``); its staging is removed.
    """
    from connectome.datasets.services import staging_remove

    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if job.is_finished:
            return job
        lost = job_worker_lost(job)
        job.cancel_requested = True
        fields = ["cancel_requested"]
        if job.state == Job.State.QUEUED or job.blocks.exists() or lost:
            job.state = Job.State.CANCELLED
            job.finished_at = timezone.now()
            job.step = Job.Step.NONE
            job.message = f"cancelled (worker {job.worker} was lost)" if lost else "cancelled"
            fields += ["state", "finished_at", "step", "message"]
        job.save(update_fields=fields)
        if job.state == Job.State.CANCELLED:
            job_locks_release(job_id=job.pk)
            if lost:
                job_id = job.pk
                transaction.on_commit(lambda: staging_remove(job_id=job_id))
    return job


def job_run_inline(*, kind: str, parameters: dict, dataset=None, user=None, echo=None) -> Job:
    """Create a job and execute it here and now (management commands, tests)."""
    job = job_create(kind=kind, parameters=parameters, dataset=dataset, user=user, enqueue=False)
    return job_execute(job_id=job.pk, echo=echo, inline_blocks=True)
