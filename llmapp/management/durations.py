"""Ages given on the command line: 90m, 12h, 30d, 2w."""

import re
from datetime import timedelta

from django.core.management.base import CommandError

UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
AGE_FORMAT = "a whole number followed by m (minutes), h (hours), d (days) or w (weeks), e.g. 30d"
_AGE = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$", re.I)


def parse_age(text, flag):
    """Return the timedelta that ``30d``, ``12h``, ``90m`` or ``2w`` stands for."""
    match = _AGE.match(text or "")
    if not match or int(match.group(1)) < 1:
        raise CommandError(f"{flag} must be {AGE_FORMAT}; got {text!r}.")
    return timedelta(**{UNITS[match.group(2).lower()]: int(match.group(1))})
