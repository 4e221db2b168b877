"""Shared plumbing for management commands that run a job."""

import sys

from django.core.management.base import BaseCommand, CommandError

from connectome.datasets.models import Dataset
from connectome.jobs.models import Job
from connectome.jobs.services import JobParameterError, job_create, job_run_inline


def resolve_dataset(value: str) -> Dataset:
    query = Dataset.objects.filter(pk=int(value)) if value.isdigit() else Dataset.objects.none()
    dataset = query.first() or Dataset.objects.filter(name=value).first()
    if dataset is None:
        known = ", ".join(Dataset.objects.values_list("name", flat=True)[:20]) or "none"
        raise CommandError(f"no dataset with id or name '{value}' (datasets: {known})")
    return dataset


class JobCommand(BaseCommand):
    """A command that validates parameters, then runs the job here or queues it for workers."""

    job_kind: str

    def add_arguments(self, parser):
        parser.add_argument("dataset", help="dataset id or name")
        parser.add_argument(
            "--queue", action="store_true",
            help="send the job to the Celery workers instead of running it in this process",
        )

    def job_parameters(self, options) -> dict:
        raise NotImplementedError

    def handle(self, *args, **options):
        dataset = resolve_dataset(options["dataset"])
        parameters = self.job_parameters(options)
        try:
            if options["queue"]:
                job = job_create(kind=self.job_kind, parameters=parameters, dataset=dataset)
                self.stdout.write(f"queued {self.job_kind} job {job.pk}")
                return
            job = job_run_inline(
                kind=self.job_kind, parameters=parameters, dataset=dataset, echo=self._echo
            )
        except JobParameterError as exc:
            raise CommandError(str(exc)) from exc
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        if job.state != Job.State.DONE:
            raise CommandError(f"{self.job_kind} job {job.pk} {job.state}: {job.error}")
        self.job_done(job, options)
        self.stdout.write(self.style.SUCCESS(f"{self.job_kind} job {job.pk} done: {job.result}"))

    def job_done(self, job: Job, options) -> None:
        """What the command does with a finished job run here (e.g. copy out its export)."""

    def _echo(self, done, total, message):
        if message:
            self.stderr.write(f"{message}")
        elif sys.stderr.isatty() and total:
            sys.stderr.write(f"\r  {done}/{total} ({100 * done / total:.0f} %)")
            sys.stderr.flush()
