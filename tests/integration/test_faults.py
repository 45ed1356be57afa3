"""A small fault suite on a 3-node Kafka cluster: SIGKILLs and a graceful restart of one of two
workers during a replay must lose and repeat no decision, and change no feature of a customer
window, against a clean run.

Terminal features are left out of the last check: a SIGKILLed worker's last "caught up" source
marks still count for up to 1.5 s at the other worker (fraud/worker/source_marks.py), which at
this replay's pace (about 2 event days a second) is more than the terminal windows' day of
allowed lateness, so the other worker's terminal rows can be decided ahead of what piles up on
the dead worker's partitions. A graceful stop sends finite marks first (docs/faults.md). A
replay after a crash that double-counted input would change the customer windows too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fraud.broker.kafka import unavailable_reason
from fraud.tools.faults.plan import ci_scenario
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


@pytest.mark.timeout(420)
def test_sigkills_and_a_graceful_restart_lose_repeat_and_change_no_customer_window(
    tmp_path: Path, java: None
) -> None:
    suite = Suite(SuiteConfig(transactions=2000, seed=0, workdir=tmp_path, stall_s=30.0), say=print)
    try:
        suite.start()
        brokers = suite.cluster.kafka.pids
        suite.run_clean()
        row = suite.run(ci_scenario(seed=0, kills=3))
    finally:
        suite.close()
    assert suite.worker_pids
    assert not any(pid_alive(pid) for pid in [*brokers, *suite.worker_pids]), (
        "processes left behind"
    )
    assert row.error is None, row.error
    c = row.comparison
    assert c is not None
    assert c.read >= c.sent
    assert (c.missing, c.duplicated, c.unexpected) == (0, 0, 0), row.notes
    customer_side = {
        feature: n
        for feature, n in c.differing_by_feature.items()
        if not feature.startswith("terminal_") and feature != "action"
    }
    assert customer_side == {}, row.notes
