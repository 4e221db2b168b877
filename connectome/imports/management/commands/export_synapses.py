import shutil

from django.core.management.base import CommandError

from connectome.imports.paths import export_file
from connectome.jobs.command import JobCommand


class Command(JobCommand):
    help = ("Write the dataset's synapses as a Cnapse, CAVE-style or edge table; here, or with "
            "--queue on a worker (then download the file over the API).")
    job_kind = "export_synapses"

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("target", nargs="?",
                            help="CSV file to copy the table to (run here only)")
        parser.add_argument("--table-format", choices=["cnapse", "cave", "edges"], required=True)
        parser.add_argument("--run", help="only this synapse run")

    def job_parameters(self, options):
        if options["queue"] and options["target"]:
            raise CommandError("a queued export is downloaded over the API "
                               "(/api/jobs/<id>/download/); leave out the target")
        if not options["queue"] and not options["target"]:
            raise CommandError("name the CSV file to write (or pass --queue)")
        return {"table_format": options["table_format"], "run_name": options["run"]}

    def job_done(self, job, options):
        shutil.copyfile(export_file(job), options["target"])
        self.stdout.write(f"wrote {options['target']}")
