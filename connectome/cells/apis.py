from rest_framework import serializers, viewsets

from connectome.cells.models import Cell
from connectome.common.params import int_param
from connectome.datasets.permissions import DatasetRolePermission
from connectome.datasets.selectors import datasets_visible_to


class CellSerializer(serializers.ModelSerializer):
    segment_id = serializers.CharField(read_only=True, help_text="uint64, as a string")
    bbox = serializers.ListField(read_only=True)

    class Meta:
        model = Cell
        fields = ["id", "dataset", "segment_id", "name", "cell_type", "layer", "size_voxels",
                  "bbox", "centroid_z", "centroid_y", "centroid_x"]


class CellViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = CellSerializer
    permission_classes = [DatasetRolePermission]

    def get_queryset(self):
        queryset = Cell.objects.filter(dataset__in=datasets_visible_to(self.request.user))
        params = self.request.query_params
        if "dataset" in params:
            queryset = queryset.filter(dataset_id=int_param("dataset", params["dataset"]))
        if "segment_id" in params:
            queryset = queryset.filter(segment_id=int_param("segment_id", params["segment_id"]))
        if "cell_type" in params:
            queryset = queryset.filter(cell_type=params["cell_type"])
        return queryset.order_by("id")
