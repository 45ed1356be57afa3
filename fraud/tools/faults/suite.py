"""One fault run: topics, workers, replay and reader of one scenario, its faults carried out
in order, everything it read compared with the clean run."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fraud.tools.faults.harness import (
    Cluster,
    HarnessError,
    MalformedWriter,
    Reader,
    Replayer,
    WorkerProcess,
    fault_settings,
    group_lag,
    make_topics,
)
from fraud.tools.faults.outcome import (
    Row,
    Seen,
    clean_reference,
    compare,
    recovery_times,
)
from fraud.tools.faults.plan import Fault, Scenario, Step

if TYPE_CHECKING:
    from fraud.tools.faults.sinkcount import SinkRow
    from fraud.tools.faults.sinkrun import SinkConfig

Say = Callable[[str], None]
RESTART_ESTIMATE_S = 10.0  # a worker's restart, to pace the replay over a scenario's faults
SETTLE_S = 5.0  # quiet time after the last expected message, for late duplicates


def replay_rate(scenario: Scenario, transactions: int, min_s: float = 30.0) -> float:
    """A rate that spreads the replay over the scenario's faults."""
    span = sum(s.delay_s + s.down_s + RESTART_ESTIMATE_S for s in scenario.steps)
    return transactions / max(min_s, span)


@dataclass
class RunResult:
    decisions: list[Seen]
    alert_ids: list[str]
    dead_reasons: dict[str, int]
    faults_s: list[float]
    crashes: list[str] = field(default_factory=list)
    malformed_sent: int = 0
    malformed_kinds: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class ScenarioRun:
    """Runs one scenario on ``cluster``; ``close`` stops whatever it started."""

    def __init__(
        self, cluster: Cluster, scenario: Scenario, path: Path, transactions: int,
        workdir: Path, seed: int, say: Say, rate: float | None = None,
        timeout_s: float = 900.0, stall_s: float = 60.0,
    ) -> None:  # fmt: skip
        self.cluster = cluster
        self.scenario = scenario
        self.path = path
        self.transactions = transactions
        self.workdir = workdir
        self.seed = seed
        self.say = say
        self.rate = rate or replay_rate(scenario, transactions)
        self.timeout_s = timeout_s
        self.stall_s = stall_s  # the replay done, this long with nothing new: stalled
        self.settings = fault_settings(cluster.bootstrap, scenario.name, workdir)
        self.workers: list[WorkerProcess] = []
        self.added: list[WorkerProcess] = []
        self.reader: Reader | None = None
        self.replayer: Replayer | None = None
        self.writer: MalformedWriter | None = None
        self.faults_s: list[float] = []
        self.crashes: list[str] = []
        self.notes: list[str] = []
        self.made: list[WorkerProcess] = []  # every worker of the run, each its own dir

    def _worker(self) -> WorkerProcess:
        n = len(self.made)
        worker = WorkerProcess(self.settings, self.workdir / f"worker-{n}", f"worker {n}")
        self.made.append(worker)
        return worker

    def run(self) -> RunResult:
        self.workdir.mkdir(parents=True, exist_ok=True)
        make_topics(self.settings)
        self.workers = [self._worker() for _ in range(self.scenario.workers)]
        for w in self.workers:
            w.start()
        for w in self.workers:
            w.wait_ready()
        self.reader = Reader(self.settings)
        self.say(
            f"[{self.scenario.name}] {len(self.workers)} worker(s) ready; replaying "
            f"{self.transactions:,} transactions at {self.rate:,.0f}/s"
        )
        self.replayer = Replayer(self.settings, self.path, self.rate, self.workdir / "replay.log")
        self.replayer.start()
        if self.scenario.malformed:
            duration = self.transactions / self.rate
            self.writer = MalformedWriter(
                self.settings, self.scenario.malformed,
                max(1.0, self.scenario.malformed / duration), self.seed,
            )  # fmt: skip
            self.writer.start()
        for i, step in enumerate(self.scenario.steps):
            self._wait(step.delay_s)
            self._do(step)
            self.say(f"[{self.scenario.name}] fault {i + 1}/{len(self.scenario.steps)}: "
                     f"{step.fault.value} done")  # fmt: skip
        result = self._finish()
        return result

    def _check_workers(self) -> None:
        """A worker that exited on its own is a crash: noted, and restarted."""
        for w in [*self.workers, *self.added]:
            code = w.exited()
            if code is not None:
                self.crashes.append(f"{w.name} exited with {code} (log {w.home / 'worker.log'})")
                self.say(f"[{self.scenario.name}] CRASH: {self.crashes[-1]}")
                w.proc = None
                w.start()

    def _wait(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._check_workers()
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    def _do(self, step: Step) -> None:
        now = time.monotonic
        if step.fault is Fault.KILL_WORKER:
            w = self.workers[step.worker]
            self.faults_s.append(now())
            w.kill()
            w.start()
            w.wait_ready()
        elif step.fault is Fault.TERM_WORKER:
            w = self.workers[step.worker]
            self.faults_s.append(now())
            if not w.terminate():
                self.crashes.append(f"{w.name} did not stop on SIGTERM within 60 s")
            w.start()
            w.wait_ready()
        elif step.fault is Fault.ADD_WORKER:
            w = self._worker()
            self.added.append(w)
            self.faults_s.append(now())
            w.start()
            w.wait_ready()
        elif step.fault is Fault.REMOVE_WORKER:
            w = self.added.pop()
            self.faults_s.append(now())
            if not w.terminate():
                self.crashes.append(f"{w.name} did not stop on SIGTERM within 60 s")
        elif step.fault is Fault.KILL_LEADER:
            node = self.cluster.leader(self.settings.topic_names.transactions)
            self.say(f"[{self.scenario.name}] killing node {node} (leader)")
            self.faults_s.append(now())
            self.cluster.kill_and_restart(node, step.down_s)
        elif step.fault is Fault.KILL_CONTROLLER:
            node = self.cluster.controller()
            self.say(f"[{self.scenario.name}] killing node {node} (active controller)")
            self.faults_s.append(now())
            self.cluster.kill_and_restart(node, step.down_s)
        elif step.fault is Fault.RESTART_CLUSTER:
            self.faults_s.append(now())
            self.cluster.restart(step.down_s)

    def _finish(self) -> RunResult:
        assert self.reader is not None and self.replayer is not None
        errors: list[str] = []
        deadline = time.monotonic() + self.timeout_s
        while not self.replayer.done() or (self.writer is not None and not self.writer.done()):
            if time.monotonic() > deadline:
                errors.append("the replay did not finish in time")
                break
            self._wait(0.2)
        if self.replayer.returncode() not in (0, None):
            errors.append(f"the replay exited with {self.replayer.returncode()} "
                          f"(log {self.workdir / 'replay.log'})")  # fmt: skip
        malformed = self.writer.sent if self.writer is not None else 0
        if self.writer is not None and self.writer.error:
            errors.append(f"malformed writer: {self.writer.error}")
        self.say(f"[{self.scenario.name}] replay done; waiting for the decisions")
        last_report = waiting_since = time.monotonic()
        while True:
            decided, dead = self.reader.counts()
            complete = decided >= self.transactions and dead >= malformed
            # Quiet since the last message, or since the faults and the replay were done: a
            # fault that kept the cluster down longer than stall_s is not a stall.
            quiet = time.monotonic() - max(self.reader.last_message_s, waiting_since)
            if complete and quiet >= SETTLE_S:
                break
            if not complete and quiet >= self.stall_s:
                errors.append(
                    f"nothing new for {self.stall_s:.0f} s with {decided:,} decided, "
                    f"{dead:,} dead letters"
                )
                lag = group_lag(self.settings)
                self.say(f"[{self.scenario.name}] stalled; group behind on: {lag}")
                self.notes.append(f"stalled; consumer group behind on: {lag or 'nothing'}")
                break
            if time.monotonic() > deadline:
                errors.append(f"timed out with {decided:,} decided, {dead:,} dead letters")
                break
            if time.monotonic() - last_report > 15:
                self.say(f"[{self.scenario.name}] {decided:,}/{self.transactions:,} decided, "
                         f"{dead:,}/{malformed:,} dead letters")  # fmt: skip
                last_report = time.monotonic()
            self._wait(0.2)
        decisions, alerts, dead_reasons = self.reader.snapshot()
        if self.reader.error:
            errors.append(f"reader: {self.reader.error}")
        return RunResult(
            decisions, alerts, dict(dead_reasons), list(self.faults_s), list(self.crashes),
            malformed, dict(self.writer.kinds) if self.writer is not None else {}, errors,
            list(self.notes),
        )  # fmt: skip

    def close(self) -> None:
        closers: list[Callable[[], object]] = [w.terminate for w in [*self.added, *self.workers]]
        for part in (self.replayer, self.writer, self.reader):
            if part is not None:
                closers.append(part.close)
        for closer in closers:
            with contextlib.suppress(Exception):
                closer()


@dataclass
class Clean:
    """The clean run's decisions, one per transaction, and its alerts."""

    by_id: dict[str, Seen]
    alerts: int


def clean_from(result: RunResult, sent: Sequence[str]) -> Clean:
    if result.errors or result.crashes:
        raise HarnessError(f"the clean run failed: {result.errors + result.crashes}")
    return Clean(clean_reference(sent, result.decisions), len(result.alert_ids))


def row_of(scenario: Scenario, result: RunResult, sent: Sequence[str], clean: Clean) -> Row:
    comparison = compare(sent, clean.by_id, result.decisions, len(result.alert_ids), clean.alerts)
    arrivals = [(d.partition, d.arrived_s) for d in result.decisions]
    row = Row(
        scenario.name, scenario.description, len(scenario.steps), comparison,
        recovery_s=recovery_times(result.faults_s, arrivals),
    )  # fmt: skip
    dead = sum(result.dead_reasons.values())
    row.dead_letters = dead
    if scenario.malformed:
        row.malformed = result.malformed_sent
        no_reason = result.dead_reasons.get("(no reason)", 0)
        row.notes.append(f"dead-letter reasons: {dict(sorted(result.dead_reasons.items()))}")
        row.notes.append(f"malformed kinds sent: {dict(sorted(result.malformed_kinds.items()))}")
        if no_reason:
            row.notes.append(f"{no_reason} dead letters without a reason")
    elif dead:
        row.notes.append(f"{dead} dead letters of valid input: {result.dead_reasons}")
    alert_ids = result.alert_ids
    repeated = len(alert_ids) - len(set(alert_ids))
    if repeated:
        row.notes.append(f"{repeated} alerts with a repeated alert id")
    row.notes.extend(f"{kind} e.g. {ids}" for kind, ids in comparison.examples.items())
    if comparison.differing_by_feature:
        row.notes.append(f"differing decisions by feature: {comparison.differing_by_feature}")
    row.notes.extend(f"crash: {c}" for c in result.crashes)
    row.notes.extend(result.notes)
    if result.crashes or result.errors:
        crashed = [f"{len(result.crashes)} worker crash(es)"] if result.crashes else []
        row.error = "; ".join([*result.errors, *crashed])
    return row


@dataclass(frozen=True)
class SuiteConfig:
    transactions: int = 10_000
    seed: int = 0
    workdir: Path = Path("/tmp/fraud-faults")  # noqa: S108 - replaced by the caller
    clean_rate: float = 500.0  # the clean run's replay rate (transactions/s)
    rate: float | None = None  # fault runs' rate; None: spread over each scenario's faults
    stall_s: float = 60.0  # a run whose output stops this long short of complete ends


def write_input(path: Path, transactions: int, seed: int) -> list[str]:
    """A labelled simulated file of ``transactions`` rows (the first ones in time); returns
    their transaction ids in file order."""
    from fraud.tools.simulate import SimulationConfig, simulate, write_file

    days = 60
    customers = max(10, -(-transactions // 100))  # about 2 per customer and day, and spare
    sim = simulate(
        SimulationConfig(n_customers=customers, n_terminals=2000, n_days=days,
                         seed=seed, with_coordinates=True)
    )  # fmt: skip
    if len(sim) < transactions:
        raise HarnessError(f"the simulation gave {len(sim)} transactions, {transactions} asked")
    full = path.with_suffix(".full.csv")
    write_file(sim, full)
    with full.open() as src, path.open("w") as out:
        for i, line in enumerate(src):
            if i > transactions:
                break
            out.write(line)
    full.unlink()
    return [str(t) for t in sim.transaction_id[:transactions].tolist()]


class Suite:
    """The cluster, the input file and the clean run, then each scenario in turn."""

    def __init__(self, config: SuiteConfig, say: Say) -> None:
        self.config = config
        self.say = say
        self.cluster = Cluster(config.workdir / "cluster", say)
        self.path = config.workdir / "input.csv"
        self.sent: list[str] = []
        self.clean: Clean | None = None
        self.worker_pids: list[int] = []  # every worker process started
        self._run: ScenarioRun | None = None

    def start(self) -> None:
        self.config.workdir.mkdir(parents=True, exist_ok=True)
        self.sent = write_input(self.path, self.config.transactions, self.config.seed)
        self.say(f"{len(self.sent):,} transactions in {self.path}; starting a 3-node cluster")
        self.cluster.start()
        self.say(f"cluster up on {self.cluster.bootstrap}")

    def _execute(self, scenario: Scenario, rate: float | None) -> RunResult:
        self._run = ScenarioRun(
            self.cluster, scenario, self.path, len(self.sent),
            self.config.workdir / scenario.name, self.config.seed, self.say, rate=rate,
            stall_s=self.config.stall_s,
        )  # fmt: skip
        try:
            return self._run.run()
        finally:
            self._run.close()
            self.worker_pids.extend(p for w in self._run.made for p in w.pids)
            self._run = None

    def run_clean(self) -> Clean:
        clean = Scenario("clean", "one undisturbed worker", 1, ())
        result = self._execute(clean, self.config.clean_rate)
        self.clean = clean_from(result, self.sent)
        self.say(f"clean run: {len(self.clean.by_id):,} decisions, {self.clean.alerts:,} alerts")
        return self.clean

    def run(self, scenario: Scenario) -> Row:
        assert self.clean is not None, "run_clean first"
        started = time.monotonic()
        try:
            result = self._execute(scenario, self.config.rate)
        except HarnessError as exc:
            row = Row(scenario.name, scenario.description, len(scenario.steps), None)
            row.error = str(exc)
            return row
        row = row_of(scenario, result, self.sent, self.clean)
        row.notes.append(f"ran {time.monotonic() - started:.0f} s")
        return row

    def run_sinks(self, config: SinkConfig) -> SinkRow:
        """Scenario 5 (``fraud.tools.faults.sinkrun``): needs no clean decision run."""
        from fraud.tools.faults.sinkrun import run_sinks

        started = time.monotonic()
        row = run_sinks(
            self.cluster, self.path, len(self.sent), self.config.workdir, self.config.seed,
            config, self.say,
        )  # fmt: skip
        row.notes.append(f"ran {time.monotonic() - started:.0f} s")
        return row

    def close(self) -> None:
        if self._run is not None:
            self._run.close()
        self.cluster.close()
