"""Sum an evaluation's records up per route: accuracy, latency, tokens, cost, and disagreements."""

from decimal import Decimal

#: The most disagreeing cases an evaluation run keeps in the database, with their answers.
MAX_DISAGREEMENTS = 200


def percentile(values, fraction):
    """The ``fraction`` percentile of ``values`` (nearest rank), or None for none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


class Spend:
    """Tokens and cost summed over calls' records (``usage``, ``cost``)."""

    def __init__(self):
        self.input_tokens = self.output_tokens = self.calls = self.unpriced = 0
        self.cost = Decimal(0)

    def add(self, record):
        usage = record.get("usage") or {}
        self.input_tokens += usage.get("input_tokens") or 0
        self.output_tokens += usage.get("output_tokens") or 0
        self.calls += 1
        if record.get("cost") is None:
            self.unpriced += 1
        else:
            self.cost += Decimal(record["cost"])

    def figures(self):
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            # None when no call had a price; "unpriced" counts those without one.
            "cost": None if self.unpriced == self.calls else str(self.cost),
            "unpriced": self.unpriced,
        }


def summarize(cases, routes, records):
    """Return (per-route figures, disagreements) of ``records`` (the last per item) on ``cases``."""
    latest = {record["id"]: record for record in records}
    summary, outcomes = [], {}
    for route in map(str, routes):
        passed, failed, errored, latencies, failing = 0, 0, 0, [], []
        spent, judging = Spend(), Spend()
        for case in cases:
            record = latest.get(f"{case.id}@{route}")
            if record is None or "error" in record:
                errored += 1
                outcome = "errored"
                failing.append(case.id)
            else:
                latencies.append(record["latency_ms"])
                spent.add(record)
                if "judge" in record:
                    judging.add(record["judge"])
                if record["passed"]:
                    passed += 1
                    outcome = "passed"
                else:
                    failed += 1
                    outcome = "failed"
                    failing.append(case.id)
            outcomes.setdefault(case.id, {})[route] = (outcome, record)
        figures = {
            "route": route,
            "cases": len(cases),
            "passed": passed,
            "failed": failed,
            "errored": errored,
            "accuracy": passed / len(cases) if cases else 0.0,
            "latency_p50_ms": percentile(latencies, 0.5),
            "latency_p95_ms": percentile(latencies, 0.95),
            **spent.figures(),
            "failing": failing,
        }
        if judging.calls:  # what judging this route's answers cost, apart from the route
            figures["judge"] = judging.figures()
        summary.append(figures)
    return summary, disagreements(cases, outcomes)


def disagreements(cases, outcomes):
    """The cases whose outcome differs between routes, each with every route's answer or error."""
    found = []
    for case in cases:
        by_route = outcomes.get(case.id, {})
        if len({outcome for outcome, _ in by_route.values()}) < 2:
            continue
        found.append(
            {
                "case": case.id,
                "message": case.item.message,
                "expected": case.expected,
                "routes": {
                    route: {
                        "outcome": outcome,
                        "answer": (record or {}).get("text"),
                        "why": (record or {}).get("why")
                        or ((record or {}).get("error") or {}).get("message", ""),
                    }
                    for route, (outcome, record) in by_route.items()
                },
            }
        )
    return found
