"""Decision tables: parse and validate a CSV rule table into a frozen ``RuleTable``.

Format (stdlib ``csv``, one condition per line)::

    # version: v1
    rule_id,feature,operator,threshold,action,reason,enabled
    AMOUNT_SPIKE,amount_to_avg_30d,>=,5,REVIEW,"amount 5x the customer's 30-day mean",true
    AMOUNT_SPIKE,amount,>,50,REVIEW,"amount 5x the customer's 30-day mean",true

* The header names the seven columns, in any order, each exactly once.
* The lines of one ``rule_id`` are that rule's conditions, ANDed; they must be consecutive and
  agree on ``action``, ``reason`` and ``enabled``. Rules keep the order of the file.
* ``operator`` is one of ``> >= < <= == !=``; ``threshold`` a finite number; ``action`` one of
  ``ALLOW REVIEW BLOCK`` (any case); ``enabled`` one of ``true false 1 0 yes no`` (any case);
  ``feature`` one of the ``feature_names`` the table is validated against.
* A feature value of NaN (unknown) makes every comparison false, ``!=`` included: the
  condition is not met and its rule does not fire.
* The decision of a row is the most severe action among the enabled rules that fired (BLOCK >
  REVIEW > ALLOW); an ALLOW rule only records that it fired, it never lowers a decision.
* Lines starting with ``#`` and blank lines are skipped. The first line may be ``# version: X``;
  otherwise the version is ``sha256:`` + the first 12 hex digits of the SHA-256 of the table's
  normalised content (``RuleTable.normalised``: canonical column order, cells stripped,
  thresholds as ``repr(float)``, action upper case, enabled as ``true``/``false``; comments,
  blank lines, line endings and quoting do not count). Each line is one record: quoted fields
  may contain commas, not line breaks.

Every problem raises ``RuleTableError`` (a ``ValueError``) whose message starts with
``<file>:<line>:``, e.g. ``tables/rules/v1.csv:4: unknown operator '=>' (expected one of ...)``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from fraud.kernels.actions import ALLOW, BLOCK, REVIEW

__all__ = [
    "COLUMNS",
    "DEFAULT_TABLE_PATH",
    "OPERATORS",
    "V1_FEATURES",
    "Action",
    "Condition",
    "Rule",
    "RuleTable",
    "RuleTableError",
    "from_rows",
    "load_default_rule_table",
    "load_rule_table",
    "parse_rule_table",
]

COLUMNS: tuple[str, ...] = (
    "rule_id",
    "feature",
    "operator",
    "threshold",
    "action",
    "reason",
    "enabled",
)
OPERATORS: tuple[str, ...] = (">", ">=", "<", "<=", "==", "!=")

# The features the shipped v1 table is written against (amounts in major units).
V1_FEATURES: tuple[str, ...] = (
    "amount",
    "customer_nb_tx_1d",
    "customer_avg_amount_30d",
    "amount_to_avg_30d",
    "terminal_risk_7d",
    "terminal_risk_30d",
    "geo_velocity_kmh",
    "seconds_since_prev_tx",
    "first_use_of_terminal",
)

DEFAULT_TABLE_PATH: Path = Path(__file__).resolve().parents[2] / "tables" / "rules" / "v1.csv"

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_VERSION_LINE = re.compile(r"#\s*version\s*:(.*)", re.IGNORECASE)


class RuleTableError(ValueError):
    """A rule table that cannot be used; the message names the file, the line and the problem."""


class Action(IntEnum):
    """Rule actions, with the codes of ``fraud.kernels.actions`` (larger is more severe)."""

    ALLOW = ALLOW
    REVIEW = REVIEW
    BLOCK = BLOCK


@dataclass(frozen=True, slots=True)
class Condition:
    """``<feature> <operator> <threshold>``, from line ``line`` of the table."""

    feature: str
    operator: str
    threshold: float
    line: int


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: its conditions (ANDed), the action and reason when it fires, and whether it is
    enabled. ``line`` is the table line of its first condition."""

    rule_id: str
    conditions: tuple[Condition, ...]
    action: Action
    reason: str
    enabled: bool
    line: int


@dataclass(frozen=True, slots=True)
class RuleTable:
    """A validated decision table.

    ``version`` is the ``# version:`` comment when present, else ``content_hash``
    (``sha256:`` + 12 hex digits of the normalised content); ``source`` names where it came from.
    """

    version: str
    content_hash: str
    source: str
    rules: tuple[Rule, ...]

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(rule.rule_id for rule in self.rules)

    @property
    def features(self) -> tuple[str, ...]:
        """The features the table reads, in order of first use."""
        return tuple(dict.fromkeys(c.feature for r in self.rules for c in r.conditions))

    def normalised(self) -> str:
        """The canonical CSV text whose SHA-256 is ``content_hash``."""
        return _normalised(self.rules)


def load_rule_table(path: str | Path, feature_names: Sequence[str]) -> RuleTable:
    """Read and validate the CSV table at ``path`` (UTF-8); errors name ``path``."""
    text = Path(path).read_text(encoding="utf-8")
    return parse_rule_table(text, feature_names, source=str(path))


def load_default_rule_table(feature_names: Sequence[str] = V1_FEATURES) -> RuleTable:
    """The shipped default, ``tables/rules/v1.csv``."""
    return load_rule_table(DEFAULT_TABLE_PATH, feature_names)


def parse_rule_table(
    text: str, feature_names: Sequence[str], source: str = "<string>"
) -> RuleTable:
    """Parse and validate CSV ``text``; ``source`` is the file name used in error messages."""
    lines = text.removeprefix("\ufeff").splitlines()
    version: str | None = None
    header: list[str] | None = None
    header_line = 0
    records: list[tuple[str, int, dict[str, str]]] = []
    for number, raw in enumerate(lines, start=1):
        where = f"{source}:{number}"
        stripped = raw.strip()
        match = _VERSION_LINE.fullmatch(stripped)
        if match is not None:
            if number != 1:
                raise RuleTableError(f"{where}: '# version:' is only allowed on the first line")
            version = match.group(1).strip()
            if not version:
                raise RuleTableError(f"{where}: empty version in '# version:' line")
            continue
        if not stripped or stripped.startswith("#"):
            continue
        try:
            cells = [cell.strip() for cell in next(csv.reader([raw], skipinitialspace=True))]
        except csv.Error as exc:
            raise RuleTableError(f"{where}: malformed CSV: {exc}") from None
        if header is None:
            _check_header(cells, where)
            header, header_line = cells, number
            continue
        if len(cells) != len(header):
            raise RuleTableError(
                f"{where}: expected {len(header)} fields ({', '.join(header)}), got {len(cells)}"
            )
        records.append((where, number, dict(zip(header, cells, strict=True))))
    if header is None:
        raise RuleTableError(f"{source}:{max(len(lines), 1)}: empty table: no header line")
    if not records:
        raise RuleTableError(f"{source}:{header_line}: empty table: a header but no rules")
    return _build(records, feature_names, source, version)


def from_rows(
    rows: Iterable[Mapping[str, object]],
    feature_names: Sequence[str],
    version: str | None = None,
    source: str = "<rows>",
) -> RuleTable:
    """A table from mappings with the seven columns (one condition each), validated like a file.

    Values may be strings or Python values (``threshold`` a number, ``enabled`` a bool). Errors
    name ``<source>:row <n>`` (1-based). ``version`` defaults to the content hash.
    """
    records: list[tuple[str, int, dict[str, str]]] = []
    for number, row in enumerate(rows, start=1):
        where = f"{source}:row {number}"
        names = [str(key) for key in row]
        _check_header(names, where, what="row")
        records.append((where, number, {str(k): _cell(v) for k, v in row.items()}))
    if not records:
        raise RuleTableError(f"{source}:row 1: empty table: no rows")
    if version is not None and not version.strip():
        raise RuleTableError(f"{source}: empty version")
    return _build(records, feature_names, source, version)


def _cell(value: object) -> str:
    if isinstance(value, Action):
        return value.name
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def _check_header(names: Sequence[str], where: str, what: str = "header") -> None:
    seen: set[str] = set()
    for name in names:
        if name not in COLUMNS:
            raise RuleTableError(
                f"{where}: unknown column {name!r} in {what} (expected {', '.join(COLUMNS)})"
            )
        if name in seen:
            raise RuleTableError(f"{where}: duplicate column {name!r} in {what}")
        seen.add(name)
    missing = [name for name in COLUMNS if name not in seen]
    if missing:
        raise RuleTableError(f"{where}: missing column(s) {', '.join(missing)} in {what}")


def _parse_threshold(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RuleTableError(f"{where}: threshold {text!r} is not a number") from None
    if not math.isfinite(value):
        raise RuleTableError(f"{where}: threshold {text!r} is not finite")
    return value + 0.0  # -0.0 -> 0.0: they compare the same, so they hash the same


def _parse_enabled(text: str, where: str) -> bool:
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise RuleTableError(f"{where}: enabled {text!r} is not one of true, false, 1, 0, yes, no")


def _build(
    records: list[tuple[str, int, dict[str, str]]],
    feature_names: Sequence[str],
    source: str,
    version: str | None,
) -> RuleTable:
    known = frozenset(feature_names)
    rules: list[Rule] = []
    first_where: dict[str, str] = {}
    for where, line, rec in records:
        rule_id = rec["rule_id"]
        if not rule_id:
            raise RuleTableError(f"{where}: empty rule_id")
        feature = rec["feature"]
        if feature not in known:
            raise RuleTableError(
                f"{where}: unknown feature {feature!r} (expected one of {', '.join(feature_names)})"
            )
        operator = rec["operator"]
        if operator not in OPERATORS:
            raise RuleTableError(
                f"{where}: unknown operator {operator!r} (expected one of {' '.join(OPERATORS)})"
            )
        threshold = _parse_threshold(rec["threshold"], where)
        action_name = rec["action"].upper()
        if action_name not in Action.__members__:
            raise RuleTableError(
                f"{where}: unknown action {rec['action']!r} "
                f"(expected one of {', '.join(Action.__members__)})"
            )
        action = Action[action_name]
        reason = rec["reason"]
        enabled = _parse_enabled(rec["enabled"], where)
        condition = Condition(feature, operator, threshold, line)

        if rules and rules[-1].rule_id == rule_id:
            prev = rules[-1]
            for name, mine, theirs in (
                ("action", action.name, prev.action.name),
                ("reason", reason, prev.reason),
                ("enabled", enabled, prev.enabled),
            ):
                if mine != theirs:
                    raise RuleTableError(
                        f"{where}: conflicting {name} for rule {rule_id!r}: {mine!r} here, "
                        f"{theirs!r} at {first_where[rule_id]}"
                    )
            rules[-1] = Rule(
                rule_id, (*prev.conditions, condition), action, reason, enabled, prev.line
            )
            continue
        if rule_id in first_where:
            raise RuleTableError(
                f"{where}: rule {rule_id!r} continues after other rules (its lines start at "
                f"{first_where[rule_id]}); a rule's lines must be consecutive"
            )
        first_where[rule_id] = where
        rules.append(Rule(rule_id, (condition,), action, reason, enabled, line))

    frozen = tuple(rules)
    digest = hashlib.sha256(_normalised(frozen).encode("utf-8")).hexdigest()
    content_hash = f"sha256:{digest[:12]}"
    return RuleTable(
        version=version if version is not None else content_hash,
        content_hash=content_hash,
        source=source,
        rules=frozen,
    )


def _normalised(rules: Sequence[Rule]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for rule in rules:
        for c in rule.conditions:
            writer.writerow(
                (
                    rule.rule_id,
                    c.feature,
                    c.operator,
                    repr(c.threshold),
                    rule.action.name,
                    rule.reason,
                    "true" if rule.enabled else "false",
                )
            )
    return buffer.getvalue()
