"""Model tables: a trained binary classifier as a handful of flat arrays, saved as one JSON file.

A ``ModelTable`` is what the hot path scores (``fraud.model.scoring``, kernels in
``fraud.kernels.model``); ``fraud.model.export`` builds one from a fitted scikit-learn estimator
(training time only: nothing here imports scikit-learn).

Kinds and their content (F = number of features, N = number of nodes, T = number of trees):

``"logistic"``
    scalars ``intercept``; arrays (float64, length F) ``coef``, ``mean`` and ``scale`` (the
    StandardScaler applied in the kernel, ``z = (x - mean) / scale``; zeros and ones without a
    scaler) and ``base`` (the training average of the raw features). ``raw = intercept + coef . z``;
    the contribution of feature j is ``coef[j] * (x[j] - base[j]) / scale[j]``, so the
    contributions sum to ``raw - expected_value`` where ``expected_value`` is the raw score at
    ``base``.

``"trees"``
    a gradient-boosted ensemble for binary classification, ``raw = init + sum of the T leaf
    values`` (log-odds). scalars ``init`` (the raw-score prior); node arrays (length N, all trees
    concatenated, tree t owns nodes ``[tree_offsets[t], tree_offsets[t + 1])`` and its root is the
    first of them): ``feature`` (int32, -1 for a leaf), ``threshold`` (float64; a row goes left
    when ``x <= threshold``; ``+inf`` allowed: "every non-missing value goes left"),
    ``missing_left`` (bool: where NaN goes, per node, as the exporting estimator decided),
    ``left`` / ``right`` (int32 absolute node indices, -1 for a leaf), ``value`` (float64 leaf
    values, already multiplied by the learning rate; 0 on split nodes), ``cover`` (float64 training
    samples reaching the node) and ``mean_value`` (float64, the cover-weighted mean leaf value
    below the node: the expected tree output there). ``tree_offsets`` is int64, length T + 1.
    Contributions are Saabas path attributions: each split on the path of a row adds
    ``mean_value[child] - mean_value[node]`` to the split feature, so per tree they sum to
    ``leaf value - mean_value[root]`` and over the model to ``raw - expected_value`` with
    ``expected_value = init + sum of mean_value at the roots``.

Node order: children have larger indices than their parent and every non-root node of a tree has
exactly one parent inside the same tree, so walking from a root always ends at a leaf.

``version`` defaults to ``"sha256:"`` + the first 12 hex digits of the SHA-256 of the canonical
content (kind, feature names, scalars, arrays; not ``meta``). Any version may be given instead; one
that starts with ``sha256:`` must match the content, so a hand-edited file cannot keep a stale hash.

File format (``save_model_table`` / ``load_model_table``, kept under ``tables/models/``): one
UTF-8 JSON object, strict JSON (no NaN/Infinity tokens)::

    {
      "format": "fraud.model_table",
      "format_version": 1,
      "kind": "trees",
      "version": "sha256:0123456789ab",
      "meta": {"source": "...", ...},          # strings only, not part of the version hash
      "feature_names": ["amount", ...],
      "scalars": {"init": -2.19},
      "arrays": {
        "feature": [0, 3, -1, ...],             # one line per array
        "threshold": [12.5, "inf", 0.0, ...],   # +inf written as the string "inf"
        ...
      }
    }

Floats are written with ``repr`` so a round trip is exact; bools as 0/1.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "KINDS",
    "ModelTable",
    "ModelTableError",
    "check_features",
    "content_version",
    "load_model_table",
    "save_model_table",
]

FORMAT = "fraud.model_table"
FORMAT_VERSION = 1
KINDS: tuple[str, ...] = ("logistic", "trees")

# name -> dtype, per kind. Logistic arrays have length F; tree arrays length N except offsets.
_LOGISTIC_ARRAYS: dict[str, type[np.generic]] = {
    "coef": np.float64,
    "mean": np.float64,
    "scale": np.float64,
    "base": np.float64,
}
_TREE_NODE_ARRAYS: dict[str, type[np.generic]] = {
    "feature": np.int32,
    "threshold": np.float64,
    "missing_left": np.bool_,
    "left": np.int32,
    "right": np.int32,
    "value": np.float64,
    "cover": np.float64,
    "mean_value": np.float64,
}
_TREE_ARRAYS: dict[str, type[np.generic]] = {**_TREE_NODE_ARRAYS, "tree_offsets": np.int64}
_SCHEMA: dict[str, tuple[dict[str, type[np.generic]], tuple[str, ...]]] = {
    "logistic": (_LOGISTIC_ARRAYS, ("intercept",)),
    "trees": (_TREE_ARRAYS, ("init",)),
}
# relative tolerance of the stored mean_value against the cover-weighted mean of the children
_MEAN_RTOL = 1e-9


class ModelTableError(ValueError):
    """A model table (or its file) is malformed, or does not fit the features at hand."""


@dataclass(frozen=True, eq=False)
class ModelTable:
    """A validated, immutable model: see the module docstring for the content of each kind.

    Arrays are copied into read-only arrays of the schema's dtype. Construction raises
    ``ModelTableError`` when anything is inconsistent.
    """

    kind: str
    feature_names: tuple[str, ...]
    scalars: Mapping[str, float]
    arrays: Mapping[str, npt.NDArray[Any]]
    version: str = ""
    meta: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in _SCHEMA:
            raise ModelTableError(f"unknown model kind {self.kind!r} (expected one of {KINDS})")
        names = tuple(self.feature_names)
        _check_feature_names(names)
        object.__setattr__(self, "feature_names", names)
        array_schema, scalar_names = _SCHEMA[self.kind]
        object.__setattr__(self, "scalars", _check_scalars(self.kind, self.scalars, scalar_names))
        object.__setattr__(self, "arrays", _check_arrays(self.kind, self.arrays, array_schema))
        if self.kind == "logistic":
            _check_logistic(self)
        else:
            _check_trees(self)
        meta = dict(self.meta)
        for key, value in meta.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ModelTableError(f"meta must map strings to strings, got {key!r}: {value!r}")
        object.__setattr__(self, "meta", MappingProxyType(meta))
        expected = content_version(self)
        if not self.version:
            object.__setattr__(self, "version", expected)
        elif not isinstance(self.version, str):
            raise ModelTableError(f"version must be a string, got {self.version!r}")
        elif self.version.startswith("sha256:") and self.version != expected:
            raise ModelTableError(
                f"version {self.version} does not match the content (hash is {expected}): "
                "the table was edited; drop the version to recompute it"
            )

    def __reduce__(self) -> tuple[type[ModelTable], tuple[Any, ...]]:
        # mapping proxies do not pickle: rebuild (and re-validate) from plain dicts
        fields = (self.kind, self.feature_names, dict(self.scalars), dict(self.arrays))
        return (ModelTable, (*fields, self.version, dict(self.meta)))

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_trees(self) -> int:
        """Number of trees (0 for a logistic model)."""
        return 0 if self.kind != "trees" else len(self.arrays["tree_offsets"]) - 1

    @property
    def expected_value(self) -> float:
        """The raw score that contributions are relative to (they sum to raw - this).

        Logistic: the raw score at the training average ``base``. Trees: ``init`` plus each
        tree's cover-weighted mean output (``mean_value`` at its root).
        """
        a = self.arrays
        if self.kind == "logistic":
            z = (a["base"] - a["mean"]) / a["scale"]
            return float(self.scalars["intercept"] + float(np.dot(a["coef"], z)))
        roots = a["tree_offsets"][:-1]
        return float(self.scalars["init"] + float(np.sum(a["mean_value"][roots])))

    def same_content(self, other: ModelTable) -> bool:
        """True when kind, features, scalars and arrays (values and dtypes) are identical."""
        return (
            self.kind == other.kind
            and self.feature_names == other.feature_names
            and dict(self.scalars) == dict(other.scalars)
            and self.arrays.keys() == other.arrays.keys()
            and all(
                self.arrays[k].dtype == other.arrays[k].dtype
                and np.array_equal(self.arrays[k], other.arrays[k])
                for k in self.arrays
            )
        )


# Validation


def _check_feature_names(names: tuple[str, ...]) -> None:
    if not names:
        raise ModelTableError("feature_names is empty")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ModelTableError(f"feature names must be non-empty strings, got {name!r}")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ModelTableError(f"duplicate feature names: {dupes}")


def _check_scalars(
    kind: str, scalars: Mapping[str, float], names: tuple[str, ...]
) -> Mapping[str, float]:
    if set(scalars) != set(names):
        raise ModelTableError(f"{kind} model needs scalars {sorted(names)}, got {sorted(scalars)}")
    out: dict[str, float] = {}
    for name in names:
        value = scalars[name]
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
            raise ModelTableError(f"scalar {name!r} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ModelTableError(f"scalar {name!r} is not finite: {value!r}")
        out[name] = float(value)
    return MappingProxyType(out)


def _check_arrays(
    kind: str, arrays: Mapping[str, Any], schema: Mapping[str, type[np.generic]]
) -> Mapping[str, npt.NDArray[Any]]:
    missing = sorted(set(schema) - set(arrays))
    unknown = sorted(set(arrays) - set(schema))
    if missing or unknown:
        raise ModelTableError(
            f"{kind} model arrays: missing {missing}, unknown {unknown} (expected {sorted(schema)})"
        )
    out: dict[str, npt.NDArray[Any]] = {}
    for name, dtype in schema.items():
        raw = np.asarray(arrays[name])
        if raw.ndim != 1:
            raise ModelTableError(f"array {name!r} must be 1-D, got shape {raw.shape}")
        if np.issubdtype(dtype, np.floating):
            if raw.size and not (
                np.issubdtype(raw.dtype, np.floating) or np.issubdtype(raw.dtype, np.integer)
            ):
                raise ModelTableError(f"array {name!r} must hold numbers, got dtype {raw.dtype}")
            arr = raw.astype(np.float64)
        elif dtype is np.bool_:
            if raw.size and not (raw.dtype == np.bool_ or np.isin(raw, (0, 1)).all()):
                raise ModelTableError(f"array {name!r} must hold booleans (0/1)")
            arr = raw.astype(np.bool_)
        else:
            if raw.size and not (raw.dtype == np.bool_ or np.issubdtype(raw.dtype, np.integer)):
                raise ModelTableError(f"array {name!r} must hold integers, got dtype {raw.dtype}")
            info = np.iinfo(np.dtype(dtype))
            if raw.size and (raw.min() < info.min or raw.max() > info.max):
                raise ModelTableError(f"array {name!r} has values outside {np.dtype(dtype)}")
            arr = raw.astype(dtype)
        arr = np.ascontiguousarray(arr)
        arr.setflags(write=False)
        out[name] = arr
    return MappingProxyType(out)


def _check_finite(table: ModelTable, names: Sequence[str]) -> None:
    for name in names:
        arr = table.arrays[name]
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            where, what = bad[:5].tolist(), arr[bad[:5]].tolist()
            raise ModelTableError(f"array {name!r} has non-finite values at {where}: {what}")


def _check_logistic(table: ModelTable) -> None:
    f = table.n_features
    for name in _LOGISTIC_ARRAYS:
        if len(table.arrays[name]) != f:
            raise ModelTableError(
                f"array {name!r} has length {len(table.arrays[name])}, expected {f} (features)"
            )
    _check_finite(table, list(_LOGISTIC_ARRAYS))
    scale = table.arrays["scale"]
    if (scale <= 0).any():
        raise ModelTableError(f"scale must be > 0, got {scale.tolist()}")


def _check_trees(table: ModelTable) -> None:
    a = table.arrays
    n = len(a["feature"])
    for name in _TREE_NODE_ARRAYS:
        if len(a[name]) != n:
            raise ModelTableError(
                f"array {name!r} has length {len(a[name])}, expected {n} (nodes, as 'feature')"
            )
    offsets = a["tree_offsets"]
    if len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != n or (np.diff(offsets) <= 0).any():
        raise ModelTableError(
            f"tree_offsets must go from 0 to {n} (nodes) strictly increasing, "
            f"got {offsets[:10].tolist()}{'...' if len(offsets) > 10 else ''}"
        )
    _check_finite(table, ["value", "cover", "mean_value"])
    thr = a["threshold"]
    bad = np.flatnonzero(np.isnan(thr) | (thr == -np.inf))
    if bad.size:
        raise ModelTableError(f"array 'threshold' has NaN or -inf at nodes {bad[:5].tolist()}")
    if (a["cover"] < 0).any():
        raise ModelTableError(f"cover is negative at nodes {np.flatnonzero(a['cover'] < 0)[:5]}")

    feature, left, right = a["feature"], a["left"], a["right"]
    leaf = feature == -1
    bad = np.flatnonzero(leaf & ((left != -1) | (right != -1)))
    if bad.size:
        raise ModelTableError(f"leaf nodes {bad[:5].tolist()} have children (left/right not -1)")
    bad = np.flatnonzero(~leaf & ((feature < 0) | (feature >= table.n_features)))
    if bad.size:
        raise ModelTableError(
            f"split nodes {bad[:5].tolist()} have feature index outside [0, {table.n_features}): "
            f"{feature[bad[:5]].tolist()}"
        )
    # a node's tree: tree_of[i] = t for offsets[t] <= i < offsets[t + 1]
    tree_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    end = offsets[1:][tree_of]
    node = np.arange(n)
    for name, child in (("left", left), ("right", right)):
        bad = np.flatnonzero(~leaf & ((child <= node) | (child >= end)))
        if bad.size:
            i = int(bad[0])
            raise ModelTableError(
                f"node {i}: {name} child {int(child[i])} out of range (children must lie after "
                f"their parent, which rules out cycles, inside the same tree "
                f"[{int(offsets[tree_of[i]])}, {int(end[i])}))"
            )
    parents = np.bincount(np.concatenate([left[~leaf], right[~leaf]]), minlength=n)
    is_root = np.zeros(n, np.bool_)
    is_root[offsets[:-1]] = True
    bad = np.flatnonzero(parents != np.where(is_root, 0, 1))
    if bad.size:
        i = int(bad[0])
        raise ModelTableError(
            f"node {i} has {int(parents[i])} parents (expected {0 if is_root[i] else 1}): "
            "the nodes do not form trees (shared child, cycle, or unreachable node)"
        )
    value, mean, cover = a["value"], a["mean_value"], a["cover"]
    bad = np.flatnonzero(leaf & (mean != value))
    if bad.size:
        raise ModelTableError(f"leaf nodes {bad[:5].tolist()} have mean_value != value")
    split = np.flatnonzero(~leaf)
    cl, cr = cover[left[split]], cover[right[split]]
    total = cl + cr
    with np.errstate(invalid="ignore", divide="ignore"):
        expect = np.where(
            total > 0,
            (cl * mean[left[split]] + cr * mean[right[split]]) / np.where(total > 0, total, 1),
            0.5 * (mean[left[split]] + mean[right[split]]),
        )
    tol = _MEAN_RTOL * (1.0 + np.abs(expect))
    bad = split[np.abs(mean[split] - expect) > tol]
    if bad.size:
        raise ModelTableError(
            f"split nodes {bad[:5].tolist()} have mean_value not equal to the cover-weighted "
            "mean of their children"
        )


def node_means(
    left: npt.NDArray[np.int32],
    right: npt.NDArray[np.int32],
    value: npt.NDArray[np.float64],
    cover: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """``mean_value`` from leaf values and covers (children after parents: one reverse pass).

    A split node whose children both have zero cover gets the plain average of the two.
    """
    mean = np.array(value, dtype=np.float64)
    for i in range(len(value) - 1, -1, -1):
        lc, rc = int(left[i]), int(right[i])
        if lc < 0:
            continue
        cl, cr = float(cover[lc]), float(cover[rc])
        if cl + cr > 0:
            mean[i] = (cl * mean[lc] + cr * mean[rc]) / (cl + cr)
        else:
            mean[i] = 0.5 * (mean[lc] + mean[rc])
    return mean


# Features


def check_features(table: ModelTable, available: Sequence[str]) -> npt.NDArray[np.intp]:
    """Columns of ``available`` (what the worker computes) that feed the model, in model order.

    Raises ``ModelTableError`` naming the model's features the worker does not compute. When the
    result is ``arange(len(available))`` the worker's matrix can be scored as it is; otherwise
    score ``features[:, columns]``.
    """
    names = list(available)
    position = {name: i for i, name in enumerate(names)}
    if len(position) != len(names):
        raise ModelTableError(f"duplicate names in the available features: {names}")
    missing = [name for name in table.feature_names if name not in position]
    if missing:
        raise ModelTableError(
            f"model {table.version} needs features the worker does not compute: {missing} "
            f"(available: {names})"
        )
    return np.array([position[name] for name in table.feature_names], dtype=np.intp)


# Serialization


def _json_array(name: str, arr: npt.NDArray[Any]) -> list[Any]:
    if arr.dtype == np.bool_:
        return [int(v) for v in arr.tolist()]
    if arr.dtype == np.float64:
        return ["inf" if v == math.inf else v for v in arr.tolist()]
    return list(arr.tolist())


def _content(table: ModelTable) -> dict[str, Any]:
    return {
        "kind": table.kind,
        "feature_names": list(table.feature_names),
        "scalars": dict(sorted(table.scalars.items())),
        "arrays": {k: _json_array(k, table.arrays[k]) for k in sorted(table.arrays)},
    }


def content_version(table: ModelTable) -> str:
    """``"sha256:"`` + 12 hex digits of the canonical content (not the version, not meta)."""
    text = json.dumps(_content(table), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def to_json(table: ModelTable) -> str:
    """The file text: metadata indented, each array on one line."""
    dump = json.dumps
    content = _content(table)
    lines = [
        "{",
        f'  "format": {dump(FORMAT)},',
        f'  "format_version": {FORMAT_VERSION},',
        f'  "kind": {dump(table.kind)},',
        f'  "version": {dump(table.version)},',
        f'  "meta": {dump(dict(sorted(table.meta.items())))},',
        f'  "feature_names": {dump(content["feature_names"])},',
        f'  "scalars": {dump(content["scalars"], allow_nan=False)},',
        '  "arrays": {',
    ]
    items = list(content["arrays"].items())
    for i, (name, values) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        lines.append(f"    {dump(name)}: {dump(values, allow_nan=False)}{comma}")
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def save_model_table(table: ModelTable, path: str | os.PathLike[str]) -> Path:
    """Write ``table`` as JSON at ``path`` (atomically: temporary file, then rename)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(to_json(table), encoding="utf-8")
    os.replace(tmp, target)
    return target


def _reject_constant(token: str) -> float:
    raise ModelTableError(f"non-finite number {token} in the JSON (not strict JSON)")


def from_json(text: str, *, source: str = "<string>") -> ModelTable:
    """Parse and validate the text of a model table file."""
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ModelTableError(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ModelTableError(f"{source}: expected a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise ModelTableError(f"{source}: not a model table (format {doc.get('format')!r})")
    if doc.get("format_version") != FORMAT_VERSION:
        raise ModelTableError(
            f"{source}: unsupported format_version {doc.get('format_version')!r} "
            f"(this code reads {FORMAT_VERSION})"
        )
    required = ("kind", "version", "feature_names", "scalars", "arrays")
    missing = [key for key in required if key not in doc]
    if missing:
        raise ModelTableError(f"{source}: missing keys {missing}")
    kind, arrays, names = doc["kind"], doc["arrays"], doc["feature_names"]
    if kind not in _SCHEMA:
        raise ModelTableError(f"{source}: unknown model kind {kind!r} (expected one of {KINDS})")
    if not isinstance(arrays, dict) or not isinstance(doc["scalars"], dict):
        raise ModelTableError(f"{source}: 'arrays' and 'scalars' must be JSON objects")
    if not isinstance(names, list):
        raise ModelTableError(f"{source}: 'feature_names' must be a list")
    schema = _SCHEMA[kind][0]
    parsed: dict[str, Any] = {}
    for name, values in arrays.items():
        if not isinstance(values, list):
            raise ModelTableError(f"{source}: array {name!r} must be a JSON list")
        if name == "threshold":
            values = [math.inf if v == "inf" else v for v in values]
        if any(isinstance(v, str) for v in values):
            raise ModelTableError(f"{source}: array {name!r} holds strings")
        if any(isinstance(v, float) for v in values) and schema.get(name) is not np.float64:
            raise ModelTableError(f"{source}: array {name!r} must hold integers")
        dtype = schema.get(name, np.float64)
        try:
            parsed[name] = np.array(values, dtype=np.float64 if dtype is np.float64 else np.int64)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ModelTableError(f"{source}: array {name!r}: {exc}") from None
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise ModelTableError(f"{source}: 'meta' must be a JSON object")
    try:
        return ModelTable(
            kind=kind,
            feature_names=tuple(names),
            scalars=doc["scalars"],
            arrays=parsed,
            version=doc["version"],
            meta=meta,
        )
    except ModelTableError as exc:
        raise ModelTableError(f"{source}: {exc}") from None


def load_model_table(path: str | os.PathLike[str]) -> ModelTable:
    """Read and validate a model table file; any problem raises ``ModelTableError``."""
    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelTableError(f"{target}: cannot read: {exc}") from None
    return from_json(text, source=str(target))
