"""Generator fine-tuning on a tiny causal LM this test builds from a small config and a
tokenizer trained on the spot (no download, no shipped weights): the dataset format, both
recipes, LoRA and partly frozen full fine-tuning, resuming from a checkpoint, bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tuning.data.qa import QADatasetError, QAPair, check_enough, held_out, read_pairs
from tuning.data.sft import rag_example
from tuning.params import GeneratorParams
from tuning.training.generator import (
    GeneratorTrainingError,
    load_base,
    train_generator,
    training_examples,
)

FACTS = [
    ("Is metformin first-line for type 2 diabetes?", "yes", "Metformin is the first-line "
     "drug for type 2 diabetes."),
    ("Is warfarin safe without INR checks?", "no", "Warfarin needs regular INR checks."),
    ("Does alcohol rub replace hand washing after C. difficile contact?", "no",
     "Alcohol rub does not kill C. difficile spores; wash with soap and water."),
    ("Should sepsis antibiotics start within the hour?", "yes", "Antibiotics start within "
     "one hour of recognising sepsis."),
    ("Is a high NEWS2 score escalated?", "yes", "A NEWS2 score of 7 or more is escalated "
     "to the emergency team."),
    ("Do pressure ulcers need repositioning?", "yes", "Patients at risk are repositioned "
     "every two hours."),
    ("Is vitamin D useful for every fracture?", "maybe", "Evidence for vitamin D after "
     "fractures is mixed."),
    ("Are visitors allowed at night?", "no", "Visiting ends at eight in the evening."),
    ("Is the cannula changed every 72 hours?", "yes", "The cannula site is changed every "
     "72 hours."),
    ("Does an occlusion alarm mean a blocked line?", "yes", "An occlusion alarm means the "
     "line is blocked."),
]


def dataset_rows() -> list[dict]:
    return [{"id": f"q{n}", "question": q, "answer": a, "decision": d, "contexts": [a],
             "split": "test" if n >= 8 else "train"}
            for n, (q, d, a) in enumerate(FACTS)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer Llama with a word-level tokenizer trained on the prompts' own words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from search.answering.prompting import SYSTEM_PROMPT
    from tuning.data.sft import CLOSED_BOOK_PROMPT

    folder = tmp_path_factory.mktemp("tiny-generator")
    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    texts = [SYSTEM_PROMPT, CLOSED_BOOK_PROMPT, "System User Assistant Passages Question "
             "Source passage title n Yes No Maybe"] + [" ".join(f) for f in FACTS]
    raw.train_from_iterator(texts * 2, trainers.WordLevelTrainer(
        special_tokens=["<unk>", "<pad>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>",
                                        pad_token="<pad>", eos_token="</s>")
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=2048, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def test_the_dataset_format_and_pubmedqas_layout_are_read(tmp_path) -> None:
    mine = tmp_path / "pairs.jsonl"
    mine.write_text("\n".join(json.dumps(r) for r in dataset_rows()) + "\n")
    pairs = read_pairs(mine)
    assert len(pairs) == 10 and pairs[0].decision == "yes" and pairs[0].contexts
    train, held = held_out(pairs, 0.1)
    assert [p.id for p in held] == ["q8", "q9"] and len(train) == 8
    check_enough(train, held)
    pubmedqa = tmp_path / "pubmedqa"
    pubmedqa.mkdir()
    (pubmedqa / "pqal.jsonl").write_text(json.dumps({
        "pmid": "1", "split": "trainval", "question": "Q?", "contexts": ["c"],
        "long_answer": "A.", "final_decision": "maybe"}) + "\n")
    assert read_pairs(pubmedqa) == [QAPair("1", "Q?", "A.", "maybe", ("c",), "train")]


@pytest.mark.parametrize(("content", "message"), [
    ("not json\n", "line 1: not JSON"),
    ('{"id": "a", "question": "Q?"}\n', "line 1: needs answer"),
    ('{"id": "a", "question": "Q?", "answer": "A", "split": "dev"}\n', "split must be"),
    ('{"id": "a", "question": "Q?", "answer": "A"}\n{"id": "a", "question": "R?", '
     '"answer": "B"}\n', "line 2: id 'a' repeats"),
    ('["a list"]\n', "expected a JSON object"),
])
def test_a_dataset_in_the_wrong_format_says_where(tmp_path, content, message) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    with pytest.raises(QADatasetError, match=message):
        read_pairs(bad)


def test_too_few_pairs_and_a_missing_dataset_are_refused(tmp_path) -> None:
    with pytest.raises(QADatasetError, match="Too few pairs: 3"):
        check_enough([QAPair(str(n), "q", "a") for n in range(3)], [QAPair("x", "q", "a")])
    with pytest.raises(QADatasetError, match="No dataset file"):
        read_pairs(tmp_path / "missing.jsonl")


def test_the_rag_recipe_quotes_the_right_passage_among_distractors() -> None:
    import random

    pairs = [QAPair(f"q{n}", q, a, d, (a,)) for n, (q, d, a) in enumerate(FACTS)]
    messages, target = rag_example(pairs[0], pairs, 2, random.Random(1))
    prompt = messages[-1]["content"]
    assert prompt.count("<passage") == 3 and "Question: Is metformin" in prompt
    cited = int(target.rsplit("[", 1)[1].rstrip("]"))
    assert target.startswith("Yes. Metformin is the first-line drug")
    assert f'<passage n="{cited}" title="Source {cited}">\nMetformin is' in prompt


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    {"method": "lora", "recipe": "rag",
     "target_modules": ["q_proj", "v_proj", "down_proj", "lm_head"]},
    {"method": "full", "recipe": "closed_book", "freeze_layers": 1},
])
def test_a_few_steps_lower_the_loss_and_save_a_plain_checkpoint(tiny_model, tmp_path,
                                                                options) -> None:
    from transformers import AutoModelForCausalLM

    pairs = [QAPair(f"q{n}", q, a, d, (a,)) for n, (q, d, a) in enumerate(FACTS)]
    params = GeneratorParams.from_options({"batch_size": 4, "gradient_accumulation": 1,
                                           "learning_rate": 1e-2, "max_steps": 30,
                                           "max_length": 1024, "warmup_ratio": 0.0,
                                           **options})
    seen = []
    result = train_generator(pairs, tiny_model, tmp_path / "run", params,
                             cache_dir=tmp_path / "cache",
                             on_progress=lambda step, total, loss: seen.append(step))
    assert result.steps == 30 and seen[-1] == 30 and result.train_pairs == 10
    first = sum(loss for _, loss in result.loss_curve[:3]) / 3
    last = sum(loss for _, loss in result.loss_curve[-3:]) / 3
    assert last < first * 0.8, result.loss_curve
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    assert not any("lora" in name for name, _ in saved.named_parameters())
    assert not (tmp_path / "run.partial").exists()
    assert not (tmp_path / "run.checkpoints").exists()


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_newest_checkpoint(tiny_model, tmp_path) -> None:
    pairs = [QAPair(f"q{n}", q, a, d, (a,)) for n, (q, d, a) in enumerate(FACTS)]
    options = {"batch_size": 4, "gradient_accumulation": 1, "max_steps": 6,
               "recipe": "closed_book", "max_length": 256}
    killed = {"at": None}

    def die(step, total, loss) -> None:
        if step == 5:  # after the checkpoint of step 4
            killed["at"] = step
            raise KeyboardInterrupt  # as a SIGTERM'd worker stops mid-run

    with pytest.raises(KeyboardInterrupt):
        train_generator(pairs, tiny_model, tmp_path / "run",
                        GeneratorParams.from_options(options), cache_dir=tmp_path,
                        on_progress=die, save_steps=2)
    assert killed["at"] == 5 and not (tmp_path / "run").exists()
    assert (tmp_path / "run.checkpoints" / "checkpoint-4").is_dir()
    steps = []
    train_generator(pairs, tiny_model, tmp_path / "run", GeneratorParams.from_options(
        options), cache_dir=tmp_path, on_progress=lambda step, total, loss: steps.append(step),
        save_steps=2)
    assert steps[0] == 4 and steps[-1] == 6 and (tmp_path / "run" / "config.json").is_file()


def test_a_model_path_that_does_not_exist_is_refused(tmp_path) -> None:
    pairs = [QAPair(f"q{n}", "q", "a") for n in range(10)]
    with pytest.raises(GeneratorTrainingError, match="No model at"):
        train_generator(pairs, tmp_path / "nothing", tmp_path / "run",
                        GeneratorParams(), cache_dir=tmp_path)


def test_bad_parameters_name_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="method must be one of lora, full"):
        GeneratorParams.from_options({"method": "qlora"})
    with pytest.raises(ValueError, match="target_modules must be a non-empty list"):
        GeneratorParams.from_options({"target_modules": "q_proj"})
    with pytest.raises(ValueError, match="unknown option 'rank'"):
        GeneratorParams.from_options({"rank": 4})


def test_examples_mask_the_prompt_and_skip_what_does_not_fit(tiny_model) -> None:
    _, tokenizer = load_base(tiny_model)
    pairs = [QAPair(f"q{n}", q, a, d, (a,)) for n, (q, d, a) in enumerate(FACTS)]
    examples, skipped = training_examples(pairs, tokenizer, GeneratorParams(
        recipe="closed_book", max_length=256))
    assert skipped == 0 and len(examples) == 10
    row = examples[0]
    learned = [t for t, label in zip(row["input_ids"], row["labels"], strict=True)
               if label != -100]
    assert tokenizer.decode(learned).startswith("Yes . Metformin")
    _, skipped = training_examples(pairs, tokenizer, GeneratorParams(max_length=32))
    assert skipped == 10  # the rag prompt alone is longer than 32 tokens


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_whole_cycle_through_a_worker_promotes_serves_compares_and_rolls_back(
        tiny_model, worker_factory, settings, tmp_path) -> None:
    from io import StringIO

    from django.core.management import call_command

    from kms.store.models import CuratedPair, Domain, ModelRun
    from search.answering.answers import answer
    from tests.conftest import OPERATOR
    from tuning import generator_cycle, registry
    from tuning.tasks import train_run

    domain = Domain.objects.get_or_create(slug="healthcare", defaults={"name": "Healthcare"})[0]
    domain.options = {"tuning": {"gate_margin": -1.0}}  # three steps rarely beat the base
    domain.save(update_fields=["options"])
    CuratedPair.objects.bulk_create([CuratedPair(domain=domain, question=q, answer=a)
                                     for q, _, a in FACTS * 2])
    worker_factory().start(concurrency=1)
    run = generator_cycle.new_generator_run(domain, base=tiny_model, params={
        "recipe": "closed_book", "max_steps": 3, "batch_size": 2, "held_out": 0.3,
        "max_length": 256})
    with pytest.raises(registry.RegistryError, match="already queued"):
        generator_cycle.new_generator_run(domain, base=tiny_model)  # single-flight
    train_run.delay(run.pk)
    deadline = time.monotonic() + 240
    while ModelRun.objects.get(pk=run.pk).state in registry.ACTIVE:
        assert time.monotonic() < deadline, "the run did not finish"
        time.sleep(0.5)
    run.refresh_from_db()
    assert run.state == ModelRun.State.PROMOTED, run.message
    assert run.data_counts["steps"] == 3 and run.metrics["served"]["name"] == "base model"
    assert run.metrics["candidate"]["perplexity"] > 0 and len(run.loss_curve) == 3

    settings.KMS_GENERATOR = "local"
    served = answer("Is the cannula changed every 72 hours?", domain=domain, access=OPERATOR)
    assert served.backend == f"local:{Path(run.model_dir).name}"

    call_command("compare_approaches", domain="healthcare", generate=2, out=tmp_path,
                 stdout=StringIO())
    report = json.loads((tmp_path / "comparison.json").read_text())
    assert [r["name"] for r in report["rows"]] == [
        "base, closed-book", "base + RAG", f"fine-tuned, closed-book (run {run.pk})",
        "extractive"]
    assert all(r["perplexity"] > 0 for r in report["rows"][:3])
    assert (tmp_path / "comparison.png").stat().st_size > 0
    assert registry.roll_back(domain, "generator") is None  # the base model again
    again = answer("Is the cannula changed every 72 hours?", domain=domain, access=OPERATOR)
    assert again.backend == "local"


def test_a_domain_with_too_few_pairs_or_a_missing_base_is_refused(db, tmp_path) -> None:
    from kms.store.models import Domain
    from tuning import generator_cycle

    domain = Domain.objects.get_or_create(slug="healthcare", defaults={"name": "Healthcare"})[0]
    with pytest.raises(QADatasetError, match="Too few pairs: 0"):
        generator_cycle.new_generator_run(domain)
    dataset = tmp_path / "pairs.jsonl"
    dataset.write_text("\n".join(json.dumps(r) for r in dataset_rows()))
    with pytest.raises(GeneratorTrainingError, match="No model at"):
        generator_cycle.new_generator_run(domain, dataset=dataset, base=tmp_path / "missing")
