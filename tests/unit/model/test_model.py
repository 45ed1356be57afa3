"""Model tables: export from scikit-learn, numba scoring against sklearn and the slow twin,
contributions, the JSON file format and its validation, reason codes."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fraud.kernels.model import score_trees
from fraud.model import (
    ModelTable,
    ModelTableError,
    check_features,
    load_model_table,
    save_model_table,
    score,
    scoring,
    top_reasons,
    warmup,
)
from fraud.model.export import from_gradient_boosting, from_logistic
from fraud.model.table import from_json, to_json
from fraud.reference.model import reference_score

F64 = npt.NDArray[np.float64]
NAMES = ("amount", "nb_tx_1d", "avg_amount_1d", "nb_tx_7d", "avg_amount_7d", "merchant_risk")
N_ROWS = 2000
NAN_COL = 3


def synthetic(seed: int, n: int = N_ROWS) -> tuple[F64, npt.NDArray[np.int64]]:
    """6 features, a nonlinear label; column NAN_COL is missing for 25% of rows, and missing
    rows are more often positive (so the trees learn splits on NaN)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(NAMES)))
    x[:, 0] = rng.lognormal(3.0, 1.0, size=n)
    z = 0.02 * x[:, 0] + x[:, 1] - 0.8 * x[:, 2] + 0.5 * x[:, 4] ** 2 + rng.normal(size=n)
    y = (z > 1.5).astype(np.int64)
    missing = rng.random(n) < 0.25
    x[missing, NAN_COL] = np.nan
    y[missing & (rng.random(n) < 0.5)] = 1
    return x, y


@pytest.fixture(scope="module")
def data() -> tuple[F64, npt.NDArray[np.int64]]:
    return synthetic(0)


@pytest.fixture(scope="module")
def complete(data: tuple[F64, npt.NDArray[np.int64]]) -> F64:
    """The features without NaN (for logistic models)."""
    x = data[0].copy()
    x[np.isnan(x)] = 0.0
    return x


@pytest.fixture(scope="module")
def hgb(data: tuple[F64, npt.NDArray[np.int64]]) -> HistGradientBoostingClassifier:
    x, y = data
    return HistGradientBoostingClassifier(max_iter=40, max_depth=3, random_state=0).fit(x, y)


@pytest.fixture(scope="module")
def trees(hgb: HistGradientBoostingClassifier) -> ModelTable:
    return from_gradient_boosting(hgb, NAMES)


@pytest.fixture(scope="module")
def pipeline(data: tuple[F64, npt.NDArray[np.int64]], complete: F64) -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(complete, data[1])


@pytest.fixture(scope="module")
def logistic(pipeline: Any) -> ModelTable:
    return from_logistic(pipeline, NAMES)


def test_scoring_path_does_not_import_sklearn() -> None:
    code = (
        "import sys, fraud.model, fraud.model.scoring, fraud.model.export, fraud.kernels.model\n"
        "assert not [m for m in sys.modules if m.startswith('sklearn')], 'sklearn imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# Logistic


def test_logistic_with_scaler_matches_sklearn(
    pipeline: Any, logistic: ModelTable, complete: F64
) -> None:
    scores, contrib = score(logistic, complete)
    np.testing.assert_allclose(scores, pipeline.predict_proba(complete)[:, 1], rtol=0, atol=1e-9)
    raw = pipeline.decision_function(complete)
    np.testing.assert_allclose(contrib.sum(axis=1), raw - logistic.expected_value, atol=1e-9)
    # the base is the scaler's mean: the standardized training average is 0
    assert logistic.expected_value == logistic.scalars["intercept"]


def test_logistic_without_scaler_matches_sklearn(
    data: tuple[F64, npt.NDArray[np.int64]], complete: F64
) -> None:
    model = LogisticRegression(max_iter=2000).fit(complete, data[1])
    with pytest.raises(ValueError, match="feature_means"):
        from_logistic(model, NAMES)
    means = complete.mean(axis=0)
    table = from_logistic(model, NAMES, feature_means=means)
    scores, contrib = score(table, complete)
    np.testing.assert_allclose(scores, model.predict_proba(complete)[:, 1], rtol=0, atol=1e-9)
    raw = model.decision_function(complete)
    np.testing.assert_allclose(contrib.sum(axis=1), raw - table.expected_value, atol=1e-9)
    # expected value = the raw score at the training average
    assert table.expected_value == pytest.approx(model.decision_function(means[None, :])[0])


def test_logistic_kernel_matches_reference(logistic: ModelTable, complete: F64) -> None:
    rows = complete[:300]
    scores, contrib = score(logistic, rows)
    expected = reference_score(logistic, rows.tolist())
    np.testing.assert_allclose(scores, [s for s, _, _ in expected], rtol=0, atol=1e-12)
    ref_contrib = [[c[name] for name in NAMES] for _, _, c in expected]
    np.testing.assert_allclose(contrib, ref_contrib, rtol=0, atol=1e-12)


def test_logistic_rejects_nan_and_bad_shapes(logistic: ModelTable, complete: F64) -> None:
    rows = complete[:5].copy()
    rows[2, 1] = np.nan
    with pytest.raises(ValueError, match="nb_tx_1d"):
        score(logistic, rows)
    with pytest.raises(ValueError, match="shape"):
        score(logistic, complete[:, :5])
    with pytest.raises(ValueError, match="shape"):
        score(logistic, complete[0])


def test_export_rejects_wrong_estimators(
    hgb: HistGradientBoostingClassifier, pipeline: Any
) -> None:
    with pytest.raises(TypeError, match="LogisticRegression"):
        from_logistic(hgb, NAMES)
    with pytest.raises(TypeError, match="HistGradientBoostingClassifier"):
        from_gradient_boosting(pipeline, NAMES)
    with pytest.raises(ValueError, match="6 features"):
        from_gradient_boosting(hgb, NAMES[:5])


# Trees


def test_trees_match_sklearn_with_nan(
    hgb: HistGradientBoostingClassifier, trees: ModelTable
) -> None:
    x, _ = synthetic(1, 3000)
    # NaN where training had none too: sklearn sends it the way of missing_go_to_left
    x[np.random.default_rng(2).random(x.shape) < 0.05] = np.nan
    x[5, 0] = np.inf
    x[6, 1] = -np.inf
    scores, contrib = score(trees, x)
    np.testing.assert_allclose(scores, hgb.predict_proba(x)[:, 1], rtol=0, atol=1e-9)
    raw = hgb.decision_function(x)
    np.testing.assert_allclose(contrib.sum(axis=1), raw - trees.expected_value, atol=1e-9)


def test_trees_export_shape(trees: ModelTable, hgb: HistGradientBoostingClassifier) -> None:
    a = trees.arrays
    assert trees.n_trees == hgb.n_iter_
    assert a["feature"].dtype == np.int32 and a["left"].dtype == np.int32
    assert a["value"].dtype == np.float64
    assert np.isinf(a["threshold"]).any(), "expected splits on NaN (threshold +inf)"
    assert a["missing_left"].any() and not a["missing_left"].all()
    leaf = a["feature"] == -1
    assert (a["value"][~leaf] == 0).all()
    assert trees.meta["source"] == "sklearn HistGradientBoostingClassifier"


def test_trees_kernel_matches_reference(trees: ModelTable) -> None:
    x, _ = synthetic(3, 400)
    x[::7, 0] = np.nan
    scores, contrib = score(trees, x)
    expected = reference_score(trees, x.tolist())
    np.testing.assert_allclose(scores, [s for s, _, _ in expected], rtol=0, atol=1e-12)
    ref_contrib = [[c[name] for name in NAMES] for _, _, c in expected]
    np.testing.assert_allclose(contrib, ref_contrib, rtol=0, atol=1e-12)
    ref_raw = np.array([r for _, r, _ in expected])
    np.testing.assert_allclose(contrib.sum(axis=1), ref_raw - trees.expected_value, atol=1e-9)


def hand_tree() -> ModelTable:
    """One tree: amount <= 100 ? (leaf -1.0, cover 3) : (nb_tx_1d <= 2 ? 0.5 (1) : 2.0 (1)),
    NaN amount goes right."""
    value = [0.0, -1.0, 0.0, 0.5, 2.0]
    cover = [5.0, 3.0, 2.0, 1.0, 1.0]
    mean = [(3 * -1.0 + 2 * 1.25) / 5, -1.0, 1.25, 0.5, 2.0]
    return ModelTable(
        kind="trees",
        feature_names=("amount", "nb_tx_1d"),
        scalars={"init": -0.25},
        arrays={
            "feature": np.array([0, -1, 1, -1, -1]),
            "threshold": np.array([100.0, 0.0, 2.0, 0.0, 0.0]),
            "missing_left": np.array([0, 0, 1, 0, 0]),
            "left": np.array([1, -1, 3, -1, -1]),
            "right": np.array([2, -1, 4, -1, -1]),
            "value": np.array(value),
            "cover": np.array(cover),
            "mean_value": np.array(mean),
            "tree_offsets": np.array([0, 5]),
        },
    )


def test_trees_hand_computed_paths_and_contributions() -> None:
    table = hand_tree()
    root = -0.1
    assert table.expected_value == pytest.approx(-0.25 + root)
    x = np.array([[50.0, 9.0], [100.0, 9.0], [150.0, 2.0], [np.nan, 3.0], [np.nan, np.nan]])
    scores, contrib = score(table, x)
    raw = np.array([-1.0, -1.0, 0.5, 2.0, 0.5]) - 0.25
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-raw)), atol=1e-15)
    np.testing.assert_allclose(
        contrib,
        [
            [-1.0 - root, 0.0],
            [-1.0 - root, 0.0],
            [1.25 - root, 0.5 - 1.25],
            [1.25 - root, 2.0 - 1.25],
            [1.25 - root, 0.5 - 1.25],
        ],
        atol=1e-15,
    )


def random_trees(seed: int, n_trees: int, max_depth: int, n_features: int = 4) -> ModelTable:
    """Random trees (unbalanced; some single leaves) whose thresholds come from a small grid, so
    that feature values can equal them."""
    rng = np.random.default_rng(seed)
    feature: list[int] = []
    threshold: list[float] = []
    missing_left: list[bool] = []
    left: list[int] = []
    right: list[int] = []
    value: list[float] = []
    cover: list[float] = []
    offsets = [0]

    def grow(depth: int) -> int:
        node = len(feature)
        feature.append(-1)
        threshold.append(0.0)
        missing_left.append(False)
        left.append(-1)
        right.append(-1)
        value.append(0.0)
        cover.append(float(rng.integers(1, 50)))
        if depth < max_depth and rng.random() < 0.8:
            feature[node] = int(rng.integers(n_features))
            threshold[node] = float(rng.choice([-1.0, 0.0, 0.5, 1.0, np.inf]))
            missing_left[node] = bool(rng.random() < 0.5)
            left[node] = grow(depth + 1)
            right[node] = grow(depth + 1)
            cover[node] = cover[left[node]] + cover[right[node]]
        else:
            value[node] = float(rng.normal())
        return node

    for _ in range(n_trees):
        grow(0)
        offsets.append(len(feature))
    mean = np.array(value)
    for node in range(len(feature) - 1, -1, -1):  # children after parents: bottom-up
        if feature[node] >= 0:
            cl, cr = cover[left[node]], cover[right[node]]
            mean[node] = (cl * mean[left[node]] + cr * mean[right[node]]) / (cl + cr)
    return ModelTable(
        kind="trees",
        feature_names=tuple(f"f{j}" for j in range(n_features)),
        scalars={"init": float(rng.normal())},
        arrays={
            "feature": np.array(feature),
            "threshold": np.array(threshold),
            "missing_left": np.array(missing_left),
            "left": np.array(left),
            "right": np.array(right),
            "value": np.array(value),
            "cover": np.array(cover),
            "mean_value": mean,
            "tree_offsets": np.array(offsets),
        },
    )


def walk_trees(table: ModelTable, x: F64) -> tuple[F64, F64]:
    """``score_trees``, the kernel that walks each row down each tree as stored."""
    a = table.arrays
    out_score = np.empty(x.shape[0])
    out_contrib = np.empty(x.shape)
    score_trees(
        np.ascontiguousarray(x), a["feature"], a["threshold"], a["missing_left"], a["left"],
        a["right"], a["value"], a["mean_value"], a["tree_offsets"], table.scalars["init"],
        out_score, out_contrib,
    )  # fmt: skip
    return out_score, out_contrib


def grid_rows(seed: int, n: int, n_features: int) -> F64:
    """Values on the thresholds' grid (ties), between them, NaN and infinities."""
    rng = np.random.default_rng(seed)
    grid = np.array([-1.0, 0.0, 0.5, 1.0, -0.5, 0.25, 2.0, np.nan, np.inf, -np.inf, -0.0])
    x: F64 = rng.choice(grid, size=(n, n_features))
    return x


@pytest.mark.parametrize("max_depth", [0, 1, 3, scoring.MAX_BLOCKED_DEPTH])
def test_blocked_tree_kernel_is_bit_for_bit_the_walking_one(max_depth: int) -> None:
    table = random_trees(max_depth, n_trees=30, max_depth=max_depth)
    assert scoring._blocked_layout(table) is not None
    for n in (0, 1, 127, 128, 129, 300):  # around the block size
        x = grid_rows(n, n, table.n_features)
        scores, contrib = score(table, x)
        expected_scores, expected_contrib = walk_trees(table, x)
        assert scores.tobytes() == expected_scores.tobytes()
        assert contrib.tobytes() == expected_contrib.tobytes()
    expected = reference_score(table, x.tolist())
    np.testing.assert_allclose(scores, [s for s, _, _ in expected], rtol=0, atol=1e-12)


def test_blocked_tree_kernel_on_exported_trees(trees: ModelTable) -> None:
    x, _ = synthetic(4, 1000)
    x[np.random.default_rng(5).random(x.shape) < 0.1] = np.nan
    # one row per split node with the node's feature exactly at its threshold
    a = trees.arrays
    split = np.flatnonzero(a["feature"] >= 0)
    x[np.arange(split.size), a["feature"][split]] = a["threshold"][split]
    scores, contrib = score(trees, x)
    expected_scores, expected_contrib = walk_trees(trees, x)
    assert scores.tobytes() == expected_scores.tobytes()
    assert contrib.tobytes() == expected_contrib.tobytes()


def test_deep_trees_are_walked() -> None:
    table = random_trees(7, n_trees=20, max_depth=scoring.MAX_BLOCKED_DEPTH + 3)
    if scoring._blocked_layout(table) is not None:  # pragma: no cover - depends on the seed
        pytest.fail("expected a tree deeper than MAX_BLOCKED_DEPTH")
    x = grid_rows(8, 200, table.n_features)
    scores, contrib = score(table, x)
    expected = reference_score(table, x.tolist())
    np.testing.assert_allclose(scores, [s for s, _, _ in expected], rtol=0, atol=1e-12)
    ref_contrib = [[c[name] for name in table.feature_names] for _, _, c in expected]
    np.testing.assert_allclose(contrib, ref_contrib, rtol=0, atol=1e-12)


# File format


@pytest.mark.parametrize("which", ["logistic", "trees"])
def test_save_load_round_trip_is_exact(
    which: str, logistic: ModelTable, trees: ModelTable, tmp_path: Path
) -> None:
    table = logistic if which == "logistic" else trees
    path = save_model_table(table, tmp_path / f"{which}.json")
    loaded = load_model_table(path)
    assert loaded.same_content(table)
    assert loaded.version == table.version and loaded.version.startswith("sha256:")
    assert len(loaded.version) == len("sha256:") + 12
    assert dict(loaded.meta) == dict(table.meta)
    assert to_json(loaded) == path.read_text(encoding="utf-8")
    for name, arr in loaded.arrays.items():
        assert arr.dtype == table.arrays[name].dtype
        assert not arr.flags.writeable
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["format"] == "fraud.model_table" and doc["kind"] == which
    assert doc["feature_names"] == list(NAMES)
    if which == "trees":
        assert "inf" in doc["arrays"]["threshold"]
    x, _ = synthetic(4, 200)
    if which == "logistic":
        x[np.isnan(x)] = 0.0
    np.testing.assert_array_equal(score(loaded, x)[0], score(table, x)[0])


def test_pickle_round_trip(trees: ModelTable) -> None:
    copy = pickle.loads(pickle.dumps(trees))
    assert copy.same_content(trees) and copy.version == trees.version


def test_custom_version_and_content_hash() -> None:
    table = hand_tree()
    named = ModelTable(
        kind=table.kind,
        feature_names=table.feature_names,
        scalars=table.scalars,
        arrays=table.arrays,
        version="gbm-2026-11-01",
    )
    assert named.version == "gbm-2026-11-01"
    changed = dict(table.arrays)
    changed["threshold"] = np.array([101.0, 0.0, 2.0, 0.0, 0.0])
    other = ModelTable(kind="trees", feature_names=table.feature_names, scalars=table.scalars,
                       arrays=changed)  # fmt: skip
    assert other.version != table.version


Edit = Callable[[dict[str, Any]], None]


def _set(path: tuple[str, ...], value: Any) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def _set_item(array: str, index: int, value: Any) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        doc["arrays"][array][index] = value

    return edit


def _drop_version(doc: dict[str, Any]) -> None:
    doc["version"] = ""


TREE_ERRORS: list[tuple[str, list[Edit], str]] = [
    ("wrong kind", [_set(("kind",), "forest")], "unknown model kind 'forest'"),
    ("wrong format", [_set(("format",), "other")], "not a model table"),
    ("future format", [_set(("format_version",), 2)], "unsupported format_version 2"),
    (
        "length mismatch",
        [_set(("arrays", "value"), [0.0, -1.0, 0.0, 0.5]), _drop_version],
        "'value' has length 4, expected 5",
    ),
    (
        "missing array",
        [lambda d: d["arrays"].pop("cover"), _drop_version],
        r"missing \['cover'\]",
    ),
    ("child out of range", [_set_item("right", 2, 7), _drop_version], "out of range"),
    ("cycle", [_set_item("right", 2, 0), _drop_version], "out of range"),
    (
        "shared child",
        [_set_item("right", 2, 3), _drop_version],
        "node 3 has 2 parents",
    ),
    ("leaf with a child", [_set_item("left", 1, 3), _drop_version], "have children"),
    (
        "split without feature",
        [_set_item("feature", 2, 5), _drop_version],
        r"feature index outside \[0, 2\)",
    ),
    ("leaf mean", [_set_item("mean_value", 3, 0.75), _drop_version], "mean_value != value"),
    (
        "split mean",
        [_set_item("mean_value", 0, 0.5), _drop_version],
        "cover-weighted mean",
    ),
    ("bad offsets", [_set(("arrays", "tree_offsets"), [0, 4]), _drop_version], "tree_offsets"),
    ("non-finite threshold", [_set_item("threshold", 0, "-inf")], "holds strings"),
    ("edited content", [_set_item("threshold", 0, 101.0)], "does not match the content"),
    ("float in int array", [_set_item("left", 0, 1.5), _drop_version], "must hold integers"),
    ("duplicate features", [_set(("feature_names",), ["a", "a"])], "duplicate feature names"),
    ("missing scalar", [_set(("scalars",), {}), _drop_version], "needs scalars"),
]


@pytest.mark.parametrize(("edits", "message"), [(e, m) for _, e, m in TREE_ERRORS],
                         ids=[name for name, _, _ in TREE_ERRORS])  # fmt: skip
def test_load_rejects_bad_tree_tables(edits: list[Edit], message: str, tmp_path: Path) -> None:
    doc = json.loads(to_json(hand_tree()))
    for edit in edits:
        edit(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ModelTableError, match=message):
        load_model_table(path)


def test_load_rejects_non_json_and_non_finite(logistic: ModelTable, tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelTableError, match="not valid JSON"):
        load_model_table(path)
    path.write_text(to_json(logistic).replace('"coef": [', '"coef": [NaN, ', 1), encoding="utf-8")
    with pytest.raises(ModelTableError, match="non-finite number NaN"):
        load_model_table(path)
    with pytest.raises(ModelTableError, match="cannot read"):
        load_model_table(tmp_path / "absent.json")
    doc = json.loads(to_json(logistic))
    doc["arrays"]["scale"][0] = 0.0
    doc["version"] = ""
    with pytest.raises(ModelTableError, match="scale must be > 0"):
        from_json(json.dumps(doc))
    doc = json.loads(to_json(logistic))
    doc["arrays"]["coef"].append(1.0)
    doc["version"] = ""
    with pytest.raises(ModelTableError, match="'coef' has length 7, expected 6"):
        from_json(json.dumps(doc))


def test_constructor_rejects_non_finite_arrays(logistic: ModelTable) -> None:
    arrays = dict(logistic.arrays)
    arrays["coef"] = np.where(np.arange(6) == 2, np.nan, arrays["coef"])
    with pytest.raises(ModelTableError, match="'coef' has non-finite values at \\[2\\]"):
        ModelTable("logistic", NAMES, logistic.scalars, arrays)
    with pytest.raises(ModelTableError, match="'intercept' is not finite"):
        ModelTable("logistic", NAMES, {"intercept": np.inf}, logistic.arrays)
    tree = hand_tree()
    arrays = dict(tree.arrays)
    arrays["threshold"] = np.array([np.nan, 0.0, 2.0, 0.0, 0.0])
    with pytest.raises(ModelTableError, match="'threshold' has NaN or -inf at nodes \\[0\\]"):
        ModelTable("trees", tree.feature_names, tree.scalars, arrays)


def test_check_features(trees: ModelTable) -> None:
    worker = ["merchant_risk", *NAMES[:5], "extra"]
    columns = check_features(trees, worker)
    assert [worker[j] for j in columns] == list(NAMES)
    np.testing.assert_array_equal(check_features(trees, NAMES), np.arange(6))
    with pytest.raises(ModelTableError, match=r"does not compute: \['merchant_risk'\]"):
        check_features(trees, NAMES[:5])


# Reasons


def test_top_reasons_orders_positive_contributions() -> None:
    names = ("a", "b", "c", "d", "e")
    table = ModelTable(
        kind="logistic",
        feature_names=names,
        scalars={"intercept": 0.0},
        arrays={
            "coef": np.array([1.0, -2.0, 0.5, 3.0, 1.0]),
            "mean": np.array([0.0] * 5),
            "scale": np.array([1.0] * 5),
            "base": np.array([1.0] * 5),
        },
    )
    row = np.array([[3.0, 0.0, 5.0, 1.0, 3.0]])
    _, contrib = score(table, row)
    # contributions: a 2, b 2, c 2, d 0, e 2 -> ties in feature order
    np.testing.assert_allclose(contrib[0], [2.0, 2.0, 2.0, 0.0, 2.0])
    assert [r[0] for r in top_reasons(table, row[0], contrib[0], k=3)] == ["a", "b", "c"]
    row = np.array([[2.0, 3.0, 9.0, 0.0, 4.0]])
    _, contrib = score(table, row)  # a 1, b -4, c 4, d -3, e 3
    assert top_reasons(table, row[0], contrib[0]) == [
        ("c", 9.0, 4.0),
        ("e", 4.0, 3.0),
        ("a", 2.0, 1.0),
    ]
    assert top_reasons(table, row[0], contrib[0], k=10) == top_reasons(table, row[0], contrib[0])
    assert top_reasons(table, row[0], contrib[0], k=1) == [("c", 9.0, 4.0)]
    assert top_reasons(table, row[0], -contrib[0], k=2) == [("b", 3.0, 4.0), ("d", 0.0, 3.0)]
    with pytest.raises(ValueError, match="5 values"):
        top_reasons(table, row[0][:4], contrib[0])


def test_top_reasons_on_trees(trees: ModelTable) -> None:
    x, _ = synthetic(5, 50)
    _, contrib = score(trees, x)
    for i in range(len(x)):
        reasons = top_reasons(trees, x[i], contrib[i])
        got = [c for _, _, c in reasons]
        assert got == sorted(got, reverse=True) and all(c > 0 for c in got)
        positive = sorted((c for c in contrib[i] if c > 0), reverse=True)[:3]
        assert got == positive
        for name, value, _ in reasons:
            j = NAMES.index(name)
            assert value == x[i, j] or (np.isnan(value) and np.isnan(x[i, j]))


def test_warmup_runs() -> None:
    warmup()
