"""The API's JSON renderer writes the bytes REST framework's renderer writes."""

import datetime
import decimal
import json
import uuid

from django.utils.translation import gettext_lazy
from rest_framework import renderers
from rest_framework.exceptions import ErrorDetail
from rest_framework.utils.serializer_helpers import ReturnDict, ReturnList

from connectome.common.renderers import JSONRenderer


def test_the_same_bytes_as_rest_frameworks_renderer():
    when = datetime.datetime(2026, 12, 7, 19, 40, 0, 123456, tzinfo=datetime.timezone.utc)
    data = ReturnDict({
        "id": 7, "segment_id": "18446744073709551615", "name": "AVAL é", "confidence": 0.1 + 0.2,
        "area": 12345.678, "big": 2**63 + 5, "none": None, "flag": True, "created_at": when,
        "day": datetime.date(2026, 12, 7), "span": datetime.timedelta(seconds=90),
        "uuid": uuid.UUID(int=12345), "price": decimal.Decimal("1.50"),
        "lazy": gettext_lazy("This field is required."),
        "errors": {"source": [ErrorDetail("not under the import roots", code="invalid")]},
        "rows": ReturnList([[1, 2.5, "x"], (3, 4)], serializer=None), 5: "int key",
    }, serializer=None)
    expected = renderers.JSONRenderer().render(data)
    assert JSONRenderer().render(data) == expected
    assert b'"created_at":"2026-12-07T19:40:00.123456Z"' in expected


def test_a_small_number_in_exponent_form_has_no_leading_zero_in_its_exponent():
    data = {"small": 1e-7, "large": 1.5e20, "tiny": 5e-324}
    ours, theirs = JSONRenderer().render(data), renderers.JSONRenderer().render(data)
    assert ours == b'{"small":1e-7,"large":1.5e+20,"tiny":5e-324}'
    assert theirs == b'{"small":1e-07,"large":1.5e+20,"tiny":5e-324}'
    assert json.loads(ours) == json.loads(theirs) == data


def test_none_is_an_empty_body_and_indent_is_rest_frameworks():
    assert JSONRenderer().render(None) == b""
    indented = JSONRenderer().render({"a": [1, 2]}, "application/json; indent=2")
    assert indented == b'{\n  "a": [\n    1,\n    2\n  ]\n}'


def test_a_nan_is_null_where_rest_framework_failed():
    assert JSONRenderer().render({"x": float("nan"), "y": float("inf")}) == b'{"x":null,"y":null}'
