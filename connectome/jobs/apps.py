from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "connectome.jobs"
    label = "jobs"
