"""The usage event each completion produces, whatever stream it goes to."""

from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from llmapp import conf
from llmapp.conf.secrets import redact
from llmapp.exceptions import InvalidOutputError, LLMError, ProviderRefused

OK, ERROR, REFUSED = "ok", "error", "refused"


@dataclass(frozen=True)
class UsageEvent:
    usecase: str
    provider: str
    model: str
    status: str
    latency_ms: float
    created_at: datetime
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str = ""
    attempts: int = 1
    request_id: str = ""
    error_type: str = ""
    error_message: str = ""
    status_code: int | None = None
    prompt: str = ""
    message: str = ""
    response: str = ""
    exception: dict | None = None
    #: How many turns the call's conversation had (1: a message alone).
    messages: int = 1
    #: The turns before ``message``, as {"role", "content"} objects: content too.
    conversation: list | None = None
    #: How the last answer did not match the output type (InvalidOutputError): no content.
    output_errors: list | None = None
    #: US dollars over the call's attempts (None: a model that answered has no price), and
    #: {"alias:model": rates} of the priced ones, so that a cost can be checked later.
    cost: Decimal | None = None
    rates: dict | None = None
    #: Given again from the response cache: nothing was sent.
    cached: bool = False
    #: Whom the call was for (``app_label.model:pk`` or the string given), or "".
    subject: str = ""
    #: What the prompt was (``UseCase.prompt_version``): a change in answers traced to one in prompts.
    prompt_version: str = ""

    def as_dict(self):
        data = asdict(self)
        data["cost"] = None if self.cost is None else str(self.cost)
        return data


def build_event(
    request, latency_ms, completion=None, error=None, exception=None, attempts=1, cost=None, rates=None
):
    """Return the UsageEvent for one call that either completed or raised ``error``.

    ``cost`` is what the attempts that answered a failed call cost (a completion has its own).
    """
    with_content = conf.get_setting("LLM_LOG_CONTENT")
    common = {
        "usecase": request.usecase,
        "latency_ms": latency_ms,
        "created_at": timezone.now(),
        "prompt": (request.prompt or "") if with_content else "",
        "message": (request.message or "") if with_content else "",
        "messages": len(request.history) + 1,
        "rates": rates or None,
        "subject": request.subject or "",
        "prompt_version": request.prompt_version,
        "conversation": (
            [{"role": role, "content": content} for role, content in request.history]
            if with_content and request.history
            else None
        ),
    }
    if completion is not None:
        return UsageEvent(
            provider=completion.provider,
            model=completion.model,
            status=OK,
            # A cached answer used no tokens: the ones it took are those of the call that made it.
            input_tokens=0 if completion.cached else completion.input_tokens,
            output_tokens=0 if completion.cached else completion.output_tokens,
            cached=completion.cached,
            finish_reason=completion.finish_reason or "",
            attempts=completion.attempts,
            request_id=completion.request_id or "",
            response=(completion.text or "") if with_content else "",
            cost=completion.cost,
            **common,
        )
    return UsageEvent(
        # Which provider failed last, after retries and fallbacks.
        provider=getattr(error, "provider", None) or request.provider,
        model=request.model,
        status=REFUSED if isinstance(error, ProviderRefused) else ERROR,
        attempts=attempts,
        error_type=type(error).__name__,
        # llmapp's own errors are redacted when raised; anything else is redacted here.
        error_message=str(error) if isinstance(error, LLMError) else redact(str(error)),
        status_code=getattr(error, "status_code", None),
        request_id=getattr(error, "request_id", None) or "",
        # An answer that did not match the output type: the answer itself.
        response=(error.text or "") if with_content and isinstance(error, InvalidOutputError) else "",
        output_errors=list(error.errors) if isinstance(error, InvalidOutputError) else None,
        cost=cost,
        exception=exception,
        **common,
    )
