from django.core.management.base import CommandError

from connectome.jobs.command import JobCommand, resolve_dataset


class Command(JobCommand):
    help = "Skeletonize the cells of a segmentation layer with kimimaro (TEASAR)."
    job_kind = "skeletonize"

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--layer", default="segmentation", help="segmentation layer name")
        parser.add_argument("--segment-ids", nargs="+", type=int)
        parser.add_argument("--min-size", type=int, default=1000, help="skip smaller cells (voxels)")
        parser.add_argument("--scale", type=float, default=4.0)
        parser.add_argument("--const", type=float, default=500.0, help="nm")

    def job_parameters(self, options):
        dataset = resolve_dataset(options["dataset"])
        layer = dataset.layers.filter(name=options["layer"]).first()
        if layer is None:
            raise CommandError(f"dataset '{dataset.name}' has no layer '{options['layer']}'")
        return {"layer": layer.pk, "segment_ids": options["segment_ids"],
                "min_size_voxels": options["min_size"], "scale": options["scale"],
                "const": options["const"]}
