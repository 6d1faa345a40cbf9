"""The internal search API (``/api/v1/``): django-ninja endpoints over the same services and
selectors as the shell commands, with per-user tokens and one JSON error format."""
