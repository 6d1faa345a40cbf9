"""Container health check for the kms web process (the slim image has no curl).

GETs /healthz on the local gunicorn with a Host header taken from
DJANGO_ALLOWED_HOSTS (so Django does not log DisallowedHost every 30 s).
Healthy on any HTTP status below 500: a 4xx still proves the process is up.
Override the URL with KMS_HEALTHCHECK_URL.
"""

import os
import sys
import urllib.error
import urllib.request

URL = os.environ.get("KMS_HEALTHCHECK_URL", "http://127.0.0.1:8000/healthz")


def host_header() -> str:
    hosts = [h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if h.strip()]
    host = hosts[0] if hosts else "localhost"
    if host == "*":
        return "localhost"
    return host.lstrip(".")  # ".example.com" also matches "example.com"


request = urllib.request.Request(URL, headers={"Host": host_header()})
try:
    with urllib.request.urlopen(request, timeout=8) as response:
        status = response.status
except urllib.error.HTTPError as exc:
    status = exc.code
except Exception as exc:  # connection refused, timeout, ...
    print(f"unhealthy: {exc}", file=sys.stderr)
    sys.exit(1)

if status >= 500:
    print(f"unhealthy: HTTP {status}", file=sys.stderr)
    sys.exit(1)
print(f"ok: HTTP {status}")
