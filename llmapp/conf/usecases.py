"""The use-case registry: which use cases exist, with what effective config, from where.

Each field's value is resolved in layers, later ones winning:

    builtin < code (register_usecase from an AppConfig.ready) < settings (LLM_USECASES)
            < override (saved in the admin or over the API: llmapp.conf.overrides)
            < environment (LLM_<USECASE>_<FIELD>, when LLM_USECASE_ENV_OVERRIDES is on)

and the registry remembers which layer each value came from.
"""

import contextlib
import contextvars
import functools
import json
import numbers
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmapp import conf
from llmapp.calls.spend.budgets import parse_budget
from llmapp.calls.spend.cost import price
from llmapp.calls.spend.ratelimits import parse_rate_limit
from llmapp.calls.spend.responses import cache_problem
from llmapp.conf.secrets import mask, redact
from llmapp.exceptions import ConfigurationError, InvalidUsecaseError
from llmapp.providers import providers

BUILTIN, CODE, SETTINGS, OVERRIDE, ENVIRONMENT, PROVIDER_DEFAULT = (
    "built-in",
    "code",
    "settings",
    "override",
    "environment",
    "provider default",
)

SUMMARIZE_PROMPT = (
    "You summarize text. Write a faithful, concise summary of the user's message: keep its "
    "key facts, decisions, figures and names; add nothing that is not in the message; do not "
    "give opinions or advice. Write in the language of the message, in plain prose, no longer "
    "than a few sentences unless the message is long."
)
EXAMPLE_PROMPT = (
    "You are a helpful assistant inside a Django application. Answer the user's message "
    "accurately and briefly. If you are not sure, say so."
)


def comma_list(text):
    """Parse "openai, anthropic:claude-haiku" into a list."""
    return [item.strip() for item in text.split(",") if item.strip()]


comma_list.__name__ = "comma-separated list"


def number(text):
    """Parse "0.3"; whether the number fits its field is for its Rule to say."""
    return float(text)


def whole_number(text):
    return int(text)


def json_object(text):
    """Parse '{"USD": "50", "PERIOD": "1d"}'."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


json_object.__name__ = "JSON object"


def cache_alias(text):
    """Parse "default": the CACHES alias that keeps a use case's answers."""
    return {"ALIAS": text}


cache_alias.__name__ = "CACHES alias"


whole_number.__name__ = "whole number"


def boolean(text):
    """Parse "true"/"false" (also on/off, yes/no, 1/0)."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


boolean.__name__ = "boolean (true or false)"

# Field name -> parser for values given as text (environment variables).
FIELDS = {
    "ENABLED": boolean,
    "DESCRIPTION": str,
    "PROMPT": str,
    # A template name (in an override: the template's source); see llmapp.conf.prompts.
    "PROMPT_TEMPLATE": str,
    "MESSAGE_TEMPLATE": str,
    "PROVIDER": str,
    "MODEL": str,
    "TEMPERATURE": number,
    "MAX_OUTPUT_TOKENS": whole_number,
    "TIMEOUT": number,
    "RETRIES": whole_number,
    "FALLBACKS": comma_list,
    # A dotted path, from the environment; in code and settings a type or a JSON Schema too.
    "OUTPUT": str,
    "OUTPUT_RETRIES": whole_number,
    "CACHE": cache_alias,
    "BUDGET": json_object,
    "RATE_LIMIT": json_object,
}

BUILTIN_USECASES = {
    "summarize": {
        "DESCRIPTION": "Summarize a text faithfully and concisely.",
        "PROMPT": SUMMARIZE_PROMPT,
        "PROVIDER": "default",
        "MODEL": None,
        "TEMPERATURE": 0.2,
        "MAX_OUTPUT_TOKENS": 400,
    },
    "example": {
        "DESCRIPTION": "A general assistant answer; a template for your own use cases.",
        "PROMPT": EXAMPLE_PROMPT,
        "PROVIDER": "default",
        "MODEL": None,
        "TEMPERATURE": 0.5,
        "MAX_OUTPUT_TOKENS": 300,
    },
}

# What a use case registered only in code or settings gets for the fields it leaves out.
_DEFAULTS = {
    # Off: calls raise UsecaseDisabled without sending.
    "ENABLED": True,
    "DESCRIPTION": "",
    "PROMPT": "",
    # The system prompt as a Django template rendered with the call's context (over PROMPT).
    "PROMPT_TEMPLATE": None,
    # The user's message as a Django template, rendered with the context and ``message``.
    "MESSAGE_TEMPLATE": None,
    "PROVIDER": "default",
    "MODEL": None,
    "TEMPERATURE": 0.5,
    "MAX_OUTPUT_TOKENS": 400,
    # A total deadline over every attempt, backoff and fallback.
    "TIMEOUT": 60.0,
    # How often a transient failure is retried on the same provider.
    "RETRIES": 2,
    # "provider" or "provider:model", tried in order once the primary gives up.
    "FALLBACKS": (),
    # The type of the answer (see llmapp.calls.output); None: text.
    "OUTPUT": None,
    # How often an answer that does not match OUTPUT is asked again on the same route.
    "OUTPUT_RETRIES": 1,
    # Where answers are kept for identical calls (see llmapp.calls.spend.responses); None: nowhere.
    "CACHE": None,
    # What the use case, and each subject, may spend per period (see llmapp.calls.spend.budgets).
    "BUDGET": None,
    # Requests and tokens a minute, calls at once (see llmapp.calls.spend.ratelimits).
    "RATE_LIMIT": None,
}

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
FIELDS_HINT = 'For example {"PROVIDER": "openai", "MODEL": "gpt-4o-mini", "TEMPERATURE": 0.2}.'

MAX_OUTPUT_RETRIES = 10
# A day: far beyond any call, far below what a socket timeout can hold (about 1e9 seconds).
MAX_TIMEOUT = 24 * 60 * 60


def is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_whole_number(value):
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Rule:
    """What a field's value must be, said once for the use case's checks and for each call."""

    valid: Callable
    expected: str
    check_id: str
    note: str = ""

    def message(self, field, value, origin=""):
        """Say that ``value`` of ``field`` (as the caller names it) breaks the rule; ``origin`` says
        where a value the caller did not give came from."""
        return f"{field} must be {self.expected}, got {shown(value)}{origin}{self.note}."


RULES = {
    "ENABLED": Rule(lambda value: isinstance(value, bool), "True or False", "llmapp.E031"),
    # NaN fails every comparison, so it is never in range.
    "TEMPERATURE": Rule(
        lambda value: is_number(value) and 0 <= value <= 1,
        "a number from 0 to 1",
        "llmapp.E011",
        " (llmapp maps 0-1 onto each provider's own range)",
    ),
    # Infinity or a huge number would overflow the HTTP client's socket timeout, and the
    # failure would then be blamed on the server.
    "TIMEOUT": Rule(
        lambda value: is_number(value) and 0 < value <= MAX_TIMEOUT,
        f"a number of seconds above 0 and at most {MAX_TIMEOUT}",
        "llmapp.E012",
    ),
    "RETRIES": Rule(
        lambda value: is_whole_number(value) and value >= 0, "a whole number from 0 up", "llmapp.E013"
    ),
    "MAX_OUTPUT_TOKENS": Rule(
        lambda value: is_whole_number(value) and value >= 1, "a positive whole number", "llmapp.E014"
    ),
    # Each re-ask sends the answers before it again: the cost grows with the square.
    "OUTPUT_RETRIES": Rule(
        lambda value: is_whole_number(value) and 0 <= value <= MAX_OUTPUT_RETRIES,
        f"a whole number from 0 to {MAX_OUTPUT_RETRIES}",
        "llmapp.E024",
    ),
}


def shown(value):
    """Show a value as it is, but a long string only by its length: it may be a misplaced key."""
    if isinstance(value, str) and len(value) > 10:
        return f"a {len(value)}-character str"
    return repr(value)


@dataclass(frozen=True)
class UseCase:
    """A use case's effective configuration; ``sources`` maps each field to its layer."""

    name: str
    description: str
    prompt: str
    provider: str
    model: str | None
    temperature: float
    max_output_tokens: int
    timeout: float
    retries: int
    fallbacks: tuple
    sources: dict
    output: Any = None
    output_retries: int = 1
    cache: dict | None = None
    budget: dict | None = None
    rate_limit: dict | None = None
    enabled: bool = True
    prompt_template: str | None = None
    message_template: str | None = None
    #: The id of the override revision whose fields it carries, or None.
    revision: int | None = None

    def source(self, field):
        return self.sources.get(field.upper(), BUILTIN)

    def origin(self, field):
        """Say where ``field``'s value came from, naming the setting or variable to change."""
        field = field.upper()
        source = self.source(field)
        if source == SETTINGS:
            return f"from LLM_USECASES[{self.name!r}][{field!r}]"
        if source == ENVIRONMENT:
            return f"from {env_variable(self.name, field)}"
        if source == OVERRIDE:
            return "from its override" + (f" (revision {self.revision})" if self.revision else "")
        return f"from {source}"

    def named_in(self, field):
        """`` (use case 'x', from ...)``: where a value the caller did not give came from."""
        return f" (use case {self.name!r}, {self.origin(field)})"

    def invalid(self, field):
        """The ConfigurationError of ``field``'s value when it breaks its Rule, else None."""
        rule = RULES[field]
        value = getattr(self, field.lower())
        if rule.valid(value):
            return None
        return ConfigurationError(
            rule.message(field.lower(), value, self.named_in(field)),
            check_id=rule.check_id,
            hint=f"Fix it where it is set, or leave it unset for llmapp's default, {_DEFAULTS[field]!r}.",
            field=field,
        )

    @functools.cached_property
    def output_spec(self):
        """The Output its answers must match (``llmapp.calls.output``), or None for text.

        Raises the ConfigurationError of an OUTPUT that cannot be imported or asked for.
        """
        from llmapp.calls.output import OutputTypeError, output_for

        try:
            return output_for(self.output, f"OUTPUT of use case {self.name!r} ({self.origin('OUTPUT')})")
        except OutputTypeError as exc:
            raise ConfigurationError(
                f"{exc}.",
                check_id="llmapp.E023",
                hint="OUTPUT is a pydantic model, a dataclass, a TypedDict, a JSON Schema dict, "
                "or the dotted path to one.",
            ) from None

    def template(self, field):
        """The PromptTemplate of PROMPT_TEMPLATE or MESSAGE_TEMPLATE, or None when unset.

        A name loads from the template engine; an override holds the template's source.
        """
        value = getattr(self, field.lower())
        if not value:
            return None
        return self._templates.setdefault(field, self._template(field, value))

    def _template(self, field, value):
        from llmapp.conf.prompts import PromptTemplate

        if self.source(field) == OVERRIDE:
            return PromptTemplate(self.name, field, source=value)
        return PromptTemplate(self.name, field, name=value)

    @functools.cached_property
    def _templates(self):
        return {}

    @functools.cached_property
    def prompt_version(self):
        """What its prompt is, for the usage events: the override's revision when the override
        sets it, else its templates' names and hashes, else a hash of PROMPT."""
        from llmapp.conf.prompts import text_version

        texts = ("PROMPT", "PROMPT_TEMPLATE", "MESSAGE_TEMPLATE")
        if any(self.source(field) == OVERRIDE for field in texts):
            # Of the texts, not the revision: a revision that changes only the temperature
            # keeps the prompt's version.
            written = [self.prompt or ""]
            written += [template.template.source for field in texts[1:] if (template := self.template(field))]
            return "override@" + text_version("\x00".join(written))
        prompt = self.template("PROMPT_TEMPLATE")
        parts = [prompt.version if prompt else (text_version(self.prompt) if self.prompt else "")]
        message = self.template("MESSAGE_TEMPLATE")
        if message is not None:
            parts.append(message.version)
        return "+".join(part for part in parts if part)

    def problems(self):
        """Everything wrong with this use case, each a ConfigurationError with its check id.

        Its values, and the providers and models it names; the checks list them all, a
        call raises the first it meets. A broken provider entry is that entry's problem.
        """
        problems = [error for field in RULES if (error := self.invalid(field)) is not None]
        for field in ("PROMPT_TEMPLATE", "MESSAGE_TEMPLATE"):
            try:
                template = self.template(field)
                if template is not None:
                    template.template  # noqa: B018 (compiles it: a missing or malformed one is a problem)
            except ConfigurationError as exc:
                exc.field = field
                problems.append(exc)
        cache = cache_problem(self.name, self.cache)
        if cache is not None:
            problems.append(cache)
        budgeted = self._spec("budget_spec", problems) is not None
        self._spec("rate_limit_spec", problems)
        typed = self._spec("output_spec", problems) is not None
        configured = conf.get_setting("LLM_PROVIDERS")
        if not isinstance(configured, dict) or not configured:
            return problems  # LLM_PROVIDERS's own problem
        if self.provider not in configured:
            problems.append(
                ConfigurationError(
                    providers.unknown(self.provider, self.named_in("PROVIDER")),
                    check_id="llmapp.E004",
                    hint=redact(f"Name one of those, or add {self.provider!r} to LLM_PROVIDERS."),
                    field="PROVIDER",
                )
            )
        else:
            problems += self._model_problems(self.provider, self.model, "model", "MODEL")
            problems += self._output_problems(self.provider, typed)
            problems += self._price_problems(self.provider, self.model, budgeted)
        for spec in self.fallbacks:
            alias, _, model = str(spec).partition(":")
            if alias not in configured:
                problems.append(
                    ConfigurationError(
                        self.unknown_fallback(alias),
                        check_id="llmapp.E021",
                        hint='FALLBACKS lists "provider" or "provider:model" of configured providers.',
                        field="FALLBACKS",
                    )
                )
            else:
                problems += self._model_problems(alias, model or None, "fallback model", "FALLBACKS")
                problems += self._output_problems(alias, typed)
                problems += self._price_problems(alias, model or None, budgeted)
        return problems

    @functools.cached_property
    def rate_limit_spec(self):
        """The RateLimit its calls are held to (``llmapp.calls.spend.ratelimits``), or None; raises its
        ConfigurationError when RATE_LIMIT is malformed."""
        return parse_rate_limit(self.name, self.rate_limit)

    @functools.cached_property
    def budget_spec(self):
        """The Budget its calls are held to (``llmapp.calls.spend.budgets``), or None; raises its
        ConfigurationError when BUDGET is malformed."""
        return parse_budget(self.name, self.budget)

    def _price_problems(self, alias, model, budgeted):
        if not budgeted:
            return []
        try:
            model = model or providers[alias].model
        except ConfigurationError:
            return []
        if price(alias, model) is not None:
            return []
        return [
            ConfigurationError(
                f"use case {self.name!r} has a BUDGET, but model {model!r} of provider {alias!r} has no "
                "price: its calls cannot be held to the budget.",
                check_id="llmapp.W008",
                hint=f"Add {model!r} to LLM_PROVIDERS[{alias!r}]['PRICES'] (FREE if it costs nothing).",
            )
        ]

    def _spec(self, name, problems):
        """The parsed field ``name`` (``output_spec``...); None, its ConfigurationError added to
        ``problems``, when it is malformed."""
        try:
            return getattr(self, name)
        except ConfigurationError as exc:
            problems.append(exc)
            return None

    def _output_problems(self, alias, typed):
        try:
            backend = providers[alias]
        except ConfigurationError:
            return []
        if not typed or backend.output_mode is not None:
            return []
        return [
            ConfigurationError(
                f"use case {self.name!r} has an OUTPUT type, but provider {alias!r} "
                f"({type(backend).__name__}) can ask for it neither natively nor in the prompt.",
                check_id="llmapp.W007",
                hint="Typed calls skip it: take it out of PROVIDER and FALLBACKS, or give its "
                "backend output_modes.",
            )
        ]

    def unknown_fallback(self, alias):
        return f"use case {self.name!r} falls back to " + providers.unknown(
            alias, f" ({self.origin('FALLBACKS')})"
        )

    def missing_model(self, alias):
        """The ConfigurationError of a use case whose provider ``alias`` has no model to give it."""
        return ConfigurationError(
            f"no model for use case {self.name!r}: set its MODEL or OPTIONS['model'] of provider {alias!r}.",
            check_id="llmapp.E022",
            hint="A provider's default model is its OPTIONS['model'], else the first of its MODELS.",
        )

    def _model_problems(self, alias, model, what, field):
        try:
            backend = providers[alias]
        except ConfigurationError:
            return []
        model = model or backend.model
        if not model:
            error = self.missing_model(alias)
            error.field = field
            return [error]
        disallowed = backend.disallowed_model(model, what)
        if not disallowed:
            return []
        hint = redact(f"Name one of those in {field}, or add {model!r} to the MODELS of {alias!r}.")
        return [ConfigurationError(disallowed, check_id="llmapp.E005", hint=hint, field=field)]


_code_usecases = {}
_lock = threading.Lock()
# The override layer, as llmapp.conf.overrides last read it: {name: (revision id, fields)}.
_overrides = {}
# {name: [ConfigurationError]}: override fields that no longer hold (an alias or model
# removed since), left out so that calls use the value beneath.
_set_aside = {}


# Use cases tried before they are saved ("Test this draft"), for the calls of one context only.
_drafts = contextvars.ContextVar("llmapp_usecase_drafts", default=None)


@contextlib.contextmanager
def drafted(usecase):
    """Within the block, calls of ``usecase.name`` in this context (thread, task) use ``usecase``."""
    token = _drafts.set({**(_drafts.get() or {}), usecase.name: usecase})
    try:
        yield usecase
    finally:
        _drafts.reset(token)


def forget_resolved():
    """Resolve every use case again on its next lookup (its templates compiled anew)."""
    _registry.cache_clear()


def set_overrides(overrides):
    """Replace the override layer (``{name: (revision id, fields)}``); the next lookup resolves anew."""
    global _overrides
    _overrides = dict(overrides)
    _registry.cache_clear()


def override_of(name):
    """The fields of use case ``name``'s override as last read ({} for none), those set aside included."""
    return dict(_overrides.get(name, (None, {}))[1])


def set_aside_overrides():
    """Return {use-case name: [ConfigurationError]} of override fields left out: they no longer hold."""
    _registry()
    return dict(_set_aside)


def register_usecase(name: str, **fields: Any) -> None:
    """Register (or extend) a use case in code, typically from an ``AppConfig.ready``.

    Fields are the lower-case forms of the settings keys: ``description``,
    ``prompt``, ``provider``, ``model``, ``temperature``, ``max_output_tokens``,
    ``timeout``, ``retries``, ``fallbacks``, ``output`` (the answer's type) and
    ``output_retries``.
    Settings and the environment still override what code registers.
    """
    _check_name(name, "register_usecase()")
    upper = {key.upper(): value for key, value in fields.items()}
    _check_fields(upper, f"register_usecase({name!r})")
    with _lock:
        _code_usecases.setdefault(name, {}).update(upper)
    _registry.cache_clear()


def unregister_usecase(name):
    with _lock:
        _code_usecases.pop(name, None)
    _registry.cache_clear()


@functools.cache
def _registry():
    """Resolve every use case: {name: UseCase} and {name: what is wrong with it}.

    A wrong value breaks only its own use case: the others keep working, and
    get_usecase() raises the broken one's own error rather than a neighbour's.
    """
    configured = conf.get_setting("LLM_USECASES")
    if not isinstance(configured, dict):
        raise ConfigurationError(
            "LLM_USECASES must be a dict of use-case name to a dict of fields.",
            check_id="llmapp.E006",
            hint='For example {"summarize": {"PROVIDER": "openai", "MODEL": "gpt-4o-mini"}}.',
        )
    names = list(BUILTIN_USECASES)
    names += [name for name in _code_usecases if name not in names]
    names += [name for name in configured if name not in names]
    read_env = conf.get_setting("LLM_USECASE_ENV_OVERRIDES")
    usecases, errors = {}, {}
    _set_aside.clear()
    for name in names:
        try:
            usecases[name] = _resolve(name, configured.get(name) or {}, read_env)
        except ConfigurationError as exc:
            errors[name] = exc
            continue
        if name in _overrides:
            revision, fields = _overrides[name]
            usecases[name], set_aside = with_override(
                usecases[name], configured.get(name) or {}, revision, fields
            )
            if set_aside:
                _set_aside[name] = set_aside
    return usecases, errors


def resolve_with(name, override, revision=None):
    """Return use case ``name`` with ``override`` (fields) over its settings, and its problems that
    come from the override: ``(UseCase, [ConfigurationError])``. For drafts, before they are saved."""
    configured = conf.get_setting("LLM_USECASES")
    from_settings = (configured.get(name) if isinstance(configured, dict) else None) or {}
    base = _resolve(name, from_settings, conf.get_setting("LLM_USECASE_ENV_OVERRIDES"))
    usecase = _resolve(name, from_settings, conf.get_setting("LLM_USECASE_ENV_OVERRIDES"), override, revision)
    return usecase, _new_problems(base, usecase)


def with_override(base, from_settings, revision, fields):
    """``base`` with the override's ``fields``; fields that no longer hold are left out.

    Returns the UseCase and the problems of the fields left out.
    """
    read_env = conf.get_setting("LLM_USECASE_ENV_OVERRIDES")
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:  # saved by a version of llmapp that had them
        return base, [ConfigurationError(f"fields {', '.join(unknown)} are not use-case fields")]
    usecase = _resolve(base.name, from_settings, read_env, fields, revision)
    problems = _new_problems(base, usecase)
    if not problems:
        return usecase, []
    bad = {problem.field for problem in problems}
    kept = {} if None in bad else {field: value for field, value in fields.items() if field not in bad}
    if "PROVIDER" in bad:  # a model is chosen within its provider
        kept.pop("MODEL", None)
    usecase = _resolve(base.name, from_settings, read_env, kept, revision)
    return (usecase if not _new_problems(base, usecase) else base), problems


def _new_problems(base, usecase):
    """The errors of ``usecase`` that ``base`` (the same use case without an override) does not have."""
    before = {str(problem) for problem in base.problems()}
    return [
        problem
        for problem in usecase.problems()
        if ".E" in (problem.check_id or ".E") and str(problem) not in before
    ]


def get_usecases():
    """Return every use case that resolves, by name; see get_usecase_errors() for the others."""
    return _registry()[0]


def get_usecase_errors():
    """Return {name: its ConfigurationError} for the use cases that do not resolve."""
    return _registry()[1]


def get_usecase(name):
    """Return the use case ``name``; raise its ConfigurationError when one of its values is
    wrong, or InvalidUsecaseError naming the known ones when there is no such use case."""
    drafts = _drafts.get()
    if drafts is not None and name in drafts:
        return drafts[name]
    usecases, errors = _registry()
    if name in errors:
        error = errors[name]
        raise ConfigurationError(str(error), check_id=error.check_id, hint=error.hint)
    try:
        return usecases[name]
    except KeyError:
        known = ", ".join(sorted([*usecases, *errors]))
        raise InvalidUsecaseError(
            f"unknown use case {name!r}; known use cases: {known}. "
            "Add it to LLM_USECASES or register it with llmapp.register_usecase()."
        ) from None


def env_variable(name, field):
    """Return the environment variable that overrides ``field`` of use case ``name``."""
    return "LLM_{}_{}".format(re.sub(r"\W", "_", name).upper(), field)


def _resolve(name, from_settings, read_env, override=None, revision=None):
    _check_name(name, "LLM_USECASES")
    _check_fields(from_settings, f"LLM_USECASES[{name!r}]")
    values = dict(_DEFAULTS)
    sources = dict.fromkeys(values, BUILTIN)
    for layer, fields in (
        (BUILTIN, BUILTIN_USECASES.get(name, {})),
        (CODE, _code_usecases.get(name, {})),
        (SETTINGS, from_settings),
        (OVERRIDE, override or {}),
    ):
        for field, value in fields.items():
            values[field] = value
            sources[field] = layer
    if read_env:
        for field, parse in FIELDS.items():
            variable = env_variable(name, field)
            raw = os.environ.get(variable)
            if raw is None or raw == "":
                continue
            try:
                values[field] = parse(raw)
            except ValueError:
                # Masked: this may be a key pasted into the wrong variable.
                raise ConfigurationError(
                    f"{variable} must be a {parse.__name__}, not {mask(raw)} (shown masked, as it "
                    "may be a secret); fix or unset it.",
                    check_id="llmapp.E020",
                    hint="Environment values override the use case's settings; unset it to use them.",
                ) from None
            sources[field] = ENVIRONMENT
    return UseCase(
        name=name,
        description=values["DESCRIPTION"],
        prompt=values["PROMPT"],
        provider=values["PROVIDER"],
        model=values["MODEL"] or None,
        temperature=values["TEMPERATURE"],
        max_output_tokens=values["MAX_OUTPUT_TOKENS"],
        timeout=values["TIMEOUT"],
        retries=values["RETRIES"],
        fallbacks=_as_tuple(values["FALLBACKS"]),
        sources=sources,
        output=values["OUTPUT"] or None,
        output_retries=values["OUTPUT_RETRIES"],
        cache=values["CACHE"] or None,
        budget=values["BUDGET"] or None,
        rate_limit=values["RATE_LIMIT"] or None,
        enabled=values["ENABLED"],
        prompt_template=values["PROMPT_TEMPLATE"] or None,
        message_template=values["MESSAGE_TEMPLATE"] or None,
        revision=revision if override else None,
    )


def _as_tuple(value):
    if isinstance(value, str):
        return (value,)
    return tuple(value or ())


def _check_name(name, where):
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"{where}: use-case name {name!r} must be lower-case letters, digits, '-' or '_'.",
            check_id="llmapp.E018",
            hint="For example 'ticket-triage'.",
        )


def _check_fields(fields, where):
    if not isinstance(fields, dict):
        raise ConfigurationError(
            f"{where} must be a dict of fields.", check_id="llmapp.E019", hint=FIELDS_HINT
        )
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ConfigurationError(
            f"{where} has unknown field(s) {', '.join(unknown)}; known fields: {', '.join(FIELDS)}.",
            check_id="llmapp.E019",
            hint=FIELDS_HINT,
        )


conf.on_change(_registry.cache_clear)
