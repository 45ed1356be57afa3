"""The benchmark building blocks: HDR recording and reports (pure), and a short open-loop load
through the broker and a worker that checks every transaction is decided and timed."""

from __future__ import annotations

from fraud.broker import BrokerChoice
from fraud.settings import Settings
from fraud.tools.bench.latency import environment
from fraud.tools.bench.load import run_load


def test_open_loop_load_decides_and_times_every_transaction(settings: Settings) -> None:
    with environment(settings, BrokerChoice(external=True), say=print) as env:
        result = run_load(env.settings, 200, 2.0, warmup_s=1.0, customers=50, say=print)
        batched = run_load(env.settings, 200, 1.0, warmup_s=0.5, customers=50, batch=True)
    assert result.sent == 600 and result.received == 600
    assert result.recorder.count == 400  # after the warm-up
    s = result.recorder.summary_ms()
    assert 0 < s["p50"] <= s["p99"] <= s["max"] < 10_000
    assert result.first_s is not None and result.first_s > 0
    assert sum(result.decided_by_action.values()) == 600
    assert batched.received == batched.sent == 300
