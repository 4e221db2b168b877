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
from django.contrib.auth import get_user_model
from django.core.signals import setting_changed
from django.db import connections, router
from django.db.models.expressions import Col
from django.dispatch import receiver
from django.utils.translation import gettext as _
from rest_framework import authentication, exceptions, renderers

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


class TokenAuthentication(authentication.TokenAuthentication):
    """REST framework's token authentication (``Authorization: Token <key>``), the token and
    its user read by one SQL query written once, instead of an ORM query built anew for every
    request (about 1 ms of the web server's CPU, a fifth of a partner request;
    docs/benchmarks.md). The same answers: an unknown key is "Invalid token.", an inactive
    user "User inactive or deleted."."""

    def authenticate_credentials(self, key):
        model = self.get_model()
        db = connections[router.db_for_read(model)]
        sql, token_fields, user_fields = _token_user_query(model, get_user_model())
        with db.cursor() as cursor:
            cursor.execute(sql, [key])
            row = cursor.fetchone()
        if row is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        # The values as the ORM would give them (e.g. aware datetimes from SQLite's text).
        values = [value if value is None else _convert(db, field, value)
                  for field, value in zip([*token_fields, *user_fields], row)]
        token_values, user_values = values[:len(token_fields)], values[len(token_fields):]
        user = get_user_model().from_db(db.alias, [f.attname for f in user_fields], user_values)
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        token = model.from_db(db.alias, [f.attname for f in token_fields], token_values)
        token.user = user
        return user, token


@cache
def _token_user_query(model, user_model) -> tuple[str, list, list]:
    """SELECT the token's and its user's columns for a token key; their fields."""
    token_fields, user_fields = model._meta.concrete_fields, user_model._meta.concrete_fields
    columns = ", ".join([*(f't."{f.column}"' for f in token_fields),
                         *(f'u."{f.column}"' for f in user_fields)])
    user_link = model._meta.get_field("user").column
    sql = (f'SELECT {columns} FROM "{model._meta.db_table}" t'
           f' JOIN "{user_model._meta.db_table}" u'
           f' ON u."{user_model._meta.pk.column}" = t."{user_link}"'
           f' WHERE t."{model._meta.pk.column}" = %s')
    return sql, list(token_fields), list(user_fields)


def _convert(db, field, value):
    for converter in _converters(db.alias, db.vendor, field):
        value = converter(value, Col(field.model._meta.db_table, field), db)
    return value


@cache
def _converters(alias: str, vendor: str, field) -> tuple:
    db = connections[alias]
    return (*db.ops.get_db_converters(Col(field.model._meta.db_table, field)),
            *field.get_db_converters(db))
