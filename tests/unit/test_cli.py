"""The command line: help that explains, one-line errors instead of tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fraud.cli import build_parser, main


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fraud", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_help_lists_every_command() -> None:
    text = build_parser().format_help()
    for command in ("demo", "broker", "worker", "replay", "alerts", "tail", "simulate", "topics"):
        assert command in text


def test_replay_help_mentions_env_fallback(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["replay", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "KAFKA_BOOTSTRAP" in out
    assert "--label-delay-days" in out


@pytest.mark.parametrize(
    ("content", "name", "fragment"),
    [
        (None, "missing.csv", "missing.csv"),
        ("a,b\n1,2\n", "cols.csv", "missing"),
        (
            "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n"
            "1,2018-04-01 00:00:31,5,7,abc,0\n",
            "amount.csv",
            "amount.csv:2",
        ),
        ("x", "file.xlsx", "file.xlsx"),
    ],
)
def test_bad_replay_file_is_a_one_line_error(
    tmp_path: Path, content: str | None, name: str, fragment: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    # An unreachable broker: the file must be refused before Kafka is contacted.
    done = run("replay", str(path), "--brokers", "127.0.0.1:1", "--no-progress")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("fraud: error: ")
    assert fragment in lines[0]
    assert "Traceback" not in done.stderr


def test_bad_flag_is_a_usage_error() -> None:
    done = run("replay", "x.csv", "--speed", "-3")
    assert done.returncode == 2
    assert "must be positive" in done.stderr
    assert "Traceback" not in done.stderr


def test_simulate_writes_a_file_that_replay_accepts(tmp_path: Path) -> None:
    out = tmp_path / "sim.csv"
    done = run("simulate", str(out), "--customers", "50", "--terminals", "200", "--days", "5")
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    from fraud.ingest.files import HANDBOOK, open_source

    source = open_source(out)
    assert source.mapping == HANDBOOK
    rows = list(source)
    assert len(rows) == int(done.stdout.split()[1].replace(",", ""))


def test_broker_status_without_broker(tmp_path: Path) -> None:
    done = run("broker", "status", "--data-dir", str(tmp_path))
    assert done.returncode == 1
    assert "no broker running" in done.stdout
