"""Checks shared by every app: user-given names, voxel sizes, and error texts without reprs.

Names (datasets, layers, synapse runs, cells, cell types, skeleton sources, the names in job
parameters) are shown in pages, tables, file names and logs; a control character in one
(a tab, a newline, an escape sequence, a NUL that PostgreSQL refuses to store, a right-to-left
override that reverses what follows) garbles or spoofs all of them, so :func:`validate_name`
refuses them wherever a name comes in: model fields, API serializers, job parameters and
names read from files.

Voxel sizes follow the bounds of :mod:`detection.io.sources` (finite, from 1e-6 to 1e6 nm).
"""

import math
import unicodedata

from django.core.exceptions import ValidationError
from django.utils.deconstruct import deconstructible
from rest_framework import serializers

from detection.errors import InputError
from detection.io.sources import (
    VOXEL_SIZE_MAX_NM,
    VOXEL_SIZE_MIN_NM,
    VOXEL_SIZE_RULE,
    format_number,
    format_numbers,
    voxel_size_problem,
)

# Unicode categories refused in names: control characters (C0, DEL, C1), line and paragraph
# separators, surrogates (not encodable as UTF-8) and private-use code points.
_REFUSED_CATEGORIES = {"Cc": "control character", "Zl": "line separator",
                       "Zp": "paragraph separator", "Cs": "surrogate",
                       "Co": "private-use character"}
# Format characters that change how the text around them is shown: bidirectional embeddings,
# overrides and isolates.
_REFUSED_FORMAT = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A)) | {0x200E, 0x200F,
                                                                              0x061C}


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot be a name (its first forbidden character), or None."""
    for position, char in enumerate(value):
        code = ord(char)
        category = unicodedata.category(char)
        what = _REFUSED_CATEGORIES.get(category)
        if what is None and code in _REFUSED_FORMAT:
            what = "text-direction control character"
        if what is not None:
            label = unicodedata.name(char, "")
            label = f" {label}" if label else ""
            return (f"contains a {what} (U+{code:04X}{label}) at position {position + 1}; "
                    "names must be printable text")
    return None


def validate_name(value) -> None:
    """A Django validator (models, forms): no control characters in a name."""
    if value is None:
        return
    problem = name_problem(str(value))
    if problem is not None:
        raise ValidationError(f"name {problem}", code="control_character")


def check_name(value: str, *, what: str = "name") -> str:
    """``value`` if it is a usable name, else ValueError naming ``what`` (services, readers)."""
    problem = name_problem(str(value))
    if problem is not None:
        raise InputError(f"{what} '{printable(value)}' {problem}")
    return value


def printable(value: str) -> str:
    """``value`` with every forbidden character shown as ``\\u....`` (for error messages)."""
    out = []
    for char in str(value):
        if name_problem(char) is not None:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)


class NameField(serializers.CharField):
    """A DRF name: stripped text without control characters."""

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", 200)
        super().__init__(**kwargs)
        self.validators.append(_drf_name_validator)


def _drf_name_validator(value):
    problem = name_problem(value)
    if problem is not None:
        raise serializers.ValidationError(f"name {problem}")


# --- voxel sizes -------------------------------------------------------------------------------

@deconstructible
class FiniteValidator:
    """A Django validator: a finite number (``MinValueValidator`` lets NaN through)."""

    message = "must be a finite number, not %(value)s"
    code = "not_finite"

    def __call__(self, value):
        if value is not None and not math.isfinite(float(value)):
            raise ValidationError(self.message, code=self.code,
                                  params={"value": format_number(value)})

    def __eq__(self, other):
        return isinstance(other, FiniteValidator)


def voxel_size_model_validators() -> list:
    """Validators of one voxel-size axis of a model (nm)."""
    from django.core.validators import MaxValueValidator, MinValueValidator

    return [FiniteValidator(), MinValueValidator(VOXEL_SIZE_MIN_NM),
            MaxValueValidator(VOXEL_SIZE_MAX_NM)]


class VoxelSizeSerializerField(serializers.ListField):
    """(z, y, x) nm for the API: three finite numbers from 1e-6 to 1e6 nm."""

    def __init__(self, **kwargs):
        kwargs.setdefault("help_text", "z, y, x in nm")
        super().__init__(
            child=serializers.FloatField(min_value=VOXEL_SIZE_MIN_NM, max_value=VOXEL_SIZE_MAX_NM),
            min_length=3, max_length=3, **kwargs,
        )

    def to_internal_value(self, data):
        values = super().to_internal_value(data)
        problem = voxel_size_problem(values) if len(values) == 3 else None  # else: min_length
        if problem is not None:
            raise serializers.ValidationError(
                f"voxel size {format_numbers(values)} nm is not usable ({problem}): "
                f"{VOXEL_SIZE_RULE}")
        return values


# --- error texts -------------------------------------------------------------------------------

def error_text(detail, *, field: str = "") -> str:
    """Plain sentences from DRF/Django error details, nested as they come.

    ``{"voxel_size": {0: [ErrorDetail("A valid number is required.")]}}`` becomes
    ``voxel_size[0]: A valid number is required.``: never ``ErrorDetail(string=...)``.
    """
    if isinstance(detail, dict):
        parts = []
        for key, value in detail.items():
            key = str(key)
            if key in ("non_field_errors", "__all__"):
                name = field
            elif key.isdigit() and field:
                name = f"{field}[{key}]"
            elif field:
                name = f"{field}.{key}"
            else:
                name = key
            parts.append(error_text(value, field=name))
        return "; ".join(p for p in parts if p)
    if isinstance(detail, (list, tuple)):
        if all(not isinstance(item, (dict, list, tuple)) for item in detail):
            text = " ".join(str(item) for item in detail)
            return f"{field}: {text}" if field else text
        parts = []
        for index, item in enumerate(detail):
            if isinstance(item, (dict, list, tuple)):
                name = f"{field}[{index}]" if field else f"[{index}]"
                parts.append(error_text(item, field=name))
            else:
                parts.append(f"{field}: {item}" if field else str(item))
        return "; ".join(p for p in parts if p)
    if isinstance(detail, ValidationError):
        return error_text(getattr(detail, "message_dict", None) or detail.messages, field=field)
    text = str(detail)
    return f"{field}: {text}" if field else text
