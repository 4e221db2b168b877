from django.shortcuts import get_object_or_404
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from connectome.common.pagination import NewestFirstPagination
from connectome.common.params import int_param
from connectome.datasets.models import Dataset, Membership
from connectome.datasets.permissions import DatasetRolePermission
from connectome.datasets.selectors import datasets_visible_to, has_role
from connectome.jobs.models import Job
from connectome.jobs.registry import UnknownJobKind
from connectome.jobs.services import JobParameterError, job_cancel, job_create


class JobSerializer(serializers.ModelSerializer):
    fraction_done = serializers.FloatField(read_only=True, allow_null=True)
    duration_s = serializers.FloatField(read_only=True, allow_null=True)

    class Meta:
        model = Job
        fields = ["id", "kind", "dataset", "parameters", "state", "progress_done",
                  "progress_total", "fraction_done", "message", "result", "error",
                  "cancel_requested", "created_by", "created_at", "started_at", "finished_at",
                  "duration_s"]
        read_only_fields = fields


class JobCreateSerializer(serializers.Serializer):
    kind = serializers.CharField()
    dataset = serializers.IntegerField()
    parameters = serializers.DictField(default=dict)


class JobViewSet(viewsets.ModelViewSet):
    """Jobs of the datasets you can see. POST starts one (dataset admins); cancel stops it."""

    serializer_class = JobSerializer
    permission_classes = [DatasetRolePermission]
    http_method_names = ["get", "post", "head", "options"]
    pagination_class = NewestFirstPagination

    def get_queryset(self):
        queryset = Job.objects.filter(dataset__in=datasets_visible_to(self.request.user))
        if "dataset" in self.request.query_params:
            queryset = queryset.filter(
                dataset_id=int_param("dataset", self.request.query_params["dataset"])
            )
        return queryset.order_by("-id")

    def create(self, request, *args, **kwargs):
        body = JobCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        dataset = get_object_or_404(
            datasets_visible_to(request.user), pk=body.validated_data["dataset"]
        )
        self._require_admin(dataset)
        try:
            job = job_create(
                kind=body.validated_data["kind"], parameters=body.validated_data["parameters"],
                dataset=dataset, user=request.user,
            )
        except UnknownJobKind as exc:
            raise serializers.ValidationError({"kind": str(exc)}) from exc
        except JobParameterError as exc:
            raise serializers.ValidationError({"parameters": exc.errors}) from exc
        return Response(JobSerializer(job).data, status=status.HTTP_201_CREATED)

    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        job = self.get_object()
        self._require_admin(job.dataset)
        return Response(JobSerializer(job_cancel(job=job)).data)

    def _require_admin(self, dataset: Dataset):
        if not has_role(dataset=dataset, user=self.request.user, role=Membership.Role.ADMIN):
            raise PermissionDenied(f"running jobs on dataset '{dataset.name}' needs the admin role")
