from django.apps import AppConfig


class PipelineConfig(AppConfig):
    name = "connectome.pipeline"
    label = "pipeline"
    verbose_name = "detection pipeline"
