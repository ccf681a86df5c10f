import asyncio

from llmapp import complete_prompt, stream_prompt
from llmapp.calls.types import CompletionRequest
from llmapp.providers.preview import LABEL, PreviewProvider

TICKET = (
    "The checkout page times out for customers in Canada. It started after Tuesday's deploy. "
    "Support has received forty tickets. Rolling back fixed it for one customer."
)


def test_summarize_preview_is_labelled_and_keeps_the_leading_sentences():
    completion = complete_prompt("summarize", TICKET)
    assert completion.text.startswith(LABEL)
    assert completion.text.endswith(TICKET)
    assert (completion.provider, completion.model, completion.finish_reason) == ("default", "preview", "stop")
    assert completion.output_tokens == 32  # words and punctuation marks
    assert completion.input_tokens > completion.output_tokens


def test_summarize_preview_is_cut_to_the_token_budget_at_a_sentence():
    completion = complete_prompt("summarize", TICKET, max_output_tokens=20)
    body = completion.text.removeprefix(LABEL + "\n")
    assert body == "The checkout page times out for customers in Canada. It started after Tuesday's deploy."
    assert completion.finish_reason == "length"
    assert completion.output_tokens <= 20


def test_preview_is_deterministic_and_streams_the_same_text():
    first = complete_prompt("example", "What is Django?")
    assert first.text == complete_prompt("example", "What is Django?").text
    assert "You said: What is Django?" in first.text
    *chunks, completion = stream_prompt("example", "What is Django?")
    assert "".join(chunks) == first.text == completion.text


def test_preview_astream_yields_what_stream_yields():
    backend = PreviewProvider("default")
    request = CompletionRequest("example", "What is Django?", "", "default", "preview", 0.5, 200)

    async def astreamed():
        return [item async for item in backend.astream(request)]

    streamed = list(backend.stream(request))
    assert asyncio.run(astreamed()) == streamed
    text, completion = streamed
    assert text == completion.text and "You said: What is Django?" in text
