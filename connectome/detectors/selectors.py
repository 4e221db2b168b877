"""Reads on detectors: who may see which."""

from django.db.models import QuerySet

from connectome.datasets.selectors import datasets_visible_to
from connectome.detectors.models import DetectorModel


def detectors_visible_to(user) -> QuerySet[DetectorModel]:
    """Detectors trained on at least one dataset the user can see; superusers (and the shell,
    ``user`` None) see all."""
    if user is None or (user.is_authenticated and user.is_superuser):
        return DetectorModel.objects.all()
    visible = datasets_visible_to(user).values("pk")
    return DetectorModel.objects.filter(
        pk__in=DetectorModel.objects.filter(datasets__in=visible).values("pk"))
