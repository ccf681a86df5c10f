"""Why an answer ended, in one vocabulary for every provider; and which endings are refusals.

Each provider names its finish reasons its own way (OpenAI ``length``, Anthropic
``max_tokens``, Gemini ``MAX_TOKENS``). A Completion reports one of:

- ``stop``: the model finished its answer (or reached a stop sequence);
- ``length``: the answer was cut at ``max_output_tokens``;
- ``tool_calls``: the model stopped to call a tool;
- anything else: the provider's own reason, lower-cased.

A refusal or a safety block is not a finish reason but an error: ``ProviderRefused``,
with the provider's own word for it.
"""

from llmapp.exceptions import ProviderRefused

FINISH_REASONS = {
    "stop": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "STOP": "stop",
    "FINISH_REASON_STOP": "stop",
    "length": "length",
    "max_tokens": "length",
    "MAX_TOKENS": "length",
    "model_context_window_exceeded": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "tool_use": "tool_calls",
}
#: The finish reasons that mean the model or the provider's filters declined to answer.
REFUSALS = frozenset(
    {
        "refusal",  # Anthropic
        "content_filter",  # OpenAI, Azure
        "SAFETY",  # Gemini, and the rest of its blocks below
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)


def normal_finish_reason(reason):
    """Return the provider's finish reason ``reason`` in llmapp's vocabulary (None stays None)."""
    if reason is None:
        return None
    return FINISH_REASONS.get(reason, str(reason).lower())


def refusal(provider, reason, *, request_id=None, detail=None):
    """Return the ProviderRefused of an answer that ended with ``reason``, or None if it was no refusal."""
    if reason not in REFUSALS:
        return None
    return ProviderRefused(
        provider.redact(f"the model refused to answer ({reason}{': ' + detail if detail else ''})"),
        provider=provider.alias,
        request_id=request_id,
        finish_reason=reason,
    )
