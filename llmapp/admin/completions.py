"""The completion log: every recorded call, read-only, a failed one with its stack frames."""

import json

from django.contrib import admin
from django.template.defaultfilters import truncatechars
from django.utils.html import format_html, format_html_join

from llmapp.admin.display import milliseconds, safe
from llmapp.calls.spend.cost import dollars
from llmapp.models import CompletionEvent

# Text columns scrubbed again before display (see display.safe).
TEXT_FIELDS = ("error_message", "prompt", "message", "response", "request_id")
CONTENT_FIELDS = ("prompt", "conversation", "message", "response")


class UseCaseFilter(admin.AllValuesFieldListFilter):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.title = "use case"


@admin.register(CompletionEvent)
class CompletionEventAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "use_case",
        "provider",
        "model",
        "status",
        "latency",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "cached",
        "subject",
        "error",
    )
    list_display_links = ("created_at",)
    list_filter = (("usecase", UseCaseFilter), "provider", "status", "cached", "created_at")
    # Only fields that can hold no secret: a search matches stored text, not the masked text
    # shown, so searching error_message would let a view-only user guess a secret a character
    # at a time (an event recorded before its key was configured keeps it in clear).
    search_fields = ("usecase", "provider", "model", "request_id", "error_type")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    list_per_page = 50
    readonly_fields = ("use_case", "latency", "validation_errors", "cost_usd")
    change_form_template = "admin/llmapp/completionevent/change_form.html"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # Events go with `manage.py llm_prune`, not one by one.
        return False

    @admin.display(description="use case", ordering="usecase")
    def use_case(self, event):
        return event.usecase

    @admin.display(description="latency", ordering="latency_ms")
    def latency(self, event):
        return milliseconds(event.latency_ms)

    @admin.display(description="how the answer did not match its output type")
    def validation_errors(self, event):
        return format_html(
            "<ul>{}</ul>", format_html_join("", "<li>{}</li>", ((error,) for error in event.output_errors))
        )

    @admin.display(description="cost", ordering="cost")
    def cost_usd(self, event):
        return dollars(event.cost, none="unpriced")

    @admin.display(description="error")
    def error(self, event):
        if not event.error_type:
            return ""
        return truncatechars(f"{event.error_type}: {safe(event.error_message)}", 100)

    def get_fieldsets(self, request, obj=None):
        fieldsets = [
            (None, {"fields": ("created_at", "use_case", "provider", "model", "status", "latency")}),
            (
                "Answer",
                {
                    "fields": (
                        "finish_reason",
                        "input_tokens",
                        "output_tokens",
                        "attempts",
                        "messages",
                        "cost_usd",
                        "rates",
                        "cached",
                        "subject",
                        "request_id",
                    )
                },
            ),
        ]
        if obj is not None and obj.status != CompletionEvent.Status.OK:
            fields = ("error_type", "status_code", "error_message")
            if obj.output_errors:
                fields += ("validation_errors",)
            fieldsets.append(("Error", {"fields": fields}))
        if obj is not None and any(getattr(obj, name) for name in CONTENT_FIELDS):
            fieldsets.append(
                ("Content", {"fields": CONTENT_FIELDS, "description": "Kept because LLM_LOG_CONTENT is on."})
            )
        return fieldsets

    def get_object(self, request, object_id, from_field=None):
        event = super().get_object(request, object_id, from_field)
        if event is not None:
            # Only displayed, never saved: this admin cannot change an event.
            for name in TEXT_FIELDS:
                setattr(event, name, safe(getattr(event, name)))
            event.exception = safe(event.exception)
            event.conversation = safe(event.conversation)
            event.output_errors = [safe(str(error)) for error in event.output_errors or ()]
        return event

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        context["exceptions"] = exception_display(obj.exception) if obj is not None else []
        return super().render_change_form(request, context, add, change, form_url, obj)


def exception_display(data):
    """Return a stored exception (Sentry's format) as the template shows it, most recent first.

    Like Sentry's frame Context view: for each frame its file, function and line,
    the numbered source lines around it, and its local variables.
    """
    if not isinstance(data, dict):
        return []
    exceptions = []
    for value in reversed(data.get("values") or []):
        frames = (value.get("stacktrace") or {}).get("frames") or []
        shown = [frame_display(frame) for frame in reversed(frames) if isinstance(frame, dict)]
        for position, frame in enumerate(shown):
            # Open the innermost frame and the application's own; library frames stay folded.
            frame["open"] = position == 0 or frame["in_app"]
        exceptions.append(
            {
                "type": value.get("type") or "Exception",
                "value": value.get("value") or "",
                "module": value.get("module") or "",
                "frames": shown,
            }
        )
    return exceptions


def frame_display(frame):
    lineno = frame.get("lineno")
    pre = frame.get("pre_context") or []
    post = frame.get("post_context") or []
    lines = []
    if frame.get("context_line") is not None:
        first = lineno - len(pre) if isinstance(lineno, int) else None
        texts = [*pre, frame["context_line"], *post]
        for offset, text in enumerate(texts):
            lines.append(
                {
                    "number": first + offset if first is not None else "",
                    "text": text,
                    "current": offset == len(pre),
                }
            )
    path = frame.get("abs_path") or frame.get("filename") or ""
    in_app = frame.get("in_app")
    if in_app is None:
        in_app = not any(part in path for part in ("site-packages", "dist-packages", "/lib/python"))
    return {
        "filename": frame.get("filename") or path or "?",
        "abs_path": path,
        "function": frame.get("function") or "?",
        "module": frame.get("module") or "",
        "lineno": lineno,
        "lines": lines,
        "vars": [(name, _variable(value)) for name, value in (frame.get("vars") or {}).items()],
        "in_app": in_app,
    }


def _variable(value):
    # Sentry stores reprs as strings; containers are kept as nested JSON.
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)
