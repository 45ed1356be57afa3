"""The faults of each scenario, as a seeded list of steps the harness carries out in order.

Pure: a plan says what to break and how long to wait first; ``fraud.tools.faults.harness``
does it. A step's delay counts from the moment the previous step's recovery is done (the
worker it restarted is ready, or the cluster answers), so a delay drawn at random lands
anywhere in a worker's life: in a batch, between batches, inside a checkpoint, during
recovery from the changelogs.
"""

from __future__ import annotations

import enum
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

SINKS = "sinks"  # scenario 5: run by the sink harness, not by fault steps


class Fault(enum.Enum):
    KILL_WORKER = "kill-worker"  # SIGKILL, restarted at once on the same data dir
    TERM_WORKER = "term-worker"  # SIGTERM, waited for, restarted on the same data dir
    ADD_WORKER = "add-worker"  # one more worker joins the group (rebalance)
    REMOVE_WORKER = "remove-worker"  # the last added worker leaves with SIGTERM (rebalance)
    KILL_LEADER = "kill-leader"  # SIGKILL the leader of transactions partition 0, restart
    KILL_CONTROLLER = "kill-controller"  # SIGKILL the active KRaft controller, restart
    RESTART_CLUSTER = "restart-cluster"  # stop every node, start them again


@dataclass(frozen=True, slots=True)
class Step:
    fault: Fault
    delay_s: float  # wait after the previous step's recovery
    worker: int = 0  # which worker, for the worker faults
    down_s: float = 0.0  # for broker faults: how long the node or cluster stays down


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    workers: int  # workers at the start
    steps: tuple[Step, ...]
    malformed: int = 0  # malformed messages mixed into the input


def ci_scenario(seed: int, kills: int = 3) -> Scenario:
    """The small version for CI: ``kills`` SIGKILLs of one of 2 workers, then one graceful
    restart."""
    rng = random.Random(seed)
    steps = [*sigkill_steps(rng, kills, 2, 4.0), Step(Fault.TERM_WORKER, rng.uniform(1.0, 4.0))]
    return Scenario("ci", f"{kills} SIGKILLs and one SIGTERM of one of 2 workers", 2, tuple(steps))


def sigkill_steps(rng: random.Random, kills: int, workers: int, max_delay_s: float) -> list[Step]:
    """``kills`` SIGKILLs of a random worker, each a uniform random delay in [0, max) after
    the previous restart was ready: a fifth of them within the first second (recovery, the
    first batches)."""
    steps = []
    for i in range(kills):
        top = 1.0 if i % 5 == 4 else max_delay_s
        steps.append(Step(Fault.KILL_WORKER, rng.uniform(0.0, top), worker=rng.randrange(workers)))
    return steps


def scenarios(
    seed: int, kills: int = 20, malformed: int = 1_000_000, max_delay_s: float = 6.0
) -> dict[str, Scenario]:
    """Every scenario of the suite, by name (seeded: the same seed gives the same plans)."""
    rng = random.Random(seed)
    d = max_delay_s

    def at() -> float:
        return rng.uniform(1.0, d)

    return {
        "steady": Scenario(
            "steady",
            "2 workers and no fault: the control (two workers against the clean run's one)",
            2,
            (),
        ),
        "sigkill": Scenario(
            "sigkill",
            f"{kills} SIGKILLs of one of 2 workers at random points, restarted on the same data",
            2,
            tuple(sigkill_steps(rng, kills, 2, d)),
        ),
        "sigterm": Scenario(
            "sigterm",
            "graceful stop (SIGTERM) and restart of one of 2 workers, 3 times",
            2,
            tuple(Step(Fault.TERM_WORKER, at(), worker=i % 2) for i in range(3)),
        ),
        "rebalance": Scenario(
            "rebalance",
            "a third worker added and removed mid-replay, twice",
            2,
            (
                Step(Fault.ADD_WORKER, at()),
                Step(Fault.REMOVE_WORKER, at()),
                Step(Fault.ADD_WORKER, at()),
                Step(Fault.REMOVE_WORKER, at()),
            ),
        ),
        "leader": Scenario(
            "leader",
            "SIGKILL of the broker leading transactions partition 0, restarted, twice",
            2,
            (Step(Fault.KILL_LEADER, at(), down_s=5.0), Step(Fault.KILL_LEADER, at(), down_s=5.0)),
        ),
        "controller": Scenario(
            "controller",
            "SIGKILL of the active KRaft controller, restarted",
            2,
            (Step(Fault.KILL_CONTROLLER, at(), down_s=5.0),),
        ),
        "cluster": Scenario(
            "cluster",
            "the whole cluster stopped (SIGTERM) and started again",
            2,
            (Step(Fault.RESTART_CLUSTER, at(), down_s=5.0),),
        ),
        "malformed": Scenario(
            "malformed",
            f"{malformed:,} malformed messages mixed into the input, 2 workers",
            2,
            (),
            malformed=malformed,
        ),
        SINKS: Scenario(
            SINKS,
            "alert sinks against real servers: webhook endpoints healthy, down then up, "
            "HTTP 500, slow; SMTP down then up",
            1,
            (),
        ),
    }


# The issue numbers its scenarios 1-5; 0 is the control.
GROUPS: dict[str, tuple[str, ...]] = {
    "0": ("steady",),
    "1": ("sigkill",),
    "2": ("sigterm", "rebalance"),
    "3": ("leader", "controller", "cluster"),
    "4": ("malformed",),
    "5": (SINKS,),
}


@dataclass(frozen=True)
class SinkPlan:
    """Scenario 5's faults and the webhook sink's schedule for them.

    The recovering endpoint and the SMTP server are down for ``outage_s`` from the first alert
    the healthy endpoint receives; the slow endpoint answers after ``slow_s``, past the
    subscription's ``timeout_s``. ``delays`` (the retry topics) and ``breaker_reset_s`` are
    scaled to the outage so that every delivery of the outage gets an attempt after the
    endpoint is back and its breaker has let a trial through (``covers_outage``), and the
    failing endpoints' deliveries are dead-lettered within minutes, not the production
    schedule's quarter-hour.
    """

    outage_s: float = 60.0
    slow_s: float = 5.0
    timeout_s: float = 2.0
    delays: tuple[float, ...] = (1.0, 10.0, 30.0, 120.0)
    breaker_reset_s: float = 15.0
    jitter: float = 0.2  # the sink's RetryPolicy default

    @property
    def covers_outage(self) -> bool:
        """The last attempt, at the earliest (all jitter down), comes after the outage and one
        breaker reset: a delivery made as the outage starts is still delivered."""
        return sum(self.delays) * (1 - self.jitter) > self.outage_s + self.breaker_reset_s

    @property
    def dead_letter_within_s(self) -> float:
        """The latest a delivery that fails every attempt is dead-lettered after its alert:
        the whole schedule, all jitter up, and a timeout per attempt."""
        attempts = len(self.delays) + 1
        return sum(self.delays) * (1 + self.jitter) + attempts * self.timeout_s


def sink_plan(outage_s: float = 60.0, slow_s: float = 5.0) -> SinkPlan:
    """The schedule for an outage of ``outage_s``: (1, o/6, o/2, 2o) s retries, o/4 reset."""
    if outage_s <= 0:
        raise ValueError(f"the outage must be positive: {outage_s}")
    if slow_s <= 0:
        raise ValueError(f"the slow answer must take time: {slow_s}")
    delays = (min(1.0, outage_s / 6), outage_s / 6, outage_s / 2, 2 * outage_s)
    plan = SinkPlan(
        outage_s=outage_s, slow_s=slow_s, timeout_s=min(2.0, slow_s / 2), delays=delays,
        breaker_reset_s=max(1.0, outage_s / 4),
    )  # fmt: skip
    if not plan.covers_outage:
        raise ValueError(f"an outage of {outage_s} s is shorter than the breaker's reset")
    return plan


def pick(names: Iterable[str], known: Iterable[str]) -> list[str]:
    """Scenario names from a mix of names and group numbers, in suite order, once each;
    ValueError names an unknown one."""
    order = list(known)
    wanted: set[str] = set()
    for name in names:
        name = name.strip()
        if not name:
            continue
        found = GROUPS.get(name, (name,))
        for one in found:
            if one not in order:
                raise ValueError(
                    f"unknown scenario {name!r}: choose from {', '.join(order)} or "
                    f"{', '.join(GROUPS)}"
                )
            wanted.add(one)
    return [n for n in order if n in wanted]


# "[RaftManager id=2] Completed transition to Leader(localVoterNode=..., epoch=5, ...)"
_LEADER = re.compile(r"\[RaftManager id=(\d+)\] Completed transition to Leader\(.*?\bepoch=(\d+)")


def active_controller(logs: Iterable[str]) -> int | None:
    """The KRaft node that last became quorum leader, from the nodes' server logs: the
    leader of the highest epoch (epochs only grow), or None if no log says."""
    best: tuple[int, int] | None = None
    for text in logs:
        for found in _LEADER.finditer(text):
            node, epoch = int(found.group(1)), int(found.group(2))
            if best is None or epoch > best[0]:
                best = (epoch, node)
    return None if best is None else best[1]
