"""Reviews over the API: viewers read them, reviewers (and admins) post verdicts and work
through a dataset's review queue (next, skip, undo); viewers read its summary."""

from django.db.models import F
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from connectome.cells.models import Cell
from connectome.common.pagination import NewestFirstPagination
from connectome.common.params import (
    MAX_ID,
    ChoiceListField,
    DatasetQuery,
    IdField,
    IdListField,
    parse_query,
)
from connectome.datasets.models import Dataset, Membership
from connectome.datasets.permissions import DatasetRolePermission
from connectome.datasets.selectors import datasets_visible_to, has_role
from connectome.review.models import QueueOrder, Review, ReviewClaim
from connectome.review.selectors import precision_estimate, review_progress
from connectome.review.services import (
    ORDERS,
    VERDICTS,
    review_create,
    review_next,
    review_skip,
    review_undo,
    review_upcoming,
)
from connectome.synapses.apis import SynapseSerializer
from connectome.synapses.models import Synapse, SynapseRun

#: The most synapses ``next`` lists ahead of the claimed one.
MAX_LOOKAHEAD = 10


class ReviewSerializer(serializers.ModelSerializer):
    dataset = serializers.IntegerField(source="synapse.dataset_id", read_only=True)
    reviewer = serializers.CharField(source="reviewer.username", read_only=True, allow_null=True)
    synapse_review_state = serializers.CharField(source="synapse.review_state", read_only=True)

    class Meta:
        model = Review
        fields = ["id", "synapse", "dataset", "reviewer", "verdict", "corrected_pre",
                  "corrected_post", "note", "order", "created_at", "synapse_review_state"]
        read_only_fields = ["order"]


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


# --- the review queue -------------------------------------------------------------------------

class ReviewProgressSerializer(serializers.Serializer):
    total = serializers.IntegerField(help_text="unflagged synapses with both partners")
    reviewed = serializers.IntegerField()
    unreviewed = serializers.IntegerField()
    verdicts = serializers.DictField(child=serializers.IntegerField(),
                                     help_text="synapses per latest verdict")
    claimed = serializers.IntegerField(help_text="live claims now")


class ReviewProportionSerializer(serializers.Serializer):
    n = serializers.IntegerField()
    estimate = serializers.FloatField(allow_null=True)
    low = serializers.FloatField(allow_null=True)
    high = serializers.FloatField(allow_null=True)


class ReviewPrecisionSerializer(serializers.Serializer):
    confidence = serializers.FloatField()
    decided = serializers.IntegerField(help_text="reviewed synapses, unsure left out")
    random_order = serializers.IntegerField(
        help_text="decided synapses whose verdict was given in the random queue order")
    synapse = ReviewProportionSerializer(
        help_text="(confirmed + wrong_partner + wrong_direction) / decided, Wilson score interval")
    connection = ReviewProportionSerializer(help_text="confirmed / decided, Wilson score interval")


class ReviewQueueItemSerializer(serializers.Serializer):
    synapse = SynapseSerializer(allow_null=True)
    claim_expires_at = serializers.DateTimeField(allow_null=True)
    progress = ReviewProgressSerializer()
    upcoming = SynapseSerializer(
        many=True, required=False,
        help_text="with `lookahead`: the synapses that follow in your queue, not claimed")


class ReviewSkippedSerializer(serializers.Serializer):
    skipped = serializers.IntegerField()
    progress = ReviewProgressSerializer()


class ReviewSummarySerializer(serializers.Serializer):
    progress = ReviewProgressSerializer()
    precision = ReviewPrecisionSerializer()


class ReviewRunField(IdField):
    def __init__(self, **kwargs):
        super().__init__(required=False, allow_null=True,
                         help_text="synapse run id; all runs of the dataset by default",
                         **kwargs)


class ReviewNextBody(serializers.Serializer):
    run = ReviewRunField()
    order = serializers.ChoiceField(choices=ORDERS, default=QueueOrder.CONFIDENCE)
    seed = serializers.IntegerField(min_value=0, max_value=MAX_ID, default=0,
                                    help_text="random order: the same seed, the same sequence")
    lookahead = serializers.IntegerField(
        min_value=0, max_value=MAX_LOOKAHEAD, default=0,
        help_text="also list this many synapses that follow in the queue (`upcoming`), "
                  "unclaimed, so a page can load them ahead")


class ReviewSkipBody(serializers.Serializer):
    synapse = IdField()


class ReviewSummaryQuery(serializers.Serializer):
    run = ReviewRunField()
    confidence = serializers.FloatField(min_value=0.5, max_value=0.999, default=0.95,
                                        help_text="confidence level of the intervals")


class _QueueView(APIView):
    """A dataset's review queue: visible datasets only (404), writes need the reviewer role."""

    permission_classes = [DatasetRolePermission]
    write_role = Membership.Role.REVIEWER

    def dataset(self, request, pk) -> Dataset:
        dataset = get_object_or_404(datasets_visible_to(request.user), pk=pk)
        if request.method != "GET" and not has_role(dataset=dataset, user=request.user,
                                                    role=self.write_role):
            raise PermissionDenied(
                f"the review queue of dataset '{dataset.name}' needs the reviewer role")
        return dataset

    @staticmethod
    def run(dataset: Dataset, run_id):
        if run_id is None:
            return None
        run = SynapseRun.objects.filter(dataset=dataset, pk=run_id).first()
        if run is None:
            raise serializers.ValidationError(
                {"run": f"dataset '{dataset.name}' has no synapse run {run_id}"})
        return run

    @staticmethod
    def item(dataset: Dataset, reviewer, synapse, run, upcoming=None) -> Response:
        claim = None
        if synapse is not None:
            synapse = _with_segments(Synapse.objects.filter(pk=synapse.pk)).get()
            claim = ReviewClaim.objects.filter(synapse=synapse, reviewer=reviewer).first()
        item = {
            "synapse": synapse, "claim_expires_at": claim and claim.expires_at,
            "progress": review_progress(dataset=dataset, run=run),
        }
        if upcoming is not None:
            ids = [s.pk for s in upcoming]
            found = _with_segments(Synapse.objects.filter(pk__in=ids)).in_bulk()
            item["upcoming"] = [found[pk] for pk in ids if pk in found]
        return Response(ReviewQueueItemSerializer(item).data)


def _with_segments(synapses):
    return synapses.annotate(pre_segment_id=F("pre__segment_id"),
                             post_segment_id=F("post__segment_id"))


class ReviewNextView(_QueueView):
    """The next synapse for you to review, claimed for you (others do not get it until you
    give a verdict, skip it or the claim expires); your live claim again on a reload;
    ``synapse`` null when the queue is empty."""

    @extend_schema(request=ReviewNextBody, responses=ReviewQueueItemSerializer)
    def post(self, request, pk):
        dataset = self.dataset(request, pk)
        body = ReviewNextBody(data=request.data)
        body.is_valid(raise_exception=True)
        run = self.run(dataset, body.validated_data.get("run"))
        query = {"order": body.validated_data["order"], "seed": body.validated_data["seed"]}
        synapse = review_next(dataset=dataset, reviewer=request.user, run=run, **query)
        lookahead = body.validated_data["lookahead"]
        upcoming = None
        if lookahead:
            upcoming = review_upcoming(dataset=dataset, reviewer=request.user, run=run,
                                       limit=lookahead, **query)
        return self.item(dataset, request.user, synapse, run, upcoming)


class ReviewSkipView(_QueueView):
    """Pass over a synapse: your claim is released and the queue does not offer it to you
    again (others still get it)."""

    @extend_schema(request=ReviewSkipBody, responses=ReviewSkippedSerializer)
    def post(self, request, pk):
        dataset = self.dataset(request, pk)
        body = ReviewSkipBody(data=request.data)
        body.is_valid(raise_exception=True)
        synapse = get_object_or_404(Synapse, dataset=dataset, pk=body.validated_data["synapse"])
        review_skip(synapse=synapse, reviewer=request.user)
        return Response(ReviewSkippedSerializer({
            "skipped": synapse.pk, "progress": review_progress(dataset=dataset)}).data)


class ReviewUndoView(_QueueView):
    """Take back your latest verdict in the dataset: the synapse's review state goes back to
    the verdict before it and the synapse is yours to review again; ``synapse`` null when you
    have no verdict to take back."""

    @extend_schema(request=None, responses=ReviewQueueItemSerializer)
    def post(self, request, pk):
        dataset = self.dataset(request, pk)
        synapse = review_undo(dataset=dataset, reviewer=request.user)
        return self.item(dataset, request.user, synapse, None)


class ReviewSummaryView(_QueueView):
    """Review progress and the precision the verdicts measure (viewer role)."""

    @extend_schema(parameters=[ReviewSummaryQuery], responses=ReviewSummarySerializer)
    def get(self, request, pk):
        dataset = self.dataset(request, pk)
        query = parse_query(ReviewSummaryQuery, request)
        run = self.run(dataset, query.get("run"))
        return Response(ReviewSummarySerializer({
            "progress": review_progress(dataset=dataset, run=run),
            "precision": precision_estimate(dataset=dataset, run=run,
                                            confidence=query["confidence"]),
        }).data)
