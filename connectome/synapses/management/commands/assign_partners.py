import json

from django.core.management.base import CommandError

from connectome.jobs.command import JobCommand


class Command(JobCommand):
    help = ("Assign pre- and postsynaptic partners to the synapse sites of a layer "
            "(contact, vesicle or diffusion method) and store them as a synapse run.")
    job_kind = "assign_partners"

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--method", required=True, choices=["contact", "vesicle", "diffusion"])
        parser.add_argument("--sites", required=True,
                            help="synapse-instance layer (id or name)")
        parser.add_argument("--segmentation", required=True,
                            help="segmentation layer (id or name)")
        parser.add_argument("--run", required=True, help="name of the synapse run to write")
        parser.add_argument("--presynaptic", help="vesicle-cloud map layer (id or name)")
        parser.add_argument("--em", help="EM layer, id or name (contact method)")
        parser.add_argument("--interface-model", help="interface classifier file (contact)")
        parser.add_argument("--free", help="free-space mask layer, id or name (diffusion)")
        parser.add_argument("--options", default="{}",
                            help='method options as JSON, e.g. \'{"min_share": 0.3}\'')
        parser.add_argument("--replace", action="store_true",
                            help="replace the run of that name in one transaction")
        parser.add_argument("--block-shape", nargs=3, type=int, metavar=("Z", "Y", "X"),
                            help="voxels per block task (default 32 256 256)")

    def job_parameters(self, options):
        try:
            method_options = json.loads(options["options"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--options is not JSON: {exc}") from exc
        return {
            "method": options["method"], "sites_layer": options["sites"],
            "segmentation_layer": options["segmentation"], "run_name": options["run"],
            "presynaptic_layer": options["presynaptic"], "em_layer": options["em"],
            "interface_model": options["interface_model"], "free_layer": options["free"],
            "options": method_options, "replace": options["replace"],
            **({"block_shape": options["block_shape"]} if options["block_shape"] else {}),
        }
