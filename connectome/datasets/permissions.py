"""DRF permissions from per-dataset roles: viewer reads, reviewer reviews, admin runs and edits."""

from rest_framework import permissions

from connectome.datasets.models import Membership
from connectome.datasets.selectors import has_role


class DatasetRolePermission(permissions.BasePermission):
    """Object-level check on ``obj.dataset`` (or ``obj`` for a dataset)."""

    write_role = Membership.Role.ADMIN

    def has_object_permission(self, request, view, obj):
        dataset = getattr(obj, "dataset", obj)
        if dataset is None:
            return request.user.is_staff
        if request.method in permissions.SAFE_METHODS:
            return has_role(dataset=dataset, user=request.user, role=Membership.Role.VIEWER)
        return has_role(dataset=dataset, user=request.user, role=self.write_role)
