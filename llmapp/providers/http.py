"""What the HTTP providers share: which statuses are transient, Retry-After, error bodies."""

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

#: Statuses worth retrying; anything else fails at once.
TRANSIENT_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


def error_message(body):
    """Return the message of a JSON error body (``{"error": {"message": ...}}`` and kin)."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return error.get("message")
        return str(error)
    return str(body) if body else None


def retry_after(headers):
    """Return Retry-After in seconds (it may be seconds or an HTTP date), or None."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return float(value) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None
