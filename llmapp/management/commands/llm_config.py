"""Export, import, compare and revert use-case overrides, here or on a running deployment.

    manage.py llm_config export [--output FILE]
    manage.py llm_config import FILE [--comment TEXT]
    manage.py llm_config diff FILE
    manage.py llm_config revert USECASE REVISION

With ``--url https://host/api/llm/ --token TOKEN`` (or LLM_API_TOKEN in the environment)
each works against that deployment's JSON API (``llmapp.urls``) instead of this database.
The file is ``{"usecases": {name: {FIELD: value, ...}}}``: each use case's override.
"""

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

from django.core.management.base import CommandError

from llmapp.conf import overrides
from llmapp.conf.secrets import redact
from llmapp.conf.usecases import get_usecases, override_of
from llmapp.exceptions import InvalidUsecaseError, LLMError
from llmapp.management.base import LLMCommand

FORMAT = 1


class Command(LLMCommand):
    help = (
        "Export, import, diff or revert use-case overrides (the fields changed in the admin or over the "
        "API), locally or with --url and --token against a running deployment."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--url", help="The deployment's API root, e.g. https://example.com/api/llm/.")
        parser.add_argument(
            "--token", help="A token of `manage.py llm_token create` (default: $LLM_API_TOKEN) for --url."
        )
        parser.add_argument(
            "--timeout", type=float, default=30.0, help="Seconds per HTTP request (default 30)."
        )
        actions = parser.add_subparsers(dest="action", required=True, metavar="{export,import,diff,revert}")
        export = actions.add_parser("export", help="Print (or write to --output) every override as JSON.")
        export.add_argument("--output", help="Write to this file instead of standard output.")
        imported = actions.add_parser("import", help="Make each use case's override the file's.")
        imported.add_argument("file", metavar="FILE", help="An export ('-' for standard input).")
        imported.add_argument("--comment", default="", help="The revisions' comment.")
        diff = actions.add_parser("diff", help="Show what `import FILE` would change; exit 1 if anything.")
        diff.add_argument("file", metavar="FILE")
        revert = actions.add_parser("revert", help="Restore USECASE's override as of REVISION.")
        revert.add_argument("usecase", metavar="USECASE")
        revert.add_argument("revision", metavar="REVISION", type=int)
        for sub in (imported, revert):
            sub.add_argument(
                "--author",
                metavar="USERNAME",
                help="The user the revisions are saved as, without --url (default: none, with the "
                "shell's login name; with --url, the token's user).",
            )
        for sub in (export, imported, diff, revert):
            sub.__class__ = parser.__class__
            sub.called_from_command_line = getattr(parser, "called_from_command_line", False)

    def handle(self, *args, action, **options):
        if options["url"] and options.get("author") is not None:
            raise CommandError("--author goes without --url: over the API, the token's user is the author.")
        store = (
            Remote(options["url"], options["token"], options["timeout"])
            if options["url"]
            else Local(options.get("author"))
        )
        try:
            getattr(self, f"do_{action}")(store, options)
        except LLMError as exc:
            raise CommandError(str(exc)) from exc

    def do_export(self, store, options):
        text = json.dumps({"format": FORMAT, "usecases": store.overrides()}, indent=2, ensure_ascii=False)
        if options["output"]:
            with open(options["output"], "w", encoding="utf-8") as file:
                file.write(text + "\n")
        else:
            self.stdout.write(text)

    def do_import(self, store, options):
        wanted = self.read(options["file"])
        current = store.overrides()
        unknown = sorted(set(wanted) - set(current))
        if unknown:
            raise CommandError(
                f"{options['file']} names use case(s) {', '.join(unknown)}, which this deployment does not "
                f"have; nothing was imported. Known: {', '.join(sorted(current))}."
            )
        changes = {name: fields for name, fields in wanted.items() if current[name] != fields}
        comment = options["comment"] or f"import of {os.path.basename(options['file'])}"
        store.put_all(changes, comment)
        for name, fields in changes.items():
            self.stdout.write(f"{name}: saved ({len(fields)} field(s) overridden)")
        self.stdout.write(
            f"{len(changes)} use case(s) changed, {len(wanted) - len(changes)} already as in the file."
        )

    def do_diff(self, store, options):
        wanted = self.read(options["file"])
        current = store.overrides()
        differ = False
        for name, fields in wanted.items():
            if name not in current:
                differ = True
                self.stdout.write(f"{name}: no such use case here; import would refuse the file")
                continue
            have = current[name]
            for field in sorted(set(fields) | set(have)):
                if fields.get(field) != have.get(field):
                    differ = True
                    self.stdout.write(
                        f"{name}.{field}: {_shown(have.get(field))} -> {_shown(fields.get(field))}"
                    )
        if not differ:
            self.stdout.write("No differences.")
        else:
            sys.exit(1)

    def do_revert(self, store, options):
        store.revert(options["usecase"], options["revision"])
        self.stdout.write(f"{options['usecase']}: override restored as of revision {options['revision']}.")

    def read(self, path):
        try:
            if path == "-":
                text = sys.stdin.read()
            else:
                with open(path, encoding="utf-8") as file:
                    text = file.read()
            data = json.loads(text)
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}.") from None
        except (ValueError, RecursionError) as exc:
            raise CommandError(f"{path} is not JSON ({exc}); it holds an export of llm_config.") from None
        usecases = data.get("usecases") if isinstance(data, dict) else None
        if not isinstance(usecases, dict) or not all(isinstance(value, dict) for value in usecases.values()):
            raise CommandError(
                f'{path} must be {{"usecases": {{name: {{FIELD: value}}}}}}, as export writes it.'
            )
        # null removes a field, as in a PUT: the same as leaving it out.
        return {
            name: {field: value for field, value in fields.items() if value is not None}
            for name, fields in usecases.items()
        }


def _login_name():
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no name
        return "unknown"


def _shown(value):
    text = "(unset)" if value is None else json.dumps(value, ensure_ascii=False)
    return redact(text if len(text) <= 80 else text[:77] + "...")


class Local:
    """The overrides of this project's database, changed by ``username`` or, for none, the shell's user."""

    def __init__(self, username=None):
        self.author, self.author_name = None, ""
        if username is not None:
            from django.contrib.auth import get_user_model
            from django.core.exceptions import ValidationError

            model = get_user_model()
            try:
                self.author = model._default_manager.get_by_natural_key(username)
            except (model.DoesNotExist, model.MultipleObjectsReturned, ValueError, ValidationError):
                raise CommandError(f"--author {username}: no such user (or not one).") from None
            if not self.author.is_active:
                raise CommandError(f"--author {username}: that user is inactive.")
        else:
            self.author_name = f"{_login_name()} (llm_config)"

    def overrides(self):
        overrides.refresh()
        # Every use case, {} for one on its settings: an import then puts the target's back too.
        return {name: override_of(name) for name in get_usecases()}

    def put_all(self, changes, comment):
        """Save every change, or none: one transaction, which a change that does not hold rolls back."""
        from django.db import transaction

        with transaction.atomic():
            for name, fields in changes.items():
                try:
                    overrides.save_override(
                        name, fields, author=self.author, author_name=self.author_name, comment=comment
                    )
                except (overrides.OverrideInvalid, overrides.OverridesOff, InvalidUsecaseError) as exc:
                    raise CommandError(f"{name}: {exc}; nothing was imported.") from None

    def revert(self, name, revision):
        from llmapp.models import UseCaseRevision

        try:
            overrides.revert(name, revision, author=self.author, author_name=self.author_name)
        except UseCaseRevision.DoesNotExist:
            raise CommandError(f"use case {name!r} has no revision {revision}.") from None
        except overrides.OverrideInvalid as exc:
            raise CommandError(f"revision {revision} no longer holds: {exc}") from None


class Remote:
    """The overrides of a running deployment, through its JSON API."""

    def __init__(self, url, token, timeout):
        token = token or os.environ.get("LLM_API_TOKEN")
        if not token:
            raise CommandError(
                "--url needs --token TOKEN (or LLM_API_TOKEN): see `manage.py llm_token create`."
            )
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise CommandError(f"--url must be an http(s) URL of the API root, got {redact(url)!r}.")
        self.root = url if url.endswith("/") else url + "/"
        self.token = token
        self.timeout = timeout

    def overrides(self):
        listed = self.call("GET", "usecases/")["usecases"]
        return {usecase["name"]: usecase.get("override") or {} for usecase in listed}

    def put_all(self, changes, comment):
        """PUT each change. The deployment checks each as it comes: one it refuses stops the import
        there, and those before it stay saved (the message says which)."""
        saved = []
        for name, fields in changes.items():
            try:
                self.call("PUT", f"usecases/{urllib.parse.quote(name)}/", fields, comment)
            except CommandError as exc:
                done = f" ({', '.join(saved)} saved before it)" if saved else "; nothing was imported"
                raise CommandError(f"{name}: {exc}{done}.") from None
            saved.append(name)

    def revert(self, name, revision):
        self.call("POST", f"usecases/{urllib.parse.quote(name)}/revert/", {"revision": revision})

    def call(self, method, path, body=None, comment=""):
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if comment:
            headers["X-Revision-Comment"] = comment.encode("ascii", "replace").decode()
        request = urllib.request.Request(self.root + path, data=data, headers=headers, method=method)  # noqa: S310
        # Not sent again on a redirect, which may lead to another host.
        request.add_unredirected_header("Authorization", f"Bearer {self.token}")
        where = f"{method} {redact(self.root + path)}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (checked above)
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise CommandError(f"{where}: HTTP {exc.code}: {_api_error(exc)}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CommandError(f"{where}: {redact(str(reason))}.") from None
        except ValueError:
            raise CommandError(f"{where}: the answer is not JSON; is --url the API root?") from None


def _api_error(exc):
    try:
        body = json.loads(exc.read())
    except (ValueError, OSError):
        return exc.reason
    message = str(body.get("error", exc.reason))
    for field, problems in (body.get("errors") or {}).items():
        message += f" {field}: {' '.join(map(str, problems))}"
    return redact(message)
