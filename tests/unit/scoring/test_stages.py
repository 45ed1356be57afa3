"""The two stages in memory, equal to the batch reference from the definitions."""

from __future__ import annotations

import numpy as np
import pytest

from fraud.contracts.records import RawRecord
from fraud.contracts.units import ALL_FEATURES, DAY_MS
from fraud.scoring.customer_stage import CustomerStage
from fraud.scoring.policy import load_policy
from fraud.scoring.terminal_stage import TerminalStage
from fraud.settings import Settings
from fraud.testing import FakeClock
from fraud.tools.simulate import Simulated, SimulationConfig, simulate
from fraud.v1.decision_pb2 import Decision
from fraud.v1.label_pb2 import Label
from fraud.v1.transaction_pb2 import Transaction
from fraud.windows.store import InMemoryStore
from tests.batch_reference import batch_features


def transactions(sim: Simulated) -> list[Transaction]:
    out = []
    for i in range(len(sim)):
        tx = Transaction(
            transaction_id=str(sim.transaction_id[i]),
            customer_id=str(sim.customer_id[i]),
            terminal_id=str(sim.terminal_id[i]),
            amount_minor=int(sim.amount_cents[i]),
            currency="EUR",
            event_time_ms=int(sim.event_time_ms[i]),
        )
        if sim.lat is not None and sim.lon is not None:
            tx.latitude = float(sim.lat[i])
            tx.longitude = float(sim.lon[i])
        out.append(tx)
    return out


def run_stages(sim: Simulated, batch: int, delay_days: int = 7) -> list[Decision]:
    """Labels become available when event time reaches tx time + delay; before each batch of
    transactions, every label due by the batch's last event time is applied (early is
    harmless: a label only counts for transactions at or after its own time)."""
    clock = FakeClock(now_ms=int(sim.event_time_ms.max()) + DAY_MS)
    customers = CustomerStage(InMemoryStore(), clock)
    policy = load_policy(Settings().rules_path)
    terminals = TerminalStage(InMemoryStore(), clock, policy)
    txs = transactions(sim)
    labels = sorted(
        (
            Label(
                transaction_id=tx.transaction_id,
                customer_id=tx.customer_id,
                terminal_id=tx.terminal_id,
                fraud=bool(sim.fraud[int(tx.transaction_id)]),
                transaction_time_ms=tx.event_time_ms,
                event_time_ms=tx.event_time_ms + delay_days * DAY_MS,
            )
            for tx in txs
        ),
        key=lambda lab: lab.event_time_ms,
    )
    decisions: list[Decision] = []
    next_label = 0
    for start in range(0, len(txs), batch):
        chunk = txs[start : start + batch]
        due_end = next_label
        while due_end < len(labels) and labels[due_end].event_time_ms <= chunk[-1].event_time_ms:
            due_end += 1
        applied = terminals.apply_labels(
            [RawRecord(lab.terminal_id.encode(), lab.SerializeToString(), "labels",
                       hash(lab.terminal_id) % 3, k, 0)
             for k, lab in enumerate(labels[next_label:due_end], start=next_label)]
        )  # fmt: skip
        assert not applied.dead_letters
        next_label = due_end
        records = [
            RawRecord(tx.customer_id.encode(), tx.SerializeToString(), "transactions",
                      hash(tx.customer_id) % 3, start + k, 0)
            for k, tx in enumerate(chunk)
        ]  # fmt: skip
        stage_c = customers.process(records)
        assert not stage_c.dead_letters
        stage_t = terminals.process(
            [RawRecord(e.transaction.terminal_id.encode(), e.SerializeToString(), "by-terminal",
                       hash(e.transaction.terminal_id) % 3, k, 0)
             for k, e in enumerate(stage_c.enriched)]
        )  # fmt: skip
        assert not stage_t.dead_letters
        decisions.extend(stage_t.decisions)
    return decisions


@pytest.mark.parametrize("batch", [1, 97, 1000])
def test_streaming_features_equal_batch_reference(batch: int) -> None:
    sim = simulate(
        SimulationConfig(n_customers=40, n_terminals=80, n_days=50, seed=5, with_coordinates=True)
    )
    want = batch_features(sim)
    decisions = run_stages(sim, batch)
    assert len(decisions) == len(sim)
    got = np.array(
        [[d.features[name] for name in ALL_FEATURES] for d in
         sorted(decisions, key=lambda d: int(d.transaction_id))]
    )  # fmt: skip
    for j, name in enumerate(ALL_FEATURES):
        np.testing.assert_allclose(got[:, j], want[:, j], rtol=0, atol=1e-9, err_msg=name)
    risky = want[:, ALL_FEATURES.index("terminal_risk_7d")] > 0
    assert risky.any(), "the data must exercise terminal risk"
