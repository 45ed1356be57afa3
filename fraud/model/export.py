"""Build model tables from fitted scikit-learn estimators (training time only).

scikit-learn is imported inside the functions, so importing this module (or ``fraud.model``)
does not load it.

* ``from_logistic``: a binary ``LogisticRegression``, alone or as
  ``Pipeline([StandardScaler, LogisticRegression])``. The scaler's mean/scale are stored and
  applied in the kernel.
* ``from_gradient_boosting``: a binary ``HistGradientBoostingClassifier`` without categorical
  features. Its per-node ``missing_go_to_left`` is kept, so NaN follows exactly the path sklearn
  takes (including "split on NaN" nodes, threshold +inf, where all non-missing values go left).
  ``GradientBoostingClassifier`` is not supported: its trees compare float32-cast inputs, which the
  kernel would need to reproduce, and it is the estimator without native NaN routing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fraud.model.table import ModelTable, node_means

__all__ = ["from_gradient_boosting", "from_logistic"]


def _sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)


def _check_names(estimator: Any, feature_names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(feature_names)
    n_in = getattr(estimator, "n_features_in_", None)
    if n_in is not None and n_in != len(names):
        raise ValueError(f"estimator was fitted on {n_in} features, got {len(names)} names")
    fitted = getattr(estimator, "feature_names_in_", None)
    if fitted is not None and tuple(fitted) != names:
        raise ValueError(f"estimator was fitted on features {list(fitted)}, got {list(names)}")
    return names


def _check_binary(estimator: Any) -> None:
    classes = getattr(estimator, "classes_", None)
    if classes is None:
        raise ValueError(f"{type(estimator).__name__} is not fitted")
    if len(classes) != 2:
        raise ValueError(f"only binary classifiers are supported, got classes {list(classes)}")


def from_logistic(
    model: Any,
    feature_names: Sequence[str],
    *,
    feature_means: npt.ArrayLike | None = None,
    version: str = "",
    meta: Mapping[str, str] | None = None,
) -> ModelTable:
    """A ``"logistic"`` table from ``LogisticRegression`` or ``Pipeline(StandardScaler, LR)``.

    ``feature_means`` (raw feature units) is the base that contributions are relative to: the
    training average. It defaults to the scaler's ``mean_`` (which is the training average) and
    is required when there is no scaler that centers (``with_mean=True``).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    scaler: Any = None
    estimator: Any = model
    if isinstance(model, Pipeline):
        steps = [step for _, step in model.steps if step is not None and step != "passthrough"]
        if len(steps) == 2 and isinstance(steps[0], StandardScaler):
            scaler, estimator = steps
        elif len(steps) == 1:
            estimator = steps[0]
        else:
            raise TypeError(
                "expected Pipeline([StandardScaler, LogisticRegression]), got steps "
                f"{[type(s).__name__ for s in steps]}"
            )
    if not isinstance(estimator, LogisticRegression):
        raise TypeError(f"expected a LogisticRegression, got {type(estimator).__name__}")
    _check_binary(estimator)
    names = _check_names(estimator, feature_names)
    if scaler is not None:
        _check_names(scaler, names)
    f = len(names)
    coef = np.asarray(estimator.coef_, dtype=np.float64)
    if coef.shape != (1, f):
        raise ValueError(f"coef_ has shape {coef.shape}, expected (1, {f})")
    mean = np.zeros(f)
    scale = np.ones(f)
    if scaler is not None:
        if scaler.with_mean:
            mean = np.asarray(scaler.mean_, dtype=np.float64)
        if scaler.with_std:
            scale = np.asarray(scaler.scale_, dtype=np.float64)
    if feature_means is None:
        if scaler is None or not scaler.with_mean:
            raise ValueError(
                "pass feature_means= (the training average of each feature): without a "
                "centering StandardScaler the model does not know it"
            )
        base = mean
    else:
        base = np.asarray(feature_means, dtype=np.float64)
        if base.shape != (f,):
            raise ValueError(f"feature_means must have shape ({f},), got {base.shape}")
    source = (
        "Pipeline(StandardScaler, LogisticRegression)"
        if scaler is not None
        else ("LogisticRegression")
    )
    return ModelTable(
        kind="logistic",
        feature_names=names,
        scalars={"intercept": float(np.asarray(estimator.intercept_).ravel()[0])},
        arrays={"coef": coef[0], "mean": mean, "scale": scale, "base": base},
        version=version,
        meta={"source": f"sklearn {source}", "sklearn_version": _sklearn_version(), **(meta or {})},
    )


def from_gradient_boosting(
    estimator: Any,
    feature_names: Sequence[str],
    *,
    version: str = "",
    meta: Mapping[str, str] | None = None,
) -> ModelTable:
    """A ``"trees"`` table from a fitted binary ``HistGradientBoostingClassifier``.

    Reads each iteration's ``TreePredictor.nodes`` (fields ``value``, ``count``, ``feature_idx``,
    ``num_threshold``, ``missing_go_to_left``, ``left``, ``right``, ``is_leaf``,
    ``is_categorical``) and ``_baseline_prediction``. Leaf values already include the learning
    rate. ``cover`` is the node's training sample count (unweighted, as sklearn records it).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    if not isinstance(estimator, HistGradientBoostingClassifier):
        raise TypeError(
            f"expected a HistGradientBoostingClassifier, got {type(estimator).__name__}"
        )
    _check_binary(estimator)
    names = _check_names(estimator, feature_names)
    if estimator.n_trees_per_iteration_ != 1:
        raise ValueError(f"expected 1 tree per iteration, got {estimator.n_trees_per_iteration_}")
    categorical = getattr(estimator, "is_categorical_", None)
    if categorical is not None and np.any(categorical):
        raise ValueError("categorical features are not supported by model tables")
    baseline = np.asarray(estimator._baseline_prediction, dtype=np.float64).ravel()
    if baseline.shape != (1,):
        raise ValueError(f"unexpected _baseline_prediction shape {baseline.shape}")

    parts: dict[str, list[npt.NDArray[Any]]] = {
        k: [] for k in ("feature", "threshold", "missing_left", "left", "right", "value", "cover")
    }
    offsets = [0]
    for iteration in estimator._predictors:
        (predictor,) = iteration
        nodes = predictor.nodes
        if np.any(nodes["is_categorical"]):
            raise ValueError("categorical splits are not supported by model tables")
        start = offsets[-1]
        leaf = nodes["is_leaf"].astype(np.bool_)
        parts["feature"].append(np.where(leaf, -1, nodes["feature_idx"]).astype(np.int64))
        parts["threshold"].append(np.where(leaf, 0.0, nodes["num_threshold"]))
        parts["missing_left"].append(~leaf & nodes["missing_go_to_left"].astype(np.bool_))
        parts["left"].append(np.where(leaf, -1, nodes["left"].astype(np.int64) + start))
        parts["right"].append(np.where(leaf, -1, nodes["right"].astype(np.int64) + start))
        parts["value"].append(np.where(leaf, nodes["value"], 0.0))
        parts["cover"].append(nodes["count"].astype(np.float64))
        offsets.append(start + len(nodes))
    if len(offsets) < 2:
        raise ValueError("the estimator has no trees")
    arrays: dict[str, npt.NDArray[Any]] = {k: np.concatenate(v) for k, v in parts.items()}
    arrays["mean_value"] = node_means(
        arrays["left"].astype(np.int32),
        arrays["right"].astype(np.int32),
        arrays["value"],
        arrays["cover"],
    )
    arrays["tree_offsets"] = np.array(offsets, dtype=np.int64)
    return ModelTable(
        kind="trees",
        feature_names=names,
        scalars={"init": float(baseline[0])},
        arrays=arrays,
        version=version,
        meta={
            "source": "sklearn HistGradientBoostingClassifier",
            "sklearn_version": _sklearn_version(),
            "learning_rate": repr(float(estimator.learning_rate)),
            "n_trees": str(len(offsets) - 1),
            **(meta or {}),
        },
    )
