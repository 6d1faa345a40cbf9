"""Pick the generator backend the settings (or a caller) name.

A backend is built once per process and per configuration: the local model takes a fraction of
a second to load from its converted copy but holds hundreds of MB, and the others are cheap but
stateless, so sharing them costs nothing.
"""

from __future__ import annotations

import threading

from django.conf import settings

from .base import Generator, GeneratorError

BACKENDS = ("extractive", "local", "openai")

_lock = threading.Lock()
_cache: dict[tuple, Generator] = {}


def _key(name: str) -> tuple:
    if name == "local":
        return (name, settings.KMS_GENERATOR_MODEL)
    if name == "openai":
        return (
            name, settings.KMS_OPENAI_BASE_URL, settings.KMS_OPENAI_MODEL,
            settings.KMS_OPENAI_API_KEY, settings.KMS_OPENAI_TIMEOUT_SECONDS,
            settings.KMS_OPENAI_CONNECT_TIMEOUT_SECONDS, settings.KMS_OPENAI_RETRIES,
        )
    return (name,)


def _build(name: str) -> Generator:
    if name == "extractive":
        from .extractive import ExtractiveGenerator

        return ExtractiveGenerator()
    if name == "local":
        from .local import from_settings

        return from_settings()
    from .openai_http import BASE_URL_SETTING, OpenAICompatibleGenerator

    if not settings.KMS_OPENAI_BASE_URL:
        raise GeneratorError(
            f"The openai generator needs an endpoint: set {BASE_URL_SETTING} "
            "(e.g. http://127.0.0.1:8000/v1 for vLLM, http://127.0.0.1:11434/v1 for Ollama)."
        )
    try:
        return OpenAICompatibleGenerator(
            settings.KMS_OPENAI_BASE_URL,
            settings.KMS_OPENAI_MODEL,
            api_key=settings.KMS_OPENAI_API_KEY or None,
            timeout=settings.KMS_OPENAI_TIMEOUT_SECONDS,
            connect_timeout=settings.KMS_OPENAI_CONNECT_TIMEOUT_SECONDS,
            retries=settings.KMS_OPENAI_RETRIES,
        )
    except ValueError as exc:
        raise GeneratorError(
            f"openai generator: {exc}; check KMS_OPENAI_TIMEOUT_SECONDS, "
            "KMS_OPENAI_CONNECT_TIMEOUT_SECONDS and KMS_OPENAI_RETRIES."
        ) from exc


def get_generator(name: str | None = None) -> Generator:
    """The backend ``name`` (default ``KMS_GENERATOR``), shared within this process."""
    name = (name or settings.KMS_GENERATOR).strip().lower()
    if name not in BACKENDS:
        raise GeneratorError(
            f"Unknown generator backend {name!r}: set KMS_GENERATOR to one of "
            f"{', '.join(BACKENDS)}."
        )
    key = _key(name)
    with _lock:
        if key not in _cache:
            _cache[key] = _build(name)
        return _cache[key]
