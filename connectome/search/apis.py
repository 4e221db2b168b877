"""``GET /api/search/``: datasets, cell types, cells, segments and synapses by text or id."""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import permissions, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from connectome.common.params import IdField, parse_query
from connectome.datasets.selectors import datasets_visible_to
from connectome.search.selectors import (
    DEFAULT_LIMIT,
    KINDS,
    MAX_LIMIT,
    MAX_QUERY_LENGTH,
    search,
)


class SearchQuery(serializers.Serializer):
    q = serializers.CharField(max_length=MAX_QUERY_LENGTH,
                              help_text="a whole number (segment, synapse or cell id) or text "
                                        "(dataset and cell names, cell types)")
    dataset = IdField(required=False, help_text="search this dataset only")
    limit = serializers.IntegerField(min_value=1, max_value=MAX_LIMIT, default=DEFAULT_LIMIT,
                                     help_text="results per kind")


class SearchResultSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=KINDS)
    dataset = serializers.IntegerField()
    dataset_name = serializers.CharField()
    id = serializers.IntegerField(required=False, help_text="dataset, cell or synapse id")
    name = serializers.CharField(required=False)
    segment_id = serializers.CharField(required=False, help_text="uint64, as a string")
    cell_type = serializers.CharField(required=False)
    cells = serializers.IntegerField(required=False, help_text="cells of the type")
    url = serializers.CharField(help_text="the result's page")
    api = serializers.CharField(help_text="the result's API resource")


class SearchSerializer(serializers.Serializer):
    q = serializers.CharField()
    number = serializers.CharField(allow_null=True, help_text="q as a number, when it is one")
    dataset = serializers.IntegerField(allow_null=True)
    limit = serializers.IntegerField()
    more = serializers.ListField(child=serializers.ChoiceField(choices=KINDS),
                                 help_text="kinds with more than limit results")
    results = SearchResultSerializer(many=True)


class SearchView(APIView):
    """Search the datasets you can see: a whole number finds the cells with that segment id,
    the synapse and the cell with that id; text finds datasets, cell types and cells by name
    (case-insensitive, exact matches first, then prefixes, then the rest)."""

    permission_classes = (permissions.AllowAny,)  # reading: visibility is checked per dataset

    @extend_schema(parameters=[SearchQuery], responses=SearchSerializer)
    def get(self, request):
        query = parse_query(SearchQuery, request)
        dataset = None
        if "dataset" in query:
            dataset = get_object_or_404(datasets_visible_to(request.user), pk=query["dataset"])
        found = search(user=request.user, q=query["q"], dataset=dataset, limit=query["limit"])
        return Response({"q": found.q, "number": None if found.number is None
                         else str(found.number), "dataset": found.dataset,
                         "limit": found.limit, "more": found.more, "results": found.results})
