from django.apps import AppConfig


class WebConfig(AppConfig):
    name = "connectome.web"
    label = "web"
