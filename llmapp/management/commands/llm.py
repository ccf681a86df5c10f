import json
import os
import re
import sys

from django.core.management.base import CommandError

from llmapp.calls.compare import compare_routes, parse_routes
from llmapp.calls.service import complete_prompt, plan_call, stream_prompt
from llmapp.calls.spend.cost import dollars, most_cost
from llmapp.calls.types import Completion
from llmapp.conf import overrides
from llmapp.conf.secrets import redact
from llmapp.conf.usecases import FIELDS, PROVIDER_DEFAULT, get_usecase, get_usecase_errors, get_usecases
from llmapp.exceptions import InvalidMessageError, InvalidOutputType, LLMError
from llmapp.management.base import LLMCommand
from llmapp.management.batch_run import BatchRun, exit_now
from llmapp.providers import providers
from llmapp.sentry.tracing import command_transaction
from llmapp.tsdb import get_tsdb


class Command(LLMCommand):
    help = (
        "Run a use case on a message and print the answer. The message comes from --message, "
        "or from standard input when piped or given as '-'."
    )
    stealth_options = ("stdin",)
    # initialize_app() has validated the configuration already; `manage.py check` shows
    # warnings. Skipping the full check run keeps the command fast and its output clean.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("usecase", nargs="?", help="The use case to run, e.g. summarize.")
        parser.add_argument("-m", "--message", help="The message to send; '-' reads it from standard input.")
        parser.add_argument(
            "--messages",
            metavar="FILE",
            help='Send a conversation instead: a JSON list of {"role": "user" or "assistant", '
            "\"content\": ...} turns ending with the user's, from FILE ('-' for standard input).",
        )
        parser.add_argument("--prompt", help="Use this system prompt instead of the use case's.")
        parser.add_argument(
            "--context",
            metavar="JSON",
            help="What the use case's PROMPT_TEMPLATE and MESSAGE_TEMPLATE render with: a JSON object, "
            "inline or in a file.",
        )
        parser.add_argument("--provider", help="Call this LLM_PROVIDERS alias instead of the use case's.")
        parser.add_argument("--model", help="Ask for this model instead of the use case's.")
        parser.add_argument("--temperature", help="Temperature from 0 to 1, mapped to the provider's range.")
        parser.add_argument("--max-output-tokens", help="The most tokens the answer may use.")
        parser.add_argument(
            "--timeout", help="Seconds the whole call may take, over all retries and fallbacks."
        )
        parser.add_argument("--retries", help="How often to retry a transient failure (0 for none).")
        parser.add_argument(
            "--no-fallback", action="store_true", help="Do not fall back to the use case's FALLBACKS."
        )
        parser.add_argument(
            "--schema",
            metavar="TYPE",
            help="Ask for a typed answer for this call: a dotted path to a type (a pydantic model, a "
            "dataclass, a TypedDict) or a JSON Schema, a JSON Schema file, or inline JSON; "
            '--json prints it as "parsed".',
        )
        parser.add_argument(
            "--output-retries",
            help="How often (0 to 10) an answer that does not match the output type is asked again (default: "
            "the use case's OUTPUT_RETRIES).",
        )
        cache = parser.add_mutually_exclusive_group()
        cache.add_argument(
            "--no-cache",
            action="store_true",
            help="Neither look up nor keep the answer in the use case's CACHE.",
        )
        cache.add_argument(
            "--refresh-cache",
            action="store_true",
            help="Ask the provider even if the use case's CACHE has the answer, and keep the new one.",
        )
        parser.add_argument("--stream", action="store_true", help="Print the answer as it arrives.")
        parser.add_argument(
            "--compare",
            metavar="ROUTES",
            help="Run the message on each of these routes at once and print them side by side: "
            '"alias" or "alias:model", comma-separated (fallbacks and the response cache off).',
        )
        parser.add_argument(
            "--full", action="store_true", help="With --compare, print whole answers rather than their start."
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print one JSON object: text, parsed (a typed answer), usecase, provider, model, "
            "usage, latency_ms.",
        )
        parser.add_argument(
            "--list",
            action="store_true",
            help="List the use cases with provider, model and description; with a use case, each of its "
            "fields with its value and where it is set.",
        )
        parser.add_argument(
            "--usage",
            action="store_true",
            help="Print each use case's calls, error rate, latency and tokens over the last 24 hours.",
        )
        batch = parser.add_argument_group("batch runs")
        batch.add_argument(
            "--input",
            help="Run every line of this JSON Lines file ('-' for stdin): a string, or an object "
            "with id, message (or messages) and optional overrides.",
        )
        batch.add_argument(
            "--output", help="Write one JSON line per input, in input order; re-running resumes."
        )
        batch.add_argument(
            "--concurrency", type=int, default=1, help="How many calls run at once (default 1)."
        )
        batch.add_argument("--quiet", action="store_true", help="No progress bar.")
        batch.add_argument(
            "--enqueue",
            action="store_true",
            help="Send one task per item through Django's Tasks framework instead of running here.",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Print the exact request that would be sent, secrets masked, and send nothing.",
        )

    def handle(self, *args, **options):
        try:
            overrides.refresh()
            if options["list"]:
                if options["usecase"]:
                    self.list_fields(options["usecase"])
                else:
                    self.list_usecases()
                return
            if options["usage"]:
                self.print_usage()
                return
            with command_transaction(f"manage.py llm {options['usecase'] or ''}".strip()):
                self.run(options)
        except InvalidMessageError as exc:
            # The library's message says what is wrong; how to give a message is the CLI's to say.
            if options.get("messages") is not None:
                about_messages = str(exc).startswith(("messages", "give a message"))
                where = f"--messages {options['messages']}: " if about_messages else ""
                raise CommandError(f"{where}{exc}.") from exc
            raise CommandError(f"{exc}: pass --message TEXT or pipe UTF-8 text on stdin.") from exc
        except InvalidOutputType as exc:
            raise CommandError(f"--schema: {exc}.") from exc
        except LLMError as exc:
            raise CommandError(str(exc)) from exc
        except KeyboardInterrupt:
            self.stderr.write("\nInterrupted.")
            sys.exit(130)

    def run(self, options):
        if not options["usecase"]:
            raise CommandError("name a use case, e.g. `manage.py llm summarize`; `--list` shows them all.")
        if options["input"]:
            if options["schema"] is not None:
                raise CommandError("--schema is for one call; a batch takes its use case's OUTPUT.")
            BatchRun(self, options).run()
            return
        if options["output"] or options["enqueue"]:
            raise CommandError("--output and --enqueue go with --input FILE.")
        if options["stream"] and options["json"]:
            raise CommandError("--stream and --json cannot be combined; pick one.")
        if options["compare"] is not None:
            clashing = [flag for flag, key in _NOT_WITH_COMPARE if options[key]]
            if clashing:
                raise CommandError(
                    f"--compare names the routes; it cannot be combined with {', '.join(clashing)}."
                )
        elif options["full"]:
            raise CommandError("--full goes with --compare.")
        if options["messages"] is not None:
            if options["message"] is not None:
                raise CommandError("--message and --messages cannot be combined; pick one.")
            message, conversation = None, {"messages": self.read_messages(options)}
        elif options["message"] is None and get_usecase(options["usecase"]).message_template:
            message, conversation = None, {}  # the use case's MESSAGE_TEMPLATE makes it
        else:
            message, conversation = self.read_message(options), {}
        if options["context"] is not None:
            conversation["context"] = self.read_context(options["context"])
        overrides = conversation | {
            "prompt": options["prompt"],
            "provider": options["provider"],
            "model": options["model"],
            "temperature": _number(options["temperature"], float, "--temperature", "a number from 0 to 1"),
            "max_output_tokens": _number(
                options["max_output_tokens"], int, "--max-output-tokens", "a positive whole number"
            ),
        }
        reliability = {
            "timeout": _number(options["timeout"], float, "--timeout", "a number of seconds"),
            "retries": _number(options["retries"], int, "--retries", "a whole number from 0 up"),
            "fallbacks": [] if options["no_fallback"] else None,
            "output_retries": _number(
                options["output_retries"], int, "--output-retries", "a whole number from 0 to 10"
            ),
        }
        if options["schema"] is not None:
            overrides["output"] = self.read_schema(options["schema"])
        if options["no_cache"] or options["refresh_cache"]:
            overrides["cache"] = "off" if options["no_cache"] else "refresh"
        usecase = options["usecase"]
        overrides |= reliability
        if options["dry_run"]:
            # plan_call, so that a dry run refuses what the real run would refuse.
            request, _ = plan_call(usecase, message, **overrides)
            backend = providers[request.provider]
            described = backend.describe_request(backend.output_request(request))
            most = most_cost(request)
            described["max_cost_usd"] = None if most is None else str(most)
            self.stdout.write(json.dumps(described, indent=2, ensure_ascii=False))
            return
        if options["compare"] is not None:
            self.compare(usecase, message, overrides, options)
            return
        if options["stream"]:
            completion = self.stream(usecase, message, overrides)
        else:
            completion = complete_prompt(usecase, message, **overrides)
            if options["json"]:
                self.stdout.write(json.dumps(completion.as_dict(), ensure_ascii=False))
            else:
                self.stdout.write(completion.text)
        if options["verbosity"] >= 2:
            self.stderr.write(self.describe(completion))

    def compare(self, usecase, message, overrides, options):
        """--compare: the message on each route at once; a table (or --json), failures as rows."""
        given = {
            key: value
            for key, value in overrides.items()
            if value is not None and key not in ("provider", "model", "fallbacks", "cache")
        }
        try:
            results = compare_routes(usecase, message, parse_routes(options["compare"]), **given)
        except KeyboardInterrupt:  # the calls under way would hold up the exit until they end
            exit_now(self, "\nInterrupted.", 130)
        if options["json"]:
            self.stdout.write(json.dumps([result.as_dict() for result in results], ensure_ascii=False))
        else:
            self.write_comparison(results, options["full"])
        if not any(result.ok for result in results):
            raise CommandError("every route failed; each row says why.")

    def write_comparison(self, results, full):
        header = ("ROUTE", "MODEL", "LATENCY", "IN", "OUT", "COST", "FINISH")  # then ANSWER, ragged
        rows = []
        for result in results:
            completion = result.completion
            if completion is None:
                error = f"{type(result.error).__name__}: {result.error}"
                rows.append(((str(result.route), "-", "-", "-", "-", "-", "failed"), redact(error)))
                continue
            usage = completion.usage
            cells = (
                str(result.route),
                completion.model,
                f"{completion.latency_ms:,.0f} ms",
                str(usage["input_tokens"] if usage["input_tokens"] is not None else "-"),
                str(usage["output_tokens"] if usage["output_tokens"] is not None else "-"),
                dollars(completion.cost),
                completion.finish_reason or "-",
            )
            answer = (
                completion.text if completion.parsed is None else json.dumps(completion.as_dict()["parsed"])
            )
            rows.append((cells, answer))
        widths = [
            max(len(cells[i]) for cells in [header, *(row[0] for row in rows)]) for i in range(len(header))
        ]
        indent = sum(widths) + 2 * len(header)
        heading = "  ".join(name.ljust(width) for name, width in zip(header, widths, strict=True))
        self.stdout.write(self.style.MIGRATE_HEADING(f"{heading}  ANSWER"))
        for cells, answer in rows:
            lines = _wrapped(answer, full)
            first = "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
            self.stdout.write(f"{first}  {lines[0]}")
            for line in lines[1:]:
                self.stdout.write(" " * indent + line)

    def stream(self, usecase, message, overrides):
        completion = None
        for item in stream_prompt(usecase, message, **overrides):
            if isinstance(item, Completion):
                completion = item
            else:
                self.stdout.write(item, ending="")
                self.stdout.flush()
        self.stdout.write("")
        return completion

    def read_messages(self, options):
        """The conversation of --messages FILE ('-': standard input), a JSON list; checked by the call."""
        name = options["messages"]
        return self.read_json(
            f"--messages {name}",
            "a list of turns",
            'a list of {"role": ..., "content": ...} turns',
            path=name,
            stdin=options.get("stdin", sys.stdin),
        )

    def read_context(self, spec):
        """The template context of --context: inline JSON or a JSON file, an object."""
        inline = spec.strip().startswith(("{", "["))
        where = "--context" if inline else f"--context {spec}"
        context = self.read_json(
            where,
            "a JSON object",
            "a JSON object of template variables",
            text=spec if inline else None,
            path=spec,
        )
        if not isinstance(context, dict):
            raise CommandError(f"{where} must be a JSON object, got a JSON {type(context).__name__}.")
        return context

    def read_schema(self, spec):
        """The output type of --schema: inline JSON, a JSON file, or a dotted path (checked by the call)."""
        text = spec.strip()
        inline = text.startswith(("{", "["))
        if not inline and not os.path.isfile(spec):
            if not _DOTTED.match(text):
                raise CommandError(
                    f"--schema {spec}: no such file, and not a dotted path (module.Type) or inline JSON."
                )
            return text
        where = "--schema" if inline else f"--schema {spec}"
        schema = self.read_json(
            where, "a JSON Schema", "a JSON Schema object", text=text if inline else None, path=spec
        )
        if not isinstance(schema, dict):
            raise CommandError(f"{where} must be a JSON Schema object, got a JSON {type(schema).__name__}.")
        return schema

    def read_json(self, where, shape, holds, *, text=None, path=None, stdin=None):
        """Return the JSON value of ``text``, else of the file ``path`` ('-': ``stdin``).

        Each way it can fail is one line naming ``where`` (the option as given) and what it
        should be (``shape``) or hold (``holds``).
        """
        if text is None:
            try:
                if path == "-":
                    raw = getattr(stdin, "buffer", None)
                    text = raw.read().decode("utf-8") if raw is not None else stdin.read()
                else:
                    with open(path, encoding="utf-8") as file:
                        text = file.read()
            except OSError as exc:
                raise CommandError(f"cannot read {where}: {exc.strerror}.") from None
            except UnicodeDecodeError as exc:
                raise CommandError(f"{where} is not UTF-8 text (at byte {exc.start}).") from None
        try:
            return json.loads(text)
        except RecursionError:
            raise CommandError(f"{where} is nested too deeply to be {shape}.") from None
        except ValueError as exc:
            raise CommandError(f"{where} is not JSON ({exc}); it holds {holds}.") from None

    def read_message(self, options):
        message = options["message"]
        if message is not None and message != "-":
            return message
        stdin = options.get("stdin", sys.stdin)
        if message is None and stdin.isatty():
            raise CommandError(
                "no message: pass --message TEXT, or pipe text in (echo 'text' | manage.py llm summarize)."
            )
        # Decode the bytes as UTF-8 ourselves: in a C or C.UTF-8 locale Python would turn
        # undecodable bytes into lone surrogates that fail later, as if the server had.
        raw = getattr(stdin, "buffer", None)
        try:
            return raw.read().decode("utf-8") if raw is not None else stdin.read()
        except UnicodeDecodeError as exc:
            byte = exc.object[exc.start]
            raise CommandError(
                f"standard input is not UTF-8 text (byte {byte:#04x} at offset {exc.start}): "
                "convert it first, e.g. with iconv -f LATIN1 -t UTF-8."
            ) from None

    def describe(self, completion):
        usage = completion.usage
        return (
            f"provider={completion.provider} model={completion.model} "
            f"finish={completion.finish_reason} tokens={usage['input_tokens']}/{usage['output_tokens']} "
            f"latency={completion.latency_ms:.0f}ms attempts={completion.attempts} "
            f"request_id={completion.request_id or '-'}"
        )

    def list_usecases(self):
        rows = [
            (
                usecase.name,
                usecase.provider,
                _model(usecase),
                f"revision {usecase.revision}" if usecase.revision else "-",
                ("" if usecase.enabled else "DISABLED: ") + usecase.description,
            )
            for usecase in get_usecases().values()
        ]
        # A use case with a wrong value is listed too, with what is wrong, rather than left out.
        rows += [
            (name, "-", "-", "-", f"MISCONFIGURED: {error}") for name, error in get_usecase_errors().items()
        ]
        self.table(("USE CASE", "PROVIDER", "MODEL", "OVERRIDE", "DESCRIPTION"), rows)

    def list_fields(self, name):
        """Each field of use case ``name``: its value and the layer it comes from."""
        usecase = get_usecase(name)
        rows = []
        for field in FIELDS:
            value = getattr(usecase, field.lower())
            if field == "MODEL" and not value:
                value, origin = _model(usecase), f"from the {PROVIDER_DEFAULT} of {usecase.provider!r}"
            else:
                origin = usecase.origin(field)
            shown = json.dumps(
                list(value) if isinstance(value, tuple) else value, ensure_ascii=False, default=str
            )
            if len(shown) > 60:
                shown = shown[:57] + "..."
            rows.append((field, redact(shown), origin))
        self.table(("FIELD", "VALUE", "SET"), rows)

    def print_usage(self):
        store = get_tsdb()
        if not store.has_data:
            self.stdout.write("No data: LLM_TSDB is 'null', so usage is not kept.")
            return
        usage = store.get_usage()
        rows = []
        for name in get_usecases():
            summary = usage.get(name)
            if summary is None:
                rows.append((name, "0", "-", "-", "-", "0", "0", "-"))
                continue
            rows.append(
                (
                    name,
                    str(summary.calls),
                    f"{summary.error_rate:.1%}",
                    f"{summary.p50_ms:.1f}ms",
                    f"{summary.p95_ms:.1f}ms",
                    str(summary.input_tokens),
                    str(summary.output_tokens),
                    dollars(summary.cost, summary.unpriced),
                )
            )
        header = ("USE CASE", "CALLS 24H", "ERRORS", "P50", "P95", "TOKENS IN", "TOKENS OUT", "COST")
        self.table(header, rows)

    def table(self, header, rows):
        """Write aligned columns; the last column is left ragged."""
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
        for i, row in enumerate([header, *rows]):
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            line = "  ".join([*cells, row[-1]])
            self.stdout.write(self.style.MIGRATE_HEADING(line) if i == 0 else line)


_NOT_WITH_COMPARE = (
    ("--provider", "provider"),
    ("--model", "model"),
    ("--stream", "stream"),
    ("--dry-run", "dry_run"),
    ("--no-fallback", "no_fallback"),
    ("--no-cache", "no_cache"),  # a comparison never uses the response cache
    ("--refresh-cache", "refresh_cache"),
)
#: Columns of an answer in a --compare row, and how many lines of it without --full.
ANSWER_WIDTH, ANSWER_LINES = 60, 3


def _wrapped(text, full):
    """An answer as lines of ANSWER_WIDTH, its own line breaks kept; cut at ANSWER_LINES unless ``full``."""
    import textwrap

    lines = []
    for paragraph in (text or "").splitlines() or [""]:
        lines += textwrap.wrap(paragraph, ANSWER_WIDTH) or [""]
    if not full and len(lines) > ANSWER_LINES:
        lines = [*lines[: ANSWER_LINES - 1], lines[ANSWER_LINES - 1][: ANSWER_WIDTH - 1] + "…"]
    return lines


def _model(usecase):
    if usecase.model:
        return usecase.model
    try:
        return providers[usecase.provider].model or "?"
    except LLMError:
        return "?"


_DOTTED = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")


def _number(value, kind, flag, expected):
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        raise CommandError(redact(f"{flag} must be {expected}, got {value!r}.")) from None
