"""``fraud bench docs``: benchmark JSON in, markdown table rows out, the document around kept."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from fraud.cli import main as cli_main
from fraud.tools.bench.docs import (
    BEGIN,
    END,
    BenchDocsError,
    latency_table,
    main,
    performance_tables,
    rewrite,
    throughput_table,
)
from fraud.tools.bench.latency import latency_row
from fraud.tools.bench.load import LoadResult
from fraud.tools.bench.report import LatencyRecorder


def latency_json(date: str, p99_ms: float, engine: str = "kafka") -> dict[str, Any]:
    """The shape ``fraud bench latency`` writes (fraud/tools/bench/latency.py ``run``)."""
    return {
        "benchmark": "latency",
        "machine": {"date": date, "arch": "x86_64", "cpus": 2, "python": "3.11.9",
                    "load_average_1m": 3.456},
        "broker": {"engine": engine, "version": "4.4.0", "bootstrap": "127.0.0.1:9092"},
        "processing_guarantee": "exactly_once",
        "worker_ready_s": 9.64,
        "result": {
            "run": "200 tx/s", "rate": 200.0, "sent": 2000, "decided": 1999,
            "p50_ms": 12.34, "p90_ms": 56.78, "p99_ms": p99_ms, "p99.9_ms": 1234.6,
            "max_ms": float("nan"), "first_ms": 20.5, "max_send_lag_ms": 0.1,
            "send_to_decided_p50_ms": 5.0, "send_to_decided_p99_ms": 9.0,
        },
        "targets": {},
        "over_time": [],
    }  # fmt: skip


def throughput_json() -> dict[str, Any]:
    """The shape ``fraud bench throughput`` writes (fraud/tools/bench/throughput.py ``_run``)."""
    step = {"p50_ms": 1.0, "p99_ms": 2.0, "p99.9_ms": 3.0, "decided": 10, "sent": 10}
    return {
        "benchmark": "throughput",
        "machine": {"date": "2026-12-01 10:00 UTC", "arch": "x86_64", "cpus": 2,
                    "python": "3.11.9", "load_average_1m": 1.0},
        "broker": {"engine": "noida", "version": "0.2.3", "bootstrap": "127.0.0.1:9092"},
        "quick": True,
        "limits": {"passthrough": 123456.7, "bare_faust": 3916.2, "naive": 702.4},
        "replay": {"transactions": 60123, "seconds": 7.6, "tx_per_s": 7911.0,
                   "produce_s": 3.0, "broker_usage": None},
        "rate_steps": [
            {**step, "rate": 500.0, "batched": False, "attempt": 1, "ok": True},
            {**step, "rate": 1000.0, "batched": False, "attempt": 1, "ok": False},
            {**step, "rate": 1000.0, "batched": False, "attempt": 2, "ok": False},
            {**step, "rate": 500.0, "batched": True, "attempt": 1, "ok": True},
            {**step, "rate": 1000.0, "batched": True, "attempt": 1, "ok": True},
            {**step, "rate": 2000.0, "batched": True, "attempt": 1, "ok": False},
        ],
        "targets": {},
    }  # fmt: skip


def rows(table: str) -> list[list[str]]:
    """The cells of a markdown table's body rows."""
    lines = table.splitlines()
    assert lines[1].startswith("|---|")
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_a_latency_json_becomes_one_row_of_its_numbers() -> None:
    data = json.loads(json.dumps(latency_json("2026-12-02 05:10 UTC", 99.96)))  # as on disk
    table = latency_table([data])
    header = table.splitlines()[0]
    assert "p99.9 ms" in header and "worker ready s" in header
    assert rows(table) == [[
        "2026-12-02 05:10 UTC", "Apache Kafka 4.4.0", "exactly_once", "2", "3.46", "200",
        "2,000", "1,999", "12.3", "56.8", "100.0", "1,235", "-", "9.6",
    ]]  # fmt: skip


def test_latency_rows_are_sorted_oldest_first() -> None:
    late = latency_json("2026-12-02 05:10 UTC", 10.0)
    early = latency_json("2026-11-25 19:03 UTC", 20.0, engine="noida")
    cells = rows(latency_table([late, early]))
    assert [(r[0], r[1], r[10]) for r in cells] == [
        ("2026-11-25 19:03 UTC", "noida-db (emulator) 4.4.0", "20.0"),
        ("2026-12-02 05:10 UTC", "Apache Kafka 4.4.0", "10.0"),
    ]


def test_the_row_reads_what_the_latency_benchmark_writes() -> None:
    recorder = LatencyRecorder()
    for i in range(100):
        recorder.record(i / 100, 0.004 if i < 98 else 0.300)  # 4 ms, and two at 300 ms
    result = LoadResult(
        rate=100.0, sent=100, received=100, recorder=recorder, first_s=0.004,
        max_send_lag_s=0.0, seconds=1.0,
    )  # fmt: skip
    data = latency_json("2026-12-02 05:10 UTC", 0.0)
    data["result"] = latency_row("100 tx/s", result)
    [cells] = rows(latency_table([json.loads(json.dumps(data))]))
    assert cells[5:8] == ["100", "100", "100"]
    assert cells[8] == "4.0"  # p50
    assert cells[10] == "300"  # p99: the HDR histogram keeps 3 significant digits
    assert cells[12] == "300"  # max


def test_a_throughput_json_becomes_one_row_with_the_best_passing_steps() -> None:
    [cells] = rows(throughput_table([throughput_json()]))
    assert cells == [
        "2026-12-01 10:00 UTC", "noida-db (emulator) 0.2.3", "-", "2", "1.00", "quick", "123,457",
        "3,916", "702", "60,123 in 8 s", "7,911", "500", "1,000",
    ]  # fmt: skip


def test_performance_tables_has_a_section_per_benchmark_present() -> None:
    both = performance_tables([throughput_json(), latency_json("2026-12-02 05:10 UTC", 1.0)])
    assert both.index("`fraud bench latency`") < both.index("`fraud bench throughput`")
    only = performance_tables([latency_json("2026-12-02 05:10 UTC", 1.0)])
    assert "fraud bench throughput" not in only
    assert performance_tables([]) == "No recorded runs."


def test_unknown_benchmarks_and_missing_fields_are_errors_naming_them() -> None:
    with pytest.raises(BenchDocsError, match="unknown benchmark 'kernels'"):
        performance_tables([{"benchmark": "kernels"}])
    broken = latency_json("2026-12-02 05:10 UTC", 1.0)
    del broken["result"]["p90_ms"]
    with pytest.raises(BenchDocsError, match=re.escape("'result.p90_ms'")):
        performance_tables([broken])


DOCUMENT = f"""# Performance

Prose above, edited by hand.

{BEGIN}
| old | table |
|---|---|
| 1 | 2 |
{END}

Prose below, also kept.
"""


def test_rewrite_replaces_only_the_text_between_the_markers() -> None:
    out = rewrite(DOCUMENT, "NEW TABLE")
    assert out == DOCUMENT.replace("| old | table |\n|---|---|\n| 1 | 2 |", "NEW TABLE")
    assert rewrite(out, "NEW TABLE") == out  # idempotent


@pytest.mark.parametrize(
    "document",
    ["no markers at all", f"{BEGIN}\nonly the start", f"{END}\n{BEGIN}\n", f"{BEGIN}{BEGIN}{END}"],
)
def test_rewrite_refuses_a_document_without_one_pair_of_markers(document: str) -> None:
    with pytest.raises(BenchDocsError, match="marker"):
        rewrite(document, "table")


def test_main_rewrites_the_document_from_json_files(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text(DOCUMENT)
    files = []
    for i, date in enumerate(("2026-12-02 05:10 UTC", "2026-11-25 19:03 UTC")):
        path = tmp_path / f"latency-{i}.json"
        path.write_text(json.dumps(latency_json(date, 10.0 + i)))
        files.append(path)
    assert "rewritten" in main(files, doc)
    text = doc.read_text()
    assert text.startswith("# Performance\n\nProse above, edited by hand.\n\n" + BEGIN)
    assert text.endswith(END + "\n\nProse below, also kept.\n")
    assert "| old | table |" not in text
    body = text.split(BEGIN)[1].split(END)[0]
    table = "\n".join(line for line in body.splitlines() if line.startswith("|"))
    assert [r[0] for r in rows(table)] == ["2026-11-25 19:03 UTC", "2026-12-02 05:10 UTC"]
    assert "unchanged" in main(files, doc)


def test_main_names_the_file_it_cannot_read(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text(DOCUMENT)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BenchDocsError, match=re.escape("bad.json: not JSON")):
        main([bad], doc)
    assert doc.read_text() == DOCUMENT


def test_the_cli_command_reports_a_bad_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"benchmark": "nope"}))
    assert cli_main(["bench", "docs", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.json: unknown benchmark 'nope'" in err


def test_docs_performance_md_is_generated_from_the_recorded_runs() -> None:
    root = Path(__file__).resolve().parents[3]
    recorded = sorted((root / "benchmarks" / "recorded").glob("*.json"))
    assert recorded, "benchmarks/recorded/ holds no benchmark JSON"
    doc = (root / "docs" / "performance.md").read_text()
    tables = performance_tables([json.loads(p.read_text()) for p in recorded])
    assert rewrite(doc, tables) == doc, "run `fraud bench docs` to regenerate the tables"
