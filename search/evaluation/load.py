"""The search API under concurrent clients (``manage.py load_test``): locust in a subprocess.

Locust runs as its own process because it monkey-patches the standard library with gevent
on import, which would break Django's database connections; this module only builds its
command line and environment, waits for it and reads the CSV statistics it writes
(``--csv PREFIX``: ``PREFIX_stats.csv``, ``PREFIX_failures.csv``, ``PREFIX_exceptions.csv``).
The users themselves are in ``locustfile.py`` next to this module.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
# Locust's own names of the endpoints (the query string is left out, so searches group).
SEARCH, ASK = "/api/v1/search", "/api/v1/ask"
# Each client stays this far under its token's KMS_API_RATE, so a fast system is measured
# rather than throttled (429s would count as failures).
RATE_MARGIN = 0.8
# Longer than gunicorn's --timeout (120 s): a request it gives up on is an error we see.
REQUEST_TIMEOUT = 150.0
# At the end, the requests in flight finish (and count) for up to this long, instead of
# being dropped and served later to revoked tokens.
STOP_TIMEOUT = 30
# What the warm-up sends unless given texts: any text makes a web worker load what it serves.
WARM_UP_QUERY, WARM_UP_QUESTION = "hand hygiene", "How long should hands be washed?"
_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60,
          "h": 3600, "hour": 3600, "d": 86400, "day": 86400}


class LoadError(RuntimeError):
    """The load test cannot run or its results cannot be read; the message says why."""


@dataclass(frozen=True)
class EndpointStats:
    """One row of locust's statistics: an endpoint, or ``Aggregated`` for all of them."""

    name: str
    requests: int
    failures: int
    requests_per_second: float
    p50_ms: float | None  # None: no request finished
    p95_ms: float | None


@dataclass(frozen=True)
class LoadReport:
    url: str
    domain: str
    searchers: int
    askers: int
    seconds: int
    client_rate: float  # the most requests per second one client sends
    endpoints: list[EndpointStats]
    total: EndpointStats
    failures: list[str] = field(default_factory=list)  # "METHOD name: error (N×)", ...
    exceptions: int = 0  # raised in the users' own code, not by a request

    @property
    def failed(self) -> int:
        """Failed requests plus exceptions: the acceptance criterion wants zero."""
        return self.total.failures + self.exceptions

    def as_dict(self) -> dict:
        return asdict(self) | {"failed": self.failed}


def client_rate(api_rate: str, margin: float = RATE_MARGIN) -> float:
    """Requests per second one client may send under ``KMS_API_RATE`` (e.g. ``600/min``)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*", api_rate.lower())
    unit = match and (_UNITS.get(match.group(3)) or _UNITS.get(match.group(3).rstrip("s")))
    if not match or not unit:
        raise LoadError(f"Cannot read the API rate {api_rate!r} (expected e.g. 600/min).")
    per = int(match.group(2) or 1) * unit
    return margin * int(match.group(1)) / per


def check_health(url: str, timeout: float = 5.0) -> None:
    """The system answers ``/healthz``; otherwise say how to start it, before any token."""
    health = f"{url.rstrip('/')}/healthz"
    try:
        response = httpx.get(health, timeout=timeout)
    except httpx.HTTPError as exc:
        raise LoadError(f"Nothing answers {health} ({exc}). Start the system with `make run` "
                        "(wait for 'kms is running'), or pass --url.") from exc
    if response.status_code != 200:
        raise LoadError(f"{health} answered {response.status_code}, not 200: "
                        f"{response.text[:200]!r}. Start the system with `make run` (or check "
                        "its logs in .kms-data/logs), or pass --url.")


def warm_up(url: str, secret: str, domain: str, query: str = WARM_UP_QUERY,
            question: str = WARM_UP_QUESTION, concurrency: int = 4) -> float:
    """A few searches and asks at once before measuring, so every web worker has loaded its
    models and indexes (the first request of a worker takes seconds); returns seconds taken."""
    headers = {"Authorization": f"Bearer {secret}"}
    requests = ([("GET", SEARCH, {"params": {"q": query, "domain": domain}})] * concurrency
                + [("POST", ASK, {"json": {"question": question, "domain": domain}})]
                * max(1, concurrency // 2))
    started = time.monotonic()
    with httpx.Client(base_url=url.rstrip("/"), headers=headers,
                      timeout=REQUEST_TIMEOUT) as client, ThreadPoolExecutor(len(requests)) as pool:
        responses = list(pool.map(lambda r: _send(client, *r), requests))
    for method, path, response in responses:
        if isinstance(response, Exception) or response.status_code != 200:
            detail = response if isinstance(response, Exception) else (
                f"HTTP {response.status_code}: {response.text.strip()[:200]}")
            raise LoadError(f"The warm-up {method} {path} failed ({detail}).")
    return time.monotonic() - started


def _send(client: httpx.Client, method: str, path: str,
          kwargs: dict) -> tuple[str, str, httpx.Response | Exception]:
    try:
        return method, path, client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        return method, path, exc


def locust_command(url: str, users: int, seconds: int, csv_prefix: Path,
                   python: str = sys.executable, locustfile: Path = LOCUSTFILE) -> list[str]:
    """Headless locust starting every user within the first second, summary only; its exit
    code says whether it ran, not whether requests failed (the statistics say that)."""
    return [python, "-m", "locust", "-f", str(locustfile), "--headless",
            "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--host", url.rstrip("/"),
            "--stop-timeout", f"{STOP_TIMEOUT}s", "--csv", str(csv_prefix), "--only-summary",
            "--exit-code-on-error", "0"]


def locust_environment(tokens: Sequence[str], domain: str, searchers: int, askers: int,
                       rate: float, queries: Sequence[str] | None = None,
                       questions: Sequence[str] | None = None) -> dict[str, str]:
    """What ``locustfile.py`` reads: one token per user, the domain, the users, the texts."""
    if len(tokens) < searchers + askers:
        raise LoadError(f"{searchers + askers} clients need as many tokens, not {len(tokens)}.")
    env = {"KMS_LOAD_TOKENS": ",".join(tokens), "KMS_LOAD_DOMAIN": domain,
           "KMS_LOAD_SEARCHERS": str(searchers), "KMS_LOAD_ASKERS": str(askers),
           "KMS_LOAD_RATE": f"{rate:g}", "KMS_LOAD_TIMEOUT": f"{REQUEST_TIMEOUT:g}"}
    if queries:
        env["KMS_LOAD_QUERIES"] = json.dumps(list(queries))
    if questions:
        env["KMS_LOAD_QUESTIONS"] = json.dumps(list(questions))
    return env


def _milliseconds(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:  # "N/A": nothing finished
        return None


def read_stats(csv_prefix: Path) -> tuple[list[EndpointStats], EndpointStats]:
    """The endpoints of ``PREFIX_stats.csv`` and its ``Aggregated`` row."""
    path = Path(f"{csv_prefix}_stats.csv")
    if not path.is_file():
        raise LoadError(f"Locust wrote no statistics ({path} is missing).")
    endpoints, total = [], None
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            stats = EndpointStats(
                name=row["Name"], requests=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                requests_per_second=float(row["Requests/s"]),
                p50_ms=_milliseconds(row["50%"]), p95_ms=_milliseconds(row["95%"]),
            )
            if row["Name"] == "Aggregated" and not row["Type"]:
                total = stats
            else:
                endpoints.append(stats)
    if total is None:
        raise LoadError(f"{path} has no Aggregated row.")
    return endpoints, total


def read_failures(csv_prefix: Path) -> tuple[list[str], int]:
    """Every distinct failure and exception, most frequent first, as one line each; and the
    number of exceptions (failed requests are already counted in the statistics)."""
    lines: list[tuple[int, str]] = []
    failures = Path(f"{csv_prefix}_failures.csv")
    if failures.is_file():
        with failures.open(newline="") as fh:
            for row in csv.DictReader(fh):
                count = int(row["Occurrences"])
                lines.append((count, f"{row['Method']} {row['Name']}: "
                                     f"{_unwrapped(row['Error'])} ({count}×)"))
    raised = 0
    exceptions = Path(f"{csv_prefix}_exceptions.csv")
    if exceptions.is_file():
        with exceptions.open(newline="") as fh:
            for row in csv.DictReader(fh):
                count = int(row["Count"])
                raised += count
                lines.append((count, f"exception in a user: {row['Message']} ({count}×)"))
    return [line for _, line in sorted(lines, key=lambda item: -item[0])], raised


def _unwrapped(error: str) -> str:
    """The locustfile's message without the repr locust wraps a marked failure in."""
    match = re.fullmatch(r"""CatchResponseError\((['"])(.*)\1\)""", error, flags=re.DOTALL)
    return match.group(2) if match else error


def run_load(url: str, tokens: Sequence[str], *, domain: str, searchers: int, askers: int,
             seconds: int, rate: float, queries: Sequence[str] | None = None,
             questions: Sequence[str] | None = None,
             on_tick: Callable[[float], None] | None = None) -> LoadReport:
    """Run locust for ``seconds`` and read what it measured; ``on_tick`` gets seconds so far."""
    users = searchers + askers
    if users < 1 or searchers < 0 or askers < 0:
        raise LoadError("Run at least one searcher or asker.")
    if seconds < 1:
        raise LoadError("Run for at least one second.")
    env = {**os.environ, **locust_environment(tokens, domain, searchers, askers, rate,
                                              queries, questions)}
    with tempfile.TemporaryDirectory(prefix="kms-load-") as tmp:
        prefix = Path(tmp) / "load"
        log = Path(tmp) / "locust.log"
        # Locust reads locust.conf and pyproject.toml from its working directory: none here.
        with log.open("wb") as out:
            process = subprocess.Popen(locust_command(url, users, seconds, prefix), cwd=tmp,
                                       env=env, stdout=out, stderr=subprocess.STDOUT)
            started = time.monotonic()
            deadline = started + seconds + STOP_TIMEOUT + 60  # locust's start and stop
            try:
                while process.poll() is None:
                    if time.monotonic() > deadline:
                        raise LoadError(f"Locust did not stop within {STOP_TIMEOUT + 60} s "
                                        f"of its {seconds} s:\n{_tail(log)}")
                    if on_tick:
                        on_tick(time.monotonic() - started)
                    time.sleep(0.5)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        if process.returncode != 0:
            raise LoadError(f"Locust exited with {process.returncode}:\n{_tail(log)}")
        try:
            endpoints, total = read_stats(prefix)
        except LoadError as exc:
            raise LoadError(f"{exc}\n{_tail(log)}") from exc
        failures, exceptions = read_failures(prefix)
        return LoadReport(url=url, domain=domain, searchers=searchers, askers=askers,
                          seconds=seconds, client_rate=rate, endpoints=endpoints, total=total,
                          failures=failures, exceptions=exceptions)


def _tail(log: Path, characters: int = 3000) -> str:
    return log.read_text(errors="replace")[-characters:] if log.is_file() else ""


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def format_table(report: LoadReport) -> str:
    """A Markdown table: each endpoint, then all requests together."""
    lines = ["| Endpoint | Requests | Failures | Req/s | p50 ms | p95 ms |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in [*report.endpoints, report.total]:
        name = "**all**" if row is report.total else f"`{row.name}`"
        lines.append(f"| {name} | {row.requests:,} | {row.failures:,} | "
                     f"{row.requests_per_second:,.1f} | {_ms(row.p50_ms)} | {_ms(row.p95_ms)} |")
    return "\n".join(lines)


def capped(report: LoadReport, closeness: float = 0.95) -> list[str]:
    """The endpoints whose throughput the clients' own rate limit bounded, not the system."""
    users = {SEARCH: report.searchers, ASK: report.askers}
    return [row.name for row in report.endpoints if users.get(row.name) and not row.failures
            and row.requests_per_second >= closeness * report.client_rate * users[row.name]]
