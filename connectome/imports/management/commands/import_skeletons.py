from connectome.jobs.command import JobCommand


class Command(JobCommand):
    help = "Import SWC skeletons: a file named <segment id>.swc or a folder of them."
    job_kind = "import_skeletons"

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("source")
        parser.add_argument("--source-name", default="swc", help="label stored with the skeletons")
        parser.add_argument("--scale", type=float, default=1.0,
                            help="multiplies SWC coordinates and radii to get nm")

    def job_parameters(self, options):
        return {"source": options["source"], "source_name": options["source_name"],
                "scale": options["scale"]}
