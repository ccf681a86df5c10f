"""What the HTTP providers share: which statuses are transient, Retry-After, error bodies."""

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from ..exceptions import ProviderError

#: Statuses worth retrying; anything else fails at once.
TRANSIENT_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
#: What an operator should check, by status; a provider may add its own.
HINTS = {
    401: "check the provider's api_key",
    403: "the API key is not allowed to use this model or endpoint",
    404: "check the model name and the base_url",
    429: "rate limited or out of quota",
}


def status_error(
    provider, status, detail, *, request_id=None, retry_after=None, hints=HINTS, transient=TRANSIENT_STATUSES
):
    """Return the ProviderError of an HTTP error answer: redacted, hinted, transient or not."""
    hint = hints.get(status)
    return ProviderError(
        provider.redact(f"{detail}; {hint}" if hint else detail),
        provider=provider.alias,
        status_code=status,
        # The server's to choose, like the detail: an echoing one may put a credential in it.
        request_id=provider.redact(request_id) if request_id else None,
        transient=status in transient,
        retry_after=retry_after,
    )


def malformed_answer(provider, request_id=None):
    return ProviderError(
        "the server's answer is not valid JSON for this API", provider=provider.alias, request_id=request_id
    )


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
