"""The Django peer of bench/ (PROTOCOL.md v1): Django 5 ASGI + Channels + channels_redis.

Production-like: DEBUG off, cached template loader, two stock middlewares, no
session/auth/CSRF (every benchmark endpoint is anonymous).
Services come from the environment:
  BENCH_PEER_PG_DSN   postgresql://postgres@127.0.0.1:5432/bench_peer   (created by bench/setup.sh)
  BENCH_REDIS_URL     redis://127.0.0.1:6379   db 0 channel layer, db 1 page cache, db 2 Celery broker
  UPSTREAM_URL        http://127.0.0.1:8081     (W3 stub)
"""
import os
from urllib.parse import parse_qs, urlparse

BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET_KEY = "bench-peer-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["blog"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "peer.urls"
ASGI_APPLICATION = "peer.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,  # DEBUG=False => wrapped in the cached loader
        "OPTIONS": {"context_processors": []},
    }
]

_pg = urlparse(os.environ.get("BENCH_PEER_PG_DSN", "postgresql://postgres@127.0.0.1:5432/bench_peer"))
_sslmode = parse_qs(_pg.query).get("sslmode", [None])[0]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _pg.path.lstrip("/"),
        "USER": _pg.username or "postgres",
        "PASSWORD": _pg.password or "",
        "HOST": _pg.hostname or "127.0.0.1",
        "PORT": _pg.port or 5432,
        # Django 5.1+ psycopg 3 pool, per worker process (otherwise one connection per request).
        "OPTIONS": {
            "pool": {"min_size": 2, "max_size": int(os.environ.get("BENCH_PEER_DB_POOL_MAX", "8"))},
            # The DSN's sslmode (run.sh sets `disable`, as Hearth uses on loopback), else libpq's default.
            **({"sslmode": _sslmode} if _sslmode else {}),
        },
    }
}

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL + "/1"}}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # redis-py 8 caps an asyncio pool at 100 connections (raising when exhausted) and reads
        # time out after 5 s, the same as channels_redis' blocking BZPOPMIN: size the pool for
        # 1,000+ sockets and keep the read timeout above the blocking pop (see RESULTS.md of the
        # reference peer, note 6), or consumers die under W5.
        "CONFIG": {"hosts": [{"address": REDIS_URL + "/0", "max_connections": 10000, "socket_timeout": 30}]},
    }
}
UPSTREAM_URL = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:8081")

USE_TZ = True
TIME_ZONE = "UTC"
USE_I18N = False
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
