"""The Use cases pages: the registry, each use case's health and usage, and a test form."""

import json
from dataclasses import dataclass

from django import forms
from django.contrib import admin
from django.contrib.admin.exceptions import NotRegistered
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import path, reverse

from llmapp.admin.display import NO_VALUE, budget_display, count, milliseconds, safe, usage_cells
from llmapp.admin.health import ProviderHealth, provider_health
from llmapp.admin.overrides import CHANGE_PERMISSION, edit_view, history_view, revert_view, usecase_or_404
from llmapp.calls.compare import compare_routes, parse_routes
from llmapp.calls.service import complete_prompt
from llmapp.calls.types import jsonable
from llmapp.conf import overrides
from llmapp.conf.usecases import FIELDS, PROVIDER_DEFAULT, get_usecases, set_aside_overrides
from llmapp.conf.usecases import UseCase as UseCaseConfig
from llmapp.exceptions import ConfigurationError, LLMError
from llmapp.models import CompletionEvent, UseCase
from llmapp.tsdb import get_tsdb

TEST_PERMISSION = "test_usecase"
# Shown with their own headings on the detail page, not in the configuration table.
OWN_SECTIONS = ("DESCRIPTION", "PROMPT", "PROMPT_TEMPLATE", "MESSAGE_TEMPLATE", "OUTPUT")


class TestPromptForm(forms.Form):
    message = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "cols": 80}),
        max_length=20_000,
        help_text="Sent to the use case like any other call, and recorded in the completion log.",
    )


class CompareForm(forms.Form):
    routes = forms.CharField(
        max_length=1000,
        help_text='"alias" or "alias:model", comma-separated; each runs at once, fallbacks and cache off.',
    )
    message = forms.CharField(widget=forms.Textarea(attrs={"rows": 4, "cols": 80}), max_length=20_000)


@dataclass(frozen=True)
class UseCaseRow:
    """One use case as the list and the detail page show it."""

    usecase: UseCaseConfig
    health: ProviderHealth
    model: str
    model_source: str
    #: Display strings of the usage over the last 24 hours, or None when the TSDB keeps none.
    usage: dict | None
    #: What the use case has spent of its budget this period (``budget_display``), or None.
    budget: dict | None = None

    @property
    def name(self):
        return self.usecase.name

    @property
    def sources(self):
        """Where each field's value comes from: built-in, code, settings or environment."""
        return {field: self.usecase.source(field) for field in FIELDS}


@admin.register(UseCase)
class UseCaseAdmin(admin.ModelAdmin):
    """Render the use-case registry; the placeholder model's table is never queried."""

    list_template = "admin/llmapp/usecase/list.html"
    detail_template = "admin/llmapp/usecase/detail.html"
    recent_calls = 10

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_test_permission(self, request):
        return request.user.has_perm(f"{self.opts.app_label}.{TEST_PERMISSION}")

    def has_edit_permission(self, request):
        """Whether the user may change use cases' overrides; Django's own change views stay off."""
        return request.user.has_perm(f"{self.opts.app_label}.{CHANGE_PERMISSION}")

    def get_urls(self):
        # Only these two: the default change, delete and history views would query
        # the placeholder's table, which does not exist.
        info = self.opts.app_label, self.opts.model_name
        return [
            path("", self.admin_site.admin_view(self.changelist_view), name="{}_{}_changelist".format(*info)),
            path(
                "<str:name>/", self.admin_site.admin_view(self.detail_view), name="{}_{}_detail".format(*info)
            ),
            path(
                "<str:name>/edit/",
                self.admin_site.admin_view(lambda request, name: edit_view(self, request, name)),
                name="{}_{}_edit".format(*info),
            ),
            path(
                "<str:name>/compare/",
                self.admin_site.admin_view(self.compare_view),
                name="{}_{}_compare".format(*info),
            ),
            path(
                "<str:name>/history/",
                self.admin_site.admin_view(lambda request, name: history_view(self, request, name)),
                name="{}_{}_history".format(*info),
            ),
            path(
                "<str:name>/revert/<int:revision>/",
                self.admin_site.admin_view(
                    lambda request, name, revision: revert_view(self, request, name, revision)
                ),
                name="{}_{}_revert".format(*info),
            ),
        ]

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = self.context(request, title="Use cases")
        overrides.refresh()
        try:
            usecases = list(get_usecases().values())
        except ConfigurationError as exc:
            usecases, context["config_error"] = [], str(exc)
        usage, context["usage_note"] = self.usage([usecase.name for usecase in usecases])
        context["rows"] = self.rows(usecases, usage)
        context.update(extra_context or {})
        return TemplateResponse(request, self.list_template, context)

    def detail_view(self, request, name):
        if not self.has_view_permission(request):
            raise PermissionDenied
        usecase = usecase_or_404(name)
        can_test = self.has_test_permission(request)
        if request.method == "POST" and not can_test:
            raise PermissionDenied
        form, result, error = self.test_prompt(request, usecase)
        usage, usage_note = self.usage([usecase.name])
        [row] = self.rows([usecase], usage)
        context = self.context(request, title=f"Use case: {usecase.name}")
        context |= {
            "row": row,
            "configuration": configuration(row),
            "prompt": safe(usecase.prompt),
            "prompt_origin": usecase.origin("PROMPT"),
            "templates": templates_display(usecase),
            "disabled_origin": usecase.origin("ENABLED"),
            # Override fields that no longer hold (llmapp.W009): calls use the settings' value.
            "set_aside": [safe(str(problem)) for problem in set_aside_overrides().get(usecase.name, [])],
            "description": safe(usecase.description),
            "description_origin": usecase.origin("DESCRIPTION"),
            "output": output_display(usecase),
            "usage_note": usage_note,
            "can_test": can_test,
            "can_edit": self.has_edit_permission(request) and overrides.enabled(),
            "by_prompt_version": self.by_prompt_version(request, usecase.name),
            "form": form,
            "result": result and completion_display(result),
            "error": safe(error),
            **self.recent(request, usecase.name),
        }
        return TemplateResponse(request, self.detail_template, context)

    def compare_view(self, request, name):
        """Run the test message on several routes at once and show the answers side by side."""
        if not self.has_test_permission(request):
            raise PermissionDenied
        usecase = usecase_or_404(name)
        form = CompareForm(request.POST or None, initial={"routes": usecase.provider})
        results, error = None, None
        if request.method == "POST" and form.is_valid():
            try:
                compared = compare_routes(
                    name, form.cleaned_data["message"], parse_routes(form.cleaned_data["routes"])
                )
            except LLMError as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                results = [comparison_display(result) for result in compared]
        context = self.context(request, title=f"Compare routes: {name}")
        context |= {"usecase": usecase, "form": form, "results": results, "error": safe(error)}
        return TemplateResponse(request, "admin/llmapp/usecase/compare.html", context)

    def test_prompt(self, request, usecase):
        """Run the use case on a POSTed message; return the form, the Completion and the error."""
        if request.method != "POST":
            return TestPromptForm(), None, None
        form = TestPromptForm(request.POST)
        if not form.is_valid():
            return form, None, None
        try:
            return form, complete_prompt(usecase.name, form.cleaned_data["message"]), None
        except LLMError as exc:
            # llmapp's errors are redacted when raised.
            return form, None, f"{type(exc).__name__}: {exc}"

    # -- building the pages ---------------------------------------------------------

    def context(self, request, **extra):
        request.current_app = self.admin_site.name
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "has_view_permission": True,
            **extra,
        }

    def usage(self, names):
        """Return ({name: usage figures} or None when no usage is kept, and a note saying why)."""
        try:
            store = get_tsdb()
        except ConfigurationError as exc:
            return None, f"No data: {exc}"
        if not store.has_data:
            return None, "No data: LLM_TSDB is 'null', so usage is not kept."
        return store.get_usage(usecases=names), ""

    def rows(self, usecases, usage):
        health = {}
        rows = []
        for usecase in usecases:
            if usecase.provider not in health:
                health[usecase.provider] = provider_health(usecase.provider)
            provider = health[usecase.provider]
            if usecase.model:
                model, model_source = usecase.model, usecase.source("MODEL")
            else:
                model, model_source = provider.default_model or NO_VALUE, PROVIDER_DEFAULT
            figures = None if usage is None else usage_cells(usage.get(usecase.name))
            rows.append(UseCaseRow(usecase, provider, model, model_source, figures, budget_display(usecase)))
        return rows

    def by_prompt_version(self, request, name, days=7):
        """The use case's calls over ``days`` days by prompt version: a change in answers traced to
        a change in prompts. None when this user may not read the log."""
        from datetime import timedelta

        from django.db.models import Avg, Count, Min, Q, Sum
        from django.utils import timezone

        try:
            log_admin = self.admin_site.get_model_admin(CompletionEvent)
        except NotRegistered:
            return None
        if not log_admin.has_view_permission(request):
            return None
        since = timezone.now() - timedelta(days=days)
        rows = (
            CompletionEvent.objects.filter(usecase=name, created_at__gte=since)
            .values("prompt_version")
            .annotate(
                calls=Count("pk"),
                errors=Count("pk", filter=~Q(status=CompletionEvent.Status.OK)),
                latency=Avg("latency_ms"),
                output_tokens=Sum("output_tokens"),
                first=Min("created_at"),
            )
            .order_by("-first")
        )
        return [
            {
                "version": row["prompt_version"] or NO_VALUE,
                "calls": count(row["calls"]),
                "error_rate": f"{row['errors'] / row['calls']:.1%}",
                "latency": milliseconds(row["latency"]),
                "output_tokens": count(row["output_tokens"]),
                "first": row["first"],
            }
            for row in rows
        ]

    def recent(self, request, name):
        """Return the recent calls of use case ``name``, if this user may read the log."""
        try:
            log_admin = self.admin_site.get_model_admin(CompletionEvent)
        except NotRegistered:
            return {"recent_calls": None}
        if not log_admin.has_view_permission(request):
            return {"recent_calls": None}
        events = CompletionEvent.objects.filter(usecase=name).order_by("-created_at")[: self.recent_calls]
        site = self.admin_site.name
        calls = [
            {
                "event": event,
                "url": reverse("admin:llmapp_completionevent_change", args=[event.pk], current_app=site),
                "latency": milliseconds(event.latency_ms),
                "error": safe(event.error_message),
            }
            for event in events
        ]
        log_url = reverse("admin:llmapp_completionevent_changelist", current_app=site)
        return {"recent_calls": calls, "log_url": f"{log_url}?usecase__exact={name}"}


def configuration(row):
    """Return (field, value, where it comes from) for each field of the use case but its texts."""
    usecase = row.usecase
    lines = [
        (
            "Provider",
            f"{usecase.provider} ({row.health.backend or 'not configured'})",
            usecase.origin("PROVIDER"),
        )
    ]
    for field in FIELDS:
        if field in OWN_SECTIONS or field == "PROVIDER":
            continue
        label = field.replace("_", " ").capitalize()
        if field == "MODEL" and not usecase.model:
            lines.append((label, row.model, f"from the {PROVIDER_DEFAULT} of {usecase.provider!r}"))
            continue
        value = getattr(usecase, field.lower(), None)
        if isinstance(value, list | tuple):
            value = ", ".join(map(str, value)) or NO_VALUE
        lines.append((label, safe(str(value)), usecase.origin(field)))
    return lines


def templates_display(usecase):
    """The use case's PROMPT_TEMPLATE and MESSAGE_TEMPLATE: where each is set, its version and source."""
    shown = []
    for field in ("PROMPT_TEMPLATE", "MESSAGE_TEMPLATE"):
        try:
            template = usecase.template(field)
            if template is None:
                continue
            shown.append(
                {
                    "field": field,
                    "name": template.name,
                    "origin": usecase.origin(field),
                    "version": template.version,
                    "source": safe(template.template.source),
                }
            )
        except ConfigurationError as exc:
            shown.append({"field": field, "origin": usecase.origin(field), "error": safe(str(exc))})
    return shown


def output_display(usecase):
    """The use case's output type: its name, where it is set and its JSON Schema; None for text."""
    if usecase.output is None:
        return None
    try:
        output = usecase.output_spec
    except ConfigurationError as exc:
        return {"error": safe(str(exc)), "origin": usecase.origin("OUTPUT")}
    return {
        "type": output.display,
        "origin": usecase.origin("OUTPUT"),
        "schema": json.dumps(output.schema, indent=2, ensure_ascii=False),
    }


def comparison_display(result):
    """One route's column of a comparison: its answer and figures, or its error."""
    if result.completion is None:
        return {"route": str(result.route), "error": safe(f"{type(result.error).__name__}: {result.error}")}
    return {"route": str(result.route), **completion_display(result.completion)}


def completion_display(completion):
    parsed = jsonable(completion.parsed)
    return {
        "text": safe(completion.text),
        # A typed answer's fields, one row each; any other value whole.
        "fields": [(name, _shown(value)) for name, value in parsed.items()]
        if isinstance(parsed, dict)
        else None,
        "parsed": None if parsed is None or isinstance(parsed, dict) else safe(_shown(parsed)),
        "provider": completion.provider,
        "model": completion.model,
        "finish_reason": completion.finish_reason or NO_VALUE,
        "input_tokens": count(completion.input_tokens),
        "output_tokens": count(completion.output_tokens),
        "latency": milliseconds(completion.latency_ms),
        "attempts": completion.attempts,
        "request_id": completion.request_id or NO_VALUE,
    }


def _shown(value):
    return safe(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
