"""Every Prometheus metric of the project, and the HTTP endpoint that serves them.

Metrics come in three groups, one class each, all built on a ``CollectorRegistry`` passed in
(faust's ``FaustMetrics.create(registry, ...)``), so a test builds its own on a fresh registry:

* ``WorkerMetrics``: the detection worker (transactions in, decisions, alerts, dead letters,
  latencies, batches, tables, consumer lag, labels). Its methods take whole batches and loop
  once; the worker calls them, nothing here reads Faust or Kafka.
* ``WebhookMetrics``: the webhook sink (``fraud.sinks.webhooks.service``), per endpoint
(subscription
  id, a bounded set; never the URL, which may carry tokens).
* ``NotifierMetrics``: the notification sink (``fraud.sinks.notify.service``), per route and
channel.

A process uses the shared instances ``worker_metrics()``, ``webhook_metrics()`` and
``notifier_metrics()``, created on first use on ``REGISTRY`` (prometheus_client's global
registry, which also carries the ``process_*`` and ``python_*`` collectors), and serves them
with ``serve_metrics(port)``::

    metrics = worker_metrics()
    started = time.perf_counter()
    result = stage.process(records)
    metrics.record_batch("terminal", len(records), time.perf_counter() - started)
    metrics.record_actions(result.action_counts)
    metrics.record_latencies(result.decided_at_ms, result.event_times, result.ingested)
    metrics.record_alerts(result.alerts)
    metrics.record_dead_letters(result.dead_letters)

Naming (https://prometheus.io/docs/practices/naming/): the ``fraud_`` prefix, counters end in
``_total``, everything else ends in its unit (``_seconds``, ``_bytes``) or in what it counts
(``_records``, ``_messages``, ``_keys``, ``_state``). The ``_counter``/``_histogram``/``_gauge``
factories refuse other names, so a new metric cannot drift from the convention.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, TypeVar

import numpy as np
import numpy.typing as npt
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from fraud.v1.alert_pb2 import Alert
from fraud.v1.dead_letter_pb2 import DeadLetter
from fraud.v1.decision_pb2 import Action, Decision

__all__ = [
    "BATCH_DURATION_BUCKETS",
    "BATCH_SIZE_BUCKETS",
    "BREAKER_STATE_VALUES",
    "LATENCY_BUCKETS",
    "NOTIFIER_OUTCOMES",
    "PREFIX",
    "REGISTRY",
    "STAGES",
    "WEBHOOK_OUTCOMES",
    "BatchHistogram",
    "EndpointMetrics",
    "MetricsServer",
    "NotifierMetrics",
    "WebhookMetrics",
    "WorkerMetrics",
    "notifier_metrics",
    "serve_metrics",
    "webhook_metrics",
    "worker_metrics",
]

PREFIX: Final = "fraud_"
UNIT_SUFFIXES: Final = ("_seconds", "_bytes", "_records", "_messages", "_keys", "_state")

# Event or ingest time to decision, alert to webhook 2xx: 1 ms .. 60 s.
LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# Webhook deliveries go through retry topics (up to 10 min by default): the tail goes further.
DELIVERY_LATENCY_BUCKETS: Final = (*LATENCY_BUCKETS, 300.0, 900.0, 3600.0)
# One HTTP request or SMTP transaction.
REQUEST_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Processing one micro-batch through a stage (kernels included).
BATCH_DURATION_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS: Final = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

STAGES: Final = ("customer", "terminal", "labels")
ACTIONS: Final[dict[int, str]] = {
    Action.ALLOW: "ALLOW",
    Action.REVIEW: "REVIEW",
    Action.BLOCK: "BLOCK",
}
UNSPECIFIED_ACTION: Final = "UNSPECIFIED"
WEBHOOK_OUTCOMES: Final = ("delivered", "retried", "deferred", "dead_lettered", "failed")
NOTIFIER_OUTCOMES: Final = ("sent", "failed", "deduplicated", "rate_limited")
NOTIFIER_DEAD_LETTER_REASONS: Final = ("decode_error", "no_recipient", "send_failed")
# Numeric breaker state, worst highest: `max(...) > 0` alerts on any endpoint not closed.
# Keyed by the values of fraud.sinks.retry.BreakerState (a StrEnum, so a member looks itself up).
BREAKER_STATE_VALUES: Final[dict[str, float]] = {
    "closed": 0.0,
    "half_open": 1.0,
    "open": 2.0,
}


# ---------------------------------------------------------------- factories


def _check_name(name: str) -> None:
    if not name.startswith(PREFIX) or name != name.lower():
        raise ValueError(f"metric {name!r}: lower case, starting with {PREFIX!r}")


def _counter(
    registry: CollectorRegistry, name: str, doc: str, labels: Sequence[str] = ()
) -> Counter:
    _check_name(name)
    if not name.endswith("_total"):
        raise ValueError(f"counter {name!r} must end in _total")
    return Counter(name, doc, labels, registry=registry)


def _unit(name: str, kind: str) -> None:
    _check_name(name)
    if name.endswith("_total") or not name.endswith(UNIT_SUFFIXES):
        raise ValueError(f"{kind} {name!r} must end in one of {', '.join(UNIT_SUFFIXES)}")


def _histogram(
    registry: CollectorRegistry,
    name: str,
    doc: str,
    labels: Sequence[str],
    buckets: Sequence[float],
) -> Histogram:
    _unit(name, "histogram")
    return Histogram(name, doc, labels, registry=registry, buckets=buckets)


def _gauge(registry: CollectorRegistry, name: str, doc: str, labels: Sequence[str]) -> Gauge:
    _unit(name, "gauge")
    return Gauge(name, doc, labels, registry=registry)


class BatchHistogram(Collector):
    """A histogram without labels that takes a whole batch of observations at once.

    ``prometheus_client.Histogram.observe`` costs about 2 us per value (a lock and a linear scan
    of the buckets); ``observe_many`` bins an array with ``numpy.searchsorted`` and takes the
    lock once, which is what per-decision latencies of 1,000-record batches need.
    Exposed like any histogram: ``<name>_bucket{le=...}``, ``<name>_count``, ``<name>_sum``.
    """

    def __init__(
        self, registry: CollectorRegistry, name: str, doc: str, buckets: Sequence[float]
    ) -> None:
        _unit(name, "histogram")
        bounds = np.asarray(buckets, dtype=np.float64)
        if not bounds.size or np.any(np.diff(bounds) <= 0) or not np.all(np.isfinite(bounds)):
            raise ValueError(f"histogram {name!r}: buckets must increase, +Inf is implicit")
        self.name, self.doc, self.bounds = name, doc, bounds
        self._counts = np.zeros(bounds.size + 1, dtype=np.int64)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: npt.ArrayLike) -> None:
        """Observe every value of ``values`` (NaN ignored)."""
        arr = np.asarray(values, dtype=np.float64).ravel()
        arr = arr[~np.isnan(arr)]
        if not arr.size:
            return
        # bucket i holds bounds[i-1] < v <= bounds[i] ("le"), the last one v > bounds[-1]
        counts = np.bincount(
            np.searchsorted(self.bounds, arr, side="left"), minlength=self._counts.size
        )
        total = float(arr.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def observe(self, value: float) -> None:
        self.observe_many([value])

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.doc)]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            cumulative: list[int] = np.cumsum(self._counts).tolist()
            total = self._sum
        les = [repr(b) for b in self.bounds.tolist()] + ["+Inf"]  # as Histogram writes them
        buckets = list(zip(les, cumulative, strict=True))
        return [HistogramMetricFamily(self.name, self.doc, buckets=buckets, sum_value=total)]


# ---------------------------------------------------------------- worker


class WorkerMetrics:
    """The detection worker's metrics. Methods take whole batches; each loops at most once.

    Stages are ``STAGES``: ``"customer"`` and ``"terminal"`` read transactions, ``"labels"``
    reads fraud labels (the terminal stage's ``apply_labels``).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.records_in = _counter(
            r, "fraud_stage_records_total",
            "Records read by each worker stage (transactions; labels for stage=labels)",
            ["stage"],
        )  # fmt: skip
        self.decisions = _counter(
            r, "fraud_decisions_total", "Decisions emitted, by action", ["action"]
        )
        self.alerts = _counter(r, "fraud_alerts_total", "Alerts emitted (decisions not ALLOW)")
        self.dead_letters = _counter(
            r, "fraud_dead_letters_total", "Records sent to the dead-letter topic, by reason",
            ["reason"],
        )  # fmt: skip
        self.labels_applied = _counter(
            r, "fraud_labels_applied_total", "Fraud labels applied to terminal state"
        )
        self.event_latency = BatchHistogram(
            r, "fraud_event_to_decision_seconds",
            "Transaction event time to decision (includes producer delay; replays are old)",
            LATENCY_BUCKETS,
        )  # fmt: skip
        self.ingest_latency = BatchHistogram(
            r, "fraud_ingest_to_decision_seconds",
            "Kafka message timestamp of the transaction to decision", LATENCY_BUCKETS,
        )  # fmt: skip
        self.batch_duration = _histogram(
            r, "fraud_batch_duration_seconds", "Time to process one batch, by stage",
            ["stage"], BATCH_DURATION_BUCKETS,
        )  # fmt: skip
        self.batch_size = _histogram(
            r, "fraud_batch_size_records", "Records in one batch, by stage",
            ["stage"], BATCH_SIZE_BUCKETS,
        )  # fmt: skip
        self.repartitioned = _counter(
            r, "fraud_repartitioned_transactions_total",
            "Transactions sent over the repartition topic (not decided in line)",
        )  # fmt: skip
        self.incomplete_decisions = _counter(
            r, "fraud_incomplete_decisions_total",
            "Decisions made before an input was read up to their time (Decision.incomplete), "
            "by input: labels (an idle label partition timed out) or alignment (an idle "
            "customer partition timed out)",
            ["input"],
        )  # fmt: skip
        for name in ("labels", "alignment"):  # exported as 0 before the first one
            self.incomplete_decisions.labels(name)
        self.changelog_sent = _counter(
            r, "fraud_changelog_records_total",
            "State values sent to the tables' changelogs (one per changed key per checkpoint)",
        )  # fmt: skip
        self.table_keys = _gauge(r, "fraud_table_keys", "Keys in each state table", ["table"])
        self.consumer_lag = _gauge(
            r, "fraud_consumer_lag_messages",
            "High watermark minus committed offset, per input partition",
            ["topic", "partition"],
        )  # fmt: skip
        self._stages = {
            s: (self.records_in.labels(s), self.batch_duration.labels(s), self.batch_size.labels(s))
            for s in STAGES
        }
        self._actions = {code: self.decisions.labels(name) for code, name in ACTIONS.items()}
        self._unspecified = self.decisions.labels(UNSPECIFIED_ACTION)

    def record_batch(self, stage: str, n: int, seconds: float) -> None:
        """One batch of ``n`` records processed by ``stage`` (one of ``STAGES``) in ``seconds``."""
        try:
            records, duration, size = self._stages[stage]
        except KeyError:
            raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}") from None
        records.inc(n)
        duration.observe(seconds)
        size.observe(n)

    def record_decisions(self, decisions: Sequence[Decision], now_ms: int) -> None:
        """Count decisions by action and observe their latencies (``record_latencies``).

        The decision time is each decision's ``decided_at_ms``, or ``now_ms`` when that is 0.
        About 1 us per decision, nearly all of it reading protobuf fields; a caller that has
        the times as arrays already can count with ``record_actions`` and call
        ``record_latencies`` instead (about 50 ns per decision).
        """
        counts: dict[int, int] = {}
        decided: list[int] = []
        event: list[int] = []
        ingest: list[int] = []
        for d in decisions:
            action = d.action
            counts[action] = counts.get(action, 0) + 1
            decided.append(d.decided_at_ms or now_ms)
            event.append(d.event_time_ms)
            ingest.append(d.ingested_at_ms)
        self.record_actions(counts)
        self.record_latencies(decided, event, ingest)

    def record_actions(self, counts: Mapping[int, int]) -> None:
        """Add ``counts`` (``fraud.v1.Action`` value -> decisions) to ``fraud_decisions_total``."""
        for action, k in counts.items():
            if k:
                self._actions.get(action, self._unspecified).inc(k)

    def record_latencies(
        self, decided_ms: npt.ArrayLike, event_time_ms: npt.ArrayLike, ingested_at_ms: npt.ArrayLike
    ) -> None:
        """Observe event-time and ingest-time to decision latencies of a batch, in seconds.

        Arrays of ms since the epoch, one entry per decision (``decided_ms`` may be a scalar);
        an entry <= 0 in ``event_time_ms`` or ``ingested_at_ms`` is skipped there. Negative
        latencies (clock skew between producer and worker) count as 0.
        """
        decided = np.asarray(decided_ms, dtype=np.int64)
        for since, histogram in (
            (np.asarray(event_time_ms, dtype=np.int64), self.event_latency),
            (np.asarray(ingested_at_ms, dtype=np.int64), self.ingest_latency),
        ):
            known = since > 0
            late_ms = np.maximum(np.broadcast_to(decided, since.shape)[known] - since[known], 0)
            histogram.observe_many(late_ms / 1000.0)

    def record_alerts(self, alerts: Sequence[Alert]) -> None:
        if alerts:
            self.alerts.inc(len(alerts))

    def record_dead_letters(self, letters: Iterable[DeadLetter]) -> None:
        """Count dead letters by their reason code (``"unknown"`` when empty)."""
        counts: dict[str, int] = {}
        for letter in letters:
            reason = letter.reason or "unknown"
            counts[reason] = counts.get(reason, 0) + 1
        for reason, n in counts.items():
            self.dead_letters.labels(reason).inc(n)

    def record_incomplete(self, counts: Mapping[str, int]) -> None:
        """Add ``counts`` (input -> decisions made without it) to
        ``fraud_incomplete_decisions_total``."""
        for name, k in counts.items():
            if k:
                self.incomplete_decisions.labels(name).inc(k)

    def record_labels_applied(self, n: int) -> None:
        if n:
            self.labels_applied.inc(n)

    def set_table_size(self, table: str, keys: int) -> None:
        self.table_keys.labels(table).set(keys)

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        """Lag of one assigned partition: high watermark minus committed offset (>= 0)."""
        self.consumer_lag.labels(topic, str(partition)).set(max(0, lag))

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop the lag series of a partition this worker no longer owns (after a rebalance)."""
        self.consumer_lag.remove(topic, str(partition))  # no-op when it has none


# ---------------------------------------------------------------- webhooks


def _status_class(status: int | None) -> str:
    if status is None:
        return "no_response"
    if 100 <= status <= 599:
        return f"{status // 100}xx"
    return "invalid"


@dataclass(frozen=True)
class EndpointMetrics:
    """The series of one webhook endpoint (subscription id), bound once."""

    metrics: WebhookMetrics
    endpoint: str

    def outcome(self, outcome: str) -> None:
        """A delivery finished a step: one of ``WEBHOOK_OUTCOMES``.

        delivered: 2xx. retried: handed to a retry topic after a failed attempt. deferred:
        handed to a retry topic without an attempt (endpoint saturated). dead_lettered: put on
        the dead-letter topic. failed: the delivery task raised (its offset stays uncommitted,
        so it is sent again after a restart).
        """
        self.metrics.deliveries.labels(self.endpoint, outcome).inc()

    def delivered(self, latency_s: float | None) -> None:
        """A 2xx; ``latency_s`` from the alert's creation, when known."""
        self.outcome("delivered")
        if latency_s is not None:
            self.metrics.delivery_latency.labels(self.endpoint).observe(max(0.0, latency_s))

    def attempt(self, status: int | None, seconds: float, *, retry: bool) -> None:
        """One HTTP request made: its status (None: no response) and duration."""
        self.metrics.attempts.labels(self.endpoint, _status_class(status)).inc()
        self.metrics.request_duration.labels(self.endpoint).observe(seconds)
        if retry:
            self.metrics.retries.labels(self.endpoint).inc()

    def short_circuited(self) -> None:
        self.metrics.short_circuits.labels(self.endpoint).inc()

    def breaker(self, state: str) -> None:
        self.metrics.breaker_state.labels(self.endpoint).set(BREAKER_STATE_VALUES[state])


class WebhookMetrics:
    """The webhook sink's metrics; ``endpoint(id)`` gives the series of one subscription."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.deliveries = _counter(
            r, "fraud_webhook_deliveries_total",
            "Webhook delivery steps by endpoint and outcome (delivered, retried, deferred, "
            "dead_lettered, failed)",
            ["endpoint", "outcome"],
        )  # fmt: skip
        self.attempts = _counter(
            r, "fraud_webhook_attempts_total",
            "HTTP requests to webhook endpoints, by status class (2xx..5xx, no_response)",
            ["endpoint", "status"],
        )  # fmt: skip
        self.retries = _counter(
            r, "fraud_webhook_retries_total",
            "HTTP requests that were not a delivery's first attempt", ["endpoint"],
        )  # fmt: skip
        self.short_circuits = _counter(
            r, "fraud_webhook_short_circuits_total",
            "Deliveries not sent because the endpoint's circuit breaker was open", ["endpoint"],
        )  # fmt: skip
        self.delivery_latency = _histogram(
            r, "fraud_webhook_delivery_latency_seconds",
            "Alert created to 2xx from the endpoint (retries included)",
            ["endpoint"], DELIVERY_LATENCY_BUCKETS,
        )  # fmt: skip
        self.request_duration = _histogram(
            r, "fraud_webhook_request_duration_seconds", "Duration of one HTTP request",
            ["endpoint"], REQUEST_BUCKETS,
        )  # fmt: skip
        self.breaker_state = _gauge(
            r, "fraud_webhook_circuit_breaker_state",
            "Circuit breaker per endpoint: 0 closed, 1 half-open, 2 open", ["endpoint"],
        )  # fmt: skip
        self.undecodable = _counter(
            r, "fraud_webhook_undecodable_total",
            "Alerts or retry envelopes that could not be decoded (skipped)", ["kind"],
        )  # fmt: skip
        self.reloads = _counter(
            r, "fraud_webhook_subscription_reloads_total",
            "Subscription file re-reads after a change (result: ok, or error: old set kept)",
            ["result"],
        )  # fmt: skip
        self._endpoints: dict[str, EndpointMetrics] = {}

    def endpoint(self, endpoint: str) -> EndpointMetrics:
        """The series of ``endpoint`` (a subscription id); every outcome starts at 0."""
        found = self._endpoints.get(endpoint)
        if found is None:
            found = self._endpoints[endpoint] = EndpointMetrics(self, endpoint)
            for outcome in WEBHOOK_OUTCOMES:
                self.deliveries.labels(endpoint, outcome)
            self.retries.labels(endpoint)
            self.short_circuits.labels(endpoint)
        return found


# ---------------------------------------------------------------- notifier


class NotifierMetrics:
    """The notification sink's metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.records = _counter(
            r, "fraud_notifier_records_total", "Kafka records read by the notifier", ["topic"]
        )
        self.notifications = _counter(
            r, "fraud_notifier_notifications_total",
            "Notifications by route, channel and outcome (sent, failed, deduplicated, "
            "rate_limited)",
            ["route", "channel", "outcome"],
        )  # fmt: skip
        self.retries = _counter(
            r, "fraud_notifier_retries_total", "Extra send attempts after a retryable failure",
            ["channel"],
        )  # fmt: skip
        self.send_duration = _histogram(
            r, "fraud_notifier_send_duration_seconds",
            "Duration of one send attempt (SMTP transaction or SMS gateway request)",
            ["channel"], REQUEST_BUCKETS,
        )  # fmt: skip
        self.dead_letters = _counter(
            r, "fraud_notifier_dead_letters_total",
            "Records put on the notifier dead-letter topic, by reason "
            "(decode_error, no_recipient, send_failed)",
            ["reason"],
        )  # fmt: skip
        self.breaker_state = _gauge(
            r, "fraud_notifier_circuit_breaker_state",
            "Circuit breaker per channel: 0 closed, 1 half-open, 2 open", ["channel"],
        )  # fmt: skip
        for reason in NOTIFIER_DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)

    def route(self, route: str, channel: str) -> None:
        """Start every outcome of a (route, channel) at 0, so rates exist from the start."""
        for outcome in NOTIFIER_OUTCOMES:
            self.notifications.labels(route, channel, outcome)

    def notification(self, route: str, channel: str, outcome: str) -> None:
        self.notifications.labels(route, channel, outcome).inc()

    def breaker(self, channel: str, state: str) -> None:
        self.breaker_state.labels(channel).set(BREAKER_STATE_VALUES[state])


# ---------------------------------------------------------------- process-wide instances

_lock = threading.Lock()
_shared: dict[type, Any] = {}
_M = TypeVar("_M", WorkerMetrics, WebhookMetrics, NotifierMetrics)


def _process_wide(kind: type[_M]) -> _M:
    """The one ``kind`` of this process, on ``REGISTRY``, created on first call (under a lock:
    registering the same metric names twice would raise)."""
    with _lock:
        if kind not in _shared:
            _shared[kind] = kind(REGISTRY)
        metrics: _M = _shared[kind]
        return metrics


def worker_metrics() -> WorkerMetrics:
    """This process's worker metrics, on ``REGISTRY`` (created on first call)."""
    return _process_wide(WorkerMetrics)


def webhook_metrics() -> WebhookMetrics:
    """This process's webhook sink metrics, on ``REGISTRY`` (created on first call)."""
    return _process_wide(WebhookMetrics)


def notifier_metrics() -> NotifierMetrics:
    """This process's notifier metrics, on ``REGISTRY`` (created on first call)."""
    return _process_wide(NotifierMetrics)


# ---------------------------------------------------------------- HTTP endpoint


class MetricsServer:
    """``GET /metrics`` of a registry on ``host:port`` (0: any free port), in a daemon thread.

    ``start``/``stop``, or use it as a context manager. ``port`` is the bound port once started.
    """

    def __init__(
        self, port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY
    ) -> None:
        self.host = host
        self.port = port
        self.registry = registry
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> MetricsServer:
        """Bind and serve; ``OSError`` when the port is taken."""
        if self._server is not None:
            raise RuntimeError("metrics server already started")
        server, thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        self._server, self._thread = server, thread
        self.port = int(server.server_port)
        return self

    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self if self._server is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_metrics(
    port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY
) -> MetricsServer:
    """Serve ``registry`` on ``http://host:port/metrics`` now; stop it with ``.stop()``."""
    return MetricsServer(port, host, registry).start()
