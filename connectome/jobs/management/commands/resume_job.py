from django.core.management.base import BaseCommand, CommandError

from connectome.jobs.blocks import job_resume
from connectome.jobs.models import Job


class Command(BaseCommand):
    help = ("Resume a job after a crash, a failure or a cancel: a block-wise job's unfinished "
            "blocks (or its final step) are sent to the workers again, any other job runs "
            "again from the start. With --stale instead of a job id, sweep once for work that "
            "lost workers left, as every worker does every JOB_SWEEP_S seconds.")

    def add_arguments(self, parser):
        parser.add_argument("job", type=int, nargs="?", help="job id")
        parser.add_argument("--stale", action="store_true",
                            help="send again what lost workers left, in every job")

    def handle(self, *args, **options):
        if options["stale"] == (options["job"] is not None):
            raise CommandError("give a job id or --stale (not both)")
        if options["stale"]:
            from connectome.jobs.sweep import jobs_sweep

            report = jobs_sweep()
            for line in report.lines():
                self.stdout.write(line)
            if not report:
                self.stdout.write("nothing left by a lost worker")
            return
        job = Job.objects.filter(pk=options["job"]).first()
        if job is None:
            raise CommandError(f"no job {options['job']}")
        try:
            left = job_resume(job=job)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if job.blocks.exists():
            self.stdout.write(f"job {job.pk}: {left} of {job.progress_total} blocks sent again")
        else:
            self.stdout.write(f"job {job.pk}: sent again to run from the start")
