"""Settings, all external values from the environment.

Environment variables (all optional for local development):

``DATABASE_URL``       PostgreSQL (``postgres://user@host:5432/name``, psycopg 3) in production
                       and CI; an SQLite file under ``var/`` when unset.
``CELERY_BROKER_URL``  Redis (``redis://host:6379/0``); when unset, kombu's filesystem transport
                       under ``var/broker/``: jobs still run in a separate worker process.
``SECRET_KEY``         required when ``DEBUG`` is off: at least 50 characters, 5 of them different,
                       never the development default.
``DEBUG``              ``1``/``0``; on by default for a local checkout.
``ALLOWED_HOSTS``      comma-separated host names.
``DATA_ROOT``          where chunked volumes live; ``var/data`` by default.
``IMPORT_ROOTS``       folders whose files import jobs of non-superusers may read.
``IMPORT_MAX_VOXELS``  the largest volume an import accepts (z * y * x); ``1e12`` by default.
``DATABASE_PREPARED_STATEMENTS``  ``1`` (default): on PostgreSQL, server-side parameters and
                       prepared statements.

HTTPS and browser protections (see "Security and deployment" below; all off or lenient by
default so a checkout works over plain http): ``SECURE_SSL_REDIRECT``, ``SECURE_HSTS_SECONDS``,
``SECURE_HSTS_INCLUDE_SUBDOMAINS``, ``SECURE_HSTS_PRELOAD``, ``SECURE_PROXY_SSL_HEADER``,
``SESSION_COOKIE_SECURE``, ``CSRF_COOKIE_SECURE``, ``SECURE_REFERRER_POLICY``,
``X_FRAME_OPTIONS``, ``CSP_REPORT_ONLY``, ``CSP_REPORT_URI``.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("CONNECTOME_VAR_DIR", BASE_DIR / "var"))


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number; got '{value}'") from None


DEVELOPMENT_SECRET_KEY = "development-only-secret-key-do-not-use-in-production"
# Django's own rule for a key that `check --deploy` accepts (security.W009).
SECRET_KEY_MIN_LENGTH = 50
SECRET_KEY_MIN_DIFFERENT = 5

DEBUG = _env_bool("DEBUG", True)
SECRET_KEY = os.environ.get("SECRET_KEY", DEVELOPMENT_SECRET_KEY)
if not DEBUG:
    _fix = ("set SECRET_KEY in the environment to a long random value, e.g. the output of "
            "python -c 'import secrets; print(secrets.token_urlsafe(50))'.")
    if SECRET_KEY == DEVELOPMENT_SECRET_KEY:
        raise ImproperlyConfigured(
            f"SECRET_KEY is the development default while DEBUG is off; {_fix}")
    if len(SECRET_KEY) < SECRET_KEY_MIN_LENGTH or len(set(SECRET_KEY)) < SECRET_KEY_MIN_DIFFERENT:
        raise ImproperlyConfigured(
            f"SECRET_KEY is too weak while DEBUG is off: it has {len(SECRET_KEY)} characters "
            f"({len(set(SECRET_KEY))} different) and needs at least {SECRET_KEY_MIN_LENGTH} "
            f"({SECRET_KEY_MIN_DIFFERENT} different); {_fix}")

ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
    if h.strip()
]
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]

# --- security and deployment ---------------------------------------------------------------
# Off or lenient by default so a checkout works over plain http; docker/compose.yaml turns them
# on behind its TLS-terminating proxy, where `manage.py check --deploy` is clean.
# HSTS: browsers then refuse plain http to this host for that many seconds. Start small.
SECURE_HSTS_SECONDS = _env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = _env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_SSL_REDIRECT = _env_bool("SECURE_SSL_REDIRECT", False)
# Behind a proxy that terminates TLS: the request header (e.g. X-Forwarded-Proto) by which the
# proxy says the client spoke https. Only set it when the proxy always sets or strips it.
_proxy_header = os.environ.get("SECURE_PROXY_SSL_HEADER", "").strip()
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _proxy_header.upper().replace("-", "_"), "https") if _proxy_header else None
)
# Cookies only over https once DEBUG is off, unless said otherwise.
SESSION_COOKIE_SECURE = _env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = _env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = os.environ.get("SECURE_REFERRER_POLICY", "same-origin")
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# The pages embed the viewer client from this origin (it answers SAMEORIGIN itself); the
# policy's frame-ancestors follows each response's X-Frame-Options.
X_FRAME_OPTIONS = os.environ.get("X_FRAME_OPTIONS", "DENY")
# Content-Security-Policy of every response (connectome.common.security); the embedded
# Neuroglancer client adds what it needs to its own responses (connectome.viewer.views).
CSP_REPORT_ONLY = _env_bool("CSP_REPORT_ONLY", False)
CSP_REPORT_URI = os.environ.get("CSP_REPORT_URI", "").strip()
CSP_POLICY = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:", "blob:"],
    "font-src": ["'self'", "data:"],
    "connect-src": ["'self'"],
    "worker-src": ["'self'", "blob:"],
    "frame-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": ["'self'"],
}

DATA_ROOT = Path(os.environ.get("DATA_ROOT", VAR_DIR / "data")).resolve()

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "connectome.datasets",
    "connectome.cells",
    "connectome.synapses",
    "connectome.jobs",
    "connectome.review",
    "connectome.imports",
    "connectome.pipeline",
    "connectome.detectors",
    "connectome.viewer",
    "connectome.web",
]

MIDDLEWARE = [
    # First, so that every response (https redirects, static files, errors) has the policy;
    # it reads the X-Frame-Options header that the clickjacking middleware sets further in.
    "connectome.common.security.ContentSecurityPolicyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "connectome.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "frontend" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "connectome.wsgi.application"

# --- database -------------------------------------------------------------------------------
SQLITE_PATH = VAR_DIR / "connectome.sqlite3"
DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{SQLITE_PATH}", conn_max_age=60, conn_health_checks=True
    )
}
if (DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
        and _env_bool("DATABASE_PREPARED_STATEMENTS", True)):
    # Parameters bound by the server and prepared statements: a query that a connection runs
    # a fifth time is planned once and reused (the partner query plans in about 1 ms and runs in
    # about as long; docs/benchmarks.md). Off for a pooler that cannot keep prepared statements.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        server_side_binding=True, prepare_threshold=5)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the worker are separate processes writing one file: WAL lets readers
    # proceed during a write, IMMEDIATE transactions avoid lock upgrades that deadlock.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 60,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not memory, so a worker process in integration tests sees the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-connectome.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "frontend" / "static"]
# Serve from the finders too, so a checkout works before collectstatic has run.
WHITENOISE_USE_FINDERS = True
STATIC_ROOT.mkdir(parents=True, exist_ok=True)

LOGIN_URL = "/admin/login/"

# --- REST framework -------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "connectome.common.security.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticatedOrReadOnly"],
    "DEFAULT_RENDERER_CLASSES": [
        "connectome.common.renderers.JSONRenderer",
        # The browsable API, under the Content-Security-Policy.
        "connectome.common.security.BrowsableAPIRenderer",
    ],
    "DEFAULT_PAGINATION_CLASS": "connectome.common.pagination.IdCursorPagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "connectome.common.api_errors.json_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Connectome API",
    "DESCRIPTION": "Datasets, cells, skeletons, synapses, connectivity, jobs and reviews. "
                   "Segment ids are uint64, written as strings; positions are nm, (z, y, x).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI and Redoc from the installed sidecar package: no CDN needed.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Choice sets shared by several fields named "kind": one schema name each.
    "ENUM_NAME_OVERRIDES": {
        "SynapseKindEnum": "connectome.synapses.models.Synapse.Kind",
        "SearchResultKindEnum": "connectome.search.selectors.KINDS",
    },
}

# --- Celery ---------------------------------------------------------------------------------
BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
    # kombu's filesystem transport expects its folders to exist.
    (BROKER_DIR / "queue").mkdir(parents=True, exist_ok=True)
    (BROKER_DIR / "processed").mkdir(parents=True, exist_ok=True)
# Job state lives in the Job table; Celery's own result store is not used.
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_TASK_ROUTES = {"connectome.jobs.tasks.*": {"queue": "cpu"}}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Recovery without a person (docs/jobs.md, connectome/jobs/sweep.py). A worker marks the
# block, handler or final step it runs alive every JOB_HEARTBEAT_S; one silent for JOB_STALE_S
# was lost with its worker. Every worker sweeps every JOB_SWEEP_S (0: never) for lost work and
# sends it again, at most JOB_MAX_RETRIES times per job (then the job fails). A lost database
# connection is tried again JOB_DB_RETRIES times, after JOB_DB_RETRY_BACKOFF_S, twice that ...
# (the JOB_BLOCK_* names are the older spelling of the first two).
JOB_HEARTBEAT_S = float(os.environ.get(
    "JOB_HEARTBEAT_S", os.environ.get("JOB_BLOCK_HEARTBEAT_S", 15)))
JOB_STALE_S = float(os.environ.get(
    "JOB_STALE_S", os.environ.get("JOB_BLOCK_STALE_S", 4 * JOB_HEARTBEAT_S)))
JOB_SWEEP_S = float(os.environ.get("JOB_SWEEP_S", JOB_STALE_S / 2))
JOB_MAX_RETRIES = int(os.environ.get("JOB_MAX_RETRIES", 3))
JOB_DB_RETRIES = int(os.environ.get("JOB_DB_RETRIES", 6))
JOB_DB_RETRY_BACKOFF_S = float(os.environ.get("JOB_DB_RETRY_BACKOFF_S", 0.5))
# Bytes of source data an import reads per block (connectome/imports/volumes.py).
IMPORT_BLOCK_BYTES = int(os.environ.get("IMPORT_BLOCK_BYTES", 64 * 2**20))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# Server paths that the import jobs of users other than superusers may read (`:`-separated;
# set but empty: none). Unset: VAR_DIR/incoming only, so a fresh deployment exposes no other
# server file. Superusers and management commands may read any path (connectome/imports/paths.py).
INCOMING_DIR = VAR_DIR / "incoming"
if "IMPORT_ROOTS" in os.environ:
    IMPORT_ROOTS = [Path(p).resolve() for p in os.environ["IMPORT_ROOTS"].split(os.pathsep)
                    if p.strip()]
else:
    INCOMING_DIR.mkdir(parents=True, exist_ok=True)
    IMPORT_ROOTS = [INCOMING_DIR.resolve()]


def _env_count(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number of voxels, not '{text}'") from None
    if not (value >= 1 and value < 2**63):
        raise ImproperlyConfigured(f"{name} must be a positive number of voxels, not '{text}'")
    return int(value)


# The largest volume (z * y * x voxels) an import accepts; a file declaring more is refused
# when the job is submitted, before anything is written. 1e12 voxels is a 1 TB uint8 volume.
IMPORT_MAX_VOXELS = _env_count("IMPORT_MAX_VOXELS", 10**12)
