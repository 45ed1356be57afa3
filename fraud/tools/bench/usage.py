"""CPU and resident memory of other processes (the broker's) over a benchmark phase, from
/proc: CPU as cores used on average, memory as the peak of the summed resident sets."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def resident_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except OSError:
        return 0


@dataclass
class Usage:
    cpu_cores: float = 0.0  # average over the phase
    peak_rss_mb: float = 0.0  # of the summed resident sets, sampled every_s

    def as_dict(self) -> dict[str, float]:
        return {"cpu_cores": round(self.cpu_cores, 3), "peak_rss_mb": round(self.peak_rss_mb, 1)}


@contextlib.contextmanager
def measure(pids: Sequence[int], every_s: float = 0.5) -> Iterator[Usage]:
    """Sample ``pids`` while the block runs; the Usage is filled in when it ends."""
    usage = Usage()
    stop = threading.Event()

    def sample() -> None:
        while True:
            rss_mb = sum(resident_bytes(p) for p in pids) / 2**20
            usage.peak_rss_mb = max(usage.peak_rss_mb, rss_mb)
            if stop.wait(every_s):
                return

    cpu0 = sum(cpu_seconds(p) for p in pids)
    started = time.monotonic()
    thread = threading.Thread(target=sample, name="fraud-usage", daemon=True)
    thread.start()
    try:
        yield usage
    finally:
        stop.set()
        thread.join()
        wall = time.monotonic() - started
        usage.cpu_cores = (sum(cpu_seconds(p) for p in pids) - cpu0) / wall if wall > 0 else 0.0
