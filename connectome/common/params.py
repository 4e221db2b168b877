"""Parsing of query parameters into clear 400 errors.

Views describe their query string with a serializer built from the fields below, parse it with
:func:`parse_query` (a 400 naming the parameter when it is wrong) and hand the same serializer
to drf-spectacular, so the OpenAPI schema lists what the view accepts.
"""

import copy

from rest_framework import serializers

from connectome.common.fields import UINT64_MAX

MAX_ID = 2**63 - 1


def int_param(name: str, value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise serializers.ValidationError({name: f"'{value}' is not an integer"}) from None
    if not -MAX_ID - 1 <= number <= MAX_ID:
        raise serializers.ValidationError({name: f"{value} is outside the 64-bit range"})
    return number


def parse_query(serializer_class, request) -> dict:
    """The validated query parameters of ``request``; a 400 names each wrong parameter."""
    if not request.query_params:
        # No parameters validate the same way every time (to the defaults): once per class,
        # which spares a busy endpoint building its serializer's fields on every request.
        if serializer_class not in _DEFAULTS:
            serializer = serializer_class(data={})
            serializer.is_valid(raise_exception=True)
            _DEFAULTS[serializer_class] = dict(serializer.validated_data)
        return copy.deepcopy(_DEFAULTS[serializer_class])
    serializer = serializer_class(data=request.query_params)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


_DEFAULTS: dict[type, dict] = {}


class IdField(serializers.IntegerField):
    """A database id: 1 to 2**63 - 1 (larger values would overflow the BIGINT in SQL)."""

    def __init__(self, **kwargs):
        super().__init__(min_value=1, max_value=MAX_ID, **kwargs)


class CountField(serializers.IntegerField):
    """A count threshold: 1 or more."""

    def __init__(self, **kwargs):
        super().__init__(min_value=1, max_value=MAX_ID, **kwargs)


class DatasetQuery(serializers.Serializer):
    dataset = IdField(required=False, help_text="dataset id")


class _CommaSeparatedField(serializers.CharField):
    """Values separated by commas (``1,2,3``); parsed to a list by :meth:`to_item`."""

    item_name = "value"
    max_items = 10_000

    def to_internal_value(self, data):
        if isinstance(data, (list, tuple)):
            parts = [str(item) for item in data]
        else:
            text = super().to_internal_value(data)
            parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts:
            raise serializers.ValidationError(f"give at least one {self.item_name}")
        if len(parts) > self.max_items:
            raise serializers.ValidationError(
                f"at most {self.max_items} {self.item_name}s; got {len(parts)}"
            )
        return [self.to_item(part) for part in parts]

    def to_item(self, part: str):
        return part


class IdListField(_CommaSeparatedField):
    """Database ids (cells, runs), comma-separated."""

    item_name = "id"
    _max = MAX_ID

    def to_item(self, part):
        try:
            value = int(part)
        except ValueError:
            raise serializers.ValidationError(f"'{part}' is not an integer") from None
        if not 0 < value <= self._max:
            raise serializers.ValidationError(f"{value} is not a valid id")
        return value


class SegmentIdListField(IdListField):
    """Segment ids (uint64, 0 included), comma-separated."""

    item_name = "segment id"

    def to_item(self, part):
        try:
            value = int(part)
        except ValueError:
            raise serializers.ValidationError(f"'{part}' is not an integer") from None
        if not 0 <= value <= UINT64_MAX:
            raise serializers.ValidationError(f"{value} is outside the uint64 range")
        return value


class NameListField(_CommaSeparatedField):
    """Names (cell types, methods), comma-separated; a name cannot contain a comma."""

    item_name = "name"


class ChoiceListField(_CommaSeparatedField):
    def __init__(self, *, choices, **kwargs):
        self.choices = list(choices)
        super().__init__(**kwargs)

    def to_item(self, part):
        if part not in self.choices:
            raise serializers.ValidationError(
                f"'{part}' is not one of {', '.join(self.choices)}"
            )
        return part


class BBoxField(serializers.CharField):
    """A box in nm: ``z0,y0,x0,z1,y1,x1`` (inclusive), parsed to ``(lo, hi)``."""

    def to_internal_value(self, data):
        text = super().to_internal_value(data)
        parts = [part.strip() for part in text.split(",")]
        if len(parts) != 6:
            raise serializers.ValidationError(
                f"a bounding box is six numbers z0,y0,x0,z1,y1,x1 (nm); got {len(parts)}"
            )
        try:
            values = [float(part) for part in parts]
        except ValueError:
            raise serializers.ValidationError(
                f"'{text}' has a value that is not a number") from None
        if any(v != v or v in (float("inf"), float("-inf")) for v in values):
            raise serializers.ValidationError("bounding box values must be finite numbers")
        lo, hi = values[:3], values[3:]
        if any(a > b for a, b in zip(lo, hi)):
            raise serializers.ValidationError(
                f"bounding box needs z0<=z1, y0<=y1, x0<=x1; got {text}")
        return lo, hi
