"""Reviews over the API: viewers read them, reviewers (and admins) post verdicts (with a note
and tags) and work through a dataset's review queue (next, skip, undo); viewers read its
summary. Dataset admins hand review batches to reviewers."""

from django.contrib.auth import get_user_model
from django.db.models import F
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from connectome.cells.models import Cell
from connectome.common.pagination import NewestFirstPagination
from connectome.common.params import (
    MAX_ID,
    BBoxField,
    ChoiceListField,
    DatasetQuery,
    IdField,
    IdListField,
    NameListField,
    parse_query,
)
from connectome.common.validators import NameField
from connectome.datasets.models import Dataset, Membership
from connectome.datasets.permissions import DatasetRolePermission
from connectome.datasets.selectors import datasets_visible_to, has_role
from connectome.review.models import QueueOrder, Review, ReviewBatch, ReviewClaim
from connectome.review.selectors import (
    batch_progress,
    precision_estimate,
    review_batches,
    review_progress,
    review_tag_choices,
    reviewer_batch_of,
)
from connectome.review.services import (
    MAX_BATCH_SYNAPSES,
    MAX_TAGS,
    NOTE_MAX_LENGTH,
    ORDERS,
    VERDICTS,
    BatchInputError,
    review_batch_create,
    review_create,
    review_next,
    review_note_clean,
    review_skip,
    review_tags_clean,
    review_undo_last,
    review_upcoming,
)
from connectome.synapses.apis import SynapseSerializer
from connectome.synapses.models import Synapse, SynapseRun
from connectome.synapses.selectors import ALL_RUNS, default_run
from detection.errors import InputError

#: The most synapses ``next`` lists ahead of the claimed one.
MAX_LOOKAHEAD = 10


class ReviewSerializer(serializers.ModelSerializer):
    dataset = serializers.IntegerField(source="synapse.dataset_id", read_only=True)
    reviewer = serializers.CharField(source="reviewer.username", read_only=True, allow_null=True)
    synapse_review_state = serializers.CharField(source="synapse.review_state", read_only=True)
    tags = serializers.SlugRelatedField(many=True, read_only=True, slug_field="name")

    class Meta:
        model = Review
        fields = ["id", "synapse", "dataset", "reviewer", "verdict", "corrected_pre",
                  "corrected_post", "note", "tags", "order", "created_at",
                  "synapse_review_state"]
        read_only_fields = ["order"]


class ReviewCreateSerializer(serializers.Serializer):
    synapse = IdField()
    verdict = serializers.ChoiceField(choices=VERDICTS)
    note = serializers.CharField(
        allow_blank=True, required=False, default="", max_length=NOTE_MAX_LENGTH,
        help_text=f"free text, at most {NOTE_MAX_LENGTH} printable characters (line breaks allowed)")
    tags = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, default=list,
        max_length=MAX_TAGS,
        help_text="tags: lowercase letters, digits, '-' and '_' (the dataset's tag set when it "
                  "has one)")
    corrected_pre = IdField(required=False, allow_null=True,
                                             help_text="cell id of the right presynaptic cell")
    corrected_post = serializers.ListField(child=IdField(),
                                           required=False, default=list,
                                           help_text="cell ids of the right postsynaptic cells")

    def validate_note(self, value):
        try:
            return review_note_clean(value)
        except InputError as error:
            raise serializers.ValidationError(str(error)) from None


class ReviewQuery(DatasetQuery):
    synapse = IdListField(required=False, help_text="synapse ids, comma-separated")
    verdict = ChoiceListField(choices=VERDICTS, required=False)
    tag = NameListField(required=False, help_text="reviews with any of these tags, comma-separated")


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
        ).select_related("synapse", "reviewer").prefetch_related("corrected_post", "tags")
        if self.action == "list":
            query = parse_query(ReviewQuery, self.request)
            if "dataset" in query:
                reviews = reviews.filter(synapse__dataset_id=query["dataset"])
            if "synapse" in query:
                reviews = reviews.filter(synapse_id__in=query["synapse"])
            if "verdict" in query:
                reviews = reviews.filter(verdict__in=query["verdict"])
            if "tag" in query:
                tags = [tag.lower() for tag in query["tag"]]
                reviews = reviews.filter(pk__in=Review.objects.filter(tags__name__in=tags)
                                         .values("pk"))
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
        try:
            tags = review_tags_clean(dataset=synapse.dataset, tags=data["tags"])
        except InputError as error:
            raise serializers.ValidationError({"tags": [str(error)]}) from None
        review = review_create(
            synapse=synapse, reviewer=request.user, verdict=data["verdict"], note=data["note"],
            tags=tags, corrected_pre=corrected_pre, corrected_post=corrected_post,
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


class BatchProgressSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    reviewed = serializers.IntegerField(help_text="synapses of the batch with a verdict")
    total = serializers.IntegerField()


class ReviewQueueItemSerializer(serializers.Serializer):
    synapse = SynapseSerializer(allow_null=True)
    claim_expires_at = serializers.DateTimeField(allow_null=True)
    progress = ReviewProgressSerializer()
    batch = BatchProgressSerializer(
        allow_null=True, help_text="your batch the synapse is in (the one asked for when "
                                   "given), with its progress; null when none")
    upcoming = SynapseSerializer(
        many=True, required=False,
        help_text="with `lookahead`: the synapses that follow in your queue, not claimed")


class ReviewUndoneSerializer(ReviewQueueItemSerializer):
    undone = serializers.ChoiceField(choices=["verdict", "skip"], allow_null=True,
                                     help_text="what was taken back; null when nothing was")


class ReviewSkippedSerializer(serializers.Serializer):
    skipped = serializers.IntegerField()
    progress = ReviewProgressSerializer()


class ReviewTagChoicesSerializer(serializers.Serializer):
    tag_set = serializers.BooleanField(help_text="the dataset has a tag set: only its tags")
    tags = serializers.ListField(child=serializers.CharField(),
                                 help_text="the tag set, or the free tags most used")


class ReviewSummarySerializer(serializers.Serializer):
    progress = ReviewProgressSerializer()
    precision = ReviewPrecisionSerializer()
    tags = ReviewTagChoicesSerializer()


@extend_schema_field({"oneOf": [{"type": "integer", "minimum": 1, "maximum": MAX_ID},
                                 {"type": "string", "enum": [ALL_RUNS]}]})
class ReviewRunField(IdField):
    """A synapse run id, or ``all`` (every run of the dataset); absent or null: the dataset's
    default run, the one its pages show (``docs/api.md``, *Which run is counted*)."""

    def __init__(self, **kwargs):
        super().__init__(required=False, allow_null=True,
                         help_text="synapse run id, or `all` for every run; the dataset's "
                                   "default run when absent",
                         **kwargs)

    def run_validation(self, data=serializers.empty):
        # Before the integer's own parsing and its range validators.
        if isinstance(data, str) and data.strip().lower() == ALL_RUNS:
            return ALL_RUNS
        return super().run_validation(data)


class ReviewNextBody(serializers.Serializer):
    run = ReviewRunField()
    order = serializers.ChoiceField(choices=ORDERS, default=QueueOrder.CONFIDENCE)
    seed = serializers.IntegerField(min_value=0, max_value=MAX_ID, default=0,
                                    help_text="random order: the same seed, the same sequence")
    batch = IdField(required=False, allow_null=True,
                    help_text="one of your batches: only its synapses, whatever their run "
                              "(progress stays of run); by default your batches come first")
    lookahead = serializers.IntegerField(
        min_value=0, max_value=MAX_LOOKAHEAD, default=0,
        help_text="also list this many synapses that follow in the queue (`upcoming`), "
                  "unclaimed, so a page can load them ahead")


class ReviewUndoBody(serializers.Serializer):
    run = ReviewRunField()
    batch = IdField(required=False, allow_null=True,
                    help_text="the batch the page shows (its progress comes back)")


class ReviewSkipBody(serializers.Serializer):
    synapse = IdField()


class ReviewSummaryQuery(serializers.Serializer):
    run = ReviewRunField()
    confidence = serializers.FloatField(min_value=0.5, max_value=0.999, default=0.95,
                                        help_text="confidence level of the intervals")


def _dataset_run(dataset: Dataset, run_id: int) -> SynapseRun:
    """The dataset's run ``run_id``; a 400 naming ``run`` when it has none."""
    run = SynapseRun.objects.filter(dataset=dataset, pk=run_id).first()
    if run is None:
        raise serializers.ValidationError(
            {"run": f"dataset '{dataset.name}' has no synapse run {run_id}"})
    return run


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
        """The run the queue serves and counts: None (every run) for ``all``, the dataset's
        default run when no run is given."""
        if run_id == ALL_RUNS:
            return None
        if run_id is None:
            return default_run(dataset=dataset)
        return _dataset_run(dataset, run_id)

    @staticmethod
    def batch(dataset: Dataset, reviewer, batch_id) -> ReviewBatch | None:
        if batch_id is None:
            return None
        batch = ReviewBatch.objects.filter(dataset=dataset, reviewer=reviewer,
                                           pk=batch_id).first()
        if batch is None:
            raise serializers.ValidationError(
                {"batch": f"batch {batch_id} is not one of your batches in dataset "
                          f"'{dataset.name}'"})
        return batch

    @staticmethod
    def item(dataset: Dataset, reviewer, synapse, run, batch=None, upcoming=None,
             **extra) -> Response:
        claim = None
        if synapse is not None:
            synapse = _with_segments(Synapse.objects.filter(pk=synapse.pk)).get()
            claim = ReviewClaim.objects.filter(synapse=synapse, reviewer=reviewer).first()
            batch = batch or reviewer_batch_of(synapse=synapse, reviewer=reviewer)
        item = {
            "synapse": synapse, "claim_expires_at": claim and claim.expires_at,
            "progress": review_progress(dataset=dataset, run=run),
            "batch": batch and batch_progress(batch), **extra,
        }
        if upcoming is not None:
            ids = [s.pk for s in upcoming]
            found = _with_segments(Synapse.objects.filter(pk__in=ids)).in_bulk()
            item["upcoming"] = [found[pk] for pk in ids if pk in found]
        serializer = ReviewUndoneSerializer if extra else ReviewQueueItemSerializer
        return Response(serializer(item).data)


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
        batch = self.batch(dataset, request.user, body.validated_data.get("batch"))
        # The progress stays of the run the page shows, even while a batch is served.
        run = self.run(dataset, body.validated_data.get("run"))
        query = {"order": body.validated_data["order"], "seed": body.validated_data["seed"],
                 "run": None if batch else run, "batch": batch}
        synapse = review_next(dataset=dataset, reviewer=request.user, **query)
        lookahead = body.validated_data["lookahead"]
        upcoming = None
        if lookahead:
            upcoming = review_upcoming(dataset=dataset, reviewer=request.user,
                                       limit=lookahead, **query)
        return self.item(dataset, request.user, synapse, run, batch, upcoming)


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
    """Take back your latest verdict or skip in the dataset, whichever came last: after a
    verdict the synapse's review state goes back to the verdict before it, after a skip the
    queue offers the synapse to you again; either way it is yours to review again.
    ``synapse`` null when you have nothing to take back. ``progress`` is of ``run`` when given
    (as the page shows it), else of the dataset."""

    @extend_schema(request=ReviewUndoBody, responses=ReviewUndoneSerializer)
    def post(self, request, pk):
        dataset = self.dataset(request, pk)
        body = ReviewUndoBody(data=request.data)
        body.is_valid(raise_exception=True)
        batch = self.batch(dataset, request.user, body.validated_data.get("batch"))
        run = self.run(dataset, body.validated_data.get("run"))
        undone = review_undo_last(dataset=dataset, reviewer=request.user)
        return self.item(dataset, request.user, undone and undone.synapse, run, batch,
                         undone=undone and undone.what)


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
            "tags": review_tag_choices(dataset=dataset),
        }).data)


# --- review batches ------------------------------------------------------------------------------

class ReviewBatchSerializer(serializers.ModelSerializer):
    reviewer = serializers.CharField(source="reviewer.username", read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True,
                                       allow_null=True, default=None)
    total = serializers.IntegerField(source="n_synapses", read_only=True)
    reviewed = serializers.IntegerField(source="n_reviewed", read_only=True)

    class Meta:
        model = ReviewBatch
        fields = ["id", "dataset", "name", "reviewer", "created_by", "selection", "total",
                  "reviewed", "created_at"]


class ReviewBatchCreateSerializer(serializers.Serializer):
    dataset = IdField()
    name = NameField()
    reviewer = serializers.CharField(max_length=150, help_text="username of the reviewer")
    run = IdField(required=False, allow_null=True,
                  help_text="with count: the run's lowest-confidence unreviewed synapses")
    count = serializers.IntegerField(required=False, allow_null=True, min_value=1,
                                     max_value=MAX_BATCH_SYNAPSES)
    bbox = BBoxField(required=False, allow_null=True,
                     help_text="z0,y0,x0,z1,y1,x1 in nm, inclusive: synapses centred in it")
    synapses = serializers.ListField(child=IdField(), required=False, allow_null=True,
                                     max_length=MAX_BATCH_SYNAPSES, help_text="synapse ids")


class ReviewBatchQuery(DatasetQuery):
    reviewer = serializers.CharField(required=False, max_length=150,
                                     help_text="username; 'me' for yours")


class ReviewBatchViewSet(mixins.CreateModelMixin, mixins.DestroyModelMixin,
                         viewsets.ReadOnlyModelViewSet):
    """Review batches: synapses a dataset admin hands to one reviewer, with their progress
    (``reviewed`` of ``total``). Viewers read them; creating and deleting one needs the admin
    role on its dataset. The reviewer's queue serves their batches first."""

    serializer_class = ReviewBatchSerializer
    permission_classes = [DatasetRolePermission]
    pagination_class = NewestFirstPagination

    def get_queryset(self):
        datasets = datasets_visible_to(self.request.user)
        if self.action != "list":
            return review_batches(datasets=datasets)
        query = parse_query(ReviewBatchQuery, self.request)
        batches = review_batches(datasets=datasets)
        if "dataset" in query:
            batches = batches.filter(dataset_id=query["dataset"])
        if "reviewer" in query:
            if query["reviewer"] == "me":
                batches = batches.filter(reviewer_id=getattr(self.request.user, "pk", None))
            else:
                batches = batches.filter(reviewer__username=query["reviewer"])
        return batches.order_by("-id")

    @extend_schema(parameters=[ReviewBatchQuery])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(request=ReviewBatchCreateSerializer, responses={201: ReviewBatchSerializer})
    def create(self, request, *args, **kwargs):
        body = ReviewBatchCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        dataset = datasets_visible_to(request.user).filter(pk=data["dataset"]).first()
        if dataset is None:
            raise NotFound(f"no dataset {data['dataset']}")
        if not has_role(dataset=dataset, user=request.user, role=Membership.Role.ADMIN):
            raise PermissionDenied(
                f"review batches of dataset '{dataset.name}' need the admin role")
        reviewer = get_user_model().objects.filter(username=data["reviewer"]).first()
        if reviewer is None:
            raise serializers.ValidationError({"reviewer": f"no user '{data['reviewer']}'"})
        run = _dataset_run(dataset, data["run"]) if data.get("run") is not None else None
        try:
            batch = review_batch_create(
                dataset=dataset, name=data["name"], reviewer=reviewer, created_by=request.user,
                run=run, count=data.get("count"), bbox=data.get("bbox"),
                synapse_ids=data.get("synapses"))
        except BatchInputError as error:
            raise serializers.ValidationError({error.field: [error.message]}) from None
        batch = review_batches(dataset=dataset).get(pk=batch.pk)
        return Response(ReviewBatchSerializer(batch).data, status=status.HTTP_201_CREATED)
