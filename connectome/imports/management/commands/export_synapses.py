from connectome.jobs.command import JobCommand


class Command(JobCommand):
    help = "Write the dataset's synapses as a Cnapse, CAVE-style or edge table."
    job_kind = "export_synapses"

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("target", help="CSV file to write")
        parser.add_argument("--table-format", choices=["cnapse", "cave", "edges"], required=True)
        parser.add_argument("--run", help="only this synapse run")

    def job_parameters(self, options):
        return {"target": options["target"], "table_format": options["table_format"],
                "run_name": options["run"]}
