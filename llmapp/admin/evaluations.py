"""Evaluation runs (``manage.py llm_eval``): a list, and a page per run with its routes' figures
drawn as bars (SVG made on the server: no JavaScript to build) and the cases they disagree on."""

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.template.response import TemplateResponse

from llmapp.admin.display import NO_VALUE, milliseconds, safe
from llmapp.models import EvaluationRun

#: The chart's geometry, in SVG user units.
LABEL_WIDTH, BAR_WIDTH, ROW_HEIGHT = 200, 420, 26


@admin.register(EvaluationRun)
class EvaluationRunAdmin(admin.ModelAdmin):
    list_display = ("created_at", "usecase", "input_name", "cases", "route_list", "accuracies", "judge")
    list_filter = ("usecase", "created_at")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    change_form_template = "admin/llmapp/evaluationrun/detail.html"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="routes")
    def route_list(self, run):
        return ", ".join(run.routes)

    @admin.display(description="accuracy")
    def accuracies(self, run):
        return ", ".join(f"{route['route']} {route['accuracy']:.0%}" for route in run.summary)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        run = self.get_object(request, object_id)
        if run is None:
            raise Http404(f"No evaluation run {object_id}.")
        request.current_app = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "has_view_permission": True,
            "title": f"Evaluation of {run.usecase}",
            "run": run,
            "routes": [route_row(route) for route in run.summary],
            "accuracy_chart": chart(run.summary, "accuracy", lambda value: f"{value:.0%}", ceiling=1.0),
            "latency_chart": chart(run.summary, "latency_p50_ms", lambda value: f"{value:,.0f} ms"),
            "disagreements": [disagreement_row(case, run.routes) for case in run.disagreements],
        }
        return TemplateResponse(request, self.change_form_template, context)


def route_row(route):
    return {
        "route": route["route"],
        "accuracy": f"{route['accuracy']:.1%}",
        "passed": route["passed"],
        "failed": route["failed"],
        "errored": route["errored"],
        "p50": milliseconds(route["latency_p50_ms"]),
        "p95": milliseconds(route["latency_p95_ms"]),
        "tokens": f"{route['input_tokens']:,} in, {route['output_tokens']:,} out",
        "cost": NO_VALUE if route["cost"] is None else f"${route['cost']}",
        "failing": ", ".join(route["failing"]) or NO_VALUE,
    }


def chart(summary, figure, shown, ceiling=None):
    """The bars of ``figure`` per route: an SVG's size and, per bar, its label, width and text."""
    values = [route.get(figure) for route in summary]
    top = ceiling or max([value for value in values if value is not None], default=0) or 1
    bars = []
    for index, (route, value) in enumerate(zip(summary, values, strict=True)):
        # A value above nothing is at least a sliver; nothing is no bar.
        width = 0 if not value else max(1, round(BAR_WIDTH * value / top))
        bars.append(
            {
                "label": route["route"],
                "y": index * ROW_HEIGHT,
                "text_y": index * ROW_HEIGHT + ROW_HEIGHT * 0.65,
                "width": width,
                "value": NO_VALUE if value is None else shown(value),
                "value_x": LABEL_WIDTH + width + 6,
            }
        )
    return {
        "bars": bars,
        "width": LABEL_WIDTH + BAR_WIDTH + 90,
        "height": max(1, len(bars)) * ROW_HEIGHT,
        "bar_x": LABEL_WIDTH,
        "track_width": BAR_WIDTH,
        "bar_height": ROW_HEIGHT - 8,
    }


def disagreement_row(case, routes):
    answers = case.get("routes", {})
    return {
        "case": case["case"],
        "message": safe(case.get("message") or ""),
        "expected": safe(
            case.get("expected") if isinstance(case.get("expected"), str) else str(case.get("expected"))
        ),
        "answers": [
            {
                "route": route,
                "outcome": answers.get(route, {}).get("outcome", NO_VALUE),
                "answer": safe(answers.get(route, {}).get("answer") or ""),
                "why": safe(answers.get(route, {}).get("why") or ""),
            }
            for route in routes
        ],
    }
