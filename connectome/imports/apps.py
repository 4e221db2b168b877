from django.apps import AppConfig
from django.db.models.signals import post_delete


def _remove_export(sender, instance, **kwargs):
    from connectome.imports.paths import export_remove, is_export

    if instance.dataset_id is not None and is_export(instance.kind):
        export_remove(instance)


class ImportsConfig(AppConfig):
    name = "connectome.imports"
    label = "imports"

    def ready(self):
        # A deleted export job takes its file with it (a deleted dataset deletes its jobs).
        post_delete.connect(_remove_export, sender="jobs.Job",
                            dispatch_uid="connectome.imports.remove_export")
