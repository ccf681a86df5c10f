"""Read typed settings from the environment, refusing a malformed value in one line.

The host project's settings read every typed variable through :func:`from_env`; the
parsers are strict where django-environ guesses (it reads "1e3" as 13 and "treu" as
False).
"""

import math

import environ
from django.core.exceptions import ImproperlyConfigured

env = environ.Env()


def from_env(name, parse, default, expected=None):
    """Return the environment variable ``name`` read by ``parse``, or ``default`` when unset or empty.

    Settings are imported before Django can report anything neatly: manage.py prints an
    ImproperlyConfigured as one line where a ValueError would be a traceback. It says
    ``expected`` (by default ``parse.expected``) but not the value: that may be a key
    pasted into the wrong variable, or hold a password.
    """
    text = env.str(name, default="").strip()
    if not text:
        return default
    try:
        return parse(text)
    except (ValueError, ImproperlyConfigured):
        raise ImproperlyConfigured(f"{name} must be {expected or parse.expected}; fix or unset it.") from None


def seconds(text):
    # Not env.float(), which reads "1e3" as 13; NaN, infinities and 0 are no timeout.
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(text)
    return value


seconds.expected = "a positive number of seconds, e.g. 30"


def fraction(text):
    value = float(text)
    if not 0 <= value <= 1:  # NaN fails this too
        raise ValueError(text)
    return value


fraction.expected = "a number from 0 to 1, e.g. 0.1"


def flag(text):
    # Not env.bool(), which reads any word it does not know ("treu", say) as False.
    lowered = text.lower()
    if lowered in {"1", "true", "yes", "y", "on"}:
        return True
    if lowered in {"0", "false", "no", "n", "off"}:
        return False
    raise ValueError(text)


flag.expected = "true or false"


def database_url(text):
    # environ makes an unknown scheme an empty dict (a KeyError below) or a made-up ENGINE.
    scheme, separator, _ = text.partition("://")
    if not separator or scheme not in env.DB_SCHEMES:
        raise ValueError(scheme)
    return env.db_url_config(text)


database_url.expected = (
    "a URL such as postgres://USER:PASSWORD@HOST:5432/NAME or sqlite:////absolute/path/db.sqlite3"
)


def cache_url(text):
    config = env.cache_url_config(text)
    # environ leaves ?key_prefix= in lower case for Redis, where Django ignores it: runs
    # sharing a server would then share every key.
    if "key_prefix" in config:
        config["KEY_PREFIX"] = config.pop("key_prefix")
    return config


cache_url.expected = "a URL such as redis://HOST:6379/0 or locmemcache://"


def one_of(*choices):
    def parse(text):
        if text not in choices:
            raise ValueError(text)
        return text

    parse.expected = f"one of {', '.join(choices)}"
    return parse
