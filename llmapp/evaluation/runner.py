"""Run every case on every route through the batch machinery: one batch item per (case, route).

An item's id is ``<case id>@<route>``, so that a resumed run skips what it finished. Its
record says what the route answered and whether that passed: a wrong answer is a
finished item; a call that failed is an error, run again on a resume.
"""

import contextlib

from llmapp import batch
from llmapp.calls.compare import Route
from llmapp.calls.types import jsonable
from llmapp.conf.usecases import drafted
from llmapp.evaluation.checks import checked, judged
from llmapp.exceptions import LLMError
from llmapp.redaction import redact


def items(cases, routes):
    """The batch items of ``cases`` on ``routes``: each case on each route, fallbacks and cache off."""
    for case in cases:
        for route in routes:
            overrides = {
                **case.item.overrides,
                "provider": route.alias,
                "model": route.model,
                "fallbacks": [],
                "cache": "off",
            }
            yield batch.Item(f"{case.id}@{route}", case.item.message, overrides)


class CaseRunner:
    """What a batch worker runs for one item: the call, then its check (or its judge)."""

    def __init__(self, cases, judge=None, draft=None):
        self.cases = {case.id: case for case in cases}
        self.judge = judge
        self.draft = draft

    def __call__(self, usecase, item, stop_on=()):
        case_id, _, route = item.id.rpartition("@")
        case = self.cases[case_id]
        record = {"id": item.id, "case": case_id, "route": route}
        # A worker thread does not inherit its caller's context: the draft is set here.
        with drafted(self.draft) if self.draft is not None else contextlib.nullcontext():
            try:
                completion = batch.paced(usecase, item)
            except LLMError as exc:
                if isinstance(exc, stop_on):
                    raise
                return record | {"error": {"type": type(exc).__name__, "message": str(exc)}}
            except Exception as exc:
                return record | {"error": {"type": type(exc).__name__, "message": redact(str(exc))}}
            try:
                if self.judge is not None:
                    passed, why = judged(self.judge, case.expected, completion)
                else:
                    passed, why = checked(case.check, case.expected, completion)
            except LLMError as exc:  # the judge failed: the case is not judged, run it again
                return record | {"error": {"type": f"judge {type(exc).__name__}", "message": str(exc)}}
        record |= {"passed": passed, "why": why, "text": completion.text}
        if completion.parsed is not None:
            record["parsed"] = jsonable(completion.parsed)
        return record | {
            "model": completion.model,
            "finish_reason": completion.finish_reason,
            "latency_ms": round(completion.latency_ms, 1),
            "usage": completion.usage,
            "cost": None if completion.cost is None else str(completion.cost),
        }


def route_of(text):
    alias, _, model = text.partition(":")
    return Route(alias, model or None)
