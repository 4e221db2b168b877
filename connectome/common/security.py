"""Content-Security-Policy on every response.

Django 5.2 has no CSP of its own; this middleware is the project's (a few lines, no extra
dependency, and a per-view addition for the embedded viewer). The policy is
``settings.CSP_POLICY`` (directive -> sources). On top of it:

- ``frame-ancestors`` follows the response's ``X-Frame-Options`` (``DENY`` -> ``'none'``,
  ``SAMEORIGIN`` -> ``'self'``), so the viewer client, which says SAMEORIGIN, can be framed by
  the project's pages and nothing else can;
- a view adds sources for its own responses with :func:`csp_update` (the Neuroglancer client
  needs WebAssembly and inline styles, the project's pages do not);
- a template that needs an inline script or style element writes
  ``nonce="{{ request.csp_nonce }}"``; the nonce is made, and named in the policy, only on
  responses that used it;
- the browsable API (:class:`BrowsableAPIRenderer`) allows style attributes: REST framework's
  templates are full of them (its script and style elements are handled in
  ``frontend/templates/rest_framework/``);
- ``CSP_REPORT_ONLY`` sends the policy as ``Content-Security-Policy-Report-Only`` (browsers
  report violations but block nothing), ``CSP_REPORT_URI`` adds ``report-uri``.

A response that already has a policy header keeps it.
"""

import secrets
from functools import cache, wraps

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from rest_framework import renderers

HEADER = "Content-Security-Policy"
REPORT_ONLY_HEADER = "Content-Security-Policy-Report-Only"
_FRAME_ANCESTORS = {"DENY": "'none'", "SAMEORIGIN": "'self'"}


def policy_header(directives: dict[str, list[str]]) -> str:
    """``{"default-src": ["'self'"], ...}`` -> ``"default-src 'self'; ..."``."""
    return "; ".join(" ".join([name, *sources]) for name, sources in directives.items())


def csp_update(**directives):
    """View decorator: add sources to directives of the policy for this view's responses.

    Directive names with ``_`` for ``-``: ``@csp_update(script_src=["'wasm-unsafe-eval'"])``.
    """
    extra = tuple((name.replace("_", "-"), tuple(sources)) for name, sources in directives.items())

    def decorator(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            response = view(request, *args, **kwargs)
            response.csp_update = extra
            return response

        return wrapped

    return decorator


class _Nonce:
    """A per-request nonce, made when a template first writes it."""

    __slots__ = ("value",)

    def __init__(self):
        self.value = None

    def __str__(self):
        if self.value is None:
            self.value = secrets.token_urlsafe(18)
        return self.value

    __html__ = __str__  # already safe in templates: URL-safe base64


def directives(frame_option: str = "DENY", update=(), nonce: str | None = None) -> dict:
    """The policy for a response with this ``X-Frame-Options``, a view's additions and nonce."""
    policy = {name: list(sources) for name, sources in settings.CSP_POLICY.items()}
    for name, sources in update:
        into = policy.setdefault(name, [])
        into.extend(s for s in sources if s not in into)
    if nonce is not None:
        for name in ("script-src", "style-src"):
            sources = policy.setdefault(name, ["'self'"])
            # A nonce would make browsers ignore 'unsafe-inline' where a view allows it.
            if "'unsafe-inline'" not in sources:
                sources.append(f"'nonce-{nonce}'")
    policy["frame-ancestors"] = [_FRAME_ANCESTORS.get(frame_option, "'none'")]
    if settings.CSP_REPORT_URI:
        policy["report-uri"] = [settings.CSP_REPORT_URI]
    return policy


@cache
def _header(frame_option: str, update: tuple) -> tuple[str, str]:
    """Header name and value without a nonce: a handful of them, made once."""
    return (REPORT_ONLY_HEADER if settings.CSP_REPORT_ONLY else HEADER,
            policy_header(directives(frame_option, update)))


@receiver(setting_changed)
def _settings_changed(*, setting, **kwargs):
    if setting.startswith("CSP_"):
        _header.cache_clear()


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        nonce = request.csp_nonce = _Nonce()
        response = self.get_response(request)
        if HEADER in response or REPORT_ONLY_HEADER in response:
            return response
        frame_option = response.get("X-Frame-Options", "").upper()
        update = getattr(response, "csp_update", ())
        name, value = _header(frame_option, update)
        if nonce.value is not None:
            value = policy_header(directives(frame_option, update, nonce.value))
        response[name] = value
        return response


class BrowsableAPIRenderer(renderers.BrowsableAPIRenderer):
    """REST framework's HTML pages of the API, with ``style-src-attr 'unsafe-inline'`` on their
    responses: its templates (forms, filters, pagination) set many style attributes, which
    cannot run script. Script and style elements stay under the policy."""

    def render(self, data, accepted_media_type=None, renderer_context=None):
        response = (renderer_context or {}).get("response")
        if response is not None:
            response.csp_update = (("style-src-attr", ("'unsafe-inline'",)),)
        return super().render(data, accepted_media_type, renderer_context)
