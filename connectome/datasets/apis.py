from django.core.exceptions import ValidationError as ModelValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from connectome.common.params import DatasetQuery, IdField, parse_query
from connectome.common.validators import NameField, VoxelSizeSerializerField
from connectome.datasets.models import Dataset, Layer
from connectome.datasets.permissions import DatasetRolePermission
from connectome.datasets.selectors import datasets_visible_to
from connectome.datasets.services import dataset_create, dataset_update, layer_rename


class DatasetSerializer(serializers.ModelSerializer):
    voxel_size = serializers.ListField(child=serializers.FloatField(), read_only=True)
    shape = serializers.ListField(child=serializers.IntegerField(), read_only=True)

    class Meta:
        model = Dataset
        fields = ["id", "name", "description", "voxel_size", "shape", "is_public",
                  "current_run", "created_at", "updated_at"]


class DatasetCreateSerializer(serializers.Serializer):
    name = NameField(max_length=200)
    voxel_size = VoxelSizeSerializerField(help_text="z, y, x in nm, each from 1e-6 to 1e6")
    description = serializers.CharField(required=False, allow_blank=True, default="")
    is_public = serializers.BooleanField(required=False, default=False)


class DatasetUpdateSerializer(serializers.Serializer):
    name = NameField(max_length=200, required=False)
    description = serializers.CharField(required=False, allow_blank=True)
    is_public = serializers.BooleanField(required=False)
    current_run = IdField(required=False, allow_null=True,
                          help_text="id of a synapse run of the dataset, shown by default; "
                                    "null: the newest detection run")


class LayerUpdateSerializer(serializers.Serializer):
    name = NameField(max_length=200)


def _model_errors(exc: ModelValidationError) -> serializers.ValidationError:
    return serializers.ValidationError(getattr(exc, "message_dict", {"detail": exc.messages}))


class LayerSerializer(serializers.ModelSerializer):
    shape = serializers.ListField(child=serializers.IntegerField(), read_only=True)
    chunks = serializers.ListField(child=serializers.IntegerField(), read_only=True)

    class Meta:
        model = Layer
        fields = ["id", "dataset", "name", "kind", "dtype", "shape", "chunks", "storage_format",
                  "downsample_factors", "source_path", "method", "parameters", "job", "created_at"]


class DatasetViewSet(viewsets.ModelViewSet):
    """Datasets you can see. POST creates one (users allowed to add datasets; the creator
    becomes its admin); PATCH changes its name, description, public flag or current run
    (its admins: the run shown by default, see ``docs/api.md``).
    Volumes, cells and synapses come in by import jobs (``POST /api/jobs/``)."""

    serializer_class = DatasetSerializer
    permission_classes = [DatasetRolePermission]
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self):
        return datasets_visible_to(self.request.user).order_by("id")

    @extend_schema(request=DatasetCreateSerializer, responses={201: DatasetSerializer})
    def create(self, request, *args, **kwargs):
        if not request.user.has_perm("datasets.add_dataset"):
            raise PermissionDenied("creating datasets needs the 'add dataset' permission")
        body = DatasetCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            dataset = dataset_create(owner=request.user, **body.validated_data)
        except ModelValidationError as exc:
            raise _model_errors(exc) from exc
        except ValueError as exc:
            raise serializers.ValidationError({"detail": [str(exc)]}) from exc
        return Response(DatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=DatasetUpdateSerializer, responses=DatasetSerializer)
    def partial_update(self, request, *args, **kwargs):
        dataset = self.get_object()
        body = DatasetUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            dataset = dataset_update(dataset=dataset, **body.validated_data)
        except ModelValidationError as exc:
            raise _model_errors(exc) from exc
        return Response(DatasetSerializer(dataset).data)


class LayerViewSet(viewsets.ModelViewSet):
    """Layers of the datasets you can see; PATCH renames one (dataset admins). Layers are
    made by import and detection jobs."""

    serializer_class = LayerSerializer
    permission_classes = [DatasetRolePermission]
    http_method_names = ["get", "patch", "head", "options"]

    @extend_schema(request=LayerUpdateSerializer, responses=LayerSerializer)
    def partial_update(self, request, *args, **kwargs):
        layer = self.get_object()
        body = LayerUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            layer = layer_rename(layer=layer, name=body.validated_data["name"])
        except ValueError as exc:
            raise serializers.ValidationError({"name": [str(exc)]}) from exc
        return Response(LayerSerializer(layer).data)

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

