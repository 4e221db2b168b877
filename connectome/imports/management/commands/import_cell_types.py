from django.core.management.base import BaseCommand, CommandError

from connectome.cells.services import cells_annotate, read_cell_annotations
from connectome.jobs.command import resolve_dataset


class Command(BaseCommand):
    help = "Set cell types and/or names from a CSV with segment_id, cell_type, name columns."

    def add_arguments(self, parser):
        parser.add_argument("dataset")
        parser.add_argument("source")

    def handle(self, *args, **options):
        dataset = resolve_dataset(options["dataset"])
        try:
            count = cells_annotate(dataset=dataset, annotations=read_cell_annotations(options["source"]))
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"annotated {count} cells"))
