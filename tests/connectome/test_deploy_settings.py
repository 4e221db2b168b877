"""Deployment settings: HTTPS, secure cookies and HSTS from the environment, a strong
SECRET_KEY once DEBUG is off, `check --deploy` clean with the production compose file, and the
Content-Security-Policy header on every kind of response."""

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.http import HttpResponse
from django.test import Client

from connectome.common.security import ContentSecurityPolicyMiddleware

ROOT = Path(django_settings.BASE_DIR)
COMPOSE = ROOT / "docker" / "compose.yaml"
# Variables these tests set themselves; everything else of the environment passes through.
OWN = {"DATABASE_URL", "CELERY_BROKER_URL", "SECRET_KEY", "DEBUG", "DATA_ROOT", "ALLOWED_HOSTS",
       "IMPORT_ROOTS", "CONNECTOME_VAR_DIR", "DATABASE_PREPARED_STATEMENTS"}
SECURITY_VARIABLES = {
    "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD",
    "SECURE_SSL_REDIRECT", "SECURE_PROXY_SSL_HEADER", "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE", "SECURE_REFERRER_POLICY", "X_FRAME_OPTIONS", "CSP_REPORT_ONLY",
    "CSP_REPORT_URI",
}


def strong_key() -> str:
    return secrets.token_urlsafe(50)


def _run(args: list[str], env: dict, tmp_path) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in OWN | SECURITY_VARIABLES}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**clean, "CONNECTOME_VAR_DIR": str(tmp_path), **env})


_PRINT = ("import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', "
          "'connectome.settings'); django.setup(); from django.conf import settings as s; "
          "print(repr([s.SECURE_HSTS_SECONDS, s.SECURE_HSTS_INCLUDE_SUBDOMAINS, "
          "s.SECURE_HSTS_PRELOAD, s.SECURE_SSL_REDIRECT, s.SECURE_PROXY_SSL_HEADER, "
          "s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_REFERRER_POLICY, "
          "s.X_FRAME_OPTIONS, s.CSP_REPORT_ONLY, s.CSP_REPORT_URI]))")


def _settings(tmp_path, **env) -> subprocess.CompletedProcess:
    return _run(["-c", _PRINT], env, tmp_path)


# --- the production compose file ------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, env: dict) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` against ``env``."""
    def one(match):
        name, operator, argument = match.groups()
        given = env.get(name)
        if operator in (":-", "-"):
            return given if given else argument
        if operator in (":?", "?") and not given:
            raise AssertionError(f"compose needs {name}: {argument}")
        return given or ""

    return _VARIABLE.sub(one, str(value))


def compose_environment(service: str, env: dict) -> dict[str, str]:
    """The environment docker/compose.yaml gives ``service``, interpolated with ``env``."""
    compose = yaml.safe_load(COMPOSE.read_text())
    return {name: interpolate(value, env)
            for name, value in compose["services"][service]["environment"].items()}


def test_compose_interpolation_reads_defaults_and_requirements():
    assert interpolate("${A:-x}", {}) == "x"
    assert interpolate("${A:-x}", {"A": "y"}) == "y"
    assert interpolate("a${A}b", {"A": "1"}) == "a1b"
    with pytest.raises(AssertionError, match="compose needs SECRET_KEY: set SECRET_KEY"):
        interpolate("${SECRET_KEY:?set SECRET_KEY}", {})


def test_check_deploy_is_clean_with_the_production_compose_settings(tmp_path):
    env = compose_environment("web", {"SECRET_KEY": strong_key()})
    assert env["DEBUG"] == "0" and env["SECURE_SSL_REDIRECT"] == "1"
    result = _run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    # The workers run with the same settings.
    assert compose_environment("worker", {"SECRET_KEY": "k"}) == compose_environment(
        "web", {"SECRET_KEY": "k"})


def test_check_deploy_names_what_the_defaults_leave_off(tmp_path):
    """The same check fails without the compose file's HTTPS settings: it can tell."""
    result = _run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                  {"DEBUG": "0", "SECRET_KEY": strong_key()}, tmp_path)
    assert result.returncode != 0
    found = set(re.findall(r"security\.W\d+", result.stdout + result.stderr))
    # HSTS and the redirect need a TLS setup, so they stay off by default; the cookies follow
    # DEBUG and are secure already.
    assert found == {"security.W004", "security.W008"}, result.stdout + result.stderr


def test_compose_values_reach_the_settings(tmp_path):
    env = compose_environment("web", {"SECRET_KEY": strong_key()})
    result = _settings(tmp_path, **env)
    assert result.returncode == 0, result.stderr
    assert eval(result.stdout) == [  # noqa: S307 - our own repr of plain values
        31536000, True, True, True, ("HTTP_X_FORWARDED_PROTO", "https"), True, True,
        "same-origin", "DENY", False, ""]


# --- values and defaults --------------------------------------------------------------------

def test_a_local_checkout_works_over_http_by_default(tmp_path):
    result = _settings(tmp_path)
    assert result.returncode == 0, result.stderr
    assert eval(result.stdout) == [  # noqa: S307
        0, False, False, False, None, False, False, "same-origin", "DENY", False, ""]


def test_every_value_comes_from_the_environment(tmp_path):
    result = _settings(
        tmp_path, DEBUG="0", SECRET_KEY=strong_key(), SECURE_HSTS_SECONDS="3600",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="yes", SECURE_HSTS_PRELOAD="0", SECURE_SSL_REDIRECT="true",
        SECURE_PROXY_SSL_HEADER="X-Forwarded-Scheme", SESSION_COOKIE_SECURE="0",
        CSRF_COOKIE_SECURE="1", SECURE_REFERRER_POLICY="no-referrer", X_FRAME_OPTIONS="SAMEORIGIN",
        CSP_REPORT_ONLY="1", CSP_REPORT_URI="https://reports.example.org/csp")
    assert result.returncode == 0, result.stderr
    assert eval(result.stdout) == [  # noqa: S307
        3600, True, False, True, ("HTTP_X_FORWARDED_SCHEME", "https"), False, True,
        "no-referrer", "SAMEORIGIN", True, "https://reports.example.org/csp"]


def test_a_number_that_is_not_one_is_named(tmp_path):
    result = _settings(tmp_path, SECURE_HSTS_SECONDS="one year")
    assert result.returncode != 0
    assert "SECURE_HSTS_SECONDS must be a whole number; got 'one year'" in result.stderr


@pytest.mark.parametrize("url, flag, options", [
    ("postgres://u@db:5432/c", None, {"server_side_binding": True, "prepare_threshold": 5}),
    ("postgres://u@db:5432/c", "0", {}),
    ("", None, None),  # SQLite: its own options, no prepared statements
])
def test_prepared_statements_on_postgresql(tmp_path, url, flag, options):
    code = ("import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', "
            "'connectome.settings'); django.setup(); from django.conf import settings as s; "
            "o = s.DATABASES['default'].get('OPTIONS', {}); "
            "print(repr({k: o[k] for k in ('server_side_binding', 'prepare_threshold') "
            "if k in o} if 'timeout' not in o else None))")
    env = {"DATABASE_URL": url} if url else {}
    if flag is not None:
        env["DATABASE_PREPARED_STATEMENTS"] = flag
    result = _run(["-c", code], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert eval(result.stdout) == options  # noqa: S307


# --- SECRET_KEY -----------------------------------------------------------------------------

@pytest.mark.parametrize("key, message", [
    (None, "SECRET_KEY is the development default while DEBUG is off"),
    ("development-only-secret-key-do-not-use-in-production",
     "SECRET_KEY is the development default while DEBUG is off"),
    ("s3cr3t", "SECRET_KEY is too weak while DEBUG is off: it has 6 characters (5 different) "
               "and needs at least 50 (5 different)"),
    ("k" * 49 + "Q", "it has 50 characters (2 different)"),
    (secrets.token_hex(50)[:49], "it has 49 characters"),
])
def test_production_refuses_a_weak_secret_key(tmp_path, key, message):
    env = {"DEBUG": "0"} if key is None else {"DEBUG": "0", "SECRET_KEY": key}
    result = _settings(tmp_path, **env)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "secrets.token_urlsafe(50)" in result.stderr  # says how to make a good one
    if key is not None and key != "development-only-secret-key-do-not-use-in-production":
        assert key not in result.stderr  # the message does not give the key away


@pytest.mark.parametrize("debug, key", [("0", "aB3" * 16 + "xy"), ("1", "short")])
def test_a_good_secret_key_or_debug_starts(tmp_path, debug, key):
    assert debug == "1" or len(key) == 50
    result = _settings(tmp_path, DEBUG=debug, SECRET_KEY=key)
    assert result.returncode == 0, result.stderr


# --- the headers the running app sends ------------------------------------------------------

PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; frame-src 'self'; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")


def _policy(response) -> dict[str, str]:
    """The response's Content-Security-Policy as {directive: sources}."""
    return dict(part.split(" ", 1) for part in response["Content-Security-Policy"].split("; "))


@pytest.fixture
def https_settings(settings):
    """What the compose file sets, in this process."""
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_HSTS_PRELOAD = True
    settings.SESSION_COOKIE_SECURE = True
    settings.CSRF_COOKIE_SECURE = True
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return settings


@pytest.mark.django_db
def test_plain_http_is_redirected_and_https_gets_hsts(https_settings):
    client = Client()
    response = client.get("/healthz?x=1")
    assert response.status_code == 301
    assert response["Location"] == "https://testserver/healthz?x=1"
    assert "Strict-Transport-Security" not in response  # never over plain http
    assert response["Content-Security-Policy"] == PAGE_POLICY  # redirects carry it too

    response = client.get("/healthz", headers={"X-Forwarded-Proto": "https"})
    assert response.status_code == 200
    assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"


@pytest.mark.django_db
def test_session_and_csrf_cookies_are_secure_behind_https(https_settings):
    get_user_model().objects.create_user("lin", password="pw-for-the-test")
    client = Client()
    https = {"X-Forwarded-Proto": "https"}
    page = client.get("/api-auth/login/", headers=https)
    assert page.status_code == 200
    assert page.cookies["csrftoken"]["secure"] is True
    response = client.post("/api-auth/login/", {"username": "lin", "password": "pw-for-the-test",
                                                "next": "/"}, headers=https)
    assert response.status_code == 302, response.content[:500]
    session = response.cookies["sessionid"]
    assert session["secure"] is True and session["httponly"] is True


@pytest.mark.django_db
def test_local_cookies_work_over_http(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    get_user_model().objects.create_user("lin", password="pw-for-the-test")
    response = Client().post("/api-auth/login/", {"username": "lin",
                                                  "password": "pw-for-the-test", "next": "/"})
    assert response.status_code == 302
    assert response.cookies["sessionid"]["secure"] == ""


@pytest.mark.django_db
def test_pages_api_and_viewer_each_get_their_policy():
    client = Client()
    page = client.get("/")
    assert page.status_code == 200
    assert page["Content-Security-Policy"] == PAGE_POLICY
    api = client.get("/api/datasets/", headers={"Accept": "application/json"})
    assert api.status_code == 200 and api["Content-Security-Policy"] == PAGE_POLICY

    # The Neuroglancer client (and its workers): WebAssembly, Function(), inline styles, and
    # it may be framed by our own pages.
    viewer = client.get("/ng/v/static/")
    assert viewer.status_code == 200 and viewer["X-Frame-Options"] == "SAMEORIGIN"
    policy = _policy(viewer)
    assert policy["script-src"] == "'self' 'wasm-unsafe-eval' 'unsafe-eval'"
    assert policy["style-src"] == "'self' 'unsafe-inline'"
    assert policy["frame-ancestors"] == "'self'"
    assert policy["object-src"] == "'none'" and policy["connect-src"] == "'self'"
    worker = client.get("/ng/v/static/" + next(
        name for name in _client_files() if name.endswith(".js") and not name.startswith("main.")))
    assert worker["Content-Security-Policy"] == viewer["Content-Security-Policy"]
    viewer.close()
    worker.close()


def _client_files() -> list[str]:
    from connectome.viewer.client import client_root

    return sorted(p.name for p in client_root().iterdir())


@pytest.mark.django_db
def test_inline_elements_carry_a_fresh_nonce_that_the_policy_names():
    client = Client()
    nonces = []
    for _ in range(2):
        response = client.get("/api/", headers={"Accept": "text/html"})
        assert response.status_code == 200
        found = re.findall(r'<style nonce="([\w-]+)">', response.content.decode())
        assert len(found) == 1, response.content.decode()[:2000]
        policy = _policy(response)
        assert policy["script-src"] == f"'self' 'nonce-{found[0]}'"
        assert policy["style-src"] == f"'self' 'nonce-{found[0]}'"
        # REST framework's templates are full of style attributes: allowed on its pages only.
        assert policy["style-src-attr"] == "'unsafe-inline'"
        nonces.append(found[0])
    assert nonces[0] != nonces[1] and len(nonces[0]) >= 22

    # Redoc writes <style> elements as it runs: inline styles, and then no nonce, which would
    # make browsers ignore 'unsafe-inline'.
    redoc = client.get("/api/redoc/")
    policy = _policy(redoc)
    assert policy["style-src"] == "'self' 'unsafe-inline'"
    assert policy["script-src"].startswith("'self' 'nonce-")
    assert "fonts.googleapis.com" not in redoc.content.decode()


@pytest.mark.django_db
def test_report_only_and_report_uri(settings):
    settings.CSP_REPORT_ONLY = True
    settings.CSP_REPORT_URI = "https://reports.example.org/csp"
    response = Client().get("/")
    assert "Content-Security-Policy" not in response
    assert response["Content-Security-Policy-Report-Only"] == (
        PAGE_POLICY + "; report-uri https://reports.example.org/csp")


def test_a_policy_set_by_the_view_is_kept(rf):
    def view(request):
        response = HttpResponse()
        response["Content-Security-Policy"] = "default-src 'none'"
        return response

    response = ContentSecurityPolicyMiddleware(view)(rf.get("/"))
    assert response["Content-Security-Policy"] == "default-src 'none'"
    plain = ContentSecurityPolicyMiddleware(lambda request: HttpResponse())(rf.get("/"))
    assert plain["Content-Security-Policy"] == PAGE_POLICY
