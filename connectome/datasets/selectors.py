"""Reads on datasets: who may see what."""

from django.db.models import Q, QuerySet

from connectome.datasets.models import Dataset, Membership

_ROLE_RANK = {Membership.Role.VIEWER: 1, Membership.Role.REVIEWER: 2, Membership.Role.ADMIN: 3}


def datasets_visible_to(user) -> QuerySet[Dataset]:
    """Public datasets, plus those the user is a member of; staff see all."""
    if user is not None and user.is_authenticated and user.is_staff:
        return Dataset.objects.all()
    if user is None or not user.is_authenticated:
        return Dataset.objects.filter(is_public=True)
    return Dataset.objects.filter(Q(is_public=True) | Q(memberships__user=user)).distinct()


def dataset_role(*, dataset: Dataset, user) -> str | None:
    """The user's role on the dataset: staff act as admin; public datasets give viewers."""
    if user is not None and user.is_authenticated:
        if user.is_staff:
            return Membership.Role.ADMIN
        role = (
            Membership.objects.filter(dataset=dataset, user=user)
            .values_list("role", flat=True)
            .first()
        )
        if role:
            return role
    return Membership.Role.VIEWER if dataset.is_public else None


def has_role(*, dataset: Dataset, user, role: str) -> bool:
    held = dataset_role(dataset=dataset, user=user)
    return held is not None and _ROLE_RANK[held] >= _ROLE_RANK[role]
