from django.apps import AppConfig
from django.db.models.signals import post_delete


def _remove_file(sender, instance, **kwargs):
    from connectome.detectors.services import detector_file_remove

    detector_file_remove(detector=instance)


class DetectorsConfig(AppConfig):
    name = "connectome.detectors"
    label = "detectors"
    verbose_name = "detectors"

    def ready(self):
        # A deleted record takes its file with it, however it is deleted (admin, queryset,
        # a cascade), once the deletion commits.
        post_delete.connect(_remove_file, sender="detectors.DetectorModel",
                            dispatch_uid="connectome.detectors.remove_file")
