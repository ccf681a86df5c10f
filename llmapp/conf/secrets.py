"""Keep secrets out of messages, logs, events and pages: the one place that knows credentials.

A credential travels in more forms than it is configured in: ``http://user:pa%40ss@host``
goes out as ``Authorization: Basic dXNlcjpwYUBzcw==`` (the HTTP client turns URL
userinfo into Basic auth), a custom header's value goes out as is, and a server may
echo any of them back. :func:`secrets_in` finds every form of the credentials in a
configuration, :func:`known_secrets` those of this process, and :func:`redact` masks
them, with URL userinfo, query-string credentials and key-shaped strings, in any text.
"""

import base64
import json
import logging
import os
import re
from urllib.parse import quote, unquote

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from llmapp import conf

MASK = "••••"
# "token" but not "tokens": max_tokens and input_tokens are counts, not secrets.
SECRET_NAME = re.compile(
    r"(api[_-]?key|secret|token(?!s)|password|passwd|authorization|credential|dsn)", re.I
)
# Request headers that say nothing secret. Every other header a provider sends, its
# default_headers included, is treated as a credential: a gateway's key can be named anything
# (Ocp-Apim-Subscription-Key, X-Tenant).
PUBLIC_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "anthropic-beta",
        "anthropic-version",
        "connection",
        "content-length",
        "content-type",
        "host",
        "http-referer",
        "openai-beta",
        "openai-organization",
        "openai-project",
        "user-agent",
        "x-goog-api-client",
        "x-title",
    }
)
# The SDKs' telemetry headers (x-stainless-os, x-stainless-retry-count, ...).
PUBLIC_HEADER_PREFIXES = ("x-stainless-",)
# Secrets this long are masked wherever they appear; shorter ones only where they stand
# alone, so that a three-letter key is masked without mangling every word that contains it.
MIN_SUBSTRING_SECRET = 6
# Settings and environment variables named like secrets hold such short values as "false"
# (TOKENIZERS_PARALLELISM) too often to mask them everywhere; provider credentials are
# masked whatever their length.
MIN_SETTING_SECRET = 6
# Settings and options whose names look secret but hold public configuration.
NOT_SECRET_NAMES = frozenset(
    {"AUTH_PASSWORD_VALIDATORS", "PASSWORD_HASHERS", "PASSWORD_RESET_TIMEOUT", "token_limit_parameter"}
)
#: The loggers of the HTTP libraries and SDKs the providers use (a prefix: "httpx" is httpx2 too).
#: The HTTP libraries' loggers; each provider names its SDK's (``sdk_loggers``).
HTTP_LOGGERS = ("httpx", "httpcore")

# Every pattern below does linear work: no quantifier is nested in another, and a look-behind
# lets a match start only at the first character of a word (or right after ?, & or ;), so
# each character is scanned by a bounded number of attempts. The URL pattern this replaces
# let a scheme start at every letter and rescan the rest of the run: 16 KB took seconds.
#
# A URL's userinfo: everything up to the authority's last "@", so that an empty user
# (redis://:pw@) or an "@" in the password leaves nothing behind.
_URL_CREDENTIALS = re.compile(r"(?<![\w+.-])(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^/?#\s]*)@", re.I)
# A query-string parameter whose name ends in a credential word: ?api-key=, ?subscription-key=,
# &key=, &access_token=, &sig= (but not &max_tokens= or &api-version=).
_QUERY_CREDENTIALS = re.compile(
    r"(?<=[?&;])(?P<name>(?:[\w.-]*[_.-])?(?:api[_-]?key|apikey|key|token|secret|password|passwd"
    r"|auth|credentials?|signature|sig))=(?P<value>[^&#\s\"'<>]+)",
    re.I,
)
# Bearer tokens, in case a server echoes one back; each provider adds its keys' shape.
_BEARER = r"(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}"
# llmapp's own API tokens (llmapp.api.tokens), wherever they appear.
_API_TOKEN = r"\bllm_[A-Za-z0-9_-]{40,}"  # noqa: S105 (a pattern, not a password)
_key_shapes = None


def key_shapes():
    """The pattern of Bearer tokens and of every provider's keys (``key_pattern``).

    A backend's pattern that does not compile is left out, and so are all of them should
    the backends not be readable: redaction never fails for a setting.
    """
    global _key_shapes
    shapes = _key_shapes
    if shapes is None:
        patterns = [_BEARER, _API_TOKEN]
        try:
            # Imported here: the providers import this module.
            from llmapp.providers import backend_classes

            for cls in backend_classes():
                pattern = getattr(cls, "key_pattern", None)
                if isinstance(pattern, str) and _compiles(pattern):
                    patterns.append(f"(?:{pattern})")
        except Exception:  # noqa: S110 (Bearer tokens, URL and query credentials are still masked)
            pass
        shapes = _key_shapes = re.compile("|".join(patterns), re.I)
    return shapes


def _compiles(pattern):
    try:
        re.compile(f"(?:{pattern})", re.I)
    except re.error:
        return False
    return True


_known_secrets = None


def mask(value):
    """Show a secret as ``••••`` plus at most its last four characters.

    A ``Bearer`` value keeps its scheme; a ``Basic`` one shows no tail, since its last
    characters are those of the password.
    """
    if not value:
        return ""
    value = str(value)
    scheme, space, token = value.partition(" ")
    if space and scheme.lower() == "basic":
        return f"{scheme} {MASK}"
    if space and scheme.lower() == "bearer":
        return f"{scheme} {mask(token)}"
    tail = value[-4:] if len(value) >= 12 else ""
    return MASK + tail


def is_secret_name(name):
    return bool(SECRET_NAME.search(str(name)))


def is_public_header(name):
    name = str(name).lower()
    return name in PUBLIC_HEADERS or name.startswith(PUBLIC_HEADER_PREFIXES)


def redact(text, secrets=()):
    """Return ``text`` with credentials masked.

    Masked: the given ``secrets``, every secret this process knows (:func:`known_secrets`),
    URL userinfo, query-string credentials, Bearer tokens and key-shaped strings.
    """
    if not text:
        return text
    text = str(text)
    known = known_secrets()
    if secrets:
        # Longest first, so that a secret containing another is replaced whole.
        known = sorted(_forms(secrets) | set(known), key=len, reverse=True)
    for secret in known:
        if secret not in text:
            continue
        if len(secret) >= MIN_SUBSTRING_SECRET:
            text = text.replace(secret, MASK)
        else:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", MASK, text)
    text = _URL_CREDENTIALS.sub(r"\g<scheme>" + MASK + "@", text)
    text = _QUERY_CREDENTIALS.sub(r"\g<name>=" + MASK, text)
    return key_shapes().sub(lambda m: (m.group(1) or "") + MASK, text)


def redact_mapping(data):
    """Return a copy of ``data`` with values under secret-looking keys masked, recursively."""
    if isinstance(data, dict):
        return {
            key: mask(value) if is_secret_name(key) and isinstance(value, str) else redact_mapping(value)
            for key, value in data.items()
        }
    if isinstance(data, list | tuple):
        return type(data)(redact_mapping(item) for item in data)
    if isinstance(data, str):
        return redact(data)
    return data


def _forms(secrets):
    """Return the secrets as written and as JSON, a repr or a URL escape them (a server echoes any)."""
    forms = set()
    for secret in filter(None, map(str, secrets)):
        forms |= {secret, json.dumps(secret)[1:-1], repr(secret)[1:-1], quote(secret, safe="")}
    return forms


def mask_headers(headers):
    """Return request headers (name, value pairs) as --dry-run shows them: only public ones in clear."""
    return {name: redact(value) if is_public_header(name) else mask(value) for name, value in headers}


# -- finding credentials ---------------------------------------------------------------


def url_secrets(text):
    """Return the credentials in the URLs in ``text``, in every form they travel in.

    For userinfo: as written (percent-encoded), decoded, the password alone, and the
    ``Basic`` value the HTTP client sends for it; a user with no password is a token. For
    query-string credentials: the value as written and decoded.
    """
    found = []
    for match in _URL_CREDENTIALS.finditer(text):
        userinfo = match["userinfo"]
        user, _, password = userinfo.partition(":")
        plain = f"{unquote(user)}:{unquote(password)}"
        basic = base64.b64encode(plain.encode()).decode()
        found += (
            [userinfo, plain, basic, password, unquote(password)]
            if password
            else [userinfo, unquote(user), basic]
        )
    for match in _QUERY_CREDENTIALS.finditer(text):
        found += [match["value"], unquote(match["value"])]
    return [secret for secret in dict.fromkeys(found) if secret]


def secrets_in(value, name="", *, secret_names=(), min_length=0):
    """Return the credentials in a configuration value (OPTIONS, a setting), every form of them.

    They are: strings under a key named like a secret or listed in ``secret_names``, the
    values of every non-public header in a dict under a key that mentions headers, and
    the credentials in every URL.
    """
    found = []

    def walk(name, value, in_headers=False, depth=0):
        if depth > 32:
            return
        if isinstance(value, str):
            named = (is_secret_name(name) or name in secret_names) and name not in NOT_SECRET_NAMES
            if named or (in_headers and not is_public_header(name)):
                found.append(value)
            found.extend(url_secrets(value))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(str(key), item, "header" in name.lower(), depth + 1)
        elif isinstance(value, list | tuple | set | frozenset):
            for item in value:
                walk(name, item, in_headers, depth + 1)

    walk(name, value)
    return [secret for secret in dict.fromkeys(found) if len(secret) >= max(1, min_length)]


def known_secrets():
    """Return the secrets in settings and the environment, longest first.

    Collected once, and again whenever a setting changes: provider credentials from
    LLM_PROVIDERS whatever their length, and longer values under secret-named settings
    (SECRET_KEY, DATABASES[*]["PASSWORD"]...), environment variables and URL credentials.
    """
    global _known_secrets
    if _known_secrets is None:
        found = set()
        for name, value in os.environ.items():
            found.update(secrets_in(value, name, min_length=MIN_SETTING_SECRET))
        if settings.configured:
            # Read through the object LazySettings wraps: LazySettings warns on every read of a
            # deprecated setting (Django 6.1: EMAIL_HOST...), and this scan reads them all.
            holder = settings._wrapped
            for name in dir(holder):
                if name.isupper() and name not in NOT_SECRET_NAMES:
                    found.update(secrets_in(getattr(holder, name, None), name, min_length=MIN_SETTING_SECRET))
            # Again, whatever their length: a provider's credentials are masked even when short.
            providers = conf.get_setting("LLM_PROVIDERS")
            for config in providers.values() if isinstance(providers, dict) else ():
                if isinstance(config, dict):
                    found.update(secrets_in(config.get("OPTIONS") or {}, secret_names={"api_key"}))
        _known_secrets = tuple(sorted(_forms(found), key=len, reverse=True))
    return _known_secrets


@conf.on_change
def forget_known_secrets():
    global _known_secrets, _key_shapes
    _known_secrets = None
    _key_shapes = None  # LLM_PROVIDERS may name other backends now


@receiver(setting_changed)
def _setting_changed(**kwargs):
    # on_change covers LLM_* settings only; secrets also live in SECRET_KEY, DATABASES...
    forget_known_secrets()


# -- logs ------------------------------------------------------------------------------


class RedactingFilter(logging.Filter):
    """Mask credentials in a record's message and traceback before any handler sees them."""

    def filter(self, record):
        try:
            message = record.getMessage()
            redacted = redact(message)
            if redacted != message:
                record.msg, record.args = redacted, None
            if record.exc_info and not record.exc_text:
                # Formatters use a record's exc_text, once set, instead of formatting exc_info.
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        except Exception:  # noqa: S110 (a filter that raises breaks the caller's logging call)
            pass
        return True


_FILTER = RedactingFilter()


def redact_sdk_logs(sdk_loggers=()):
    """Add the redacting filter to every existing logger of the HTTP libraries and ``sdk_loggers``.

    httpx logs the request URL, userinfo included, at INFO on every call. A filter on a
    logger sees only the records logged to that very logger, not its children's, so each
    one gets it; call this once the SDK is imported, when its loggers exist.
    """
    prefixes = (*HTTP_LOGGERS, *sdk_loggers)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(prefixes):
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
