"""Results: one row per figure, printed as a table and written as JSON with the machine."""

import datetime
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
LATEST = RESULTS / "latest.json"

PASS, MISSED, INFO, SKIPPED = "pass", "MISSED", "info", "SKIPPED"


@dataclass
class Result:
    """One figure: ``value`` is compared with ``target``.

    ``value`` must be at most ``target`` (below it when ``strict``), or at least
    ``target`` when ``at_least``. ``measured`` and ``baseline`` are what ``value`` was
    computed from, with ``unit`` (``value`` is a ratio when ``unit`` differs from
    ``value_unit``). A result with no target is information only; one with a target
    but no value was not measured (SKIPPED, the notes say why).
    """

    benchmark: str
    name: str
    measured: float | None
    baseline: float | None
    unit: str
    value: float | None
    value_unit: str
    target: float | None = None
    strict: bool = False
    notes: str = ""
    extra: dict = field(default_factory=dict)
    at_least: bool = False

    @property
    def status(self):
        if self.target is None:
            return INFO
        if self.value is None:
            return SKIPPED
        if self.at_least:
            ok = self.value > self.target if self.strict else self.value >= self.target
        else:
            ok = self.value < self.target if self.strict else self.value <= self.target
        return PASS if ok else MISSED

    def as_dict(self):
        return asdict(self) | {"status": self.status}

    @classmethod
    def from_dict(cls, data):
        return cls(**{key: value for key, value in data.items() if key != "status"})


def skipped(benchmark, name, reason, *, unit, value_unit, target=None, at_least=False):
    """A Result that could not be measured, and why."""
    return Result(
        benchmark,
        name,
        None,
        None,
        unit,
        None,
        value_unit,
        target=target,
        at_least=at_least,
        notes=f"not measured: {reason}",
    )


def ratio(measured, baseline):
    return measured / baseline if baseline else None


def machine():
    """Describe the machine the figures come from."""
    import django

    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def machine_line(info):
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['platform']}, Python {info['python']}, "
        f"Django {info['django']}, {info['date']}"
    )


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _number(value, unit):
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.3f}x"
    if unit == "µs":
        return f"{value:.2f} µs" if value < 100 else f"{value:.0f} µs"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "req/s":
        return f"{value:.0f} req/s"
    if unit == "":
        return f"{value:g}"
    return f"{value:g} {unit}"


def _target(result):
    if result.target is None:
        return "-"
    signs = (">", "≥") if result.at_least else ("<", "≤")
    sign = signs[0] if result.strict else signs[1]
    return f"{sign} {_number(result.target, result.value_unit)}"


HEADER = ("BENCHMARK", "MEASURED", "BASELINE", "VALUE", "TARGET", "RESULT")


def _value(result):
    """Show the value; a missed one with more digits if it would otherwise read as its target."""
    text = _number(result.value, result.value_unit)
    if result.status == MISSED and result.value_unit == "x" and text == _number(result.target, "x"):
        text = f"{result.value:.5f}x"
    return text


def rows(results):
    return [
        (
            f"{result.benchmark}: {result.name}",
            _number(result.measured, result.unit),
            _number(result.baseline, result.unit),
            _value(result),
            _target(result),
            result.status,
        )
        for result in results
    ]


def table(results, markdown=False):
    """Return the results as aligned text columns, or as a Markdown table."""
    body = rows(results)
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [HEADER, *body]) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in body]
    header = "  ".join(cell.ljust(width) for cell, width in zip(HEADER, widths, strict=True))
    return "\n".join([header, *lines])


def notes(results):
    return "\n".join(f"- {r.benchmark}: {r.name}: {r.notes}" for r in results if r.notes)


def write(results, info, *, quick, elapsed, durations=None, path=LATEST):
    """Write the results, the machine and each benchmark's seconds as JSON to ``path``; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "machine": info,
        "quick": quick,
        "elapsed_s": round(elapsed, 1),
        "durations_s": durations or {},
        "argv": sys.argv[1:],
        "results": [result.as_dict() for result in results],
    }
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
