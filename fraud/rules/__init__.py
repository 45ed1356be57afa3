"""Rules as data: CSV decision tables, compiled into arrays, evaluated by one numba kernel.

* ``fraud.rules.table``: the table format, parsing and validation (``RuleTable``).
* ``fraud.rules.compiled``: ``compile_rules`` -> ``CompiledRules`` arrays, ``apply_rules`` over a
  feature matrix (kernel ``fraud.kernels.rules.evaluate_rules``), ``fired_ids``.
* ``fraud.reference.rules``: the slow twin, evaluated from the ``RuleTable`` itself.

The shipped default is ``tables/rules/v1.csv`` (``load_default_rule_table``), written against
``V1_FEATURES``.
"""

from __future__ import annotations

from fraud.rules.compiled import CompiledRules, apply_rules, compile_rules, fired_ids, warmup
from fraud.rules.table import (
    COLUMNS,
    DEFAULT_TABLE_PATH,
    OPERATORS,
    V1_FEATURES,
    Action,
    Condition,
    Rule,
    RuleTable,
    RuleTableError,
    from_rows,
    load_default_rule_table,
    load_rule_table,
    parse_rule_table,
)

__all__ = [
    "COLUMNS",
    "DEFAULT_TABLE_PATH",
    "OPERATORS",
    "V1_FEATURES",
    "Action",
    "CompiledRules",
    "Condition",
    "Rule",
    "RuleTable",
    "RuleTableError",
    "apply_rules",
    "compile_rules",
    "fired_ids",
    "from_rows",
    "load_default_rule_table",
    "load_rule_table",
    "parse_rule_table",
    "warmup",
]
