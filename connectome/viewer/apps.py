from django.apps import AppConfig


class ViewerConfig(AppConfig):
    name = "connectome.viewer"
    label = "viewer"
