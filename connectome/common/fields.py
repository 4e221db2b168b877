"""Model fields shared by the apps."""

from django.core import validators
from django.db import models

from detection.errors import InputError

UINT64_MAX = 2**64 - 1
_INT64_WRAP = 2**64
_INT64_MAX = 2**63 - 1


def uint64_to_int64(value: int) -> int:
    """Two's-complement view of an unsigned 64-bit id, as stored in a signed BIGINT column."""
    return value - _INT64_WRAP if value > _INT64_MAX else value


def int64_to_uint64(value: int) -> int:
    return value + _INT64_WRAP if value < 0 else value


class UInt64Field(models.BigIntegerField):
    """Segment ids over the full uint64 range, stored in a signed BIGINT.

    Segmentations use every value up to 2**64 - 1; PostgreSQL and SQLite integers are signed
    64-bit, so ids above 2**63 - 1 are stored as their two's-complement negative. Equality and
    ``__in`` lookups (all that segment ids need) work unchanged; ORDER BY on this column orders
    ids >= 2**63 before the others.
    """

    description = "Unsigned 64-bit integer"
    default_validators = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.validators[:] = [
            validators.MinValueValidator(0),
            validators.MaxValueValidator(UINT64_MAX),
        ]

    def get_prep_value(self, value):
        value = models.Field.get_prep_value(self, value)
        if value is None:
            return None
        value = int(value)
        if not 0 <= value <= UINT64_MAX:
            raise InputError(f"segment id {value} is outside the uint64 range")
        return uint64_to_int64(value)

    def from_db_value(self, value, expression, connection):
        return None if value is None else int64_to_uint64(int(value))

    def to_python(self, value):
        if value is None:
            return None
        return int(value)

    def formfield(self, **kwargs):
        from django import forms

        return forms.IntegerField(min_value=0, max_value=UINT64_MAX, **kwargs)
