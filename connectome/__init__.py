"""Django side of the platform: storage, scheduling and serving of connectomes."""

from connectome.celery import app as celery_app

__all__ = ["celery_app"]
