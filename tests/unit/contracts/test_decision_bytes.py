"""fraud.contracts.decision_bytes against the protobuf API's own encoding and the per-row twins."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fraud.contracts.decision_bytes import FeatureMapEncoder, ModelReasonEncoder, top_reason_indexes
from fraud.contracts.units import ALL_FEATURES
from fraud.model.scoring import top_reasons
from fraud.model.table import ModelTable
from fraud.v1.decision_pb2 import Decision, Reason


def _awkward_features(rng: np.random.Generator, n: int, f: int) -> np.ndarray:
    x = rng.normal(0, 1e6, size=(n, f))
    x[rng.random((n, f)) < 0.2] = 0.0
    x[rng.random((n, f)) < 0.05] = np.inf
    x[rng.random((n, f)) < 0.05] = -np.inf
    x[rng.random((n, f)) < 0.05] = np.nan
    x[0, :] = 0.0  # a row of defaults, which protobuf itself would omit
    return x


def test_feature_map_decodes_to_every_value() -> None:
    rng = np.random.default_rng(7)
    x = _awkward_features(rng, 200, len(ALL_FEATURES))
    encoded = FeatureMapEncoder(ALL_FEATURES).encode(x)
    assert len(encoded) == 200
    for row, data in zip(x, encoded, strict=True):
        got = Decision.FromString(data).features
        assert set(got) == set(ALL_FEATURES)
        for name, want in zip(ALL_FEATURES, row.tolist(), strict=True):
            assert got[name] == want or (math.isnan(want) and math.isnan(got[name]))


def test_feature_map_accepts_long_names_and_refuses_wrong_width() -> None:
    names = ["a" * 300, "b", "é_unicode"]  # a key over 127 bytes needs a 2-byte length varint
    x = np.array([[1.5, -2.0, 3.25]])
    encoder = FeatureMapEncoder(names)
    assert dict(Decision.FromString(encoder.encode(x)[0]).features) == dict(
        zip(names, [1.5, -2.0, 3.25], strict=True)
    )
    with pytest.raises(ValueError, match="expected 3 feature columns"):
        encoder.encode(np.zeros((1, 2)))


def test_parts_concatenate_into_the_protobuf_api_message() -> None:
    rng = np.random.default_rng(3)
    names = [f"f{j}" for j in range(6)]
    values = rng.normal(size=(50, 6))
    contrib = rng.normal(size=(50, 6))
    top = top_reason_indexes(contrib, 3)
    features = FeatureMapEncoder(names).encode(values)
    reasons = ModelReasonEncoder(names).encode(values, contrib, top)
    for i in range(50):
        head = Decision(transaction_id=f"t{i}", action=2, score=0.25, rules_fired=["R1"])
        head.reasons.append(Reason(code="RULE:R1"))
        want = Decision()
        want.CopyFrom(head)
        want.features.update(dict(zip(names, values[i].tolist(), strict=True)))
        for j in top[i]:
            if j >= 0:
                want.reasons.append(
                    Reason(
                        code="MODEL",
                        feature=names[j],
                        value=values[i, j],
                        contribution=contrib[i, j],
                    )
                )
        got = Decision.FromString(head.SerializeToString() + features[i] + reasons[i])
        assert got == want
        # rule reasons stay first, model reasons follow in contribution order
        assert got.reasons[0].code == "RULE:R1"


def test_top_reason_indexes_match_the_per_row_twin() -> None:
    rng = np.random.default_rng(11)
    f = 7
    table = ModelTable.__new__(ModelTable)  # only n_features and feature_names are read
    object.__setattr__(table, "feature_names", tuple(f"x{j}" for j in range(f)))
    contrib = rng.choice([-1.0, 0.0, 0.5, 0.5, 1.0, 2.0, np.nan, np.inf], size=(500, f))
    values = rng.normal(size=(500, f))
    for k in (0, 1, 3, f, f + 2):
        top = top_reason_indexes(contrib, k)
        for i in range(500):
            want = [name for name, _, _ in top_reasons(table, values[i], contrib[i], k=k)]
            assert [table.feature_names[j] for j in top[i] if j >= 0] == want
            assert all(j == -1 for j in top[i][len(want) :])
