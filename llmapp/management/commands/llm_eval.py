"""Evaluate a use case on a dataset, on several routes, and report how each did."""

import contextlib
import json
import os
import sys
from decimal import Decimal

from django.core.management.base import CommandError
from django.db import DatabaseError

from llmapp import batch
from llmapp.batch.evaluation import runner
from llmapp.batch.evaluation.cases import CaseError, read_cases
from llmapp.batch.evaluation.report import MAX_DISAGREEMENTS, summarize
from llmapp.calls.compare import parse_routes
from llmapp.calls.service import prepare_request
from llmapp.calls.spend.cost import dollars
from llmapp.conf import overrides
from llmapp.conf.secrets import redact
from llmapp.conf.usecases import drafted, get_usecase, resolve_with
from llmapp.exceptions import ConfigurationError, LLMError
from llmapp.management import outputfile
from llmapp.management.base import LLMCommand
from llmapp.management.batch_run import exit_now, progress_bar


class Command(LLMCommand):
    help = (
        'Run a use case over cases (JSON Lines: a batch item plus "expected" and an optional "check") '
        "on several routes, and report each route's accuracy, latency, tokens and cost."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("usecase", help="The use case to evaluate.")
        parser.add_argument("--input", required=True, help="The cases, JSON Lines.")
        parser.add_argument(
            "--routes",
            help='"alias" or "alias:model", comma-separated (default: the use case\'s own provider).',
        )
        parser.add_argument(
            "--output", required=True, help="One JSON line per case and route; running again resumes."
        )
        parser.add_argument(
            "--concurrency", type=int, default=4, help="How many calls run at once (default 4)."
        )
        parser.add_argument(
            "--judge",
            metavar="USECASE",
            help='A use case that rules on each answer against "expected" (a typed verdict), '
            'instead of "check".',
        )
        parser.add_argument(
            "--prompt-version",
            metavar="REVISION",
            type=int,
            help="Run the use case as its override was at this revision (0: its settings alone).",
        )
        parser.add_argument("--report", metavar="FILE", help="Also write the report as JSON to FILE.")
        parser.add_argument(
            "--json", action="store_true", help="Print the report as JSON instead of a table."
        )
        parser.add_argument("--quiet", action="store_true", help="No progress bar.")

    def handle(self, *args, **options):
        try:
            self.evaluate(options)
        except (LLMError, CaseError) as exc:
            raise CommandError(str(exc)) from exc

    def evaluate(self, options):
        overrides.refresh()
        usecase = options["usecase"]
        config = get_usecase(usecase)
        if options["concurrency"] < 1:
            raise CommandError(f"--concurrency must be at least 1, got {options['concurrency']}.")
        routes = parse_routes(options["routes"] or config.provider)
        draft, revision = self.draft(usecase, options["prompt_version"])
        judge = options["judge"]
        if judge is not None:
            get_usecase(judge)
            batch.check_callable(judge)  # a judge that cannot run would waste every route's call
        try:
            with open(options["input"], "rb") as lines:
                cases = read_cases(lines, judged=judge is not None)
                input_file = os.fstat(lines.fileno())
        except OSError as exc:
            raise CommandError(f"cannot read --input {options['input']}: {exc.strerror}.") from None
        except CaseError as exc:
            raise CommandError(f"--input {options['input']}: {exc}.") from None
        self.check_report(options, input_file)
        with drafted(draft) if draft is not None else contextlib.nullcontext():
            check_routes(usecase, routes, cases[0])  # before any call
            version = (draft or config).prompt_version
        planned = runner.plan(cases, routes, judge=judge, version=version)
        records = self.run(usecase, planned, judge, draft, options, input_file)
        summary, disagreeing = summarize(cases, routes, records)
        try:
            run = self.save(usecase, options, routes, revision, version, judge, cases, summary, disagreeing)
        except DatabaseError as exc:
            # The report is printed and in --output: a database that is down loses only the admin's copy.
            run = None
            self.stderr.write(
                f"The run could not be kept in the database ({type(exc).__name__}: {redact(str(exc))})."
            )
        self.show(summary, disagreeing, options)
        if run is not None and options["verbosity"] >= 1 and not options["json"]:
            self.stdout.write(f"Kept as evaluation run {run.pk} (the admin's Evaluation runs).")

    def check_report(self, options, input_file):
        """--report must be a new or replaceable file, not the input or the output."""
        report = options["report"]
        if report is None:
            return
        found = _stat(report)
        output = _stat(options["output"])
        if report == options["output"] or any(
            outputfile.same_file(found, other) for other in (input_file, output)
        ):
            raise CommandError(f"--report {report} is the input or the output; name a file of its own.")
        folder = os.path.dirname(os.path.abspath(report))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise CommandError(
                f"cannot write --report {report}: its folder does not exist or is not writable."
            )

    def draft(self, usecase, revision):
        """The use case as of override ``revision`` (0: its settings), or None for as it is now."""
        if revision is None:
            return None, None
        if revision == 0:
            fields = {}
        else:
            from llmapp.models import UseCaseRevision

            try:
                fields = UseCaseRevision.objects.get(usecase=usecase, pk=revision).override
            except UseCaseRevision.DoesNotExist:
                raise CommandError(
                    f"--prompt-version: use case {usecase!r} has no revision {revision}."
                ) from None
        draft, problems = resolve_with(usecase, fields, revision or None)
        if problems:
            raise CommandError(f"--prompt-version {revision} no longer holds: {problems[0]}")
        return draft, revision

    def run(self, usecase, planned, judge, draft, options, input_file):
        """Run every (case, route) whose record in --output does not hold; return the records that do."""
        with outputfile.open_output(options["output"], input_file=input_file) as out:
            skip, answers = set(), {}
            if out.size:
                with out.reader() as previous:
                    kept = runner.still_valid(planned, previous)
                skip, answers = runner.finished(kept), runner.answered(kept)
            bar = progress_bar(
                self.stderr._out, len(planned) - len(skip), quiet=options["quiet"], unit="call"
            )
            try:
                stats = batch.run_batch(
                    usecase,
                    [entry.item for entry in planned],
                    lambda record: out.write(batch.dumps(record).encode()),
                    concurrency=options["concurrency"],
                    skip=skip,
                    progress=bar.update if bar else None,
                    waiting=self.waiting,
                    run=runner.CaseRunner(planned, judge, draft, answers),
                )
            except ConfigurationError as exc:
                raise CommandError(
                    f"{exc} The evaluation stopped; what finished is in {options['output']}: fix the "
                    "setting, then run the same command to resume."
                ) from None
            except KeyboardInterrupt:  # a second Ctrl-C outside the wait for the calls under way
                exit_now(self, f"\nInterrupted: what finished is in {options['output']}.", 130)
            finally:
                if bar:
                    bar.close()
            if stats.interrupted:
                line = (
                    f"\nInterrupted: what finished is in {options['output']}; run the same command to resume."
                )
                if stats.running:  # the calls left behind would hold up the exit
                    exit_now(self, line, 130)
                self.stderr.write(line)
                sys.exit(130)
            with out.reader() as written:
                return list(runner.still_valid(planned, written).values())

    def save(self, usecase, options, routes, revision, version, judge, cases, summary, disagreeing):
        from llmapp.models import EvaluationRun

        return EvaluationRun.objects.create(
            usecase=usecase,
            input_name=os.path.basename(options["input"]),
            routes=[str(route) for route in routes],
            prompt_version=version,
            revision=revision,
            judge=judge or "",
            cases=len(cases),
            summary=summary,
            disagreements=disagreeing[:MAX_DISAGREEMENTS],
        )

    def show(self, summary, disagreeing, options):
        report = {"routes": summary, "disagreements": disagreeing}
        if options["report"]:
            try:
                with open(options["report"], "w", encoding="utf-8") as file:
                    json.dump(report, file, ensure_ascii=False, indent=2)
            except OSError as exc:
                raise CommandError(f"cannot write --report {options['report']}: {exc.strerror}.") from None
        if options["json"]:
            self.stdout.write(json.dumps(report, ensure_ascii=False))
            return
        header = (
            "ROUTE",
            "ACCURACY",
            "PASSED",
            "FAILED",
            "ERRORED",
            "P50",
            "P95",
            "TOKENS IN",
            "TOKENS OUT",
            "COST",
        )
        rows = [
            (
                route["route"],
                f"{route['accuracy']:.0%}",
                str(route["passed"]),
                str(route["failed"]),
                str(route["errored"]),
                _ms(route["latency_p50_ms"]),
                _ms(route["latency_p95_ms"]),
                str(route["input_tokens"]),
                str(route["output_tokens"]),
                _dollars(route),
            )
            for route in summary
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        for i, row in enumerate([header, *rows]):
            line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            self.stdout.write(self.style.MIGRATE_HEADING(line) if i == 0 else line)
        for route in summary:
            judge = route.get("judge")
            if judge is not None:
                tokens = f"{judge['input_tokens']} tokens in, {judge['output_tokens']} out"
                self.stdout.write(f"{route['route']} judged for {tokens}, {_dollars(judge)}.")
        for route in summary:
            if route["failing"]:
                self.stdout.write(f"{route['route']} failed on: {', '.join(route['failing'])}")
        kept = (
            f" (the admin keeps the first {MAX_DISAGREEMENTS})"
            if len(disagreeing) > MAX_DISAGREEMENTS
            else ""
        )
        self.stdout.write(f"{len(disagreeing)} case(s) where the routes disagree{kept}.")

    def waiting(self, count):
        self.stderr.write(
            f"\nStopping: waiting for {count} call(s) under way; press Ctrl-C again to stop now."
        )


def check_routes(usecase, routes, case):
    """Raise the error a route would meet on every case (an unknown alias, a model not allowed),
    and refuse two routes that are one model: nothing is sent."""
    served = {}
    for route in routes:
        request, _ = prepare_request(
            usecase, case.item.message, provider=route.alias, model=route.model, **_request(case)
        )
        same = served.setdefault((request.provider, request.model), route)
        if same is not route:
            raise CommandError(f"routes {str(same)!r} and {str(route)!r} are the same model; keep one.")


def _stat(path):
    try:
        return os.stat(path)
    except OSError:
        return None


def _request(case):
    names = ("messages", "prompt", "temperature", "max_output_tokens")
    return {name: case.item.overrides[name] for name in names if name in case.item.overrides}


def _ms(value):
    return "-" if value is None else f"{value:,.0f} ms"


def _dollars(figures):
    """The ``cost`` of report figures, with how many calls had no price."""
    return dollars(None if figures["cost"] is None else Decimal(figures["cost"]), figures["unpriced"])
