from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from connectome.common.validators import error_text
from connectome.datasets.services import dataset_create
from detection.io.sources import voxel_size_argument


class Command(BaseCommand):
    help = "Create an empty dataset; volumes, cells and synapses are imported into it."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--voxel-size", nargs=3, type=voxel_size_argument, required=True,
                            metavar=("Z", "Y", "X"),
                            help="nm; finite numbers from 1e-6 to 1e6")
        parser.add_argument("--description", default="")
        parser.add_argument("--owner", help="username; becomes the dataset's admin")
        parser.add_argument("--public", action="store_true", help="readable without an account")

    def handle(self, *args, **options):
        owner = None
        if options["owner"]:
            owner = get_user_model().objects.filter(username=options["owner"]).first()
            if owner is None:
                raise CommandError(f"no user named '{options['owner']}'")
        try:
            dataset = dataset_create(
                name=options["name"], voxel_size=tuple(options["voxel_size"]),
                description=options["description"], owner=owner, is_public=options["public"],
            )
        except ValidationError as exc:
            raise CommandError(error_text(exc)) from exc
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"created dataset {dataset.pk} '{dataset.name}'"))
