"""``/api/detectors/``: trained synapse detectors, their sources, figures and calibration.

Read-only: a ``train_detector`` job makes them (``POST /api/jobs/``). The model file is never
served; detection jobs name a detector by its id (``model_id``).
"""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import permissions, serializers, viewsets

from connectome.common.pagination import IdCursorPagination
from connectome.detectors.models import DetectorModel
from connectome.detectors.selectors import detectors_visible_to


class DetectorModelSerializer(serializers.ModelSerializer):
    voxel_size = serializers.ListField(child=serializers.FloatField(), read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = DetectorModel
        fields = ["id", "name", "version", "kind", "voxel_size", "sources", "parameters",
                  "figures", "calibration", "size", "created_by", "created_at", "job"]
        read_only_fields = fields


class DetectorModelViewSet(viewsets.ReadOnlyModelViewSet):
    """Detectors trained on at least one dataset you can see (superusers: all); filter by
    ``kind`` (trees, network) and ``name``."""

    serializer_class = DetectorModelSerializer
    permission_classes = [permissions.AllowAny]  # reading: visibility is checked per dataset
    pagination_class = IdCursorPagination

    def get_queryset(self):
        queryset = detectors_visible_to(self.request.user).select_related("created_by")
        if self.action == "list":
            kind = self.request.query_params.get("kind")
            if kind:
                if kind not in DetectorModel.Kind.values:
                    raise serializers.ValidationError(
                        {"kind": [f"'{kind}' is not a detector kind; use "
                                  f"{' or '.join(DetectorModel.Kind.values)}"]})
                queryset = queryset.filter(kind=kind)
            name = self.request.query_params.get("name")
            if name:
                queryset = queryset.filter(name=name)
        return queryset.order_by("id")

    @extend_schema(parameters=[
        OpenApiParameter("kind", str, enum=DetectorModel.Kind.values, required=False),
        OpenApiParameter("name", str, required=False, description="exact detector name")])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)
