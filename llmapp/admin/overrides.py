"""Editing a use case in the admin: its override form, "Test this draft", history and revert.

The form shows the use case's effective values; what is saved is the override, the
fields that differ from the settings (``llmapp.conf.overrides``), validated exactly as
settings are. Each save is a revision; the history shows each with what it changed.
"""

import json

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from llmapp.admin.display import safe
from llmapp.calls.service import complete_prompt
from llmapp.conf import overrides
from llmapp.conf.usecases import drafted, get_usecase, resolve_with
from llmapp.exceptions import ConfigurationError, InvalidUsecaseError, LLMError
from llmapp.providers import providers

CHANGE_PERMISSION = "change_usecase"
_HELP = {
    "ENABLED": "Off: calls raise UsecaseDisabled and send nothing.",
    "PROMPT": "The system prompt, unless a prompt template is set.",
    "PROMPT_TEMPLATE": "The system prompt as Django template source, rendered with the call's context; "
    "empty: PROMPT.",
    "MESSAGE_TEMPLATE": "The user's message as Django template source, rendered with the context and "
    "{{ message }}; empty: the message as given.",
    "MODEL": "Empty: the provider's default model.",
    "TIMEOUT": "Seconds over every attempt, backoff and fallback.",
    "RETRIES": "How often a transient failure is retried on the same provider.",
    "FALLBACKS": '"provider" or "provider:model", comma-separated, tried in order.',
    "CACHE": 'JSON, e.g. {"ALIAS": "default", "TTL": "1h"}; empty: no response cache.',
    "BUDGET": 'JSON, e.g. {"USD": "50", "PERIOD": "1d"}; empty: none.',
    "RATE_LIMIT": 'JSON, e.g. {"RPM": 60}; empty: none.',
}
_TEXTAREAS = ("DESCRIPTION", "PROMPT", "PROMPT_TEMPLATE", "MESSAGE_TEMPLATE")
_JSON = ("CACHE", "BUDGET", "RATE_LIMIT")


def _form_field(field):
    label = field.replace("_", " ").capitalize()
    common = {"label": label, "help_text": _HELP.get(field, ""), "required": False}
    if field == "ENABLED":
        return forms.BooleanField(**common)
    if field in _TEXTAREAS:
        rows = 2 if field == "DESCRIPTION" else 8
        textarea = forms.Textarea(attrs={"rows": rows, "cols": 100})
        return forms.CharField(widget=textarea, strip=False, **common)
    if field == "PROVIDER":
        return forms.ChoiceField(choices=[(alias, alias) for alias in providers.settings], **common)
    if field in ("TEMPERATURE", "TIMEOUT"):
        return forms.FloatField(**common)
    if field in ("MAX_OUTPUT_TOKENS", "RETRIES"):
        return forms.IntegerField(**common)
    if field in _JSON:
        return JSONField(widget=forms.Textarea(attrs={"rows": 2, "cols": 100}), **common)
    return forms.CharField(max_length=500, **common)


class JSONField(forms.JSONField):
    """Django's, with JSON nested too deeply for Python refused as invalid rather than a 500."""

    def to_python(self, value):
        try:
            return super().to_python(value)
        except RecursionError:
            raise forms.ValidationError("This JSON is nested too deeply.", code="invalid") from None

    def prepare_value(self, value):
        return "" if value is None else super().prepare_value(value)


def form_values(usecase):
    """The use case's editable fields as the form shows them: templates by their source."""
    values = overrides.effective_config(usecase)
    for field in ("PROMPT_TEMPLATE", "MESSAGE_TEMPLATE"):
        try:
            template = usecase.template(field)
            values[field] = template.template.source if template is not None else ""
        except ConfigurationError:
            values[field] = ""  # its problem is shown with the configuration
    values["FALLBACKS"] = ", ".join(values["FALLBACKS"])
    values["MODEL"] = values["MODEL"] or ""
    return values


def shown_values(usecase):
    """form_values with the secrets this process knows masked: what the form shows."""
    return {field: overrides.masked(value) for field, value in form_values(usecase).items()}


class OverrideForm(forms.Form):
    """The editable fields of one use case, and the comment of the revision a save makes."""

    def __init__(self, usecase, *args, **kwargs):
        self.usecase = usecase
        self.base = shown_values(resolve_with(usecase.name, {})[0])
        latest = overrides.latest_revision(usecase.name)
        initial = {**shown_values(usecase), "base_revision": latest.pk if latest is not None else 0}
        super().__init__(*args, initial=initial, **kwargs)
        for field in overrides.editable_fields():
            self.fields[field] = _form_field(field)
        # The revision the form was filled from: saving over a newer one would undo it.
        self.fields["base_revision"] = forms.IntegerField(widget=forms.HiddenInput, min_value=0)
        self.fields["comment"] = forms.CharField(
            max_length=1000, required=False, help_text="Why: kept with the revision."
        )
        self.fields["test_message"] = forms.CharField(
            widget=forms.Textarea(attrs={"rows": 3, "cols": 100}),
            max_length=20_000,
            required=False,
            label="Test message",
            help_text="For “Test this draft”: sent with the unsaved configuration, and recorded in the log.",
        )
        self.fields["test_context"] = JSONField(
            widget=forms.Textarea(attrs={"rows": 2, "cols": 100}),
            required=False,
            label="Test context",
            help_text='What the templates render with, as JSON: {"product": "the Kettle"}.',
        )

    def override(self):
        """The override the submitted form makes: each field whose value differs from the settings'."""
        fields = {}
        for field in overrides.editable_fields():
            value = self.cleaned_data.get(field)
            if isinstance(value, str):
                value = value.replace("\r\n", "\n")  # as browsers send a textarea's lines
            if field == "FALLBACKS":
                value = [item.strip() for item in (value or "").split(",") if item.strip()]
                shown = ", ".join(value)
            else:
                shown = "" if value is None and field == "MODEL" else value
            if shown == self.base.get(field):
                continue
            if value is None or (field == "MODEL" and not value):
                if field not in _JSON:
                    continue  # an empty number or model: the settings' value
                value = {}  # none, over one in settings
            fields[field] = value
        return fields

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        self.override_fields = self.override()
        for field, problems in overrides.validate(self.usecase.name, self.override_fields).items():
            for problem in problems:
                self.add_error(field if field in self.fields else None, safe(problem))
        return cleaned


def edit_view(model_admin, request, name):
    if not model_admin.has_edit_permission(request):
        raise PermissionDenied
    usecase = usecase_or_404(name)
    if not overrides.enabled():
        messages.error(request, "Use-case overrides are off (LLM_USECASE_OVERRIDES = False).")
        return HttpResponseRedirect(_url(model_admin, "detail", name))
    result = error = None
    if request.method == "POST":
        form = OverrideForm(usecase, request.POST)
        if form.is_valid():
            if "_test" in request.POST:
                result, error = _test_draft(model_admin, request, form)
            elif form.override_fields == overrides.current_override(name):
                messages.info(request, "Nothing changed: no revision was saved.")
                return HttpResponseRedirect(_url(model_admin, "detail", name))
            else:
                try:
                    revision = overrides.save_override(
                        name,
                        form.override_fields,
                        author=request.user,
                        comment=form.cleaned_data["comment"],
                        base_revision=form.cleaned_data["base_revision"],
                    )
                except overrides.OverrideConflict as exc:
                    form.add_error(None, str(exc))
                else:
                    messages.success(request, f"Saved use case {name!r} as revision {revision.pk}.")
                    return HttpResponseRedirect(_url(model_admin, "detail", name))
    else:
        form = OverrideForm(usecase)
    context = model_admin.context(request, title=f"Change use case: {name}")
    context |= {
        "usecase": usecase,
        "form": form,
        "can_test": model_admin.has_test_permission(request),
        "result": result,
        "error": safe(error),
        "detail_url": _url(model_admin, "detail", name),
        "history_url": _url(model_admin, "history", name),
    }
    return TemplateResponse(request, "admin/llmapp/usecase/edit.html", context)


def _test_draft(model_admin, request, form):
    from llmapp.admin.usecases import completion_display

    if not model_admin.has_test_permission(request):
        raise PermissionDenied
    message = form.cleaned_data["test_message"] or None
    if (
        message is None
        and not form.usecase.message_template
        and "MESSAGE_TEMPLATE" not in form.override_fields
    ):
        form.add_error("test_message", "Write a message to test the draft with.")
        return None, None
    draft, _ = resolve_with(form.usecase.name, form.override_fields)
    context = form.cleaned_data.get("test_context")
    if context is not None and not isinstance(context, dict):
        form.add_error("test_context", "Give a JSON object of template variables.")
        return None, None
    try:
        with drafted(draft):
            return completion_display(complete_prompt(draft.name, message, context=context)), None
    except LLMError as exc:
        return None, f"{type(exc).__name__}: {exc}"


def history_view(model_admin, request, name):
    from llmapp.models import UseCaseRevision

    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    usecase = usecase_or_404(name)
    revisions = list(UseCaseRevision.objects.filter(usecase=name).order_by("pk"))
    rows = []
    previous = overrides.effective_config(resolve_with(name, {})[0])
    for revision in revisions:
        rows.append({"revision": revision, "changes": diff(previous, revision.config)})
        previous = revision.config
    rows.reverse()
    context = model_admin.context(request, title=f"History of use case: {name}")
    context |= {
        "usecase": usecase,
        "rows": rows,
        "current": revisions[-1].pk if revisions else None,
        "can_change": model_admin.has_edit_permission(request),
        "detail_url": _url(model_admin, "detail", name),
    }
    return TemplateResponse(request, "admin/llmapp/usecase/history.html", context)


def revert_view(model_admin, request, name, revision):
    from llmapp.models import UseCaseRevision

    if request.method != "POST" or not model_admin.has_edit_permission(request):
        raise PermissionDenied
    usecase_or_404(name)
    try:
        saved = overrides.revert(name, revision, author=request.user)
    except UseCaseRevision.DoesNotExist:
        raise Http404(f"Use case {name!r} has no revision {revision}.") from None
    except overrides.OverrideInvalid as exc:
        messages.error(request, safe(f"Revision {revision} no longer holds, nothing was saved: {exc}"))
    except overrides.OverridesOff as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Restored revision {revision} as revision {saved.pk}.")
    return HttpResponseRedirect(_url(model_admin, "history", name))


def diff(before, after):
    """[(field, old, new)] of the fields whose value differs, as display text."""
    return [
        (field, _shown(before.get(field)), _shown(after.get(field)))
        for field in after
        if before.get(field) != after.get(field)
    ]


def _shown(value):
    if value is None:
        return "(unset)"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return safe(text)


def usecase_or_404(name):
    """Use case ``name`` as every process sees it now (its override read afresh); Http404 if unknown."""
    overrides.refresh()
    try:
        return get_usecase(name)
    except InvalidUsecaseError:
        raise Http404(f"No use case named {name!r}.") from None


def _url(model_admin, view, name):
    info = model_admin.opts.app_label, model_admin.opts.model_name
    return reverse(f"admin:{info[0]}_{info[1]}_{view}", args=[name], current_app=model_admin.admin_site.name)
