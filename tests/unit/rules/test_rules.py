"""Decision tables: parsing and validation, the rules kernel against its slow twin, versions."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from fraud.kernels.actions import ALLOW, BLOCK, REVIEW
from fraud.kernels.rules import evaluate_rules
from fraud.reference.rules import reference_evaluate, reference_evaluate_many, reference_fired_ids
from fraud.rules import (
    COLUMNS,
    DEFAULT_TABLE_PATH,
    OPERATORS,
    V1_FEATURES,
    Action,
    CompiledRules,
    RuleTable,
    RuleTableError,
    apply_rules,
    compile_rules,
    fired_ids,
    from_rows,
    load_default_rule_table,
    load_rule_table,
    parse_rule_table,
)

F64 = npt.NDArray[np.float64]
HEADER = ",".join(COLUMNS)
NAMES = ("a", "b", "c", "d", "e", "f")


def row(**values: float) -> F64:
    """One V1 feature row, zero except ``values`` (NaN geo velocity unless given)."""
    out = np.zeros((1, len(V1_FEATURES)), dtype=np.float64)
    out[0, V1_FEATURES.index("geo_velocity_kmh")] = np.nan
    for name, value in values.items():
        out[0, V1_FEATURES.index(name)] = value
    return out


def rule_row(
    rule_id: str,
    feature: str,
    operator: str,
    threshold: float,
    action: str = "REVIEW",
    reason: str = "why",
    enabled: bool = True,
) -> dict[str, object]:
    return {
        "rule_id": rule_id,
        "feature": feature,
        "operator": operator,
        "threshold": threshold,
        "action": action,
        "reason": reason,
        "enabled": enabled,
    }


# --- the shipped table ----------------------------------------------------------------------


def test_shipped_table_parses_and_compiles() -> None:
    assert DEFAULT_TABLE_PATH.name == "v1.csv" and DEFAULT_TABLE_PATH.parent.name == "rules"
    table = load_default_rule_table()
    assert table.version == "v1"
    assert re.fullmatch(r"sha256:[0-9a-f]{12}", table.content_hash)
    assert table.source == str(DEFAULT_TABLE_PATH)
    assert table.rule_ids[:5] == (
        "AMOUNT_OVER_220",
        "AMOUNT_SPIKE",
        "RISKY_TERMINAL",
        "IMPOSSIBLE_TRAVEL",
        "VELOCITY",
    )
    assert set(table.features) <= set(V1_FEATURES)
    spike = table.rules[1]
    assert [(c.feature, c.operator, c.threshold) for c in spike.conditions] == [
        ("amount_to_avg_30d", ">=", 5.0),
        ("amount", ">", 50.0),
    ]
    assert spike.action is Action.REVIEW and spike.enabled
    assert table.rules[2].action is Action.BLOCK
    compiled = compile_rules(table, V1_FEATURES)
    assert compiled.version == "v1"
    assert compiled.rule_ids == table.rule_ids
    assert compiled.rule_offsets[-1] == sum(len(r.conditions) for r in table.rules)


@pytest.mark.parametrize(
    ("values", "expected_ids", "expected_action"),
    [
        ({}, [], ALLOW),
        ({"amount": 220.0}, [], ALLOW),
        ({"amount": 220.01}, ["AMOUNT_OVER_220"], REVIEW),
        ({"amount": 60.0, "amount_to_avg_30d": 5.0}, ["AMOUNT_SPIKE"], REVIEW),
        ({"amount": 50.0, "amount_to_avg_30d": 9.0}, [], ALLOW),
        ({"amount": 60.0, "amount_to_avg_30d": 4.99}, [], ALLOW),
        ({"terminal_risk_7d": 0.5}, ["RISKY_TERMINAL"], BLOCK),
        ({"geo_velocity_kmh": 901.0}, ["IMPOSSIBLE_TRAVEL"], REVIEW),
        ({"geo_velocity_kmh": 900.0}, [], ALLOW),
        ({"customer_nb_tx_1d": 10.0}, ["VELOCITY"], REVIEW),
        # the staged rule is disabled in v1
        ({"first_use_of_terminal": 1.0, "seconds_since_prev_tx": 5.0}, [], ALLOW),
        (
            {"amount": 300.0, "amount_to_avg_30d": 6.0, "terminal_risk_7d": 0.9},
            ["AMOUNT_OVER_220", "AMOUNT_SPIKE", "RISKY_TERMINAL"],
            BLOCK,
        ),
    ],
)
def test_shipped_table_decisions(
    values: dict[str, float], expected_ids: list[str], expected_action: int
) -> None:
    table = load_default_rule_table()
    compiled = compile_rules(table, V1_FEATURES)
    fired, action = apply_rules(compiled, row(**values))
    assert fired_ids(compiled, fired[0]) == expected_ids
    assert int(action[0]) == expected_action
    named = dict(zip(V1_FEATURES, row(**values)[0].tolist(), strict=True))
    assert reference_fired_ids(table, named) == expected_ids


# --- validation errors ----------------------------------------------------------------------

GOOD = "R1,a,>,1,REVIEW,why,true"


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("", 1, "empty table: no header line"),
        ("# only a comment\n\n", 2, "empty table: no header line"),
        (f"{HEADER}\n", 1, "empty table: a header but no rules"),
        (f"# version: v2\n{HEADER}\n\n", 2, "empty table: a header but no rules"),
        (
            "rule_id,feature,op,threshold,action,reason,enabled\n" + GOOD,
            1,
            "unknown column 'op' in header",
        ),
        (f"{HEADER},action\n{GOOD}", 1, "duplicate column 'action' in header"),
        ("rule_id,feature,operator,threshold,action,reason\n", 1, "missing column(s) enabled"),
        (f"{HEADER}\n{GOOD}\nR2,a,=>,1,REVIEW,why,true", 3, "unknown operator '=>'"),
        (f"{HEADER}\n{GOOD}\nR2,a,>,1,DENY,why,true", 3, "unknown action 'DENY'"),
        (f"{HEADER}\nR2,a,>,abc,REVIEW,why,true", 2, "threshold 'abc' is not a number"),
        (f"{HEADER}\nR2,a,>,,REVIEW,why,true", 2, "threshold '' is not a number"),
        (f"{HEADER}\nR2,a,>,inf,REVIEW,why,true", 2, "threshold 'inf' is not finite"),
        (f"{HEADER}\nR2,a,>,NaN,REVIEW,why,true", 2, "threshold 'NaN' is not finite"),
        (f"{HEADER}\nR2,a,>,1e999,REVIEW,why,true", 2, "threshold '1e999' is not finite"),
        (f"{HEADER}\nR2,zz,>,1,REVIEW,why,true", 2, "unknown feature 'zz'"),
        (
            f"# version: v3\n{HEADER}\n{GOOD}\nR1,b,<,2,BLOCK,why,true",
            4,
            "conflicting action for rule 'R1': 'BLOCK' here, 'REVIEW' at <src>:3",
        ),
        (
            f"{HEADER}\n{GOOD}\nR1,b,<,2,REVIEW,other,true",
            3,
            "conflicting reason for rule 'R1'",
        ),
        (
            f"{HEADER}\n{GOOD}\nR1,b,<,2,REVIEW,why,false",
            3,
            "conflicting enabled for rule 'R1'",
        ),
        (
            f"{HEADER}\n{GOOD}\nR2,b,<,2,REVIEW,why,true\nR1,c,<,2,REVIEW,why,true",
            4,
            "rule 'R1' continues after other rules",
        ),
        (f"{HEADER}\nR2,a,>,1,REVIEW,why,maybe", 2, "enabled 'maybe' is not one of"),
        (f"{HEADER}\n,a,>,1,REVIEW,why,true", 2, "empty rule_id"),
        (f"{HEADER}\nR2,a,>,1,REVIEW,why", 2, "expected 7 fields"),
        (f"{HEADER}\n{GOOD}\n# version: v2\n", 3, "'# version:' is only allowed on the first"),
        ("# version:  \n" + HEADER, 1, "empty version"),
    ],
)
def test_validation_errors_name_file_line_and_problem(
    tmp_path: Path, text: str, line: int, problem: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RuleTableError) as info:
        load_rule_table(path, NAMES)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert problem.replace("<src>", str(path)) in message, message
    # the same through parse_rule_table with a custom source name
    with pytest.raises(RuleTableError, match=f"^tables/x.csv:{line}: "):
        parse_rule_table(text, NAMES, source="tables/x.csv")


def test_rule_table_error_is_a_value_error() -> None:
    assert issubclass(RuleTableError, ValueError)


def test_from_rows_validation_names_the_row() -> None:
    with pytest.raises(RuleTableError, match=r"^<rows>:row 2: unknown operator '~'"):
        from_rows([rule_row("R1", "a", ">", 1), rule_row("R2", "a", "~", 1)], NAMES)
    with pytest.raises(RuleTableError, match=r"^mine:row 1: missing column\(s\) enabled"):
        bad = rule_row("R1", "a", ">", 1)
        del bad["enabled"]
        from_rows([bad], NAMES, source="mine")
    with pytest.raises(RuleTableError, match=r"^<rows>:row 1: unknown column 'extra'"):
        from_rows([{**rule_row("R1", "a", ">", 1), "extra": 1}], NAMES)
    with pytest.raises(RuleTableError, match=r"^<rows>:row 1: empty table"):
        from_rows([], NAMES)
    with pytest.raises(RuleTableError, match=r"^<rows>:row 1: threshold 'inf' is not finite"):
        from_rows([rule_row("R1", "a", ">", float("inf"))], NAMES)


def test_format_is_lenient_about_whitespace_case_and_column_order() -> None:
    text = (
        "\ufeff# version: v9\r\n"
        " enabled , action,rule_id,feature,operator,threshold,reason\r\n"
        "\r\n"
        "# a comment\r\n"
        ' YES , block , R1 , a , >= , 2.5 , "big, really" \r\n'
        " 0 , allow , R2 , b , != , -0 , x \r\n"
    )
    table = parse_rule_table(text, NAMES)
    assert table.version == "v9"
    r1, r2 = table.rules
    assert (r1.rule_id, r1.action, r1.enabled, r1.reason, r1.line) == (
        "R1",
        Action.BLOCK,
        True,
        "big, really",
        5,
    )
    assert r1.conditions[0].operator == ">=" and r1.conditions[0].threshold == 2.5
    assert (r2.action, r2.enabled, r2.conditions[0].line) == (Action.ALLOW, False, 6)


# --- versions -------------------------------------------------------------------------------

BASE = (
    f"{HEADER}\n"
    "R1,a,>,220,REVIEW,big,true\n"
    "R1,b,<=,3,REVIEW,big,true\n"
    "R2,c,==,1,BLOCK,bad,true\n"
    "R3,d,!=,0,ALLOW,ok,false\n"
)


def test_version_from_comment_or_content_hash() -> None:
    plain = parse_rule_table(BASE, NAMES)
    assert re.fullmatch(r"sha256:[0-9a-f]{12}", plain.version)
    assert plain.version == plain.content_hash
    commented = parse_rule_table("# version: 2026-11-rc1\n" + BASE, NAMES)
    assert commented.version == "2026-11-rc1"
    assert commented.content_hash == plain.content_hash  # the comment is not content
    assert compile_rules(commented, NAMES).version == "2026-11-rc1"


def test_same_content_same_hash() -> None:
    h = parse_rule_table(BASE, NAMES).content_hash
    assert parse_rule_table(BASE, NAMES).content_hash == h
    reformatted = (
        "# comment\n"
        "enabled,rule_id,feature,operator,threshold,action,reason\r\n"
        "true , R1,a,>,220.0,review,big\r\n"
        "\n"
        '1,R1,b,<=,3e0,REVIEW,"big"\r\n'
        "yes,R2,c,==,1.000,Block,bad\r\n"
        "FALSE,R3,d,!=,-0.0,ALLOW,ok\r\n"
    )
    assert parse_rule_table(reformatted, NAMES).content_hash == h
    rows = [
        rule_row("R1", "a", ">", 220, "REVIEW", "big", True),
        rule_row("R1", "b", "<=", 3, "REVIEW", "big", True),
        rule_row("R2", "c", "==", 1.0, "BLOCK", "bad", True),
        rule_row("R3", "d", "!=", 0, "ALLOW", "ok", False),
    ]
    from_table = from_rows(rows, NAMES)
    assert from_table.content_hash == h and from_table.version == h
    assert from_rows(rows, NAMES, version="mine").version == "mine"
    assert parse_rule_table(from_table.normalised(), NAMES).content_hash == h


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("R1,a,>,220,", "R1,a,>,220.5,"),
        ("R1,a,>,220,", "R1,a,>=,220,"),
        ("R1,a,>,220,", "R1,e,>,220,"),
        ("R2,c,==,1,BLOCK,", "R2,c,==,1,REVIEW,"),
        ("R2,c,==,1,BLOCK,bad", "R2,c,==,1,BLOCK,worse"),
        ("ALLOW,ok,false", "ALLOW,ok,true"),
        ("R3,", "R4,"),
        ("R3,d,!=,0,ALLOW,ok,false\n", "R3,d,!=,0,ALLOW,ok,false\nR3,e,<,1,ALLOW,ok,false\n"),
        ("R3,d,!=,0,ALLOW,ok,false\n", ""),
        (
            "R1,a,>,220,REVIEW,big,true\nR1,b,<=,3,REVIEW,big,true\n",
            "R1,b,<=,3,REVIEW,big,true\nR1,a,>,220,REVIEW,big,true\n",
        ),
    ],
)
def test_any_change_changes_the_hash(old: str, new: str) -> None:
    assert old in BASE
    changed = BASE.replace(old, new)
    assert changed != BASE
    before = parse_rule_table(BASE, NAMES).content_hash
    assert parse_rule_table(changed, NAMES).content_hash != before


# --- semantics: disabled rules, most severe action, NaN -------------------------------------


def test_disabled_rules_never_fire() -> None:
    table = from_rows(
        [
            rule_row("OFF", "a", ">=", 0, "BLOCK", enabled=False),
            rule_row("ON", "a", ">=", 0, "REVIEW"),
        ],
        NAMES,
    )
    compiled = compile_rules(table, NAMES)
    assert compiled.rule_enabled.tolist() == [False, True]
    fired, action = apply_rules(compiled, np.ones((4, len(NAMES))))
    assert fired.tolist() == [[False, True]] * 4
    assert action.tolist() == [REVIEW] * 4


def test_most_severe_action_wins_and_allow_rules_only_record() -> None:
    table = from_rows(
        [
            rule_row("ALLOW_A", "a", ">", 0, "ALLOW"),
            rule_row("REVIEW_B", "b", ">", 0, "REVIEW"),
            rule_row("BLOCK_C", "c", ">", 0, "BLOCK"),
            rule_row("ALLOW_D", "d", ">", 0, "ALLOW"),
        ],
        NAMES,
    )
    compiled = compile_rules(table, NAMES)
    features = np.array(
        [
            [0, 0, 0, 0, 0, 0],
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 1, 0, 0],
            [0, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [0, 0, 1, 0, 0, 0],
        ],
        dtype=np.float64,
    )
    fired, action = apply_rules(compiled, features)
    assert action.dtype == np.int8
    assert action.tolist() == [ALLOW, ALLOW, REVIEW, BLOCK, BLOCK, BLOCK]
    assert fired_ids(compiled, fired[1]) == ["ALLOW_A"]
    assert fired_ids(compiled, fired[4]) == ["ALLOW_A", "REVIEW_B", "BLOCK_C", "ALLOW_D"]


@pytest.mark.parametrize("op", OPERATORS)
def test_nan_meets_no_condition(op: str) -> None:
    table = from_rows([rule_row("R", "a", op, 1.0, "BLOCK")], NAMES)
    features = np.zeros((1, len(NAMES)))
    features[0, 0] = np.nan
    fired, action = apply_rules(compile_rules(table, NAMES), features)
    assert not fired[0, 0] and action[0] == ALLOW
    assert reference_evaluate(table, dict.fromkeys(NAMES, float("nan"))) == ([False], ALLOW)


def test_values_at_threshold() -> None:
    ops = {">": False, ">=": True, "<": False, "<=": True, "==": True, "!=": False}
    table = from_rows([rule_row(f"R{i}", "a", op, 0.5) for i, op in enumerate(ops)], NAMES)
    features = np.full((1, len(NAMES)), 0.5)
    fired, _ = apply_rules(compile_rules(table, NAMES), features)
    assert fired[0].tolist() == list(ops.values())


# --- kernel against the slow twin -----------------------------------------------------------

GRID = (-1.0, 0.0, 0.5, 1.0, 2.0, 220.0)


def random_table(rng: np.random.Generator) -> RuleTable:
    rows: list[dict[str, object]] = []
    for r in range(int(rng.integers(1, 9))):
        action = str(rng.choice(["ALLOW", "REVIEW", "BLOCK"]))
        enabled = bool(rng.random() < 0.8)
        for _ in range(int(rng.integers(1, 5))):
            rows.append(
                rule_row(
                    f"R{r}",
                    str(rng.choice(NAMES)),
                    str(rng.choice(OPERATORS)),
                    float(rng.choice(GRID)),
                    action,
                    f"reason {r}",
                    enabled,
                )
            )
    return from_rows(rows, NAMES)


def random_features(rng: np.random.Generator, n: int, n_cols: int) -> F64:
    """Mostly values exactly on the threshold grid or next to it, plus NaN, +-inf and noise."""
    features = rng.choice(np.array(GRID), size=(n, n_cols))
    kind = rng.integers(0, 10, size=(n, n_cols))
    features[kind == 0] = np.nan
    features[kind == 1] = np.nextafter(features[kind == 1], np.inf)
    features[kind == 2] = np.nextafter(features[kind == 2], -np.inf)
    features[kind == 3] = rng.normal(0.0, 100.0, size=int((kind == 3).sum()))
    features[kind == 4] = rng.choice([np.inf, -np.inf, -0.0], size=int((kind == 4).sum()))
    return features


@pytest.mark.parametrize("seed", range(40))
def test_kernel_matches_reference_on_random_tables(seed: int) -> None:
    rng = np.random.default_rng(seed)
    table = random_table(rng)
    # the matrix's column order differs from the table's validation order
    columns = tuple(str(name) for name in rng.permutation(np.array([*NAMES, "unused"])))
    compiled = compile_rules(table, columns)
    features = random_features(rng, 300, len(columns))
    fired, action = apply_rules(compiled, features)
    exp_fired, exp_action = reference_evaluate_many(table, columns, features.tolist())
    np.testing.assert_array_equal(fired, np.array(exp_fired, dtype=np.bool_))
    np.testing.assert_array_equal(action, np.array(exp_action, dtype=np.int8))
    for i in range(0, 300, 37):
        named = dict(zip(columns, features[i].tolist(), strict=True))
        assert fired_ids(compiled, fired[i]) == reference_fired_ids(table, named)

    # the kernel itself, with writable arrays, a Fortran-ordered copy through the wrapper
    out_fired = np.ones((300, compiled.n_rules), dtype=np.bool_)
    out_action = np.zeros(300, dtype=np.int8)
    evaluate_rules(
        features,
        compiled.cond_feature.copy(),
        compiled.cond_op.copy(),
        compiled.cond_threshold.copy(),
        compiled.rule_offsets.copy(),
        compiled.rule_action.copy(),
        compiled.rule_enabled.copy(),
        out_fired,
        out_action,
    )
    np.testing.assert_array_equal(out_fired, fired)
    np.testing.assert_array_equal(out_action, action)
    fired_f, action_f = apply_rules(compiled, np.asfortranarray(features))
    np.testing.assert_array_equal(fired_f, fired)
    np.testing.assert_array_equal(action_f, action)


# --- compiled arrays and wrapper checks -----------------------------------------------------


def test_compiled_arrays_layout() -> None:
    table = parse_rule_table(BASE, NAMES)
    compiled = compile_rules(table, NAMES)
    assert compiled.cond_feature.dtype == np.int64
    assert compiled.cond_op.dtype == np.int8
    assert compiled.cond_threshold.dtype == np.float64
    assert compiled.cond_rule.dtype == np.int64
    assert compiled.rule_action.dtype == np.int8
    assert compiled.rule_enabled.dtype == np.bool_
    assert compiled.cond_feature.tolist() == [0, 1, 2, 3]
    assert compiled.cond_rule.tolist() == [0, 0, 1, 2]
    assert compiled.rule_offsets.tolist() == [0, 2, 3, 4]
    assert compiled.rule_action.tolist() == [REVIEW, BLOCK, ALLOW]
    assert compiled.rule_enabled.tolist() == [True, True, False]
    assert compiled.rule_ids == ("R1", "R2", "R3")
    with pytest.raises(ValueError, match="read-only"):
        compiled.cond_threshold[0] = 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        compiled.version = "x"  # type: ignore[misc]


def test_compile_rejects_features_missing_from_the_matrix() -> None:
    table = parse_rule_table(BASE, NAMES, source="t.csv")
    with pytest.raises(RuleTableError, match=r"^t.csv:4: feature 'c' of rule 'R2'"):
        compile_rules(table, ("a", "b", "d"))
    with pytest.raises(ValueError, match="duplicate names"):
        compile_rules(table, ("a", "b", "c", "d", "a"))


def test_compiled_rules_validate_their_arrays() -> None:
    good = compile_rules(parse_rule_table(BASE, NAMES), NAMES)
    changes: list[tuple[dict[str, object], str]] = [
        ({"rule_offsets": np.array([0, 2, 2, 4])}, "rule_offsets"),
        ({"cond_rule": np.array([0, 1, 1, 2])}, "cond_rule"),
        ({"cond_feature": np.array([0, 1, 2, 6])}, "out of range"),
        ({"cond_op": np.array([0, 1, 2, 9])}, "cond_op"),
        ({"cond_threshold": np.array([0, 1, np.nan, 3])}, "finite"),
        ({"rule_action": np.array([1, 2, 4])}, "rule_action"),
        ({"rule_enabled": np.array([True, False])}, "rule_enabled"),
        ({"rule_ids": ("R1", "R1", "R3")}, "unique"),
    ]
    for change, match in changes:
        fields: dict[str, object] = {
            f.name: getattr(good, f.name) for f in dataclasses.fields(good) if f.init
        }
        fields.update(change)
        with pytest.raises(ValueError, match=match):
            CompiledRules(**fields)  # type: ignore[arg-type]


def test_apply_rules_checks_inputs() -> None:
    compiled = compile_rules(parse_rule_table(BASE, NAMES), NAMES)
    with pytest.raises(ValueError, match="has 5 columns, the rules expect 6"):
        apply_rules(compiled, np.zeros((2, 5)))
    with pytest.raises(ValueError, match="2-D"):
        apply_rules(compiled, np.zeros(6))
    with pytest.raises(ValueError, match="real numeric"):
        apply_rules(compiled, np.zeros((2, 6), dtype=np.complex128))
    with pytest.raises(ValueError, match="real numeric"):
        apply_rules(compiled, np.array([["x"] * 6]))
    fired, action = apply_rules(compiled, np.zeros((0, 6)))
    assert fired.shape == (0, 3) and action.shape == (0,)
    ints = np.array([[221, 0, 1, 0, 0, 0]], dtype=np.int64)
    fired, action = apply_rules(compiled, ints)
    assert fired_ids(compiled, fired[0]) == ["R1", "R2"] and action.tolist() == [BLOCK]
    with pytest.raises(ValueError, match="bool vector of 3"):
        fired_ids(compiled, fired)
    with pytest.raises(ValueError, match="bool vector of 3"):
        fired_ids(compiled, np.array([1, 0, 0]))
