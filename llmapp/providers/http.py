"""What the HTTP providers share: which statuses are transient, Retry-After, error bodies."""

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from llmapp.exceptions import ProviderError

#: Statuses worth retrying; anything else fails at once.
TRANSIENT_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
#: How much of a server's error message is kept (a gateway's may carry its upstream's:
#: OpenRouter's ``metadata.raw``).
MAX_DETAIL = 1000
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
    detail = provider.redact(str(detail))
    if len(detail) > MAX_DETAIL:
        detail = detail[:MAX_DETAIL] + "…"
    error = ProviderError(
        joined(detail, hint),
        provider=provider.alias,
        status_code=status,
        # The server's to choose, like the detail: an echoing one may put a credential in it.
        request_id=provider.redact(request_id) if request_id else None,
        transient=status in transient,
        retry_after=retry_after,
    )
    # A model this server does not have: a fallback (another server, another model) may.
    error.try_elsewhere = status == 404
    return error


def joined(detail, hint):
    """Return ``detail``, then ``hint`` after a semicolon: the detail's own full stop dropped."""
    if not hint:
        return detail
    detail = str(detail).rstrip()
    if detail.endswith(".") and not detail.endswith(".."):
        detail = detail[:-1]
    return f"{detail}; {hint}"


def malformed_answer(provider, request_id=None):
    return ProviderError(
        "the server's answer is not valid JSON for this API", provider=provider.alias, request_id=request_id
    )


def error_message(body):
    """Return the message of a JSON error body (``{"error": {"message": ...}}`` and kin)."""
    body = _unwrapped(body)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            message = error.get("message")
            # A gateway's own words ("Provider returned error"), then the upstream's (OpenRouter).
            metadata = error.get("metadata")
            upstream = metadata.get("raw") if isinstance(metadata, dict) else None
            if isinstance(upstream, str) and upstream.strip() and message:
                # Cut in status_error(), once redacted: a cut secret would no longer be known.
                return f"{message}: {upstream.strip()}"
            return message
        return str(error)
    return str(body) if body else None


def retry_info_delay(body):
    """Return the seconds of a google.rpc.RetryInfo detail of an error body, or None.

    Google's APIs say how long to wait in the body (``"retryDelay": "7s"``), not in a header;
    OpenAI-compatible gateways in front of them pass the body on, sometimes as a list.
    """
    body = _unwrapped(body)
    error = body.get("error", body) if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            try:
                return max(0.0, float(str(detail.get("retryDelay", "")).removesuffix("s")))
            except ValueError:
                return None
    return None


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


def _unwrapped(body):
    """The error body itself: Google's OpenAI-compatible endpoint wraps it in a list of one."""
    return body[0] if isinstance(body, list) and len(body) == 1 else body
