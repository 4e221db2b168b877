"""JSON error bodies for every API failure: ``{"error": "...", "detail": ...}``."""

from rest_framework.views import exception_handler


def json_exception_handler(exc, context):
    response = exception_handler(exc, context)
    if response is None:
        return None
    detail = response.data
    if isinstance(detail, dict) and set(detail) == {"detail"}:
        message = str(detail["detail"])
    elif isinstance(detail, dict):
        message = "; ".join(
            f"{field}: {' '.join(map(str, errs)) if isinstance(errs, list) else errs}"
            for field, errs in detail.items()
        )
    else:
        message = " ".join(map(str, detail)) if isinstance(detail, list) else str(detail)
    response.data = {"error": message, "status": response.status_code, "detail": detail}
    return response
