"""Prompts as Django templates: PROMPT_TEMPLATE (the system prompt) and MESSAGE_TEMPLATE.

A template is named (loaded by the project's Django template engine, so an app ships
``templates/llm/summarize.txt`` and a project overrides it like any template) or, in an
admin or API override, given as its source. It renders with the call's ``context``:

    complete_prompt("triage", context={"ticket": ticket})

Text is not HTML-escaped (a prompt is not a web page), and a variable the context does
not give is an error naming it, never a silent blank: a prompt missing its facts still
gets an answer, a wrong one.
"""

import functools
import hashlib
import re

from django.core.signals import setting_changed
from django.template import Context, Engine, TemplateDoesNotExist, TemplateSyntaxError
from django.template.backends.django import DjangoTemplates
from django.template.base import FilterExpression, VariableNode
from django.utils.autoreload import file_changed

from llmapp.conf.sandbox import MAX_RENDERED, OverBudget, bound, current_budget, render_within_budget
from llmapp.exceptions import ConfigurationError, InvalidRequestError, MissingContextError

# What the engine renders in place of a missing variable: found after rendering, raised as an error.
_MISSING = "\x00llmapp-missing:%s\x00"
_MISSING_FOUND = re.compile("\x00llmapp-missing:(.*?)\x00")


@functools.cache
def sandbox():
    """The engine of template sources saved in an override: the built-in tags and filters only.

    Whoever may edit a use case must not reach more than its prompt: no other template
    (include, extends), no tag library (load), no dump of the context (debug), nothing
    beyond its bounds (``llmapp.conf.sandbox``, whose filters stand in for the built-in
    ones, measured).
    """
    return Engine(
        dirs=[],
        loaders=[],
        libraries={},
        builtins=["llmapp.conf.sandbox"],
        string_if_invalid=_MISSING,
        autoescape=False,
    )


def _refuse_reaching_out(template, where):
    from django.template.defaulttags import DebugNode, LoremNode, URLNode
    from django.template.loader_tags import ExtendsNode, IncludeNode

    for node_type, tag in (
        (IncludeNode, "include"),
        (ExtendsNode, "extends"),
        (DebugNode, "debug"),
        (URLNode, "url"),
        (LoremNode, "lorem"),  # as many words as it is asked for
    ):
        if template.nodelist.get_nodes_by_type(node_type):
            raise ConfigurationError(
                f"{where} uses {{% {tag} %}}, which a template saved in an override may not: it renders "
                "the prompt alone.",
                check_id="llmapp.E030",
                hint="Write the text in the template, or move the template to a file named in settings.",
            )
    return template


@functools.cache
def engine():
    """The project's Django template engine, strict: missing variables marked, nothing escaped."""
    from django.template import engines

    for backend in engines.all():
        if isinstance(backend, DjangoTemplates):
            default = backend.engine
            return Engine(
                dirs=default.dirs,
                # Its loaders already hold what APP_DIRS adds; Engine takes one or the other.
                debug=default.debug,
                loaders=default.loaders,
                string_if_invalid=_MISSING,
                file_charset=default.file_charset,
                libraries=default.libraries,
                builtins=default.builtins,
                autoescape=False,
            )
    raise ConfigurationError(
        "a use case has a PROMPT_TEMPLATE or MESSAGE_TEMPLATE, but TEMPLATES configures no Django "
        "template engine to render it.",
        check_id="llmapp.E030",
        hint='Add {"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True} '
        "to TEMPLATES.",
    )


def forget_templates():
    """Compile every template again on its next use: the engine's, and the use cases' own."""
    from llmapp.conf import usecases

    engine.cache_clear()
    sandbox.cache_clear()
    usecases.forget_resolved()


def _forget_engine(*, setting, **kwargs):
    if setting in ("TEMPLATES", "INSTALLED_APPS"):
        forget_templates()


def _file_changed(*, file_path, **kwargs):
    # runserver's autoreloader: Django resets its own engines' loaders on a template's change.
    if getattr(file_path, "suffix", ".py") != ".py":
        forget_templates()


setting_changed.connect(_forget_engine, dispatch_uid="llmapp.conf.prompts")
file_changed.connect(_file_changed, dispatch_uid="llmapp.conf.prompts")


class _Strict(Context):
    """Notes each name a tag asks of it and it does not hold: ``{% if product %}`` or
    ``{% for line in lines %}`` with neither given must not render a silent blank either.

    A name is left alone where the template rendering it says it may be missing (see
    ``_optional_names``). In an override's source, every lookup counts against the
    render's budget: a condition of thousands of operands in a loop must not run for a minute.
    """

    def __init__(self, values, optional):
        super().__init__(values, autoescape=False)
        self.optional = optional
        self.missing = {}  # names, in order, once each

    def __getitem__(self, key):
        budget = current_budget()
        if budget is not None:
            budget.looked_up()
        try:
            return super().__getitem__(key)
        except KeyError:
            if budget is not None:
                budget.missed()
            if key not in self.optional and key not in _optional_names(self.render_context.template):
                self.missing[key] = None
            raise


def _optional_names(template):
    """The names ``template`` says may be missing: those given a ``default`` filter anywhere,
    and ``{% firstof %}``'s, whose point is to take the first one given. Kept on the template."""
    if template is None:
        return frozenset()
    try:
        return template.llmapp_optional
    except AttributeError:
        pass
    from django.template.base import Node, Variable
    from django.template.defaulttags import FirstOfNode
    from django.template.smartif import Literal, TokenBase

    optional = set()

    def root(expression):
        var = expression.var
        return var.lookups[0] if isinstance(var, Variable) and var.lookups else None

    def visit(value):
        # Only what holds expressions: a tag's own, its lists and dicts of them, and the
        # operands of {% if %}'s conditions. Nodes are walked below, once each.
        if isinstance(value, FilterExpression):
            if _has_default(value):
                optional.add(root(value))
        elif isinstance(value, (list, tuple)) and not isinstance(value, Node):
            for item in value:
                if not isinstance(item, (Node, str)):
                    visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, Literal):
            visit(value.value)
        elif isinstance(value, TokenBase):
            visit(getattr(value, "first", None))
            visit(getattr(value, "second", None))

    for node in template.nodelist.get_nodes_by_type(Node):
        if isinstance(node, FirstOfNode):
            optional.update(root(expression) for expression in node.vars)
        for value in vars(node).values():
            visit(value)
    optional.discard(None)
    template.llmapp_optional = frozenset(optional)
    return template.llmapp_optional


def _family(template):
    """``template`` and the templates it extends, where they are named as text."""
    from django.template.loader_tags import ExtendsNode

    found = [template]
    while len(found) < 20:
        extends = found[-1].nodelist.get_nodes_by_type(ExtendsNode)
        name = extends[0].parent_name.var if extends else None
        if not isinstance(name, str):
            break
        try:
            found.append(found[-1].engine.get_template(name))
        except (TemplateDoesNotExist, TemplateSyntaxError):
            break
    return found


class _Lenient(FilterExpression):
    """A missing variable resolves to None, for its ``default`` filter to replace."""

    __slots__ = ()

    def resolve(self, context, ignore_failures=False):
        return super().resolve(context, ignore_failures=True)


def _defaults_apply(template):
    """Let ``{{ tone|default:"friendly" }}`` stand for a missing ``tone``: the author gave a fallback.

    The engine's marker of missing variables skips filters, so these expressions resolve a
    missing variable to None instead, which ``default`` and ``default_if_none`` replace.
    """
    for node in template.nodelist.get_nodes_by_type(VariableNode):
        expression = node.filter_expression
        if _has_default(expression):
            expression.__class__ = _Lenient
    return template


_DEFAULTS = ("default", "default_if_none")


def _has_default(expression):
    """Whether the FilterExpression gives a fallback for a missing variable: the author allowed it."""
    return any(getattr(func, "__name__", "") in _DEFAULTS for func, _ in expression.filters)


class PromptTemplate:
    """One template of a use case: ``field`` (PROMPT_TEMPLATE...), and its ``name`` or ``source``."""

    def __init__(self, usecase, field, *, name=None, source=None):
        self.usecase = usecase
        self.field = field
        self.name = name
        self.source = source

    @property
    def where(self):
        named = f"{self.name!r}" if self.name is not None else "(source from the override)"
        return f"{self.field} {named} of use case {self.usecase!r}"

    @functools.cached_property
    def template(self):
        """The compiled template; raises the ConfigurationError of one that is missing or malformed."""
        try:
            if self.name is not None:
                return _defaults_apply(engine().get_template(self.name))
            return bound(
                _defaults_apply(_refuse_reaching_out(sandbox().from_string(self.source), self.where))
            )
        except TemplateDoesNotExist:
            raise ConfigurationError(
                f"{self.where} does not exist in any template directory.",
                check_id="llmapp.E030",
                hint="Name a template the project's template engine can load (an app's templates/ "
                "folder, or TEMPLATES' DIRS).",
            ) from None
        except TemplateSyntaxError as exc:
            raise ConfigurationError(
                f"{self.where} is not a valid Django template: {exc}.",
                check_id="llmapp.E030",
                hint="Fix the template's syntax.",
            ) from None
        except RecursionError:
            raise ConfigurationError(
                f"{self.where} nests its tags too deeply for Django's template parser.",
                check_id="llmapp.E030",
                hint="Nest fewer blocks inside one another.",
            ) from None

    @functools.cached_property
    def version(self):
        """The template's name and a short hash of its source: a change in answers can be traced
        to a change in the prompt."""
        source = self.template.source
        digest = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        return f"{self.name}@{digest}" if self.name is not None else digest

    @functools.cached_property
    def optional(self):
        """What the template and those it extends say may be missing: a child's blocks render
        inside its parent, as the parent's."""
        return frozenset().union(*map(_optional_names, _family(self.template)))

    def render(self, context):
        template = self.template
        context = _Strict(dict(context or {}), self.optional)
        try:
            text = (
                template.render(context) if self.source is None else render_within_budget(template, context)
            )
        except OverBudget as exc:
            raise InvalidRequestError(
                f"{self.where} was stopped: {exc}. Loop over less, or write less, in the template."
            ) from None
        except Exception as exc:  # a tag failing on the context's values (widthratio by 0...)
            raise InvalidRequestError(
                f"{self.where} could not be rendered: {type(exc).__name__}: {exc}"
            ) from None
        shown = list(dict.fromkeys(_MISSING_FOUND.findall(text)))
        # {{ product.name }} is looked up as product first: said once, as it was written.
        looked_up = [name for name in context.missing if not any(m.split(".")[0] == name for m in shown)]
        missing = [*looked_up, *shown]
        if missing:
            how = "the call's message" if missing == ["message"] else "them in the call's context"
            raise MissingContextError(
                f"{self.where} uses {', '.join(missing)}, which the call does not give; pass {how}."
            )
        if len(text) > MAX_RENDERED:
            raise InvalidRequestError(f"{self.where} rendered {len(text)} characters, over {MAX_RENDERED}.")
        return text


def text_version(text):
    """The version of a prompt given as plain text: a short hash of it."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
