"""Synapses, runs and connectivity over the API: filtered synapse lists, the wiring matrix and
the cell-type summary."""

import json

from django.db.models import F, QuerySet
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import permissions, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from connectome.cells.models import Cell
from connectome.common.params import (
    BBoxField,
    ChoiceListField,
    CountField,
    DatasetQuery,
    IdField,
    IdListField,
    NameListField,
    SegmentIdListField,
    parse_query,
)
from connectome.datasets.models import Dataset
from connectome.datasets.permissions import DatasetRolePermission
from connectome.datasets.selectors import datasets_visible_to
from connectome.review.selectors import synapses_tagged
from connectome.synapses import connectivity
from connectome.synapses.exports import (
    wiring_csv_chunks,
    wiring_graphml_chunks,
    wiring_parquet_chunks,
)
from connectome.synapses.models import Synapse, SynapseRun
from connectome.synapses.selectors import ALL_RUNS, selected_runs
from connectome.synapses.table_exports import (
    DOWNLOAD_FORMATS,
    synapse_table_chunks,
    synapses_without_position,
)
from connectome.synapses.wiring import ALL_KINDS, GROUPINGS, KINDS, wiring_matrix

#: Wiring matrices with more pairs than this are streamed, not built as one response body.
STREAM_PAIRS = 5_000
#: Streamed downloads of the wiring matrix: (chunks, content type, file extension).
WIRING_OUTPUTS = {
    "json": None,
    "csv": (wiring_csv_chunks, "text/csv", "csv"),
    "parquet": (wiring_parquet_chunks, "application/vnd.apache.parquet", "parquet"),
    "graphml": (wiring_graphml_chunks, "application/graphml+xml", "graphml"),
}


class SynapseSerializer(serializers.ModelSerializer):
    pre_segment_id = serializers.CharField(read_only=True, allow_null=True,
                                           help_text="uint64, as a string")
    post_segment_id = serializers.CharField(read_only=True, allow_null=True,
                                            help_text="uint64, as a string")

    class Meta:
        model = Synapse
        fields = ["id", "dataset", "run", "kind", "pre", "post", "pre_segment_id",
                  "post_segment_id", "site_id", "post_site_id", "external_id", "pre_z", "pre_y",
                  "pre_x", "post_z", "post_y", "post_x", "ctr_z", "ctr_y", "ctr_x",
                  "size_voxels", "size_nm3", "contact_area_nm2", "confidence", "weight", "flag",
                  "method", "review_state"]


#: SynapseSerializer's fields, in its order, as columns of ``.values()``: relations as ids.
_RELATIONS = {"dataset", "run", "pre", "post"}
_SYNAPSE_COLUMNS = [(name, f"{name}_id" if name in _RELATIONS else name)
                    for name in SynapseSerializer.Meta.fields]
_TEXT = {"pre_segment_id", "post_segment_id", "method"}  # CharField: str()
_FLOAT = {f.name for f in Synapse._meta.concrete_fields if f.get_internal_type() == "FloatField"}


def synapse_values(synapses) -> QuerySet:
    """``synapses`` (with the ``pre_segment_id``/``post_segment_id`` annotations) as the plain
    rows :func:`synapse_representation` takes."""
    return synapses.values(*(column for _, column in _SYNAPSE_COLUMNS))


def synapse_representation(rows) -> list[dict]:
    """What ``SynapseSerializer(many=True).data`` gives for the rows of
    :func:`synapse_values`, without its per-field machinery (most of the time of a page of
    synapses; a test holds the two equal): None stays None, floats are floats, ids and
    choices as stored, segment ids and the method as strings."""
    shaped = []
    for row in rows:
        item = {}
        for name, column in _SYNAPSE_COLUMNS:
            value = row[column]
            if value is not None:
                if name in _FLOAT:
                    value = float(value)
                elif name in _TEXT:
                    value = str(value)
            item[name] = value
        shaped.append(item)
    return shaped


class SynapseRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = SynapseRun
        fields = ["id", "dataset", "name", "method", "parameters", "source_path", "job",
                  "created_at"]


class RunsField(IdListField):
    """Synapse run ids, comma-separated, or ``all`` (every run, summed)."""

    def to_internal_value(self, data):
        if isinstance(data, str) and data.strip().lower() == ALL_RUNS:
            return ALL_RUNS
        return super().to_internal_value(data)


def runs_of(dataset, run) -> list[SynapseRun] | None:
    """The runs a read counts for the ``run`` parameter (:func:`selected_runs`: the default run
    when None, every run for ``all``); a run id the dataset lacks is a 400 naming ``run``.
    ``dataset``: a dataset or its id."""
    runs = selected_runs(dataset=dataset, run=run)
    if run not in (None, ALL_RUNS):
        missing = sorted(set(run) - {r.pk for r in runs})
        if missing:
            name = getattr(dataset, "name", None)
            which = f"dataset '{name}'" if name else f"dataset {getattr(dataset, 'pk', dataset)}"
            raise serializers.ValidationError(
                {"run": f"{which} has no synapse run {', '.join(map(str, missing))}"})
    return runs


DEFAULT_RUN_HELP = ("synapse run ids, comma-separated, or 'all' (every run, summed); by "
                    "default the dataset's default run: its current run, else its newest "
                    "detection, else its newest run")


class ThresholdQuery(serializers.Serializer):
    run = RunsField(required=False, help_text=DEFAULT_RUN_HELP)
    min_confidence = serializers.FloatField(
        required=False, help_text="only synapses with confidence >= this")


class SynapseQuery(ThresholdQuery):
    run = RunsField(required=False, help_text="synapse run ids, comma-separated; all runs by "
                                              "default (a list of rows, not a count)")
    dataset = IdField(required=False)
    pre = IdListField(required=False, help_text="presynaptic cell ids, comma-separated")
    post = IdListField(required=False, help_text="postsynaptic cell ids, comma-separated")
    pre_segment_id = SegmentIdListField(required=False, help_text="presynaptic segment ids "
                                                                  "(needs dataset)")
    post_segment_id = SegmentIdListField(required=False, help_text="postsynaptic segment ids "
                                                                   "(needs dataset)")
    bbox = BBoxField(required=False, help_text="z0,y0,x0,z1,y1,x1 in nm, inclusive, on the "
                                               "synapse centre (needs dataset)")
    method = NameListField(required=False, help_text="run methods, comma-separated")
    review_state = ChoiceListField(choices=Synapse.ReviewState.values, required=False,
                                   help_text="review states, comma-separated")
    tag = NameListField(required=False, help_text="synapses with a review tagged with any of "
                                                  "these tags, comma-separated")
    kind = ChoiceListField(choices=list(KINDS), required=False,
                           help_text="synapse kinds (chemical, electrical), comma-separated")

    def validate(self, attrs):
        needs = [name for name in ("pre_segment_id", "post_segment_id", "bbox") if name in attrs]
        if needs and "dataset" not in attrs:
            raise serializers.ValidationError({needs[0]: "this filter needs a dataset"})
        return attrs


class BetweenQuery(ThresholdQuery):
    a = IdField(help_text="cell id")
    b = IdField(help_text="cell id")
    direction = serializers.ChoiceField(choices=["both", "a_to_b"], default="both")
    review_state = ChoiceListField(choices=Synapse.ReviewState.values, required=False)
    kind = ChoiceListField(choices=list(KINDS), required=False,
                           help_text="synapse kinds (chemical, electrical), comma-separated")


def filtered_synapses(request, query: dict):
    """The visible synapses narrowed by a validated :class:`SynapseQuery`."""
    synapses = Synapse.objects.filter(dataset__in=datasets_visible_to(request.user))
    dataset = None
    if "dataset" in query:
        dataset = get_object_or_404(datasets_visible_to(request.user), pk=query["dataset"])
        synapses = synapses.filter(dataset=dataset)
    if "tag" in query:
        synapses = synapses.filter(pk__in=synapses_tagged(tags=query["tag"]))
    return connectivity.synapses_filtered(
        synapses=synapses, dataset=dataset, pre=query.get("pre"), post=query.get("post"),
        pre_segment_ids=query.get("pre_segment_id"),
        post_segment_ids=query.get("post_segment_id"), bbox=query.get("bbox"),
        min_confidence=query.get("min_confidence"),
        runs=None if query.get("run") == ALL_RUNS else query.get("run"),
        methods=query.get("method"), review_states=query.get("review_state"),
        kinds=query.get("kind"),
    )


def _with_segment_ids(synapses):
    return synapses.annotate(pre_segment_id=F("pre__segment_id"),
                             post_segment_id=F("post__segment_id"))


class SynapseViewSet(viewsets.ReadOnlyModelViewSet):
    """Synapses of the datasets you can see, filtered; keyset (cursor) pages in id order."""

    serializer_class = SynapseSerializer
    permission_classes = [DatasetRolePermission]

    def get_queryset(self):
        if self.action == "list":
            synapses = filtered_synapses(self.request, parse_query(SynapseQuery, self.request))
        else:
            synapses = Synapse.objects.filter(dataset__in=datasets_visible_to(self.request.user))
        return _with_segment_ids(synapses).order_by("id")

    @extend_schema(parameters=[SynapseQuery])
    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(synapse_values(self.get_queryset()))
        return self.get_paginated_response(synapse_representation(page))

    @extend_schema(parameters=[BetweenQuery], responses=SynapseSerializer(many=True))
    @action(detail=False, methods=["get"])
    def between(self, request):
        """The synapses between two cells of one dataset: a onto b, and b onto a unless
        ``direction=a_to_b``; of the dataset's default run unless ``run`` says otherwise."""
        query = parse_query(BetweenQuery, request)
        visible = Cell.objects.filter(dataset__in=datasets_visible_to(request.user))
        a = get_object_or_404(visible, pk=query["a"])
        b = get_object_or_404(visible, pk=query["b"])
        if a.dataset_id != b.dataset_id:
            raise serializers.ValidationError({"b": "cells a and b are in different datasets"})
        synapses = connectivity.synapses_filtered(
            synapses=connectivity.synapses_between(
                a=a, b=b, both_directions=query["direction"] == "both"),
            min_confidence=query.get("min_confidence"),
            runs=runs_of(a.dataset_id, query.get("run")),
            review_states=query.get("review_state"), kinds=query.get("kind"),
        )
        page = self.paginate_queryset(synapse_values(_with_segment_ids(synapses).order_by("id")))
        return self.get_paginated_response(synapse_representation(page))


class SynapseRunViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = SynapseRunSerializer
    permission_classes = [DatasetRolePermission]

    def get_queryset(self):
        queryset = SynapseRun.objects.filter(dataset__in=datasets_visible_to(self.request.user))
        if self.action == "list":
            query = parse_query(DatasetQuery, self.request)
            if "dataset" in query:
                queryset = queryset.filter(dataset_id=query["dataset"])
        return queryset.order_by("id")

    @extend_schema(parameters=[DatasetQuery])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)


class WiringQuery(ThresholdQuery):
    cells = IdListField(required=False, help_text="cell ids: both partners among them")
    segment_ids = SegmentIdListField(required=False, help_text="segment ids: both partners "
                                                               "among them")
    cell_types = NameListField(required=False, help_text="cell types: both partners of one "
                                                         "of these types")
    group_by = serializers.ChoiceField(choices=list(GROUPINGS), default="cell")
    min_count = CountField(default=1, help_text="drop pairs with fewer synapses")
    kind = serializers.ChoiceField(
        choices=[*KINDS, ALL_KINDS], default=Synapse.Kind.CHEMICAL.value,
        help_text="chemical (directed pairs), electrical (unordered pairs, each once) or all "
                  "(both, each row saying its kind)")
    output = serializers.ChoiceField(choices=list(WIRING_OUTPUTS), default="json",
                                     help_text="json, or a streamed download: csv, parquet, "
                                               "graphml")

    def validate(self, attrs):
        given = [name for name in ("cells", "segment_ids", "cell_types") if name in attrs]
        if len(given) > 1:
            raise serializers.ValidationError(
                {given[1]: f"give one of cells, segment_ids, cell_types; got {', '.join(given)}"})
        return attrs


class WiringRowSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=list(KINDS))
    pre_cell = serializers.IntegerField(required=False)
    post_cell = serializers.IntegerField(required=False)
    pre_segment_id = serializers.CharField(required=False, help_text="uint64, as a string")
    post_segment_id = serializers.CharField(required=False, help_text="uint64, as a string")
    pre_name = serializers.CharField(required=False)
    post_name = serializers.CharField(required=False)
    pre_type = serializers.CharField()
    post_type = serializers.CharField()
    synapses = serializers.IntegerField()
    contact_area_nm2 = serializers.FloatField(allow_null=True)
    weight = serializers.FloatField(allow_null=True)
    mean_confidence = serializers.FloatField(allow_null=True)


class WiringSerializer(serializers.Serializer):
    dataset = serializers.IntegerField()
    runs = serializers.JSONField(help_text="the run ids counted, or 'all'")
    group_by = serializers.CharField()
    kind = serializers.CharField()
    pairs = serializers.IntegerField()
    synapses = serializers.IntegerField()
    chemical_synapses = serializers.IntegerField()
    electrical_synapses = serializers.IntegerField()
    rows = WiringRowSerializer(many=True)


def _wiring_row(pair, group_by: str) -> dict:
    row = {"kind": pair.kind}
    if group_by == "cell":
        row |= {"pre_cell": pair.pre_cell_id, "post_cell": pair.post_cell_id,
               "pre_segment_id": str(pair.pre_segment_id),
               "post_segment_id": str(pair.post_segment_id),
               "pre_name": pair.pre_name, "post_name": pair.post_name}
    row.update(pre_type=pair.pre_type, post_type=pair.post_type, synapses=pair.synapses,
               contact_area_nm2=pair.contact_area_nm2, weight=pair.weight,
               mean_confidence=pair.mean_confidence)
    return row


def _stream_json(head: dict, matrix, chunk: int = 2_000):
    yield json.dumps(head)[:-1] + ', "rows": ['
    for start in range(0, len(matrix.pairs), chunk):
        rows = [_wiring_row(pair, matrix.group_by) for pair in matrix.pairs[start:start + chunk]]
        yield ("," if start else "") + json.dumps(rows)[1:-1]
    yield "]}"


def visible_dataset(request, pk) -> Dataset:
    return get_object_or_404(datasets_visible_to(request.user), pk=pk)


def _cells_of(dataset: Dataset, query: dict):
    """The cell selection of a :class:`WiringQuery`: None (all cells) or a subquery of cell
    ids; unknown cells or types are a 404 that names them.

    A subquery rather than a list of ids: PostgreSQL then joins the synapses to the selected
    cells (an index-only scan per cell on the covering indexes) instead of intersecting two
    bitmaps of 100,000s of synapses and reading their heap pages.
    """
    cells = Cell.objects.filter(dataset=dataset)
    if "cells" in query:
        wanted, column, what = set(query["cells"]), "pk", "cell ids"
    elif "segment_ids" in query:
        wanted, column, what = set(query["segment_ids"]), "segment_id", "segment ids"
    elif "cell_types" in query:
        wanted, column, what = set(query["cell_types"]), "cell_type", "cell types"
    else:
        return None
    cells = cells.filter(**{f"{column}__in": wanted})
    found = set(cells.values_list(column, flat=True).distinct().order_by())
    _require_all(what, wanted - found, dataset)
    return cells.values("pk")


def _require_all(what: str, missing: set, dataset: Dataset):
    if missing:
        shown = sorted(missing, key=str)[:10]
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        raise NotFound(f"dataset '{dataset.name}' has no {what} {', '.join(map(str, shown))}{more}")


class WiringMatrixView(APIView):
    """The wiring matrix of a dataset, among given cells or cell types, as JSON or CSV.

    GET takes the selection in the query string; POST takes the same fields as a JSON body
    (for thousands of cells). Large matrices are streamed.
    """

    permission_classes = [permissions.AllowAny]  # reading: visibility is checked per dataset

    @extend_schema(parameters=[WiringQuery], responses={
        200: OpenApiResponse(WiringSerializer, description="JSON, or CSV with output=csv")})
    def get(self, request, pk):
        return self._matrix(request, pk, parse_query(WiringQuery, request))

    @extend_schema(request=WiringQuery, responses={
        200: OpenApiResponse(WiringSerializer, description="JSON, or CSV with output=csv")})
    def post(self, request, pk):
        body = WiringQuery(data=request.data)
        body.is_valid(raise_exception=True)
        return self._matrix(request, pk, body.validated_data)

    def _matrix(self, request, pk, query):
        dataset = visible_dataset(request, pk)
        runs = runs_of(dataset, query.get("run"))
        matrix = wiring_matrix(
            dataset=dataset, runs=runs, min_confidence=query.get("min_confidence"),
            min_count=query["min_count"], cells=_cells_of(dataset, query),
            group_by=query["group_by"], kind=query["kind"],
        )
        if query["output"] != "json":
            chunks, content_type, extension = WIRING_OUTPUTS[query["output"]]
            return download(chunks(matrix), content_type, f"wiring-{dataset.pk}-"
                            f"{_runs_label(runs)}-{matrix.kind}-{matrix.group_by}.{extension}")
        head = {"dataset": dataset.pk,
                "runs": ALL_RUNS if runs is None else [run.pk for run in runs],
                "group_by": matrix.group_by, "kind": matrix.kind, "pairs": len(matrix),
                "synapses": matrix.synapses,
                "chemical_synapses": matrix.synapses_of(Synapse.Kind.CHEMICAL),
                "electrical_synapses": matrix.synapses_of(Synapse.Kind.ELECTRICAL)}
        if len(matrix) > STREAM_PAIRS:
            return StreamingHttpResponse(_stream_json(head, matrix),
                                         content_type="application/json")
        return Response({**head, "rows": [_wiring_row(p, matrix.group_by) for p in matrix.pairs]})


def download(chunks, content_type: str, filename: str) -> StreamingHttpResponse:
    """A streamed attachment: ``chunks`` are sent as they are made."""
    response = StreamingHttpResponse(chunks, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _runs_label(runs) -> str:
    if runs is None:
        return "all-runs"
    return "run-" + "-".join(str(run.pk) for run in runs) if runs else "no-run"


class CellTypeSummarySerializer(serializers.Serializer):
    cell_type = serializers.CharField()
    cells = serializers.IntegerField()
    outgoing_synapses = serializers.IntegerField(help_text="chemical")
    incoming_synapses = serializers.IntegerField(help_text="chemical")
    outgoing_partner_types = serializers.IntegerField()
    incoming_partner_types = serializers.IntegerField()
    electrical_synapses = serializers.IntegerField(
        help_text="electrical synapses with a cell of the type on either side, each once")
    electrical_partner_types = serializers.IntegerField()


class CellTypeSummaryView(APIView):
    """Per cell type of a dataset: cells, counted synapses out and in, partner types."""

    permission_classes = [permissions.AllowAny]  # reading: visibility is checked per dataset

    @extend_schema(parameters=[ThresholdQuery],
                   responses=CellTypeSummarySerializer(many=True))
    def get(self, request, pk):
        query = parse_query(ThresholdQuery, request)
        dataset = visible_dataset(request, pk)
        rows = connectivity.cell_type_summary(
            dataset=dataset, runs=runs_of(dataset, query.get("run")),
            min_confidence=query.get("min_confidence"),
        )
        return Response(CellTypeSummarySerializer(rows, many=True).data)


class SynapseTableQuery(ThresholdQuery):
    output = serializers.ChoiceField(choices=list(DOWNLOAD_FORMATS), default="cnapse",
                                     help_text="cnapse (CSV), cave (CAVE-style CSV) or parquet")
    kind = ChoiceListField(choices=list(KINDS), required=False,
                           help_text="synapse kinds (chemical, electrical), comma-separated")
    review_state = ChoiceListField(choices=Synapse.ReviewState.values, required=False,
                                   help_text="review states, comma-separated")
    position_unit = serializers.ChoiceField(choices=["nm", "voxel"], default="nm",
                                            help_text="cave: positions in nm or voxels")


class SynapseTableView(APIView):
    """The synapse rows of a dataset (its default run unless ``run`` says otherwise; flagged
    and rejected rows included, with their review state) as a streamed download: a Cnapse
    CSV, a CAVE-style CSV or Parquet. Readers of the dataset only (404 for others)."""

    permission_classes = [permissions.AllowAny]  # reading: visibility is checked per dataset

    @extend_schema(parameters=[SynapseTableQuery], responses={
        200: OpenApiResponse(description="the table, streamed")})
    def get(self, request, pk):
        query = parse_query(SynapseTableQuery, request)
        dataset = visible_dataset(request, pk)
        runs = runs_of(dataset, query.get("run"))
        synapses = connectivity.synapses_filtered(
            synapses=Synapse.objects.filter(dataset=dataset), runs=runs,
            min_confidence=query.get("min_confidence"), kinds=query.get("kind"),
            review_states=query.get("review_state"),
        )
        table_format = query["output"]
        if table_format != "parquet":
            missing = synapses_without_position(synapses)
            if missing is not None:
                raise serializers.ValidationError({"output": (
                    f"synapse {missing} has no position, and {table_format} tables need one; "
                    "download parquet, or the wiring matrix")})
        chunks = synapse_table_chunks(synapses, table_format,
                                      position_unit=query["position_unit"],
                                      voxel_size=dataset.voxel_size)
        extension, content_type = (("parquet", "application/vnd.apache.parquet")
                                   if table_format == "parquet" else ("csv", "text/csv"))
        return download(chunks, content_type, f"synapses-{dataset.pk}-{_runs_label(runs)}-"
                                              f"{table_format}.{extension}")
