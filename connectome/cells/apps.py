from django.apps import AppConfig


class CellsConfig(AppConfig):
    name = "connectome.cells"
    label = "cells"
