"""Parsing of query parameters into clear 400 errors."""

from rest_framework import serializers


def int_param(name: str, value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise serializers.ValidationError({name: f"'{value}' is not an integer"}) from None
