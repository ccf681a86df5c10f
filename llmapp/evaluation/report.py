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


def summarize(cases, routes, records):
    """Return (per-route figures, disagreements) of ``records`` (the last per item) on ``cases``."""
    latest = {record["id"]: record for record in records}
    summary, outcomes = [], {}
    for route in map(str, routes):
        passed, failed, errored, latencies, failing = 0, 0, 0, [], []
        tokens_in = tokens_out = 0
        cost, unpriced = Decimal(0), 0
        for case in cases:
            record = latest.get(f"{case.id}@{route}")
            if record is None or "error" in record:
                errored += 1
                outcome = "errored"
                failing.append(case.id)
            else:
                latencies.append(record["latency_ms"])
                usage = record.get("usage") or {}
                tokens_in += usage.get("input_tokens") or 0
                tokens_out += usage.get("output_tokens") or 0
                if record.get("cost") is None:
                    unpriced += 1
                else:
                    cost += Decimal(record["cost"])
                if record["passed"]:
                    passed += 1
                    outcome = "passed"
                else:
                    failed += 1
                    outcome = "failed"
                    failing.append(case.id)
            outcomes.setdefault(case.id, {})[route] = (outcome, record)
        summary.append(
            {
                "route": route,
                "cases": len(cases),
                "passed": passed,
                "failed": failed,
                "errored": errored,
                "accuracy": passed / len(cases) if cases else 0.0,
                "latency_p50_ms": percentile(latencies, 0.5),
                "latency_p95_ms": percentile(latencies, 0.95),
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                # None when no answer had a price; "unpriced" counts those without one.
                "cost": None if unpriced == len(latencies) else str(cost),
                "unpriced": unpriced,
                "failing": failing,
            }
        )
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
