"""LeviPanel settings: every value comes from the environment, here and nowhere else.

With no variables set, LeviPanel runs on the embedded default: a SQLite file under
``data/``, the in-memory channel layer and django-q2's ORM broker.
"""

import ipaddress
import secrets
from pathlib import Path

from environs import Env, EnvValidationError
from marshmallow.validate import Range

from .files import private_dir, private_secret, private_sqlite

BASE_DIR = Path(__file__).resolve().parent.parent

env = Env()
DATA_DIR = env.path("LEVIPANEL_DATA_DIR", BASE_DIR / "data").resolve()
# Private: the database holds live sessions (levipanel/files.py). An older install's
# looser modes are tightened here, at every start of every process.
private_dir(DATA_DIR)


def _secret_key() -> str:
    """Keep one generated key per data directory, so sessions survive a restart."""
    return private_secret(DATA_DIR / ".secret_key", lambda: secrets.token_urlsafe(50))


# DJANGO_SECURE=1: the production profile behind TLS (docs/security.md). Lazily validated
# like the settings below: a bad value is reported by the system check levipanel.E003.
_deploy_env = Env(eager=False)
SECURE_PROFILE = _deploy_env.bool("DJANGO_SECURE", False)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", "")
SECRET_KEY_FROM_ENV = bool(SECRET_KEY)
SECRET_KEY = SECRET_KEY or _secret_key()
DEBUG = env.bool("DJANGO_DEBUG", False)
# The profile has no default hosts: a public name must be given (levipanel.E003).
LOCAL_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", [] if SECURE_PROFILE else LOCAL_HOSTS)
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

# The rest of the profile; each variable also works alone. The HSTS header is sent on the
# panel's host name only, so includeSubDomains covers the names under it (and browsers'
# preload list takes registrable domains only): give the panel a host name of its own.
SECURE_SSL_REDIRECT = _deploy_env.bool("DJANGO_SECURE_SSL_REDIRECT", SECURE_PROFILE)
SECURE_HSTS_SECONDS = _deploy_env.int(
    "DJANGO_SECURE_HSTS_SECONDS", 31_536_000 if SECURE_PROFILE else 0, validate=Range(min=0)
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _deploy_env.bool(
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", SECURE_PROFILE
)
SECURE_HSTS_PRELOAD = _deploy_env.bool("DJANGO_SECURE_HSTS_PRELOAD", SECURE_PROFILE)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = _deploy_env.bool(
    "DJANGO_SECURE_COOKIES", SECURE_PROFILE
)
# Only when the proxy sets X-Forwarded-Proto itself (and drops a client's): else any client
# could claim to be on HTTPS.
if _deploy_env.bool("DJANGO_SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
try:
    _deploy_env.seal()
    DEPLOY_ENV_ERRORS: dict = {}
except EnvValidationError as exc:
    DEPLOY_ENV_ERRORS = exc.error_messages

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_q",
    "ninja",  # serves the API docs page from static files, not a CDN
    "engines_app",
    "axes",  # login throttling; listed last so its lockout template can be overridden
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it answers a locked-out login with the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "levipanel.urls"
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
WSGI_APPLICATION = None
ASGI_APPLICATION = "levipanel.asgi.application"

# SQLite is tuned for a web process and a runner writing at once: WAL lets readers and
# one writer work side by side, IMMEDIATE takes the write lock up front (no "database is
# locked" upgrade failures) and the timeout makes a writer wait instead of failing.
DATABASES = {
    "default": env.dj_db_url(
        "DATABASE_URL", f"sqlite:///{DATA_DIR / 'levipanel.sqlite3'}", conn_max_age=0
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    if DATABASES["default"]["NAME"] not in ("", ":memory:"):
        private_sqlite(Path(DATABASES["default"]["NAME"]))
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["TEST"] = {
        "NAME": env.str("LEVIPANEL_TEST_DB", str(DATA_DIR / "test_levipanel.sqlite3"))
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", "")
if REDIS_URL:
    # The default capacity of 100 silently drops group messages in bursts.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 reads with a 5 s timeout by default: a blocking pop (5 s, the
                # broadcaster's wait for hints) would time out every time. Wait longer.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
                "capacity": 5000,
                # One prefix per installation sharing a Redis server.
                "prefix": env.str("LEVIPANEL_CHANNEL_PREFIX", "asgi"),
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
# A web process's broadcaster and its dashboards' consumers talk through memory (they share
# one event loop), with or without Redis: a Redis outage does not close open dashboards, and
# their pushes go on from the broadcaster's look at the database. Redis carries only the
# runner's hints (``default``). Room for bursts of changes (the default capacity of 100
# drops them), and memberships that last as long as the page stays open (not a day).
DASHBOARD_CHANNEL_LAYER = "dashboard"
CHANNEL_LAYERS[DASHBOARD_CHANNEL_LAYER] = {
    "BACKEND": "channels.layers.InMemoryChannelLayer",
    "CONFIG": {"capacity": 5000, "group_expiry": 10 * 365 * 86400},
}

Q_CLUSTER = {
    # Installations sharing one Redis server need queues of their own.
    "name": env.str("LEVIPANEL_Q_NAME", "levipanel"),
    "workers": env.int("LEVIPANEL_Q_WORKERS", 2),
    "timeout": 60,
    "retry": 120,  # longer than timeout, or a slow task runs twice
    "catch_up": False,
    "label": "Tasks",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "/admin/login/"

# Login throttling (django-axes) for the admin and /login/: after AXES_FAILURE_LIMIT wrong
# passwords for one username from one address, that pair is locked out for
# AXES_COOLOFF_TIME hours, or until `manage.py axes_reset_username USERNAME`. API tokens
# never go through a login, so they are not throttled.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("LEVIPANEL_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = env.float("LEVIPANEL_LOGIN_COOLOFF_HOURS", 1.0)
# Username and address together: an attacker cannot lock an operator out from elsewhere.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# The client behind a trusted proxy, never a forged X-Forwarded-For (see TRUSTED_PROXIES).
AXES_CLIENT_IP_CALLABLE = "engines_app.web.clients.login_address"
AXES_DISABLE_ACCESS_LOG = True  # failures are recorded; a row per good login would only grow
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise warns at every start when it is missing
WHITENOISE_USE_FINDERS = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LEVIPANEL_LOG_LEVEL", "INFO")},
    "loggers": {
        # Engine lines go to their per-symbol JSONL files, set up by the runner.
        "levipanel.engine": {"level": "INFO", "propagate": False},
        # httpx logs each request's URL at INFO, and a Telegram URL holds the bot token.
        "httpx": {"level": "WARNING"},
        # django-axes announces its version at every start; its lockouts stay WARNING.
        "axes.apps": {"level": "WARNING"},
    },
}

# Engine settings. Parsed lazily-validated: a bad value does not crash the import, it is
# reported by the system check "levipanel.E001" and `runengines` refuses to start.
_engine_env = Env(eager=False, prefix="LEVIPANEL_")
_positive = Range(min=0, min_inclusive=False, error="must be greater than 0")
_non_negative = Range(min=0, error="must not be negative")
_env_errors: dict = {}


def _overrides() -> dict:
    """SYMBOL=SECONDS pairs; a pair without "=" is reported by the check, not a traceback."""
    try:
        return _engine_env.dict("CYCLE_INTERVAL_OVERRIDES", {}, subcast_values=float)
    except ValueError:
        _env_errors["LEVIPANEL_CYCLE_INTERVAL_OVERRIDES"] = [
            "must be SYMBOL=SECONDS pairs separated by commas, e.g. BTCUSDT=0.5,ETHUSDT=2"
        ]
        return {}


LEVIPANEL = {
    "SYMBOLS": _engine_env.list("SYMBOLS", ["BTCUSDT", "ETHUSDT", "SOLUSDT"]),
    "CYCLE_INTERVAL": _engine_env.float(
        "CYCLE_INTERVAL",
        1.0,
        validate=Range(
            min=0, max=86_400, min_inclusive=False, error="must be greater than 0 and at most 86400"
        ),
    ),
    "CYCLE_INTERVAL_OVERRIDES": _overrides(),
    "HEALTH_CHECK_INTERVAL": _engine_env.float("HEALTH_CHECK_INTERVAL", 30.0, validate=_positive),
    "HEARTBEAT_TIMEOUT": _engine_env.float("HEARTBEAT_TIMEOUT", 60.0, validate=_positive),
    "MAX_RESTARTS_PER_HOUR": _engine_env.int("MAX_RESTARTS_PER_HOUR", 5, validate=_non_negative),
    "BACKOFF_BASE": _engine_env.float("BACKOFF_BASE", 60.0, validate=_non_negative),
    "BACKOFF_CAP": _engine_env.float("BACKOFF_CAP", 900.0, validate=_non_negative),
    "BACKOFF_JITTER": _engine_env.float(
        "BACKOFF_JITTER", 0.1, validate=Range(min=0, max=1, error="must be between 0 and 1")
    ),
    "STABLE_AFTER": _engine_env.float("STABLE_AFTER", 600.0, validate=_non_negative),
    "FLUSH_INTERVAL": _engine_env.float("FLUSH_INTERVAL", 1.0, validate=_positive),
    "POLL_INTERVAL": _engine_env.float("POLL_INTERVAL", 0.25, validate=_positive),
    "STOP_TIMEOUT": _engine_env.float("STOP_TIMEOUT", 5.0, validate=_positive),
    # How long a runner's claim on an engine lasts without renewal (renewed every flush).
    "LEASE": _engine_env.float("LEASE", 15.0, validate=_positive),
    "LOG_DIR": _engine_env.path("LOG_DIR", DATA_DIR / "logs"),
    "RESTART_STAGGER_WINDOW": _engine_env.float(
        "RESTART_STAGGER_WINDOW", 10.0, validate=_non_negative
    ),
    "RESTART_STAGGER_STEP": _engine_env.float("RESTART_STAGGER_STEP", 1.0, validate=_non_negative),
}
try:
    _engine_env.seal()
    LEVIPANEL_ENV_ERRORS: dict = dict(_env_errors)
except EnvValidationError as exc:
    LEVIPANEL_ENV_ERRORS = {**exc.error_messages, **_env_errors}

# Strategies: the only modules an engine's "package.module:ClassName" may come from (checked
# by "levipanel.E006"), the worker threads heavy strategies decide in, and the event loop lag
# the runner's watchdog reports (naming the strategy that held the loop).
LEVIPANEL_STRATEGY_MODULES = env.list("LEVIPANEL_STRATEGY_MODULES", [])
LEVIPANEL_STRATEGY_WORKERS = env.int("LEVIPANEL_STRATEGY_WORKERS", 2)
LEVIPANEL_LOOP_LAG_WARN = env.float("LEVIPANEL_LOOP_LAG_WARN", 0.5)

# Dashboard push: how often each web process's broadcaster looks for changed rows (the
# embedded default's latency floor) and how often the runner samples PnL for the charts.
LEVIPANEL_PUSH_INTERVAL = env.float("LEVIPANEL_PUSH_INTERVAL", 0.2)
LEVIPANEL_PNL_SAMPLE_INTERVAL = env.float("LEVIPANEL_PNL_SAMPLE_INTERVAL", 60.0)

# Alerts, /metrics and retention. Lazily validated like the engine settings: a bad value is
# reported by the system check "levipanel.E002".
_ops_env = Env(eager=False)
ALERTS = {
    # Each channel is on when its variables are set.
    "SLACK_WEBHOOK_URL": _ops_env.str("SLACK_WEBHOOK_URL", ""),
    "TELEGRAM_BOT_TOKEN": _ops_env.str("TELEGRAM_BOT_TOKEN", ""),
    "TELEGRAM_CHAT_ID": _ops_env.str("TELEGRAM_CHAT_ID", ""),
    "TELEGRAM_API_BASE": _ops_env.str("TELEGRAM_API_BASE", "https://api.telegram.org"),
    # At most RATE_LIMIT alerts per engine per RATE_WINDOW seconds; the rest become a summary.
    "RATE_LIMIT": _ops_env.int("ALERT_RATE_LIMIT", 3, validate=Range(min=1)),
    "RATE_WINDOW": _ops_env.float("ALERT_RATE_WINDOW", 600.0, validate=_positive),
    "RETRIES": _ops_env.int("ALERT_RETRIES", 3, validate=Range(min=1)),
    "RETRY_DELAY": _ops_env.float("ALERT_RETRY_DELAY", 2.0, validate=_non_negative),
    "TIMEOUT": _ops_env.float("ALERT_TIMEOUT", 5.0, validate=_positive),
    # INCIDENT_MIN_ENGINES engines crashing within INCIDENT_WINDOW seconds: one incident.
    "INCIDENT_MIN_ENGINES": _ops_env.int("ALERT_INCIDENT_MIN_ENGINES", 3, validate=Range(min=2)),
    "INCIDENT_WINDOW": _ops_env.float("ALERT_INCIDENT_WINDOW", 60.0, validate=_positive),
    "RUNNER_STALE_AFTER": _ops_env.float("ALERT_RUNNER_STALE_AFTER", 30.0, validate=_positive),
}
# The runner's name in its heartbeat row and on the engines it holds; empty: host:pid, so
# two runners on one host are told apart.
RUNNER_NAME = _ops_env.str("LEVIPANEL_RUNNER_NAME", "")
# /metrics: a bearer token, and/or client addresses (IPs or networks). With neither set only
# this host may scrape; with a token set and no list, the token is required from everywhere.
METRICS_TOKEN = _ops_env.str("METRICS_TOKEN", "")
METRICS_ALLOWED_IPS = _ops_env.list("METRICS_ALLOWED_IPS", None)
# Reverse proxies (IPs or networks) whose X-Forwarded-For is believed; no other client's is.
TRUSTED_PROXIES = _ops_env.list("LEVIPANEL_TRUSTED_PROXIES", [])


def _local_only(hosts: list[str]) -> bool:
    """Whether every host name is this machine's own (a loopback address, localhost)."""
    for host in hosts:
        name = host.lower().strip("[]")
        if name == "localhost" or name.endswith(".localhost"):
            continue
        try:
            if ipaddress.ip_address(name).is_loopback:
                continue
        except ValueError:
            pass
        return False
    return True


# A panel answering to other names is reachable from elsewhere, maybe through a proxy on
# this host: the token is then required (levipanel.E004), whatever the address.
METRICS_TOKEN_REQUIRED = not _local_only(ALLOWED_HOSTS)
RETENTION_DAYS = _ops_env.int("RETENTION_DAYS", 30, validate=Range(min=1))
try:
    _ops_env.seal()
    OPS_ENV_ERRORS: dict = {}
except EnvValidationError as exc:
    OPS_ENV_ERRORS = exc.error_messages
