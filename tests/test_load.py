"""manage.py load_test: reading locust's CSV statistics, the table, and one short real run."""

from __future__ import annotations

from dataclasses import replace
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from kms.store.models import ApiToken
from search.evaluation import load

HEADER = ('"Type","Name","Request Count","Failure Count","Median Response Time",'
          '"Average Response Time","Min Response Time","Max Response Time",'
          '"Average Content Size","Requests/s","Failures/s","50%","66%","75%","80%","90%",'
          '"95%","98%","99%","99.9%","99.99%","100%"')
STATS = f"""{HEADER}
"POST","/api/v1/ask",40,1,900,950.5,300,2400,2048.0,0.66,0.02,900,1000,1100,1200,1500,2100,2300,2400,2400,2400,2400
"GET","/api/v1/search",1800,0,75,81.2,20,640,4096.0,30.1,0.0,75,82,90,96,120,180,300,420,640,640,640
"","Aggregated",1840,1,77,100.3,20,2400,4050.0,30.76,0.02,77,85,93,100,130,210,800,1100,2400,2400,2400
"""
FAILURES = """"Method","Name","Error","Occurrences","First Seen","Last Seen"
"POST","/api/v1/ask","CatchResponseError('HTTP 503: {""code"": ""generator_unavailable""}')",1,"",""
"GET","/api/v1/search","ConnectionRefusedError(111, 'Connection refused')",1,"",""
"""
EXCEPTIONS = """"Count","Message","Traceback","Nodes"
2,"KeyError('turns')","Traceback ...","local"
"""


def write(prefix: Path, stats: str = STATS, failures: str | None = None,
          exceptions: str | None = None) -> Path:
    Path(f"{prefix}_stats.csv").write_text(stats)
    if failures is not None:
        Path(f"{prefix}_failures.csv").write_text(failures)
    if exceptions is not None:
        Path(f"{prefix}_exceptions.csv").write_text(exceptions)
    return prefix


def report(prefix: Path) -> load.LoadReport:
    endpoints, total = load.read_stats(prefix)
    failures, exceptions = load.read_failures(prefix)
    return load.LoadReport(url="http://127.0.0.1:8000", domain="healthcare", searchers=20,
                           askers=5, seconds=60, client_rate=8.0, endpoints=endpoints,
                           total=total, failures=failures, exceptions=exceptions)


def test_stats_are_read_per_endpoint_with_the_aggregated_row_apart(tmp_path: Path) -> None:
    endpoints, total = load.read_stats(write(tmp_path / "run"))
    assert [e.name for e in endpoints] == ["/api/v1/ask", "/api/v1/search"]
    assert endpoints[1] == load.EndpointStats("/api/v1/search", 1800, 0, 30.1, 75.0, 180.0)
    assert total == load.EndpointStats("Aggregated", 1840, 1, 30.76, 77.0, 210.0)


def test_an_endpoint_without_finished_requests_has_no_percentiles(tmp_path: Path) -> None:
    na = ",".join(['"N/A"'] * 11)
    stats = (f'{HEADER}\n"POST","/api/v1/ask",0,0,0,0.0,0,0,0.0,0.0,0.0,{na}\n'
             f'"","Aggregated",0,0,0,0.0,0,0,0.0,0.0,0.0,{na}\n')
    endpoints, total = load.read_stats(write(tmp_path / "run", stats))
    assert endpoints[0].p50_ms is None and total.p95_ms is None
    assert "| `/api/v1/ask` | 0 | 0 | 0.0 | - | - |" in load.format_table(report(tmp_path / "run"))


def test_missing_statistics_say_so(tmp_path: Path) -> None:
    with pytest.raises(load.LoadError, match="no statistics"):
        load.read_stats(tmp_path / "run")
    with pytest.raises(load.LoadError, match="no Aggregated row"):
        load.read_stats(write(tmp_path / "run", STATS.rsplit('"","Aggregated"', 1)[0]))


def test_failures_and_exceptions_are_listed_most_frequent_first(tmp_path: Path) -> None:
    result = report(write(tmp_path / "run", failures=FAILURES, exceptions=EXCEPTIONS))
    assert result.failures == [
        "exception in a user: KeyError('turns') (2×)",
        'POST /api/v1/ask: HTTP 503: {"code": "generator_unavailable"} (1×)',
        "GET /api/v1/search: ConnectionRefusedError(111, 'Connection refused') (1×)",
    ]
    assert result.failed == 3  # the statistics' failed requests (1) plus the exceptions (2)
    assert result.as_dict()["failed"] == 3 and result.as_dict()["total"]["requests"] == 1840


def test_the_table_has_each_endpoint_then_all_requests(tmp_path: Path) -> None:
    table = load.format_table(report(write(tmp_path / "run")))
    assert table.splitlines() == [
        "| Endpoint | Requests | Failures | Req/s | p50 ms | p95 ms |",
        "|---|---:|---:|---:|---:|---:|",
        "| `/api/v1/ask` | 40 | 1 | 0.7 | 900 | 2,100 |",
        "| `/api/v1/search` | 1,800 | 0 | 30.1 | 75 | 180 |",
        "| **all** | 1,840 | 1 | 30.8 | 77 | 210 |",
    ]


def test_the_clients_rate_cap_is_noticed(tmp_path: Path) -> None:
    result = report(write(tmp_path / "run"))
    assert load.capped(result) == []
    slow = replace(result, client_rate=1.5)
    assert load.capped(slow) == ["/api/v1/search"]  # 30.1 req/s of 20 clients at 1.5 each


@pytest.mark.parametrize(("rate", "per_second"), [
    ("600/min", 8.0), ("10/s", 8.0), ("3600/hour", 0.8), ("120/2m", 0.8), ("86400/day", 0.8)])
def test_client_rate_stays_under_the_api_rate(rate: str, per_second: float) -> None:
    assert load.client_rate(rate) == pytest.approx(per_second)


def test_an_unreadable_api_rate_is_refused() -> None:
    with pytest.raises(load.LoadError, match="600/min"):
        load.client_rate("fast")


def test_locust_runs_headless_with_every_user_at_once(tmp_path: Path) -> None:
    argv = load.locust_command("http://127.0.0.1:8000/", 25, 60, tmp_path / "run", "py")
    assert argv[:3] == ["py", "-m", "locust"] and str(load.LOCUSTFILE) in argv
    assert " ".join(argv[argv.index("--headless"):]).startswith(
        "--headless -u 25 -r 25 -t 60s --host http://127.0.0.1:8000 --stop-timeout 30s --csv ")
    env = load.locust_environment(["a", "b", "c"], "healthcare", 2, 1, 8.0,
                                  questions=["Why?"])
    assert env["KMS_LOAD_TOKENS"] == "a,b,c" and env["KMS_LOAD_QUESTIONS"] == '["Why?"]'
    assert "KMS_LOAD_QUERIES" not in env
    with pytest.raises(load.LoadError, match="need as many tokens"):
        load.locust_environment(["a"], "healthcare", 2, 1, 8.0)


def test_the_command_refuses_a_system_that_is_not_running() -> None:
    with pytest.raises(CommandError, match="make run"):
        call_command("load_test", "--url", "http://127.0.0.1:9", "--seconds", "1")


@pytest.mark.slow
def test_a_short_run_against_a_live_server(corpus, live_server, transactional_db,
                                           tmp_path: Path) -> None:
    out = StringIO()
    call_command("load_test", "--url", live_server.url, "--user", "nurse", "--searchers", "2",
                 "--askers", "1", "--seconds", "5", "--json", str(tmp_path / "load.json"),
                 stdout=out, stderr=StringIO())
    text = out.getvalue()
    assert "| `/api/v1/search` |" in text and "| `/api/v1/ask` |" in text, text
    assert "0 failed" in text and "Revoked the 3 load-test tokens." in text
    tokens = ApiToken.objects.filter(user=corpus["nurse"], name__startswith="load_test")
    assert tokens.count() == 3 and not tokens.filter(revoked_at__isnull=True).exists()
    figures = (tmp_path / "load.json").read_text()
    assert '"failed": 0' in figures
