"""The embedded default provider: offline, dependency-free and deterministic."""

from llmapp.providers.base import BaseProvider
from llmapp.providers.tokens import estimated_completion, leading_sentences

LABEL = "[preview answer: no model was called; configure a provider to get real answers]"


class PreviewProvider(BaseProvider):
    """Answer from the message itself, so the whole flow runs with no network and no key.

    For ``summarize`` the answer is the message's leading sentences cut to the
    output budget (an extractive summary); for any other use case it is the
    message echoed back within that budget.
    """

    option_names = frozenset({"model"})
    default_model = "preview"
    # It answers a typed call with the smallest value of the type.
    output_modes = ("native",)

    def complete(self, request):
        if request.output is not None:
            return self.typed_answer(request)
        body, cut = leading_sentences(request.message, request.max_output_tokens)
        if request.usecase != "summarize":
            body = f"You said: {body}"
        return estimated_completion(
            self, request, f"{LABEL}\n{body}", counted=body, finish_reason="length" if cut else "stop"
        )

    def typed_answer(self, request):
        """The smallest value of the request's output type, after the label."""
        body = request.output.minimal_text()
        return estimated_completion(self, request, f"{LABEL}\n{body}", counted=body)

    def describe_request(self, request):
        return {
            "backend": "preview (offline: nothing is sent over the network)",
            "model": request.model,
            "system": request.prompt,
            # Read as a model would be sent them; preview answers the last.
            "messages": [{"role": role, "content": content} for role, content in request.turns],
            "temperature": self.native_temperature(request.temperature),
            "max_output_tokens": request.max_output_tokens,
            **({"output_schema": request.output.wire_schema} if request.output is not None else {}),
        }
