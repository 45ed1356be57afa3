"""Starve a process of CPU: pin it to one core and run busy loops on that core.

Used by the exactness checks (``benchmarks/exactness.py --starve-cpu`` and the integration
tests) to show that a worker short of CPU decides later, never differently. Every thread of
the process is pinned (threads it starts later inherit the affinity of their creator), and
``hogs`` busy-loop processes pinned to the same core share it with them, so the worker gets
about ``1 / (hogs + 1)`` of one core. Linux only (``os.sched_setaffinity``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import TracebackType

HOG = "while True:\n    pass\n"


def threads_of(pid: int) -> list[int]:
    """The thread ids of ``pid`` (``/proc/PID/task``)."""
    return [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir() if t.name.isdigit()]


class CpuStarvation:
    """Context manager: ``pid`` and ``hogs`` busy loops share one core until the block ends."""

    def __init__(self, pid: int, hogs: int = 2, cpu: int | None = None) -> None:
        if hogs < 1:
            raise ValueError("hogs must be >= 1")
        self.pid = pid
        self.hogs = hogs
        allowed = sorted(os.sched_getaffinity(pid))
        self.cpu = allowed[-1] if cpu is None else cpu
        self._before = set(allowed)
        self._hogs: list[subprocess.Popen[bytes]] = []

    def pin(self) -> int:
        """Pin every current thread of the process to the core; how many were pinned."""
        pinned = 0
        for tid in threads_of(self.pid):
            try:
                os.sched_setaffinity(tid, {self.cpu})
                pinned += 1
            except ProcessLookupError:  # a thread that ended meanwhile
                continue
        return pinned

    def __enter__(self) -> CpuStarvation:
        self.pin()
        code = f"import os\nos.sched_setaffinity(0, {{{self.cpu}}})\n{HOG}"
        for _ in range(self.hogs):
            self._hogs.append(
                subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)
            )
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for hog in self._hogs:
            hog.kill()
        for hog in self._hogs:
            hog.wait()
        self._hogs.clear()
        for tid in threads_of(self.pid) if Path(f"/proc/{self.pid}").exists() else []:
            try:
                os.sched_setaffinity(tid, self._before)
            except ProcessLookupError:
                continue
