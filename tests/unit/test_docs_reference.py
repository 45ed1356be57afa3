"""docs/metrics.md and docs/commands.md against the code they describe."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from fraud.cli import build_parser
from fraud.metrics import NotifierMetrics, WebhookMetrics, WorkerMetrics

DOCS = Path(__file__).resolve().parents[2] / "docs"


def defined_metrics() -> set[str]:
    """Every metric name ``fraud/metrics.py`` exposes (counters with their ``_total``)."""
    names = set()
    for kind in (WorkerMetrics, WebhookMetrics, NotifierMetrics):
        registry = CollectorRegistry()
        kind(registry)
        for family in registry.collect():
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def test_metrics_md_lists_exactly_the_metrics_of_the_code() -> None:
    text = (DOCS / "metrics.md").read_text()
    rows = set(re.findall(r"^\| `(fraud_\w+)` \|", text, re.MULTILINE))
    defined = defined_metrics()
    assert len(defined) > 20
    assert rows == defined, f"missing {defined - rows}, not defined {rows - defined}"
    mentioned = set(re.findall(r"`(fraud_\w+)`", text))
    assert mentioned <= defined, f"not defined: {mentioned - defined}"


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def sections(text: str) -> dict[str, str]:
    """``## heading`` -> the text up to the next ``##`` heading."""
    parts = re.split(r"^## (.*)$", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def section_of(command: str, by_heading: dict[str, str]) -> str:
    found = [body for heading, body in by_heading.items() if f"`fraud {command}" in heading]
    assert found, f"docs/commands.md has no '## `fraud {command} ...`' section"
    return "".join(found)


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_commands_md_documents_every_command_and_flag(command: str) -> None:
    by_heading = sections((DOCS / "commands.md").read_text())
    body = section_of(command, by_heading)
    flags = [
        option
        for a in subcommands()[command]._actions
        for option in a.option_strings
        if option.startswith("--") and option != "--help"
    ]
    missing = [flag for flag in flags if not re.search(rf"`{re.escape(flag)}[ `=]", body)]
    assert not missing, f"fraud {command}: flags not in its section of docs/commands.md: {missing}"


def test_commands_md_names_every_environment_variable_of_the_cli() -> None:
    source = (Path(__file__).resolve().parents[2] / "fraud" / "cli.py").read_text()
    text = (DOCS / "commands.md").read_text()
    variables = set(re.findall(r"\b((?:FRAUD|KAFKA)_[A-Z_]+)\b", source))
    assert "KAFKA_BOOTSTRAP" in variables
    missing = sorted(v for v in variables if f"`{v}" not in text)
    assert not missing, f"environment variables of fraud/cli.py not in docs/commands.md: {missing}"
