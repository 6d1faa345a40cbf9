"""``/api/v1/``: the versioned internal API, its OpenAPI schema and interactive docs.

django-ninja rather than DRF + drf-spectacular: the schemas are the type hints, so the
OpenAPI document cannot drift from the code, and the endpoints stay plain typed functions
like the services they call. Every endpoint needs a token or the portal's session.
"""

from __future__ import annotations

from ninja import NinjaAPI

from search.api import conversations, documents, errors, feedback, querying
from search.api.auth import AUTH
from search.api.throttling import TokenRateThrottle

api = NinjaAPI(title="kms search API", version="1", auth=AUTH, urls_namespace="api-v1",
               throttle=[TokenRateThrottle()],
               description="Search, ask and manage the documents of a kms knowledge base "
               "with your own access. Send 'Authorization: Bearer <token>' (create tokens in "
               "the admin).")
errors.install(api)
api.add_router("/", querying.router)
api.add_router("/documents", documents.router)
api.add_router("/conversations", conversations.router)
api.add_router("/feedback", feedback.router)
