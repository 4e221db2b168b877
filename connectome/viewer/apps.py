import logging

from django.apps import AppConfig
from django.db import transaction
from django.db.models.signals import post_delete, post_save

logger = logging.getLogger(__name__)


def _remove_annotation_layer(sender, instance, **kwargs):
    from connectome.viewer.annotations import remove_layer

    run_id = instance.pk
    transaction.on_commit(lambda: remove_layer(run_id))


def _build_annotation_layer(sender, instance, created, **kwargs):
    if not created:
        return
    run_id = instance.pk

    def request():
        from connectome.synapses.models import Synapse, SynapseRun
        from connectome.viewer.annotations import INLINE_MAX, request_build

        # Small runs are built on their first request; a large one gets its job now.
        run = SynapseRun.objects.filter(pk=run_id).select_related("dataset").first()
        try:
            if run is not None and Synapse.objects.filter(run=run).count() > INLINE_MAX:
                request_build(run)
        except Exception:  # the run is stored; its first view asks again
            logger.exception("could not ask for the annotation layer of run %s", run_id)

    transaction.on_commit(request)


class ViewerConfig(AppConfig):
    name = "connectome.viewer"
    label = "viewer"

    def ready(self):
        # A synapse run's annotation layer is written once per run (a replaced run is a new
        # row): it is asked for when the run is stored and removed with the run.
        post_save.connect(_build_annotation_layer, sender="synapses.SynapseRun",
                          dispatch_uid="connectome.viewer.build_annotation_layer")
        post_delete.connect(_remove_annotation_layer, sender="synapses.SynapseRun",
                            dispatch_uid="connectome.viewer.remove_annotation_layer")
