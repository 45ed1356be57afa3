"""Scenario 5's pure parts: the sink accounting, its verdicts and table, and the plan."""

from __future__ import annotations

import pytest

from fraud.tools.faults.plan import GROUPS, SINKS, pick, scenarios, sink_plan
from fraud.tools.faults.sinkcount import (
    DeadLetterSeen,
    Latency,
    Role,
    SinkRow,
    account_endpoint,
    account_notifier,
    latency_ratio,
    quantile,
    sink_lines,
)

IDS = [f"tx{i}/review:x" for i in range(10)]


def dead(ids: list[str], detail: str = "attempts exhausted: HTTP 500 (retryable)") -> list:
    return [DeadLetterSeen(i, "attempts_exhausted", detail) for i in ids]


def test_a_healthy_endpoint_that_got_each_id_once_is_met() -> None:
    a = account_endpoint("healthy", Role.HEALTHY, IDS, IDS, [10.0] * 10, [])
    assert (a.expected, a.delivered, a.distinct, a.unexpected) == (10, 10, 10, 0)
    assert a.once and a.met and a.examples == {}


@pytest.mark.parametrize(
    ("receipts", "kind"),
    [
        (IDS[:-1], "not delivered"),  # one lost
        ([*IDS, IDS[3]], "repeated"),  # one twice
        ([*IDS, "other:x"], "unexpected"),
    ],
)
def test_a_lost_repeated_or_unexpected_delivery_misses(receipts: list[str], kind: str) -> None:
    a = account_endpoint("recovering", Role.RECOVERING, IDS, receipts, [], [])
    assert not a.once and not a.met
    assert kind in a.examples


def test_a_dead_letter_at_a_healthy_endpoint_misses_even_when_delivered() -> None:
    a = account_endpoint("healthy", Role.HEALTHY, IDS, IDS, [], dead(IDS[:1]))
    assert a.once and not a.met
    assert a.examples["dead-lettered"] == IDS[:1]


def test_a_failing_endpoint_is_met_when_each_id_is_dead_lettered_and_redriven_once() -> None:
    a = account_endpoint("failing", Role.FAILING, IDS, [], [], dead(IDS), 10, IDS)
    assert a.redriven_once and a.met
    assert (a.dead_lettered, a.dead_distinct, a.dead_with_cause) == (10, 10, 10)


@pytest.mark.parametrize(
    ("letters", "redriven", "again"),
    [
        (dead(IDS[:-1]), 9, IDS[:-1]),  # one never dead-lettered: lost
        (dead([*IDS, IDS[0]]), 11, IDS),  # one dead-lettered twice
        (dead(IDS, "attempts exhausted: timeout after 2 s"), 10, IDS),  # the wrong cause
        (dead(IDS), 10, [*IDS, IDS[0]]),  # re-delivered twice
        (dead(IDS), 10, IDS[1:]),  # a re-drive that did not deliver one
        (dead(IDS), None, []),  # never re-driven
    ],
)
def test_a_failing_endpoint_misses_on_any_gap(
    letters: list[DeadLetterSeen], redriven: int | None, again: list[str]
) -> None:
    a = account_endpoint("failing", Role.FAILING, IDS, [], [], letters, redriven, again)
    assert not a.met


def test_the_slow_endpoint_needs_a_timeout_in_every_dead_letter() -> None:
    letters = dead(IDS, "attempts exhausted: no response: timeout after 2 s")
    assert account_endpoint("slow", Role.SLOW, IDS, [], [], letters, 10, IDS).met
    http = account_endpoint("slow", Role.SLOW, IDS, [], [], dead(IDS), 10, IDS)
    assert not http.met and "without the cause" in http.examples


def test_a_failing_endpoint_that_delivered_before_the_fix_misses() -> None:
    a = account_endpoint("failing", Role.FAILING, IDS, IDS[:1], [], dead(IDS), 10, IDS)
    assert a.redriven_once and not a.met


def test_the_notifier_mails_or_dead_letters_each_alert_and_loses_none() -> None:
    alerts = [f"a{i}" for i in range(6)]
    ok = account_notifier(alerts, alerts[:4], alerts[4:])
    assert (ok.mailed, ok.mailed_distinct, ok.dead_lettered, ok.lost) == (4, 4, 2, 0)
    assert ok.met
    lost = account_notifier(alerts, alerts[:4], alerts[4:5])
    assert lost.lost == 1 and not lost.met and lost.examples["lost"] == ["a5"]
    twice = account_notifier(alerts, [*alerts, "a0"], [])
    assert not twice.met and twice.examples["mailed twice"] == ["a0"]


def test_the_notifiers_dead_letters_are_re_mailed_exactly_once_after_the_redrive() -> None:
    alerts = [f"a{i}" for i in range(6)]
    ok = account_notifier(alerts, alerts[:4], alerts[4:], 2, alerts[4:])
    assert (ok.redriven, ok.remailed, ok.remailed_distinct) == (2, 2, 2)
    assert ok.redriven_once and ok.met
    short = account_notifier(alerts, alerts[:4], alerts[4:], 2, alerts[4:5])
    assert not short.met and short.examples["not re-mailed"] == ["a5"]
    again = account_notifier(alerts, alerts[:4], alerts[4:], 2, [*alerts[4:], "a5"])
    assert not again.met and again.examples["mailed twice"] == ["a5"]
    already = account_notifier(alerts, alerts[:5], alerts[4:], 2, alerts[4:])  # a4 mailed too
    assert already.remailed_distinct == 1 and not already.met
    miscounted = account_notifier(alerts, alerts[:4], alerts[4:], 1, alerts[4:])
    assert not miscounted.met


def test_quantiles_and_the_latency_ratio() -> None:
    samples = [float(v) for v in range(1, 101)]
    assert quantile(samples, 0.5) == 50.0
    assert quantile(samples, 0.99) == 99.0
    assert quantile(samples, 0.999) == 100.0
    assert quantile([], 0.5) is None
    assert latency_ratio(Latency.of([200.0]), Latency.of([100.0])) == 2.0
    assert latency_ratio(Latency.of([]), Latency.of([100.0])) is None
    assert latency_ratio(Latency.of([5.0]), None) is None


def row(healthy_ms: float, clean_ms: float | None) -> SinkRow:
    h = account_endpoint("healthy", Role.HEALTHY, IDS, IDS, [healthy_ms] * 10, [])
    f = account_endpoint("failing", Role.FAILING, IDS, [], [], dead(IDS), 10, IDS)
    out = SinkRow("sinks", "d", 5.0, 10, 10, 40, 40, [h, f], account_notifier(IDS, IDS, []))
    out.clean_latency = None if clean_ms is None else Latency.of([clean_ms] * 10)
    return out


def test_the_row_needs_every_endpoint_the_notifier_and_an_unslowed_healthy_endpoint() -> None:
    assert row(150.0, 100.0).met
    assert row(150.0, None).met  # no clean run: no latency verdict
    slowed = row(300.0, 100.0)
    assert slowed.latency_ratio == 3.0 and not slowed.met
    undecided = row(100.0, 100.0)
    undecided.decided = 39
    assert not undecided.met
    missing_alert = row(100.0, 100.0)
    missing_alert.flagged = 11  # a flagged decision without its alert
    assert not missing_alert.met


def test_the_healthy_endpoint_is_judged_against_the_control_of_its_own_run() -> None:
    """The control sink's endpoint, delivering the same alerts at the same time, is the
    reference; an earlier clean run's latency is then only printed."""
    r = row(300.0, 100.0)
    r.endpoints.append(
        account_endpoint("control", Role.CONTROL, IDS, IDS, [200.0] * 10, [])
    )  # fmt: skip
    assert r.reference_name == "control" and r.latency_ratio == 1.5 and r.met
    assert "healthy p99 / control p99: 1.50" in sink_lines(r)[-1]
    assert r.to_json()["latency_reference"] == "control"
    r.endpoints[-1] = account_endpoint("control", Role.CONTROL, IDS, IDS, [100.0] * 10, [])
    assert r.latency_ratio == 3.0 and not r.met
    repeated = account_endpoint("control", Role.CONTROL, IDS, IDS + IDS[:1], [100.0] * 11, [])
    assert not repeated.met  # a control endpoint, too, must get each event id exactly once


def test_the_table_has_a_line_per_endpoint_and_the_json_the_verdicts() -> None:
    r = row(150.0, 100.0)
    lines = sink_lines(r)
    assert lines[1].startswith("healthy") and lines[1].endswith("met")
    assert lines[2].startswith("failing") and "10/10" in lines[2]
    assert any(line.startswith("clean") for line in lines)
    assert "1.50 (at most 2)" in lines[-1] and lines[-1].endswith("met")
    data = r.to_json()
    assert data["met"] and data["latency_ratio_p99"] == 1.5
    assert [e["met"] for e in data["endpoints"]] == [True, True]
    errored = SinkRow("sinks", "d", 5.0, 0, 0, 40, 0)
    errored.error = "boom"
    assert sink_lines(errored) == ["sinks: boom  MISSED"]
    assert not errored.met


def test_scenario_5_is_selectable_by_number_and_name() -> None:
    plans = scenarios(0)
    assert GROUPS["5"] == (SINKS,)
    assert pick(["5"], plans) == [SINKS] == pick([SINKS], plans)


@pytest.mark.parametrize("outage_s", [1.0, 5.0, 60.0, 600.0])
def test_the_sink_plan_retries_past_the_outage_and_a_breaker_reset(outage_s: float) -> None:
    plan = sink_plan(outage_s)
    assert plan.covers_outage
    assert min(plan.delays) * (1 - plan.jitter) > 0
    assert list(plan.delays) == sorted(plan.delays)
    assert plan.timeout_s < plan.slow_s  # the slow endpoint always times out
    assert plan.dead_letter_within_s > sum(plan.delays)


def test_a_plan_that_cannot_cover_its_outage_is_refused() -> None:
    with pytest.raises(ValueError, match="breaker"):
        sink_plan(0.2)
    with pytest.raises(ValueError, match="positive"):
        sink_plan(0.0)
    with pytest.raises(ValueError, match="slow"):
        sink_plan(5.0, slow_s=0.0)
