from rest_framework import serializers, viewsets

from connectome.common.params import int_param
from connectome.datasets.permissions import DatasetRolePermission
from connectome.datasets.selectors import datasets_visible_to
from connectome.synapses.models import Synapse, SynapseRun


class SynapseSerializer(serializers.ModelSerializer):
    class Meta:
        model = Synapse
        fields = ["id", "dataset", "run", "kind", "pre", "post", "site_id", "post_site_id",
                  "external_id", "pre_z", "pre_y", "pre_x", "post_z", "post_y", "post_x",
                  "ctr_z", "ctr_y", "ctr_x", "size_voxels", "size_nm3", "contact_area_nm2",
                  "confidence", "weight", "flag", "method", "review_state"]


class SynapseRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = SynapseRun
        fields = ["id", "dataset", "name", "method", "parameters", "source_path", "job",
                  "created_at"]


class SynapseViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = SynapseSerializer
    permission_classes = [DatasetRolePermission]

    def get_queryset(self):
        queryset = Synapse.objects.filter(dataset__in=datasets_visible_to(self.request.user))
        params = self.request.query_params
        for name in ("dataset", "run", "pre", "post"):
            if name in params:
                queryset = queryset.filter(**{f"{name}_id": int_param(name, params[name])})
        return queryset.order_by("id")


class SynapseRunViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = SynapseRunSerializer
    permission_classes = [DatasetRolePermission]

    def get_queryset(self):
        queryset = SynapseRun.objects.filter(dataset__in=datasets_visible_to(self.request.user))
        if "dataset" in self.request.query_params:
            queryset = queryset.filter(
                dataset_id=int_param("dataset", self.request.query_params["dataset"])
            )
        return queryset.order_by("id")
