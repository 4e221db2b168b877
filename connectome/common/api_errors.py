"""JSON error bodies for every API failure: ``{"error": "...", "detail": ...}``."""

from rest_framework.views import exception_handler

from connectome.common.validators import error_text


def json_exception_handler(exc, context):
    response = exception_handler(exc, context)
    if response is None:
        return None
    detail = response.data
    if isinstance(detail, dict) and set(detail) == {"detail"}:
        message = error_text(detail["detail"])
    else:
        # Nested errors (a list field's items, a job's parameters) as plain sentences.
        message = error_text(detail)
    response.data = {"error": message, "status": response.status_code, "detail": detail}
    return response
