"""Keep secrets out of messages, logs and pages."""

import re

MASK = "••••"
# "token" but not "tokens": max_tokens and input_tokens are counts, not secrets.
SECRET_NAME = re.compile(
    r"(api[_-]?key|secret|token(?!s)|password|passwd|authorization|credential|dsn)", re.I
)
# Everything up to the authority's last "@": an empty user (redis://:pw@) or an "@" in
# the password must not leave part of the secret behind.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/?#\s]*@", re.I)
# Bearer tokens and the common provider key shapes, in case a server echoes one back.
_KEY_SHAPES = re.compile(
    r"(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}|\b(sk|sk-proj|sk-ant)[-_][A-Za-z0-9_-]{8,}|\bAIza[0-9A-Za-z_-]{35}",
    re.I,
)


def mask(value):
    """Show a secret as ``••••`` plus at most its last four characters."""
    if not value:
        return ""
    value = str(value)
    tail = value[-4:] if len(value) >= 12 else ""
    return MASK + tail


def is_secret_name(name):
    return bool(SECRET_NAME.search(str(name)))


def redact(text, secrets=()):
    """Return ``text`` with the given secrets, URL credentials and key-shaped strings masked."""
    if not text:
        return text
    text = str(text)
    for secret in secrets:
        if secret and len(str(secret)) >= 4:
            text = text.replace(str(secret), MASK)
    text = _URL_CREDENTIALS.sub(r"\g<scheme>" + MASK + "@", text)
    return _KEY_SHAPES.sub(lambda m: (m.group(1) or "") + MASK, text)


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
