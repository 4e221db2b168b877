from django.core.management.base import BaseCommand, CommandError

from connectome.jobs.blocks import job_resume
from connectome.jobs.models import Job


class Command(BaseCommand):
    help = ("Resume a block-wise job after a crash, a failure or a cancel: re-send its "
            "unfinished blocks (or its final step) to the workers.")

    def add_arguments(self, parser):
        parser.add_argument("job", type=int, help="job id")

    def handle(self, *args, **options):
        job = Job.objects.filter(pk=options["job"]).first()
        if job is None:
            raise CommandError(f"no job {options['job']}")
        try:
            left = job_resume(job=job)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"job {job.pk}: {left} of {job.progress_total} blocks sent again")
