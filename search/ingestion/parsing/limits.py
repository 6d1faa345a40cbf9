"""Resource limits for parsing untrusted files; Django-free, so the parser child can use them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

MIB = 1024 * 1024


@dataclass(frozen=True)
class ParseLimits:
    """Bounds one file may use; each names the setting that raises it in its error message."""

    memory_mb: int = 2048  # RLIMIT_AS of the parser child (KMS_PARSE_MEMORY_MB)
    timeout_seconds: float = 300.0  # wall time per file (KMS_PARSE_TIMEOUT_SECONDS)
    pdf_max_pages: int = 5000  # KMS_PDF_MAX_PAGES
    zip_max_uncompressed_mb: int = 1024  # total declared size of a DOCX's members
    zip_max_ratio: float = 200.0  # declared size / compressed size of one member
    max_text_chars: int = 20_000_000  # longer extracted text fails the file

    @classmethod
    def from_settings(cls) -> ParseLimits:
        """The limits configured in Django settings (defaults where a setting is absent)."""
        from django.conf import settings  # here only: the parser child must not import Django

        default = cls()
        return cls(
            memory_mb=int(getattr(settings, "KMS_PARSE_MEMORY_MB", default.memory_mb)),
            timeout_seconds=float(
                getattr(settings, "KMS_PARSE_TIMEOUT_SECONDS", default.timeout_seconds)
            ),
            pdf_max_pages=int(getattr(settings, "KMS_PDF_MAX_PAGES", default.pdf_max_pages)),
            zip_max_uncompressed_mb=int(
                getattr(settings, "KMS_ZIP_MAX_UNCOMPRESSED_MB", default.zip_max_uncompressed_mb)
            ),
            zip_max_ratio=float(getattr(settings, "KMS_ZIP_MAX_RATIO", default.zip_max_ratio)),
            max_text_chars=int(getattr(settings, "KMS_MAX_TEXT_CHARS", default.max_text_chars)),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> ParseLimits:
        """Rebuild from ``to_json`` output; unknown keys are ignored, missing ones default."""
        types = {f.name: f.type for f in fields(cls)}
        return cls(
            **{
                name: (float if types[name] == "float" else int)(value)
                for name, value in values.items()
                if name in types
            }
        )


def text_too_long(length: int, limits: ParseLimits, *, at_least: bool = False) -> str:
    """The error for text past ``max_text_chars`` (``at_least``: counting stopped early)."""
    more = "more than " if at_least else ""
    return (
        f"The extracted text has {more}{length:,} characters; the limit is "
        f"{limits.max_text_chars:,} (KMS_MAX_TEXT_CHARS)."
    )
