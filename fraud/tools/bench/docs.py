"""``fraud bench docs``: the tables of ``docs/performance.md``, generated from benchmark JSON.

``performance_tables`` turns the JSON that ``fraud bench latency`` and ``fraud bench
throughput`` write (``latency.json``, ``throughput.json``) into markdown tables, one row per
run, oldest first. ``rewrite`` puts them between ``BEGIN`` and ``END`` in a document and keeps
everything else, so the prose around the tables is edited by hand and the numbers never are::

    results = [json.loads(p.read_text()) for p in paths]
    doc.write_text(rewrite(doc.read_text(), performance_tables(results)))

``main`` does that for files on disk (by default every ``*.json`` in ``RECORDED_DIR``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from fraud.broker.running import engine_title

__all__ = [
    "BEGIN",
    "DOC",
    "END",
    "RECORDED_DIR",
    "BenchDocsError",
    "latency_table",
    "main",
    "performance_tables",
    "rewrite",
    "throughput_table",
]

BEGIN: Final = "<!-- fraud bench docs: begin (generated from benchmark JSON; do not edit) -->"
END: Final = "<!-- fraud bench docs: end -->"
# Relative to the repository root, like ``fraud bench --out``.
RECORDED_DIR: Final = Path("benchmarks/recorded")
DOC: Final = Path("docs/performance.md")

LATENCY_HEADERS: Final = (
    "date", "broker", "guarantee", "cpus", "load 1m", "rate tx/s", "sent", "decided", "p50 ms",
    "p90 ms", "p99 ms", "p99.9 ms", "max ms", "worker ready s",
)  # fmt: skip
THROUGHPUT_HEADERS: Final = (
    "date", "broker", "guarantee", "cpus", "load 1m", "size", "passthrough msg/s",
    "bare Faust events/s", "naive tx/s", "replay", "replay tx/s",
    "max tx/s at p99 < 100 ms: 1 record/tx", "batched",
)  # fmt: skip


class BenchDocsError(ValueError):
    """A benchmark JSON or a document the tables cannot be made from or written into."""


def _get(data: Mapping[str, Any], *keys: str) -> Any:
    """``data[a][b]`` for ``keys`` ``(a, b)``; a missing key is a ``BenchDocsError``."""
    value: Any = data
    for key in keys:
        if not isinstance(value, Mapping) or key not in value:
            raise BenchDocsError(f"benchmark JSON has no {'.'.join(keys)!r}")
        value = value[key]
    return value


def _number(value: Any, digits: int) -> str:
    """``value`` with thousands separators and ``digits`` decimals; "-" for None or NaN."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BenchDocsError(f"expected a number, got {value!r}")
    if math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _ms(value: Any) -> str:
    """Milliseconds: one decimal below 100 ms, whole milliseconds above."""
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) >= 100:
        return _number(value, 0)
    return _number(value, 1)


def _broker(data: Mapping[str, Any]) -> str:
    engine = str(_get(data, "broker", "engine"))
    version = str(_get(data, "broker", "version"))
    return f"{engine_title(engine)} {version}".strip()


def _machine(data: Mapping[str, Any]) -> list[str]:
    """Date, broker, the worker's processing guarantee ("-" in runs from before the JSON
    recorded it), cores and load."""
    return [
        str(_get(data, "machine", "date")),
        _broker(data),
        str(data.get("processing_guarantee") or "-"),
        str(_get(data, "machine", "cpus")),
        _number(_get(data, "machine", "load_average_1m"), 2),
    ]


def _markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _latency_row(data: Mapping[str, Any]) -> list[str]:
    return [
        *_machine(data),
        _number(_get(data, "result", "rate"), 0),
        _number(_get(data, "result", "sent"), 0),
        _number(_get(data, "result", "decided"), 0),
        *(_ms(_get(data, "result", f"{p}_ms")) for p in ("p50", "p90", "p99", "p99.9", "max")),
        _number(_get(data, "worker_ready_s"), 1),
    ]


def _best_rate(steps: Sequence[Mapping[str, Any]], batched: bool) -> float:
    """The highest step rate that met the p99 limit, as ``fraud bench throughput`` counts it."""
    passed = [
        float(_get(s, "rate"))
        for s in steps
        if bool(_get(s, "batched")) is batched and _get(s, "ok")
    ]
    return max(passed, default=0.0)


def _throughput_row(data: Mapping[str, Any]) -> list[str]:
    steps = _get(data, "rate_steps")
    if not isinstance(steps, Sequence):
        raise BenchDocsError("benchmark JSON 'rate_steps' is not a list")
    replayed = (
        f"{_number(_get(data, 'replay', 'transactions'), 0)} in "
        f"{_number(_get(data, 'replay', 'seconds'), 0)} s"
    )
    return [
        *_machine(data),
        "quick" if _get(data, "quick") else "full",
        _number(_get(data, "limits", "passthrough"), 0),
        _number(_get(data, "limits", "bare_faust"), 0),
        _number(_get(data, "limits", "naive"), 0),
        replayed,
        _number(_get(data, "replay", "tx_per_s"), 0),
        _number(_best_rate(steps, False), 0),
        _number(_best_rate(steps, True), 0),
    ]


def _table(
    results: Sequence[Mapping[str, Any]],
    headers: Sequence[str],
    row: Callable[[Mapping[str, Any]], list[str]],
) -> str:
    ordered = sorted(results, key=lambda d: str(_get(d, "machine", "date")))
    return _markdown(headers, [row(d) for d in ordered])


def latency_table(results: Sequence[Mapping[str, Any]]) -> str:
    """One row per ``fraud bench latency`` run, oldest first."""
    return _table(results, LATENCY_HEADERS, _latency_row)


def throughput_table(results: Sequence[Mapping[str, Any]]) -> str:
    """One row per ``fraud bench throughput`` run, oldest first."""
    return _table(results, THROUGHPUT_HEADERS, _throughput_row)


def performance_tables(results: Sequence[Mapping[str, Any]]) -> str:
    """A section per benchmark present in ``results`` (latency, then throughput)."""
    by_kind: dict[str, list[Mapping[str, Any]]] = {"latency": [], "throughput": []}
    for data in results:
        kind = _get(data, "benchmark")
        if kind not in by_kind:
            raise BenchDocsError(f"unknown benchmark {kind!r}; expected latency or throughput")
        by_kind[kind].append(data)
    sections = []
    if by_kind["latency"]:
        sections.append(
            "`fraud bench latency`: open loop at a fixed rate, produce to Decision read back.\n\n"
            + latency_table(by_kind["latency"])
        )
    if by_kind["throughput"]:
        sections.append(
            "`fraud bench throughput`: the limits, the labelled replay (`TransactionBatch`, "
            "fraud labels only) and the highest rate step with p99 under 100 ms.\n\n"
            + throughput_table(by_kind["throughput"])
        )
    return "\n\n".join(sections) if sections else "No recorded runs."


def rewrite(document: str, tables: str) -> str:
    """``document`` with the text between ``BEGIN`` and ``END`` replaced by ``tables``."""
    if document.count(BEGIN) != 1 or document.count(END) != 1:
        raise BenchDocsError(f"the document needs one begin marker {BEGIN!r} and one end marker")
    head, rest = document.split(BEGIN)
    if END in head:
        raise BenchDocsError("the end marker comes before the begin marker")
    _generated, tail = rest.split(END)
    return f"{head}{BEGIN}\n{tables}\n{END}{tail}"


def _load(path: Path) -> Mapping[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BenchDocsError(f"not JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise BenchDocsError("not a JSON object")
    return data


def main(paths: Sequence[Path] = (), doc: Path = DOC) -> str:
    """Rewrite the tables of ``doc`` from ``paths`` (default: ``RECORDED_DIR/*.json``); returns
    a one-line summary. Errors name the file."""
    files = list(paths) or sorted(RECORDED_DIR.glob("*.json"))
    if not files:
        raise BenchDocsError(f"no benchmark JSON given, and none in {RECORDED_DIR}/")
    results = []
    for path in files:
        try:
            data = _load(path)
            performance_tables([data])  # each file alone first, so an error names it
        except BenchDocsError as exc:
            raise BenchDocsError(f"{path}: {exc}") from None
        results.append(data)
    before = doc.read_text()
    after = rewrite(before, performance_tables(results))
    if after != before:
        doc.write_text(after)
    state = "rewritten" if after != before else "unchanged"
    return f"{doc}: tables from {len(files)} benchmark JSON file(s) {state}"
