"""Estimate token counts where a provider reports none (preview, locmem)."""

import json
import re

from llmapp.calls.types import Completion

_TOKEN = re.compile(r"\w+|[^\w\s]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def estimate_tokens(text):
    """Count words and punctuation marks: close enough to a BPE count for budgets."""
    return len(_TOKEN.findall(text or ""))


def leading_sentences(text, max_tokens):
    """Return as many leading sentences of ``text`` as fit in ``max_tokens``, and whether it was cut.

    When not even the first sentence fits, it is cut at a word boundary.
    """
    text = " ".join((text or "").split())
    taken, used = [], 0
    for sentence in _SENTENCE_END.split(text):
        cost = estimate_tokens(sentence)
        if used + cost > max_tokens:
            if not taken:
                taken.append(_cut_words(sentence, max_tokens))
            return " ".join(taken), True
        taken.append(sentence)
        used += cost
    return " ".join(taken), False


def _cut_words(sentence, max_tokens):
    words, used = [], 0
    for word in sentence.split():
        used += estimate_tokens(word)
        if used > max_tokens:
            break
        words.append(word)
    return " ".join(words) + "…"


def most_tokens(text):
    """At least as many tokens as ``text`` can take, for what a call may spend before it is sent.

    Words undercount text without spaces (Chinese, base64, URLs: one "word" each); no
    tokenizer gives fewer than one token per three bytes of UTF-8 in practice.
    """
    text = text or ""
    return max(estimate_tokens(text), -(-len(text.encode("utf-8", "replace")) // 3))


def request_tokens(request):
    """At least the input tokens of ``request``: its prompt, every turn, and the schema it sends."""
    texts = [request.prompt, *(content for _, content in request.turns)]
    if request.output is not None:
        texts.append(json.dumps(request.output.wire_schema))
    return sum(most_tokens(text) for text in texts)


def turn_tokens(request):
    """Estimate the tokens of a request's whole conversation: its earlier turns and its message."""
    return sum(estimate_tokens(content) for _, content in request.turns)


def estimated_completion(provider, request, text, *, counted=None, finish_reason="stop"):
    """The Completion of an offline answer, its tokens estimated; ``counted`` is the part of
    ``text`` a model would have written (preview's label is not), by default all of it."""
    return Completion(
        text=text,
        usecase=request.usecase,
        provider=provider.alias,
        model=request.model,
        finish_reason=finish_reason,
        input_tokens=estimate_tokens(request.prompt) + turn_tokens(request),
        output_tokens=estimate_tokens(text if counted is None else counted),
    )
