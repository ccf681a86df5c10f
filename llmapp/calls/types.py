"""The values that cross llmapp's service layer: a request and its completion."""

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from decimal import Decimal
from enum import Enum
from typing import Any, TypedDict


def evolve(value, **changes):
    """Return a copy of the frozen dataclass ``value`` with ``changes``: dataclasses.replace, fast.

    replace() inspects the fields and runs __init__ again; on the call path, twice per call,
    that was a quarter of llmapp's own time. These types have no __post_init__ to skip.
    """
    copy = object.__new__(type(value))
    copy.__dict__.update(value.__dict__, **changes)
    return copy


class CallOptions(TypedDict, total=False):
    """What one call may set over its use case (the keyword arguments of ``complete_prompt``)."""

    prompt: str
    #: Provider-neutral, 0 to 1.
    temperature: float
    max_output_tokens: int
    #: An LLM_PROVIDERS alias, and a model it allows.
    provider: str
    model: str
    #: Seconds over every attempt, backoff and fallback.
    timeout: float
    retries: int
    #: "provider" or "provider:model" entries; [] for none.
    fallbacks: Sequence[str]
    #: A conversation in place of the message: {"role": "user" or "assistant", "content": str}
    #: turns, ending with the user's.
    messages: Sequence[Mapping[str, str]]
    #: The type of the answer (a pydantic model, a dataclass, a TypedDict...), a JSON Schema
    #: dict, or a dotted path to one: ``Completion.parsed`` holds the validated value.
    output: Any
    #: How often an answer that does not match ``output`` is asked again on the same route.
    output_retries: int
    #: The use case's response cache, for this call: "use" (the default), "refresh" (do not
    #: look it up, keep the new answer) or "off".
    cache: str
    #: Whom the call is for (a user, an account: a saved model instance, or a string), held
    #: to the use case's BUDGET PER_SUBJECT and named in its usage event.
    subject: Any
    #: What the use case's PROMPT_TEMPLATE and MESSAGE_TEMPLATE render with.
    context: Mapping[str, Any]


@dataclass(frozen=True)
class CompletionRequest:
    """One validated call: everything a provider needs and nothing it must look up."""

    usecase: str
    message: str
    prompt: str
    provider: str
    model: str
    temperature: float  # provider-neutral, 0 to 1
    max_output_tokens: int
    #: Seconds this attempt may take (what is left of the call's deadline); None: the provider's own.
    timeout: float | None = None
    #: The call's deadline, shared by all its attempts: the Attempts running the call, whose
    #: ``left()`` says how many seconds are left and whose ``check_deadline()`` raises its
    #: ProviderTimeout once none are. None when no call runs the request (a dry run, a test).
    deadline: object = field(default=None, compare=False, repr=False)
    #: The turns of the conversation before ``message`` (the user's last): (role, content)
    #: pairs, the role "user" or "assistant".
    history: tuple = ()
    #: The Output the answer must match (``llmapp.calls.output``), or None for text.
    output: object = field(default=None, compare=False)
    #: How this attempt asks for it: "native" (the provider's structured output) or
    #: "prompted" (the schema in the system prompt); None for text.
    output_mode: str | None = None
    #: Whom the call is for, as ``budgets.subject_key`` names it; None for no one.
    subject: str | None = None
    #: What the prompt was, for the usage event (``UseCase.prompt_version``).
    prompt_version: str = field(default="", compare=False)

    @property
    def turns(self):
        """The whole conversation, ``message`` last: (role, content) pairs."""
        return (*self.history, ("user", self.message))

    @property
    def schema(self):
        """The JSON Schema the answer must match, or None (what a test asks locmem's outbox)."""
        return None if self.output is None else self.output.schema


@dataclass(frozen=True)
class Completion:
    """What a use case answered, and what it cost."""

    text: str
    usecase: str
    provider: str
    model: str
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_ms: float = 0.0
    request_id: str | None = None
    attempts: int = 1
    #: Of ``input_tokens``, those the provider served from its prompt cache (priced apart).
    cached_input_tokens: int | None = field(default=None, repr=False)
    #: US dollars, over every attempt of the call (retries and fallbacks too); None when a
    #: model that answered has no price in its provider's PRICES.
    cost: Decimal | None = None
    #: Given again from the use case's response cache: no attempt was made, nothing was spent.
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    #: The answer read into the call's output type (an instance of it; the JSON value for a
    #: JSON Schema), validated; None for a call that asked for text.
    parsed: Any = field(default=None, compare=False, repr=False)

    def pieces(self):
        """What a stream of this whole answer yields: its text (if any), then itself."""
        return [self.text, self] if self.text else [self]

    @property
    def usage(self) -> dict[str, int | None]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON shape the CLI prints and batch files hold."""
        data = asdict(evolve(self, parsed=None))
        del data["extra"], data["input_tokens"], data["output_tokens"], data["cached_input_tokens"]
        data["parsed"] = jsonable(self.parsed)
        # A string: JSON's numbers are floats to most readers, and a bill must stay exact.
        data["cost"] = None if self.cost is None else str(self.cost)
        data["usage"] = self.usage
        data["latency_ms"] = round(self.latency_ms, 1)
        return data


def jsonable(value):
    """Return a parsed answer as JSON's types: pydantic models dumped, dataclasses as dicts."""
    if isinstance(value, type):
        return value
    if hasattr(value, "model_dump"):  # a pydantic model
        return value.model_dump(mode="json")
    if is_dataclass(value):
        return {item.name: jsonable(getattr(value, item.name)) for item in fields(value)}
    if isinstance(value, Enum):
        return jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    try:  # what only pydantic validates into (a datetime, a Decimal...)
        from pydantic_core import to_jsonable_python
    except ImportError:
        return str(value)
    return to_jsonable_python(value)
