from drf_spectacular.utils import extend_schema
from rest_framework import serializers, viewsets

from connectome.common.params import DatasetQuery, parse_query
from connectome.datasets.models import Dataset, Layer
from connectome.datasets.permissions import DatasetRolePermission
from connectome.datasets.selectors import datasets_visible_to


class DatasetSerializer(serializers.ModelSerializer):
    voxel_size = serializers.ListField(child=serializers.FloatField(), read_only=True)
    shape = serializers.ListField(child=serializers.IntegerField(), read_only=True)

    class Meta:
        model = Dataset
        fields = ["id", "name", "description", "voxel_size", "shape", "is_public",
                  "created_at", "updated_at"]


class LayerSerializer(serializers.ModelSerializer):
    shape = serializers.ListField(child=serializers.IntegerField(), read_only=True)
    chunks = serializers.ListField(child=serializers.IntegerField(), read_only=True)

    class Meta:
        model = Layer
        fields = ["id", "dataset", "name", "kind", "dtype", "shape", "chunks", "storage_format",
                  "downsample_factors", "source_path", "method", "parameters", "job", "created_at"]


class DatasetViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = DatasetSerializer
    permission_classes = [DatasetRolePermission]

    def get_queryset(self):
        return datasets_visible_to(self.request.user).order_by("id")


class LayerViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = LayerSerializer
    permission_classes = [DatasetRolePermission]

    def get_queryset(self):
        queryset = Layer.objects.filter(dataset__in=datasets_visible_to(self.request.user))
        if self.action == "list":
            query = parse_query(DatasetQuery, self.request)
            if "dataset" in query:
                queryset = queryset.filter(dataset_id=query["dataset"])
        return queryset.order_by("id")

    @extend_schema(parameters=[DatasetQuery])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

