"""The values that cross llmapp's service layer: a request and its completion."""

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
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

    @property
    def turns(self):
        """The whole conversation, ``message`` last: (role, content) pairs."""
        return (*self.history, ("user", self.message))


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
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def usage(self) -> dict[str, int | None]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON shape the CLI prints and batch files hold."""
        data = asdict(self)
        del data["extra"], data["input_tokens"], data["output_tokens"]
        data["usage"] = self.usage
        data["latency_ms"] = round(self.latency_ms, 1)
        return data
