"""Whether an answer passes its case: a check of the text or fields, or a judge use case."""

import json
import re

from llmapp.calls.types import jsonable

#: What a judge use case answers (llmapp's structured output), whatever its own OUTPUT.
VERDICT = {
    "type": "object",
    "properties": {
        "passed": {"type": "boolean", "description": "Whether the answer meets the expectation."},
        "reason": {"type": "string", "description": "Why, in one sentence."},
    },
    "required": ["passed", "reason"],
    "additionalProperties": False,
}


def checked(check, expected, completion):
    """Return (passed, why) of ``completion`` against ``expected`` by ``check``."""
    text = (completion.text or "").strip()
    if check == "exact":
        if completion.parsed is not None:
            answer = jsonable(completion.parsed)
        elif isinstance(expected, str):
            answer = text
        else:  # a number or true: the answer's JSON value, "42" for 42
            try:
                answer = json.loads(text)
            except ValueError:
                answer = text
        passed = answer == (expected.strip() if isinstance(expected, str) else expected)
        return passed, "" if passed else "the answer is not the expected one"
    if check == "contains":
        passed = str(expected).casefold() in text.casefold()
        return passed, "" if passed else "the answer does not contain the expected text"
    if check == "regex":
        passed = re.search(expected, text) is not None
        return passed, "" if passed else "the answer does not match the expected pattern"
    parsed = jsonable(completion.parsed)
    if parsed is None:
        try:
            parsed = json.loads(text)
        except ValueError:
            return False, "the answer has no fields (not a typed answer, nor a JSON object)"
    if not isinstance(parsed, dict):
        return False, "the answer has no fields (not an object)"
    wrong = [name for name, value in expected.items() if parsed.get(name) != value]
    return not wrong, "" if not wrong else f"field(s) {', '.join(wrong)} differ"


def judged(judge, expected, completion):
    """Return (passed, why, the judge's own Completion) as use case ``judge`` rules on
    ``completion`` against ``expected``."""
    from llmapp.calls.service import complete_prompt

    shown = expected if isinstance(expected, str) else json.dumps(expected, ensure_ascii=False)
    answer = completion.text if completion.parsed is None else json.dumps(jsonable(completion.parsed))
    ruling = complete_prompt(
        judge,
        f"Expected:\n{shown}\n\nAnswer:\n{answer}\n\nDoes the answer meet the expectation?",
        output=VERDICT,
    )
    verdict = ruling.parsed
    return bool(verdict["passed"]), str(verdict.get("reason", ""))[:500], ruling
