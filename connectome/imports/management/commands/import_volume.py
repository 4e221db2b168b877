from connectome.jobs.command import JobCommand
from detection.io.sources import voxel_size_argument


class Command(JobCommand):
    help = "Import an EM volume (or prediction/mask) from TIFF, HDF5, zarr or precomputed."
    job_kind = "import_volume"
    default_kind = "em"

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("source", help="TIFF file or folder, .h5/.hdf5, .zarr, precomputed folder")
        parser.add_argument("--name", help="layer name (default: the layer kind)")
        parser.add_argument("--dataset-path", help="dataset inside an HDF5/zarr file")
        parser.add_argument("--format", choices=["tiff", "tiff-folder", "hdf5", "zarr", "precomputed"])
        parser.add_argument("--voxel-size", nargs=3, type=voxel_size_argument,
                            metavar=("Z", "Y", "X"),
                            help="nm; overrides the file's own (also one it states wrongly)")
        parser.add_argument("--fill-missing", action="store_true",
                            help="zarr/precomputed: read missing chunks as the fill value "
                                 "instead of failing")
        parser.add_argument("--chunks", nargs=3, type=int, metavar=("Z", "Y", "X"))
        if self.default_kind == "em":
            parser.add_argument(
                "--kind", default="em", choices=["em", "prediction", "mask", "synapses"],
                help="synapses: labelled synapse candidates (sites); no cells are made")
        else:
            parser.add_argument("--no-background", action="store_true",
                                help="id 0 is a cell too (dense segmentations)")

    def job_parameters(self, options):
        kind = options.get("kind", self.default_kind)
        return {
            "source": options["source"], "name": options["name"] or kind, "kind": kind,
            "dataset_path": options["dataset_path"], "format": options["format"],
            "voxel_size": options["voxel_size"], "chunks": options["chunks"],
            "background_id": None if options.get("no_background") else 0,
            "fill_missing": options["fill_missing"],
        }
