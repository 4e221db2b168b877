"""Cells, their partners and their skeletons over the API."""

from urllib.parse import urlencode

from django.db import connection
from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, permissions, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from connectome.cells.models import Cell, Skeleton
from connectome.cells.reports import MAX_ROWS, ROW_KINDS, error_report, located_rows
from connectome.cells.services import cells_annotate
from connectome.common.fields import int64_to_uint64
from connectome.common.params import (
    MAX_ID,
    CountField,
    DatasetQuery,
    IdListField,
    SegmentIdListField,
    parse_query,
)
from connectome.common.validators import validate_name
from connectome.datasets.models import Layer, Membership
from connectome.datasets.permissions import DatasetRolePermission
from connectome.datasets.selectors import datasets_visible_to
from connectome.synapses.apis import DEFAULT_RUN_HELP, RunsField, runs_of
from connectome.synapses.connectivity import (
    CHEMICAL_DIRECTIONS,
    DIRECTIONS,
    partner_rows,
)


class CellSerializer(serializers.ModelSerializer):
    segment_id = serializers.CharField(read_only=True, help_text="uint64, as a string")
    bbox = serializers.ListField(read_only=True)

    class Meta:
        model = Cell
        fields = ["id", "dataset", "segment_id", "name", "cell_type", "layer", "size_voxels",
                  "bbox", "centroid_z", "centroid_y", "centroid_x"]
        read_only_fields = ["dataset", "layer", "size_voxels", "centroid_z", "centroid_y",
                            "centroid_x"]


class CellEditSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, allow_blank=True, required=False,
                                 validators=[validate_name])
    cell_type = serializers.CharField(max_length=100, allow_blank=True, required=False,
                                      validators=[validate_name])


class CellQuery(DatasetQuery):
    segment_id = SegmentIdListField(required=False, help_text="segment ids, comma-separated")
    cell_type = serializers.CharField(required=False)


class PartnerQuery(serializers.Serializer):
    direction = serializers.ChoiceField(
        choices=["all", "both", *DIRECTIONS], default="all",
        help_text="all: upstream, downstream (chemical) and electrical; both: upstream and "
                  "downstream")
    run = RunsField(required=False, help_text=DEFAULT_RUN_HELP)
    min_confidence = serializers.FloatField(required=False)
    min_count = CountField(default=1)


class PartnerSerializer(serializers.Serializer):
    cell = serializers.IntegerField(source="cell_id")
    segment_id = serializers.CharField(help_text="uint64, as a string")
    name = serializers.CharField()
    cell_type = serializers.CharField()
    synapses = serializers.IntegerField()
    contact_area_nm2 = serializers.FloatField(allow_null=True)
    weight = serializers.FloatField(allow_null=True)
    mean_confidence = serializers.FloatField(allow_null=True)


class PartnersSerializer(serializers.Serializer):
    cell = serializers.IntegerField()
    segment_id = serializers.CharField()
    upstream = PartnerSerializer(many=True, required=False)
    downstream = PartnerSerializer(many=True, required=False)
    electrical = PartnerSerializer(many=True, required=False)


_READABLE_CELL = """
    SELECT c.id, c.dataset_id, c.segment_id, d.is_public,
           (SELECT m.role FROM datasets_membership m
            WHERE m.dataset_id = c.dataset_id AND m.user_id = %(user)s)
    FROM cells_cell c JOIN datasets_dataset d ON d.id = c.dataset_id
    WHERE c.id = %(cell)s
"""


def readable_cell(*, pk, user) -> Cell | None:
    """Cell ``pk`` (an unsaved instance with id, dataset id and segment id) if ``user`` holds a
    role on its dataset, else None; the role as
    :func:`~connectome.datasets.selectors.dataset_role` gives it: staff are admins, members
    have theirs, public datasets make everyone a viewer."""
    try:
        pk = int(pk)
    except (TypeError, ValueError):
        return None
    if not 0 < pk <= MAX_ID:
        return None
    authenticated = bool(user and user.is_authenticated)
    with connection.cursor() as cursor:
        cursor.execute(_READABLE_CELL, {"cell": pk, "user": user.pk if authenticated else None})
        row = cursor.fetchone()
    if row is None:
        return None
    cell_id, dataset_id, segment_id, is_public, member_role = row
    role = (Membership.Role.ADMIN if authenticated and user.is_staff else
            member_role if authenticated and member_role else
            Membership.Role.VIEWER if is_public else None)
    if role is None:
        return None
    return Cell(pk=cell_id, dataset_id=dataset_id, segment_id=int64_to_uint64(segment_id))


class CellViewSet(mixins.UpdateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Cells of the datasets you can see. Dataset admins edit names and types (PATCH)."""

    serializer_class = CellSerializer
    permission_classes = [DatasetRolePermission]
    http_method_names = ["get", "patch", "head", "options"]

    def get_queryset(self):
        queryset = Cell.objects.filter(
            dataset__in=datasets_visible_to(self.request.user)
        ).select_related("dataset")
        if self.action == "list":
            query = parse_query(CellQuery, self.request)
            if "dataset" in query:
                queryset = queryset.filter(dataset_id=query["dataset"])
            if "segment_id" in query:
                queryset = queryset.filter(segment_id__in=query["segment_id"])
            if "cell_type" in query:
                queryset = queryset.filter(cell_type=query["cell_type"])
        return queryset.order_by("id")

    @extend_schema(parameters=[CellQuery])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(request=CellEditSerializer, responses=CellSerializer)
    def partial_update(self, request, *args, **kwargs):
        cell = self.get_object()
        body = CellEditSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if body.validated_data:
            cells_annotate(dataset=cell.dataset,
                           annotations={cell.segment_id: dict(body.validated_data)})
            cell.refresh_from_db()
        return Response(CellSerializer(cell).data)

    def readable_cell(self) -> Cell:
        """The cell of the URL (id, dataset id and segment id only), if the user may read its
        dataset; 404 otherwise, as for a cell that does not exist (the list never shows it).

        The check of ``get_object`` with :class:`DatasetRolePermission` (reading takes the
        viewer role: :func:`~connectome.datasets.selectors.dataset_role` is not None) in one
        short SQL query instead of three ORM ones; a test holds the two together.
        """
        cell = readable_cell(pk=self.kwargs["pk"], user=self.request.user)
        if cell is None:
            raise Http404("No Cell matches the given query.")
        return cell

    @extend_schema(parameters=[PartnerQuery], responses=PartnersSerializer)
    @action(detail=True, methods=["get"])
    def partners(self, request, pk=None):
        """Upstream (presynaptic) and downstream (postsynaptic) partner cells through chemical
        synapses, and the partners through electrical synapses (no direction), strongest
        first, with synapse count, summed contact area and weight, and mean confidence; of
        the dataset's default run unless ``run`` says otherwise."""
        cell = self.readable_cell()
        query = parse_query(PartnerQuery, request)
        directions = {"all": DIRECTIONS, "both": CHEMICAL_DIRECTIONS}.get(
            query["direction"], [query["direction"]])
        partners = partner_rows(
            cell=cell, directions=directions,
            runs=runs_of(cell.dataset_id, query.get("run")),
            min_confidence=query.get("min_confidence"), min_count=query["min_count"],
        )
        body = {"cell": cell.pk, "segment_id": str(cell.segment_id)}
        # Plain dicts from plain tuples, not PartnerSerializer: a busy cell has thousands of
        # partners.
        for direction, rows in partners.items():
            body[direction] = [
                {"cell": cell_id, "segment_id": str(segment_id), "name": name,
                 "cell_type": cell_type, "synapses": synapses, "contact_area_nm2": area,
                 "weight": weight, "mean_confidence": confidence}
                for cell_id, segment_id, name, cell_type, synapses, area, weight, confidence
                in rows
            ]
        return Response(body)


class SkeletonSerializer(serializers.ModelSerializer):
    dataset = serializers.IntegerField(source="cell.dataset_id", read_only=True)
    segment_id = serializers.CharField(source="cell.segment_id", read_only=True)

    class Meta:
        model = Skeleton
        fields = ["id", "cell", "dataset", "segment_id", "source", "n_nodes", "cable_length_nm",
                  "source_path", "parameters", "created_at"]


class SkeletonNodesSerializer(SkeletonSerializer):
    nodes = serializers.SerializerMethodField(
        help_text="columns: node_id, parent_id (-1 for roots), zyx (nm), radius (nm), "
                  "compartment (SWC type)")

    class Meta(SkeletonSerializer.Meta):
        fields = [*SkeletonSerializer.Meta.fields, "nodes"]

    def get_nodes(self, skeleton) -> dict:
        return {name: column.tolist() for name, column in skeleton.unpack().items()}


class SkeletonQuery(DatasetQuery):
    cell = IdListField(required=False, help_text="cell ids, comma-separated")


class SkeletonViewSet(viewsets.ReadOnlyModelViewSet):
    """Skeletons of the cells you can see; the detail view has the nodes."""

    permission_classes = [DatasetRolePermission]

    def get_serializer_class(self):
        return SkeletonNodesSerializer if self.action == "retrieve" else SkeletonSerializer

    def get_queryset(self):
        queryset = Skeleton.objects.filter(
            cell__dataset__in=datasets_visible_to(self.request.user)
        ).select_related("cell__dataset")
        if self.action == "list":
            queryset = queryset.defer("nodes")
            query = parse_query(SkeletonQuery, self.request)
            if "dataset" in query:
                queryset = queryset.filter(cell__dataset_id=query["dataset"])
            if "cell" in query:
                queryset = queryset.filter(cell_id__in=query["cell"])
        return queryset.order_by("id")

    @extend_schema(parameters=[SkeletonQuery])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)


# --------------------------------------------------------------------------------------------
# Error reports of segmentation layers


class ErrorReportQuery(serializers.Serializer):
    kind = serializers.ChoiceField(choices=ROW_KINDS, required=False,
                                   help_text="merge or split rows only")
    after = serializers.IntegerField(
        min_value=0, max_value=MAX_ROWS, default=0,
        help_text="rank of the last row seen: the page starts after it (follow next)")
    page_size = serializers.IntegerField(min_value=1, max_value=1000, default=100)


class ErrorRowSerializer(serializers.Serializer):
    rank = serializers.IntegerField(help_text="1 for the worst row of the report")
    kind = serializers.ChoiceField(choices=ROW_KINDS)
    cells = serializers.ListField(child=serializers.CharField(),
                                  help_text="segment ids (uint64, as strings)")
    cell_ids = serializers.ListField(child=serializers.IntegerField(allow_null=True),
                                     help_text="database ids of those cells (null: none)")
    voxels = serializers.ListField(child=serializers.IntegerField(), required=False)
    truth = serializers.ListField(child=serializers.CharField(), required=False,
                                  help_text="ground-truth ids (ground-truth reports)")
    overlap = serializers.ListField(child=serializers.IntegerField(), required=False)
    parts = serializers.IntegerField(required=False)
    bits = serializers.FloatField(required=False)
    share = serializers.FloatField(required=False)
    score = serializers.FloatField(required=False)
    confidence = serializers.FloatField(required=False)
    contact = serializers.IntegerField(required=False)
    bbox = serializers.ListField(child=serializers.ListField(child=serializers.IntegerField()),
                                 allow_null=True, help_text="[[z0, y0, x0], [z1, y1, x1]]")
    point = serializers.ListField(child=serializers.IntegerField(), allow_null=True)
    position = serializers.ListField(child=serializers.IntegerField(), allow_null=True,
                                     help_text="voxel (z, y, x) the viewer centres on")
    field_nm = serializers.FloatField()
    viewer = serializers.CharField(help_text="the viewer at this error")


class ErrorReportSerializer(serializers.Serializer):
    dataset = serializers.IntegerField()
    layer = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=["likely", "ground_truth"])
    job = serializers.IntegerField(allow_null=True)
    created_at = serializers.CharField()
    rows = serializers.IntegerField(help_text="rows stored (of the kind asked for)")
    next = serializers.CharField(allow_null=True)
    previous = serializers.CharField(allow_null=True)
    results = ErrorRowSerializer(many=True)


class LayerErrorsView(APIView):
    """The error report of a segmentation layer: likely merges and splits (from the
    agglomeration), or the merges and splits found against ground truth, worst first, each
    with the viewer at it. Pages follow ``next`` (keyset on the rank)."""

    permission_classes = [permissions.AllowAny]  # reading: visibility is checked per dataset

    @extend_schema(parameters=[ErrorReportQuery], responses=ErrorReportSerializer)
    def get(self, request, pk, layer_id):
        if not (0 < pk <= MAX_ID and 0 < layer_id <= MAX_ID):
            raise Http404("No such layer.")
        layer = (Layer.objects.select_related("dataset")
                 .filter(pk=layer_id, dataset_id=pk,
                         dataset__in=datasets_visible_to(request.user)).first())
        if layer is None:
            raise Http404(f"dataset {pk} has no layer {layer_id} you can see")
        report = error_report(layer)
        if report is None:
            raise Http404(f"layer {layer_id} has no error report")
        query = parse_query(ErrorReportQuery, request)
        ranked = [(rank, row) for rank, row in enumerate(report.rows, 1)
                  if query.get("kind") in (None, row["kind"])]
        start = next((i for i, (rank, _) in enumerate(ranked) if rank > query["after"]),
                     len(ranked))
        size = query["page_size"]
        page = ranked[start:start + size]

        def link(after: int | None) -> str | None:
            if after is None:
                return None
            params = {k: v for k, v in request.query_params.items() if k != "after"}
            if after:
                params["after"] = after
            return request.build_absolute_uri(
                f"{request.path}{'?' + urlencode(params) if params else ''}")

        following = page[-1][0] if start + size < len(ranked) else None
        earlier = None
        if start > 0:
            first = max(0, start - size)
            earlier = ranked[first - 1][0] if first else 0
        return Response({
            "dataset": layer.dataset_id, "layer": layer.pk, "kind": report.kind,
            "job": report.job, "created_at": report.created_at, "rows": len(ranked),
            "next": link(following), "previous": link(earlier),
            "results": located_rows(layer, page,
                                    base_url=request.build_absolute_uri("/").rstrip("/")),
        })
