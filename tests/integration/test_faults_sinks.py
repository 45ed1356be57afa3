"""Scenario 5 of the fault suite, small: the webhook sink and the notifier deliver a replay's
alerts to real servers on 127.0.0.1 while one endpoint is down for a few seconds, one answers
HTTP 500, one answers past the sink's timeout and the SMTP server is down.

Every wait in the harness is on a condition (every expected event id seen, every dead letter
read back); the deadlines only guard against a hang, and no latency is asserted here (the
ratio to the control sink is judged by ``benchmarks/faults.py``)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from fraud.broker.kafka import unavailable_reason
from fraud.tools.faults.plan import sink_plan
from fraud.tools.faults.sinkcount import Role
from fraud.tools.faults.sinkrun import SinkConfig
from fraud.tools.faults.suite import Suite, SuiteConfig


@pytest.fixture
def java() -> None:
    """The suite starts its own Apache Kafka cluster (CI forces Kafka, so there it runs)."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs Apache Kafka: {reason}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(600)
def test_each_alert_reaches_each_endpoint_once_or_is_dead_lettered_and_redriven_once(
    tmp_path: Path, java: None
) -> None:
    suite = Suite(SuiteConfig(transactions=300, seed=0, workdir=tmp_path, stall_s=30.0), say=print)
    config = SinkConfig(sink_plan(outage_s=5.0, slow_s=3.0), deadline_s=240,
                        max_latency_ratio=math.inf)  # fmt: skip
    try:
        suite.start()
        brokers = suite.cluster.kafka.pids
        row = suite.run_sinks(config)
    finally:
        suite.close()
    assert not any(pid_alive(pid) for pid in brokers), "brokers left behind"
    assert row.error is None, row.error
    assert row.alerts > 0 and row.alerts == row.flagged, row.notes
    assert row.decided == row.sent == 300
    for role in (Role.HEALTHY, Role.RECOVERING):
        account = row.endpoint(role)
        assert account is not None
        assert account.delivered == account.distinct == account.expected == row.alerts, account
        assert account.dead_lettered == 0, account
    for role in (Role.FAILING, Role.SLOW):
        account = row.endpoint(role)
        assert account is not None
        assert account.delivered == 0, account
        assert account.dead_lettered == account.dead_distinct == row.alerts, account
        assert account.dead_with_cause == account.dead_lettered, account
        assert account.redriven == row.alerts, account
        assert account.redelivered == account.redelivered_distinct == row.alerts, account
    # the control sink, beside the first, delivered every alert to each of its endpoints
    controls = [a for a in row.endpoints if a.role == Role.CONTROL.value]
    assert len(controls) == 4, row.endpoints
    for account in controls:
        assert account.delivered == account.distinct == row.alerts, account
        assert account.dead_lettered == 0 and account.latency.n == row.alerts, account
    assert row.reference_name == "control" and row.latency_ratio is not None
    assert row.notifier is not None
    assert row.notifier.lost == 0 and row.notifier.mailed == row.notifier.mailed_distinct
    # the SMTP outage's dead letters, re-driven once SMTP is up: each mailed exactly once
    n = row.notifier
    assert n.redriven == n.dead_lettered == n.dead_distinct, n
    assert n.remailed == n.remailed_distinct == n.dead_distinct, n
    assert not any("a second redrive" in note for note in row.notes), row.notes
    assert row.met, row.notes
