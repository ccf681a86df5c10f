"""Run every case on every route through the batch machinery: one batch item per (case, route).

An item's id is ``<case id>@<route>``; its record carries a fingerprint of what decided
its verdict (the case's message, overrides, expectation and check, the route, the judge
and the prompt's version). A resumed run skips the items whose record has the same id
and fingerprint: an edited case, another prompt version or another judge is run again,
never credited with an old verdict. A wrong answer is a finished item; a call that
failed is an error, run again on a resume; an answer whose judge failed is judged again.
"""

import contextlib
import hashlib
import json
from dataclasses import dataclass

from llmapp import batch
from llmapp.batch.evaluation.checks import checked, judged
from llmapp.calls.types import jsonable
from llmapp.conf.secrets import redact
from llmapp.conf.usecases import drafted
from llmapp.exceptions import LLMError


@dataclass(frozen=True)
class Planned:
    """One case on one route: its batch item and the fingerprint its record must carry."""

    item: batch.Item
    case: object
    route: object
    fingerprint: str


def plan(cases, routes, *, judge=None, version=""):
    """Each case on each route, fallbacks and the response cache off, with its fingerprint."""
    planned = []
    for case in cases:
        for route in routes:
            overrides = {
                **case.item.overrides,
                "provider": route.alias,
                "model": route.model,
                "fallbacks": [],
                "cache": "off",
            }
            item = batch.Item(f"{case.id}@{route}", case.item.message, overrides)
            decided_by = [case.item.message, overrides, case.expected, case.check, judge, version]
            text = json.dumps(decided_by, sort_keys=True, default=str, ensure_ascii=False)
            planned.append(Planned(item, case, route, hashlib.sha256(text.encode()).hexdigest()[:16]))
    return planned


def still_valid(planned, previous):
    """Return {item id: record} of ``previous`` records (an earlier run's output, in order) that
    still hold for ``planned``: the last of each id, when its fingerprint matches."""
    wanted = {entry.item.id: entry.fingerprint for entry in planned}
    kept = {}
    for line in previous:
        record = batch.parse_record(line)
        if record is None or wanted.get(record["id"]) is None:
            continue
        if record.get("fingerprint") == wanted[record["id"]]:
            kept[record["id"]] = record
        else:
            kept.pop(record["id"], None)
    return kept


def finished(records):
    """Return the ids of ``records`` (from :func:`still_valid`) that a resume skips: not errors."""
    return {item_id for item_id, record in records.items() if "error" not in record}


def answered(records):
    """Return {item id: answer} of ``records`` whose route answered and whose judge failed: a
    resume asks the judge again, and does not pay for the route's call twice."""
    return {item_id: record["answer"] for item_id, record in records.items() if "answer" in record}


class _Kept:
    """An answer kept in a record, as much of a Completion as judging reads."""

    def __init__(self, answer):
        self.text = answer["text"]
        self.parsed = answer.get("parsed")


class CaseRunner:
    """What a batch worker runs for one item: the call, then its check (or its judge)."""

    def __init__(self, planned, judge=None, draft=None, answers=None):
        self.planned = {entry.item.id: entry for entry in planned}
        self.judge = judge
        self.draft = draft
        self.answers = answers or {}  # item id: the answer of a route whose judge failed

    def __call__(self, usecase, item, stop_on=()):
        entry = self.planned[item.id]
        case = entry.case
        record = {"id": item.id, "case": case.id, "route": str(entry.route), "fingerprint": entry.fingerprint}
        # A worker thread does not inherit its caller's context: the draft is set here.
        kept = self.answers.get(item.id) if self.judge is not None else None
        with drafted(self.draft) if self.draft is not None else contextlib.nullcontext():
            try:
                completion = _Kept(kept) if kept is not None else batch.paced(usecase, item)
            except LLMError as exc:
                if isinstance(exc, stop_on):
                    raise
                return record | {"error": {"type": type(exc).__name__, "message": str(exc)}}
            except Exception as exc:
                return record | {"error": {"type": type(exc).__name__, "message": redact(str(exc))}}
        answer = kept if kept is not None else _answer(completion)
        ruling = None
        try:
            if self.judge is not None:
                passed, why, ruling = judged(self.judge, case.expected, completion)
            else:
                passed, why = checked(case.check, case.expected, completion)
        except LLMError as exc:
            if isinstance(exc, stop_on):  # a judge that cannot run fails every item alike
                raise
            # Not judged: a resume asks the judge again, about this answer.
            error = {"type": f"judge {type(exc).__name__}", "message": str(exc)}
            return record | {"error": error, "answer": answer}
        record |= {"passed": passed, "why": why} | answer
        if ruling is not None:  # what judging it cost, apart from what the route cost
            record["judge"] = spend(ruling)
        return record


def _answer(completion):
    """What a record keeps of the route's answer: its text (and value) and what it cost."""
    answer = {"text": completion.text}
    if completion.parsed is not None:
        answer["parsed"] = jsonable(completion.parsed)
    return answer | spend(completion)


def spend(completion):
    return {
        "model": completion.model,
        "finish_reason": completion.finish_reason,
        "latency_ms": round(completion.latency_ms, 1),
        "usage": completion.usage,
        "cost": None if completion.cost is None else str(completion.cost),
    }
