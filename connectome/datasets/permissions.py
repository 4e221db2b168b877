"""DRF permissions from per-dataset roles: viewer reads, reviewer reviews, admin runs and edits."""

from rest_framework import permissions

from connectome.datasets.models import Dataset, Membership
from connectome.datasets.selectors import has_role


class DatasetRolePermission(permissions.BasePermission):
    """Object-level check on the object's dataset (see :func:`dataset_of`).

    Reads need the viewer role (which a public dataset gives everyone); writes need the view's
    ``write_role`` (admin unless the view says otherwise, e.g. reviewer for reviews). Anonymous
    users never write.
    """

    write_role = Membership.Role.ADMIN

    def has_permission(self, request, view):
        if request.method in permissions.SAFE_METHODS:
            return True
        return bool(request.user and request.user.is_authenticated)

    def has_object_permission(self, request, view, obj):
        dataset = dataset_of(obj)
        if dataset is None:
            return request.user.is_staff
        if request.method in permissions.SAFE_METHODS:
            return has_role(dataset=dataset, user=request.user, role=Membership.Role.VIEWER)
        role = getattr(view, "write_role", self.write_role)
        return has_role(dataset=dataset, user=request.user, role=role)


def dataset_of(obj) -> Dataset | None:
    """The dataset an object belongs to: itself, ``obj.dataset``, or that of its cell or synapse."""
    if isinstance(obj, Dataset):
        return obj
    if hasattr(obj, "dataset"):
        return obj.dataset
    for parent in ("cell", "synapse"):
        if hasattr(obj, parent):
            return getattr(obj, parent).dataset
    raise TypeError(f"{type(obj).__name__} objects belong to no dataset")
