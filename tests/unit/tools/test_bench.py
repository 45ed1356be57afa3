"""The benchmark building blocks: HDR recording and reports (pure), and a short open-loop load
through the broker and a worker that checks every transaction is decided and timed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fraud.tools.bench.limits import NaiveFeatures
from fraud.tools.bench.report import LatencyRecorder, plot_latency, table, write_json

DAY = 86_400_000


def test_recorder_percentiles_match_the_samples() -> None:
    rec = LatencyRecorder()
    for i in range(1, 1001):  # 1 .. 1000 ms
        rec.record(i / 100, i / 1000)
    s = rec.summary_ms()
    assert s["p50"] == pytest.approx(500, rel=0.002)
    assert s["p99"] == pytest.approx(990, rel=0.002)
    assert s["p99.9"] == pytest.approx(999, rel=0.002)
    assert s["max"] == pytest.approx(1000, rel=0.002)
    assert rec.count == 1000
    per_second = rec.over_time()
    assert [r["n"] for r in per_second] == [99] + [100] * 9 + [1]
    assert per_second[0]["max_ms"] == pytest.approx(99)


def test_reports_write_table_json_and_png(tmp_path: Path) -> None:
    rec = LatencyRecorder()
    for i in range(200):
        rec.record(i / 50, 0.002 + (i % 10) / 1000)
    png = plot_latency(tmp_path / "l.png", "test", rec, 10.0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = write_json(tmp_path / "l.json", {"p": rec.summary_ms()})
    assert json.loads(out.read_text())["p"]["max"] == pytest.approx(11, rel=0.01)
    text = table(["run", "tx/s"], [["a", 1234.5], ["bb", 12]])
    assert text.splitlines() == ["run   tx/s", "a    1,234", "bb      12"]


def test_naive_features_follow_the_definitions() -> None:
    hist: list[list[int]] = []
    for t, amount in ((0, 10), (DAY // 2, 30), (2 * DAY, 50)):
        hist, feats = NaiveFeatures.customer(hist, t, amount)
    assert feats == [1.0, 50.0, 3.0, 30.0, 3.0, 30.0]
    times: list[int] = []
    for t in (0, DAY, 8 * DAY):
        times, counts = NaiveFeatures.terminal(times, t)
    # at day 8 the delayed windows end at day 1: (0, 1] holds day 1, (-6, 1] both, (-29, 1] both
    assert counts == [1.0, 2.0, 2.0]


def test_usage_measures_another_process_cpu_and_memory() -> None:
    import subprocess
    import sys

    from fraud.tools.bench import usage

    busy = subprocess.Popen(
        [sys.executable, "-c", "x = bytearray(64 << 20)\nwhile True: x[0] = 1"]
    )  # fmt: skip
    try:
        with usage.measure([busy.pid], every_s=0.05) as used:
            deadline = time.monotonic() + 30
            while usage.cpu_seconds(busy.pid) < 0.5:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        busy.kill()
        busy.wait()
    assert used.cpu_cores > 0
    assert used.peak_rss_mb > 64
    assert usage.cpu_seconds(busy.pid) == 0.0  # gone


def test_the_benchmarks_score_with_the_shipped_model() -> None:
    # It pointed at fraud/tables/ after the layout move, so every benchmark ran without it.
    from fraud.settings import Settings
    from fraud.tools.bench.latency import BENCH_MODEL, with_bench_model

    assert BENCH_MODEL.is_file()
    assert with_bench_model(Settings()).model_path == BENCH_MODEL


def test_bench_takes_the_processing_guarantee_from_its_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fraud.cli as cli

    seen: list[str] = []

    def fake_run(settings: object, **_kwargs: object) -> dict[str, object]:
        seen.append(settings.processing_guarantee)  # type: ignore[attr-defined]
        return {}

    monkeypatch.setattr("fraud.tools.bench.latency.run", fake_run)
    monkeypatch.delenv("FRAUD_PROCESSING_GUARANTEE", raising=False)
    assert cli.main(["bench", "latency"]) == 0
    assert cli.main(["bench", "latency", "--processing-guarantee", "at_least_once"]) == 0
    monkeypatch.setenv("FRAUD_PROCESSING_GUARANTEE", "at_least_once")
    assert cli.main(["bench", "latency"]) == 0
    assert seen == ["exactly_once", "at_least_once", "at_least_once"]
