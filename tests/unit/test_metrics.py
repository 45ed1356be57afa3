"""fraud.metrics: the worker helpers update the right series, names follow the conventions, and
the HTTP endpoint serves what Prometheus can parse. Every test builds its metrics on a fresh
``CollectorRegistry`` (the process-wide one is shared by everything in the process).
"""

from __future__ import annotations

import random
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from fraud import metrics as m
from fraud.broker import free_port
from fraud.metrics import (
    LATENCY_BUCKETS,
    REGISTRY,
    BatchHistogram,
    MetricsServer,
    NotifierMetrics,
    WebhookMetrics,
    WorkerMetrics,
    serve_metrics,
    worker_metrics,
)
from fraud.sinks.retry import BreakerState
from fraud.v1.alert_pb2 import Alert
from fraud.v1.dead_letter_pb2 import DeadLetter
from fraud.v1.decision_pb2 import Action, Decision

NOW = 1_800_000_000_000


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def worker(registry: CollectorRegistry) -> WorkerMetrics:
    return WorkerMetrics(registry)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    got = registry.get_sample_value(name, labels)
    assert got is not None, f"no sample {name}{labels}"
    return got


# ---------------------------------------------------------------- worker API


def test_record_batch_counts_records_and_observes_size_and_duration(
    registry: CollectorRegistry, worker: WorkerMetrics
) -> None:
    worker.record_batch("customer", 700, 0.004)
    worker.record_batch("customer", 300, 0.020)
    worker.record_batch("terminal", 1000, 0.3)
    assert value(registry, "fraud_stage_records_total", stage="customer") == 1000
    assert value(registry, "fraud_stage_records_total", stage="terminal") == 1000
    assert value(registry, "fraud_stage_records_total", stage="labels") == 0  # exists at 0
    assert value(registry, "fraud_batch_size_records_count", stage="customer") == 2
    assert value(registry, "fraud_batch_size_records_sum", stage="customer") == 1000
    assert value(registry, "fraud_batch_size_records_bucket", stage="customer", le="500.0") == 1
    assert value(registry, "fraud_batch_duration_seconds_count", stage="terminal") == 1
    assert value(registry, "fraud_batch_duration_seconds_sum", stage="customer") == pytest.approx(
        0.024
    )
    assert value(registry, "fraud_batch_duration_seconds_bucket", stage="customer",
                 le="0.005") == 1  # fmt: skip
    assert value(registry, "fraud_batch_duration_seconds_bucket", stage="terminal",
                 le="0.25") == 0  # fmt: skip
    with pytest.raises(ValueError, match="unknown stage 'custmer'"):
        worker.record_batch("custmer", 1, 0.1)


def test_record_decisions_counts_actions_and_observes_both_latencies(
    registry: CollectorRegistry, worker: WorkerMetrics
) -> None:
    decisions = [
        # event 30 ms, ingest 2 ms before the decision
        Decision(
            action=Action.ALLOW, event_time_ms=NOW - 30, ingested_at_ms=NOW - 2, decided_at_ms=NOW
        ),
        # no decided_at_ms: now_ms (NOW + 1000) is the decision time
        Decision(action=Action.BLOCK, event_time_ms=NOW - 4000, ingested_at_ms=NOW + 999),
        # event time in the future (skew): 0; no ingest time: not observed
        Decision(action=Action.REVIEW, event_time_ms=NOW + 50, decided_at_ms=NOW),
        Decision(action=Action.ALLOW, event_time_ms=NOW - 120_000, decided_at_ms=NOW),
        Decision(),  # ACTION_UNSPECIFIED, no times
    ]
    worker.record_decisions(decisions, now_ms=NOW + 1000)
    assert value(registry, "fraud_decisions_total", action="ALLOW") == 2
    assert value(registry, "fraud_decisions_total", action="REVIEW") == 1
    assert value(registry, "fraud_decisions_total", action="BLOCK") == 1
    assert value(registry, "fraud_decisions_total", action="UNSPECIFIED") == 1

    event = "fraud_event_to_decision_seconds"
    assert value(registry, f"{event}_count") == 4
    assert value(registry, f"{event}_sum") == pytest.approx(0.030 + 5.0 + 0.0 + 120.0)
    assert value(registry, f"{event}_bucket", le="0.001") == 1  # the clamped one
    assert value(registry, f"{event}_bucket", le="0.025") == 1
    assert value(registry, f"{event}_bucket", le="0.05") == 2
    assert value(registry, f"{event}_bucket", le="5.0") == 3  # 5 s is "<= 5.0"
    assert value(registry, f"{event}_bucket", le="60.0") == 3
    assert value(registry, f"{event}_bucket", le="+Inf") == 4

    ingest = "fraud_ingest_to_decision_seconds"
    assert value(registry, f"{ingest}_count") == 2
    assert value(registry, f"{ingest}_sum") == pytest.approx(0.003)
    assert value(registry, f"{ingest}_bucket", le="0.001") == 1
    assert value(registry, f"{ingest}_bucket", le="0.0025") == 2


def test_record_latencies_from_arrays_matches_record_decisions(registry: CollectorRegistry) -> None:
    rng = np.random.default_rng(7)
    n = 500
    event = NOW - rng.integers(-10, 90_000, n)
    ingest = np.where(rng.random(n) < 0.1, 0, NOW - rng.integers(0, 3000, n))
    decisions = [
        Decision(action=Action.ALLOW, event_time_ms=int(e), ingested_at_ms=int(i))
        for e, i in zip(event, ingest, strict=True)
    ]
    from_protos = WorkerMetrics(registry)
    from_protos.record_decisions(decisions, NOW)
    other = CollectorRegistry()
    WorkerMetrics(other).record_latencies(NOW, event, ingest)
    for family in ("fraud_event_to_decision_seconds", "fraud_ingest_to_decision_seconds"):
        for le in [*(repr(b) for b in LATENCY_BUCKETS), "+Inf"]:
            name = f"{family}_bucket"
            assert value(registry, name, le=le) == value(other, name, le=le), (name, le)
        assert value(registry, f"{family}_sum") == pytest.approx(value(other, f"{family}_sum"))
    assert value(registry, "fraud_ingest_to_decision_seconds_count") == np.count_nonzero(ingest)


def test_batch_histogram_agrees_with_prometheus_histogram() -> None:
    """The batch histogram is a fast twin of ``prometheus_client.Histogram``."""
    buckets = (0.001, 0.01, 0.1, 1.0, 10.0)
    rng = random.Random(3)
    values = [rng.choice([0.0, 0.001, 0.01, 10.0, 11.0]) for _ in range(50)]
    values += [rng.lognormvariate(-3, 2) for _ in range(500)]
    fast, slow = CollectorRegistry(), CollectorRegistry()
    twin = BatchHistogram(fast, "fraud_x_seconds", "x", buckets)
    reference = Histogram("fraud_x_seconds", "x", registry=slow, buckets=buckets)
    twin.observe_many(values[:100])
    twin.observe_many(np.array(values[100:]))
    twin.observe_many([])
    twin.observe_many([float("nan")])  # ignored
    for v in values:
        reference.observe(v)
    for le in ["0.001", "0.01", "0.1", "1.0", "10.0", "+Inf"]:
        assert value(fast, "fraud_x_seconds_bucket", le=le) == value(
            slow, "fraud_x_seconds_bucket", le=le
        ), le
    assert value(fast, "fraud_x_seconds_count") == len(values)
    assert value(fast, "fraud_x_seconds_sum") == pytest.approx(value(slow, "fraud_x_seconds_sum"))
    with pytest.raises(ValueError, match="buckets must increase"):
        BatchHistogram(CollectorRegistry(), "fraud_y_seconds", "y", (1.0, 0.5))


def test_alerts_dead_letters_labels_tables_and_lag(
    registry: CollectorRegistry, worker: WorkerMetrics
) -> None:
    worker.record_alerts([Alert(alert_id="a"), Alert(alert_id="b")])
    worker.record_alerts([])
    assert value(registry, "fraud_alerts_total") == 2

    worker.record_dead_letters(
        [
            DeadLetter(reason="decode_error"),
            DeadLetter(reason="invalid_amount"),
            DeadLetter(reason="decode_error"),
            DeadLetter(),
        ]
    )
    assert value(registry, "fraud_dead_letters_total", reason="decode_error") == 2
    assert value(registry, "fraud_dead_letters_total", reason="invalid_amount") == 1
    assert value(registry, "fraud_dead_letters_total", reason="unknown") == 1

    worker.record_labels_applied(5)
    worker.record_labels_applied(0)
    assert value(registry, "fraud_labels_applied_total") == 5

    worker.set_table_size("customers", 120)
    worker.set_table_size("customers", 125)
    worker.set_table_size("terminals", 9)
    assert value(registry, "fraud_table_keys", table="customers") == 125
    assert value(registry, "fraud_table_keys", table="terminals") == 9

    worker.set_lag("t-transactions", 3, 42)
    worker.set_lag("t-transactions", 1, -5)  # committed past a stale watermark: 0, not < 0
    assert value(registry, "fraud_consumer_lag_messages", topic="t-transactions",
                 partition="3") == 42  # fmt: skip
    assert value(registry, "fraud_consumer_lag_messages", topic="t-transactions",
                 partition="1") == 0  # fmt: skip
    worker.forget_partition("t-transactions", 3)
    worker.forget_partition("t-transactions", 7)  # never set: no error
    assert (
        registry.get_sample_value(
            "fraud_consumer_lag_messages", {"topic": "t-transactions", "partition": "3"}
        )
        is None
    )


def test_worker_metrics_is_one_instance_on_the_process_registry() -> None:
    shared = worker_metrics()
    assert worker_metrics() is shared
    before = REGISTRY.get_sample_value("fraud_alerts_total") or 0.0
    shared.record_alerts([Alert()])
    assert REGISTRY.get_sample_value("fraud_alerts_total") == before + 1


# ---------------------------------------------------------------- sink helpers


def test_webhook_endpoint_series(registry: CollectorRegistry) -> None:
    hooks = WebhookMetrics(registry)
    ep = hooks.endpoint("desk")
    assert hooks.endpoint("desk") is ep
    for outcome in m.WEBHOOK_OUTCOMES:  # every outcome exists at 0 from the first use
        assert value(registry, "fraud_webhook_deliveries_total", endpoint="desk",
                     outcome=outcome) == 0  # fmt: skip
    ep.attempt(503, 0.02, retry=False)
    ep.attempt(None, 1.0, retry=True)
    ep.attempt(200, 0.01, retry=True)
    ep.delivered(0.7)
    ep.outcome("retried")
    ep.short_circuited()
    ep.breaker(BreakerState.OPEN)
    assert value(registry, "fraud_webhook_attempts_total", endpoint="desk", status="5xx") == 1
    assert value(registry, "fraud_webhook_attempts_total", endpoint="desk",
                 status="no_response") == 1  # fmt: skip
    assert value(registry, "fraud_webhook_attempts_total", endpoint="desk", status="2xx") == 1
    assert value(registry, "fraud_webhook_retries_total", endpoint="desk") == 2
    assert value(registry, "fraud_webhook_request_duration_seconds_count", endpoint="desk") == 3
    assert value(registry, "fraud_webhook_deliveries_total", endpoint="desk",
                 outcome="delivered") == 1  # fmt: skip
    assert value(registry, "fraud_webhook_delivery_latency_seconds_sum", endpoint="desk") == 0.7
    assert value(registry, "fraud_webhook_short_circuits_total", endpoint="desk") == 1
    assert value(registry, "fraud_webhook_circuit_breaker_state", endpoint="desk") == 2
    ep.breaker(BreakerState.HALF_OPEN)
    assert value(registry, "fraud_webhook_circuit_breaker_state", endpoint="desk") == 1


def test_notifier_route_series_start_at_zero(registry: CollectorRegistry) -> None:
    notifier = NotifierMetrics(registry)
    notifier.route("desk", "email")
    for outcome in m.NOTIFIER_OUTCOMES:
        assert value(registry, "fraud_notifier_notifications_total", route="desk",
                     channel="email", outcome=outcome) == 0  # fmt: skip
    for reason in ("decode_error", "no_recipient", "send_failed"):
        assert value(registry, "fraud_notifier_dead_letters_total", reason=reason) == 0


# ---------------------------------------------------------------- naming


def test_every_metric_follows_the_naming_conventions(registry: CollectorRegistry) -> None:
    WorkerMetrics(registry)
    WebhookMetrics(registry).endpoint("e")  # labelled series appear once used
    NotifierMetrics(registry).route("r", "email")
    families = list(registry.collect())
    names = [f.name for f in families]
    assert len(names) == len(set(names))
    assert len(families) >= 25
    units = ("_seconds", "_bytes", "_records", "_messages", "_keys", "_state")
    for family in families:
        assert family.name.startswith("fraud_"), family.name
        assert family.name == family.name.lower(), family.name
        assert family.documentation.strip(), f"{family.name} has no help text"
        if family.type == "counter":
            for sample in family.samples:
                assert sample.name.endswith(("_total", "_created")), sample.name
            assert not family.samples or any(
                s.name == f"{family.name}_total" for s in family.samples
            ), family.name
        elif family.type in ("histogram", "gauge"):
            assert family.name.endswith(units), f"{family.type} {family.name} has no unit"
            assert not family.name.endswith("_total"), family.name
            if "latency" in family.name or "duration" in family.name:
                assert family.name.endswith("_seconds"), family.name
        else:
            raise AssertionError(f"unexpected {family.type} {family.name}")
        for sample in family.samples:
            assert "url" not in sample.labels  # endpoints are subscription ids, never URLs


def test_the_factories_refuse_names_off_convention(registry: CollectorRegistry) -> None:
    with pytest.raises(ValueError, match="must end in _total"):
        m._counter(registry, "fraud_requests", "x")
    with pytest.raises(ValueError, match="must end in one of"):
        m._histogram(registry, "fraud_request_latency", "x", [], (1.0,))
    with pytest.raises(ValueError, match="must end in one of"):
        m._gauge(registry, "fraud_lag_total", "x", [])
    with pytest.raises(ValueError, match="starting with 'fraud_'"):
        m._counter(registry, "requests_total", "x")
    with pytest.raises(ValueError, match="lower case"):
        m._gauge(registry, "fraud_Table_keys", "x", [])
    assert list(registry.collect()) == []  # nothing half-registered


# ---------------------------------------------------------------- HTTP endpoint


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_endpoint_serves_the_registry_in_the_text_format(
    registry: CollectorRegistry, worker: WorkerMetrics
) -> None:
    worker.record_decisions([Decision(action=Action.BLOCK, event_time_ms=NOW - 10)] * 3, NOW)
    worker.set_lag("tx", 0, 17)
    port = free_port()
    with serve_metrics(port, registry=registry) as server:
        assert server.url == f"http://127.0.0.1:{port}/metrics"
        got = scrape(server.url)
        assert got[("fraud_decisions_total", frozenset({("action", "BLOCK")}))] == 3
        assert got[("fraud_decisions_total", frozenset({("action", "ALLOW")}))] == 0
        assert got[("fraud_event_to_decision_seconds_count", frozenset())] == 3
        assert got[("fraud_event_to_decision_seconds_bucket", frozenset({("le", "0.01")}))] == 3
        lag = ("fraud_consumer_lag_messages", frozenset({("topic", "tx"), ("partition", "0")}))
        assert got[lag] == 17
        assert not any(name.startswith("process_") for name, _ in got)  # only this registry

        worker.record_decisions([Decision(action=Action.BLOCK)], NOW)  # live, not a snapshot
        assert scrape(server.url)[("fraud_decisions_total", frozenset({("action", "BLOCK")}))] == 4
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    with serve_metrics(port, registry=registry):  # stopped means the port is free again
        pass


def test_server_on_port_zero_reports_its_port_and_a_taken_port_fails(
    registry: CollectorRegistry,
) -> None:
    server = MetricsServer(0, registry=registry).start()
    try:
        assert server.port > 0
        scrape(server.url)
        with pytest.raises(OSError):
            MetricsServer(server.port, registry=registry).start()
        with pytest.raises(RuntimeError, match="already started"):
            server.start()
    finally:
        server.stop()
    server.stop()  # idempotent
