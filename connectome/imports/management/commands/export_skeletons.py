from connectome.jobs.command import JobCommand


class Command(JobCommand):
    help = "Write the dataset's skeletons as SWC files (<segment id>.swc) into a folder."
    job_kind = "export_skeletons"

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("target", help="folder")
        parser.add_argument("--source", help="only skeletons of this source (swc, kimimaro)")

    def job_parameters(self, options):
        return {"target": options["target"], "source": options["source"]}
