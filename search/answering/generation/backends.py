"""Pick the generator backend the settings (or a caller) name.

A backend is built once per process and per configuration: the local model takes a fraction of
a second to load from its converted copy but holds hundreds of MB, and the others are cheap but
stateless, so sharing them costs nothing.
"""

from __future__ import annotations

import threading
from pathlib import Path

from django.conf import settings

from .base import Generator, GeneratorError

BACKENDS = ("extractive", "local", "openai")

_lock = threading.Lock()
_cache: dict[tuple, Generator] = {}


def _key(name: str, model_path: str | None = None) -> tuple:
    if name == "local":
        return (name, model_path or settings.KMS_GENERATOR_MODEL)
    if name == "openai":
        return (
            name, settings.KMS_OPENAI_BASE_URL, settings.KMS_OPENAI_MODEL,
            settings.KMS_OPENAI_API_KEY, settings.KMS_OPENAI_TIMEOUT_SECONDS,
            settings.KMS_OPENAI_CONNECT_TIMEOUT_SECONDS, settings.KMS_OPENAI_RETRIES,
        )
    return (name,)


def _build(name: str, model_path: str | None = None) -> Generator:
    if name == "extractive":
        from .extractive import ExtractiveGenerator

        return ExtractiveGenerator()
    if name == "local":
        from .local import LocalGenerator, conversion_cache_dir, from_settings

        if model_path:  # a fine-tuned model: its folder names the run in answers
            generator = LocalGenerator(model_path, cache_dir=conversion_cache_dir())
            generator.name = f"local:{Path(model_path).name}"
            return generator
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


def get_generator(name: str | None = None, model_path: str | None = None) -> Generator:
    """The backend ``name`` (default ``KMS_GENERATOR``), shared within this process.

    ``model_path`` (local only): a domain's promoted fine-tuned generator instead of
    KMS_GENERATOR_MODEL; only the newest such model stays loaded per process.
    """
    name = (name or settings.KMS_GENERATOR).strip().lower()
    if name not in BACKENDS:
        raise GeneratorError(
            f"Unknown generator backend {name!r}: set KMS_GENERATOR to one of "
            f"{', '.join(BACKENDS)}."
        )
    key = _key(name, model_path if name == "local" else None)
    with _lock:
        if key not in _cache:
            if model_path and name == "local":
                for stale in [k for k in _cache if k[0] == "local" and k != _key("local")]:
                    del _cache[stale]
            _cache[key] = _build(name, model_path if name == "local" else None)
        return _cache[key]
