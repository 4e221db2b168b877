import zipfile
from pathlib import Path

from django.core.management.base import CommandError

from connectome.imports.paths import export_file
from connectome.jobs.command import JobCommand


class Command(JobCommand):
    help = ("Write the dataset's skeletons as SWC files (<segment id>.swc) into a folder; or with "
            "--queue as a zip on a worker (then download it over the API).")
    job_kind = "export_skeletons"

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("target", nargs="?", help="folder (run here only)")
        parser.add_argument("--source", help="only skeletons of this source (swc, kimimaro)")

    def job_parameters(self, options):
        if options["queue"] and options["target"]:
            raise CommandError("a queued export is downloaded over the API "
                               "(/api/jobs/<id>/download/); leave out the target")
        if not options["queue"] and not options["target"]:
            raise CommandError("name the folder to write into (or pass --queue)")
        return {"source": options["source"]}

    def job_done(self, job, options):
        folder = Path(options["target"])
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(export_file(job)) as archive:
            archive.extractall(folder)
        self.stdout.write(f"wrote {job.result['skeletons']} SWC files into {folder}")
