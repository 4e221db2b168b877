from connectome.imports.management.commands import import_volume


class Command(import_volume.Command):
    help = "Import a neuron segmentation: a segmentation layer plus one cell per segment id."
    default_kind = "segmentation"
