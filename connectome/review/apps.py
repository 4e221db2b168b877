from django.apps import AppConfig


class ReviewConfig(AppConfig):
    name = "connectome.review"
    label = "review"
