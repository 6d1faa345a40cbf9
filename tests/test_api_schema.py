"""The API against its own OpenAPI schema: schemathesis generates requests for every
operation (valid and invalid), sends them with a real token to the real application and
database, and checks there is no 5xx and no response outside the schema."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from kms.tokens import issue_token

schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", get_wsgi_application())
SENT: list[int] = []


@pytest.fixture
def keep_connection() -> Iterator[None]:
    """The WSGI handler closes the database connection after each request; inside a test's
    transaction it must not (Django's test client does the same)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def not_a_server_error(ctx, response, case) -> None:
    SENT.append(response.status_code)
    assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code}"


@pytest.mark.slow
@pytest.mark.django_db(transaction=False)
@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_no_schema_violations(case, corpus, keep_connection) -> None:
    _, secret = issue_token(corpus["ward-b-nurse"], "schemathesis")
    case.call_and_validate(
        headers={"Authorization": f"Bearer {secret}"},
        checks=[not_a_server_error, response_schema_conformance, status_code_conformance,
                content_type_conformance],
    )


def test_schemathesis_sent_requests() -> None:
    """Runs after the generated cases (file order): they really went out."""
    print(f"\nschemathesis: {len(SENT)} generated requests, "
          f"{sum(code >= 500 for code in SENT)} with a 5xx")
    assert not any(code >= 500 for code in SENT)
