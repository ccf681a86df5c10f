import re
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from llmapp.models import CompletionEvent

UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
AGE_FORMAT = "a whole number followed by m (minutes), h (hours), d (days) or w (weeks), e.g. 30d"
_AGE = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$", re.I)


def parse_age(text):
    """Return the timedelta that ``30d``, ``12h``, ``90m`` or ``2w`` stands for."""
    match = _AGE.match(text or "")
    if not match or int(match.group(1)) < 1:
        raise CommandError(f"--older-than must be {AGE_FORMAT}; got {text!r}.")
    return timedelta(**{UNITS[match.group(2).lower()]: int(match.group(1))})


class Command(BaseCommand):
    help = "Delete completion log events older than a given age, e.g. --older-than 30d."
    # Meant for cron: the system checks' warnings would only be noise in its mail.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            required=True,
            metavar="AGE",
            help=f"Delete the events recorded longer ago than this: {AGE_FORMAT}.",
        )

    def handle(self, *args, **options):
        age = options["older_than"]
        cutoff = timezone.now() - parse_age(age)
        removed, _ = CompletionEvent.objects.filter(created_at__lt=cutoff).delete()
        if options["verbosity"] >= 1:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Removed {removed} completion event(s) older than {age.strip()} "
                    f"(recorded before {cutoff:%Y-%m-%d %H:%M:%S %Z})."
                )
            )
