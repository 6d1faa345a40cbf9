"""Locust users of ``manage.py load_test``: API clients searching and asking, a token each.

Locust imports this file in its own process (``search.evaluation.load`` starts it), never
Django's: gevent patches the standard library. So nothing of kms is imported here and
everything comes from the environment:

* ``KMS_LOAD_TOKENS``: API tokens, comma-separated, one per user (each token has its own
  ``KMS_API_RATE`` throttle, so one client's pace never throttles another);
* ``KMS_LOAD_DOMAIN``: the domain searched and asked (default ``healthcare``);
* ``KMS_LOAD_SEARCHERS`` / ``KMS_LOAD_ASKERS``: exactly how many of each (20 and 5);
* ``KMS_LOAD_QUERIES`` / ``KMS_LOAD_QUESTIONS``: JSON lists of texts (the demo corpus's);
* ``KMS_LOAD_RATE``: the most requests per second one user sends (kept under the throttle);
* ``KMS_LOAD_TIMEOUT``: seconds a request may take before it counts as failed.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator

from locust import HttpUser, constant_throughput, task
from locust.exception import StopUser

DEFAULT_QUERIES = [
    "sepsis six", "NEWS2 score escalation", "hand hygiene before patient contact",
    "warfarin high INR minor bleeding", "CURB-65 pneumonia severity",
    "blood transfusion reaction", "pressure ulcer prevention", "falls risk assessment",
    "hypoglycaemia treatment", "MRSA decolonisation", "VTE prophylaxis after surgery",
    "controlled drugs register", "diabetic foot urgent referral", "consent capacity",
    "paediatric fever traffic light", "discharge planning", "visiting hours",
    "annual leave request", "medication reconciliation on admission", "chaperone",
    "safeguarding adults referral", "incident reporting", "DOAC counselling",
]
DEFAULT_QUESTIONS = [
    "When must a sepsis screen be started?",
    "What should be done for a high INR with minor bleeding?",
    "How is the severity of community-acquired pneumonia assessed?",
    "How long should staff clean their hands with alcohol rub?",
    "How is hypoglycaemia treated in a conscious adult?",
    "Who may take consent for treatment?",
    "When is a patient screened for MRSA?",
    "What are the visiting hours?",
]


def _texts(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if not raw:
        return default
    texts = json.loads(raw)
    if not isinstance(texts, list) or not texts or not all(
            isinstance(text, str) and text.strip() for text in texts):
        raise ValueError(f"{name} must be a JSON list of non-empty strings.")
    return texts


TOKENS = iter([token.strip() for token in os.environ.get("KMS_LOAD_TOKENS", "").split(",")
               if token.strip()])
DOMAIN = os.environ.get("KMS_LOAD_DOMAIN") or "healthcare"
QUERIES = _texts("KMS_LOAD_QUERIES", DEFAULT_QUERIES)
QUESTIONS = _texts("KMS_LOAD_QUESTIONS", DEFAULT_QUESTIONS)
RATE = float(os.environ.get("KMS_LOAD_RATE") or 8)
TIMEOUT = float(os.environ.get("KMS_LOAD_TIMEOUT") or 150)
_started = itertools.count()


def _check(response) -> None:
    """Anything but 200 is a failure, with its status and the start of its body."""
    if response.status_code == 200:
        response.success()
        return
    body = (response.text or "").strip()[:200] or str(response.error)
    response.failure(f"HTTP {response.status_code}: {body}")


class ApiClient(HttpUser):
    """One API client: its own token, and the texts in turn from its own starting point (so
    the clients do not all send the same text at the same moment)."""

    abstract = True
    wait_time = constant_throughput(RATE)
    texts: list[str] = []

    def on_start(self) -> None:
        token = next(TOKENS, None)
        if token is None:
            self.environment.events.request.fire(
                request_type="SETUP", name="api token", response_time=0, response_length=0,
                exception=RuntimeError("more users than KMS_LOAD_TOKENS"), context={})
            raise StopUser
        self.client.headers["Authorization"] = f"Bearer {token}"
        start = next(_started) % len(self.texts)
        self.turns: Iterator[str] = itertools.cycle(self.texts[start:] + self.texts[:start])


class Searcher(ApiClient):
    fixed_count = int(os.environ.get("KMS_LOAD_SEARCHERS") or 20)
    weight = 1 if fixed_count else 0  # none asked for: locust leaves the class out
    texts = QUERIES

    @task
    def search(self) -> None:
        with self.client.get("/api/v1/search", params={"q": next(self.turns), "domain": DOMAIN},
                             name="/api/v1/search", timeout=TIMEOUT,
                             catch_response=True) as response:
            _check(response)


class Asker(ApiClient):
    fixed_count = int(os.environ.get("KMS_LOAD_ASKERS") or 5)
    weight = 1 if fixed_count else 0
    texts = QUESTIONS

    @task
    def ask(self) -> None:
        with self.client.post("/api/v1/ask", json={"question": next(self.turns),
                                                   "domain": DOMAIN},
                              name="/api/v1/ask", timeout=TIMEOUT,
                              catch_response=True) as response:
            _check(response)
