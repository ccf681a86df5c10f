"""The cases of an evaluation: batch input lines with what the answer should be."""

import json
from dataclasses import dataclass

from llmapp import batch

#: How an answer is held to ``expected``; "fields" for a typed answer (a dict of fields).
CHECKS = ("exact", "contains", "regex", "fields")


@dataclass(frozen=True)
class Case:
    item: batch.Item
    expected: object
    check: str

    @property
    def id(self):
        return self.item.id


class CaseError(ValueError):
    """An input line that is not a case: the evaluation does not start."""


def read_cases(lines, *, judged=False):
    """Return the Cases of ``lines`` (bytes or str), every line checked before any call.

    Each line is a JSON object: a batch item plus ``expected`` and, optionally, ``check``
    (default "fields" for an object expected, else "exact"). With a judge, ``check`` is
    not used and ``expected`` may be anything the judge reads.
    """
    cases, positions = [], {}
    for number, line in enumerate(lines, start=1):
        if isinstance(line, bytes):
            try:
                line = line.decode()
            except UnicodeDecodeError as exc:
                raise CaseError(f"line {number} is not UTF-8 text (at byte {exc.start})") from None
        if number == 1:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise CaseError(f"line {number} is not JSON: {exc}") from None
        if not isinstance(data, dict) or "expected" not in data:
            raise CaseError(
                f'line {number} must be a JSON object with "expected" (and "message" or "messages")'
            )
        expected = data.pop("expected")
        check = data.pop("check", None)
        if check is None:
            check = "fields" if isinstance(expected, dict) else "exact"
        if check not in CHECKS:
            raise CaseError(f"line {number} has check {check!r}; use one of {', '.join(CHECKS)}")
        if not judged:
            problem = _expected_problem(check, expected)
            if problem:
                raise CaseError(f"line {number}: {problem}")
        item = batch.parse_line(json.dumps(data), number)
        if item.problem:
            raise CaseError(item.problem)
        if "@" in item.id:
            raise CaseError(f"line {number} has id {item.id!r}; an id may not hold '@'")
        first = positions.setdefault(item.id, number)
        if first != number:
            raise CaseError(f"lines {first} and {number} have the same id {item.id!r}; give each its own")
        cases.append(Case(item, expected, check))
    if not cases:
        raise CaseError("it holds no case")
    return cases


def _expected_problem(check, expected):
    if check == "fields" and not isinstance(expected, dict):
        return 'check "fields" expects an object of the fields the answer must have'
    if check == "regex":
        import re

        if not isinstance(expected, str):
            return 'check "regex" expects a regular expression as a string'
        try:
            re.compile(expected)
        except re.error as exc:
            return f"expected is not a regular expression: {exc}"
    if check in ("exact", "contains") and isinstance(expected, dict | list):
        return f'check "{check}" expects text; use "fields" for an object'
    return None
