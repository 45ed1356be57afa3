"""``fraud``: the command line. Argument parsing and error reporting only.

Every flag that a container needs has an environment fallback, shown in ``--help``. Known
failures (bad files, bad flags, unreachable brokers) print one line and exit 2 (usage) or 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from pathlib import Path

from confluent_kafka import KafkaException

from fraud.broker import (
    ENGINE_ENV,
    ENGINES,
    BrokerChoice,
    BrokerError,
    choose_engine,
    ensure_topics,
    kafka_version,
    local_broker,
    read_info,
    stop_recorded,
)
from fraud.broker.process import pid_alive
from fraud.contracts.currency import CurrencyError
from fraud.contracts.units import DAY_MS
from fraud.settings import DEFAULT_BROKERS, GUARANTEES, Settings

EPILOG = "Docs: README.md, docs/. Environment: KAFKA_BOOTSTRAP sets --brokers for every command."


class CliError(Exception):
    """A user-facing error: printed as one line."""


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def _add_kafka(p: argparse.ArgumentParser, partitions: bool = True) -> None:
    p.add_argument(
        "--brokers",
        default=_env("KAFKA_BOOTSTRAP", DEFAULT_BROKERS),
        help="Kafka bootstrap servers, host:port[,host:port] (env KAFKA_BOOTSTRAP; "
        "default %(default)s)",
    )
    p.add_argument(
        "--topic-prefix",
        default=_env("FRAUD_TOPIC_PREFIX", ""),
        help="prefix for every topic name (env FRAUD_TOPIC_PREFIX)",
    )
    if partitions:
        p.add_argument(
            "--partitions",
            type=int,
            default=int(_env("FRAUD_PARTITIONS", "4") or 4),
            help="partitions of the input topics and state tables (env FRAUD_PARTITIONS; "
            "default %(default)s)",
        )


def _add_engine(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine", choices=ENGINES, default=None,
        help=f"local broker: kafka (Apache Kafka, needs Java 17+), noida (the emulator) or "
        f"auto: Kafka where it can run, else the emulator (env {ENGINE_ENV}; default auto)",
    )  # fmt: skip


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {text}")
    return value


def _add_metrics(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metrics-port", type=_port, default=_env("FRAUD_METRICS_PORT"),
        help="serve Prometheus metrics on http://HOST:PORT/metrics (env FRAUD_METRICS_PORT; "
        "default: off)",
    )  # fmt: skip
    p.add_argument(
        "--metrics-host", default=_env("FRAUD_METRICS_HOST", "127.0.0.1"),
        help="address of the metrics endpoint; 0.0.0.0 in a container (env "
        "FRAUD_METRICS_HOST; default %(default)s)",
    )  # fmt: skip


@contextlib.contextmanager
def _metrics_endpoint(args: argparse.Namespace, register: Callable[[], object]) -> Iterator[None]:
    """Serve /metrics while the command runs, when --metrics-port is given.

    ``register`` creates the process's metrics first, so they are scraped (at 0) from the start.
    """
    if args.metrics_port is None:
        yield
        return
    from fraud.metrics import MetricsServer

    register()
    server = MetricsServer(args.metrics_port, args.metrics_host)
    try:
        server.start()
    except OSError as exc:
        raise CliError(
            f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc}"
        ) from None
    print(f"metrics on {server.url}", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        server.stop()


def _settings(args: argparse.Namespace) -> Settings:
    base = Settings.from_env()
    return base.with_overrides(
        brokers=getattr(args, "brokers", None),
        topic_prefix=getattr(args, "topic_prefix", None),
        partitions=getattr(args, "partitions", None),
        data_dir=getattr(args, "data_dir", None),
        app_id=getattr(args, "app_id", None),
        batch_max=getattr(args, "batch_max", None),
    )


def _positive(kind: type[float] | type[int]) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraud",
        description="Stream-processing fraud detection: transactions in, decisions and alerts out.",
        epilog=EPILOG,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="run everything once on a local broker and print a summary",
        description="Start a local broker (Apache Kafka; the noida-db emulator where Java "
        "17+ is missing), create topics, start a worker, replay a "
        "simulated labelled file (plus a few bad messages), read every decision back, print "
        "a summary and stop everything.",
    )
    p.add_argument("--customers", type=_positive(int), default=200, help="default %(default)s")
    p.add_argument("--days", type=_positive(int), default=30, help="default %(default)s")
    p.add_argument(
        "--rate", type=_positive(float), default=500.0,
        help="replay rate in transactions/s (default %(default)s)",
    )  # fmt: skip
    p.add_argument("--max-speed", action="store_true", help="replay as fast as possible")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--external", action="store_true",
        help="use the cluster at --brokers instead of starting a local broker",
    )  # fmt: skip
    _add_engine(p)
    _add_kafka(p)

    p = sub.add_parser(
        "bench",
        help="benchmarks: end-to-end latency, or throughput against its limits",
        description="latency: open-loop load at a fixed rate (send times scheduled, not paced "
        "by replies) through one worker, from produce to the Decision read back; p50, p90, "
        "p99, p99.9, max. throughput: the highest rate with p99 under 100 ms, a large "
        "labelled replay, and the limits measured side by side (Kafka client passthrough, a "
        "bare Faust agent, a naive one-event-at-a-time implementation). Each starts an "
        "local broker (Apache Kafka by default; unless --external), prints a table and writes JSON "
        "and a PNG. docs: rewrite the tables of docs/performance.md from benchmark JSON.",
    )
    p.add_argument("which", choices=["latency", "throughput", "docs"])
    p.add_argument(
        "json", type=Path, nargs="*", metavar="JSON",
        help="docs: benchmark JSON files for the tables of docs/performance.md (default "
        "benchmarks/recorded/*.json)",
    )  # fmt: skip
    p.add_argument(
        "--rate", type=_positive(float), default=2000.0,
        help="latency: transactions/s (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--duration", type=_positive(float), default=30.0,
        help="seconds of measured load per run (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--replay-transactions", type=_positive(int), default=1_750_000,
        help="throughput: size of the labelled replay (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--quick", action="store_true",
        help="throughput: small sizes, for a smoke run (a minute or two)",
    )  # fmt: skip
    p.add_argument(
        "--out", type=Path, default=Path("benchmarks/results"),
        help="directory for the JSON and PNG (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--processing-guarantee", choices=GUARANTEES, default=None,
        help="latency, throughput: the benchmarked worker's guarantee, as fraud worker "
        "--processing-guarantee (env FRAUD_PROCESSING_GUARANTEE; default exactly_once)",
    )  # fmt: skip
    p.add_argument(
        "--external", action="store_true",
        help="use the cluster at --brokers instead of starting a local broker",
    )  # fmt: skip
    _add_engine(p)
    _add_kafka(p)

    p = sub.add_parser(
        "broker",
        help="install, start, stop or inspect a local broker (Apache Kafka by default)",
        description="A local broker in the background: Apache Kafka (KRaft, fetched once from "
        "Maven Central by 'install' or the first 'start'; needs Java 17+ and Maven) or, where "
        "Java is missing, the noida-db emulator. 'start --nodes 3' runs a 3-node Kafka "
        "cluster on loopback. 'stop' is graceful (SIGTERM, then wait).",
    )
    p.add_argument("action", choices=["install", "start", "stop", "status"])
    p.add_argument(
        "--data-dir", type=Path, default=Path(_env("FRAUD_BROKER_DIR", ".fraud/broker") or ""),
        help="broker data directory (env FRAUD_BROKER_DIR; default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--port", type=int, default=9092, help="Kafka port of the first node (default %(default)s)"
    )
    p.add_argument(
        "--nodes", type=_positive(int), default=1,
        help="Kafka nodes (combined broker+controller) on loopback (default %(default)s)",
    )  # fmt: skip
    _add_engine(p)
    p.add_argument(
        "--foreground", action="store_true", help="with start: stay attached until Ctrl-C"
    )

    p = sub.add_parser("topics", help="create the engine's topics (idempotent)")
    _add_kafka(p)

    p = sub.add_parser(
        "worker",
        help="run a detection worker (Faust app)",
        description="Consume transactions, keep per-customer windows in RocksDB, score, and "
        "emit decisions, alerts and dead letters. Stops cleanly on SIGTERM/Ctrl-C.",
    )
    _add_kafka(p)
    p.add_argument(
        "--data-dir", type=Path, default=Path(_env("FRAUD_DATA_DIR", ".fraud") or ""),
        help="local state directory (env FRAUD_DATA_DIR; default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--app-id", default=_env("FRAUD_APP_ID", "fraud-worker"),
        help="consumer group and table namespace (env FRAUD_APP_ID; default %(default)s)",
    )  # fmt: skip
    p.add_argument("--batch-max", type=_positive(int), help="micro-batch size (default 1000)")
    p.add_argument(
        "--web-port", type=int, default=6066, help="Faust web port, 0 disables (default 6066)"
    )
    p.add_argument("--ready-file", type=Path, help="touch this file once the worker is ready")
    p.add_argument(
        "--label-wait-ms", type=int, default=int(_env("FRAUD_LABEL_WAIT_MS", "250") or 250),
        help="how long the terminal stage waits for labels up to a transaction's time once "
        "none is left unread in Kafka; unread labels are always waited for "
        "(env FRAUD_LABEL_WAIT_MS; default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--processing-guarantee", choices=GUARANTEES, default=None,
        help="exactly_once: each checkpoint is one Kafka transaction (state, decisions, alerts "
        "and consumed offsets), and readers see decisions once committed; at_least_once: "
        "decisions visible at once, but a crash counts up to a checkpoint of input twice "
        "(env FRAUD_PROCESSING_GUARANTEE; default exactly_once)",
    )  # fmt: skip
    p.add_argument(
        "--two-stage", action="store_true",
        help="always pass transactions from the customer stage to the terminal stage over the "
        "repartition topic; by default a worker that owns every partition decides in line and "
        "skips that hop (env FRAUD_SINGLE_STAGE=0 does the same)",
    )  # fmt: skip
    p.add_argument(
        "--standby-replicas", type=_non_negative_int, default=None,
        help="standby copies of each state partition kept by the other workers, so that one "
        "taking over a dead worker's partitions need not read their whole changelog (env "
        "FRAUD_STANDBY_REPLICAS; default 1)",
    )  # fmt: skip
    p.add_argument("--rules", type=Path, help="decision table (CSV; default tables/rules/v1.csv)")
    p.add_argument("--model", type=Path, help="model table (JSON); default: rules only")
    _add_metrics(p)

    p = sub.add_parser(
        "replay",
        help="replay a transaction file (CSV, JSONL, Parquet) into Kafka",
        description="Produce each row as a Transaction keyed by customer. Column names are "
        "detected (ours, or the handbook's TRANSACTION_ID/TX_DATETIME/...) or given with "
        "--map. Event time travels in the payload; nothing is lost to topic retention.",
    )
    p.add_argument("file", type=Path)
    p.add_argument(
        "--map", dest="mapping", metavar="FIELD=COLUMN,...",
        help="column mapping, e.g. 'event_time=TX_DATETIME,amount=TX_AMOUNT'; fields: "
        "transaction_id customer_id terminal_id amount currency event_time "
        "utc_offset_minutes latitude longitude device_id fraud",
    )  # fmt: skip
    p.add_argument("--currency", default="EUR", help="currency when the file has none (EUR)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed", type=_positive(float),
        help="pace by event time at this factor (e.g. 3600: an hour per second)",
    )  # fmt: skip
    pace.add_argument("--rate", type=_positive(float), help="fixed rate, transactions/s")
    p.add_argument(
        "--label-delay-days", type=float,
        help="publish the file's fraud labels to the labels topic this many days (event "
        "time) after each transaction",
    )  # fmt: skip
    p.add_argument(
        "--label-lead-days", type=float, default=0.0,
        help="publish each label this many days (event time) before its label time, so that "
        "it is read before the transactions it counts for whatever the worker's speed on "
        "either topic (a label read early changes no feature; default 0: at its time, "
        "racing the transactions produced right after it)",
    )  # fmt: skip
    p.add_argument(
        "--fraud-labels-only", action="store_true",
        help="publish only the labels of frauds, as a chargeback feed does (a 'not fraud' "
        "label changes no feature)",
    )  # fmt: skip
    p.add_argument(
        "--batch", type=_positive(int), default=1, metavar="N",
        help="pack up to N transactions of a partition per Kafka record (TransactionBatch, "
        "max 1000): many times the throughput of one record per transaction (default 1)",
    )  # fmt: skip
    p.add_argument("--limit", type=_positive(int), help="stop after this many transactions")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-create-topics", action="store_true", help="do not create topics")
    _add_kafka(p)

    for name, help_text in (
        ("alerts", "print alerts as they arrive"),
        ("tail", "print decisions, alerts or dead letters as they arrive"),
    ):
        p = sub.add_parser(name, help=help_text)
        if name == "tail":
            p.add_argument(
                "kind",
                choices=[
                    "decisions", "alerts",
                    "dead-letters", "webhook-dead-letters", "notifier-dead-letters",
                ],
            )  # fmt: skip
        p.add_argument("--from-beginning", action="store_true", help="start at the oldest")
        p.add_argument("--json", action="store_true", help="JSON lines instead of text")
        p.add_argument("--limit", type=_positive(int), help="stop after this many")
        p.add_argument(
            "--idle-timeout", type=_positive(float), help="stop after this many idle seconds"
        )
        _add_kafka(p, partitions=False)

    p = sub.add_parser(
        "notifier",
        help="send email/SMS notifications for alerts (or any event topic)",
        description="Its own consumer group on the topics of the config's routes: email over "
        "SMTP and SMS through an HTTP gateway, with templates, per-recipient rate limit and "
        "de-duplication. Failed sends end in the notifier dead-letter topic. See docs/sinks.md.",
    )
    p.add_argument(
        "--config", type=Path, required=True, help="notifier config (TOML; see docs/sinks.md)"
    )
    p.add_argument(
        "--app-id", default=_env("FRAUD_APP_ID", "fraud-worker"),
        help="prefix of the consumer group (env FRAUD_APP_ID; default %(default)s)",
    )  # fmt: skip
    _add_kafka(p, partitions=False)
    _add_metrics(p)

    p = sub.add_parser(
        "webhooks",
        help="deliver alerts as HMAC-signed webhooks, with retry topics and dead letters",
        description="Its own consumer group on alerts. Each matching subscription gets a JSON "
        "POST signed with HMAC-SHA256 (headers Fraud-Event-Id, Fraud-Timestamp, "
        "Fraud-Signature); failures go through retry topics (1 s, 10 s, 1 min, 10 min) to a "
        "dead-letter topic. The subscriptions file is re-read when it changes. See docs/sinks.md.",
    )
    p.add_argument("--subscriptions", type=Path, required=True, help="subscriptions file (TOML)")
    p.add_argument(
        "--app-id", default=_env("FRAUD_APP_ID", "fraud-worker"),
        help="prefix of the consumer groups (env FRAUD_APP_ID; default %(default)s)",
    )  # fmt: skip
    _add_kafka(p)
    _add_metrics(p)

    p = sub.add_parser(
        "gateway",
        help="HTTP ingestion: POST JSON transactions, validated and produced to Kafka",
        description="Serve POST /v1/transactions (one JSON transaction, or a JSON array of "
        "them) and GET /healthz. Each transaction is checked with the worker's rules and "
        "produced as fraud.v1.Transaction keyed by customer id; the answer is 202 "
        '{"accepted": n, "ids": [...]} once Kafka acknowledged them all, 400 naming the item '
        "and field for invalid input (nothing produced), 413 for a body over the limit, 503 "
        "when the producer queue is full or Kafka does not acknowledge. Stops on SIGTERM/Ctrl-C "
        "after in-flight requests, flushing the producer. JSON shape: docs/commands.md.",
    )
    p.add_argument(
        "--host", default=_env("FRAUD_GATEWAY_HOST", "127.0.0.1"),
        help="address to listen on (env FRAUD_GATEWAY_HOST; default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--port", type=int, default=int(_env("FRAUD_GATEWAY_PORT", "8080") or 8080),
        help="port to listen on (env FRAUD_GATEWAY_PORT; default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--currency", default="EUR",
        help="currency of a transaction that gives none (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--max-body-bytes", type=_positive(int), default=1 << 20,
        help="larger request bodies get 413 (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--delivery-timeout", type=_positive(float), default=10.0,
        help="seconds Kafka may take to acknowledge before the request gets 503 "
        "(default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--header-timeout", type=_positive(float), default=10.0,
        help="seconds a connection has to send a whole request head, from its start or its "
        "previous answer; also how long an idle keep-alive connection stays (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--body-timeout", type=_positive(float), default=30.0,
        help="seconds the body may take once the head is in, else 408 (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--idempotency-ttl", type=_positive(float), default=3600.0,
        help="seconds an Idempotency-Key or transaction id is remembered, so that a retry is "
        "not produced again (default %(default)s)",
    )  # fmt: skip
    p.add_argument("--no-create-topics", action="store_true", help="do not create topics")
    _add_kafka(p)

    p = sub.add_parser(
        "dlq",
        help="list or re-drive the webhook or notifier dead letters",
        description="List the webhook deliveries (or, with --sink notifier, the emails and SMS) "
        "that ended in a dead-letter topic, or re-drive them once the endpoint (or SMTP server, "
        "SMS gateway) is fixed: all, by endpoint, channel, recipient or event id. A re-driven "
        "letter is marked and not re-driven twice. The notifier's letters are sent again by this "
        "command itself, through the senders of --config. See docs/sinks.md.",
    )
    p.add_argument("action", choices=["list", "redrive"])
    p.add_argument(
        "--sink", choices=["webhooks", "notifier"], default="webhooks",
        help="whose dead letters (default %(default)s)",
    )  # fmt: skip
    p.add_argument("--endpoint", help="webhooks: subscription id or URL")
    p.add_argument("--channel", choices=["email", "sms"], help="notifier: email or sms")
    p.add_argument("--recipient", help="notifier: email address or phone number")
    p.add_argument(
        "--event-id",
        help="event id or alert id (notifier: alert id, or the source record's "
        "topic:partition:offset)",
    )
    p.add_argument("--all", action="store_true", help="with redrive: every dead letter")
    p.add_argument(
        "--include-redriven", action="store_true", help="with list: also re-driven letters"
    )
    p.add_argument(
        "--config", type=Path,
        help="notifier: its config (TOML), needed by redrive to render and send",
    )  # fmt: skip
    _add_kafka(p)

    p = sub.add_parser(
        "train",
        help="train a model table from the decisions and labels topics",
        description="Build the training week of the handbook protocol from the engine's own "
        "decisions (with their features) and the labels, train a model and write it as a "
        "model table (JSON) for --model or 'fraud model publish'.",
    )
    p.add_argument("--out", type=Path, required=True, help="model table to write (.json)")
    p.add_argument("--kind", choices=("trees", "logistic"), default="trees")
    p.add_argument(
        "--start", type=date.fromisoformat,
        help="first training day, YYYY-MM-DD (UTC); default: first decision's day",
    )  # fmt: skip
    p.add_argument("--train-days", type=_positive(int), default=7)
    p.add_argument("--delay-days", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    _add_kafka(p, partitions=False)

    p = sub.add_parser(
        "evaluate",
        help="AUC, average precision and card precision@100 of the decisions (or of a model)",
        description="Handbook protocol: train one week, skip a one-week delay, test the next "
        "week, dropping cards already known compromised. Without --model, the decisions' own "
        "scores; with --model, that model table re-scoring the logged features.",
    )
    p.add_argument("--model", type=Path, help="model table to evaluate on the logged features")
    p.add_argument("--start", type=date.fromisoformat, help="first training day (UTC)")
    p.add_argument("--test-days", type=_positive(int), default=7)
    _add_kafka(p, partitions=False)

    for kind in ("rules", "model"):
        p = sub.add_parser(
            kind,
            help=f"publish a {'decision' if kind == 'rules' else 'model'} table to running "
            "workers (no restart)",
            description="Validate the table, then put it on the compacted policy topic; every "
            "worker switches to it between two batches and records its version in each "
            "Decision. A malformed table is refused and the running version stays.",
        )
        actions = ["publish", "clear"] if kind == "model" else ["publish"]
        p.add_argument("action", choices=actions)
        p.add_argument("file", type=Path, nargs="?", help="table file (for publish)")
        _add_kafka(p, partitions=False)

    p = sub.add_parser(
        "simulate",
        help="write a labelled transaction file (handbook-style simulator)",
        description="Customers, terminals and three fraud scenarios as in the open handbook "
        "'Reproducible Machine Learning for Credit Card Fraud Detection'. Defaults give about "
        "1.75 million transactions.",
    )
    p.add_argument("output", type=Path, help="output .csv or .jsonl")
    p.add_argument("--customers", type=_positive(int), default=5000)
    p.add_argument("--terminals", type=_positive(int), default=10000)
    p.add_argument("--days", type=_positive(int), default=183)
    p.add_argument("--start", type=date.fromisoformat, default=date(2018, 4, 1))
    p.add_argument("--radius", type=_positive(float), default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--coordinates", action="store_true", help="add TX_LAT/TX_LON")
    p.add_argument("--devices", action="store_true", help="add DEVICE_ID")
    return parser


def cmd_demo(args: argparse.Namespace) -> int:
    from fraud.tools.demo import run_demo

    summary = run_demo(
        _settings(args),
        choice=BrokerChoice(external=args.external, engine=args.engine),
        customers=args.customers,
        days=args.days,
        rate=None if args.max_speed else args.rate,
        seed=args.seed,
        say=lambda line: print(line, flush=True),
    )
    print()
    print("\n".join(summary.lines()))
    if summary.decisions != summary.transactions - sum(summary.dead_letters.values()):
        raise CliError(
            f"expected one decision per valid transaction, got {summary.decisions:,} for "
            f"{summary.transactions - sum(summary.dead_letters.values()):,}"
        )
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir
    if args.action == "install":
        from fraud.broker.kafka import install

        print(f"Apache Kafka {kafka_version()}: jars in {install()}")
        return 0
    if args.action == "status":
        info = read_info(data_dir)
        if info is None:
            print(f"no broker running for {data_dir}")
            return 1
        print(f"broker running: {info.describe()}")
        return 0
    if args.action == "stop":
        info = read_info(data_dir)
        if info is None:
            print(f"no broker running for {data_dir}")
            return 0
        clean = stop_recorded(info)
        print("broker stopped" if clean else "broker killed after timeout (data may be lost)")
        return 0
    engine = choose_engine(args.engine, say=lambda line: print(line, file=sys.stderr))
    broker = local_broker(engine, data_dir, port=args.port, nodes=args.nodes)
    info = broker.start()
    print(f"broker started: {info.describe()}")
    if args.foreground:
        try:
            while any(pid_alive(pid) for pid in broker.pids):
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        broker.stop()
        print("broker stopped")
    else:
        print(f"stop it with: fraud broker stop --data-dir {data_dir}")
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    settings = _settings(args)
    created = ensure_topics(settings)
    print(f"created: {', '.join(created)}" if created else "all topics exist")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from fraud.worker.run import run_worker

    base = _settings(args)
    settings = dataclasses.replace(
        base,
        web_port=args.web_port or None,
        label_wait_ms=args.label_wait_ms,
        single_stage=base.single_stage and not args.two_stage,
        processing_guarantee=args.processing_guarantee or base.processing_guarantee,
        model_path=args.model,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
    ).with_overrides(rules_path=args.rules, standby_replicas=args.standby_replicas)
    return run_worker(
        settings,
        loglevel="INFO" if args.verbose else "WARNING",
        ready_file=args.ready_file,
    )


def cmd_replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fraud.ingest.files import ColumnMapping, detect_mapping, open_source, parse_mapping
    from fraud.ingest.replay import Pacing, count_rows, replay

    settings = _settings(args)
    mapping: ColumnMapping | None = None
    if args.mapping:
        first = open_source(args.file, None, args.currency)
        mapping = parse_mapping(args.mapping, detect_mapping(first.columns))
    source = open_source(args.file, mapping, args.currency, max_future_ms=settings.max_future_ms)
    # Catch a file in the wrong format before anything reaches Kafka.
    for _ in itertools.islice(source, 1000):
        pass
    if not args.no_create_topics:
        ensure_topics(settings)
    total = count_rows(args.file)
    delay = None if args.label_delay_days is None else int(args.label_delay_days * DAY_MS)
    if delay is not None and source.mapping.fraud is None:
        raise CliError("--label-delay-days given but the file has no fraud label column")
    lead = int(args.label_lead_days * DAY_MS)
    if lead < 0 or (lead and (delay is None or lead >= delay)):
        raise CliError("--label-lead-days must be >= 0 and less than --label-delay-days")
    bar = tqdm(total=total, unit="tx", unit_scale=True, disable=args.no_progress, file=sys.stderr)
    try:
        stats = replay(
            settings,
            args.file,
            source=source,
            pacing=Pacing(speed=args.speed, rate=args.rate),
            label_delay_ms=delay,
            label_lead_ms=lead,
            limit=args.limit,
            progress=bar.update,
            batch=args.batch,
            fraud_labels_only=args.fraud_labels_only,
        )
    finally:
        bar.close()
    print(
        f"replayed {stats.transactions:,} transactions and {stats.labels:,} labels from "
        f"{args.file} in {stats.seconds:.1f} s ({stats.rate:,.0f} tx/s) to "
        f"{settings.topic_names.transactions} at {settings.brokers}"
    )
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from fraud.tools.tail import tail

    kind = getattr(args, "kind", "alerts")
    with contextlib.suppress(KeyboardInterrupt):
        tail(
            _settings(args),
            kind,
            sys.stdout,
            from_beginning=args.from_beginning,
            as_json=args.json,
            limit=args.limit,
            idle_timeout_s=args.idle_timeout,
        )
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fraud.tools.simulate import SimulationConfig, fraud_stats, simulate, write_file

    config = SimulationConfig(
        n_customers=args.customers,
        n_terminals=args.terminals,
        n_days=args.days,
        start_date=args.start,
        radius=args.radius,
        seed=args.seed,
        with_coordinates=args.coordinates,
        with_devices=args.devices,
    )
    sim = simulate(config)
    if len(sim) == 0:
        raise CliError(
            "the simulation produced no transactions: no customer has a terminal within "
            f"--radius {args.radius}; raise --terminals or --radius"
        )
    with tqdm(total=len(sim), unit="tx", unit_scale=True, file=sys.stderr) as bar:
        done = [0]

        def progress(rows: int) -> None:
            bar.update(rows - done[0])
            done[0] = rows

        write_file(sim, args.output, progress)
    stats = fraud_stats(sim)
    print(
        f"wrote {len(sim):,} transactions to {args.output} "
        f"({stats['fraud_rate']:.2%} fraud: scenario 1 {stats['scenario_1']:.0f}, "
        f"2 {stats['scenario_2']:.0f}, 3 {stats['scenario_3']:.0f})"
    )
    return 0


def cmd_notifier(args: argparse.Namespace) -> int:
    from fraud.metrics import notifier_metrics
    from fraud.sinks.notify.service import serve_notifier

    if not args.config.is_file():
        raise CliError(f"{args.config}: no such config file")
    with _metrics_endpoint(args, notifier_metrics):
        return serve_notifier(_settings(args), args.config)


def cmd_webhooks(args: argparse.Namespace) -> int:
    from fraud.metrics import webhook_metrics
    from fraud.sinks.webhooks.service import serve_webhooks

    if not args.subscriptions.is_file():
        raise CliError(f"{args.subscriptions}: no such subscriptions file")
    with _metrics_endpoint(args, webhook_metrics):
        return serve_webhooks(_settings(args), args.subscriptions)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.which == "docs":
        from fraud.tools.bench.docs import main as write_docs

        print(write_docs(args.json))
        return 0
    if args.json:
        raise CliError(f"JSON files are for 'fraud bench docs', not 'fraud bench {args.which}'")

    settings = _settings(args).with_overrides(processing_guarantee=args.processing_guarantee)
    choice = BrokerChoice(external=args.external, engine=args.engine)
    if args.which == "latency":
        from fraud.tools.bench.latency import run as run_latency

        run_latency(
            settings, choice=choice, rate=args.rate, duration_s=args.duration,
            out_dir=args.out,
        )  # fmt: skip
        return 0
    from fraud.tools.bench.throughput import run as run_throughput

    run_throughput(
        settings, choice=choice, duration_s=args.duration,
        replay_transactions=args.replay_transactions, quick=args.quick, out_dir=args.out,
    )  # fmt: skip
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    from fraud.ingest.gateway import GatewayConfig, serve_gateway

    config = GatewayConfig(
        host=args.host,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
        default_currency=args.currency.upper(),
        delivery_timeout_s=args.delivery_timeout,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        idempotency_ttl_s=args.idempotency_ttl,
        create_topics=not args.no_create_topics,
    )
    try:
        return serve_gateway(_settings(args), config, say=_note)
    except OSError as exc:  # the port is taken, or the host is not ours
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None


def cmd_dlq(args: argparse.Namespace) -> int:
    if args.sink == "notifier":
        return _notifier_dlq(args)
    from fraud.sinks.webhooks.dlq import list_dead_letters, redrive

    if args.channel or args.recipient or args.config:
        raise CliError("--channel, --recipient and --config are for --sink notifier")
    settings = _settings(args)
    if args.action == "list":
        entries = list_dead_letters(
            settings,
            endpoint=args.endpoint,
            event_id=args.event_id,
            include_redriven=args.include_redriven,
        )
        for entry in entries:
            print(entry.summary())
        print(f"{len(entries)} dead letters")
        return 0
    if not (args.all or args.endpoint or args.event_id):
        raise CliError("redrive needs --all, --endpoint or --event-id")
    count = redrive(settings, endpoint=args.endpoint, event_id=args.event_id, all=args.all)
    print(f"re-driven: {count}")
    return 0


def _notifier_dlq(args: argparse.Namespace) -> int:
    from fraud.sinks.notify import dlq
    from fraud.sinks.notify.routing import ConfigError, load_config

    if args.endpoint:
        raise CliError("--endpoint is for --sink webhooks; use --channel or --recipient")
    settings = _settings(args)
    selector = dlq.Selector(args.channel, args.recipient, args.event_id)
    if args.action == "list":
        entries = dlq.list_dead_letters(settings, selector, include_redriven=args.include_redriven)
        for entry in entries:
            print(entry.summary())
        print(f"{len(entries)} dead letters")
        return 0
    if not args.all and selector.empty:
        raise CliError("redrive needs --all, --channel, --recipient or --event-id")
    if args.config is None or not args.config.is_file():
        raise CliError("redrive --sink notifier needs --config, the notifier's config file")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    result = dlq.redrive(settings, config, selector, all=args.all)
    print(result.line())
    return 1 if result.failed else 0  # a send failed again: those letters are still dead


def _day_ms(day: date | None) -> int | None:
    return None if day is None else (day - date(1970, 1, 1)).days * DAY_MS


def _note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    from fraud.tools.train import train_from_topics

    report = train_from_topics(
        _settings(args),
        args.out,
        args.kind,
        start_ms=_day_ms(args.start),
        train_days=args.train_days,
        delay_days=args.delay_days,
        seed=args.seed,
        progress=_note,
    )
    print(report.summary())
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fraud.tools.evaluate import format_result
    from fraud.tools.train import evaluate_from_topics

    result = evaluate_from_topics(
        _settings(args),
        model_path=args.model,
        start_ms=_day_ms(args.start),
        test_days=args.test_days,
        progress=_note,
    )
    print(format_result(result))
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    from fraud.worker.policy_topic import clear_model, policy_topic, publish_model, publish_rules

    settings = _settings(args)
    if args.action == "clear":
        clear_model(settings)
        print("model cleared: workers decide with the rules only")
        return 0
    if args.file is None:
        raise CliError(f"fraud {args.command} publish needs a FILE")
    publish = publish_rules if args.command == "rules" else publish_model
    version = publish(settings, args.file)
    print(f"published {args.command} {version} to {policy_topic(settings)}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "rules": cmd_policy,
    "model": cmd_policy,
    "webhooks": cmd_webhooks,
    "gateway": cmd_gateway,
    "bench": cmd_bench,
    "dlq": cmd_dlq,
    "notifier": cmd_notifier,
    "demo": cmd_demo,
    "broker": cmd_broker,
    "topics": cmd_topics,
    "worker": cmd_worker,
    "replay": cmd_replay,
    "alerts": cmd_tail,
    "tail": cmd_tail,
    "simulate": cmd_simulate,
}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM stops like Ctrl-C, so `fraud demo` and `fraud replay` run their cleanup (the demo
    # stops the broker and worker it started). The worker and the sinks install their own.
    signal.signal(signal.SIGTERM, _interrupt)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # librdkafka's connection chatter would drown the one-line error; -v shows it.
        logging.getLogger("fraud.rdkafka").setLevel(logging.CRITICAL)
    from fraud.ingest.files import SourceError
    from fraud.ingest.replay import ReplayError
    from fraud.sinks.notify.routing import ConfigError
    from fraud.sinks.webhooks.subscriptions import SubscriptionError
    from fraud.tools.demo import DemoError

    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("fraud: interrupted", file=sys.stderr)
        return 130
    except (
        CliError,
        SourceError,
        BrokerError,
        ReplayError,
        DemoError,
        CurrencyError,
        ConfigError,
        SubscriptionError,
    ) as exc:
        print(f"fraud: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, KafkaException) as exc:
        print(f"fraud: error: {exc}", file=sys.stderr)
        return 1
