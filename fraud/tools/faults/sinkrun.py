"""Scenario 5 (``sinks``): a replay through one worker while the webhook sink and the notifier
deliver its alerts to real servers on 127.0.0.1, some of them broken.

One run (``SinkRun``) starts the receivers and the two sink processes, then the worker and the
replay (``ScenarioRun``), and carries out the outage: the ``recovering`` endpoint is not
listening and the SMTP server is stopped from the start, until ``outage_s`` after the first
alert reached the ``healthy`` endpoint. Once every transaction is decided it waits, on
conditions, for every expected event id to be delivered to the healthy and recovering
endpoints, dead-lettered for the failing and slow ones, and mailed or dead-lettered by the
notifier; then it fixes the failing and slow endpoints, runs ``fraud dlq redrive --endpoint``
for each and ``fraud dlq redrive --sink notifier --all`` (SMTP is up again), and waits until
each dead letter is delivered or mailed; a second re-drive of each must send nothing. Deadlines
only guard against a hang.

A second webhook sink runs alongside, in a consumer group of its own, with as many endpoints
as the first, all healthy (``control``, ``control-2``, ...): it delivers the same alerts at the
same time, and its first endpoint's latency is the reference the healthy endpoint's is judged
against. Both sinks share the machine's load, so the ratio measures what the broken endpoints
cost their healthy neighbour, not how busy the machine was. It has no retry levels (nothing it
calls fails; retry topics are shared by every sink on one alerts topic).

``run_sinks`` runs it, and first, with ``compare_clean``, a run with every server healthy
(exactly once everywhere, and its latency printed for comparison); it returns the ``SinkRow``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from fraud.sinks.webhooks.envelope import event_id_for
from fraud.tools.faults.harness import Cluster, HarnessError, make_topics
from fraud.tools.faults.plan import Scenario, SinkPlan
from fraud.tools.faults.sinkcount import (
    DEFAULT_MAX_LATENCY_RATIO,
    EndpointAccount,
    Role,
    SinkRow,
    account_endpoint,
    account_notifier,
)
from fraud.tools.faults.sinkrig import (
    Endpoint,
    MailServer,
    SinkProcess,
    notifier,
    notifier_dead_letters,
    notifier_toml,
    redrive,
    redrive_notifier,
    subscriptions_toml,
    wait_file,
    webhook_dead_letters,
    webhook_sink,
)
from fraud.tools.faults.suite import SETTLE_S, ScenarioRun
from fraud.v1.decision_pb2 import Action

Say = Callable[[str], None]
SECRET = "whsec-faults"  # noqa: S105 - the local endpoints' signing secret
POLL_S = 1.0  # how often the dead-letter topics are read while waiting
ROLES = (Role.HEALTHY, Role.RECOVERING, Role.FAILING, Role.SLOW)


@dataclass(frozen=True)
class SinkConfig:
    plan: SinkPlan
    rate: float | None = None  # replay rate; None: the file over twice the outage
    compare_clean: bool = False  # run an all-healthy run first, as a second reference
    max_latency_ratio: float = DEFAULT_MAX_LATENCY_RATIO
    stall_s: float = 60.0
    deadline_s: float = 900.0  # per wait: a guard against a hang, never a measurement

    def replay_rate(self, transactions: int) -> float:
        return self.rate or transactions / max(10.0, 2 * self.plan.outage_s)


@dataclass
class RunOutcome:
    accounts: list[EndpointAccount]
    sent: int
    decided: int
    alerts: int
    flagged: int
    notifier_mailed: list[str]  # before the notifier's re-drive
    notifier_dead: list[str]
    alert_ids: list[str]
    notes: list[str]
    notifier_redriven: int | None = None  # None: not re-driven (the clean run)
    notifier_remailed: list[str] = field(default_factory=list)  # after the re-drive


class _Outage:
    """Brings the down servers up ``outage_s`` after the healthy endpoint's first receipt."""

    def __init__(self, healthy: Endpoint, down: list[Endpoint], smtp: MailServer,
                 outage_s: float, say: Say) -> None:  # fmt: skip
        self.healthy = healthy
        self.down = down
        self.smtp = smtp
        self.outage_s = outage_s
        self.say = say
        self.began_s: float | None = None
        self.ended_s: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults-outage", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.healthy.snapshot()[0].event_ids:
                break
            self._stop.wait(0.05)
        if self._stop.is_set():
            return
        self.began_s = time.monotonic()
        self.say(f"[sinks] first alert delivered; outage of {self.outage_s:g} s from now")
        if self._stop.wait(self.outage_s):  # the outage itself
            return
        for endpoint in self.down:
            endpoint.start()
        self.smtp.start()
        self.ended_s = time.monotonic()
        self.say("[sinks] outage over: the recovering endpoint and SMTP are up")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


class SinkRun:
    """One replay with the sinks; ``faults`` False: every server healthy and up."""

    def __init__(self, cluster: Cluster, path: Path, transactions: int, workdir: Path,
                 seed: int, config: SinkConfig, say: Say, faults: bool) -> None:  # fmt: skip
        self.name = "sinks" if faults else "sinks-clean"
        self.plan = config.plan
        self.config = config
        self.faults = faults
        self.say = say
        self.workdir = workdir
        scenario = Scenario(self.name, "alert sinks", 1, ())
        self.run = ScenarioRun(
            cluster, scenario, path, transactions, workdir, seed, say,
            rate=config.replay_rate(transactions), stall_s=config.stall_s,
        )  # fmt: skip
        self.settings = self.run.settings
        secret = SECRET.encode()
        plan = self.plan
        self.endpoints = {
            Role.HEALTHY: Endpoint("healthy", secret),
            Role.RECOVERING: Endpoint("recovering", secret),
            Role.FAILING: Endpoint("failing", secret, "500" if faults else "ok"),
            Role.SLOW: Endpoint("slow", secret, "slow" if faults else "ok", plan.slow_s),
        }
        # the control sink's endpoints: the first is the latency reference
        self.controls = [
            Endpoint("control" if i == 0 else f"control-{i + 1}", secret)
            for i in range(len(self.endpoints))
        ]
        self.smtp = MailServer()
        self.notifier_config = workdir / "notifier.toml"
        self.sinks: list[SinkProcess] = []
        self.outage: _Outage | None = None
        self.notes: list[str] = []

    def _start_sinks(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        make_topics(self.settings)
        subs = self.workdir / "subscriptions.toml"
        subs.write_text(
            subscriptions_toml(
                [(r.value, e.url, SECRET, self.plan.timeout_s) for r, e in self.endpoints.items()]
            )
        )
        config = self.notifier_config
        config.write_text(notifier_toml(self.smtp.port, self.plan.breaker_reset_s))
        down = [self.endpoints[Role.RECOVERING]] if self.faults else []
        for role, endpoint in self.endpoints.items():
            if endpoint not in down:
                endpoint.start()
            self.say(f"[{self.name}] {role.value} endpoint on {endpoint.url}"
                     + (" (down)" if endpoint in down else ""))  # fmt: skip
        if not self.faults:
            self.smtp.start()
        hooks, ready = webhook_sink(
            self.settings, subs, self.plan.delays, self.plan.breaker_reset_s, self.workdir
        )
        control, control_ready = self._control_sink()
        mail = notifier(self.settings, config, self.workdir)
        self.sinks = [hooks, control, mail]
        for sink in self.sinks:
            sink.start()
        wait_file(ready, hooks, 120.0)
        wait_file(control_ready, control, 120.0)
        if self.faults:
            self.outage = _Outage(
                self.endpoints[Role.HEALTHY], down, self.smtp, self.plan.outage_s, self.say
            )
            self.outage.start()

    def _control_sink(self) -> tuple[SinkProcess, Path]:
        home = self.workdir / "control"
        home.mkdir(parents=True, exist_ok=True)
        subs = home / "subscriptions.toml"
        timeout_s = self.plan.timeout_s
        subs.write_text(
            subscriptions_toml([(e.name, e.url, SECRET, timeout_s) for e in self.controls])
        )
        for endpoint in self.controls:
            endpoint.start()
        self.say(f"[{self.name}] control sink: {len(self.controls)} healthy endpoints")
        settings = self.settings.with_overrides(app_id=f"{self.settings.app_id}-control")
        return webhook_sink(settings, subs, (), self.plan.breaker_reset_s, home)

    def _check_sinks(self) -> None:
        for sink in self.sinks:
            code = sink.exited()
            if code is not None:
                raise HarnessError(f"a sink exited with {code} (log {sink.log})")

    def _wait(self, what: str, done: Callable[[], bool], timeout_s: float) -> None:
        """Until ``done()``; HarnessError after ``timeout_s`` (a guard, not a measurement)."""
        deadline = time.monotonic() + timeout_s
        last_say = time.monotonic()
        while not done():
            self._check_sinks()
            if time.monotonic() > deadline:
                raise HarnessError(f"[{self.name}] {what}: not done after {timeout_s:.0f} s")
            if time.monotonic() - last_say > 15:
                self.say(f"[{self.name}] waiting: {what}")
                last_say = time.monotonic()
            time.sleep(POLL_S if "dead" in what else 0.1)

    # -- the conditions waited on

    def _outage_over(self) -> bool:
        return self.outage is not None and self.outage.ended_s is not None

    def _all_received(self, role: Role, ids: set[str], after_fix: bool) -> bool:
        return self._received(self.endpoints[role], ids, after_fix)

    @staticmethod
    def _received(endpoint: Endpoint, ids: set[str], after_fix: bool = False) -> bool:
        receipts, before = endpoint.snapshot()
        got = receipts.event_ids[before:] if after_fix else receipts.event_ids
        return ids <= set(got)

    def _all_dead_lettered(self, role: Role, ids: set[str]) -> bool:
        return ids <= {d.event_id for d in webhook_dead_letters(self.settings, role.value)}

    def _all_mailed_or_dead(self, alert_ids: set[str]) -> bool:
        return alert_ids <= set(self.smtp.alert_ids) | set(notifier_dead_letters(self.settings))

    def _all_remailed(self, alert_ids: set[str], before: int) -> bool:
        return alert_ids <= set(self.smtp.alert_ids[before:])

    def execute(self) -> RunOutcome:
        self._start_sinks()
        result = self.run.run()
        self.run.close()  # the worker is done: the sinks go on from Kafka
        if result.errors or result.crashes:
            raise HarnessError(f"[{self.name}] the replay failed: {result.errors + result.crashes}")
        decided = {d.transaction_id: d for d in result.decisions}
        flagged = sum(1 for d in decided.values() if d.action != Action.ALLOW)
        alert_ids = sorted(set(result.alert_ids))
        if len(result.alert_ids) != len(alert_ids):
            self.notes.append(f"{len(result.alert_ids) - len(alert_ids)} repeated alert ids")
        want = {r: {event_id_for(a, r.value) for a in alert_ids} for r in ROLES}
        if self.outage is not None:
            self._wait("the outage to end", self._outage_over, self.plan.outage_s + 60)
        guard = self.config.deadline_s
        failing = [Role.FAILING, Role.SLOW] if self.faults else []
        for role in ROLES:
            if role in failing:
                check = partial(self._all_dead_lettered, role, want[role])
                self._wait(f"{role.value}: every event id dead-lettered", check, guard)
            else:
                check = partial(self._all_received, role, want[role], False)
                self._wait(f"{role.value}: every event id delivered", check, guard)
        control_want = {e.name: {event_id_for(a, e.name) for a in alert_ids} for e in self.controls}
        for endpoint in self.controls:
            check = partial(self._received, endpoint, control_want[endpoint.name])
            self._wait(f"{endpoint.name}: every event id delivered", check, guard)
        mailed = partial(self._all_mailed_or_dead, set(alert_ids))
        self._wait("notifier: every alert mailed or dead-lettered", mailed, guard)
        dead = {r: webhook_dead_letters(self.settings, r.value) for r in failing}
        redriven: dict[Role, int] = {}
        log = self.workdir / "redrive.log"
        for role in failing:
            self.endpoints[role].fix()
            redriven[role] = redrive(self.settings, role.value, log)
            self.say(f"[{self.name}] {role.value} fixed; fraud dlq redrive: {redriven[role]}")
        notifier_dead = notifier_dead_letters(self.settings)
        mailed_before = len(self.smtp.alert_ids)
        notifier_redriven: int | None = None
        if self.faults:  # SMTP is up again since the outage ended
            notifier_redriven = redrive_notifier(self.settings, self.notifier_config, log)
            self.say(f"[{self.name}] fraud dlq redrive --sink notifier: {notifier_redriven}")
        for role in failing:
            check = partial(self._all_received, role, {d.event_id for d in dead[role]}, True)
            self._wait(f"{role.value}: every dead letter re-delivered", check, guard)
        remailed = partial(self._all_remailed, set(notifier_dead), mailed_before)
        self._wait("notifier: every dead letter re-mailed", remailed, guard)
        time.sleep(SETTLE_S)  # quiet time, for late repeats to show
        for role in failing:
            again = redrive(self.settings, role.value, log)
            if again:
                self.notes.append(f"{role.value}: a second redrive re-sent {again} letters")
        if self.faults:
            again = redrive_notifier(self.settings, self.notifier_config, log)
            if again:
                self.notes.append(f"notifier: a second redrive re-sent {again} letters")
        accounts = []
        for role in ROLES:
            receipts, before = self.endpoints[role].snapshot()
            accounts.append(account_endpoint(
                role.value, role, want[role], receipts.event_ids[:before],
                receipts.latencies_ms[:before], dead.get(role, []), redriven.get(role),
                receipts.event_ids[before:],
            ))  # fmt: skip
            if receipts.rejected:
                self.notes.append(f"{role.value}: {receipts.rejected} bad signatures")
            if role in failing:
                self.notes.append(f"{role.value}: {receipts.errors} HTTP 500 answers, "
                                  f"{receipts.late} answered after the timeout")  # fmt: skip
        for endpoint in self.controls:
            receipts, _ = endpoint.snapshot()
            accounts.append(account_endpoint(
                endpoint.name, Role.CONTROL, control_want[endpoint.name], receipts.event_ids,
                receipts.latencies_ms, webhook_dead_letters(self.settings, endpoint.name),
            ))  # fmt: skip
        if self.outage is not None and self.outage.began_s and self.outage.ended_s:
            self.notes.append(
                f"outage {self.outage.ended_s - self.outage.began_s:.1f} s from the first alert"
            )
        mails = self.smtp.alert_ids
        return RunOutcome(
            accounts, self.run.transactions, len(decided),
            len(alert_ids), flagged, mails[:mailed_before], notifier_dead, alert_ids, self.notes,
            notifier_redriven, mails[mailed_before:],
        )  # fmt: skip

    def close(self) -> None:
        parts: list[Callable[[], object]] = []
        if self.outage is not None:
            parts.append(self.outage.close)
        parts.append(self.run.close)
        parts.extend(s.close for s in self.sinks)
        parts.extend(e.close for e in [*self.endpoints.values(), *self.controls])
        parts.append(self.smtp.stop)
        for part in parts:
            with contextlib.suppress(Exception):
                part()


def sink_row(faulty: RunOutcome, clean: RunOutcome | None, config: SinkConfig,
             sent: int) -> SinkRow:  # fmt: skip
    """The row of scenario 5 from the run with faults and the clean run (pure)."""
    plan = config.plan
    row = SinkRow(
        "sinks",
        f"webhooks: healthy, down {plan.outage_s:g} s then up, HTTP 500, slow ({plan.slow_s:g} s "
        f"answers, {plan.timeout_s:g} s timeout); SMTP down {plan.outage_s:g} s then up",
        plan.outage_s, faulty.alerts, faulty.flagged, sent, faulty.decided, faulty.accounts,
        account_notifier(faulty.alert_ids, faulty.notifier_mailed, faulty.notifier_dead,
                         faulty.notifier_redriven, faulty.notifier_remailed),
        max_latency_ratio=config.max_latency_ratio,
    )  # fmt: skip
    row.notes.extend(faulty.notes)
    if clean is not None:
        healthy = next(a for a in clean.accounts if a.role == Role.HEALTHY.value)
        row.clean_latency = healthy.latency
        missed = [a.endpoint for a in clean.accounts if not a.once]
        row.notes.append(
            f"clean run: {clean.alerts:,} alerts, every endpoint delivered exactly once"
            if not missed
            else f"clean run: not exactly once at {missed}"
        )
        row.notes.extend(f"clean run: {n}" for n in clean.notes)
    row.notes.append(f"retry delays {plan.delays}, breaker reset {plan.breaker_reset_s:g} s")
    return row


def run_sinks(cluster: Cluster, path: Path, sent: int, workdir: Path, seed: int,
              config: SinkConfig, say: Say) -> SinkRow:  # fmt: skip
    """The clean run (when asked) and the run with faults; errors end in the row."""
    outcomes: dict[bool, RunOutcome] = {}
    for faults in ([False] if config.compare_clean else []) + [True]:
        run = SinkRun(cluster, path, sent, workdir / ("sinks" if faults else "sinks-clean"),
                      seed, config, say, faults)  # fmt: skip
        try:
            outcomes[faults] = run.execute()
        except HarnessError as exc:
            row = SinkRow("sinks", "alert sinks", config.plan.outage_s, 0, 0, sent, 0)
            row.error = str(exc)
            return row
        finally:
            run.close()
    return sink_row(outcomes[True], outcomes.get(False), config, sent)
