from connectome.jobs.command import JobCommand


class Command(JobCommand):
    help = "Import a synapse table (Cnapse, CAVE-style or pre/post/type/synapses edge table)."
    job_kind = "import_synapses"

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("source", help="CSV file")
        parser.add_argument("--run", required=True, help="name of the synapse run to create")
        parser.add_argument("--table-format", choices=["cnapse", "cave", "edges"],
                            help="detected from the header when left out")
        parser.add_argument("--method", default="")
        parser.add_argument("--create-missing-cells", action="store_true",
                            help="create cells for ids or names the dataset does not know")
        parser.add_argument("--position-unit", choices=["nm", "voxel"], default="nm")
        parser.add_argument("--replace", action="store_true",
                            help="replace an existing run of that name")

    def job_parameters(self, options):
        return {"source": options["source"], "run_name": options["run"],
                "table_format": options["table_format"], "method": options["method"],
                "create_missing_cells": options["create_missing_cells"],
                "position_unit": options["position_unit"], "replace": options["replace"]}
