"""The Celery application. Workers start with ``celery -A connectome worker -Q cpu,gpu``."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "connectome.settings")

app = Celery("connectome")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
