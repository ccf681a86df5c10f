from django.core.management.base import CommandError
from django.utils import timezone

from llmapp.conf.durations import AGE_FORMAT, parse_age
from llmapp.exceptions import LLMError
from llmapp.management.base import LLMCommand
from llmapp.management.outputfile import open_output
from llmapp.models import Batch, BatchItem

FINISHED = (BatchItem.Status.DONE, BatchItem.Status.FAILED)


ACTIONS = {
    "status": "print how many items are pending, running, done and failed, and percent finished",
    "collect": "write the records to --output as JSON Lines in input order, as a local run does, "
    "and exit non-zero if any item failed or is not finished",
    "resume": "enqueue a task again for every pending item, after the tasks backend was down, say "
    "(no item runs twice); with --stale-after, also for items left running that long by a worker "
    "that died",
}


class Command(LLMCommand):
    help = (
        "Follow a batch that `manage.py llm USECASE --input FILE --enqueue` sent to the tasks backend: "
        "show its progress, write its results, or enqueue its pending items again."
    )
    # Like `manage.py llm`: the configuration was validated at start-up already.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument(
            "action",
            choices=ACTIONS,
            help="; ".join(f"{name}: {text}" for name, text in ACTIONS.items()) + ".",
        )
        parser.add_argument(
            "batch_id", type=int, metavar="BATCH_ID", help="The batch that --enqueue printed."
        )
        parser.add_argument(
            "--output", metavar="FILE", help="Where collect writes the records; '-' for standard output."
        )
        parser.add_argument(
            "--stale-after",
            metavar="AGE",
            help=f"With resume: run again the items running for longer than this ({AGE_FORMAT}); "
            "make it longer than any call may take.",
        )

    def handle(self, *args, **options):
        action = options["action"]
        if (action == "collect") != bool(options["output"]):
            raise CommandError(
                "collect needs --output FILE." if action == "collect" else "--output goes with collect."
            )
        if options["stale_after"] and action != "resume":
            raise CommandError("--stale-after goes with resume.")
        owner = self.get_batch(options["batch_id"])
        getattr(self, action)(owner, options)

    def get_batch(self, batch_id):
        try:
            return Batch.objects.get(pk=batch_id)
        except Batch.DoesNotExist:
            latest = Batch.objects.order_by("-pk").values_list("pk", flat=True).first()
            known = f"the latest is {latest}" if latest else "there are none yet"
            raise CommandError(f"no batch {batch_id}; {known}.") from None

    def status(self, owner, options):
        counts = owner.counts()
        finished = Batch.finished(counts)
        percent = 100 * finished / owner.total if owner.total else 100
        if options["verbosity"] >= 1:
            self.stdout.write(
                self.style.MIGRATE_HEADING(
                    f"Batch {owner.pk}: {owner.usecase}, {owner.total} item(s), "
                    f"enqueued {owner.created_at:%Y-%m-%d %H:%M:%S %Z}"
                )
            )
        styles = {
            BatchItem.Status.DONE: self.style.SUCCESS,
            BatchItem.Status.FAILED: self.style.ERROR,
        }
        width = len(str(owner.total))
        for status, label in BatchItem.Status.choices:
            line = f"  {label.lower():<8} {counts[status]:>{width}}"
            style = styles.get(status) if counts[status] else None
            self.stdout.write(style(line) if style else line)
        self.stdout.write(f"{percent:.1f}% finished ({finished} of {owner.total})")

    def collect(self, owner, options):
        output = options["output"]
        written = 0
        items = owner.items.filter(status__in=FINISHED).order_by("position").values_list("result", flat=True)

        def lines():
            nonlocal written
            for line in items.iterator(chunk_size=1000):
                yield line
                written += 1

        if output == "-":
            for line in lines():
                self.stdout.write(line)
        else:
            # Replaced whole, so that a failure leaves what an earlier collect wrote.
            with open_output(output) as out:
                try:
                    out.replace(line.encode() for line in lines())
                except OSError as exc:
                    raise CommandError(f"cannot write --output {output}: {exc.strerror}.") from None
        counts = owner.counts()
        unfinished = owner.total - Batch.finished(counts)
        failed = counts[BatchItem.Status.FAILED]
        where = "standard output" if output == "-" else output
        if unfinished:
            raise CommandError(
                f"{unfinished} of {owner.total} item(s) still pending or running; wrote the {written} "
                f"finished to {where}. Collect again once `manage.py llm_batch status {owner.pk}` shows 100%."
            )
        if failed:
            raise CommandError(f"{failed} of {owner.total} item(s) failed; their errors are in {where}.")
        if options["verbosity"] >= 1:
            self.stderr.write(self.style.SUCCESS(f"Wrote {written} record(s) to {where}."))

    def resume(self, owner, options):
        stale = options["stale_after"]
        try:
            from llmapp.batch.tasks import enqueue_pending, release_stale

            if stale:
                released = release_stale(owner, timezone.now() - parse_age(stale, "--stale-after"))
                if options["verbosity"] >= 1:
                    self.stdout.write(f"{released} item(s) running for over {stale} are pending again.")
            count = enqueue_pending(owner)
        except LLMError as exc:
            raise CommandError(str(exc)) from exc
        if options["verbosity"] >= 1:
            self.stdout.write(f"Enqueued {count} pending item(s) of batch {owner.pk} again.")
