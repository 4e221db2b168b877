from django.apps import AppConfig


class ImportsConfig(AppConfig):
    name = "connectome.imports"
    label = "imports"
