"""Keep secrets out of Sentry events: ``before_send`` and ``before_send_transaction``.

Two rules, applied to every string in the event (message, exception values,
request headers, data and cookies, breadcrumbs, extra, contexts, stack-frame
``vars``, span data):

- a value under a key named like a secret (``api_key``, ``Authorization``, ...)
  is masked whatever it holds;
- any other string has the secret values known to this process replaced, along
  with URL credentials and key-shaped strings (see :func:`llmapp.redaction.redact`).

The known secret values are the strings under secret-named keys anywhere in the
Django settings (``SECRET_KEY``, ``LLM_PROVIDERS[*]["OPTIONS"]["api_key"]``,
``DATABASES[*]["PASSWORD"]``, ...) and in secret-named environment variables;
they are collected once and forgotten whenever a setting changes.

If scrubbing fails the hooks do not raise (the SDK would drop the event without a
word): an error event is replaced by a stripped one that says so, a transaction is
dropped, and the failure is logged to ``llmapp.sdk.scrubbing``.
"""

import logging
import os

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from llmapp.conf import on_change
from llmapp.redaction import is_secret_name, mask, redact

logger = logging.getLogger(__name__)

# Shorter values would replace common words; such values are still masked under a
# secret-named key.
MIN_SECRET_LENGTH = 6
# Django settings whose names look secret but hold public configuration.
NOT_SECRET_SETTINGS = frozenset({"AUTH_PASSWORD_VALIDATORS", "PASSWORD_HASHERS", "PASSWORD_RESET_TIMEOUT"})
# Event fields that can hold nothing secret: what a stripped event keeps.
SAFE_EVENT_FIELDS = ("event_id", "timestamp", "level", "platform", "release", "environment", "sdk")
_MAX_DEPTH = 32

_secret_values = None


def before_send(event, hint):
    """Return the error event with secrets masked; never raises."""
    try:
        return scrub(event, secret_values())
    except Exception:
        logger.exception("Could not scrub a Sentry event; sending a stripped copy instead")
        return _stripped(event)


def before_send_transaction(event, hint):
    """Return the transaction with secrets masked, or ``None`` if that fails; never raises."""
    try:
        return scrub(event, secret_values())
    except Exception:
        logger.exception("Could not scrub a Sentry transaction; dropping it")
        return None


def scrub(data, secrets, key=None):
    """Return a copy of ``data`` with every string scrubbed; ``key`` is the key it sits under."""
    if isinstance(data, str):
        return mask(data) if key is not None and is_secret_name(key) else redact(data, secrets)
    if isinstance(data, dict):
        return {name: scrub(value, secrets, name) for name, value in data.items()}
    if isinstance(data, list | tuple):
        if len(data) == 2 and isinstance(data[0], str) and is_secret_name(data[0]):
            # A [name, value] pair, as some integrations report headers.
            return [data[0], scrub(data[1], secrets, data[0])]
        return [scrub(item, secrets, key) for item in data]
    return data


def secret_values():
    """Return the secret values in settings and the environment, longest first."""
    global _secret_values
    if _secret_values is None:
        found = set()
        for name in dir(settings):
            if name.isupper() and name not in NOT_SECRET_SETTINGS:
                _collect(name, getattr(settings, name, None), found)
        for name, value in os.environ.items():
            _collect(name, value, found)
        # Longest first, so that a secret containing another is replaced whole.
        _secret_values = tuple(
            sorted((value for value in found if len(value) >= MIN_SECRET_LENGTH), key=len, reverse=True)
        )
    return _secret_values


@on_change
def forget_secret_values():
    global _secret_values
    _secret_values = None


@receiver(setting_changed)
def _setting_changed(*, setting, **kwargs):
    # on_change covers LLM_* settings only; secrets also live in SECRET_KEY,
    # DATABASES, SENTRY_SDK_CONFIG...
    forget_secret_values()


def _collect(name, value, found, depth=0):
    """Add to ``found`` the strings in ``value`` whose nearest key is named like a secret."""
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, str):
        if is_secret_name(name):
            found.add(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _collect(key, item, found, depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _collect(name, item, found, depth + 1)


def _stripped(event):
    try:
        stripped = {field: event[field] for field in SAFE_EVENT_FIELDS if field in event}
        stripped["message"] = (
            "llmapp could not scrub this event, so its content was not sent; "
            "see the llmapp.sdk.scrubbing log."
        )
        return stripped
    except Exception:
        return None
