"""The job lifecycle every kind of work goes through.

create (validated, ``queued``) -> sent to a worker when the creating transaction commits ->
``running`` with progress -> ``done`` with a result, ``failed`` with the error, or
``cancelled``. A job can also be executed in the calling process (management commands do,
so that a long import on a workstation needs no worker).
"""

import logging
import traceback as traceback_module

from django.db import IntegrityError, transaction
from django.utils import timezone

from connectome.jobs.models import Job, JobLock
from connectome.jobs.progress import JobCancelled, Progress
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
                                 context={"any_path": may_read_any_path(user)})
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


def job_enqueue(*, job_id: int) -> None:
    from connectome.jobs.tasks import run_job

    job = Job.objects.get(pk=job_id)
    result = run_job.apply_async(args=[job.pk], queue=job.queue)
    Job.objects.filter(pk=job.pk).update(task_id=result.id or "")


def _claim(job_id: int) -> Job | None:
    """Move a queued job to running; None if it is not there to run (cancelled, already run)."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.state != Job.State.QUEUED:
            logger.info("job %s is %s, not running it", job_id, job.state)
            return None
        if job.cancel_requested:
            job.state = Job.State.CANCELLED
            job.finished_at = timezone.now()
            job.save(update_fields=["state", "finished_at"])
            return None
        job.state = Job.State.RUNNING
        job.started_at = timezone.now()
        job.save(update_fields=["state", "started_at"])
        return job


def job_execute(*, job_id: int, echo=None, inline_blocks: bool = False) -> Job:
    """Run a queued job to its end in this process; the worker task and commands call this.

    A block-wise job's handler returns a plan: its blocks are sent to the workers (the job
    stays running until the last one is stitched), or with ``inline_blocks`` run here.
    """
    from connectome.jobs.blocks import BlockPlan, blocks_run_inline, blocks_start

    job = _claim(job_id)
    if job is None:
        return Job.objects.get(pk=job_id)
    spec = get_job_spec(job.kind)
    progress = Progress(job.pk, echo=echo)
    try:
        _check_sources(job, spec)
        result = spec.handler(job, dict(job.parameters), progress)
        if isinstance(result, BlockPlan):
            blocks_start(job=job, plan=result, inline=inline_blocks)
            if inline_blocks:
                return blocks_run_inline(job_id=job.pk, echo=echo)
            return Job.objects.get(pk=job.pk)
    except JobCancelled:
        _finish(job, Job.State.CANCELLED, progress_done=progress.done, message="cancelled")
    except Exception as exc:  # noqa: BLE001 - a failed job records any error
        logger.exception("job %s (%s) failed", job.pk, job.kind)
        _finish(
            job, Job.State.FAILED, progress_done=progress.done, error=_error_text(exc),
            traceback=traceback_module.format_exc(),
        )
    else:
        _finish(job, Job.State.DONE, progress_done=progress.total, progress_total=progress.total,
                result=result or {}, message="done")
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


def _finish(job: Job, state: str, **fields) -> None:
    # Progress writes are throttled; the final counts are written here.
    Job.objects.filter(pk=job.pk).update(state=state, finished_at=timezone.now(), **fields)
    job_locks_release(job_id=job.pk)


def job_cancel(*, job: Job) -> Job:
    """Stop a job: a queued one is cancelled at once, a running one at its next progress report.

    A block-wise job whose blocks are out is cancelled at once: no block starts after that
    (their tasks find the job cancelled and skip) and the final step stores nothing.
    """
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if job.is_finished:
            return job
        job.cancel_requested = True
        fields = ["cancel_requested"]
        if job.state == Job.State.QUEUED or job.blocks.exists():
            job.state = Job.State.CANCELLED
            job.finished_at = timezone.now()
            job.message = "cancelled"
            fields += ["state", "finished_at", "message"]
        job.save(update_fields=fields)
        if job.state == Job.State.CANCELLED:
            job_locks_release(job_id=job.pk)
    return job


def job_run_inline(*, kind: str, parameters: dict, dataset=None, user=None, echo=None) -> Job:
    """Create a job and execute it here and now (management commands, tests)."""
    job = job_create(kind=kind, parameters=parameters, dataset=dataset, user=user, enqueue=False)
    return job_execute(job_id=job.pk, echo=echo, inline_blocks=True)
