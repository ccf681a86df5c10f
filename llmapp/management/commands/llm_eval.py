"""Evaluate a use case on a dataset, on several routes, and report how each did."""

import json
import os
import sys

from django.core.management.base import CommandError
from django.db import DatabaseError

from llmapp import batch
from llmapp.calls.compare import parse_routes
from llmapp.calls.service import prepare_request
from llmapp.calls.spend.cost import dollars
from llmapp.conf import overrides
from llmapp.conf.usecases import get_usecase, resolve_with
from llmapp.evaluation import runner
from llmapp.evaluation.cases import CaseError, read_cases
from llmapp.evaluation.report import summarize
from llmapp.exceptions import ConfigurationError, LLMError
from llmapp.management import outputfile
from llmapp.management.base import LLMCommand
from llmapp.management.batch_run import progress_bar
from llmapp.redaction import redact


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
        try:
            with open(options["input"], "rb") as lines:
                cases = read_cases(lines, judged=judge is not None)
                input_file = os.fstat(lines.fileno())
        except OSError as exc:
            raise CommandError(f"cannot read --input {options['input']}: {exc.strerror}.") from None
        except CaseError as exc:
            raise CommandError(f"--input {options['input']}: {exc}.") from None
        for route in routes:  # a route or a case that is wrong stops here, before any call
            for case in cases[:1]:
                prepare_request(
                    usecase, case.item.message, provider=route.alias, model=route.model, **_request(case)
                )
        records = self.run(usecase, cases, routes, judge, draft, options, input_file)
        summary, disagreeing = summarize(cases, routes, records)
        self.show(summary, disagreeing, options)
        try:
            run = self.save(
                usecase, options, routes, revision, draft or config, judge, cases, summary, disagreeing
            )
        except DatabaseError as exc:
            # The report is printed and in --output: a database that is down loses only the admin's copy.
            self.stderr.write(
                f"The run could not be kept in the database ({type(exc).__name__}: {redact(str(exc))})."
            )
        else:
            if options["verbosity"] >= 1 and not options["json"]:
                self.stdout.write(f"Kept as evaluation run {run.pk} (the admin's Evaluation runs).")

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

    def run(self, usecase, cases, routes, judge, draft, options, input_file):
        """Run every (case, route) not finished in --output; return every record it holds then."""
        with outputfile.open_output(options["output"], input_file=input_file) as out:
            skip = set()
            if out.size:
                with out.reader() as previous:
                    skip = batch.finished_ids(previous)
            total = len(cases) * len(routes) - len(skip)
            bar = progress_bar(self.stderr._out, total, quiet=options["quiet"], unit="call")
            try:
                stats = batch.run_batch(
                    usecase,
                    runner.items(cases, routes),
                    lambda record: out.write(batch.dumps(record).encode()),
                    concurrency=options["concurrency"],
                    skip=skip,
                    progress=bar.update if bar else None,
                    waiting=self.waiting,
                    run=runner.CaseRunner(cases, judge, draft),
                )
            except ConfigurationError as exc:
                raise CommandError(
                    f"{exc} The evaluation stopped; what finished is in {options['output']}: fix the "
                    "setting, then run the same command to resume."
                ) from None
            finally:
                if bar:
                    bar.close()
            if stats.interrupted:
                self.stderr.write(
                    f"\nInterrupted: what finished is in {options['output']}; run the same command to resume."
                )
                sys.exit(130)
            with out.reader() as written:
                return [record for line in written if (record := batch.parse_record(line)) is not None]

    def save(self, usecase, options, routes, revision, config, judge, cases, summary, disagreeing):
        from llmapp.models import EvaluationRun

        try:
            version = config.prompt_version
        except ConfigurationError:
            version = ""
        return EvaluationRun.objects.create(
            usecase=usecase,
            input_name=os.path.basename(options["input"]),
            routes=[str(route) for route in routes],
            prompt_version=version,
            revision=revision,
            judge=judge or "",
            cases=len(cases),
            summary=summary,
            disagreements=disagreeing,
        )

    def show(self, summary, disagreeing, options):
        report = {"routes": summary, "disagreements": disagreeing}
        if options["report"]:
            with open(options["report"], "w", encoding="utf-8") as file:
                json.dump(report, file, ensure_ascii=False, indent=2)
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
                dollars(None if route["cost"] is None else _decimal(route["cost"]), route["unpriced"]),
            )
            for route in summary
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        for i, row in enumerate([header, *rows]):
            line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            self.stdout.write(self.style.MIGRATE_HEADING(line) if i == 0 else line)
        for route in summary:
            if route["failing"]:
                self.stdout.write(f"{route['route']} failed on: {', '.join(route['failing'])}")
        self.stdout.write(f"{len(disagreeing)} case(s) where the routes disagree.")

    def waiting(self, count):
        self.stderr.write(
            f"\nStopping: waiting for {count} call(s) under way; press Ctrl-C again to stop now."
        )


def _request(case):
    names = ("messages", "prompt", "temperature", "max_output_tokens")
    return {name: case.item.overrides[name] for name in names if name in case.item.overrides}


def _ms(value):
    return "-" if value is None else f"{value:,.0f} ms"


def _decimal(text):
    from decimal import Decimal

    return Decimal(text)
