"""The command line end to end: ``fraud demo`` stops everything it started on SIGTERM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_sigterm_stops_the_demo_and_everything_it_started(tmp_path: Path) -> None:
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "fraud", "demo", "--customers", "30", "--days", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("worker ready"):
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 130, out
    # Children are signalled before the demo returns; give a loaded machine time to reap them.
    deadline = time.monotonic() + 15
    while True:
        pids = [p.parent.name for p in Path("/proc").glob("[0-9]*/cmdline")
                if b"fraud-demo-" in _cmdline(p)]  # fmt: skip
        if not pids or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert pids == [], "the demo left processes behind"


def _cmdline(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
