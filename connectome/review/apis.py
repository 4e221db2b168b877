"""Reviews over the API: viewers read them, reviewers (and admins) post verdicts."""

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.response import Response

from connectome.cells.models import Cell
from connectome.common.pagination import NewestFirstPagination
from connectome.common.params import (
    ChoiceListField, DatasetQuery, IdField, IdListField, parse_query,
)
from connectome.datasets.models import Membership
from connectome.datasets.permissions import DatasetRolePermission
from connectome.datasets.selectors import datasets_visible_to, has_role
from connectome.review.models import Review
from connectome.review.services import VERDICTS, review_create
from connectome.synapses.models import Synapse


class ReviewSerializer(serializers.ModelSerializer):
    dataset = serializers.IntegerField(source="synapse.dataset_id", read_only=True)
    reviewer = serializers.CharField(source="reviewer.username", read_only=True, allow_null=True)
    synapse_review_state = serializers.CharField(source="synapse.review_state", read_only=True)

    class Meta:
        model = Review
        fields = ["id", "synapse", "dataset", "reviewer", "verdict", "corrected_pre",
                  "corrected_post", "note", "created_at", "synapse_review_state"]


class ReviewCreateSerializer(serializers.Serializer):
    synapse = IdField()
    verdict = serializers.ChoiceField(choices=VERDICTS)
    note = serializers.CharField(allow_blank=True, required=False, default="")
    corrected_pre = IdField(required=False, allow_null=True,
                                             help_text="cell id of the right presynaptic cell")
    corrected_post = serializers.ListField(child=IdField(),
                                           required=False, default=list,
                                           help_text="cell ids of the right postsynaptic cells")


class ReviewQuery(DatasetQuery):
    synapse = IdListField(required=False, help_text="synapse ids, comma-separated")
    verdict = ChoiceListField(choices=VERDICTS, required=False)


class ReviewViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Verdicts on synapses, newest first. POST one (reviewer role): the synapse's
    ``review_state`` becomes the verdict."""

    serializer_class = ReviewSerializer
    permission_classes = [DatasetRolePermission]
    pagination_class = NewestFirstPagination
    write_role = Membership.Role.REVIEWER

    def get_queryset(self):
        reviews = Review.objects.filter(
            synapse__dataset__in=datasets_visible_to(self.request.user)
        ).select_related("synapse", "reviewer").prefetch_related("corrected_post")
        if self.action == "list":
            query = parse_query(ReviewQuery, self.request)
            if "dataset" in query:
                reviews = reviews.filter(synapse__dataset_id=query["dataset"])
            if "synapse" in query:
                reviews = reviews.filter(synapse_id__in=query["synapse"])
            if "verdict" in query:
                reviews = reviews.filter(verdict__in=query["verdict"])
        return reviews.order_by("-id")

    @extend_schema(parameters=[ReviewQuery])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(request=ReviewCreateSerializer, responses={201: ReviewSerializer})
    def create(self, request, *args, **kwargs):
        body = ReviewCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        synapse = Synapse.objects.filter(
            dataset__in=datasets_visible_to(request.user), pk=data["synapse"]
        ).select_related("dataset").first()
        if synapse is None:
            raise NotFound(f"no synapse {data['synapse']}")
        if not has_role(dataset=synapse.dataset, user=request.user, role=self.write_role):
            raise PermissionDenied(
                f"reviewing synapses of dataset '{synapse.dataset.name}' needs the reviewer role")
        cells = Cell.objects.filter(dataset=synapse.dataset)
        corrected_pre = None
        if data.get("corrected_pre") is not None:
            corrected_pre = cells.filter(pk=data["corrected_pre"]).first()
            if corrected_pre is None:
                raise serializers.ValidationError(
                    {"corrected_pre": f"no cell {data['corrected_pre']} in the synapse's dataset"})
        corrected_post = list(cells.filter(pk__in=data["corrected_post"]))
        missing = set(data["corrected_post"]) - {c.pk for c in corrected_post}
        if missing:
            raise serializers.ValidationError(
                {"corrected_post": f"no cells {sorted(missing)} in the synapse's dataset"})
        review = review_create(
            synapse=synapse, reviewer=request.user, verdict=data["verdict"], note=data["note"],
            corrected_pre=corrected_pre, corrected_post=corrected_post,
        )
        return Response(ReviewSerializer(review).data, status=status.HTTP_201_CREATED)
