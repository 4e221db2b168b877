from django.db.models import Count
from django.http import FileResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from connectome.common.pagination import NewestFirstPagination
from connectome.common.params import int_param
from connectome.datasets.models import Dataset, Membership
from connectome.datasets.permissions import DatasetRolePermission
from connectome.datasets.selectors import datasets_visible_to, has_role
from connectome.imports.paths import export_file, is_export
from connectome.jobs.blocks import job_resume, stale_blocks
from connectome.jobs.models import Job, JobBlock
from connectome.jobs.registry import UnknownJobKind
from connectome.jobs.services import JobParameterError, job_cancel, job_create


class JobSerializer(serializers.ModelSerializer):
    """A job; ``traceback`` only for the admins of its dataset (empty for everyone else)."""

    fraction_done = serializers.FloatField(read_only=True, allow_null=True)
    duration_s = serializers.FloatField(read_only=True, allow_null=True)
    traceback = serializers.SerializerMethodField(
        help_text="where a failed job failed: for the dataset's admins only")

    class Meta:
        model = Job
        fields = ["id", "kind", "dataset", "parameters", "state", "progress_done",
                  "progress_total", "fraction_done", "message", "result", "error", "traceback",
                  "cancel_requested", "step", "worker", "heartbeat_at", "attempts", "retries",
                  "created_by", "created_at", "started_at", "finished_at", "duration_s"]
        read_only_fields = fields

    def get_traceback(self, job) -> str:
        request = self.context.get("request")
        if not job.traceback or request is None or job.dataset is None:
            return ""
        admin = has_role(dataset=job.dataset, user=request.user, role=Membership.Role.ADMIN)
        return job.traceback if admin else ""


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
        return Response(self.get_serializer(job).data, status=status.HTTP_201_CREATED)

    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        job = self.get_object()
        self._require_admin(job.dataset)
        return Response(self.get_serializer(job_cancel(job=job)).data)

    @extend_schema(request=None, responses=inline_serializer("JobResumed", {
        "job": JobSerializer(), "blocks_sent": serializers.IntegerField()}))
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        """Run a job again from where it stopped (after a crash, failure or cancel): a
        block-wise job's unfinished blocks are sent again (done blocks are not run again);
        any other job runs again from the start. Refused while a live worker runs it."""
        job = self.get_object()
        self._require_admin(job.dataset)
        try:
            sent = job_resume(job=job)
        except JobParameterError as exc:
            raise serializers.ValidationError(exc.errors) from exc
        except ValueError as exc:
            raise serializers.ValidationError({"job": [str(exc)]}) from exc
        job.refresh_from_db()
        return Response({"job": self.get_serializer(job).data, "blocks_sent": sent})

    @extend_schema(responses=inline_serializer("JobBlocks", {
        "counts": serializers.DictField(child=serializers.IntegerField()),
        "stale": serializers.ListField(child=serializers.DictField()),
        "failed": serializers.ListField(child=serializers.DictField())}))
    @action(detail=True, methods=["get"])
    def blocks(self, request, pk=None):
        """Blocks of a block-wise job by state; running blocks whose worker stopped beating
        (``stale``: sent again automatically) and failed ones with their errors."""
        job = self.get_object()
        counts = dict.fromkeys(JobBlock.State.values, 0)
        counts.update(job.blocks.values_list("state").annotate(n=Count("id")).order_by())
        fields = ["index", "box", "worker", "attempts", "started_at", "heartbeat_at", "error"]
        return Response({
            "counts": counts,
            "stale": list(stale_blocks(job_id=job.pk).values(*fields)),
            "failed": list(job.blocks.filter(state=JobBlock.State.FAILED).values(*fields)),
        })

    def _require_admin(self, dataset: Dataset):
        if not has_role(dataset=dataset, user=self.request.user, role=Membership.Role.ADMIN):
            raise PermissionDenied(f"running jobs on dataset '{dataset.name}' needs the admin role")


class JobDownloadView(APIView):
    """The file an export job wrote (synapse tables, skeletons), once it is done; streamed.

    Anyone who can see the job's dataset may download it (its rows are readable over the API
    to the same people).
    """

    permission_classes = [permissions.AllowAny]  # reading: visibility is checked per dataset

    @extend_schema(responses={200: OpenApiResponse(OpenApiTypes.BINARY,
                                                   description="CSV, Parquet or zip file")})
    def get(self, request, pk):
        job = get_object_or_404(Job.objects.filter(dataset__in=datasets_visible_to(request.user)),
                                pk=pk)
        if not is_export(job.kind):
            raise NotFound(f"job {job.pk} is a {job.kind} job; only exports have a download")
        if job.state != Job.State.DONE:
            raise NotFound(f"job {job.pk} is {job.state}; its file is there once it is done")
        path = export_file(job)
        if path is None:
            raise NotFound(f"the file of job {job.pk} is gone")
        return FileResponse(open(path, "rb"), as_attachment=True, filename=path.name)
