from django.apps import AppConfig


class SynapsesConfig(AppConfig):
    name = "connectome.synapses"
    label = "synapses"
