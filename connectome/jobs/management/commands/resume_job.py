from django.core.management.base import BaseCommand, CommandError

from connectome.jobs.blocks import blocks_recover_stale, job_resume
from connectome.jobs.models import Job


class Command(BaseCommand):
    help = ("Resume a block-wise job after a crash, a failure or a cancel: re-send its "
            "unfinished blocks (or its final step) to the workers. With --stale instead of a "
            "job id, re-send only the blocks whose worker stopped beating, in every job.")

    def add_arguments(self, parser):
        parser.add_argument("job", type=int, nargs="?", help="job id")
        parser.add_argument("--stale", action="store_true",
                            help="re-send the blocks of running jobs left by lost workers")

    def handle(self, *args, **options):
        if options["stale"] == (options["job"] is not None):
            raise CommandError("give a job id or --stale (not both)")
        if options["stale"]:
            recovered = blocks_recover_stale()
            for job_id, indexes in recovered.items():
                self.stdout.write(f"job {job_id}: blocks {indexes} sent again")
            if not recovered:
                self.stdout.write("no block left by a lost worker")
            return
        job = Job.objects.filter(pk=options["job"]).first()
        if job is None:
            raise CommandError(f"no job {options['job']}")
        try:
            left = job_resume(job=job)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"job {job.pk}: {left} of {job.progress_total} blocks sent again")
