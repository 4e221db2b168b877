from django.apps import AppConfig


class DatasetsConfig(AppConfig):
    name = "connectome.datasets"
    label = "datasets"
