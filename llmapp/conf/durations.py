"""Durations given as text, on the command line and in settings: 90m, 12h, 30d, 2w."""

import re
from datetime import timedelta

from django.core.management.base import CommandError

UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
AGE_FORMAT = "a whole number followed by m (minutes), h (hours), d (days) or w (weeks), e.g. 30d"
# Far beyond any retention, and far enough from datetime's year 1 that now() - age still works.
MAX_AGE = timedelta(days=36500)
_AGE = re.compile(r"^\s*([0-9]+)\s*([mhdw])\s*$", re.I)


def parse_age(text, flag):
    """Return the timedelta that ``30d``, ``12h``, ``90m`` or ``2w`` stands for."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise CommandError(f"{flag} {exc}.") from None


def parse_duration(text):
    """Return the timedelta of ``30d``, ``12h``, ``90m`` or ``2w``; raise ValueError saying what is wrong."""
    match = _AGE.match(text) if isinstance(text, str) else None
    digits = match.group(1).lstrip("0") if match else ""
    if not digits:
        raise ValueError(f"must be {AGE_FORMAT}; got {text!r}")
    unit = UNITS[match.group(2).lower()]
    # Checked before timedelta(), which overflows on a huge count (and int() refuses 4300+ digits).
    if len(digits) > 9 or int(digits) > MAX_AGE / timedelta(**{unit: 1}):
        raise ValueError(f"is too large: at most {MAX_AGE.days}d (100 years); got {text.strip()!r}")
    return timedelta(**{unit: int(digits)})
