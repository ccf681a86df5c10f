from django.utils import timezone

from llmapp.conf.durations import AGE_FORMAT, parse_age
from llmapp.management.base import LLMCommand
from llmapp.models import CompletionEvent


class Command(LLMCommand):
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
        cutoff = timezone.now() - parse_age(age, "--older-than")
        removed, _ = CompletionEvent.objects.filter(created_at__lt=cutoff).delete()
        if options["verbosity"] >= 1:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Removed {removed} completion event(s) older than {age.strip()} "
                    f"(recorded before {cutoff:%Y-%m-%d %H:%M:%S %Z})."
                )
            )
