"""Long-running work (imports, detection, assignment, exports) and its lifecycle."""

from django.conf import settings
from django.db import models


class Job(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"

    FINISHED_STATES = (State.DONE, State.FAILED, State.CANCELLED)

    class Step(models.TextChoices):
        """What of a running job runs now (connectome/jobs/sweep.py watches each)."""

        NONE = "", "not started"
        HANDLER = "handler", "handler"      # its handler (a block-wise kind: the plan)
        STORED = "stored", "output stored"  # its handler stored its output, ends soon
        BLOCKS = "blocks", "blocks"         # its block tasks are out
        FINISH = "finish", "final step"     # its final step is sent or runs

    kind = models.CharField(max_length=50, db_index=True)
    dataset = models.ForeignKey(
        "datasets.Dataset", null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )
    parameters = models.JSONField(default=dict)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    progress_done = models.BigIntegerField(default=0)
    progress_total = models.BigIntegerField(default=0)
    message = models.CharField(max_length=500, blank=True, help_text="current step")
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    queue = models.CharField(max_length=50, default="cpu")
    block_queue = models.CharField(
        max_length=50, blank=True, help_text="queue of the block tasks of a block-wise job"
    )
    task_id = models.CharField(
        max_length=255, blank=True,
        help_text="the Celery task that runs it; blank when it runs in the process that made it")
    step = models.CharField(max_length=16, choices=Step.choices, default=Step.NONE, blank=True,
                            help_text="what of a running job runs now")
    worker = models.CharField(max_length=255, blank=True,
                              help_text="worker running the handler or the final step")
    heartbeat_at = models.DateTimeField(
        null=True, blank=True,
        help_text="last sign of life of that worker (for a final step not yet taken up: when "
                  "it was sent)")
    reads_any_path = models.BooleanField(
        default=False, help_text="made by a superuser or at the shell: its source paths need "
                                 "not lie under IMPORT_ROOTS")
    attempts = models.PositiveIntegerField(
        default=0, help_text="times a worker took up the handler or the final step")
    retries = models.PositiveIntegerField(
        default=0, help_text="times it was sent again after a lost worker or database "
                             "connection, since it was made or last resumed")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="jobs",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["dataset", "state"], name="job_dataset_state"),
                   models.Index(fields=["state", "step"], name="job_state_step")]

    def __str__(self):
        return f"{self.kind} job {self.pk} ({self.state})"

    @property
    def is_finished(self) -> bool:
        return self.state in self.FINISHED_STATES

    @property
    def fraction_done(self) -> float | None:
        if not self.progress_total:
            return None
        return min(1.0, self.progress_done / self.progress_total)

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        from django.utils import timezone

        end = self.finished_at or timezone.now()
        return (end - self.started_at).total_seconds()


class JobBlock(models.Model):
    """One box of a block-wise job, run by its own task; written once, safe to run twice."""

    class State(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="blocks")
    index = models.PositiveIntegerField()
    # Half-open voxel box (z0, y0, x0, z1, y1, x1) of the block's core, without its halo.
    box = models.JSONField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    result = models.JSONField(default=dict, blank=True, help_text="what the final step needs")
    worker = models.CharField(max_length=255, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="last sign of life of the worker running the block")
    finished_at = models.DateTimeField(null=True, blank=True)
    compute_s = models.FloatField(null=True, blank=True, help_text="time in the block handler")

    class Meta:
        ordering = ["job", "index"]
        constraints = [
            models.UniqueConstraint(fields=["job", "index"], name="unique_job_block")
        ]
        indexes = [models.Index(fields=["job", "state"], name="job_block_state"),
                   # The sweep's look for silent running blocks (benchmarks/job_sweep.py).
                   models.Index(fields=["state", "heartbeat_at"], name="job_block_beat")]

    def __str__(self):
        return f"block {self.index} of job {self.job_id} ({self.state})"

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.box[:3], self.box[3:]))

    def describe(self) -> str:
        return f"block {self.index} (" + ", ".join(
            f"{axis} {a}:{b}" for axis, a, b in zip("zyx", self.box[:3], self.box[3:])) + ")"


class JobLock(models.Model):
    """A dataset resource (a layer or synapse-run name) that one unfinished job writes.

    The unique constraint refuses a second job that would write the same resource; the lock
    goes when its job ends.
    """

    dataset = models.ForeignKey("datasets.Dataset", on_delete=models.CASCADE, related_name="+")
    resource = models.CharField(max_length=300)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="locks")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["dataset", "resource"], name="unique_job_lock")
        ]

    def __str__(self):
        return f"{self.resource} of dataset {self.dataset_id}, held by job {self.job_id}"
